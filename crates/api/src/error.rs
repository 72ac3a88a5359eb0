//! Errors of the control plane, named after what failed, and the one place
//! they become gRPC statuses ([`ApiError::code`]).
//!
//! Caller mistakes (bad names, unknown services) are answered as they are,
//! with the fix, and not logged as errors. A store's failure is answered as
//! what it means to the caller (a service that already exists, a policy
//! changed since it was read), in words written here: no store text reaches
//! a client. Internal failures are logged once, with the detail, and
//! answered with a safe message.

use rouse_pubsub::PubSubError;
use rouse_store::StoreError;
use tonic::{Code, Status};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "service `{name}` does not exist in project `{project}`; `rouse services list --project {project}` shows those that do"
    )]
    ServiceNotFound { project: String, name: String },
    #[error("service {uuid} no longer exists; it was deleted while this call ran")]
    ServiceGone { uuid: Uuid },
    #[error(
        "service `{name}` already exists in project `{project}`; change it with `rouse services update {name} --project {project}`"
    )]
    ServiceExists { project: String, name: String },
    #[error(
        "project `{project}` would have the SRUID namespace `{namespace}`, which project `{existing}` already has; use the existing project or choose a name that differs by more than `_`/`-`"
    )]
    NamespaceTaken {
        project: String,
        namespace: String,
        existing: String,
    },
    #[error("service {uuid} was changed by another call at the same time; read it again and retry")]
    ServiceChanged { uuid: Uuid },
    #[error("execution `{id}` does not exist; `rouse executions list` shows recent ones")]
    ExecutionNotFound { id: String },
    /// A build or a trigger (`kind`) looked up by id.
    #[error("{kind} `{id}` does not exist; `rouse {kind}s list --project P` shows those that do")]
    RecordNotFound { kind: &'static str, id: String },
    #[error("node `{name}` does not exist; `rouse nodes list` shows those that do")]
    NodeNotFound { name: String },
    #[error(
        "revision `{revision}` is not a revision of `{service}`; `rouse revisions list {service} --project {project}` shows them"
    )]
    RevisionNotFound {
        project: String,
        service: String,
        revision: String,
    },
    #[error(
        "service `{service}` has no tag `{tag}`; tag a revision first with `rouse services deploy {service} --project {project} --revision REV --tag {tag}`"
    )]
    TagNotFound {
        project: String,
        service: String,
        tag: String,
    },
    #[error(
        "service `{service}` has no secret `{secret}`; `rouse secrets list {service} --project {project}` shows its secrets"
    )]
    SecretNotFound {
        project: String,
        service: String,
        secret: String,
    },
    #[error(
        "service account `{email}` does not exist; `rouse iam service-accounts list` shows those that do"
    )]
    ServiceAccountNotFound { email: String },
    #[error(
        "service account `{email}` has no key `{key_id}`; `rouse iam service-accounts keys list --iam-account={email}` shows its keys"
    )]
    KeyNotFound { email: String, key_id: String },
    #[error(
        "role `{name}` does not exist; `rouse iam roles list --project {project}` shows the project's custom roles"
    )]
    RoleNotFound { name: String, project: String },
    #[error("role `{name}` already exists; change it with `rouse iam roles update {name}`")]
    RoleExists { name: String },
    #[error(
        "group `{name}` does not exist; `rouse iam groups list` shows those that do, `rouse iam groups create {name}` makes it"
    )]
    GroupNotFound { name: String },
    #[error("`{member}` is already a member of group `{group}`")]
    AlreadyAMember { group: String, member: String },
    #[error("`{member}` is not a member of group `{group}`; its members are: {members}")]
    NotAMember {
        group: String,
        member: String,
        members: String,
    },
    /// Something else with a unique name (`what` `name`).
    #[error("{what} `{name}` already exists")]
    Exists { what: &'static str, name: String },
    #[error(
        "the policy of `{resource}` was changed by another call since it was read; read it again with get-iam-policy, reapply the change and set it again"
    )]
    PolicyChanged { resource: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// A bug or a broken record: logged, never shown.
    #[error("{0}")]
    Internal(String),
    /// The store failed (I/O, a corrupt row): logged, never shown.
    #[error("{0}")]
    Store(StoreError),
}

