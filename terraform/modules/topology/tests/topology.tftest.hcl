# terraform test for the topology module: real assertions on computed values.
# Runs offline (no provider). `apply` is safe: the module creates no resources.

variables {
  world_name = "example"
  jurisdictions = [
    { name = "US", description = "United States" },
    { name = "EU", description = "European Union (GDPR)" },
    { name = "IN", description = "India (DPDP Act)" },
  ]
  regions = {
    us-east  = { jurisdiction = "US", aws_region = "us-east-1", slot = 0 }
    eu-west  = { jurisdiction = "EU", aws_region = "eu-west-1", slot = 1 }
    ap-south = { jurisdiction = "IN", aws_region = "ap-south-1", slot = 2, shards = 3, nats_nodes = 1 }
  }
  edge_pops = {
    us-east  = { region = "us-east" }
    eu-west  = { region = "eu-west" }
    ap-south = { region = "ap-south" }
  }
}

run "example" {
  command = apply

  # No two VPC blocks overlap (start/end as integers, recomputed here rather
  # than trusted from the module).
  assert {
    condition = alltrue([for pair in setproduct(keys(output.vpc_cidrs), keys(output.vpc_cidrs)) : pair[0] == pair[1] || (
      parseint(join("", [for o in split(".", cidrhost(output.vpc_cidrs[pair[0]], 0)) : format("%02x", tonumber(o))]), 16) + pow(2, 32 - tonumber(split("/", output.vpc_cidrs[pair[0]])[1]))
      <= parseint(join("", [for o in split(".", cidrhost(output.vpc_cidrs[pair[1]], 0)) : format("%02x", tonumber(o))]), 16)
      ) || (
      parseint(join("", [for o in split(".", cidrhost(output.vpc_cidrs[pair[1]], 0)) : format("%02x", tonumber(o))]), 16) + pow(2, 32 - tonumber(split("/", output.vpc_cidrs[pair[1]])[1]))
      <= parseint(join("", [for o in split(".", cidrhost(output.vpc_cidrs[pair[0]], 0)) : format("%02x", tonumber(o))]), 16)
    )])
    error_message = "two regions' VPC CIDR blocks overlap: ${jsonencode(output.vpc_cidrs)}"
  }

  # Within each region: its subnets lie inside its VPC and do not overlap each other.
  assert {
    condition = alltrue([for n, r in output.regions : alltrue([for s in concat(r.private_subnets, r.public_subnets) :
      parseint(join("", [for o in split(".", cidrhost(s, 0)) : format("%02x", tonumber(o))]), 16) >= parseint(join("", [for o in split(".", cidrhost(r.vpc_cidr, 0)) : format("%02x", tonumber(o))]), 16)
      && parseint(join("", [for o in split(".", cidrhost(s, -1)) : format("%02x", tonumber(o))]), 16) <= parseint(join("", [for o in split(".", cidrhost(r.vpc_cidr, -1)) : format("%02x", tonumber(o))]), 16)
    ])])
    error_message = "a subnet lies outside its region's VPC block"
  }

  assert {
    condition = alltrue([for n, r in output.regions : alltrue([for pair in setproduct(concat(r.private_subnets, r.public_subnets), concat(r.private_subnets, r.public_subnets)) : pair[0] == pair[1] || (
      parseint(join("", [for o in split(".", cidrhost(pair[0], -1)) : format("%02x", tonumber(o))]), 16) < parseint(join("", [for o in split(".", cidrhost(pair[1], 0)) : format("%02x", tonumber(o))]), 16)
      || parseint(join("", [for o in split(".", cidrhost(pair[1], -1)) : format("%02x", tonumber(o))]), 16) < parseint(join("", [for o in split(".", cidrhost(pair[0], 0)) : format("%02x", tonumber(o))]), 16)
      )]) && length(distinct(concat(r.private_subnets, r.public_subnets))) == length(concat(r.private_subnets, r.public_subnets))
    ])
    error_message = "two subnets of one region overlap"
  }

  # One JetStream domain per region, and the world file says the same.
  assert {
    condition     = length(distinct([for r in output.world_config.regions : r.nats.domain])) == 3 && alltrue([for r in output.world_config.regions : r.nats.domain == output.regions[r.name].nats.domain])
    error_message = "regions must have one JetStream domain each"
  }

  assert {
    condition     = output.regions["eu-west"].nats.domain == "eu-west" && output.regions["us-east"].nats.domain == "us-east"
    error_message = "a region's JetStream domain defaults to its name"
  }

  # Every region is in the residency catalog, under its own jurisdiction, once.
  assert {
    condition = alltrue([for r in output.world_config.regions :
      contains([for j in output.world_config.jurisdictions : j.name], r.jurisdiction)
      && output.catalog.regions[r.name] == r.jurisdiction
      && length([for j in output.catalog.jurisdictions : j if contains(j.regions, r.name)]) == 1
    ]) && length(output.catalog.regions) == 3
    error_message = "every region must be in the residency catalog under its jurisdiction"
  }

  assert {
    condition     = jsonencode([for j in output.catalog.jurisdictions : j.regions]) == jsonencode([["us-east"], ["eu-west"], ["ap-south"]])
    error_message = "catalog: ${jsonencode(output.catalog)}"
  }

  # The world file's shape is the local world's (deploy/local/lib/stack.mjs worldDocument).
  assert {
    condition     = jsonencode(sort(keys(output.world_config))) == jsonencode(["edges", "format", "hub", "jurisdictions", "name", "regions"]) && output.world_config.format == "meridian-world/1" && output.world_config.name == "example"
    error_message = "world_config top-level fields differ from meridian-world/1"
  }

  assert {
    condition = alltrue([for r in output.world_config.regions :
      jsonencode(sort(keys(r))) == jsonencode(["api", "jurisdiction", "name", "nats", "postgres", "redis"])
      && jsonencode(sort(keys(r.nats))) == jsonencode(["domain", "urls"]) && jsonencode(sort(keys(r.redis))) == jsonencode(["host", "port"])
      && jsonencode(keys(r.postgres)) == jsonencode(["shards"]) && jsonencode(keys(r.api)) == jsonencode(["urls"])
    ])
    error_message = "a region of world_config does not have the fields of meridian-world/1"
  }

  assert {
    condition     = jsonencode([for r in output.world_config.regions : r.name]) == jsonencode(["us-east", "eu-west", "ap-south"])
    error_message = "regions are listed in slot order"
  }

  assert {
    condition = alltrue([for r in output.world_config.regions :
      alltrue([for i, s in r.postgres.shards : s.id == i])
      && alltrue([for s in r.postgres.shards : !strcontains(lower(s.conninfo), "password") && startswith(s.conninfo, "host=pg-${s.id}.${r.name}.meridian.internal ")])
    ]) && length(output.world_config.regions[2].postgres.shards) == 3
    error_message = "shard ids must run 0..n-1 and conninfos carry no password"
  }

  assert {
    condition = alltrue([for r in output.world_config.regions :
      alltrue([for u in r.nats.urls : can(regex("^nats://[a-z0-9.-]+:[0-9]+$", u))])
      && alltrue([for u in r.api.urls : can(regex("^https?://[a-z0-9.-]+:[0-9]+$", u))])
    ]) && length(output.world_config.regions[0].nats.urls) == 3 && length(output.world_config.regions[2].nats.urls) == 1
    error_message = "NATS and API URLs must be nats:// and http(s):// URLs, one per NATS node"
  }

  # The hub: one node per region; every region's leaf remote lists all of them.
  assert {
    condition = jsonencode(output.world_config.hub.leaf_urls) == jsonencode([
      "nats-leaf://hub.us-east.meridian.internal:7422",
      "nats-leaf://hub.eu-west.meridian.internal:7422",
      "nats-leaf://hub.ap-south.meridian.internal:7422",
    ]) && alltrue([for r in values(output.regions) : jsonencode(r.nats.leaf_remote_urls) == jsonencode(output.world_config.hub.leaf_urls) && jsonencode(r.nats.leaf_deny) == jsonencode(["ev.>"])])
    error_message = "hub leaf URLs: ${jsonencode(output.world_config.hub)}"
  }

  assert {
    condition     = jsonencode(output.peerings) == jsonencode([{ a = "us-east", b = "eu-west" }, { a = "us-east", b = "ap-south" }, { a = "eu-west", b = "ap-south" }])
    error_message = "peerings must list every pair of regions once"
  }

  assert {
    condition     = jsonencode([for e in output.world_config.edges : e.name]) == jsonencode(["edge-ap-south", "edge-eu-west", "edge-us-east"]) && alltrue([for e in output.world_config.edges : contains(keys(output.regions), e.region)])
    error_message = "edges: ${jsonencode(output.world_config.edges)}"
  }

  # No secrets anywhere in the world file.
  assert {
    condition     = !can(regex("(?i)password|secret|BEGIN [A-Z ]*PRIVATE KEY", output.world_config_json))
    error_message = "the world file must carry no secrets"
  }

  assert {
    condition     = jsondecode(output.world_config_json) == output.world_config
    error_message = "world_config_json must be world_config encoded"
  }
}

