variable "world_name" {
  description = "The world's name (meridian-world/1 `name`): 1-32 of a-z 0-9 -."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9-]{1,32}$", var.world_name))
    error_message = "world_name must be 1-32 characters of a-z, 0-9 and '-'."
  }
}

variable "jurisdictions" {
  description = "The residency catalog's jurisdictions, in the order the world file lists them."
  type = list(object({
    name        = string
    description = string
  }))

  validation {
    condition     = length(var.jurisdictions) > 0 && alltrue([for j in var.jurisdictions : can(regex("^[A-Z0-9-]{1,16}$", j.name))])
    error_message = "jurisdictions must be non-empty and every name 1-16 characters of A-Z, 0-9 and '-'."
  }

  validation {
    condition     = length(distinct([for j in var.jurisdictions : j.name])) == length(var.jurisdictions)
    error_message = "jurisdictions: every name must be listed once."
  }
}

variable "regions" {
  description = <<-EOT
    The regional cells, by name (a-z 0-9 -; it is also the default JetStream domain).
    slot is the region's permanent index: it chooses the region's VPC block and must
    never be reused or renumbered (like port_slot in deploy/local/world.json).
  EOT
  type = map(object({
    jurisdiction = string
    aws_region   = string
    slot         = number
    shards       = optional(number, 2)
    nats_nodes   = optional(number, 3)
    az_count     = optional(number, 3)
    nats_domain  = optional(string)
    token_keys   = optional(list(string), [])
  }))

  validation {
    condition     = length(var.regions) > 0 && length(var.regions) <= 64
    error_message = "regions must hold 1-64 regions."
  }

  validation {
    condition     = alltrue([for n, r in var.regions : can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", n))])
    error_message = "every region name must be 1-32 characters of a-z, 0-9 and '-' (a DNS label: no '-' at either end)."
  }

  validation {
    condition     = alltrue([for n, r in var.regions : contains([for j in var.jurisdictions : j.name], r.jurisdiction)])
    error_message = "every region's jurisdiction must be one of var.jurisdictions (the residency catalog)."
  }

  validation {
    condition     = length(distinct([for r in values(var.regions) : r.slot])) == length(var.regions)
    error_message = "every region needs its own slot: two regions with one slot would share a VPC block."
  }

  validation {
    condition     = alltrue([for r in values(var.regions) : r.slot >= 0 && r.slot < pow(2, var.region_newbits) && floor(r.slot) == r.slot])
    error_message = "slot must be an integer from 0 to 2^region_newbits - 1."
  }

  validation {
    condition     = length(distinct([for n, r in var.regions : coalesce(r.nats_domain, n)])) == length(var.regions)
    error_message = "one JetStream domain per region: two regions have the same nats_domain."
  }

  validation {
    condition     = alltrue([for r in values(var.regions) : r.shards >= 1 && r.shards <= 64])
    error_message = "shards must be 1-64 per region."
  }

  validation {
    condition     = alltrue([for r in values(var.regions) : contains([1, 3, 5], r.nats_nodes)])
    error_message = "nats_nodes must be 1, 3 or 5 (a JetStream cluster needs an odd number of servers)."
  }

  validation {
    condition     = alltrue([for r in values(var.regions) : r.az_count >= 1 && r.az_count <= 8])
    error_message = "az_count must be 1-8 (a region's VPC has 8 private and 8 public subnet blocks)."
  }

  validation {
    condition     = alltrue(flatten([for r in values(var.regions) : [for k in r.token_keys : can(regex("^[A-Za-z0-9_-]{43}$", k))]]))
    error_message = "token_keys must be Ed25519 public keys: 43 base64url characters each."
  }
}

variable "edge_pops" {
  description = "Edge points of presence, by name; each runs in the VPC of the region named by `region`."
  type = map(object({
    region = string
  }))
  default = {}

  validation {
    condition     = alltrue([for p, e in var.edge_pops : can(regex("^[a-z0-9]([a-z0-9-]{0,24}[a-z0-9])?$", p)) && contains(keys(var.regions), e.region)])
    error_message = "every edge PoP needs a name of 1-26 characters of a-z, 0-9 and '-' and a region that is in var.regions."
  }
}

variable "base_cidr" {
  description = "The block that every region's VPC is carved from."
  type        = string
  default     = "10.64.0.0/10"

  validation {
    condition     = can(cidrhost(var.base_cidr, 0)) && !strcontains(var.base_cidr, ":")
    error_message = "base_cidr must be an IPv4 CIDR block."
  }
}

variable "region_newbits" {
  description = "Bits added to base_cidr for each region's VPC (6 on a /10 gives /16s for up to 64 regions)."
  type        = number
  default     = 6
}

variable "dns_zone" {
  description = "Private DNS suffix: every region has the zone <region>.<dns_zone>."
  type        = string
  default     = "meridian.internal"
}

variable "edge_dns_name" {
  description = "The global name clients resolve to reach the nearest edge (Route 53 latency records)."
  type        = string
  default     = "edge.meridian.example"
}

variable "ports" {
  description = "Ports of the services; the defaults are the usual ones."
  type = object({
    postgres     = optional(number, 5432)
    redis        = optional(number, 6379)
    nats         = optional(number, 4222)
    nats_cluster = optional(number, 6222)
    nats_monitor = optional(number, 8222)
    leafnode     = optional(number, 7422)
    api          = optional(number, 8080)
    edge         = optional(number, 8443)
  })
  default = {}
}

variable "postgres_database" {
  description = "Database name and login of every shard (the password never appears here: PGPASSFILE)."
  type        = string
  default     = "meridian"
}

variable "postgres_sslmode" {
  description = "sslmode in every shard's conninfo."
  type        = string
  default     = "require"
}
