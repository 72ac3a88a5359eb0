//! The broker's state: topics, subscriptions, and what each subscription owes
//! its subscribers. Synchronous and free of I/O (time is passed in), so every
//! rule of Google's semantics is unit-tested here: filters applied at publish,
//! ordering keys (a key's messages in order, to one receiver at a time; see
//! [`Receiver`]), ack deadlines and redelivery, retry backoff, dead letters,
//! retention, expiry and seek. Durability is the caller's: every change that
//! must survive a restart comes back as a [`Write`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::BrokerError;
use crate::filter::Filter;
use crate::names::{self, DELETED_TOPIC};
use crate::pb;

/// Google's bounds and defaults.
pub const MIN_ACK_DEADLINE: i32 = 10;
pub const MAX_ACK_DEADLINE: i32 = 600;
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);
pub const MIN_RETENTION: Duration = Duration::from_secs(600);
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(31 * 86_400);
pub const MIN_EXPIRY: Duration = Duration::from_secs(86_400);
pub const DEFAULT_DELIVERY_ATTEMPTS: i32 = 5;
pub const DELIVERY_ATTEMPTS: std::ops::RangeInclusive<i32> = 5..=100;
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(10);
/// Outstanding messages of a stream that asked for no limit (Google's default).
pub const DEFAULT_STREAM_OUTSTANDING: i64 = 1000;

/// One published message, shared by every subscription that holds it.
#[derive(Debug)]
pub struct Stored {
    pub id: u64,
    /// `message_id` and `publish_time` are set.
    pub message: pb::PubsubMessage,
    /// Data plus attributes, for flow control.
    pub size: usize,
}

pub type Msg = Arc<Stored>;

impl Stored {
    pub fn new(id: u64, mut message: pb::PubsubMessage, publish_time: SystemTime) -> Msg {
        message.message_id = id.to_string();
        message.publish_time = Some(publish_time.into());
        let size = message.data.len()
            + message
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + message.ordering_key.len();
        Arc::new(Self { id, message, size })
    }

    /// A message read back from the store (ids and times already set).
    pub fn restored(id: u64, message: pb::PubsubMessage) -> Msg {
        let publish_time = message
            .publish_time
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Self::new(id, message, publish_time)
    }

    fn published(&self) -> SystemTime {
        self.message
            .publish_time
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// A change the store must make durable.
#[derive(Debug, Clone)]
pub enum Write {
    /// The subscription is done with the message (acknowledged, filtered out
    /// by a seek, expired or dead-lettered); `retain` keeps it for seeks.
    Done {
        sub: Arc<str>,
        id: u64,
        retain: bool,
    },
    /// The message is owed again (a seek back over a retained message).
    Owed { sub: Arc<str>, id: u64 },
    /// Delivery attempts so far (kept across restarts for dead-lettering).
    Attempts {
        sub: Arc<str>,
        id: u64,
        attempts: u32,
    },
    /// Forward the message to `topic` and then mark it done.
    DeadLetter {
        sub: Arc<str>,
        msg: Msg,
        topic: String,
        attempts: u32,
    },
    /// The subscription expired (no activity for its TTL).
    SubscriptionExpired { sub: Arc<str> },
}

#[derive(Debug, Clone)]
struct Pending {
    msg: Msg,
    /// Deliveries so far.
    attempts: u32,
}

#[derive(Debug)]
struct Lease {
    pending: Pending,
    deadline: Instant,
    stream: u64,
}

/// Who takes messages, and how it takes an ordering key's messages.
///
/// Every receiver gets a key's messages in publish order, and a key is held
/// by one receiver at a time. A streaming pull (`pipelined`) is sent a key's
/// later messages while earlier ones are still outstanding, as Google does:
/// its client hands them to the application in order. Unary pulls (all of
/// them share id 0) and push endpoints (which post concurrently) get a
/// key's next message only after the previous one is acknowledged. A nack
/// or an expired lease gives the message back with every later one of its
/// key, so they are delivered again in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receiver {
    pub id: u64,
    pub pipelined: bool,
}

impl Receiver {
    pub const UNARY: Self = Self {
        id: 0,
        pipelined: false,
    };

    pub fn stream(id: u64) -> Self {
        Self {
            id,
            pipelined: true,
        }
    }

