//! The contract of the builder's traits: triggers and webhook deliveries,
//! builds and their logs, built revisions and routing, readiness trials and
//! secrets.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use rouse_core::Service;
use rouse_core::build::{BuildStatus, RevisionState};
use rouse_core::revision::{DeliveryMode, RevisionSource};
use rouse_store::{
    BuildOrigin, BuildRecord, BuildStore, DeliveryClaim, NewRevision, RevisionStore, RolloutStore,
    SecretStore, Store, StoreError, TrialStore, TriggerRecord, TriggerStore,
};
use uuid::Uuid;

use crate::{Fixture, contract, micros, service};

contract!(
    a_cancel_request_reaches_only_an_unfinished_build,
    a_trial_is_claimed_once_and_its_verdict_is_final,
    triggers_builds_logs_and_deliveries_round_trip,
    candidates_do_not_serve_until_routed,
    secrets_keep_names_and_sealed_values,
    writes_for_an_unknown_service_are_refused,
    builds_list_newest_first_and_filter,
    long_log_lines_are_cut,
    concurrent_claims_of_a_trial_exactly_one_wins,
    concurrent_claims_of_a_delivery_exactly_one_is_new,
    concurrent_log_appends_keep_every_line,
    concurrent_candidates_get_distinct_seqs,
    concurrent_secret_writes_each_bump_the_generation,
);

pub(crate) fn image(i: &str) -> NewRevision {
    NewRevision {
        source: RevisionSource::Image(i.into()),
        mode: DeliveryMode::Server,
        probe_path: None,
        // A built revision that speaks h2c keeps saying so.
        http2: true,
    }
}

pub(crate) fn build(id: &str, service: Uuid) -> BuildRecord {
    BuildRecord {
        id: id.into(),
        service_uuid: service,
        trigger_id: Some("t1".into()),
        status: BuildStatus::Queued,
        step: None,
        source: "file:///repo".into(),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        branch: Some("main".into()),
        revision: None,
        image: None,
        failure: None,
        last_lines: Vec::new(),
        created_at: SystemTime::now(),
        started_at: None,
        finished_at: None,
        dockerfile: None,
        cancel_requested: false,
    }
}

fn trigger(id: &str, service: Uuid) -> TriggerRecord {
    TriggerRecord {
        id: id.into(),
        service_uuid: service,
        repo: "file:///repo".into(),
        branch_pattern: "^main$".into(),
        tag_pattern: None,
        dockerfile: Some("Dockerfile".into()),
        context_dir: None,
        included_files: vec!["src/**".into()],
        ignored_files: Vec::new(),
        webhook_secret_sealed: "sealed".into(),
        github_token_sealed: None,
        // As stored: to the microsecond.
        created_at: SystemTime::UNIX_EPOCH
            + Duration::from_micros(u64::try_from(micros(SystemTime::now())).expect("fits")),
    }
}

async fn generation(store: &impl Store, s: &Service) -> u64 {
    store
        .get_service_by_uuid(s.uuid)
        .await
        .expect("get")
        .expect("present")
        .generation
}

async fn a_cancel_request_reaches_only_an_unfinished_build(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    let mut b = build("b1", s.uuid);
    b.dockerfile = Some("build/Dockerfile".into());
    store.insert_build(&b).await.expect("insert build");
    assert!(store.request_cancel("b1").await.expect("cancel"));
    let got = store.get_build("b1").await.expect("get").expect("exists");
    assert!(got.cancel_requested);
    assert_eq!(got.dockerfile.as_deref(), Some("build/Dockerfile"));
    // A status update does not forget the request.
    store.update_build(&b).await.expect("update");
    assert!(
        store
            .get_build("b1")
            .await
            .expect("get")
            .expect("exists")
            .cancel_requested
    );
    let mut done = got;
    done.status = BuildStatus::Succeeded;
    store.update_build(&done).await.expect("update");
    assert!(!store.request_cancel("b1").await.expect("cancel"), "over");
    assert!(
        !store.request_cancel("nope").await.expect("cancel"),
        "unknown"
    );
}

