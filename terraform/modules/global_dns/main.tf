# Latency-based records for the global edge name: each client is answered
# with the PoP nearest to it among those whose health check passes.

resource "aws_route53_health_check" "pop" {
  for_each          = var.endpoints
  fqdn              = each.value.lb_dns_name
  port              = var.health_check_port
  type              = "HTTPS"
  resource_path     = var.health_check_path
  request_interval  = 10
  failure_threshold = 3
  measure_latency   = true
  tags = {
    Name = "${var.name}-${each.key}"
  }
}

resource "aws_route53_record" "pop" {
  for_each       = var.endpoints
  zone_id        = var.zone_id
  name           = var.name
  type           = "A"
  set_identifier = each.key
  latency_routing_policy {
    region = each.value.aws_region
  }
  health_check_id = aws_route53_health_check.pop[each.key].id
  alias {
    name                   = each.value.lb_dns_name
    zone_id                = each.value.lb_zone_id
    evaluate_target_health = true
  }
}