    pub fn push(id: u64) -> Self {
        Self {
            id,
            pipelined: false,
        }
    }
}

/// What one receiver has outstanding, and (streams only) the messages of
/// the keys it holds that wait for it.
#[derive(Debug, Default)]
struct Flow {
    messages: i64,
    bytes: i64,
    pipelined: bool,
    queue: VecDeque<Pending>,
}

/// An ordering key with work: the receiver holding it and the ids it holds
/// (leased, or queued for it), in order; and the messages behind those.
/// When no receiver holds it, its first message is ready (or waiting out a
/// backoff) and `waiting` has the rest.
#[derive(Debug, Default)]
struct Key {
    owner: Option<u64>,
    held: VecDeque<u64>,
    waiting: VecDeque<Pending>,
}

impl Key {
    /// The holder no longer holds message `id`; true when it holds nothing
    /// more of the key.
    fn unhold(&mut self, id: u64) -> bool {
        if let Some(at) = self.held.iter().position(|held| *held == id) {
            self.held.remove(at);
        }
        self.held.is_empty()
    }
}

/// A subscription and the messages it owes.
#[derive(Debug)]
pub struct Subscription {
    pub config: pb::Subscription,
    name: Arc<str>,
    filter: Option<Filter>,
    ready: VecDeque<Pending>,
    /// Waiting out a retry backoff: `(due, id)` → message.
    delayed: BTreeMap<(Instant, u64), Pending>,
    leases: HashMap<u64, Lease>,
    /// Lease deadlines, possibly stale (checked against `leases`).
    expiries: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Ordering keys with work. A key with nothing left is removed, so
    /// per-key state lives only while the key has work.
    keys: HashMap<String, Key>,
    /// Acknowledged messages kept for seeks (`retain_acked_messages`).
    retained: BTreeMap<u64, Msg>,
    flows: HashMap<u64, Flow>,
    last_active: Instant,
    /// Woken whenever messages may have become available.
    pub wake: Arc<tokio::sync::Notify>,
}

impl Subscription {
    fn ordered(&self, msg: &Stored) -> bool {
        self.config.enable_message_ordering && !msg.message.ordering_key.is_empty()
    }

    fn dead_letter(&self) -> Option<(&str, u32)> {
        self.config.dead_letter_policy.as_ref().and_then(|p| {
            (!p.dead_letter_topic.is_empty()).then(|| {
                let max = if p.max_delivery_attempts == 0 {
                    DEFAULT_DELIVERY_ATTEMPTS
                } else {
                    p.max_delivery_attempts
                };
                (p.dead_letter_topic.as_str(), max.unsigned_abs())
            })
        })
    }

    /// A new message (or one owed again): queued for the stream holding
    /// its key, behind the key's outstanding messages, or ready.
    fn enqueue(&mut self, pending: Pending) {
        if self.ordered(&pending.msg) {
            let key = pending.msg.message.ordering_key.as_str();
            if let Some(k) = self.keys.get_mut(key) {
                match k.owner.and_then(|o| self.flows.get_mut(&o)) {
                    Some(flow) if flow.pipelined => {
                        k.held.push_back(pending.msg.id);
                        flow.queue.push_back(pending);
                    }
                    _ => k.waiting.push_back(pending),
                }
                return;
            }
            self.keys.insert(key.to_owned(), Key::default());
        }
        self.ready.push_back(pending);
    }

    /// `receiver` takes a ready message: it now holds the message's key, and
    /// a stream is queued the key's later messages too.
    fn take_key(&mut self, pending: &Pending, receiver: Receiver) {
        if !self.ordered(&pending.msg) {
            return;
        }
        let key = self
            .keys
            .entry(pending.msg.message.ordering_key.clone())
            .or_default();
        key.owner = Some(receiver.id);
        key.held.push_back(pending.msg.id);
        if receiver.pipelined
            && let Some(flow) = self.flows.get_mut(&receiver.id)
        {
            key.held.extend(key.waiting.iter().map(|p| p.msg.id));
            flow.queue.extend(key.waiting.drain(..));
        }
    }

    /// A message of a key is done (acknowledged or dead-lettered): once its
    /// receiver holds nothing more of the key, the key's next message is
    /// ready, or the key is forgotten.
    fn release_key(&mut self, msg: &Stored) {
        if !self.ordered(msg) {
            return;
        }
        let key = msg.message.ordering_key.as_str();
        if self.keys.get_mut(key).is_some_and(|k| k.unhold(msg.id)) {
            self.advance_key(key);
        }
    }

    /// A leased message of a key came back (nack or expiry): it and every
    /// later message its receiver holds go back in front of the key's
    /// waiting ones, in order. Later messages were not at fault: their
    /// delivery is not counted. True when the message is now the key's
    /// head (nothing earlier is outstanding).
    fn take_back(&mut self, msg: &Stored) -> bool {
        let key = msg.message.ordering_key.as_str();
        let Some(k) = self.keys.get_mut(key) else {
            return true;
        };
        let Some(at) = k.held.iter().position(|id| *id == msg.id) else {
            return k.held.is_empty();
        };
        let later: Vec<u64> = k.held.drain(at..).skip(1).collect();
        let owner = k.owner;
        let mut back = Vec::with_capacity(later.len());
        for id in later {
            if let Some(lease) = self.end_lease(id) {
                let mut pending = lease.pending;
                pending.attempts = pending.attempts.saturating_sub(1);
                back.push(pending);
            } else if let Some(flow) = owner.and_then(|o| self.flows.get_mut(&o))
                && let Some(i) = flow.queue.iter().position(|p| p.msg.id == id)
                && let Some(pending) = flow.queue.remove(i)
            {
                back.push(pending);
            }
        }
        let Some(k) = self.keys.get_mut(key) else {
            return true;
        };
        for pending in back.into_iter().rev() {
            k.waiting.push_front(pending);
        }
        let head = k.held.is_empty();
        if head {
            k.owner = None;
        }
        head
    }

