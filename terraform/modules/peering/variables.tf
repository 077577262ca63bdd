variable "name" {
  description = "Name of the link, e.g. us-east--eu-west."
  type        = string
}

variable "a" {
  description = "The requesting region (region_cell outputs) and its AWS region."
  type = object({
    aws_region      = string
    vpc_id          = string
    vpc_cidr        = string
    route_table_ids = list(string)
    private_zone_id = string
  })
}

variable "b" {
  description = "The accepting region."
  type = object({
    aws_region      = string
    vpc_id          = string
    vpc_cidr        = string
    route_table_ids = list(string)
    private_zone_id = string
  })
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
