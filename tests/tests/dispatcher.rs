//! End-to-end: the dispatcher on the real emulator, with the real binary and
//! real instances (the `echo` example under the process runtime).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rouse_tests::asker::{ASKER, Asker, question_attributes};
use rouse_tests::{Emulator, Server, wait_until, workspace_bin};
use serde_json::{Value, json};

const NETWORK: &str = "octue.services";
const ANSWER: Duration = Duration::from_secs(60);
/// How long a state the platform reaches by itself (an idle instance
/// stopped, a warm instance up, a question running) may take to show: far
/// above the seconds it takes, so that only a platform that never gets
/// there fails.
const SETTLE: Duration = Duration::from_secs(30);

struct Platform {
    emulator: Emulator,
    server: Server,
    data: tempfile::TempDir,
}

fn platform(extra: &[&str]) -> Platform {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), extra);
    server.allow_anonymous_askers("p");
    Platform {
        emulator,
        server,
        data,
    }
}

/// Creates service `name` in project `p` with `settings`, and an echo revision
/// (`revision` adds flags). Returns the service's JSON.
fn echo_service(server: &Server, name: &str, settings: &[&str], revision: &[&str]) -> Value {
    server.echo_service("p", name, settings, revision)
}

fn topic(service: &Value) -> String {
    service["topic"].as_str().expect("topic").to_owned()
}

/// The execution's status, or what went wrong reading it (it may not be
/// recorded yet).
fn execution_status(server: &Server, id: &str) -> Result<String, String> {
    let out = server.rouse(&["executions", "get", id, "--format", "json"]);
    if out.code != 0 {
        return Err(out.stderr);
    }
    let e: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    Ok(e["status"].as_str().unwrap_or_default().to_owned())
}

/// The last lines of a log, for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[tokio::test]
async fn cold_start_warm_path_and_scale_to_zero() {
    let p = platform(&[]);
    let svc = echo_service(&p.server, "echo", &["--idle-timeout", "2s"], &[]);
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;

    let q1 = asker.ask(&topic(&svc), "p/echo", json!({"n": 1})).await;
    let a1 = asker.answer(&q1, ANSWER).await;
    assert_eq!(a1.kind, "result", "{:?}", a1.data);
    assert_eq!(a1.data["output_values"]["echo"], json!({"n": 1}));
    // Replies carry exactly the protocol's attributes.
    let attrs = &a1.attributes;
    assert_eq!(attrs["sender_type"], "CHILD");
    assert_eq!(attrs["recipient"], ASKER);
    assert_eq!(attrs["sender"], "p/echo:echo-00001");
    assert_eq!(attrs["question_uuid"], q1);
    assert_eq!(attrs["retry_count"], "0");
    assert!(
        attrs["datetime"].ends_with("+00:00"),
        "{}",
        attrs["datetime"]
    );
    assert_ne!(attrs["uuid"], q1);
    let kinds: Vec<_> = asker
        .events_after(&q1, Duration::ZERO)
        .await
        .iter()
        .map(|e| e.kind.clone())
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("delivery_acknowledgement"),
        "{kinds:?}"
    );

    let e1 = p.server.execution(&q1);
    assert_eq!(e1["status"], "succeeded");
    assert_eq!(e1["cold_start"], true);
    let first_instance = a1.data["output_values"]["instance"].clone();

    // Warm: the same instance answers, no cold start.
    let q2 = asker.ask(&topic(&svc), "p/echo", json!(2)).await;
    let a2 = asker.answer(&q2, ANSWER).await;
    assert_eq!(a2.data["output_values"]["instance"], first_instance);
    assert_eq!(p.server.execution(&q2)["cold_start"], false);

    // Idle for longer than idle_timeout: the instance is stopped, the next
    // question wakes a new one.
    wait_until(
        SETTLE,
        "the idle instance stopped (idle timeout 2 s)",
        || {
            let log = p.server.log();
            if log.contains("stopping idle instance") {
                Ok(())
            } else {
                Err(tail(&log))
            }
        },
    )
    .await;
    let q3 = asker.ask(&topic(&svc), "p/echo", json!(3)).await;
    let a3 = asker.answer(&q3, ANSWER).await;
    assert_ne!(a3.data["output_values"]["instance"], first_instance);
    assert_eq!(p.server.execution(&q3)["cold_start"], true);
}

