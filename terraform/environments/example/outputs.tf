output "world_config_json" {
  description = "The world file (meridian-world/1), the same shape deploy/local/world writes. Addresses only: no secrets."
  value       = module.topology.world_config_json
}

output "world_config" {
  description = "The world file as an object."
  value       = module.topology.world_config
}

output "catalog" {
  description = "The residency catalog."
  value       = module.topology.catalog
}

output "vpc_cidrs" {
  description = "Each region's VPC block."
  value       = module.topology.vpc_cidrs
}

output "kms_key_arns" {
  description = "Each region's master key."
  value       = { for n, c in local.cells : n => c.kms_key_arn }
}

output "global_edge_name" {
  description = "The name clients resolve."
  value       = module.global_dns.name
}
