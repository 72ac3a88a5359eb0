//! The composition root of `rouse server`: [`Platform::start`] takes a
//! resolved [`Config`] and starts the roles it names in this process, in
//! this order:
//!
//! 1. the store (a SQLite file, or PostgreSQL for several machines) and,
//!    for api and dispatcher, Pub/Sub (checked);
//! 2. the secrets key, loaded once and handed to every role that needs it
//!    (the api seals, the builder opens trigger secrets, the dispatcher
//!    opens instance secrets: no instance starts without them);
//! 3. start-up reconciliation of topics and subscriptions, the first
//!    owner (api), the permission snapshot kept fresh, audit retention (api);
//! 4. dispatcher: instances a crashed run left are stopped, then the
//!    dispatcher (which also runs readiness trials of built revisions);
//! 5. builder: its queue fed from the store, and the webhook server;
//! 6. api: the gRPC server.
//!
//! The roles share nothing but the store and, within one process,
//! [`Changes`] notices; so `--roles api`, `--roles builder` and
//! `--roles dispatcher` may run as three processes on one data dir.
//! Listeners are bound here (port 0 works), and [`Running::shutdown`] stops
//! everything within [`DRAIN_DEADLINE`].

mod secrets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rouse_api::{Backend, DispatchHooks, NoDispatcher, PubSubMessaging};
use rouse_authz::Authority;
use rouse_builder::{Builder, BuilderConfig, RegistryConfig};
use rouse_dispatcher::{Dispatcher, DispatcherConfig, Parts};
use rouse_pubsub::{PubSub, PubSubConfig};
use rouse_runtime::nodes::{NodeSpec, Placement};
use rouse_runtime::{DockerRuntime, ProcessRuntime, Runtime};
use rouse_secrets::SecretsKey;
use rouse_store::{Changes, LeaseStore, PgStore, SqliteStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use rouse_dispatcher::ingress::{Limits as IngressLimits, Network};
pub use secrets::ServiceSecrets;

/// How long the roles get to stop (instances stopped, builds ended, calls
/// in flight answered) at shutdown.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// Which roles this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub builder: bool,
    pub dispatcher: bool,
    /// HTTP services behind one port; runs beside a dispatcher.
    pub ingress: bool,
}

impl Roles {
    pub const ALL: Self = Self {
        api: true,
        builder: true,
        dispatcher: true,
        ingress: true,
    };

    /// `all`, or a comma-separated list of `api`, `builder`, `dispatcher`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut roles = Self {
            api: false,
            builder: false,
            dispatcher: false,
            ingress: false,
        };
        for role in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "all" => roles = Self::ALL,
                "api" => roles.api = true,
                "builder" => roles.builder = true,
                "dispatcher" => roles.dispatcher = true,
                "ingress" => roles.ingress = true,
                other => {
                    return Err(format!(
                        "unknown role `{other}` in --roles `{s}`; use a comma-separated list of api, builder, dispatcher, ingress, or all"
                    ));
                }
            }
        }
        if !(roles.api || roles.builder || roles.dispatcher || roles.ingress) {
            return Err(format!("--roles `{s}` names no role; use e.g. `all`"));
        }
        if roles.ingress && !roles.dispatcher {
            return Err(format!(
                "--roles `{s}`: the ingress hands requests to the instances its dispatcher runs, so it runs beside one; use `dispatcher,ingress`"
            ));
        }
        Ok(roles)
    }

    fn names(self) -> String {
        let mut names = Vec::new();
        if self.api {
            names.push("api");
        }
        if self.builder {
            names.push("builder");
        }
        if self.dispatcher {
            names.push("dispatcher");
        }
        if self.ingress {
            names.push("ingress");
        }
        names.join(",")
    }
}

