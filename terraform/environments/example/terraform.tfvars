# The example world: three regions in three jurisdictions, an edge PoP in
# each. Replace the AMIs, certificates and zone with your own.
world_name = "example"

jurisdictions = [
  { name = "US", description = "United States" },
  { name = "EU", description = "European Union (GDPR)" },
  { name = "IN", description = "India (DPDP Act)" },
]

regions = {
  us-east  = { jurisdiction = "US", aws_region = "us-east-1", slot = 0, ami_id = "ami-00000000000000000" }
  eu-west  = { jurisdiction = "EU", aws_region = "eu-west-1", slot = 1, ami_id = "ami-00000000000000001" }
  ap-south = { jurisdiction = "IN", aws_region = "ap-south-1", slot = 2, ami_id = "ami-00000000000000002" }
}

edge_pops = {
  us-east  = { region = "us-east", certificate_arn = "arn:aws:acm:us-east-1:000000000000:certificate/example" }
  eu-west  = { region = "eu-west", certificate_arn = "arn:aws:acm:eu-west-1:000000000000:certificate/example" }
  ap-south = { region = "ap-south", certificate_arn = "arn:aws:acm:ap-south-1:000000000000:certificate/example" }
}

edge_dns_name  = "edge.meridian.example"
public_zone_id = "Z0000000000000000000"
