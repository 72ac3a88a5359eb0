//! `just bench`: Rouse's speed and memory figures, each next to a floor
//! measured in the same run on the same machine (the emulator's own latency
//! ticks make absolute numbers meaningless without one).
//!
//! | figure | floor |
//! |---|---|
//! | warm round trip (publish question → result received) | two publish → receive hops through a bare relay, no dispatcher |
//! | cold start, process runtime | spawning the same process to ready + the warm round trip |
//! | cold start, Docker runtime | `docker run` of the same image to ready + the warm round trip |
//! | git push webhook → new revision serving (builder) | `docker build` + `docker run` to ready of the same context |
//! | webhook response time (builder) | target only |
//! | questions per second at saturation | a bare relay publishing the same two events the same way (the result once the acknowledgement was taken), measured in alternating rounds with Rouse because the emulator slows down as ordering keys accumulate |
//! | RSS with 1,000 idle services | RSS with none |
//! | permission check, 10,000 bindings over 1,000 services (IAM engine) | target only |
//! | token verification (Ed25519 JWT) | target only |
//!
//! Prints a table and writes `target/bench/report.json`. Nothing here passes
//! or fails: misses are reported, not hidden.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rouse_proto as pb;
use rouse_pubsub::{Handler, Outgoing, PubSub, SubscriptionSpec};
use rouse_tests::asker::{ASKER, Asker, pubsub_config, question_attributes};
use rouse_tests::echo_image::{EchoImage, STATIC_BUILD, static_echo_binary};
use rouse_tests::pushes::{Repo, ZERO_COMMIT, echo_dockerfile, github_headers, post};
use rouse_tests::{Emulator, Server, free_port, workspace_bin};
use serde_json::{Value, json};

const NETWORK: &str = "octue.services";
const WARM_N: usize = 200;
const COLD_N: usize = 10;
const FLOOR_N: usize = 10;
const THROUGHPUT_N: usize = 1000;
/// Rounds the saturation paths alternate in, one per path so that each
/// takes each place once (see the throughput part).
const THROUGHPUT_ROUNDS: usize = 4;
const IDLE_SERVICES: usize = 1000;
const ANSWER: Duration = Duration::from_secs(120);
/// Timed pushes that build (each a new commit, so each image differs), and
/// as many `docker build` + `docker run` floors, interleaved.
const BUILDER_N: usize = 5;
/// Extra deliveries to a branch no trigger builds: webhook response samples
/// that cost no build.
const SKIPPED_N: usize = 50;
const BUILD_TIMEOUT: Duration = Duration::from_secs(240);
/// How often the serving revision is read while a build runs.
const SERVING_POLL: Duration = Duration::from_millis(20);
const WEBHOOK_SECRET: &str = "the-bench-webhook-secret";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[rank.min(s.len() - 1)]
}

#[derive(Default)]
struct Report {
    rows: Vec<(String, String, String, String, String)>,
    json: BTreeMap<String, Value>,
}

impl Report {
    fn row(&mut self, name: &str, value: String, floor: String, overhead: String, target: String) {
        println!("  {name:<34} {value:>14}   floor {floor:>14}   {overhead:>22}   {target}");
        self.rows
            .push((name.into(), value, floor, overhead, target));
    }
}

/// How a bare relay answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// A `result` only.
    Result,
    /// A `delivery_acknowledgement` and a `result` handed to the client at
    /// once (it still sends them one call after the other: the publisher
    /// sends every message at once, in order per ordering key).
    AckWithResult,
    /// A `delivery_acknowledgement`, then, once Pub/Sub took it, the
    /// `result`: what the dispatcher does, with no work in between.
    AckThenResult,
}