/// Everything the platform needs, resolved (flags > env > file > defaults
/// is the CLI's business).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub roles: Roles,
    pub data_dir: PathBuf,
    pub store: StoreLocation,
    pub api_listen: SocketAddr,
    /// Where the builder's webhook server listens; also the base of the
    /// webhook URLs the api shows with triggers.
    pub webhook_listen: SocketAddr,
    /// Where the ingress (HTTP services by context root) listens.
    pub ingress_listen: SocketAddr,
    /// The ingress's certificate chain and key (PEM files): HTTPS instead
    /// of HTTP.
    pub ingress_tls: Option<(PathBuf, PathBuf)>,
    /// The ingress's certificates from an ACME CA, renewed live: HTTPS
    /// instead of HTTP.
    pub ingress_acme: Option<rouse_dispatcher::acme::AcmeConfig>,
    /// Plain HTTP beside an HTTPS ingress: ACME's HTTP-01 challenges, and
    /// redirects to HTTPS for the rest.
    pub ingress_http_listen: Option<SocketAddr>,
    /// Where requests for `--ingress internal` services may come from.
    pub internal_networks: Vec<rouse_dispatcher::ingress::Network>,
    /// What the ingress bounds (body, head, header timeout).
    pub ingress_limits: rouse_dispatcher::ingress::Limits,
    /// Where other dispatchers' ingresses forward requests for this one's
    /// services (default: the ingress's address when it is a specific one).
    pub ingress_advertise: Option<String>,
    pub pubsub: PubSubConfig,
    /// Run Rouse's own Pub/Sub broker in this process (when it runs the api
    /// or the dispatcher) and use it instead of `pubsub.emulator_host`.
    pub broker: Option<BrokerConfig>,
    pub network_topic: String,
    pub heartbeat_interval: Duration,
    pub queue_capacity: usize,
    /// How long decisions stay in the audit log; `None` keeps them all.
    pub audit_retention: Option<Duration>,
    /// GitHub's REST API (commit statuses).
    pub github_api_url: String,
    /// The key sealing secrets, kept outside the store.
    pub secrets_key: PathBuf,
    /// Where built images are pushed (`host[:port][/path]`), if anywhere.
    pub registry: Option<String>,
    /// A JSON file `{"username": …, "password": …}` for the registry.
    pub registry_credentials: Option<PathBuf>,
    /// Functions are built into images on this local base image, if set.
    pub function_base_image: Option<String>,
    /// Where the first owner's key is copied for the CLI (unless a file is
    /// there); `None` leaves it in the data dir only.
    pub owner_credentials: Option<PathBuf>,
    /// What runs image revisions.
    pub runtime: ImageRuntime,
}

/// What runs image revisions (command revisions always run as processes
/// here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ImageRuntime {
    /// The local Docker engine and the nodes added with `rouse nodes add`.
    #[default]
    Docker,
    /// Cloud Run: job-mode revisions as Cloud Run Jobs, server-mode ones as
    /// private Cloud Run services (a build with the `cloudrun` feature).
    CloudRun(CloudRunSettings),
}

/// Where Cloud Run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudRunSettings {
    pub project: String,
    pub region: String,
    /// The Admin API; `None` is Google's. A plain `http://` one (a local
    /// stand-in) is called without credentials.
    pub endpoint: Option<String>,
    /// How often a running execution is looked at.
    pub poll: Duration,
}

/// The runtime image revisions use instead of the local engine and the
/// nodes, if one is configured.
#[cfg(feature = "cloudrun")]
async fn image_runtime(config: &Config) -> Result<Option<Arc<dyn Runtime>>, StartError> {
    match &config.runtime {
        ImageRuntime::Docker => Ok(None),
        ImageRuntime::CloudRun(s) => {
            let runtime =
                rouse_cloudrun::CloudRunRuntime::connect(&rouse_cloudrun::CloudRunConfig {
                    project: s.project.clone(),
                    region: s.region.clone(),
                    endpoint: s.endpoint.clone(),
                    poll: s.poll,
                })
                .await
                .map_err(StartError::Config)?;
            tracing::info!(
                parent = runtime.parent(),
                "image revisions run on Cloud Run"
            );
            Ok(Some(Arc::new(runtime)))
        }
    }
}

#[cfg(not(feature = "cloudrun"))]
async fn image_runtime(config: &Config) -> Result<Option<Arc<dyn Runtime>>, StartError> {
    match &config.runtime {
        ImageRuntime::Docker => Ok(None),
        ImageRuntime::CloudRun(_) => Err(StartError::Config(
            "this rouse was built without Cloud Run: build it with `cargo build --release -p rouse-cli --features cloudrun`, or use --runtime docker".into(),
        )),
    }
}

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// One SQLite file: one machine (several processes may share it).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`): processes on any machine.
    Postgres(String),
}

impl StoreLocation {
    /// A `postgres://` or `postgresql://` URL names a PostgreSQL database;
    /// anything else is the path of a SQLite file.
    pub fn parse(value: &str) -> Self {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Self::Postgres(value.to_owned())
        } else {
            Self::Sqlite(PathBuf::from(value))
        }
    }
}

