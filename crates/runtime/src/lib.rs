//! Runtimes start service instances; the dispatcher wakes services through them.
//!
//! One small trait, [`Runtime`], with two adapters:
//!
//! - [`DockerRuntime`]: a container from an image in the local Docker engine
//!   (never pulled), in the host's network with `PORT` set to a free host
//!   port (so it reaches a loopback-only emulator), labelled so a restarted
//!   platform can find and remove what it left behind.
//! - [`ProcessRuntime`]: a host command in its own process group, for
//!   machines without an engine and for local development.
//!
//! Lifecycle of an [`Instance`]: [`Runtime::start`] returns once it runs;
//! [`Instance::wait_ready`] polls its port (or an HTTP path) until it
//! answers, failing at once, with the last log lines, if it exits first;
//! [`Instance::exited`] completes when it exits, however that happens;
//! [`Instance::stop`] asks it to stop, kills it after a grace period and
//! removes what is left. Its stdout and stderr are appended, line by line,
//! to the instance's log file (see [`tail_lines`]).
//!
//! Dropping the last handle of an instance that was not stopped kills it:
//! an instance nobody can stop must not outlive its owner.
//!
//! An adapter for a platform that runs instances elsewhere (Cloud Run)
//! makes them with [`Instance::remote`] and a [`Remote`]: reached at a URL
//! with a bearer token instead of an address here.
//!
//! With the feature `fake`, [`Instance::fake`] makes an instance nothing
//! runs behind, for unit tests of code that drives a runtime (a test's own
//! [`Runtime`] returns them).

mod docker;
#[cfg(feature = "fake")]
mod fake;
pub mod holder;
mod instance;
mod logs;
pub mod nodes;
mod probe;
mod process;
mod remote;
pub mod ssh;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use docker::{
    CONTAINER_PORT, DockerRuntime, INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NODE_PORTS,
    OWNER_LABEL, PORT_LABEL,
};
#[cfg(feature = "fake")]
pub use fake::{FAKE_STOP, Fake};
pub use instance::Instance;
pub use logs::tail_lines;
pub use process::ProcessRuntime;
pub use remote::Remote;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Docker image reference (local engine image store).
    Image(String),
    /// A host command: program + args, run in `workdir`.
    ///
    /// A bare program name is looked up on `PATH`; a relative path with a
    /// `/` in it is taken relative to `workdir`.
    Command {
        program: String,
        args: Vec<String>,
        workdir: PathBuf,
    },
}

/// How [`Instance::wait_ready`] decides that an instance is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It accepts TCP connections on its port.
    Tcp,
    /// It answers HTTP: `GET /` gets a status line, whatever the status.
    /// The default for revisions that listen (every listening instance is
    /// sent HTTP): a port that is open before the server loop runs does
    /// not count, so no request meets a half-started server.
    Serving,
    /// It answers HTTP/2 without TLS (h2c): the client preface gets the
    /// server's SETTINGS frame back. The default for revisions whose
    /// instances speak h2c.
    ServingHttp2,
    /// `GET <path>` (e.g. `"/healthz"`) gets an HTTP response with a status
    /// below 500: anything the server itself answers, even 404, shows it is
    /// serving; 5xx means it is up but says it is not ready.
    Http(String),
}

/// Everything a runtime needs to start one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Unique; 1 to 63 characters out of `[a-z0-9-]`, so that it is safe in
    /// container names.
    pub instance_id: String,
    pub source: Source,
    /// Environment for the instance; the runtime adds `PORT` itself.
    pub env: BTreeMap<String, String>,
    /// Appended to the command (process), or the container's `Cmd`, i.e.
    /// the arguments after the image's `ENTRYPOINT` (docker).
    pub extra_args: Vec<String>,
    /// stdout and stderr are appended here line by line; parent directories
    /// are created.
    pub log_path: PathBuf,
    /// `false` for job-mode instances that need no port: no `PORT` is
    /// allocated or published.
    pub listen: bool,
    /// Labels a node must carry to take the instance (the service's node
    /// selector; see `nodes::Placement`); empty: any engine.
    pub node_selector: BTreeMap<String, String>,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code; `None` if it was killed by a signal (process) or
    /// vanished without one (container removed).
    pub code: Option<i64>,
    /// For people: "exited with code 3", "killed by signal 9 (SIGKILL)",
    /// "container removed".
    pub description: String,
}

