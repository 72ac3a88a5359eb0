//! Push subscriptions: each message is POSTed to the endpoint in Google's
//! envelope; a 2xx (or 102) acknowledges it, anything else gives it back for
//! redelivery (with the subscription's retry backoff, and the pusher itself
//! backs off while the endpoint keeps failing, as Google's push does).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, ack_deadline};
use crate::engine::Receiver;
use crate::pb;
use crate::persist::lock;

/// Pushes in flight per subscription.
const CONCURRENCY: i64 = 10;
/// How often the set of push subscriptions is looked at.
const RESCAN: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Keeps one pusher per push subscription until `shutdown`.
pub(crate) async fn run(broker: Broker, shutdown: CancellationToken) {
    let http = reqwest::Client::new();
    let mut pushers: HashMap<Arc<str>, (String, JoinHandle<()>, CancellationToken)> =
        HashMap::new();
    loop {
        let wanted: HashMap<Arc<str>, String> = lock(&broker.engine)
            .push_subscriptions()
            .into_iter()
            .collect();
        pushers.retain(|name, (endpoint, task, stop)| {
            let keep = wanted.get(name) == Some(endpoint) && !task.is_finished();
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (name, endpoint) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = pushers.entry(name.clone()) {
                let stop = shutdown.child_token();
                let task = tokio::spawn(push(
                    broker.clone(),
                    http.clone(),
                    name.clone(),
                    endpoint.clone(),
                    stop.clone(),
                ));
                slot.insert((endpoint, task, stop));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RESCAN) => {}
        }
    }
}

async fn push(
    broker: Broker,
    http: reqwest::Client,
    sub: Arc<str>,
    endpoint: String,
    stop: CancellationToken,
) {
    let stream = broker.next_stream();
    let mut backoff = BACKOFF_MIN;
    loop {
        let (wake, deadline) = match lock(&broker.engine).subscription(&sub) {
            Ok(s) => (s.wake.clone(), ack_deadline(s.config.ack_deadline_seconds)),
            Err(_) => return,
        };
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let got = lock(&broker.engine).pull(
            &sub,
            Receiver::push(stream),
            CONCURRENCY,
            (CONCURRENCY, 0),
            deadline,
            Instant::now(),
        );
        let Ok(received) = got else { return };
        if received.is_empty() {
            tokio::select! {
                () = &mut notified => continue,
                () = stop.cancelled() => return,
            }
        }
        let posts = received.into_iter().map(|m| {
            let http = http.clone();
            let endpoint = endpoint.clone();
            let sub = sub.clone();
            async move {
                let delivered = post(&http, &endpoint, &sub, &m, deadline).await;
                (m.ack_id, delivered)
            }
        });
        let outcomes = futures::future::join_all(posts).await;
        let (acked, failed): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|(_, ok)| *ok);
        let acked: Vec<String> = acked.into_iter().map(|(id, _)| id).collect();
        let failed: Vec<String> = failed.into_iter().map(|(id, _)| id).collect();
        if !acked.is_empty() {
            let _ = broker.acknowledge(&sub, &acked).await;
            backoff = BACKOFF_MIN;
        }
        if !failed.is_empty() {
            let _ = broker.modify_ack_deadline(&sub, &failed, 0).await;
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Google's push envelope for one message.
pub fn envelope(sub: &str, received: &pb::ReceivedMessage) -> serde_json::Value {
    let m = received.message.clone().unwrap_or_default();
    let publish_time = m
        .publish_time
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_nanos(t).to_string())
        .unwrap_or_default();
    let mut message = serde_json::json!({
        "data": base64::engine::general_purpose::STANDARD.encode(&m.data),
        "attributes": m.attributes,
        "messageId": m.message_id,
        "message_id": m.message_id,
        "publishTime": publish_time,
        "publish_time": publish_time,
    });
    if !m.ordering_key.is_empty() {
        message["orderingKey"] = m.ordering_key.into();
    }
    let mut envelope = serde_json::json!({ "message": message, "subscription": sub });
    if received.delivery_attempt > 0 {
        envelope["deliveryAttempt"] = received.delivery_attempt.into();
    }
    envelope
}

async fn post(
    http: &reqwest::Client,
    endpoint: &str,
    sub: &str,
    received: &pb::ReceivedMessage,
    deadline: Duration,
) -> bool {
    let answer = http
        .post(endpoint)
        .json(&envelope(sub, received))
        .timeout(deadline)
        .send()
        .await;
    match answer {
        Ok(r) => r.status().is_success() || r.status().as_u16() == 102,
        Err(e) => {
            tracing::debug!(%sub, %endpoint, error = %e, "push failed");
            false
        }
    }
}
