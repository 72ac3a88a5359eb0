//! The broker's calls, shared by its gRPC and REST surfaces: each checks
//! its input as Google does, changes the engine, and waits for the store
//! where the caller must be able to rely on the change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::engine::{MAX_ACK_DEADLINE, MIN_ACK_DEADLINE, Receiver, Write};
use crate::error::BrokerError;
use crate::persist::{Admin, Committed, Persist, Shared, lock};
use crate::{names, pb};

/// Google's publish limits.
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
pub const MAX_MESSAGES_PER_PUBLISH: usize = 1000;
pub const MAX_ATTRIBUTES: usize = 100;
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
pub const MAX_ORDERING_KEY_BYTES: usize = 1024;
/// Messages one pull response carries at most.
pub const MAX_PULL: i64 = 1000;
/// Lease expiry and backoff are looked at this often.
const TICK: Duration = Duration::from_millis(50);
/// Retention is enforced this often.
const RETENTION_SWEEP: Duration = Duration::from_secs(60);

/// A handle on the broker: cheap to clone.
#[derive(Clone, Debug)]
pub struct Broker {
    pub(crate) engine: Shared,
    pub(crate) persist: Persist,
    streams: Arc<AtomicU64>,
}

impl Broker {
    pub(crate) fn new(engine: Shared, persist: Persist) -> Self {
        Self {
            engine,
            persist,
            streams: Arc::new(AtomicU64::new(1)),
        }
    }

    pub(crate) fn next_stream(&self) -> u64 {
        self.streams.fetch_add(1, Ordering::Relaxed)
    }

    // Topics.

    pub async fn create_topic(&self, topic: pb::Topic) -> Result<pb::Topic, BrokerError> {
        let topic = lock(&self.engine).create_topic(topic)?;
        self.persist.admin(Admin::PutTopic(topic.clone())).await?;
        Ok(topic)
    }

    pub fn get_topic(&self, name: &str) -> Result<pb::Topic, BrokerError> {
        lock(&self.engine).topic(name).cloned()
    }

    pub async fn update_topic(
        &self,
        topic: pb::Topic,
        paths: &[String],
    ) -> Result<pb::Topic, BrokerError> {
        let topic = lock(&self.engine).update_topic(topic, paths)?;
        self.persist.admin(Admin::PutTopic(topic.clone())).await?;
        Ok(topic)
    }

    pub fn list_topics(
        &self,
        project: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<pb::Topic>, String), BrokerError> {
        let project = names::project(project)?;
        let all = lock(&self.engine).topics(project);
        Ok(page(all, page_size, page_token, |t| &t.name))
    }

    pub fn list_topic_subscriptions(
        &self,
        topic: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<String>, String), BrokerError> {
        let all = lock(&self.engine).topic_subscriptions(topic)?;
        Ok(page(all, page_size, page_token, |s| s))
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        let changed = lock(&self.engine).delete_topic(name)?;
        self.persist
            .admin(Admin::DeleteTopic(name.to_owned(), changed))
            .await
    }

    // Subscriptions.

    pub async fn create_subscription(
        &self,
        sub: pb::Subscription,
    ) -> Result<pb::Subscription, BrokerError> {
        let sub = lock(&self.engine).create_subscription(sub, Instant::now())?;
        self.persist
            .admin(Admin::PutSubscription(Box::new(sub.clone())))
            .await?;
        Ok(sub)
    }

    pub fn get_subscription(&self, name: &str) -> Result<pb::Subscription, BrokerError> {
        lock(&self.engine)
            .subscription(name)
            .map(|s| s.config.clone())
    }

    pub async fn update_subscription(
        &self,
        sub: pb::Subscription,
        paths: &[String],
    ) -> Result<pb::Subscription, BrokerError> {
        let sub = lock(&self.engine).update_subscription(sub, paths)?;
        self.persist
            .admin(Admin::PutSubscription(Box::new(sub.clone())))
            .await?;
        Ok(sub)
    }

    pub async fn modify_push_config(
        &self,
        name: &str,
        push: Option<pb::PushConfig>,
    ) -> Result<(), BrokerError> {
        let update = pb::Subscription {
            name: name.to_owned(),
            push_config: push,
            ..pb::Subscription::default()
        };
        self.update_subscription(update, &["push_config".to_owned()])
            .await
            .map(|_| ())
    }

    pub fn list_subscriptions(
        &self,
        project: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<pb::Subscription>, String), BrokerError> {
        let project = names::project(project)?;
        let all = lock(&self.engine).subscriptions(project);
        Ok(page(all, page_size, page_token, |s| &s.name))
    }

