//! One worker per service: its queue, its instances and its executions.
//!
//! The worker is an actor. Intake sends it recorded questions through a
//! bounded channel; it stops receiving while its queue is full, which stops
//! intake, which stops pulling from Pub/Sub (flow control, nothing dropped).
//! Everything slow (starting an instance, a delivery, stopping) runs in
//! spawned tasks that report back on an internal channel, so the worker's loop
//! only ever makes decisions: after every change it asks [`scale::decide`]
//! what to start and stop, and sleeps until the next event or idle deadline.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rouse_core::Service;
use rouse_core::protocol::{Question, Reply};
use rouse_core::revision::{DeliveryMode, Execution, ExecutionStatus, Revision};
use rouse_runtime::{Instance, InstanceSpec};
use rouse_store::StoreError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::DispatcherConfig;
use crate::deliver::{self, Outcome};
use crate::launch::{Launcher, instance_spec};
use crate::replies::{Ledger, Replier, build_event};
use crate::scale::{self, InstanceView};

/// What workers run against; shared by all of them (and by intake and the
/// trials, through [`crate::Shared`]).
pub struct Context {
    pub config: DispatcherConfig,
    pub store: Arc<dyn Ledger>,
    pub replier: Replier,
    pub http: reqwest::Client,
    /// For instances that speak HTTP/2 without TLS (h2c, prior knowledge).
    pub h2c: reqwest::Client,
    pub launcher: Launcher,
    /// What the dispatcher counts (served at the ingress's `/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where questions go after their last attempt failed (`None` in unit
    /// tests, which have no Pub/Sub).
    pub dead_letters: Option<Arc<crate::dead_letter::DeadLetters>>,
    /// Every long-lived task (workers, intake, the outbox, the trials) and
    /// every instance stop a worker hands off: awaited at shutdown, so that
    /// the dispatcher ends only once its instances have.
    pub tasks: TaskTracker,
}

/// Messages to a worker.
pub enum WorkerMsg {
    /// A recorded execution to run (new, or resumed after a restart).
    Run(Box<Execution>),
    /// The service's settings or serving revision changed.
    Update(Box<Service>, Option<Box<Revision>>),
    Cancel {
        question_uuid: String,
        done: oneshot::Sender<bool>,
    },
    /// An HTTP request of the ingress wants an instance of the serving
    /// revision: it waits in the worker's queue like a question (and counts
    /// as work when scaling) until an instance with room is ready.
    Http(oneshot::Sender<Result<HttpLease, LeaseError>>),
}

/// A ready instance lent to one HTTP request: it counts against the
/// instance's `concurrency` until dropped.
pub struct HttpLease {
    pub instance: Arc<Instance>,
    /// It speaks h2c (its revision's `--use-http2`).
    pub http2: bool,
    _release: Release,
}

/// Gives the lent slot back when the request is done (or its client gone).
struct Release {
    tx: mpsc::UnboundedSender<Internal>,
    slot: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.tx.send(Internal::HttpDone(self.slot));
    }
}

/// Why an HTTP request got no instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// The service has no revision to serve yet.
    NotDeployed(String),
    /// Its revision runs as a job per question: nothing listens.
    JobMode(String),
    /// Its queue of waiting requests is full.
    QueueFull,
    /// No instance could be woken.
    WakeFailed(String),
}

/// Reports from the worker's own tasks.
enum Internal {
    Started(u64, Result<Arc<Instance>, String>),
    Exited(u64, String),
    Finished {
        key: Key,
        slot: u64,
    },
    /// An HTTP request lent an instance is done with it.
    HttpDone(u64),
    /// A frozen instance was thawed (or could not be).
    Thawed(u64, Result<(), String>),
    /// An idle instance could not be frozen.
    FreezeFailed(u64, String),
    /// The instance could not be reached: the question goes back to the
    /// queue, and the instance is given up.
    Undelivered {
        execution: Box<Execution>,
        slot: u64,
        detail: String,
    },
    /// A delivery or job the platform failed (a crash): the worker, which
    /// knows the service's settings, runs it again, dead-letters or fails it.
    Failed {
        execution: Box<Execution>,
        reply: Reply,
        slot: u64,
    },
    /// A question's next attempt, to run from `at` (its backoff).
    Retry {
        at: Instant,
        execution: Box<Execution>,
    },
}

/// The exceptions the platform raises when it failed a question itself (its
/// instance did not wake, crashed, or could not be reached), rather than the
/// service answering one: worth another attempt (`--max-retries`), and
/// dead-lettered after the last.
const PLATFORM_FAILURES: &[&str] = &["ServiceWakeFailed", "ServiceCrashed"];

/// `Type: message` of an exception reply.
fn exception_text(reply: &Reply) -> String {
    match reply {
        Reply::Exception {
            exception_type,
            exception_message,
            ..
        } => format!("{exception_type}: {exception_message}"),
        _ => String::new(),
    }
}

fn platform_failure(reply: &Reply) -> bool {
    matches!(reply, Reply::Exception { exception_type, .. } if PLATFORM_FAILURES.contains(&exception_type.as_str()))
}