impl std::fmt::Display for StoreLocation {
    /// The path, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&rouse_store::redact_url(url)),
        }
    }
}

/// Every store trait some role uses: what the composition root hands out
/// (each role gets it as the narrower trait it names).
trait PlatformStore:
    rouse_api::ApiStore
    + rouse_dispatcher::FullStore
    + rouse_builder::BuilderStore
    + rouse_authz::AuthorityStore
    + LeaseStore
{
}
impl<T> PlatformStore for T where
    T: rouse_api::ApiStore
        + rouse_dispatcher::FullStore
        + rouse_builder::BuilderStore
        + rouse_authz::AuthorityStore
        + LeaseStore
{
}

/// The embedded Pub/Sub broker: where it listens (other processes and
/// clients reach it there, as they would the emulator) and its store file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub store: PathBuf,
}

/// Why the platform did not start; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong: the caller's mistake.
    #[error("{0}")]
    Config(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] rouse_store::StoreError),
    #[error("Pub/Sub is not usable: {0}")]
    PubSub(#[from] rouse_pubsub::PubSubError),
    #[error("the embedded Pub/Sub broker cannot start: {0}")]
    Broker(#[from] rouse_broker::BrokerError),
    #[error("cannot load the secrets key: {0}")]
    SecretsKey(String),
    #[error("reconciliation failed: {0}")]
    Reconcile(String),
    #[error("cannot bootstrap the owner: {0}")]
    Bootstrap(String),
    #[error("cannot load permissions: {0}")]
    Permissions(String),
    #[error("the dispatcher cannot start: {0}")]
    Dispatcher(#[from] rouse_dispatcher::DispatchError),
    #[error("the builder cannot start: {0}")]
    Builder(#[from] rouse_builder::BuilderError),
    #[error("cannot listen on {addr} for {what} ({source}); choose another with {flag}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        flag: &'static str,
        source: std::io::Error,
    },
}

/// The roles of this process, started.
pub struct Running {
    /// Where the gRPC API listens (api role).
    pub api: Option<SocketAddr>,
    /// Where the webhook server listens (builder role).
    pub webhooks: Option<SocketAddr>,
    /// Where the ingress listens (ingress role).
    pub ingress: Option<SocketAddr>,
    /// Where the ingress's plain-HTTP side listens (challenges, redirects).
    pub ingress_http: Option<SocketAddr>,
    /// Where the embedded Pub/Sub broker listens, if this process runs it.
    pub broker: Option<SocketAddr>,
    /// Stopped last, once nothing publishes any more.
    embedded: Option<rouse_broker::Running>,
    shutdown: CancellationToken,
    /// Servers (api, webhooks): they end on shutdown, or on failure.
    servers: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    /// Roles that stop their work after shutdown (builder, dispatcher).
    roles: Vec<(&'static str, JoinHandle<()>)>,
    /// Background upkeep (permissions, audit retention).
    upkeep: Vec<JoinHandle<()>>,
}

/// The platform: see the module documentation.
pub struct Platform;

impl Platform {
    pub async fn start(mut config: Config) -> Result<Running, StartError> {
        let registry = registry_config(&config)?;
        let (store, postgres): (Arc<dyn PlatformStore>, _) = match &config.store {
            StoreLocation::Sqlite(path) => (Arc::new(SqliteStore::open(path)?), None),
            StoreLocation::Postgres(url) => {
                let pg = PgStore::connect(url).await?;
                (Arc::new(pg.clone()), Some(pg))
            }
        };
        let key = Arc::new(
            SecretsKey::load_or_create(&config.secrets_key)
                .map_err(|e| StartError::SecretsKey(e.to_string()))?,
        );
        let changes = Changes::new();
        let shutdown = CancellationToken::new();
        let mut running = Running {
            api: None,
            webhooks: None,
            ingress: None,
            ingress_http: None,
            broker: None,
            embedded: None,
            shutdown: shutdown.clone(),
            servers: Vec::new(),
            roles: Vec::new(),
            upkeep: Vec::new(),
        };

        // Roles in other processes (other machines) wake this one's at once.
        if let Some(pg) = &postgres {
            running
                .upkeep
                .push(pg.listen(changes.clone(), shutdown.clone().cancelled_owned()));
        }

        // Bound first, so the addresses are known to what is made next.
        let api_listener = match config.roles.api {
            true => Some(
                bind(
                    config.api_listen,
                    "the API",
                    "--api-listen or ROUSE_API_LISTEN",
                )
                .await?,
            ),
            false => None,
        };
        let webhook_listener = match config.roles.builder {
            true => Some(
                bind(
                    config.webhook_listen,
                    "webhooks",
                    "--webhook-listen or ROUSE_WEBHOOK_LISTEN",
                )
                .await?,
            ),
            false => None,
        };
        let acme = match (&config.ingress_acme, config.roles.ingress) {
            (Some(acme), true) => Some(
                rouse_dispatcher::acme::Acme::new(acme.clone(), key.clone())
                    .map_err(StartError::Config)?,
            ),
            _ => None,
        };
        let ingress_tls = match (&config.ingress_tls, &acme, config.roles.ingress) {
            (Some((cert, key)), _, true) => {
                Some(rouse_dispatcher::ingress::tls_config(cert, key).map_err(StartError::Config)?)
            }
            (None, Some(acme), true) => Some(acme.tls_config().map_err(StartError::Config)?),
            _ => None,
        };
        let ingress_http_listener = match (config.ingress_http_listen, config.roles.ingress) {
            (Some(addr), true) => Some(
                bind(
                    addr,
                    "the ingress's plain HTTP (ACME challenges, redirects)",
                    "--ingress-http-listen or ROUSE_INGRESS_HTTP_LISTEN",
                )
                .await?,
            ),
            _ => None,
        };
        let ingress_listener = match config.roles.ingress {
            true => Some(
                bind(
                    config.ingress_listen,
                    "the ingress",
                    "--ingress-listen or ROUSE_INGRESS_LISTEN",
                )
                .await?,
            ),
            false => None,
        };
        running.ingress = ingress_listener.as_ref().and_then(|l| l.local_addr().ok());
        running.ingress_http = ingress_http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok());
        if let (Some(listener), Some(https)) = (ingress_http_listener, running.ingress) {
            let challenges = acme
                .as_ref()
                .map(rouse_dispatcher::acme::Acme::challenges)
                .unwrap_or_default();
            let token = shutdown.clone();
            running.servers.push((
                "the ingress's plain HTTP",
                tokio::spawn(async move {
                    rouse_dispatcher::acme::serve_http(listener, challenges, https.port(), token)
                        .await
                        .map_err(|e| e.to_string())
                }),
            ));
        }
        if let Some(acme) = acme {
            running
                .upkeep
                .push(tokio::spawn(acme.run(shutdown.clone())));
        }
        running.api = api_listener.as_ref().and_then(|l| l.local_addr().ok());
        running.webhooks = webhook_listener.as_ref().and_then(|l| l.local_addr().ok());
        let webhook_url = format!(
            "http://{}",
            running.webhooks.unwrap_or(config.webhook_listen)
        );

        let needs_pubsub = config.roles.api || config.roles.dispatcher;
        if let (true, Some(broker)) = (needs_pubsub, &config.broker) {
            let listener = bind(
                broker.listen,
                "the Pub/Sub broker",
                "--broker-listen or ROUSE_BROKER_LISTEN",
            )
            .await?;
            let embedded = rouse_broker::Running::start(&broker.store, listener).await?;
            config.pubsub.emulator_host = Some(embedded.addr().to_string());
            running.broker = Some(embedded.addr());
            running.embedded = Some(embedded);
        }
        let pubsub = if needs_pubsub {
            let pubsub = PubSub::connect(config.pubsub.clone()).await?;
            pubsub.check().await?;
            let messaging = PubSubMessaging::new(pubsub.clone());
            let report =
                rouse_api::reconcile::reconcile(store.as_ref(), &messaging, &config.network_topic)
                    .await
                    .map_err(|e| StartError::Reconcile(e.to_string()))?;
            tracing::info!(
                services = report.services,
                topics_recreated = report.topics_recreated,
                subscriptions_recreated = report.subscriptions_recreated,
                failed = report.failed.len(),
                "reconciled Pub/Sub with the store"
            );
            Some(pubsub)
        } else {
            None
        };

        if let Some(api) = running.api {
            let bootstrapped = rouse_api::bootstrap::bootstrap_owner(
                store.as_ref(),
                &config.data_dir,
                config.owner_credentials.as_deref(),
                &rouse_api::bootstrap::local_user_email(),
                &format!("http://{api}"),
            )
            .await
            .map_err(|e| StartError::Bootstrap(e.to_string()))?;
            if let Some(b) = &bootstrapped {
                tracing::info!(
                    owner = %b.principal,
                    key = %b.key_file.display(),
                    credentials = %b.credentials.as_ref().map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
                    "first start: bootstrapped the owner (roles/owner on every project)"
                );
            }
        }

        // The platform's question-assertion key: the api signs with it, the
        // authority trusts it.
        let asserter = Arc::new(rouse_api::backend::platform_asserter(&key));
        let registry = registry.map(|r| RegistryConfig {
            asserter: Some(asserter.clone()),
            ..r
        });
        let authority = if config.roles.api || config.roles.dispatcher {
            let authority = Authority::load_with(store.clone(), Some(asserter.key_record()))
                .await
                .map_err(|e| StartError::Permissions(e.to_string()))?;
            running.upkeep.push(authority.keep_fresh(shutdown.clone()));
            Some(authority)
        } else {
            None
        };
        if config.roles.api {
            running.upkeep.extend(rouse_api::retention::keep_pruned(
                store.clone(),
                config.audit_retention,
                shutdown.clone(),
            ));
        }

        let logs_dir = config.data_dir.join("logs");
        let mut hooks: Arc<dyn DispatchHooks> = Arc::new(NoDispatcher);
        if let (true, Some(pubsub), Some(authority)) =
            (config.roles.dispatcher, &pubsub, &authority)
        {
            // Every dispatcher on the store runs the services whose lease it
            // holds (see `rouse_dispatcher::shards`).
            let inputs = DispatcherInputs {
                config: config.clone(),
                store: store.clone(),
                pubsub: pubsub.clone(),
                authority: authority.clone(),
                changes: changes.clone(),
                key: key.clone(),
                logs_dir: logs_dir.clone(),
            };
            let (dispatcher, handle) =
                Dispatcher::start(inputs.parts().await?, shutdown.clone()).await?;
            if let Some(listener) = ingress_listener {
                let (ingress, token) = (dispatcher.clone(), shutdown.clone());
                let options = rouse_dispatcher::ingress::IngressOptions {
                    tls: ingress_tls,
                    advertise: config.ingress_advertise.clone(),
                    internal_networks: config.internal_networks.clone(),
                    limits: config.ingress_limits,
                };
                running.servers.push((
                    "the ingress",
                    tokio::spawn(async move {
                        ingress
                            .serve_ingress(listener, options, token)
                            .await
                            .map_err(|e| e.to_string())
                    }),
                ));
            }
            hooks = Arc::new(Hooks(dispatcher));
            running.servers.push((
                "the dispatcher",
                tokio::spawn(async move {
                    let _ = handle.await;
                    Ok(())
                }),
            ));
        }

        if let Some(listener) = webhook_listener {
            let (builder, handle) = Builder::start(
                store.clone(),
                key.clone(),
                changes.clone(),
                BuilderConfig {
                    state_dir: config.data_dir.join("builder"),
                    github_api_url: config.github_api_url.clone(),
                    webhook_url: webhook_url.clone(),
                    queue: rouse_builder::queue::QueueConfig::default(),
                    registry,
                    function_base_image: config.function_base_image.clone(),
                },
                shutdown.clone(),
            )
            .await?;
            running.roles.push(("builder", handle));
            let server =
                rouse_builder::server::run(listener, builder, shutdown.clone().cancelled_owned());
            running.servers.push((
                "the webhook server",
                tokio::spawn(async move { server.await.map_err(|e| e.to_string()) }),
            ));
        }

        if let (Some(listener), Some(pubsub), Some(authority)) = (api_listener, pubsub, authority) {
            let registry = match &config.registry {
                None => None,
                Some(prefix) => {
                    let dir = config.data_dir.join(rouse_api::registry::DIR);
                    let auth = rouse_api::registry::RegistryAuth::open(prefix.clone(), &dir, &key)
                        .map_err(|e| {
                            StartError::Config(format!(
                                "the registry token issuer cannot be kept in {}: {e}",
                                dir.display()
                            ))
                        })?;
                    if let Some(api) = running.api {
                        tracing::info!(
                            "registry {prefix}: Rouse issues its tokens; configure it with auth.token realm http://{api}/v2/token, service {}, issuer {}, rootcertbundle {}",
                            rouse_api::registry::SERVICE,
                            rouse_api::registry::ISSUER,
                            auth.cert_path().display()
                        );
                    }
                    Some(Arc::new(auth))
                }
            };
            let backend = Backend {
                store: store.clone(),
                messaging: Arc::new(PubSubMessaging::new(pubsub)),
                hooks,
                changes: changes.clone(),
                key: key.clone(),
                webhook_url,
                logs_dir,
                functions_dir: config.data_dir.join("functions"),
                authority,
                asserter,
                registry,
            };
            let server = rouse_api::serve(listener, backend, shutdown.clone().cancelled_owned());
            running.servers.push((
                "the API server",
                tokio::spawn(async move { server.await.map_err(|e| e.to_string()) }),
            ));
        }
        let pubsub = match running.broker {
            Some(addr) => format!(
                "Rouse's embedded broker at http://{addr} (project `{}`)",
                config.pubsub.project
            ),
            None => config.pubsub.to_string(),
        };
        tracing::info!(
            api = %running.api.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            webhooks = %running.webhooks.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            ingress = %running.ingress.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            broker = %running.broker.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            roles = %config.roles.names(),
            store = %config.store,
            pubsub = %pubsub,
            network_topic = %config.network_topic,
            "rouse server ready"
        );
        Ok(running)
    }
}

impl Running {
    /// Completes when a server stopped by itself (it failed), naming it and
    /// why; never completes while all serve.
    pub async fn failed(&mut self) -> String {
        if self.servers.is_empty() {
            return std::future::pending().await;
        }
        let (result, index, _) =
            futures::future::select_all(self.servers.iter_mut().map(|(_, h)| h)).await;
        let (name, _) = self.servers.remove(index);
        match result {
            Ok(Ok(())) => format!("{name} stopped"),
            Ok(Err(e)) => format!("{name} failed: {e}"),
            Err(e) => format!("{name} failed: {e}"),
        }
    }

    /// Stops every role: servers stop taking calls and answer those in
    /// flight, the builder ends its builds, the dispatcher stops its
    /// instances; all within [`DRAIN_DEADLINE`].
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        let all = self
            .servers
            .into_iter()
            .map(|(name, h)| {
                (
                    name,
                    tokio::spawn(async move {
                        if let Ok(Err(e)) = h.await {
                            tracing::warn!(error = %e, "{name} failed while stopping");
                        }
                    }),
                )
            })
            .chain(self.roles)
            .chain(self.upkeep.into_iter().map(|h| ("upkeep", h)));
        for (name, handle) in all {
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                tracing::warn!("{name} did not stop within {DRAIN_DEADLINE:?}");
            }
        }
        if let Some(broker) = self.embedded {
            broker.shutdown().await;
        }
        tracing::info!("rouse server stopped");
    }
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            addr,
            what,
            flag,
            source,
        })
}

