//! End-to-end: the roles run apart. `rouse server --roles api`, `--roles
//! builder` and `--roles dispatcher` as three processes on one data dir,
//! sharing nothing but the store: a signed push reaches the builder, the
//! build's candidate revision is tried by the dispatcher (store-driven
//! rollout), the new code answers, and a secret set through the api reaches
//! the dispatcher's instances. Killing the builder mid-build (during its
//! rollout) leaves the build failed at the builder's next start and the
//! serving revision untouched; the restarted builder builds the next push.
//!
//! Prerequisite, built by the Justfile before the tests: the static echo at
//! `target/x86_64-unknown-linux-gnu/release/echo`.

use std::path::Path;
use std::time::{Duration, Instant};

use rouse_tests::asker::Asker;
use rouse_tests::echo_image::{STATIC_BUILD, static_echo_binary};
use rouse_tests::pushes::{self, Images, Repo};
use rouse_tests::{Emulator, Server};
use serde_json::json;

const NETWORK: &str = "octue.services";
const ANSWER: Duration = Duration::from_secs(90);
const SECRET: &str = "the-webhook-secret-for-the-roles-test";

fn role(emulator: &Emulator, data: &Path, roles: &str) -> Server {
    Server::start(emulator, data, &["--roles", roles])
}

fn push(builder: &Server, repo: &Repo, before: &str, after: &str, delivery: &str) -> String {
    repo.push("main").expect("git push");
    let body = repo.push_payload("main", before, after);
    let (status, answer) = pushes::post(
        builder.webhooks(),
        "/webhooks/github",
        &pushes::github_headers(SECRET, &body, "push", delivery),
        &body,
    )
    .expect("a webhook request");
    assert_eq!(status, 202, "{answer}\n{}", builder.log());
    answer["build_id"].as_str().expect("a build id").to_owned()
}

