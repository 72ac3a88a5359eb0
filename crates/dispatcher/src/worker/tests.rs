//! The worker with a paused clock: a real store (SQLite in a temporary
//! directory), real HTTP deliveries, and fakes for what runs instances and
//! where events go.
//!
//! - `FakeRuntime` starts [`Instance::fake`]s: each listens on a port of its
//!   own (a tiny HTTP server that holds every question for `hold`, then
//!   answers with its instance id), is ready `cold_start` after it started,
//!   and runs jobs for `hold`. It records what started, what is alive, and
//!   how many questions were in flight at once.
//! - `FakePublisher` keeps every event the worker published.
//! - `OffClock` runs each store call in `spawn_blocking`: the store's writes
//!   are committed by a thread of its own, and while a test waits for one
//!   the paused clock would otherwise jump to the next timer.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rouse_core::protocol::Attributes;
use rouse_core::revision::{
    DeliveryMode, EventRecord, Execution, ExecutionStatus, Revision, RevisionSource,
};
use rouse_core::{ProjectName, Scaling, Service, ServiceName};
use rouse_pubsub::{Outgoing, PubSubError};
use rouse_runtime::{Instance, InstanceSpec, Runtime, RuntimeError};
use rouse_store::{
    EventStore, ExecutionStore, NewEvent, NewRevision, RevisionStore, SqliteStore, Store,
    StoreError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{Context, Worker, WorkerMsg};
use crate::launch::Launcher;
use crate::replies::{Ledger, Publish, Replier};
use crate::{DispatcherConfig, InstanceSecrets};

/// Long enough for anything these tests wait for, in virtual time.
const PATIENCE: Duration = Duration::from_secs(3600);

/// What the fake runtime saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Instance ids, in start order.
    started: Vec<String>,
    /// Started and not yet exited.
    alive: usize,
    max_alive: usize,
    /// Questions an instance holds right now.
    in_flight: usize,
    max_in_flight: usize,
    /// When each answer was sent, in order.
    answered: Vec<Instant>,
    /// Instance id and when it exited (stopped, or a job that ended).
    exits: Vec<(String, Instant)>,
    /// Every instance started, as the runtime sees it.
    fakes: Vec<rouse_runtime::Fake>,
}

struct FakeRuntime {
    cold_start: Duration,
    hold: Duration,
    seen: Arc<watch::Sender<Seen>>,
    /// Each serving instance's listener task, by instance id.
    servers: Arc<std::sync::Mutex<HashMap<String, tokio::task::AbortHandle>>>,
    /// How many of the next starts fail (a wake failure).
    fail_starts: Arc<std::sync::atomic::AtomicU32>,
}

impl FakeRuntime {
    fn new(cold_start: Duration, hold: Duration) -> Arc<Self> {
        Arc::new(Self {
            cold_start,
            hold,
            seen: Arc::new(watch::channel(Seen::default()).0),
            servers: Arc::default(),
            fail_starts: Arc::default(),
        })
    }

