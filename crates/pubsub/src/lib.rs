//! Rouse's Pub/Sub adapter, over the official `google-cloud-pubsub` client.
//!
//! The crate does not read `PUBSUB_EMULATOR_HOST` itself, so [`PubSubConfig`]
//! does: with an emulator host every client gets `http://HOST:PORT` (plaintext)
//! and anonymous credentials; without one, Google's endpoint and application
//! default credentials. Every administrative call is bounded by
//! [`PubSubConfig::call_timeout`]: the client would otherwise retry for a minute
//! against an endpoint that is down (docs/pubsub.md).
//!
//! Administration (topics and subscriptions, created and deleted
//! idempotently) and the data plane: [`TopicPublisher`] tuned for latency and
//! [`subscribe`] for streaming pull.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::{Aip194Strict, NeverRetry, RetryPolicyExt};
pub use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::client::{Publisher, SubscriptionAdmin, TopicAdmin};
pub use google_cloud_pubsub::model::Message;
pub use google_cloud_pubsub::subscriber::MessageStream;
pub use google_cloud_pubsub::subscriber::handler::Handler;

/// How to reach Pub/Sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubConfig {
    /// The Google Cloud project that owns topics and subscriptions.
    pub project: String,
    /// `HOST:PORT` of an emulator; `None` means Google Cloud Pub/Sub.
    pub emulator_host: Option<String>,
    /// Upper bound on one administrative call, retries included.
    pub call_timeout: Duration,
}

impl PubSubConfig {
    /// The default bound on an administrative call: long enough for Google's
    /// retries to ride out a blip, short enough that a CLI user is not left waiting.
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

    /// The endpoint URL clients are given.
    pub fn endpoint_url(&self) -> String {
        match &self.emulator_host {
            Some(host) if host.contains("://") => host.clone(),
            Some(host) => format!("http://{host}"),
            None => "https://pubsub.googleapis.com".to_owned(),
        }
    }
}

impl fmt::Display for PubSubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.emulator_host {
            Some(_) => write!(
                f,
                "the Pub/Sub emulator at {} (project `{}`)",
                self.endpoint_url(),
                self.project
            ),
            None => write!(f, "Google Cloud Pub/Sub (project `{}`)", self.project),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    #[error("cannot create a Pub/Sub client for {endpoint}: {message}")]
    Client { endpoint: String, message: String },
    #[error("{op} `{resource}` failed on {endpoint}: {message}")]
    Call {
        op: &'static str,
        resource: String,
        endpoint: String,
        code: Option<Code>,
        message: String,
    },
    #[error(
        "{op} `{resource}` got no answer from {endpoint} within {timeout:?}; is it running and reachable?"
    )]
    Timeout {
        op: &'static str,
        resource: String,
        endpoint: String,
        timeout: Duration,
    },
}

impl PubSubError {
    /// True when Pub/Sub could not be reached at all (as opposed to refusing the call).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Client { .. } => true,
            Self::Call { code, .. } => {
                matches!(
                    code,
                    None | Some(Code::Unavailable | Code::DeadlineExceeded)
                )
            }
        }
    }
}

/// What an `ensure_*` call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// It was there already, as wanted.
    Existed,
    /// It was missing and has been created.
    Created,
    /// It was there but wrong (a subscription whose topic was deleted) and has
    /// been replaced.
    Replaced,
}

/// What a `delete_*` call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Deleted,
    /// It was not there; deleting is idempotent.
    Missing,
}

/// Settings of a subscription Rouse creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    pub ack_deadline_seconds: i32,
    pub message_ordering: bool,
    /// A Pub/Sub filter expression, or empty. The emulator stores it but does
    /// not apply it, so consumers filter again on their side.
    pub filter: String,
}

impl SubscriptionSpec {
    /// The dispatcher's subscription on a service topic: the longest ack deadline
    /// Pub/Sub allows (600 s) and ordering on, since every event of a question
    /// carries the question uuid as its ordering key.
    pub fn dispatcher() -> Self {
        Self {
            ack_deadline_seconds: 600,
            message_ordering: true,
            filter: String::new(),
        }
    }
}

/// Administrative access to topics and subscriptions.
#[derive(Clone)]
pub struct PubSub {
    config: PubSubConfig,
    endpoint: String,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("config", &self.config)
            .finish()
    }
}

