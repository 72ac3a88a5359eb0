//! End-to-end: the dispatcher wakes containers of the local Docker engine
//! (which must be reachable), with the real binary, the real emulator and
//! the echo example built into an image `FROM scratch`.
//!
//! Prerequisite, built by the Justfile before the tests: the static echo at
//! `target/x86_64-unknown-linux-gnu/release/echo` (see [`STATIC_BUILD`]).
//!
//! One test on purpose: every `rouse server` removes, at its start, every
//! Rouse container of the engine without an owner label (what an earlier
//! platform left behind), so two platforms running side by side remove each
//! other's instances. That includes the servers of the other end-to-end
//! tests, until the server labels its containers with an owner of its own.

use std::process::Command;
use std::time::{Duration, Instant};

use rouse_tests::asker::Asker;
use rouse_tests::echo_image::EchoImage;
use rouse_tests::{Emulator, Server, free_port};
use serde_json::{Value, json};

const NETWORK: &str = "octue.services";
const ANSWER: Duration = Duration::from_secs(60);
/// How long the `docker run` floor may take to answer: it takes about a
/// tenth of a second; this only bounds a broken run.
const FLOOR_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the docker CLI; returns stdout, panicking with stderr on failure.
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the docker CLI ({e}); these tests need it"));
    assert!(
        output.status.success(),
        "docker {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Containers made from `image` and labelled as Rouse's, running or not.
fn rouse_containers(image: &EchoImage) -> Vec<String> {
    let ancestor = format!("ancestor={}", image.tag);
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &ancestor,
        "--filter",
        "label=managed-by=rouse",
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// `docker run -d` of the image to its first HTTP answer, the floor for the
/// dispatcher's cold start (same init and network as Rouse's containers).
fn docker_run_to_ready(image: &EchoImage) -> Duration {
    let port = free_port();
    let name = format!("rouse-e2e-floor-{}", std::process::id());
    let begun = Instant::now();
    docker(&[
        "run",
        "-d",
        "--init",
        "--network",
        "host",
        "--name",
        &name,
        "-e",
        &format!("PORT={port}"),
        &image.tag,
    ]);
    while !healthy(port) {
        assert!(
            begun.elapsed() < FLOOR_TIMEOUT,
            "`docker run` of {} did not answer on port {port}",
            image.tag
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = begun.elapsed();
    docker(&["rm", "-f", &name]);
    took
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut head = [0u8; 12];
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
        .and_then(|()| stream.read_exact(&mut head))
        .is_ok_and(|()| &head == b"HTTP/1.1 200")
}

/// Seconds since midnight of an RFC 3339 UTC timestamp (`…T01:24:56.037603Z`).
fn seconds_of_day(timestamp: &str) -> f64 {
    let time = timestamp
        .split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or_else(|| panic!("`{timestamp}` is not an RFC 3339 timestamp"));
    time.split(':')
        .map(|part| part.parse::<f64>().expect("a number"))
        .fold(0.0, |total, part| total * 60.0 + part)
}

fn create_service(server: &Server, name: &str, image: &str) -> String {
    server.image_service("p", name, image, &[])
}

fn message(answer: &Value) -> &str {
    answer["exception_message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn containers_answer_questions_through_the_platform() {
    // Dropped last: whatever happens, the containers and the image go.
    let image = EchoImage::build(&format!("rouse-test/echo:e2e-{}", std::process::id()));
    let floor = docker_run_to_ready(&image);
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    let topic = create_service(&server, "echo", &image.tag);
    let mut asker = Asker::new(emulator.host(), NETWORK).await;

    // Cold: a container is woken; it answers with the instance id the
    // dispatcher gave it.
    let q1 = asker.ask(&topic, "p/echo", json!({"n": 1})).await;
    let a1 = asker.answer(&q1, ANSWER).await;
    assert_eq!(a1.kind, "result", "{:?}\n{}", a1.data, server.log());
    assert_eq!(a1.data["output_values"]["echo"], json!({"n": 1}));
    let e1 = server.execution(&q1);
    assert_eq!(e1["status"], "succeeded", "{e1}");
    assert_eq!(e1["cold_start"], true, "{e1}");
    let instance = e1["instance"].as_str().expect("an instance").to_owned();
    assert_eq!(a1.data["output_values"]["instance"], instance.as_str());
    let wake = (seconds_of_day(e1["ready_time"].as_str().expect("ready_time"))
        - seconds_of_day(e1["receive_time"].as_str().expect("receive_time")))
    .rem_euclid(86_400.0);
    println!(
        "docker cold start: received to ready {:.0} ms; `docker run` to ready {:.0} ms",
        wake * 1000.0,
        floor.as_secs_f64() * 1000.0
    );

    // The container shares the host's network: the emulator's address in
    // its environment is the emulator (the dispatcher just reached the
    // container's own server on the host's loopback, with nothing
    // published), and it carries Rouse's labels.
    let container = format!("rouse-{instance}");
    let inspected: Value = serde_json::from_str(&docker(&["inspect", &container]))
        .unwrap_or_else(|e| panic!("docker inspect of {container} is not JSON: {e}"));
    let inspected = &inspected[0];
    assert_eq!(inspected["HostConfig"]["NetworkMode"], "host");
    let env: Vec<&str> = inspected["Config"]["Env"]
        .as_array()
        .expect("an environment")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let emulator_host = format!("PUBSUB_EMULATOR_HOST={}", emulator.host());
    assert!(env.contains(&emulator_host.as_str()), "{env:?}");
    assert!(
        env.contains(&format!("ROUSE_INSTANCE={instance}").as_str()),
        "{env:?}"
    );
    assert_eq!(inspected["Config"]["Labels"]["managed-by"], "rouse");

    // Warm: the same container answers.
    let q2 = asker.ask(&topic, "p/echo", json!(2)).await;
    let a2 = asker.answer(&q2, ANSWER).await;
    assert_eq!(a2.kind, "result", "{:?}", a2.data);
    assert_eq!(
        a2.data["output_values"],
        json!({"echo": 2, "instance": instance})
    );
    assert_eq!(server.execution(&q2)["cold_start"], false);

    // A crash while answering.
    let q3 = asker.ask(&topic, "p/echo", json!({"crash": true})).await;
    let a3 = asker.answer(&q3, ANSWER).await;
    assert_eq!(a3.kind, "exception");
    assert_eq!(a3.data["exception_type"], "ServiceCrashed", "{:?}", a3.data);

    // An image the engine does not have: never pulled, named in the error.
    let missing = format!("rouse-test/no-such-image:e2e-{}", std::process::id());
    let ghost = create_service(&server, "ghost", &missing);
    let q4 = asker.ask(&ghost, "p/ghost", json!(1)).await;
    let a4 = asker.answer(&q4, ANSWER).await;
    assert_eq!(
        a4.data["exception_type"], "ServiceWakeFailed",
        "{:?}",
        a4.data
    );
    assert!(message(&a4.data).contains(&missing), "{:?}", a4.data);

    // Frozen at idle (the container's cgroup freezer) and thawed by the next question: the
    // same container answers, with no cold start; a stop finds it frozen
    // and still removes it.
    server
        .rouse(&[
            "services",
            "update",
            "echo",
            "--project",
            "p",
            "--freeze",
            "on",
            "--idle-timeout",
            "1s",
        ])
        .ok();
    let q5 = asker.ask(&topic, "p/echo", json!(5)).await;
    let a5 = asker.answer(&q5, ANSWER).await;
    assert_eq!(a5.kind, "result", "{:?}\n{}", a5.data, server.log());
    let thawing = a5.data["output_values"]["instance"]
        .as_str()
        .expect("an instance")
        .to_owned();
    let frozen = format!("rouse-{thawing}");
    // Frozen through its cgroup (Docker is not told, so its `Paused` stays
    // false): every task of the container's cgroup frozen.
    let paused = |container: &str| {
        let instance = container.trim_start_matches("rouse-");
        rouse_tests::container_pid(instance).is_ok_and(rouse_tests::is_frozen)
    };
    wait_paused(&frozen, &paused, &server);
    let q6 = asker.ask(&topic, "p/echo", json!(6)).await;
    let a6 = asker.answer(&q6, ANSWER).await;
    assert_eq!(
        a6.data["output_values"],
        json!({"echo": 6, "instance": thawing}),
        "{}",
        server.log()
    );
    assert_eq!(server.execution(&q6)["cold_start"], false);
    wait_paused(&frozen, &paused, &server);

    // A graceful stop leaves no container behind.
    let log = server.log();
    let status = server.stop();
    assert!(status.success(), "rouse server: {status}\n{log}");
    let left = rouse_containers(&image);
    assert!(left.is_empty(), "containers left after the stop: {left:?}");
    let filter = format!("label=rouse.instance={instance}");
    let left = docker(&["ps", "-aq", "--filter", &filter]);
    assert!(left.trim().is_empty(), "{container} left after the stop");
}

/// Waits (at most 30 s) until `container` is paused.
fn wait_paused(container: &str, paused: &dyn Fn(&str) -> bool, server: &Server) {
    let begun = Instant::now();
    while !paused(container) {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "{container} was not frozen after its idle timeout:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
