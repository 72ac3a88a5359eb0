//! The real Octue client (PyPI `octue==0.69.1`) for the compatibility tests:
//! the virtualenv `.ci/octue-venv` makes, and `tests/octue/ask.py`, which
//! asks one question with octue's own `Child.ask` (see tests/octue/README.md
//! for its test-side shims, which change nothing on the wire).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python (made on first use; idempotent).
pub fn python() -> PathBuf {
    let out = Command::new(repo().join(".ci/octue-venv"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run .ci/octue-venv");
    assert!(out.status.success(), ".ci/octue-venv failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs `ask.py` against the emulator at `emulator_host`, asking `sruid` on
/// the network topic and waiting up to `timeout_secs`; returns (exit code,
/// the JSON line it printed).
pub fn ask(
    python: &Path,
    emulator_host: &str,
    sruid: &str,
    input: &Value,
    timeout_secs: u32,
) -> (i32, Value) {
    let out = Command::new(python)
        .arg(repo().join("tests/octue/ask.py"))
        .args([
            "--project",
            "rouse-local",
            "--services-topic",
            "octue.services",
        ])
        .args(["--service-topic-or-sruid", sruid])
        .args(["--input-values", &input.to_string()])
        .args(["--timeout", &timeout_secs.to_string()])
        .env("PUBSUB_EMULATOR_HOST", emulator_host)
        // The filter shim only where filters are not applied: the official
        // emulator (the same choice `Emulator::start` makes).
        .env(
            "ROUSE_OCTUE_FILTER_SHIM",
            if std::env::var("ROUSE_TEST_PUBSUB").as_deref() == Ok("emulator") {
                "1"
            } else {
                "0"
            },
        )
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