/// The pause between two attempts of [`PubSub::check`] whose connection failed.
const CHECK_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The retry policy for administrative calls: Google's recommended one, cut
/// off at the call timeout.
fn retry_policy(limit: Duration) -> impl google_cloud_gax::retry_policy::RetryPolicy {
    Aip194Strict.with_time_limit(limit)
}

impl PubSub {
    /// Builds the clients. Nothing is sent yet; call [`Self::check`] to find
    /// out whether Pub/Sub answers.
    pub async fn connect(config: PubSubConfig) -> Result<Self, PubSubError> {
        let endpoint = config.to_string();
        let client_err = |e: &dyn fmt::Display| PubSubError::Client {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        };
        let mut topics = TopicAdmin::builder().with_endpoint(config.endpoint_url());
        let mut subscriptions = SubscriptionAdmin::builder().with_endpoint(config.endpoint_url());
        if config.emulator_host.is_some() {
            // Without explicit anonymous credentials the first call hangs while
            // auth looks for a metadata server (docs/pubsub.md).
            let anonymous = google_cloud_auth::credentials::anonymous::Builder::new().build();
            topics = topics.with_credentials(anonymous.clone());
            subscriptions = subscriptions.with_credentials(anonymous);
        }
        let topics = topics.build().await.map_err(|e| client_err(&e))?;
        let subscriptions = subscriptions.build().await.map_err(|e| client_err(&e))?;
        Ok(Self {
            config,
            endpoint,
            topics,
            subscriptions,
        })
    }

    pub fn config(&self) -> &PubSubConfig {
        &self.config
    }

    pub fn topic_path(&self, topic_id: &str) -> String {
        format!("projects/{}/topics/{topic_id}", self.config.project)
    }

    pub fn subscription_path(&self, subscription_id: &str) -> String {
        format!(
            "projects/{}/subscriptions/{subscription_id}",
            self.config.project
        )
    }

    fn anonymous(&self) -> Option<google_cloud_auth::credentials::Credentials> {
        self.config
            .emulator_host
            .as_ref()
            .map(|_| google_cloud_auth::credentials::anonymous::Builder::new().build())
    }

    /// A publisher for one topic, tuned for latency: every message is sent at
    /// once instead of waiting up to 10 ms to batch (docs/pubsub.md).
    pub async fn publisher(&self, topic_id: &str) -> Result<TopicPublisher, PubSubError> {
        let path = self.topic_path(topic_id);
        let publisher = self.build_publisher(&path).await?;
        Ok(TopicPublisher {
            current: Arc::new(std::sync::Mutex::new(Current {
                client: publisher,
                held: None,
            })),
            published: Arc::new(AtomicU64::new(0)),
            recycle_after: RECYCLE_AFTER,
            pubsub: self.clone(),
            topic: path,
            endpoint: self.endpoint.clone(),
            timeout: self.config.call_timeout,
        })
    }

    async fn build_publisher(&self, path: &str) -> Result<Publisher, PubSubError> {
        let mut builder = Publisher::builder(path.to_owned())
            .with_endpoint(self.config.endpoint_url())
            .set_message_count_threshold(1)
            .set_delay_threshold(Duration::ZERO);
        if let Some(anonymous) = self.anonymous() {
            builder = builder.with_credentials(anonymous);
        }
        builder.build().await.map_err(|e| PubSubError::Client {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        })
    }

    /// A client for streaming pull; one serves every subscription.
    pub async fn subscriber(&self) -> Result<Subscriber, PubSubError> {
        let mut builder = Subscriber::builder().with_endpoint(self.config.endpoint_url());
        if let Some(anonymous) = self.anonymous() {
            builder = builder.with_credentials(anonymous);
        }
        builder.build().await.map_err(|e| PubSubError::Client {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        })
    }

