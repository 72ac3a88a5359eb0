//! What a broker call can fail with, and the one mapping to gRPC codes (and,
//! through them, to the REST surface's HTTP statuses).

use tonic::Code;

/// A refused or failed call. Messages name the value at fault and, where
/// there is one, the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// Google answers `Resource not found (resource=NAME).`; so does this.
    #[error("Resource not found (resource={name}): no {kind} `{full}` exists")]
    NotFound {
        kind: &'static str,
        name: String,
        full: String,
    },
    #[error("Resource already exists in the project (resource={name}): {kind} `{full}` exists")]
    AlreadyExists {
        kind: &'static str,
        name: String,
        full: String,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    /// The broker's own store failed; the log has the cause.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BrokerError {
    pub fn not_found(kind: &'static str, full: &str) -> Self {
        Self::NotFound {
            kind,
            name: last_segment(full).to_owned(),
            full: full.to_owned(),
        }
    }

    pub fn exists(kind: &'static str, full: &str) -> Self {
        Self::AlreadyExists {
            kind,
            name: last_segment(full).to_owned(),
            full: full.to_owned(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<BrokerError> for tonic::Status {
    fn from(err: BrokerError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}
