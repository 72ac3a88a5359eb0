# Rouse on Google Cloud with the module's defaults. See ../../README.md.
#
#   cp terraform.tfvars.example terraform.tfvars   # and fill it in
#   terraform init && terraform apply

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.5"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

module "rouse" {
  source = "../.."

  project_id          = var.project_id
  region              = var.region
  image               = var.image
  network_topic       = var.network_topic
  deletion_protection = var.deletion_protection
}
