//! End-to-end: the service registry on the real Pub/Sub emulator, driven
//! through the real `rouse` binary. Pub/Sub state is checked through Pub/Sub
//! itself, never through the store.

use std::time::{Duration, Instant};

use rouse_pubsub::{PubSub, PubSubConfig};
use rouse_tests::{Emulator, Server, free_port};

const PROJECT: &str = "rouse-local";

async fn pubsub(emulator: &Emulator) -> PubSub {
    PubSub::connect(PubSubConfig {
        project: PROJECT.into(),
        emulator_host: Some(emulator.host().into()),
        call_timeout: Duration::from_secs(10),
    })
    .await
    .expect("pubsub client")
}

/// The topic a subscription is attached to, as Pub/Sub reports it.
async fn attached_topic(ps: &PubSub, subscription: &str) -> Option<String> {
    ps.subscription_topic(subscription)
        .await
        .expect("get subscription")
}

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
}

#[tokio::test]
async fn create_describe_update_delete_on_pubsub() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    let ps = pubsub(&emulator).await;

    // The network topic is ensured at start.
    assert!(ps.topic_exists("octue.services").await.expect("get topic"));

    let created = server
        .rouse(&[
            "services",
            "create",
            "hpc-preprocessor",
            "--project",
            "experiment_2",
            "--format",
            "json",
        ])
        .json();
    let uuid = field(&created, "uuid").to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&uuid)
            .expect("uuid")
            .get_version_num(),
        4
    );
    let topic = format!("octue.services.{uuid}");
    assert_eq!(field(&created, "topic"), topic);
    assert_eq!(field(&created, "status"), "created");
    assert_eq!(
        field(&created, "context_root"),
        "/experiment_2-hpc-preprocessor"
    );
    assert_eq!(created["sruid"]["namespace"], "experiment-2");
    assert_eq!(created["sruid"]["name"], "hpc-preprocessor");
    assert_eq!(created["scaling"]["min_instances"], 0);
    assert_eq!(created["scaling"]["idle_timeout"], "1m");

    assert!(
        ps.topic_exists(&topic).await.expect("get topic"),
        "topic not on Pub/Sub"
    );
    let subscription = field(&created, "subscription").to_owned();
    assert_eq!(
        attached_topic(&ps, &subscription).await.as_deref(),
        Some(format!("projects/{PROJECT}/topics/{topic}").as_str()),
        "the dispatcher subscription must be on the service topic"
    );

    // Duplicate and invalid names are refused with the rule and the value.
    let dup = server.rouse(&[
        "services",
        "create",
        "hpc-preprocessor",
        "--project",
        "experiment_2",
    ]);
    assert_eq!(dup.code, 1, "{dup:?}");
    assert!(dup.stderr.contains("already exists"), "{}", dup.stderr);
    let bad = server.rouse(&[
        "services",
        "create",
        "hpc_preprocessor",
        "--project",
        "experiment_2",
    ]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("`hpc_preprocessor`") && bad.stderr.contains("`_` at position 4"),
        "{}",
        bad.stderr
    );
    let long = server.rouse(&[
        "services",
        "create",
        "twenty-characters-xx",
        "--project",
        "experiment_2",
    ]);
    assert_eq!(long.code, 2, "{long:?}");
    assert!(long.stderr.contains("33 characters"), "{}", long.stderr);

    let updated = server
        .rouse(&[
            "services",
            "update",
            "hpc-preprocessor",
            "--project",
            "experiment_2",
            "--min-instances",
            "0",
            "--max-instances",
            "3",
            "--concurrency",
            "4",
            "--idle-timeout",
            "90s",
            "--env",
            "KEY=VALUE",
            "--env",
            "OTHER=a=b",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(updated["scaling"]["concurrency"], 4);
    assert_eq!(updated["scaling"]["idle_timeout"], "1m 30s");
    assert_eq!(updated["env"]["KEY"], "VALUE");
    assert_eq!(updated["env"]["OTHER"], "a=b");

    let described = server
        .rouse(&[
            "services",
            "describe",
            "hpc-preprocessor",
            "--project",
            "experiment_2",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(described, updated, "describe shows what update stored");
    let table = server.rouse(&[
        "services",
        "describe",
        "hpc-preprocessor",
        "--project",
        "experiment_2",
    ]);
    assert!(
        table.ok().contains("KEY=VALUE") && table.ok().contains(&topic),
        "{}",
        table.stdout
    );

    let listed = server
        .rouse(&["services", "list", "--format", "json"])
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let yaml = server.rouse(&["services", "list", "--format", "yaml"]);
    assert!(
        yaml.ok().contains(&format!("uuid: {uuid}")),
        "{}",
        yaml.stdout
    );

    let deleted = server.rouse(&[
        "services",
        "delete",
        "hpc-preprocessor",
        "--project",
        "experiment_2",
    ]);
    deleted.ok();
    assert!(
        !ps.topic_exists(&topic).await.expect("get topic"),
        "topic left on Pub/Sub"
    );
    assert_eq!(
        attached_topic(&ps, &subscription).await,
        None,
        "subscription left on Pub/Sub"
    );
    let again = server.rouse(&[
        "services",
        "delete",
        "hpc-preprocessor",
        "--project",
        "experiment_2",
    ]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("does not exist"), "{}", again.stderr);

    // Delete is idempotent on the Pub/Sub side: a topic already gone is fine.
    let second = server
        .rouse(&[
            "services",
            "create",
            "second",
            "--project",
            "experiment_2",
            "--format",
            "json",
        ])
        .json();
    ps.delete_topic(field(&second, "topic"))
        .await
        .expect("delete topic");
    ps.delete_subscription(field(&second, "subscription"))
        .await
        .expect("delete sub");
    server
        .rouse(&["services", "delete", "second", "--project", "experiment_2"])
        .ok();
    assert_eq!(
        server
            .rouse(&["services", "list", "--format", "json"])
            .json(),
        serde_json::json!([])
    );

    assert!(server.stop().success());
}

/// `rouse services describe` shows where questions go, like Cloud Run's
/// serving revision and traffic: the serving revision and the SRUID that
/// reaches it, tags and the traffic split, in every output format.
#[test]
fn describe_shows_the_serving_revision_its_sruid_tags_and_traffic() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    let rouse = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--project", "experiment_2"]);
        server.rouse(&all)
    };
    let describe = |format: &str| {
        rouse(&["services", "describe", "echo", "--format", format])
            .ok()
            .to_owned()
    };
    let json = || -> serde_json::Value {
        serde_json::from_str(&describe("json")).expect("describe --format json is JSON")
    };
    rouse(&["services", "create", "echo"]).ok();

    // Nothing serves yet.
    let nothing = json();
    assert_eq!(
        nothing["serving_revision"],
        serde_json::Value::Null,
        "{nothing}"
    );
    assert_eq!(
        nothing["serving_sruid"],
        serde_json::Value::Null,
        "{nothing}"
    );
    assert_eq!(nothing["tags"], serde_json::json!({}), "{nothing}");
    assert_eq!(nothing["traffic"], serde_json::json!({}), "{nothing}");

    // A revision registered by hand serves at once, under its SRUID.
    let revision = |n: &str| {
        rouse(&[
            "revisions",
            "create",
            "echo",
            "--command",
            "/bin/true",
            "--workdir",
            "/tmp",
        ])
        .ok();
        format!("echo-0000{n}")
    };
    let rev1 = revision("1");
    let one = json();
    assert_eq!(one["serving_revision"], rev1.as_str(), "{one}");
    assert_eq!(
        one["serving_sruid"],
        format!("experiment-2/echo:{rev1}").as_str(),
        "{one}"
    );
    let table = describe("table");
    assert!(
        table.contains(&format!("experiment-2/echo:{rev1}"))
            && table.contains(&format!("100% {rev1}")),
        "{table}"
    );

    // A second one takes over; the first stays reachable under a tag and
    // gets a tenth of the untagged questions.
    let rev2 = revision("2");
    rouse(&[
        "services",
        "deploy",
        "echo",
        "--revision",
        &rev1,
        "--tag",
        "blue",
    ])
    .ok();
    rouse(&[
        "services",
        "set-traffic",
        "echo",
        "--traffic",
        &format!("{rev1}=10,{rev2}=90"),
    ])
    .ok();
    let split = json();
    assert_eq!(split["serving_revision"], rev2.as_str(), "{split}");
    assert_eq!(
        split["serving_sruid"],
        format!("experiment-2/echo:{rev2}").as_str(),
        "{split}"
    );
    assert_eq!(split["tags"], serde_json::json!({"blue": rev1}), "{split}");
    assert_eq!(
        split["traffic"],
        serde_json::json!({rev1.as_str(): 10, rev2.as_str(): 90}),
        "{split}"
    );
    let yaml = describe("yaml");
    assert!(
        yaml.contains(&format!("serving_sruid: experiment-2/echo:{rev2}"))
            && yaml.contains(&format!("blue: {rev1}"))
            && yaml.contains(&format!("{rev1}: 10")),
        "{yaml}"
    );
    let table = describe("table");
    assert!(
        table.contains(&format!("10% {rev1}"))
            && table.contains(&format!("90% {rev2}"))
            && table.contains(&format!("blue → {rev1} (experiment-2/echo:blue)")),
        "{table}"
    );
    // The list carries the same.
    let listed: serde_json::Value =
        serde_json::from_str(rouse(&["services", "list", "--format", "json"]).ok())
            .expect("list --format json is JSON");
    assert_eq!(listed[0]["traffic"], split["traffic"], "{listed}");
}

#[tokio::test]
async fn restart_keeps_services_and_recreates_what_went_missing() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    let a = server
        .rouse(&[
            "services",
            "create",
            "alpha",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    let b = server
        .rouse(&[
            "services",
            "create",
            "beta",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    // A crash, not a clean stop.
    server.kill9();

    // Behind Rouse's back: alpha's topic goes (its subscription is left
    // detached), beta's subscription goes.
    let ps = pubsub(&emulator).await;
    ps.delete_topic(field(&a, "topic"))
        .await
        .expect("delete topic");
    ps.delete_subscription(field(&b, "subscription"))
        .await
        .expect("delete subscription");

    let server = Server::start(&emulator, data.path(), &[]);
    let listed = server
        .rouse(&["services", "list", "--format", "json"])
        .json();
    let names: Vec<_> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|s| field(s, "name").to_owned())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(
        listed[0]["uuid"], a["uuid"],
        "the uuid is fixed for the service's life"
    );

    for s in [&a, &b] {
        let topic = field(s, "topic");
        assert!(
            ps.topic_exists(topic).await.expect("get topic"),
            "{topic} not recreated"
        );
        assert_eq!(
            attached_topic(&ps, field(s, "subscription")).await,
            Some(format!("projects/{PROJECT}/topics/{topic}")),
            "subscription of {topic} not recreated on it"
        );
    }
    let log = server.log();
    assert!(log.contains("topic was missing; recreated it"), "{log}");
    assert!(
        log.contains("subscription was missing or detached"),
        "{log}"
    );

    // An emulator restart loses everything; the next start recreates it all.
    assert!(server.stop().success());
    let store = emulator.stop();
    let fresh = Emulator::start_keeping(store);
    let server = Server::start(&fresh, data.path(), &[]);
    let ps = pubsub(&fresh).await;
    for s in [&a, &b] {
        assert!(ps.topic_exists(field(s, "topic")).await.expect("get topic"));
    }
    assert!(ps.topic_exists("octue.services").await.expect("get topic"));
    assert!(server.stop().success());
}

#[tokio::test]
async fn pubsub_failure_during_create_leaves_nothing_behind() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &["--pubsub-timeout", "3s"]);
    server
        .rouse(&["services", "create", "kept", "--project", "p"])
        .ok();
    let host = emulator.host().to_owned();
    let _store = emulator.stop();

    let started = Instant::now();
    let failed = server.rouse(&["services", "create", "lost", "--project", "p"]);
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(
        failed.stderr.contains(&host),
        "the error names the Pub/Sub endpoint: {}",
        failed.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "create hung for {:?}",
        started.elapsed()
    );

    // Neither a record nor (with the emulator back) a topic was left.
    let listed = server
        .rouse(&["services", "list", "--format", "json"])
        .json();
    let names: Vec<_> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|s| field(s, "name").to_owned())
        .collect();
    assert_eq!(names, ["kept"]);
    assert!(server.stop().success());
}

#[test]
fn unreachable_pubsub_at_start_is_a_clear_bounded_error() {
    let data = tempfile::tempdir().expect("tempdir");
    // Nothing listens here: refused, tried again until --pubsub-timeout.
    let host = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let log = Server::try_start(&host, data.path(), &["--pubsub-timeout", "2s"])
        .err()
        .expect("the server must not start");
    assert!(log.contains(&format!("http://{host}")), "{log}");
    assert!(log.contains("Pub/Sub is not usable"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );

    // A blackholed address: bounded by --pubsub-timeout.
    let started = Instant::now();
    let log = Server::try_start(
        "10.255.255.1:8085",
        data.path(),
        &["--pubsub-timeout", "2s"],
    )
    .err()
    .expect("the server must not start");
    assert!(log.contains("10.255.255.1:8085"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}
