//! `rouse functions`: FaaSpot's deployments. `deploy` sends a Python file
//! with a top-level `main(args, context)`, its requirements and its context
//! to be built (requirements installed once per distinct set) and rolled
//! out as a service; `run` asks it, with `--parameters k=v` as `args`.
//! A function is a service: `services`, `executions`, `logs`, IAM and
//! audit work on it as on any other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rouse_core::function::RUNNER_FILE;
use rouse_proto as pb;
use rouse_proto::builds_client::BuildsClient;
use rouse_proto::revisions_client::RevisionsClient;
use rouse_proto::services_client::ServicesClient;

use super::ask::{Question, ask};
use super::services::ProjectArg;
use crate::context::Context;
use crate::exit::CliError;
use crate::output::View;

#[derive(Debug, clap::Subcommand)]
pub enum FunctionsCommand {
    /// Deploy a Python function: creates the service NAME if it does not
    /// exist, installs its requirements and rolls it out (with --wait,
    /// following the build to its end; otherwise printing the build's id).
    Deploy {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        /// The Python file; it must define `main(args, context)`.
        #[arg(long)]
        file: PathBuf,
        /// A pip requirements file, installed for the function.
        #[arg(long, visible_alias = "requirements-file")]
        requirements: Option<PathBuf>,
        /// `key = value` lines passed to every run as `context` (stored
        /// sealed, like secrets).
        #[arg(long)]
        context_file: Option<PathBuf>,
        /// Follow the build until the function serves (or the build fails).
        #[arg(long)]
        wait: bool,
    },
    /// List a project's functions (the services whose serving revision
    /// runs a deployed function).
    List {
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Delete a function: its service, topic and subscription (refused for
    /// a service that is not a function: `rouse services delete` deletes
    /// those).
    Delete {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Run a function: prints the execution id, or with --wait its result.
    Run {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        /// The function's `args`: `key=value` (values are strings), one or
        /// more.
        #[arg(long = "parameters", visible_alias = "parameter", num_args = 1..)]
        parameters: Vec<String>,
        /// Wait for the result and print it (otherwise print the execution
        /// id for `rouse executions get`).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

pub async fn run(ctx: &Context, cmd: FunctionsCommand) -> Result<(), CliError> {
    match cmd {
        FunctionsCommand::Deploy {
            name,
            project,
            file,
            requirements,
            context_file,
            wait,
        } => {
            let code = read(&file, "--file")?;
            let requirements = match &requirements {
                Some(path) => read(path, "--requirements")?,
                None => String::new(),
            };
            let context = match &context_file {
                Some(path) => read(path, "--context-file")?,
                None => String::new(),
            };
            let project = project.project;
            let mut services = ctx.client(ServicesClient::new).await?;
            let exists = services
                .get_service(pb::GetServiceRequest {
                    project: project.clone(),
                    name: name.clone(),
                })
                .await;
            match exists {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {
                    ctx.call(services.create_service(pb::CreateServiceRequest {
                        project: project.clone(),
                        name: name.clone(),
                    }))
                    .await?;
                    ctx.note(format_args!("created service {project}/{name}"));
                }
                Err(s) => return Err(ctx.error(s)),
            }
            let mut builds = ctx.client(BuildsClient::new).await?;
            let build = ctx
                .call(
                    builds.deploy_function(pb::DeployFunctionRequest {
                        project: project.clone(),
                        service: name.clone(),
                        code,
                        requirements,
                        context,
                        file_name: file.display().to_string(),
                        context_file_name: context_file
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                    }),
                )
                .await?;
            if !wait {
                println!("{}", build.id);
                return Ok(());
            }
            super::builds::logs(ctx, build.id.clone(), true).await?;
            ctx.note(format_args!(
                "function {name} serves (build {}); run it with `rouse functions run {name} --project {project} --parameters key=value --wait`",
                build.id
            ));
            Ok(())
        }
        FunctionsCommand::List { project } => {
            let project = project.project;
            let mut services = ctx.client(ServicesClient::new).await?;
            let listed = ctx
                .call(services.list_services(pb::ListServicesRequest {
                    project: project.clone(),
                }))
                .await?;
            let mut functions = Vec::new();
            for service in listed.services {
                if let Some(dir) = function_dir(ctx, &project, &service.name).await? {
                    functions.push(FunctionView {
                        name: service.name,
                        status: service.status,
                        revision: service.serving_revision,
                        source: dir,
                    });
                }
            }
            ctx.print_list(&functions)
        }
        FunctionsCommand::Delete { name, project } => {
            let project = project.project;
            if function_dir(ctx, &project, &name).await?.is_none() {
                return Err(CliError::usage(format!(
                    "service `{name}` of project `{project}` does not serve a function; `rouse services delete {name} --project {project}` deletes it"
                )));
            }
            let mut services = ctx.client(ServicesClient::new).await?;
            ctx.call(services.delete_service(pb::DeleteServiceRequest {
                project: project.clone(),
                name: name.clone(),
            }))
            .await?;
            ctx.note(format_args!(
                "deleted function `{name}` of project `{project}`"
            ));
            Ok(())
        }
        FunctionsCommand::Run {
            name,
            project,
            parameters,
            wait,
            timeout,
        } => {
            let mut args = serde_json::Map::new();
            for pair in &parameters {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(CliError::usage(format!(
                        "--parameters `{pair}` is not `key=value`; write e.g. --parameters name=user1"
                    )));
                };
                if key.is_empty() {
                    return Err(CliError::usage(format!(
                        "--parameters `{pair}` has no key before `=`; write e.g. --parameters name=user1"
                    )));
                }
                args.insert(key.to_owned(), serde_json::Value::String(value.to_owned()));
            }
            ask(
                ctx,
                Question {
                    project: project.project,
                    service: name,
                    input: serde_json::Value::Object(args).to_string(),
                    wait: wait.then_some(timeout),
                    forward_logs: false,
                },
            )
            .await
        }
    }
}

/// Where the function `name` serves from, if its serving revision runs a
/// deployed function.
async fn function_dir(
    ctx: &Context,
    project: &str,
    name: &str,
) -> Result<Option<String>, CliError> {
    let mut revisions = ctx.client(RevisionsClient::new).await?;
    let listed = ctx
        .call(revisions.list_revisions(pb::ListRevisionsRequest {
            project: project.to_owned(),
            service: name.to_owned(),
        }))
        .await?;
    Ok(listed
        .revisions
        .iter()
        .find(|r| r.serving)
        .and_then(|r| r.command.as_ref())
        .filter(|c| c.argv.last().map(String::as_str) == Some(RUNNER_FILE))
        .map(|c| c.workdir.clone()))
}

/// One function, as `functions list` shows it.
#[derive(Debug, serde::Serialize)]
struct FunctionView {
    name: String,
    status: String,
    revision: String,
    /// Where its file is kept, on the server's machine.
    source: String,
}

impl View for FunctionView {
    const COLUMNS: &'static [&'static str] = &["NAME", "STATUS", "REVISION", "SOURCE"];
    const NONE: &'static str = "no functions";

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.status.clone(),
            self.revision.clone(),
            self.source.clone(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("status", self.status.clone()),
            ("revision", self.revision.clone()),
            ("source", self.source.clone()),
        ]
    }
}

fn read(path: &Path, flag: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("{flag} `{}`: cannot read it ({e})", path.display())))
}
