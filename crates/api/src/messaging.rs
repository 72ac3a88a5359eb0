//! The messaging backend the control plane needs: topics and subscriptions.
//!
//! A trait owned by its consumer, so unit tests can make any step fail; the
//! real adapter is [`rouse_pubsub::PubSub`].

use std::collections::HashMap;

use async_trait::async_trait;
use rouse_pubsub::{
    Ensured, Outgoing, PubSub, PubSubError, Removed, SubscriptionSpec, TopicPublisher,
};

#[async_trait]
pub trait Messaging: Send + Sync + 'static {
    async fn ensure_topic(&self, topic_id: &str) -> Result<Ensured, PubSubError>;
    async fn ensure_subscription(
        &self,
        subscription_id: &str,
        topic_id: &str,
        spec: &SubscriptionSpec,
    ) -> Result<Ensured, PubSubError>;
    async fn delete_topic(&self, topic_id: &str) -> Result<Removed, PubSubError>;
    async fn delete_subscription(&self, subscription_id: &str) -> Result<Removed, PubSubError>;
    /// Publishes one message to a topic; returns its message id.
    async fn publish(&self, topic_id: &str, message: Outgoing) -> Result<String, PubSubError>;
}

/// [`Messaging`] on real Pub/Sub, keeping one publisher per topic it was
/// asked to publish to.
pub struct PubSubMessaging {
    pubsub: PubSub,
    publishers: tokio::sync::Mutex<HashMap<String, TopicPublisher>>,
}

impl PubSubMessaging {
    pub fn new(pubsub: PubSub) -> Self {
        Self {
            pubsub,
            publishers: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl Messaging for PubSubMessaging {
    async fn ensure_topic(&self, topic_id: &str) -> Result<Ensured, PubSubError> {
        self.pubsub.ensure_topic(topic_id).await
    }
    async fn ensure_subscription(
        &self,
        subscription_id: &str,
        topic_id: &str,
        spec: &SubscriptionSpec,
    ) -> Result<Ensured, PubSubError> {
        self.pubsub
            .ensure_subscription(subscription_id, topic_id, spec)
            .await
    }
    async fn delete_topic(&self, topic_id: &str) -> Result<Removed, PubSubError> {
        self.pubsub.delete_topic(topic_id).await
    }
    async fn delete_subscription(&self, subscription_id: &str) -> Result<Removed, PubSubError> {
        self.pubsub.delete_subscription(subscription_id).await
    }
    async fn publish(&self, topic_id: &str, message: Outgoing) -> Result<String, PubSubError> {
        let publisher = {
            let mut publishers = self.publishers.lock().await;
            match publishers.get(topic_id) {
                Some(p) => p.clone(),
                None => {
                    let p = self.pubsub.publisher(topic_id).await?;
                    publishers.insert(topic_id.to_owned(), p.clone());
                    p
                }
            }
        };
        publisher.publish(message).await
    }
}
