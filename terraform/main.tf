# Rouse on Google Cloud: the network topic, the Artifact Registry
# repository and what every other file shares. The database is in
# database.tf, the secrets in secrets.tf, service accounts and IAM in iam.tf,
# the Cloud Run services in run.tf.

locals {
  # The roles of `rouse server`, one Cloud Run service and service account each.
  roles = toset(["api", "builder", "dispatcher"])

  labels = merge({ app = "rouse" }, var.labels)

  # Where built images go (the builder's --registry).
  registry = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"

  # The secrets key file, mounted from Secret Manager into every service.
  secrets_dir      = "/secrets"
  secrets_key_file = "secrets.key"

  apis = toset([
    "run.googleapis.com",
    "pubsub.googleapis.com",
    "sqladmin.googleapis.com",
    "secretmanager.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    # Project IAM bindings (google_project_iam_member) go through it.
    "cloudresourcemanager.googleapis.com",
  ])
}

resource "google_project_service" "enabled" {
  for_each = local.apis

  project = var.project_id
  service = each.value
  # Other things in the project may use these APIs too.
  disable_on_destroy = false
}

# The Octue network topic: askers publish questions addressed by recipient
# SRUID here and the dispatcher pulls them. Each service's own topic
# (octue.services.<uuid>) and every subscription are made by Rouse at run
# time, not here. If the topic exists already, import it (prefix the address
# with module.NAME. when this is a child module):
#   terraform import google_pubsub_topic.network projects/PROJECT/topics/TOPIC
resource "google_pubsub_topic" "network" {
  project = var.project_id
  name    = var.network_topic
  labels  = local.labels

  depends_on = [google_project_service.enabled]
}

# Images the builder pushes (<registry>/<project>-<service>:<commit12>).
resource "google_artifact_registry_repository" "images" {
  project       = var.project_id
  location      = var.region
  repository_id = var.name_prefix
  format        = "DOCKER"
  description   = "Images built by Rouse"
  labels        = local.labels

  depends_on = [google_project_service.enabled]
}
