//! [`ProcessRuntime`]: instances as host processes.
//!
//! Each instance is a child process leading its own process group, so that
//! stopping it reaches whatever it started (a shell wrapper's real server,
//! worker processes). When the leader exits, whatever it left in its group is
//! killed: an instance is over when its main process is. No isolation: this
//! runtime is for machines without a container engine and for development.
//!
//! The child inherits the platform's environment, then gets the spec's
//! variables and `PORT` (a port found free on 127.0.0.1 just before the
//! start; the child binds it itself).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::sync::watch;

use crate::instance::{self, Instance, Parts};
use crate::logs::{self, LogWriter};
use crate::{ExitInfo, InstanceSpec, Runtime, RuntimeError, Source, validate_instance_id};

/// How long the exit waits for the output of a finished process to reach
/// its log, so that errors quoting the log show its last words. Bounded
/// because a grandchild outside the group could keep the pipes open.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_millis(250);
/// How long to wait for the exit after SIGKILL: the kernel delivers it at
/// once, unless the process is stuck in uninterruptible I/O.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Runs instances as host processes. Runs [`Source::Command`] only.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessRuntime;

impl ProcessRuntime {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        let InstanceSpec {
            instance_id,
            source,
            env,
            extra_args,
            log_path,
            listen,
        } = spec;
        validate_instance_id(&instance_id)?;
        let (program, args, workdir) = match source {
            Source::Command {
                program,
                args,
                workdir,
            } => (program, args, workdir),
            Source::Image(image) => {
                return Err(RuntimeError::Unsupported {
                    runtime: "process",
                    what: format!("image `{image}`: it runs host commands; use the docker runtime"),
                });
            }
        };
        if !workdir.is_dir() {
            return Err(RuntimeError::WorkdirMissing { program, workdir });
        }
        let stdout_log = LogWriter::new(logs::open_append(&log_path).await?);
        let stderr_log = LogWriter::new(logs::open_append(&log_path).await?);
        let port = if listen { Some(free_port()?) } else { None };

        let mut command = tokio::process::Command::new(resolve(&program, &workdir));
        command
            .args(&args)
            .args(&extra_args)
            .current_dir(&workdir)
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // The safety net if everything else fails: the child dies with
            // the task that owns it (e.g. when the tokio runtime shuts down).
            .kill_on_drop(true);
        match port {
            Some(port) => {
                command.env("PORT", port.to_string());
            }
            // Not the platform's own PORT, if it has one.
            None if !env.contains_key("PORT") => {
                command.env_remove("PORT");
            }
            None => {}
        }
        let mut child = command.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                RuntimeError::CommandNotFound {
                    program: program.clone(),
                    workdir: workdir.clone(),
                }
            } else {
                RuntimeError::Spawn {
                    program: program.clone(),
                    workdir: workdir.clone(),
                    source,
                }
            }
        })?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| RuntimeError::Spawn {
                program: program.clone(),
                workdir: workdir.clone(),
                source: std::io::Error::other("the child has no process id"),
            })?;
        tracing::debug!(instance = %instance_id, %program, pid = pgid.as_raw_pid(), ?port, "process started");

        let mut copiers = Vec::with_capacity(2);
        if let Some(stdout) = child.stdout.take() {
            copiers.push(tokio::spawn(logs::copy_lines(stdout, stdout_log)));
        }
        if let Some(stderr) = child.stderr.take() {
            copiers.push(tokio::spawn(logs::copy_lines(stderr, stderr_log)));
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        let id = instance_id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Leftovers of the instance die with it (see the module docs).
            // The leader was just reaped, so the group id cannot have been
            // reused yet.
            let _ = kill_process_group(pgid, Signal::KILL);
            let _ =
                tokio::time::timeout(LOG_DRAIN_TIMEOUT, futures::future::join_all(copiers)).await;
            let exit = match status {
                Ok(status) => exit_info(status),
                Err(err) => ExitInfo {
                    code: None,
                    description: format!("cannot wait for the process: {err}"),
                },
            };
            tracing::debug!(instance = %id, exit = %exit.description, "process exited");
            exit_tx.send_replace(Some(exit));
        });

        Ok(Instance::new(Parts {
            id: instance_id,
            listen,
            addr: port.map(|port| ([127, 0, 0, 1], port).into()),
            proxied: false,
            direct_addr: None,
            log_path,
            exit: exit_rx,
            control: instance::Control::Process(Control { pgid }),
        }))
    }
}

/// A relative path with a `/` is relative to the working directory (std
/// leaves that platform-dependent); bare names are looked up on `PATH`.
fn resolve(program: &str, workdir: &Path) -> PathBuf {
    let path = Path::new(program);
    if path.is_relative() && program.contains('/') {
        workdir.join(path)
    } else {
        path.to_owned()
    }
}

/// A port that was free a moment ago. Another process could take it before
/// the instance binds it; the instance then fails to start, visibly.
fn free_port() -> Result<u16, RuntimeError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(RuntimeError::Port)
}

fn exit_info(status: ExitStatus) -> ExitInfo {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitInfo {
            code: Some(i64::from(code)),
            description: format!("exited with code {code}"),
        },
        (None, Some(signal)) => ExitInfo {
            code: None,
            description: match signal_name(signal) {
                Some(name) => format!("killed by signal {signal} ({name})"),
                None => format!("killed by signal {signal}"),
            },
        },
        (None, None) => ExitInfo {
            code: None,
            description: format!("ended: {status}"),
        },
    }
}

pub(crate) fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// How a process instance is stopped.
pub(crate) struct Control {
    pgid: Pid,
}

impl Control {
    pub(crate) async fn stop(&self, instance: &Instance, grace: Duration) {
        if instance.exit().is_some() {
            return;
        }
        // ESRCH means it is already gone; the exit is on its way.
        let _ = kill_process_group(self.pgid, Signal::TERM);
        if tokio::time::timeout(grace, instance.exited()).await.is_ok() {
            return;
        }
        tracing::debug!(
            instance = instance.id(),
            ?grace,
            "process ignored SIGTERM; killing it"
        );
        let _ = kill_process_group(self.pgid, Signal::KILL);
        if tokio::time::timeout(KILL_WAIT, instance.exited())
            .await
            .is_err()
        {
            tracing::warn!(
                instance = instance.id(),
                pgid = self.pgid.as_raw_pid(),
                "process did not exit after SIGKILL"
            );
        }
    }

    /// The last handle was dropped without a stop.
    pub(crate) fn abandon(&self, id: &str, exited: bool) {
        if !exited {
            tracing::debug!(
                instance = id,
                "instance handle dropped; killing its process group"
            );
            let _ = kill_process_group(self.pgid, Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_described() {
        let exited = exit_info(ExitStatus::from_raw(3 << 8));
        assert_eq!(exited.code, Some(3));
        assert_eq!(exited.description, "exited with code 3");
        let killed = exit_info(ExitStatus::from_raw(9));
        assert_eq!(killed.code, None);
        assert_eq!(killed.description, "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn relative_programs_are_found_in_the_working_directory() {
        let workdir = Path::new("/srv/app");
        assert_eq!(resolve("./run.sh", workdir), Path::new("/srv/app/./run.sh"));
        assert_eq!(resolve("bin/app", workdir), Path::new("/srv/app/bin/app"));
        assert_eq!(resolve("python3", workdir), Path::new("python3"));
        assert_eq!(resolve("/usr/bin/env", workdir), Path::new("/usr/bin/env"));
    }
}
