//! Rouse's durable state.
//!
//! [`Store`] is the trait every role uses; [`SqliteStore`] is the embedded
//! adapter (one file, WAL mode, migrations applied at open). The trait speaks
//! domain types only, so a PostgreSQL adapter can follow without touching its
//! callers: every method is one transaction, and conflicts are reported as typed
//! errors rather than left to the caller to detect.

mod sqlite;

use async_trait::async_trait;
use rouse_core::{ProjectName, Service, ServiceName};
use uuid::Uuid;

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
    #[error("the store holds a record it cannot read: {0}")]
    Corrupt(String),
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store failure: {0}")]
    Backend(#[from] rusqlite::Error),
    #[error("store task failed: {0}")]
    Task(String),
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
