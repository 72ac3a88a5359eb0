//! `rouse server`: runs the platform. The control-plane API (role `api`) on
//! the embedded SQLite store, and the dispatcher (role `dispatcher`) with the
//! process runtime and, where an engine answers, the Docker runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rouse_api::{Backend, Builder, BuilderConfig, DispatchHooks, NoDispatcher, PubSubMessaging};
use rouse_authz::Authority;
use rouse_dispatcher::{Dispatcher, DispatcherConfig, InstanceSecrets, Parts};
use rouse_pubsub::PubSub;
use rouse_runtime::{DockerRuntime, ProcessRuntime, Runtime};
use rouse_store::SqliteStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::args::LogFormat;
use crate::config::ServerConfig;
use crate::exit::CliError;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "ROUSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Roles to run: all, or a comma-separated list of api, dispatcher.
    #[arg(long, env = "ROUSE_ROLES", default_value = "all")]
    pub roles: String,
    /// Where Rouse keeps its state [default: $XDG_DATA_HOME/rouse, else ~/.local/share/rouse].
    #[arg(long, env = "ROUSE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the control-plane API [default: 127.0.0.1:7070].
    #[arg(long, env = "ROUSE_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// The SQLite store file [default: <data-dir>/rouse.db].
    #[arg(long, env = "ROUSE_STORE")]
    pub store: Option<PathBuf>,
    /// HOST:PORT of a Pub/Sub emulator; unset means Google Cloud Pub/Sub.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pub pubsub_emulator_host: Option<String>,
    /// Google Cloud project of the topics [default with the emulator: rouse-local].
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    pub pubsub_project: Option<String>,
    /// The Octue network topic [default: octue.services].
    #[arg(long, env = "ROUSE_NETWORK_TOPIC")]
    pub network_topic: Option<String>,
    /// Bound on one Pub/Sub administrative call, retries included [default: 10s].
    #[arg(long, env = "ROUSE_PUBSUB_TIMEOUT", value_parser = humantime::parse_duration)]
    pub pubsub_timeout: Option<Duration>,
    /// How long permission decisions stay in the audit log; administrative
    /// changes stay for good. `0s` keeps everything [default: 30d].
    #[arg(long, env = "ROUSE_AUDIT_RETENTION", value_parser = humantime::parse_duration)]
    pub audit_retention: Option<Duration>,
    /// Heartbeat interval while a question waits or runs [default: 60s].
    #[arg(long, env = "ROUSE_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Address of the builder's webhook server (`POST /webhooks/github`,
    /// `/webhooks/git`) [default: 127.0.0.1:7071].
    #[arg(long, env = "ROUSE_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// GitHub's REST API, for commit statuses [default: https://api.github.com].
    #[arg(long, env = "ROUSE_GITHUB_API_URL")]
    pub github_api_url: Option<String>,
    /// The key sealing secrets, kept outside the store [default: <data-dir>/secrets.key].
    #[arg(long, env = "ROUSE_SECRETS_KEY")]
    pub secrets_key: Option<PathBuf>,
    /// Push built images to this registry, `host[:port][/path]`, as
    /// `<registry>/<project>-<service>:<commit12>` and `:latest` [default: none, images stay in the local engine].
    #[arg(long, env = "ROUSE_REGISTRY")]
    pub registry: Option<String>,
    /// A JSON file `{"username": …, "password": …}` the registry accepts (as `docker login`).
    #[arg(long, env = "ROUSE_REGISTRY_CREDENTIALS")]
    pub registry_credentials: Option<PathBuf>,
}

/// How long the dispatcher gets to stop its instances at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

struct Hooks(Dispatcher);

#[async_trait::async_trait]
impl DispatchHooks for Hooks {
    fn services_changed(&self) {
        self.0.services_changed();
    }
    async fn cancel(&self, service_uuid: uuid::Uuid, question_uuid: &str) -> bool {
        self.0.cancel(service_uuid, question_uuid).await
    }
    async fn try_revision(
        &self,
        service: &rouse_core::Service,
        revision: &rouse_core::revision::Revision,
    ) -> Result<(), String> {
        self.0.try_revision(service, revision).await
    }
}

/// The dispatcher reads a service's secrets through the builder's key. The
/// builder is made after the dispatcher (it needs the dispatcher's hooks),
/// so the cell is filled once it exists.
struct Secrets(Arc<std::sync::OnceLock<Builder>>);

