# Peering between two regions' VPCs (cross-region): routes both ways, and
# each region's private zone made resolvable from the other, so that hub
# leafnodes, edges and tools reach every region by its private names.

resource "aws_vpc_peering_connection" "this" {
  provider    = aws.a
  vpc_id      = var.a.vpc_id
  peer_vpc_id = var.b.vpc_id
  peer_region = var.b.aws_region
  tags        = merge(var.tags, { Name = var.name })
}

resource "aws_vpc_peering_connection_accepter" "this" {
  provider                  = aws.b
  vpc_peering_connection_id = aws_vpc_peering_connection.this.id
  auto_accept               = true
  tags                      = merge(var.tags, { Name = var.name })
}

resource "aws_route" "a_to_b" {
  provider                  = aws.a
  count                     = length(var.a.route_table_ids)
  route_table_id            = var.a.route_table_ids[count.index]
  destination_cidr_block    = var.b.vpc_cidr
  vpc_peering_connection_id = aws_vpc_peering_connection.this.id
}

resource "aws_route" "b_to_a" {
  provider                  = aws.b
  count                     = length(var.b.route_table_ids)
  route_table_id            = var.b.route_table_ids[count.index]
  destination_cidr_block    = var.a.vpc_cidr
  vpc_peering_connection_id = aws_vpc_peering_connection_accepter.this.id
}

resource "aws_route53_zone_association" "a_zone_in_b" {
  provider   = aws.a
  zone_id    = var.a.private_zone_id
  vpc_id     = var.b.vpc_id
  vpc_region = var.b.aws_region
}

resource "aws_route53_zone_association" "b_zone_in_a" {
  provider   = aws.b
  zone_id    = var.b.private_zone_id
  vpc_id     = var.a.vpc_id
  vpc_region = var.a.aws_region
}