/// How often a question that could not reach an instance goes back to the
/// queue before it fails: instances that cannot be reached are given up,
/// so a second try reaches a fresh one.
const MAX_UNDELIVERED: u32 = 3;

type Key = (String, u32);

fn key(e: &Execution) -> Key {
    (e.question_uuid.clone(), e.retry_count)
}

struct Slot {
    instance: Option<Arc<Instance>>,
    ready: bool,
    in_flight: u32,
    idle_since: Option<Instant>,
    revision: String,
    /// Executions waiting for this instance to wake (cold starts).
    waking: Vec<Key>,
    /// When it was asked for (or, frozen, to thaw).
    asked_at: Instant,
    /// When it was frozen, while it is.
    frozen_since: Option<Instant>,
    /// The freeze under way, which a thaw waits for.
    freezing: Option<JoinHandle<()>>,
    /// Counts it on its node while it is ready (dropped with the slot).
    on_node: Option<crate::metrics::OnNode>,
}

struct Running {
    execution: Execution,
    slot: u64,
    task: JoinHandle<()>,
}

pub struct Worker {
    ctx: Arc<Context>,
    /// Cancelled when the service is deleted or the dispatcher stops.
    stop: CancellationToken,
    service: Service,
    /// Shared, so that each turn of the loop takes it without a copy.
    revision: Option<Arc<Revision>>,
    queue: VecDeque<Execution>,
    slots: HashMap<u64, Slot>,
    running: HashMap<Key, Running>,
    /// Questions that went back to the queue undelivered, and how often.
    undelivered: HashMap<Key, u32>,
    /// HTTP requests waiting for an instance, oldest first.
    http_waiting: VecDeque<oneshot::Sender<Result<HttpLease, LeaseError>>>,
    /// Next attempts of questions the platform failed, each with when its
    /// backoff ends; queued then (they wait in the store too).
    delayed: Vec<(Instant, Execution)>,
    /// Queue depth and instances as last reported to the metrics, and for
    /// which revision.
    gauges: (usize, usize),
    gauged: Option<String>,
    next_slot: u64,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
}

impl Worker {
    pub fn new(
        ctx: Arc<Context>,
        service: Service,
        revision: Option<Revision>,
        stop: CancellationToken,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        ctx.metrics.name(service.uuid, service.qualified_name());
        Self {
            ctx,
            stop,
            service,
            revision: revision.map(Arc::new),
            queue: VecDeque::new(),
            slots: HashMap::new(),
            running: HashMap::new(),
            undelivered: HashMap::new(),
            http_waiting: VecDeque::new(),
            delayed: Vec::new(),
            // Reported at the first look, whatever it finds.
            gauges: (usize::MAX, usize::MAX),
            gauged: None,
            next_slot: 1,
            internal_tx,
            internal_rx,
        }
    }

    fn mode(&self) -> DeliveryMode {
        self.revision
            .as_ref()
            .map_or(DeliveryMode::Server, |r| r.mode)
    }

    /// The SRUID the service's replies are sent as.
    fn sender(&self) -> String {
        let mut sruid = self.service.sruid();
        sruid.revision_tag = self.revision.as_ref().map(|r| r.name.clone());
        sruid.to_string()
    }