/// A bare relay: what arrives on its topic goes straight back to the asker on
/// the network topic, as `mode` says: one or two hops, no dispatcher, no
/// store, no instance.
async fn start_relay(pubsub: &PubSub, mode: Relay) -> (String, tokio::task::JoinHandle<()>) {
    let topic = format!("bench.relay.{mode:?}").to_lowercase();
    let sub = format!("{topic}.sub");
    pubsub.ensure_topic(&topic).await.expect("relay topic");
    pubsub
        .ensure_subscription(&sub, &topic, &SubscriptionSpec::dispatcher())
        .await
        .expect("relay subscription");
    let subscriber = pubsub.subscriber().await.expect("subscriber");
    let publisher = pubsub.publisher(NETWORK).await.expect("publisher");
    let ps = pubsub.clone();
    let task = tokio::spawn(async move {
        let mut stream = rouse_pubsub::subscribe(&subscriber, &ps, &sub, 1000);
        while let Some(Ok((msg, handler))) = stream.next().await {
            if let Handler::AtLeastOnce(h) = handler {
                h.ack();
            }
            let mut attributes: BTreeMap<String, String> = msg
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            attributes.insert("recipient".into(), ASKER.into());
            attributes.insert("sender_type".into(), "CHILD".into());
            let event = |kind: &[u8]| Outgoing {
                data: kind.to_vec(),
                attributes: {
                    let mut a = attributes.clone();
                    a.insert("uuid".into(), uuid::Uuid::new_v4().to_string());
                    a
                },
                ordering_key: msg.ordering_key.clone(),
            };
            let ack =
                (mode != Relay::Result).then(|| event(br#"{"kind": "delivery_acknowledgement"}"#));
            let result = event(br#"{"kind": "result", "output_values": null}"#);
            let p = publisher.clone();
            tokio::spawn(async move {
                match (mode, ack) {
                    (Relay::AckThenResult, Some(ack)) => {
                        let _ = p.publish(ack).await;
                        let _ = p.publish(result).await;
                    }
                    (_, Some(ack)) => {
                        let _ = tokio::join!(p.publish(ack), p.publish(result));
                    }
                    (_, None) => {
                        let _ = p.publish(result).await;
                    }
                }
            });
        }
    });
    (topic, task)
}

/// Sequential round trips: publish → answer, `n` times. Milliseconds.
async fn round_trips(asker: &mut Asker, topic: &str, recipient: &str, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let q = asker.ask(topic, recipient, json!({"i": i})).await;
        let a = asker.answer(&q, ANSWER).await;
        assert_eq!(a.kind, "result", "{:?}", a.data);
        out.push(ms(a.received.duration_since(start)));
    }
    out
}

/// Publishes `n` questions at once and waits for every answer. Questions/s.
async fn saturate(asker: &mut Asker, topic: &str, recipient: &str, n: usize) -> f64 {
    let publisher = Arc::new(asker.pubsub.publisher(topic).await.expect("publisher"));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut questions = Vec::with_capacity(n);
    for i in 0..n {
        let q = uuid::Uuid::new_v4().to_string();
        let attributes = question_attributes(&q, recipient);
        questions.push(q.clone());
        let p = publisher.clone();
        tasks.spawn(async move {
            p.publish(Outgoing {
                data: serde_json::to_vec(&json!({"kind": "question", "input_values": {"i": i}}))
                    .expect("json"),
                attributes,
                ordering_key: q,
            })
            .await
            .expect("publish");
        });
    }
    while tasks.join_next().await.is_some() {}
    let answers = asker.answers(&questions, ANSWER).await;
    let last = answers
        .iter()
        .map(|a| a.received)
        .max()
        .unwrap_or_else(Instant::now);
    n as f64 / last.duration_since(start).as_secs_f64()
}

/// Spawning a command to ready (it accepts TCP on $PORT). Milliseconds.
fn spawn_to_ready(program: &Path) -> f64 {
    let port = free_port();
    let start = Instant::now();
    let mut child = Command::new(program)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    while TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err() {
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = ms(start.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// `docker run` of `image` (host network, as Rouse runs it) to ready. Milliseconds.
fn docker_run_to_ready(image: &str) -> Option<f64> {
    let port = free_port();
    let name = format!("rouse-bench-{port}");
    let start = Instant::now();
    let ok = Command::new("docker")
        .args(["run", "-d", "--rm", "--network", "host", "--name", &name])
        .args(["-e", &format!("PORT={port}"), image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    let remove = || {
        let _ = Command::new("docker")
            .args(["rm", "-f", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    if !ok {
        remove();
        return None;
    }
    let addr = format!("127.0.0.1:{port}").parse().ok()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err() {
        if Instant::now() > deadline {
            remove();
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = ms(start.elapsed());
    remove();
    Some(took)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time (user + system) of every process in process group `pgid`, in
/// milliseconds: the emulator's Java process is in the group of `gcloud`.
fn group_cpu_ms(pgid: u32) -> f64 {
    let ticks: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name (which may hold spaces): state, ppid, pgrp, …
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) != Some(pgid) {
            continue;
        }
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += field(11) + field(12);
    }
    total as f64 * 1000.0 / ticks
}

/// Waits until the service's instance has been stopped for idleness.
async fn wait_idle_stop(server: &Server, stops_before: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.log().matches("stopping idle instance").count() <= stops_before {
        assert!(
            Instant::now() < deadline,
            "the instance was not stopped for idleness"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the stop complete before waking it again.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn create(server: &Server, name: &str, settings: &[&str], revision: &[&str]) -> String {
    let svc = server
        .rouse(&[
            "services",
            "create",
            name,
            "--project",
            "bench",
            "--format",
            "json",
        ])
        .json();
    let mut args = vec!["services", "update", name, "--project", "bench"];
    args.extend_from_slice(settings);
    server.rouse(&args).ok();
    let mut args = vec!["revisions", "create", name, "--project", "bench"];
    args.extend_from_slice(revision);
    server.rouse(&args).ok();
    svc["topic"].as_str().expect("topic").to_owned()
}

async fn cold_starts(
    server: &Server,
    asker: &mut Asker,
    topic: &str,
    recipient: &str,
    n: usize,
) -> Vec<f64> {
    let mut out = Vec::new();
    // The first question wakes it; then each wait ends with a stop.
    let q = asker.ask(topic, recipient, json!("warm-up")).await;
    asker.answer(&q, ANSWER).await;
    for _ in 0..n {
        let stops = server.log().matches("stopping idle instance").count();
        wait_idle_stop(server, stops).await;
        let start = Instant::now();
        let q = asker.ask(topic, recipient, json!("cold")).await;
        let a = asker.answer(&q, ANSWER).await;
        assert_eq!(a.kind, "result", "{:?}", a.data);
        out.push(ms(a.received.duration_since(start)));
    }
    out
}

// ---------------------------------------------------------------------------
// The builder (issue 5): a git push webhook → the new revision serving,
// next to `docker build` + `docker run` to ready of the same context.

/// Commits a Dockerfile for `version` and pushes it to `branch`; returns the commit id.
fn commit_and_push(repo: &Repo, version: &str, branch: &str) -> Result<String, String> {
    let commit = repo.commit(&echo_dockerfile(version), version)?;
    repo.push(branch)?;
    Ok(commit)
}

/// POSTs a signed GitHub `push` delivery to the webhook server at `base` on a
/// new connection, as GitHub does; returns the status, the body and how long
/// the answer took (connecting included).
fn post_push(base: &str, delivery: &str, body: &[u8]) -> Result<(u16, Value, f64), String> {
    let headers = github_headers(WEBHOOK_SECRET, body, "push", delivery);
    let start = Instant::now();
    let (status, answer) = post(base, "/webhooks/github", &headers, body)?;
    Ok((status, answer, ms(start.elapsed())))
}

/// Removes, even when the part fails, every image of the given repositories
/// (the builds' and the floor's) and every container made from them.
struct BuiltImages(Vec<String>);

impl Drop for BuiltImages {
    fn drop(&mut self) {
        let lines = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        for repository in &self.0 {
            let mut images = lines(&["images", "-q", "--no-trunc", repository]);
            images.sort();
            images.dedup();
            for image in &images {
                let containers = lines(&["ps", "-aq", "--filter", &format!("ancestor={image}")]);
                if !containers.is_empty() {
                    let _ = Command::new("docker")
                        .args(["rm", "-f", "-v"])
                        .args(&containers)
                        .output();
                }
            }
            if !images.is_empty() {
                let _ = Command::new("docker")
                    .args(["rmi", "-f"])
                    .args(&images)
                    .output();
            }
        }
    }
}

/// The floor: `docker build` of the context (a new `ENV` each time), then
/// `docker run` of the image to ready. Milliseconds (build, run to ready).
fn docker_build_and_run(context: &Path, tag: &str, version: &str) -> Result<(f64, f64), String> {
    std::fs::write(context.join("Dockerfile"), echo_dockerfile(version))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(context)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    let build = ms(start.elapsed());
    if !out.status.success() {
        return Err(format!(
            "docker build failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let run =
        docker_run_to_ready(tag).ok_or("docker run of the built image did not become ready")?;
    Ok((build, run))
}

/// The API as the server's owner, over one connection: cheap to poll,
/// unlike a `rouse` process per read.
struct OwnerApi {
    rollouts: pb::rollouts_client::RolloutsClient<tonic::transport::Channel>,
    builds: pb::builds_client::BuildsClient<tonic::transport::Channel>,
    token: String,
}

impl OwnerApi {
    async fn connect(server: &Server) -> Result<Self, String> {
        let key = rouse_identity::KeyFile::read(server.owner_key()).map_err(|e| e.to_string())?;
        let token = rouse_identity::sign(
            &key,
            rouse_identity::API_AUDIENCE,
            None,
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .map_err(|e| e.to_string())?;
        let channel = tonic::transport::Endpoint::from_shared(server.endpoint().to_owned())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect to the API: {e}"))?;
        Ok(Self {
            rollouts: pb::rollouts_client::RolloutsClient::new(channel.clone()),
            builds: pb::builds_client::BuildsClient::new(channel),
            token,
        })
    }

    fn req<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(format!("Bearer {}", self.token)) {
            request.metadata_mut().insert("authorization", v);
        }
        request
    }

    /// The name of the revision serving `bench/built`.
    async fn serving(&mut self) -> Result<String, String> {
        let request = self.req(pb::GetRoutingRequest {
            project: "bench".into(),
            service: "built".into(),
        });
        let routing = self.rollouts.get_routing(request).await;
        Ok(routing
            .map_err(|e| format!("GetRouting: {e}"))?
            .into_inner()
            .serving)
    }

    async fn build(&mut self, id: &str) -> Result<pb::Build, String> {
        let request = self.req(pb::GetBuildRequest { id: id.to_owned() });
        let build = self.builds.get_build(request).await;
        Ok(build.map_err(|e| format!("GetBuild: {e}"))?.into_inner())
    }
}

/// The wall-clock time of each `build status` (and `built revision serves`)
/// line the server logged for `build`.
fn build_timeline(log: &str, build: &str) -> BTreeMap<String, SystemTime> {
    let needle = format!("build={build}");
    let mut out = BTreeMap::new();
    for line in log
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == needle))
    {
        let Some(at) = line
            .split_whitespace()
            .next()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
        else {
            continue;
        };
        let what = if line.contains("built revision serves") {
            Some("serves".to_owned())
        } else if line.contains("build status") {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("status="))
                .map(str::to_owned)
        } else {
            None
        };
        if let Some(what) = what {
            out.entry(what).or_insert(at);
        }
    }
    out
}

/// One timed push: the webhook posted, then the serving revision read
/// every [`SERVING_POLL`] until it is the one built from `commit`.
struct Push {
    /// Webhook POST → the new revision seen serving. Milliseconds.
    to_serving: f64,
    /// The webhook's own answer. Milliseconds.
    webhook: f64,
    /// Where the time went (from the server's log): phase → milliseconds.
    phases: BTreeMap<&'static str, f64>,
}

async fn timed_push(
    server: &Server,
    api: &mut OwnerApi,
    repo: &Repo,
    before: &str,
    version: &str,
    delivery: &str,
) -> Result<(String, Push), String> {
    let commit = commit_and_push(repo, version, "main")?;
    let body = repo.push_payload("main", before, &commit);
    let (start, wall) = (Instant::now(), SystemTime::now());
    let (status, answer, webhook) = post_push(server.webhooks(), delivery, &body)?;
    if status != 202 {
        return Err(format!("the webhook answered {status}: {answer}"));
    }
    let build = answer["build_id"]
        .as_str()
        .ok_or_else(|| format!("no build id in {answer}"))?
        .to_owned();
    let suffix = format!("-{}", &commit[..7]);
    let mut polls = 0u32;
    let to_serving = loop {
        if api.serving().await?.ends_with(&suffix) {
            break start.elapsed();
        }
        polls += 1;
        // Now and then, whether the build failed (and so never serves).
        if polls.is_multiple_of(10) {
            let b = api.build(&build).await?;
            if ["failed", "cancelled", "superseded"].contains(&b.status.as_str()) {
                return Err(format!(
                    "build {build} {} at {}: {}\n{}",
                    b.status,
                    b.step,
                    b.failure,
                    b.last_lines.join("\n")
                ));
            }
        }
        if start.elapsed() > BUILD_TIMEOUT {
            return Err(format!(
                "build {build} did not serve within {BUILD_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(SERVING_POLL).await;
    };
    // Let the build's last lines reach the log, then read where the time went.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let timeline = build_timeline(&server.log(), &build);
    let mut phases = BTreeMap::new();
    let seen = wall + to_serving;
    let steps: [(&'static str, Option<&SystemTime>, Option<&SystemTime>); 5] = [
        ("queue", Some(&wall), timeline.get("fetching")),
        ("fetch", timeline.get("fetching"), timeline.get("building")),
        (
            "build",
            timeline.get("building"),
            timeline.get("rolling-out"),
        ),
        (
            "try_revision",
            timeline.get("rolling-out"),
            timeline.get("serves"),
        ),
        ("observed", timeline.get("serves"), Some(&seen)),
    ];
    for (name, from, to) in steps {
        if let (Some(from), Some(to)) = (from, to)
            && let Ok(d) = to.duration_since(*from)
        {
            phases.insert(name, ms(d));
        }
    }
    Ok((
        commit,
        Push {
            to_serving: ms(to_serving),
            webhook,
            phases,
        },
    ))
}

/// The builder part: prints its rows and adds its figures to the report.
async fn builder_bench(server: &Server, report: &mut Report) -> Result<(), String> {
    let echo = static_echo_binary()
        .ok_or_else(|| format!("the static echo is not built: run `{STATIC_BUILD}` first"))?;
    let floor_repository = format!("rouse-bench/floor-{}", std::process::id());
    // The builds tag `rouse/<project>-<service>` (see `image_tags`).
    let _images = BuiltImages(vec![
        rouse_builder::trigger::image_repository("bench", "built"),
        floor_repository.clone(),
    ]);
    let repo = Repo::new(&echo)?;
    let floor_context = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::copy(&echo, floor_context.path().join("echo")).map_err(|e| e.to_string())?;

    let out = server.rouse(&["services", "create", "built", "--project", "bench"]);
    if out.code != 0 {
        return Err(format!("rouse services create: {}", out.stderr.trim()));
    }
    let secrets = tempfile::tempdir().map_err(|e| e.to_string())?;
    let secret_file = secrets.path().join("webhook-secret");
    std::fs::write(&secret_file, WEBHOOK_SECRET).map_err(|e| e.to_string())?;
    let secret_file = secret_file.to_str().ok_or("a non-UTF-8 temporary path")?;
    let out = server.rouse(&[
        "triggers",
        "create",
        "built",
        "--project",
        "bench",
        "--repo",
        &repo.url(),
        "--branch-pattern",
        "^main$",
        "--webhook-secret-file",
        secret_file,
    ]);
    if out.code != 0 {
        return Err(format!("rouse triggers create: {}", out.stderr.trim()));
    }

    let mut api = OwnerApi::connect(server).await?;

    // Warm-up, not counted: the first push clones into the builder's git
    // cache and makes the first revision; the first floor build fills
    // Docker's layer cache (the `COPY echo` layer both sides reuse).
    let pid = std::process::id();
    let (mut before, _) = timed_push(
        server,
        &mut api,
        &repo,
        ZERO_COMMIT,
        "warm-up",
        &format!("bench-{pid}-warm-up"),
    )
    .await?;
    docker_build_and_run(
        floor_context.path(),
        &format!("{floor_repository}:warm-up"),
        "floor-warm-up",
    )?;

    // Interleaved, so that drift on the machine affects both alike.
    let (mut floor, mut floor_build, mut floor_run) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rouse, mut webhook) = (Vec::new(), Vec::new());
    let mut phases: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for i in 0..BUILDER_N {
        let (b, r) = docker_build_and_run(
            floor_context.path(),
            &format!("{floor_repository}:{i}"),
            &format!("floor-{i}"),
        )?;
        floor_build.push(b);
        floor_run.push(r);
        floor.push(b + r);
        let (commit, push) = timed_push(
            server,
            &mut api,
            &repo,
            &before,
            &format!("v{i}"),
            &format!("bench-{pid}-{i}"),
        )
        .await?;
        before = commit;
        rouse.push(push.to_serving);
        webhook.push(push.webhook);
        for (k, v) in push.phases {
            phases.entry(k).or_default().push(v);
        }
    }

    // Deliveries that build nothing (a branch the trigger does not match):
    // more webhook samples, no builds.
    let skipped_commit = commit_and_push(&repo, "skipped", "feature/x")?;
    let body = repo.push_payload("feature/x", &before, &skipped_commit);
    for i in 0..SKIPPED_N {
        let (status, answer, took) =
            post_push(server.webhooks(), &format!("bench-{pid}-skip-{i}"), &body)?;
        if status != 200 || answer["builds"] != json!([]) {
            return Err(format!(
                "a push to feature/x was answered {status}: {answer}"
            ));
        }
        webhook.push(took);
    }

    let (r50, f50) = (percentile(&rouse, 50.0), percentile(&floor, 50.0));
    report.row(
        "push → serving p50 (builder)",
        fmt_ms(r50),
        fmt_ms(f50),
        format!("overhead {:+.2} ms", r50 - f50),
        "≤ 1 s".into(),
    );
    let (w50, w99) = (percentile(&webhook, 50.0), percentile(&webhook, 99.0));
    report.row(
        "webhook response p99",
        fmt_ms(w99),
        "-".into(),
        format!("p50 {w50:.2} ms"),
        "≤ 100 ms".into(),
    );
    let phase50: BTreeMap<&str, f64> = phases
        .iter()
        .map(|(k, v)| (*k, percentile(v, 50.0)))
        .collect();
    // Webhook → fetching (the queue), git, docker, one instance of the
    // candidate to ready and stopped, and the poll seeing it serve.
    let order = [
        ("queue", "webhook → fetching"),
        ("fetch", "fetch"),
        ("build", "docker build"),
        ("try_revision", "try revision"),
        ("observed", "→ seen serving"),
    ];
    println!(
        "  (push → serving p50 by phase: {}; floor: docker build p50 {:.1} ms + docker run to ready p50 {:.1} ms)",
        order
            .iter()
            .filter_map(|(k, label)| phase50.get(k).map(|v| format!("{label} {v:.1} ms")))
            .collect::<Vec<_>>()
            .join(", "),
        percentile(&floor_build, 50.0),
        percentile(&floor_run, 50.0),
    );
    report.json.insert("builder_push_to_serving_ms".into(), json!({"p50": r50, "samples": rouse, "floor_p50": f50, "floor_samples": floor, "docker_build_p50": percentile(&floor_build, 50.0), "docker_run_to_ready_p50": percentile(&floor_run, 50.0), "overhead_p50": r50 - f50, "phases_p50": phase50, "target_overhead_p50": 1000.0}));
    report.json.insert("builder_webhook_response_ms".into(), json!({"p50": w50, "p99": w99, "samples": webhook.len(), "building": BUILDER_N, "skipped": SKIPPED_N, "target_p99": 100.0}));
    Ok(())
}

fn fmt_ms(v: f64) -> String {
    format!("{v:.2} ms")
}

/// `ROUSE_BENCH=warm,cold,docker,builder,throughput,memory,iam` runs only those parts.
fn wanted(part: &str) -> bool {
    std::env::var("ROUSE_BENCH").map_or(true, |v| v.split(',').any(|p| p.trim() == part))
}

#[tokio::main]
async fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let echo = workspace_bin("echo");
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("bench");
    let baseline_rss = rss_kib(server.pid());
    let pubsub = PubSub::connect(pubsub_config(emulator.host()))
        .await
        .expect("pubsub");
    let mut asker = Asker::new(emulator.host(), NETWORK).await;
    let (relay_topic, _relay) = start_relay(&pubsub, Relay::Result).await;
    let (batched_relay_topic, _batched_relay) = start_relay(&pubsub, Relay::AckWithResult).await;
    let (ack_relay_topic, _ack_relay) = start_relay(&pubsub, Relay::AckThenResult).await;
    let mut report = Report::default();
    println!(
        "Rouse benchmark ({} warm round trips, {} cold starts, {} questions at saturation, {} idle services)",
        WARM_N, COLD_N, THROUGHPUT_N, IDLE_SERVICES
    );

    // The IAM engine and token verification alone (issue 4's targets; both
    // are on every question's path too, inside the warm figures). First,
    // while the machine is quiet: after the saturation part the emulator
    // keeps a core busy.
    if wanted("iam") {
        let us = |d: &[Duration]| d.iter().map(|d| d.as_secs_f64() * 1e6).collect::<Vec<_>>();
        let checks = us(&rouse_iam::bench::bench_evaluate(1000, 10, 200_000));
        let verifies = us(&rouse_identity::bench_verify(10_000));
        let (c50, v50) = (percentile(&checks, 50.0), percentile(&verifies, 50.0));
        report.row(
            "permission check p50 (10k bindings)",
            format!("{c50:.2} µs"),
            "-".into(),
            format!("p99 {:.2} µs", percentile(&checks, 99.0)),
            "≤ 2 µs".into(),
        );
        report.row(
            "token verification p50",
            format!("{v50:.1} µs"),
            "-".into(),
            format!("p99 {:.1} µs", percentile(&verifies, 99.0)),
            "≤ 100 µs".into(),
        );
        report.json.insert("iam_us".into(), json!({"check_p50": c50, "check_p99": percentile(&checks, 99.0), "verify_p50": v50, "verify_p99": percentile(&verifies, 99.0), "target_check_p50": 2.0, "target_verify_p50": 100.0}));
    }

    // Warm round trip vs two bare hops.
    let echo_cmd = echo.to_str().expect("utf-8").to_owned();
    let warm_topic = create(
        &server,
        "warm",
        &[
            "--min-instances",
            "1",
            "--concurrency",
            "8",
            "--idle-timeout",
            "1h",
        ],
        &["--command", &echo_cmd, "--workdir", "/tmp"],
    );
    round_trips(&mut asker, &relay_topic, "bench/relay", 10).await;
    round_trips(&mut asker, &warm_topic, "bench/warm", 10).await;
    // Interleave the two so that drift on the machine affects both alike.
    let (mut floor, mut warm) = (Vec::new(), Vec::new());
    let rounds = if wanted("warm") || wanted("cold") || wanted("docker") {
        WARM_N / 10
    } else {
        1
    };
    for _ in 0..rounds {
        floor.extend(round_trips(&mut asker, &relay_topic, "bench/relay", 10).await);
        warm.extend(round_trips(&mut asker, &warm_topic, "bench/warm", 10).await);
    }
    let (floor50, warm50) = (percentile(&floor, 50.0), percentile(&warm, 50.0));
    println!();
    report.row(
        "warm round trip p50",
        fmt_ms(warm50),
        fmt_ms(floor50),
        format!("overhead {:+.2} ms", warm50 - floor50),
        "≤ 2 ms".into(),
    );
    report.row(
        "warm round trip p99",
        fmt_ms(percentile(&warm, 99.0)),
        fmt_ms(percentile(&floor, 99.0)),
        format!(
            "overhead {:+.2} ms",
            percentile(&warm, 99.0) - percentile(&floor, 99.0)
        ),
        String::new(),
    );
    report.json.insert("warm_round_trip_ms".into(), json!({"p50": warm50, "p99": percentile(&warm, 99.0), "floor_p50": floor50, "floor_p99": percentile(&floor, 99.0), "overhead_p50": warm50 - floor50, "target_overhead_p50": 2.0}));

    // Cold start, process runtime.
    if wanted("cold") {
        let spawn: Vec<f64> = (0..FLOOR_N).map(|_| spawn_to_ready(&echo)).collect();
        let cold_topic = create(
            &server,
            "cold",
            &["--idle-timeout", "1s"],
            &["--command", &echo_cmd, "--workdir", "/tmp"],
        );
        let cold = cold_starts(&server, &mut asker, &cold_topic, "bench/cold", COLD_N).await;
        let cold_floor = percentile(&spawn, 50.0) + warm50;
        let cold50 = percentile(&cold, 50.0);
        report.row(
            "cold start p50 (process)",
            fmt_ms(cold50),
            fmt_ms(cold_floor),
            format!("overhead {:+.2} ms", cold50 - cold_floor),
            "≤ 20 ms".into(),
        );
        report.json.insert("cold_start_process_ms".into(), json!({"p50": cold50, "samples": cold, "spawn_to_ready_p50": percentile(&spawn, 50.0), "floor_p50": cold_floor, "overhead_p50": cold50 - cold_floor, "target_overhead_p50": 20.0}));
    }

    // Cold start, Docker runtime.
    let echo_image = wanted("docker").then(|| {
        EchoImage::try_build(&format!("rouse-bench/echo:{}", std::process::id()))
            .map_err(|e| eprintln!("({e}; Docker figures skipped)"))
            .ok()
    });
    match echo_image.flatten() {
        Some(echo_image) => {
            let image = echo_image.tag.clone();
            let runs: Vec<f64> = (0..FLOOR_N)
                .filter_map(|_| docker_run_to_ready(&image))
                .collect();
            let topic = create(
                &server,
                "docker",
                &["--idle-timeout", "1s"],
                &["--image", &image],
            );
            let cold = cold_starts(&server, &mut asker, &topic, "bench/docker", COLD_N).await;
            let floor = percentile(&runs, 50.0) + warm50;
            let c50 = percentile(&cold, 50.0);
            report.row(
                "cold start p50 (docker)",
                fmt_ms(c50),
                fmt_ms(floor),
                format!("overhead {:+.2} ms", c50 - floor),
                "≤ 50 ms".into(),
            );
            report.json.insert("cold_start_docker_ms".into(), json!({"p50": c50, "samples": cold, "docker_run_to_ready_p50": percentile(&runs, 50.0), "floor_p50": floor, "overhead_p50": c50 - floor, "target_overhead_p50": 50.0}));
            // Dropping the guard removes the image and its containers.
            drop(echo_image);
        }
        None if wanted("docker") => report.row(
            "cold start p50 (docker)",
            "skipped".into(),
            "-".into(),
            "no static echo / engine".into(),
            "≤ 50 ms".into(),
        ),
        None => {}
    }

    // The builder: a git push webhook → the new revision serving.
    if wanted("builder")
        && let Err(e) = builder_bench(&server, &mut report).await
    {
        eprintln!("(builder figures skipped: {e})");
        report.row(
            "push → serving p50 (builder)",
            "skipped".into(),
            "-".into(),
            "see the reason above".into(),
            "≤ 1 s".into(),
        );
    }

    if wanted("throughput") {
        // Throughput at saturation. The floor answers each question with the same
        // two events the dispatcher must send, in the same way (the result
        // published once the acknowledgement was taken). The relay that hands
        // both to the client at once and the one-event relay are reported too.
        //
        // The emulator slows down as it accumulates ordering keys (each
        // question has its own, as the protocol says), so whatever runs later
        // runs on a slower emulator: the four are measured in alternating
        // rounds, and the emulator's CPU per question tells what each path
        // costs the transport.
        let tput_topic = create(
            &server,
            "tput",
            &[
                "--min-instances",
                "2",
                "--max-instances",
                "2",
                "--concurrency",
                "200",
                "--idle-timeout",
                "1h",
            ],
            &["--command", &echo_cmd, "--workdir", "/tmp"],
        );
        round_trips(&mut asker, &tput_topic, "bench/tput", 5).await;
        let per_round = THROUGHPUT_N / THROUGHPUT_ROUNDS;
        let paths = [
            (tput_topic.as_str(), "bench/tput"),
            (ack_relay_topic.as_str(), "bench/relay"),
            (batched_relay_topic.as_str(), "bench/relay"),
            (relay_topic.as_str(), "bench/relay"),
        ];
        let rss_before = rss_kib(server.pid()).unwrap_or(0);
        // Seconds and emulator CPU milliseconds spent on each path.
        let mut spent = [(0.0f64, 0.0f64); 4];
        for round in 0..THROUGHPUT_ROUNDS {
            // Each path takes each place in a round once.
            for k in 0..paths.len() {
                let i = (round + k) % paths.len();
                let (topic, recipient) = paths[i];
                let cpu = group_cpu_ms(emulator.pid());
                let rate = saturate(&mut asker, topic, recipient, per_round).await;
                spent[i].0 += per_round as f64 / rate;
                spent[i].1 += group_cpu_ms(emulator.pid()) - cpu;
            }
        }
        let total = (per_round * THROUGHPUT_ROUNDS) as f64;
        let rate = |i: usize| total / spent[i].0;
        let cpu = |i: usize| spent[i].1 / total;
        let (rouse, transport, batched, one_event) = (rate(0), rate(1), rate(2), rate(3));
        let rss_growth = rss_kib(server.pid())
            .unwrap_or(0)
            .saturating_sub(rss_before);
        let idle = group_cpu_ms(emulator.pid());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = (group_cpu_ms(emulator.pid()) - idle) / 2.0;
        report.row(
            "questions/s at saturation",
            format!("{rouse:.0}/s"),
            format!("{transport:.0}/s"),
            format!("{:.0}% of the transport", 100.0 * rouse / transport),
            "≥ 80%".into(),
        );
        report.row(
            "  (relay publishing both at once)",
            String::new(),
            format!("{batched:.0}/s"),
            format!("{:.0}% of that", 100.0 * rouse / batched),
            String::new(),
        );
        report.row(
            "  (relay sending one event only)",
            String::new(),
            format!("{one_event:.0}/s"),
            format!("{:.0}% of that", 100.0 * rouse / one_event),
            String::new(),
        );
        println!(
            "  (the emulator's CPU per question: {:.2} ms through Rouse, {:.2} ms through the in-order relay, {:.2} ms both at once, {:.2} ms one event; {idle:.0} ms/s while idle afterwards)",
            cpu(0),
            cpu(1),
            cpu(2),
            cpu(3)
        );
        println!(
            "  (the server's RSS grew by {:.1} MiB while it answered those {} questions)",
            rss_growth as f64 / 1024.0,
            per_round * THROUGHPUT_ROUNDS
        );
        // Where the time went, from the executions' own timestamps.
        let listed = server
            .rouse(&[
                "executions",
                "list",
                "--project",
                "bench",
                "--service",
                "tput",
                "--limit",
                "1000",
                "--format",
                "json",
            ])
            .json();
        let at = |e: &Value, k: &str| e[k].as_str().and_then(|t| humantime::parse_rfc3339(t).ok());
        let (mut queued, mut running) = (Vec::new(), Vec::new());
        for e in listed.as_array().into_iter().flatten() {
            if let (Some(r), Some(d), Some(f)) = (
                at(e, "receive_time"),
                at(e, "deliver_time"),
                at(e, "finish_time"),
            ) {
                queued.push(ms(d.duration_since(r).unwrap_or_default()));
                running.push(ms(f.duration_since(d).unwrap_or_default()));
            }
        }
        println!(
            "  (saturation: received→delivered p50 {:.1} ms p99 {:.1} ms; delivered→finished p50 {:.1} ms p99 {:.1} ms)",
            percentile(&queued, 50.0),
            percentile(&queued, 99.0),
            percentile(&running, 50.0),
            percentile(&running, 99.0)
        );
        report.json.insert("throughput_per_s".into(), json!({"rouse": rouse, "transport": transport, "transport_batched": batched, "transport_one_event": one_event, "rounds": THROUGHPUT_ROUNDS, "emulator_cpu_ms_per_question": {"rouse": cpu(0), "transport": cpu(1), "transport_batched": cpu(2), "transport_one_event": cpu(3)}, "emulator_idle_cpu_ms_per_s": idle, "server_rss_growth_kib": rss_growth, "ratio": rouse / transport, "target_ratio": 0.8}));
    }

    // Memory with 1,000 idle services.
    if wanted("memory") {
        let before = rss_kib(server.pid()).unwrap_or(0);
        let endpoint = server.endpoint().to_owned();
        let bin = rouse_tests::rouse_bin();
        let owner = server.owner_key().to_owned();
        let created = tokio::task::spawn_blocking(move || {
            let mut handles = Vec::new();
            for worker in 0..4 {
                let (endpoint, bin, owner) = (endpoint.clone(), bin.clone(), owner.clone());
                handles.push(std::thread::spawn(move || {
                    for i in (worker..IDLE_SERVICES).step_by(4) {
                        let ok = Command::new(&bin)
                            .args([
                                "services",
                                "create",
                                &format!("idle-{i}"),
                                "--project",
                                "mem",
                            ])
                            .env("ROUSE_ENDPOINT", &endpoint)
                            .env("ROUSE_CREDENTIALS", &owner)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .map(|s| s.success())
                            .unwrap_or(false);
                        assert!(ok, "creating idle-{i} failed");
                    }
                }));
            }
            handles.into_iter().for_each(|h| h.join().expect("creator"));
            IDLE_SERVICES
        })
        .await
        .expect("create services");
        // Let the dispatcher subscribe to all of them.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = rss_kib(server.pid()).unwrap_or(0);
        let mib = |k: u64| k as f64 / 1024.0;
        report.row(
            &format!("RSS with {created} idle services"),
            format!("{:.1} MiB", mib(after)),
            format!("{:.1} MiB", mib(before)),
            format!("{:+.1} MiB for the services", mib(after) - mib(before)),
            "≤ 150 MB".into(),
        );
        report.json.insert("rss_mib".into(), json!({"with_idle_services": mib(after), "services": created, "before": mib(before), "at_start": baseline_rss.map(mib), "target": 150.0 * 1_000_000.0 / 1_048_576.0}));
    }

    let out = root.join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let path = out.join("report.json");
    let doc = serde_json::to_string_pretty(&report.json).expect("json");
    std::fs::write(&path, doc + "\n").expect("write report");
    println!("\nreport: {}", path.display());
    drop(server);
}
