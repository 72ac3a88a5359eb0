//! Rouse's dispatcher: wakes a service when a question arrives, delivers it,
//! makes sure the asker hears every reply, and stops idle instances.
//!
//! - [`intake`]: streaming pull on every service topic and on the network
//!   topic; a question is recorded in the store before it is acknowledged to
//!   Pub/Sub, and `(question_uuid, retry_count)` runs at most once.
//! - [`worker`]: one actor per service with a bounded queue, its instances
//!   and its executions.
//! - [`scale`]: the pure scaling decision the workers apply.
//! - [`deliver`]: push envelopes and job arguments, and what an answer means.
//! - [`replies`]: reply events and their outbox.
//!
//! The registry of services is read from the store: on every change the API
//! reports ([`Dispatcher::services_changed`]) and, as a backstop for a
//! control plane in another process, every [`DispatcherConfig::resync_interval`].

pub mod deliver;
pub mod intake;
pub mod replies;
pub mod routes;
pub mod scale;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rouse_authz::Authority;
use rouse_core::protocol::Reply;
use rouse_core::revision::{Execution, ExecutionStatus, Revision, RevisionSource};
use rouse_core::{ProjectName, Service, ServiceName};
use rouse_pubsub::{PubSub, PubSubError, SubscriptionSpec};
use rouse_runtime::Runtime;
use rouse_store::{DispatchStore, RolloutStore, Store};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::deliver::Outcome;
use crate::replies::{Replier, build_event};
use crate::worker::{Worker, WorkerMsg};

/// Everything the dispatcher's store must do.
pub trait FullStore: Store + DispatchStore + RolloutStore {}
impl<T: Store + DispatchStore + RolloutStore> FullStore for T {}

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub network_topic: String,
    pub pubsub_project: String,
    pub emulator_host: Option<String>,
    /// Where instance logs go: `<logs_dir>/<service uuid>/<instance>.log`.
    pub logs_dir: PathBuf,
    /// Heartbeats while a question waits or runs. 60 s: well under the 360 s
    /// after which an Octue asker gives up.
    pub heartbeat_interval: Duration,
    /// Questions a service's worker holds before intake stops pulling. 1000:
    /// a burst several times what `max_instances × concurrency` can take,
    /// small enough to bound memory at ~10 MB per service in the worst case.
    pub queue_capacity: usize,
    /// How often the registry is re-read even without a change notice.
    pub resync_interval: Duration,
}

impl DispatcherConfig {
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
    pub const DEFAULT_QUEUE_CAPACITY: usize = 1000;
    pub const DEFAULT_RESYNC: Duration = Duration::from_secs(5);
}

