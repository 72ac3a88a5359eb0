# The store: Cloud SQL for PostgreSQL, shared by every role. Cloud Run
# reaches it through the Cloud SQL connector's Unix socket
# (/cloudsql/CONNECTION_NAME, see run.tf), so no network or authorized
# networks are needed.

# A deleted instance's name stays taken for a week: a suffix lets a new one
# be made at once.
resource "random_id" "database" {
  byte_length = 3
}

resource "random_password" "database" {
  length = 32
  # Letters and digits only: the password goes into a URL unescaped.
  special = false
}

resource "google_sql_database_instance" "store" {
  project             = var.project_id
  name                = "${var.name_prefix}-${random_id.database.hex}"
  region              = var.region
  database_version    = "POSTGRES_15"
  deletion_protection = var.deletion_protection

  settings {
    tier = var.database_tier
    # Shared-core tiers (db-f1-micro, db-g1-small) exist only in this edition.
    edition                     = "ENTERPRISE"
    availability_type           = "ZONAL"
    deletion_protection_enabled = var.deletion_protection
    user_labels                 = local.labels

    ip_configuration {
      # The connector uses the public IP, always over TLS; nothing else may
      # connect (no authorized networks, unencrypted connections refused).
      ipv4_enabled = true
      ssl_mode     = "ENCRYPTED_ONLY"
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_sql_database" "rouse" {
  project  = var.project_id
  instance = google_sql_database_instance.store.name
  name     = "rouse"
}

resource "google_sql_user" "rouse" {
  project  = var.project_id
  instance = google_sql_database_instance.store.name
  name     = "rouse"
  password = random_password.database.result
  # PostgreSQL refuses to drop a user that owns tables; the instance goes
  # with its users anyway.
  deletion_policy = "ABANDON"
}

locals {
  # tokio-postgres (Rouse's --store): an empty host and `host=/path` in the
  # query make a Unix-socket connection to /path/.s.PGSQL.5432, the socket
  # Cloud Run's Cloud SQL volume provides.
  store_url = format(
    "postgres://%s:%s@/%s?host=/cloudsql/%s",
    google_sql_user.rouse.name,
    random_password.database.result,
    google_sql_database.rouse.name,
    google_sql_database_instance.store.connection_name,
  )
}