/// Starts instances of one kind.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `"docker"` or `"process"`.
    fn kind(&self) -> &'static str;

    /// Starts the instance and returns once it has been started (not
    /// necessarily ready: see [`Instance::wait_ready`]).
    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError>;
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no Docker engine can take the instance: {why}")]
    NoNode { why: String },

    #[error("instance id `{id}` is not usable: {reason}")]
    InvalidInstanceId { id: String, reason: &'static str },

    #[error("{platform} could not {action} `{target}`: {reason}")]
    Platform {
        platform: &'static str,
        action: &'static str,
        target: String,
        reason: String,
    },

    #[error("the {runtime} runtime cannot run {what}")]
    Unsupported { runtime: &'static str, what: String },

    #[error(
        "working directory `{}` of `{program}` does not exist or is not a directory",
        workdir.display()
    )]
    WorkdirMissing { program: String, workdir: PathBuf },

    #[error(
        "command `{program}` not found (working directory `{}`); give its path or put it on PATH",
        workdir.display()
    )]
    CommandNotFound { program: String, workdir: PathBuf },

    #[error("cannot start `{program}` in `{}`: {source}", workdir.display())]
    Spawn {
        program: String,
        workdir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot open log file `{}`: {source}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot find a free port on 127.0.0.1: {0}")]
    Port(#[source] std::io::Error),

    #[error(
        "cannot reach the Docker engine at `{socket}`: {reason}; is it running, and may this user reach it?"
    )]
    EngineUnreachable { socket: String, reason: String },

    #[error(
        "image `{image}` is not in the local Docker engine, and Rouse never pulls images: build or load it locally first (e.g. `docker build -t {image} .`)"
    )]
    ImageNotFound { image: String },

    #[error(
        "container `{container}` already exists, probably left over from an earlier run; remove it (`docker rm -f {container}`) or start with DockerRuntime::remove_stale"
    )]
    ContainerExists { container: String },

    #[error("docker {action} of `{target}` failed: {source}")]
    Docker {
        action: &'static str,
        target: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// Why an instance did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error(
        "instance exited before it was ready ({}); last log lines:\n{}",
        exit.description,
        or_no_output(last_logs)
    )]
    Exited { exit: ExitInfo, last_logs: String },

    #[error(
        "instance was not ready after {after:?}; last log lines:\n{}",
        or_no_output(last_logs)
    )]
    Timeout { after: Duration, last_logs: String },

    #[error("instance `{instance_id}` was started with `listen: false`: it has no port to probe")]
    NoPort { instance_id: String },
}

fn or_no_output(logs: &str) -> &str {
    if logs.is_empty() { "(no output)" } else { logs }
}

/// How many log lines [`WakeError`]s carry: enough to show a stack trace's
/// end or a start-up error, short enough for one error message.
pub const WAKE_ERROR_LOG_LINES: usize = 20;

/// Checks the rule on [`InstanceSpec::instance_id`].
pub fn validate_instance_id(id: &str) -> Result<(), RuntimeError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > 63 {
        "it is longer than 63 characters"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "only a-z, 0-9 and - are allowed"
    } else {
        return Ok(());
    };
    Err(RuntimeError::InvalidInstanceId {
        id: id.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_follow_the_container_name_rule() {
        assert!(validate_instance_id("echo-1a2b").is_ok());
        assert!(validate_instance_id(&"a".repeat(63)).is_ok());
        for bad in ["", "Echo", "a_b", "a.b", "a b"] {
            assert!(validate_instance_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_instance_id(&"a".repeat(64)).is_err());
    }

    #[test]
    fn handles_are_shareable_and_runtimes_are_objects() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<Instance>();
        let runtimes: Vec<Box<dyn Runtime>> = vec![Box::new(ProcessRuntime::new())];
        assert_eq!(runtimes[0].kind(), "process");
    }

    #[test]
    fn wake_errors_say_when_there_was_no_output() {
        let err = WakeError::Timeout {
            after: Duration::from_millis(250),
            last_logs: String::new(),
        };
        assert_eq!(
            err.to_string(),
            "instance was not ready after 250ms; last log lines:\n(no output)"
        );
    }
}
