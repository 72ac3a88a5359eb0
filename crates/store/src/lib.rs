//! Rouse's durable state.
//!
//! The store is a family of small traits, each one concern of the roles that
//! use it (services: [`Store`]; the dispatcher's [`RevisionStore`],
//! [`ExecutionStore`], [`EventStore`]; the builder's [`TriggerStore`],
//! [`BuildStore`], [`RolloutStore`], [`TrialStore`]; [`SecretStore`]; IAM's
//! [`PolicyStore`], [`AccountStore`], [`RoleStore`], [`GroupStore`],
//! [`IamSnapshot`], [`AuditStore`]). A role names the ones it uses, so what
//! it can touch is visible in its signature. [`SqliteStore`] is the embedded
//! adapter (one file, WAL mode, migrations applied at open) and implements
//! them all. The traits speak domain types only, so a PostgreSQL adapter can
//! follow without touching their callers: every method is one transaction,
//! and conflicts are reported as typed errors rather than left to the caller
//! to detect.

mod backup;
mod builds;
pub mod changes;
mod dispatch;
mod export;
mod iam;
mod leases;
mod nodes;
mod postgres;
mod sqlite;

use async_trait::async_trait;
use std::time::SystemTime;

use rouse_core::protocol::Attributes;
use rouse_core::revision::{
    DeliveryMode, EventRecord, Execution, ExecutionStatus, Revision, RevisionSource,
};
use rouse_core::{ProjectName, Service, ServiceName};
use uuid::Uuid;

pub use backup::{Backup, backup_sqlite};
pub use builds::{
    BuildOrigin, BuildRecord, BuildStore, DeliveryClaim, MAX_BUILD_LOG_LINES, RevisionInfo,
    RolloutStore, SecretStore, TrialStore, TriggerRecord, TriggerStore,
};
pub use changes::Changes;
pub use export::{EXPORT_FORMAT, EXPORT_VERSION, Imported, export_sqlite, import_sqlite};
pub use iam::{
    AccountStore, AuditDecision, AuditEntry, AuditFilter, AuditStore, GroupRecord, GroupStore,
    IamData, IamSnapshot, IamStore, ParseDecisionError, PolicyStore, PublicKeyRecord, RoleStore,
    ServiceAccountRecord, StoredPolicy,
};
pub use postgres::{PgStore, redact_url};
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("service `{name}` already exists in project `{project}`")]
    AlreadyExists { project: String, name: String },
    #[error(
        "project `{project}` would have the SRUID namespace `{namespace}`, which project `{existing}` already has; use the existing project or choose a name that differs by more than `_`/`-`"
    )]
    NamespaceTaken {
        project: String,
        namespace: String,
        existing: String,
    },
    #[error("service {uuid} does not exist")]
    NotFound { uuid: Uuid },
    #[error("service {uuid} was changed concurrently (generation {expected} is stale)")]
    Conflict { uuid: Uuid, expected: u64 },
    #[error("{what} `{name}` already exists")]
    Duplicate { what: &'static str, name: String },
    #[error(
        "the policy of `{resource}` changed since it was read (etag `{expected}` is stale); read the policy again, apply your change to it and set it again"
    )]
    EtagMismatch { resource: String, expected: String },
    #[error("the store holds a record it cannot read: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    Open {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store failure: {0}")]
    Backend(#[from] rusqlite::Error),
    #[error(
        "question {question_uuid} (retry {retry_count}) is no longer this dispatcher's: another took it over"
    )]
    Fenced {
        question_uuid: String,
        retry_count: u32,
    },
    #[error("store task failed: {0}")]
    Task(String),
    #[error("PostgreSQL failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no PostgreSQL connection: {0}")]
    Pool(String),
}