# Adding a region (a new slot) moves nothing that exists.
run "add_region" {
  command = apply

  variables {
    regions = {
      us-east  = { jurisdiction = "US", aws_region = "us-east-1", slot = 0 }
      eu-west  = { jurisdiction = "EU", aws_region = "eu-west-1", slot = 1 }
      ap-south = { jurisdiction = "IN", aws_region = "ap-south-1", slot = 2, shards = 3, nats_nodes = 1 }
      eu-north = { jurisdiction = "EU", aws_region = "eu-north-1", slot = 3, token_keys = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] }
    }
  }

  assert {
    condition     = alltrue([for n, c in run.example.vpc_cidrs : output.vpc_cidrs[n] == c]) && length(output.vpc_cidrs) == 4
    error_message = "adding a region changed an existing region's VPC block"
  }

  assert {
    condition     = jsonencode(slice(output.world_config.regions, 0, 3)) == jsonencode(run.example.world_config.regions)
    error_message = "adding a region changed what the world file says about the others"
  }

  assert {
    condition     = jsonencode(output.world_config.regions[3].token_keys) == jsonencode(["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]) && jsonencode(output.catalog.jurisdictions[1].regions) == jsonencode(["eu-west", "eu-north"]) && !contains(keys(output.world_config.regions[0]), "token_keys")
    error_message = "token_keys appear only when given; EU holds two regions"
  }
}

run "unknown_jurisdiction_refused" {
  command = plan
  variables {
    regions = {
      us-east = { jurisdiction = "US", aws_region = "us-east-1", slot = 0 }
      br-east = { jurisdiction = "BR", aws_region = "sa-east-1", slot = 1 }
    }
    edge_pops = {}
  }
  expect_failures = [var.regions]
}

run "shared_slot_refused" {
  command = plan
  variables {
    regions = {
      us-east = { jurisdiction = "US", aws_region = "us-east-1", slot = 0 }
      eu-west = { jurisdiction = "EU", aws_region = "eu-west-1", slot = 0 }
    }
    edge_pops = {}
  }
  expect_failures = [var.regions]
}

run "shared_domain_refused" {
  command = plan
  variables {
    regions = {
      us-east = { jurisdiction = "US", aws_region = "us-east-1", slot = 0 }
      eu-west = { jurisdiction = "EU", aws_region = "eu-west-1", slot = 1, nats_domain = "us-east" }
    }
    edge_pops = {}
  }
  expect_failures = [var.regions]
}

run "edge_in_unknown_region_refused" {
  command = plan
  variables {
    edge_pops = { sa-east = { region = "sa-east" } }
  }
  expect_failures = [var.edge_pops]
}

run "bad_token_key_refused" {
  command = plan
  variables {
    regions = {
      us-east = { jurisdiction = "US", aws_region = "us-east-1", slot = 0, token_keys = ["not-a-key"] }
    }
    edge_pops = {}
  }
  expect_failures = [var.regions]
}
