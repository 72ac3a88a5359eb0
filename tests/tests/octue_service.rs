//! End-to-end: a stock Octue service (PyPI `octue==0.69.1`, unmodified, in the
//! virtualenv made by `.ci/octue-venv`) runs under Rouse in job mode and is
//! asked by the stock Octue client (`tests/octue/ask.py`, octue's own
//! `Child.ask`).
//!
//! The service is the app in `tests/octue/service/app` (`{"x": n}` →
//! `{"doubled": 2n}`, `{"fail": why}` raises `OctueAppFailure`), run by
//! octue's own CLI: for every question Rouse starts `octue twined question
//! ask-local` + `--attributes <question attributes> --input-values <…>`;
//! octue then publishes its own `delivery_acknowledgement`, `log_record`s and
//! `result` or `exception` on the network topic, so the dispatcher must send
//! no terminal event of its own. Test-side shims (the local schema file via a
//! `sitecustomize.py` on the service's PYTHONPATH, dummy application default
//! credentials) change nothing on the wire; see `tests/octue/README.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rouse_tests::{Emulator, Server};
use serde_json::{Value, json};

const PROJECT: &str = "experiment_2";
const SERVICE: &str = "octue-app";
/// What stock askers address; Rouse serves it with the serving revision.
const LATEST: &str = "experiment-2/octue-app:latest";
/// The first revision's name, which is also its Octue revision tag.
const REVISION: &str = "octue-app-00001";
/// Seconds ask.py waits for the answer: a job starts a fresh Python with
/// octue's imports per question, slow on a loaded 2-core CI runner.
const ASK_TIMEOUT_SECS: u32 = 180;
/// How long the execution may take to show its end after the asker got it.
const EXECUTION_SETTLE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path_str(path: &std::path::Path) -> String {
    let s = path.to_str().expect("a UTF-8 path").to_owned();
    assert!(
        !s.contains(['\'', '"', '\\']),
        "{s}: a path with quotes cannot be put into --command"
    );
    s
}

/// The service's instance logs (octue's own log lines), for failure messages.
fn service_logs(server: &Server) -> String {
    let out = server.rouse(&["logs", SERVICE, "--project", PROJECT, "--tail", "200"]);
    format!("{}{}", out.stdout, out.stderr)
}

fn events_of<'a>(execution: &'a Value, kind: &str) -> Vec<&'a Value> {
    execution["events"]
        .as_array()
        .map(|events| events.iter().filter(|e| e["kind"] == kind).collect())
        .unwrap_or_default()
}

