//! `rouse revisions …`: register a revision (it serves from then on) and list them.

use rouse_proto as pb;
use rouse_proto::revisions_client::RevisionsClient;

use super::services::ProjectArg;
use super::status;
use crate::args::{ClientArgs, Format};
use crate::exit::CliError;
use crate::output::{self, RevisionView};

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
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a service's revisions, newest (serving) first.
    List {
        service: String,
        #[command(flatten)]
        project: ProjectArg,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
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
    /// HTTP readiness probe path (e.g. /healthz); by default the TCP port is probed.
    #[arg(long)]
    probe_path: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    client: ClientArgs,
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

pub async fn run(cmd: RevisionsCommand) -> Result<(), CliError> {
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
            let mut api = RevisionsClient::new(super::connect(&args.client).await?);
            let r = api
                .create_revision(pb::CreateRevisionRequest {
                    project: args.project.project,
                    service: args.service,
                    source: Some(source),
                    mode: args.mode,
                    probe_path: args.probe_path.unwrap_or_default(),
                })
                .await
                .map_err(status(&args.client.endpoint))?
                .into_inner();
            output::print_one(&RevisionView::from(&r), args.format)
        }
        RevisionsCommand::Describe {
            revision,
            service,
            project,
            format,
            client,
        } => super::rollout::describe_revision(revision, service, project, format, client).await,
        RevisionsCommand::List {
            service,
            project,
            format,
            client,
        } => {
            let mut api = RevisionsClient::new(super::connect(&client).await?);
            let list = api
                .list_revisions(pb::ListRevisionsRequest {
                    project: project.project,
                    service,
                })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            let views: Vec<_> = list.revisions.iter().map(RevisionView::from).collect();
            output::print_list(&views, format)
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
