//! The engine's rules, one scenario each, on a fake clock.

use super::*;

const T: &str = "projects/p/topics/topic";
const S: &str = "projects/p/subscriptions/sub";
const DLQ: &str = "projects/p/topics/dead";
const LEASE: Duration = Duration::from_secs(10);

fn engine() -> Engine {
    let mut e = Engine::new(1);
    e.create_topic(pb::Topic {
        name: T.into(),
        ..pb::Topic::default()
    })
    .expect("topic");
    e
}

fn sub(e: &mut Engine, f: impl FnOnce(&mut pb::Subscription), now: Instant) {
    let mut config = pb::Subscription {
        name: S.into(),
        topic: T.into(),
        ..pb::Subscription::default()
    };
    f(&mut config);
    e.create_subscription(config, now).expect("subscription");
}

fn message(key: &str, attrs: &[(&str, &str)]) -> pb::PubsubMessage {
    pb::PubsubMessage {
        data: key.as_bytes().to_vec().into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ordering_key: String::new(),
        ..pb::PubsubMessage::default()
    }
}

fn keyed(key: &str, n: u32) -> pb::PubsubMessage {
    pb::PubsubMessage {
        data: format!("{key}{n}").into_bytes().into(),
        ordering_key: key.into(),
        ..pb::PubsubMessage::default()
    }
}

/// A subscription that dead-letters to `DLQ` after 5 attempts.
fn engine_with_dead_letters(ordered: bool, now: Instant) -> Engine {
    let mut e = engine();
    e.create_topic(pb::Topic {
        name: DLQ.into(),
        ..pb::Topic::default()
    })
    .expect("dead-letter topic");
    sub(
        &mut e,
        |s| {
            s.enable_message_ordering = ordered;
            s.dead_letter_policy = Some(pb::DeadLetterPolicy {
                dead_letter_topic: DLQ.into(),
                max_delivery_attempts: 5,
            });
        },
        now,
    );
    e
}

fn expires_after_a_day(s: &mut pb::Subscription) {
    s.expiration_policy = Some(pb::ExpirationPolicy {
        ttl: Some(proto_duration(MIN_EXPIRY)),
    });
}

fn publish(e: &mut Engine, messages: Vec<pb::PubsubMessage>) {
    let p = e.publish(T, messages, SystemTime::now()).expect("publish");
    e.deliver(&p);
}

fn pull(e: &mut Engine, n: i64, now: Instant) -> Vec<pb::ReceivedMessage> {
    e.pull(S, Receiver::UNARY, n, (0, 0), LEASE, now)
        .expect("pull")
}

fn data(received: &[pb::ReceivedMessage]) -> Vec<String> {
    received
        .iter()
        .map(|r| String::from_utf8_lossy(&r.message.as_ref().expect("message").data).into_owned())
        .collect()
}

fn ids(received: &[pb::ReceivedMessage]) -> Vec<String> {
    received.iter().map(|r| r.ack_id.clone()).collect()
}

#[test]
fn a_filter_decides_at_publish_which_messages_a_subscription_owes() {
    let now = Instant::now();
    let mut e = engine();
    sub(
        &mut e,
        |s| s.filter = r#"attributes.question_uuid = "q1""#.into(),
        now,
    );
    publish(
        &mut e,
        vec![
            message("a", &[("question_uuid", "q1")]),
            message("b", &[("question_uuid", "q2")]),
            message("c", &[]),
        ],
    );
    assert_eq!(data(&pull(&mut e, 10, now)), ["a"]);
    assert_eq!(
        e.subscription(S).expect("sub").backlog(),
        1,
        "only the leased one"
    );
}

