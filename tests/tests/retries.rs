//! Retries and dead-letter topics end to end, on the real binary and the
//! process runtime:
//!
//! - a service whose first instance fails to wake, with `--max-retries 2`,
//!   answers its question on the second attempt (`retry_count` 1); the
//!   first attempt is recorded failed, saying why and that it ran again;
//! - a question that crashes its instance every time, with `--max-retries 1
//!   --dead-letter-topic T`, fails after two attempts with the crash as its
//!   exception, and the question, as received, is on topic T with
//!   `rouse_attempts` and `rouse_failure`;
//! - bad settings are refused naming the value.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use rouse_tests::pushes::request;
use rouse_tests::{Emulator, Server, workspace_bin};
use serde_json::{Value, json};

/// A Pub/Sub REST call to the test's broker or emulator.
fn pubsub(emulator: &Emulator, method: &str, path: &str, body: Value) -> Value {
    let body = body.to_string();
    let (status, answer) = request(
        method,
        emulator.host(),
        &format!("/v1/projects/rouse-local/{path}"),
        &[],
        body.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert_eq!(status, 200, "{method} {path}: {answer}");
    answer
}

fn attempts(server: &Server, service: &str, question: &str) -> Vec<Value> {
    let list = server
        .rouse(&[
            "executions",
            "list",
            "--project",
            "p",
            "--service",
            service,
            "--format",
            "json",
        ])
        .json();
    let mut mine: Vec<Value> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter(|e| e["id"] == question)
        .cloned()
        .collect();
    mine.sort_by_key(|e| e["retry_count"].as_u64());
    mine
}

#[test]
fn a_failed_wake_is_retried_and_a_last_failure_is_dead_lettered() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);

    // The first start exits before it is ready; the next ones serve.
    let script = data.path().join("flaky.sh");
    let mark = data.path().join("started-once");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ ! -e '{mark}' ]; then touch '{mark}'; echo 'failing the first start' >&2; exit 1; fi\nexec '{echo}'\n",
            mark = mark.display(),
            echo = workspace_bin("echo").display(),
        ),
    )
    .expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    server.create_service("p", "flaky");
    server
        .rouse(&[
            "services",
            "update",
            "flaky",
            "--project",
            "p",
            "--max-retries",
            "2",
        ])
        .ok();
    server
        .rouse(&[
            "revisions",
            "create",
            "flaky",
            "--project",
            "p",
            "--command",
            script.to_str().expect("utf-8"),
            "--workdir",
            "/tmp",
        ])
        .ok();
    let id = server
        .rouse(&["ask", "flaky", "--project", "p", "--input", r#"{"n": 7}"#])
        .ok()
        .trim()
        .to_owned();
    let execution = server.finished_execution(&id);
    assert_eq!(
        execution["status"],
        "succeeded",
        "{execution}\n{}",
        server.log()
    );
    assert_eq!(execution["retry_count"], 1, "{execution}");
    assert_eq!(execution["output"]["echo"]["n"], 7, "{execution}");
    let all = attempts(&server, "flaky", &id);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["status"], "failed");
    let reason = all[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("ServiceWakeFailed") && reason.contains("run again as retry 1 after 1s"),
        "{reason}"
    );

    // Crashing every time: two attempts, then the dead-letter topic.
    pubsub(&emulator, "PUT", "topics/rouse-dlq", json!({}));
    pubsub(
        &emulator,
        "PUT",
        "subscriptions/dlq-reader",
        json!({ "topic": "projects/rouse-local/topics/rouse-dlq" }),
    );
    server.echo_service(
        "p",
        "crashing",
        &["--max-retries", "1", "--dead-letter-topic", "rouse-dlq"],
        &[],
    );
    let described = server.rouse(&["services", "describe", "crashing", "--project", "p"]);
    assert!(
        described
            .ok()
            .contains("retried up to 1 times, then to topic rouse-dlq"),
        "{}",
        described.stdout
    );
    let crashed = server.rouse(&[
        "ask",
        "crashing",
        "--project",
        "p",
        "--input",
        r#"{"crash": true}"#,
        "--wait",
    ]);
    assert_eq!(crashed.code, 1, "{}", crashed.stdout);
    assert!(
        crashed.stderr.contains("ServiceCrashed"),
        "{}",
        crashed.stderr
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let letter = loop {
        let pulled = pubsub(
            &emulator,
            "POST",
            "subscriptions/dlq-reader:pull",
            json!({ "maxMessages": 10, "returnImmediately": true }),
        );
        if let Some(m) = pulled["receivedMessages"]
            .as_array()
            .and_then(|m| m.first())
        {
            break m["message"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let attributes = &letter["attributes"];
    assert_eq!(attributes["rouse_attempts"], "2", "{letter}");
    assert_eq!(attributes["retry_count"], "1", "{letter}");
    assert!(
        attributes["rouse_failure"]
            .as_str()
            .is_some_and(|f| f.starts_with("ServiceCrashed")),
        "{letter}"
    );
    use base64::Engine as _;
    let question = base64::engine::general_purpose::STANDARD
        .decode(letter["data"].as_str().expect("data"))
        .expect("base64");
    let question: Value = serde_json::from_slice(&question).expect("the question as JSON");
    assert_eq!(question["input_values"]["crash"], true, "{question}");

    // Bad settings name the value.
    let bad = server.rouse(&[
        "services",
        "update",
        "crashing",
        "--project",
        "p",
        "--dead-letter-topic",
        "projects/x/topics/y",
    ]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .contains("dead-letter topic `projects/x/topics/y` is not a Pub/Sub topic id"),
        "{}",
        bad.stderr
    );
    let bad = server.rouse(&[
        "services",
        "update",
        "crashing",
        "--project",
        "p",
        "--max-retries",
        "101",
    ]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("max_retries 101 is out of range"),
        "{}",
        bad.stderr
    );
    let cleared = server.rouse(&[
        "services",
        "update",
        "crashing",
        "--project",
        "p",
        "--clear-dead-letter-topic",
        "--format",
        "json",
    ]);
    assert_eq!(cleared.json()["dead_letter_topic"], Value::Null);
}
