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
//! | questions per second at saturation (and the CPU each process spent per question) | a bare relay publishing the same two events the same way (the result once the acknowledgement was taken), measured in alternating rounds with Rouse so that drift affects both alike |
//! | publish → receive on the broker, one message at a time | the same on the official emulator (when Java and gcloud are here), and its warm floor (a question's two hops) |
//! | the broker's ceiling (messages/s, each its own ordering key) | - |
//! | the broker's RSS and idle CPU after 100,000 ordering keys | the same after one warm-up round |
//! | RSS with 1,000 idle services | RSS with none |
//! | warm HTTP request through the ingress (p50, p99) | the same request straight to the instance, interleaved |
//! | HTTP requests/s through the ingress | the same load straight to the instance, in alternating rounds |
//! | cold first HTTP request (process runtime) | spawning the same process to ready + the warm request |
//! | permission check, 10,000 bindings over 1,000 services (IAM engine) | target only |
//! | token verification (Ed25519 JWT) | target only |
//!
//! Prints a table and writes `target/bench/report.json`. Figures are not
//! judged: misses are reported, not hidden. A part that cannot finish (an
//! error, a panic in the harness, a slow emulator refusing a create after
//! its retries) is printed as `FAILED` with its cause and recorded as
//! `{"failed": cause}` under its key in report.json; the other parts still
//! run, and the bench then exits with status 1.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
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
use rouse_tests::{container_pid, is_frozen};
use serde_json::{Value, json};

const NETWORK: &str = "octue.services";
const WARM_N: usize = 200;
const COLD_N: usize = 10;
const FLOOR_N: usize = 10;
const THROUGHPUT_N: usize = 4000;
/// Rounds the saturation paths alternate in, one per path so that each
/// takes each place once (see the throughput part).
const THROUGHPUT_ROUNDS: usize = 4;
const IDLE_SERVICES: usize = 1000;
/// Questions per store in the SQLite-vs-PostgreSQL part, in alternating
/// rounds, and warm round trips after each round.
const STORE_N: usize = 2000;
const STORE_ROUNDS: usize = 4;
const STORE_WARM_N: usize = 25;
/// Messages sent one at a time for publish → receive.
const PIPE_N: usize = 500;
/// Ordering keys sent through the broker for its RSS and idle CPU, in
/// rounds (each round's rate is a sample of its ceiling).
const KEYS_N: usize = 100_000;
const KEYS_ROUND: usize = 20_000;
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
    /// Parts that could not finish, with why.
    failed: Vec<(String, String)>,
}

impl Report {
    fn row(&mut self, name: &str, value: String, floor: String, overhead: String, target: String) {
        println!("  {name:<34} {value:>14}   floor {floor:>14}   {overhead:>22}   {target}");
        self.rows
            .push((name.into(), value, floor, overhead, target));
    }

    /// Records how a part ended: on failure a `FAILED` line with the cause
    /// and `{"failed": cause}` where its figures would have been in
    /// report.json (`key`). Either way the next part runs.
    fn settle(&mut self, part: &str, key: &str, outcome: Result<(), String>) {
        if let Err(cause) = outcome {
            println!("  {part:<34} FAILED: {cause}");
            self.json
                .insert(key.into(), json!({ "failed": cause.clone() }));
            self.failed.push((part.into(), cause));
        }
    }
}

/// Runs one part of the bench to its end: an error, or a panic inside it
/// (an assertion of the harness, say), becomes the part's outcome instead
/// of ending the run.
async fn guarded<T>(
    part: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(part)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(format!("it panicked: {}", panic_message(&*panic))))
}

/// The text a panic carried.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".into())
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
async fn start_relay(
    pubsub: &PubSub,
    mode: Relay,
) -> Result<(String, tokio::task::JoinHandle<()>), String> {
    let topic = format!("bench.relay.{mode:?}").to_lowercase();
    let sub = format!("{topic}.sub");
    let failed = |e: rouse_pubsub::PubSubError| format!("the {mode:?} relay: {e}");
    pubsub.ensure_topic(&topic).await.map_err(failed)?;
    pubsub
        .ensure_subscription(&sub, &topic, &SubscriptionSpec::dispatcher())
        .await
        .map_err(failed)?;
    let subscriber = pubsub.subscriber().await.map_err(failed)?;
    let publisher = pubsub.publisher(NETWORK).await.map_err(failed)?;
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
    Ok((topic, task))
}

/// The answer to `question`, which must be a `result`.
async fn result_of(asker: &mut Asker, question: &str) -> Result<rouse_tests::asker::Event, String> {
    let a = asker.try_answer(question, ANSWER).await?;
    if a.kind != "result" {
        return Err(format!(
            "question {question} was answered with `{}`: {}",
            a.kind, a.data
        ));
    }
    Ok(a)
}

/// Sequential round trips: publish → answer, `n` times. Milliseconds.
async fn round_trips(
    asker: &mut Asker,
    topic: &str,
    recipient: &str,
    n: usize,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let q = asker.ask(topic, recipient, json!({"i": i})).await;
        let a = result_of(asker, &q).await?;
        out.push(ms(a.received.duration_since(start)));
    }
    Ok(out)
}

/// Publishes `n` questions at once and waits for every answer. Questions/s.
async fn saturate(
    asker: &mut Asker,
    topic: &str,
    recipient: &str,
    n: usize,
) -> Result<f64, String> {
    saturate_all(asker, &[(topic.to_owned(), recipient.to_owned())], n).await
}

