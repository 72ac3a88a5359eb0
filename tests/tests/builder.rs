//! End-to-end: a git push builds an image and rolls out a new revision
//! (issue 5), with a real bare git repository, the real Docker engine, the
//! real emulator and the real binary.
//!
//! The repository holds the static echo binary and a `FROM scratch`
//! Dockerfile whose `ENV ECHO_VERSION` the echo puts in its answers, so the
//! next question tells which build serves. Webhooks are posted exactly as
//! GitHub would (same payload shape, `X-Hub-Signature-256`,
//! `X-GitHub-Delivery`), and a local HTTP server stands in for GitHub's API
//! and records the commit statuses it receives.
//!
//! Prerequisite, built by the Justfile before the tests: the static echo at
//! `target/x86_64-unknown-linux-gnu/release/echo`.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rouse_tests::asker::Asker;
use rouse_tests::echo_image::{STATIC_BUILD, static_echo_binary};
use rouse_tests::pushes::{self, Images, Repo};
use rouse_tests::{BUILD_ENDED, Emulator, Server};
use serde_json::{Value, json};

const NETWORK: &str = "octue.services";
const ANSWER: Duration = Duration::from_secs(90);
/// A build of this tiny context takes a few seconds; this bounds a broken one.
const SECRET: &str = "the-webhook-secret-for-tests";
const ZERO: &str = pushes::ZERO_COMMIT;

fn dockerfile(version: &str) -> String {
    pushes::echo_dockerfile(version)
}

fn push_payload(repo: &Repo, branch: &str, before: &str, after: &str) -> Vec<u8> {
    repo.push_payload(branch, before, after)
}

fn post(base: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
    pushes::post(base, path, headers, body).expect("a webhook request")
}

fn get(url: &str) -> (u16, Value) {
    pushes::get(url).expect("a GET request")
}

fn signed(body: &[u8], event: &str, delivery: &str) -> Vec<(&'static str, String)> {
    pushes::github_headers(SECRET, body, event, delivery)
}

/// Records what GitHub's commit status API receives.
struct GithubStandIn {
    url: String,
    statuses: Arc<Mutex<Vec<(String, Value)>>>,
}

