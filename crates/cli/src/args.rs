//! Top-level command line. Global flags are also read from the environment.

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::ask::AskArgs;
use crate::commands::audit::AuditCommand;
use crate::commands::auth::AuthCommand;
use crate::commands::builds::BuildsCommand;
use crate::commands::executions::ExecutionsCommand;
use crate::commands::iam::IamCommand;
use crate::commands::logs::LogsArgs;
use crate::commands::nodes::NodesCommand;
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
    #[command(flatten)]
    pub client: ClientArgs,
    /// What commands print: `table` (default), `json` or `yaml`; IAM
    /// policies print as `yaml` (default) or `json`.
    #[arg(long, global = true, value_enum, help_heading = CLIENT_OPTIONS)]
    pub format: Option<Format>,
}

/// Where `--help` lists the flags every client command shares.
const CLIENT_OPTIONS: &str = "Client options";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform (control plane API on an embedded store, talking to Pub/Sub).
    Server(Box<ServerArgs>),
    /// Run Rouse's Pub/Sub broker on its own (Google's Pub/Sub API on one port).
    Broker(crate::commands::broker::BrokerArgs),
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
    /// Python functions (`main(args, context)`): deploy with requirements
    /// and a context, run sync (--wait) or async.
    #[command(subcommand)]
    Functions(crate::commands::functions::FunctionsCommand),
    /// A service's secrets, injected into its instances as environment variables.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Docker engines instances are placed on: add, list, drain, remove.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Tokens for HTTP clients (`curl -H "Authorization: Bearer …"`).
    #[command(subcommand)]
    Auth(AuthCommand),
    /// The store itself, on the machine that holds it: backups.
    #[command(subcommand)]
    Admin(crate::commands::admin::AdminCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Flags every client command shares, given before or after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// URL of the Rouse API.
    #[arg(
        long,
        global = true,
        env = "ROUSE_ENDPOINT",
        default_value = "http://127.0.0.1:7070",
        help_heading = CLIENT_OPTIONS
    )]
    pub endpoint: String,
    /// Key file to call the API with (`rouse iam service-accounts keys
    /// create` writes one; `rouse server` writes the owner's). Default:
    /// `$XDG_CONFIG_HOME/rouse/credentials.json`, else
    /// `~/.config/rouse/credentials.json`, if it exists.
    #[arg(long, global = true, env = "ROUSE_CREDENTIALS", help_heading = CLIENT_OPTIONS)]
    pub credentials: Option<std::path::PathBuf>,
}

/// Output format of `list`, `describe` and `get`, and of what commands made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The global flags are read before and after the subcommand, as
    /// `rouse services list --format json` and the README write them.
    #[test]
    fn client_flags_go_before_or_after_the_subcommand() {
        for argv in [
            &[
                "rouse",
                "services",
                "list",
                "--format",
                "json",
                "--endpoint",
                "http://h:1",
            ][..],
            &[
                "rouse",
                "--format",
                "json",
                "--endpoint",
                "http://h:1",
                "services",
                "list",
            ],
            &[
                "rouse",
                "--endpoint",
                "http://h:1",
                "services",
                "list",
                "--format",
                "json",
            ],
        ] {
            let cli = Cli::try_parse_from(argv).expect("parse");
            assert_eq!(cli.format, Some(Format::Json), "{argv:?}");
            assert_eq!(cli.client.endpoint, "http://h:1", "{argv:?}");
        }
        let cli = Cli::try_parse_from(["rouse", "iam", "groups", "list"]).expect("parse");
        assert_eq!(cli.format, None);
        let e = Cli::try_parse_from(["rouse", "services", "list", "--format", "xml"])
            .expect_err("unknown format");
        assert_eq!(e.exit_code(), 2);
    }
}