/// [`saturate`] over several services (`(topic, recipient)`), taken in turn.
async fn saturate_all(
    asker: &mut Asker,
    targets: &[(String, String)],
    n: usize,
) -> Result<f64, String> {
    let mut publishers = Vec::with_capacity(targets.len());
    for (topic, recipient) in targets {
        let publisher = asker
            .pubsub
            .publisher(topic)
            .await
            .map_err(|e| e.to_string())?;
        publishers.push((Arc::new(publisher), recipient.as_str()));
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut questions = Vec::with_capacity(n);
    for i in 0..n {
        let (publisher, recipient) = &publishers[i % publishers.len()];
        let q = uuid::Uuid::new_v4().to_string();
        let attributes = question_attributes(&q, recipient);
        questions.push(q.clone());
        let p = publisher.clone();
        tasks.spawn(async move {
            p.publish(Outgoing {
                data: json!({"kind": "question", "input_values": {"i": i}})
                    .to_string()
                    .into_bytes(),
                attributes,
                ordering_key: q,
            })
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        });
    }
    while let Some(published) = tasks.join_next().await {
        published.map_err(|e| format!("a publishing task failed: {e}"))??;
    }
    let mut last = start;
    for q in &questions {
        last = last.max(result_of(asker, q).await?.received);
    }
    Ok(n as f64 / last.duration_since(start).as_secs_f64())
}

/// How long a spawned process or container may take to accept connections:
/// it takes milliseconds; this only bounds a broken one.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawning a command to ready (it accepts TCP on $PORT). Milliseconds.
fn spawn_to_ready(program: &Path) -> Result<f64, String> {
    let port = free_port();
    let start = Instant::now();
    let mut child = Command::new(program)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot spawn {}: {e}", program.display()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut ready = true;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err() {
        if start.elapsed() > READY_TIMEOUT {
            ready = false;
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = ms(start.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    if !ready {
        return Err(format!(
            "{} did not accept connections on port {port} within {READY_TIMEOUT:?}",
            program.display()
        ));
    }
    Ok(took)
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
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + READY_TIMEOUT;
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

/// Clock ticks per second, for `/proc/*/stat` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `/proc/*/stat` line's process group and CPU ticks (user + system),
/// read after the command name (which may hold spaces).
fn stat_group_and_ticks(stat: &str) -> Option<(u32, u64)> {
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let group = fields.get(2)?.parse().ok()?;
    Some((group, field(11)? + field(12)?))
}

/// CPU time (user + system) of every process in process group `pgid`, in
/// milliseconds: the emulator's Java process is in the group of `gcloud`.
fn group_cpu_ms(pgid: u32) -> f64 {
    let total: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| stat_group_and_ticks(&stat))
        .filter(|(group, _)| *group == pgid)
        .map(|(_, ticks)| ticks)
        .sum();
    total as f64 * 1000.0 / clock_ticks()
}

/// CPU time (user + system) of process `root` and its children, in
/// milliseconds: PostgreSQL's postmaster and the backend it forks for each
/// connection.
fn tree_cpu_ms(root: u32) -> f64 {
    let total: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ppid: u32 = fields.get(1)?.parse().ok()?;
            let ticks = stat_group_and_ticks(&stat)?.1;
            (pid == root || ppid == root).then_some(ticks)
        })
        .sum();
    total as f64 * 1000.0 / clock_ticks()
}

/// CPU time (user + system) of one process, all its threads, in milliseconds.
fn process_cpu_ms(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_group_and_ticks(&stat))
        .map_or(0.0, |(_, ticks)| ticks as f64 * 1000.0 / clock_ticks())
}

