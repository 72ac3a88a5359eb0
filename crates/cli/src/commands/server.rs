//! `rouse server`: runs the platform's roles (api, builder, dispatcher, ingress) in
//! this process. A thin main: resolve the configuration, start tracing,
//! [`rouse_server::Platform::start`], run until Ctrl-C / SIGTERM (or a
//! server fails), stop within the drain deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rouse_server::{Platform, StartError};

use crate::args::LogFormat;
use crate::config::{PubSubMode, ServerConfig};
use crate::exit::CliError;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "ROUSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Roles to run: all, or a comma-separated list of api, builder, dispatcher, ingress
    /// (the ingress runs beside a dispatcher).
    #[arg(long, env = "ROUSE_ROLES", default_value = "all")]
    pub roles: String,
    /// Where Rouse keeps its state [default: $XDG_DATA_HOME/rouse, else ~/.local/share/rouse].
    #[arg(long, env = "ROUSE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the control-plane API [default: 127.0.0.1:7070].
    #[arg(long, env = "ROUSE_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Where the state lives: a SQLite file, or a PostgreSQL database
    /// (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`) that processes on
    /// several machines share [default: <data-dir>/rouse.db].
    #[arg(long, env = "ROUSE_STORE")]
    pub store: Option<String>,
    /// Which Pub/Sub to use: `embedded` (Rouse's own broker, in this
    /// process), `emulator` (at --pubsub-emulator-host) or `google`
    /// [default: emulator with an emulator host, google with a project, else embedded].
    #[arg(long, env = "ROUSE_PUBSUB", value_enum)]
    pub pubsub: Option<PubSubMode>,
    /// Where the embedded broker listens, for this server and any other
    /// Pub/Sub client [default: 127.0.0.1:8085].
    #[arg(long, env = "ROUSE_BROKER_LISTEN")]
    pub broker_listen: Option<SocketAddr>,
    /// HOST:PORT of a Pub/Sub emulator (or another Rouse's broker).
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
    /// Address of the ingress: HTTP services by path, `/<project>-<service>/…`
    /// [default: 127.0.0.1:8080].
    #[arg(long, env = "ROUSE_INGRESS_LISTEN")]
    pub ingress_listen: Option<SocketAddr>,
    /// The ingress's certificate chain, a PEM file: it serves HTTPS (with
    /// --tls-key).
    #[arg(long, env = "ROUSE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, a PEM file.
    #[arg(long, env = "ROUSE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Get the ingress's certificate from this ACME CA's directory and renew
    /// it (Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory);
    /// needs --domain.
    #[arg(long, env = "ROUSE_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// A contact address for the ACME account.
    #[arg(long, env = "ROUSE_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// A name the ACME certificate is for; repeat for more (the CA checks
    /// each over HTTP-01 on port 80, see --ingress-http-listen).
    #[arg(long = "domain", env = "ROUSE_DOMAINS", value_delimiter = ',')]
    pub domains: Vec<String>,
    /// A PEM root to trust for the ACME directory's HTTPS (a private or
    /// test CA) [default: the system's roots].
    #[arg(long, env = "ROUSE_ACME_CA_CERT")]
    pub acme_ca_cert: Option<PathBuf>,
    /// How long before expiry the ACME certificate is renewed [default: a
    /// third of its lifetime].
    #[arg(long, env = "ROUSE_ACME_RENEW_BEFORE", value_parser = humantime::parse_duration)]
    pub acme_renew_before: Option<Duration>,
    /// Plain HTTP beside an HTTPS ingress: answers ACME challenges and
    /// redirects the rest to HTTPS [default with --acme-directory: the
    /// ingress's host, port 80; otherwise none].
    #[arg(long, env = "ROUSE_INGRESS_HTTP_LISTEN")]
    pub ingress_http_listen: Option<SocketAddr>,
    /// The networks whose requests `--ingress internal` services take,
    /// comma-separated ADDRESS/PREFIX [default: loopback, 10.0.0.0/8,
    /// 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, link-local, fc00::/7].
    #[arg(long, env = "ROUSE_INTERNAL_NETWORKS", value_delimiter = ',')]
    pub internal_networks: Vec<String>,
    /// The largest request body the ingress passes on, e.g. 32MiB
    /// [default: 32MiB]; a larger one is answered 413.
    #[arg(long, env = "ROUSE_INGRESS_MAX_BODY", value_parser = rouse_dispatcher::ingress::parse_size)]
    pub ingress_max_body: Option<u64>,
    /// The largest request head (request line and headers) the ingress
    /// reads [default: 64KiB]; a larger one is answered 431.
    #[arg(long, env = "ROUSE_INGRESS_MAX_HEAD", value_parser = rouse_dispatcher::ingress::parse_size)]
    pub ingress_max_head: Option<u64>,
    /// How long a client has to send a request's head, and a kept-alive
    /// connection to send its next request [default: 10s].
    #[arg(long, env = "ROUSE_INGRESS_HEADER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub ingress_header_timeout: Option<Duration>,
    /// The URL other dispatchers' ingresses forward requests for this
    /// one's services to (`http://host:port`) [default: the ingress's
    /// address when it listens on a specific one].
    #[arg(long, env = "ROUSE_INGRESS_ADVERTISE")]
    pub ingress_advertise: Option<String>,
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
    /// Build functions into Docker images on this local base image (it
    /// needs `python3`, and `pip` for requirements) instead of running them
    /// as processes; deploys fall back to processes while the engine or the
    /// image is missing [default: none, functions run as processes].
    #[arg(long, env = "ROUSE_FUNCTION_BASE_IMAGE")]
    pub function_base_image: Option<String>,
    /// What runs image revisions: `docker` (the local engine and the nodes)
    /// or `cloudrun` (a build with the `cloudrun` feature) [default: docker].
    #[arg(long, env = "ROUSE_RUNTIME", value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// The Google Cloud project Cloud Run jobs and services are made in
    /// [default: the Pub/Sub project].
    #[arg(long, env = "ROUSE_CLOUDRUN_PROJECT")]
    pub cloudrun_project: Option<String>,
    /// The Cloud Run region, e.g. `europe-west1` (needed with `--runtime cloudrun`).
    #[arg(long, env = "ROUSE_CLOUDRUN_REGION")]
    pub cloudrun_region: Option<String>,
    /// The Cloud Run Admin API [default: Google's]; a plain `http://` one
    /// (a local stand-in) is called without credentials.
    #[arg(long, env = "ROUSE_CLOUDRUN_ENDPOINT")]
    pub cloudrun_endpoint: Option<String>,
    /// How often a running Cloud Run execution is looked at [default: 1s].
    #[arg(long, env = "ROUSE_CLOUDRUN_POLL", value_parser = humantime::parse_duration)]
    pub cloudrun_poll: Option<Duration>,
}

/// What runs image revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// The local Docker engine and the nodes added with `rouse nodes add`.
    Docker,
    /// Cloud Run Jobs and private Cloud Run services.
    Cloudrun,
}

pub async fn run(args: ServerArgs, log_format: Option<LogFormat>) -> Result<(), CliError> {
    let config = ServerConfig::resolve(&args, log_format).map_err(CliError::usage)?;
    super::init_tracing(config.log_format, "warn,rouse=info");
    let mut running = Platform::start(config.platform(super::default_credentials_path()))
        .await
        .map_err(|e| match e {
            StartError::Config(m) => CliError::usage(m),
            other => CliError::internal(other.to_string()),
        })?;
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        why = running.failed() => Some(why),
    };
    running.shutdown().await;
    match failed {
        Some(why) => Err(CliError::internal(why)),
        None => Ok(()),
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
