# One regional cell: network, region nodes (autoscaling group behind an
# internal load balancer), Postgres shards (RDS), Redis (ElastiCache), the
# region's NATS servers (its own JetStream domain, leafnode to the hub),
# private DNS names for all of them, and the KMS key that protects the
# region's keys. Every name and address comes from the topology module.

locals {
  name = "${var.world_name}-${var.region.name}"
  tags = merge(var.tags, {
    "meridian:world"        = var.world_name
    "meridian:region"       = var.region.name
    "meridian:jurisdiction" = var.region.jurisdiction
  })
  az_count = length(var.region.private_subnets)
}

data "aws_availability_zones" "this" {
  state = "available"
}

data "aws_caller_identity" "this" {}

# ---------------------------------------------------------------- network

resource "aws_vpc" "this" {
  cidr_block           = var.region.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = local.name })
}

resource "aws_subnet" "private" {
  count             = local.az_count
  vpc_id            = aws_vpc.this.id
  cidr_block        = var.region.private_subnets[count.index]
  availability_zone = data.aws_availability_zones.this.names[count.index]
  tags              = merge(local.tags, { Name = "${local.name}-private-${count.index}" })
}

resource "aws_subnet" "public" {
  count             = local.az_count
  vpc_id            = aws_vpc.this.id
  cidr_block        = var.region.public_subnets[count.index]
  availability_zone = data.aws_availability_zones.this.names[count.index]
  tags              = merge(local.tags, { Name = "${local.name}-public-${count.index}" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = local.tags
}

resource "aws_eip" "nat" {
  domain = "vpc"
  tags   = local.tags
}

resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public[0].id
  tags          = local.tags
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }
  tags = merge(local.tags, { Name = "${local.name}-public" })
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id
  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.this.id
  }
  tags = merge(local.tags, { Name = "${local.name}-private" })
}

