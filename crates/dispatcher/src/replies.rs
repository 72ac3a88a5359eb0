//! Reply events the dispatcher emits, and their outbox.
//!
//! `delivery_acknowledgement` and `heartbeat` are published directly (losing
//! one is harmless). A `result` or `exception` is first recorded, unpublished,
//! in the same store transaction that finishes the execution; then published
//! and marked. At start, and whenever a publish failed, the outbox is flushed
//! again, so every question gets its terminal event exactly once even across
//! a crash (a crash between publish and mark re-sends it with the same event
//! uuid, which receivers can recognise).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rouse_core::protocol::{Attributes, Reply, reply_attributes};
use rouse_pubsub::{Outgoing, TopicPublisher};
use rouse_store::{DispatchStore, NewEvent};
use uuid::Uuid;

/// How often the outbox is retried while Pub/Sub refuses to publish.
pub const OUTBOX_RETRY: Duration = Duration::from_secs(2);

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

#[derive(Clone)]
pub struct Replier {
    publisher: TopicPublisher,
    store: Arc<dyn DispatchStore>,
    outbox_dirty: Arc<tokio::sync::Notify>,
}

impl Replier {
    pub fn new(publisher: TopicPublisher, store: Arc<dyn DispatchStore>) -> Self {
        Self {
            publisher,
            store,
            outbox_dirty: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Publishes an ephemeral event (acknowledgement, heartbeat) and records it.
    pub async fn send_now(&self, event: NewEvent) {
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