/// The process runtime; instances a crashed earlier run left behind are
/// stopped first.
async fn process_runtime(config: &Config) -> Arc<dyn Runtime> {
    let process = ProcessRuntime::with_state_dir(config.data_dir.join("instances"));
    match process.remove_stale().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(processes = n, "stopped instances left by an earlier run"),
        Err(e) => tracing::warn!(error = %e, "cannot check for instances left by an earlier run"),
    }
    Arc::new(process)
}

/// The local engine (where one answers) and the nodes; containers a
/// crashed earlier run left behind are removed first. The data dir names
/// this platform, so several platforms on one engine leave each other's
/// containers alone.
async fn placement(config: &Config) -> Arc<Placement> {
    let owner = config.data_dir.display().to_string();
    let local = match DockerRuntime::connect().map(|d| d.with_owner(owner.clone())) {
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
            Some(d)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no Docker engine here: image revisions run only on nodes (`rouse nodes add`), command revisions run");
            None
        }
    };
    Arc::new(Placement::new(local, Some(owner)))
}

/// How often the dispatcher re-reads the nodes (`rouse nodes …`).
const NODES_POLL: Duration = Duration::from_secs(2);

/// Keeps `placement`'s nodes as the store has them, until it is dropped.
fn keep_nodes(store: Arc<dyn PlatformStore>, placement: std::sync::Weak<Placement>) {
    tokio::spawn(async move {
        loop {
            let nodes = store.list_nodes().await;
            let Some(placement) = placement.upgrade() else {
                return;
            };
            match nodes {
                Ok(nodes) => {
                    let specs = nodes
                        .into_iter()
                        .map(|n| NodeSpec {
                            name: n.name,
                            docker_host: n.docker_host,
                            capacity: n.capacity,
                            labels: n.labels,
                            draining: n.draining,
                        })
                        .collect();
                    placement.set_nodes(specs).await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the nodes"),
            }
            drop(placement);
            tokio::time::sleep(NODES_POLL).await;
        }
    });
}

/// The registry built images go to, with its credentials read now so that a
/// bad file stops the start rather than the first build.
fn registry_config(config: &Config) -> Result<Option<RegistryConfig>, StartError> {
    let Some(prefix) = &config.registry else {
        return Ok(None);
    };
    let credentials = match &config.registry_credentials {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                StartError::Config(format!(
                    "cannot read registry credentials `{}`: {e}; give a JSON file {{\"username\": …, \"password\": …}}",
                    path.display()
                ))
            })?;
            Some(serde_json::from_str(&text).map_err(|e| {
                StartError::Config(format!(
                    "registry credentials `{}` are not {{\"username\": …, \"password\": …}}: {e}",
                    path.display()
                ))
            })?)
        }
    };
    Ok(Some(RegistryConfig {
        prefix: prefix.clone(),
        credentials,
        asserter: None,
    }))
}

