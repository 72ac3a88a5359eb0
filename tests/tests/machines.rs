//! End-to-end: the roles as if on three machines. `rouse server --roles
//! api`, `--roles builder` and `--roles dispatcher`, each with a data dir of
//! its own, share nothing but a PostgreSQL database, Pub/Sub and the secrets
//! key (a file every machine is given, as a secret manager would). A
//! service created through the api is answered by the dispatcher; a secret
//! sealed by the api opens in the dispatcher's instances; a build submitted
//! through the api is taken by the builder on its machine (how long that
//! took is printed: the database's notice wakes it, where its poll would
//! take up to 1 s; `tests/tests/store` asserts the notices themselves).

use std::path::Path;
use std::time::{Duration, Instant};

use rouse_tests::asker::Asker;
use rouse_tests::postgres::Postgres;
use rouse_tests::{Emulator, Server, workspace_bin};
use serde_json::json;

const NETWORK: &str = "octue.services";
const ANSWER: Duration = Duration::from_secs(60);

fn machine(emulator: &Emulator, data: &Path, roles: &str, url: &str, key: &Path) -> Server {
    let key = key.to_str().expect("utf-8 path");
    Server::start(
        emulator,
        data,
        &["--roles", roles, "--store", url, "--secrets-key", key],
    )
}

/// Registers the echo example (the process runtime) as service `m/echo`'s
/// revision.
fn echo_revision(api: &Server) {
    let echo = workspace_bin("echo");
    api.rouse(&[
        "revisions",
        "create",
        "echo",
        "--project",
        "m",
        "--command",
        echo.to_str().expect("utf-8 path"),
        "--workdir",
        "/tmp",
    ])
    .ok();
}

async fn version(asker: &mut Asker, topic: &str, dispatcher: &Server) -> String {
    let q = asker.ask(topic, "m/echo", json!({"n": 1})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}\n{}", a.data, dispatcher.log());
    a.data["output_values"]["version"]
        .as_str()
        .unwrap_or("(none)")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_on_three_machines_share_only_postgres() {
    let emulator = Emulator::start();
    let pg = Postgres::start(false);
    let url = pg.create_database("rouse").await;
    let shared = tempfile::tempdir().expect("tempdir");
    let key = shared.path().join("secrets.key");
    let (a, b, c) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    // The api first: it bootstraps the owner. The askers' grant before
    // the dispatcher starts, which then reads it at once (a later change
    // reaches it at its next look, within 250 ms).
    let api = machine(&emulator, a.path(), "api", &url, &key);
    api.allow_anonymous_askers("m");
    let dispatcher = machine(&emulator, b.path(), "dispatcher", &url, &key);
    let builder = machine(&emulator, c.path(), "builder", &url, &key);
    for server in [&api, &dispatcher, &builder] {
        assert!(
            server.log().contains("store=postgres://rouse@"),
            "{}",
            server.log()
        );
    }
    let service = api
        .rouse(&[
            "services",
            "create",
            "echo",
            "--project",
            "m",
            "--format",
            "json",
        ])
        .json();
    let topic = service["topic"].as_str().expect("topic").to_owned();
    api.rouse(&[
        "services",
        "update",
        "echo",
        "--project",
        "m",
        "--idle-timeout",
        "1s",
    ])
    .ok();
    echo_revision(&api);
    let mut asker = Asker::new(emulator.host(), NETWORK).await;
    assert_eq!(version(&mut asker, &topic, &dispatcher).await, "(none)");

    // A secret sealed on the api's machine opens on the dispatcher's.
    api.rouse(&[
        "secrets",
        "set",
        "echo",
        "--project",
        "m",
        "ECHO_VERSION=sealed-on-a",
    ])
    .ok();
    let begun = Instant::now();
    let mut seen = version(&mut asker, &topic, &dispatcher).await;
    // A warm instance keeps its environment until it stops idle (1 s).
    while seen != "sealed-on-a" && begun.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        seen = version(&mut asker, &topic, &dispatcher).await;
    }
    assert_eq!(seen, "sealed-on-a", "{}", dispatcher.log());

    // A build submitted through the api: the builder, on its own machine,
    // takes it on the database's notice.
    let context = tempfile::tempdir().expect("tempdir");
    std::fs::write(context.path().join("Dockerfile"), "FROM scratch\n").expect("Dockerfile");
    let submitted = Instant::now();
    let build = api
        .rouse(&[
            "builds",
            "submit",
            "echo",
            "--project",
            "m",
            "--source",
            context.path().to_str().expect("utf-8 path"),
            "--format",
            "json",
        ])
        .json();
    let id = build["id"].as_str().expect("build id").to_owned();
    let taken = api.wait_build(
        &id,
        &[
            "fetching",
            "building",
            "pushing",
            "rolling-out",
            "succeeded",
            "failed",
        ],
        &[&builder],
    );
    let waited = submitted.elapsed();
    assert_ne!(taken["status"], "queued", "{taken}");
    assert!(
        builder.log().contains(&id),
        "the builder on its own machine took the build:\n{}",
        builder.log()
    );
    println!("submitted → taken by the builder: {waited:?} (its poll is 1 s)");
    drop(pg);
}