    pub async fn delete_subscription(&self, name: &str) -> Result<(), BrokerError> {
        lock(&self.engine).delete_subscription(name)?;
        self.persist
            .admin(Admin::DeleteSubscription(name.to_owned()))
            .await
    }

    // Messages.

    /// Publishes, and answers the message ids once the messages are stored.
    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<pb::PubsubMessage>,
    ) -> Result<Vec<String>, BrokerError> {
        check_messages(&messages)?;
        let (ids, committed) = self.queue_publish(topic, messages, Vec::new()).await?;
        committed.wait().await?;
        Ok(ids)
    }

    /// Numbers messages for `topic` and queues them for the store in one
    /// step under the engine's lock (see [`Persist::reserve`]), with `also`
    /// in the same commit; returns their ids and the commit to wait for.
    async fn queue_publish(
        &self,
        topic: &str,
        messages: Vec<pb::PubsubMessage>,
        also: Vec<Write>,
    ) -> Result<(Vec<String>, Committed), BrokerError> {
        let place = self.persist.reserve().await?;
        let mut engine = lock(&self.engine);
        let published = engine.publish(topic, messages, SystemTime::now())?;
        let ids = published
            .messages
            .iter()
            .map(|(m, _)| m.message.message_id.clone())
            .collect();
        Ok((ids, place.publish(published, also)))
    }

    /// Pulls what is ready now; waits up to `wait` for something to arrive.
    pub async fn pull(
        &self,
        sub: &str,
        max_messages: i32,
        wait: Duration,
    ) -> Result<Vec<pb::ReceivedMessage>, BrokerError> {
        if max_messages <= 0 {
            return Err(BrokerError::InvalidArgument(format!(
                "Invalid max_messages {max_messages}: ask for at least 1"
            )));
        }
        let until = tokio::time::Instant::now() + wait;
        loop {
            let wake = lock(&self.engine).subscription(sub)?.wake.clone();
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = {
                let mut engine = lock(&self.engine);
                let deadline = ack_deadline(engine.subscription(sub)?.config.ack_deadline_seconds);
                engine.pull(
                    sub,
                    Receiver::UNARY,
                    i64::from(max_messages).min(MAX_PULL),
                    (0, 0),
                    deadline,
                    Instant::now(),
                )?
            };
            if !got.is_empty() {
                return Ok(got);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => return Ok(Vec::new()),
            }
        }
    }

    pub async fn acknowledge(&self, sub: &str, ack_ids: &[String]) -> Result<(), BrokerError> {
        let writes = lock(&self.engine).acknowledge(sub, ack_ids, Instant::now())?;
        self.persist.writes(writes).await;
        Ok(())
    }

    pub async fn modify_ack_deadline(
        &self,
        sub: &str,
        ack_ids: &[String],
        seconds: i32,
    ) -> Result<(), BrokerError> {
        let writes =
            lock(&self.engine).modify_ack_deadline(sub, ack_ids, seconds, Instant::now())?;
        self.apply(writes).await;
        Ok(())
    }

    pub async fn seek(&self, sub: &str, time: SystemTime) -> Result<(), BrokerError> {
        let writes = lock(&self.engine).seek(sub, time, Instant::now())?;
        self.persist.writes(writes).await;
        Ok(())
    }

    /// Makes writes durable; a dead letter is first published to its topic
    /// (in the same commit as the source's acknowledgement).
    pub(crate) async fn apply(&self, writes: Vec<Write>) {
        let mut plain = Vec::new();
        for write in writes {
            match write {
                Write::DeadLetter {
                    sub,
                    msg,
                    topic,
                    attempts,
                } => {
                    let mut forwarded = pb::PubsubMessage {
                        data: msg.message.data.clone(),
                        attributes: msg.message.attributes.clone(),
                        ordering_key: msg.message.ordering_key.clone(),
                        ..pb::PubsubMessage::default()
                    };
                    let attrs = &mut forwarded.attributes;
                    attrs.insert(
                        "CloudPubSubDeadLetterSourceDeliveryCount".into(),
                        attempts.to_string(),
                    );
                    attrs.insert(
                        "CloudPubSubDeadLetterSourceSubscription".into(),
                        sub.rsplit('/').next().unwrap_or_default().to_owned(),
                    );
                    attrs.insert(
                        "CloudPubSubDeadLetterSourceSubscriptionProject".into(),
                        names::project_of(&sub).to_owned(),
                    );
                    let source = Write::DeadLetter {
                        sub: sub.clone(),
                        msg,
                        topic: topic.clone(),
                        attempts,
                    };
                    match self
                        .queue_publish(&topic, vec![forwarded], vec![source.clone()])
                        .await
                    {
                        Ok((_, committed)) => {
                            if let Err(e) = committed.wait().await {
                                tracing::error!(%sub, %topic, error = %e, "cannot dead-letter a message");
                            }
                        }
                        Err(e @ BrokerError::Internal(_)) => {
                            tracing::error!(%sub, %topic, error = %e, "cannot dead-letter a message");
                        }
                        Err(e) => {
                            // Google keeps the message when the dead-letter
                            // topic is gone; so does this (it was released
                            // from the subscription, so mark it done).
                            tracing::warn!(%sub, %topic, error = %e, "the dead-letter topic is gone; the message is dropped");
                            plain.push(source);
                        }
                    }
                }
                other => plain.push(other),
            }
        }
        self.persist.writes(plain).await;
    }

    /// Runs lease expiry, backoffs, subscription expiry and retention until
    /// `shutdown`.
    pub(crate) async fn run_ticker(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let mut writes = lock(&self.engine).tick(now);
            if now.duration_since(last_sweep) >= RETENTION_SWEEP {
                last_sweep = now;
                writes.extend(lock(&self.engine).expire_retained(SystemTime::now()));
            }
            if !writes.is_empty() {
                self.apply(writes).await;
            }
        }
    }
}

