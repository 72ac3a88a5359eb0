//! The `Executions` API (ask, get, list, cancel, watch) and the `Logs` API.
//!
//! `Ask` publishes the question to the service's topic like any other asker,
//! so it takes the same path through the dispatcher. Watching reads the event
//! store, where the dispatcher records every event of a question.
//!
//! Reading and watching an execution need `executions.get` on its service,
//! except for the principal that asked it (the dispatcher records who asked:
//! the question token's principal, which `rouse ask` signs as the caller).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use rouse_core::protocol::{Attributes, format_datetime, is_terminal_kind};
use rouse_core::revision::{EventRecord, Execution, ExecutionStatus};
use rouse_core::{ProjectName, Service};
use rouse_pubsub::Outgoing;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use rouse_iam::Resource;

use crate::auth::{project_resource, resource_of, service_resource};
use crate::backend::Backend;
use crate::error::ApiError;
use crate::pb;

/// The SRUID questions asked through the API are sent as.
pub const ASKER_SRUID: &str = concat!("rouse/cli:", env!("CARGO_PKG_VERSION"));
/// How often a watcher looks for new events. 20 ms: well under the
/// emulator's 50 ms delivery tick, and an indexed read of a few rows.
const WATCH_POLL: Duration = Duration::from_millis(20);
/// How long a watch waits for a question just asked to be recorded by the
/// dispatcher before answering NOT_FOUND.
const WATCH_APPEAR: Duration = Duration::from_secs(10);
/// How long an ask waits for the dispatcher to record its question, so
/// that the id it answers with can be read at once. Past it (no dispatcher
/// running, a backlog) the id is answered anyway; reading it is NOT_FOUND
/// until the question is taken.
const ASK_RECORDED_WAIT: Duration = Duration::from_secs(2);
/// After this many polls without a new event, a watch looks at the
/// execution's status (every 200 ms).
const WATCH_STATUS_EVERY: u32 = 10;
/// How often `logs --follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Default and largest page of `ListExecutions`.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;

#[derive(Clone)]
pub struct ExecutionsApi {
    backend: Backend,
}

impl ExecutionsApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    async fn execution(&self, id: &str) -> Result<Execution, ApiError> {
        self.backend
            .store
            .get_execution(id)
            .await?
            .ok_or_else(|| ApiError::ExecutionNotFound { id: id.to_owned() })
    }

    /// The execution `id` and its service, after the method's check on
    /// that service (on the root when the execution or its service does not
    /// exist, so that existence is not revealed). Where the method's entry
    /// lets the owner through, the principal that asked the question may
    /// read and follow it without `executions.get` (a service account with
    /// only `roles/serviceUser` runs `rouse ask --wait`).
    async fn guarded<T>(
        &self,
        request: &Request<T>,
        id: &str,
    ) -> Result<(Execution, Option<Service>), ApiError> {
        let (_, found) = self
            .backend
            .permit_record_or_owner(
                request,
                self.lookup(id).await,
                |(_, s)| s.as_ref(),
                |(e, _)| e.asked_by.as_deref(),
            )
            .await?;
        Ok(found)
    }

    async fn lookup(&self, id: &str) -> Result<(Execution, Option<Service>), ApiError> {
        let e = self.execution(id).await?;
        let s = self.service_of(&e).await?;
        Ok((e, s))
    }

    async fn service_of(&self, e: &Execution) -> Result<Option<Service>, ApiError> {
        Ok(self
            .backend
            .store
            .get_service_by_uuid(e.service_uuid)
            .await?)
    }
}

fn ts(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(Into::into)
}

pub fn event_to_pb(e: &EventRecord) -> pb::Event {
    pb::Event {
        id: e.id,
        kind: e.kind.clone(),
        attributes: e
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        data_json: String::from_utf8_lossy(&e.data).into_owned(),
        record_time: Some(e.recorded_at.into()),
    }
}

