# The roles of `rouse server`, one Cloud Run service each, all from
# var.image and configured through Rouse's environment variables.

locals {
  # What every role is told.
  common_env = {
    ROUSE_PUBSUB         = "google"
    GOOGLE_CLOUD_PROJECT = var.project_id
    ROUSE_NETWORK_TOPIC  = google_pubsub_topic.network.name
    ROUSE_SECRETS_KEY    = "${local.secrets_dir}/${local.secrets_key_file}"
    ROUSE_LOG_FORMAT     = "json"
    # Working state (git caches, instance logs): the in-memory /tmp.
    ROUSE_DATA_DIR = "/tmp/rouse"
  }

  services = {
    api = {
      env = {
        ROUSE_ROLES      = "api"
        ROUSE_API_LISTEN = "0.0.0.0:8080"
      }
      # gRPC: Cloud Run forwards HTTP/2 cleartext.
      port    = "h2c"
      ingress = "INGRESS_TRAFFIC_ALL"
      min     = 0
      max     = var.api_max_instances
      # Idle between calls; CPU only while serving.
      cpu_idle = true
      cpu      = "1"
      memory   = "512Mi"
      # Streaming calls (`rouse ask --wait`, `rouse logs --follow`) stay open.
      timeout = "3600s"
    }

    builder = {
      env = {
        ROUSE_ROLES          = "builder"
        ROUSE_WEBHOOK_LISTEN = "0.0.0.0:8080"
        ROUSE_REGISTRY       = local.registry
      }
      port    = "http1"
      ingress = "INGRESS_TRAFFIC_ALL"
      # One builder: its build queue is in its process. A build runs after
      # the webhook is answered, so the CPU must stay allocated.
      min      = 1
      max      = 1
      cpu_idle = false
      cpu      = "2"
      memory   = "2Gi"
      timeout  = "300s"
    }

    dispatcher = {
      env = {
        # Cloud Run starts a revision only once its container listens on
        # $PORT (the default TCP startup probe), and the dispatcher role
        # alone listens on nothing: this service also runs an api, reachable
        # only from inside the project (internal ingress, no invoker).
        ROUSE_ROLES      = "dispatcher,api"
        ROUSE_API_LISTEN = "0.0.0.0:8080"
      }
      port    = "h2c"
      ingress = "INGRESS_TRAFFIC_INTERNAL_ONLY"
      # Always on, CPU always allocated: it pulls Pub/Sub streams and runs
      # the services' instances (as processes in this container).
      min      = var.dispatcher_count
      max      = var.dispatcher_count
      cpu_idle = false
      cpu      = "2"
      memory   = "2Gi"
      timeout  = "300s"
    }
  }
}

resource "google_cloud_run_v2_service" "role" {
  for_each = local.services

  project             = var.project_id
  name                = "${var.name_prefix}-${each.key}"
  location            = var.region
  ingress             = each.value.ingress
  deletion_protection = var.deletion_protection
  labels              = local.labels

  template {
    service_account       = google_service_account.role[each.key].email
    timeout               = each.value.timeout
    execution_environment = "EXECUTION_ENVIRONMENT_GEN2"
    labels                = local.labels

    scaling {
      min_instance_count = each.value.min
      max_instance_count = each.value.max
    }

    volumes {
      name = "cloudsql"
      cloud_sql_instance {
        instances = [google_sql_database_instance.store.connection_name]
      }
    }

    volumes {
      name = "secrets-key"
      secret {
        secret = google_secret_manager_secret.secrets_key.secret_id
        # 0400 (HCL has no octal literals): Rouse refuses a key file that
        # group or others may read.
        default_mode = 256
        items {
          path    = local.secrets_key_file
          version = local.secrets_key_version
          mode    = 256
        }
      }
    }

    containers {
      image = var.image
      args  = ["server"]

      ports {
        name           = each.value.port
        container_port = 8080
      }

      resources {
        cpu_idle = each.value.cpu_idle
        limits = {
          cpu    = each.value.cpu
          memory = each.value.memory
        }
      }

      env {
        name = "ROUSE_STORE"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.store_url.secret_id
            version = google_secret_manager_secret_version.store_url.version
          }
        }
      }

      dynamic "env" {
        for_each = merge(local.common_env, each.value.env)
        content {
          name  = env.key
          value = env.value
        }
      }

      volume_mounts {
        name       = "cloudsql"
        mount_path = "/cloudsql"
      }

      volume_mounts {
        name       = "secrets-key"
        mount_path = local.secrets_dir
      }
    }
  }

  depends_on = [
    google_project_service.enabled,
    # A revision fails to start when it cannot read its secrets or reach
    # the database yet.
    google_secret_manager_secret_iam_member.access,
    google_project_iam_member.cloudsql_client,
    google_secret_manager_secret_version.secrets_key,
    google_sql_database.rouse,
    google_sql_user.rouse,
  ]
}
