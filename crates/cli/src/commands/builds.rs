//! `rouse builds …`: list, describe, follow, cancel and submit builds.

use std::path::PathBuf;

use rouse_proto as pb;
use rouse_proto::builds_client::BuildsClient;
use serde::Serialize;

use super::services::ProjectArg;
use crate::context::Context;
use crate::exit::CliError;
use crate::output::{View, timestamp};
use crate::progress::Progress;

#[derive(Debug, clap::Subcommand)]
pub enum BuildsCommand {
    /// A project's builds (or one service's), newest first.
    List {
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        project: ProjectArg,
        /// Most builds shown.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One build: its status, step, commit, revision, and why it failed.
    Describe { id: String },
    /// A build's log; --follow waits for new lines until the build ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a queued or running build.
    Cancel { id: String },
    /// Build SERVICE from a directory (a working tree) and roll it out.
    Submit {
        service: String,
        #[command(flatten)]
        project: ProjectArg,
        /// The directory to build (on this machine, which must be the server's).
        #[arg(long)]
        source: PathBuf,
        /// The Dockerfile, relative to the source [default: Dockerfile].
        #[arg(long)]
        dockerfile: Option<String>,
    },
}

#[derive(Debug, Serialize)]
pub struct BuildView {
    pub id: String,
    pub project: String,
    pub service: String,
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub step: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trigger: String,
    pub source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub commit: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub branch: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub failure: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_lines: Vec<String>,
    pub create_time: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub start_time: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub finish_time: String,
}

impl From<&pb::Build> for BuildView {
    fn from(b: &pb::Build) -> Self {
        Self {
            id: b.id.clone(),
            project: b.project.clone(),
            service: b.service.clone(),
            status: b.status.clone(),
            step: b.step.clone(),
            trigger: b.trigger.clone(),
            source: b.source.clone(),
            commit: b.commit.clone(),
            branch: b.branch.clone(),
            revision: b.revision.clone(),
            image: b.image.clone(),
            failure: b.failure.clone(),
            last_lines: b.last_lines.clone(),
            create_time: timestamp(b.create_time.as_ref()),
            start_time: timestamp(b.start_time.as_ref()),
            finish_time: timestamp(b.finish_time.as_ref()),
        }
    }
}

impl View for BuildView {
    const COLUMNS: &'static [&'static str] = &[
        "ID", "SERVICE", "STATUS", "COMMIT", "BRANCH", "REVISION", "CREATED",
    ];
    const NONE: &'static str = "no builds";

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.service.clone(),
            self.status.clone(),
            self.commit.chars().take(12).collect(),
            self.branch.clone(),
            self.revision.clone(),
            self.create_time.clone(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("id", self.id.clone()),
            ("service", format!("{}/{}", self.project, self.service)),
            ("status", self.status.clone()),
            ("step", self.step.clone()),
            ("trigger", self.trigger.clone()),
            ("source", self.source.clone()),
            ("commit", self.commit.clone()),
            ("branch", self.branch.clone()),
            ("revision", self.revision.clone()),
            ("image", self.image.clone()),
            ("created", self.create_time.clone()),
            ("started", self.start_time.clone()),
            ("finished", self.finish_time.clone()),
        ];
        if !self.failure.is_empty() {
            rows.push(("failure", self.failure.clone()));
        }
        if !self.last_lines.is_empty() {
            rows.push(("last lines", self.last_lines.join("\n")));
        }
        rows
    }
}

pub async fn run(ctx: &Context, cmd: BuildsCommand) -> Result<(), CliError> {
    match cmd {
        BuildsCommand::List {
            service,
            project,
            limit,
        } => {
            let mut api = ctx.client(BuildsClient::new).await?;
            let list = ctx
                .call(api.list_builds(pb::ListBuildsRequest {
                    project: project.project,
                    service: service.unwrap_or_default(),
                    limit,
                }))
                .await?;
            let views: Vec<_> = list.builds.iter().map(BuildView::from).collect();
            ctx.print_list(&views)
        }
        BuildsCommand::Describe { id } => {
            let mut api = ctx.client(BuildsClient::new).await?;
            let b = ctx.call(api.get_build(pb::GetBuildRequest { id })).await?;
            ctx.print_one(&BuildView::from(&b))
        }
        BuildsCommand::Logs { id, follow } => logs(ctx, id, follow).await,
        BuildsCommand::Cancel { id } => {
            let mut api = ctx.client(BuildsClient::new).await?;
            let b = ctx
                .call(api.cancel_build(pb::CancelBuildRequest { id }))
                .await?;
            ctx.note(format_args!("build {} is {}", b.id, b.status));
            Ok(())
        }
        BuildsCommand::Submit {
            service,
            project,
            source,
            dockerfile,
        } => {
            let source = std::path::absolute(&source)
                .map_err(|e| CliError::usage(format!("--source `{}`: {e}", source.display())))?;
            let mut api = ctx.client(BuildsClient::new).await?;
            let b = ctx
                .call(api.submit_build(pb::SubmitBuildRequest {
                    project: project.project,
                    service,
                    source_dir: source.display().to_string(),
                    dockerfile: dockerfile.unwrap_or_default(),
                }))
                .await?;
            ctx.print_one(&BuildView::from(&b))
        }
    }
}

/// `rouse builds logs ID [--follow]`: log lines on stdout; with --follow,
/// status changes as progress (a spinner on a terminal, plain lines on
/// stderr otherwise). A build that ends other than `succeeded` fails.
pub(crate) async fn logs(ctx: &Context, id: String, follow: bool) -> Result<(), CliError> {
    let mut api = ctx.client(BuildsClient::new).await?;
    let what = format!("build {id}");
    let mut stream = ctx
        .call(api.stream_build_logs(pb::StreamBuildLogsRequest { id, follow }))
        .await?;
    let progress = follow.then(|| Progress::start(what, "following"));
    let mut last = String::new();
    while let Some(line) = ctx.next(&mut stream).await? {
        if !line.status.is_empty() {
            if let Some(p) = &progress {
                p.state(&line.status);
            }
            last = line.status;
            continue;
        }
        match &progress {
            Some(p) => p.println(&line.line),
            None => println!("{}", line.line),
        }
    }
    match progress {
        Some(p) => p.finish(),
        None if !last.is_empty() => ctx.note(format_args!("build {last}")),
        None => {}
    }
    if !last.is_empty() && last != "succeeded" {
        return Err(CliError::internal(format!(
            "the build ended {last}; `rouse builds describe` says why"
        )));
    }
    Ok(())
}