/// Subscription of the dispatcher on the network topic.
pub const NETWORK_SUBSCRIPTION: &str = "rouse.dispatcher.network";

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    PubSub(#[from] PubSubError),
    #[error(transparent)]
    Store(#[from] rouse_store::StoreError),
}

/// What one service looks like to the dispatcher.
struct Entry {
    service: Service,
    revision: Option<Revision>,
    tx: mpsc::Sender<WorkerMsg>,
    intake: CancellationToken,
    /// Tags and the traffic split.
    routes: routes::Routes,
    /// A worker per other revision the routes reach (dropping its sender
    /// stops it).
    lanes: HashMap<String, mpsc::Sender<WorkerMsg>>,
}

/// State shared by intake, workers and delivery tasks.
pub struct Shared {
    pub config: DispatcherConfig,
    pub store: Arc<dyn FullStore>,
    pub pubsub: PubSub,
    pub replier: Replier,
    pub http: reqwest::Client,
    pub authority: Arc<Authority>,
    process: Arc<dyn Runtime>,
    docker: Option<Arc<dyn Runtime>>,
    secrets: Option<Arc<dyn InstanceSecrets>>,
    registry: RwLock<HashMap<Uuid, Entry>>,
    /// `(namespace, name)` → service uuid, for routing by SRUID.
    by_sruid: RwLock<HashMap<(String, String), Uuid>>,
    /// Wakes the registry's sync loop.
    changed: Arc<Notify>,
}

impl Shared {
    /// Asks for the registry to be re-read from the store now.
    fn request_sync(&self) {
        self.changed.notify_one();
    }

    fn runtime_for(&self, source: &RevisionSource) -> Result<Arc<dyn Runtime>, String> {
        match source {
            RevisionSource::Command { .. } => Ok(self.process.clone()),
            RevisionSource::Image(image) => self.docker.clone().ok_or_else(|| {
                format!("image `{image}` needs the Docker runtime, but no Docker engine was reachable when the server started")
            }),
        }
    }

    /// Adds the service's secrets to `spec`'s environment (a secret wins
    /// over a plain variable of the same name).
    pub(crate) async fn add_secrets(
        &self,
        service_uuid: Uuid,
        spec: &mut rouse_runtime::InstanceSpec,
    ) -> Result<(), String> {
        let Some(secrets) = &self.secrets else {
            return Ok(());
        };
        let env = secrets
            .env(service_uuid)
            .await
            .map_err(|e| format!("cannot read the service's secrets: {e}"))?;
        spec.env.extend(env);
        Ok(())
    }

    /// The worker channel and current serving revision of a service.
    fn worker(&self, uuid: Uuid) -> Option<(mpsc::Sender<WorkerMsg>, Option<Revision>)> {
        let registry = self.registry.read().ok()?;
        registry
            .get(&uuid)
            .map(|e| (e.tx.clone(), e.revision.clone()))
    }

    /// The worker of another revision a question should go to (`None`: the
    /// service's main worker, which runs the serving revision); `Err` when
    /// its tag names no revision.
    fn lane(
        &self,
        uuid: Uuid,
        tag: Option<&str>,
        question_uuid: &str,
    ) -> Result<Option<(String, mpsc::Sender<WorkerMsg>)>, String> {
        let Ok(registry) = self.registry.read() else {
            return Ok(None);
        };
        let Some(entry) = registry.get(&uuid) else {
            return Ok(None);
        };
        let serving = entry.revision.as_ref().map(|r| r.name.as_str());
        Ok(
            routes::choose(tag, serving, &entry.routes, question_uuid)?.and_then(|revision| {
                let tx = entry.lanes.get(&revision)?.clone();
                Some((revision, tx))
            }),
        )
    }

    /// Every worker of a service: the main one, then its lanes.
    fn workers(&self, uuid: Uuid) -> Vec<mpsc::Sender<WorkerMsg>> {
        let Ok(registry) = self.registry.read() else {
            return Vec::new();
        };
        registry
            .get(&uuid)
            .map(|e| {
                std::iter::once(e.tx.clone())
                    .chain(e.lanes.values().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A registered service's project and name.
    fn names(&self, uuid: Uuid) -> Option<(ProjectName, ServiceName)> {
        let registry = self.registry.read().ok()?;
        registry
            .get(&uuid)
            .map(|e| (e.service.project.clone(), e.service.name.clone()))
    }

    /// Whether some registered service lives in this SRUID namespace.
    fn knows_namespace(&self, namespace: &str) -> bool {
        self.by_sruid
            .read()
            .map(|m| m.keys().any(|(ns, _)| ns == namespace))
            .unwrap_or(false)
    }

    fn route(&self, namespace: &str, name: &str) -> Option<Uuid> {
        self.by_sruid
            .read()
            .ok()?
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    /// Ends an execution with `reply`, unless the service already sent its own
    /// terminal event, in which case that decides the status and nothing is
    /// sent twice.
    pub async fn complete(&self, execution: Execution, outcome: Outcome, sender: &str) {
        let reply = match outcome {
            Outcome::Reply(reply) => reply,
            Outcome::Crashed { detail } => deliver::crashed(&detail, None, ""),
            Outcome::SelfReported { fallback, grace } => {
                let deadline = tokio::time::Instant::now() + grace;
                loop {
                    match self
                        .store
                        .terminal_event(&execution.question_uuid, execution.retry_count)
                        .await
                    {
                        Ok(Some(_)) => break,
                        Ok(None) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                        _ => break,
                    }
                }
                fallback
            }
        };
        let status = if matches!(reply, Reply::Result { .. }) {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Failed
        };
        self.finish(execution, reply, status, sender).await;
    }

    /// Records the end of an execution together with its terminal event (the
    /// outbox), then publishes the event.
    pub async fn finish(
        &self,
        mut execution: Execution,
        reply: Reply,
        mut status: ExecutionStatus,
        sender: &str,
    ) {
        execution.finished_at = Some(SystemTime::now());
        let own = match self
            .store
            .terminal_event(&execution.question_uuid, execution.retry_count)
            .await
        {
            Ok(kind) => kind,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event store");
                None
            }
        };
        if let Some(kind) = own.filter(|_| status != ExecutionStatus::Cancelled) {
            // The service answered for itself.
            execution.status = if kind == "result" {
                ExecutionStatus::Succeeded
            } else {
                ExecutionStatus::Failed
            };
            if let Err(e) = self.store.update_execution(&execution, None).await {
                tracing::error!(question = %execution.question_uuid, error = %e, "cannot record an execution's end");
            }
            return;
        }
        if let Reply::Exception {
            exception_type,
            exception_message,
            ..
        } = &reply
        {
            execution.reason = Some(format!("{exception_type}: {exception_message}"));
            if status == ExecutionStatus::Succeeded {
                status = ExecutionStatus::Failed;
            }
        }
        execution.status = status;
        let event = build_event(&execution.attributes, sender, &reply);
        match self.store.update_execution(&execution, Some(&event)).await {
            Ok(Some(id)) => self.replier.publish_recorded(id, &event).await,
            Ok(None) => {}
            Err(e) => {
                tracing::error!(question = %execution.question_uuid, error = %e, "cannot record an execution's end; publishing its event anyway");
                self.replier.send_now(event).await;
            }
        }
        tracing::debug!(question = %execution.question_uuid, status = %execution.status, "execution finished");
    }
}

/// The running dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
    changed: Arc<Notify>,
}

/// What the dispatcher is made of.
pub struct Parts {
    pub config: DispatcherConfig,
    pub store: Arc<dyn FullStore>,
    pub pubsub: PubSub,
    pub process: Arc<dyn Runtime>,
    pub docker: Option<Arc<dyn Runtime>>,
    /// Decides who may ask which service (`services.ask`, per question).
    pub authority: Arc<Authority>,
    /// Extra environment of a service's instances (its decrypted secrets).
    pub secrets: Option<Arc<dyn InstanceSecrets>>,
}

/// A service's secrets as environment variables, decrypted when an
/// instance starts. Owned here so the dispatcher does not depend on the
/// builder; values must never be logged.
#[async_trait::async_trait]
pub trait InstanceSecrets: Send + Sync + 'static {
    async fn env(
        &self,
        service_uuid: Uuid,
    ) -> Result<std::collections::BTreeMap<String, String>, String>;
}

impl Dispatcher {
    /// Starts the dispatcher: flushes the outbox, subscribes to the network
    /// topic and every service topic, and resumes unfinished executions.
    /// Runs until `shutdown` is cancelled; the handle completes when every
    /// instance has been stopped.
    pub async fn start(
        parts: Parts,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), DispatchError> {
        let Parts {
            config,
            store,
            pubsub,
            process,
            docker,
            authority,
            secrets,
        } = parts;
        pubsub
            .ensure_subscription(
                NETWORK_SUBSCRIPTION,
                &config.network_topic,
                &SubscriptionSpec::dispatcher(),
            )
            .await?;
        let publisher = pubsub.publisher(&config.network_topic).await?;
        let dispatch_store: Arc<dyn DispatchStore> = store.clone();
        let replier = Replier::new(publisher, dispatch_store);
        let shared = Arc::new(Shared {
            config,
            store,
            pubsub,
            replier,
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            process,
            docker,
            authority,
            secrets,
            registry: RwLock::new(HashMap::new()),
            by_sruid: RwLock::new(HashMap::new()),
            changed: Arc::new(Notify::new()),
        });
        let flushed = shared.replier.flush_outbox().await;
        if flushed > 0 {
            tracing::info!(
                events = flushed,
                "published events left in the outbox by the last run"
            );
        }
        let dispatcher = Self {
            shared: shared.clone(),
            changed: shared.changed.clone(),
        };
        let subscriber = shared.pubsub.subscriber().await?;
        let subscriber = Arc::new(subscriber);
        sync(&shared, &subscriber, &shutdown).await?;
        resume(&shared).await?;

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(intake::network(
            shared.clone(),
            subscriber.clone(),
            shutdown.clone(),
        )));
        let outbox = shared.replier.clone();
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { outbox.run_outbox(token).await }));
        let changed = dispatcher.changed.clone();
        let sync_shared = shared.clone();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep(sync_shared.config.resync_interval) => {}
                }
                if let Err(e) = sync(&sync_shared, &subscriber, &token).await {
                    tracing::warn!(error = %e, "cannot re-read the service registry");
                }
            }
            // Closing every worker channel stops the workers and their instances.
            let entries: Vec<Entry> = match sync_shared.registry.write() {
                Ok(mut r) => r.drain().map(|(_, e)| e).collect(),
                Err(_) => Vec::new(),
            };
            drop(entries);
            for t in tasks {
                let _ = t.await;
            }
            // Give workers a moment to stop their instances.
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        tracing::info!("dispatcher started");
        Ok((dispatcher, handle))
    }

    /// Re-reads the registry now (a service or revision changed).
    pub fn services_changed(&self) {
        self.changed.notify_one();
    }

    /// Starts one instance of `revision` as a worker would, waits until it
    /// passes its readiness check within the service's wake timeout, then
    /// stops it. A job-mode revision has nothing to probe and passes.
    pub async fn try_revision(&self, service: &Service, revision: &Revision) -> Result<(), String> {
        if revision.mode == rouse_core::revision::DeliveryMode::Job {
            return Ok(());
        }
        let instance_id = format!(
            "{}-try-{}",
            service.qualified_name().replace('_', "-"),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let mut spec = worker::instance_spec(
            &self.shared,
            service,
            revision,
            &instance_id,
            true,
            Vec::new(),
        );
        self.shared.add_secrets(service.uuid, &mut spec).await?;
        let runtime = self.shared.runtime_for(&revision.source)?;
        let probe = revision
            .probe_path
            .clone()
            .map_or(rouse_runtime::Probe::Tcp, rouse_runtime::Probe::Http);
        let instance = runtime.start(spec).await.map_err(|e| e.to_string())?;
        let ready = instance
            .wait_ready(&probe, service.scaling.wake_timeout)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        instance.stop(worker::STOP_GRACE).await;
        ready
    }

    /// Cancels a queued or running question. `false` if it is not running here.
    pub async fn cancel(&self, service_uuid: Uuid, question_uuid: &str) -> bool {
        for tx in self.shared.workers(service_uuid) {
            let (done, rx) = oneshot::channel();
            let msg = WorkerMsg::Cancel {
                question_uuid: question_uuid.to_owned(),
                done,
            };
            if tx.send(msg).await.is_ok() && rx.await.unwrap_or(false) {
                return true;
            }
        }
        false
    }
}

