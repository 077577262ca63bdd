variable "world_name" {
  description = "The world's name."
  type        = string
}

variable "edge" {
  description = "This PoP's entry of the topology `edges` output."
  type = object({
    name       = string
    pop        = string
    region     = string
    aws_region = string
    host       = string
    port       = number
  })
}

variable "region" {
  description = "The topology `regions` entry of the region whose VPC hosts this PoP."
  type = object({
    name              = string
    aws_region        = string
    secret_parameters = map(string)
  })
}

variable "world_config_json" {
  description = "The world file (topology output world_config_json)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the hosting region."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets for the PoP's internet-facing load balancer."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets for the edge nodes."
  type        = list(string)
}

variable "private_zone_id" {
  description = "The hosting region's private zone."
  type        = string
}

variable "instance_profile_name" {
  description = "Instance profile with read access to the edge's keys (region_cell output instance_profile_name)."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for the global edge name: the load balancer terminates TLS."
  type        = string
}

variable "ami_id" {
  description = "The Meridian machine image."
  type        = string
}

variable "instance_type" {
  description = "Instance type of edge nodes."
  type        = string
  default     = "c7i.large"
}

variable "workers" {
  description = "Worker processes per edge node."
  type        = number
  default     = 2
}

variable "min_size" {
  description = "Smallest number of edge nodes."
  type        = number
  default     = 2
}

variable "max_size" {
  description = "Largest number of edge nodes."
  type        = number
  default     = 8
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
