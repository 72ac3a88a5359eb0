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
//!
//! Instances outlive a platform killed with SIGKILL: nothing is left to stop
//! them, and they are reparented to init holding their ports. With a state
//! directory ([`ProcessRuntime::with_state_dir`]) every running instance has
//! a pid file there, `<instance_id>.pid`, written when it starts and removed
//! once it has exited and been reaped; [`ProcessRuntime::remove_stale`], at
//! the next start, kills the process groups the files name. Without one
//! ([`ProcessRuntime::new`]) nothing is recorded and nothing can be cleaned
//! up after a crash.

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, getpid, kill_process_group};
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
/// How long [`ProcessRuntime::remove_stale`] gives the groups it found to
/// end after SIGTERM before it kills them: enough for a server to close its
/// connections, short enough not to hold up the platform's start (all groups
/// share this one wait).
const STALE_GRACE: Duration = Duration::from_secs(2);
/// How often `remove_stale` looks whether they have ended; reading
/// `/proc/<pid>/stat` costs microseconds.
const STALE_POLL: Duration = Duration::from_millis(20);
/// Suffix of pid files in the state directory.
const PID_SUFFIX: &str = ".pid";
/// Suffix of a pid file being written; one is left only by a crash between
/// the write and the rename, and is handled like a pid file.
const TMP_SUFFIX: &str = ".pid.tmp";

/// Runs instances as host processes. Runs [`Source::Command`] only.
#[derive(Debug, Default, Clone)]
pub struct ProcessRuntime {
    /// Where pid files are kept; `None`: nowhere.
    state_dir: Option<PathBuf>,
}

impl ProcessRuntime {
    /// A runtime that keeps no record of its instances: if the platform is
    /// killed, they run on and nothing finds them again.
    pub fn new() -> Self {
        Self::default()
    }

    /// A runtime that records every running instance in `dir` (created when
    /// needed) as `<instance_id>.pid`, holding `<pid> <starttime> <owner pid>
    /// <owner starttime>\n`: the process id (which is also its process group
    /// id) and its start time (field 22 of `/proc/<pid>/stat`, in clock
    /// ticks since boot), then the same of the process that started it. The file
    /// is written before [`Runtime::start`] returns (a start that cannot
    /// write it fails) and removed once the process has exited and been
    /// reaped. Give each platform its own directory: see
    /// [`remove_stale`](Self::remove_stale).
    pub fn with_state_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: Some(dir.into()),
        }
    }

    /// Kills the process groups of instances that a previous run of the
    /// platform left running, as recorded in the state directory, and
    /// removes every pid file there (files it cannot read are logged and
    /// removed too). Call it at start-up, before starting anything: it would
    /// kill this runtime's own instances as well. Instances started by
    /// another process that still runs (a peer dispatcher sharing the
    /// directory; each pid file names its owner's pid and start time) are
    /// left alone.
    ///
    /// A group is only signalled if its leader is still the process that was
    /// recorded (same pid *and* start time). Each gets SIGTERM; after up to
    /// 2 s (for all of them together) the groups get SIGKILL. Returns how
    /// many groups were found running and signalled. Idempotent; `Ok(0)`
    /// without a state directory or if it does not exist. Problems with
    /// single files (unreadable, cannot be removed, not ours to signal) are
    /// logged and do not stop the others.
    pub async fn remove_stale(&self) -> Result<usize, RuntimeError> {
        let Some(dir) = self.state_dir.clone() else {
            return Ok(0);
        };
        let found = tokio::task::spawn_blocking(move || scan_state_dir(&dir))
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(error = %err, "cannot scan the process runtime's state directory");
                Vec::new()
            });

        let mut signalled = Vec::new();
        for (path, record) in &found {
            let Some(record) = record else { continue };
            // The leader was checked a moment ago (see `PidRecord::is_running`);
            // its pid cannot have been freed and handed out again since.
            match kill_process_group(record.pgid, Signal::TERM) {
                Ok(()) => {
                    // A group left frozen (SIGSTOP, `--freeze on`) would hold
                    // its SIGTERM until the grace ran out: wake it to hear it.
                    let _ = kill_process_group(record.pgid, Signal::CONT);
                    tracing::info!(
                        pid_file = %path.display(),
                        pgid = record.pgid.as_raw_pid(),
                        "stopping a process group left by an earlier run"
                    );
                    signalled.push(record);
                }
                Err(err) => tracing::warn!(
                    pid_file = %path.display(),
                    pgid = record.pgid.as_raw_pid(),
                    error = %err,
                    "cannot signal a process group left by an earlier run"
                ),
            }
        }
        let deadline = tokio::time::Instant::now() + STALE_GRACE;
        while signalled.iter().any(|record| record.is_running())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(STALE_POLL).await;
        }
        for record in &signalled {
            // Also reaches members that outlived their leader. The leader was
            // running a moment ago, or its group still has members, so the
            // group id has not been handed out again (Linux gives out pids
            // in a cycle, not the one just freed).
            let ignored_term = record.is_running();
            if kill_process_group(record.pgid, Signal::KILL).is_ok() && ignored_term {
                tracing::warn!(
                    pgid = record.pgid.as_raw_pid(),
                    grace = ?STALE_GRACE,
                    "process group ignored SIGTERM; killed it"
                );
            }
        }
        for (path, _) in &found {
            remove_pid_file(path);
        }
        Ok(signalled.len())
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
            node_selector: _,
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
        let pid_file = match &self.state_dir {
            Some(dir) => {
                let (dir, id) = (dir.clone(), instance_id.clone());
                let written = tokio::task::spawn_blocking(move || write_pid_file(&dir, &id, pgid))
                    .await
                    .unwrap_or_else(|err| Err(std::io::Error::other(err)));
                match written {
                    Ok(path) => Some(path),
                    Err(source) => {
                        // Not started after all: an instance without a
                        // record is what the record is there to prevent.
                        // (The child itself is killed and reaped when it is
                        // dropped.)
                        let _ = kill_process_group(pgid, Signal::KILL);
                        return Err(RuntimeError::Spawn {
                            program,
                            workdir,
                            source,
                        });
                    }
                }
            }
            None => None,
        };
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
            // Reaped: nothing is left to clean up after a crash. Removed
            // before the exit is published, so whoever sees the exit sees
            // no pid file.
            if let Some(path) = &pid_file {
                remove_pid_file(path);
            }
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
            log_path,
            exit: exit_rx,
            control: instance::Control::Process(Control { pgid }),
        }))
    }
}

