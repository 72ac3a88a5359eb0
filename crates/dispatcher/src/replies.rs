//! Reply events the dispatcher emits, their outbox, and how an execution
//! ends ([`Replier::complete`], [`Replier::finish`]).
//!
//! `delivery_acknowledgement` and `heartbeat` are published directly (losing
//! one is harmless). A `result` or `exception` is first recorded, unpublished,
//! in the same store transaction that finishes the execution; then published
//! and marked. At start, and whenever a publish failed, the outbox is flushed
//! again, and a dispatcher taking services over publishes what their last
//! holder left in it, so every question gets its terminal event exactly once
//! even across a crash (a crash between publish and mark re-sends it with the same event
//! uuid, which receivers can recognise).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rouse_core::protocol::{Attributes, Reply, reply_attributes};
use rouse_core::revision::{EventRecord, Execution, ExecutionStatus, Revision};
use rouse_pubsub::{Outgoing, PubSubError, TopicPublisher};
use rouse_store::{DispatchStore, NewEvent, StoreError};
use uuid::Uuid;

use crate::deliver::{self, Outcome};

/// How often the outbox is retried while Pub/Sub refuses to publish.
pub const OUTBOX_RETRY: Duration = Duration::from_secs(2);
/// How often the event store is read while waiting for a service's own
/// terminal event: it arrives through Pub/Sub within milliseconds, and a
/// read costs about as much.
const SELF_REPORT_POLL: Duration = Duration::from_millis(25);

/// Builds the event replying `reply` to a question with `question_attrs`,
/// sent as `sender` (the service's SRUID).
pub fn build_event(question_attrs: &Attributes, sender: &str, reply: &Reply) -> NewEvent {
    let event_uuid = Uuid::new_v4().to_string();
    let attributes = reply_attributes(question_attrs, sender, &event_uuid, SystemTime::now());
    NewEvent {
        question_uuid: attributes.get("question_uuid").cloned().unwrap_or_default(),
        retry_count: attributes.get("retry_count").and_then(|r| r.parse().ok()),
        event_uuid,
        kind: reply.kind().to_owned(),
        attributes,
        // A JSON value always serialises.
        data: serde_json::to_vec(&reply.data()).unwrap_or_default(),
    }
}

fn outgoing(event: &NewEvent) -> Outgoing {
    Outgoing {
        data: event.data.clone(),
        attributes: event.attributes.clone(),
        ordering_key: event.question_uuid.clone(),
    }
}

/// Where events go: the network topic ([`TopicPublisher`]).
#[async_trait::async_trait]
pub trait Publish: Send + Sync + 'static {
    /// Publishes one message; returns its message id.
    async fn publish(&self, message: Outgoing) -> Result<String, PubSubError>;
}

#[async_trait::async_trait]
impl Publish for TopicPublisher {
    async fn publish(&self, message: Outgoing) -> Result<String, PubSubError> {
        TopicPublisher::publish(self, message).await
    }
}

/// What workers and replies need of the store: the executions they run,
/// the events they send, and the revision to run. A part of
/// [`DispatchStore`]: every shared store is a ledger.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// See [`rouse_store::RevisionStore::serving_revision`].
    async fn serving_revision(&self, service_uuid: Uuid) -> Result<Option<Revision>, StoreError>;
    /// See [`rouse_store::ExecutionStore::insert_execution`].
    async fn insert_execution(&self, execution: &Execution) -> Result<bool, StoreError>;
    /// See [`rouse_store::ExecutionStore::update_execution`].
    async fn update_execution(
        &self,
        execution: &Execution,
        event: Option<&NewEvent>,
    ) -> Result<Option<i64>, StoreError>;
    /// See [`rouse_store::EventStore::terminal_event`].
    async fn terminal_event(
        &self,
        question_uuid: &str,
        retry_count: u32,
    ) -> Result<Option<String>, StoreError>;
    /// See [`rouse_store::EventStore::record_event`].
    async fn record_event(
        &self,
        event: &NewEvent,
        published: bool,
    ) -> Result<Option<i64>, StoreError>;
    async fn mark_published(&self, event_id: i64) -> Result<(), StoreError>;
    async fn unpublished_events(&self) -> Result<Vec<EventRecord>, StoreError>;
}

#[async_trait::async_trait]
impl<S: DispatchStore + ?Sized> Ledger for Arc<S> {
    async fn serving_revision(&self, service_uuid: Uuid) -> Result<Option<Revision>, StoreError> {
        S::serving_revision(self, service_uuid).await
    }
    async fn insert_execution(&self, execution: &Execution) -> Result<bool, StoreError> {
        S::insert_execution(self, execution).await
    }
    async fn update_execution(
        &self,
        execution: &Execution,
        event: Option<&NewEvent>,
    ) -> Result<Option<i64>, StoreError> {
        S::update_execution(self, execution, event).await
    }
    async fn terminal_event(
        &self,
        question_uuid: &str,
        retry_count: u32,
    ) -> Result<Option<String>, StoreError> {
        S::terminal_event(self, question_uuid, retry_count).await
    }
    async fn record_event(
        &self,
        event: &NewEvent,
        published: bool,
    ) -> Result<Option<i64>, StoreError> {
        S::record_event(self, event, published).await
    }
    async fn mark_published(&self, event_id: i64) -> Result<(), StoreError> {
        S::mark_published(self, event_id).await
    }
    async fn unpublished_events(&self) -> Result<Vec<EventRecord>, StoreError> {
        S::unpublished_events(self).await
    }
}

/// Events remembered as published here: enough for the seconds it takes
/// them to come back on the network subscription at full speed.
const SENT_REMEMBERED: usize = 65_536;