    /// Makes the next `n` starts fail.
    fn fail_next_starts(&self, n: u32) {
        self.fail_starts
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops instance `id` answering (its listener closes) without any
    /// notice of an exit: what a lost node looks like from here.
    fn cut_off(&self, id: &str) {
        if let Some(server) = self.servers.lock().expect("servers").remove(id) {
            server.abort();
        }
    }

    /// Waits until what was seen satisfies `f`.
    async fn until(&self, what: &str, f: impl FnMut(&Seen) -> bool) -> Seen {
        let mut seen = self.seen.subscribe();
        match tokio::time::timeout(PATIENCE, seen.wait_for(f)).await {
            Ok(Ok(seen)) => seen.clone(),
            _ => panic!("gave up waiting for {what}; seen: {:?}", self.seen.borrow()),
        }
    }

    fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// Serves push deliveries: each is held for `hold`, then answered with
    /// the instance id.
    async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener, id: String) {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (this, id) = (self.clone(), id.clone());
            tokio::spawn(async move {
                if read_request(&mut conn).await.is_none() {
                    return;
                }
                this.seen.send_modify(|s| {
                    s.in_flight += 1;
                    s.max_in_flight = s.max_in_flight.max(s.in_flight);
                });
                let _answered = Answered(this.clone());
                let mut rest = [0u8; 1];
                tokio::select! {
                    () = tokio::time::sleep(this.hold) => {}
                    // The dispatcher dropped the delivery (a cancel, a stop).
                    _ = conn.read(&mut rest) => return,
                }
                let body = serde_json::json!({ "instance": id }).to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }
}

/// Counts a question out of flight when its handler ends, answered or not
/// (a cancelled delivery drops the connection).
struct Answered(Arc<FakeRuntime>);

impl Drop for Answered {
    fn drop(&mut self) {
        let now = Instant::now();
        self.0.seen.send_modify(|s| {
            s.in_flight -= 1;
            s.answered.push(now);
        });
    }
}

/// Reads one HTTP request (headers and a `content-length` body).
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let headers = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length: usize = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Some(buf[end + 4..end + 4 + length].to_vec());
        }
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        use std::sync::atomic::Ordering;
        let failing = self
            .fail_starts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(RuntimeError::Platform {
                platform: "the fake runtime",
                action: "start",
                target: spec.instance_id,
                reason: "told to fail".into(),
            });
        }
        let this = Arc::new(Self {
            cold_start: self.cold_start,
            hold: self.hold,
            seen: self.seen.clone(),
            servers: self.servers.clone(),
            fail_starts: self.fail_starts.clone(),
        });
        let id = spec.instance_id.clone();
        let mut server = None;
        let addr: Option<SocketAddr> = if spec.listen {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(RuntimeError::Port)?;
            let addr = listener.local_addr().map_err(RuntimeError::Port)?;
            let task = tokio::spawn(this.clone().serve(listener, id.clone()));
            self.servers
                .lock()
                .expect("servers")
                .insert(id.clone(), task.abort_handle());
            server = Some(task);
            Some(addr)
        } else {
            None
        };
        let (instance, fake) = Instance::fake(&id, addr, spec.log_path.clone());
        self.seen.send_modify(|s| {
            s.fakes.push(fake.clone());
            s.started.push(id.clone());
            s.alive += 1;
            s.max_alive = s.max_alive.max(s.alive);
        });
        let (cold_start, hold) = (self.cold_start, self.hold);
        let running = fake.clone();
        let (log_path, job) = (spec.log_path, server.is_none());
        tokio::spawn(async move {
            tokio::time::sleep(cold_start).await;
            running.ready();
            if job {
                // A job: runs for `hold`, prints its result, exits.
                tokio::time::sleep(hold).await;
                if let Some(dir) = log_path.parent() {
                    std::fs::create_dir_all(dir).expect("log dir");
                }
                std::fs::write(&log_path, "{\"job\": \"done\"}\n").expect("job log");
                running.exit(Some(0), "exited with code 0");
            }
        });
        tokio::spawn(async move {
            fake.exited().await;
            if let Some(server) = server {
                server.abort();
            }
            let now = Instant::now();
            this.seen.send_modify(|s| {
                s.alive -= 1;
                s.exits.push((id, now));
            });
        });
        Ok(instance)
    }
}

/// Keeps every published event.
#[derive(Default)]
struct FakePublisher {
    events: watch::Sender<Vec<(Outgoing, Instant)>>,
}

#[async_trait::async_trait]
impl Publish for FakePublisher {
    async fn publish(&self, message: Outgoing) -> Result<String, PubSubError> {
        let now = Instant::now();
        let mut id = 0;
        self.events.send_modify(|events| {
            events.push((message, now));
            id = events.len();
        });
        Ok(id.to_string())
    }
}

