//! Rouse's dispatcher: wakes a service when a question arrives, delivers it,
//! makes sure the asker hears every reply, and stops idle instances.
//!
//! - [`intake`]: streaming pull on every service topic and on the network
//!   topic; a question is recorded in the store before it is acknowledged to
//!   Pub/Sub, and `(question_uuid, retry_count)` runs at most once.
//! - [`worker`]: one actor per service with a bounded queue, its instances
//!   and its executions; [`launch`]: how an instance starts.
//! - [`scale`]: the pure scaling decision the workers apply.
//! - [`deliver`]: push envelopes and job arguments, and what an answer means.
//! - [`replies`]: reply events, their outbox, and how an execution ends.
//! - [`acme`]: the ingress's certificates from an ACME CA, renewed live.
//! - `ingress`: HTTP services behind one port, routed by context root;
//!   a request waits in its service worker's queue like a question.
//! - `trials`: readiness trials of built revisions, claimed from the store.
//! - [`shards`]: several dispatchers on one store share the services, each
//!   running those whose lease it holds; executions are fenced by the
//!   dispatcher that runs them.
//! - `table` and `sync`: the services served, one table behind one lock,
//!   kept in line with the store on every change notice from a role in
//!   this process ([`rouse_store::Changes`]) and, as a backstop for a
//!   control plane in another process, every
//!   [`DispatcherConfig::resync_interval`].
//!
//! Every worker and intake task is tracked: the handle [`Dispatcher::start`]
//! returns completes once all of them have ended and every instance has
//! been stopped.