impl ApiError {
    /// The gRPC code of each error: the one mapping.
    pub fn code(&self) -> Code {
        match self {
            Self::ServiceNotFound { .. }
            | Self::ServiceGone { .. }
            | Self::ExecutionNotFound { .. }
            | Self::RecordNotFound { .. }
            | Self::NodeNotFound { .. }
            | Self::RevisionNotFound { .. }
            | Self::TagNotFound { .. }
            | Self::SecretNotFound { .. }
            | Self::ServiceAccountNotFound { .. }
            | Self::KeyNotFound { .. }
            | Self::RoleNotFound { .. }
            | Self::GroupNotFound { .. }
            | Self::NotAMember { .. } => Code::NotFound,
            Self::ServiceExists { .. }
            | Self::RoleExists { .. }
            | Self::AlreadyAMember { .. }
            | Self::Exists { .. } => Code::AlreadyExists,
            Self::NamespaceTaken { .. } | Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ServiceChanged { .. } | Self::PolicyChanged { .. } | Self::Aborted(_) => {
                Code::Aborted
            }
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Unavailable(_) => Code::Unavailable,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Internal(_) | Self::Store(_) => Code::Internal,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists { project, name } => Self::ServiceExists { project, name },
            StoreError::NamespaceTaken {
                project,
                namespace,
                existing,
            } => Self::NamespaceTaken {
                project,
                namespace,
                existing,
            },
            StoreError::NotFound { uuid } => Self::ServiceGone { uuid },
            StoreError::Conflict { uuid, .. } => Self::ServiceChanged { uuid },
            StoreError::Duplicate { what, name } => Self::Exists { what, name },
            StoreError::EtagMismatch { resource, .. } => Self::PolicyChanged { resource },
            other @ (StoreError::Corrupt(_)
            | StoreError::Open { .. }
            | StoreError::Backend(_)
            | StoreError::Postgres(_)
            | StoreError::Fenced { .. }
            | StoreError::Task(_)) => Self::Store(other),
            // The database cannot be reached: the caller may try again.
            StoreError::Pool(reason) => Self::Unavailable(format!("the store: {reason}")),
        }
    }
}

impl From<PubSubError> for ApiError {
    fn from(e: PubSubError) -> Self {
        if e.is_unavailable() {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = e.code();
        match code {
            Code::Internal => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error; the server log has the details")
            }
            Code::Unavailable => {
                tracing::warn!(error = %e, "backend unavailable");
                Status::unavailable(e.to_string())
            }
            _ => Status::new(code, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_reach_the_client_as_a_safe_message() {
        for failure in [
            StoreError::Corrupt("row 7 of /var/lib/rouse/rouse.db".into()),
            StoreError::Task("panicked at /work/src/sqlite.rs".into()),
        ] {
            let status = Status::from(ApiError::from(failure));
            assert_eq!(status.code(), Code::Internal);
            assert!(
                !status.message().contains('/'),
                "store text leaked: {}",
                status.message()
            );
        }
    }

    #[test]
    fn store_outcomes_become_errors_named_after_what_failed() {
        let exists = ApiError::from(StoreError::AlreadyExists {
            project: "p".into(),
            name: "s".into(),
        });
        assert!(matches!(exists, ApiError::ServiceExists { .. }));
        assert_eq!(exists.code(), Code::AlreadyExists);
        let stale = ApiError::from(StoreError::EtagMismatch {
            resource: "projects/p".into(),
            expected: "abc".into(),
        });
        assert_eq!(stale.code(), Code::Aborted);
        assert!(stale.to_string().contains("get-iam-policy"), "{stale}");
        let missing = Status::from(ApiError::ServiceNotFound {
            project: "p".into(),
            name: "s".into(),
        });
        assert_eq!(missing.code(), Code::NotFound);
        assert!(
            missing
                .message()
                .contains("rouse services list --project p"),
            "{}",
            missing.message()
        );
    }
}
