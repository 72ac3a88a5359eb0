//! End-to-end: `rouse server --runtime cloudrun` with the official Cloud
//! Run client against the local stand-in of the Admin API and the metadata
//! server (`rouse_tests::cloud_run`), which runs real containers. Needs a
//! `rouse` built with the `cloudrun` feature (the Justfile's build has it).

use std::time::Duration;

use rouse_tests::asker::Asker;
use rouse_tests::cloud_run::FakeCloudRun;
use rouse_tests::echo_image::EchoImage;
use rouse_tests::{Emulator, Server, wait_until};
use serde_json::json;

const NETWORK: &str = "octue.services";
const ANSWER: Duration = Duration::from_secs(60);

/// A job-mode revision is one Cloud Run Job, each question one execution
/// with the question in its overrides; a failing execution is the asker's
/// exception. A server-mode revision is one private Cloud Run service
/// shared by the instances Rouse wakes, called with an ID token for its
/// URL; without one its front end refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_private_services_run_on_cloud_run() {
    let echo = EchoImage::build(&format!("rouse-cloudrun-echo:{}", std::process::id()));
    let fake = FakeCloudRun::start();
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let mut extra = vec![
        "--runtime",
        "cloudrun",
        "--cloudrun-project",
        "proj",
        "--cloudrun-region",
        "europe-west1",
        "--cloudrun-poll",
        "200ms",
    ];
    let endpoint = fake.endpoint();
    extra.extend(["--cloudrun-endpoint", endpoint.as_str()]);
    let store = emulator.store_args(data.path());
    extra.extend(store.iter().map(String::as_str));
    let metadata = fake.metadata_host();
    let server = Server::try_start_with_env(
        emulator.host(),
        data.path(),
        &extra,
        &[("GCE_METADATA_HOST", metadata.as_str())],
    )
    .unwrap_or_else(|log| panic!("rouse server did not start:\n{log}"));
    assert!(
        server.log().contains("image revisions run on Cloud Run"),
        "{}",
        server.log()
    );
    server.allow_anonymous_askers("p");
    let mut asker = Asker::new(emulator.host(), NETWORK).await;

    // Job mode: two questions, two executions of one job.
    let jobs = server.image_service("p", "batch", &echo.tag, &["--mode", "job"]);
    let q = asker.ask(&jobs, "p/batch", json!({"n": 1})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}\n{}", a.data, server.log());
    let q = asker.ask(&jobs, "p/batch", json!({"crash": true})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "exception", "{:?}", a.data);
    let message = a.data["exception_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("failed on Cloud Run") && message.contains("exit code 3"),
        "{message}"
    );
    let calls = fake.calls();
    let created: Vec<&String> = calls
        .iter()
        .filter(|c| {
            c.starts_with("POST /v2/projects/proj/locations/europe-west1/jobs") && !c.contains(':')
        })
        .collect();
    assert_eq!(created.len(), 1, "one job for the revision: {calls:?}");
    let executions = fake.executions();
    assert_eq!(executions.len(), 2, "{executions:?}");
    for (input, e) in [("{\"n\":1}", true), ("{\"crash\":true}", true)] {
        assert_eq!(
            executions.iter().any(|x| x["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == input))),
            e,
            "an execution with `--input-values {input}`: {executions:?}"
        );
    }

    // Server mode: questions answered through the service's front end,
    // which one service serves whatever the instances.
    let served = server.image_service("p", "web", &echo.tag, &[]);
    server
        .rouse(&[
            "services",
            "update",
            "web",
            "--project",
            "p",
            "--max-instances",
            "3",
        ])
        .ok();
    let mut qs = Vec::new();
    for i in 0..6 {
        qs.push(
            asker
                .ask(&served, "p/web", json!({"i": i, "sleep_ms": 100}))
                .await,
        );
    }
    for (i, q) in qs.iter().enumerate() {
        let a = asker.answer(q, ANSWER).await;
        assert_eq!(a.kind, "result", "{:?}\n{}", a.data, server.log());
        assert_eq!(a.data["output_values"]["echo"]["i"], json!(i));
    }
    let services = fake.services();
    assert_eq!(services.len(), 1, "one Cloud Run service: {services:?}");
    let (uri, passed, refused) = services[0].clone();
    assert_eq!(
        (passed, refused),
        (6, 0),
        "every delivery carried an ID token"
    );
    // Without a token the private service is refused.
    let status = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            &uri,
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "403");
    wait_until(
        Duration::from_secs(5),
        "the refusal counted",
        || match fake.services()[0].2 {
            1 => Ok(()),
            n => Err(format!("{n} refused")),
        },
    )
    .await;
    drop(server);
}

/// Cloud Run settings are checked before anything starts.
#[test]
fn cloud_run_settings_are_checked() {
    let data = tempfile::tempdir().expect("tempdir");
    for (args, needle) in [
        (
            vec!["--runtime", "cloudrun"],
            "Cloud Run needs a region: set --cloudrun-region",
        ),
        (
            vec!["--cloudrun-region", "europe-west1"],
            "--cloudrun-region is given but the runtime is docker",
        ),
        (
            vec![
                "--runtime",
                "cloudrun",
                "--cloudrun-region",
                "r",
                "--cloudrun-endpoint",
                "run.example.com",
            ],
            "--cloudrun-endpoint `run.example.com` is not a URL",
        ),
    ] {
        let out = std::process::Command::new(rouse_tests::rouse_bin())
            .arg("server")
            .arg("--data-dir")
            .arg(data.path())
            .args(&args)
            .env("XDG_CONFIG_HOME", data.path().join("config"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run rouse");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
