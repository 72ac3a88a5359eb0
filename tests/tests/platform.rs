//! The platform in this process (the middle of the test pyramid): the
//! dispatcher's readiness trials of built revisions, driven through the
//! store exactly as a builder in another process drives them. Revisions run
//! on the process runtime, so no Docker engine is needed.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use rouse_core::build::RevisionState;
use rouse_core::revision::{DeliveryMode, RevisionSource};
use rouse_store::{BuildOrigin, NewRevision, RolloutStore, SqliteStore, Store};
use rouse_tests::platform::InProcess;
use rouse_tests::{Emulator, workspace_bin};

/// Waits for the verdict of `name`'s trial.
async fn verdict(store: &SqliteStore, name: &str) -> (RevisionState, Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let trial = store.trial(name).await.expect("read").expect("exists");
        if matches!(trial.0, RevisionState::Passed | RevisionState::Failed) {
            return trial;
        }
        assert!(
            Instant::now() < deadline,
            "no verdict for {name}: {trial:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn candidates_are_tried_by_the_dispatcher_through_the_store() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let platform = InProcess::start(&emulator, data.path()).await;
    platform
        .rouse(&["services", "create", "echo", "--project", "p"])
        .await
        .ok();
    // What a builder in another process would do: record candidates.
    let store = SqliteStore::open(platform.store_path()).expect("the store");
    let project = rouse_core::ProjectName::parse("p").expect("project");
    let name = rouse_core::ServiceName::parse(&project, "echo").expect("name");
    let service = store
        .get_service(&project, &name)
        .await
        .expect("read")
        .expect("the service");
    let candidate = |program: PathBuf, args: Vec<String>| NewRevision {
        source: RevisionSource::Command {
            program: program.display().to_string(),
            args,
            workdir: data.path().to_owned(),
        },
        mode: DeliveryMode::Server,
        probe_path: None,
        http2: false,
    };
    let good = store
        .insert_candidate_revision(
            &service,
            &candidate(workspace_bin("echo"), Vec::new()),
            &BuildOrigin::default(),
            SystemTime::now(),
        )
        .await
        .expect("a candidate");
    let bad = store
        .insert_candidate_revision(
            &service,
            &candidate(
                PathBuf::from("/bin/sh"),
                vec!["-c".into(), "echo no port here; exit 3".into()],
            ),
            &BuildOrigin::default(),
            SystemTime::now(),
        )
        .await
        .expect("a candidate");

    let (state, why) = verdict(&store, &good.name).await;
    assert_eq!(state, RevisionState::Passed, "{why:?}");
    let (state, why) = verdict(&store, &bad.name).await;
    assert_eq!(state, RevisionState::Failed);
    let why = why.expect("a reason");
    assert!(
        why.contains("no port here"),
        "the instance's last lines are kept: {why}"
    );
    // A verdict is final: neither serves until a builder routes to it.
    let revisions = platform
        .rouse(&[
            "revisions",
            "list",
            "echo",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .await
        .json();
    assert!(
        revisions
            .as_array()
            .expect("a list")
            .iter()
            .all(|r| r["serving"] != true),
        "{revisions}"
    );
    platform.stop().await;
}
