variable "world_name" {
  description = "The world's name."
  type        = string
}

variable "jurisdictions" {
  description = "The residency catalog's jurisdictions."
  type = list(object({
    name        = string
    description = string
  }))
}

variable "regions" {
  description = "The regions: the topology module's fields plus per-region machine settings."
  type = map(object({
    jurisdiction       = string
    aws_region         = string
    slot               = number
    shards             = optional(number, 2)
    nats_nodes         = optional(number, 3)
    az_count           = optional(number, 3)
    nats_domain        = optional(string)
    token_keys         = optional(list(string), [])
    ami_id             = string
    node_instance_type = optional(string, "c7i.large")
    node_min           = optional(number, 2)
    node_max           = optional(number, 6)
    db_instance_class  = optional(string, "db.r7g.large")
  }))

  validation {
    condition     = toset(keys(var.regions)) == toset(["us-east", "eu-west", "ap-south"])
    error_message = "This environment wires exactly us-east, eu-west and ap-south (a provider alias and module calls each): to add a region, add its blocks too (docs/operations.md, \"Add a region\")."
  }
}

variable "edge_pops" {
  description = "Edge points of presence and the region hosting each."
  type = map(object({
    region          = string
    certificate_arn = string
  }))

  validation {
    condition     = toset(keys(var.edge_pops)) == toset(["us-east", "eu-west", "ap-south"])
    error_message = "This environment wires an edge module call for each of us-east, eu-west and ap-south."
  }
}

variable "dns_zone" {
  description = "Private DNS suffix."
  type        = string
  default     = "meridian.internal"
}

variable "edge_dns_name" {
  description = "The global edge name."
  type        = string
}

variable "public_zone_id" {
  description = "Route 53 public zone holding edge_dns_name."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