    fn end_lease(&mut self, id: u64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        if let Some(flow) = self.flows.get_mut(&lease.stream) {
            flow.messages -= 1;
            flow.bytes -= lease.pending.msg.size as i64;
        }
        Some(lease)
    }

    /// A delivery that was not acknowledged: owed again now, after a
    /// backoff, or dead-lettered. An ordered message whose key has earlier
    /// messages outstanding waits behind them instead.
    fn redeliver(&mut self, pending: Pending, now: Instant, writes: &mut Vec<Write>) {
        let ordered = self.ordered(&pending.msg);
        let head = !ordered || self.take_back(&pending.msg);
        if let Some((topic, max)) = self.dead_letter()
            && pending.attempts >= max
        {
            writes.push(Write::DeadLetter {
                sub: self.name.clone(),
                msg: pending.msg.clone(),
                topic: topic.to_owned(),
                attempts: pending.attempts,
            });
            if ordered && head {
                self.advance_key(&pending.msg.message.ordering_key);
            }
            return;
        }
        writes.push(Write::Attempts {
            sub: self.name.clone(),
            id: pending.msg.id,
            attempts: pending.attempts,
        });
        if !head {
            if let Some(k) = self.keys.get_mut(&pending.msg.message.ordering_key) {
                k.waiting.push_front(pending);
            }
            return;
        }
        match backoff(self.config.retry_policy.as_ref(), pending.attempts) {
            Some(delay) if !delay.is_zero() => {
                self.delayed.insert((now + delay, pending.msg.id), pending);
            }
            _ => self.ready.push_back(pending),
        }
    }

    /// A key nobody holds: its next message is ready, or it is forgotten.
    fn advance_key(&mut self, key: &str) {
        let Some(k) = self.keys.get_mut(key) else {
            return;
        };
        k.owner = None;
        match k.waiting.pop_front() {
            Some(next) => self.ready.push_back(next),
            None => {
                self.keys.remove(key);
            }
        }
    }

    /// Every message it still owes or has leased, and the retained ones.
    fn drain_all(&mut self) -> Vec<(Msg, u32)> {
        let mut all: Vec<(Msg, u32)> = Vec::new();
        all.extend(self.ready.drain(..).map(|p| (p.msg, p.attempts)));
        all.extend(
            std::mem::take(&mut self.delayed)
                .into_values()
                .map(|p| (p.msg, p.attempts)),
        );
        all.extend(
            self.leases
                .drain()
                .map(|(_, l)| (l.pending.msg, l.pending.attempts)),
        );
        for (_, key) in self.keys.drain() {
            all.extend(key.waiting.into_iter().map(|p| (p.msg, p.attempts)));
        }
        self.expiries.clear();
        for flow in self.flows.values_mut() {
            all.extend(flow.queue.drain(..).map(|p| (p.msg, p.attempts)));
            flow.messages = 0;
            flow.bytes = 0;
        }
        all.sort_by_key(|(m, _)| m.id);
        all
    }

    /// Messages owed (not acknowledged), for tests and status.
    pub fn backlog(&self) -> usize {
        self.ready.len()
            + self.delayed.len()
            + self.leases.len()
            + self.keys.values().map(|k| k.waiting.len()).sum::<usize>()
            + self.flows.values().map(|f| f.queue.len()).sum::<usize>()
    }

    /// Ordering keys holding state (a key with nothing outstanding has none).
    pub fn live_keys(&self) -> usize {
        self.keys.len()
    }
}

/// The backoff before redelivering after `attempts` deliveries, as Google's
/// retry policy computes it: `min * 2^(attempts-1)`, capped at `max`. No
/// policy: at once.
fn backoff(policy: Option<&pb::RetryPolicy>, attempts: u32) -> Option<Duration> {
    let policy = policy?;
    let min = policy
        .minimum_backoff
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(DEFAULT_MIN_BACKOFF);
    let max = policy
        .maximum_backoff
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(MAX_BACKOFF);
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    Some(min.saturating_mul(factor).min(max))
}

#[derive(Debug)]
struct Topic {
    config: pb::Topic,
    subscriptions: BTreeSet<Arc<str>>,
}

/// Messages accepted for a topic, with the subscriptions each goes to
/// (filters applied). Made durable, then [`Engine::deliver`]ed.
#[derive(Debug, Default)]
pub struct Published {
    pub messages: Vec<(Msg, Vec<Arc<str>>)>,
}

/// Topics and subscriptions.
#[derive(Debug, Default)]
pub struct Engine {
    topics: BTreeMap<String, Topic>,
    subscriptions: BTreeMap<Arc<str>, Subscription>,
    next_id: u64,
}

impl Engine {
    pub fn new(next_id: u64) -> Self {
        Self {
            next_id: next_id.max(1),
            ..Self::default()
        }
    }

    /// The id the next message gets (kept durable so ids are never reused).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    // Topics.

