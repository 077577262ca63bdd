locals {
  zone = var.dns_zone
  p    = var.ports

  # Regions in slot order: the world file lists them in this order, and a new
  # region (a new slot) is appended without moving the others.
  order = [for s in sort([for n, r in var.regions : format("%05d/%s", r.slot, n)]) : split("/", s)[1]]

  vpc_cidrs = { for n, r in var.regions : n => cidrsubnet(var.base_cidr, var.region_newbits, r.slot) }

  regions = { for n, r in var.regions : n => {
    name         = n
    jurisdiction = r.jurisdiction
    aws_region   = r.aws_region
    slot         = r.slot
    vpc_cidr     = local.vpc_cidrs[n]
    # Sixteen equal blocks per VPC: 0-7 private (one per AZ), 8-15 public.
    private_subnets = [for i in range(r.az_count) : cidrsubnet(local.vpc_cidrs[n], 4, i)]
    public_subnets  = [for i in range(r.az_count) : cidrsubnet(local.vpc_cidrs[n], 4, 8 + i)]
    dns_zone        = "${n}.${local.zone}"

    shards = [for i in range(r.shards) : {
      id         = i
      identifier = "${var.world_name}-${n}-pg-${i}"
      host       = "pg-${i}.${n}.${local.zone}"
      port       = local.p.postgres
      conninfo   = "host=pg-${i}.${n}.${local.zone} port=${local.p.postgres} dbname=${var.postgres_database} user=${var.postgres_database} sslmode=${var.postgres_sslmode}"
    }]

    redis = {
      identifier = "${var.world_name}-${n}-redis"
      host       = "redis.${n}.${local.zone}"
      port       = local.p.redis
    }

    nats = {
      domain  = coalesce(r.nats_domain, n)
      cluster = "${n}-nats"
      nodes = [for i in range(r.nats_nodes) : {
        name     = "${n}-nats-${i}"
        host     = "nats-${i}.${n}.${local.zone}"
        url      = "nats://nats-${i}.${n}.${local.zone}:${local.p.nats}"
        route    = "nats-route://nats-${i}.${n}.${local.zone}:${local.p.nats_cluster}"
        az_index = i % r.az_count
      }]
      urls = [for i in range(r.nats_nodes) : "nats://nats-${i}.${n}.${local.zone}:${local.p.nats}"]
      # Leafnode remote to the hub: one remote listing every hub node; raw
      # events never cross the link by subject interest (design.md).
      leaf_remote_urls = [for h in local.order : "nats-leaf://hub.${h}.${local.zone}:${local.p.leafnode}"]
      leaf_deny        = ["ev.>"]
    }

    api = {
      host = "api.${n}.${local.zone}"
      port = local.p.api
      url  = "http://api.${n}.${local.zone}:${local.p.api}"
    }

    hub_node = {
      name     = "hub-${n}"
      host     = "hub.${n}.${local.zone}"
      leaf_url = "nats-leaf://hub.${n}.${local.zone}:${local.p.leafnode}"
      route    = "nats-route://hub.${n}.${local.zone}:${local.p.nats_cluster}"
    }

    # Names only: the key material never passes through Terraform (state is
    # not a secret store). Operators put the values as SecureStrings under
    # these names, encrypted with the region's KMS key (docs/operations.md).
    kms_alias = "alias/meridian-${var.world_name}-${n}-master"
    secret_parameters = {
      signing_key    = "/meridian/${var.world_name}/${n}/signing-key"
      email_hash_key = "/meridian/${var.world_name}/email-hash-key"
      edge_token     = "/meridian/${var.world_name}/edge-directory-token"
      # Wraps the region's data keys (docs/encryption.md); read by region
      # nodes only. Rotation: a new parameter value, the old one kept under
      # master_key_previous until --rewrap-keys has run.
      master_key = "/meridian/${var.world_name}/${n}/master-key"
    }
    token_keys = r.token_keys
  } }

  hub = {
    cluster   = "${var.world_name}-hub"
    nodes     = [for n in local.order : local.regions[n].hub_node]
    leaf_urls = [for n in local.order : local.regions[n].hub_node.leaf_url]
    routes    = [for n in local.order : local.regions[n].hub_node.route]
  }

  edges = { for pop, e in var.edge_pops : pop => {
    name       = "edge-${pop}"
    pop        = pop
    region     = e.region
    aws_region = var.regions[e.region].aws_region
    host       = "edge-${pop}.${e.region}.${local.zone}"
    port       = local.p.edge
    url        = "http://edge-${pop}.${e.region}.${local.zone}:${local.p.edge}"
  } }
  edge_order = sort(keys(var.edge_pops))

  catalog = {
    jurisdictions = [for j in var.jurisdictions : {
      name        = j.name
      description = j.description
      regions     = [for n in local.order : n if var.regions[n].jurisdiction == j.name]
    }]
    regions = { for n in local.order : n => var.regions[n].jurisdiction }
  }

  # The world file (docs/world-config.md), the same shape as the one
  # deploy/local/world writes: addresses only, never secrets.
  world_config = {
    format        = "meridian-world/1"
    name          = var.world_name
    jurisdictions = [for j in var.jurisdictions : { name = j.name, description = j.description }]
    hub           = { leaf_urls = local.hub.leaf_urls }
    regions = [for n in local.order : merge(
      {
        name         = n
        jurisdiction = local.regions[n].jurisdiction
        nats         = { domain = local.regions[n].nats.domain, urls = local.regions[n].nats.urls }
        postgres     = { shards = [for s in local.regions[n].shards : { id = s.id, conninfo = s.conninfo }] }
        redis        = { host = local.regions[n].redis.host, port = local.regions[n].redis.port }
        api          = { urls = [local.regions[n].api.url] }
      },
      # token_keys is optional in the format: present only when known.
      { for k, v in { token_keys = local.regions[n].token_keys } : k => v if length(v) > 0 },
    )]
    edges = [for pop in local.edge_order : {
      name   = local.edges[pop].name
      pop    = pop
      region = local.edges[pop].region
      urls   = [local.edges[pop].url]
    }]
  }

  # Every pair of regions once (VPC peering, hub routes): [a, b] with a before b.
  peerings = flatten([for i, a in local.order : [for b in slice(local.order, i + 1, length(local.order)) : { a = a, b = b }]])
}
