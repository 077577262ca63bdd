terraform {
  required_version = ">= 1.9.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.60"
    }
  }
  # Configure a backend (e.g. s3 with a lock table) before applying for real.
}

# Terraform cannot create provider configurations from a map, so each region
# of var.regions has a provider alias and a block of module calls below; the
# validation on var.regions says when they disagree.
provider "aws" {
  region = "us-east-1" # Route 53 (global) and the health checks
}

provider "aws" {
  alias  = "us_east"
  region = var.regions["us-east"].aws_region
}

provider "aws" {
  alias  = "eu_west"
  region = var.regions["eu-west"].aws_region
}

provider "aws" {
  alias  = "ap_south"
  region = var.regions["ap-south"].aws_region
}