    /// Does Pub/Sub answer at all? One cheap call, repeated while the
    /// connection itself fails (an emulator that has just bound its port may
    /// drop the first connections) until the call timeout has passed; an
    /// answer that refuses the call is final at once.
    pub async fn check(&self) -> Result<(), PubSubError> {
        let project = format!("projects/{}", self.config.project);
        let deadline = tokio::time::Instant::now() + self.config.call_timeout;
        loop {
            let call = self
                .topics
                .list_topics()
                .set_project(project.clone())
                .set_page_size(1)
                .with_retry_policy(NeverRetry)
                .send();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = match tokio::time::timeout(left, call).await {
                Ok(result) => result
                    .map(drop)
                    .map_err(|e| self.call_error("list topics in", &project, &e)),
                Err(_) => Err(PubSubError::Timeout {
                    op: "list topics in",
                    resource: project.clone(),
                    endpoint: self.endpoint.clone(),
                    timeout: self.config.call_timeout,
                }),
            };
            match result {
                Err(e @ PubSubError::Call { code: None, .. })
                    if deadline.saturating_duration_since(tokio::time::Instant::now())
                        > CHECK_RETRY_PAUSE =>
                {
                    tracing::info!(error = %e, "Pub/Sub does not answer yet; trying again");
                    tokio::time::sleep(CHECK_RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Creates the topic unless it exists.
    pub async fn ensure_topic(&self, topic_id: &str) -> Result<Ensured, PubSubError> {
        let path = self.topic_path(topic_id);
        let call = self
            .topics
            .create_topic()
            .set_name(path.clone())
            .with_retry_policy(retry_policy(self.config.call_timeout))
            .send();
        match self.bounded("create topic", &path, call).await {
            Ok(_) => Ok(Ensured::Created),
            Err(e) if code(&e) == Some(Code::AlreadyExists) => Ok(Ensured::Existed),
            Err(e) => Err(e),
        }
    }

    pub async fn topic_exists(&self, topic_id: &str) -> Result<bool, PubSubError> {
        let path = self.topic_path(topic_id);
        let call = self
            .topics
            .get_topic()
            .set_topic(path.clone())
            .with_retry_policy(retry_policy(self.config.call_timeout))
            .send();
        match self.bounded("get topic", &path, call).await {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some(Code::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the topic; a topic that is already gone is fine.
    pub async fn delete_topic(&self, topic_id: &str) -> Result<Removed, PubSubError> {
        let path = self.topic_path(topic_id);
        let call = self
            .topics
            .delete_topic()
            .set_topic(path.clone())
            .with_retry_policy(retry_policy(self.config.call_timeout))
            .send();
        match self.bounded("delete topic", &path, call).await {
            Ok(()) => Ok(Removed::Deleted),
            Err(e) if code(&e) == Some(Code::NotFound) => Ok(Removed::Missing),
            Err(e) => Err(e),
        }
    }

    /// The topic path a subscription is attached to, or `None` if the
    /// subscription does not exist. A subscription whose topic was deleted
    /// reports `_deleted-topic_`.
    pub async fn subscription_topic(
        &self,
        subscription_id: &str,
    ) -> Result<Option<String>, PubSubError> {
        let path = self.subscription_path(subscription_id);
        let call = self
            .subscriptions
            .get_subscription()
            .set_subscription(path.clone())
            .with_retry_policy(retry_policy(self.config.call_timeout))
            .send();
        match self.bounded("get subscription", &path, call).await {
            Ok(sub) => Ok(Some(sub.topic)),
            Err(e) if code(&e) == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes sure the subscription exists and is attached to `topic_id`: a
    /// subscription left behind by a deleted topic receives nothing from the
    /// topic's successor, so it is replaced.
    pub async fn ensure_subscription(
        &self,
        subscription_id: &str,
        topic_id: &str,
        spec: &SubscriptionSpec,
    ) -> Result<Ensured, PubSubError> {
        let topic = self.topic_path(topic_id);
        let replaced = match self.subscription_topic(subscription_id).await? {
            Some(current) if current == topic => return Ok(Ensured::Existed),
            Some(_) => {
                self.delete_subscription(subscription_id).await?;
                true
            }
            None => false,
        };
        let path = self.subscription_path(subscription_id);
        let call = self
            .subscriptions
            .create_subscription()
            .set_name(path.clone())
            .set_topic(topic)
            .set_ack_deadline_seconds(spec.ack_deadline_seconds)
            .set_enable_message_ordering(spec.message_ordering)
            .set_filter(spec.filter.clone())
            .with_retry_policy(retry_policy(self.config.call_timeout))
            .send();
        match self.bounded("create subscription", &path, call).await {
            Ok(_) if replaced => Ok(Ensured::Replaced),
            Ok(_) => Ok(Ensured::Created),
            // Created concurrently by someone else, on the right topic by now.
            Err(e) if code(&e) == Some(Code::AlreadyExists) => Ok(Ensured::Existed),
            Err(e) => Err(e),
        }
    }

    /// Deletes the subscription; one that is already gone is fine.
    pub async fn delete_subscription(&self, subscription_id: &str) -> Result<Removed, PubSubError> {
        let path = self.subscription_path(subscription_id);
        let call = self
            .subscriptions
            .delete_subscription()
            .set_subscription(path.clone())
            .with_retry_policy(retry_policy(self.config.call_timeout))
            .send();
        match self.bounded("delete subscription", &path, call).await {
            Ok(()) => Ok(Removed::Deleted),
            Err(e) if code(&e) == Some(Code::NotFound) => Ok(Removed::Missing),
            Err(e) => Err(e),
        }
    }

    /// A failed call, named: Pub/Sub's own message when it answered, else the
    /// transport's error with its causes (e.g. "connection refused").
    fn call_error(
        &self,
        op: &'static str,
        resource: &str,
        e: &google_cloud_pubsub::Error,
    ) -> PubSubError {
        let message = match e.status() {
            Some(status) => status.message.clone(),
            None => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(cause) = source {
                    let text = cause.to_string();
                    if !message.contains(&text) {
                        message.push_str(": ");
                        message.push_str(&text);
                    }
                    source = cause.source();
                }
                message
            }
        };
        PubSubError::Call {
            op,
            resource: resource.to_owned(),
            endpoint: self.endpoint.clone(),
            code: e.status().map(|s| s.code),
            message,
        }
    }

    /// Runs one call under the call timeout and names what failed.
    async fn bounded<T>(
        &self,
        op: &'static str,
        resource: &str,
        call: impl Future<Output = google_cloud_pubsub::Result<T>>,
    ) -> Result<T, PubSubError> {
        match tokio::time::timeout(self.config.call_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.call_error(op, resource, &e)),
            Err(_) => Err(PubSubError::Timeout {
                op,
                resource: resource.to_owned(),
                endpoint: self.endpoint.clone(),
                timeout: self.config.call_timeout,
            }),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub data: Vec<u8>,
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Empty for unordered messages.
    pub ordering_key: String,
}

/// Messages a publisher client sends before it is replaced by a fresh one.
/// The client keeps a task and a channel for every ordering key it has seen
/// and never drops them (a TODO in its dispatcher, google-cloud-rust issue
/// 4012); every question has its own key, so a long-lived client held about
/// 7 KB per question ever answered (heaptrack: the channels its
/// `spawn_actor` makes), and the server's memory grew by ~10 KB per question.
/// A fresh client every 1024 messages (~512 questions) keeps that to a few
/// megabytes, for the cost of building a client now and then.
pub const RECYCLE_AFTER: u64 = 1024;

/// Publishes to one topic. Clones share the client.
#[derive(Clone)]
pub struct TopicPublisher {
    /// The client in use, and while it is being replaced the messages
    /// held back meanwhile. Every hand-over happens under this (synchronous)
    /// lock, so messages reach a client in the order `publish` was called;
    /// see [`TopicPublisher::recycle`] for why that order holds across a
    /// switch.
    current: Arc<std::sync::Mutex<Current>>,
    published: Arc<AtomicU64>,
    recycle_after: u64,
    pubsub: PubSub,
    topic: String,
    endpoint: String,
    timeout: Duration,
}

/// A message handed over: the client's future for it, and the client (to
/// resume its ordering key after a failure).
type HandedOver = (google_cloud_pubsub::publisher::PublishFuture, Publisher);

struct Current {
    client: Publisher,
    /// `Some` while the old client flushes: messages wait here, in order,
    /// for the fresh one.
    held: Option<Vec<(Message, tokio::sync::oneshot::Sender<HandedOver>)>>,
}

fn lock_current(current: &std::sync::Mutex<Current>) -> std::sync::MutexGuard<'_, Current> {
    current
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Debug for TopicPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicPublisher")
            .field("topic", &self.topic)
            .finish()
    }
}

impl TopicPublisher {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Replaces the client after every `n` messages instead of
    /// [`RECYCLE_AFTER`].
    pub fn with_recycle_after(mut self, n: u64) -> Self {
        self.recycle_after = n.max(1);
        self
    }

    /// Publishes one message and returns its message id. Bounded by the call
    /// timeout (the client would otherwise retry for up to 600 s). A failed
    /// ordered publish pauses its ordering key in the client; it is resumed
    /// here so that the next publish on that key can succeed.
    pub async fn publish(&self, message: Outgoing) -> Result<String, PubSubError> {
        let Outgoing {
            data,
            attributes,
            ordering_key,
        } = message;
        let msg = Message::new()
            .set_data(data)
            .set_attributes(attributes)
            .set_ordering_key(ordering_key.clone());
        let (handed, count) = {
            let mut current = lock_current(&self.current);
            let count = self.published.fetch_add(1, Ordering::Relaxed) + 1;
            let handed = match &mut current.held {
                Some(held) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    held.push((msg, tx));
                    Err(rx)
                }
                None => Ok((current.client.publish(msg), current.client.clone())),
            };
            (handed, count)
        };
        if count.is_multiple_of(self.recycle_after) {
            self.recycle().await;
        }
        let timed_out = || PubSubError::Timeout {
            op: "publish to",
            resource: self.topic.clone(),
            endpoint: self.endpoint.clone(),
            timeout: self.timeout,
        };
        let failed = |code, message: String| PubSubError::Call {
            op: "publish to",
            resource: self.topic.clone(),
            endpoint: self.endpoint.clone(),
            code,
            message,
        };
        let sent = async {
            let (pending, client) = match handed {
                Ok(handed) => handed,
                Err(held) => held.await.map_err(|_| {
                    failed(
                        None,
                        "the publisher was dropped while replacing its client".into(),
                    )
                })?,
            };
            Ok::<_, PubSubError>((pending.await, client))
        };
        let (result, client) = match tokio::time::timeout(self.timeout, sent).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok((Ok(id), _))) => return Ok(id),
            Ok(Ok((Err(e), client))) => (failed(None, e.to_string()), client),
        };
        if !ordering_key.is_empty() {
            client.resume_publish(ordering_key);
        }
        Err(result)
    }

    /// Swaps in a fresh client (see [`RECYCLE_AFTER`]); if one cannot be
    /// built, the current one stays and the next multiple tries again.
    ///
    /// Per-key order across the switch: from the moment the switch starts,
    /// messages are held back (in call order) instead of handed to the old
    /// client; the old client is flushed, so everything it had is stored;
    /// then, in one step under the lock, the held messages go to the fresh
    /// client in order and it becomes current. (An async lock here let
    /// waiters hand over in the order they were woken, not the order they
    /// came: a key's third message overtook its first.)
    async fn recycle(&self) {
        let fresh = match self.pubsub.build_publisher(&self.topic).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "cannot build a fresh publisher; keeping the current one");
                return;
            }
        };
        let old = {
            let mut current = lock_current(&self.current);
            if current.held.is_some() {
                // Another switch is under way.
                return;
            }
            current.held = Some(Vec::new());
            current.client.clone()
        };
        old.flush().await;
        {
            let mut current = lock_current(&self.current);
            current.client = fresh;
            for (msg, tx) in current.held.take().unwrap_or_default() {
                let _ = tx.send((current.client.publish(msg), current.client.clone()));
            }
        }
        // The last handle of the old client: its tasks end with it.
        drop(old);
    }
}

/// Starts streaming pull on a subscription, holding at most
/// `max_outstanding` unacknowledged messages (flow control: when the consumer
/// stops acknowledging, Pub/Sub stops sending).
pub fn subscribe(
    subscriber: &Subscriber,
    pubsub: &PubSub,
    subscription_id: &str,
    max_outstanding: i64,
) -> MessageStream {
    subscriber
        .subscribe(pubsub.subscription_path(subscription_id))
        .set_max_outstanding_messages(max_outstanding)
        .set_max_lease_extension(LEASE_EXTENSION)
        .build()
}

/// How long Pub/Sub waits for a subscriber that stopped answering before it
/// sends the messages it held to another one: the shortest Pub/Sub allows
/// (the client keeps extending the lease of a message it still holds).
/// Messages are acknowledged milliseconds after they arrive, so this costs
/// nothing while all is well, and a dispatcher killed with questions in
/// its stream loses them to the others within 10 s, not the client's
/// default 60 s.
pub const LEASE_EXTENSION: std::time::Duration = std::time::Duration::from_secs(10);

fn code(e: &PubSubError) -> Option<Code> {
    match e {
        PubSubError::Call { code, .. } => *code,
        _ => None,
    }
}