#[test]
fn a_bad_filter_is_refused_at_create_time_naming_it() {
    let mut e = engine();
    let err = e
        .create_subscription(
            pb::Subscription {
                name: S.into(),
                topic: T.into(),
                filter: "attributes.x < \"1\"".into(),
                ..pb::Subscription::default()
            },
            Instant::now(),
        )
        .expect_err("unsupported operator");
    assert!(matches!(err, BrokerError::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("attributes.x < \"1\""), "{err}");
    assert!(e.subscription(S).is_err(), "nothing was created");
}

#[test]
fn a_unary_pull_gets_a_keys_next_message_only_after_an_ack() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |s| s.enable_message_ordering = true, now);
    publish(
        &mut e,
        vec![keyed("a", 1), keyed("a", 2), keyed("b", 1), keyed("a", 3)],
    );
    let first = pull(&mut e, 10, now);
    assert_eq!(data(&first), ["a1", "b1"], "one per key");
    assert!(pull(&mut e, 10, now).is_empty(), "a2 waits for a1's ack");
    // b's ack does not release a.
    e.acknowledge(S, &ids(&first[1..]), now).expect("ack b1");
    assert!(pull(&mut e, 10, now).is_empty());
    e.acknowledge(S, &ids(&first[..1]), now).expect("ack a1");
    let second = pull(&mut e, 10, now);
    assert_eq!(data(&second), ["a2"]);
    // A nack redelivers a2 before a3.
    e.modify_ack_deadline(S, &ids(&second), 0, now)
        .expect("nack");
    let again = pull(&mut e, 10, now);
    assert_eq!(data(&again), ["a2"]);
    e.acknowledge(S, &ids(&again), now).expect("ack a2");
    let third = pull(&mut e, 10, now);
    assert_eq!(data(&third), ["a3"]);
    e.acknowledge(S, &ids(&third), now).expect("ack a3");
    assert_eq!(
        e.subscription(S).expect("sub").live_keys(),
        0,
        "a key with nothing outstanding holds no state"
    );
}

#[test]
fn without_ordering_keys_do_not_hold_messages_back() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |_| {}, now);
    publish(&mut e, vec![keyed("a", 1), keyed("a", 2)]);
    assert_eq!(data(&pull(&mut e, 10, now)), ["a1", "a2"]);
    assert_eq!(e.subscription(S).expect("sub").live_keys(), 0);
}

#[test]
fn an_unacknowledged_message_comes_back_after_its_deadline() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |_| {}, now);
    publish(&mut e, vec![message("x", &[])]);
    let first = pull(&mut e, 10, now);
    assert_eq!(first.len(), 1);
    assert!(e.tick(now + LEASE - Duration::from_millis(1)).is_empty());
    assert!(pull(&mut e, 10, now).is_empty(), "still leased");
    // Extending the deadline keeps it leased past the first one.
    e.modify_ack_deadline(S, &ids(&first), 30, now + Duration::from_secs(5))
        .expect("extend");
    e.tick(now + LEASE + Duration::from_secs(1));
    assert!(pull(&mut e, 10, now).is_empty(), "the extension holds");
    let writes = e.tick(now + Duration::from_secs(36));
    assert!(
        writes
            .iter()
            .any(|w| matches!(w, Write::Attempts { attempts: 1, .. })),
        "{writes:?}"
    );
    let again = pull(&mut e, 10, now + Duration::from_secs(36));
    assert_eq!(data(&again), ["x"]);
    assert_ne!(
        again[0].ack_id, first[0].ack_id,
        "a new ack id per delivery"
    );
    assert_eq!(
        again[0].delivery_attempt, 0,
        "set only with a dead-letter policy"
    );
}

#[test]
fn a_retry_policy_delays_redelivery_exponentially() {
    let now = Instant::now();
    let mut e = engine();
    sub(
        &mut e,
        |s| {
            s.retry_policy = Some(pb::RetryPolicy {
                minimum_backoff: Some(proto_duration(Duration::from_secs(1))),
                maximum_backoff: Some(proto_duration(Duration::from_secs(3))),
            });
        },
        now,
    );
    publish(&mut e, vec![message("x", &[])]);
    let mut t = now;
    for wait in [1, 2, 3, 3] {
        let got = pull(&mut e, 1, t);
        assert_eq!(got.len(), 1, "delivered at {:?}", t - now);
        e.modify_ack_deadline(S, &ids(&got), 0, t).expect("nack");
        e.tick(t + Duration::from_millis(wait * 1000 - 1));
        assert!(pull(&mut e, 1, t).is_empty(), "backing off {wait}s");
        t += Duration::from_secs(wait);
        e.tick(t);
    }
}