impl FakePublisher {
    /// Waits for the terminal event (`result` or `exception`) of a question;
    /// returns its data and when it was published.
    async fn terminal(&self, question_uuid: &str) -> (serde_json::Value, Instant) {
        let found = |events: &Vec<(Outgoing, Instant)>| {
            events.iter().find_map(|(m, at)| {
                let data: serde_json::Value = serde_json::from_slice(&m.data).ok()?;
                let terminal = matches!(data["kind"].as_str(), Some("result" | "exception"));
                (terminal
                    && m.attributes.get("question_uuid").map(String::as_str) == Some(question_uuid))
                .then_some((data, *at))
            })
        };
        let mut events = self.events.subscribe();
        match tokio::time::timeout(PATIENCE, events.wait_for(|e| found(e).is_some())).await {
            Ok(Ok(events)) => found(&events).expect("found"),
            _ => panic!("no terminal event for question {question_uuid}"),
        }
    }
}

/// The real store, called off the paused clock (see the module docs).
struct OffClock(SqliteStore);

async fn off_clock<T, F>(call: F) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(call))
        .await
        .expect("store call")
}

#[async_trait::async_trait]
impl Ledger for OffClock {
    async fn serving_revision(&self, service_uuid: Uuid) -> Result<Option<Revision>, StoreError> {
        let store = self.0.clone();
        off_clock(async move { store.serving_revision(service_uuid).await }).await
    }
    async fn insert_execution(&self, execution: &Execution) -> Result<bool, StoreError> {
        let (store, execution) = (self.0.clone(), execution.clone());
        off_clock(async move { store.insert_execution(&execution).await }).await
    }
    async fn update_execution(
        &self,
        execution: &Execution,
        event: Option<&NewEvent>,
    ) -> Result<Option<i64>, StoreError> {
        let (store, execution, event) = (self.0.clone(), execution.clone(), event.cloned());
        off_clock(async move { store.update_execution(&execution, event.as_ref()).await }).await
    }
    async fn terminal_event(
        &self,
        question_uuid: &str,
        retry_count: u32,
    ) -> Result<Option<String>, StoreError> {
        let (store, question_uuid) = (self.0.clone(), question_uuid.to_owned());
        off_clock(async move { store.terminal_event(&question_uuid, retry_count).await }).await
    }
    async fn record_event(
        &self,
        event: &NewEvent,
        published: bool,
    ) -> Result<Option<i64>, StoreError> {
        let (store, event) = (self.0.clone(), event.clone());
        off_clock(async move { store.record_event(&event, published).await }).await
    }
    async fn mark_published(&self, event_id: i64) -> Result<(), StoreError> {
        let store = self.0.clone();
        off_clock(async move { store.mark_published(event_id).await }).await
    }
    async fn unpublished_events(&self) -> Result<Vec<EventRecord>, StoreError> {
        let store = self.0.clone();
        off_clock(async move { store.unpublished_events().await }).await
    }
}

struct NoSecrets;

#[async_trait::async_trait]
impl InstanceSecrets for NoSecrets {
    async fn env(&self, _: Uuid) -> Result<BTreeMap<String, String>, String> {
        Ok(BTreeMap::new())
    }
}

/// A worker of one service, running.
struct Harness {
    ctx: Arc<Context>,
    store: SqliteStore,
    runtime: Arc<FakeRuntime>,
    publisher: Arc<FakePublisher>,
    service: Service,
    tx: mpsc::Sender<WorkerMsg>,
    stop: CancellationToken,
    worker: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(
        scaling: Scaling,
        mode: DeliveryMode,
        cold_start: Duration,
        hold: Duration,
    ) -> Self {
        Self::start_with(scaling, Some(mode), cold_start, hold).await
    }

