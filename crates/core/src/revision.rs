//! Revisions (what runs) and executions (one question's run).
//!
//! A revision is an immutable description of how to start an instance of a
//! service: an image for the Docker runtime or a command for the process
//! runtime, and how questions reach it. The newest revision serves.
//!
//! An execution (FaaSpot's word) is one question, identified by its
//! `question_uuid` and `retry_count`: its status, timings and events.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use uuid::Uuid;

use crate::protocol::Attributes;

/// How an instance is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevisionSource {
    /// A Docker image in the local engine's image store.
    Image(String),
    /// A command run on the host, in `workdir`.
    Command {
        program: String,
        args: Vec<String>,
        workdir: PathBuf,
    },
}

impl RevisionSource {
    pub fn runtime(&self) -> &'static str {
        match self {
            Self::Image(_) => "docker",
            Self::Command { .. } => "process",
        }
    }
}

/// How a question reaches an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// A long-lived HTTP server on `$PORT`: the question is POSTed as a
    /// Pub/Sub push envelope (Cloud Run era Octue services).
    Server,
    /// One instance per question, the question in its arguments (`octue twined
    /// question ask-local` style); it exits when done.
    Job,
}

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Job => "job",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "server" => Some(Self::Server),
            "job" => Some(Self::Job),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// `<service>-<nnnnn>`; also the SRUID revision tag.
    pub name: String,
    pub service_uuid: Uuid,
    pub seq: u32,
    pub source: RevisionSource,
    pub mode: DeliveryMode,
    /// HTTP readiness probe path; `None`: ready once it answers HTTP.
    pub probe_path: Option<String>,
    /// Its instances speak HTTP/2 without TLS (h2c, prior knowledge):
    /// requests and questions reach them over HTTP/2 (Cloud Run's
    /// `--use-http2`), e.g. gRPC servers.
    pub http2: bool,
    pub created_at: SystemTime,
}

impl Revision {
    pub fn name_for(service: &str, seq: u32) -> String {
        format!("{service}-{seq:05}")
    }
}

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutionStatus {
    /// Recorded and waiting for an instance.
    Queued,
    /// An instance is starting for it.
    Waking,
    /// Delivered to an instance.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl ExecutionStatus {
    pub const ALL: [Self; 6] = [
        Self::Queued,
        Self::Waking,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Waking => "waking",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One question's run.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub question_uuid: String,
    pub retry_count: u32,
    pub service_uuid: Uuid,
    pub status: ExecutionStatus,
    /// The revision that ran (or runs) it.
    pub revision: Option<String>,
    pub instance: Option<String>,
    /// Whether an instance had to be started for it.
    pub cold_start: Option<bool>,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// The question message as received.
    pub attributes: Attributes,
    pub data: Vec<u8>,
    pub received_at: SystemTime,
    pub ready_at: Option<SystemTime>,
    pub delivered_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// The principal that asked (`serviceAccount:…`, `user:…`, or
    /// `service:NS/NAME` for a trusted sender), as the dispatcher identified
    /// it; `None` for an anonymous asker. It may read and follow this
    /// execution without `executions.get`.
    pub asked_by: Option<String>,
    /// The dispatcher that runs it (the holder of its service's lease that
    /// took it); `None` until one has. A write by another dispatcher is
    /// refused, so a dispatcher taken over cannot run or answer it again.
    pub dispatcher: Option<String>,
}

impl Execution {
    /// A question just received for `service_uuid`, queued.
    pub fn received(
        question_uuid: String,
        retry_count: u32,
        service_uuid: Uuid,
        attributes: Attributes,
        data: Vec<u8>,
        now: SystemTime,
    ) -> Self {
        Self {
            question_uuid,
            retry_count,
            service_uuid,
            status: ExecutionStatus::Queued,
            revision: None,
            instance: None,
            cold_start: None,
            reason: None,
            attributes,
            data,
            received_at: now,
            ready_at: None,
            delivered_at: None,
            finished_at: None,
            asked_by: None,
            dispatcher: None,
        }
    }
}

/// One event seen for a question (the event store).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Store-assigned, increasing: followers read "events after id N".
    pub id: i64,
    pub question_uuid: String,
    pub kind: String,
    pub attributes: Attributes,
    pub data: Vec<u8>,
    /// For events the dispatcher itself emits: whether they reached Pub/Sub.
    pub published: bool,
    pub recorded_at: SystemTime,
}
