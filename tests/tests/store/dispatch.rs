//! The contract of the dispatcher's traits: revisions, executions (one per
//! question and retry, whichever process records it first), the event store
//! and its outbox.

use std::time::SystemTime;

use rouse_core::protocol::Attributes;
use rouse_core::revision::{DeliveryMode, Execution, ExecutionStatus, RevisionSource};
use rouse_core::{Service, ServiceStatus};
use rouse_store::{EventStore, ExecutionStore, NewEvent, NewRevision, RevisionStore, Store};
use uuid::Uuid;

use crate::{Fixture, contract, service};

contract!(
    revisions_are_numbered_and_make_the_service_ready,
    concurrent_revisions_get_distinct_numbers,
    executions_are_recorded_once_per_question_and_retry,
    racing_intakes_record_a_question_once,
    events_are_deduplicated_by_uuid_and_followed_by_id,
    claiming_fences_the_previous_dispatcher_out,
    a_services_unpublished_answers_are_found_for_its_next_holder,
    a_late_waking_write_never_puts_an_execution_back,
);

async fn with_service<F: Fixture>(f: &F) -> (F::S, Service) {
    let store = f.open().await;
    let s = service("p", "svc");
    store.insert_service(&s).await.expect("insert");
    (store, s)
}

fn execution(service: Uuid, q: &str, retry: u32) -> Execution {
    Execution {
        question_uuid: q.into(),
        retry_count: retry,
        service_uuid: service,
        status: ExecutionStatus::Queued,
        revision: None,
        instance: None,
        cold_start: None,
        reason: None,
        attributes: [("question_uuid".to_owned(), q.to_owned())].into(),
        data: br#"{"kind":"question"}"#.to_vec(),
        received_at: SystemTime::now(),
        ready_at: None,
        delivered_at: None,
        finished_at: None,
        asked_by: None,
        dispatcher: None,
    }
}

/// The dispatcher records `waking` without waiting for it; landing after
/// the execution was delivered or finished, it must change nothing (on
/// PostgreSQL such a write once left a finished execution `waking`).
async fn a_late_waking_write_never_puts_an_execution_back(f: &impl Fixture) {
    let (store, s) = with_service(f).await;
    let mut e = execution(s.uuid, "qw", 0);
    assert!(store.insert_execution(&e).await.expect("insert"));
    let mut waking = e.clone();
    waking.status = ExecutionStatus::Waking;
    waking.cold_start = Some(true);
    store
        .update_execution(&waking, None)
        .await
        .expect("queued → waking");
    store
        .update_execution(&waking, None)
        .await
        .expect("waking again");
    e.status = ExecutionStatus::Succeeded;
    e.cold_start = Some(true);
    e.finished_at = Some(SystemTime::now());
    store
        .update_execution(&e, Some(&event("ev-w", "qw", "result")))
        .await
        .expect("finished");
    let late = store.update_execution(&waking, None).await;
    assert!(
        matches!(late, Err(rouse_store::StoreError::Fenced { .. })),
        "{late:?}"
    );
    let read = store
        .get_execution("qw")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(read.status, ExecutionStatus::Succeeded);
    // Put back in the queue (an undelivered question), it may wake again.
    e.status = ExecutionStatus::Queued;
    e.finished_at = None;
    store.update_execution(&e, None).await.expect("requeued");
    store
        .update_execution(&waking, None)
        .await
        .expect("waking again");
}