    pub fn create_topic(&mut self, mut topic: pb::Topic) -> Result<pb::Topic, BrokerError> {
        names::topic(&topic.name)?;
        if let Some(d) = topic.message_retention_duration {
            retention(d, "message_retention_duration")?;
        }
        if self.topics.contains_key(&topic.name) {
            return Err(BrokerError::exists("topic", &topic.name));
        }
        topic.satisfies_pzs = false;
        self.topics.insert(
            topic.name.clone(),
            Topic {
                config: topic.clone(),
                subscriptions: BTreeSet::new(),
            },
        );
        Ok(topic)
    }

    pub fn topic(&self, name: &str) -> Result<&pb::Topic, BrokerError> {
        names::topic(name)?;
        self.topics
            .get(name)
            .map(|t| &t.config)
            .ok_or_else(|| BrokerError::not_found("topic", name))
    }

    pub fn update_topic(
        &mut self,
        topic: pb::Topic,
        paths: &[String],
    ) -> Result<pb::Topic, BrokerError> {
        names::topic(&topic.name)?;
        let current = self
            .topics
            .get_mut(&topic.name)
            .ok_or_else(|| BrokerError::not_found("topic", &topic.name))?;
        if paths.is_empty() {
            return Err(BrokerError::InvalidArgument(
                "update_mask is empty; name the fields to update (e.g. `labels`)".into(),
            ));
        }
        for path in paths {
            match path.as_str() {
                "labels" => current.config.labels = topic.labels.clone(),
                "message_retention_duration" | "messageRetentionDuration" => {
                    if let Some(d) = topic.message_retention_duration {
                        retention(d, "message_retention_duration")?;
                    }
                    current.config.message_retention_duration = topic.message_retention_duration;
                }
                other => {
                    return Err(BrokerError::InvalidArgument(format!(
                        "cannot update the topic field `{other}`; updatable: labels, message_retention_duration"
                    )));
                }
            }
        }
        Ok(current.config.clone())
    }

    /// Topics of a project, by name.
    pub fn topics(&self, project: &str) -> Vec<pb::Topic> {
        let prefix = format!("projects/{project}/topics/");
        self.topics
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .map(|(_, t)| t.config.clone())
            .collect()
    }

    pub fn topic_subscriptions(&self, topic: &str) -> Result<Vec<String>, BrokerError> {
        names::topic(topic)?;
        let t = self
            .topics
            .get(topic)
            .ok_or_else(|| BrokerError::not_found("topic", topic))?;
        Ok(t.subscriptions.iter().map(|s| s.to_string()).collect())
    }

    /// Deletes a topic; its subscriptions stay, named to `_deleted-topic_`,
    /// and receive nothing more (as Google does).
    pub fn delete_topic(&mut self, name: &str) -> Result<Vec<pb::Subscription>, BrokerError> {
        names::topic(name)?;
        let topic = self
            .topics
            .remove(name)
            .ok_or_else(|| BrokerError::not_found("topic", name))?;
        let mut changed = Vec::new();
        for sub in topic.subscriptions {
            if let Some(s) = self.subscriptions.get_mut(&sub) {
                s.config.topic = DELETED_TOPIC.to_owned();
                changed.push(s.config.clone());
            }
        }
        Ok(changed)
    }

    /// A topic read back from the store.
    pub fn restore_topic(&mut self, config: pb::Topic) {
        let subscriptions = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.config.topic == config.name)
            .map(|(n, _)| n.clone())
            .collect();
        self.topics.insert(
            config.name.clone(),
            Topic {
                config,
                subscriptions,
            },
        );
    }

    /// A subscription read back from the store (checked when it was made).
    pub fn restore_subscription(
        &mut self,
        config: pb::Subscription,
        now: Instant,
    ) -> Result<(), BrokerError> {
        let filter = parse_filter(&config.filter)?;
        self.insert_subscription(config, filter, now);
        Ok(())
    }

    fn insert_subscription(
        &mut self,
        config: pb::Subscription,
        filter: Option<Filter>,
        now: Instant,
    ) {
        let name: Arc<str> = Arc::from(config.name.as_str());
        if let Some(topic) = self.topics.get_mut(&config.topic) {
            topic.subscriptions.insert(name.clone());
        }
        self.subscriptions.insert(
            name.clone(),
            Subscription {
                config,
                name,
                filter,
                ready: VecDeque::new(),
                delayed: BTreeMap::new(),
                leases: HashMap::new(),
                expiries: BinaryHeap::new(),
                keys: HashMap::new(),
                retained: BTreeMap::new(),
                flows: HashMap::new(),
                last_active: now,
                wake: Arc::new(tokio::sync::Notify::new()),
            },
        );
    }

    // Subscriptions.

    /// Creates a subscription after checking every setting as Google does;
    /// fills in Google's defaults.
    pub fn create_subscription(
        &mut self,
        mut config: pb::Subscription,
        now: Instant,
    ) -> Result<pb::Subscription, BrokerError> {
        names::subscription(&config.name)?;
        names::topic(&config.topic)?;
        if !self.topics.contains_key(&config.topic) {
            return Err(BrokerError::not_found("topic", &config.topic));
        }
        if self.subscriptions.contains_key(config.name.as_str()) {
            return Err(BrokerError::exists("subscription", &config.name));
        }
        let filter = parse_filter(&config.filter)?;
        self.check_settings(&mut config)?;
        config.topic_message_retention_duration = self
            .topics
            .get(&config.topic)
            .and_then(|t| t.config.message_retention_duration);
        self.insert_subscription(config.clone(), filter, now);
        Ok(config)
    }