/// `rouse executions get` once the execution has ended and the service's own
/// terminal event (`kind`, sent as `sender`) is recorded. A terminal event of
/// the dispatcher's is recorded in the same transaction that ends the
/// execution, so a duplicate would be visible by then.
fn settled_execution(server: &Server, question_uuid: &str, kind: &str, sender: &str) -> Value {
    let deadline = Instant::now() + EXECUTION_SETTLE;
    loop {
        let execution = server
            .rouse(&["executions", "get", question_uuid, "--format", "json"])
            .json();
        let ended = matches!(execution["status"].as_str(), Some("succeeded" | "failed"));
        let own = events_of(&execution, kind)
            .iter()
            .any(|e| e["sender"] == sender);
        if ended && own {
            return execution;
        }
        assert!(
            Instant::now() < deadline,
            "execution {question_uuid} did not end with the service's own `{kind}` within {EXECUTION_SETTLE:?}: {execution:#}\nserver log:\n{}\nservice logs:\n{}",
            server.log(),
            service_logs(server)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_stock_octue_service_runs_as_a_job_and_answers_a_stock_octue_client() {
    let python = rouse_tests::octue::python();
    let octue_cli = python.with_file_name("octue");
    assert!(
        octue_cli.exists(),
        "{} is missing from the octue venv",
        octue_cli.display()
    );
    let service_dir = repo().join("tests/octue/service");
    let app_dir = service_dir.join("app");
    let shim_dir = service_dir.join("shim");

    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server
        .rouse(&["services", "create", SERVICE, "--project", PROJECT])
        .ok();
    server.allow_anonymous_askers(PROJECT);
    // Test-side only: the local schema for octue's validator (sitecustomize.py),
    // dummy application default credentials for octue's `google.auth.default()`
    // (the project comes from Rouse's GOOGLE_CLOUD_PROJECT; the Pub/Sub client
    // uses anonymous credentials with the emulator), and no __pycache__ in the
    // repository.
    server
        .rouse(&[
            "services",
            "update",
            SERVICE,
            "--project",
            PROJECT,
            "--env",
            &format!("PYTHONPATH={}", path_str(&shim_dir)),
            "--env",
            &format!(
                "GOOGLE_APPLICATION_CREDENTIALS={}",
                path_str(&shim_dir.join("offline-adc.json"))
            ),
            "--env",
            "PYTHONDONTWRITEBYTECODE=1",
        ])
        .ok();
    // The real octue CLI; Rouse appends `--attributes … --input-values …`.
    let command = format!("'{}' twined question ask-local", path_str(&octue_cli));
    server
        .rouse(&[
            "revisions",
            "create",
            SERVICE,
            "--project",
            PROJECT,
            "--command",
            &command,
            "--workdir",
            &path_str(&app_dir),
            "--mode",
            "job",
        ])
        .ok();

    // A result, addressed as stock askers must (`latest`) and by the serving
    // revision's tag. octue answers as the question's recipient.
    let tagged = format!("experiment-2/octue-app:{REVISION}");
    for (sruid, x, doubled) in [
        (LATEST, json!(21), json!(42)),
        (tagged.as_str(), json!(1.5), json!(3.0)),
    ] {
        let (code, answer) = rouse_tests::octue::ask(
            &python,
            emulator.host(),
            sruid,
            &json!({ "x": x }),
            ASK_TIMEOUT_SECS,
        );
        assert_eq!(
            code,
            0,
            "{sruid}: {answer}\nserver log:\n{}\nservice logs:\n{}",
            server.log(),
            service_logs(&server)
        );
        assert_eq!(
            answer["output_values"],
            json!({ "doubled": doubled }),
            "{sruid}: {answer}"
        );
        let question_uuid = answer["question_uuid"].as_str().expect("question_uuid");

        let execution = settled_execution(&server, question_uuid, "result", sruid);
        assert_eq!(execution["status"], "succeeded", "{execution:#}");
        assert_eq!(execution["revision"], REVISION, "{execution:#}");
        let results = events_of(&execution, "result");
        assert_eq!(
            results.len(),
            1,
            "exactly one result (the service's own, none from the dispatcher): {execution:#}"
        );
        assert_eq!(results[0]["sender"], sruid, "{execution:#}");
        // octue's own event, not the dispatcher's fallback (which would hold
        // the job's last stdout line, octue's whole result event).
        assert_eq!(
            results[0]["data"],
            json!({"kind": "result", "output_values": {"doubled": doubled}}),
            "{execution:#}"
        );
        assert!(
            events_of(&execution, "exception").is_empty(),
            "{execution:#}"
        );
        // octue forwards the app's log (the question asked for logs).
        assert!(
            events_of(&execution, "log_record")
                .iter()
                .any(|e| e["sender"] == sruid
                    && e["data"]["log_record"]["msg"]
                        .as_str()
                        .is_some_and(|m| m.contains("octue-app doubles"))),
            "the app's forwarded log: {execution:#}"
        );
    }

    // The app raises: octue sends the exception, the job exits non-zero, and
    // the stock client raises with the app's message.
    let (code, answer) = rouse_tests::octue::ask(
        &python,
        emulator.host(),
        LATEST,
        &json!({"fail": "kaput"}),
        ASK_TIMEOUT_SECS,
    );
    assert_eq!(
        code,
        1,
        "{answer}\nserver log:\n{}\nservice logs:\n{}",
        server.log(),
        service_logs(&server)
    );
    assert_eq!(answer["exception_type"], "OctueAppFailure", "{answer}");
    let message = answer["exception_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("octue-app was asked to fail: kaput"),
        "{answer}"
    );
    let question_uuid = answer["question_uuid"].as_str().expect("question_uuid");
    let execution = settled_execution(&server, question_uuid, "exception", LATEST);
    assert_eq!(execution["status"], "failed", "{execution:#}");
    let exceptions = events_of(&execution, "exception");
    assert_eq!(
        exceptions.len(),
        1,
        "exactly one exception (the service's own, not the dispatcher's ServiceCrashed): {execution:#}"
    );
    assert_eq!(exceptions[0]["sender"], LATEST, "{execution:#}");
    assert_eq!(
        exceptions[0]["data"]["exception_type"], "OctueAppFailure",
        "{execution:#}"
    );
    assert!(events_of(&execution, "result").is_empty(), "{execution:#}");
}