/// The uuids of the events this dispatcher published lately. Its own
/// replies come back to it on the network subscription, already in the
/// event store: looking them up and recording them again cost two reads
/// and two writes per question.
#[derive(Debug, Default)]
struct Sent {
    set: std::collections::HashSet<u128>,
    order: std::collections::VecDeque<u128>,
}

impl Sent {
    fn note(&mut self, event_uuid: &str) {
        let Ok(uuid) = Uuid::parse_str(event_uuid) else {
            return;
        };
        if self.set.insert(uuid.as_u128()) {
            self.order.push_back(uuid.as_u128());
            if self.order.len() > SENT_REMEMBERED
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }

    fn contains(&self, event_uuid: &str) -> bool {
        Uuid::parse_str(event_uuid).is_ok_and(|u| self.set.contains(&u.as_u128()))
    }
}

#[derive(Clone)]
pub struct Replier {
    publisher: Arc<dyn Publish>,
    store: Arc<dyn Ledger>,
    outbox_dirty: Arc<tokio::sync::Notify>,
    sent: Arc<std::sync::Mutex<Sent>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Replier {
    pub fn new(
        publisher: Arc<dyn Publish>,
        store: Arc<dyn Ledger>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            metrics,
            publisher,
            store,
            outbox_dirty: Arc::new(tokio::sync::Notify::new()),
            sent: Arc::default(),
        }
    }

    /// Whether this dispatcher published (and so recorded) the event.
    pub fn sent_here(&self, event_uuid: &str) -> bool {
        self.sent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(event_uuid)
    }

    /// Noted before publishing: the event may come back before the
    /// publish call returns.
    fn note_sent(&self, event_uuid: &str) {
        self.sent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .note(event_uuid);
    }

    /// Publishes an ephemeral event (acknowledgement, heartbeat) and records it.
    pub async fn send_now(&self, event: NewEvent) {
        self.note_sent(&event.event_uuid);
        match self.publisher.publish(outgoing(&event)).await {
            Ok(_) => {
                if let Err(e) = self.store.record_event(&event, true).await {
                    tracing::warn!(question = %event.question_uuid, error = %e, "could not record a sent event");
                }
            }
            Err(e) => {
                tracing::warn!(question = %event.question_uuid, kind = %event.kind, error = %e, "could not publish an event");
            }
        }
    }

    /// Publishes an event already recorded in the outbox under `id`.
    pub async fn publish_recorded(&self, id: i64, event: &NewEvent) {
        self.note_sent(&event.event_uuid);
        match self.publisher.publish(outgoing(event)).await {
            Ok(_) => {
                if let Err(e) = self.store.mark_published(id).await {
                    tracing::warn!(question = %event.question_uuid, error = %e, "could not mark an event published");
                }
            }
            Err(e) => {
                tracing::warn!(question = %event.question_uuid, kind = %event.kind, error = %e, "publish failed; the outbox will retry");
                self.outbox_dirty.notify_one();
            }
        }
    }

    /// Publishes everything left in the outbox. Returns how many were sent.
    pub async fn flush_outbox(&self) -> usize {
        let pending = match self.store.unpublished_events().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return 0;
            }
        };
        self.publish_pending(pending).await
    }

    /// Publishes recorded, unpublished events in order, marking each; stops
    /// at the first refusal (the outbox retries). Returns how many were sent.
    pub async fn publish_pending(&self, pending: Vec<EventRecord>) -> usize {
        let mut sent = 0;
        for record in pending {
            let message = Outgoing {
                ordering_key: record.question_uuid.clone(),
                data: record.data,
                attributes: record.attributes,
            };
            match self.publisher.publish(message).await {
                Ok(_) => {
                    sent += 1;
                    if let Err(e) = self.store.mark_published(record.id).await {
                        tracing::warn!(error = %e, "could not mark an event published");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox publish failed; retrying later");
                    break;
                }
            }
        }
        sent
    }

    /// Ends an execution with `outcome`'s reply, unless the service already
    /// sent its own terminal event, in which case that decides the status
    /// and nothing is sent twice.
    pub async fn complete(&self, execution: Execution, outcome: Outcome, sender: &str) {
        let reply = match outcome {
            Outcome::Reply(reply) => reply,
            Outcome::Crashed { detail } | Outcome::NotDelivered { detail } => {
                deliver::crashed(&detail, None, "")
            }
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
                            tokio::time::sleep(SELF_REPORT_POLL).await;
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
            self.metrics
                .question_ended(execution.service_uuid, execution.status.as_str());
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
        self.metrics
            .question_ended(execution.service_uuid, execution.status.as_str());
        let event = build_event(&execution.attributes, sender, &reply);
        match self.store.update_execution(&execution, Some(&event)).await {
            Ok(Some(id)) => self.publish_recorded(id, &event).await,
            Ok(None) => {}
            Err(e @ StoreError::Fenced { .. }) => {
                // Another dispatcher took it over and answers it.
                tracing::warn!(question = %execution.question_uuid, error = %e, "not answering a question taken over by another dispatcher");
            }
            Err(e) => {
                tracing::error!(question = %execution.question_uuid, error = %e, "cannot record an execution's end; publishing its event anyway");
                self.send_now(event).await;
            }
        }
        tracing::debug!(question = %execution.question_uuid, status = %execution.status, "execution finished");
    }

    /// Has [`Replier::run_outbox`] flush the whole outbox (until it is
    /// empty).
    pub fn retry_outbox(&self) {
        self.outbox_dirty.notify_one();
    }

    /// Flushes the outbox whenever a publish failed, until `shutdown`.
    pub async fn run_outbox(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.outbox_dirty.notified() => {}
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(OUTBOX_RETRY) => {}
                }
                self.flush_outbox().await;
                match self.store.unpublished_events().await {
                    Ok(p) if p.is_empty() => break,
                    _ => continue,
                }
            }
        }
    }
}