/// A subscription's (or stream's) ack deadline in seconds, as a duration.
pub fn ack_deadline(seconds: i32) -> Duration {
    Duration::from_secs(
        seconds
            .clamp(MIN_ACK_DEADLINE, MAX_ACK_DEADLINE)
            .unsigned_abs()
            .into(),
    )
}

fn check_messages(messages: &[pb::PubsubMessage]) -> Result<(), BrokerError> {
    let invalid = |m: String| Err(BrokerError::InvalidArgument(m));
    if messages.is_empty() {
        return invalid("The request contains no messages; publish at least one".into());
    }
    if messages.len() > MAX_MESSAGES_PER_PUBLISH {
        return invalid(format!(
            "The request contains {} messages; publish at most {MAX_MESSAGES_PER_PUBLISH} per request",
            messages.len()
        ));
    }
    let mut total = 0;
    for (i, m) in messages.iter().enumerate() {
        if m.data.is_empty() && m.attributes.is_empty() {
            return invalid(format!(
                "message {i} has neither data nor attributes; a message needs at least one"
            ));
        }
        if m.attributes.len() > MAX_ATTRIBUTES {
            return invalid(format!(
                "message {i} has {} attributes; at most {MAX_ATTRIBUTES} are allowed",
                m.attributes.len()
            ));
        }
        for (k, v) in &m.attributes {
            if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY_BYTES {
                return invalid(format!(
                    "message {i}: attribute key `{k}` must be 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes"
                ));
            }
            if k.to_ascii_lowercase().starts_with("goog") {
                return invalid(format!(
                    "message {i}: attribute key `{k}` may not start with `goog` (reserved)"
                ));
            }
            if v.len() > MAX_ATTRIBUTE_VALUE_BYTES {
                return invalid(format!(
                    "message {i}: the value of attribute `{k}` is {} bytes; at most {MAX_ATTRIBUTE_VALUE_BYTES}",
                    v.len()
                ));
            }
            total += k.len() + v.len();
        }
        if m.ordering_key.len() > MAX_ORDERING_KEY_BYTES {
            return invalid(format!(
                "message {i}: the ordering key is {} bytes; at most {MAX_ORDERING_KEY_BYTES}",
                m.ordering_key.len()
            ));
        }
        total += m.data.len() + m.ordering_key.len();
    }
    if total > MAX_REQUEST_BYTES {
        return invalid(format!(
            "The request is {total} bytes; a publish request may carry at most {MAX_REQUEST_BYTES} bytes (10 MB)"
        ));
    }
    Ok(())
}

/// A page of `all` (sorted by name) after `token`; the next token is the
/// last name returned when more follow.
fn page<T>(all: Vec<T>, size: i32, token: &str, name: impl Fn(&T) -> &str) -> (Vec<T>, String) {
    let size = match size {
        s if s <= 0 => 1000,
        s => s.unsigned_abs() as usize,
    };
    let mut rest: Vec<T> = all
        .into_iter()
        .filter(|t| token.is_empty() || name(t) > token)
        .collect();
    let next = if rest.len() > size {
        rest.truncate(size);
        rest.last().map(|t| name(t).to_owned()).unwrap_or_default()
    } else {
        String::new()
    };
    (rest, next)
}