    /// A server-mode worker of one instance at most, with `max_retries`,
    /// whose next `failures` instance starts fail.
    async fn failing_wakes(max_retries: u32, failures: u32) -> Self {
        let settings = Scaling {
            max_retries,
            ..scaling(0, 1, 1)
        };
        let h = Self::start(
            settings,
            DeliveryMode::Server,
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await;
        h.runtime.fail_next_starts(failures);
        h
    }

    /// A worker that starts with a revision in `mode`, or with none.
    async fn start_with(
        scaling: Scaling,
        mode: Option<DeliveryMode>,
        cold_start: Duration,
        hold: Duration,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("rouse.db")).expect("store");
        let project = ProjectName::parse("p").expect("valid");
        let name = ServiceName::parse(&project, "svc").expect("valid");
        let mut service = Service::new(project, name, Uuid::new_v4(), SystemTime::now());
        service.scaling = scaling;
        let inserted = store.clone();
        let s = service.clone();
        off_clock(async move { inserted.insert_service(&s).await })
            .await
            .expect("insert service");
        let revision = mode.map(|mode| Revision {
            name: "svc-00001".into(),
            service_uuid: service.uuid,
            seq: 1,
            source: fake_source(),
            mode,
            probe_path: None,
            http2: false,
            created_at: SystemTime::now(),
        });
        let runtime = FakeRuntime::new(cold_start, hold);
        let publisher = Arc::new(FakePublisher::default());
        let ledger: Arc<dyn Ledger> = Arc::new(OffClock(store.clone()));
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let ctx = Arc::new(Context {
            config: DispatcherConfig {
                network_topic: "octue.services".into(),
                pubsub_project: "test".into(),
                emulator_host: None,
                logs_dir: dir.path().join("logs"),
                heartbeat_interval: DispatcherConfig::DEFAULT_HEARTBEAT,
                queue_capacity: DispatcherConfig::DEFAULT_QUEUE_CAPACITY,
                resync_interval: DispatcherConfig::DEFAULT_RESYNC,
            },
            store: ledger.clone(),
            replier: Replier::new(publisher.clone(), ledger, metrics.clone()),
            dead_letters: None,
            metrics,
            http: reqwest::Client::new(),
            h2c: reqwest::Client::new(),
            launcher: Launcher {
                process: runtime.clone(),
                docker: None,
                secrets: Arc::new(NoSecrets),
            },
            tasks: TaskTracker::new(),
        });
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel(crate::config::WORKER_CHANNEL);
        let worker = Worker::new(ctx.clone(), service.clone(), revision, stop.clone());
        let worker = ctx.tasks.spawn(worker.run(rx));
        Self {
            ctx,
            store,
            runtime,
            publisher,
            service,
            tx,
            stop,
            worker,
            _dir: dir,
        }
    }

