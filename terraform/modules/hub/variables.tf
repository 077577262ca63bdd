variable "world_name" {
  description = "The world's name."
  type        = string
}

variable "region" {
  description = "The topology `regions` entry of the region that hosts this hub node."
  type = object({
    name              = string
    aws_region        = string
    secret_parameters = map(string)
    hub_node          = object({ name = string, host = string })
  })
}

variable "index" {
  description = "This hub node's position in topology output hub.nodes (its config is nats/hub-<index>.conf)."
  type        = number
}

variable "world_config_json" {
  description = "The world file (topology output world_config_json)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the hosting region (region_cell output vpc_id)."
  type        = string
}

variable "subnet_id" {
  description = "Private subnet for the hub node."
  type        = string
}

variable "private_zone_id" {
  description = "The hosting region's private zone (region_cell output private_zone_id)."
  type        = string
}

variable "instance_profile_name" {
  description = "Instance profile (region_cell output instance_profile_name)."
  type        = string
}

variable "world_cidrs" {
  description = "Every region's VPC block: their NATS attach as leafnodes, and the other hub nodes route."
  type        = list(string)
}

variable "ami_id" {
  description = "The Meridian machine image."
  type        = string
}

variable "instance_type" {
  description = "Instance type of the hub node."
  type        = string
  default     = "m7i.large"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
