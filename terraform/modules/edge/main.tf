# The edge nodes of one point of presence: an autoscaling group behind an
# internet-facing network load balancer that terminates TLS (443 -> the
# edge port). global_dns points the global name at every PoP's balancer.

locals {
  name = "${var.world_name}-${var.edge.name}"
  tags = merge(var.tags, { "meridian:world" = var.world_name, "meridian:role" = "edge", "meridian:pop" = var.edge.pop })
}

resource "aws_security_group" "edge" {
  name_prefix = "${local.name}-"
  vpc_id      = var.vpc_id
  description = "Meridian edge nodes: client traffic from the load balancer"
  ingress {
    from_port   = var.edge.port
    to_port     = var.edge.port
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"] # NLB preserves client addresses
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
  tags = local.tags
}

resource "aws_launch_template" "edge" {
  name_prefix            = "${local.name}-"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.edge.id]
  iam_instance_profile {
    name = var.instance_profile_name
  }
  metadata_options {
    http_tokens = "required"
  }
  user_data = base64encode(templatefile("${path.module}/../region_cell/user_data.sh.tftpl", {
    world_json    = var.world_config_json
    region        = var.region.name
    role          = "edge"
    unit          = "meridian-edge@${var.edge.name}"
    unit_config   = var.edge.name
    params        = var.region.secret_parameters
    aws_region    = var.region.aws_region
    workers       = var.workers
    shard_secrets = []
  }))
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = local.name })
  }
}

resource "aws_lb" "edge" {
  name               = substr(local.name, 0, 32)
  internal           = false
  load_balancer_type = "network"
  subnets            = var.public_subnet_ids
  tags               = local.tags
}

resource "aws_lb_target_group" "edge" {
  name_prefix          = "edge-"
  port                 = var.edge.port
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  deregistration_delay = 35
  health_check {
    protocol = "HTTP"
    path     = "/readyz"
    port     = "traffic-port"
    interval = 10
  }
  tags = local.tags
}

resource "aws_lb_listener" "tls" {
  load_balancer_arn = aws_lb.edge.arn
  port              = 443
  protocol          = "TLS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.edge.arn
  }
}

resource "aws_autoscaling_group" "edge" {
  name_prefix               = "${local.name}-"
  min_size                  = var.min_size
  max_size                  = var.max_size
  vpc_zone_identifier       = var.private_subnet_ids
  target_group_arns         = [aws_lb_target_group.edge.arn]
  health_check_type         = "ELB"
  health_check_grace_period = 60
  launch_template {
    id      = aws_launch_template.edge.id
    version = "$Latest"
  }
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }
  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}

# The PoP's name inside the world (edges[].urls in the world file).
resource "aws_route53_record" "internal" {
  zone_id = var.private_zone_id
  name    = var.edge.host
  type    = "A"
  alias {
    name                   = aws_lb.edge.dns_name
    zone_id                = aws_lb.edge.zone_id
    evaluate_target_health = true
  }
}