/// The state (`/proc/<pid>/stat` field 3) and CPU ticks used (user +
/// system) of the process the pid file of `instance` names.
fn process_state(data: &std::path::Path, instance: &str) -> Result<(char, u64), String> {
    let pid_file = data.join("instances").join(format!("{instance}.pid"));
    let record =
        std::fs::read_to_string(&pid_file).map_err(|e| format!("{}: {e}", pid_file.display()))?;
    let pid = record.split_whitespace().next().unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // After the command name in parentheses: state, then 10 fields, then
    // utime and stime.
    let after = &stat[stat.rfind(')').ok_or("no command name")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields[0].chars().next().ok_or("no state")?;
    let ticks = |i: usize| fields[i].parse::<u64>().map_err(|e| e.to_string());
    Ok((state, ticks(11)? + ticks(12)?))
}

/// `--freeze on`: an instance idle for its idle timeout is frozen (its
/// process stopped, using no CPU) rather than stopped, and each question
/// after that thaws it: 20 questions spaced beyond the idle timeout are all
/// answered by the first instance, and only the first was a cold start.
#[tokio::test]
async fn idle_instances_freeze_and_thaw_without_a_cold_start() {
    let p = platform(&[]);
    let svc = echo_service(
        &p.server,
        "ice",
        &["--idle-timeout", "1s", "--freeze", "on"],
        &[],
    );
    assert_eq!(svc["scaling"]["freeze"], false, "off until updated: {svc}");
    let described = p
        .server
        .rouse(&[
            "services",
            "describe",
            "ice",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(described["scaling"]["freeze"], true, "{described}");
    assert_eq!(described["scaling"]["frozen_timeout"], "15m", "{described}");
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    let q = asker.ask(&topic(&svc), "p/ice", json!(0)).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(p.server.execution(&q)["cold_start"], true);
    let instance = a.data["output_values"]["instance"]
        .as_str()
        .expect("the instance's name")
        .to_owned();
    for i in 1..=20 {
        wait_until(SETTLE, "the idle instance frozen", || match process_state(
            p.data.path(),
            &instance,
        )? {
            ('T', _) => Ok(()),
            (state, _) => Err(format!("state {state}\n{}", tail(&p.server.log()))),
        })
        .await;
        if i == 1 {
            let (_, before) = process_state(p.data.path(), &instance).expect("frozen");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (state, after) = process_state(p.data.path(), &instance).expect("frozen");
            assert_eq!((state, after), ('T', before), "no CPU used while frozen");
        }
        let q = asker.ask(&topic(&svc), "p/ice", json!(i)).await;
        let a = asker.answer(&q, ANSWER).await;
        assert_eq!(a.kind, "result", "{:?}", a.data);
        assert_eq!(
            a.data["output_values"]["instance"], instance,
            "question {i} answered by the thawed instance"
        );
        assert_eq!(p.server.execution(&q)["cold_start"], false, "question {i}");
    }
    let log = p.server.log();
    assert!(
        log.matches("freezing idle instance").count() >= 20,
        "{}",
        tail(&log)
    );
    assert!(!log.contains("stopping idle instance"), "{}", tail(&log));
    assert_eq!(
        log.matches("waking an instance").count(),
        1,
        "{}",
        tail(&log)
    );
}

#[tokio::test]
async fn min_instances_keeps_one_warm() {
    let p = platform(&[]);
    let svc = echo_service(
        &p.server,
        "warm",
        &["--idle-timeout", "1s", "--min-instances", "1"],
        &[],
    );
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    // The one warm instance comes up with no question asked ...
    wait_until(SETTLE, "the min_instances instance listening", || {
        let logs = p.server.rouse(&["logs", "warm", "--project", "p"]);
        if logs.stdout.contains("echo: listening") {
            Ok(())
        } else {
            Err(format!("{}{}", logs.stdout, logs.stderr))
        }
    })
    .await;
    // ... and is still there well past the idle timeout (what is tested
    // here is that nothing happens, so time must pass).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !p.server.log().contains("stopping idle instance"),
        "{}",
        p.server.log()
    );
    let q = asker.ask(&topic(&svc), "p/warm", json!(1)).await;
    assert_eq!(asker.answer(&q, ANSWER).await.kind, "result");
    assert_eq!(
        p.server.execution(&q)["cold_start"],
        false,
        "min_instances=1 keeps one warm"
    );
}

/// Largest number of intervals of one instance open at once.
fn max_overlap(intervals: &[(String, String)]) -> usize {
    let mut points: Vec<(&str, i32)> = Vec::new();
    for (start, end) in intervals {
        points.push((start, 1));
        points.push((end, -1));
    }
    // RFC 3339 with fixed precision sorts as text; ends before starts at a tie.
    points.sort();
    let (mut open, mut max) = (0i32, 0i32);
    for (_, d) in points {
        open += d;
        max = max.max(open);
    }
    usize::try_from(max).unwrap_or(0)
}

#[tokio::test]
async fn burst_respects_concurrency_and_max_instances() {
    let p = platform(&[]);
    let svc = echo_service(
        &p.server,
        "burst",
        &[
            "--max-instances",
            "3",
            "--concurrency",
            "2",
            "--idle-timeout",
            "30s",
        ],
        &[],
    );
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    let mut questions = Vec::new();
    for i in 0..50 {
        questions.push(
            asker
                .ask(&topic(&svc), "p/burst", json!({"sleep_ms": 100, "i": i}))
                .await,
        );
    }
    let mut instances = HashSet::new();
    for (i, q) in questions.iter().enumerate() {
        let a = asker.answer(q, ANSWER).await;
        assert_eq!(a.kind, "result", "{:?}", a.data);
        assert_eq!(a.data["output_values"]["echo"]["i"], i);
        instances.insert(
            a.data["output_values"]["instance"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(
        instances.len() <= 3,
        "max_instances=3 but {} instances answered",
        instances.len()
    );
    assert!(
        instances.len() >= 2,
        "a burst of 50 should scale out, got {instances:?}"
    );

    let mut per_instance: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for q in &questions {
        let e = p.server.execution(q);
        per_instance
            .entry(e["instance"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push((
                e["deliver_time"].as_str().unwrap_or_default().to_owned(),
                e["finish_time"].as_str().unwrap_or_default().to_owned(),
            ));
    }
    for (instance, intervals) in &per_instance {
        let overlap = max_overlap(intervals);
        assert!(
            overlap <= 2,
            "{instance} ran {overlap} questions at once with concurrency=2"
        );
    }
}

#[tokio::test]
async fn job_mode_runs_one_instance_per_question() {
    let p = platform(&[]);
    let svc = echo_service(&p.server, "job", &[], &["--mode", "job"]);
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    let q = asker.ask(&topic(&svc), "p/job", json!({"x": [1, 2]})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}", a.data);
    assert_eq!(a.data["output_values"]["echo"], json!({"x": [1, 2]}));
    let q = asker
        .ask(&topic(&svc), "p/job", json!({"crash": true}))
        .await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "exception");
    assert!(
        a.data["exception_message"]
            .as_str()
            .unwrap_or_default()
            .contains("exited with code 3"),
        "{:?}",
        a.data
    );
}

#[tokio::test]
async fn network_topic_questions_are_routed_by_recipient() {
    let p = platform(&[]);
    echo_service(&p.server, "routed", &[], &[]);
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    for recipient in ["p/routed", "p/routed:latest", "p/routed:routed-00001"] {
        let q = asker.ask(NETWORK, recipient, json!(recipient)).await;
        let a = asker.answer(&q, ANSWER).await;
        assert_eq!(a.kind, "result", "{recipient}: {:?}", a.data);
        assert_eq!(a.data["output_values"]["echo"], json!(recipient));
    }
    for (recipient, needle) in [
        ("p/routed:routed-00009", "no revision tagged `routed-00009`"),
        ("p/nobody", "no service `p/nobody`"),
    ] {
        let q = asker.ask(NETWORK, recipient, json!(1)).await;
        let a = asker.answer(&q, ANSWER).await;
        assert_eq!(a.kind, "exception", "{recipient}");
        let msg = a.data["exception_message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{recipient}: {msg}");
    }
}

#[tokio::test]
async fn the_same_question_three_times_runs_once() {
    let p = platform(&[]);
    let svc = echo_service(&p.server, "dedup", &[], &[]);
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    let q = uuid::Uuid::new_v4().to_string();
    let attrs = question_attributes(&q, "p/dedup");
    for _ in 0..3 {
        asker
            .publish(
                &topic(&svc),
                attrs.clone(),
                json!({"kind": "question", "input_values": "once"}),
            )
            .await;
    }
    asker.answer(&q, ANSWER).await;
    let events = asker.events_after(&q, Duration::from_secs(2)).await;
    let results = events.iter().filter(|e| e.kind == "result").count();
    assert_eq!(results, 1, "{events:?}");
    let listed = p
        .server
        .rouse(&["executions", "list", "--format", "json"])
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let log = p.server.rouse(&["logs", "dedup", "--project", "p"]);
    assert_eq!(
        log.ok().matches("answered a question").count(),
        1,
        "{}",
        log.stdout
    );
}

#[tokio::test]
async fn malformed_questions_get_exceptions_and_the_dispatcher_goes_on() {
    let p = platform(&[]);
    let svc = echo_service(&p.server, "strict", &[], &[]);
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    type Edit = Box<dyn Fn(&mut std::collections::BTreeMap<String, String>)>;
    let cases: [(&str, Edit, Value, &str); 3] = [
        ("not json", Box::new(|_| {}), Value::Null, "not UTF-8 JSON"),
        (
            "no retry_count",
            Box::new(|a| {
                a.remove("retry_count");
            }),
            json!({"kind": "question"}),
            "`retry_count` is missing",
        ),
        (
            "bad forward_logs",
            Box::new(|a| {
                a.insert("forward_logs".into(), "maybe".into());
            }),
            json!({"kind": "question"}),
            "`forward_logs` is `maybe`",
        ),
    ];
    for (name, edit, data, needle) in cases {
        let q = uuid::Uuid::new_v4().to_string();
        let mut attrs = question_attributes(&q, "p/strict");
        edit(&mut attrs);
        if data.is_null() {
            // Raw bytes that are not JSON.
            let publisher = asker
                .pubsub
                .publisher(&topic(&svc))
                .await
                .expect("publisher");
            publisher
                .publish(rouse_pubsub::Outgoing {
                    data: b"{not json".to_vec(),
                    attributes: attrs,
                    ordering_key: q.clone(),
                })
                .await
                .expect("publish");
        } else {
            asker.publish(&topic(&svc), attrs, data).await;
        }
        let a = asker.answer(&q, ANSWER).await;
        assert_eq!(a.kind, "exception", "{name}");
        let msg = a.data["exception_message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{name}: {msg}");
        assert_eq!(p.server.execution(&q)["status"], "failed", "{name}");
    }
    // An unaddressable message (no sender) becomes a dead letter, silently.
    let mut attrs = question_attributes("x", "p/strict");
    attrs.remove("sender");
    asker
        .publish(&topic(&svc), attrs, json!({"kind": "question"}))
        .await;
    // And the next good question is answered.
    let q = asker.ask(&topic(&svc), "p/strict", json!("fine")).await;
    assert_eq!(asker.answer(&q, ANSWER).await.kind, "result");
}

#[tokio::test]
async fn failures_end_as_exceptions_with_a_reason() {
    let p = platform(&[]);
    let svc = echo_service(&p.server, "fragile", &["--request-timeout", "2s"], &[]);
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    for (input, kind, needle) in [
        (json!({"fail": "boom"}), "ServiceError", "boom"),
        (
            json!({"sleep_ms": 5000}),
            "QuestionTimeout",
            "request timeout",
        ),
        (
            json!({"crash": true}),
            "ServiceCrashed",
            "crashing as asked",
        ),
    ] {
        let q = asker.ask(&topic(&svc), "p/fragile", input.clone()).await;
        let a = asker.answer(&q, ANSWER).await;
        assert_eq!(a.kind, "exception", "{input}");
        assert_eq!(a.data["exception_type"], kind, "{input}: {:?}", a.data);
        let msg = a.data["exception_message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{input}: {msg}");
        assert!(a.data["exception_traceback"].is_array());
    }

    // A command that exits at once, and one that never becomes ready.
    let dead = p
        .server
        .rouse(&[
            "services",
            "create",
            "dead",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    p.server
        .rouse(&[
            "revisions",
            "create",
            "dead",
            "--project",
            "p",
            "--command",
            "sh -c 'echo bye; exit 7'",
            "--workdir",
            "/tmp",
        ])
        .ok();
    let q = asker.ask(&topic(&dead), "p/dead", json!(1)).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(
        a.data["exception_type"], "ServiceWakeFailed",
        "{:?}",
        a.data
    );
    assert!(
        a.data["exception_message"]
            .as_str()
            .unwrap_or_default()
            .contains("bye"),
        "{:?}",
        a.data
    );

    let slow = echo_service(
        &p.server,
        "slow",
        &[
            "--wake-timeout",
            "2s",
            "--env",
            "ECHO_STARTUP_DELAY_MS=60000",
        ],
        &[],
    );
    let q = asker.ask(&topic(&slow), "p/slow", json!(1)).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(
        a.data["exception_type"], "ServiceWakeFailed",
        "{:?}",
        a.data
    );

    // A service without a revision.
    let bare = p
        .server
        .rouse(&[
            "services",
            "create",
            "bare",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    let q = asker.ask(&topic(&bare), "p/bare", json!(1)).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(
        a.data["exception_type"], "ServiceNotDeployed",
        "{:?}",
        a.data
    );
    assert!(
        a.data["exception_message"]
            .as_str()
            .unwrap_or_default()
            .contains("rouse revisions create")
    );
}

#[tokio::test]
async fn heartbeats_flow_while_a_question_runs_and_cancel_stops_it() {
    let p = platform(&["--heartbeat-interval", "1s"]);
    let svc = echo_service(&p.server, "beat", &[], &[]);
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    let q = asker
        .ask(&topic(&svc), "p/beat", json!({"sleep_ms": 2500}))
        .await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result");
    let events = asker.events_after(&q, Duration::ZERO).await;
    let beats = events
        .iter()
        .filter(|e| e.kind == "heartbeat" && e.received < a.received)
        .count();
    assert!(beats >= 1, "no heartbeat during a 2.5 s run: {events:?}");

    let q = asker
        .ask(&topic(&svc), "p/beat", json!({"sleep_ms": 30000}))
        .await;
    // Cancelled while its instance works on it.
    wait_until(
        SETTLE,
        "the 30 s question running",
        || match execution_status(&p.server, &q)? {
            s if s == "running" => Ok(()),
            s => Err(format!("status {s}")),
        },
    )
    .await;
    p.server.rouse(&["executions", "cancel", &q]).ok();
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(
        a.data["exception_type"], "QuestionCancelled",
        "{:?}",
        a.data
    );
    assert_eq!(p.server.execution(&q)["status"], "cancelled");
    let again = p.server.rouse(&["executions", "cancel", &q]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.contains("already been cancelled"),
        "{}",
        again.stderr
    );
}

/// `kill -9` of the dispatcher with 20 questions answered, running and
/// queued; restarted, it resumes them. None is lost, none is delivered to
/// the service twice, and each gets exactly one answer: its result, or, for
/// one the killed dispatcher had delivered (whether it finished is unknown),
/// a `QuestionInterrupted` exception its asker may retry.
#[tokio::test]
async fn kill_9_with_questions_in_flight_loses_none_and_runs_none_twice() {
    let p = platform(&[]);
    let deliveries = tempfile::NamedTempFile::new().expect("delivery log");
    let log_env = format!("ECHO_DELIVERY_LOG={}", deliveries.path().display());
    let svc = echo_service(
        &p.server,
        "durable",
        &["--max-instances", "2", "--env", &log_env],
        &[],
    );
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    let mut questions = Vec::new();
    for i in 0..20 {
        questions.push(
            asker
                .ask(&topic(&svc), "p/durable", json!({"sleep_ms": 200, "i": i}))
                .await,
        );
    }
    // Some are answered, some run, the rest are queued: crash.
    wait_until(
        SETTLE,
        "some of the 20 questions answered, some running",
        || {
            let answered = count_results(asker.all(), &questions);
            let listed = p
                .server
                .rouse(&["executions", "list", "--format", "json"])
                .json();
            let running = listed
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["status"] == "running")
                .count();
            if answered >= 1 && running >= 1 && answered + running < questions.len() {
                Ok(())
            } else {
                Err(format!("{answered} answered, {running} running"))
            }
        },
    )
    .await;
    let Platform {
        emulator,
        server,
        data,
    } = p;
    let before = server.kill9();
    let server = Server::start(&emulator, data.path(), &[]);
    let interrupted =
        answered_once_and_delivered_at_most_once(&mut asker, &questions, deliveries.path(), || {
            format!("{before}{}", server.log())
        })
        .await;
    // At most what ran at the crash: two instances, one question each.
    assert!(interrupted.len() <= 2, "{interrupted:?}");
    assert!(
        server.log().contains("resuming unfinished executions"),
        "{}",
        server.log()
    );
    drop(data);
}

/// Questions that got a `result`.
fn count_results(
    seen: &HashMap<String, Vec<rouse_tests::asker::Event>>,
    questions: &[String],
) -> usize {
    questions
        .iter()
        .filter(|q| {
            seen.get(*q)
                .is_some_and(|evs| evs.iter().any(|e| e.kind == "result"))
        })
        .count()
}

/// Waits for every question's answer and checks, after giving a second
/// answer time to come: each has exactly one terminal event, a result
/// echoing its inputs or `QuestionInterrupted`; the service saw each at
/// most once (`deliveries`, the echo's log of inputs) and each answered
/// with a result exactly once. Returns the interrupted questions' `i`s.
async fn answered_once_and_delivered_at_most_once(
    asker: &mut Asker,
    questions: &[String],
    deliveries: &std::path::Path,
    logs: impl Fn() -> String,
) -> Vec<u64> {
    for q in questions {
        if let Err(e) = asker.try_answer(q, Duration::from_secs(120)).await {
            panic!("{e}\nthe dispatchers on {q}:\n{}", trail(&logs(), q));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = logs();
    let logs = logs.as_str();
    let all = asker.all().clone();
    let delivered = std::fs::read_to_string(deliveries).expect("delivery log");
    let mut times: HashMap<u64, usize> = HashMap::new();
    for line in delivered.lines() {
        let inputs: Value = serde_json::from_str(line).expect("a delivery line");
        *times.entry(inputs["i"].as_u64().expect("i")).or_default() += 1;
    }
    let mut interrupted = Vec::new();
    for (n, q) in questions.iter().enumerate() {
        let i = n as u64;
        let terminal: HashMap<_, _> = all[q]
            .iter()
            .filter(|e| e.kind == "result" || e.kind == "exception")
            .map(|e| (e.attributes["uuid"].clone(), e))
            .collect();
        assert_eq!(
            terminal.len(),
            1,
            "{q} (i = {i}): {:?}\n{}",
            all[q],
            trail(logs, q)
        );
        let answer = terminal.values().next().expect("one");
        let seen = times.get(&i).copied().unwrap_or(0);
        assert!(seen <= 1, "question i = {i} was delivered {seen} times");
        if answer.kind == "result" {
            assert_eq!(
                answer.data["output_values"]["echo"]["i"], i,
                "{:?}",
                answer.data
            );
            assert_eq!(seen, 1, "i = {i} answered without a delivery");
        } else {
            assert_eq!(
                answer.data["exception_type"],
                "QuestionInterrupted",
                "{q} (i = {i}): {:?}\n{}",
                answer.data,
                trail(logs, q)
            );
            interrupted.push(i);
        }
    }
    interrupted
}

/// What the dispatchers logged about `question`, with every warning,
/// error and takeover around it (a whole burst's log is too long to read).
fn trail(logs: &str, question: &str) -> String {
    logs.lines()
        .filter(|l| {
            l.contains(question)
                || l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("took the service over")
                || l.contains("taken over from")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A dispatcher in its own process learns of new services and revisions
/// only when it re-reads the store (every 5 s). A question that arrives
/// before that is answered, never dropped or refused as if the service did
/// not exist: by SRUID on the network topic in a project the dispatcher
/// has never seen, and on a service's topic right after its first revision.
#[tokio::test]
async fn questions_for_services_the_dispatcher_has_not_read_yet_are_answered() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let api = Server::start(&emulator, data.path(), &["--roles", "api"]);
    let dispatcher = Server::start(&emulator, data.path(), &["--roles", "dispatcher"]);
    let mut asker = Asker::new(emulator.host(), NETWORK).await;
    // Signed by the owner, whose grant the dispatcher read when it started,
    // so that no policy change has to reach it first.
    let owner = rouse_identity::KeyFile::read(api.owner_key()).expect("owner key");
    let ask = async |asker: &mut Asker, topic: &str, recipient: &str, service: &str| {
        let q = uuid::Uuid::new_v4().to_string();
        let mut attributes = question_attributes(&q, recipient);
        let token = rouse_identity::sign(
            &owner,
            &format!("projects/fresh/services/{service}"),
            Some(&q),
            std::time::SystemTime::now(),
            Duration::from_secs(600),
        )
        .expect("sign");
        attributes.insert("authorization".into(), token);
        asker
            .publish(
                topic,
                attributes,
                json!({"kind": "question", "input_values": recipient}),
            )
            .await;
        q
    };
    let service = |name: &str, revision: bool| {
        let created = api
            .rouse(&[
                "services",
                "create",
                name,
                "--project",
                "fresh",
                "--format",
                "json",
            ])
            .json();
        if revision {
            let echo = workspace_bin("echo");
            api.rouse(&[
                "revisions",
                "create",
                name,
                "--project",
                "fresh",
                "--command",
                echo.to_str().expect("utf-8 path"),
                "--workdir",
                "/tmp",
            ])
            .ok();
        }
        topic(&created)
    };

    // A new project's service, asked by SRUID at once.
    service("first", true);
    let q = ask(&mut asker, NETWORK, "fresh/first", "first").await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}\n{}", a.data, dispatcher.log());
    assert_eq!(a.data["output_values"]["echo"], json!("fresh/first"));

    // A service without a revision yet is found, and says so…
    let later = service("later", false);
    let q = ask(&mut asker, NETWORK, "fresh/later", "later").await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(
        a.data["exception_type"], "ServiceNotDeployed",
        "{:?}",
        a.data
    );
    // …and runs its first revision as soon as it has one.
    let echo = workspace_bin("echo");
    api.rouse(&[
        "revisions",
        "create",
        "later",
        "--project",
        "fresh",
        "--command",
        echo.to_str().expect("utf-8 path"),
        "--workdir",
        "/tmp",
    ])
    .ok();
    let q = ask(&mut asker, &later, "fresh/later", "later").await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}\n{}", a.data, dispatcher.log());

    // A service that does not exist is still refused as such.
    let q = ask(&mut asker, NETWORK, "fresh/nobody", "nobody").await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.data["exception_type"], "ServiceNotFound", "{:?}", a.data);
    let msg = a.data["exception_message"].as_str().unwrap_or_default();
    assert!(msg.contains("no service `fresh/nobody`"), "{msg}");
}

/// Three dispatchers on one store share the services: each runs those
/// whose lease it holds. 300 questions to 10 services (half on their own
/// topics, half through the shared network topic, where any dispatcher may
/// take one and hands it to the service's), then `kill -9` of the busiest
/// dispatcher mid-burst: its process is gone, so the survivors take its
/// services over within one lease renewal (on another machine: once its
/// leases expired). No question is lost or delivered twice; each gets one
/// answer. A clean stop gives the leases up, so the others take over at
/// once; a dispatcher started later on the same data dir removes only the
/// killed one's leftover instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatchers_share_the_services_and_a_killed_ones_questions_run_once() {
    const SERVICES: usize = 10;
    const QUESTIONS: usize = 300;
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let api = Server::start(&emulator, data.path(), &["--roles", "api"]);
    api.allow_anonymous_askers("p");
    let mut dispatchers: Vec<Option<Server>> = (0..3)
        .map(|_| {
            Some(Server::start(
                &emulator,
                data.path(),
                &["--roles", "dispatcher"],
            ))
        })
        .collect();
    let deliveries = tempfile::NamedTempFile::new().expect("delivery log");
    let log_env = format!("ECHO_DELIVERY_LOG={}", deliveries.path().display());
    let services: Vec<Value> = (0..SERVICES)
        .map(|n| {
            echo_service(
                &api,
                &format!("shared-{n}"),
                &["--max-instances", "2", "--env", &log_env],
                &[],
            )
        })
        .collect();
    let runs = |server: &Server, service: &Value| {
        let uuid = service["uuid"].as_str().expect("uuid");
        server.log().lines().any(|l| {
            l.contains(uuid)
                && (l.contains("runs the service now") || l.contains("took the service over"))
        })
    };
    wait_until(SETTLE, "every service run by one dispatcher", || {
        let owners: Vec<usize> = services
            .iter()
            .map(|s| dispatchers.iter().flatten().filter(|d| runs(d, s)).count())
            .collect();
        if owners.iter().all(|n| *n == 1) {
            Ok(())
        } else {
            Err(format!("dispatchers per service: {owners:?}"))
        }
    })
    .await;
    let shares: Vec<usize> = dispatchers
        .iter()
        .flatten()
        .map(|d| services.iter().filter(|s| runs(d, s)).count())
        .collect();
    assert!(
        shares.iter().filter(|n| **n > 0).count() >= 2,
        "the services are spread: {shares:?}"
    );
    let busiest = (0..3).max_by_key(|d| shares[*d]).expect("three");

    let mut asker = Asker::new(emulator.host(), NETWORK).await;
    let mut questions = Vec::new();
    for i in 0..QUESTIONS {
        let n = i % SERVICES;
        let recipient = format!("p/shared-{n}");
        let on = if i % 2 == 0 {
            topic(&services[n])
        } else {
            NETWORK.to_owned()
        };
        questions.push(
            asker
                .ask(&on, &recipient, json!({"sleep_ms": 20, "i": i}))
                .await,
        );
    }
    wait_until(SETTLE, "some questions answered, not all", || {
        let answered = count_results(asker.all(), &questions);
        if (30..QUESTIONS).contains(&answered) {
            Ok(())
        } else {
            Err(format!("{answered} answered"))
        }
    })
    .await;
    let killed_log = dispatchers[busiest].take().expect("running").kill9();
    let killed = std::time::Instant::now();
    wait_until(
        shards_renewal_and_margin(),
        "a survivor taking the killed dispatcher's services over",
        || {
            let took = dispatchers
                .iter()
                .flatten()
                .any(|d| d.log().contains("took the service over"));
            match took {
                true => Ok(()),
                false => Err("not yet".into()),
            }
        },
    )
    .await;
    let logs = || {
        let survivors: String = dispatchers.iter().flatten().map(|d| d.log()).collect();
        format!("{killed_log}{survivors}")
    };
    let interrupted =
        answered_once_and_delivered_at_most_once(&mut asker, &questions, deliveries.path(), logs)
            .await;
    // At most what the killed one had delivered: two instances of each of
    // its services, one question each.
    assert!(interrupted.len() <= 2 * shares[busiest], "{interrupted:?}");
    // The questions it had taken from Pub/Sub and not recorded come back
    // once their lease lapses (10 s, not the client's default 60 s).
    let all_answered = killed.elapsed();
    assert!(
        all_answered < Duration::from_secs(30),
        "the last question was answered {all_answered:?} after the kill (leases last 10 s)"
    );

    // A clean stop hands over at once (no waiting for expiry).
    let survivors: Vec<usize> = (0..3).filter(|d| dispatchers[*d].is_some()).collect();
    let (stopping, last) = (survivors[0], survivors[1]);
    let stopped = dispatchers[stopping].take().expect("running");
    let before = dispatchers[last]
        .as_ref()
        .expect("running")
        .log()
        .lines()
        .count();
    assert!(stopped.stop().success());
    let mut after = Vec::new();
    for (n, service) in services.iter().enumerate() {
        let q = asker
            .ask(
                &topic(service),
                &format!("p/shared-{n}"),
                json!({"after": "handover"}),
            )
            .await;
        after.push(q);
    }
    let started = std::time::Instant::now();
    for q in &after {
        assert_eq!(asker.answer(q, ANSWER).await.kind, "result");
    }
    let took = started.elapsed();
    let last_log = dispatchers[last].as_ref().expect("running").log();
    assert!(
        last_log
            .lines()
            .skip(before)
            .any(|l| l.contains("runs the service now")),
        "{last_log}"
    );
    assert!(
        took < Duration::from_secs(9),
        "the last dispatcher took over a cleanly stopped one's services in {took:?}, as if it waited for the leases to expire"
    );

    // The killed one's instances are still running (its process group
    // outlived it); a dispatcher started on the data dir removes those, and
    // not the live dispatcher's.
    let again = Server::start(&emulator, data.path(), &["--roles", "dispatcher"]);
    assert!(
        again
            .log()
            .contains("stopped instances left by an earlier run"),
        "{}",
        again.log()
    );
    let q = asker
        .ask(
            &topic(&services[0]),
            "p/shared-0",
            json!({"after": "restart"}),
        )
        .await;
    assert_eq!(asker.answer(&q, ANSWER).await.kind, "result");
    drop((again, api));
}

/// A renewal period and the few seconds a takeover takes.
fn shards_renewal_and_margin() -> Duration {
    Duration::from_secs(3 + 5)
}