pub fn execution_to_pb(
    e: &Execution,
    service: Option<&Service>,
    events: &[EventRecord],
) -> pb::Execution {
    let Execution {
        question_uuid,
        retry_count,
        service_uuid: _,
        status,
        revision,
        instance,
        cold_start,
        reason,
        attributes,
        data: _,
        received_at,
        ready_at,
        delivered_at,
        finished_at,
        asked_by,
        dispatcher: _,
    } = e;
    pb::Execution {
        id: question_uuid.clone(),
        retry_count: *retry_count,
        project: service.map(|s| s.project.to_string()).unwrap_or_default(),
        service: service.map(|s| s.name.to_string()).unwrap_or_default(),
        status: status.to_string(),
        revision: revision.clone().unwrap_or_default(),
        instance: instance.clone().unwrap_or_default(),
        cold_start: *cold_start,
        reason: reason.clone().unwrap_or_default(),
        receive_time: Some((*received_at).into()),
        ready_time: ts(*ready_at),
        deliver_time: ts(*delivered_at),
        finish_time: ts(*finished_at),
        events: events.iter().map(event_to_pb).collect(),
        asker: attributes.get("sender").cloned().unwrap_or_default(),
        asked_by: asked_by.clone().unwrap_or_default(),
        output_json: output_of(events),
    }
}

/// The output values of the last result among `events`, as JSON; empty
/// when there is none.
fn output_of(events: &[EventRecord]) -> String {
    events
        .iter()
        .rev()
        .filter(|e| e.kind == "result")
        .find_map(|e| {
            let data: serde_json::Value = serde_json::from_slice(&e.data).ok()?;
            Some(data.get("output_values")?.to_string())
        })
        .unwrap_or_default()
}

