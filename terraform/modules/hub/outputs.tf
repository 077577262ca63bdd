output "private_ip" {
  description = "The hub node's address (also hub.<region>.<dns_zone>)."
  value       = aws_instance.hub.private_ip
}
