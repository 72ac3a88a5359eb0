# Two secrets in Secret Manager, readable by the three service accounts only:
# the store's URL (it holds the database password, so it never appears in a
# service's plain environment) and the key sealing Rouse's service secrets.

resource "google_secret_manager_secret" "store_url" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-store-url"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_version" "store_url" {
  secret      = google_secret_manager_secret.store_url.id
  secret_data = local.store_url
}

# The secrets key file (Rouse's --secrets-key): 32 bytes, the same file for
# every role. Its value is added out of band (see README.md):
#   gcloud secrets versions add PREFIX-secrets-key --data-file=secrets.key
# or given as var.secrets_key_b64, which makes the version here.
resource "google_secret_manager_secret" "secrets_key" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-secrets-key"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_version" "secrets_key" {
  # Whether a key was given is not secret; the key is.
  count = nonsensitive(var.secrets_key_b64 != "") ? 1 : 0

  secret                = google_secret_manager_secret.secrets_key.id
  secret_data           = var.secrets_key_b64
  is_secret_data_base64 = true
}

locals {
  # The services read the key Terraform stored, or else the newest version
  # the operator added.
  secrets_key_version = length(google_secret_manager_secret_version.secrets_key) > 0 ? google_secret_manager_secret_version.secrets_key[0].version : "latest"

  secrets = {
    store_url   = google_secret_manager_secret.store_url
    secrets_key = google_secret_manager_secret.secrets_key
  }
}

# Every role reads both secrets: all open the store, and all use the key
# (the api seals, the builder opens trigger secrets, the dispatcher opens
# service secrets).
resource "google_secret_manager_secret_iam_member" "access" {
  for_each = {
    for pair in setproduct(keys(local.secrets), local.roles) :
    "${pair[0]}-${pair[1]}" => { secret = pair[0], role = pair[1] }
  }

  project   = var.project_id
  secret_id = local.secrets[each.value.secret].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.role[each.value.role].member
}