/// Waits until the service's instance has been stopped for idleness.
async fn wait_idle_stop(server: &Server, stops_before: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.log().matches("stopping idle instance").count() <= stops_before {
        if Instant::now() > deadline {
            return Err("the instance was not stopped for idleness within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the stop complete before waking it again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// Runs `rouse ARGS` as the server's owner; its stdout, or its error.
fn rouse(server: &Server, args: &[&str]) -> Result<String, String> {
    let out = server.rouse(args);
    if out.code != 0 {
        return Err(format!(
            "`rouse {}` failed: {}",
            args.join(" "),
            out.stderr.trim()
        ));
    }
    Ok(out.stdout)
}

/// Creates service `name` of project `bench` with `settings` and a
/// revision; returns its topic.
fn create(
    server: &Server,
    name: &str,
    settings: &[&str],
    revision: &[&str],
) -> Result<String, String> {
    let created = rouse(
        server,
        &[
            "services",
            "create",
            name,
            "--project",
            "bench",
            "--format",
            "json",
        ],
    )?;
    let mut args = vec!["services", "update", name, "--project", "bench"];
    args.extend_from_slice(settings);
    rouse(server, &args)?;
    let mut args = vec!["revisions", "create", name, "--project", "bench"];
    args.extend_from_slice(revision);
    rouse(server, &args)?;
    serde_json::from_str::<Value>(&created)
        .ok()
        .and_then(|svc| svc["topic"].as_str().map(str::to_owned))
        .ok_or_else(|| format!("`rouse services create {name}` printed no topic: {created}"))
}

async fn cold_starts(
    server: &Server,
    asker: &mut Asker,
    topic: &str,
    recipient: &str,
    n: usize,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    // The first question wakes it; then each wait ends with a stop.
    let q = asker.ask(topic, recipient, json!("warm-up")).await;
    result_of(asker, &q).await?;
    for _ in 0..n {
        let stops = server.log().matches("stopping idle instance").count();
        wait_idle_stop(server, stops).await?;
        let start = Instant::now();
        let q = asker.ask(topic, recipient, json!("cold")).await;
        let a = result_of(asker, &q).await?;
        out.push(ms(a.received.duration_since(start)));
    }
    Ok(out)
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

/// `ROUSE_BENCH=warm,cold,docker,freeze,builder,throughput,store,dispatchers,broker,ingress,memory,iam` runs only those parts.
fn wanted(part: &str) -> bool {
    std::env::var("ROUSE_BENCH").map_or(true, |v| v.split(',').any(|p| p.trim() == part))
}

/// Sequential GETs of `url` on one keep-alive client: milliseconds each.
async fn http_gets(client: &reqwest::Client, url: &str, n: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "GET {url}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        out.push(ms(start.elapsed()));
    }
    Ok(out)
}

/// `n` GETs of `url` from `clients` concurrent clients: requests per second.
async fn http_rate(url: &str, clients: usize, n: usize) -> Result<f64, String> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            http_gets(&client, &url, n / clients).await
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok((n / clients * clients) as f64 / start.elapsed().as_secs_f64())
}

/// A field of the server's log line for the start of process instance
/// `instance`: what follows `label`, up to the first of `end`.
fn start_field<T: std::str::FromStr>(
    server: &Server,
    instance: &str,
    label: &str,
    end: &[char],
) -> Result<T, String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains("process started") && l.contains(&format!("instance={instance}")))
        .find_map(|l| {
            let at = l.find(label)? + label.len();
            l[at..].split(end).next()?.parse().ok()
        })
        .ok_or_else(|| format!("no start of instance {instance} in the server's log"))
}

/// The port a service's instance listens on, from the server's log of its start.
fn instance_port(server: &Server, instance: &str) -> Result<u16, String> {
    start_field(server, instance, "port=Some(", &[')'])
}

/// The ingress (issue 12): a warm proxied request next to the same request
/// straight to the instance, requests/s both ways, and the cold first
/// request next to spawning the process to ready.
async fn ingress_part(
    b: &mut Bench,
    echo: &Path,
    echo_cmd: &str,
    report: &mut Report,
) -> Result<(), String> {
    const N: usize = 2000;
    const RATE_N: usize = 8000;
    const CLIENTS: usize = 16;
    create(
        &b.server,
        "web",
        &[
            "--min-instances",
            "1",
            "--max-instances",
            "1",
            "--concurrency",
            "64",
            "--idle-timeout",
            "1h",
        ],
        &["--command", echo_cmd, "--workdir", "/tmp"],
    )?;
    let client = reqwest::Client::new();
    let via = format!("{}/bench-web/x", b.server.ingress());
    let first = client
        .get(&via)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json::<Value>()
        .await
        .map_err(|e| e.to_string())?;
    let instance = first["instance"]
        .as_str()
        .ok_or("no instance in the answer")?;
    let direct = format!(
        "http://127.0.0.1:{}/bench-web/x",
        instance_port(&b.server, instance)?
    );
    http_gets(&client, &direct, 100).await?;
    http_gets(&client, &via, 100).await?;
    let (mut floor, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..N / 100 {
        floor.extend(http_gets(&client, &direct, 100).await?);
        proxied.extend(http_gets(&client, &via, 100).await?);
    }
    for (name, p, target) in [("p50", 50.0, 0.5), ("p99", 99.0, 2.0)] {
        let (v, f) = (percentile(&proxied, p), percentile(&floor, p));
        report.row(
            &format!("warm HTTP via ingress {name}"),
            fmt_ms(v),
            fmt_ms(f),
            format!("overhead {:+.3} ms", v - f),
            format!("≤ +{target} ms"),
        );
    }
    // Alternating rounds, so that drift affects both alike.
    let (mut direct_rates, mut via_rates) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        direct_rates.push(http_rate(&direct, CLIENTS, RATE_N / 2).await?);
        via_rates.push(http_rate(&via, CLIENTS, RATE_N / 2).await?);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (rate_via, rate_direct) = (mean(&via_rates), mean(&direct_rates));
    report.row(
        "HTTP requests/s via ingress",
        format!("{rate_via:.0}/s"),
        format!("{rate_direct:.0}/s"),
        format!("{:.0}% of direct", 100.0 * rate_via / rate_direct),
        "≥ 80%".into(),
    );
    // Cold: from zero to the first answer, next to spawning it to ready.
    create(
        &b.server,
        "webcold",
        &["--idle-timeout", "1s"],
        &["--command", echo_cmd, "--workdir", "/tmp"],
    )?;
    let cold_url = format!("{}/bench-webcold/x", b.server.ingress());
    http_gets(&client, &cold_url, 1).await?;
    let mut cold = Vec::new();
    let mut spawn = Vec::new();
    for _ in 0..COLD_N {
        let stops = b.server.log().matches("stopping idle instance").count();
        wait_idle_stop(&b.server, stops).await?;
        cold.extend(http_gets(&client, &cold_url, 1).await?);
        spawn.push(spawn_to_ready(echo)?);
    }
    let warm50 = percentile(&floor, 50.0);
    let (cold50, floor50) = (percentile(&cold, 50.0), percentile(&spawn, 50.0) + warm50);
    report.row(
        "cold first HTTP request p50",
        fmt_ms(cold50),
        fmt_ms(floor50),
        format!("overhead {:+.2} ms", cold50 - floor50),
        "≤ +50 ms".into(),
    );
    report.json.insert("ingress".into(), json!({
        "warm_ms": {"p50": percentile(&proxied, 50.0), "p99": percentile(&proxied, 99.0), "direct_p50": percentile(&floor, 50.0), "direct_p99": percentile(&floor, 99.0), "target_overhead_p50": 0.5, "target_overhead_p99": 2.0},
        "requests_per_s": {"via": rate_via, "direct": rate_direct, "rounds_via": via_rates, "rounds_direct": direct_rates, "target_ratio": 0.8},
        "cold_first_request_ms": {"p50": cold50, "samples": cold, "floor_p50": floor50, "spawn_to_ready_p50": percentile(&spawn, 50.0), "target_overhead_p50": 50.0},
    }));
    Ok(())
}

/// What every part measures against: the platform, an asker and the bare
/// relays.
struct Bench {
    emulator: Emulator,
    server: Server,
    asker: Asker,
    /// Answers with a `result` only.
    relay_topic: String,
    /// Answers with both events handed to the client at once.
    batched_relay_topic: String,
    /// Answers as the dispatcher does: the acknowledgement, then the result.
    ack_relay_topic: String,
    _relays: Vec<tokio::task::JoinHandle<()>>,
    /// The server's RSS right after its start.
    baseline_rss: Option<u64>,
    _data: tempfile::TempDir,
}

impl Bench {
    async fn start() -> Result<Self, String> {
        let emulator = Emulator::start();
        let data = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let server = Server::try_start(emulator.host(), data.path(), &[])
            .map_err(|log| format!("rouse server did not start:\n{log}"))?;
        server.allow_anonymous_askers("bench");
        let baseline_rss = rss_kib(server.pid());
        let pubsub = PubSub::connect(pubsub_config(emulator.host()))
            .await
            .map_err(|e| e.to_string())?;
        let asker = Asker::new(emulator.host(), NETWORK).await;
        let (relay_topic, relay) = start_relay(&pubsub, Relay::Result).await?;
        let (batched_relay_topic, batched) = start_relay(&pubsub, Relay::AckWithResult).await?;
        let (ack_relay_topic, ack) = start_relay(&pubsub, Relay::AckThenResult).await?;
        Ok(Self {
            emulator,
            server,
            asker,
            relay_topic,
            batched_relay_topic,
            ack_relay_topic,
            _relays: vec![relay, batched, ack],
            baseline_rss,
            _data: data,
        })
    }
}

/// The IAM engine and token verification alone (issue 4's targets; both
/// are on every question's path too, inside the warm figures).
fn iam_part(report: &mut Report) {
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

/// The warm round trip next to two bare hops; returns its p50, the floor's
/// part of the cold-start floors.
async fn warm_part(b: &mut Bench, echo_cmd: &str, report: &mut Report) -> Result<f64, String> {
    let warm_topic = create(
        &b.server,
        "warm",
        &[
            "--min-instances",
            "1",
            "--concurrency",
            "8",
            "--idle-timeout",
            "1h",
        ],
        &["--command", echo_cmd, "--workdir", "/tmp"],
    )?;
    round_trips(&mut b.asker, &b.relay_topic, "bench/relay", 10).await?;
    round_trips(&mut b.asker, &warm_topic, "bench/warm", 10).await?;
    // Interleave the two so that drift on the machine affects both alike.
    let (mut floor, mut warm) = (Vec::new(), Vec::new());
    let rounds = if wanted("warm") || wanted("cold") || wanted("docker") || wanted("freeze") {
        WARM_N / 10
    } else {
        1
    };
    for _ in 0..rounds {
        floor.extend(round_trips(&mut b.asker, &b.relay_topic, "bench/relay", 10).await?);
        warm.extend(round_trips(&mut b.asker, &warm_topic, "bench/warm", 10).await?);
    }
    let (floor50, warm50) = (percentile(&floor, 50.0), percentile(&warm, 50.0));
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
    Ok(warm50)
}

/// The warm p50 a cold-start floor adds, or why there is none.
fn warm_floor(warm50: &Result<f64, String>) -> Result<f64, String> {
    warm50
        .clone()
        .map_err(|_| "its floor needs the warm round trip, which failed (see above)".into())
}

/// Cold start, process runtime.
async fn cold_part(
    b: &mut Bench,
    echo: &Path,
    echo_cmd: &str,
    warm50: f64,
    report: &mut Report,
) -> Result<(), String> {
    let spawn = (0..FLOOR_N)
        .map(|_| spawn_to_ready(echo))
        .collect::<Result<Vec<f64>, String>>()?;
    let cold_topic = create(
        &b.server,
        "cold",
        &["--idle-timeout", "1s"],
        &["--command", echo_cmd, "--workdir", "/tmp"],
    )?;
    let cold = cold_starts(&b.server, &mut b.asker, &cold_topic, "bench/cold", COLD_N).await?;
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
    Ok(())
}

/// Cold start, Docker runtime.
async fn docker_part(b: &mut Bench, warm50: f64, report: &mut Report) -> Result<(), String> {
    let echo_image = EchoImage::try_build(&format!("rouse-bench/echo:{}", std::process::id()))
        .map_err(|e| format!("no echo image ({e})"))?;
    let image = echo_image.tag.clone();
    let runs: Vec<f64> = (0..FLOOR_N)
        .filter_map(|_| docker_run_to_ready(&image))
        .collect();
    if runs.is_empty() {
        return Err(format!("`docker run` of {image} never became ready"));
    }
    let topic = create(
        &b.server,
        "docker",
        &["--idle-timeout", "1s"],
        &["--image", &image],
    )?;
    let cold = cold_starts(&b.server, &mut b.asker, &topic, "bench/docker", COLD_N).await?;
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
    // Dropping the guard (here, or on an early return) removes the image
    // and its containers.
    drop(echo_image);
    Ok(())
}

/// The process id of instance `instance` of the process runtime, from the
/// server's log.
fn instance_pid(server: &Server, instance: &str) -> Result<u32, String> {
    start_field(server, instance, " pid=", &[' ', '\n'])
}

/// `n` questions, each to the service's one instance frozen at idle (after
/// a warm-up that wakes it): their round trips, and the CPU the frozen
/// instance used per second, measured over a second in the first three
/// waits. `pid_of` finds the instance's process from its name.
async fn frozen_round_trips(
    b: &mut Bench,
    topic: &str,
    recipient: &str,
    pid_of: fn(&Server, &str) -> Result<u32, String>,
) -> Result<(Vec<f64>, f64), String> {
    let q = b.asker.ask(topic, recipient, json!("warm-up")).await;
    let first = result_of(&mut b.asker, &q).await?;
    let instance = first.data["output_values"]["instance"]
        .as_str()
        .ok_or_else(|| format!("no instance in the answer: {}", first.data))?
        .to_owned();
    let pid = pid_of(&b.server, &instance)?;
    let (mut round_trips, mut cpu) = (Vec::new(), 0.0_f64);
    for i in 0..COLD_N {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_frozen(pid) {
            if Instant::now() > deadline {
                return Err(format!("instance {instance} was not frozen within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if i < 3 {
            let before = process_cpu_ms(pid);
            tokio::time::sleep(Duration::from_secs(1)).await;
            cpu = cpu.max(process_cpu_ms(pid) - before);
        }
        let start = Instant::now();
        let q = b.asker.ask(topic, recipient, json!(i)).await;
        let a = result_of(&mut b.asker, &q).await?;
        if a.data["output_values"]["instance"] != instance.as_str() {
            return Err(format!("a new instance answered question {i}: {}", a.data));
        }
        round_trips.push(ms(a.received.duration_since(start)));
    }
    Ok((round_trips, cpu))
}

/// Frozen instances (issue 13): a question to an instance frozen at idle,
/// next to the warm round trip (its floor: the same question to a running
/// instance) and to waking one (`docker run` to ready); the CPU a frozen
/// instance uses.
async fn freeze_part(
    b: &mut Bench,
    echo_cmd: &str,
    warm50: f64,
    report: &mut Report,
) -> Result<(), String> {
    let topic = create(
        &b.server,
        "frozen",
        &["--idle-timeout", "1s", "--freeze", "on"],
        &["--command", echo_cmd, "--workdir", "/tmp"],
    )?;
    let (process, process_cpu) =
        frozen_round_trips(b, &topic, "bench/frozen", instance_pid).await?;
    let p50 = percentile(&process, 50.0);
    report.row(
        "frozen → answer p50 (process)",
        fmt_ms(p50),
        fmt_ms(warm50),
        format!("thaw {:+.2} ms", p50 - warm50),
        "≤ 5 ms".into(),
    );
    report.row(
        "CPU of a frozen instance (process)",
        format!("{process_cpu:.0} ms/s"),
        "0 ms/s".into(),
        String::new(),
        "0".into(),
    );
    let mut json = json!({"process": {"p50": p50, "samples": process, "floor_p50": warm50, "thaw_p50": p50 - warm50, "cpu_ms_per_s": process_cpu, "target_thaw_p50": 5.0}});
    let docker = async {
        let echo_image =
            EchoImage::try_build(&format!("rouse-bench/echo:frozen-{}", std::process::id()))
                .map_err(|e| format!("no echo image ({e})"))?;
        let runs: Vec<f64> = (0..FLOOR_N)
            .filter_map(|_| docker_run_to_ready(&echo_image.tag))
            .collect();
        let topic = create(
            &b.server,
            "frozen-docker",
            &["--idle-timeout", "1s", "--freeze", "on"],
            &["--image", &echo_image.tag],
        )?;
        let measured = frozen_round_trips(b, &topic, "bench/frozen-docker", |_, instance| {
            container_pid(instance)
        })
        .await?;
        drop(echo_image);
        Ok::<_, String>((measured, runs))
    };
    match docker.await {
        Ok(((docker, docker_cpu), runs)) => {
            let d50 = percentile(&docker, 50.0);
            let run50 = percentile(&runs, 50.0) + warm50;
            report.row(
                "frozen → answer p50 (docker)",
                fmt_ms(d50),
                fmt_ms(warm50),
                format!("thaw {:+.2} ms; waking: {} ", d50 - warm50, fmt_ms(run50)),
                "≤ 5 ms".into(),
            );
            report.row(
                "CPU of a frozen instance (docker)",
                format!("{docker_cpu:.0} ms/s"),
                "0 ms/s".into(),
                String::new(),
                "0".into(),
            );
            json["docker"] = json!({"p50": d50, "samples": docker, "floor_p50": warm50, "thaw_p50": d50 - warm50, "docker_run_to_answer_p50": run50, "cpu_ms_per_s": docker_cpu, "target_thaw_p50": 5.0});
        }
        Err(why) => report.row(
            "frozen → answer p50 (docker)",
            format!("not measured: {why}"),
            String::new(),
            String::new(),
            "≤ 5 ms".into(),
        ),
    }
    report.json.insert("frozen_ms".into(), json);
    Ok(())
}

/// Throughput at saturation. The floor answers each question with the same
/// two events the dispatcher must send, in the same way (the result
/// published once the acknowledgement was taken). The relay that hands
/// both to the client at once and the one-event relay are reported too.
///
/// The emulator slows down as it accumulates ordering keys (each question
/// has its own, as the protocol says), so whatever runs later runs on a
/// slower emulator: the four are measured in alternating rounds, and the
/// emulator's CPU per question tells what each path costs the transport.
async fn throughput_part(b: &mut Bench, echo_cmd: &str, report: &mut Report) -> Result<(), String> {
    let tput_topic = create(
        &b.server,
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
        &["--command", echo_cmd, "--workdir", "/tmp"],
    )?;
    round_trips(&mut b.asker, &tput_topic, "bench/tput", 5).await?;
    let per_round = THROUGHPUT_N / THROUGHPUT_ROUNDS;
    let paths = [
        (tput_topic.clone(), "bench/tput"),
        (b.ack_relay_topic.clone(), "bench/relay"),
        (b.batched_relay_topic.clone(), "bench/relay"),
        (b.relay_topic.clone(), "bench/relay"),
    ];
    let emulator = b.emulator.pid();
    let rss_before = rss_kib(b.server.pid()).unwrap_or(0);
    let server = b.server.pid();
    let bench = std::process::id();
    // Seconds, and the Pub/Sub's, the server's and this process's CPU
    // milliseconds, spent on each path.
    let mut spent = [(0.0f64, 0.0f64, 0.0f64, 0.0f64); 4];
    for round in 0..THROUGHPUT_ROUNDS {
        // Each path takes each place in a round once.
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let (topic, recipient) = &paths[i];
            let cpu = (
                group_cpu_ms(emulator),
                process_cpu_ms(server),
                process_cpu_ms(bench),
            );
            let rate = saturate(&mut b.asker, topic, recipient, per_round).await?;
            spent[i].0 += per_round as f64 / rate;
            spent[i].1 += group_cpu_ms(emulator) - cpu.0;
            spent[i].2 += process_cpu_ms(server) - cpu.1;
            spent[i].3 += process_cpu_ms(bench) - cpu.2;
        }
    }
    let total = (per_round * THROUGHPUT_ROUNDS) as f64;
    let rate = |i: usize| total / spent[i].0;
    let cpu = |i: usize| spent[i].1 / total;
    let (rouse_rate, transport, batched, one_event) = (rate(0), rate(1), rate(2), rate(3));
    let rss_growth = rss_kib(b.server.pid())
        .unwrap_or(0)
        .saturating_sub(rss_before);
    let idle = group_cpu_ms(emulator);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = (group_cpu_ms(emulator) - idle) / 2.0;
    report.row(
        "questions/s at saturation",
        format!("{rouse_rate:.0}/s"),
        format!("{transport:.0}/s"),
        format!("{:.0}% of the transport", 100.0 * rouse_rate / transport),
        "≥ 2000/s".into(),
    );
    report.row(
        "  (relay publishing both at once)",
        String::new(),
        format!("{batched:.0}/s"),
        format!("{:.0}% of that", 100.0 * rouse_rate / batched),
        String::new(),
    );
    report.row(
        "  (relay sending one event only)",
        String::new(),
        format!("{one_event:.0}/s"),
        format!("{:.0}% of that", 100.0 * rouse_rate / one_event),
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
        "  (CPU per question through Rouse: the server {:.2} ms, the asker and relays {:.2} ms, Pub/Sub {:.2} ms; through the in-order relay: the asker and relays {:.2} ms; on {} cores)",
        spent[0].2 / total,
        spent[0].3 / total,
        cpu(0),
        spent[1].3 / total,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "  (the server's RSS grew by {:.1} MiB while it answered those {} questions)",
        rss_growth as f64 / 1024.0,
        per_round * THROUGHPUT_ROUNDS
    );
    report.json.insert("throughput_per_s".into(), json!({"rouse": rouse_rate, "transport": transport, "transport_batched": batched, "transport_one_event": one_event, "rounds": THROUGHPUT_ROUNDS, "emulator_cpu_ms_per_question": {"rouse": cpu(0), "transport": cpu(1), "transport_batched": cpu(2), "transport_one_event": cpu(3)}, "emulator_idle_cpu_ms_per_s": idle, "server_rss_growth_kib": rss_growth, "ratio": rouse_rate / transport, "target_per_s": 2000}));
    // Where the time went, from the executions' own timestamps: an extra,
    // so not reading them does not fail the part.
    match saturation_breakdown(&b.server) {
        Ok(line) => println!("  (saturation: {line})"),
        Err(e) => println!("  (saturation: no breakdown: {e})"),
    }
    Ok(())
}

/// A topic and an ordered subscription on `host`, a publisher, and the
/// messages received there (acknowledged at once), with when each came.
struct Pipe {
    publisher: rouse_pubsub::TopicPublisher,
    received: tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, Instant)>,
    _task: tokio::task::JoinHandle<()>,
}

impl Pipe {
    async fn open(host: &str, name: &str) -> Result<Self, String> {
        let failed = |e: rouse_pubsub::PubSubError| format!("the {name} pipe: {e}");
        let pubsub = PubSub::connect(pubsub_config(host)).await.map_err(failed)?;
        let topic = format!("bench.pipe.{name}");
        let sub = format!("{topic}.sub");
        pubsub.ensure_topic(&topic).await.map_err(failed)?;
        let spec = SubscriptionSpec {
            ack_deadline_seconds: 60,
            message_ordering: true,
            filter: String::new(),
        };
        pubsub
            .ensure_subscription(&sub, &topic, &spec)
            .await
            .map_err(failed)?;
        let subscriber = pubsub.subscriber().await.map_err(failed)?;
        let publisher = pubsub.publisher(&topic).await.map_err(failed)?;
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = rouse_pubsub::subscribe(&subscriber, &pubsub, &sub, 10_000);
            while let Some(Ok((msg, handler))) = stream.next().await {
                if let Handler::AtLeastOnce(h) = handler {
                    h.ack();
                }
                if tx.send((msg.data.to_vec(), Instant::now())).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            publisher,
            received,
            _task: task,
        })
    }

    fn message(i: usize) -> Outgoing {
        Outgoing {
            data: i.to_string().into_bytes(),
            attributes: BTreeMap::new(),
            // Every message its own key, as every question has.
            ordering_key: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// One message at a time: publish → received, and the publish call
    /// alone (until the broker answered that it stored it). Milliseconds.
    async fn one_by_one(&mut self, n: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
        let (mut trips, mut calls) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let start = Instant::now();
            self.publisher
                .publish(Self::message(i))
                .await
                .map_err(|e| e.to_string())?;
            calls.push(ms(start.elapsed()));
            let (data, at) = tokio::time::timeout(ANSWER, self.received.recv())
                .await
                .map_err(|_| format!("message {i} was not received within {ANSWER:?}"))?
                .ok_or("the subscriber stopped")?;
            if data != i.to_string().into_bytes() {
                return Err(format!("message {i} was received as {data:?}"));
            }
            trips.push(ms(at.duration_since(start)));
        }
        Ok((trips, calls))
    }

    /// `n` messages published at once, each its own ordering key, until
    /// the last is received. Messages/s.
    async fn saturate(&mut self, n: usize) -> Result<f64, String> {
        let publisher = Arc::new(self.publisher.clone());
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let p = publisher.clone();
            tasks.spawn(async move { p.publish(Self::message(i)).await.map(drop) });
        }
        let mut last = start;
        for got in 0..n {
            let (_, at) = tokio::time::timeout(ANSWER, self.received.recv())
                .await
                .map_err(|_| format!("only {got} of {n} messages were received"))?
                .ok_or("the subscriber stopped")?;
            last = at;
        }
        while let Some(published) = tasks.join_next().await {
            published
                .map_err(|e| format!("a publishing task failed: {e}"))?
                .map_err(|e| e.to_string())?;
        }
        Ok(n as f64 / last.duration_since(start).as_secs_f64())
    }
}

/// CPU a process group uses per second while nothing is asked of it.
/// Questions through one dispatcher on SQLite (the bench's server) and on
/// PostgreSQL (a second server, its database durable as in production),
/// in alternating rounds: questions/s, the warm round trip and the CPU each
/// spends per question, the database's own included.
async fn store_part(b: &mut Bench, echo_cmd: &str, report: &mut Report) -> Result<(), String> {
    let pg = rouse_tests::postgres::Postgres::start(true);
    let url = pg.create_database("rouse").await;
    let data = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let pg_server = Server::try_start(b.emulator.host(), data.path(), &["--store", &url])
        .map_err(|log| format!("rouse server on PostgreSQL did not start:\n{log}"))?;
    pg_server.allow_anonymous_askers("bench");
    let settings = [
        "--min-instances",
        "2",
        "--max-instances",
        "2",
        "--concurrency",
        "200",
        "--idle-timeout",
        "1h",
    ];
    let source = ["--command", echo_cmd, "--workdir", "/tmp"];
    let on_sqlite = create(&b.server, "store-sqlite", &settings, &source)?;
    let on_pg = create(&pg_server, "store-pg", &settings, &source)?;
    let recipient = "bench/store";
    round_trips(&mut b.asker, &on_sqlite, recipient, 5).await?;
    round_trips(&mut b.asker, &on_pg, recipient, 5).await?;
    let paths = [
        (on_sqlite, b.server.pid(), None),
        (on_pg, pg_server.pid(), Some(pg.pid())),
    ];
    // Per path: seconds, server CPU ms, database CPU ms; warm round trips.
    let mut spent = [(0.0f64, 0.0f64, 0.0f64); 2];
    let mut warm: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let per_round = STORE_N / STORE_ROUNDS;
    for round in 0..STORE_ROUNDS {
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let (topic, server, db) = &paths[i];
            let cpu = (process_cpu_ms(*server), db.map_or(0.0, tree_cpu_ms));
            let rate = saturate(&mut b.asker, topic, recipient, per_round).await?;
            spent[i].0 += per_round as f64 / rate;
            spent[i].1 += process_cpu_ms(*server) - cpu.0;
            spent[i].2 += db.map_or(0.0, tree_cpu_ms) - cpu.1;
            warm[i].extend(round_trips(&mut b.asker, topic, recipient, STORE_WARM_N).await?);
        }
    }
    let total = (per_round * STORE_ROUNDS) as f64;
    let rate = |i: usize| total / spent[i].0;
    let cpu = |i: usize| (spent[i].1 / total, spent[i].2 / total);
    let ((sqlite_server, _), (pg_rouse, pg_db)) = (cpu(0), cpu(1));
    let (sqlite50, pg50) = (percentile(&warm[0], 50.0), percentile(&warm[1], 50.0));
    report.row(
        "questions/s on PostgreSQL (one dispatcher)",
        format!("{:.0}/s", rate(1)),
        format!("{:.0}/s", rate(0)),
        format!("{:.0}% of SQLite's", 100.0 * rate(1) / rate(0)),
        "-".into(),
    );
    report.row(
        "warm round trip p50 on PostgreSQL",
        fmt_ms(pg50),
        fmt_ms(sqlite50),
        format!("{:+.2} ms over SQLite", pg50 - sqlite50),
        "-".into(),
    );
    report.row(
        "CPU per question, PostgreSQL (rouse + database)",
        format!("{:.2} + {:.2} ms", pg_rouse, pg_db),
        format!("{sqlite_server:.2} ms"),
        format!("{:+.2} ms over SQLite", pg_rouse + pg_db - sqlite_server),
        "-".into(),
    );
    report.json.insert(
        "store".into(),
        json!({
            "sqlite_per_s": rate(0), "postgres_per_s": rate(1),
            "sqlite_warm_p50_ms": sqlite50, "postgres_warm_p50_ms": pg50,
            "sqlite_server_cpu_ms_per_question": sqlite_server,
            "postgres_server_cpu_ms_per_question": pg_rouse,
            "postgres_database_cpu_ms_per_question": pg_db,
        }),
    );
    drop(pg_server);
    drop(pg);
    Ok(())
}

/// Services the dispatchers part spreads its questions over.
const SHARED_SERVICES: usize = 6;
/// Questions per dispatcher count.
const SHARED_N: usize = 3000;

/// Several dispatchers on one PostgreSQL: questions/s over
/// [`SHARED_SERVICES`] services with 1, 2 and 3 dispatchers (each a fresh
/// database, api and dispatchers, the services created once all are up so
/// that they spread), and the CPU all of them spent per question.
async fn dispatchers_part(
    b: &mut Bench,
    echo_cmd: &str,
    report: &mut Report,
) -> Result<(), String> {
    let pg = rouse_tests::postgres::Postgres::start(true);
    let settings = [
        "--min-instances",
        "1",
        "--max-instances",
        "1",
        "--concurrency",
        "200",
        "--idle-timeout",
        "1h",
    ];
    let source = ["--command", echo_cmd, "--workdir", "/tmp"];
    let mut rates = Vec::new();
    for count in 1..=3usize {
        let url = pg.create_database(&format!("shared{count}")).await;
        let data = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let start = |roles: &str| {
            Server::try_start(
                b.emulator.host(),
                data.path(),
                &["--store", &url, "--roles", roles],
            )
            .map_err(|log| format!("rouse server --roles {roles} did not start:\n{log}"))
        };
        let api = start("api")?;
        api.allow_anonymous_askers("bench");
        let dispatchers = (0..count)
            .map(|_| start("dispatcher"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut targets = Vec::new();
        for n in 0..SHARED_SERVICES {
            let name = format!("shared-{n}");
            let topic = create(&api, &name, &settings, &source)?;
            targets.push((topic, format!("bench/{name}")));
        }
        // Each service's first answer: it has a dispatcher and a warm instance.
        for (topic, recipient) in &targets {
            round_trips(&mut b.asker, topic, recipient, 3).await?;
        }
        let held: Vec<usize> = dispatchers
            .iter()
            .map(|d| {
                let log = d.log();
                targets
                    .iter()
                    .filter(|(topic, _)| {
                        let uuid = topic.trim_start_matches("octue.services.");
                        log.lines()
                            .any(|l| l.contains(uuid) && l.contains("runs the service now"))
                    })
                    .count()
            })
            .collect();
        let cpu = |pids: &[u32]| pids.iter().map(|p| process_cpu_ms(*p)).sum::<f64>();
        let pids: Vec<u32> = dispatchers.iter().map(Server::pid).collect();
        let (cpu0, db0) = (cpu(&pids), tree_cpu_ms(pg.pid()));
        let rate = saturate_all(&mut b.asker, &targets, SHARED_N).await?;
        let per_q = (cpu(&pids) - cpu0) / SHARED_N as f64;
        let db_per_q = (tree_cpu_ms(pg.pid()) - db0) / SHARED_N as f64;
        rates.push(json!({
            "dispatchers": count, "per_s": rate, "services_held": held,
            "dispatcher_cpu_ms_per_question": per_q, "database_cpu_ms_per_question": db_per_q,
        }));
        let floor = rates[0]["per_s"].as_f64().unwrap_or(rate);
        report.row(
            &format!("questions/s, {count} dispatcher(s) on PostgreSQL ({SHARED_SERVICES} services, held {held:?})"),
            format!("{rate:.0}/s"),
            format!("{floor:.0}/s"),
            format!("{:.0}% of one's; CPU {per_q:.2} + {db_per_q:.2} ms/question", 100.0 * rate / floor),
            "-".into(),
        );
        drop(dispatchers);
        drop(api);
    }
    report.json.insert("dispatchers".into(), json!(rates));
    drop(pg);
    Ok(())
}

async fn idle_cpu_ms_per_s(pgid: u32) -> f64 {
    let before = group_cpu_ms(pgid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    (group_cpu_ms(pgid) - before) / 2.0
}

/// The broker alone: publish → receive next to the official emulator's
/// (when it can run here), its ceiling in messages/s, and its RSS and idle
/// CPU before and after 100,000 ordering keys went through it.
async fn broker_part(b: &Bench, report: &mut Report) -> Result<(), String> {
    let mut pipe = Pipe::open(b.emulator.host(), "latency").await?;
    pipe.one_by_one(50).await?;
    let (trips, calls) = pipe.one_by_one(PIPE_N).await?;
    // The official emulator, when Java and gcloud are here.
    let official = guarded(async {
        let emulator = Emulator::official();
        let mut pipe = Pipe::open(emulator.host(), "latency").await?;
        pipe.one_by_one(10).await?;
        let (trips, _) = pipe.one_by_one(PIPE_N / 10).await?;
        // A question's two hops as the dispatcher makes them (the relay
        // floor of the warm round trip), on the emulator.
        let pubsub = PubSub::connect(pubsub_config(emulator.host()))
            .await
            .map_err(|e| e.to_string())?;
        let (relay, _task) = start_relay(&pubsub, Relay::AckThenResult).await?;
        let mut asker = Asker::new(emulator.host(), NETWORK).await;
        round_trips(&mut asker, &relay, "bench/relay", 5).await?;
        let hops = round_trips(&mut asker, &relay, "bench/relay", 50).await?;
        Ok((percentile(&trips, 50.0), percentile(&hops, 50.0)))
    })
    .await;
    let t50 = percentile(&trips, 50.0);
    let (floor, versus) = match &official {
        Ok((e50, _)) => (
            fmt_ms(*e50),
            format!("{:.0}× faster than the emulator", e50 / t50),
        ),
        Err(e) => (
            "-".into(),
            format!("no emulator: {}", e.lines().next().unwrap_or_default()),
        ),
    };
    report.row(
        "publish → receive p50 (broker)",
        fmt_ms(t50),
        floor,
        versus,
        "≤ 1 ms".into(),
    );
    if let Ok((_, hops)) = &official {
        report.row(
            "  (a question's two hops, emulator)",
            fmt_ms(*hops),
            String::new(),
            "the warm floor there".into(),
            String::new(),
        );
    }
    report.row(
        "  (publish call alone p50)",
        fmt_ms(percentile(&calls, 50.0)),
        String::new(),
        format!("p99 {}", fmt_ms(percentile(&calls, 99.0))),
        String::new(),
    );

    let pid = b.emulator.pid();
    let mut pipe = Pipe::open(b.emulator.host(), "keys").await?;
    // One round first, so that the allocator's arenas and SQLite's page
    // cache have grown to their working size: the figure is what 100,000
    // keys leave behind beyond that.
    let mut rates = vec![pipe.saturate(KEYS_ROUND).await?];
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(pid).unwrap_or(0);
    let idle_before = idle_cpu_ms_per_s(pid).await;
    for _ in 0..KEYS_N / KEYS_ROUND {
        rates.push(pipe.saturate(KEYS_ROUND).await?);
    }
    // Let the last acknowledgements land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(pid).unwrap_or(0);
    let idle_after = idle_cpu_ms_per_s(pid).await;
    let ceiling = percentile(&rates, 50.0);
    report.row(
        "broker ceiling (msgs/s)",
        format!("{ceiling:.0}/s"),
        String::new(),
        format!(
            "best round {:.0}/s",
            rates.iter().copied().fold(0.0, f64::max)
        ),
        String::new(),
    );
    report.row(
        "broker RSS after 100,000 keys",
        format!("{:.1} MiB", rss_after as f64 / 1024.0),
        format!("{:.1} MiB", rss_before as f64 / 1024.0),
        format!(
            "{:+.1} MiB",
            (rss_after as f64 - rss_before as f64) / 1024.0
        ),
        "flat".into(),
    );
    report.row(
        "broker idle CPU after 100,000 keys",
        format!("{idle_after:.1} ms/s"),
        format!("{idle_before:.1} ms/s"),
        format!("{:+.1} ms/s", idle_after - idle_before),
        "flat".into(),
    );
    report.json.insert("broker".into(), json!({"publish_to_receive_p50_ms": t50, "publish_to_receive_p99_ms": percentile(&trips, 99.0), "publish_call_p50_ms": percentile(&calls, 50.0), "emulator_publish_to_receive_p50_ms": official.as_ref().ok().map(|o| o.0), "emulator_two_hops_p50_ms": official.as_ref().ok().map(|o| o.1), "target_p50_ms": 1.0, "ceiling_msgs_per_s": ceiling, "ceiling_rounds": rates, "keys": KEYS_N, "rss_kib_before": rss_before, "rss_kib_after": rss_after, "idle_cpu_ms_per_s_before": idle_before, "idle_cpu_ms_per_s_after": idle_after}));
    Ok(())
}

/// Received → delivered and delivered → finished of the `tput` executions.
fn saturation_breakdown(server: &Server) -> Result<String, String> {
    let listed = rouse(
        server,
        &[
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
        ],
    )?;
    let listed: Value = serde_json::from_str(&listed)
        .map_err(|e| format!("`rouse executions list` printed no JSON ({e})"))?;
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
    Ok(format!(
        "received→delivered p50 {:.1} ms p99 {:.1} ms; delivered→finished p50 {:.1} ms p99 {:.1} ms",
        percentile(&queued, 50.0),
        percentile(&queued, 99.0),
        percentile(&running, 50.0),
        percentile(&running, 99.0)
    ))
}

/// Attempts at creating one idle service before the memory part gives up,
/// and the pause before the first retry (doubled after each): after the
/// saturation part the emulator keeps a core busy for a while and may let
/// a create's topic or subscription call run into `--pubsub-timeout`.
const CREATE_ATTEMPTS: u32 = 4;
const CREATE_BACKOFF: Duration = Duration::from_secs(1);

/// `rouse services create NAME --project mem`, tried again with backoff.
fn create_idle(bin: &Path, endpoint: &str, owner: &Path, name: &str) -> Result<(), String> {
    let mut pause = CREATE_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=CREATE_ATTEMPTS {
        let out = Command::new(bin)
            .args(["services", "create", name, "--project", "mem"])
            .env("ROUSE_ENDPOINT", endpoint)
            .env("ROUSE_CREDENTIALS", owner)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr).trim().to_owned();
                // An attempt the client gave up on may have succeeded on
                // the server after all.
                if attempt > 1 && stderr.contains("already exists") {
                    return Ok(());
                }
                last = format!("{}: {stderr}", o.status);
            }
            Err(e) => last = format!("cannot run {}: {e}", bin.display()),
        }
        if attempt < CREATE_ATTEMPTS {
            std::thread::sleep(pause);
            pause *= 2;
        }
    }
    Err(format!(
        "creating {name} failed {CREATE_ATTEMPTS} times, the last with {last}"
    ))
}

/// Memory with 1,000 idle services.
async fn memory_part(b: &Bench, report: &mut Report) -> Result<(), String> {
    let before = rss_kib(b.server.pid()).unwrap_or(0);
    let endpoint = b.server.endpoint().to_owned();
    let bin = rouse_tests::rouse_bin();
    let owner = b.server.owner_key().to_owned();
    let (created, failures) = tokio::task::spawn_blocking(move || {
        let mut handles = Vec::new();
        for worker in 0..4 {
            let (endpoint, bin, owner) = (endpoint.clone(), bin.clone(), owner.clone());
            handles.push(std::thread::spawn(move || {
                let mut created = 0usize;
                for i in (worker..IDLE_SERVICES).step_by(4) {
                    // This worker stops at its first service that will not
                    // come; the others go on.
                    if let Err(e) = create_idle(&bin, &endpoint, &owner, &format!("idle-{i}")) {
                        return (created, Some(e));
                    }
                    created += 1;
                }
                (created, None)
            }));
        }
        let mut created = 0;
        let mut failures = Vec::new();
        for h in handles {
            match h.join() {
                Ok((n, failure)) => {
                    created += n;
                    failures.extend(failure);
                }
                Err(panic) => failures.push(format!(
                    "a creating thread panicked: {}",
                    panic_message(&*panic)
                )),
            }
        }
        (created, failures)
    })
    .await
    .map_err(|e| format!("the creating task failed: {e}"))?;
    if let Some(first) = failures.first() {
        return Err(format!(
            "created {created} of {IDLE_SERVICES} idle services; {first}"
        ));
    }
    // Let the dispatcher subscribe to all of them.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib(b.server.pid()).unwrap_or(0);
    let mib = |k: u64| k as f64 / 1024.0;
    report.row(
        &format!("RSS with {created} idle services"),
        format!("{:.1} MiB", mib(after)),
        format!("{:.1} MiB", mib(before)),
        format!("{:+.1} MiB for the services", mib(after) - mib(before)),
        "≤ 150 MB".into(),
    );
    report.json.insert("rss_mib".into(), json!({"with_idle_services": mib(after), "services": created, "before": mib(before), "at_start": b.baseline_rss.map(mib), "target": 150.0 * 1_000_000.0 / 1_048_576.0}));
    Ok(())
}

#[tokio::main]
async fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // The echo example every service here runs; without it only the parts
    // that need none can run.
    let echo =
        std::panic::catch_unwind(|| workspace_bin("echo")).map_err(|panic| panic_message(&*panic));
    let echo_cmd = echo
        .as_ref()
        .map(|e| e.to_string_lossy().into_owned())
        .map_err(Clone::clone);
    let mut report = Report::default();
    println!(
        "Rouse benchmark ({} warm round trips, {} cold starts, {} questions at saturation, {} idle services)",
        WARM_N, COLD_N, THROUGHPUT_N, IDLE_SERVICES
    );

    // The IAM micro-benchmarks first, while the machine is quiet: after the
    // saturation part the emulator keeps a core busy.
    if wanted("iam") {
        let outcome = guarded(async {
            iam_part(&mut report);
            Ok(())
        })
        .await;
        report.settle("iam", "iam_us", outcome);
    }

    // Every other part needs the platform.
    match guarded(Bench::start()).await {
        Err(cause) => report.settle("platform start", "platform", Err(cause)),
        Ok(mut b) => {
            // Always: the cold-start floors include the warm round trip.
            let warm50 = match &echo_cmd {
                Ok(cmd) => guarded(warm_part(&mut b, cmd, &mut report)).await,
                Err(e) => Err(e.clone()),
            };
            report.settle(
                "warm round trip",
                "warm_round_trip_ms",
                warm50.clone().map(drop),
            );
            if wanted("cold") {
                let outcome = match (&warm_floor(&warm50), &echo, &echo_cmd) {
                    (Ok(warm50), Ok(echo), Ok(cmd)) => {
                        guarded(cold_part(&mut b, echo, cmd, *warm50, &mut report)).await
                    }
                    (Err(e), _, _) | (_, Err(e), _) => Err(e.clone()),
                    (_, _, Err(e)) => Err(e.clone()),
                };
                report.settle("cold start (process)", "cold_start_process_ms", outcome);
            }
            if wanted("docker") {
                let outcome = match warm_floor(&warm50) {
                    Ok(warm50) => guarded(docker_part(&mut b, warm50, &mut report)).await,
                    Err(e) => Err(e),
                };
                report.settle("cold start (docker)", "cold_start_docker_ms", outcome);
            }
            if wanted("freeze") {
                let outcome = match (&warm_floor(&warm50), &echo_cmd) {
                    (Ok(warm50), Ok(cmd)) => {
                        guarded(freeze_part(&mut b, cmd, *warm50, &mut report)).await
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e.clone()),
                };
                report.settle("frozen instances", "frozen_ms", outcome);
            }
            // The builder: a git push webhook → the new revision serving.
            if wanted("builder") {
                let outcome = guarded(builder_bench(&b.server, &mut report)).await;
                report.settle(
                    "push → serving (builder)",
                    "builder_push_to_serving_ms",
                    outcome,
                );
            }
            if wanted("throughput") {
                let outcome = match &echo_cmd {
                    Ok(cmd) => guarded(throughput_part(&mut b, cmd, &mut report)).await,
                    Err(e) => Err(e.clone()),
                };
                report.settle("questions/s at saturation", "throughput_per_s", outcome);
            }
            if wanted("store") {
                let outcome = match &echo_cmd {
                    Ok(cmd) => guarded(store_part(&mut b, cmd, &mut report)).await,
                    Err(e) => Err(e.clone()),
                };
                report.settle("SQLite vs PostgreSQL", "store", outcome);
            }
            if wanted("dispatchers") {
                let outcome = match &echo_cmd {
                    Ok(cmd) => guarded(dispatchers_part(&mut b, cmd, &mut report)).await,
                    Err(e) => Err(e.clone()),
                };
                report.settle("several dispatchers", "dispatchers", outcome);
            }
            if wanted("broker") {
                let outcome = if b.emulator.is_official() {
                    Err("the bench runs on the official emulator (ROUSE_TEST_PUBSUB=emulator); this part measures Rouse's broker".into())
                } else {
                    guarded(broker_part(&b, &mut report)).await
                };
                report.settle("the broker alone", "broker", outcome);
            }
            if wanted("ingress") {
                let outcome = match (&echo, &echo_cmd) {
                    (Ok(echo), Ok(cmd)) => {
                        guarded(ingress_part(&mut b, echo, cmd, &mut report)).await
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e.clone()),
                };
                report.settle("the ingress", "ingress", outcome);
            }
            if wanted("memory") {
                let outcome = guarded(memory_part(&b, &mut report)).await;
                report.settle("RSS with idle services", "rss_mib", outcome);
            }
        }
    }

    let out = root.join("target/bench");
    let path = out.join("report.json");
    let doc = serde_json::to_string_pretty(&report.json)
        .unwrap_or_else(|e| format!("\"cannot render the report: {e}\""));
    if let Err(e) = std::fs::create_dir_all(&out).and_then(|()| std::fs::write(&path, doc + "\n")) {
        eprintln!("bench: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    println!("\nreport: {}", path.display());
    if !report.failed.is_empty() {
        println!("{} part(s) failed:", report.failed.len());
        for (part, cause) in &report.failed {
            println!("  {part}: {cause}");
        }
        // The figures above stand; the exit status says the run was not whole.
        std::process::exit(1);
    }
}
