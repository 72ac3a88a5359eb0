//! One module per top-level command.

pub mod ask;
pub mod executions;
pub mod logs;
pub mod revisions;
pub mod server;
pub mod services;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::args::{Cli, ClientArgs, Command, LogFormat};
use crate::exit::CliError;

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Server(args) => server::run(args, cli.log_format).await,
        other => {
            init_tracing(cli.log_format.unwrap_or(LogFormat::Human), "warn");
            match other {
                Command::Services(cmd) => services::run(cmd).await,
                Command::Revisions(cmd) => revisions::run(cmd).await,
                Command::Ask(args) => ask::run(args).await,
                Command::Executions(cmd) => executions::run(cmd).await,
                Command::Logs(args) => logs::run(args).await,
                Command::Server(_) => Ok(()),
            }
        }
    }
}

/// Logs go to stderr, so that stdout carries only a command's output.
/// `RUST_LOG` overrides `default_filter`.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// How long the CLI waits to connect to the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one API call may take: creating a service makes several Pub/Sub
/// calls, each bounded by the server's own (10 s default) timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A channel to the API, or a clear error naming the endpoint.
pub async fn connect(args: &ClientArgs) -> Result<Channel, CliError> {
    let endpoint = Endpoint::from_shared(args.endpoint.clone())
        .map_err(|e| {
            CliError::usage(format!(
                "--endpoint `{}` is not a valid URL ({e}); write e.g. http://127.0.0.1:7070",
                args.endpoint
            ))
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    endpoint
        .connect()
        .await
        .map_err(|e| CliError::unreachable(&args.endpoint, &source_chain(&e)))
}

/// Maps an error answer of the API at `endpoint` to the CLI's error.
pub fn status(endpoint: &str) -> impl Fn(tonic::Status) -> CliError + '_ {
    move |s| CliError::from_status(&s, endpoint)
}

/// An error and its causes on one line: transport errors hide the useful part
/// ("connection refused") in their sources.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
