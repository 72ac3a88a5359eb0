//! Dead-letter topics (`rouse services update --dead-letter-topic`): a
//! question whose last attempt the platform failed (its instance did not
//! wake, crashed, or could not be reached) is published, as received, to its
//! service's dead-letter topic, with why in `rouse_*` attributes, as
//! Pub/Sub's dead-letter policy forwards undeliverable messages with
//! `CloudPubSubDeadLetterSourceDeliveryCount`. The topic is created on
//! first use when missing. The asker still gets the exception.

use std::collections::HashMap;
use std::sync::Arc;

use rouse_core::revision::Execution;
use rouse_pubsub::{Outgoing, PubSub, TopicPublisher};

/// Publishers of the dead-letter topics used so far, one per topic.
pub struct DeadLetters {
    pubsub: PubSub,
    publishers: tokio::sync::Mutex<HashMap<String, Arc<TopicPublisher>>>,
}

impl DeadLetters {
    pub fn new(pubsub: PubSub) -> Self {
        Self {
            pubsub,
            publishers: tokio::sync::Mutex::default(),
        }
    }

    /// Publishes `execution`'s question to `topic` with the failure; the
    /// message id, or why it could not be published.
    pub async fn publish(
        &self,
        topic: &str,
        service: &str,
        execution: &Execution,
        failure: &str,
    ) -> Result<String, String> {
        let publisher = {
            let mut publishers = self.publishers.lock().await;
            match publishers.get(topic) {
                Some(p) => p.clone(),
                None => {
                    self.pubsub
                        .ensure_topic(topic)
                        .await
                        .map_err(|e| e.to_string())?;
                    let p = Arc::new(
                        self.pubsub
                            .publisher(topic)
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                    publishers.insert(topic.to_owned(), p.clone());
                    p
                }
            }
        };
        publisher
            .publish(dead_letter(service, execution, failure))
            .await
            .map_err(|e| e.to_string())
    }
}

/// The question as received, with what happened to it.
pub(crate) fn dead_letter(service: &str, execution: &Execution, failure: &str) -> Outgoing {
    let mut attributes = execution.attributes.clone();
    attributes.insert("rouse_service".into(), service.to_owned());
    attributes.insert(
        "rouse_attempts".into(),
        (execution.retry_count + 1).to_string(),
    );
    // Attribute values are at most 1024 bytes in Pub/Sub.
    let mut failure = failure.to_owned();
    if failure.len() > 1024 {
        let mut end = 1021;
        while !failure.is_char_boundary(end) {
            end -= 1;
        }
        failure.truncate(end);
        failure.push('…');
    }
    attributes.insert("rouse_failure".into(), failure);
    Outgoing {
        data: execution.data.clone(),
        attributes,
        ordering_key: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_is_the_question_with_why() {
        let mut attributes = rouse_core::protocol::Attributes::new();
        attributes.insert("question_uuid".into(), "q".into());
        attributes.insert("retry_count".into(), "2".into());
        let mut execution = Execution::received(
            "q".into(),
            2,
            uuid::Uuid::nil(),
            attributes,
            b"{\"kind\":\"question\"}".to_vec(),
            std::time::SystemTime::UNIX_EPOCH,
        );
        execution.retry_count = 2;
        let letter = dead_letter("p/s", &execution, &"é".repeat(600));
        assert_eq!(letter.data, b"{\"kind\":\"question\"}");
        assert_eq!(letter.attributes["question_uuid"], "q");
        assert_eq!(letter.attributes["rouse_attempts"], "3");
        assert_eq!(letter.attributes["rouse_service"], "p/s");
        assert!(letter.attributes["rouse_failure"].len() <= 1024);
        assert!(letter.attributes["rouse_failure"].ends_with('…'));
    }
}
