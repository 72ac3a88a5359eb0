//! `rouse triggers …`: connect a repository and a branch pattern to a service.

use std::path::PathBuf;

use rouse_proto as pb;
use rouse_proto::triggers_client::TriggersClient;
use serde::Serialize;

use super::services::ProjectArg;
use crate::context::Context;
use crate::exit::CliError;
use crate::output::{View, timestamp};

#[derive(Debug, clap::Subcommand)]
pub enum TriggersCommand {
    /// Build SERVICE on every push to a matching branch of a repository.
    Create(Box<CreateArgs>),
    /// List a project's triggers (or one service's).
    List {
        /// Only this service's triggers.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Show a trigger, with the webhook URL to configure on GitHub.
    Describe { id: String },
    /// Delete a trigger; pushes no longer build.
    Delete { id: String },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("secret").required(true).args(["webhook_secret", "webhook_secret_file"])))]
pub struct CreateArgs {
    service: String,
    #[command(flatten)]
    project: ProjectArg,
    /// `https://github.com/OWNER/REPO`, any git URL, or a local path / file:// URL.
    #[arg(long)]
    repo: String,
    /// Regex (RE2 syntax) matched against the pushed branch, e.g. '^main$'.
    #[arg(long)]
    branch_pattern: String,
    /// Regex matched against pushed tags; without it tags build nothing.
    #[arg(long)]
    tag_pattern: Option<String>,
    /// The Dockerfile, relative to the context dir [default: Dockerfile].
    #[arg(long)]
    dockerfile: Option<String>,
    /// The build context inside the repository [default: the root].
    #[arg(long)]
    context_dir: Option<String>,
    /// Build only when a changed file matches one of these globs (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    included_files: Vec<String>,
    /// Do not build when only files matching these globs changed.
    #[arg(long, value_delimiter = ',')]
    ignored_files: Vec<String>,
    /// The webhook's secret (16 characters at least); prefer --webhook-secret-file.
    #[arg(long)]
    webhook_secret: Option<String>,
    /// A file holding the webhook's secret.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    /// A file holding a GitHub token allowed to set commit statuses.
    #[arg(long)]
    github_token_file: Option<PathBuf>,
}

fn read_secret_file(flag: &str, path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| CliError::usage(format!("{flag} `{}` cannot be read: {e}", path.display())))
}

#[derive(Debug, Serialize)]
pub struct TriggerView {
    pub id: String,
    pub project: String,
    pub service: String,
    pub repo: String,
    pub branch_pattern: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tag_pattern: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dockerfile: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub context_dir: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub included_files: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_files: Vec<String>,
    pub reports_status: bool,
    pub webhook_url: String,
    pub generic_webhook_url: String,
    pub create_time: String,
}

impl From<&pb::Trigger> for TriggerView {
    fn from(t: &pb::Trigger) -> Self {
        Self {
            id: t.id.clone(),
            project: t.project.clone(),
            service: t.service.clone(),
            repo: t.repo.clone(),
            branch_pattern: t.branch_pattern.clone(),
            tag_pattern: t.tag_pattern.clone(),
            dockerfile: t.dockerfile.clone(),
            context_dir: t.context_dir.clone(),
            included_files: t.included_files.clone(),
            ignored_files: t.ignored_files.clone(),
            reports_status: t.reports_status,
            webhook_url: t.webhook_url.clone(),
            generic_webhook_url: t.generic_webhook_url.clone(),
            create_time: timestamp(t.create_time.as_ref()),
        }
    }
}

impl View for TriggerView {
    const COLUMNS: &'static [&'static str] = &["ID", "SERVICE", "REPO", "BRANCH", "STATUSES"];
    const NONE: &'static str = "no triggers";

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.service.clone(),
            self.repo.clone(),
            self.branch_pattern.clone(),
            if self.reports_status { "yes" } else { "" }.into(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let or_default = |s: &str, d: &str| {
            if s.is_empty() {
                d.to_owned()
            } else {
                s.to_owned()
            }
        };
        vec![
            ("id", self.id.clone()),
            ("service", format!("{}/{}", self.project, self.service)),
            ("repo", self.repo.clone()),
            ("branch pattern", self.branch_pattern.clone()),
            (
                "tag pattern",
                or_default(&self.tag_pattern, "(tags are not built)"),
            ),
            ("dockerfile", or_default(&self.dockerfile, "Dockerfile")),
            ("context dir", or_default(&self.context_dir, ".")),
            ("included files", self.included_files.join(", ")),
            ("ignored files", self.ignored_files.join(", ")),
            (
                "commit statuses",
                if self.reports_status {
                    "reported (a GitHub token is set)".into()
                } else {
                    "not reported (no GitHub token)".into()
                },
            ),
            ("webhook URL", self.webhook_url.clone()),
            ("generic webhook URL", self.generic_webhook_url.clone()),
            ("created", self.create_time.clone()),
        ]
    }
}

pub async fn run(ctx: &Context, cmd: TriggersCommand) -> Result<(), CliError> {
    match cmd {
        TriggersCommand::Create(args) => {
            let args = *args;
            let webhook_secret = match (&args.webhook_secret, &args.webhook_secret_file) {
                (Some(s), _) => s.clone(),
                (None, Some(path)) => read_secret_file("--webhook-secret-file", path)?,
                (None, None) => {
                    return Err(CliError::usage(
                        "give --webhook-secret-file FILE (or --webhook-secret)",
                    ));
                }
            };
            let github_token = match &args.github_token_file {
                Some(path) => read_secret_file("--github-token-file", path)?,
                None => String::new(),
            };
            let mut api = ctx.client(TriggersClient::new).await?;
            let t = ctx
                .call(api.create_trigger(pb::CreateTriggerRequest {
                    project: args.project.project,
                    service: args.service,
                    repo: args.repo,
                    branch_pattern: args.branch_pattern,
                    dockerfile: args.dockerfile.unwrap_or_default(),
                    context_dir: args.context_dir.unwrap_or_default(),
                    included_files: args.included_files,
                    ignored_files: args.ignored_files,
                    webhook_secret,
                    github_token,
                    tag_pattern: args.tag_pattern.unwrap_or_default(),
                }))
                .await?;
            ctx.print_one(&TriggerView::from(&t))
        }
        TriggersCommand::List { service, project } => {
            let mut api = ctx.client(TriggersClient::new).await?;
            let list = ctx
                .call(api.list_triggers(pb::ListTriggersRequest {
                    project: project.project,
                    service: service.unwrap_or_default(),
                }))
                .await?;
            let views: Vec<_> = list.triggers.iter().map(TriggerView::from).collect();
            ctx.print_list(&views)
        }
        TriggersCommand::Describe { id } => {
            let mut api = ctx.client(TriggersClient::new).await?;
            let t = ctx
                .call(api.get_trigger(pb::GetTriggerRequest { id }))
                .await?;
            ctx.print_one(&TriggerView::from(&t))
        }
        TriggersCommand::Delete { id } => {
            let mut api = ctx.client(TriggersClient::new).await?;
            ctx.call(api.delete_trigger(pb::DeleteTriggerRequest { id: id.clone() }))
                .await?;
            ctx.note(format_args!("deleted trigger {id}"));
            Ok(())
        }
    }
}