/// The database restarts under a running server (a failover, an upgrade):
/// calls made while it is down fail with a clear error, the server keeps
/// running, and once it is back questions are answered again without a
/// restart of Rouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_is_survived() {
    let emulator = Emulator::start();
    let mut pg = Postgres::start(false);
    let url = pg.create_database("rouse").await;
    let data = tempfile::tempdir().expect("tempdir");
    let key = data.path().join("secrets.key");
    let server = machine(&emulator, data.path(), "all", &url, &key);
    server.allow_anonymous_askers("m");
    let service = server
        .rouse(&[
            "services",
            "create",
            "echo",
            "--project",
            "m",
            "--format",
            "json",
        ])
        .json();
    let topic = service["topic"].as_str().expect("topic").to_owned();
    echo_revision(&server);
    let mut asker = Asker::new(emulator.host(), NETWORK).await;
    version(&mut asker, &topic, &server).await;

    pg.restart();
    // Pooled connections died with the old server: each is found broken on
    // its next use and replaced.
    let begun = Instant::now();
    loop {
        let listed = server.rouse(&["services", "list", "--format", "json"]);
        if listed.code == 0 {
            assert!(listed.stdout.contains("echo"), "{}", listed.stdout);
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "the api did not recover from the database restart: {}\n{}",
            listed.stderr,
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Questions are recorded and answered again; none is lost.
    let mut questions = Vec::new();
    for i in 0..10 {
        questions.push(asker.ask(&topic, "m/echo", json!({"i": i})).await);
    }
    for q in &questions {
        let a = asker.answer(q, ANSWER).await;
        assert_eq!(a.kind, "result", "{q}: {:?}\n{}", a.data, server.log());
    }
    assert!(matches!(server.stop().code(), Some(0)));
}

/// A database that cannot be reached, or a URL that is not one, stops the
/// server at start with a message naming it (without its password) and the
/// fix, within the connect timeout.
#[test]
fn an_unreachable_or_malformed_store_url_is_a_clear_error() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = rouse_tests::free_port();
    let url = format!("postgres://rouse:hunter2@127.0.0.1:{port}/rouse");
    let started = Instant::now();
    let log = Server::try_start("127.0.0.1:1", data.path(), &["--store", &url])
        .err()
        .expect("the server must not start");
    assert!(
        log.contains(&format!("postgres://rouse:***@127.0.0.1:{port}/rouse")),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "the password was logged: {log}");
    assert!(
        log.contains("Connection refused"),
        "the cause is named: {log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let log = Server::try_start(
        "127.0.0.1:1",
        data.path(),
        &["--store", "postgres://rouse@127.0.0.1:notaport/rouse"],
    )
    .err()
    .expect("the server must not start");
    assert!(
        log.contains("postgres://USER:PASSWORD@HOST:PORT/DATABASE"),
        "{log}"
    );
}
