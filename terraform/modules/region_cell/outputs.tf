output "vpc_id" {
  description = "The region's VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "The region's VPC block (from topology)."
  value       = var.region.vpc_cidr
}

output "private_subnet_ids" {
  description = "One private subnet per AZ."
  value       = aws_subnet.private[*].id
}

output "public_subnet_ids" {
  description = "One public subnet per AZ."
  value       = aws_subnet.public[*].id
}

output "route_table_ids" {
  description = "Route tables that need routes to peered regions."
  value       = [aws_route_table.private.id, aws_route_table.public.id]
}

output "private_zone_id" {
  description = "The region's private hosted zone (<region>.<dns_zone>)."
  value       = aws_route53_zone.private.zone_id
}

output "kms_key_arn" {
  description = "The region's master key."
  value       = aws_kms_key.master.arn
}

output "instance_profile_name" {
  description = "Instance profile of the region's machines (keys and database secrets)."
  value       = aws_iam_instance_profile.node.name
}

output "node_security_group_id" {
  description = "Security group of region nodes."
  value       = aws_security_group.node.id
}

output "api_lb_dns_name" {
  description = "The internal load balancer in front of the region nodes."
  value       = aws_lb.api.dns_name
}

output "shard_secret_arns" {
  description = "ARNs (not values) of the RDS-managed master secrets, one per shard."
  value       = [for db in aws_db_instance.shard : db.master_user_secret[0].secret_arn]
}
