output "api_url" {
  description = "URL of the Rouse API (gRPC over HTTPS): give it to the CLI as --endpoint or ROUSE_ENDPOINT."
  value       = google_cloud_run_v2_service.role["api"].uri
}

output "webhooks_url" {
  description = "The URL to give GitHub for push webhooks (content type application/json, the trigger's secret). Other hosts post to the same URL with /webhooks/git instead of /webhooks/github."
  value       = "${google_cloud_run_v2_service.role["builder"].uri}/webhooks/github"
}

output "network_topic" {
  description = "The Octue network topic id that askers publish questions to."
  value       = google_pubsub_topic.network.name
}

output "database_connection_name" {
  description = "The Cloud SQL instance's connection name (PROJECT:REGION:INSTANCE), e.g. for cloud-sql-proxy."
  value       = google_sql_database_instance.store.connection_name
}

output "registry" {
  description = "Where the builder pushes images (its --registry): REGION-docker.pkg.dev/PROJECT/REPOSITORY."
  value       = local.registry
}

output "service_accounts" {
  description = "Email of each role's service account: api, builder, dispatcher."
  value       = { for role, account in google_service_account.role : role => account.email }
}

output "store_url_secret" {
  description = "Id of the Secret Manager secret holding the store URL (with the database password); the value itself is not an output."
  value       = google_secret_manager_secret.store_url.secret_id
}

output "secrets_key_secret" {
  description = "Id of the Secret Manager secret holding the secrets key file; add its value with `gcloud secrets versions add` unless secrets_key_b64 was given."
  value       = google_secret_manager_secret.secrets_key.secret_id
}
