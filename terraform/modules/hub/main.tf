# One node of the NATS hub cluster (one per region, hosted in that region's
# VPC). The hub runs no JetStream; every region's NATS attaches to it as a
# leafnode. Its configuration is rendered on the machine from the world file
# (deploy/templates/nats-hub.conf.tmpl).

locals {
  tags = merge(var.tags, { "meridian:world" = var.world_name, "meridian:role" = "hub" })
}

resource "aws_security_group" "hub" {
  name_prefix = "${var.world_name}-${var.region.hub_node.name}-"
  vpc_id      = var.vpc_id
  description = "Meridian NATS hub: leafnodes and routes from the world's VPCs"
  ingress {
    description = "leafnodes from every region's NATS"
    from_port   = 7422
    to_port     = 7422
    protocol    = "tcp"
    cidr_blocks = var.world_cidrs
  }
  ingress {
    description = "routes between hub nodes"
    from_port   = 6222
    to_port     = 6222
    protocol    = "tcp"
    cidr_blocks = var.world_cidrs
  }
  ingress {
    description = "monitoring"
    from_port   = 8222
    to_port     = 8222
    protocol    = "tcp"
    cidr_blocks = var.world_cidrs
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
  tags = local.tags
}

resource "aws_instance" "hub" {
  ami                    = var.ami_id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.hub.id]
  iam_instance_profile   = var.instance_profile_name
  user_data = templatefile("${path.module}/../region_cell/user_data.sh.tftpl", {
    world_json    = var.world_config_json
    region        = var.region.name
    role          = "hub"
    unit          = "meridian-hub@hub-${var.index}"
    unit_config   = "hub-${var.index}"
    params        = var.region.secret_parameters
    aws_region    = var.region.aws_region
    workers       = 1
    shard_secrets = []
  })
  metadata_options {
    http_tokens = "required"
  }
  tags = merge(local.tags, { Name = "${var.world_name}-${var.region.hub_node.name}" })
}

resource "aws_route53_record" "hub" {
  zone_id = var.private_zone_id
  name    = var.region.hub_node.host
  type    = "A"
  ttl     = 60
  records = [aws_instance.hub.private_ip]
}
