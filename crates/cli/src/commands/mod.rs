//! One module per command group; each client command gets the [`Context`]
//! that connects, calls and prints for it.

pub mod admin;
pub mod ask;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod builds;
pub mod executions;
pub mod functions;
pub mod iam;
pub mod logs;
pub mod nodes;
pub mod policy;
pub mod projects;
pub mod revisions;
pub mod rollout;
pub mod secrets;
pub mod server;
pub mod services;
pub mod triggers;

pub use crate::context::default_credentials_path;

use crate::args::{Cli, Command, LogFormat};
use crate::context::Context;
use crate::exit::CliError;

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let Cli {
        command,
        log_format,
        client,
        format,
    } = cli;
    let command = match command {
        Command::Server(args) => return server::run(*args, log_format).await,
        Command::Broker(args) => return broker::run(args, log_format).await,
        Command::Admin(cmd) => return admin::run(cmd),
        other => other,
    };
    init_tracing(log_format.unwrap_or(LogFormat::Human), "warn");
    let ctx = Context::new(client, format);
    match command {
        Command::Services(cmd) => services::run(&ctx, cmd).await,
        Command::Revisions(cmd) => revisions::run(&ctx, cmd).await,
        Command::Ask(args) => ask::run(&ctx, args).await,
        Command::Executions(cmd) => executions::run(&ctx, cmd).await,
        Command::Logs(args) => logs::run(&ctx, args).await,
        Command::Projects(cmd) => projects::run(&ctx, cmd).await,
        Command::Iam(cmd) => iam::run(&ctx, cmd).await,
        Command::Audit(cmd) => audit::run(&ctx, cmd).await,
        Command::Triggers(cmd) => triggers::run(&ctx, cmd).await,
        Command::Builds(cmd) => builds::run(&ctx, cmd).await,
        Command::Functions(cmd) => functions::run(&ctx, cmd).await,
        Command::Secrets(cmd) => secrets::run(&ctx, cmd).await,
        Command::Nodes(cmd) => nodes::run(&ctx, cmd).await,
        Command::Auth(cmd) => auth::run(&ctx, cmd).await,
        Command::Server(_) | Command::Broker(_) | Command::Admin(_) => {
            unreachable!("`rouse server`, `rouse broker` and `rouse admin` returned above")
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
