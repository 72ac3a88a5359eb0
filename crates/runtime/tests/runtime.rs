//! The runtimes against the real things: host processes, and the local
//! Docker engine (which must be reachable: those tests fail without it).
//!
//! Prerequisites, built by `cargo build --workspace --all-targets` and the
//! Justfile:
//! - `target/debug/echo` (the echo example) for the process runtime;
//! - `target/x86_64-unknown-linux-gnu/release/echo`, the static echo, for
//!   the image the docker tests build `FROM scratch`:
//!   `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p rouse-example-echo --target x86_64-unknown-linux-gnu`
//!
//! Start-to-ready times are printed (`cargo nextest run -p rouse-runtime
//! --success-output immediate` shows them); nothing asserts on them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rouse_runtime::{
    DockerRuntime, ExitInfo, Instance, InstanceSpec, Probe, ProcessRuntime, Runtime, RuntimeError,
    Source, WakeError,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(2);
/// The contract: an exit is visible within a second.
const EXIT_NOTICE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------- helpers

/// `target/` of this build: test executables live in `target/debug/deps`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.ancestors()
        .nth(3)
        .expect("the test executable lives in <target>/debug/deps")
        .to_owned()
}

fn echo_binary() -> PathBuf {
    let path = target_dir().join("debug/echo");
    assert!(
        path.is_file(),
        "the echo example is not built at `{}`: run `cargo build --workspace --all-targets` first",
        path.display()
    );
    path
}

const STATIC_BUILD: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p rouse-example-echo --target x86_64-unknown-linux-gnu";

fn static_echo_binary() -> PathBuf {
    let path = target_dir().join("x86_64-unknown-linux-gnu/release/echo");
    assert!(
        path.is_file(),
        "the static echo is not built at `{}`: run `{STATIC_BUILD}` first (the Justfile does)",
        path.display()
    );
    path
}

fn unique_id(name: &str) -> String {
    format!("t{}-{name}", std::process::id())
}

fn spec(id: &str, source: Source, logs: &Path, listen: bool) -> InstanceSpec {
    InstanceSpec {
        instance_id: id.to_owned(),
        source,
        env: BTreeMap::from([("ROUSE_INSTANCE".to_owned(), id.to_owned())]),
        extra_args: Vec::new(),
        log_path: logs.join(format!("{id}/instance.log")),
        listen,
        node_selector: BTreeMap::new(),
    }
}

fn echo_command(workdir: &Path) -> Source {
    Source::Command {
        program: echo_binary().display().to_string(),
        args: Vec::new(),
        workdir: workdir.to_owned(),
    }
}

fn shell(script: &str, workdir: &Path) -> Source {
    Source::Command {
        program: "sh".to_owned(),
        args: vec!["-c".to_owned(), script.to_owned()],
        workdir: workdir.to_owned(),
    }
}

/// A Pub/Sub push envelope carrying an Octue question.
fn envelope(input_values: &Value) -> String {
    let question = json!({ "kind": "question", "input_values": input_values });
    let data = base64::engine::general_purpose::STANDARD.encode(question.to_string());
    json!({
        "message": {
            "data": data,
            "attributes": { "question_uuid": "q-1", "retry_count": "0" },
            "messageId": "1",
        },
        "subscription": "projects/test/subscriptions/rouse.dispatcher.test",
    })
    .to_string()
}

/// One HTTP/1.1 request with `Connection: close`; the status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {response:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    Ok((status, body.to_owned()))
}

async fn ask(instance: &Instance, input_values: &Value) -> (u16, String) {
    let addr = instance
        .addr()
        .expect("a listening instance has an address");
    http(addr, "POST", "/", &envelope(input_values))
        .await
        .expect("the instance answers")
}

/// Asks for a crash and returns how long the exit took to be noticed.
async fn crash(instance: &Instance) -> (ExitInfo, Duration) {
    let addr = instance
        .addr()
        .expect("a listening instance has an address");
    let asked = Instant::now();
    // No answer comes: the connection just closes.
    let _ = http(addr, "POST", "/", &envelope(&json!({ "crash": true }))).await;
    let exit = tokio::time::timeout(EXIT_NOTICE, instance.exited())
        .await
        .expect("the crash is noticed within a second");
    assert_eq!(instance.exit(), Some(exit.clone()));
    (exit, asked.elapsed())
}

