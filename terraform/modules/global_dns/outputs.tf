output "name" {
  description = "The global edge name."
  value       = var.name
}

output "health_check_ids" {
  description = "Route 53 health check per PoP."
  value       = { for k, h in aws_route53_health_check.pop : k => h.id }
}
