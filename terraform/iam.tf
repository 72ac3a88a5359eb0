# One service account per role, each with only what its role needs.
# Secret access is in secrets.tf.

resource "google_service_account" "role" {
  for_each = local.roles

  project      = var.project_id
  account_id   = "${var.name_prefix}-${each.key}"
  display_name = "Rouse ${each.key}"
  description  = "Runs the Rouse ${each.key} role (Cloud Run service ${var.name_prefix}-${each.key})."

  depends_on = [google_project_service.enabled]
}

# Every role opens the store through the Cloud SQL connector.
resource "google_project_iam_member" "cloudsql_client" {
  for_each = local.roles

  project = var.project_id
  role    = "roles/cloudsql.client"
  member  = google_service_account.role[each.key].member
}

# Pub/Sub, project-wide because the topics and subscriptions are made at run
# time and their names are not known here. Both roles reconcile Pub/Sub with
# the store when they start (the network topic; each service's topic
# octue.services.<uuid> and its dispatcher subscription):
# - api: creates and deletes a service's topic and subscription as the
#   service is created and deleted;
# - dispatcher: creates its own subscriptions, pulls them, and publishes the
#   replies (acknowledgement, heartbeats, result) to the network topic; the
#   services it runs as processes publish their own events with its identity.
# roles/pubsub.editor is the narrowest predefined role that administers both
# topics and subscriptions.
resource "google_project_iam_member" "pubsub_editor" {
  for_each = toset(["api", "dispatcher"])

  project = var.project_id
  role    = "roles/pubsub.editor"
  member  = google_service_account.role[each.key].member
}

# The builder pushes the images it builds.
resource "google_artifact_registry_repository_iam_member" "builder_writer" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.role["builder"].member
}

# The dispatcher pulls them to run revisions.
resource "google_artifact_registry_repository_iam_member" "dispatcher_reader" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.role["dispatcher"].member
}

# Who may call the public services at all (Rouse checks every api call and
# every webhook signature itself). The dispatcher gets no invoker: nothing
# calls it.
resource "google_cloud_run_v2_service_iam_member" "api_public" {
  count = var.api_public ? 1 : 0

  project  = var.project_id
  location = google_cloud_run_v2_service.role["api"].location
  name     = google_cloud_run_v2_service.role["api"].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service_iam_member" "webhooks_public" {
  count = var.webhooks_public ? 1 : 0

  project  = var.project_id
  location = google_cloud_run_v2_service.role["builder"].location
  name     = google_cloud_run_v2_service.role["builder"].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