    /// Records a question, as intake does, and hands it to the worker.
    async fn ask(&self, question_uuid: &str) {
        let attributes: Attributes = [
            ("question_uuid", question_uuid),
            ("sender", "tests/asker:1.0.0"),
            ("sender_type", "PARENT"),
            ("retry_count", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let execution = Execution::received(
            question_uuid.to_owned(),
            0,
            self.service.uuid,
            attributes,
            br#"{"kind": "question", "input_values": {"n": 1}}"#.to_vec(),
            SystemTime::now(),
        );
        let (store, e) = (self.store.clone(), execution.clone());
        let inserted = off_clock(async move { store.insert_execution(&e).await })
            .await
            .expect("record the question");
        assert!(inserted);
        self.tx
            .send(WorkerMsg::Run(Box::new(execution)))
            .await
            .expect("worker running");
    }

    /// Each attempt's retry count and status, first first.
    async fn attempt_statuses(&self, question_uuid: &str) -> Vec<(u32, ExecutionStatus)> {
        let attempts = self.attempts(question_uuid).await;
        attempts.iter().map(|e| (e.retry_count, e.status)).collect()
    }

    /// Every attempt of a question, first first.
    async fn attempts(&self, question_uuid: &str) -> Vec<Execution> {
        let (store, service) = (self.store.clone(), self.service.uuid);
        let mut all =
            off_clock(async move { store.list_executions(Some(service), None, 100).await })
                .await
                .expect("read");
        all.retain(|e| e.question_uuid == question_uuid);
        all.sort_by_key(|e| e.retry_count);
        all
    }

    async fn execution(&self, question_uuid: &str) -> Execution {
        let (store, q) = (self.store.clone(), question_uuid.to_owned());
        off_clock(async move { store.get_execution(&q).await })
            .await
            .expect("read")
            .expect("recorded")
    }

    async fn cancel(&self, question_uuid: &str) -> bool {
        let (done, cancelled) = oneshot::channel();
        let msg = WorkerMsg::Cancel {
            question_uuid: question_uuid.to_owned(),
            done,
        };
        self.tx.send(msg).await.expect("worker running");
        cancelled.await.expect("worker answers")
    }

    /// Stops the worker as the dispatcher does at shutdown, and waits for it
    /// and everything it handed off.
    async fn shut_down(self) -> Arc<FakeRuntime> {
        self.stop.cancel();
        self.ctx.tasks.close();
        tokio::time::timeout(PATIENCE, self.ctx.tasks.wait())
            .await
            .expect("the worker and its stops end");
        self.worker.await.expect("the worker ended cleanly");
        self.runtime
    }
}

fn fake_source() -> RevisionSource {
    RevisionSource::Command {
        program: "fake".into(),
        args: Vec::new(),
        workdir: PathBuf::from("/"),
    }
}

fn scaling(min: u32, max: u32, concurrency: u32) -> Scaling {
    Scaling {
        min_instances: min,
        max_instances: max,
        concurrency,
        idle_timeout: Duration::from_secs(60),
        wake_timeout: Duration::from_secs(120),
        request_timeout: Duration::from_secs(300),
        ..Scaling::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_wakes_one_instance_and_the_question_waits_for_it() {
    let cold_start = Duration::from_secs(2);
    let h = Harness::start(
        scaling(0, 3, 1),
        DeliveryMode::Server,
        cold_start,
        Duration::ZERO,
    )
    .await;
    assert!(
        h.runtime.seen().started.is_empty(),
        "scaled to zero at rest"
    );
    let asked = Instant::now();
    h.ask("q-cold").await;
    let (data, at) = h.publisher.terminal("q-cold").await;
    let seen = h.runtime.seen();
    assert_eq!(seen.started.len(), 1, "{seen:?}");
    assert_eq!(data["kind"], "result", "{data}");
    assert_eq!(data["output_values"]["instance"], seen.started[0].as_str());
    assert!(
        at - asked >= cold_start,
        "answered before the instance woke"
    );
    let execution = h.execution("q-cold").await;
    assert_eq!(execution.status, ExecutionStatus::Succeeded);
    assert_eq!(execution.cold_start, Some(true));
    assert_eq!(
        execution.instance.as_deref(),
        Some(seen.started[0].as_str())
    );
    assert_eq!(execution.revision.as_deref(), Some("svc-00001"));
    assert!(execution.ready_at.is_some() && execution.finished_at.is_some());
}

#[tokio::test(start_paused = true)]
async fn an_idle_instance_stops_after_the_idle_timeout_and_the_next_question_wakes_another() {
    let h = Harness::start(
        scaling(0, 3, 1),
        DeliveryMode::Server,
        Duration::from_secs(1),
        Duration::ZERO,
    )
    .await;
    let idle_timeout = h.service.scaling.idle_timeout;
    h.ask("q-1").await;
    h.publisher.terminal("q-1").await;
    let seen = h.runtime.until("scale to zero", |s| s.alive == 0).await;
    let (answered, stopped) = (seen.answered[0], seen.exits[0].1);
    assert!(
        stopped - answered >= idle_timeout,
        "stopped {:?} after its last answer, before the idle timeout",
        stopped - answered
    );
    assert!(
        stopped - answered < idle_timeout + Duration::from_secs(1),
        "stopped only {:?} after its last answer",
        stopped - answered
    );
    h.ask("q-2").await;
    h.publisher.terminal("q-2").await;
    assert_eq!(h.runtime.seen().started.len(), 2, "woken again");
    assert_eq!(h.execution("q-2").await.cold_start, Some(true));
}

#[tokio::test(start_paused = true)]
async fn min_instances_stay_warm_and_answer_without_a_cold_start() {
    let h = Harness::start(
        scaling(1, 3, 1),
        DeliveryMode::Server,
        Duration::from_secs(1),
        Duration::ZERO,
    )
    .await;
    h.runtime.until("the warm instance", |s| s.alive == 1).await;
    // Ten idle timeouts with nothing to do.
    tokio::time::sleep(h.service.scaling.idle_timeout * 10).await;
    let seen = h.runtime.seen();
    assert_eq!((seen.started.len(), seen.alive), (1, 1), "{seen:?}");
    h.ask("q-warm").await;
    let (data, _) = h.publisher.terminal("q-warm").await;
    assert_eq!(data["output_values"]["instance"], seen.started[0].as_str());
    assert_eq!(h.execution("q-warm").await.cold_start, Some(false));
    assert_eq!(h.runtime.seen().started.len(), 1, "no other instance woke");
}

/// An instance that cannot be reached (its node's engine gone, no exit
/// notice yet): the question never reached it, so it is given up and the
/// question delivered to a new instance instead of failing.
#[tokio::test(start_paused = true)]
async fn a_question_that_cannot_reach_its_instance_goes_to_another() {
    let h = Harness::start(
        scaling(1, 3, 1),
        DeliveryMode::Server,
        Duration::from_secs(1),
        Duration::ZERO,
    )
    .await;
    let warm = h.runtime.until("the warm instance", |s| s.alive == 1).await;
    let lost = warm.started[0].clone();
    h.runtime.cut_off(&lost);
    h.ask("q-lost").await;
    let (data, _) = h.publisher.terminal("q-lost").await;
    assert_eq!(data["kind"], "result", "{data}");
    let seen = h.runtime.seen();
    assert_eq!(seen.started.len(), 2, "{seen:?}");
    assert_eq!(data["output_values"]["instance"], seen.started[1].as_str());
    assert!(
        seen.exits.iter().any(|(id, _)| *id == lost),
        "the unreachable instance was stopped: {seen:?}"
    );
    let execution = h.execution("q-lost").await;
    assert_eq!(execution.status, ExecutionStatus::Succeeded);
    assert_eq!(
        execution.instance.as_deref(),
        Some(seen.started[1].as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn a_question_the_platform_failed_runs_again_after_a_backoff() {
    let h = Harness::failing_wakes(2, 2).await;
    let asked = Instant::now();
    h.ask("q-retried").await;
    let (data, at) = h.publisher.terminal("q-retried").await;
    assert_eq!(data["kind"], "result", "the third attempt answers: {data}");
    assert!(
        at - asked >= Duration::from_secs(3),
        "1 s, then 2 s of backoff: {:?}",
        at - asked
    );
    let events = h.publisher.events.borrow().clone();
    let mine: Vec<&Outgoing> = events
        .iter()
        .map(|(m, _)| m)
        .filter(|m| m.attributes.get("question_uuid").map(String::as_str) == Some("q-retried"))
        .collect();
    assert!(
        mine.iter()
            .all(|m| !String::from_utf8_lossy(&m.data).contains("\"exception\"")),
        "a failed attempt publishes no exception (an Octue asker stops at the first)"
    );
    assert_eq!(
        h.attempt_statuses("q-retried").await,
        [
            (0, ExecutionStatus::Failed),
            (1, ExecutionStatus::Failed),
            (2, ExecutionStatus::Succeeded)
        ]
    );
    let attempts = h.attempts("q-retried").await;
    let reason = attempts[0].reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("ServiceWakeFailed") && reason.contains("run again as retry 1 after 1s"),
        "{reason}"
    );
    assert_eq!(
        attempts[2].attributes["retry_count"], "2",
        "the question's retry_count is raised as Octue raises it"
    );
    assert_eq!(
        h.execution("q-retried").await.retry_count,
        2,
        "the newest attempt"
    );
}

#[tokio::test(start_paused = true)]
async fn a_question_waiting_out_its_backoff_can_be_cancelled() {
    let h = Harness::failing_wakes(3, 1).await;
    h.ask("q-backoff").await;
    // Attempt 0 failed; attempt 1 waits out its second of backoff.
    let deadline = Instant::now() + PATIENCE;
    while h.attempt_statuses("q-backoff").await.len() < 2 {
        assert!(Instant::now() < deadline, "no second attempt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(h.cancel("q-backoff").await, "the waiting attempt is found");
    let (data, _) = h.publisher.terminal("q-backoff").await;
    assert_eq!(data["exception_type"], "QuestionCancelled", "{data}");
    assert_eq!(
        h.attempt_statuses("q-backoff").await,
        [
            (0, ExecutionStatus::Failed),
            (1, ExecutionStatus::Cancelled)
        ]
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        h.runtime.seen().started.is_empty(),
        "nothing woke for the cancelled question: {:?}",
        h.runtime.seen()
    );
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_s_failure_is_the_answer() {
    let h = Harness::failing_wakes(1, 5).await;
    h.ask("q-failing").await;
    let (data, _) = h.publisher.terminal("q-failing").await;
    assert_eq!(data["kind"], "exception", "{data}");
    assert_eq!(data["exception_type"], "ServiceWakeFailed", "{data}");
    assert_eq!(
        h.attempt_statuses("q-failing").await,
        [(0, ExecutionStatus::Failed), (1, ExecutionStatus::Failed)]
    );
    let exceptions = h
        .publisher
        .events
        .borrow()
        .iter()
        .filter(|(m, _)| String::from_utf8_lossy(&m.data).contains("\"exception\""))
        .count();
    assert_eq!(exceptions, 1, "one exception, the last attempt's");
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_bounded_by_max_instances_times_concurrency() {
    let (max_instances, concurrency) = (3, 2);
    let h = Harness::start(
        scaling(0, max_instances, concurrency),
        DeliveryMode::Server,
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .await;
    let questions: Vec<String> = (0..50).map(|i| format!("q-burst-{i:02}")).collect();
    for q in &questions {
        h.ask(q).await;
    }
    for q in &questions {
        let (data, _) = h.publisher.terminal(q).await;
        assert_eq!(data["kind"], "result", "{q}: {data}");
    }
    let seen = h.runtime.seen();
    let bound = (max_instances * concurrency) as usize;
    assert_eq!(
        seen.max_in_flight, bound,
        "at most (and, with 50 waiting, exactly) max_instances × concurrency at once"
    );
    assert_eq!(seen.max_alive, max_instances as usize);
    assert_eq!(
        seen.started.len(),
        max_instances as usize,
        "none stopped and restarted during the burst: {seen:?}"
    );
    for q in &questions {
        assert_eq!(h.execution(q).await.status, ExecutionStatus::Succeeded);
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_question_answers_it_cancelled_and_keeps_the_instance() {
    let h = Harness::start(
        scaling(0, 3, 1),
        DeliveryMode::Server,
        Duration::from_secs(1),
        Duration::from_secs(3600 * 24),
    )
    .await;
    h.ask("q-long").await;
    h.runtime.until("the delivery", |s| s.in_flight == 1).await;
    assert!(h.cancel("q-long").await, "a running question is cancelled");
    let (data, _) = h.publisher.terminal("q-long").await;
    assert_eq!(data["exception_type"], "QuestionCancelled", "{data}");
    assert_eq!(
        h.execution("q-long").await.status,
        ExecutionStatus::Cancelled
    );
    h.runtime
        .until("the delivery to be dropped", |s| s.in_flight == 0)
        .await;
    assert!(!h.cancel("q-long").await, "nothing left to cancel");
    assert!(!h.cancel("q-unknown").await);
    // The instance is free again: with a concurrency of 1, the next
    // question goes to it rather than waking another.
    h.ask("q-next").await;
    let seen = h
        .runtime
        .until("the next delivery", |s| s.in_flight == 1)
        .await;
    assert_eq!((seen.started.len(), seen.alive), (1, 1), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_job_stops_its_instance() {
    let h = Harness::start(
        scaling(0, 3, 1),
        DeliveryMode::Job,
        Duration::ZERO,
        Duration::from_secs(3600 * 24),
    )
    .await;
    h.ask("q-job").await;
    h.runtime.until("the job", |s| s.alive == 1).await;
    assert!(h.cancel("q-job").await);
    let (data, _) = h.publisher.terminal("q-job").await;
    assert_eq!(data["exception_type"], "QuestionCancelled", "{data}");
    h.runtime
        .until("the job's instance to stop", |s| s.alive == 0)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_job_runs_in_an_instance_of_its_own_and_its_output_is_the_result() {
    let h = Harness::start(
        scaling(0, 3, 1),
        DeliveryMode::Job,
        Duration::ZERO,
        Duration::from_secs(5),
    )
    .await;
    h.ask("q-job-1").await;
    h.ask("q-job-2").await;
    for q in ["q-job-1", "q-job-2"] {
        let (data, _) = h.publisher.terminal(q).await;
        assert_eq!(data["output_values"]["job"], "done", "{data}");
    }
    assert_eq!(
        h.runtime.seen().started.len(),
        2,
        "one instance per question"
    );
}

#[tokio::test(start_paused = true)]
async fn stopping_the_worker_stops_every_instance_before_it_ends() {
    let h = Harness::start(
        scaling(2, 3, 1),
        DeliveryMode::Server,
        Duration::from_secs(1),
        Duration::from_secs(3600 * 24),
    )
    .await;
    h.runtime
        .until("two warm instances", |s| s.alive == 2)
        .await;
    h.ask("q-in-flight").await;
    h.runtime.until("the delivery", |s| s.in_flight == 1).await;
    let runtime = h.shut_down().await;
    let seen = runtime.seen();
    assert_eq!(seen.fakes.len(), 2);
    for fake in &seen.fakes {
        assert_eq!(
            fake.exit_info().map(|e| e.description),
            Some("stopped".to_owned()),
            "every instance was stopped by the time the worker ended"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_without_a_revision_reads_the_store_before_refusing() {
    let h = Harness::start_with(
        scaling(0, 3, 1),
        None,
        Duration::from_secs(1),
        Duration::ZERO,
    )
    .await;
    h.ask("q-early").await;
    let (data, _) = h.publisher.terminal("q-early").await;
    assert_eq!(data["exception_type"], "ServiceNotDeployed", "{data}");
    // A revision registered by another process: no update reaches the worker.
    let (store, service) = (h.store.clone(), h.service.clone());
    let revision = NewRevision {
        source: fake_source(),
        mode: DeliveryMode::Server,
        probe_path: None,
        http2: false,
    };
    off_clock(async move {
        store
            .insert_revision(&service, &revision, SystemTime::now())
            .await
    })
    .await
    .expect("register a revision");
    h.ask("q-later").await;
    let (data, _) = h.publisher.terminal("q-later").await;
    assert_eq!(data["kind"], "result", "{data}");
    assert_eq!(
        h.execution("q-later").await.revision.as_deref(),
        Some("svc-00001")
    );
}
