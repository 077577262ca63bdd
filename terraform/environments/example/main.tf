# The example environment: three regional cells, the NATS hub (one node per
# region), an edge PoP in each region and the global edge name, all derived
# from var.regions through the topology module.

module "topology" {
  source = "../../modules/topology"

  world_name    = var.world_name
  jurisdictions = var.jurisdictions
  regions = { for name, r in var.regions : name => {
    jurisdiction = r.jurisdiction
    aws_region   = r.aws_region
    slot         = r.slot
    shards       = r.shards
    nats_nodes   = r.nats_nodes
    az_count     = r.az_count
    nats_domain  = r.nats_domain
    token_keys   = r.token_keys
  } }
  edge_pops     = { for pop, e in var.edge_pops : pop => { region = e.region } }
  dns_zone      = var.dns_zone
  edge_dns_name = var.edge_dns_name
}

locals {
  regions     = module.topology.regions
  world_json  = module.topology.world_config_json
  world_cidrs = values(module.topology.vpc_cidrs)
  tags        = merge(var.tags, { "meridian:environment" = "example" })
}

# ------------------------------------------------------------------ cells

module "cell_us_east" {
  source    = "../../modules/region_cell"
  providers = { aws = aws.us_east }

  world_name         = var.world_name
  region             = local.regions["us-east"]
  world_config_json  = local.world_json
  peer_cidrs         = [for n, c in module.topology.vpc_cidrs : c if n != "us-east"]
  ami_id             = var.regions["us-east"].ami_id
  node_instance_type = var.regions["us-east"].node_instance_type
  node_min           = var.regions["us-east"].node_min
  node_max           = var.regions["us-east"].node_max
  db_instance_class  = var.regions["us-east"].db_instance_class
  tags               = local.tags
}

module "cell_eu_west" {
  source    = "../../modules/region_cell"
  providers = { aws = aws.eu_west }

  world_name         = var.world_name
  region             = local.regions["eu-west"]
  world_config_json  = local.world_json
  peer_cidrs         = [for n, c in module.topology.vpc_cidrs : c if n != "eu-west"]
  ami_id             = var.regions["eu-west"].ami_id
  node_instance_type = var.regions["eu-west"].node_instance_type
  node_min           = var.regions["eu-west"].node_min
  node_max           = var.regions["eu-west"].node_max
  db_instance_class  = var.regions["eu-west"].db_instance_class
  tags               = local.tags
}

module "cell_ap_south" {
  source    = "../../modules/region_cell"
  providers = { aws = aws.ap_south }

  world_name         = var.world_name
  region             = local.regions["ap-south"]
  world_config_json  = local.world_json
  peer_cidrs         = [for n, c in module.topology.vpc_cidrs : c if n != "ap-south"]
  ami_id             = var.regions["ap-south"].ami_id
  node_instance_type = var.regions["ap-south"].node_instance_type
  node_min           = var.regions["ap-south"].node_min
  node_max           = var.regions["ap-south"].node_max
  db_instance_class  = var.regions["ap-south"].db_instance_class
  tags               = local.tags
}

locals {
  cells = {
    us-east  = module.cell_us_east
    eu-west  = module.cell_eu_west
    ap-south = module.cell_ap_south
  }
  link = { for n, c in local.cells : n => {
    aws_region      = local.regions[n].aws_region
    vpc_id          = c.vpc_id
    vpc_cidr        = c.vpc_cidr
    route_table_ids = c.route_table_ids
    private_zone_id = c.private_zone_id
  } }
}

# ---------------------------------------------- peering (every pair once)

module "peer_us_east_eu_west" {
  source    = "../../modules/peering"
  providers = { aws.a = aws.us_east, aws.b = aws.eu_west }
  name      = "${var.world_name}-us-east--eu-west"
  a         = local.link["us-east"]
  b         = local.link["eu-west"]
  tags      = local.tags
}

module "peer_us_east_ap_south" {
  source    = "../../modules/peering"
  providers = { aws.a = aws.us_east, aws.b = aws.ap_south }
  name      = "${var.world_name}-us-east--ap-south"
  a         = local.link["us-east"]
  b         = local.link["ap-south"]
  tags      = local.tags
}

module "peer_eu_west_ap_south" {
  source    = "../../modules/peering"
  providers = { aws.a = aws.eu_west, aws.b = aws.ap_south }
  name      = "${var.world_name}-eu-west--ap-south"
  a         = local.link["eu-west"]
  b         = local.link["ap-south"]
  tags      = local.tags
}

# ------------------------------------------------ hub: one node per region

module "hub_us_east" {
  source    = "../../modules/hub"
  providers = { aws = aws.us_east }

