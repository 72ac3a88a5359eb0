//! End-to-end: nodes (seed `003`'s `deploy.py node …`) on real parts. A
//! second `dockerd` of the test's own is the second node; the image reaches
//! it through Debian's `docker-registry` on loopback, as built images do.

use std::time::Duration;

use rouse_tests::asker::Asker;
use rouse_tests::echo_image::EchoImage;
use rouse_tests::engines::{DockerNode, Registry, Sshd};
use rouse_tests::{Emulator, Server, free_port, wait_until};
use serde_json::{Value, json};

const NETWORK: &str = "octue.services";
const ANSWER: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(30);

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI")
}

/// Rouse's running containers of `image` on the machine's own engine
/// (other tests run theirs beside).
fn local_containers(image: &str) -> usize {
    let out = docker(&[
        "ps",
        "--filter",
        "label=managed-by=rouse",
        "--format",
        "{{.Image}}",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l == image)
        .count()
}

fn nodes(server: &Server) -> Vec<Value> {
    server
        .rouse(&["nodes", "list", "--format", "json"])
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// An image tag removed from the local engine when dropped.
struct Untag(String);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = docker(&["rmi", &self.0]);
    }
}

/// The echo image pushed to `registry` as `<registry>/p-<name>:v1` (what
/// the builder does with `--registry`), and removed from the local engine
/// so that only the registry has it; the copy the dispatcher pulls is
/// removed when the returned guards drop.
fn pushed_echo(registry: &Registry, name: &str) -> ((Untag, EchoImage), String) {
    let echo = EchoImage::build(&format!("rouse-nodes-{name}:{}", std::process::id()));
    let image = format!("{}/p-{name}:v1", registry.addr);
    assert!(docker(&["tag", &echo.tag, &image]).status.success());
    let pushed = docker(&["push", &image]);
    assert!(pushed.status.success(), "{pushed:?}");
    assert!(docker(&["rmi", &image]).status.success());
    ((Untag(image.clone()), echo), image)
}

/// Service `p/<name>` running `image`, at most `max` instances; its topic.
fn image_service(server: &Server, name: &str, max: &str, image: &str) -> String {
    let topic = server.image_service("p", name, image, &[]);
    server
        .rouse(&[
            "services",
            "update",
            name,
            "--project",
            "p",
            "--max-instances",
            max,
        ])
        .ok();
    topic
}

/// Bad input is named with its fix; nodes are added, listed with their
/// health and instances, drained and removed (only once empty). A burst
/// spreads a service's instances over the local engine and the node; the
/// node's engine stopped, its questions finish on the local engine, none
/// lost, and the node shows unhealthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_spread_over_nodes_and_a_stopped_node_loses_nothing() {
    let registry = Registry::start();
    let mut node = DockerNode::start();
    let (_echo, image) = pushed_echo(&registry, "spread");

    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");

    // Bad input.
    let tls = server.rouse(&[
        "nodes",
        "add",
        "far",
        "--docker-host",
        "https://10.0.0.9:2376",
    ]);
    assert_eq!(tls.code, 2, "{tls:?}");
    assert!(
        tls.stderr.contains("`https://10.0.0.9:2376`")
            && tls.stderr.contains("not supported")
            && tls.stderr.contains("ssh://"),
        "{}",
        tls.stderr
    );
    let dead = server.rouse(&[
        "nodes",
        "add",
        "dead",
        "--docker-host",
        "unix:///nonexistent/docker.sock",
    ]);
    assert_eq!(dead.code, 2, "{dead:?}");
    assert!(dead.stderr.contains("does not answer"), "{}", dead.stderr);
    let name = server.rouse(&[
        "nodes",
        "add",
        "Node_2",
        "--docker-host",
        &node.docker_host(),
    ]);
    assert!(name.stderr.contains("`Node_2`"), "{}", name.stderr);
    let label = server.rouse(&[
        "nodes",
        "add",
        "n",
        "--docker-host",
        &node.docker_host(),
        "--label",
        "novalue",
    ]);
    assert_eq!(label.code, 2, "{label:?}");
    assert!(label.stderr.contains("KEY=VALUE"), "{}", label.stderr);
    assert!(nodes(&server).is_empty());

    let added = server
        .rouse(&[
            "nodes",
            "add",
            "node-2",
            "--docker-host",
            &node.docker_host(),
            "--capacity",
            "4",
            "--label",
            "zone=b",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(added["healthy"], true, "{added}");
    assert_eq!(added["labels"]["zone"], "b");
    let again = server.rouse(&[
        "nodes",
        "add",
        "node-2",
        "--docker-host",
        &node.docker_host(),
    ]);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    // The dispatcher re-reads the nodes every 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let topic = image_service(&server, "spread", "4", &image);
    let mut asker = Asker::new(emulator.host(), NETWORK).await;
    let burst: Vec<String> = {
        let mut qs = Vec::new();
        for i in 0..16 {
            qs.push(
                asker
                    .ask(&topic, "p/spread", json!({"sleep_ms": 300, "i": i}))
                    .await,
            );
        }
        qs
    };
    for q in &burst {
        let a = asker.answer(q, ANSWER).await;
        assert_eq!(a.kind, "result", "{:?}\n{}", a.data, server.log());
    }
    // Four instances, spread: both engines run some, the node within its capacity.
    let (here, there) = (local_containers(&image), node.rouse_containers());
    assert!(
        here >= 1 && there >= 1,
        "local {here}, node {there}\n{}",
        server.log()
    );
    assert!(there <= 4);
    let listed = nodes(&server);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["instances"], there as u64, "{listed:?}");
    let table = server.rouse(&["nodes", "list"]).ok().to_owned();
    assert!(
        table.contains("node-2") && table.contains("ready"),
        "{table}"
    );

    // A node with instances is not removed.
    let busy = server.rouse(&["nodes", "remove", "node-2"]);
    assert_eq!(busy.code, 1, "{busy:?}");
    assert!(
        busy.stderr.contains("nodes drain node-2"),
        "{}",
        busy.stderr
    );

    // The node's engine stops under its warm instances: questions go to
    // the local engine (an instance that cannot be reached is given up and
    // its question delivered elsewhere), none is lost.
    node.stop();
    let mut after = Vec::new();
    for i in 0..12 {
        after.push(asker.ask(&topic, "p/spread", json!({"after": i})).await);
    }
    for q in &after {
        let a = asker.answer(q, ANSWER).await;
        assert_eq!(a.kind, "result", "{:?}\n{}", a.data, server.log());
    }
    wait_until(SETTLE, "the node shown unhealthy", || {
        let listed = nodes(&server);
        match listed[0]["healthy"] == false {
            true => Ok(()),
            false => Err(format!("{listed:?}")),
        }
    })
    .await;
    let table = server.rouse(&["nodes", "list"]).ok().to_owned();
    assert!(table.contains("unhealthy"), "{table}");

    // Drained and empty: removed.
    let drained = server
        .rouse(&["nodes", "drain", "node-2", "--format", "json"])
        .json();
    assert_eq!(drained["draining"], true);
    let removed = server.rouse(&["nodes", "remove", "node-2"]);
    assert_eq!(removed.code, 0, "{removed:?}");
    assert!(nodes(&server).is_empty());
    let gone = server.rouse(&["nodes", "drain", "node-2"]);
    assert!(
        gone.stderr.contains("node `node-2` does not exist"),
        "{}",
        gone.stderr
    );
    drop((server, node, registry));
}