#[async_trait::async_trait]
impl InstanceSecrets for Secrets {
    async fn env(
        &self,
        service_uuid: uuid::Uuid,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        match self.0.get() {
            Some(builder) => rouse_api::secrets::secret_env(builder, service_uuid).await,
            None => Ok(std::collections::BTreeMap::new()),
        }
    }
}

/// The registry built images go to, with its credentials read now so that a
/// bad file stops the start rather than the first build.
fn registry_config(
    config: &ServerConfig,
) -> Result<Option<rouse_api::builds::RegistryConfig>, String> {
    let Some(prefix) = &config.registry else {
        return Ok(None);
    };
    let credentials = match &config.registry_credentials {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read registry credentials `{}`: {e}; give a JSON file {{\"username\": …, \"password\": …}}",
                    path.display()
                )
            })?;
            Some(serde_json::from_str(&text).map_err(|e| {
                format!(
                    "registry credentials `{}` are not {{\"username\": …, \"password\": …}}: {e}",
                    path.display()
                )
            })?)
        }
    };
    Ok(Some(rouse_api::builds::RegistryConfig {
        prefix: prefix.clone(),
        credentials,
    }))
}

pub async fn run(args: ServerArgs, log_format: Option<LogFormat>) -> Result<(), CliError> {
    let config = ServerConfig::resolve(&args, log_format).map_err(CliError::usage)?;
    let registry = registry_config(&config).map_err(CliError::usage)?;
    super::init_tracing(config.log_format, "warn,rouse=info");
    let internal = |e: &dyn std::fmt::Display| CliError::internal(e.to_string());

    let store = SqliteStore::open(&config.store_path).map_err(|e| internal(&e))?;
    let pubsub = PubSub::connect(config.pubsub.clone())
        .await
        .map_err(|e| internal(&e))?;
    pubsub
        .check()
        .await
        .map_err(|e| CliError::internal(format!("Pub/Sub is not usable: {e}")))?;
    let store = Arc::new(store);
    let messaging = Arc::new(PubSubMessaging::new(pubsub.clone()));

    let report =
        rouse_api::reconcile::reconcile(store.as_ref(), messaging.as_ref(), &config.network_topic)
            .await
            .map_err(|e| CliError::internal(format!("reconciliation failed: {e}")))?;
    tracing::info!(
        services = report.services,
        topics_recreated = report.topics_recreated,
        subscriptions_recreated = report.subscriptions_recreated,
        failed = report.failed.len(),
        "reconciled Pub/Sub with the store"
    );

    let bootstrapped = rouse_api::bootstrap::bootstrap_owner(
        store.as_ref(),
        &config.data_dir,
        super::default_credentials_path().as_deref(),
        &rouse_api::bootstrap::local_user_email(),
        &format!("http://{}", config.api_listen),
    )
    .await
    .map_err(|e| internal(&e))?;
    if let Some(b) = &bootstrapped {
        tracing::info!(
            owner = %b.principal,
            key = %b.key_file.display(),
            credentials = %b.credentials.as_ref().map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
            "first start: bootstrapped the owner (roles/owner on every project)"
        );
    }
    let authority = Authority::load(store.clone())
        .await
        .map_err(|e| CliError::internal(format!("cannot load permissions: {e}")))?;

    let shutdown = CancellationToken::new();
    let _fresh = authority.keep_fresh(shutdown.clone());
    let _pruned = rouse_api::retention::keep_pruned(
        authority.store().clone(),
        config.audit_retention,
        shutdown.clone(),
    );
    let logs_dir = config.data_dir.join("logs");
    let builder_cell = Arc::new(std::sync::OnceLock::new());
    let (hooks, dispatcher): (Arc<dyn DispatchHooks>, _) = if config.roles.dispatcher {
        // Instances a crashed earlier run left behind are stopped before
        // anything starts. The data dir names this platform, so several
        // platforms on one engine leave each other's containers alone.
        let process = ProcessRuntime::with_state_dir(config.data_dir.join("instances"));
        match process.remove_stale().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(processes = n, "stopped instances left by an earlier run"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check for instances left by an earlier run")
            }
        }
        let docker: Option<Arc<dyn Runtime>> = match DockerRuntime::connect()
            .map(|d| d.with_owner(config.data_dir.display().to_string()))
        {
            Ok(d) => {
                match d.remove_stale().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(containers = n, "removed instances left by an earlier run")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list containers left by an earlier run")
                    }
                }
                Some(Arc::new(d))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no Docker engine: image revisions cannot run, command revisions can");
                None
            }
        };
        let parts = Parts {
            config: DispatcherConfig {
                network_topic: config.network_topic.clone(),
                pubsub_project: config.pubsub.project.clone(),
                emulator_host: config.pubsub.emulator_host.clone(),
                logs_dir: logs_dir.clone(),
                heartbeat_interval: config.heartbeat_interval,
                queue_capacity: config.queue_capacity,
                resync_interval: DispatcherConfig::DEFAULT_RESYNC,
            },
            store: store.clone(),
            pubsub: pubsub.clone(),
            process: Arc::new(process),
            docker,
            authority: authority.clone(),
            secrets: Some(Arc::new(Secrets(builder_cell.clone()))),
        };
        let (d, handle) = Dispatcher::start(parts, shutdown.clone())
            .await
            .map_err(|e| CliError::internal(format!("the dispatcher cannot start: {e}")))?;
        (Arc::new(Hooks(d)), Some(handle))
    } else {
        (Arc::new(NoDispatcher), None)
    };

    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal_token.cancel();
    });

    if config.roles.api {
        let listener = TcpListener::bind(config.api_listen).await.map_err(|e| {
            CliError::internal(format!(
                "cannot listen on {} ({e}); choose another with --api-listen or ROUSE_API_LISTEN",
                config.api_listen
            ))
        })?;
        let api_addr = listener
            .local_addr()
            .map_err(|e| CliError::internal(format!("cannot read the listening address: {e}")))?;
        let backend = Backend {
            store: store.clone(),
            messaging,
            hooks,
            logs_dir,
            authority,
        };
        let webhook_listener = TcpListener::bind(config.webhook_listen)
            .await
            .map_err(|e| {
                CliError::internal(format!(
                    "cannot listen on {} for webhooks ({e}); choose another with --webhook-listen or ROUSE_WEBHOOK_LISTEN",
                    config.webhook_listen
                ))
            })?;
        let webhook_addr = webhook_listener
            .local_addr()
            .map_err(|e| CliError::internal(format!("cannot read the listening address: {e}")))?;
        let builder = Builder::start(
            backend.clone(),
            BuilderConfig {
                state_dir: config.data_dir.join("builder"),
                secrets_key: config.secrets_key.clone(),
                github_api_url: config.github_api_url.clone(),
                webhook_url: format!("http://{webhook_addr}"),
                queue: rouse_builder::queue::QueueConfig::default(),
                registry,
            },
        )
        .await
        .map_err(|e| CliError::internal(format!("the builder cannot start: {e}")))?;
        let _ = builder_cell.set(builder.clone());
        let webhooks = tokio::spawn(rouse_api::webhook::run(
            webhook_listener,
            builder.clone(),
            shutdown.clone().cancelled_owned(),
        ));
        log_ready(&config, Some(api_addr), Some(webhook_addr));
        rouse_api::serve(
            listener,
            backend,
            builder.clone(),
            shutdown.clone().cancelled_owned(),
        )
        .await
        .map_err(|e| CliError::internal(format!("the API server failed: {e}")))?;
        builder.shutdown().await;
        if let Ok(Err(e)) = webhooks.await {
            tracing::warn!(error = %e, "the webhook server failed");
        }
    } else {
        log_ready(&config, None, None);
        shutdown.cancelled().await;
    }
    shutdown.cancel();
    if let Some(handle) = dispatcher
        && tokio::time::timeout(DRAIN_DEADLINE, handle).await.is_err()
    {
        tracing::warn!("the dispatcher did not stop within {DRAIN_DEADLINE:?}");
    }
    tracing::info!("rouse server stopped");
    Ok(())
}

fn log_ready(config: &ServerConfig, api: Option<SocketAddr>, webhooks: Option<SocketAddr>) {
    let roles = match (config.roles.api, config.roles.dispatcher) {
        (true, true) => "api,dispatcher",
        (true, false) => "api",
        _ => "dispatcher",
    };
    tracing::info!(
        api = %api.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        webhooks = %webhooks.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        roles,
        store = %config.store_path.display(),
        pubsub = %config.pubsub,
        network_topic = %config.network_topic,
        "rouse server ready"
    );
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
