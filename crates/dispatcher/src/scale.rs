//! The scaling decision: a pure function of desired state (the service's
//! scaling settings), observed state (queued questions, instances and their
//! load) and the time. The worker applies what it returns and calls it again
//! whenever something changes, or at the returned `wake_at`: scale to zero is
//! just one of its transitions.

use rouse_core::Scaling;
use rouse_core::revision::DeliveryMode;
use tokio::time::Instant;

/// What the worker sees of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceView {
    pub id: u64,
    /// Passed its readiness check.
    pub ready: bool,
    /// Questions delivered to it and not finished.
    pub in_flight: u32,
    /// When it last became idle (`in_flight` reached 0), if it is idle.
    pub idle_since: Option<Instant>,
    /// When it was frozen, if it is (then it is not `ready`).
    pub frozen_since: Option<Instant>,
}

/// What the worker should do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Instances to start (server mode) or jobs to launch (job mode).
    pub start: u32,
    /// Instances to stop.
    pub stop: Vec<u64>,
    /// Idle instances to freeze (the service freezes rather than stops).
    pub freeze: Vec<u64>,
    /// Frozen instances to thaw for the work, before any is started.
    pub thaw: Vec<u64>,
    /// When to decide again if nothing else happens first (an idle timeout).
    pub wake_at: Option<Instant>,
}

