//! The messaging backend the control plane needs: topics and subscriptions.
//!
//! A trait owned by its consumer, so unit tests can make any step fail; the
//! real adapter is [`rouse_pubsub::PubSub`].

use async_trait::async_trait;
use rouse_pubsub::{Ensured, PubSub, PubSubError, Removed, SubscriptionSpec};

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
}

#[async_trait]
impl Messaging for PubSub {
    async fn ensure_topic(&self, topic_id: &str) -> Result<Ensured, PubSubError> {
        PubSub::ensure_topic(self, topic_id).await
    }
    async fn ensure_subscription(
        &self,
        subscription_id: &str,
        topic_id: &str,
        spec: &SubscriptionSpec,
    ) -> Result<Ensured, PubSubError> {
        PubSub::ensure_subscription(self, subscription_id, topic_id, spec).await
    }
    async fn delete_topic(&self, topic_id: &str) -> Result<Removed, PubSubError> {
        PubSub::delete_topic(self, topic_id).await
    }
    async fn delete_subscription(&self, subscription_id: &str) -> Result<Removed, PubSubError> {
        PubSub::delete_subscription(self, subscription_id).await
    }
}
