output "api_url" {
  description = "URL of the Rouse API, for the CLI's --endpoint."
  value       = module.rouse.api_url
}

output "webhooks_url" {
  description = "URL to configure as the GitHub push webhook."
  value       = module.rouse.webhooks_url
}

output "network_topic" {
  description = "The Octue network topic askers publish to."
  value       = module.rouse.network_topic
}

output "registry" {
  description = "Where built images are pushed."
  value       = module.rouse.registry
}

output "service_accounts" {
  description = "Each role's service account email."
  value       = module.rouse.service_accounts
}

output "secrets_key_secret" {
  description = "The secret to add the secrets key file to."
  value       = module.rouse.secrets_key_secret
}
