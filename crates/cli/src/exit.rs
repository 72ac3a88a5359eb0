//! The one place where errors become what the user sees: a single line on
//! stderr and an exit code (2: the command was called wrongly; 1: anything
//! else failed, on the server, on the way to it, or here). gRPC statuses
//! become a [`CliError`] here too, in [`CliError::from_status`].

use std::error::Error as _;
use std::process::ExitCode;

use tonic::Code;

/// What went wrong, named after what failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command was called wrongly: a flag, an argument, a file or a
    /// configuration value (also the API's INVALID_ARGUMENT). Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The API answered the call with an error. Exit code 1.
    #[error("{message}{}", hint(*.code))]
    Server { code: Code, message: String },
    /// The API could not be reached, or the connection broke mid-call.
    /// Exit code 1.
    #[error(
        "cannot reach the Rouse API at {endpoint} ({detail}); is `rouse server` running? Set --endpoint or ROUSE_ENDPOINT to point elsewhere"
    )]
    Transport { endpoint: String, detail: String },
    /// Something the caller did not cause failed: a build or a question that
    /// ended badly, writing the output, the platform under `rouse server`.
    /// Exit code 1.
    #[error("{0}")]
    Failed(String),
}

/// What to check after an error of this code.
fn hint(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => " (check --credentials / ROUSE_CREDENTIALS)",
        _ => "",
    }
}

impl CliError {
    /// A mistake in how the command was called.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    /// Something failed that the caller did not cause.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// The one conversion of an error answer of the API at `endpoint`:
    /// INVALID_ARGUMENT is a usage error, a broken connection a transport
    /// error, the rest are failures on the server side.
    pub fn from_status(status: tonic::Status, endpoint: &str) -> Self {
        match status.code() {
            Code::InvalidArgument => Self::Usage(status.message().to_owned()),
            // The channel was up when the call started; a transport failure
            // now means the server went away mid-call.
            Code::Unknown | Code::Unavailable if status.source().is_some() => Self::Transport {
                endpoint: endpoint.to_owned(),
                detail: status.message().to_owned(),
            },
            code => Self::Server {
                code,
                message: status.message().to_owned(),
            },
        }
    }

    /// The process's exit code: 2 for usage errors, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Server { .. } | Self::Transport { .. } | Self::Failed(_) => 1,
        }
    }

    /// The same error with `more` said after it.
    pub fn and(mut self, more: &str) -> Self {
        match &mut self {
            Self::Usage(m) | Self::Failed(m) | Self::Server { message: m, .. } => m.push_str(more),
            Self::Transport { detail, .. } => detail.push_str(more),
        }
        self
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(format!("{e:#}"))
    }
}

/// Prints `e` as one line on stderr and returns its exit code.
pub fn report(e: CliError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "http://127.0.0.1:7070";

    #[test]
    fn statuses_map_to_what_failed_and_its_exit_code() {
        let e = CliError::from_status(tonic::Status::invalid_argument("bad `x`"), ENDPOINT);
        assert!(matches!(e, CliError::Usage(_)), "{e:?}");
        assert_eq!((e.exit_code(), e.to_string().as_str()), (2, "bad `x`"));

        let e = CliError::from_status(tonic::Status::not_found("no service `s`"), ENDPOINT);
        assert!(
            matches!(
                e,
                CliError::Server {
                    code: Code::NotFound,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.exit_code(), 1);

        let e = CliError::from_status(tonic::Status::unauthenticated("token expired"), ENDPOINT);
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("ROUSE_CREDENTIALS"), "{e}");

        // A server that answers UNAVAILABLE itself is a server failure; only
        // a broken connection (a status with a source) is a transport one.
        let e = CliError::from_status(tonic::Status::unavailable("draining"), ENDPOINT);
        assert!(matches!(e, CliError::Server { .. }), "{e:?}");
        let broken = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        let e = CliError::from_status(broken, ENDPOINT);
        assert!(matches!(e, CliError::Transport { .. }), "{e:?}");
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string().contains(ENDPOINT) && e.to_string().contains("rouse server"),
            "{e}"
        );
    }

    #[test]
    fn and_keeps_the_kind() {
        let e = CliError::usage("a").and("; b");
        assert_eq!((e.exit_code(), e.to_string().as_str()), (2, "a; b"));
    }
}
