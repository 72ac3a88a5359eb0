//! `rouse executions …`: get, list and cancel executions.

use rouse_proto as pb;
use rouse_proto::executions_client::ExecutionsClient;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::ExecutionView;

#[derive(Debug, clap::Subcommand)]
pub enum ExecutionsCommand {
    /// Show one execution with its timings and events.
    Get {
        /// The execution id (the question uuid).
        id: String,
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
    },
    /// Cancel a queued or running execution; its asker gets an exception.
    Cancel { id: String },
}

pub async fn run(ctx: &Context, cmd: ExecutionsCommand) -> Result<(), CliError> {
    match cmd {
        ExecutionsCommand::Get { id } => {
            let mut api = ctx.client(ExecutionsClient::new).await?;
            let e = ctx
                .call(api.get_execution(pb::GetExecutionRequest { id }))
                .await?;
            ctx.print_one(&ExecutionView::from(&e))
        }
        ExecutionsCommand::List {
            project,
            service,
            status,
            limit,
        } => {
            let mut api = ctx.client(ExecutionsClient::new).await?;
            let list = ctx
                .call(api.list_executions(pb::ListExecutionsRequest {
                    project: project.unwrap_or_default(),
                    service: service.unwrap_or_default(),
                    status: status.unwrap_or_default(),
                    limit,
                }))
                .await?;
            let views: Vec<_> = list.executions.iter().map(ExecutionView::from).collect();
            ctx.print_list(&views)
        }
        ExecutionsCommand::Cancel { id } => {
            let mut api = ctx.client(ExecutionsClient::new).await?;
            let e = ctx
                .call(api.cancel_execution(pb::CancelExecutionRequest { id }))
                .await?;
            ctx.note(format_args!("execution {} is {}", e.id, e.status));
            Ok(())
        }
    }
}