#[test]
fn after_max_attempts_a_message_goes_to_the_dead_letter_topic() {
    let now = Instant::now();
    let mut e = engine_with_dead_letters(false, now);
    publish(&mut e, vec![message("x", &[("k", "v")])]);
    for attempt in 1..=5 {
        let got = pull(&mut e, 1, now);
        assert_eq!(got[0].delivery_attempt, attempt, "deliveryAttempt counts");
        let writes = e.modify_ack_deadline(S, &ids(&got), 0, now).expect("nack");
        if attempt == 5 {
            assert!(
                matches!(&writes[..], [Write::DeadLetter { topic, attempts: 5, .. }] if topic == DLQ),
                "{writes:?}"
            );
        }
    }
    assert!(
        pull(&mut e, 1, now).is_empty(),
        "gone from the subscription"
    );
}

#[test]
fn a_dead_letter_policy_needs_an_existing_topic_and_sane_attempts() {
    let mut e = engine();
    let make = |topic: &str, attempts: i32| pb::Subscription {
        name: S.into(),
        topic: T.into(),
        dead_letter_policy: Some(pb::DeadLetterPolicy {
            dead_letter_topic: topic.into(),
            max_delivery_attempts: attempts,
        }),
        ..pb::Subscription::default()
    };
    let now = Instant::now();
    assert!(matches!(
        e.create_subscription(make(DLQ, 5), now),
        Err(BrokerError::NotFound { .. })
    ));
    e.create_topic(pb::Topic {
        name: DLQ.into(),
        ..pb::Topic::default()
    })
    .expect("dlq");
    let err = e
        .create_subscription(make(DLQ, 3), now)
        .expect_err("too few attempts");
    assert!(err.to_string().contains("5 to 100"), "{err}");
    let made = e.create_subscription(make(DLQ, 0), now).expect("default");
    assert_eq!(
        made.dead_letter_policy.map(|p| p.max_delivery_attempts),
        Some(5)
    );
}

#[test]
fn seek_back_over_retained_messages_owes_them_again() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |s| s.retain_acked_messages = true, now);
    let before = SystemTime::now() - Duration::from_secs(60);
    publish(&mut e, vec![message("x", &[]), message("y", &[])]);
    let got = pull(&mut e, 10, now);
    e.acknowledge(S, &ids(&got), now).expect("ack");
    assert!(pull(&mut e, 10, now).is_empty());
    e.seek(S, before, now).expect("seek back");
    assert_eq!(data(&pull(&mut e, 10, now)), ["x", "y"]);
    // Seeking forward acknowledges everything published before.
    e.seek(S, SystemTime::now() + Duration::from_secs(60), now)
        .expect("seek forward");
    assert!(pull(&mut e, 10, now).is_empty());
}

#[test]
fn a_stream_gets_no_more_than_its_outstanding_limit() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |_| {}, now);
    publish(
        &mut e,
        (0..5).map(|i| message(&i.to_string(), &[])).collect(),
    );
    let got = e
        .pull(S, Receiver::stream(7), 10, (2, 0), LEASE, now)
        .expect("pull");
    assert_eq!(got.len(), 2);
    assert!(
        e.pull(S, Receiver::stream(7), 10, (2, 0), LEASE, now)
            .expect("pull")
            .is_empty()
    );
    // Another stream has its own account.
    assert_eq!(
        e.pull(S, Receiver::stream(8), 10, (2, 0), LEASE, now)
            .expect("pull")
            .len(),
        2
    );
    e.acknowledge(S, &ids(&got[..1]), now).expect("ack");
    assert_eq!(
        e.pull(S, Receiver::stream(7), 10, (2, 0), LEASE, now)
            .expect("pull")
            .len(),
        1
    );
}

#[test]
fn malformed_ack_ids_are_refused_and_stale_ones_ignored() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |_| {}, now);
    let err = e
        .acknowledge(S, &["nonsense".into()], now)
        .expect_err("malformed");
    assert!(err.to_string().contains("`nonsense`"), "{err}");
    assert!(
        e.acknowledge(S, &["99-1".into()], now)
            .expect("unknown but well formed")
            .is_empty()
    );
}