async fn a_trial_is_claimed_once_and_its_verdict_is_final(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    let origin = BuildOrigin::default();
    let a = store
        .insert_candidate_revision(&s, &image("x"), &origin, SystemTime::now())
        .await
        .expect("candidate");
    let b = store
        .insert_candidate_revision(&s, &image("x"), &origin, SystemTime::now())
        .await
        .expect("candidate");
    let names: Vec<String> = store
        .candidates()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, [a.name.clone(), b.name.clone()]);
    assert!(store.claim_trial(&a.name).await.expect("claim"));
    assert!(
        !store.claim_trial(&a.name).await.expect("claim"),
        "claimed once"
    );
    assert_eq!(store.candidates().await.expect("list").len(), 1);
    assert!(
        store
            .record_trial(&a.name, Err("exited with 3".into()))
            .await
            .expect("record")
    );
    assert_eq!(
        store.trial(&a.name).await.expect("read"),
        Some((RevisionState::Failed, Some("exited with 3".into())))
    );
    assert!(
        !store.record_trial(&a.name, Ok(())).await.expect("record"),
        "final"
    );
    // A revision that passed does not serve by being the newest.
    let c = store
        .insert_candidate_revision(&s, &image("y"), &origin, SystemTime::now())
        .await
        .expect("candidate");
    assert!(store.claim_trial(&c.name).await.expect("claim"));
    assert!(store.record_trial(&c.name, Ok(())).await.expect("record"));
    assert_eq!(
        store.trial(&c.name).await.expect("read").map(|t| t.0),
        Some(RevisionState::Passed)
    );
    assert_eq!(store.serving_revision(s.uuid).await.expect("serving"), None);
    // The builder gave up on b while it was tried: the late verdict is dropped.
    assert!(store.claim_trial(&b.name).await.expect("claim"));
    store
        .set_revision_state(&b.name, RevisionState::Failed)
        .await
        .expect("give up");
    assert!(!store.record_trial(&b.name, Ok(())).await.expect("record"));
    assert_eq!(
        store.trial(&b.name).await.expect("read").map(|t| t.0),
        Some(RevisionState::Failed)
    );
    assert_eq!(store.trial("nope").await.expect("read"), None);
}

async fn triggers_builds_logs_and_deliveries_round_trip(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    let t = trigger("t1", s.uuid);
    store.insert_trigger(&t).await.expect("trigger");
    let dup = store.insert_trigger(&t).await.expect_err("duplicate");
    assert!(
        matches!(
            dup,
            StoreError::Duplicate {
                what: "trigger",
                ..
            }
        ),
        "{dup}"
    );
    assert!(dup.to_string().contains("trigger `t1`"), "{dup}");
    assert_eq!(store.get_trigger("t1").await.expect("get"), Some(t.clone()));
    assert_eq!(
        store.list_triggers(Some(s.uuid)).await.expect("list"),
        std::slice::from_ref(&t)
    );
    let other = service("p", "other");
    store.insert_service(&other).await.expect("insert");
    let t2 = trigger("t2", other.uuid);
    store.insert_trigger(&t2).await.expect("trigger");
    assert_eq!(
        store.list_triggers(None).await.expect("list all"),
        [t.clone(), t2]
    );
    assert!(store.delete_trigger("t2").await.expect("delete"));
    assert!(!store.delete_trigger("t2").await.expect("delete again"));

    assert_eq!(
        store.claim_delivery("d1").await.expect("claim"),
        DeliveryClaim::New
    );
    assert_eq!(
        store.claim_delivery("d1").await.expect("claim"),
        DeliveryClaim::Duplicate
    );

    let mut b = build("b1", s.uuid);
    store.insert_build(&b).await.expect("build");
    b.status = BuildStatus::Failed;
    b.step = Some(BuildStatus::Building);
    b.failure = Some("boom".into());
    b.last_lines = vec!["x".into()];
    store.update_build(&b).await.expect("update");
    let got = store.get_build("b1").await.expect("get").expect("present");
    assert_eq!(got.failure.as_deref(), Some("boom"));
    assert_eq!(got.last_lines, ["x"]);
    assert_eq!(
        (got.status, got.step),
        (BuildStatus::Failed, Some(BuildStatus::Building))
    );
    store
        .insert_build(&build("b2", s.uuid))
        .await
        .expect("build");
    let unfinished = store.list_builds(None, true, 10).await.expect("list");
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].id, "b2");

    let last = store
        .append_build_log("b1", vec!["one".into(), "two".into()])
        .await
        .expect("append");
    assert_eq!(last, 2);
    store
        .append_build_log("b1", vec!["three".into()])
        .await
        .expect("append");
    let after = store.build_log_after("b1", 1, 10).await.expect("read");
    assert_eq!(after, [(2, "two".into()), (3, "three".into())]);
    let first = store.build_log_after("b1", 0, 1).await.expect("read");
    assert_eq!(first, [(1, "one".into())]);

    // Deleting the service deletes its triggers and builds.
    assert!(store.delete_service(s.uuid).await.expect("delete"));
    assert!(store.get_trigger("t1").await.expect("get").is_none());
    assert!(store.get_build("b1").await.expect("get").is_none());
    assert!(
        store
            .build_log_after("b1", 0, 10)
            .await
            .expect("read")
            .is_empty()
    );
}

