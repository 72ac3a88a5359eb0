variable "project_id" {
  type        = string
  description = "The Google Cloud project to deploy Rouse into: its Pub/Sub topics, database, secrets, registry and Cloud Run services all live there."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id: 6-30 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  type        = string
  description = "Region of the Cloud Run services, the Cloud SQL instance and the Artifact Registry repository."
  default     = "europe-west1"
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name: service accounts (PREFIX-api, PREFIX-builder, PREFIX-dispatcher), Cloud Run services, the Cloud SQL instance, the secrets (PREFIX-store-url, PREFIX-secrets-key) and the Artifact Registry repository (PREFIX)."
  default     = "rouse"

  validation {
    # PREFIX-dispatcher must fit a service account id (6-30 characters).
    condition     = can(regex("^[a-z][a-z0-9-]{0,17}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2-19 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "image" {
  type        = string
  description = "Container image of the rouse binary (ENTRYPOINT [\"rouse\"]), e.g. europe-west1-docker.pkg.dev/PROJECT/rouse/rouse:TAG. Every role runs it as `rouse server`."

  validation {
    condition     = length(trimspace(var.image)) > 0
    error_message = "image must name the container image of the rouse binary."
  }
}

variable "network_topic" {
  type        = string
  description = "The Octue network topic that the dispatcher pulls questions from (Rouse's --network-topic). Octue 0.69 clients use main.octue.twined.services."
  default     = "octue.services"

  validation {
    # Pub/Sub's rule for topic ids, as Rouse checks it.
    condition     = can(regex("^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$", var.network_topic)) && !startswith(var.network_topic, "goog")
    error_message = "network_topic must be a Pub/Sub topic id: 3-255 letters, digits and -_.~+%, starting with a letter, not starting with goog."
  }
}

variable "database_tier" {
  type        = string
  description = "Machine tier of the Cloud SQL for PostgreSQL instance. db-f1-micro (shared core, at most 25 connections) is enough to try Rouse; take db-g1-small or a db-custom-* tier for real use."
  default     = "db-f1-micro"
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the Cloud SQL instance (in Terraform and in Google Cloud) and the Cloud Run services from deletion. Set it to false, and apply, before `terraform destroy`."
  default     = true
}

variable "api_public" {
  type        = bool
  description = "Let anyone on the internet reach the api (allUsers get roles/run.invoker). Rouse authenticates and authorizes every call itself (its token in the authorization header), so this is the default. Without it Cloud Run checks a Google identity token first, which the Rouse CLI does not send: only clients that add one (in X-Serverless-Authorization) get through."
  default     = true
}

variable "webhooks_public" {
  type        = bool
  description = "Let anyone on the internet reach the builder's webhooks (allUsers get roles/run.invoker): GitHub must, and every delivery is checked against the trigger's HMAC secret."
  default     = true
}

variable "dispatcher_count" {
  type        = number
  description = "How many dispatcher instances run. They share the services (each runs those whose lease it holds), and when one dies the others take its services over within about 10 s. Each holds up to 32 database connections when busy: keep dispatchers + api instances within the database tier's connection limit."
  default     = 1

  validation {
    condition     = var.dispatcher_count >= 1 && var.dispatcher_count <= 10 && floor(var.dispatcher_count) == var.dispatcher_count
    error_message = "dispatcher_count must be a whole number from 1 to 10."
  }
}

variable "api_max_instances" {
  type        = number
  description = "Most Cloud Run instances of the api. Each holds up to 32 database connections when busy: keep it within the database tier's connection limit."
  default     = 3

  validation {
    condition     = var.api_max_instances >= 1 && floor(var.api_max_instances) == var.api_max_instances
    error_message = "api_max_instances must be a whole number of at least 1."
  }
}

variable "secrets_key_b64" {
  type        = string
  description = "Optional: the secrets key file (32 bytes) base64-encoded (`base64 -w0 secrets.key`). When set, Terraform stores it as the first version of the PREFIX-secrets-key secret (it is then in the Terraform state); when empty, add the version yourself with `gcloud secrets versions add`."
  default     = ""
  sensitive   = true

  validation {
    condition     = var.secrets_key_b64 == "" || can(regex("^[A-Za-z0-9+/]{43}=$", var.secrets_key_b64))
    error_message = "secrets_key_b64 must be empty or the base64 of a 32-byte key file (44 characters)."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every resource that takes labels (with app = rouse)."
  default     = {}
}