impl GithubStandIn {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let seen = statuses.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let seen = seen.clone();
                std::thread::spawn(move || serve_github(stream, &seen));
            }
        });
        Self { url, statuses }
    }

    /// The states set on `commit`, in order, with their context.
    fn states(&self, commit: &str) -> Vec<(String, String)> {
        self.statuses
            .lock()
            .expect("lock")
            .iter()
            .filter(|(path, _)| path.ends_with(commit))
            .map(|(_, b)| {
                (
                    b["state"].as_str().unwrap_or_default().to_owned(),
                    b["context"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

fn serve_github(stream: TcpStream, seen: &Mutex<Vec<(String, Value)>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let Some((path, body)) = pushes::read_request(&mut reader) else {
            return;
        };
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        seen.lock().expect("lock").push((path, body));
        let answer = "{}";
        let response = format!(
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Pushes `branch` and posts its webhook; returns the answer.
fn push_and_notify(
    server: &Server,
    repo: &Repo,
    branch: &str,
    before: &str,
    after: &str,
    delivery: &str,
) -> (u16, Value) {
    repo.push(branch).expect("git push");
    let body = push_payload(repo, branch, before, after);
    let begun = Instant::now();
    let answer = post(
        server.webhooks(),
        "/webhooks/github",
        &signed(&body, "push", delivery),
        &body,
    );
    println!(
        "webhook answered {} in {:.0} ms",
        answer.0,
        begun.elapsed().as_secs_f64() * 1000.0
    );
    answer
}

async fn version(asker: &mut Asker, topic: &str, server: &Server) -> String {
    version_of(asker, topic, "p/echo", server).await
}

async fn version_of(asker: &mut Asker, topic: &str, recipient: &str, server: &Server) -> String {
    let q = asker.ask(topic, recipient, json!({"n": 1})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}\n{}", a.data, server.log());
    a.data["output_values"]["version"]
        .as_str()
        .unwrap_or("(none)")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_builds_rolls_out_and_reports_back() {
    let echo = static_echo_binary()
        .unwrap_or_else(|| panic!("the static echo is not built: run `{STATIC_BUILD}` first"));
    let _images = Images("rouse/p-echo");
    let github = GithubStandIn::start();
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &["--github-api-url", &github.url]);
    server.allow_anonymous_askers("p");
    let service = server
        .rouse(&[
            "services",
            "create",
            "echo",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    let topic = service["topic"].as_str().expect("topic").to_owned();

    let repo = Repo::new(&echo).expect("a git repository");
    let secret_file = data.path().join("webhook-secret");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    let token_file = data.path().join("github-token");
    std::fs::write(&token_file, "ghp_test_token").expect("write token");
    let trigger = server
        .rouse(&[
            "triggers",
            "create",
            "echo",
            "--project",
            "p",
            "--repo",
            &repo.url(),
            "--branch-pattern",
            "^main$",
            "--webhook-secret-file",
            secret_file.to_str().expect("utf-8"),
            "--github-token-file",
            token_file.to_str().expect("utf-8"),
            "--format",
            "json",
        ])
        .json();
    let described = server
        .rouse(&[
            "triggers",
            "describe",
            trigger["id"].as_str().expect("id"),
            "--format",
            "json",
        ])
        .json();
    assert_eq!(
        described["webhook_url"],
        format!("{}/webhooks/github", server.webhooks())
    );
    assert_eq!(described["reports_status"], true);
    assert!(
        !described.to_string().contains(SECRET),
        "the secret is never shown"
    );

    let mut asker = Asker::new(emulator.host(), NETWORK).await;

    // 1. A push to main builds v1, which serves.
    let v1 = repo.commit(&dockerfile("v1"), "v1").expect("git commit");
    let (status, answer) = push_and_notify(&server, &repo, "main", ZERO, &v1, "d-1");
    assert_eq!(status, 202, "{answer}");
    let b1 = answer["build_id"].as_str().expect("a build id").to_owned();
    let done = server.wait_build(&b1, BUILD_ENDED, &[]);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", server.log());
    // The builder's metrics time each step of it.
    let metrics = reqwest::get(format!("{}/metrics", server.webhooks()))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("metrics text");
    for step in ["queued", "fetching", "building", "rolling-out"] {
        assert!(
            metrics.contains(&format!(
                "rouse_build_step_seconds_count{{step=\"{step}\"}}"
            )),
            "{step}: {metrics}"
        );
    }
    assert!(
        metrics.contains("rouse_builds_total{status=\"succeeded\"} 1"),
        "{metrics}"
    );
    rouse_tests::promtool_accepts(&metrics);
    assert_eq!(done["commit"], v1.as_str());
    let rev1 = done["revision"].as_str().expect("a revision").to_owned();
    assert_eq!(rev1, format!("echo-00001-{}", &v1[..7]));
    assert_eq!(server.serving("echo", "p"), rev1);
    assert_eq!(version(&mut asker, &topic, &server).await, "v1");
    let detail = server
        .rouse(&[
            "revisions",
            "describe",
            &rev1,
            "--service",
            "echo",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(detail["commit"], v1.as_str(), "{detail}");
    assert_eq!(detail["branch"], "main");
    assert_eq!(detail["build"], b1.as_str());
    assert_eq!(detail["state"], "ready");
    let logs = server.rouse(&["builds", "logs", &b1]).ok().to_owned();
    assert!(logs.contains("serves"), "{logs}");
    // Followed through a pipe: the log on stdout, the status as plain lines
    // on stderr (no spinner, no terminal escapes).
    let followed = server.rouse(&["builds", "logs", &b1, "--follow"]);
    assert_eq!(followed.ok(), logs);
    assert!(
        followed.stderr.contains(&format!("build {b1} succeeded"))
            && !followed.stderr.contains('\x1b'),
        "{}",
        followed.stderr
    );

    // 2. The next push to main builds v2; the next question gets the new code.
    let v2 = repo.commit(&dockerfile("v2"), "v2").expect("git commit");
    let body2 = push_payload(&repo, "main", &v1, &v2);
    let (status, answer) = push_and_notify(&server, &repo, "main", &v1, &v2, "d-2");
    assert_eq!(status, 202, "{answer}");
    let b2 = answer["build_id"].as_str().expect("a build id").to_owned();
    let done = server.wait_build(&b2, BUILD_ENDED, &[]);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", server.log());
    let rev2 = done["revision"].as_str().expect("a revision").to_owned();
    assert_eq!(version(&mut asker, &topic, &server).await, "v2");

    // 3. A replayed delivery builds nothing.
    let (status, answer) = post(
        server.webhooks(),
        "/webhooks/github",
        &signed(&body2, "push", "d-2"),
        &body2,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], true, "{answer}");

    // 4. A push to feature/x builds nothing.
    repo.git(&["checkout", "-q", "-b", "feature/x"])
        .expect("git");
    let vx = repo
        .commit(&dockerfile("vx"), "feature")
        .expect("git commit");
    let (status, answer) = push_and_notify(&server, &repo, "feature/x", &v2, &vx, "d-x");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["builds"], json!([]), "{answer}");
    assert!(
        answer["skipped"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("feature/x"),
        "{answer}"
    );
    repo.git(&["checkout", "-q", "main"]).expect("git");
    let listed = server
        .rouse(&["builds", "list", "--project", "p", "--format", "json"])
        .json();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(2),
        "one build per delivery: {listed}"
    );

    // 5. A Dockerfile that fails leaves v2 serving; the build names the step.
    let bad = repo
        .commit(
            "FROM scratch\nCOPY no-such-file /x\nENTRYPOINT [\"/x\"]\n",
            "broken",
        )
        .expect("git commit");
    let (status, answer) = push_and_notify(&server, &repo, "main", &v2, &bad, "d-3");
    assert_eq!(status, 202, "{answer}");
    let b3 = answer["build_id"].as_str().expect("a build id").to_owned();
    let done = server.wait_build(&b3, BUILD_ENDED, &[]);
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["step"], "building", "{done}");
    let failure = done["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("COPY no-such-file"), "{done}");
    assert!(!done["last_lines"].as_array().expect("lines").is_empty());
    assert_eq!(server.serving("echo", "p"), rev2);
    assert_eq!(version(&mut asker, &topic, &server).await, "v2");

    // 6. A container that exits at once is never promoted.
    let exits = repo.commit(
        "FROM scratch\nCOPY echo /echo\nENTRYPOINT [\"/echo\", \"--input-values\", \"not json\"]\n",
        "exits at once",
    ).expect("git commit");
    let (status, answer) = push_and_notify(&server, &repo, "main", &bad, &exits, "d-4");
    assert_eq!(status, 202, "{answer}");
    let b4 = answer["build_id"].as_str().expect("a build id").to_owned();
    let done = server.wait_build(&b4, BUILD_ENDED, &[]);
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["step"], "rolling-out", "{done}");
    let rev4 = done["revision"].as_str().expect("a revision").to_owned();
    let detail = server
        .rouse(&[
            "revisions",
            "describe",
            &rev4,
            "--service",
            "echo",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(detail["state"], "failed", "{detail}");
    assert_eq!(detail["serving"], false, "{detail}");
    assert_eq!(server.serving("echo", "p"), rev2);
    assert_eq!(version(&mut asker, &topic, &server).await, "v2");

    // 7. The commit statuses GitHub received: pending, then the outcome,
    // linking to the build.
    let context = "rouse/p-echo".to_owned();
    let target = github
        .statuses
        .lock()
        .expect("lock")
        .iter()
        .find_map(|(path, b)| {
            (path.ends_with(&v1) && b["state"] == "success")
                .then(|| b["target_url"].as_str().unwrap_or_default().to_owned())
        })
        .expect("a success status for v1");
    assert_eq!(target, format!("{}/builds/{b1}", server.webhooks()));
    let (status, linked) = get(&target);
    assert_eq!(status, 200, "{linked}");
    assert_eq!(linked["status"], "succeeded", "{linked}");
    assert_eq!(linked["revision"], rev1.as_str(), "{linked}");
    assert_eq!(
        github.states(&v1),
        [
            ("pending".to_owned(), context.clone()),
            ("success".to_owned(), context.clone())
        ]
    );
    assert_eq!(
        github.states(&bad),
        [
            ("pending".to_owned(), context.clone()),
            ("failure".to_owned(), context.clone())
        ]
    );
    assert!(github.states(&vx).is_empty());

    // 8. Refusals: a bad signature, malformed JSON, an unknown repository,
    // an oversized body.
    let body = push_payload(&repo, "main", &v2, &v2);
    let mut headers = signed(&body, "push", "d-5");
    headers[0].1 = rouse_builder::signature::sign(b"another-secret-entirely", &body);
    let (status, answer) = post(server.webhooks(), "/webhooks/github", &headers, &body);
    assert_eq!(status, 401, "{answer}");
    let garbage = b"{not json";
    let (status, answer) = post(
        server.webhooks(),
        "/webhooks/github",
        &signed(garbage, "push", "d-6"),
        garbage,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid JSON"),
        "{answer}"
    );
    let other = String::from_utf8(body.clone())
        .expect("utf-8")
        .replace(&repo.url(), "/nowhere/else.git")
        .replace("acme/echo", "acme/other");
    let (status, answer) = post(
        server.webhooks(),
        "/webhooks/github",
        &signed(other.as_bytes(), "push", "d-7"),
        other.as_bytes(),
    );
    assert_eq!(status, 404, "{answer}");
    let huge = vec![b' '; 26 * 1024 * 1024];
    let (status, _) = post(
        server.webhooks(),
        "/webhooks/github",
        &signed(&huge, "push", "d-8"),
        &huge,
    );
    assert_eq!(status, 413);

    // 9. Rollback to v1.
    server
        .rouse(&[
            "services",
            "rollback",
            "echo",
            "--project",
            "p",
            "--to-revision",
            &rev1,
        ])
        .ok();
    assert_eq!(server.serving("echo", "p"), rev1);
    assert_eq!(version(&mut asker, &topic, &server).await, "v1");
    let refused = server.rouse(&[
        "services",
        "rollback",
        "echo",
        "--project",
        "p",
        "--to-revision",
        &rev4,
    ]);
    assert!(
        refused.stderr.contains(&rev4) && refused.stderr.contains("failed"),
        "{}",
        refused.stderr
    );

    // 10. Blue/green: v2 under the tag `green` answers questions addressed
    // to `p/echo:green` while v1 keeps serving; promoting the tag switches.
    server
        .rouse(&[
            "services",
            "deploy",
            "echo",
            "--project",
            "p",
            "--revision",
            &rev2,
            "--tag",
            "green",
        ])
        .ok();
    assert_eq!(
        version_of(&mut asker, &topic, "p/echo:green", &server).await,
        "v2"
    );
    assert_eq!(version(&mut asker, &topic, &server).await, "v1");
    // A tag that names no revision is refused, not run by the serving one.
    let q = asker.ask(&topic, "p/echo:blue", json!({"n": 1})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "exception", "{:?}", a.data);
    let message = a.data["exception_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no revision tagged `blue`") && message.contains("green"),
        "{message}"
    );
    server
        .rouse(&[
            "services",
            "promote",
            "echo",
            "--project",
            "p",
            "--tag",
            "green",
        ])
        .ok();
    assert_eq!(server.serving("echo", "p"), rev2);
    assert_eq!(version(&mut asker, &topic, &server).await, "v2");

    // 11. A 90/10 split over 200 questions.
    server
        .rouse(&[
            "services",
            "set-traffic",
            "echo",
            "--project",
            "p",
            "--traffic",
            &format!("{rev1}=90,{rev2}=10"),
        ])
        .ok();
    let mut questions = Vec::new();
    for i in 0..200 {
        questions.push(asker.ask(&topic, "p/echo", json!({"i": i})).await);
    }
    let answers = asker.answers(&questions, Duration::from_secs(180)).await;
    let mut counts = std::collections::BTreeMap::new();
    for a in &answers {
        assert_eq!(a.kind, "result", "{:?}", a.data);
        let v = a.data["output_values"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *counts.entry(v).or_insert(0) += 1;
    }
    println!("90/10 split over 200 questions: {counts:?}");
    let to_v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<i32>(), 200, "{counts:?}");
    // Binomial(200, 0.1): mean 20, standard deviation 4.2; ±3.5 σ.
    assert!((5..=35).contains(&to_v2), "{counts:?}");

    // 12. A secret reaches new instances as an environment variable (it
    // wins over the image's ENV), and is never shown.
    server
        .rouse(&[
            "secrets",
            "set",
            "echo",
            "--project",
            "p",
            "ECHO_VERSION=from-a-secret",
        ])
        .ok();
    let names = server
        .rouse(&["secrets", "list", "echo", "--project", "p"])
        .ok()
        .to_owned();
    assert_eq!(names.trim(), "ECHO_VERSION");
    server
        .rouse(&[
            "services",
            "rollback",
            "echo",
            "--project",
            "p",
            "--to-revision",
            &rev2,
        ])
        .ok();
    assert_eq!(version(&mut asker, &topic, &server).await, "from-a-secret");
    assert!(
        !server.log().contains("from-a-secret"),
        "a secret was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_pushes_its_image_to_the_configured_registry() {
    let echo = static_echo_binary()
        .unwrap_or_else(|| panic!("the static echo is not built: run `{STATIC_BUILD}` first"));
    let _images = Images("rouse/reg-echo");
    let registry =
        rouse_tests::image_registry::RegistryStandIn::start(Some(("robot", "s3cret"))).await;
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let credentials = data.path().join("registry.json");
    std::fs::write(
        &credentials,
        r#"{"username": "robot", "password": "s3cret"}"#,
    )
    .expect("write credentials");
    let prefix = format!("{}/team", registry.host());
    let server = Server::start(
        &emulator,
        data.path(),
        &[
            "--registry",
            &prefix,
            "--registry-credentials",
            credentials.to_str().expect("utf-8"),
        ],
    );
    server.allow_anonymous_askers("reg");
    let service = server
        .rouse(&[
            "services",
            "create",
            "echo",
            "--project",
            "reg",
            "--format",
            "json",
        ])
        .json();
    let topic = service["topic"].as_str().expect("topic").to_owned();
    let repo = Repo::new(&echo).expect("a git repository");
    server.rouse(&[
        "triggers",
        "create",
        "echo",
        "--project",
        "reg",
        "--repo",
        &repo.url(),
        "--branch-pattern",
        "^main$",
        "--webhook-secret",
        SECRET,
    ]);
    let mut asker = Asker::new(emulator.host(), NETWORK).await;

    // 1. The build is pushed under the commit and `latest`, with the
    // credentials; the revision runs the pushed reference.
    let v1 = repo
        .commit(&dockerfile("pushed"), "v1")
        .expect("git commit");
    let (status, answer) = push_and_notify(&server, &repo, "main", ZERO, &v1, "r-1");
    assert_eq!(status, 202, "{answer}");
    let b1 = answer["build_id"].as_str().expect("a build id").to_owned();
    let done = server.wait_build(&b1, BUILD_ENDED, &[]);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", server.log());
    let reference = format!("{prefix}/reg-echo:{}", &v1[..12]);
    assert_eq!(done["image"], reference.as_str(), "{done}");
    assert_eq!(
        registry.tags(),
        [
            format!("team/reg-echo:{}", &v1[..12]),
            "team/reg-echo:latest".to_owned()
        ],
        "{}",
        server.rouse(&["builds", "logs", &b1]).stdout
    );
    assert_eq!(
        registry.manifest("team/reg-echo", &v1[..12]),
        registry.manifest("team/reg-echo", "latest"),
        "both tags name the same image"
    );
    assert!(registry.blob_count() >= 2, "a layer and a config");
    let logs = server.rouse(&["builds", "logs", &b1]).ok().to_owned();
    assert!(logs.contains(&format!("pushing {reference}")), "{logs}");
    assert!(
        !logs.contains("s3cret"),
        "the password is never logged: {logs}"
    );
    let rev1 = done["revision"].as_str().expect("a revision").to_owned();
    let detail = server
        .rouse(&[
            "revisions",
            "describe",
            &rev1,
            "--service",
            "echo",
            "--project",
            "reg",
            "--format",
            "json",
        ])
        .json();
    assert!(
        detail["source"]
            .as_str()
            .unwrap_or_default()
            .contains(&reference),
        "{detail}"
    );
    let q = asker.ask(&topic, "reg/echo", json!({"n": 1})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}\n{}", a.data, server.log());
    assert_eq!(a.data["output_values"]["version"], "pushed");

    // 2. A registry that cannot be reached fails the build at `pushing`,
    // naming the reference; no revision is made and the old one serves.
    drop(registry);
    let v2 = repo
        .commit(&dockerfile("unpushed"), "v2")
        .expect("git commit");
    let (status, answer) = push_and_notify(&server, &repo, "main", &v1, &v2, "r-2");
    assert_eq!(status, 202, "{answer}");
    let b2 = answer["build_id"].as_str().expect("a build id").to_owned();
    let done = server.wait_build(&b2, BUILD_ENDED, &[]);
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["step"], "pushing", "{done}");
    let failure = done["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains(&format!("{prefix}/reg-echo:{}", &v2[..12])),
        "{done}"
    );
    assert!(done["revision"].is_null(), "{done}");
    let q = asker.ask(&topic, "reg/echo", json!({"n": 2})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.data["output_values"]["version"], "pushed", "{:?}", a.data);
}
