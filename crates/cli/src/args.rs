//! Top-level command line. Global flags are also read from the environment.

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::ask::AskArgs;
use crate::commands::audit::AuditCommand;
use crate::commands::builds::BuildsCommand;
use crate::commands::executions::ExecutionsCommand;
use crate::commands::iam::IamCommand;
use crate::commands::logs::LogsArgs;
use crate::commands::projects::ProjectsCommand;
use crate::commands::revisions::RevisionsCommand;
use crate::commands::secrets::SecretsCommand;
use crate::commands::triggers::TriggersCommand;
use crate::commands::{server::ServerArgs, services::ServicesCommand};

#[derive(Debug, Parser)]
#[command(
    name = "rouse",
    version,
    about = "Event-driven serverless deployer on Google Cloud Pub/Sub"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log output: `human` (default) or `json`.
    #[arg(long, global = true, env = "ROUSE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform (control plane API on an embedded store, talking to Pub/Sub).
    Server(ServerArgs),
    /// Create, inspect, change and delete services.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Register and list revisions (what runs when a service wakes).
    #[command(subcommand)]
    Revisions(RevisionsCommand),
    /// Ask a service a question, synchronously (--wait) or not.
    Ask(AskArgs),
    /// Inspect and cancel executions (one per question).
    #[command(subcommand)]
    Executions(ExecutionsCommand),
    /// Read a service's instance logs.
    Logs(LogsArgs),
    /// A project's settings and who may do what in it (its IAM policy).
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// Service accounts and keys, custom roles, and permission checks.
    #[command(subcommand)]
    Iam(IamCommand),
    /// Who changed what, and which calls and questions were granted or denied.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Build a service on every push to a repository's matching branches.
    #[command(subcommand)]
    Triggers(TriggersCommand),
    /// Builds: list, describe, follow logs, cancel, submit from a directory.
    #[command(subcommand)]
    Builds(BuildsCommand),
    /// A service's secrets, injected into its instances as environment variables.
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Flags every client command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// URL of the Rouse API.
    #[arg(long, env = "ROUSE_ENDPOINT", default_value = "http://127.0.0.1:7070")]
    pub endpoint: String,
    /// Key file to call the API with (`rouse iam service-accounts keys
    /// create` writes one; `rouse server` writes the owner's). Default:
    /// `$XDG_CONFIG_HOME/rouse/credentials.json`, else
    /// `~/.config/rouse/credentials.json`, if it exists.
    #[arg(long, env = "ROUSE_CREDENTIALS")]
    pub credentials: Option<std::path::PathBuf>,
}

/// Output format of `list`, `describe` and `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}
