//! `rouse revisions …`: register a revision (it serves from then on), list
//! them, and describe one (where it came from, its state, tags and traffic).

use rouse_proto as pb;
use rouse_proto::revisions_client::RevisionsClient;
use rouse_proto::rollouts_client::RolloutsClient;
use serde::Serialize;

use super::services::ProjectArg;
use crate::context::Context;
use crate::exit::CliError;
use crate::output::{RevisionView, View, timestamp};

#[derive(Debug, clap::Subcommand)]
pub enum RevisionsCommand {
    /// Register a new revision of a service; the newest revision serves.
    Create(CreateArgs),
    /// One revision: where it came from (commit, branch, trigger, build), its state, tags and traffic.
    Describe {
        revision: String,
        /// The revision's service.
        #[arg(long)]
        service: String,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// List a service's revisions, newest (serving) first.
    List {
        service: String,
        #[command(flatten)]
        project: ProjectArg,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["image", "command"])))]
pub struct CreateArgs {
    service: String,
    #[command(flatten)]
    project: ProjectArg,
    /// Docker image in the local engine (never pulled), for the Docker runtime.
    #[arg(long)]
    image: Option<String>,
    /// Command line for the process runtime, e.g. "python3 service.py".
    #[arg(long)]
    command: Option<String>,
    /// Working directory of --command [default: the current directory].
    #[arg(long, requires = "command")]
    workdir: Option<std::path::PathBuf>,
    /// `server` (HTTP server on $PORT, questions POSTed) or `job` (one instance per question).
    #[arg(long, default_value = "server", value_parser = ["server", "job"])]
    mode: String,
    /// HTTP readiness probe path (e.g. /healthz): ready once it answers below 500; by default ready once `GET /` gets any HTTP answer (an open port alone is not enough).
    #[arg(long)]
    probe_path: Option<String>,
    /// Its instances speak HTTP/2 without TLS (h2c, e.g. gRPC servers):
    /// requests and questions reach them over HTTP/2 (Cloud Run's flag).
    #[arg(long)]
    use_http2: bool,
}

/// Splits a command line into words: whitespace separates, single and double
/// quotes group, a backslash escapes the next character outside single quotes.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("--command `{line}` has an unclosed '")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => word.extend(chars.next()),
                        Some(c) => word.push(c),
                        None => return Err(format!("--command `{line}` has an unclosed \"")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

pub async fn run(ctx: &Context, cmd: RevisionsCommand) -> Result<(), CliError> {
    match cmd {
        RevisionsCommand::Create(args) => {
            let source = match (&args.image, &args.command) {
                (Some(image), _) => pb::create_revision_request::Source::Image(image.clone()),
                (None, Some(command)) => {
                    let argv = split_command(command).map_err(CliError::usage)?;
                    let workdir = match &args.workdir {
                        Some(d) => d.clone(),
                        None => std::env::current_dir().map_err(|e| {
                            CliError::usage(format!(
                                "cannot read the current directory ({e}); pass --workdir"
                            ))
                        })?,
                    };
                    let workdir = std::path::absolute(&workdir).unwrap_or(workdir);
                    pb::create_revision_request::Source::Command(pb::Command {
                        argv,
                        workdir: workdir.display().to_string(),
                    })
                }
                (None, None) => return Err(CliError::usage("give --image or --command")),
            };
            let mut api = ctx.client(RevisionsClient::new).await?;
            let r = ctx
                .call(api.create_revision(pb::CreateRevisionRequest {
                    project: args.project.project,
                    service: args.service,
                    source: Some(source),
                    mode: args.mode,
                    probe_path: args.probe_path.unwrap_or_default(),
                    use_http2: args.use_http2,
                }))
                .await?;
            ctx.print_one(&RevisionView::from(&r))
        }
        RevisionsCommand::Describe {
            revision,
            service,
            project,
        } => {
            let mut api = ctx.client(RolloutsClient::new).await?;
            let r = ctx
                .call(api.describe_revision(pb::DescribeRevisionRequest {
                    project: project.project,
                    service,
                    revision,
                }))
                .await?;
            ctx.print_one(&RevisionDetailView::from(r))
        }
        RevisionsCommand::List { service, project } => {
            let mut api = ctx.client(RevisionsClient::new).await?;
            let list = ctx
                .call(api.list_revisions(pb::ListRevisionsRequest {
                    project: project.project,
                    service,
                }))
                .await?;
            let views: Vec<_> = list.revisions.iter().map(RevisionView::from).collect();
            ctx.print_list(&views)
        }
    }
}

/// A revision with where it came from and how it is reached, as `describe` shows it.
#[derive(Debug, Serialize)]
pub struct RevisionDetailView {
    pub name: String,
    pub project: String,
    pub service: String,
    pub serving: bool,
    pub state: String,
    pub runtime: String,
    pub source: String,
    pub mode: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub commit: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub branch: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trigger: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub build: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub traffic_percent: u32,
    pub create_time: String,
}

impl View for RevisionDetailView {
    const COLUMNS: &'static [&'static str] = &["NAME", "SERVING", "STATE", "COMMIT"];
    const NONE: &'static str = "no revision";

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.serving.to_string(),
            self.state.clone(),
            self.commit.clone(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("service", format!("{}/{}", self.project, self.service)),
            ("serving", self.serving.to_string()),
            ("state", self.state.clone()),
            ("runtime", self.runtime.clone()),
            ("source", self.source.clone()),
            ("mode", self.mode.clone()),
            ("commit", self.commit.clone()),
            ("branch", self.branch.clone()),
            ("trigger", self.trigger.clone()),
            ("build", self.build.clone()),
            ("image id", self.image_id.clone()),
            ("tags", self.tags.join(", ")),
            ("traffic", format!("{}%", self.traffic_percent)),
            ("created", self.create_time.clone()),
        ]
    }
}

impl From<pb::RevisionDetail> for RevisionDetailView {
    fn from(r: pb::RevisionDetail) -> Self {
        Self {
            name: r.name,
            project: r.project,
            service: r.service,
            serving: r.serving,
            state: r.state,
            runtime: r.runtime,
            source: r.image,
            mode: r.mode,
            commit: r.commit,
            branch: r.branch,
            trigger: r.trigger,
            build: r.build,
            image_id: r.image_id,
            tags: r.tags,
            traffic_percent: r.traffic_percent,
            create_time: timestamp(r.create_time.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_command;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_command(r#"python3 -c 'print("a b")' "x y" z\ w"#).expect("valid"),
            ["python3", "-c", r#"print("a b")"#, "x y", "z w"]
        );
        assert!(
            split_command("echo 'open")
                .expect_err("unclosed")
                .contains("unclosed")
        );
        assert!(split_command("   ").expect("empty").is_empty());
    }
}