#[test]
fn settings_are_checked_and_defaulted_as_google_does() {
    let now = Instant::now();
    let mut e = engine();
    let err = e
        .create_subscription(
            pb::Subscription {
                name: S.into(),
                topic: T.into(),
                ack_deadline_seconds: 700,
                ..pb::Subscription::default()
            },
            now,
        )
        .expect_err("deadline");
    assert!(err.to_string().contains("700"), "{err}");
    let made = e
        .create_subscription(
            pb::Subscription {
                name: S.into(),
                topic: T.into(),
                ..pb::Subscription::default()
            },
            now,
        )
        .expect("defaults");
    assert_eq!(made.ack_deadline_seconds, 10);
    assert_eq!(
        made.message_retention_duration,
        Some(proto_duration(DEFAULT_RETENTION))
    );
    assert!(matches!(
        e.create_subscription(made.clone(), now),
        Err(BrokerError::AlreadyExists { .. })
    ));
    let missing = pb::Subscription {
        name: "projects/p/subscriptions/other".into(),
        topic: "projects/p/topics/nope".into(),
        ..pb::Subscription::default()
    };
    assert!(matches!(
        e.create_subscription(missing, now),
        Err(BrokerError::NotFound { .. })
    ));
}

#[test]
fn deleting_a_topic_leaves_its_subscriptions_detached_from_it() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |_| {}, now);
    let changed = e.delete_topic(T).expect("delete");
    assert_eq!(changed[0].topic, DELETED_TOPIC);
    assert_eq!(e.subscription(S).expect("kept").config.topic, DELETED_TOPIC);
    assert!(
        e.publish(T, vec![message("x", &[])], SystemTime::now())
            .is_err()
    );
}

#[test]
fn an_idle_subscription_expires_after_its_ttl() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, expires_after_a_day, now);
    e.touch(S, now + Duration::from_secs(3600));
    assert!(e.tick(now + MIN_EXPIRY).is_empty(), "active an hour in");
    let writes = e.tick(now + MIN_EXPIRY + Duration::from_secs(3601));
    assert!(
        matches!(&writes[..], [Write::SubscriptionExpired { .. }]),
        "{writes:?}"
    );
    assert!(e.subscription(S).is_err());
}

#[test]
fn a_hundred_thousand_ordering_keys_leave_no_state_behind() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |s| s.enable_message_ordering = true, now);
    for batch in 0..100 {
        publish(
            &mut e,
            (0..1000)
                .map(|i| keyed(&format!("k{batch}-{i}"), 0))
                .collect(),
        );
        let got = pull(&mut e, 1000, now);
        assert_eq!(got.len(), 1000);
        e.acknowledge(S, &ids(&got), now).expect("ack");
    }
    let s = e.subscription(S).expect("sub");
    assert_eq!((s.live_keys(), s.backlog()), (0, 0));
}

#[test]
fn a_subscription_with_a_stream_connected_does_not_expire() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, expires_after_a_day, now);
    // A streaming pull connects and waits: nothing is published for days.
    assert!(
        e.pull(S, Receiver::stream(7), 10, (0, 0), LEASE, now)
            .expect("pull")
            .is_empty()
    );
    e.tick(now + MIN_EXPIRY / 2);
    assert!(e.tick(now + MIN_EXPIRY * 3).is_empty(), "in use, not idle");
    e.stream_closed(S, 7);
    e.tick(now + MIN_EXPIRY * 4);
    let writes = e.tick(now + MIN_EXPIRY * 5 + Duration::from_secs(1));
    assert!(
        matches!(&writes[..], [Write::SubscriptionExpired { .. }]),
        "{writes:?}"
    );
}

fn stream_pull(e: &mut Engine, stream: u64, now: Instant) -> Vec<pb::ReceivedMessage> {
    e.pull(S, Receiver::stream(stream), 100, (0, 0), LEASE, now)
        .expect("pull")
}

