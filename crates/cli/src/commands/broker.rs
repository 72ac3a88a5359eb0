//! `rouse broker`: Rouse's Pub/Sub broker on its own, for roles in several
//! processes (each started with `--pubsub emulator --pubsub-emulator-host`
//! pointing here) and for any Pub/Sub client (`PUBSUB_EMULATOR_HOST`).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::args::LogFormat;
use crate::config::{DEFAULT_BROKER_LISTEN, default_data_dir};
use crate::exit::CliError;

#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Where to listen (gRPC and REST on one port).
    #[arg(long, env = "ROUSE_BROKER_LISTEN", default_value = DEFAULT_BROKER_LISTEN)]
    pub listen: SocketAddr,
    /// The broker's store file [default: <data-dir>/broker.db].
    #[arg(long, env = "ROUSE_BROKER_STORE")]
    pub store: Option<PathBuf>,
    /// Where Rouse keeps its state [default: $XDG_DATA_HOME/rouse, else ~/.local/share/rouse].
    #[arg(long, env = "ROUSE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

pub async fn run(args: BrokerArgs, log_format: Option<LogFormat>) -> Result<(), CliError> {
    super::init_tracing(
        log_format.unwrap_or(LogFormat::Human),
        "warn,rouse=info,rouse_broker=info",
    );
    let store = match args.store {
        Some(path) => path,
        None => match args.data_dir {
            Some(dir) => dir,
            None => default_data_dir().map_err(CliError::usage)?,
        }
        .join("broker.db"),
    };
    if let Some(dir) = store.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::usage(format!(
                "cannot create {} for the broker's store: {e}; choose another with --store",
                dir.display()
            ))
        })?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            CliError::usage(format!(
                "cannot listen on {} ({e}); choose another with --listen or ROUSE_BROKER_LISTEN",
                args.listen
            ))
        })?;
    let running = rouse_broker::Running::start(&store, listener)
        .await
        .map_err(|e| CliError::internal(e.to_string()))?;
    tracing::info!(
        broker = %running.addr(),
        store = %store.display(),
        "rouse broker ready (PUBSUB_EMULATOR_HOST={})",
        running.addr()
    );
    super::server::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}
