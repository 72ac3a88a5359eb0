//! A test asker speaking the Octue protocol over the real Pub/Sub client: it
//! subscribes to the network topic before asking (as octue does), publishes
//! questions, and collects the replies addressed to it. The emulator ignores
//! subscription filters, so replies are matched here.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use rouse_pubsub::{
    Handler, Outgoing, PubSub, PubSubConfig, Subscriber, SubscriptionSpec, TopicPublisher,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The asker's SRUID.
pub const ASKER: &str = "tests/asker:1.0.0";

/// One reply event.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: String,
    pub attributes: BTreeMap<String, String>,
    pub data: Value,
    pub received: Instant,
}

pub struct Asker {
    pub pubsub: PubSub,
    publishers: HashMap<String, TopicPublisher>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Every event received so far, by question uuid.
    pub seen: HashMap<String, Vec<Event>>,
    _task: tokio::task::JoinHandle<()>,
}

pub fn pubsub_config(host: &str) -> PubSubConfig {
    PubSubConfig {
        project: "rouse-local".into(),
        emulator_host: Some(host.into()),
        call_timeout: Duration::from_secs(10),
    }
}

/// The attributes a stock Octue asker sends with a question.
pub fn question_attributes(question_uuid: &str, recipient: &str) -> BTreeMap<String, String> {
    [
        ("uuid", uuid::Uuid::new_v4().to_string()),
        ("datetime", "2026-11-22T01:24:56.037603+00:00".to_owned()),
        ("question_uuid", question_uuid.to_owned()),
        ("originator_question_uuid", question_uuid.to_owned()),
        ("parent", ASKER.to_owned()),
        ("originator", ASKER.to_owned()),
        ("sender", ASKER.to_owned()),
        ("sender_type", "PARENT".to_owned()),
        ("sender_sdk_version", "0.69.1".to_owned()),
        ("recipient", recipient.to_owned()),
        ("retry_count", "0".to_owned()),
        ("forward_logs", "0".to_owned()),
        ("save_diagnostics", "SAVE_DIAGNOSTICS_OFF".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Asker {
    /// Subscribes to `network_topic` on the emulator at `host`.
    pub async fn new(host: &str, network_topic: &str) -> Self {
        let pubsub = PubSub::connect(pubsub_config(host)).await.expect("pubsub");
        pubsub
            .ensure_topic(network_topic)
            .await
            .expect("network topic");
        let sub_id = format!("tests.answers.{}", uuid::Uuid::new_v4().simple());
        let spec = SubscriptionSpec {
            ack_deadline_seconds: 600,
            message_ordering: true,
            filter: format!(
                "attributes.recipient = \"{ASKER}\" AND attributes.sender_type = \"CHILD\""
            ),
        };
        pubsub
            .ensure_subscription(&sub_id, network_topic, &spec)
            .await
            .expect("answer subscription");
        let subscriber: Subscriber = pubsub.subscriber().await.expect("subscriber");
        let (tx, events) = mpsc::unbounded_channel();
        let ps = pubsub.clone();
        let task = tokio::spawn(async move {
            let mut stream = rouse_pubsub::subscribe(&subscriber, &ps, &sub_id, 1000);
            while let Some(Ok((msg, handler))) = stream.next().await {
                if let Handler::AtLeastOnce(h) = handler {
                    h.ack();
                }
                let attributes: BTreeMap<String, String> = msg
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                // The emulator ignores the filter: apply it here.
                if attributes.get("recipient").map(String::as_str) != Some(ASKER)
                    || attributes.get("sender_type").map(String::as_str) != Some("CHILD")
                {
                    continue;
                }
                let data: Value = serde_json::from_slice(&msg.data).unwrap_or(Value::Null);
                let kind = data["kind"].as_str().unwrap_or_default().to_owned();
                let _ = tx.send(Event {
                    kind,
                    attributes,
                    data,
                    received: Instant::now(),
                });
            }
        });
        Self {
            pubsub,
            publishers: HashMap::new(),
            events,
            seen: HashMap::new(),
            _task: task,
        }
    }

    /// Publishes a question message to `topic`; returns when Pub/Sub took it.
    pub async fn publish(
        &mut self,
        topic: &str,
        attributes: BTreeMap<String, String>,
        data: Value,
    ) {
        if !self.publishers.contains_key(topic) {
            let p = self.pubsub.publisher(topic).await.expect("publisher");
            self.publishers.insert(topic.to_owned(), p);
        }
        let ordering_key = attributes.get("question_uuid").cloned().unwrap_or_default();
        self.publishers[topic]
            .publish(Outgoing {
                data: serde_json::to_vec(&data).expect("json"),
                attributes,
                ordering_key,
            })
            .await
            .expect("publish");
    }

    /// Asks `input` of the service at `topic` (addressed to `recipient`); returns the question uuid.
    pub async fn ask(&mut self, topic: &str, recipient: &str, input: Value) -> String {
        let q = uuid::Uuid::new_v4().to_string();
        self.publish(
            topic,
            question_attributes(&q, recipient),
            json!({"kind": "question", "input_values": input}),
        )
        .await;
        q
    }

    fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            let q = e
                .attributes
                .get("question_uuid")
                .cloned()
                .unwrap_or_default();
            self.seen.entry(q).or_default().push(e);
        }
    }

    /// Waits until `question` has a `result` or `exception` and returns it.
    pub async fn answer(&mut self, question: &str, timeout: Duration) -> Event {
        self.try_answer(question, timeout)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::answer`], with no answer in time an error saying what came
    /// instead (for the bench, where one part failing must not end the run).
    pub async fn try_answer(&mut self, question: &str, timeout: Duration) -> Result<Event, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(e) = self.seen.get(question).and_then(|evs| {
                evs.iter()
                    .find(|e| e.kind == "result" || e.kind == "exception")
            }) {
                return Ok(e.clone());
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    let q = e
                        .attributes
                        .get("question_uuid")
                        .cloned()
                        .unwrap_or_default();
                    self.seen.entry(q).or_default().push(e);
                }
                _ => {
                    return Err(format!(
                        "no answer to {question} within {timeout:?}; events so far: {:?}",
                        self.seen.get(question)
                    ));
                }
            }
        }
    }

    /// Waits until every one of `questions` has a `result` or `exception`.
    pub async fn answers(&mut self, questions: &[String], timeout: Duration) -> Vec<Event> {
        let mut out = Vec::with_capacity(questions.len());
        for q in questions {
            out.push(self.answer(q, timeout).await);
        }
        out
    }

    /// Collects events for `wait`, then returns those of `question`.
    pub async fn events_after(&mut self, question: &str, wait: Duration) -> Vec<Event> {
        tokio::time::sleep(wait).await;
        self.drain();
        self.seen.get(question).cloned().unwrap_or_default()
    }

    /// Every event received so far.
    pub fn all(&mut self) -> &HashMap<String, Vec<Event>> {
        self.drain();
        &self.seen
    }
}

/// Seconds since the epoch, for log messages.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