#[test]
fn a_stream_gets_a_keys_messages_in_order_without_waiting_for_acks() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |s| s.enable_message_ordering = true, now);
    publish(&mut e, vec![keyed("a", 1), keyed("a", 2), keyed("b", 1)]);
    assert_eq!(data(&stream_pull(&mut e, 7, now)), ["a1", "a2", "b1"]);
    // Published while a1 and a2 are outstanding: to the stream holding a,
    // never to another one.
    publish(&mut e, vec![keyed("a", 3), keyed("c", 1)]);
    assert_eq!(data(&stream_pull(&mut e, 8, now)), ["c1"]);
    let more = stream_pull(&mut e, 7, now);
    assert_eq!(data(&more), ["a3"]);
    // Unary pulls do not get a held key either.
    publish(&mut e, vec![keyed("a", 4)]);
    assert!(pull(&mut e, 10, now).is_empty());
    assert_eq!(data(&stream_pull(&mut e, 7, now)), ["a4"]);
}

#[test]
fn a_nack_redelivers_the_message_and_every_later_one_of_its_key() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |s| s.enable_message_ordering = true, now);
    publish(&mut e, (1..=4).map(|n| keyed("a", n)).collect::<Vec<_>>());
    let got = stream_pull(&mut e, 7, now);
    assert_eq!(data(&got), ["a1", "a2", "a3", "a4"]);
    e.acknowledge(S, &ids(&got[..1]), now).expect("ack a1");
    e.modify_ack_deadline(S, &ids(&got[1..2]), 0, now)
        .expect("nack a2");
    // a3 and a4 come back too, behind a2; a1 stays acknowledged.
    let again = stream_pull(&mut e, 8, now);
    assert_eq!(data(&again), ["a2", "a3", "a4"]);
    // Their attempts: a2 failed once, a3 and a4 did not.
    assert_eq!(ids(&again), ["2-2", "3-1", "4-1"]);
    e.acknowledge(S, &ids(&again), now).expect("ack");
    let s = e.subscription(S).expect("sub");
    assert_eq!((s.live_keys(), s.backlog()), (0, 0));
}

#[test]
fn an_expired_lease_brings_back_the_key_from_where_it_failed() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |s| s.enable_message_ordering = true, now);
    publish(&mut e, vec![keyed("a", 1), keyed("a", 2), keyed("a", 3)]);
    let got = stream_pull(&mut e, 7, now);
    e.acknowledge(S, &ids(&got[..1]), now).expect("ack a1");
    e.tick(now + LEASE + Duration::from_millis(1));
    assert_eq!(data(&stream_pull(&mut e, 8, now + LEASE * 2)), ["a2", "a3"]);
}

#[test]
fn a_closed_stream_gives_back_what_was_queued_for_it() {
    let now = Instant::now();
    let mut e = engine();
    sub(&mut e, |s| s.enable_message_ordering = true, now);
    publish(&mut e, vec![keyed("a", 1), keyed("b", 1)]);
    // A stream with room for one message holds a; a2 is queued for it.
    let got = e
        .pull(S, Receiver::stream(7), 10, (1, 0), LEASE, now)
        .expect("pull");
    assert_eq!(data(&got), ["a1"]);
    publish(&mut e, vec![keyed("a", 2)]);
    e.stream_closed(S, 7);
    // b was never taken; a2 waits until a1 is acknowledged (it may still
    // be, through another connection).
    assert_eq!(data(&stream_pull(&mut e, 8, now)), ["b1"]);
    e.acknowledge(S, &ids(&got), now).expect("ack a1");
    assert_eq!(data(&stream_pull(&mut e, 8, now)), ["a2"]);
}

#[test]
fn a_dead_lettered_message_lets_its_key_go_on() {
    let now = Instant::now();
    let mut e = engine_with_dead_letters(true, now);
    publish(&mut e, vec![keyed("a", 1), keyed("a", 2)]);
    let mut dead = Vec::new();
    for attempt in 1..=5 {
        let got = stream_pull(&mut e, 7, now);
        assert_eq!(data(&got), ["a1", "a2"], "attempt {attempt}");
        dead = e
            .modify_ack_deadline(S, &ids(&got[..1]), 0, now)
            .expect("nack");
    }
    assert!(
        dead.iter()
            .any(|w| matches!(w, Write::DeadLetter { attempts: 5, .. })),
        "{dead:?}"
    );
    let rest = stream_pull(&mut e, 7, now);
    assert_eq!(data(&rest), ["a2"]);
    assert_eq!(
        ids(&rest),
        ["2-1"],
        "a2's deliveries behind a1 were not counted"
    );
}