/// The api's way into a dispatcher of the same process.
/// What the dispatcher is made of.
struct DispatcherInputs {
    config: Config,
    store: Arc<dyn PlatformStore>,
    pubsub: PubSub,
    authority: Arc<Authority>,
    changes: Changes,
    key: Arc<SecretsKey>,
    logs_dir: PathBuf,
}

impl DispatcherInputs {
    /// The dispatcher's parts; the runtimes first stop instances an earlier
    /// run (or a dead dispatcher on this machine sharing the data dir) left
    /// behind.
    async fn parts(self) -> Result<Parts, StartError> {
        let process = process_runtime(&self.config).await;
        let images: Arc<dyn Runtime> = match image_runtime(&self.config).await? {
            Some(remote) => remote,
            None => {
                let placement = placement(&self.config).await;
                keep_nodes(self.store.clone(), Arc::downgrade(&placement));
                placement
            }
        };
        let docker = Some(images);
        Ok(Parts {
            config: DispatcherConfig {
                network_topic: self.config.network_topic.clone(),
                pubsub_project: self.config.pubsub.project.clone(),
                emulator_host: self.config.pubsub.emulator_host.clone(),
                logs_dir: self.logs_dir,
                heartbeat_interval: self.config.heartbeat_interval,
                queue_capacity: self.config.queue_capacity,
                resync_interval: DispatcherConfig::DEFAULT_RESYNC,
            },
            store: self.store.clone(),
            pubsub: self.pubsub,
            process,
            docker,
            authority: self.authority,
            changes: self.changes,
            secrets: Arc::new(ServiceSecrets::new(self.store, self.key)),
            holder: rouse_runtime::holder::this_process(),
        })
    }
}

