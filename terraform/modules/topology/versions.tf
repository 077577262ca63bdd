# The topology module needs no provider: it only computes names, addresses and
# the world file from the description of the world, so that `terraform test`
# can check it offline and every cloud module consumes the same derivations.
terraform {
  required_version = ">= 1.9.0" # cross-variable references in validation blocks
}