/// A pid file's content: the process group of an instance and when its
/// leader started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PidRecord {
    pgid: Pid,
    starttime: u64,
    /// The process that started it (pid and start time); files written
    /// before owners were recorded have none.
    owner: Option<(u32, u64)>,
}

impl PidRecord {
    fn parse(content: &str) -> Option<Self> {
        let mut fields = content.split_ascii_whitespace();
        let pid: u32 = fields.next()?.parse().ok()?;
        let starttime = fields.next()?.parse().ok()?;
        let owner = match (fields.next(), fields.next(), fields.next()) {
            (None, _, _) => None,
            (Some(pid), Some(start), None) => Some((pid.parse().ok()?, start.parse().ok()?)),
            _ => return None,
        };
        let pgid = Pid::from_raw(i32::try_from(pid).ok()?)?;
        Some(Self {
            pgid,
            starttime,
            owner,
        })
    }

    /// Whether the process that started it is another one still running:
    /// a live peer sharing the state directory, whose instances are its own.
    fn owner_is_another_live_process(&self) -> bool {
        let Some((pid, start)) = self.owner else {
            return false;
        };
        pid != std::process::id()
            && Pid::from_raw(i32::try_from(pid).unwrap_or(0)).is_some_and(
                |p| matches!(proc_stat(p), Some(stat) if stat.starttime == start && !stat.ended),
            )
    }

    /// Whether the recorded process is still there (a zombie is not: it has
    /// ended and only waits to be reaped).
    ///
    /// Pids are reused: after a reboot, or once the counter wraps, the
    /// recorded pid may belong to an unrelated process (even a group
    /// leader), which must never be signalled. The pair (pid, start time)
    /// identifies one process for the life of the system.
    fn is_running(&self) -> bool {
        matches!(
            proc_stat(self.pgid),
            Some(stat) if stat.starttime == self.starttime && !stat.ended
        )
    }
}

/// What `remove_stale` needs out of `/proc/<pid>/stat`.
struct ProcStat {
    /// State `Z` (zombie) or `X` (dead).
    ended: bool,
    /// Field 22: clock ticks after boot at which the process started.
    starttime: u64,
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process.
fn proc_stat(pid: Pid) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_pid())).ok()?;
    parse_proc_stat(&stat)
}

/// `pid (comm) state ppid …`: `comm` may hold spaces and parentheses, so the
/// fields are counted after its last `)`, where field 3 (state) comes first.
fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    let mut fields = stat.rsplit_once(')')?.1.split_ascii_whitespace();
    let state = fields.next()?;
    let starttime = fields.nth(22 - 4)?.parse().ok()?;
    Some(ProcStat {
        ended: matches!(state, "Z" | "X"),
        starttime,
    })
}