    fn check_settings(&self, config: &mut pb::Subscription) -> Result<(), BrokerError> {
        match config.ack_deadline_seconds {
            0 => config.ack_deadline_seconds = MIN_ACK_DEADLINE,
            s if (MIN_ACK_DEADLINE..=MAX_ACK_DEADLINE).contains(&s) => {}
            s => {
                return Err(BrokerError::InvalidArgument(format!(
                    "Invalid ack_deadline_seconds {s}: use {MIN_ACK_DEADLINE} to {MAX_ACK_DEADLINE} seconds"
                )));
            }
        }
        match config.message_retention_duration {
            None => config.message_retention_duration = Some(proto_duration(DEFAULT_RETENTION)),
            Some(d) => retention(d, "message_retention_duration")?,
        }
        match &config.expiration_policy {
            None => {
                config.expiration_policy = Some(pb::ExpirationPolicy {
                    ttl: Some(proto_duration(DEFAULT_EXPIRY)),
                });
            }
            Some(pb::ExpirationPolicy { ttl: None }) => {}
            Some(pb::ExpirationPolicy { ttl: Some(ttl) }) => {
                let ttl = Duration::try_from(*ttl).unwrap_or_default();
                if ttl < MIN_EXPIRY {
                    return Err(BrokerError::InvalidArgument(format!(
                        "Invalid expiration_policy.ttl {ttl:?}: at least 1 day, or no ttl for never"
                    )));
                }
            }
        }
        if let Some(policy) = &mut config.dead_letter_policy
            && !policy.dead_letter_topic.is_empty()
        {
            names::topic(&policy.dead_letter_topic)?;
            if !self.topics.contains_key(&policy.dead_letter_topic) {
                return Err(BrokerError::not_found("topic", &policy.dead_letter_topic));
            }
            if policy.max_delivery_attempts == 0 {
                policy.max_delivery_attempts = DEFAULT_DELIVERY_ATTEMPTS;
            }
            if !DELIVERY_ATTEMPTS.contains(&policy.max_delivery_attempts) {
                return Err(BrokerError::InvalidArgument(format!(
                    "Invalid dead_letter_policy.max_delivery_attempts {}: use 5 to 100",
                    policy.max_delivery_attempts
                )));
            }
        }
        if let Some(policy) = &config.retry_policy {
            let min = policy
                .minimum_backoff
                .and_then(|d| Duration::try_from(d).ok());
            let max = policy
                .maximum_backoff
                .and_then(|d| Duration::try_from(d).ok());
            for (field, d) in [("minimum_backoff", min), ("maximum_backoff", max)] {
                if d.is_some_and(|d| d > MAX_BACKOFF) {
                    return Err(BrokerError::InvalidArgument(format!(
                        "Invalid retry_policy.{field}: at most 600s"
                    )));
                }
            }
            if let (Some(min), Some(max)) = (min, max)
                && min > max
            {
                return Err(BrokerError::InvalidArgument(
                    "Invalid retry_policy: minimum_backoff is above maximum_backoff".into(),
                ));
            }
        }
        if let Some(push) = &config.push_config
            && !push.push_endpoint.is_empty()
            && !(push.push_endpoint.starts_with("http://")
                || push.push_endpoint.starts_with("https://"))
        {
            return Err(BrokerError::InvalidArgument(format!(
                "Invalid push_config.push_endpoint `{}`: an http:// or https:// URL",
                push.push_endpoint
            )));
        }
        Ok(())
    }

    pub fn subscription(&self, name: &str) -> Result<&Subscription, BrokerError> {
        names::subscription(name)?;
        self.subscriptions
            .get(name)
            .ok_or_else(|| BrokerError::not_found("subscription", name))
    }

    fn subscription_mut(&mut self, name: &str) -> Result<&mut Subscription, BrokerError> {
        names::subscription(name)?;
        self.subscriptions
            .get_mut(name)
            .ok_or_else(|| BrokerError::not_found("subscription", name))
    }

