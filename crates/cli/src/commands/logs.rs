//! `rouse logs`: a service's instance logs, optionally followed.

use rouse_proto as pb;
use rouse_proto::logs_client::LogsClient;

use super::services::ProjectArg;
use crate::context::Context;
use crate::exit::CliError;

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    service: String,
    #[command(flatten)]
    project: ProjectArg,
    /// Keep printing new lines until interrupted.
    #[arg(long, short)]
    follow: bool,
    /// Only the last N lines of each instance's log.
    #[arg(long)]
    tail: Option<u32>,
}

pub async fn run(ctx: &Context, args: LogsArgs) -> Result<(), CliError> {
    let mut api = ctx.client(LogsClient::new).await?;
    let mut stream = ctx
        .call(api.read_logs(pb::ReadLogsRequest {
            project: args.project.project,
            service: args.service,
            follow: args.follow,
            tail: args.tail.unwrap_or(0),
        }))
        .await?;
    while let Some(line) = ctx.next(&mut stream).await? {
        println!("[{}] {}", line.instance, line.line);
    }
    Ok(())
}