/// Records a just-started instance in `dir`: `<id>.pid`, written to a
/// temporary file and renamed so that a crash never leaves half a record
/// under the real name. Not synced to disk: it guards against the platform
/// being killed, not the machine (which takes the processes with it).
fn write_pid_file(dir: &Path, instance_id: &str, pgid: Pid) -> std::io::Result<PathBuf> {
    let context = |path: &Path, err: std::io::Error| {
        std::io::Error::new(
            err.kind(),
            format!("cannot record its process in `{}`: {err}", path.display()),
        )
    };
    // The child has not been waited for, so even if it already exited its
    // entry is still there.
    let stat = proc_stat(pgid).ok_or_else(|| {
        std::io::Error::other(format!(
            "cannot read /proc/{}/stat to record its start time",
            pgid.as_raw_pid()
        ))
    })?;
    std::fs::create_dir_all(dir).map_err(|err| context(dir, err))?;
    let path = dir.join(format!("{instance_id}{PID_SUFFIX}"));
    let tmp = dir.join(format!("{instance_id}{TMP_SUFFIX}"));
    let own = std::process::id();
    let content = format!(
        "{} {} {own} {}\n",
        pgid.as_raw_pid(),
        stat.starttime,
        crate::holder::start_time(own).unwrap_or(0)
    );
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(content.as_bytes()))
        .map_err(|err| context(&tmp, err))
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(|err| context(&path, err)));
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    Ok(path)
}

/// Removes a pid file; one already gone is fine (`remove_stale` and the
/// instance's own exit may both get there).
fn remove_pid_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(pid_file = %path.display(), error = %err, "cannot remove pid file");
        }
    }
}

/// The pid files (and leftover temporary ones) in `dir`, each with its
/// record if that names a process that is still running. Files that do not
/// are logged here; other files are left alone.
fn scan_state_dir(dir: &Path) -> Vec<(PathBuf, Option<PidRecord>)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(err) => {
            tracing::warn!(
                state_dir = %dir.display(),
                error = %err,
                "cannot list the process runtime's state directory; no stale instances removed"
            );
            return Vec::new();
        }
    };
    let own_pid = getpid();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_pid_file = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.ends_with(PID_SUFFIX) || name.ends_with(TMP_SUFFIX));
        if !is_pid_file {
            continue;
        }
        let content = std::fs::read_to_string(&path);
        let record = match content.as_deref().map(PidRecord::parse) {
            Ok(Some(record)) if record.pgid == own_pid || record.pgid.as_raw_pid() == 1 => {
                tracing::warn!(pid_file = %path.display(), pid = record.pgid.as_raw_pid(), "pid file names this process or init; removing it");
                None
            }
            Ok(Some(record)) if record.owner_is_another_live_process() => {
                tracing::debug!(pid_file = %path.display(), "an instance of another running process sharing this directory; leaving it");
                continue;
            }
            Ok(Some(record)) if record.is_running() => Some(record),
            Ok(Some(record)) => {
                tracing::warn!(
                    pid_file = %path.display(),
                    pid = record.pgid.as_raw_pid(),
                    "stale pid file: its process is gone (or the pid now belongs to another process); removing it"
                );
                None
            }
            Ok(None) => {
                tracing::warn!(pid_file = %path.display(), "garbled pid file; removing it");
                None
            }
            Err(err) => {
                tracing::warn!(pid_file = %path.display(), error = %err, "unreadable pid file; removing it");
                None
            }
        };
        found.push((path, record));
    }
    found
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

    /// SIGSTOP (or SIGCONT) to the whole process group.
    pub(crate) fn set_paused(&self, paused: bool) -> Result<(), String> {
        let signal = if paused { Signal::STOP } else { Signal::CONT };
        kill_process_group(self.pgid, signal).map_err(|e| {
            format!(
                "cannot signal process group {}: {e}",
                self.pgid.as_raw_pid()
            )
        })
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

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        // Field 22 is the start time; the name may hold ") " itself.
        let stat =
            "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        let parsed = parse_proc_stat(stat).expect("parses");
        assert_eq!(parsed.starttime, 987_654);
        assert!(!parsed.ended);
        let zombie = stat.replace(") S ", ") Z ");
        assert!(parse_proc_stat(&zombie).expect("parses").ended);
        assert!(parse_proc_stat("4242 (truncated) S 1").is_none());
        let own = proc_stat(getpid()).expect("this process has a stat");
        assert!(!own.ended);
    }

    #[test]
    fn pid_records_are_two_numbers_and_the_owner() {
        let record = PidRecord::parse("123 456\n").expect("parses");
        assert_eq!(record.pgid.as_raw_pid(), 123);
        assert_eq!(record.starttime, 456);
        assert_eq!(record.owner, None);
        let owned = PidRecord::parse("123 456 77 88\n").expect("parses");
        assert_eq!(owned.owner, Some((77, 88)));
        assert!(!owned.owner_is_another_live_process());
        let ppid = std::os::unix::process::parent_id();
        let parent = crate::holder::start_time(ppid).expect("parent stat");
        let peer = PidRecord::parse(&format!("123 456 {ppid} {parent}")).expect("parses");
        assert!(peer.owner_is_another_live_process());
        for bad in [
            "",
            "123",
            "123 456 789",
            "123 456 7 8 9",
            "0 456",
            "-5 456",
            "abc 456",
            "4294967295 1",
        ] {
            assert!(PidRecord::parse(bad).is_none(), "{bad:?} accepted");
        }
    }
}
