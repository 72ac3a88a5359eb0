//! The build queue: bounded, a fixed number of builds at a time, newer
//! pushes superseding older ones that have not started, and cancellation.
//!
//! # Lifecycle of a build
//!
//! ```text
//! submit ─▶ queued ─┬─▶ (a slot is free) ─▶ fetching ─▶ building ─▶ pushing ─▶ rolling-out ─┬─▶ succeeded
//!                   ├─▶ superseded (a newer push for the same trigger)                     ├─▶ failed
//!                   └─▶ cancelled                                                           └─▶ cancelled
//! ```
//!
//! The caller records a build as `queued` before it submits it (it needs
//! the build's id to answer the webhook), so [`BuildQueue::submit`] reports
//! nothing for the new build; every later change is reported to the
//! [`StatusSink`], each build's changes in order and from one task: the
//! queue's for `superseded` and for `cancelled` while queued, the build's
//! own task for the rest. What a build does is the [`BuildRunner`]'s
//! business (fetch, build, roll out); it moves the build through the
//! running statuses with [`BuildContext::set_status`] and watches
//! [`BuildContext::cancellation`].
//!
//! # Bounds
//!
//! At most [`QueueConfig::capacity`] builds wait and
//! [`QueueConfig::concurrency`] run (default one: a build takes both cores
//! of a small machine). A build runs for at most
//! [`QueueConfig::build_timeout`]. A cancelled (or timed-out) build's
//! runner gets [`QueueConfig::cancel_grace`] to stop by itself (remove a
//! half-made image, kill `git`); after that it is dropped, which kills its
//! child processes and closes its engine connection, and its slot is
//! freed. A runner that panics fails its build; the queue goes on.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Builds waiting by default. A push every few seconds to many triggers
/// still fits; beyond this a webhook is answered "busy" rather than piling
/// up work nobody will wait for.
pub const DEFAULT_CAPACITY: usize = 32;
/// Builds running at once by default: image builds are CPU-bound and the
/// reference machine has two cores.
pub const DEFAULT_CONCURRENCY: usize = 1;
/// Longest a build may run by default (fetch, build and rollout together).
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a cancelled build's runner has to stop by itself.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);

pub use rouse_core::build::{BuildStatus, ParseStatusError};

/// A build's id, chosen by the caller (the store's id of its record).
pub type BuildId = String;

/// One status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub build: BuildId,
    pub status: BuildStatus,
    /// Why (for `failed`, `cancelled`, `superseded`).
    pub detail: Option<String>,
}

/// Where status changes go (the store, a commit-status reporter, a log).
/// Implementations should be quick: a build's task waits for its reports.
#[async_trait::async_trait]
pub trait StatusSink: Send + Sync + 'static {
    async fn report(&self, update: StatusUpdate);
}

/// What a build does with its job.
#[async_trait::async_trait]
pub trait BuildRunner<J>: Send + Sync + 'static {
    /// Runs the build. Returning `Ok` means it succeeded; the queue reports
    /// the terminal status.
    async fn run(&self, build: BuildContext, job: J) -> Result<(), BuildFailure>;
}

/// Why a build failed, for its record: the failing step and the last log
/// lines belong in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    pub message: String,
}

impl BuildFailure {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any error becomes a failure with its message and its causes, so runners
/// can use `?`.
impl<E: std::error::Error> From<E> for BuildFailure {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Self { message }
    }
}

/// What a running build gets besides its job.
#[derive(Clone)]
pub struct BuildContext {
    id: BuildId,
    cancel: CancellationToken,
    sink: Arc<dyn StatusSink>,
}

impl BuildContext {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Cancelled when the build is cancelled or timed out: stop soon.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Moves the build to a running status (`fetching`, `building`,
    /// `pushing`, `rolling-out`); terminal statuses are the queue's to
    /// report and are ignored here.
    pub async fn set_status(&self, status: BuildStatus) {
        if !status.is_running() {
            tracing::warn!(build = %self.id, %status, "a runner may only set a running status; ignored");
            return;
        }
        self.sink
            .report(StatusUpdate {
                build: self.id.clone(),
                status,
                detail: None,
            })
            .await;
    }
}

impl fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildContext")
            .field("id", &self.id)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish()
    }
}

