//! [`Instance`]: the handle to one started instance, whatever runs it.
//!
//! The runtime's background task owns the running thing (the child process,
//! or the wait on the container) and publishes its [`ExitInfo`] on a watch
//! channel; handles only read that channel and know how to stop it. Handles
//! are clones of one `Arc`; the background tasks hold none, so dropping the
//! last handle is noticed (see [`Inner`]'s `Drop`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::probe::Prober;
use crate::{ExitInfo, Probe, WAKE_ERROR_LOG_LINES, WakeError, docker, process, tail_lines};

/// A started instance. Cheap to clone; all clones are the same instance.
#[derive(Clone)]
pub struct Instance {
    inner: Arc<Inner>,
}

/// How to reach and stop the thing that runs.
pub(crate) enum Control {
    Process(process::Control),
    Docker(docker::Control),
    Remote(Arc<dyn crate::remote::Remote>),
    #[cfg(feature = "fake")]
    Fake(crate::fake::Control),
}

pub(crate) struct Inner {
    id: String,
    listen: bool,
    addr: Option<SocketAddr>,
    log_path: PathBuf,
    exit: watch::Receiver<Option<ExitInfo>>,
    control: Control,
    /// Set once a stop has completed; the lock makes concurrent stops wait
    /// for the first.
    stopped: Mutex<bool>,
    /// Whether it is frozen (its processes paused); the lock orders freezes,
    /// thaws and the stop.
    frozen: Mutex<bool>,
    /// Where it runs, once placed on a node or another platform.
    node: std::sync::OnceLock<String>,
}

pub(crate) struct Parts {
    pub id: String,
    pub listen: bool,
    pub addr: Option<SocketAddr>,
    pub log_path: PathBuf,
    pub exit: watch::Receiver<Option<ExitInfo>>,
    pub control: Control,
}

/// How often readiness is probed: cold starts are measured in tens of
/// milliseconds, and a refused connect to a local port costs microseconds.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(5);