/// What the draining and selector tests start: a registry with the echo
/// pushed as `p-<name>`, a second engine added as node `node` (with the
/// `nodes add` flags `flags`, drained if `drain`) and seen by the
/// dispatcher, and a server whose project `p` anyone may ask.
struct Cluster {
    server: Server,
    emulator: Emulator,
    node: DockerNode,
    image: String,
    _registry: Registry,
    _echo: (Untag, EchoImage),
    _data: tempfile::TempDir,
}

async fn cluster(name: &str, node: &str, flags: &[&str], drain: bool) -> Cluster {
    let registry = Registry::start();
    let engine = DockerNode::start();
    let (echo, image) = pushed_echo(&registry, name);
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    let host = engine.docker_host();
    let mut args = vec!["nodes", "add", node, "--docker-host", &host];
    args.extend_from_slice(flags);
    server.rouse(&args).ok();
    if drain {
        server.rouse(&["nodes", "drain", node]).ok();
    }
    // The dispatcher re-reads the nodes every 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Cluster {
        server,
        emulator,
        node: engine,
        image,
        _registry: registry,
        _echo: echo,
        _data: data,
    }
}

/// Asks `n` questions of `recipient` at once (each sleeping 200 ms in the
/// service) and asserts every one is answered with a result.
async fn all_answered(asker: &mut Asker, topic: &str, recipient: &str, n: usize, log: &Server) {
    let mut qs = Vec::new();
    for i in 0..n {
        qs.push(
            asker
                .ask(topic, recipient, json!({"sleep_ms": 200, "i": i}))
                .await,
        );
    }
    for q in &qs {
        let a = asker.answer(q, ANSWER).await;
        assert_eq!(a.kind, "result", "{:?}\n{}", a.data, log.log());
    }
}

/// A draining node gets no new instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_gets_no_new_instance() {
    let c = cluster("drained", "node-2", &[], true).await;
    let topic = image_service(&c.server, "drained", "3", &c.image);
    let mut asker = Asker::new(c.emulator.host(), NETWORK).await;
    all_answered(&mut asker, &topic, "p/drained", 9, &c.server).await;
    assert_eq!(
        c.node.rouse_containers(),
        0,
        "an instance went to the draining node"
    );
    assert!(local_containers(&c.image) >= 1);
}