/// Sizes and time limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Builds that may wait (not counting running ones).
    pub capacity: usize,
    /// Builds that run at once; at least 1.
    pub concurrency: usize,
    pub build_timeout: Duration,
    pub cancel_grace: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            concurrency: DEFAULT_CONCURRENCY,
            build_timeout: DEFAULT_BUILD_TIMEOUT,
            cancel_grace: DEFAULT_CANCEL_GRACE,
        }
    }
}

/// Why a build was not accepted or not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the build queue is full ({capacity} builds waiting): try again later, or raise the queue capacity"
    )]
    Full { capacity: usize },
    #[error("build `{id}` is already queued or running")]
    Duplicate { id: BuildId },
    #[error("build `{id}` is neither queued nor running")]
    NotFound { id: BuildId },
    #[error("the builder is shutting down")]
    Closed,
    #[error("invalid queue configuration: {0}")]
    Config(String),
}

/// What [`BuildQueue::submit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The queued build this one replaced (reported `superseded`); the new
    /// build takes its place in the line.
    pub superseded: Option<BuildId>,
    /// Builds ahead of it in the queue (0: next, or started already).
    pub position: usize,
}

/// What [`BuildQueue::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was waiting: removed and reported `cancelled`.
    Dequeued,
    /// It is running: told to stop; reported `cancelled` once it has.
    Stopping,
}

struct Waiting<J> {
    id: BuildId,
    key: Option<String>,
    job: J,
}

struct Running {
    status: BuildStatus,
    cancel: CancellationToken,
    stop: Option<StopReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    TimedOut,
    ShuttingDown,
}

struct State<J> {
    waiting: VecDeque<Waiting<J>>,
    running: HashMap<BuildId, Running>,
    closed: bool,
}

struct Shared<J> {
    config: QueueConfig,
    state: Mutex<State<J>>,
    runner: Arc<dyn BuildRunner<J>>,
    sink: Arc<dyn StatusSink>,
    changed: Notify,
}

impl<J> Shared<J> {
    fn state(&self) -> MutexGuard<'_, State<J>> {
        // A panic never happens while the lock is held; recover anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The queue. Cloning gives another handle to the same queue.
pub struct BuildQueue<J> {
    shared: Arc<Shared<J>>,
}

impl<J> Clone for BuildQueue<J> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<J> fmt::Debug for BuildQueue<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state();
        f.debug_struct("BuildQueue")
            .field("config", &self.shared.config)
            .field("waiting", &state.waiting.len())
            .field("running", &state.running.len())
            .finish()
    }
}