resource "aws_route_table_association" "public" {
  count          = local.az_count
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table_association" "private" {
  count          = local.az_count
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# The region's private zone: pg-N, redis, nats-N, api, hub under <region>.<dns_zone>.
resource "aws_route53_zone" "private" {
  name = var.region.dns_zone
  vpc {
    vpc_id = aws_vpc.this.id
  }
  tags = local.tags
  # Peered regions are associated by the peering module.
  lifecycle {
    ignore_changes = [vpc]
  }
}

# -------------------------------------------------------------------- KMS

# The region's master key: it encrypts the region's secrets at rest (the
# signing key parameter, the RDS master secrets, the databases, Redis
# snapshots). Only this region's nodes may decrypt with it.
resource "aws_kms_key" "master" {
  description             = "Meridian ${local.name} master key"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  tags                    = local.tags
}

resource "aws_kms_alias" "master" {
  name          = var.region.kms_alias
  target_key_id = aws_kms_key.master.key_id
}

# --------------------------------------------------------- security groups

resource "aws_security_group" "node" {
  name_prefix = "${local.name}-node-"
  vpc_id      = aws_vpc.this.id
  description = "Meridian region nodes"
  ingress {
    description = "REST API, WebSocket and /metrics from this VPC (load balancer, tools) and peered regions (edges)"
    from_port   = var.region.api.port
    to_port     = var.region.api.port
    protocol    = "tcp"
    cidr_blocks = concat([var.region.vpc_cidr], var.peer_cidrs)
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
  tags = local.tags
}

resource "aws_security_group" "postgres" {
  name_prefix = "${local.name}-pg-"
  vpc_id      = aws_vpc.this.id
  description = "Meridian Postgres shards: region nodes only"
  ingress {
    from_port       = var.region.shards[0].port
    to_port         = var.region.shards[0].port
    protocol        = "tcp"
    security_groups = [aws_security_group.node.id]
  }
  tags = local.tags
}

resource "aws_security_group" "redis" {
  name_prefix = "${local.name}-redis-"
  vpc_id      = aws_vpc.this.id
  description = "Meridian Redis: region nodes only"
  ingress {
    from_port       = var.region.redis.port
    to_port         = var.region.redis.port
    protocol        = "tcp"
    security_groups = [aws_security_group.node.id]
  }
  tags = local.tags
}

resource "aws_security_group" "nats" {
  name_prefix = "${local.name}-nats-"
  vpc_id      = aws_vpc.this.id
  description = "Meridian NATS: clients from region nodes, routes among the region's servers, monitoring from the VPC"
  ingress {
    description     = "clients"
    from_port       = 4222
    to_port         = 4222
    protocol        = "tcp"
    security_groups = [aws_security_group.node.id]
  }
  ingress {
    description = "cluster routes"
    from_port   = 6222
    to_port     = 6222
    protocol    = "tcp"
    self        = true
  }
  ingress {
    description = "monitoring"
    from_port   = 8222
    to_port     = 8222
    protocol    = "tcp"
    cidr_blocks = [var.region.vpc_cidr]
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
  tags = local.tags
}

# ---------------------------------------------------------------- Postgres

resource "aws_db_subnet_group" "this" {
  name       = local.name
  subnet_ids = aws_subnet.private[*].id
  tags       = local.tags
}

resource "aws_db_parameter_group" "this" {
  name   = local.name
  family = "postgres15"
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  tags = local.tags
}

# One instance per shard. The master password is made and kept by RDS in
# Secrets Manager (manage_master_user_password): it never enters Terraform
# state or outputs; nodes read it at boot into PGPASSFILE.
resource "aws_db_instance" "shard" {
  count                         = length(var.region.shards)
  identifier                    = var.region.shards[count.index].identifier
  engine                        = "postgres"
  engine_version                = "15"
  instance_class                = var.db_instance_class
  allocated_storage             = var.db_allocated_storage
  storage_type                  = "gp3"
  storage_encrypted             = true
  kms_key_id                    = aws_kms_key.master.arn
  db_name                       = "meridian"
  username                      = "meridian"
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.master.key_id
  port                          = var.region.shards[count.index].port
  db_subnet_group_name          = aws_db_subnet_group.this.name
  parameter_group_name          = aws_db_parameter_group.this.name
  vpc_security_group_ids        = [aws_security_group.postgres.id]
  multi_az                      = true
  backup_retention_period       = 7
  deletion_protection           = true
  skip_final_snapshot           = false
  final_snapshot_identifier     = "${var.region.shards[count.index].identifier}-final"
  copy_tags_to_snapshot         = true
  tags                          = merge(local.tags, { "meridian:shard" = tostring(var.region.shards[count.index].id) })
}

resource "aws_route53_record" "shard" {
  count   = length(var.region.shards)
  zone_id = aws_route53_zone.private.zone_id
  name    = var.region.shards[count.index].host
  type    = "CNAME"
  ttl     = 60
  records = [aws_db_instance.shard[count.index].address]
}

# ------------------------------------------------------------------ Redis

resource "aws_elasticache_subnet_group" "this" {
  name       = local.name
  subnet_ids = aws_subnet.private[*].id
}

# Nothing in Redis is the only copy of anything durable (design.md), so one
# replica for failover is enough. In-transit TLS is off: the region's Redis
# client speaks plain TCP today (docs/terraform.md lists it as a gap).
resource "aws_elasticache_replication_group" "this" {
  replication_group_id       = var.region.redis.identifier
  description                = "Meridian ${local.name} Redis"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis_node_type
  port                       = var.region.redis.port
  num_cache_clusters         = 2
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = aws_elasticache_subnet_group.this.name
  security_group_ids         = [aws_security_group.redis.id]
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.master.arn
  transit_encryption_enabled = false
  tags                       = local.tags
}

resource "aws_route53_record" "redis" {
  zone_id = aws_route53_zone.private.zone_id
  name    = var.region.redis.host
  type    = "CNAME"
  ttl     = 60
  records = [aws_elasticache_replication_group.this.primary_endpoint_address]
}

# ------------------------------------------------------------------- IAM

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# Nodes read their keys (SSM SecureStrings under secret_parameters, encrypted
# with the master key) and the shards' RDS-managed secrets; nothing else.
data "aws_iam_policy_document" "node" {
  statement {
    actions   = ["ssm:GetParameter"]
    resources = [for p in values(var.region.secret_parameters) : "arn:aws:ssm:${var.region.aws_region}:${data.aws_caller_identity.this.account_id}:parameter${p}"]
  }
  statement {
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.master.arn]
  }
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [for db in aws_db_instance.shard : db.master_user_secret[0].secret_arn]
  }
}

resource "aws_iam_role" "node" {
  name_prefix        = "${local.name}-node-"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "node" {
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.node.json
}

resource "aws_iam_instance_profile" "node" {
  name_prefix = "${local.name}-node-"
  role        = aws_iam_role.node.name
}

# ------------------------------------------------------------------- NATS

resource "aws_instance" "nats" {
  count                  = length(var.region.nats.nodes)
  ami                    = var.ami_id
  instance_type          = var.nats_instance_type
  subnet_id              = aws_subnet.private[var.region.nats.nodes[count.index].az_index].id
  vpc_security_group_ids = [aws_security_group.nats.id]
  iam_instance_profile   = aws_iam_instance_profile.node.name
  user_data = templatefile("${path.module}/user_data.sh.tftpl", {
    world_json    = var.world_config_json
    region        = var.region.name
    role          = "nats"
    unit          = "meridian-nats@${var.region.nats.nodes[count.index].name}"
    unit_config   = var.region.nats.nodes[count.index].name
    params        = var.region.secret_parameters
    aws_region    = var.region.aws_region
    workers       = var.node_workers
    shard_secrets = []
  })
  metadata_options {
    http_tokens = "required"
  }
  root_block_device {
    volume_size = 200
    volume_type = "gp3"
    encrypted   = true
    kms_key_id  = aws_kms_key.master.arn
  }
  tags = merge(local.tags, { Name = var.region.nats.nodes[count.index].name })
}

resource "aws_route53_record" "nats" {
  count   = length(var.region.nats.nodes)
  zone_id = aws_route53_zone.private.zone_id
  name    = var.region.nats.nodes[count.index].host
  type    = "A"
  ttl     = 60
  records = [aws_instance.nats[count.index].private_ip]
}

# ------------------------------------------------------------ region nodes

resource "aws_launch_template" "node" {
  name_prefix            = "${local.name}-node-"
  image_id               = var.ami_id
  instance_type          = var.node_instance_type
  vpc_security_group_ids = [aws_security_group.node.id]
  iam_instance_profile {
    arn = aws_iam_instance_profile.node.arn
  }
  metadata_options {
    http_tokens = "required"
  }
  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", {
    world_json  = var.world_config_json
    region      = var.region.name
    role        = "region"
    unit        = "meridian-region@${var.region.name}-1"
    unit_config = "${var.region.name}-1"
    params      = var.region.secret_parameters
    aws_region  = var.region.aws_region
    workers     = var.node_workers
    shard_secrets = [for i, db in aws_db_instance.shard : {
      host = var.region.shards[i].host
      port = var.region.shards[i].port
      arn  = db.master_user_secret[0].secret_arn
    }]
  }))
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${local.name}-node" })
  }
}

