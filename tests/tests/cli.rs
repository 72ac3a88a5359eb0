//! The `rouse` binary's contract: usage errors exit 2 with one clear line,
//! failures to reach the API exit 1 naming the endpoint, config errors name
//! the bad key. No server needed.

use std::process::{Command, Stdio};

use rouse_tests::{free_port, rouse, rouse_bin};

#[test]
fn help_lists_the_commands() {
    let out = rouse("http://127.0.0.1:1", &["--help"]);
    let text = out.ok();
    assert!(
        text.contains("server") && text.contains("services"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_2_and_name_the_value() {
    let endpoint = "http://127.0.0.1:1";
    let out = rouse(
        endpoint,
        &[
            "services",
            "update",
            "svc",
            "--project",
            "p",
            "--idle-timeout",
            "5x",
        ],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("5x"), "{}", out.stderr);

    let out = rouse(endpoint, &["services", "update", "svc", "--project", "p"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("nothing to update"), "{}", out.stderr);

    let out = rouse(
        endpoint,
        &[
            "services",
            "update",
            "svc",
            "--project",
            "p",
            "--env",
            "NOEQUALS",
        ],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("`NOEQUALS` must have the form KEY=VALUE"),
        "{}",
        out.stderr
    );

    let out = rouse(endpoint, &["services", "describe", "svc"]);
    assert_eq!(out.code, 2, "missing --project: {out:?}");
    assert!(out.stderr.contains("--project"), "{}", out.stderr);

    let out = rouse("not a url", &["services", "list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("`not a url`"), "{}", out.stderr);
}

#[test]
fn unreachable_api_exits_1_naming_the_endpoint() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let out = rouse(&endpoint, &["services", "list", "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", out.stdout);
    assert!(
        out.stderr.contains(&endpoint) && out.stderr.contains("rouse server"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
}

fn server(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(rouse_bin());
    cmd.arg("server").args(args).stdin(Stdio::null());
    for var in [
        "PUBSUB_EMULATOR_HOST",
        "ROUSE_PUBSUB",
        "ROUSE_BROKER_LISTEN",
        "GOOGLE_CLOUD_PROJECT",
        "ROUSE_CONFIG",
        "ROUSE_API_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run rouse server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_server_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rouse.toml");
    std::fs::write(
        &path,
        "api_listen = \"127.0.0.1:0\"\n[pubsub]\nemulatr_host = \"x\"\n",
    )
    .expect("write");
    let (code, stderr) = server(&["--config", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("emulatr_host"), "{stderr}");

    // The same file named through the environment.
    let (code, stderr) = server(&[], &[("ROUSE_CONFIG", path.to_str().expect("utf-8"))]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("emulatr_host"), "{stderr}");

    let (code, stderr) = server(&["--api-listen", "nowhere"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");
}

#[test]
fn google_pubsub_without_a_project_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = server(
        &[
            "--data-dir",
            dir.path().to_str().expect("utf-8"),
            "--pubsub",
            "google",
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("GOOGLE_CLOUD_PROJECT"), "{stderr}");
}