/// Brings workers and intake in line with the store's services and revisions.
async fn sync(
    shared: &Arc<Shared>,
    subscriber: &Arc<rouse_pubsub::Subscriber>,
    shutdown: &CancellationToken,
) -> Result<(), DispatchError> {
    let services = shared.store.list_services(None).await?;
    let known: HashMap<Uuid, (u64, Option<String>)> = match shared.registry.read() {
        Ok(r) => r
            .iter()
            .map(|(u, e)| {
                (
                    *u,
                    (
                        e.service.generation,
                        e.revision.as_ref().map(|r| r.name.clone()),
                    ),
                )
            })
            .collect(),
        Err(_) => HashMap::new(),
    };
    let mut present = std::collections::HashSet::new();
    for service in services {
        present.insert(service.uuid);
        let changed = known
            .get(&service.uuid)
            .map(|(g, _)| *g != service.generation);
        if changed == Some(false) {
            continue;
        }
        let revision = shared.store.serving_revision(service.uuid).await?;
        let (routes, lane_revisions) = routes_of(shared, &service, revision.as_ref()).await?;
        if changed == Some(true) {
            let tx = shared.worker(service.uuid).map(|(tx, _)| tx);
            let mut updates = Vec::new();
            if let Ok(mut r) = shared.registry.write()
                && let Some(entry) = r.get_mut(&service.uuid)
            {
                entry.service = service.clone();
                entry.revision = revision.clone();
                entry.routes = routes;
                let mut lanes = HashMap::new();
                for lane in lane_revisions {
                    let tx = match entry.lanes.remove(&lane.name) {
                        Some(tx) => {
                            updates.push((tx.clone(), lane.clone()));
                            tx
                        }
                        None => start_lane(shared, &service, lane.clone()),
                    };
                    lanes.insert(lane.name, tx);
                }
                // Lanes no longer routed to stop once their channel closes.
                entry.lanes = lanes;
            }
            for (lane_tx, lane) in updates {
                let _ = lane_tx
                    .send(WorkerMsg::Update(
                        Box::new(service.clone()),
                        Some(Box::new(lane)),
                    ))
                    .await;
            }
            if let Some(tx) = tx {
                let _ = tx
                    .send(WorkerMsg::Update(Box::new(service), revision.map(Box::new)))
                    .await;
            }
            continue;
        }
        // A new service: a worker, and intake on its topic.
        let (tx, rx) = mpsc::channel(WORKER_CHANNEL);
        let worker = Worker::new(shared.clone(), service.clone(), revision.clone());
        tokio::spawn(worker.run(rx));
        let token = shutdown.child_token();
        tokio::spawn(intake::service(
            shared.clone(),
            subscriber.clone(),
            service.clone(),
            tx.clone(),
            token.clone(),
        ));
        if let Ok(mut m) = shared.by_sruid.write() {
            let sruid = service.sruid();
            m.insert((sruid.namespace, sruid.name), service.uuid);
        }
        let lanes = lane_revisions
            .into_iter()
            .map(|lane| (lane.name.clone(), start_lane(shared, &service, lane)))
            .collect();
        if let Ok(mut r) = shared.registry.write() {
            r.insert(
                service.uuid,
                Entry {
                    service,
                    revision,
                    tx,
                    intake: token,
                    routes,
                    lanes,
                },
            );
        }
    }
    // Deleted services: stop intake; dropping the channel stops the worker.
    let gone: Vec<Entry> = match shared.registry.write() {
        Ok(mut r) => {
            let ids: Vec<Uuid> = r.keys().filter(|u| !present.contains(u)).copied().collect();
            ids.iter().filter_map(|u| r.remove(u)).collect()
        }
        Err(_) => Vec::new(),
    };
    for entry in gone {
        entry.intake.cancel();
        if let Ok(mut m) = shared.by_sruid.write() {
            m.retain(|_, u| *u != entry.service.uuid);
        }
        tracing::info!(service = %entry.service.qualified_name(), "service deleted; its worker stops");
    }
    Ok(())
}