fn event(uuid: &str, q: &str, kind: &str) -> NewEvent {
    NewEvent {
        event_uuid: uuid.into(),
        question_uuid: q.into(),
        retry_count: Some(0),
        kind: kind.into(),
        attributes: Attributes::new(),
        data: format!(r#"{{"kind":"{kind}"}}"#).into_bytes(),
    }
}

fn command() -> NewRevision {
    NewRevision {
        source: RevisionSource::Command {
            program: "python3".into(),
            args: vec!["service.py".into()],
            workdir: "/srv".into(),
        },
        mode: DeliveryMode::Server,
        probe_path: Some("/healthz".into()),
        http2: true,
    }
}

async fn revisions_are_numbered_and_make_the_service_ready(f: &impl Fixture) {
    let (store, s) = with_service(f).await;
    let new = command();
    assert!(
        store
            .serving_revision(s.uuid)
            .await
            .expect("none yet")
            .is_none()
    );
    let r1 = store
        .insert_revision(&s, &new, SystemTime::now())
        .await
        .expect("r1");
    let r2 = store
        .insert_revision(
            &s,
            &NewRevision {
                source: RevisionSource::Image("rouse/echo:latest".into()),
                ..new.clone()
            },
            SystemTime::now(),
        )
        .await
        .expect("r2");
    assert_eq!(
        (r1.name.as_str(), r2.name.as_str()),
        ("svc-00001", "svc-00002")
    );
    let list = store.list_revisions(s.uuid).await.expect("list");
    assert_eq!(list, vec![r2.clone(), r1], "newest first, round-tripped");
    assert_eq!(
        store.serving_revision(s.uuid).await.expect("serving"),
        Some(r2),
        "a revision registered by hand serves at once"
    );
    let svc = store
        .get_service(&s.project, &s.name)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(svc.status, ServiceStatus::Ready);
    assert_eq!(svc.generation, s.generation + 2);
    let gone = service("p", "gone");
    let err = store
        .insert_revision(&gone, &new, SystemTime::now())
        .await
        .expect_err("no such service");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// Two api replicas registering revisions of one service at once: each
/// gets its own number.
async fn concurrent_revisions_get_distinct_numbers(f: &impl Fixture) {
    let (store, s) = with_service(f).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, s) = (store.clone(), s.clone());
            tokio::spawn(async move {
                store
                    .insert_revision(&s, &command(), SystemTime::now())
                    .await
            })
        })
        .collect();
    let mut names = Vec::new();
    for t in tasks {
        names.push(t.await.expect("join").expect("insert revision").name);
    }
    names.sort();
    let expected: Vec<String> = (1..=8).map(|i| format!("svc-{i:05}")).collect();
    assert_eq!(names, expected);
}

