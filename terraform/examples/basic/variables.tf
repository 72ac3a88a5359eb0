variable "project_id" {
  type        = string
  description = "The Google Cloud project to deploy Rouse into."
}

variable "region" {
  type        = string
  description = "Region of the Cloud Run services, the database and the image repository."
  default     = "europe-west1"
}

variable "image" {
  type        = string
  description = "Container image of the rouse binary (ENTRYPOINT [\"rouse\"])."
}

variable "network_topic" {
  type        = string
  description = "The Octue network topic (main.octue.twined.services for Octue 0.69 clients)."
  default     = "octue.services"
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the database and the services from deletion; set to false (and apply) before destroying."
  default     = true
}