struct Hooks(Dispatcher);

#[async_trait::async_trait]
impl DispatchHooks for Hooks {
    async fn cancel(&self, service_uuid: uuid::Uuid, question_uuid: &str) -> bool {
        self.0.cancel(service_uuid, question_uuid).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_each_role_and_all() {
        assert_eq!(Roles::parse("all"), Ok(Roles::ALL));
        assert_eq!(
            Roles::parse("api, builder,dispatcher,ingress"),
            Ok(Roles::ALL)
        );
        assert_eq!(
            Roles::parse("builder"),
            Ok(Roles {
                api: false,
                builder: true,
                dispatcher: false,
                ingress: false,
            })
        );
        assert_eq!(
            Roles::parse("dispatcher,ingress").map(Roles::names),
            Ok("dispatcher,ingress".into())
        );
        assert_eq!(
            Roles::parse("dispatcher").map(Roles::names),
            Ok("dispatcher".into())
        );
    }

    #[test]
    fn bad_roles_are_named() {
        let e = Roles::parse("api,bilder").expect_err("unknown");
        assert!(
            e.contains("`bilder`") && e.contains("api, builder, dispatcher"),
            "{e}"
        );
        let e = Roles::parse("api,ingress").expect_err("alone");
        assert!(
            e.contains("runs beside one") && e.contains("dispatcher,ingress"),
            "{e}"
        );
        let e = Roles::parse(" , ").expect_err("empty");
        assert!(e.contains("names no role"), "{e}");
    }
}