/// Asks until the answer comes from `expected` (a dispatcher in another
/// process sees a new serving revision at its next re-read of the store,
/// within its 5 s resync interval; a warm instance keeps its environment
/// until it has been idle for its idle timeout, 1 s here, so the asks are
/// further apart than that); returns the last version seen.
async fn until_version(asker: &mut Asker, topic: &str, expected: &str, logs: &[&Server]) -> String {
    let begun = Instant::now();
    loop {
        let seen = version(asker, topic, logs).await;
        if seen == expected || begun.elapsed() > Duration::from_secs(45) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

async fn version(asker: &mut Asker, topic: &str, logs: &[&Server]) -> String {
    let q = asker.ask(topic, "r/echo", json!({"n": 1})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(
        a.kind,
        "result",
        "{:?}\n{}",
        a.data,
        logs.iter()
            .map(|s| s.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    a.data["output_values"]["version"]
        .as_str()
        .unwrap_or("(none)")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_builder_and_dispatcher_run_as_three_processes() {
    let echo = static_echo_binary()
        .unwrap_or_else(|| panic!("the static echo is not built: run `{STATIC_BUILD}` first"));
    let _images = Images("rouse/r-echo");
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    // The api first: it bootstraps the owner the others' callers use.
    let api = role(&emulator, data.path(), "api");
    let dispatcher = role(&emulator, data.path(), "dispatcher");
    let mut builder = role(&emulator, data.path(), "builder");
    api.allow_anonymous_askers("r");
    let service = api
        .rouse(&[
            "services",
            "create",
            "echo",
            "--project",
            "r",
            "--format",
            "json",
        ])
        .json();
    let topic = service["topic"].as_str().expect("topic").to_owned();
    let repo = Repo::new(&echo).expect("a git repository");
    api.rouse(&[
        "triggers",
        "create",
        "echo",
        "--project",
        "r",
        "--repo",
        &repo.url(),
        "--branch-pattern",
        "^main$",
        "--webhook-secret",
        SECRET,
    ])
    .ok();
    let mut asker = Asker::new(emulator.host(), NETWORK).await;

    // 1. A push reaches the builder; the dispatcher tries the candidate;
    //    the new code answers.
    let v1 = repo
        .commit(&pushes::echo_dockerfile("v1"), "v1")
        .expect("git commit");
    let b1 = push(&builder, &repo, pushes::ZERO_COMMIT, &v1, "r-1");
    let done = api.wait_build(&b1, &["succeeded", "failed"], &[&builder, &dispatcher]);
    assert_eq!(
        done["status"],
        "succeeded",
        "{done}\n{}\n---\n{}",
        builder.log(),
        dispatcher.log()
    );
    let rev1 = done["revision"].as_str().expect("a revision").to_owned();
    assert_eq!(api.serving("echo", "r"), rev1);
    assert!(
        dispatcher.log().contains("readiness trial"),
        "the dispatcher ran the trial:\n{}",
        dispatcher.log()
    );
    assert_eq!(
        until_version(&mut asker, &topic, "v1", &[&dispatcher]).await,
        "v1"
    );

    // 2. A secret set through the api reaches the dispatcher's instances
    //    (the dispatcher process loaded the secrets key itself).
    api.rouse(&[
        "secrets",
        "set",
        "echo",
        "--project",
        "r",
        "ECHO_VERSION=from-a-secret",
    ])
    .ok();
    api.rouse(&[
        "services",
        "update",
        "echo",
        "--project",
        "r",
        "--idle-timeout",
        "1s",
    ])
    .ok();
    // Warm instances keep the old environment until they stop idle.
    assert_eq!(
        until_version(&mut asker, &topic, "from-a-secret", &[&dispatcher]).await,
        "from-a-secret",
        "the secret never reached an instance:\n{}",
        dispatcher.log()
    );
    api.rouse(&[
        "secrets",
        "delete",
        "echo",
        "--project",
        "r",
        "ECHO_VERSION",
    ])
    .ok();

    // 3. The builder is killed while the build rolls out (the candidate
    //    takes 20 s to listen); its next start fails the build, and the
    //    serving revision is untouched.
    let slow = format!(
        "{}ENV ECHO_STARTUP_DELAY_MS=20000\n",
        pushes::echo_dockerfile("v2")
    );
    let v2 = repo.commit(&slow, "v2, slow to start").expect("git commit");
    let b2 = push(&builder, &repo, &v1, &v2, "r-2");
    let rolling = api.wait_build(
        &b2,
        &["rolling-out", "succeeded", "failed"],
        &[&builder, &dispatcher],
    );
    assert_eq!(rolling["status"], "rolling-out", "{rolling}");
    // The candidate is recorded on the build a moment after `rolling-out`:
    // the kill is meant for a rollout under way, so it waits for it.
    let begun = Instant::now();
    while api.build(&b2)["revision"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "no candidate recorded: {}",
            api.build(&b2)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    builder.kill9();
    builder = role(&emulator, data.path(), "builder");
    let ended = api.wait_build(&b2, &["failed"], &[&builder]);
    assert!(
        ended["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped while the build ran"),
        "{ended}"
    );
    assert_eq!(
        api.serving("echo", "r"),
        rev1,
        "the serving revision is untouched"
    );
    let candidate = ended["revision"]
        .as_str()
        .expect("its candidate")
        .to_owned();
    let described = api
        .rouse(&[
            "revisions",
            "describe",
            &candidate,
            "--service",
            "echo",
            "--project",
            "r",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(described["state"], "failed", "{described}");

    // 4. The restarted builder builds the next push, which serves.
    let v3 = repo
        .commit(&pushes::echo_dockerfile("v3"), "v3")
        .expect("git commit");
    let b3 = push(&builder, &repo, &v2, &v3, "r-3");
    let done = api.wait_build(&b3, &["succeeded", "failed"], &[&builder, &dispatcher]);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", builder.log());
    assert_eq!(
        until_version(&mut asker, &topic, "v3", &[&dispatcher]).await,
        "v3"
    );
}
