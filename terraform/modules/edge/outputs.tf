output "lb_dns_name" {
  description = "The PoP's internet-facing load balancer (global_dns endpoint)."
  value       = aws_lb.edge.dns_name
}

output "lb_zone_id" {
  description = "Hosted zone of the load balancer, for alias records."
  value       = aws_lb.edge.zone_id
}
