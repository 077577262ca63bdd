output "region_order" {
  description = "Region names in slot order (the world file's order)."
  value       = local.order
}

output "regions" {
  description = "Everything derived per region: CIDRs, subnets, shard names and conninfos, NATS domain and nodes, DNS names, the hub node it hosts, KMS alias and secret parameter names."
  value       = local.regions
}

output "vpc_cidrs" {
  description = "Each region's VPC block."
  value       = local.vpc_cidrs
}

output "hub" {
  description = "The NATS hub cluster: one node per region, no JetStream."
  value       = local.hub
}

output "edges" {
  description = "Edge points of presence and the region whose VPC each runs in."
  value       = local.edges
}

output "catalog" {
  description = "The residency catalog: jurisdictions with their regions, and each region's jurisdiction."
  value       = local.catalog
}

output "peerings" {
  description = "Every pair of regions once, for VPC peering."
  value       = local.peerings
}

output "global_dns" {
  description = "The global edge name and the PoPs behind it."
  value = {
    name = var.edge_dns_name
    pops = local.edge_order
  }
}

output "world_config" {
  description = "The world file (meridian-world/1, docs/world-config.md) as an object."
  value       = local.world_config
}

output "world_config_json" {
  description = "The world file as JSON, ready to write to /etc/meridian/world.json."
  value       = jsonencode(local.world_config)
}
