//! `rouse server`: runs the platform. For now, the control-plane API on the
//! embedded SQLite store, talking to Pub/Sub (the emulator or Google).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rouse_api::ServicesApi;
use rouse_pubsub::PubSub;
use rouse_store::SqliteStore;
use tokio::net::TcpListener;

use crate::args::LogFormat;
use crate::config::ServerConfig;
use crate::exit::CliError;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "ROUSE_CONFIG")]
    pub config: Option<PathBuf>,
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
}

pub async fn run(args: ServerArgs, log_format: Option<LogFormat>) -> Result<(), CliError> {
    let config = ServerConfig::resolve(&args, log_format).map_err(CliError::usage)?;
    super::init_tracing(config.log_format, "warn,rouse=info");

    let store =
        SqliteStore::open(&config.store_path).map_err(|e| CliError::internal(e.to_string()))?;
    let pubsub = PubSub::connect(config.pubsub.clone())
        .await
        .map_err(|e| CliError::internal(e.to_string()))?;
    pubsub
        .check()
        .await
        .map_err(|e| CliError::internal(format!("Pub/Sub is not usable: {e}")))?;
    let (store, pubsub) = (Arc::new(store), Arc::new(pubsub));

    let report =
        rouse_api::reconcile::reconcile(store.as_ref(), pubsub.as_ref(), &config.network_topic)
            .await
            .map_err(|e| CliError::internal(format!("reconciliation failed: {e}")))?;
    tracing::info!(
        services = report.services,
        topics_recreated = report.topics_recreated,
        subscriptions_recreated = report.subscriptions_recreated,
        failed = report.failed.len(),
        "reconciled Pub/Sub with the store"
    );

    let listener = TcpListener::bind(config.api_listen).await.map_err(|e| {
        CliError::internal(format!(
            "cannot listen on {} ({e}); choose another with --api-listen or ROUSE_API_LISTEN",
            config.api_listen
        ))
    })?;
    let api_addr = listener
        .local_addr()
        .map_err(|e| CliError::internal(format!("cannot read the listening address: {e}")))?;
    tracing::info!(
        api = %api_addr,
        store = %config.store_path.display(),
        pubsub = %config.pubsub,
        network_topic = %config.network_topic,
        "rouse server ready"
    );

    let api = ServicesApi::new(store, pubsub);
    rouse_api::serve(listener, api, shutdown_signal())
        .await
        .map_err(|e| CliError::internal(format!("the API server failed: {e}")))?;
    tracing::info!("rouse server stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}