impl Instance {
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            id,
            listen,
            addr,
            log_path,
            exit,
            control,
        } = parts;
        Self {
            inner: Arc::new(Inner {
                id,
                listen,
                addr,
                log_path,
                exit,
                control,
                stopped: Mutex::new(false),
                frozen: Mutex::new(false),
                node: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The instance id it was started with.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Where it runs: a node's name (`rouse nodes`), `cloudrun`, or
    /// `local` (this machine's engine or processes).
    pub fn node(&self) -> &str {
        self.inner
            .node
            .get()
            .map_or(crate::nodes::LOCAL, String::as_str)
    }

    /// Records where it was placed (once; later calls change nothing).
    pub fn placed_on(&self, node: &str) {
        let _ = self.inner.node.set(node.to_owned());
    }

    /// Host-side address the instance listens on (`127.0.0.1:<port>`);
    /// `None` if it was started with `listen: false` (or, for a container,
    /// if it died before its port could be read).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.inner.addr
    }

    /// The base URL a request goes to: `http://<addr>/` for an instance
    /// here, the service's own URL for a remote one; `None` for a job.
    pub fn url(&self) -> Option<String> {
        match &self.inner.control {
            Control::Remote(remote) => remote.url(),
            _ => self.inner.addr.map(|a| format!("http://{a}/")),
        }
    }

    /// The bearer token a request must carry, if its target checks one (a
    /// remote service's ID token); `Err` says why none could be had.
    pub async fn bearer(&self) -> Result<Option<String>, String> {
        match &self.inner.control {
            Control::Remote(remote) => remote.bearer().await,
            _ => Ok(None),
        }
    }

    /// The log file its output is appended to.
    pub fn log_path(&self) -> &std::path::Path {
        &self.inner.log_path
    }

    /// `Some` once the instance has exited (within a second of the exit;
    /// normally within milliseconds).
    pub fn exit(&self) -> Option<ExitInfo> {
        self.inner.exit.borrow().clone()
    }

    /// Completes when the instance has exited. Cancel-safe; any number of
    /// tasks may wait.
    pub async fn exited(&self) -> ExitInfo {
        let mut exit = self.inner.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(info) => info.clone().unwrap_or_else(lost),
            // The background task is gone without saying how it ended: it
            // panicked, or the tokio runtime is shutting down.
            Err(_) => lost(),
        }
    }

    /// Waits until the instance passes `probe` (accepts connections on its
    /// port, answers HTTP, or answers the HTTP probe below 500), polling
    /// every 5 ms.
    /// Fails at once if the instance exits first, or after `timeout`; both
    /// errors carry the last log lines. Returns how long it waited.
    pub async fn wait_ready(
        &self,
        probe: &Probe,
        timeout: Duration,
    ) -> Result<Duration, WakeError> {
        #[cfg(feature = "fake")]
        if let Control::Fake(fake) = &self.inner.control {
            if !self.inner.listen {
                return Err(WakeError::NoPort {
                    instance_id: self.inner.id.clone(),
                });
            }
            return fake.wait_ready(self, timeout).await;
        }
        let started = Instant::now();
        let deadline = started + timeout;
        if let Control::Remote(_) = &self.inner.control {
            // A remote service is started once it serves: only an exit
            // since then stops it from being ready.
            return match (self.inner.listen, self.exit()) {
                (false, _) => Err(WakeError::NoPort {
                    instance_id: self.inner.id.clone(),
                }),
                (true, Some(exit)) => Err(self.exited_error(exit)),
                (true, None) => Ok(started.elapsed()),
            };
        }
        let Some(addr) = self.inner.addr else {
            if self.inner.listen {
                // A container that died before its port was known: its exit
                // is on the way.
                return match tokio::time::timeout_at(deadline, self.exited()).await {
                    Ok(exit) => Err(self.exited_error(exit)),
                    Err(_) => Err(self.timeout_error(timeout)),
                };
            }
            return Err(WakeError::NoPort {
                instance_id: self.inner.id.clone(),
            });
        };
        let mut prober = Prober::new(probe, addr);
        let probing = async {
            loop {
                if prober.is_ready(deadline).await {
                    return;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        };
        tokio::select! {
            biased;
            exit = self.exited() => Err(self.exited_error(exit)),
            () = probing => Ok(started.elapsed()),
            () = tokio::time::sleep_until(deadline) => Err(self.timeout_error(timeout)),
        }
    }

    /// Stops the instance: SIGTERM to its process group (process) or
    /// `docker stop` (docker), a kill after `grace`, then removal of the
    /// container. Idempotent; returns once it has exited (or it could not be
    /// helped: errors are logged, there is nothing else to do with them).
    pub async fn stop(&self, grace: Duration) {
        let mut stopped = self.inner.stopped.lock().await;
        if *stopped {
            return;
        }
        // A frozen instance is thawed first, so that it can hear the stop.
        {
            let mut frozen = self.inner.frozen.lock().await;
            if *frozen {
                if let Err(why) = self.set_paused(false).await {
                    tracing::debug!(instance = self.id(), %why, "cannot thaw an instance before stopping it");
                }
                *frozen = false;
            }
        }
        match &self.inner.control {
            Control::Process(control) => control.stop(self, grace).await,
            Control::Docker(control) => control.stop(self, grace).await,
            Control::Remote(remote) => remote.stop().await,
            #[cfg(feature = "fake")]
            Control::Fake(control) => control.stop().await,
        }
        *stopped = true;
    }

    /// Whether [`Instance::freeze`] can work: instances on this machine's
    /// processes and on Docker engines (not another platform's).
    pub fn can_freeze(&self) -> bool {
        !matches!(self.inner.control, Control::Remote(_))
    }

    /// Freezes the instance: SIGSTOP to its process group (process), or
    /// the container's cgroup freezer (written directly when the container
    /// is on this machine, else `docker pause`). It keeps its memory and its
    /// port and uses no CPU until [`Instance::thaw`]. Idempotent.
    pub async fn freeze(&self) -> Result<(), String> {
        let mut frozen = self.inner.frozen.lock().await;
        if *frozen || self.exit().is_some() {
            return Ok(());
        }
        self.set_paused(true).await?;
        *frozen = true;
        Ok(())
    }

    /// Thaws a frozen instance (SIGCONT, the cgroup freezer or `docker
    /// unpause`). Idempotent.
    pub async fn thaw(&self) -> Result<(), String> {
        let mut frozen = self.inner.frozen.lock().await;
        if !*frozen {
            return Ok(());
        }
        self.set_paused(false).await?;
        *frozen = false;
        Ok(())
    }

    async fn set_paused(&self, paused: bool) -> Result<(), String> {
        match &self.inner.control {
            Control::Process(control) => control.set_paused(paused),
            Control::Docker(control) => control.set_paused(paused).await,
            Control::Remote(_) => Err("an instance on another platform cannot be frozen".into()),
            #[cfg(feature = "fake")]
            Control::Fake(_) => Ok(()),
        }
    }

    pub(crate) fn exited_error(&self, exit: ExitInfo) -> WakeError {
        WakeError::Exited {
            exit,
            last_logs: tail_lines(&self.inner.log_path, WAKE_ERROR_LOG_LINES),
        }
    }

    pub(crate) fn timeout_error(&self, after: Duration) -> WakeError {
        WakeError::Timeout {
            after,
            last_logs: tail_lines(&self.inner.log_path, WAKE_ERROR_LOG_LINES),
        }
    }
}

fn lost() -> ExitInfo {
    ExitInfo {
        code: None,
        description: "the runtime lost track of the instance".to_owned(),
    }
}

impl Drop for Inner {
    /// The last handle is gone: nobody can stop the instance any more, so
    /// it is killed (and its container removed) now.
    fn drop(&mut self) {
        if *self.stopped.get_mut() {
            return;
        }
        let exited = self.exit.borrow().is_some();
        match &self.control {
            Control::Process(control) => control.abandon(&self.id, exited),
            Control::Docker(control) => control.abandon(&self.id),
            Control::Remote(remote) => remote.clone().abandon(),
            #[cfg(feature = "fake")]
            Control::Fake(control) => control.abandon(),
        }
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.addr)
            .field("exit", &*self.inner.exit.borrow())
            .finish_non_exhaustive()
    }
}
