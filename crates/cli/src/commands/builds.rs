//! `rouse builds …`: list, describe, follow, cancel and submit builds.

use std::path::PathBuf;

use rouse_proto as pb;
use rouse_proto::builds_client::BuildsClient;
use serde::Serialize;

use super::services::ProjectArg;
use super::status;
use crate::args::{ClientArgs, Format};
use crate::exit::CliError;
use crate::output::{self, View, timestamp};
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
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One build: its status, step, commit, revision, and why it failed.
    Describe {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A build's log; --follow waits for new lines until the build ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a queued or running build.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
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
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
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

pub async fn run(cmd: BuildsCommand) -> Result<(), CliError> {
    match cmd {
        BuildsCommand::List {
            service,
            project,
            limit,
            format,
            client,
        } => {
            let mut api = BuildsClient::new(super::connect(&client).await?);
            let list = api
                .list_builds(pb::ListBuildsRequest {
                    project: project.project,
                    service: service.unwrap_or_default(),
                    limit,
                })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            let views: Vec<_> = list.builds.iter().map(BuildView::from).collect();
            output::print_list(&views, format)
        }
        BuildsCommand::Describe { id, format, client } => {
            let mut api = BuildsClient::new(super::connect(&client).await?);
            let b = api
                .get_build(pb::GetBuildRequest { id })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&BuildView::from(&b), format)
        }
        BuildsCommand::Logs { id, follow, client } => {
            let mut api = BuildsClient::new(super::connect(&client).await?);
            let what = format!("build {id}");
            let mut stream = api
                .stream_build_logs(pb::StreamBuildLogsRequest { id, follow })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            // Status changes as progress (a spinner on a terminal, plain
            // lines on stderr otherwise); log lines on stdout.
            let progress = follow.then(|| Progress::start(what, "following"));
            let mut last = String::new();
            while let Some(line) = stream.message().await.map_err(status(&client.endpoint))? {
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
                None if !last.is_empty() => eprintln!("build {last}"),
                None => {}
            }
            if !last.is_empty() && last != "succeeded" {
                return Err(CliError::internal(format!(
                    "the build ended {last}; `rouse builds describe` says why"
                )));
            }
            Ok(())
        }
        BuildsCommand::Cancel { id, client } => {
            let mut api = BuildsClient::new(super::connect(&client).await?);
            let b = api
                .cancel_build(pb::CancelBuildRequest { id })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            eprintln!("build {} is {}", b.id, b.status);
            Ok(())
        }
        BuildsCommand::Submit {
            service,
            project,
            source,
            dockerfile,
            format,
            client,
        } => {
            let source = std::path::absolute(&source)
                .map_err(|e| CliError::usage(format!("--source `{}`: {e}", source.display())))?;
            let mut api = BuildsClient::new(super::connect(&client).await?);
            let b = api
                .submit_build(pb::SubmitBuildRequest {
                    project: project.project,
                    service,
                    source_dir: source.display().to_string(),
                    dockerfile: dockerfile.unwrap_or_default(),
                })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&BuildView::from(&b), format)
        }
    }
}