pub mod acme;
mod config;
pub mod dead_letter;
pub mod deliver;
pub mod ingress;
pub mod intake;
pub mod launch;
pub mod metrics;
pub mod replies;
pub mod routes;
pub mod scale;
pub mod shards;
mod sync;
mod table;
mod trials;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use rouse_authz::Authority;
use rouse_pubsub::{PubSub, PubSubError, SubscriptionSpec};
use rouse_runtime::Runtime;
use rouse_store::{Changes, DispatchStore, LeaseStore, RolloutStore, Store, TrialStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use crate::config::{DispatcherConfig, NETWORK_SUBSCRIPTION};
pub use crate::launch::InstanceSecrets;
use crate::launch::Launcher;
use crate::replies::{Ledger, Replier};
use crate::shards::Shards;
use crate::table::{Key, ServiceTable};
use crate::worker::{Context, WorkerMsg};

/// How often [`Shared::await_entry`] looks at the table again.
const AWAIT_POLL: Duration = Duration::from_millis(20);

/// Everything the dispatcher's store must do.
pub trait FullStore: Store + DispatchStore + RolloutStore + TrialStore + LeaseStore {}
impl<T: Store + DispatchStore + RolloutStore + TrialStore + LeaseStore> FullStore for T {}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    PubSub(#[from] PubSubError),
    #[error(transparent)]
    Store(#[from] rouse_store::StoreError),
}

/// State shared by intake, the sync and the trials; workers see only
/// [`Context`].
pub struct Shared {
    pub ctx: Arc<Context>,
    pub store: Arc<dyn FullStore>,
    pub pubsub: PubSub,
    pub authority: Arc<Authority>,
    changes: Changes,
    table: ServiceTable,
    shards: Shards,
}

impl Shared {
    /// Asks for the registry to be re-read from the store now.
    pub(crate) fn request_sync(&self) {
        self.changes.services_changed();
    }

    /// Has the registry re-read at once and waits, up to `within`, for the
    /// table's entry under `key` to satisfy `ready` (a service just created,
    /// or being taken over here). The entry as last found, if it did.
    pub(crate) async fn await_entry(
        &self,
        key: Key<'_>,
        within: Duration,
        ready: impl Fn(&table::Found) -> bool,
    ) -> Option<table::Found> {
        self.request_sync();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(found) = self.table.lookup(key)
                && ready(&found)
            {
                return Some(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(AWAIT_POLL).await;
        }
    }
}
/// The running dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
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
    /// Change notices from the other roles of this process.
    pub changes: Changes,
    /// Extra environment of a service's instances (its decrypted secrets):
    /// required, so no instance ever starts without them.
    pub secrets: Arc<dyn InstanceSecrets>,
    /// This process as a lease holder (`host:pid:start`, see
    /// [`rouse_runtime::holder::this_process`]): unique among the
    /// dispatchers on the store.
    pub holder: String,
}

impl Dispatcher {
    /// Starts the dispatcher: flushes the outbox, subscribes to the network
    /// topic, takes its share of the services (their leases), subscribes to
    /// their topics, and resumes their unfinished executions.
    /// Runs until `shutdown` is cancelled; the handle completes when every
    /// worker has ended and stopped its instances.
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
            changes,
            secrets,
            holder,
        } = parts;
        pubsub
            .ensure_subscription(
                NETWORK_SUBSCRIPTION,
                &config.network_topic,
                &SubscriptionSpec::dispatcher(),
            )
            .await?;
        let publisher = Arc::new(pubsub.publisher(&config.network_topic).await?);
        let ledger: Arc<dyn Ledger> = Arc::new(store.clone());
        let metrics = Arc::new(metrics::Metrics::default());
        let replier = Replier::new(publisher, ledger.clone(), metrics.clone());
        let ctx = Arc::new(Context {
            dead_letters: Some(Arc::new(dead_letter::DeadLetters::new(pubsub.clone()))),
            metrics,
            config,
            store: ledger,
            replier,
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            h2c: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(30))
                .http2_prior_knowledge()
                .build()
                .unwrap_or_default(),
            launcher: Launcher {
                process,
                docker,
                secrets,
            },
            tasks: TaskTracker::new(),
        });
        let shared = Arc::new(Shared {
            ctx,
            store,
            pubsub,
            authority,
            changes,
            table: ServiceTable::default(),
            shards: Shards::new(holder),
        });
        let flushed = shared.ctx.replier.flush_outbox().await;
        if flushed > 0 {
            tracing::info!(
                events = flushed,
                "published events left in the outbox by the last run"
            );
        }
        let subscriber = Arc::new(shared.pubsub.subscriber().await?);
        shards::renew(&shared).await;
        sync::sync(&shared, &subscriber, &shutdown).await?;
        shards::balance(&shared, &subscriber, &shutdown).await;
        shards::claim(&shared).await;

        let tasks = &shared.ctx.tasks;
        let network = intake::network(shared.clone(), subscriber.clone(), shutdown.clone());
        tasks.spawn(network);
        let (outbox, token) = (shared.ctx.replier.clone(), shutdown.clone());
        tasks.spawn(async move { outbox.run_outbox(token).await });
        tasks.spawn(trials::run(shared.clone(), shutdown.clone()));
        let this = shared.clone();
        let handle = tokio::spawn(async move {
            sync::keep_in_sync(&this, &subscriber, &shutdown).await;
            // Every worker sees the cancellation (or its channel closing) and
            // stops its instances; wait for them all.
            drop(this.table.drain());
            this.ctx.tasks.close();
            this.ctx.tasks.wait().await;
            // Every instance has stopped: the others may take over at once.
            shards::release(&this).await;
        });
        tracing::info!("dispatcher started");
        Ok((Self { shared }, handle))
    }

    /// Serves the ingress (HTTP services behind one port, see
    /// [`ingress`](crate::ingress)) on `listener` until `shutdown`.
    pub async fn serve_ingress(
        &self,
        listener: tokio::net::TcpListener,
        options: ingress::IngressOptions,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        ingress::serve(self.shared.clone(), listener, options, shutdown).await
    }

    /// Cancels a queued or running question. `false` if it is not running here.
    pub async fn cancel(&self, service_uuid: Uuid, question_uuid: &str) -> bool {
        let Ok(service) = self.shared.table.lookup(Key::Uuid(service_uuid)) else {
            return false;
        };
        for tx in service.workers() {
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