async fn executions_are_recorded_once_per_question_and_retry(f: &impl Fixture) {
    let (store, s) = with_service(f).await;
    assert!(
        store
            .insert_execution(&execution(s.uuid, "q1", 0))
            .await
            .expect("insert")
    );
    assert!(
        !store
            .insert_execution(&execution(s.uuid, "q1", 0))
            .await
            .expect("dup")
    );
    assert!(
        store
            .insert_execution(&Execution {
                asked_by: Some("serviceAccount:a@p.rouse".into()),
                ..execution(s.uuid, "q1", 1)
            })
            .await
            .expect("retry")
    );
    let got = store
        .get_execution("q1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.retry_count, 1, "the latest retry");
    assert_eq!(got.asked_by.as_deref(), Some("serviceAccount:a@p.rouse"));
    assert_eq!(got.data, br#"{"kind":"question"}"#);
    assert_eq!(
        got.attributes.get("question_uuid").map(String::as_str),
        Some("q1")
    );
    assert_eq!(
        store
            .unfinished_executions()
            .await
            .expect("unfinished")
            .len(),
        2
    );

    let mut done = got.clone();
    done.status = ExecutionStatus::Succeeded;
    done.cold_start = Some(true);
    done.instance = Some("svc-00001-a".into());
    done.finished_at = Some(SystemTime::now());
    let id = store
        .update_execution(&done, Some(&event("e1", "q1", "result")))
        .await
        .expect("finish");
    assert!(id.is_some());
    let finished = store
        .get_execution("q1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(finished.status, ExecutionStatus::Succeeded);
    assert_eq!(finished.cold_start, Some(true));
    assert_eq!(finished.instance.as_deref(), Some("svc-00001-a"));
    assert_eq!(
        finished.asked_by.as_deref(),
        Some("serviceAccount:a@p.rouse"),
        "finishing keeps who asked"
    );
    assert_eq!(
        store
            .unfinished_executions()
            .await
            .expect("unfinished")
            .len(),
        1
    );
    let outbox = store.unpublished_events().await.expect("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].kind, "result");
    store.mark_published(id.expect("id")).await.expect("mark");
    assert!(store.unpublished_events().await.expect("outbox").is_empty());
    assert_eq!(
        store
            .terminal_event("q1", 0)
            .await
            .expect("terminal")
            .as_deref(),
        Some("result")
    );
    assert_eq!(store.terminal_event("q1", 1).await.expect("terminal"), None);
    let listed = store
        .list_executions(Some(s.uuid), Some(ExecutionStatus::Succeeded), 10)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        store
            .list_executions(None, None, 10)
            .await
            .expect("list all")
            .len(),
        2
    );
    assert_eq!(
        store
            .list_executions(None, None, 1)
            .await
            .expect("limited")
            .len(),
        1
    );
}

/// Several dispatchers pulling one subscription may receive the same
/// question: exactly one of them records it (and runs it).
async fn racing_intakes_record_a_question_once(f: &impl Fixture) {
    let (store, s) = with_service(f).await;
    let mut tasks = Vec::new();
    for q in 0..20 {
        for _ in 0..3 {
            let store = store.clone();
            let e = execution(s.uuid, &format!("q{q}"), 0);
            tasks.push(tokio::spawn(
                async move { store.insert_execution(&e).await },
            ));
        }
    }
    let mut won = 0;
    for t in tasks {
        if t.await.expect("join").expect("insert") {
            won += 1;
        }
    }
    assert_eq!(won, 20, "one winner per question");
    assert_eq!(
        store
            .unfinished_executions()
            .await
            .expect("unfinished")
            .len(),
        20
    );
}

async fn events_are_deduplicated_by_uuid_and_followed_by_id(f: &impl Fixture) {
    let (store, _s) = with_service(f).await;
    let a = store
        .record_event(&event("e1", "q", "heartbeat"), true)
        .await
        .expect("a");
    assert!(
        store
            .record_event(&event("e1", "q", "heartbeat"), true)
            .await
            .expect("dup")
            .is_none()
    );
    let b = store
        .record_event(&event("e2", "q", "result"), true)
        .await
        .expect("b");
    let all = store.events_after("q", 0).await.expect("all");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|e| e.published));
    assert_eq!(all[1].data, br#"{"kind":"result"}"#);
    let after_a = store
        .events_after("q", a.expect("id"))
        .await
        .expect("after");
    assert_eq!(after_a.len(), 1);
    assert_eq!(Some(after_a[0].id), b);
    assert!(store.unpublished_events().await.expect("outbox").is_empty());
    store
        .dead_letter("test", "bad", &Attributes::new(), b"x")
        .await
        .expect("dead letter");
}

/// Several dispatchers: the holder of a service claims its unfinished
/// executions (recorded by another dispatcher, or none); from then on only
/// the claimant may update them, so the one it took over from can neither
/// record a delivery nor an answer.
async fn claiming_fences_the_previous_dispatcher_out(f: &impl Fixture) {
    let (store, s) = with_service(f).await;
    let other = service("p", "other");
    store.insert_service(&other).await.expect("insert");
    let mut by_a = execution(s.uuid, "qa", 0);
    by_a.dispatcher = Some("a".into());
    let unclaimed = execution(s.uuid, "qn", 0);
    let mut done = execution(s.uuid, "qd", 0);
    done.dispatcher = Some("a".into());
    done.status = ExecutionStatus::Succeeded;
    let elsewhere = execution(other.uuid, "qo", 0);
    for e in [&by_a, &unclaimed, &done, &elsewhere] {
        assert!(store.insert_execution(e).await.expect("insert"));
    }
    // a records a delivery: its own execution.
    by_a.status = ExecutionStatus::Running;
    by_a.delivered_at = Some(SystemTime::now());
    store.update_execution(&by_a, None).await.expect("a's own");

    let claimed = store.claim_executions(&[s.uuid], "b").await.expect("claim");
    let mut names: Vec<_> = claimed.iter().map(|e| e.question_uuid.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["qa", "qn"], "unfinished ones of the service only");
    let qa = claimed
        .iter()
        .find(|e| e.question_uuid == "qa")
        .expect("qa");
    assert_eq!(qa.dispatcher.as_deref(), Some("b"));
    assert!(
        qa.delivered_at.is_some(),
        "the claimant sees it was delivered"
    );
    assert!(
        store
            .claim_executions(&[s.uuid], "b")
            .await
            .expect("again")
            .is_empty(),
        "what b holds is not claimed twice"
    );

    // a's answer is refused, and records no event.
    by_a.status = ExecutionStatus::Succeeded;
    let answer = event("ev-a", "qa", "result");
    match store.update_execution(&by_a, Some(&answer)).await {
        Err(rouse_store::StoreError::Fenced { question_uuid, .. }) => {
            assert_eq!(question_uuid, "qa")
        }
        other => panic!("a's write after the claim: {other:?}"),
    }
    assert_eq!(
        store.terminal_event("qa", 0).await.expect("events"),
        None,
        "no answer recorded for a"
    );
    // b's is taken.
    let mut by_b = qa.clone();
    by_b.status = ExecutionStatus::Succeeded;
    let id = store
        .update_execution(&by_b, Some(&event("ev-b", "qa", "result")))
        .await
        .expect("b's own");
    assert!(id.is_some());
    assert_eq!(
        store
            .get_execution("qa")
            .await
            .expect("get")
            .map(|e| e.status),
        Some(ExecutionStatus::Succeeded)
    );
}

/// A dispatcher killed between recording an answer and publishing it left
/// it in the outbox: the one taking its services over finds it there, and
/// only the answers to those services (another live dispatcher publishes
/// its own).
async fn a_services_unpublished_answers_are_found_for_its_next_holder(f: &impl Fixture) {
    let (store, s) = with_service(f).await;
    let other = service("p", "other");
    store.insert_service(&other).await.expect("insert");
    let mut ids = Vec::new();
    for (service, q, retry, published) in [
        (s.uuid, "q1", 0, false),
        (s.uuid, "q1", 1, true),
        (s.uuid, "q2", 0, false),
        (other.uuid, "q3", 0, false),
    ] {
        let mut e = execution(service, q, retry);
        e.dispatcher = Some("a".into());
        assert!(store.insert_execution(&e).await.expect("insert"));
        e.status = ExecutionStatus::Succeeded;
        e.finished_at = Some(SystemTime::now());
        let mut answer = event(&format!("{q}-{retry}"), q, "result");
        answer.retry_count = Some(retry);
        let id = store
            .update_execution(&e, Some(&answer))
            .await
            .expect("finish")
            .expect("an event id");
        if published {
            store.mark_published(id).await.expect("mark");
        }
        ids.push(id);
    }
    // An event of a question no execution records (a reply seen on the
    // network topic) is nobody's to publish.
    store
        .record_event(&event("stray", "q-none", "result"), false)
        .await
        .expect("stray");
    let left = store.unpublished_events_of(&[s.uuid]).await.expect("left");
    let got: Vec<i64> = left.iter().map(|e| e.id).collect();
    assert_eq!(got, [ids[0], ids[2]], "q1 retry 0 and q2, oldest first");
    assert_eq!(left[0].question_uuid, "q1");
    assert_eq!(left[0].kind, "result");
    assert!(
        store
            .unpublished_events_of(&[])
            .await
            .expect("none")
            .is_empty()
    );
    let both = store
        .unpublished_events_of(&[s.uuid, other.uuid])
        .await
        .expect("both");
    assert_eq!(both.len(), 3);
    store.mark_published(ids[0]).await.expect("mark");
    assert_eq!(
        store
            .unpublished_events_of(&[s.uuid])
            .await
            .expect("after")
            .len(),
        1
    );
}