/// The attributes of a question asked through the API (docs/protocol.md).
pub fn question_attributes(question_uuid: &str, recipient: &str, forward_logs: bool) -> Attributes {
    let now = format_datetime(SystemTime::now());
    [
        ("uuid", Uuid::new_v4().to_string()),
        ("datetime", now),
        ("question_uuid", question_uuid.to_owned()),
        ("originator_question_uuid", question_uuid.to_owned()),
        ("parent", ASKER_SRUID.to_owned()),
        ("originator", ASKER_SRUID.to_owned()),
        ("sender", ASKER_SRUID.to_owned()),
        ("sender_type", "PARENT".to_owned()),
        ("sender_sdk_version", "0.69.1".to_owned()),
        ("recipient", recipient.to_owned()),
        ("retry_count", "0".to_owned()),
        (
            "forward_logs",
            if forward_logs { "1" } else { "0" }.to_owned(),
        ),
        ("save_diagnostics", "SAVE_DIAGNOSTICS_OFF".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl pb::executions_server::Executions for ExecutionsApi {
    async fn ask(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<pb::AskResponse>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = self
            .backend
            .find_service(&req.project, &req.service)
            .await?;
        let input: serde_json::Value = serde_json::from_str(&req.input_json).map_err(|e| {
            ApiError::InvalidArgument(format!("--input `{}` is not JSON: {e}", req.input_json))
        })?;
        let serving = self
            .backend
            .store
            .serving_revision(service.uuid)
            .await
            .map_err(ApiError::from)?;
        let mut recipient = service.sruid();
        recipient.revision_tag = serving.map(|r| r.name);
        let question_uuid = if req.question_uuid.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            Uuid::parse_str(&req.question_uuid)
                .map_err(|e| {
                    ApiError::InvalidArgument(format!(
                        "question_uuid `{}` is not a uuid ({e}); leave it empty to have one chosen",
                        req.question_uuid
                    ))
                })?
                .to_string()
        };
        let data = serde_json::json!({ "kind": "question", "input_values": input });
        let mut attributes =
            question_attributes(&question_uuid, &recipient.to_string(), req.forward_logs);
        // The asker's own question token if it sent one (`rouse ask` signs
        // one with its key); else, for a caller the API identified (a bearer
        // token: curl, the HTTP API), the platform's assertion that this
        // caller asks: the dispatcher checks and records that principal.
        let authorization = match (req.authorization.is_empty(), permit.caller.principal()) {
            (false, _) => Some(req.authorization),
            (true, Some(principal)) => Some(
                self.backend
                    .asserter
                    .assert_question(
                        &principal.to_string(),
                        &rouse_identity::service_audience(&service.project, &service.name),
                        &question_uuid,
                        SystemTime::now(),
                        rouse_identity::DEFAULT_LIFETIME,
                    )
                    .map_err(|e| ApiError::Internal(format!("cannot assert the asker: {e}")))?,
            ),
            (true, None) => None,
        };
        if let Some(token) = authorization {
            attributes.insert("authorization".into(), token);
        }
        let message = Outgoing {
            data: serde_json::to_vec(&data).unwrap_or_default(),
            attributes,
            ordering_key: question_uuid.clone(),
        };
        self.backend
            .messaging
            .publish(&service.topic_id(), message)
            .await
            .map_err(ApiError::from)?;
        // The id is readable once answered (`executions get` right after an
        // async ask, as FaaSpot's users run it): wait, briefly, for the
        // dispatcher to record the question it takes within milliseconds.
        let deadline = tokio::time::Instant::now() + ASK_RECORDED_WAIT;
        let mut pause = Duration::from_millis(2);
        while tokio::time::Instant::now() < deadline {
            match self.backend.store.get_execution(&question_uuid).await {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(question = %question_uuid, error = %e, "cannot read a question just asked");
                    break;
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Ok(Response::new(pb::AskResponse { id: question_uuid }))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let id = request.get_ref().id.clone();
        let (e, service) = self.guarded(&request, &id).await?;
        let events = self
            .backend
            .store
            .events_after(&id, 0)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(execution_to_pb(
            &e,
            service.as_ref(),
            &events,
        )))
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let (project, service) = (&request.get_ref().project, &request.get_ref().service);
        // A named service or project is checked as a whole; across every
        // project, each execution shows if the caller may list its service's.
        let resource = match (project.is_empty(), service.is_empty()) {
            (true, true) => None,
            (_, false) => Some(service_resource(project, service)?),
            (false, true) => Some(project_resource(project)?),
        };
        let permit = match resource {
            Some(resource) => self.backend.permit(&request, &resource).await?,
            None => self.backend.permit_each_item(&request)?,
        };
        let everywhere = request.get_ref().project.is_empty();
        let req = request.into_inner();
        let status = match req.status.as_str() {
            "" => None,
            s => Some(ExecutionStatus::parse(s).ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "status `{s}` is not one of queued, waking, running, succeeded, failed, cancelled"
                ))
            })?),
        };
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let store = &self.backend.store;
        let services: HashMap<Uuid, Service> = if req.project.is_empty() {
            store.list_services(None).await
        } else {
            let project = ProjectName::parse(&req.project)
                .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
            store.list_services(Some(&project)).await
        }
        .map_err(ApiError::from)?
        .into_iter()
        .map(|s| (s.uuid, s))
        .collect();
        let mut executions = if req.service.is_empty() {
            let all = store
                .list_executions(
                    None,
                    status,
                    if req.project.is_empty() {
                        limit
                    } else {
                        MAX_LIMIT
                    },
                )
                .await;
            let mut all = all.map_err(ApiError::from)?;
            if !req.project.is_empty() {
                all.retain(|e| services.contains_key(&e.service_uuid));
                all.truncate(limit as usize);
            }
            all
        } else {
            let service = self
                .backend
                .find_service(&req.project, &req.service)
                .await?;
            store
                .list_executions(Some(service.uuid), status, limit)
                .await
                .map_err(ApiError::from)?
        };
        if everywhere {
            executions.retain(|e| {
                let resource = services
                    .get(&e.service_uuid)
                    .map_or(Resource::Root, |s| resource_of(&s.project, &s.name));
                self.backend.shows(&permit, &resource)
            });
        }
        Ok(Response::new(pb::ListExecutionsResponse {
            executions: executions
                .iter()
                .map(|e| execution_to_pb(e, services.get(&e.service_uuid), &[]))
                .collect(),
        }))
    }

    async fn cancel_execution(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let id = request.get_ref().id.clone();
        let (e, _) = self.guarded(&request, &id).await?;
        if e.status.is_terminal() {
            return Err(ApiError::FailedPrecondition(format!(
                "execution `{id}` has already {}; only queued, waking or running executions can be cancelled",
                match e.status {
                    ExecutionStatus::Succeeded => "succeeded",
                    ExecutionStatus::Failed => "failed",
                    _ => "been cancelled",
                }
            ))
            .into());
        }
        if !self.backend.hooks.cancel(e.service_uuid, &id).await {
            return Err(ApiError::FailedPrecondition(format!(
                "execution `{id}` is not running in this server's dispatcher; run the cancel against the server that runs the dispatcher role"
            ))
            .into());
        }
        let e = self.execution(&id).await?;
        let service = self.service_of(&e).await?;
        Ok(Response::new(execution_to_pb(&e, service.as_ref(), &[])))
    }

    type WatchExecutionStream = EventStream;

    async fn watch_execution(
        &self,
        request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        // A question asked a moment ago may not be recorded yet.
        let appear_by = tokio::time::Instant::now() + WATCH_APPEAR;
        while self
            .backend
            .store
            .get_execution(&request.get_ref().id)
            .await
            .map_err(ApiError::from)?
            .is_none()
            && tokio::time::Instant::now() < appear_by
        {
            tokio::time::sleep(WATCH_POLL).await;
        }
        self.guarded(&request, &request.get_ref().id).await?;
        let pb::WatchExecutionRequest { id, after_event_id } = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let store = self.backend.store.clone();
        tokio::spawn(async move {
            let mut after = after_event_id;
            let mut quiet_polls = 0u32;
            // Set once the execution has finished: one more read, then the end.
            let mut last_read = false;
            loop {
                let events = match store.events_after(&id, after).await {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let mut done = false;
                for e in &events {
                    after = e.id;
                    done |= is_terminal_kind(&e.kind);
                    if tx.send(Ok(event_to_pb(e))).await.is_err() {
                        return;
                    }
                }
                if done || last_read {
                    return;
                }
                // A watcher that started past the last event (`after_event_id`
                // beyond it) never sees the terminal one: the execution's
                // own status ends the stream, after one more read for events
                // recorded meanwhile.
                quiet_polls = if events.is_empty() {
                    quiet_polls + 1
                } else {
                    0
                };
                if quiet_polls >= WATCH_STATUS_EVERY {
                    quiet_polls = 0;
                    last_read = matches!(
                        store.get_execution(&id).await,
                        Ok(Some(e)) if e.status.is_terminal()
                    );
                    if last_read {
                        continue;
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(WATCH_POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Clone)]
pub struct LogsApi {
    backend: Backend,
}

impl LogsApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }
}

/// The service's instance logs, oldest first.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| {
            let t = std::fs::metadata(&p)
                .and_then(|m| m.created().or_else(|_| m.modified()))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (t, p)
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

#[tonic::async_trait]
impl pb::logs_server::Logs for LogsApi {
    type ReadLogsStream = LogStream;

    async fn read_logs(
        &self,
        request: Request<pb::ReadLogsRequest>,
    ) -> Result<Response<Self::ReadLogsStream>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = self
            .backend
            .find_service(&req.project, &req.service)
            .await?;
        let dir = self.backend.logs_dir.join(service.uuid.to_string());
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut offsets: HashMap<PathBuf, u64> = HashMap::new();
            let mut first = true;
            loop {
                for path in log_files(&dir) {
                    let instance = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let offset = offsets.get(&path).copied().unwrap_or(0);
                    let Ok(bytes) = tokio::fs::read(&path).await else {
                        continue;
                    };
                    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
                    // Only whole lines; a partial last line waits for its end.
                    let end = bytes[start..]
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map_or(start, |p| start + p + 1);
                    let text = String::from_utf8_lossy(&bytes[start..end]);
                    let mut lines: Vec<&str> = text.lines().collect();
                    if first && req.tail > 0 && lines.len() > req.tail as usize {
                        lines.drain(..lines.len() - req.tail as usize);
                    }
                    for line in lines {
                        let msg = pb::LogLine {
                            instance: instance.clone(),
                            line: line.to_owned(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    offsets.insert(path, end as u64);
                }
                first = false;
                if !req.follow {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
