//! Rouse's Pub/Sub broker from outside, through the stock Rust client and
//! Google's REST API: what it shares with the official emulator (publish,
//! pull, acknowledge, ordering keys, Google's error codes) runs against
//! both; filters, dead letters and durability (which the emulator does not
//! have) against the broker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rouse_pubsub::{Handler, Outgoing, PubSub, SubscriptionSpec};
use rouse_tests::asker::pubsub_config;
use rouse_tests::pushes::{read_request, request};
use rouse_tests::{Emulator, Server, free_port};
use serde_json::{Value, json};

const P: &str = "/v1/projects/rouse-local";

fn rest(host: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    request(method, host, &format!("{P}/{path}"), &[], body.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn ok(host: &str, method: &str, path: &str, body: Value) -> Value {
    let (status, answer) = rest(host, method, path, body);
    assert_eq!(status, 200, "{method} {path}: {answer}");
    answer
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn publish(host: &str, topic: &str, messages: Vec<Value>) -> Vec<String> {
    let answer = ok(
        host,
        "POST",
        &format!("topics/{topic}:publish"),
        json!({ "messages": messages }),
    );
    answer["messageIds"]
        .as_array()
        .expect("message ids")
        .iter()
        .map(|v| v.as_str().expect("an id").to_owned())
        .collect()
}

/// Pulls until `n` messages came or `within` passed.
fn pull(host: &str, sub: &str, n: usize, within: Duration) -> Vec<Value> {
    let begun = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && begun.elapsed() < within {
        let answer = ok(
            host,
            "POST",
            &format!("subscriptions/{sub}:pull"),
            json!({ "maxMessages": n - got.len(), "returnImmediately": true }),
        );
        match answer["receivedMessages"].as_array() {
            Some(m) if !m.is_empty() => got.extend(m.iter().cloned()),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    got
}

fn ack_ids(received: &[Value]) -> Vec<String> {
    received
        .iter()
        .map(|r| r["ackId"].as_str().expect("ack id").to_owned())
        .collect()
}

fn attribute<'a>(received: &'a Value, key: &str) -> &'a str {
    received["message"]["attributes"][key]
        .as_str()
        .unwrap_or_default()
}

/// What both must do alike, with the Rust client (REST administration,
/// gRPC publish and streaming pull) and with plain REST.
async fn contract(pubsub_host: &str) {
    let host = pubsub_host;
    // Google's codes for a duplicate and a missing resource.
    ok(host, "PUT", "topics/contract", json!({}));
    let (status, answer) = rest(host, "PUT", "topics/contract", json!({}));
    assert_eq!(
        (status, answer["error"]["status"].as_str()),
        (409, Some("ALREADY_EXISTS")),
        "{answer}"
    );
    let (status, answer) = rest(host, "GET", "topics/nowhere", json!({}));
    assert_eq!(
        (status, answer["error"]["status"].as_str()),
        (404, Some("NOT_FOUND")),
        "{answer}"
    );

    // REST publish, pull, acknowledge: an acknowledged message is not
    // delivered again.
    ok(
        host,
        "PUT",
        "subscriptions/contract-rest",
        json!({ "topic": "projects/rouse-local/topics/contract", "ackDeadlineSeconds": 10 }),
    );
    let ids = publish(
        host,
        "contract",
        vec![json!({ "data": b64("one"), "attributes": { "n": "1" } })],
    );
    let got = pull(host, "contract-rest", 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "the published message arrives");
    assert_eq!(got[0]["message"]["messageId"], ids[0].as_str());
    assert_eq!(got[0]["message"]["data"], b64("one"));
    assert_eq!(attribute(&got[0], "n"), "1");
    ok(
        host,
        "POST",
        "subscriptions/contract-rest:acknowledge",
        json!({ "ackIds": ack_ids(&got) }),
    );
    publish(host, "contract", vec![json!({ "data": b64("two") })]);
    let next = pull(host, "contract-rest", 2, Duration::from_secs(2));
    assert_eq!(next.len(), 1, "only the new message: {next:?}");
    assert_eq!(next[0]["message"]["data"], b64("two"));

    // The Rust client: ordered messages of several keys, each key in order.
    let pubsub = PubSub::connect(pubsub_config(host)).await.expect("client");
    pubsub.ensure_topic("ordered").await.expect("topic");
    pubsub
        .ensure_subscription("ordered-sub", "ordered", &SubscriptionSpec::dispatcher())
        .await
        .expect("subscription");
    let publisher = pubsub.publisher("ordered").await.expect("publisher");
    let mut sends = Vec::new();
    for step in 0..4 {
        for key in ["a", "b", "c"] {
            sends.push(publisher.publish(Outgoing {
                data: format!("{key}{step}").into_bytes(),
                attributes: BTreeMap::new(),
                ordering_key: key.to_owned(),
            }));
        }
    }
    for sent in futures::future::join_all(sends).await {
        sent.expect("published");
    }
    let subscriber = pubsub.subscriber().await.expect("subscriber");
    let mut stream = rouse_pubsub::subscribe(&subscriber, &pubsub, "ordered-sub", 100);
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..12 {
        let (msg, handler) = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("not every message arrived: {seen:?}"))
            .expect("a message")
            .expect("no stream error");
        seen.entry(msg.ordering_key.clone())
            .or_default()
            .push(String::from_utf8_lossy(&msg.data).into_owned());
        if let Handler::AtLeastOnce(h) = handler {
            h.ack();
        }
    }
    for key in ["a", "b", "c"] {
        let expected: Vec<String> = (0..4).map(|s| format!("{key}{s}")).collect();
        assert_eq!(seen.get(key), Some(&expected), "key {key} in order");
    }
    stream.shutdown_token().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_keeps_the_contract_the_emulator_keeps() {
    let broker = Emulator::broker();
    contract(broker.host()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_emulator_keeps_the_same_contract() {
    let emulator = Emulator::official();
    contract(emulator.host()).await;
}

#[test]
fn filters_are_applied_and_a_bad_one_is_refused_where_it_goes_wrong() {
    let broker = Emulator::broker();
    let host = broker.host();
    ok(host, "PUT", "topics/answers", json!({}));
    ok(
        host,
        "PUT",
        "subscriptions/q1-answers",
        json!({
            "topic": "projects/rouse-local/topics/answers",
            "filter": "attributes.question_uuid = \"q1\" AND attributes.sender_type = \"CHILD\"",
        }),
    );
    ok(
        host,
        "PUT",
        "subscriptions/not-heartbeats",
        json!({
            "topic": "projects/rouse-local/topics/answers",
            "filter": "NOT attributes.kind = \"heartbeat\"",
        }),
    );
    let message = |q: &str, sender: &str, kind: &str| {
        json!({ "data": b64(kind), "attributes": {
            "question_uuid": q, "sender_type": sender, "kind": kind } })
    };
    publish(
        host,
        "answers",
        vec![
            message("q1", "CHILD", "result"),
            message("q2", "CHILD", "result"),
            message("q1", "PARENT", "question"),
            message("q1", "CHILD", "heartbeat"),
        ],
    );
    let mine = pull(host, "q1-answers", 10, Duration::from_secs(2));
    let kinds: BTreeSet<&str> = mine.iter().map(|m| attribute(m, "kind")).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["heartbeat", "result"]),
        "only q1's answers from the child: {mine:?}"
    );
    assert!(mine.iter().all(|m| attribute(m, "question_uuid") == "q1"));
    let others = pull(host, "not-heartbeats", 10, Duration::from_secs(2));
    assert_eq!(others.len(), 3, "{others:?}");

    let (status, answer) = rest(
        host,
        "PUT",
        "subscriptions/bad-filter",
        json!({
            "topic": "projects/rouse-local/topics/answers",
            "filter": "attributes.n > \"1\"",
        }),
    );
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("attributes.n > \"1\"") && message.contains("position"),
        "the filter and where it goes wrong: {message}"
    );
    let (status, _) = rest(host, "GET", "subscriptions/bad-filter", json!({}));
    assert_eq!(status, 404, "nothing was created");
}

#[test]
fn a_message_nobody_acknowledges_goes_to_the_dead_letter_topic() {
    let broker = Emulator::broker();
    let host = broker.host();
    ok(host, "PUT", "topics/work", json!({}));
    ok(host, "PUT", "topics/work-dead", json!({}));
    ok(
        host,
        "PUT",
        "subscriptions/work-dead-sub",
        json!({ "topic": "projects/rouse-local/topics/work-dead" }),
    );
    ok(
        host,
        "PUT",
        "subscriptions/work-sub",
        json!({
            "topic": "projects/rouse-local/topics/work",
            "deadLetterPolicy": {
                "deadLetterTopic": "projects/rouse-local/topics/work-dead",
                "maxDeliveryAttempts": 5,
            },
        }),
    );
    publish(
        host,
        "work",
        vec![json!({ "data": b64("poison"), "attributes": { "job": "7" } })],
    );
    for attempt in 1..=5 {
        let got = pull(host, "work-sub", 1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "delivery {attempt}");
        assert_eq!(got[0]["deliveryAttempt"], attempt, "{got:?}");
        ok(
            host,
            "POST",
            "subscriptions/work-sub:modifyAckDeadline",
            json!({ "ackIds": ack_ids(&got), "ackDeadlineSeconds": 0 }),
        );
    }
    let dead = pull(host, "work-dead-sub", 1, Duration::from_secs(5));
    assert_eq!(dead.len(), 1, "forwarded to the dead-letter topic");
    assert_eq!(dead[0]["message"]["data"], b64("poison"));
    assert_eq!(attribute(&dead[0], "job"), "7");
    assert_eq!(
        attribute(&dead[0], "CloudPubSubDeadLetterSourceDeliveryCount"),
        "5"
    );
    assert!(
        pull(host, "work-sub", 1, Duration::from_millis(500)).is_empty(),
        "and gone from its subscription"
    );
}

#[test]
fn kill_9_of_the_server_loses_no_published_message() {
    let data = tempfile::tempdir().expect("data dir");
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let embedded = ["--pubsub", "embedded", "--broker-listen", host.as_str()];
    let server = Server::try_start("", data.path(), &embedded).expect("rouse server");
    ok(&host, "PUT", "topics/durable", json!({}));
    ok(
        &host,
        "PUT",
        "subscriptions/durable-sub",
        json!({ "topic": "projects/rouse-local/topics/durable" }),
    );
    let mut published = BTreeSet::new();
    for batch in 0..5 {
        let messages = (0..100)
            .map(|i| json!({ "data": b64(&format!("{batch}-{i}")) }))
            .collect();
        published.extend(publish(&host, "durable", messages));
    }
    assert_eq!(published.len(), 500);
    // Some are leased (delivered, not acknowledged) when the server dies.
    let leased = pull(&host, "durable-sub", 50, Duration::from_secs(5));
    assert_eq!(leased.len(), 50);
    server.kill9();

    let server = Server::try_start("", data.path(), &embedded).expect("rouse server again");
    let mut received = BTreeSet::new();
    let begun = Instant::now();
    while received.len() < 500 && begun.elapsed() < Duration::from_secs(60) {
        let got = pull(&host, "durable-sub", 100, Duration::from_secs(1));
        received.extend(got.iter().map(|m| {
            m["message"]["messageId"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }));
        if !got.is_empty() {
            ok(
                &host,
                "POST",
                "subscriptions/durable-sub:acknowledge",
                json!({ "ackIds": ack_ids(&got) }),
            );
        }
    }
    let lost: Vec<&String> = published.difference(&received).collect();
    assert!(
        lost.is_empty(),
        "{} of 500 lost after kill -9:\n{}",
        lost.len(),
        server.log()
    );
    server.stop();
}

/// A push endpoint: answers 500 to the first request, 200 afterwards, and
/// keeps every envelope it got.
fn push_endpoint() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/push", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let Some((_, body)) = read_request(&mut reader) else {
                continue;
            };
            let mut seen = sink.lock().expect("lock");
            seen.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            let status = if seen.len() == 1 {
                "500 Oops"
            } else {
                "200 OK"
            };
            let mut stream = stream;
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (url, seen)
}

#[test]
fn a_push_subscription_posts_the_envelope_until_the_endpoint_takes_it() {
    let broker = Emulator::broker();
    let host = broker.host();
    let (url, seen) = push_endpoint();
    ok(host, "PUT", "topics/pushed", json!({}));
    ok(
        host,
        "PUT",
        "subscriptions/pushed-sub",
        json!({ "topic": "projects/rouse-local/topics/pushed", "pushConfig": { "pushEndpoint": url } }),
    );
    let ids = publish(
        host,
        "pushed",
        vec![json!({ "data": b64("hello"), "attributes": { "a": "1" } })],
    );
    let begun = Instant::now();
    while seen.lock().expect("lock").len() < 2 && begun.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let posted = seen.lock().expect("lock").clone();
    assert_eq!(
        posted.len(),
        2,
        "refused once, then delivered again: {posted:?}"
    );
    for envelope in &posted {
        assert_eq!(
            envelope["subscription"],
            "projects/rouse-local/subscriptions/pushed-sub"
        );
        assert_eq!(envelope["message"]["data"], b64("hello"));
        assert_eq!(envelope["message"]["messageId"], ids[0].as_str());
        assert_eq!(envelope["message"]["attributes"]["a"], "1");
    }
    // Taken (200): it is not posted a third time.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        seen.lock().expect("lock").len(),
        2,
        "acknowledged by the 200"
    );
}