async fn candidates_do_not_serve_until_routed(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    let first = store
        .insert_revision(&s, &image("a"), SystemTime::now())
        .await
        .expect("first");
    let origin = BuildOrigin {
        commit: Some("abcdef0123456789".into()),
        build_id: Some("b1".into()),
        ..BuildOrigin::default()
    };
    let candidate = store
        .insert_candidate_revision(&s, &image("b"), &origin, SystemTime::now())
        .await
        .expect("candidate");
    assert_eq!(candidate.name, "svc-00002-abcdef0");
    let serving = store.serving_revision(s.uuid).await.expect("serving");
    assert_eq!(serving.map(|r| r.name), Some(first.name.clone()));

    let before = generation(&store, &s).await;
    store
        .set_revision_state(&candidate.name, RevisionState::Ready)
        .await
        .expect("state");
    let mut routing = store.routing(s.uuid).await.expect("routing");
    routing.serving = Some(candidate.name.clone());
    routing.tags.insert("blue".into(), first.name.clone());
    routing.traffic = vec![(candidate.name.clone(), 90), (first.name.clone(), 10)];
    store.set_routing(s.uuid, &routing).await.expect("route");
    assert_eq!(store.routing(s.uuid).await.expect("routing"), routing);
    let serving = store.serving_revision(s.uuid).await.expect("serving");
    assert_eq!(serving.map(|r| r.name), Some(candidate.name.clone()));
    assert!(
        generation(&store, &s).await > before,
        "routing bumps the generation"
    );

    let infos = store.revision_infos(s.uuid).await.expect("infos");
    assert_eq!(infos[0].revision, candidate);
    assert_eq!(infos[0].origin, origin);
    assert_eq!(infos[0].state, RevisionState::Ready);
    assert_eq!(infos[1].revision, first);
    assert_eq!(infos[1].origin, BuildOrigin::default());

    // A revision registered by hand serves at once, as before.
    let third = store
        .insert_revision(&s, &image("c"), SystemTime::now())
        .await
        .expect("third");
    let serving = store.serving_revision(s.uuid).await.expect("serving");
    assert_eq!(serving.map(|r| r.name), Some(third.name));
    assert_eq!(
        store.routing(s.uuid).await.expect("routing").tags["blue"],
        first.name
    );
}

async fn secrets_keep_names_and_sealed_values(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    let now = SystemTime::now();
    let before = generation(&store, &s).await;
    store.set_secret(s.uuid, "B", "sb", now).await.expect("set");
    store.set_secret(s.uuid, "A", "sa", now).await.expect("set");
    store
        .set_secret(s.uuid, "A", "sa2", now)
        .await
        .expect("set");
    // Byte order: upper case before lower case.
    store
        .set_secret(s.uuid, "a", "s_a", now)
        .await
        .expect("set");
    assert_eq!(
        store.secret_names(s.uuid).await.expect("names"),
        ["A", "B", "a"]
    );
    assert_eq!(
        store.sealed_secrets(s.uuid).await.expect("sealed"),
        [
            ("A".into(), "sa2".into()),
            ("B".into(), "sb".into()),
            ("a".into(), "s_a".into())
        ]
    );
    assert_eq!(
        generation(&store, &s).await,
        before + 4,
        "every write bumps the generation"
    );
    assert!(store.delete_secret(s.uuid, "A").await.expect("delete"));
    assert!(!store.delete_secret(s.uuid, "A").await.expect("delete"));
    assert_eq!(generation(&store, &s).await, before + 5);
}

async fn writes_for_an_unknown_service_are_refused(f: &impl Fixture) {
    let store = f.open().await;
    let ghost = service("p", "ghost");
    let not_found = |r: Result<_, StoreError>| {
        assert!(
            matches!(r, Err(StoreError::NotFound { uuid }) if uuid == ghost.uuid),
            "{r:?}"
        );
    };
    not_found(store.insert_trigger(&trigger("t1", ghost.uuid)).await);
    not_found(store.insert_build(&build("b1", ghost.uuid)).await);
    not_found(
        store
            .set_secret(ghost.uuid, "A", "sa", SystemTime::now())
            .await,
    );
    not_found(store.set_routing(ghost.uuid, &Default::default()).await);
    not_found(
        store
            .insert_candidate_revision(
                &ghost,
                &image("x"),
                &BuildOrigin::default(),
                SystemTime::now(),
            )
            .await
            .map(drop),
    );
    assert_eq!(
        store.routing(ghost.uuid).await.expect("routing"),
        Default::default()
    );
}

