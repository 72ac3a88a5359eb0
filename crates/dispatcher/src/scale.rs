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
}

/// What the worker should do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Instances to start (server mode) or jobs to launch (job mode).
    pub start: u32,
    /// Instances to stop.
    pub stop: Vec<u64>,
    /// When to decide again if nothing else happens first (an idle timeout).
    pub wake_at: Option<Instant>,
}

/// Decides how many instances to start and which to stop.
///
/// Server mode: enough instances for the work (`ceil((queued + in flight) /
/// concurrency)`), never fewer than `min_instances` nor more than
/// `max_instances`; an instance idle for `idle_timeout` is stopped unless that
/// would go below what is needed; idle instances above `max_instances` (after
/// the maximum was lowered) are stopped at once.
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
    let mut decision = Decision {
        start: desired.saturating_sub(live),
        ..Decision::default()
    };

    // Idle instances, longest idle first, are the candidates to stop.
    let mut idle: Vec<(Instant, u64)> = instances
        .iter()
        .filter(|i| i.ready && i.in_flight == 0)
        .filter_map(|i| i.idle_since.map(|t| (t, i.id)))
        .collect();
    idle.sort_unstable();
    let mut remaining = live;
    for (since, id) in idle {
        let over_max = remaining > scaling.max_instances;
        let expired = now.saturating_duration_since(since) >= scaling.idle_timeout;
        if remaining > desired && (over_max || expired) {
            decision.stop.push(id);
            remaining -= 1;
        } else if remaining > scaling.min_instances && !expired {
            let at = since + scaling.idle_timeout;
            decision.wake_at = Some(decision.wake_at.map_or(at, |w| w.min(at)));
        }
    }
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
}