/// The state every Rouse role reads and writes.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a new service (and its project, the first time). Fails with
    /// [`StoreError::AlreadyExists`] or [`StoreError::NamespaceTaken`].
    async fn insert_service(&self, service: &Service) -> Result<(), StoreError>;

    async fn get_service(
        &self,
        project: &ProjectName,
        name: &ServiceName,
    ) -> Result<Option<Service>, StoreError>;

    async fn get_service_by_uuid(&self, uuid: Uuid) -> Result<Option<Service>, StoreError>;

    /// Every service, or those of one project, ordered by project then name.
    async fn list_services(
        &self,
        project: Option<&ProjectName>,
    ) -> Result<Vec<Service>, StoreError>;

    /// Replaces the record of `service.uuid` if its stored generation is still
    /// `service.generation`, and stores it with the generation bumped by one.
    /// Returns the stored record.
    async fn update_service(&self, service: &Service) -> Result<Service, StoreError>;

    /// Deletes the record; `false` if there was none.
    async fn delete_service(&self, uuid: Uuid) -> Result<bool, StoreError>;
}

/// An event about to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event's `uuid` attribute: recording the same event twice is a no-op.
    pub event_uuid: String,
    pub question_uuid: String,
    pub retry_count: Option<u32>,
    pub kind: String,
    pub attributes: Attributes,
    pub data: Vec<u8>,
}

/// What a new revision is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRevision {
    pub source: RevisionSource,
    pub mode: DeliveryMode,
    pub probe_path: Option<String>,
    /// Its instances speak h2c (see [`Revision::http2`]).
    pub http2: bool,
}

/// A service's revisions: registered, listed, and the one that serves.
#[async_trait]
pub trait RevisionStore: Send + Sync + 'static {
    /// Adds the service's next revision (it serves from now on) and marks the
    /// service `ready`.
    async fn insert_revision(
        &self,
        service: &Service,
        revision: &NewRevision,
        now: SystemTime,
    ) -> Result<Revision, StoreError>;
    /// The service's revisions, newest first.
    async fn list_revisions(&self, service_uuid: Uuid) -> Result<Vec<Revision>, StoreError>;
    /// The revision untagged questions go to: the one routing names (see
    /// [`RolloutStore`]), else the newest revision that may serve (built
    /// revisions serve only after their rollout passed).
    async fn serving_revision(&self, service_uuid: Uuid) -> Result<Option<Revision>, StoreError>;
}

/// Executions: one per question and retry.
#[async_trait]
pub trait ExecutionStore: Send + Sync + 'static {
    /// Records a new execution; `false` if `(question_uuid, retry_count)` exists.
    async fn insert_execution(&self, execution: &Execution) -> Result<bool, StoreError>;
    /// Updates an execution's status, revision, instance and timings, and
    /// records `event` (unpublished) in the same transaction. Returns the
    /// event's id, or `None` if there was no event or it was already recorded.
    /// Fenced: refused with [`StoreError::Fenced`] unless the stored
    /// execution's `dispatcher` is still `execution.dispatcher`. A write of
    /// `waking` (sent without waiting, as the instance starts) is refused the
    /// same way once the execution went past it, so a late one never puts
    /// a running or finished execution back.
    async fn update_execution(
        &self,
        execution: &Execution,
        event: Option<&NewEvent>,
    ) -> Result<Option<i64>, StoreError>;
    /// The execution of a question (its highest retry).
    async fn get_execution(&self, question_uuid: &str) -> Result<Option<Execution>, StoreError>;
    /// Executions, newest first.
    async fn list_executions(
        &self,
        service_uuid: Option<Uuid>,
        status: Option<ExecutionStatus>,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError>;
    /// Executions not yet finished, oldest first: what a restart resumes.
    async fn unfinished_executions(&self) -> Result<Vec<Execution>, StoreError>;
    /// Makes `dispatcher` the one that runs every unfinished execution of
    /// `services` that another dispatcher (or none) ran, and returns them,
    /// oldest first, as they were (`delivered_at` says whether one was
    /// delivered already). From then on only `dispatcher` may update them.
    async fn claim_executions(
        &self,
        services: &[Uuid],
        dispatcher: &str,
    ) -> Result<Vec<Execution>, StoreError>;
}