  world_name            = var.world_name
  region                = local.regions["us-east"]
  index                 = index(module.topology.region_order, "us-east")
  world_config_json     = local.world_json
  vpc_id                = module.cell_us_east.vpc_id
  subnet_id             = module.cell_us_east.private_subnet_ids[0]
  private_zone_id       = module.cell_us_east.private_zone_id
  instance_profile_name = module.cell_us_east.instance_profile_name
  world_cidrs           = local.world_cidrs
  ami_id                = var.regions["us-east"].ami_id
  tags                  = local.tags
}

module "hub_eu_west" {
  source    = "../../modules/hub"
  providers = { aws = aws.eu_west }

  world_name            = var.world_name
  region                = local.regions["eu-west"]
  index                 = index(module.topology.region_order, "eu-west")
  world_config_json     = local.world_json
  vpc_id                = module.cell_eu_west.vpc_id
  subnet_id             = module.cell_eu_west.private_subnet_ids[0]
  private_zone_id       = module.cell_eu_west.private_zone_id
  instance_profile_name = module.cell_eu_west.instance_profile_name
  world_cidrs           = local.world_cidrs
  ami_id                = var.regions["eu-west"].ami_id
  tags                  = local.tags
}

module "hub_ap_south" {
  source    = "../../modules/hub"
  providers = { aws = aws.ap_south }

  world_name            = var.world_name
  region                = local.regions["ap-south"]
  index                 = index(module.topology.region_order, "ap-south")
  world_config_json     = local.world_json
  vpc_id                = module.cell_ap_south.vpc_id
  subnet_id             = module.cell_ap_south.private_subnet_ids[0]
  private_zone_id       = module.cell_ap_south.private_zone_id
  instance_profile_name = module.cell_ap_south.instance_profile_name
  world_cidrs           = local.world_cidrs
  ami_id                = var.regions["ap-south"].ami_id
  tags                  = local.tags
}

# ------------------------------------------------------ edges, global DNS

module "edge_us_east" {
  source    = "../../modules/edge"
  providers = { aws = aws.us_east }

  world_name            = var.world_name
  edge                  = module.topology.edges["us-east"]
  region                = local.regions["us-east"]
  world_config_json     = local.world_json
  vpc_id                = module.cell_us_east.vpc_id
  public_subnet_ids     = module.cell_us_east.public_subnet_ids
  private_subnet_ids    = module.cell_us_east.private_subnet_ids
  private_zone_id       = module.cell_us_east.private_zone_id
  instance_profile_name = module.cell_us_east.instance_profile_name
  certificate_arn       = var.edge_pops["us-east"].certificate_arn
  ami_id                = var.regions["us-east"].ami_id
  tags                  = local.tags
}

module "edge_eu_west" {
  source    = "../../modules/edge"
  providers = { aws = aws.eu_west }

  world_name            = var.world_name
  edge                  = module.topology.edges["eu-west"]
  region                = local.regions["eu-west"]
  world_config_json     = local.world_json
  vpc_id                = module.cell_eu_west.vpc_id
  public_subnet_ids     = module.cell_eu_west.public_subnet_ids
  private_subnet_ids    = module.cell_eu_west.private_subnet_ids
  private_zone_id       = module.cell_eu_west.private_zone_id
  instance_profile_name = module.cell_eu_west.instance_profile_name
  certificate_arn       = var.edge_pops["eu-west"].certificate_arn
  ami_id                = var.regions["eu-west"].ami_id
  tags                  = local.tags
}

module "edge_ap_south" {
  source    = "../../modules/edge"
  providers = { aws = aws.ap_south }

  world_name            = var.world_name
  edge                  = module.topology.edges["ap-south"]
  region                = local.regions["ap-south"]
  world_config_json     = local.world_json
  vpc_id                = module.cell_ap_south.vpc_id
  public_subnet_ids     = module.cell_ap_south.public_subnet_ids
  private_subnet_ids    = module.cell_ap_south.private_subnet_ids
  private_zone_id       = module.cell_ap_south.private_zone_id
  instance_profile_name = module.cell_ap_south.instance_profile_name
  certificate_arn       = var.edge_pops["ap-south"].certificate_arn
  ami_id                = var.regions["ap-south"].ami_id
  tags                  = local.tags
}

module "global_dns" {
  source = "../../modules/global_dns"

  zone_id = var.public_zone_id
  name    = module.topology.global_dns.name
  endpoints = {
    us-east  = { aws_region = local.regions["us-east"].aws_region, lb_dns_name = module.edge_us_east.lb_dns_name, lb_zone_id = module.edge_us_east.lb_zone_id }
    eu-west  = { aws_region = local.regions["eu-west"].aws_region, lb_dns_name = module.edge_eu_west.lb_dns_name, lb_zone_id = module.edge_eu_west.lb_zone_id }
    ap-south = { aws_region = local.regions["ap-south"].aws_region, lb_dns_name = module.edge_ap_south.lb_dns_name, lb_zone_id = module.edge_ap_south.lb_zone_id }
  }
}