    /// Subscriptions of a project, by name.
    pub fn subscriptions(&self, project: &str) -> Vec<pb::Subscription> {
        let prefix = format!("projects/{project}/subscriptions/");
        self.subscriptions
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(name, _)| name.starts_with(&prefix))
            .map(|(_, s)| s.config.clone())
            .collect()
    }

    /// Every subscription with a push endpoint.
    pub fn push_subscriptions(&self) -> Vec<(Arc<str>, String)> {
        self.subscriptions
            .iter()
            .filter_map(|(name, s)| {
                let push = s.config.push_config.as_ref()?;
                (!push.push_endpoint.is_empty()).then(|| (name.clone(), push.push_endpoint.clone()))
            })
            .collect()
    }

    pub fn update_subscription(
        &mut self,
        update: pb::Subscription,
        paths: &[String],
    ) -> Result<pb::Subscription, BrokerError> {
        if paths.is_empty() {
            return Err(BrokerError::InvalidArgument(
                "update_mask is empty; name the fields to update (e.g. `ack_deadline_seconds`)"
                    .into(),
            ));
        }
        let mut config = self.subscription(&update.name)?.config.clone();
        for path in paths {
            match snake(path).as_str() {
                "ack_deadline_seconds" => config.ack_deadline_seconds = update.ack_deadline_seconds,
                "push_config" => config.push_config = update.push_config.clone(),
                "retain_acked_messages" => {
                    config.retain_acked_messages = update.retain_acked_messages;
                }
                "message_retention_duration" => {
                    config.message_retention_duration = update.message_retention_duration;
                }
                "labels" => config.labels = update.labels.clone(),
                "expiration_policy" => config.expiration_policy = update.expiration_policy,
                "dead_letter_policy" => {
                    config.dead_letter_policy = update.dead_letter_policy.clone();
                }
                "retry_policy" => config.retry_policy = update.retry_policy,
                other @ ("filter" | "enable_message_ordering" | "topic" | "name") => {
                    return Err(BrokerError::InvalidArgument(format!(
                        "the subscription field `{other}` cannot be changed; create a new subscription"
                    )));
                }
                other => {
                    return Err(BrokerError::InvalidArgument(format!(
                        "unknown subscription field `{other}` in update_mask"
                    )));
                }
            }
        }
        self.check_settings(&mut config)?;
        let sub = self.subscription_mut(&update.name)?;
        sub.config = config.clone();
        if !sub.config.retain_acked_messages {
            sub.retained.clear();
        }
        sub.wake.notify_waiters();
        Ok(config)
    }

    pub fn delete_subscription(&mut self, name: &str) -> Result<(), BrokerError> {
        names::subscription(name)?;
        let sub = self
            .subscriptions
            .remove(name)
            .ok_or_else(|| BrokerError::not_found("subscription", name))?;
        if let Some(topic) = self.topics.get_mut(&sub.config.topic) {
            topic.subscriptions.remove(name);
        }
        sub.wake.notify_waiters();
        Ok(())
    }

    // Publishing.

    /// Accepts messages for a topic: ids, publish time, and the
    /// subscriptions whose filter each matches. Nothing is owed until
    /// [`Self::deliver`] (after the store made them durable).
    pub fn publish(
        &mut self,
        topic: &str,
        messages: Vec<pb::PubsubMessage>,
        now: SystemTime,
    ) -> Result<Published, BrokerError> {
        names::topic(topic)?;
        let t = self
            .topics
            .get(topic)
            .ok_or_else(|| BrokerError::not_found("topic", topic))?;
        let mut published = Published::default();
        for message in messages {
            let id = self.next_id;
            self.next_id += 1;
            let msg = Stored::new(id, message, now);
            let to: Vec<Arc<str>> = t
                .subscriptions
                .iter()
                .filter(|name| {
                    self.subscriptions.get(*name).is_some_and(|s| {
                        s.filter
                            .as_ref()
                            .is_none_or(|f| f.matches(&msg.message.attributes))
                    })
                })
                .cloned()
                .collect();
            published.messages.push((msg, to));
        }
        Ok(published)
    }

    /// Makes published messages owed by their subscriptions.
    pub fn deliver(&mut self, published: &Published) {
        for (msg, subs) in &published.messages {
            for name in subs {
                if let Some(sub) = self.subscriptions.get_mut(name) {
                    sub.enqueue(Pending {
                        msg: msg.clone(),
                        attempts: 0,
                    });
                    sub.wake.notify_waiters();
                }
            }
        }
    }

    /// Restores what the store kept: a message owed to a subscription with
    /// the attempts made so far, or retained after its acknowledgement.
    /// Call in message id order.
    pub fn restore(&mut self, sub: &str, msg: Msg, attempts: u32, acked: bool) {
        self.next_id = self.next_id.max(msg.id + 1);
        if let Some(s) = self.subscriptions.get_mut(sub) {
            if acked {
                s.retained.insert(msg.id, msg);
            } else {
                s.enqueue(Pending { msg, attempts });
            }
        }
    }

    // Receiving.

    /// Leases up to `max_messages` messages to `receiver` for `deadline`,
    /// within its outstanding limits: first those queued for it (later
    /// messages of the keys it holds), then ready ones.
    pub fn pull(
        &mut self,
        sub: &str,
        receiver: Receiver,
        max_messages: i64,
        limits: (i64, i64),
        deadline: Duration,
        now: Instant,
    ) -> Result<Vec<pb::ReceivedMessage>, BrokerError> {
        let s = self.subscription_mut(sub)?;
        s.last_active = now;
        // The receiver is connected from now until it closes.
        s.flows.entry(receiver.id).or_default().pipelined = receiver.pipelined;
        let dead_letter = s.dead_letter().is_some();
        let (max_outstanding, max_bytes) = limits;
        let mut out = Vec::new();
        while (out.len() as i64) < max_messages {
            let Some(flow) = s.flows.get_mut(&receiver.id) else {
                break;
            };
            if max_outstanding > 0 && flow.messages >= max_outstanding {
                break;
            }
            // A receiver may always take one message, however large.
            if max_bytes > 0 && flow.messages > 0 && flow.bytes >= max_bytes {
                break;
            }
            let mut pending = match flow.queue.pop_front() {
                Some(queued) => queued,
                None => match s.ready.pop_front() {
                    Some(ready) => {
                        s.take_key(&ready, receiver);
                        ready
                    }
                    None => break,
                },
            };
            pending.attempts += 1;
            let id = pending.msg.id;
            out.push(pb::ReceivedMessage {
                ack_id: ack_id(id, pending.attempts),
                message: Some(pending.msg.message.clone()),
                delivery_attempt: if dead_letter {
                    i32::try_from(pending.attempts).unwrap_or(i32::MAX)
                } else {
                    0
                },
            });
            if let Some(flow) = s.flows.get_mut(&receiver.id) {
                flow.messages += 1;
                flow.bytes += pending.msg.size as i64;
            }
            let expires = now + deadline;
            s.expiries.push(Reverse((expires, id)));
            s.leases.insert(
                id,
                Lease {
                    pending,
                    deadline: expires,
                    stream: receiver.id,
                },
            );
        }
        Ok(out)
    }

    /// Acknowledges deliveries. Malformed ids are refused (nothing is
    /// acknowledged then); ids that are no longer leased are ignored, as
    /// Google does for expired ones.
    pub fn acknowledge(
        &mut self,
        sub: &str,
        ack_ids: &[String],
        now: Instant,
    ) -> Result<Vec<Write>, BrokerError> {
        let ids = parse_ack_ids(ack_ids)?;
        let s = self.subscription_mut(sub)?;
        s.last_active = now;
        let mut writes = Vec::new();
        for (id, _attempt) in ids {
            if let Some(lease) = s.end_lease(id) {
                let msg = lease.pending.msg;
                s.release_key(&msg);
                let retain = s.config.retain_acked_messages;
                if retain {
                    s.retained.insert(id, msg.clone());
                }
                writes.push(Write::Done {
                    sub: s.name.clone(),
                    id,
                    retain,
                });
            }
        }
        s.wake.notify_waiters();
        Ok(writes)
    }

    /// Extends leases by `seconds` from now, or with 0 gives them back
    /// (a nack): owed again at once, after the retry backoff, or
    /// dead-lettered.
    pub fn modify_ack_deadline(
        &mut self,
        sub: &str,
        ack_ids: &[String],
        seconds: i32,
        now: Instant,
    ) -> Result<Vec<Write>, BrokerError> {
        if !(0..=MAX_ACK_DEADLINE).contains(&seconds) {
            return Err(BrokerError::InvalidArgument(format!(
                "Invalid ack_deadline_seconds {seconds}: use 0 (to give the messages back) to {MAX_ACK_DEADLINE}"
            )));
        }
        let ids = parse_ack_ids(ack_ids)?;
        let s = self.subscription_mut(sub)?;
        s.last_active = now;
        let mut writes = Vec::new();
        for (id, _attempt) in ids {
            if seconds == 0 {
                if let Some(lease) = s.end_lease(id) {
                    s.redeliver(lease.pending, now, &mut writes);
                }
            } else if let Some(lease) = s.leases.get_mut(&id) {
                let deadline = now + Duration::from_secs(seconds.unsigned_abs().into());
                lease.deadline = deadline;
                s.expiries.push(Reverse((deadline, id)));
            }
        }
        s.wake.notify_waiters();
        Ok(writes)
    }

    /// Leases that ran out, backoffs that ended, subscriptions past their
    /// TTL; wakes the subscriptions with messages ready again and returns
    /// what to make durable.
    pub fn tick(&mut self, now: Instant) -> Vec<Write> {
        let mut writes = Vec::new();
        let mut expired = Vec::new();
        for (name, s) in &mut self.subscriptions {
            let mut woke = false;
            while let Some(Reverse((deadline, id))) = s.expiries.peek().copied() {
                if deadline > now {
                    break;
                }
                s.expiries.pop();
                let due = s.leases.get(&id).is_some_and(|l| l.deadline <= now);
                if due && let Some(lease) = s.end_lease(id) {
                    s.redeliver(lease.pending, now, &mut writes);
                    woke = true;
                }
            }
            while let Some(entry) = s.delayed.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let pending = entry.remove();
                s.ready.push_back(pending);
                woke = true;
            }
            if woke {
                s.wake.notify_waiters();
            }
            let ttl = s
                .config
                .expiration_policy
                .as_ref()
                .and_then(|p| p.ttl)
                .and_then(|t| Duration::try_from(t).ok());
            // A subscription with a subscriber connected (a stream or a
            // pusher; unary pulls are stream 0) is in use, as on Google.
            if s.flows.keys().any(|stream| *stream != 0) {
                s.last_active = now;
            }
            if ttl.is_some_and(|ttl| now.duration_since(s.last_active) > ttl) {
                expired.push(name.clone());
            }
        }
        for name in expired {
            if self.delete_subscription(&name).is_ok() {
                writes.push(Write::SubscriptionExpired { sub: name });
            }
        }
        writes
    }

    /// Drops messages older than each subscription's retention (owed ones
    /// and retained ones). Run now and then: it reads every queue.
    pub fn expire_retained(&mut self, wall: SystemTime) -> Vec<Write> {
        let mut writes = Vec::new();
        for s in self.subscriptions.values_mut() {
            let keep = s
                .config
                .message_retention_duration
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(DEFAULT_RETENTION);
            let Some(cutoff) = wall.checked_sub(keep) else {
                continue;
            };
            let old: Vec<u64> = s
                .retained
                .iter()
                .filter(|(_, m)| m.published() < cutoff)
                .map(|(id, _)| *id)
                .collect();
            for id in old {
                s.retained.remove(&id);
                writes.push(Write::Done {
                    sub: s.name.clone(),
                    id,
                    retain: false,
                });
            }
            if s.ready
                .iter()
                .chain(s.keys.values().flat_map(|k| &k.waiting))
                .chain(s.flows.values().flat_map(|f| &f.queue))
                .chain(s.delayed.values())
                .any(|p| p.msg.published() < cutoff)
            {
                let all = s.drain_all();
                for (msg, attempts) in all {
                    if msg.published() < cutoff {
                        writes.push(Write::Done {
                            sub: s.name.clone(),
                            id: msg.id,
                            retain: false,
                        });
                    } else {
                        s.enqueue(Pending { msg, attempts });
                    }
                }
            }
        }
        writes
    }

    /// Seeks to a time: messages published before it count as acknowledged,
    /// those at or after it (retained ones included) are owed again.
    pub fn seek(
        &mut self,
        sub: &str,
        time: SystemTime,
        now: Instant,
    ) -> Result<Vec<Write>, BrokerError> {
        let s = self.subscription_mut(sub)?;
        s.last_active = now;
        let retain = s.config.retain_acked_messages;
        let mut all = s.drain_all();
        all.extend(
            std::mem::take(&mut s.retained)
                .into_values()
                .map(|m| (m, 0)),
        );
        all.sort_by_key(|(m, _)| m.id);
        let mut writes = Vec::new();
        for (msg, attempts) in all {
            if msg.published() < time {
                if retain {
                    s.retained.insert(msg.id, msg.clone());
                }
                writes.push(Write::Done {
                    sub: s.name.clone(),
                    id: msg.id,
                    retain,
                });
            } else {
                writes.push(Write::Owed {
                    sub: s.name.clone(),
                    id: msg.id,
                });
                s.enqueue(Pending { msg, attempts });
            }
        }
        s.wake.notify_waiters();
        Ok(writes)
    }

    /// A receiver ended: its flow-control account goes (its leases run out
    /// on their own deadlines, as on Google), and the messages queued for
    /// it go back to their keys, in order.
    pub fn stream_closed(&mut self, sub: &str, stream: u64) {
        let Some(s) = self.subscriptions.get_mut(sub) else {
            return;
        };
        let Some(flow) = s.flows.remove(&stream) else {
            return;
        };
        let mut freed = Vec::new();
        for pending in flow.queue.into_iter().rev() {
            let key = pending.msg.message.ordering_key.as_str();
            if let Some(k) = s.keys.get_mut(key) {
                if k.unhold(pending.msg.id) {
                    freed.push(key.to_owned());
                }
                k.waiting.push_front(pending);
            }
        }
        freed.sort_unstable();
        freed.dedup();
        for key in freed {
            s.advance_key(&key);
        }
        s.wake.notify_waiters();
    }

    pub fn touch(&mut self, sub: &str, now: Instant) {
        if let Some(s) = self.subscriptions.get_mut(sub) {
            s.last_active = now;
        }
    }
}