/// The service's routes and the revisions (other than `serving`) they
/// reach. A routed revision that no longer exists is left out.
async fn routes_of(
    shared: &Arc<Shared>,
    service: &Service,
    serving: Option<&Revision>,
) -> Result<(routes::Routes, Vec<Revision>), DispatchError> {
    let stored = shared.store.routing(service.uuid).await?;
    let routes = routes::Routes {
        tags: stored.tags,
        traffic: stored.traffic,
    };
    let others = routes.other_revisions(serving.map(|r| r.name.as_str()));
    if others.is_empty() {
        return Ok((routes, Vec::new()));
    }
    let revisions = shared.store.list_revisions(service.uuid).await?;
    let lanes = revisions
        .into_iter()
        .filter(|r| others.contains(&r.name))
        .collect();
    Ok((routes, lanes))
}

/// Starts the worker of a revision that a tag or a split routes to.
fn start_lane(
    shared: &Arc<Shared>,
    service: &Service,
    revision: Revision,
) -> mpsc::Sender<WorkerMsg> {
    tracing::info!(service = %service.qualified_name(), revision = %revision.name, "a tag or traffic split routes to this revision");
    let (tx, rx) = mpsc::channel(WORKER_CHANNEL);
    let worker = Worker::new(shared.clone(), service.clone(), Some(revision));
    tokio::spawn(worker.run(rx));
    tx
}

/// Capacity of the channel into a worker; the worker's own queue bound
/// ([`DispatcherConfig::queue_capacity`]) is what applies backpressure.
const WORKER_CHANNEL: usize = 64;

/// Hands every unfinished execution back to its worker.
async fn resume(shared: &Arc<Shared>) -> Result<(), DispatchError> {
    let unfinished = shared.store.unfinished_executions().await?;
    if !unfinished.is_empty() {
        tracing::info!(
            executions = unfinished.len(),
            "resuming unfinished executions"
        );
    }
    for execution in unfinished {
        match shared.worker(execution.service_uuid) {
            Some((tx, _)) => {
                let _ = tx.send(WorkerMsg::Run(Box::new(execution))).await;
            }
            None => {
                let sender = "rouse/dispatcher".to_owned();
                shared
                    .finish(
                        execution,
                        Reply::exception(
                            "ServiceNotFound",
                            "the service was deleted before the question ran",
                        ),
                        ExecutionStatus::Failed,
                        &sender,
                    )
                    .await;
            }
        }
    }
    Ok(())
}