impl<J: Send + 'static> BuildQueue<J> {
    pub fn new(
        config: QueueConfig,
        runner: Arc<dyn BuildRunner<J>>,
        sink: Arc<dyn StatusSink>,
    ) -> Result<Self, QueueError> {
        if config.concurrency == 0 {
            return Err(QueueError::Config(
                "concurrency must be at least 1".to_owned(),
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State {
                    waiting: VecDeque::new(),
                    running: HashMap::new(),
                    closed: false,
                }),
                runner,
                sink,
                changed: Notify::new(),
            }),
        })
    }

    /// Queues build `id` (already recorded as `queued` by the caller). With
    /// a `key` (the trigger's id), a waiting build with the same key is
    /// superseded and this one takes its place. Must be called within a
    /// Tokio runtime: a free slot starts the build at once.
    pub async fn submit(
        &self,
        id: BuildId,
        key: Option<String>,
        job: J,
    ) -> Result<Submitted, QueueError> {
        let (superseded, position) = {
            let mut state = self.shared.state();
            if state.closed {
                return Err(QueueError::Closed);
            }
            if state.running.contains_key(&id) || state.waiting.iter().any(|w| w.id == id) {
                return Err(QueueError::Duplicate { id });
            }
            let same_key = key.as_ref().and_then(|key| {
                state
                    .waiting
                    .iter()
                    .position(|w| w.key.as_ref() == Some(key))
            });
            let entry = Waiting {
                id: id.clone(),
                key,
                job,
            };
            match same_key {
                Some(index) => {
                    let old = std::mem::replace(&mut state.waiting[index], entry);
                    (Some(old.id), index)
                }
                None if state.waiting.len() >= self.shared.config.capacity
                    && state.running.len() >= self.shared.config.concurrency =>
                {
                    return Err(QueueError::Full {
                        capacity: self.shared.config.capacity,
                    });
                }
                None => {
                    state.waiting.push_back(entry);
                    (None, state.waiting.len() - 1)
                }
            }
        };
        if let Some(old) = &superseded {
            tracing::info!(build = %old, by = %id, "queued build superseded by a newer push");
            self.shared
                .sink
                .report(StatusUpdate {
                    build: old.clone(),
                    status: BuildStatus::Superseded,
                    detail: Some(format!("superseded by build {id}")),
                })
                .await;
        }
        start_ready(&self.shared);
        Ok(Submitted {
            superseded,
            position,
        })
    }

    /// Cancels a waiting or running build.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, QueueError> {
        let outcome = {
            let mut state = self.shared.state();
            if let Some(index) = state.waiting.iter().position(|w| w.id == id) {
                state.waiting.remove(index);
                CancelOutcome::Dequeued
            } else if let Some(running) = state.running.get_mut(id) {
                running.stop.get_or_insert(StopReason::Cancelled);
                running.cancel.cancel();
                CancelOutcome::Stopping
            } else {
                return Err(QueueError::NotFound { id: id.to_owned() });
            }
        };
        if outcome == CancelOutcome::Dequeued {
            self.shared
                .sink
                .report(StatusUpdate {
                    build: id.to_owned(),
                    status: BuildStatus::Cancelled,
                    detail: Some("cancelled while queued".to_owned()),
                })
                .await;
            self.shared.changed.notify_waiters();
        }
        Ok(outcome)
    }

    /// The status of a waiting or running build (`None` once it is over).
    pub fn status(&self, id: &str) -> Option<BuildStatus> {
        let state = self.shared.state();
        if state.waiting.iter().any(|w| w.id == id) {
            return Some(BuildStatus::Queued);
        }
        state.running.get(id).map(|running| running.status)
    }

    /// Ids of the waiting builds, next first.
    pub fn waiting(&self) -> Vec<BuildId> {
        self.shared
            .state()
            .waiting
            .iter()
            .map(|w| w.id.clone())
            .collect()
    }

    /// Ids of the running builds.
    pub fn running(&self) -> Vec<BuildId> {
        let mut ids: Vec<_> = self.shared.state().running.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Completes when nothing waits and nothing runs.
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.changed.notified();
            {
                let state = self.shared.state();
                if state.waiting.is_empty() && state.running.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Refuses new builds, cancels the waiting ones, stops the running ones
    /// (with the grace period) and waits for them.
    pub async fn shutdown(&self) {
        let waiting: Vec<_> = {
            let mut state = self.shared.state();
            state.closed = true;
            for running in state.running.values_mut() {
                running.stop.get_or_insert(StopReason::ShuttingDown);
                running.cancel.cancel();
            }
            state.waiting.drain(..).map(|w| w.id).collect()
        };
        for id in waiting {
            self.shared
                .sink
                .report(StatusUpdate {
                    build: id,
                    status: BuildStatus::Cancelled,
                    detail: Some("the builder shut down before the build started".to_owned()),
                })
                .await;
        }
        self.shared.changed.notify_waiters();
        self.idle().await;
    }
}

/// Starts waiting builds while slots are free.
fn start_ready<J: Send + 'static>(shared: &Arc<Shared<J>>) {
    loop {
        let next = {
            let mut state = shared.state();
            if state.closed || state.running.len() >= shared.config.concurrency {
                return;
            }
            let Some(next) = state.waiting.pop_front() else {
                return;
            };
            let cancel = CancellationToken::new();
            state.running.insert(
                next.id.clone(),
                Running {
                    status: BuildStatus::Queued,
                    cancel: cancel.clone(),
                    stop: None,
                },
            );
            (next, cancel)
        };
        let (Waiting { id, job, .. }, cancel) = next;
        tokio::spawn(run_build(shared.clone(), id, job, cancel));
    }
}

