variable "world_name" {
  description = "The world's name (topology var.world_name)."
  type        = string
}

variable "region" {
  description = "This region's entry of the topology module's `regions` output."
  type = object({
    name            = string
    jurisdiction    = string
    aws_region      = string
    vpc_cidr        = string
    private_subnets = list(string)
    public_subnets  = list(string)
    dns_zone        = string
    shards = list(object({
      id         = number
      identifier = string
      host       = string
      port       = number
    }))
    redis = object({ identifier = string, host = string, port = number })
    nats = object({
      domain  = string
      cluster = string
      nodes = list(object({
        name     = string
        host     = string
        az_index = number
      }))
    })
    api               = object({ host = string, port = number })
    kms_alias         = string
    secret_parameters = map(string)
  })
}

variable "world_config_json" {
  description = "The world file (topology output world_config_json), written to every node as /etc/meridian/world.json."
  type        = string
}

variable "peer_cidrs" {
  description = "CIDR blocks of the other regions (peered VPCs): their edges and hub reach this region's API and NATS."
  type        = list(string)
  default     = []
}

variable "ami_id" {
  description = "An image with meridian-region, meridian-edge, nats-server, node and deploy/ installed (docs/terraform.md)."
  type        = string
}

variable "node_instance_type" {
  description = "Instance type of region nodes."
  type        = string
  default     = "c7i.large"
}

variable "node_workers" {
  description = "Worker processes per region node (about one per vCPU)."
  type        = number
  default     = 2
}

variable "node_min" {
  description = "Smallest number of region nodes in the autoscaling group."
  type        = number
  default     = 2
}

variable "node_max" {
  description = "Largest number of region nodes in the autoscaling group."
  type        = number
  default     = 6
}

variable "nats_instance_type" {
  description = "Instance type of the region's NATS servers."
  type        = string
  default     = "m7i.large"
}

variable "db_instance_class" {
  description = "RDS instance class of every Postgres shard."
  type        = string
  default     = "db.r7g.large"
}

variable "db_allocated_storage" {
  description = "GiB per shard."
  type        = number
  default     = 100
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.r7g.large"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
