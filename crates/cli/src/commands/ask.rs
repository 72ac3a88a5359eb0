//! `rouse ask`: publish a question to a service's topic; with `--wait`,
//! follow its events and print the answer.

use std::time::{Duration, Instant};

use rouse_proto as pb;
use rouse_proto::executions_client::ExecutionsClient;

use super::services::ProjectArg;
use crate::context::Context;
use crate::exit::CliError;
use crate::progress::Progress;

#[derive(Debug, clap::Args)]
pub struct AskArgs {
    service: String,
    #[command(flatten)]
    project: ProjectArg,
    /// The question's input values, as JSON.
    #[arg(long, default_value = "null")]
    input: String,
    /// Wait for the answer and print it (otherwise print the execution id).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Ask the service to forward its log records; --wait prints them on stderr.
    #[arg(long)]
    forward_logs: bool,
}

pub async fn run(ctx: &Context, args: AskArgs) -> Result<(), CliError> {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&args.input) {
        return Err(CliError::usage(format!(
            "--input `{}` is not JSON ({e}); write e.g. --input '{{\"n\": 1}}'",
            args.input
        )));
    }
    ask(
        ctx,
        Question {
            project: args.project.project,
            service: args.service,
            input: args.input,
            wait: args.wait.then_some(args.timeout),
            forward_logs: args.forward_logs,
        },
    )
    .await
}

/// One question to ask: its input as JSON text; `wait`: follow it this long
/// and print the answer (else print the execution id).
pub(crate) struct Question {
    pub project: String,
    pub service: String,
    pub input: String,
    pub wait: Option<Duration>,
    pub forward_logs: bool,
}

/// Asks, and with `wait` prints the answer (an exception is an error).
pub(crate) async fn ask(ctx: &Context, args: Question) -> Result<(), CliError> {
    let mut api = ctx.client(ExecutionsClient::new).await?;
    let started = Instant::now();
    let question_uuid = uuid::Uuid::new_v4().to_string();
    let authorization = match ctx.credentials()? {
        Some(key) => question_token(&key, &args.project, &args.service, &question_uuid)?,
        None => String::new(),
    };
    let id = ctx
        .call(api.ask(pb::AskRequest {
            project: args.project,
            service: args.service,
            input_json: args.input,
            forward_logs: args.forward_logs,
            question_uuid,
            authorization,
        }))
        .await?
        .id;
    let Some(timeout) = args.wait else {
        println!("{id}");
        return Ok(());
    };
    let progress = Progress::start(format!("question {id}"), "asked");
    let watch = async {
        let mut stream = ctx
            .call(api.watch_execution(pb::WatchExecutionRequest {
                id: id.clone(),
                after_event_id: 0,
            }))
            .await?;
        while let Some(event) = ctx.next(&mut stream).await? {
            let data: serde_json::Value =
                serde_json::from_str(&event.data_json).unwrap_or_default();
            match event.kind.as_str() {
                "result" => {
                    progress.state(&format!("answered in {:.2?}", started.elapsed()));
                    progress.stop();
                    let output = data.get("output_values").cloned().unwrap_or_default();
                    let text = serde_json::to_string_pretty(&output).unwrap_or_default();
                    println!("{text}");
                    return Ok(());
                }
                "exception" => {
                    let kind = data["exception_type"].as_str().unwrap_or("Exception");
                    let message = data["exception_message"].as_str().unwrap_or("");
                    return Err(CliError::internal(format!(
                        "{kind}: {message} (execution {id})"
                    )));
                }
                "log_record" => {
                    let record = &data["log_record"];
                    progress.note(&format!(
                        "[{}] {}",
                        record["levelname"].as_str().unwrap_or("LOG"),
                        record["msg"].as_str().unwrap_or_default()
                    ));
                }
                // delivery_acknowledgement, heartbeat, monitor_message…
                other => progress.state(other),
            }
        }
        Err(CliError::internal(format!(
            "the event stream of execution {id} ended without an answer; see `rouse executions get {id}`"
        )))
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(result) => result,
        Err(_) => Err(CliError::internal(format!(
            "no answer within {}; the question goes on: `rouse executions get {id}`",
            humantime::format_duration(timeout)
        ))),
    }
}

/// A token that lets the dispatcher check `services.ask` for the caller on
/// this one question.
fn question_token(
    key: &rouse_identity::KeyFile,
    project: &str,
    service: &str,
    question_uuid: &str,
) -> Result<String, CliError> {
    let project = rouse_core::ProjectName::parse(project)
        .map_err(|e| CliError::usage(format!("--project: {e}")))?;
    let service = rouse_core::ServiceName::parse(&project, service)
        .map_err(|e| CliError::usage(format!("service: {e}")))?;
    rouse_identity::sign(
        key,
        &rouse_identity::service_audience(&project, &service),
        Some(question_uuid),
        std::time::SystemTime::now(),
        rouse_identity::MAX_LIFETIME,
    )
    .map_err(|e| CliError::internal(format!("cannot sign the question's token: {e}")))
}
