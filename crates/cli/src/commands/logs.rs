//! `rouse logs`: a service's instance logs, optionally followed.

use rouse_proto as pb;
use rouse_proto::logs_client::LogsClient;

use super::services::ProjectArg;
use super::status;
use crate::args::ClientArgs;
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
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: LogsArgs) -> Result<(), CliError> {
    let mut api = LogsClient::new(super::connect(&args.client).await?);
    let mut stream = api
        .read_logs(pb::ReadLogsRequest {
            project: args.project.project,
            service: args.service,
            follow: args.follow,
            tail: args.tail.unwrap_or(0),
        })
        .await
        .map_err(status(&args.client.endpoint))?
        .into_inner();
    while let Some(line) = stream
        .message()
        .await
        .map_err(status(&args.client.endpoint))?
    {
        println!("[{}] {}", line.instance, line.line);
    }
    Ok(())
}
