//! Errors of the control plane and the one place they become gRPC statuses.
//!
//! Caller mistakes (bad names, unknown services) are answered as they are and
//! not logged as errors; internal failures are logged once, with the detail,
//! and answered with a safe message.

use rouse_pubsub::PubSubError;
use rouse_store::StoreError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
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
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists { .. } | StoreError::Duplicate { .. } => {
                Self::AlreadyExists(e.to_string())
            }
            StoreError::EtagMismatch { .. } => Self::Aborted(e.to_string()),
            StoreError::NamespaceTaken { .. } => Self::FailedPrecondition(e.to_string()),
            StoreError::NotFound { .. } => Self::NotFound(e.to_string()),
            StoreError::Conflict { .. } => {
                Self::Aborted(format!("{e}; read the service again and retry"))
            }
            StoreError::Corrupt(_)
            | StoreError::Open { .. }
            | StoreError::Backend(_)
            | StoreError::Task(_) => Self::Internal(e.to_string()),
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
        match e {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Aborted(m) => Status::aborted(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::Unavailable(m) => {
                tracing::warn!(error = %m, "backend unavailable");
                Status::unavailable(m)
            }
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error; the server log has the details")
            }
        }
    }
}