async fn builds_list_newest_first_and_filter(f: &impl Fixture) {
    let store = f.open().await;
    let (a, b) = (service("p", "a"), service("p", "b"));
    store.insert_service(&a).await.expect("insert");
    store.insert_service(&b).await.expect("insert");
    let t0 = SystemTime::now();
    for (i, (id, svc)) in [("a1", &a), ("b1", &b), ("a2", &a), ("a3", &a)]
        .into_iter()
        .enumerate()
    {
        let mut r = build(id, svc.uuid);
        r.created_at = t0 + Duration::from_secs(i as u64);
        store.insert_build(&r).await.expect("build");
    }
    let mut a2 = store.get_build("a2").await.expect("get").expect("present");
    a2.status = BuildStatus::Cancelled;
    store.update_build(&a2).await.expect("update");
    let ids = |builds: Vec<BuildRecord>| builds.into_iter().map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_builds(None, false, 10).await.expect("list")),
        ["a3", "a2", "b1", "a1"]
    );
    assert_eq!(
        ids(store
            .list_builds(Some(a.uuid), false, 2)
            .await
            .expect("list")),
        ["a3", "a2"]
    );
    assert_eq!(
        ids(store
            .list_builds(Some(a.uuid), true, 10)
            .await
            .expect("list")),
        ["a3", "a1"]
    );
}

async fn long_log_lines_are_cut(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    store
        .insert_build(&build("b1", s.uuid))
        .await
        .expect("build");
    store
        .append_build_log("b1", vec!["é".repeat(5000)])
        .await
        .expect("append");
    let lines = store.build_log_after("b1", 0, 10).await.expect("read");
    // MAX_LOG_LINE_CHARS characters, not bytes.
    assert_eq!(lines[0].1.chars().count(), 4096);
}

async fn concurrent_claims_of_a_trial_exactly_one_wins(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    let candidate = store
        .insert_candidate_revision(&s, &image("x"), &BuildOrigin::default(), SystemTime::now())
        .await
        .expect("candidate");
    // Dispatchers with stores of their own, as separate processes have.
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(f.open().await);
    }
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = stores[i % stores.len()].clone();
        let name = candidate.name.clone();
        tasks.push(tokio::spawn(async move { store.claim_trial(&name).await }));
    }
    let mut won = 0;
    for t in tasks {
        if t.await.expect("join").expect("claim") {
            won += 1;
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        store.trial(&candidate.name).await.expect("read"),
        Some((RevisionState::Trying, None))
    );
}

async fn concurrent_claims_of_a_delivery_exactly_one_is_new(f: &impl Fixture) {
    let store = f.open().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.claim_delivery("delivery-1").await
        }));
    }
    let mut new = 0;
    for t in tasks {
        if t.await.expect("join").expect("claim") == DeliveryClaim::New {
            new += 1;
        }
    }
    assert_eq!(new, 1);
}

async fn concurrent_log_appends_keep_every_line(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    store
        .insert_build(&build("b1", s.uuid))
        .await
        .expect("build");
    let (writers, batches, per_batch) = (4, 5, 3);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut lasts = Vec::new();
            for b in 0..batches {
                let lines = (0..per_batch).map(|l| format!("{w}/{b}/{l}")).collect();
                lasts.push(store.append_build_log("b1", lines).await.expect("append"));
            }
            lasts
        }));
    }
    let mut lasts = BTreeSet::new();
    for t in tasks {
        lasts.extend(t.await.expect("join"));
    }
    let total = writers * batches * per_batch;
    let lines = store.build_log_after("b1", 0, 1000).await.expect("read");
    let seqs: Vec<i64> = lines.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<i64>>());
    let distinct: BTreeSet<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(distinct.len(), lines.len(), "no line twice");
    // Each append's lines are consecutive, ending at the seq it returned.
    assert_eq!(lasts.len(), (writers * batches) as usize);
    for last in lasts {
        let batch = &lines[(last - per_batch) as usize..last as usize];
        let prefix = batch[0].1.rsplit_once('/').expect("w/b/l").0;
        for (i, (_, line)) in batch.iter().enumerate() {
            assert_eq!(*line, format!("{prefix}/{i}"));
        }
    }
}

async fn concurrent_candidates_get_distinct_seqs(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, s) = (store.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            store
                .insert_candidate_revision(
                    &s,
                    &image(&format!("img{i}")),
                    &BuildOrigin::default(),
                    SystemTime::now(),
                )
                .await
        }));
    }
    let mut seqs = BTreeSet::new();
    for t in tasks {
        seqs.insert(t.await.expect("join").expect("candidate").seq);
    }
    assert_eq!(seqs, (1..=8).collect());
    assert_eq!(store.candidates().await.expect("list").len(), 8);
}

async fn concurrent_secret_writes_each_bump_the_generation(f: &impl Fixture) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    let before = generation(&store, &s).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (store, uuid) = (store.clone(), s.uuid);
        tasks.push(tokio::spawn(async move {
            store
                .set_secret(uuid, &format!("S{i}"), "sealed", SystemTime::now())
                .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("set");
    }
    assert_eq!(generation(&store, &s).await, before + 10);
    assert_eq!(store.secret_names(s.uuid).await.expect("names").len(), 10);
}