resource "aws_lb" "api" {
  name               = substr("${local.name}-api", 0, 32)
  internal           = true
  load_balancer_type = "network"
  subnets            = aws_subnet.private[*].id
  tags               = local.tags
}

resource "aws_lb_target_group" "api" {
  name_prefix = "api-"
  port        = var.region.api.port
  protocol    = "TCP"
  vpc_id      = aws_vpc.this.id
  # A draining node answers /readyz 503 and is taken out before it stops.
  deregistration_delay = 35
  health_check {
    protocol = "HTTP"
    path     = "/readyz"
    port     = "traffic-port"
    interval = 10
  }
  tags = local.tags
}

resource "aws_lb_listener" "api" {
  load_balancer_arn = aws_lb.api.arn
  port              = var.region.api.port
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
}

resource "aws_autoscaling_group" "node" {
  name_prefix               = "${local.name}-node-"
  min_size                  = var.node_min
  max_size                  = var.node_max
  vpc_zone_identifier       = aws_subnet.private[*].id
  target_group_arns         = [aws_lb_target_group.api.arn]
  health_check_type         = "ELB"
  health_check_grace_period = 120
  launch_template {
    id      = aws_launch_template.node.id
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
  depends_on = [aws_instance.nats, aws_route53_record.shard, aws_route53_record.redis, aws_route53_record.nats]
}

resource "aws_route53_record" "api" {
  zone_id = aws_route53_zone.private.zone_id
  name    = var.region.api.host
  type    = "A"
  alias {
    name                   = aws_lb.api.dns_name
    zone_id                = aws_lb.api.zone_id
    evaluate_target_health = true
  }
}