/// A sink that remembers a running build's latest status for
/// [`BuildQueue::status`] before passing it on.
struct Tracking<J> {
    shared: Arc<Shared<J>>,
}

#[async_trait::async_trait]
impl<J: Send + 'static> StatusSink for Tracking<J> {
    async fn report(&self, update: StatusUpdate) {
        if let Some(running) = self.shared.state().running.get_mut(&update.build) {
            running.status = update.status;
        }
        self.shared.sink.report(update).await;
    }
}

enum Ended {
    Returned(Result<(), BuildFailure>),
    Panicked,
    Abandoned,
}

async fn run_build<J: Send + 'static>(
    shared: Arc<Shared<J>>,
    id: BuildId,
    job: J,
    cancel: CancellationToken,
) {
    let context = BuildContext {
        id: id.clone(),
        cancel: cancel.clone(),
        sink: Arc::new(Tracking {
            shared: shared.clone(),
        }),
    };
    // Boxed so that it can be dropped (killing what it started) before the
    // terminal status is reported and the next build starts.
    let mut run =
        Box::pin(std::panic::AssertUnwindSafe(shared.runner.run(context, job)).catch_unwind());
    let ended = tokio::select! {
        result = &mut run => Some(result),
        () = cancel.cancelled() => None,
        () = tokio::time::sleep(shared.config.build_timeout) => {
            if let Some(running) = shared.state().running.get_mut(&id) {
                running.stop.get_or_insert(StopReason::TimedOut);
            }
            cancel.cancel();
            None
        }
    };
    let ended = match ended {
        Some(Ok(result)) => Ended::Returned(result),
        Some(Err(_)) => Ended::Panicked,
        // Told to stop: give the runner its grace period, then drop it.
        None => match tokio::time::timeout(shared.config.cancel_grace, &mut run).await {
            Ok(Ok(result)) => Ended::Returned(result),
            Ok(Err(_)) => Ended::Panicked,
            Err(_) => Ended::Abandoned,
        },
    };
    drop(run);
    let stop = shared
        .state()
        .running
        .get(&id)
        .and_then(|running| running.stop);
    let grace = shared.config.cancel_grace.as_secs_f64();
    let (status, detail) = match (ended, stop) {
        (Ended::Returned(Ok(())), _) => (BuildStatus::Succeeded, None),
        (Ended::Panicked, _) => (
            BuildStatus::Failed,
            Some(
                "the build stopped on an internal error (a panic); see the builder's log"
                    .to_owned(),
            ),
        ),
        (Ended::Returned(Err(failure)), None) => (BuildStatus::Failed, Some(failure.message)),
        (ended, Some(StopReason::TimedOut)) => (
            BuildStatus::Failed,
            Some(format!(
                "timed out after {}s{}",
                shared.config.build_timeout.as_secs_f64(),
                abandoned_note(&ended, grace)
            )),
        ),
        (ended, Some(StopReason::Cancelled)) => (
            BuildStatus::Cancelled,
            Some(format!("cancelled{}", abandoned_note(&ended, grace))),
        ),
        (ended, Some(StopReason::ShuttingDown)) => (
            BuildStatus::Cancelled,
            Some(format!(
                "the builder shut down{}",
                abandoned_note(&ended, grace)
            )),
        ),
        (Ended::Abandoned, None) => (BuildStatus::Failed, Some("abandoned".to_owned())),
    };
    shared
        .sink
        .report(StatusUpdate {
            build: id.clone(),
            status,
            detail,
        })
        .await;
    shared.state().running.remove(&id);
    start_ready(&shared);
    shared.changed.notify_waiters();
}