fn ack_id(id: u64, attempt: u32) -> String {
    format!("{id}-{attempt}")
}

fn parse_ack_ids(ack_ids: &[String]) -> Result<Vec<(u64, u32)>, BrokerError> {
    ack_ids
        .iter()
        .map(|a| {
            a.split_once('-')
                .and_then(|(id, n)| Some((id.parse().ok()?, n.parse().ok()?)))
                .ok_or_else(|| {
                    BrokerError::InvalidArgument(format!(
                        "Some acknowledgement ids in the request were invalid: `{a}` is not an ack id this broker issued"
                    ))
                })
        })
        .collect()
}

fn parse_filter(text: &str) -> Result<Option<Filter>, BrokerError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Filter::parse(text)
        .map(Some)
        .map_err(|e| BrokerError::InvalidArgument(format!("Invalid filter `{text}`: {e}")))
}

fn retention(d: prost_types::Duration, field: &str) -> Result<(), BrokerError> {
    let d = Duration::try_from(d).unwrap_or_default();
    if d < MIN_RETENTION || d > DEFAULT_RETENTION {
        return Err(BrokerError::InvalidArgument(format!(
            "Invalid {field} {d:?}: use 10 minutes to 7 days"
        )));
    }
    Ok(())
}

pub fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// `ackDeadlineSeconds` → `ack_deadline_seconds` (REST masks are camelCase).
fn snake(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