    /// Runs until `rx` closes or the worker's token is cancelled (the
    /// service was deleted, its revision is no longer routed to, or the
    /// dispatcher stops), then stops every instance.
    pub async fn run(mut self, mut rx: mpsc::Receiver<WorkerMsg>) {
        let mut heartbeat = tokio::time::interval(self.ctx.config.heartbeat_interval);
        heartbeat.tick().await;
        let capacity = self.ctx.config.queue_capacity;
        loop {
            let now = Instant::now();
            while let Some(due) = self.delayed.iter().position(|(at, _)| *at <= now) {
                let (_, execution) = self.delayed.swap_remove(due);
                self.on_message(WorkerMsg::Run(Box::new(execution))).await;
            }
            let backoff_ends = self.delayed.iter().map(|(at, _)| *at).min();
            let wake_at = match (self.reconcile(), backoff_ends) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Reports of the worker's own tasks first: a slot given back
            // before a new request arrived is seen free by it, rather than
            // raced by it into waking another instance.
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                Some(report) = self.internal_rx.recv() => self.on_internal(report).await,
                msg = rx.recv(), if self.queue.len() < capacity => match msg {
                    Some(msg) => self.on_message(msg).await,
                    None => break,
                },
                _ = heartbeat.tick() => self.heartbeats(),
                _ = sleep => {}
            }
        }
        self.shutdown().await;
    }

    /// With no serving revision known, reads it from the store: a role in
    /// another process (a build's rollout, the api) may have made one serve
    /// since the last re-read; the store decides, not a stale table.
    async fn read_revision_if_none(&mut self) {
        if self.revision.is_some() {
            return;
        }
        match self.ctx.store.serving_revision(self.service.uuid).await {
            Ok(revision) => self.revision = revision.map(Arc::new),
            Err(e) => {
                tracing::warn!(service = %self.service.qualified_name(), error = %e, "cannot read the serving revision")
            }
        }
    }

    async fn on_message(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Run(execution) => {
                self.read_revision_if_none().await;
                if self.revision.is_none() {
                    let reason = format!(
                        "service `{}` has no revision to run yet; register one with `rouse revisions create {} --project {}`",
                        self.service.qualified_name(),
                        self.service.name,
                        self.service.project
                    );
                    self.finish(*execution, Reply::exception("ServiceNotDeployed", reason))
                        .await;
                } else {
                    self.queue.push_back(*execution);
                }
            }
            WorkerMsg::Update(service, revision) => {
                self.service = *service;
                if let Some(r) = revision {
                    self.revision = Some(Arc::new(*r));
                }
            }
            WorkerMsg::Cancel {
                question_uuid,
                done,
            } => {
                let cancelled = self.cancel(&question_uuid).await;
                let _ = done.send(cancelled);
            }
            WorkerMsg::Http(reply) => {
                self.read_revision_if_none().await;
                let refused = match &self.revision {
                    None => Some(LeaseError::NotDeployed(format!(
                        "service `{}` has no revision to serve yet; register one with `rouse revisions create {} --project {}`",
                        self.service.qualified_name(),
                        self.service.name,
                        self.service.project
                    ))),
                    Some(r) if r.mode == DeliveryMode::Job => Some(LeaseError::JobMode(format!(
                        "service `{}` runs revision {} as a job per question, which serves no HTTP; make a server-mode revision (`--mode server`) to reach it over HTTP",
                        self.service.qualified_name(),
                        r.name
                    ))),
                    Some(_) if self.http_waiting.len() >= self.ctx.config.queue_capacity => {
                        Some(LeaseError::QueueFull)
                    }
                    Some(_) => None,
                };
                match refused {
                    Some(e) => {
                        let _ = reply.send(Err(e));
                    }
                    None => self.http_waiting.push_back(reply),
                }
            }
        }
    }

    async fn cancel(&mut self, question_uuid: &str) -> bool {
        let reply = || Reply::exception("QuestionCancelled", "the question was cancelled");
        if let Some(pos) = self
            .delayed
            .iter()
            .position(|(_, e)| e.question_uuid == question_uuid)
        {
            let (_, execution) = self.delayed.swap_remove(pos);
            self.finish_as(execution, reply(), ExecutionStatus::Cancelled)
                .await;
            return true;
        }
        if let Some(pos) = self
            .queue
            .iter()
            .position(|e| e.question_uuid == question_uuid)
            && let Some(execution) = self.queue.remove(pos)
        {
            self.finish_as(execution, reply(), ExecutionStatus::Cancelled)
                .await;
            return true;
        }
        let key = self.running.keys().find(|k| k.0 == question_uuid).cloned();
        let Some(key) = key else { return false };
        let Some(run) = self.running.remove(&key) else {
            return false;
        };
        run.task.abort();
        if self.mode() == DeliveryMode::Job {
            if let Some(slot) = self.slots.remove(&run.slot) {
                self.stop_instance(slot);
            }
        } else {
            self.release(run.slot);
        }
        self.finish_as(run.execution, reply(), ExecutionStatus::Cancelled)
            .await;
        true
    }

    async fn on_internal(&mut self, report: Internal) {
        match report {
            Internal::Started(id, Ok(instance)) => {
                let now = Instant::now();
                match self.slots.get_mut(&id) {
                    Some(slot) => {
                        self.ctx
                            .metrics
                            .cold_start(&self.service.qualified_name(), slot.asked_at.elapsed());
                        slot.ready = true;
                        slot.idle_since = Some(now);
                        slot.on_node = Some(self.ctx.metrics.on_node(instance.node()));
                        slot.instance = Some(instance.clone());
                        let waking = std::mem::take(&mut slot.waking);
                        let ready_at = SystemTime::now();
                        for e in self.queue.iter_mut().filter(|e| waking.contains(&key(e))) {
                            e.ready_at = Some(ready_at);
                        }
                        let tx = self.internal_tx.clone();
                        tokio::spawn(async move {
                            let exit = instance.exited().await;
                            let _ = tx.send(Internal::Exited(id, exit.description));
                        });
                    }
                    // Stopped while starting (service deleted, revision changed).
                    None => {
                        self.ctx
                            .tasks
                            .spawn(async move { instance.stop(STOP_GRACE).await });
                    }
                }
            }
            Internal::Started(id, Err(reason)) => {
                let waking = self.slots.remove(&id).map(|s| s.waking).unwrap_or_default();
                tracing::warn!(service = %self.service.qualified_name(), %reason, "instance failed to wake");
                self.ctx.metrics.wake_failed(&self.service.qualified_name());
                // With nothing else alive, every queued question fails: retrying a
                // start that just failed would loop. Otherwise only those that
                // were waiting for this instance do.
                let nothing_else = self.slots.is_empty();
                let failed: Vec<Execution> = if nothing_else {
                    self.queue.drain(..).collect()
                } else {
                    let (failed, kept): (VecDeque<_>, VecDeque<_>) =
                        self.queue.drain(..).partition(|e| waking.contains(&key(e)));
                    self.queue = kept;
                    failed.into()
                };
                for e in failed {
                    self.finish(e, Reply::exception("ServiceWakeFailed", reason.clone()))
                        .await;
                }
                if nothing_else {
                    for waiter in self.http_waiting.drain(..) {
                        let _ = waiter.send(Err(LeaseError::WakeFailed(reason.clone())));
                    }
                }
            }
            Internal::Exited(id, description) => {
                if let Some(slot) = self.slots.remove(&id)
                    && self.mode() == DeliveryMode::Server
                {
                    let instance = slot.instance.as_ref().map(|i| i.id().to_owned());
                    tracing::warn!(service = %self.service.qualified_name(), instance = instance.unwrap_or_default(), %description, "instance exited");
                }
            }
            Internal::Undelivered {
                execution,
                slot,
                detail,
            } => {
                let k = key(&execution);
                self.running.remove(&k);
                if let Some(gone) = self.slots.remove(&slot) {
                    tracing::warn!(service = %self.service.qualified_name(), instance = gone.instance.as_ref().map(|i| i.id().to_owned()).unwrap_or_default(), %detail, "an instance cannot be reached; giving it up");
                    self.stop_instance(gone);
                }
                let tries = self.undelivered.entry(k.clone()).or_insert(0);
                *tries += 1;
                if *tries >= MAX_UNDELIVERED {
                    self.undelivered.remove(&k);
                    self.finish(*execution, Reply::exception("ServiceCrashed", detail))
                        .await;
                } else {
                    let mut execution = *execution;
                    execution.status = ExecutionStatus::Queued;
                    execution.delivered_at = None;
                    execution.instance = None;
                    // Recorded as not delivered, so a takeover runs it.
                    if let Err(e) = self.ctx.store.update_execution(&execution, None).await {
                        tracing::warn!(error = %e, "could not record an undelivered question");
                    }
                    self.queue.push_front(execution);
                }
            }
            Internal::Thawed(id, Ok(())) => {
                let name = self.service.qualified_name();
                if let Some(slot) = self.slots.get_mut(&id)
                    && slot.frozen_since.is_none()
                    && !slot.ready
                    && let Some(instance) = &slot.instance
                {
                    self.ctx.metrics.thawed(&name, slot.asked_at.elapsed());
                    slot.ready = true;
                    slot.idle_since = Some(Instant::now());
                    slot.on_node = Some(self.ctx.metrics.on_node(instance.node()));
                }
            }
            Internal::Thawed(id, Err(why)) | Internal::FreezeFailed(id, why) => {
                if let Some(slot) = self.slots.remove(&id) {
                    let instance = slot.instance.as_ref().map(|i| i.id().to_owned());
                    tracing::warn!(service = %self.service.qualified_name(), instance = instance.unwrap_or_default(), %why, "cannot freeze or thaw an instance; stopping it");
                    self.stop_instance(slot);
                }
            }
            Internal::HttpDone(slot) => {
                if self.mode() == DeliveryMode::Server {
                    self.release(slot);
                }
            }
            Internal::Finished { key, slot } => self.done(&key, slot),
            Internal::Failed {
                execution,
                reply,
                slot,
            } => {
                self.done(&key(&execution), slot);
                self.finish(*execution, reply).await;
            }
            Internal::Retry { at, execution } => self.delayed.push((at, *execution)),
        }
    }

    /// A question's run ended: its slot is free (a job's goes).
    fn done(&mut self, key: &Key, slot: u64) {
        self.running.remove(key);
        self.undelivered.remove(key);
        if self.mode() == DeliveryMode::Job {
            self.slots.remove(&slot);
        } else {
            self.release(slot);
        }
    }

    fn release(&mut self, slot: u64) {
        if let Some(s) = self.slots.get_mut(&slot) {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Some(Instant::now());
            }
        }
    }

    /// Applies the scaling decision and assigns queued questions to instances
    /// with room. Returns when to look again.
    fn reconcile(&mut self) -> Option<Instant> {
        let revision = self.revision.clone()?;
        // Idle instances of an older revision go at once: new work uses the new one.
        let stale: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.revision != revision.name
                    && ((s.ready && s.in_flight == 0) || s.frozen_since.is_some())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(slot) = self.slots.remove(&id) {
                self.stop_instance(slot);
            }
        }
        let now = Instant::now();
        let views: Vec<InstanceView> = self
            .slots
            .iter()
            .map(|(id, s)| InstanceView {
                id: *id,
                ready: s.ready,
                in_flight: s.in_flight,
                idle_since: s.idle_since,
                frozen_since: s.frozen_since,
            })
            .collect();
        // A request whose client went away while it waited wants nothing.
        self.http_waiting.retain(|w| !w.is_closed());
        let gauges = (self.queue.len() + self.http_waiting.len(), self.slots.len());
        if gauges != self.gauges || self.gauged.as_deref() != Some(revision.name.as_str()) {
            let name = self.service.qualified_name();
            if let Some(old) = self.gauged.take().filter(|old| *old != revision.name) {
                self.ctx.metrics.forget_gauges(&name, &old);
            }
            self.gauges = gauges;
            self.gauged = Some(revision.name.clone());
            self.ctx
                .metrics
                .gauges(&name, &revision.name, gauges.0, gauges.1);
        }
        let decision = scale::decide(
            &self.service.scaling,
            revision.mode,
            self.queue.len() + self.http_waiting.len(),
            &views,
            now,
        );
        for id in decision.stop {
            if let Some(slot) = self.slots.remove(&id) {
                tracing::info!(service = %self.service.qualified_name(), instance = %slot.instance.as_ref().map(|i| i.id().to_owned()).unwrap_or_default(), "stopping idle instance");
                self.stop_instance(slot);
            }
        }
        if decision.start > 0 {
            tracing::debug!(service = %self.service.qualified_name(), queued = self.queue.len(), http_waiting = self.http_waiting.len(), instances = ?views, start = decision.start, "scaling up");
        }
        for id in decision.freeze {
            self.freeze_instance(id);
        }
        for id in decision.thaw {
            self.thaw_instance(id);
        }
        match revision.mode {
            DeliveryMode::Server => {
                for _ in 0..decision.start {
                    self.start_server_instance(&revision);
                }
                self.assign(&revision);
            }
            DeliveryMode::Job => {
                for _ in 0..decision.start {
                    if let Some(execution) = self.queue.pop_front() {
                        self.start_job(&revision, execution);
                    }
                }
            }
        }
        decision.wake_at
    }

    fn new_slot(&mut self, revision: &Revision) -> (u64, String) {
        let id = self.next_slot;
        self.next_slot += 1;
        let instance_id = format!(
            "{}-{}",
            self.service.qualified_name().replace('_', "-"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        self.slots.insert(
            id,
            Slot {
                instance: None,
                ready: false,
                in_flight: 0,
                idle_since: None,
                revision: revision.name.clone(),
                waking: Vec::new(),
                asked_at: Instant::now(),
                frozen_since: None,
                freezing: None,
                on_node: None,
            },
        );
        (id, instance_id)
    }

    fn spec(
        &self,
        revision: &Revision,
        instance_id: &str,
        listen: bool,
        extra: Vec<String>,
    ) -> InstanceSpec {
        instance_spec(
            &self.ctx.config,
            &self.service,
            revision,
            instance_id,
            listen,
            extra,
        )
    }

    fn start_server_instance(&mut self, revision: &Revision) {
        let (id, instance_id) = self.new_slot(revision);
        // The oldest queued questions not already waiting for an instance wait for this one.
        let waiting: std::collections::HashSet<Key> = self
            .slots
            .values()
            .flat_map(|s| s.waking.iter().cloned())
            .collect();
        let concurrency = self.service.scaling.concurrency as usize;
        let mut mine = Vec::new();
        for e in self
            .queue
            .iter_mut()
            .filter(|e| !waiting.contains(&key(e)))
            .take(concurrency)
        {
            e.cold_start = Some(true);
            e.status = ExecutionStatus::Waking;
            mine.push(key(e));
        }
        for e in self.queue.iter().filter(|e| mine.contains(&key(e))) {
            let (store, e) = (self.ctx.store.clone(), e.clone());
            tokio::spawn(async move {
                match store.update_execution(&e, None).await {
                    Ok(_) => {}
                    // Already delivered, finished or cancelled (this write
                    // is not waited for), or taken over: nothing to record.
                    Err(StoreError::Fenced { .. }) => {
                        tracing::debug!(question = %e.question_uuid, "an execution went past waking before it was recorded waking");
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "could not record an execution waking")
                    }
                }
            });
        }
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.waking = mine;
        }
        let spec = self.spec(revision, &instance_id, true, Vec::new());
        let source = revision.source.clone();
        let probe = crate::launch::probe_of(revision);
        let wake_timeout = self.service.scaling.wake_timeout;
        let tx = self.internal_tx.clone();
        tracing::info!(service = %self.service.qualified_name(), instance = %instance_id, revision = %revision.name, "waking an instance");
        let ctx = self.ctx.clone();
        let service_uuid = self.service.uuid;
        tokio::spawn(async move {
            let result = match ctx.launcher.start(service_uuid, &source, spec).await {
                Err(e) => Err(e),
                Ok(instance) => {
                    let instance = Arc::new(instance);
                    match instance.wait_ready(&probe, wake_timeout).await {
                        Ok(_) => Ok(instance),
                        Err(e) => {
                            instance.stop(STOP_GRACE).await;
                            Err(e.to_string())
                        }
                    }
                }
            };
            let _ = tx.send(Internal::Started(id, result));
        });
    }

    /// The ready instance of `revision` with room and the least work.
    fn least_loaded(&self, revision: &Revision) -> Option<u64> {
        let concurrency = self.service.scaling.concurrency;
        self.slots
            .iter()
            .filter(|(_, s)| s.ready && s.in_flight < concurrency && s.revision == revision.name)
            .min_by_key(|(_, s)| s.in_flight)
            .map(|(id, _)| *id)
    }

    /// Lends ready instances with room to waiting HTTP requests, least
    /// loaded first, oldest request first.
    fn lend(&mut self, revision: &Revision) {
        let http2 = revision.http2;
        while !self.http_waiting.is_empty() {
            let Some(slot_id) = self.least_loaded(revision) else {
                return;
            };
            let Some(waiter) = self.http_waiting.pop_front() else {
                return;
            };
            if waiter.is_closed() {
                continue;
            }
            let Some(slot) = self.slots.get_mut(&slot_id) else {
                return;
            };
            let Some(instance) = slot.instance.clone() else {
                return;
            };
            slot.in_flight += 1;
            slot.idle_since = None;
            let lease = HttpLease {
                instance,
                http2,
                _release: Release {
                    tx: self.internal_tx.clone(),
                    slot: slot_id,
                },
            };
            // A client gone since: the lease drops here and gives the slot back.
            let _ = waiter.send(Ok(lease));
        }
    }

    /// Delivers queued questions to ready instances with room, least loaded first.
    fn assign(&mut self, revision: &Revision) {
        // Requests first: a person (or a program) is waiting on the line.
        self.lend(revision);
        while !self.queue.is_empty() {
            let Some(slot_id) = self.least_loaded(revision) else {
                return;
            };
            let Some(mut execution) = self.queue.pop_front() else {
                return;
            };
            let Some(slot) = self.slots.get_mut(&slot_id) else {
                return;
            };
            slot.in_flight += 1;
            slot.idle_since = None;
            let Some(instance) = slot.instance.clone() else {
                return;
            };
            execution.status = ExecutionStatus::Running;
            execution.cold_start.get_or_insert(false);
            execution.revision = Some(revision.name.clone());
            execution.instance = Some(instance.id().to_owned());
            execution.delivered_at = Some(SystemTime::now());
            let task = self.spawn_delivery(execution.clone(), slot_id, instance, revision.http2);
            self.running.insert(
                key(&execution),
                Running {
                    execution,
                    slot: slot_id,
                    task,
                },
            );
        }
    }

    fn spawn_delivery(
        &self,
        execution: Execution,
        slot: u64,
        instance: Arc<Instance>,
        http2: bool,
    ) -> JoinHandle<()> {
        let ctx = self.ctx.clone();
        let tx = self.internal_tx.clone();
        let timeout = self.service.scaling.request_timeout;
        let subscription = format!(
            "projects/{}/subscriptions/{}",
            ctx.config.pubsub_project,
            self.service.subscription_id()
        );
        let sender = self.sender();
        tokio::spawn(async move {
            if let Err(e) = ctx.store.update_execution(&execution, None).await {
                tracing::warn!(error = %e, "could not record a delivery");
                if matches!(e, StoreError::Fenced { .. }) {
                    // Another dispatcher runs it now: not delivered here too.
                    let _ = tx.send(Internal::Finished {
                        key: key(&execution),
                        slot,
                    });
                    return;
                }
            }
            let target = match instance.url() {
                Some(url) => instance.bearer().await.map(|token| (url, token)),
                None => Err("the instance has no address to deliver to".to_owned()),
            };
            let outcome = match target {
                Ok((url, token)) => {
                    let envelope = deliver::push_envelope(
                        &execution.attributes,
                        &execution.data,
                        &execution.question_uuid,
                        &subscription,
                    );
                    let client = if http2 { &ctx.h2c } else { &ctx.http };
                    let sent = deliver::post(client, &url, token.as_deref(), &envelope, timeout);
                    match sent.await {
                        deliver::Outcome::NotDelivered { detail } => {
                            let _ = tx.send(Internal::Undelivered {
                                execution: Box::new(execution),
                                slot,
                                detail,
                            });
                            return;
                        }
                        deliver::Outcome::Crashed { detail } => {
                            // Its exit and last words reach us a moment after
                            // the connection broke.
                            let exit = tokio::time::timeout(CRASH_NOTICE, instance.exited())
                                .await
                                .ok();
                            let logs = rouse_runtime::tail_lines(instance.log_path(), 20);
                            Outcome::Reply(deliver::crashed(
                                &detail,
                                exit.as_ref().map(|e| e.description.as_str()),
                                &logs,
                            ))
                        }
                        other => other,
                    }
                }
                Err(why) => Outcome::Reply(Reply::exception("ServiceCrashed", why)),
            };
            match outcome {
                Outcome::Reply(reply) if platform_failure(&reply) => {
                    let _ = tx.send(Internal::Failed {
                        execution: Box::new(execution),
                        reply,
                        slot,
                    });
                }
                outcome => {
                    let k = key(&execution);
                    ctx.replier.complete(execution, outcome, &sender).await;
                    let _ = tx.send(Internal::Finished { key: k, slot });
                }
            }
        })
    }

    fn start_job(&mut self, revision: &Revision, mut execution: Execution) {
        let (slot_id, instance_id) = self.new_slot(revision);
        if let Some(slot) = self.slots.get_mut(&slot_id) {
            slot.ready = true;
            slot.in_flight = 1;
        }
        let input = Question::from_stored(execution.attributes.clone(), &execution.data)
            .map(|q| q.input_values().clone())
            .unwrap_or(serde_json::Value::Null);
        let mut spec = self.spec(
            revision,
            &instance_id,
            false,
            deliver::job_args(&execution.attributes, &input),
        );
        spec.env.insert(
            "ROUSE_QUESTION".into(),
            String::from_utf8_lossy(&execution.data).into_owned(),
        );
        spec.env.insert(
            "ROUSE_QUESTION_ATTRIBUTES".into(),
            serde_json::to_string(&execution.attributes).unwrap_or_default(),
        );
        execution.status = ExecutionStatus::Running;
        execution.cold_start = Some(true);
        execution.revision = Some(revision.name.clone());
        execution.instance = Some(instance_id.clone());
        let ctx = self.ctx.clone();
        let tx = self.internal_tx.clone();
        let source = revision.source.clone();
        let timeout = self.service.scaling.request_timeout;
        let sender = self.sender();
        let exec = execution.clone();
        let service_uuid = self.service.uuid;
        let task = tokio::spawn(async move {
            let mut execution = exec;
            let k = key(&execution);
            let outcome = match ctx.launcher.start(service_uuid, &source, spec).await {
                Err(e) => Outcome::Reply(Reply::exception("ServiceWakeFailed", e)),
                Ok(instance) => {
                    let now = SystemTime::now();
                    execution.ready_at = Some(now);
                    execution.delivered_at = Some(now);
                    if let Err(e) = ctx.store.update_execution(&execution, None).await {
                        tracing::warn!(error = %e, "could not record a job start");
                        if matches!(e, StoreError::Fenced { .. }) {
                            // Another dispatcher runs it now: not here too.
                            instance.stop(STOP_GRACE).await;
                            let _ = tx.send(Internal::Finished {
                                key: k,
                                slot: slot_id,
                            });
                            return;
                        }
                    }
                    match tokio::time::timeout(timeout, instance.exited()).await {
                        Ok(exit) => {
                            let logs = rouse_runtime::tail_lines(instance.log_path(), 50);
                            deliver::job_outcome(exit.code, &exit.description, &logs)
                        }
                        Err(_) => {
                            instance.stop(STOP_GRACE).await;
                            Outcome::Reply(Reply::exception(
                                "QuestionTimeout",
                                format!(
                                    "the job did not finish within its request timeout of {}s",
                                    timeout.as_secs()
                                ),
                            ))
                        }
                    }
                }
            };
            match outcome {
                Outcome::Reply(reply) if platform_failure(&reply) => {
                    let _ = tx.send(Internal::Failed {
                        execution: Box::new(execution),
                        reply,
                        slot: slot_id,
                    });
                }
                outcome => {
                    ctx.replier.complete(execution, outcome, &sender).await;
                    let _ = tx.send(Internal::Finished {
                        key: k,
                        slot: slot_id,
                    });
                }
            }
        });
        self.running.insert(
            key(&execution),
            Running {
                execution,
                slot: slot_id,
                task,
            },
        );
    }

    /// Freezes an idle instance (stops it where it cannot be frozen).
    fn freeze_instance(&mut self, id: u64) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(instance) = slot.instance.clone() else {
            return;
        };
        if !instance.can_freeze() {
            if let Some(slot) = self.slots.remove(&id) {
                tracing::info!(service = %self.service.qualified_name(), instance = %instance.id(), "stopping idle instance (it cannot be frozen)");
                self.stop_instance(slot);
            }
            return;
        }
        tracing::info!(service = %self.service.qualified_name(), instance = %instance.id(), "freezing idle instance");
        slot.ready = false;
        slot.idle_since = None;
        slot.frozen_since = Some(Instant::now());
        slot.on_node = None;
        let tx = self.internal_tx.clone();
        slot.freezing = Some(tokio::spawn(async move {
            if let Err(why) = instance.freeze().await {
                let _ = tx.send(Internal::FreezeFailed(id, why));
            }
        }));
    }

    /// Thaws a frozen instance for work; it takes work once it runs again.
    fn thaw_instance(&mut self, id: u64) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(instance) = slot.instance.clone() else {
            return;
        };
        tracing::debug!(service = %self.service.qualified_name(), instance = %instance.id(), "thawing a frozen instance");
        slot.frozen_since = None;
        slot.asked_at = Instant::now();
        let freezing = slot.freezing.take();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            if let Some(freezing) = freezing {
                let _ = freezing.await;
            }
            let _ = tx.send(Internal::Thawed(id, instance.thaw().await));
        });
    }

    fn stop_instance(&self, slot: Slot) {
        if let Some(instance) = slot.instance {
            self.ctx
                .tasks
                .spawn(async move { instance.stop(STOP_GRACE).await });
        }
    }

    fn heartbeats(&self) {
        let sender = self.sender();
        let events: Vec<_> = self
            .queue
            .iter()
            .chain(self.running.values().map(|r| &r.execution))
            .map(|e| build_event(&e.attributes, &sender, &Reply::Heartbeat))
            .collect();
        if events.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            for event in events {
                // A question that ended (or was cancelled) since the tick gets
                // no heartbeat after its terminal event.
                let retry = event.retry_count.unwrap_or(0);
                if let Ok(Some(_)) = ctx.store.terminal_event(&event.question_uuid, retry).await {
                    continue;
                }
                ctx.replier.send_now(event).await;
            }
        });
    }

    /// Ends a question with `reply`; one the platform failed runs again
    /// while its `retry_count` is below `--max-retries`, and after its last
    /// attempt goes to the dead-letter topic, if any, as well.
    async fn finish(&self, execution: Execution, reply: Reply) {
        if platform_failure(&reply) {
            if execution.retry_count < self.service.scaling.max_retries {
                match self.retry(execution, &reply).await {
                    Ok(()) => return,
                    Err(execution) => return self.fail(*execution, reply).await,
                }
            }
            if let Some(topic) = &self.service.dead_letter_topic {
                self.dead_letter(topic, &execution, &reply).await;
            }
        }
        self.fail(execution, reply).await;
    }

    /// Records `failed` as ended and its next attempt (`retry_count + 1`,
    /// queued, the question's `retry_count` attribute raised as Octue
    /// raises it), then hands that to this worker after the backoff. No
    /// exception is published for the failed attempt: an Octue asker stops
    /// at the first one it gets. The next attempt is in the store first, so
    /// a restart during the backoff runs it (at once). Gives the execution
    /// back when the next attempt could not be recorded.
    async fn retry(&self, mut failed: Execution, reply: &Reply) -> Result<(), Box<Execution>> {
        let attempt = failed.retry_count + 1;
        let wait = rouse_core::service::retry_backoff(failed.retry_count);
        let now = SystemTime::now();
        let mut next = failed.clone();
        next.retry_count = attempt;
        next.attributes
            .insert("retry_count".into(), attempt.to_string());
        next.status = ExecutionStatus::Queued;
        next.revision = None;
        next.instance = None;
        next.cold_start = None;
        next.reason = None;
        next.received_at = now;
        next.ready_at = None;
        next.delivered_at = None;
        next.finished_at = None;
        match self.ctx.store.insert_execution(&next).await {
            Ok(true) => {}
            // An attempt with that count exists (the asker retried too).
            Ok(false) => return Err(Box::new(failed)),
            Err(e) => {
                tracing::warn!(question = %failed.question_uuid, error = %e, "cannot record a question's next attempt; it fails instead");
                return Err(Box::new(failed));
            }
        }
        let why = exception_text(reply);
        failed.status = ExecutionStatus::Failed;
        failed.finished_at = Some(now);
        failed.reason = Some(format!(
            "{why}\nrun again as retry {attempt} after {}",
            humantime::format_duration(wait)
        ));
        if let Err(e) = self.ctx.store.update_execution(&failed, None).await {
            tracing::warn!(question = %failed.question_uuid, error = %e, "cannot record a failed attempt");
        }
        tracing::info!(service = %self.service.qualified_name(), question = %failed.question_uuid, attempt, ?wait, "running a question again after the platform failed it");
        self.ctx.metrics.retried(&self.service.qualified_name());
        // Held by this worker until then (a stop leaves it in the store,
        // for the next start); a cancel finds it there.
        let _ = self.internal_tx.send(Internal::Retry {
            at: Instant::now() + wait,
            execution: Box::new(next),
        });
        Ok(())
    }

    /// Publishes a question whose last attempt the platform failed to the
    /// service's dead-letter topic; a failure to publish is logged (the
    /// execution keeps the question and why it failed).
    async fn dead_letter(&self, topic: &str, execution: &Execution, reply: &Reply) {
        let Some(letters) = &self.ctx.dead_letters else {
            return;
        };
        let failure = exception_text(reply);
        let name = self.service.qualified_name();
        match letters.publish(topic, &name, execution, &failure).await {
            Ok(id) => {
                tracing::info!(service = %name, question = %execution.question_uuid, topic, message = %id, "published a failed question to the dead-letter topic");
                self.ctx.metrics.dead_lettered(&name);
            }
            Err(e) => {
                tracing::error!(service = %name, question = %execution.question_uuid, topic, error = %e, "cannot publish a failed question to the dead-letter topic; the execution keeps it")
            }
        }
    }

    async fn fail(&self, execution: Execution, reply: Reply) {
        let status = match reply {
            Reply::Result { .. } => ExecutionStatus::Succeeded,
            _ => ExecutionStatus::Failed,
        };
        self.finish_as(execution, reply, status).await;
    }

    async fn finish_as(&self, execution: Execution, reply: Reply, status: ExecutionStatus) {
        self.ctx
            .replier
            .finish(execution, reply, status, &self.sender())
            .await;
    }

    /// The service is gone or the dispatcher stops: stop every instance.
    /// Questions still queued or running stay recorded as unfinished, so a
    /// restart resumes them.
    async fn shutdown(&mut self) {
        if let Some(revision) = self.gauged.take() {
            self.ctx
                .metrics
                .forget_gauges(&self.service.qualified_name(), &revision);
        }
        for (_, run) in self.running.drain() {
            run.task.abort();
        }
        let stops: Vec<_> = self
            .slots
            .drain()
            .filter_map(|(_, s)| s.instance)
            .map(|i| tokio::spawn(async move { i.stop(STOP_GRACE).await }))
            .collect();
        for s in stops {
            let _ = s.await;
        }
    }
}

/// How long a delivery that lost its connection waits for the instance's
/// exit before reporting the crash (exits are noticed within a second).
const CRASH_NOTICE: Duration = Duration::from_secs(1);

/// How long an instance gets to exit after SIGTERM / `docker stop`.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