/// A service with a node selector runs only on nodes carrying its labels
/// (the local engine carries none); when no node matches, the asker hears
/// which selector could not be met. A bad selector is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_selector_keeps_a_service_on_matching_nodes() {
    let c = cluster("zoned", "node-b", &["--label", "zone=b"], false).await;
    let (server, image) = (&c.server, &c.image);
    let topic = image_service(server, "zoned", "2", image);
    let bad = server.rouse(&[
        "services",
        "update",
        "zoned",
        "--project",
        "p",
        "--node-selector",
        "zone=a b",
    ]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("node selector") && bad.stderr.contains("`zone=a b`"),
        "{}",
        bad.stderr
    );
    let set = server
        .rouse(&[
            "services",
            "update",
            "zoned",
            "--project",
            "p",
            "--node-selector",
            "zone=b",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(set["node_selector"]["zone"], "b", "{set}");

    let mut asker = Asker::new(c.emulator.host(), NETWORK).await;
    all_answered(&mut asker, &topic, "p/zoned", 6, server).await;
    assert!(c.node.rouse_containers() >= 1);
    assert_eq!(
        local_containers(image),
        0,
        "an instance of a service selecting zone=b ran on the local engine"
    );

    // No node carries zone=c: the question ends with the reason.
    let nowhere = image_service(server, "nowhere", "1", image);
    server
        .rouse(&[
            "services",
            "update",
            "nowhere",
            "--project",
            "p",
            "--node-selector",
            "zone=c",
        ])
        .ok();
    let q = asker.ask(&nowhere, "p/nowhere", json!({"n": 1})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "exception", "{:?}", a.data);
    let message = a.data["exception_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("node selector zone=c") && message.contains("node-b: lacks a label"),
        "{message}"
    );
}

/// Nodes on other machines, reached as the Docker CLI reaches them: one
/// engine at `tcp://` and (the same engine) at `ssh://` through an sshd of
/// the test's own running `docker system dial-stdio`. Each service's
/// instances run there, reached at the node's address on ports of the
/// node range that no two instances share. An `ssh://` node that cannot
/// be reached is refused with what ssh said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_at_tcp_and_ssh_addresses_run_instances() {
    let registry = Registry::start();
    let engine = DockerNode::start_with_tcp();
    let sshd = Sshd::start(&engine);
    let (_echo, image) = pushed_echo(&registry, "far");
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let ssh_command = sshd.ssh_command();
    let server = Server::start_with_env(
        &emulator,
        data.path(),
        &[],
        &[("ROUSE_SSH_COMMAND", &ssh_command)],
    );
    server.allow_anonymous_askers("p");

    let closed = format!("ssh://root@127.0.0.1:{}", free_port());
    let refused = server.rouse(&["nodes", "add", "nowhere", "--docker-host", &closed]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("does not answer") && refused.stderr.contains("Connection refused"),
        "{}",
        refused.stderr
    );
    let tcp = engine.tcp_host().expect("tcp").to_owned();
    server
        .rouse(&[
            "nodes",
            "add",
            "by-tcp",
            "--docker-host",
            &tcp,
            "--label",
            "via=tcp",
        ])
        .ok();
    let ssh = sshd.docker_host();
    server
        .rouse(&[
            "nodes",
            "add",
            "by-ssh",
            "--docker-host",
            &ssh,
            "--label",
            "via=ssh",
        ])
        .ok();
    let listed = nodes(&server);
    for node in &listed {
        assert_eq!(node["healthy"], true, "{listed:?}\n{}", sshd.log());
    }
    // The dispatcher re-reads the nodes every 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut asker = Asker::new(emulator.host(), NETWORK).await;
    for via in ["tcp", "ssh"] {
        let name = format!("far-{via}");
        let topic = image_service(&server, &name, "3", &image);
        server
            .rouse(&[
                "services",
                "update",
                &name,
                "--project",
                "p",
                "--node-selector",
                &format!("via={via}"),
            ])
            .ok();
        all_answered(&mut asker, &topic, &format!("p/{name}"), 9, &server).await;
        let names = engine.docker(&["ps", "-a", "--format", "{{.Names}}"]);
        let names = String::from_utf8_lossy(&names.stdout).to_string();
        assert!(
            names.lines().any(|n| n.contains(&name)),
            "no instance of {name} on the node: {names}\n{}",
            server.log()
        );
        // The ingress's metrics count the node's instances.
        let metrics = reqwest::get(format!("{}/metrics", server.ingress()))
            .await
            .expect("/metrics")
            .text()
            .await
            .expect("metrics text");
        let counted = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("rouse_node_instances{{node=\"by-{via}\"}} ")))
            .and_then(|n| n.parse::<i64>().ok());
        assert!(counted.is_some_and(|n| n >= 1), "{metrics}");
    }
    assert_eq!(
        local_containers(&image),
        0,
        "an instance ran on the local engine"
    );
    let ports = engine.rouse_ports();
    let mut seen = std::collections::HashSet::new();
    for port in &ports {
        let n: u16 = port
            .parse()
            .unwrap_or_else(|_| panic!("port label `{port}`"));
        assert!((30000..=32767).contains(&n), "{ports:?}");
        assert!(seen.insert(n), "two instances share port {n}: {ports:?}");
    }
    assert!(!ports.is_empty());
    assert!(
        sshd.log().contains("Accepted publickey"),
        "the ssh node was not reached through ssh:\n{}",
        sshd.log()
    );
    drop(server);
    drop((sshd, engine, registry));
}