/// Decides how many instances to start and which to stop, freeze or thaw.
///
/// Server mode: enough instances for the work (`ceil((queued + in flight) /
/// concurrency)`), never fewer than `min_instances` nor more than
/// `max_instances`; frozen instances are thawed for it (the most recently
/// frozen first) before any is started; an instance idle for
/// `idle_timeout` is stopped, or frozen when the service freezes, unless
/// that would go below what is needed; a frozen instance is stopped after
/// `frozen_timeout` (at once if the service no longer freezes); instances
/// above `max_instances` (after the maximum was lowered) are stopped at
/// once.
///
/// Job mode: one instance per queued question, at most `max_instances` at
/// once; jobs stop themselves.
pub fn decide(
    scaling: &Scaling,
    mode: DeliveryMode,
    queued: usize,
    instances: &[InstanceView],
    now: Instant,
) -> Decision {
    let live = u32::try_from(instances.len()).unwrap_or(u32::MAX);
    let queued = u32::try_from(queued).unwrap_or(u32::MAX);
    if mode == DeliveryMode::Job {
        return Decision {
            start: queued.min(scaling.max_instances.saturating_sub(live)),
            ..Decision::default()
        };
    }
    let concurrency = scaling.concurrency.max(1);
    let in_flight: u32 = instances.iter().map(|i| i.in_flight).sum();
    let needed = (queued.saturating_add(in_flight)).div_ceil(concurrency);
    let desired = needed.clamp(
        scaling.min_instances,
        scaling.max_instances.max(scaling.min_instances),
    );
    // Frozen instances, the most recently frozen (the warmest) first.
    let mut frozen: Vec<(Instant, u64)> = instances
        .iter()
        .filter_map(|i| i.frozen_since.map(|t| (t, i.id)))
        .collect();
    frozen.sort_unstable_by(|a, b| b.cmp(a));
    let active = live.saturating_sub(u32::try_from(frozen.len()).unwrap_or(u32::MAX));
    let thawed = usize::try_from(desired.saturating_sub(active))
        .unwrap_or(usize::MAX)
        .min(frozen.len());
    let mut decision = Decision {
        // Frozen instances count as live: only what they cannot cover starts.
        start: desired.saturating_sub(live),
        thaw: frozen[..thawed].iter().map(|(_, id)| *id).collect(),
        ..Decision::default()
    };
    let mut wake_at = |at: Instant| {
        decision.wake_at = Some(decision.wake_at.map_or(at, |w: Instant| w.min(at)));
    };
    let mut remaining = live;
    let mut stop = Vec::new();
    // The frozen ones left frozen, oldest first.
    for &(since, id) in frozen[thawed..].iter().rev() {
        let at = since + scaling.frozen_timeout;
        if !scaling.freeze || at <= now || remaining > scaling.max_instances {
            stop.push(id);
            remaining -= 1;
        } else {
            wake_at(at);
        }
    }
    // Idle instances, longest idle first, are the candidates to stop or
    // freeze.
    let mut idle: Vec<(Instant, u64)> = instances
        .iter()
        .filter(|i| i.ready && i.in_flight == 0)
        .filter_map(|i| i.idle_since.map(|t| (t, i.id)))
        .collect();
    idle.sort_unstable();
    let mut freeze = Vec::new();
    let mut active = active.saturating_add(u32::try_from(thawed).unwrap_or(u32::MAX));
    for (since, id) in idle {
        let over_max = remaining > scaling.max_instances;
        let expired = now.saturating_duration_since(since) >= scaling.idle_timeout;
        if active > desired && (over_max || expired) {
            if scaling.freeze && !over_max {
                freeze.push(id);
            } else {
                stop.push(id);
                remaining -= 1;
            }
            active -= 1;
        } else if active > scaling.min_instances && !expired {
            wake_at(since + scaling.idle_timeout);
        }
    }
    decision.stop = stop;
    decision.freeze = freeze;
    decision
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn scaling(min: u32, max: u32, concurrency: u32) -> Scaling {
        Scaling {
            min_instances: min,
            max_instances: max,
            concurrency,
            idle_timeout: Duration::from_secs(60),
            ..Scaling::default()
        }
    }

    fn ready(id: u64, in_flight: u32, idle_since: Option<Instant>) -> InstanceView {
        InstanceView {
            id,
            ready: true,
            in_flight,
            idle_since,
            frozen_since: None,
        }
    }

    fn frozen(id: u64, since: Instant) -> InstanceView {
        InstanceView {
            id,
            ready: false,
            in_flight: 0,
            idle_since: None,
            frozen_since: Some(since),
        }
    }

    fn freezing(min: u32, max: u32, concurrency: u32) -> Scaling {
        Scaling {
            freeze: true,
            frozen_timeout: Duration::from_secs(900),
            ..scaling(min, max, concurrency)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cold_start_from_zero_starts_one() {
        let now = Instant::now();
        let d = decide(&scaling(0, 3, 1), DeliveryMode::Server, 1, &[], now);
        assert_eq!(d.start, 1);
        assert!(d.stop.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_to_do_at_zero() {
        let d = decide(
            &scaling(0, 3, 1),
            DeliveryMode::Server,
            0,
            &[],
            Instant::now(),
        );
        assert_eq!(d, Decision::default());
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_scale_by_concurrency_up_to_max() {
        let now = Instant::now();
        let s = scaling(0, 3, 4);
        assert_eq!(decide(&s, DeliveryMode::Server, 4, &[], now).start, 1);
        assert_eq!(decide(&s, DeliveryMode::Server, 5, &[], now).start, 2);
        assert_eq!(
            decide(&s, DeliveryMode::Server, 50, &[], now).start,
            3,
            "capped at max"
        );
        // Two running, busy: 4 in flight each plus 5 queued needs 4 → capped at 3 → start 1.
        let busy = [ready(1, 4, None), ready(2, 4, None)];
        assert_eq!(decide(&s, DeliveryMode::Server, 5, &busy, now).start, 1);
        // Starting instances count as live: no double start while waking.
        let waking = [InstanceView {
            id: 1,
            ready: false,
            in_flight: 0,
            idle_since: None,
            frozen_since: None,
        }];
        assert_eq!(decide(&s, DeliveryMode::Server, 1, &waking, now).start, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_instance_stops_after_idle_timeout() {
        let s = scaling(0, 3, 1);
        let since = Instant::now();
        let inst = [ready(7, 0, Some(since))];
        let d = decide(&s, DeliveryMode::Server, 0, &inst, since);
        assert!(d.stop.is_empty(), "not idle long enough");
        assert_eq!(d.wake_at, Some(since + Duration::from_secs(60)));

        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(
            decide(&s, DeliveryMode::Server, 0, &inst, Instant::now())
                .stop
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = decide(&s, DeliveryMode::Server, 0, &inst, Instant::now());
        assert_eq!(d.stop, vec![7], "scale to zero");
        assert_eq!(d.start, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn min_instances_stay_warm() {
        let s = scaling(1, 3, 1);
        let now = Instant::now();
        assert_eq!(
            decide(&s, DeliveryMode::Server, 0, &[], now).start,
            1,
            "warm one at start"
        );
        let inst = [ready(1, 0, Some(now))];
        tokio::time::advance(Duration::from_secs(3600)).await;
        let d = decide(&s, DeliveryMode::Server, 0, &inst, Instant::now());
        assert!(d.stop.is_empty(), "the minimum is never stopped");
        assert_eq!(d.wake_at, None, "nothing to wait for at the minimum");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_instance_is_kept_while_work_is_queued() {
        let s = scaling(0, 3, 1);
        let since = Instant::now();
        tokio::time::advance(Duration::from_secs(120)).await;
        let d = decide(
            &s,
            DeliveryMode::Server,
            1,
            &[ready(1, 0, Some(since))],
            Instant::now(),
        );
        assert!(d.stop.is_empty());
        assert_eq!(d.start, 0, "the idle one takes the question");
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_max_stops_idle_extras_at_once() {
        let s = scaling(0, 1, 1);
        let now = Instant::now();
        let inst = [
            ready(1, 0, Some(now)),
            ready(2, 0, Some(now)),
            ready(3, 1, None),
        ];
        let d = decide(&s, DeliveryMode::Server, 0, &inst, now);
        assert_eq!(d.stop.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_start_one_per_question_up_to_max() {
        let s = scaling(0, 3, 1);
        let now = Instant::now();
        assert_eq!(decide(&s, DeliveryMode::Job, 2, &[], now).start, 2);
        let running = [ready(1, 1, None), ready(2, 1, None)];
        assert_eq!(decide(&s, DeliveryMode::Job, 5, &running, now).start, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_freezing_service_freezes_its_idle_instance_and_stops_it_later() {
        let s = freezing(0, 3, 1);
        let since = Instant::now();
        tokio::time::advance(Duration::from_secs(60)).await;
        let d = decide(
            &s,
            DeliveryMode::Server,
            0,
            &[ready(7, 0, Some(since))],
            Instant::now(),
        );
        assert_eq!(d.freeze, vec![7], "frozen, not stopped");
        assert!(d.stop.is_empty());

        let at = Instant::now();
        let inst = [frozen(7, at)];
        let d = decide(&s, DeliveryMode::Server, 0, &inst, at);
        assert_eq!(d.stop, Vec::<u64>::new(), "kept frozen");
        assert_eq!(d.wake_at, Some(at + Duration::from_secs(900)));
        assert_eq!((d.start, d.thaw.len()), (0, 0), "nothing to thaw for");
        tokio::time::advance(Duration::from_secs(900)).await;
        let d = decide(&s, DeliveryMode::Server, 0, &inst, Instant::now());
        assert_eq!(d.stop, vec![7], "stopped after the frozen timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn work_thaws_frozen_instances_before_starting_any() {
        let s = freezing(0, 3, 1);
        let now = Instant::now();
        let old = now - Duration::from_secs(10);
        let inst = [frozen(1, old), frozen(2, now)];
        let d = decide(&s, DeliveryMode::Server, 1, &inst, now);
        assert_eq!(d.thaw, vec![2], "the most recently frozen");
        assert_eq!(d.start, 0);
        assert!(d.stop.is_empty(), "the other stays frozen");

        let d = decide(&s, DeliveryMode::Server, 3, &inst, now);
        assert_eq!(d.thaw.len(), 2);
        assert_eq!(d.start, 1, "only what the frozen ones cannot cover starts");

        // A thawing instance counts as live: no second thaw or start.
        let thawing = [InstanceView {
            frozen_since: None,
            ..frozen(2, now)
        }];
        let d = decide(&s, DeliveryMode::Server, 1, &thawing, now);
        assert_eq!((d.start, d.thaw.len()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn frozen_instances_go_when_freezing_is_turned_off_or_max_lowered() {
        let now = Instant::now();
        let inst = [frozen(1, now), frozen(2, now)];
        let d = decide(&scaling(0, 3, 1), DeliveryMode::Server, 0, &inst, now);
        assert_eq!(d.stop.len(), 2, "no longer freezing: stopped at once");
        let d = decide(&freezing(0, 1, 1), DeliveryMode::Server, 0, &inst, now);
        assert_eq!(d.stop.len(), 1, "one above the maximum");
    }

    #[tokio::test(start_paused = true)]
    async fn the_minimum_is_never_frozen() {
        let s = freezing(1, 3, 1);
        let since = Instant::now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let d = decide(
            &s,
            DeliveryMode::Server,
            0,
            &[ready(1, 0, Some(since)), ready(2, 0, Some(since))],
            Instant::now(),
        );
        assert_eq!(d.freeze.len(), 1, "the one above the minimum");
        assert!(d.stop.is_empty());
    }
}