/// The event store: what a question's execution said, and the outbox of
/// what has yet to reach Pub/Sub.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Records an event seen on Pub/Sub (or emitted and already published).
    /// `None` if an event with that uuid was recorded before.
    async fn record_event(
        &self,
        event: &NewEvent,
        published: bool,
    ) -> Result<Option<i64>, StoreError>;
    async fn mark_published(&self, event_id: i64) -> Result<(), StoreError>;
    /// Emitted events that have not reached Pub/Sub yet, oldest first.
    async fn unpublished_events(&self) -> Result<Vec<EventRecord>, StoreError>;
    /// The unpublished events of questions to `services`, oldest first: a
    /// dispatcher taking services over publishes what their last holder
    /// recorded and did not get to send (it was killed in between).
    async fn unpublished_events_of(
        &self,
        services: &[Uuid],
    ) -> Result<Vec<EventRecord>, StoreError>;
    /// A question's events with an id above `after`, in order.
    async fn events_after(
        &self,
        question_uuid: &str,
        after: i64,
    ) -> Result<Vec<EventRecord>, StoreError>;
    /// The kind (`result` or `exception`) of the first terminal event recorded
    /// for this question and retry, if any.
    async fn terminal_event(
        &self,
        question_uuid: &str,
        retry_count: u32,
    ) -> Result<Option<String>, StoreError>;
    /// Keeps a message that could not be handled and could not be answered.
    async fn dead_letter(
        &self,
        source: &str,
        reason: &str,
        attributes: &Attributes,
        data: &[u8],
    ) -> Result<(), StoreError>;
}

/// Who holds a lease (see [`LeaseStore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The caller holds it, until the time it asked for.
    Held,
    /// Another holder does, until `until` (unless it renews it).
    Taken { holder: String, until: SystemTime },
}

/// Leases: a named job that one process at a time does (the active
/// dispatcher), held for a while and renewed; a holder that stops renewing
/// loses it when it expires.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes (or renews) lease `name` for `holder` until `now + ttl` if it
    /// is free, expired, or already `holder`'s; otherwise says who holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
        now: SystemTime,
    ) -> Result<Lease, StoreError>;
    /// Takes lease `name` for `holder` if `previous` still holds it (known
    /// dead by other means, say a process gone from this machine), however
    /// long it had left; otherwise says who holds it.
    async fn take_lease_from(
        &self,
        name: &str,
        holder: &str,
        previous: &str,
        ttl: std::time::Duration,
        now: SystemTime,
    ) -> Result<Lease, StoreError>;
    /// Gives the lease up if `holder` holds it, so another may take it at once.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
    /// Renews every lease `holder` holds until `now + ttl`, expired or not
    /// (none was taken by another, or it would not be `holder`'s); returns
    /// their names.
    async fn renew_leases(
        &self,
        holder: &str,
        ttl: std::time::Duration,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError>;
    /// Every lease whose name starts with `prefix`, expired or not, by name.
    async fn leases(&self, prefix: &str) -> Result<Vec<LeaseRecord>, StoreError>;
}

/// A Docker engine instances may run on (seed `003`'s nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    /// How to reach its engine: `unix:///path`, `tcp://host[:port]` or `ssh://[user@]host[:port]`.
    pub docker_host: String,
    /// Most instances placed on it.
    pub capacity: u32,
    /// `key=value` labels a service's node selector matches.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Draining: no new instance is placed on it.
    pub draining: bool,
    pub created_at: SystemTime,
}

/// The nodes instances are placed on, besides the local engine.
#[async_trait]
pub trait NodeStore: Send + Sync + 'static {
    /// Records a node. Fails with [`StoreError::Duplicate`] if the name is taken.
    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    /// Every node, by name.
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Marks a node draining (or not); `false` if there is no such node.
    async fn set_node_draining(&self, name: &str, draining: bool) -> Result<bool, StoreError>;
    /// Forgets a node; `false` if there was none.
    async fn delete_node(&self, name: &str) -> Result<bool, StoreError>;
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub name: String,
    pub holder: String,
    pub until: SystemTime,
}

/// The dispatcher's state: [`RevisionStore`], [`ExecutionStore`] and
/// [`EventStore`] together.
///
/// Executions are keyed by `(question_uuid, retry_count)`: inserting one that
/// exists reports `false`, which is how duplicates and redeliveries are
/// recognised. Events the dispatcher emits are recorded unpublished in the
/// same transaction as the state change they report (an outbox), so a crash
/// between the two cannot lose a result or send it twice.
pub trait DispatchStore: RevisionStore + ExecutionStore + EventStore {}
impl<T: RevisionStore + ExecutionStore + EventStore> DispatchStore for T {}
