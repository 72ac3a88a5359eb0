//! End-to-end: the real Octue client (PyPI `octue==0.69.1`, in a virtualenv
//! made by `.ci/octue-venv`) asks a Rouse service. Its test-side shims (the
//! local schema file; on the official emulator only, dropping messages the
//! emulator should have filtered) change nothing on the wire; see
//! `tests/octue/README.md`.

use rouse_tests::octue::{ask, python};
use rouse_tests::{Emulator, Server, workspace_bin};
use serde_json::json;

/// How long ask.py waits for an answer.
const ASK_TIMEOUT_SECS: u32 = 90;

#[test]
fn a_stock_octue_client_gets_results_and_remote_exceptions() {
    let python = python();
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

    // Stock clients send no token: anonymous, so refused until a policy says
    // otherwise; octue raises the remote PermissionDenied.
    let (code, denied) = ask(
        &python,
        emulator.host(),
        "experiment-2/echo:latest",
        &json!({"x": 0}),
        ASK_TIMEOUT_SECS,
    );
    assert_eq!(code, 1, "{denied}");
    assert_eq!(denied["exception_type"], "PermissionDenied", "{denied}");
    assert!(
        denied["exception_message"]
            .as_str()
            .unwrap_or_default()
            .contains("services.ask"),
        "{denied}"
    );
    // The local-development mode: the project trusts the `sender` attribute,
    // and the asking service (a stock client sends as `local/local`) is
    // granted roles/serviceUser on the service.
    server
        .rouse(&[
            "projects",
            "update",
            "experiment_2",
            "--trust-sender-attribute",
        ])
        .ok();
    server
        .rouse(&[
            "services",
            "add-iam-policy-binding",
            "echo",
            "--project",
            "experiment_2",
            "--member=service:local/local",
            "--role=roles/serviceUser",
        ])
        .ok();

    // By the serving revision's tag, and by `latest`.
    for sruid in ["experiment-2/echo:echo-00001", "experiment-2/echo:latest"] {
        let (code, answer) = ask(
            &python,
            emulator.host(),
            sruid,
            &json!({"x": 1}),
            ASK_TIMEOUT_SECS,
        );
        assert_eq!(code, 0, "{sruid}: {answer}\n{}", server.log());
        assert_eq!(
            answer["output_values"]["echo"],
            json!({"x": 1}),
            "{sruid}: {answer}"
        );
    }

    // Several questions in flight at once, each answered with its own
    // result (on Rouse's broker with no client-side filter: the answer
    // subscriptions' filters are applied by the broker).
    let asks: Vec<_> = (0..3)
        .map(|i| {
            let python = python.clone();
            let host = emulator.host().to_owned();
            std::thread::spawn(move || {
                ask(
                    &python,
                    &host,
                    "experiment-2/echo:latest",
                    &json!({ "n": i }),
                    ASK_TIMEOUT_SECS,
                )
            })
        })
        .collect();
    for (i, handle) in asks.into_iter().enumerate() {
        let (code, answer) = handle.join().expect("ask thread");
        assert_eq!(code, 0, "question {i}: {answer}\n{}", server.log());
        assert_eq!(
            answer["output_values"]["echo"],
            json!({ "n": i }),
            "question {i} got its own answer: {answer}"
        );
    }

    // A failing service: octue raises with the remote message.
    let (code, answer) = ask(
        &python,
        emulator.host(),
        "experiment-2/echo:latest",
        &json!({"fail": "kaput"}),
        ASK_TIMEOUT_SECS,
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