fn abandoned_note(ended: &Ended, grace: f64) -> String {
    match ended {
        Ended::Abandoned => format!("; the build did not stop within {grace}s and was abandoned"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// A job for the fake runner.
    #[derive(Debug, Clone)]
    struct Job {
        /// Time in each running status.
        step: Duration,
        /// Stops when cancelled (else ignores it).
        cooperative: bool,
        fail: Option<&'static str>,
        panic: bool,
    }

    fn job(step_secs: u64) -> Job {
        Job {
            step: Duration::from_secs(step_secs),
            cooperative: true,
            fail: None,
            panic: false,
        }
    }

    /// Build, status, detail, when (since the recorder was made).
    type Update = (String, BuildStatus, Option<String>, Duration);

    #[derive(Default)]
    struct Recorder {
        updates: Mutex<Vec<Update>>,
        started: Mutex<Vec<String>>,
        origin: Mutex<Option<Instant>>,
    }

    impl Recorder {
        fn new() -> Arc<Self> {
            let recorder = Arc::new(Self::default());
            *recorder.origin.lock().expect("lock") = Some(Instant::now());
            recorder
        }

        fn elapsed(&self) -> Duration {
            self.origin
                .lock()
                .expect("lock")
                .map(|o| o.elapsed())
                .unwrap_or_default()
        }

        fn statuses(&self, id: &str) -> Vec<BuildStatus> {
            self.updates
                .lock()
                .expect("lock")
                .iter()
                .filter(|u| u.0 == id)
                .map(|u| u.1)
                .collect()
        }

        fn last(&self, id: &str) -> (BuildStatus, Option<String>, Duration) {
            let updates = self.updates.lock().expect("lock");
            let u = updates.iter().rev().find(|u| u.0 == id).expect("an update");
            (u.1, u.2.clone(), u.3)
        }

        fn started(&self) -> Vec<String> {
            self.started.lock().expect("lock").clone()
        }
    }

    #[async_trait::async_trait]
    impl StatusSink for Recorder {
        async fn report(&self, update: StatusUpdate) {
            let at = self.elapsed();
            self.updates.lock().expect("lock").push((
                update.build,
                update.status,
                update.detail,
                at,
            ));
        }
    }

    #[async_trait::async_trait]
    impl BuildRunner<Job> for Recorder {
        async fn run(&self, build: BuildContext, job: Job) -> Result<(), BuildFailure> {
            self.started
                .lock()
                .expect("lock")
                .push(build.id().to_owned());
            for status in [
                BuildStatus::Fetching,
                BuildStatus::Building,
                BuildStatus::RollingOut,
            ] {
                build.set_status(status).await;
                if job.cooperative {
                    tokio::select! {
                        () = tokio::time::sleep(job.step) => {}
                        () = build.cancellation().cancelled() => {
                            return Err(BuildFailure::new("stopped"));
                        }
                    }
                } else {
                    tokio::time::sleep(job.step).await;
                }
            }
            assert!(!job.panic, "the runner panics");
            match job.fail {
                Some(message) => Err(BuildFailure::new(message)),
                None => Ok(()),
            }
        }
    }

    fn queue(config: QueueConfig) -> (BuildQueue<Job>, Arc<Recorder>) {
        let recorder = Recorder::new();
        let queue =
            BuildQueue::new(config, recorder.clone(), recorder.clone()).expect("valid config");
        (queue, recorder)
    }

    const RUN: [BuildStatus; 4] = [
        BuildStatus::Fetching,
        BuildStatus::Building,
        BuildStatus::RollingOut,
        BuildStatus::Succeeded,
    ];

    #[test]
    fn statuses_display_and_parse() {
        for status in BuildStatus::ALL {
            assert_eq!(status.to_string().parse::<BuildStatus>(), Ok(status));
        }
        assert_eq!(BuildStatus::RollingOut.to_string(), "rolling-out");
        let err = "done".parse::<BuildStatus>().expect_err("unknown");
        assert!(
            err.to_string()
                .starts_with("unknown build status `done`: expected one of queued,"),
            "{err}"
        );
        assert!(BuildStatus::Superseded.is_terminal() && !BuildStatus::Pushing.is_terminal());
    }

    #[tokio::test(start_paused = true)]
    async fn one_build_at_a_time_by_default() {
        let (queue, rec) = queue(QueueConfig::default());
        for id in ["a", "b", "c"] {
            queue
                .submit(id.into(), Some(format!("trigger-{id}")), job(10))
                .await
                .expect("queued");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(queue.running(), ["a"]);
        assert_eq!(queue.waiting(), ["b", "c"]);
        assert_eq!(queue.status("a"), Some(BuildStatus::Fetching));
        assert_eq!(queue.status("b"), Some(BuildStatus::Queued));
        queue.idle().await;
        assert_eq!(
            rec.elapsed(),
            Duration::from_secs(90),
            "three builds of 30 s in a row"
        );
        assert_eq!(rec.started(), ["a", "b", "c"]);
        for id in ["a", "b", "c"] {
            assert_eq!(rec.statuses(id), RUN, "{id}");
        }
        assert_eq!(queue.status("a"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_runs_builds_side_by_side() {
        let (queue, rec) = queue(QueueConfig {
            concurrency: 2,
            ..QueueConfig::default()
        });
        for id in ["a", "b", "c"] {
            queue
                .submit(id.into(), None, job(10))
                .await
                .expect("queued");
        }
        queue.idle().await;
        assert_eq!(rec.elapsed(), Duration::from_secs(60));
        assert_eq!(rec.last("b").2, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_push_supersedes_a_queued_build_of_the_same_trigger() {
        let (queue, rec) = queue(QueueConfig::default());
        let key = Some("t1".to_owned());
        queue
            .submit("a".into(), key.clone(), job(10))
            .await
            .expect("a");
        queue
            .submit("b".into(), key.clone(), job(10))
            .await
            .expect("b");
        queue
            .submit("other".into(), Some("t2".into()), job(10))
            .await
            .expect("other");
        queue
            .submit("manual".into(), None, job(10))
            .await
            .expect("manual");
        let submitted = queue
            .submit("c".into(), key.clone(), job(10))
            .await
            .expect("c");
        assert_eq!(
            submitted,
            Submitted {
                superseded: Some("b".into()),
                position: 0
            },
            "c takes b's place; a (running) is not superseded"
        );
        assert_eq!(queue.waiting(), ["c", "other", "manual"]);
        assert_eq!(
            rec.last("b"),
            (
                BuildStatus::Superseded,
                Some("superseded by build c".into()),
                Duration::ZERO
            )
        );
        queue.idle().await;
        assert_eq!(rec.started(), ["a", "c", "other", "manual"]);
        assert_eq!(rec.statuses("a"), RUN);
        assert_eq!(rec.statuses("b"), [BuildStatus::Superseded]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded() {
        let (queue, _rec) = queue(QueueConfig {
            capacity: 2,
            ..QueueConfig::default()
        });
        queue
            .submit("a".into(), Some("ka".into()), job(10))
            .await
            .expect("runs");
        queue
            .submit("b".into(), Some("kb".into()), job(10))
            .await
            .expect("waits");
        queue
            .submit("c".into(), Some("kc".into()), job(10))
            .await
            .expect("waits");
        let err = queue
            .submit("d".into(), Some("kd".into()), job(10))
            .await
            .expect_err("full");
        assert_eq!(err, QueueError::Full { capacity: 2 });
        assert!(
            err.to_string().contains("raise the queue capacity"),
            "{err}"
        );
        // Superseding does not grow the queue, so it is accepted.
        queue
            .submit("e".into(), Some("kb".into()), job(10))
            .await
            .expect("supersedes");
        let err = queue
            .submit("e".into(), None, job(1))
            .await
            .expect_err("duplicate");
        assert_eq!(err, QueueError::Duplicate { id: "e".into() });
        assert!(matches!(
            BuildQueue::<Job>::new(
                QueueConfig {
                    concurrency: 0,
                    ..QueueConfig::default()
                },
                Recorder::new(),
                Recorder::new()
            ),
            Err(QueueError::Config(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_queued_and_running_builds() {
        let (queue, rec) = queue(QueueConfig::default());
        queue.submit("a".into(), None, job(10)).await.expect("a");
        queue.submit("b".into(), None, job(10)).await.expect("b");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(queue.cancel("b").await, Ok(CancelOutcome::Dequeued));
        assert_eq!(rec.statuses("b"), [BuildStatus::Cancelled]);
        assert_eq!(queue.cancel("a").await, Ok(CancelOutcome::Stopping));
        queue.idle().await;
        assert_eq!(
            rec.last("a"),
            (
                BuildStatus::Cancelled,
                Some("cancelled".into()),
                Duration::from_secs(5)
            ),
            "a cooperative runner stops at once"
        );
        assert_eq!(rec.started(), ["a"]);
        assert_eq!(
            queue.cancel("a").await,
            Err(QueueError::NotFound { id: "a".into() })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_that_ignores_cancellation_is_abandoned_after_the_grace() {
        let (queue, rec) = queue(QueueConfig {
            cancel_grace: Duration::from_secs(3),
            ..QueueConfig::default()
        });
        let stubborn = Job {
            cooperative: false,
            ..job(100)
        };
        queue.submit("a".into(), None, stubborn).await.expect("a");
        queue.submit("b".into(), None, job(1)).await.expect("b");
        tokio::time::sleep(Duration::from_secs(5)).await;
        queue.cancel("a").await.expect("running");
        queue.idle().await;
        let (status, detail, at) = rec.last("a");
        assert_eq!(status, BuildStatus::Cancelled);
        assert_eq!(
            detail.as_deref(),
            Some("cancelled; the build did not stop within 3s and was abandoned")
        );
        assert_eq!(at, Duration::from_secs(8));
        assert_eq!(
            rec.last("b").2,
            Duration::from_secs(11),
            "the slot was freed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_failures_and_panics_fail_the_build_and_the_queue_goes_on() {
        let (queue, rec) = queue(QueueConfig {
            build_timeout: Duration::from_secs(60),
            ..QueueConfig::default()
        });
        queue
            .submit("slow".into(), None, job(100))
            .await
            .expect("slow");
        let failing = Job {
            fail: Some("image build failed at `Step 2/2 : COPY x /`"),
            ..job(1)
        };
        queue
            .submit("failing".into(), None, failing)
            .await
            .expect("failing");
        let panicking = Job {
            panic: true,
            ..job(1)
        };
        queue
            .submit("panicking".into(), None, panicking)
            .await
            .expect("panicking");
        queue
            .submit("fine".into(), None, job(1))
            .await
            .expect("fine");
        queue.idle().await;
        assert_eq!(
            rec.last("slow"),
            (
                BuildStatus::Failed,
                Some("timed out after 60s".into()),
                Duration::from_secs(60)
            )
        );
        assert_eq!(
            rec.last("failing").1.as_deref(),
            Some("image build failed at `Step 2/2 : COPY x /`")
        );
        assert_eq!(rec.last("failing").0, BuildStatus::Failed);
        let (status, detail, _) = rec.last("panicking");
        assert_eq!(status, BuildStatus::Failed);
        assert!(detail.unwrap_or_default().contains("panic"));
        assert_eq!(rec.last("fine").0, BuildStatus::Succeeded);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_everything_and_refuses_new_builds() {
        let (queue, rec) = queue(QueueConfig::default());
        queue.submit("a".into(), None, job(10)).await.expect("a");
        queue.submit("b".into(), None, job(10)).await.expect("b");
        tokio::time::sleep(Duration::from_secs(1)).await;
        queue.shutdown().await;
        assert_eq!(rec.last("a").0, BuildStatus::Cancelled);
        assert_eq!(rec.statuses("b"), [BuildStatus::Cancelled]);
        assert_eq!(
            queue.submit("c".into(), None, job(1)).await,
            Err(QueueError::Closed)
        );
    }

    #[test]
    fn errors_become_failures_with_their_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let failure = BuildFailure::from(Outer(std::io::Error::other("inner")));
        assert_eq!(failure.message, "outer: inner");
    }
}