fn read_log(instance: &Instance) -> String {
    std::fs::read_to_string(instance.log_path()).unwrap_or_default()
}

async fn wait_for_log(instance: &Instance, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = read_log(instance);
        if log.contains(needle) || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a process is alive (zombies, which nobody may reap in a
/// container, count as dead).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

fn pid_after(log: &str, marker: &str) -> u32 {
    log.lines()
        .find_map(|line| line.strip_prefix(marker)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{marker}<pid>` line in the log:\n{log}"))
}

// ------------------------------------------------------- process runtime

#[tokio::test]
async fn process_echo_answers_a_question_and_logs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = ProcessRuntime::new();
    assert_eq!(runtime.kind(), "process");
    let id = unique_id("answers");

    let begun = Instant::now();
    let instance = runtime
        .start(spec(&id, echo_command(dir.path()), dir.path(), true))
        .await
        .expect("echo starts");
    let started = begun.elapsed();
    let waited = instance
        .wait_ready(&Probe::Tcp, READY_TIMEOUT)
        .await
        .expect("echo becomes ready");
    println!(
        "process: start() {started:?} + wait_ready {waited:?} = start-to-ready {:?}",
        begun.elapsed()
    );
    assert_eq!(instance.id(), id);
    assert!(instance.addr().expect("an address").ip().is_loopback());
    assert_eq!(instance.exit(), None);

    instance
        .wait_ready(&Probe::Http("/healthz".to_owned()), READY_TIMEOUT)
        .await
        .expect("the HTTP probe passes too");
    let (status, body) = ask(&instance, &json!({ "greeting": "hello", "n": [1, 2] })).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(
        body,
        json!({ "echo": { "greeting": "hello", "n": [1, 2] }, "instance": id })
    );

    let (status, body) = ask(&instance, &json!({ "fail": "no luck" })).await;
    assert_eq!((status, body.as_str()), (500, "no luck"));
    let addr = instance.addr().expect("an address");
    let (status, body) = http(addr, "POST", "/", "{not json")
        .await
        .expect("an answer");
    assert_eq!(status, 400);
    assert!(body.contains("not JSON"), "{body}");

    // stdout and stderr both reach the log, line by line.
    let log = wait_for_log(&instance, "failing as asked").await;
    assert!(log.contains("echo: listening on 0.0.0.0:"), "{log}");
    assert!(log.contains("echo: answered a question\n"), "{log}");
    assert!(log.contains("echo: failing as asked: no luck\n"), "{log}");

    let stopping = Instant::now();
    instance.stop(GRACE).await;
    println!("process: stop took {:?}", stopping.elapsed());
    let exit = instance.exit().expect("stopped instances have exited");
    assert_eq!(exit.description, "killed by signal 15 (SIGTERM)");
    instance.stop(GRACE).await; // idempotent
}

#[tokio::test]
async fn process_crash_is_noticed_within_a_second() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = ProcessRuntime::new()
        .start(spec(
            &unique_id("crash"),
            echo_command(dir.path()),
            dir.path(),
            true,
        ))
        .await
        .expect("echo starts");
    instance
        .wait_ready(&Probe::Tcp, READY_TIMEOUT)
        .await
        .expect("echo becomes ready");
    let (exit, noticed) = crash(&instance).await;
    println!("process: crash noticed after {noticed:?}");
    assert_eq!(exit.code, Some(3));
    assert_eq!(exit.description, "exited with code 3");
    assert!(read_log(&instance).contains("echo: crashing as asked"));
    // Too late to be ready: it says why, with the log.
    match instance.wait_ready(&Probe::Tcp, READY_TIMEOUT).await {
        Err(WakeError::Exited { exit, last_logs }) => {
            assert_eq!(exit.code, Some(3));
            assert!(
                last_logs.ends_with("echo: crashing as asked"),
                "{last_logs}"
            );
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    instance.stop(GRACE).await;
}

#[tokio::test]
async fn process_that_exits_at_once_fails_with_its_last_words() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = shell(
        "echo starting; echo 'error: bad config' >&2; exit 7",
        dir.path(),
    );
    let instance = ProcessRuntime::new()
        .start(spec(&unique_id("exits"), source, dir.path(), true))
        .await
        .expect("sh starts");
    let begun = Instant::now();
    let err = instance
        .wait_ready(&Probe::Tcp, READY_TIMEOUT)
        .await
        .expect_err("it never listens");
    assert!(
        begun.elapsed() < EXIT_NOTICE,
        "failed only after {:?}",
        begun.elapsed()
    );
    match &err {
        WakeError::Exited { exit, last_logs } => {
            assert_eq!(exit.code, Some(7));
            assert!(last_logs.contains("starting"), "{last_logs}");
            assert!(last_logs.contains("error: bad config"), "{last_logs}");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("exited with code 7"), "{message}");
    assert!(message.contains("error: bad config"), "{message}");
}

#[tokio::test]
async fn process_that_never_listens_times_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spec = spec(
        &unique_id("slow"),
        echo_command(dir.path()),
        dir.path(),
        true,
    );
    spec.env
        .insert("ECHO_STARTUP_DELAY_MS".to_owned(), "60000".to_owned());
    let instance = ProcessRuntime::new()
        .start(spec)
        .await
        .expect("echo starts");
    let timeout = Duration::from_millis(300);
    for probe in [Probe::Tcp, Probe::Http("/healthz".to_owned())] {
        match instance.wait_ready(&probe, timeout).await {
            Err(WakeError::Timeout { after, last_logs }) => {
                assert_eq!(after, timeout);
                assert!(last_logs.contains("waiting 60000 ms"), "{last_logs}");
            }
            other => panic!("expected Timeout for {probe:?}, got {other:?}"),
        }
    }
    instance.stop(GRACE).await;
    assert!(instance.exit().is_some());
}

#[tokio::test]
async fn process_stop_kills_the_whole_group_after_the_grace() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The shell and its child ignore SIGTERM: only the kill ends them.
    let script = "trap '' TERM; sleep 300 & echo \"child $!\"; wait";
    let instance = ProcessRuntime::new()
        .start(spec(
            &unique_id("group"),
            shell(script, dir.path()),
            dir.path(),
            false,
        ))
        .await
        .expect("sh starts");
    assert_eq!(instance.addr(), None);
    let log = wait_for_log(&instance, "child ").await;
    let child = pid_after(&log, "child ");
    assert!(alive(child));

    let grace = Duration::from_millis(300);
    let stopping = Instant::now();
    instance.stop(grace).await;
    let took = stopping.elapsed();
    assert!(took >= grace, "stopped after {took:?}, before the grace");
    assert!(took < grace + EXIT_NOTICE, "stop took {took:?}");
    let exit = instance.exit().expect("stopped");
    assert_eq!(exit.description, "killed by signal 9 (SIGKILL)");
    // SIGKILL is delivered asynchronously: on a busy machine the child may
    // still be scheduled for a moment after the leader's exit was seen.
    assert!(
        gone_within(child, Duration::from_secs(2)).await,
        "the group's child {child} survived the stop"
    );
}

/// Whether `pid` ends within `limit`.
async fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test]
async fn process_jobs_get_arguments_and_no_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spec = spec(
        &unique_id("job"),
        echo_command(dir.path()),
        dir.path(),
        false,
    );
    spec.extra_args = ["--attributes", "{}", "--input-values", r#"{"x":1}"#]
        .map(str::to_owned)
        .to_vec();
    let instance = ProcessRuntime::new()
        .start(spec)
        .await
        .expect("echo starts");
    assert_eq!(instance.addr(), None);
    assert!(matches!(
        instance.wait_ready(&Probe::Tcp, READY_TIMEOUT).await,
        Err(WakeError::NoPort { .. })
    ));
    let exit = tokio::time::timeout(EXIT_NOTICE, instance.exited())
        .await
        .expect("the job ends");
    assert_eq!(exit.code, Some(0));
    assert_eq!(read_log(&instance), "{\"echo\":{\"x\":1}}\n");
}

#[tokio::test]
async fn dropping_the_last_handle_kills_the_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = shell("echo \"pid $$\"; exec sleep 300", dir.path());
    let instance = ProcessRuntime::new()
        .start(spec(&unique_id("drop"), source, dir.path(), false))
        .await
        .expect("sh starts");
    let pid = pid_after(&wait_for_log(&instance, "pid ").await, "pid ");
    let clone = instance.clone();
    drop(instance);
    assert!(alive(pid), "a remaining clone keeps it alive");
    drop(clone);
    let deadline = Instant::now() + EXIT_NOTICE;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!alive(pid), "process {pid} survived its last handle");
}

#[tokio::test]
async fn process_runs_the_python_example() {
    let workdir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Source::Command {
        program: "python3".to_owned(),
        args: vec!["service.py".to_owned()],
        workdir,
    };
    let id = unique_id("python");
    let begun = Instant::now();
    let instance = ProcessRuntime::new()
        .start(spec(&id, source, dir.path(), true))
        .await
        .unwrap_or_else(|err| panic!("this test needs python3 on PATH: {err}"));
    instance
        .wait_ready(&Probe::Http("/healthz".to_owned()), READY_TIMEOUT)
        .await
        .expect("the Python service becomes ready");
    println!("process (python3): start-to-ready {:?}", begun.elapsed());
    let (status, body) = ask(&instance, &json!({ "from": "python" })).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(
        body,
        json!({ "echo": { "from": "python" }, "instance": id })
    );
    let (exit, _) = crash(&instance).await;
    assert_eq!(exit.code, Some(3));
    assert!(read_log(&instance).contains("python-echo: crashing as asked"));
}

#[tokio::test]
async fn process_start_errors_name_what_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = ProcessRuntime::new();
    let missing = Source::Command {
        program: "rouse-no-such-program".to_owned(),
        args: Vec::new(),
        workdir: dir.path().to_owned(),
    };
    let err = runtime
        .start(spec("missing-program", missing, dir.path(), true))
        .await
        .expect_err("no such program");
    assert!(
        matches!(err, RuntimeError::CommandNotFound { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("rouse-no-such-program"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );

    let nowhere = dir.path().join("nowhere");
    let err = runtime
        .start(spec(
            "missing-dir",
            echo_command(&nowhere),
            dir.path(),
            true,
        ))
        .await
        .expect_err("no such directory");
    assert!(
        matches!(err, RuntimeError::WorkdirMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("nowhere"), "{err}");

    let err = runtime
        .start(spec(
            "image",
            Source::Image("rouse/echo".to_owned()),
            dir.path(),
            true,
        ))
        .await
        .expect_err("the process runtime runs no images");
    assert!(matches!(err, RuntimeError::Unsupported { .. }), "{err:?}");

    let err = runtime
        .start(spec("Bad_Id", echo_command(dir.path()), dir.path(), true))
        .await
        .expect_err("bad id");
    assert!(
        matches!(err, RuntimeError::InvalidInstanceId { .. }),
        "{err:?}"
    );
}

// -------------------------------------------------------- docker runtime

fn docker_runtime(owner: &str) -> DockerRuntime {
    DockerRuntime::connect()
        .unwrap_or_else(|err| panic!("these tests need the local Docker engine: {err}"))
        .with_owner(owner)
}

/// Removes what a docker test created, even when it fails.
struct DockerCleanup {
    owner: String,
    image: Option<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let filter = format!("label=rouse.owner={}", self.owner);
        let listed = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output();
        if let Ok(listed) = listed {
            let ids = String::from_utf8_lossy(&listed.stdout);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .output();
            }
        }
        if let Some(image) = &self.image {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", image])
                .output();
        }
    }
}

/// Builds the echo image `FROM scratch` out of examples/echo/Dockerfile and
/// the static binary, as examples/echo/README.md says.
fn build_echo_image(tag: &str) {
    let binary = static_echo_binary();
    let release = binary.parent().expect("the binary's directory");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/echo");
    let script = "set -o pipefail; tar -cf - -C \"$1\" Dockerfile -C \"$2\" echo | docker build -q -t \"$3\" -";
    let output = std::process::Command::new("bash")
        .args(["-c", script, "build"])
        .arg(&example)
        .arg(release)
        .arg(tag)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "docker build of {tag} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn container_exists(name: &str) -> bool {
    let output = tokio::process::Command::new("docker")
        .args(["inspect", "--type", "container", name])
        .output()
        .await
        .expect("docker CLI runs");
    output.status.success()
}

#[tokio::test]
async fn docker_runtime_runs_the_echo_image() {
    let owner = unique_id("docker");
    let image = format!("rouse-test/echo:{owner}");
    let _cleanup = DockerCleanup {
        owner: owner.clone(),
        image: Some(image.clone()),
    };
    let runtime = docker_runtime(&owner);
    assert_eq!(runtime.kind(), "docker");
    build_echo_image(&image);
    let dir = tempfile::tempdir().expect("temp dir");
    let source = || Source::Image(image.clone());

    // Start, ready, answer.
    let id = unique_id("answers");
    let begun = Instant::now();
    let instance = runtime
        .start(spec(&id, source(), dir.path(), true))
        .await
        .expect("the container starts");
    let started = begun.elapsed();
    let waited = instance
        .wait_ready(&Probe::Tcp, READY_TIMEOUT)
        .await
        .expect("the container becomes ready");
    println!(
        "docker: start() {started:?} + wait_ready {waited:?} = start-to-ready {:?}",
        begun.elapsed()
    );
    let addr = instance.addr().expect("an address");
    assert!(addr.ip().is_loopback());
    let (status, body) = ask(&instance, &json!({ "in": "a container" })).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(
        body,
        json!({ "echo": { "in": "a container" }, "instance": id })
    );
    let log = wait_for_log(&instance, "answered a question").await;
    assert!(
        log.contains(&format!("echo: listening on 0.0.0.0:{}\n", addr.port())),
        "{log}"
    );
    assert!(log.contains("echo: answered a question\n"), "{log}");

    // A crash is noticed within a second; stop removes the container.
    let (exit, noticed) = crash(&instance).await;
    println!("docker: crash noticed after {noticed:?}");
    assert_eq!(exit.code, Some(3));
    assert!(read_log(&instance).contains("echo: crashing as asked"));
    let container = DockerRuntime::container_name(&id);
    assert!(container_exists(&container).await, "kept until stopped");
    instance.stop(GRACE).await;
    assert!(
        !container_exists(&container).await,
        "stop removes {container}"
    );

    // Jobs: arguments after the entrypoint, no port.
    let mut job = spec(&unique_id("job"), source(), dir.path(), false);
    job.extra_args = ["--attributes", "{}", "--input-values", r#"{"n":1}"#]
        .map(str::to_owned)
        .to_vec();
    let job = runtime.start(job).await.expect("the job starts");
    assert_eq!(job.addr(), None);
    let exit = tokio::time::timeout(Duration::from_secs(5), job.exited())
        .await
        .expect("the job ends");
    assert_eq!(exit.code, Some(0));
    assert_eq!(read_log(&job), "{\"echo\":{\"n\":1}}\n");
    job.stop(GRACE).await;

    // Exiting at once fails the wake with the log.
    let mut doomed = spec(&unique_id("doomed"), source(), dir.path(), true);
    doomed.extra_args = ["--input-values", r#"{"crash":true}"#]
        .map(str::to_owned)
        .to_vec();
    let doomed = runtime.start(doomed).await.expect("the container starts");
    match doomed.wait_ready(&Probe::Tcp, READY_TIMEOUT).await {
        Err(WakeError::Exited { exit, last_logs }) => {
            assert_eq!(exit.code, Some(3));
            assert!(last_logs.contains("crashing as asked"), "{last_logs}");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    doomed.stop(GRACE).await;

    // Not listening yet: neither probe may say it is ready.
    let mut slow = spec(&unique_id("slow"), source(), dir.path(), true);
    slow.env
        .insert("ECHO_STARTUP_DELAY_MS".to_owned(), "60000".to_owned());
    let slow = runtime.start(slow).await.expect("the container starts");
    let timeout = Duration::from_millis(500);
    for probe in [Probe::Tcp, Probe::Http("/healthz".to_owned())] {
        match slow.wait_ready(&probe, timeout).await {
            Err(WakeError::Timeout { after, last_logs }) => {
                assert_eq!(after, timeout);
                assert!(last_logs.contains("waiting 60000 ms"), "{last_logs}");
            }
            other => panic!("expected Timeout for {probe:?}, got {other:?}"),
        }
    }
    let stopping = Instant::now();
    slow.stop(GRACE).await;
    println!(
        "docker: stop (SIGTERM through the init) took {:?}",
        stopping.elapsed()
    );
    let exit = slow.exit().expect("stopped");
    assert!(
        stopping.elapsed() < GRACE,
        "the init passed SIGTERM on, so no kill was needed: {exit:?}"
    );
    assert!(!container_exists(&DockerRuntime::container_name(slow.id())).await);

    // Dropping the last handle removes the container.
    let dropped = runtime
        .start(spec(&unique_id("dropped"), source(), dir.path(), false))
        .await
        .expect("the container starts");
    let dropped_name = DockerRuntime::container_name(dropped.id());
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(5);
    while container_exists(&dropped_name).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !container_exists(&dropped_name).await,
        "{dropped_name} outlived its last handle"
    );

    // A forgotten container is what remove_stale is for.
    let leaked = runtime
        .start(spec(&unique_id("leaked"), source(), dir.path(), true))
        .await
        .expect("the container starts");
    let leaked_name = DockerRuntime::container_name(leaked.id());
    // Left frozen through its cgroup, which Docker does not know of (it
    // says not paused): remove_stale still removes it at once (runc thaws
    // a frozen cgroup to kill it).
    leaked
        .wait_ready(&Probe::Tcp, Duration::from_secs(10))
        .await
        .expect("ready");
    leaked.freeze().await.expect("frozen");
    let paused = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Paused}}", &leaked_name])
        .output()
        .expect("docker inspect");
    assert_eq!(
        String::from_utf8_lossy(&paused.stdout).trim(),
        "false",
        "frozen by its cgroup freezer directly, not by docker pause"
    );
    std::mem::forget(leaked);
    assert!(container_exists(&leaked_name).await);
    let removing = Instant::now();
    let removed = runtime.remove_stale().await.expect("stale containers go");
    println!(
        "docker: remove_stale of a frozen container took {:?}",
        removing.elapsed()
    );
    assert_eq!(removed, 1);
    assert!(!container_exists(&leaked_name).await);
    assert!(removing.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn docker_missing_image_is_a_clear_error() {
    let owner = unique_id("missing");
    let _cleanup = DockerCleanup {
        owner: owner.clone(),
        image: None,
    };
    let runtime = docker_runtime(&owner);
    let dir = tempfile::tempdir().expect("temp dir");
    let image = "rouse-test/no-such-image:never";
    let err = runtime
        .start(spec(
            &unique_id("missing"),
            Source::Image(image.to_owned()),
            dir.path(),
            true,
        ))
        .await
        .expect_err("the image is not there");
    assert!(matches!(err, RuntimeError::ImageNotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(image), "{message}");
    assert!(message.contains("never pulls"), "{message}");

    let err = runtime
        .start(spec(
            &unique_id("command"),
            echo_command(dir.path()),
            dir.path(),
            true,
        ))
        .await
        .expect_err("the docker runtime runs no host commands");
    assert!(matches!(err, RuntimeError::Unsupported { .. }), "{err:?}");
}

#[test]
fn unreachable_engine_is_a_clear_error() {
    let err = DockerRuntime::connect_to("unix:///nonexistent/docker.sock")
        .expect_err("nothing listens there");
    assert!(
        matches!(err, RuntimeError::EngineUnreachable { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("/nonexistent/docker.sock"), "{message}");
}

// ------------------------------------- process runtime: stale instances

fn pid_file(state: &Path, id: &str) -> PathBuf {
    state.join(format!("{id}.pid"))
}

/// The `<pid> <starttime>` of a pid file.
fn read_pid_file(path: &Path) -> (u32, u64) {
    let content = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let fields: Vec<u32> = content
        .split_ascii_whitespace()
        .map(|f| f.parse().expect("a number"))
        .collect();
    let own = std::process::id();
    assert_eq!(
        fields[2..],
        [own, u32::try_from(starttime(own)).expect("small")],
        "not `<pid> <starttime> <owner pid> <owner starttime>`: {content:?}"
    );
    (fields[0], u64::from(fields[1]))
}

/// Field 22 of `/proc/<pid>/stat`.
fn starttime(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("a running process");
    let after_comm = stat.rsplit_once(')').expect("a stat line").1;
    after_comm
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|field| field.parse().ok())
        .expect("a start time")
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| {
                    entry
                        .expect("an entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn process_pid_files_live_as_long_as_their_instance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let runtime = ProcessRuntime::with_state_dir(&state);

    // A server: recorded while it runs, with its start time.
    let server_id = unique_id("recorded");
    let server = runtime
        .start(spec(&server_id, echo_command(dir.path()), dir.path(), true))
        .await
        .expect("echo starts");
    let (pid, recorded) = read_pid_file(&pid_file(&state, &server_id));
    assert!(alive(pid));
    assert_eq!(recorded, starttime(pid));
    assert_eq!(files_in(&state), [format!("{server_id}.pid")]);

    // A job that ends by itself leaves nothing behind.
    let mut job = spec(
        &unique_id("job"),
        echo_command(dir.path()),
        dir.path(),
        false,
    );
    job.extra_args = ["--attributes", "{}", "--input-values", r#"{"x":1}"#]
        .map(str::to_owned)
        .to_vec();
    let job = runtime.start(job).await.expect("echo starts");
    let exit = tokio::time::timeout(EXIT_NOTICE, job.exited())
        .await
        .expect("the job ends");
    assert_eq!(exit.code, Some(0));
    assert!(!pid_file(&state, job.id()).exists(), "the job's pid file");

    // So does a stopped one, and a crashed one.
    server.stop(GRACE).await;
    assert!(
        !pid_file(&state, &server_id).exists(),
        "stopped, still recorded"
    );
    let crashing = runtime
        .start(spec(
            &unique_id("crashing"),
            echo_command(dir.path()),
            dir.path(),
            true,
        ))
        .await
        .expect("echo starts");
    crashing
        .wait_ready(&Probe::Tcp, READY_TIMEOUT)
        .await
        .expect("echo becomes ready");
    crash(&crashing).await;
    assert!(files_in(&state).is_empty(), "{:?}", files_in(&state));

    // Nothing is left to remove.
    assert_eq!(runtime.remove_stale().await.expect("nothing to do"), 0);
}

/// A ready echo instance (frozen with `freeze`) whose owner "crashes":
/// nobody stops it, nor drops its handle (which would kill it). Its pid.
async fn orphaned_echo(dir: &Path, state: &Path, name: &str, freeze: bool) -> u32 {
    let id = unique_id(name);
    let instance = ProcessRuntime::with_state_dir(state)
        .start(spec(&id, echo_command(dir), dir, true))
        .await
        .expect("echo starts");
    instance
        .wait_ready(&Probe::Tcp, READY_TIMEOUT)
        .await
        .expect("echo becomes ready");
    if freeze {
        instance.freeze().await.expect("frozen");
    }
    let (pid, _) = read_pid_file(&pid_file(state, &id));
    std::mem::forget(instance);
    pid
}

#[tokio::test]
async fn process_remove_stale_kills_what_a_crashed_owner_left() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let pid = orphaned_echo(dir.path(), &state, "orphan", false).await;
    assert!(alive(pid));

    // The next run of the platform, on the same state directory.
    let restarted = ProcessRuntime::with_state_dir(&state);
    let begun = Instant::now();
    let removed = restarted.remove_stale().await.expect("stale instances go");
    println!("process: remove_stale took {:?}", begun.elapsed());
    assert_eq!(removed, 1);
    assert!(!alive(pid), "echo {pid} survived remove_stale");
    assert!(
        begun.elapsed() < GRACE,
        "echo ends on SIGTERM: no kill needed"
    );
    assert!(files_in(&state).is_empty(), "{:?}", files_in(&state));
    assert_eq!(restarted.remove_stale().await.expect("idempotent"), 0);
}

#[tokio::test]
async fn process_remove_stale_ends_a_frozen_instance_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let pid = orphaned_echo(dir.path(), &state, "frozen-orphan", true).await;

    let begun = Instant::now();
    let removed = ProcessRuntime::with_state_dir(&state)
        .remove_stale()
        .await
        .expect("stale instances go");
    assert_eq!(removed, 1);
    assert!(!alive(pid), "echo {pid} survived remove_stale");
    assert!(
        begun.elapsed() < Duration::from_secs(1),
        "a frozen instance is woken to hear its SIGTERM, not killed after the grace: {:?}",
        begun.elapsed()
    );
}

#[tokio::test]
async fn process_remove_stale_kills_groups_that_ignore_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let script = "trap '' TERM; sleep 300 & echo \"child $!\"; wait";
    let instance = ProcessRuntime::with_state_dir(&state)
        .start(spec(
            &unique_id("stubborn"),
            shell(script, dir.path()),
            dir.path(),
            false,
        ))
        .await
        .expect("sh starts");
    let child = pid_after(&wait_for_log(&instance, "child ").await, "child ");
    let (leader, _) = read_pid_file(&pid_file(&state, instance.id()));
    std::mem::forget(instance);

    let begun = Instant::now();
    let removed = ProcessRuntime::with_state_dir(&state)
        .remove_stale()
        .await
        .expect("stale instances go");
    assert_eq!(removed, 1);
    assert!(
        begun.elapsed() >= Duration::from_secs(1),
        "SIGTERM was ignored"
    );
    // SIGKILL was sent; the kernel delivers it at once.
    let deadline = Instant::now() + EXIT_NOTICE;
    while (alive(leader) || alive(child)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!alive(leader), "the leader {leader} survived");
    assert!(!alive(child), "the group's child {child} survived");
    assert!(files_in(&state).is_empty(), "{:?}", files_in(&state));
}

#[tokio::test]
async fn process_remove_stale_spares_reused_pids_and_drops_bad_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");

    use std::os::unix::process::CommandExt as _;

    // An unrelated group leader whose pid a stale file happens to name:
    // same pid, another start time.
    let mut unrelated = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .expect("sleep starts");
    let pid = unrelated.id();
    std::fs::write(
        state.join("reused.pid"),
        format!("{pid} {}\n", starttime(pid) + 1),
    )
    .expect("write");
    // A process that is gone.
    let mut ended = std::process::Command::new("true")
        .spawn()
        .expect("true starts");
    let ended_pid = ended.id();
    let ended_start = starttime(ended_pid);
    ended.wait().expect("true ends");
    std::fs::write(
        state.join("gone.pid"),
        format!("{ended_pid} {ended_start}\n"),
    )
    .expect("write");
    // Garbage, and a half-written record.
    std::fs::write(state.join("garbled.pid"), "not a pid\n").expect("write");
    std::fs::write(state.join("torn.pid.tmp"), "12").expect("write");
    // Not ours: left alone.
    std::fs::write(state.join("notes.txt"), "keep me").expect("write");

    let runtime = ProcessRuntime::with_state_dir(&state);
    assert_eq!(runtime.remove_stale().await.expect("bad files go"), 0);
    assert!(alive(pid), "an unrelated process {pid} was killed");
    assert_eq!(files_in(&state), ["notes.txt"]);
    assert_eq!(runtime.remove_stale().await.expect("idempotent"), 0);
    unrelated.kill().expect("kill sleep");
    unrelated.wait().expect("reap sleep");

    // An instance of another live process sharing the directory (a peer
    // dispatcher; here the test's parent stands in for it): left alone,
    // and killed once its owner is gone.
    let mut peers = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .expect("sleep starts");
    let peer_pid = peers.id();
    let parent = std::os::unix::process::parent_id();
    let record = |owner_start: u64| {
        format!(
            "{peer_pid} {} {parent} {owner_start}\n",
            starttime(peer_pid)
        )
    };
    std::fs::write(state.join("peer.pid"), record(starttime(parent))).expect("write");
    assert_eq!(runtime.remove_stale().await.expect("a peer's"), 0);
    assert!(
        alive(peer_pid),
        "a live peer's instance {peer_pid} was killed"
    );
    assert_eq!(files_in(&state), ["notes.txt", "peer.pid"]);
    std::fs::write(state.join("peer.pid"), record(starttime(parent) + 1)).expect("write");
    assert_eq!(runtime.remove_stale().await.expect("a dead owner's"), 1);
    peers.wait().expect("reap sleep");
    assert_eq!(files_in(&state), ["notes.txt"]);

    // No state directory (yet), or none at all: nothing to do.
    let missing = ProcessRuntime::with_state_dir(dir.path().join("never-created"));
    assert_eq!(missing.remove_stale().await.expect("no directory"), 0);
    assert_eq!(ProcessRuntime::new().remove_stale().await.expect("none"), 0);
}

#[tokio::test]
async fn process_start_fails_when_it_cannot_be_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").expect("write");
    let state = blocker.join("state");
    let err = ProcessRuntime::with_state_dir(&state)
        .start(spec(
            &unique_id("unrecorded"),
            echo_command(dir.path()),
            dir.path(),
            true,
        ))
        .await
        .expect_err("no state directory can be made under a file");
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("cannot record"), "{message}");
    assert!(message.contains(&state.display().to_string()), "{message}");
}
