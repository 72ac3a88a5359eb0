//! The one place where errors become what the user sees: a single line on
//! stderr and an exit code (1: failure on the server side or reaching it,
//! 2: usage error).

use std::process::ExitCode;

use std::error::Error as _;

use tonic::Code;

#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// A mistake in how the command was called: exit code 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// Something failed that the caller did not cause: exit code 1.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }

    /// An error answer from the API. INVALID_ARGUMENT is a usage error; the
    /// rest are failures on the server side.
    pub fn from_status(status: &tonic::Status, endpoint: &str) -> Self {
        match status.code() {
            Code::InvalidArgument => Self::usage(status.message()),
            // The channel was up when the call started; a transport failure
            // now means the server went away mid-call.
            Code::Unknown | Code::Unavailable if status.source().is_some() => {
                Self::unreachable(endpoint, &status.message())
            }
            Code::Unauthenticated => Self::internal(format!(
                "{} (check --credentials / ROUSE_CREDENTIALS)",
                status.message()
            )),
            _ => Self::internal(status.message()),
        }
    }

    pub fn unreachable(endpoint: &str, detail: &dyn std::fmt::Display) -> Self {
        Self::internal(format!(
            "cannot reach the Rouse API at {endpoint} ({detail}); is `rouse server` running? Set --endpoint or ROUSE_ENDPOINT to point elsewhere"
        ))
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(format!("{e:#}"))
    }
}

pub fn report(e: CliError) -> ExitCode {
    eprintln!("error: {}", e.message);
    ExitCode::from(e.code)
}
