variable "zone_id" {
  description = "Public hosted zone that holds the global edge name."
  type        = string
}

variable "name" {
  description = "The global edge name (topology output global_dns.name)."
  type        = string
}

variable "endpoints" {
  description = "One entry per PoP: its AWS region (latency routing key) and its load balancer (edge module outputs)."
  type = map(object({
    aws_region  = string
    lb_dns_name = string
    lb_zone_id  = string
  }))

  validation {
    condition     = length(var.endpoints) > 0
    error_message = "endpoints must name at least one PoP."
  }
}

variable "health_check_path" {
  description = "Path probed on every PoP; a PoP failing it leaves the answer set."
  type        = string
  default     = "/readyz"
}

variable "health_check_port" {
  description = "Port probed (the TLS listener)."
  type        = number
  default     = 443
}

