//! `rouse executions …`: get, list and cancel executions.

use rouse_proto as pb;
use rouse_proto::executions_client::ExecutionsClient;

use super::status;
use crate::args::{ClientArgs, Format};
use crate::exit::CliError;
use crate::output::{self, ExecutionView};

#[derive(Debug, clap::Subcommand)]
pub enum ExecutionsCommand {
    /// Show one execution with its timings and events.
    Get {
        /// The execution id (the question uuid).
        id: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List recent executions, newest first.
    List {
        #[arg(long, env = "ROUSE_PROJECT")]
        project: Option<String>,
        /// Only this service's executions (needs --project).
        #[arg(long, requires = "project")]
        service: Option<String>,
        /// Only executions with this status.
        #[arg(long, value_parser = ["queued", "waking", "running", "succeeded", "failed", "cancelled"])]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a queued or running execution; its asker gets an exception.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(cmd: ExecutionsCommand) -> Result<(), CliError> {
    match cmd {
        ExecutionsCommand::Get { id, format, client } => {
            let mut api = ExecutionsClient::new(super::connect(&client).await?);
            let e = api
                .get_execution(pb::GetExecutionRequest { id })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&ExecutionView::from(&e), format)
        }
        ExecutionsCommand::List {
            project,
            service,
            status: wanted,
            limit,
            format,
            client,
        } => {
            let mut api = ExecutionsClient::new(super::connect(&client).await?);
            let list = api
                .list_executions(pb::ListExecutionsRequest {
                    project: project.unwrap_or_default(),
                    service: service.unwrap_or_default(),
                    status: wanted.unwrap_or_default(),
                    limit,
                })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            let views: Vec<_> = list.executions.iter().map(ExecutionView::from).collect();
            output::print_list(&views, format)
        }
        ExecutionsCommand::Cancel { id, client } => {
            let mut api = ExecutionsClient::new(super::connect(&client).await?);
            let e = api
                .cancel_execution(pb::CancelExecutionRequest { id })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            eprintln!("execution {} is {}", e.id, e.status);
            Ok(())
        }
    }
}
