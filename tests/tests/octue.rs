//! End-to-end: the real Octue client (PyPI `octue==0.69.1`, in a virtualenv
//! made by `.ci/octue-venv`) asks a Rouse service. Its test-side shims (the
//! local schema file, dropping messages the emulator should have filtered)
//! change nothing on the wire; see `tests/octue/README.md`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use rouse_tests::{Emulator, Server, workspace_bin};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python (made on first use; idempotent).
fn octue_python() -> String {
    let out = Command::new(repo().join(".ci/octue-venv"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run .ci/octue-venv");
    assert!(out.status.success(), ".ci/octue-venv failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `ask.py` against the emulator; returns (exit code, the JSON line).
fn octue_ask(python: &str, emulator: &Emulator, sruid: &str, input: &Value) -> (i32, Value) {
    let out = Command::new(python)
        .arg(repo().join("tests/octue/ask.py"))
        .args([
            "--project",
            "rouse-local",
            "--services-topic",
            "octue.services",
        ])
        .args(["--service-topic-or-sruid", sruid])
        .args(["--input-values", &input.to_string(), "--timeout", "90"])
        .env("PUBSUB_EMULATOR_HOST", emulator.host())
        .env("GOOGLE_CLOUD_PROJECT", "rouse-local")
        .stdin(Stdio::null())
        .output()
        .expect("run ask.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "ask.py printed no JSON line ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), value)
}

#[test]
fn a_stock_octue_client_gets_results_and_remote_exceptions() {
    let python = octue_python();
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server
        .rouse(&["services", "create", "echo", "--project", "experiment_2"])
        .ok();
    let echo = workspace_bin("echo");
    server
        .rouse(&[
            "revisions",
            "create",
            "echo",
            "--project",
            "experiment_2",
            "--command",
            echo.to_str().expect("utf-8"),
            "--workdir",
            "/tmp",
        ])
        .ok();

    // By the serving revision's tag, and by `latest`.
    for sruid in ["experiment-2/echo:echo-00001", "experiment-2/echo:latest"] {
        let (code, answer) = octue_ask(&python, &emulator, sruid, &json!({"x": 1}));
        assert_eq!(code, 0, "{sruid}: {answer}\n{}", server.log());
        assert_eq!(
            answer["output_values"]["echo"],
            json!({"x": 1}),
            "{sruid}: {answer}"
        );
    }

    // A failing service: octue raises with the remote message.
    let (code, answer) = octue_ask(
        &python,
        &emulator,
        "experiment-2/echo:latest",
        &json!({"fail": "kaput"}),
    );
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["exception_type"], "ServiceError", "{answer}");
    assert!(
        answer["exception_message"]
            .as_str()
            .unwrap_or_default()
            .contains("kaput"),
        "{answer}"
    );
}
