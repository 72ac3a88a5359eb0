//! The builder's metrics, served as Prometheus text at `/metrics` on the
//! webhook port (`prometheus-client`):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `rouse_build_step_seconds` | histogram: how long each step took (`queued`: recorded → first step) | step |
//! | `rouse_builds_total` | counter: builds that ended | status |

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::BuildStatus;

type Labels = Vec<(String, String)>;

/// Seconds from 50 ms to ~14 min (a clone, a `docker build`, a rollout).
#[derive(Clone)]
struct StepSeconds;

impl MetricConstructor<Histogram> for StepSeconds {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.05, 2.0, 15))
    }
}

pub struct BuildMetrics {
    registry: Registry,
    steps: Family<Labels, Histogram, StepSeconds>,
    builds: Family<Labels, Counter>,
    /// The step each running build is in, since when.
    current: Mutex<HashMap<String, (BuildStatus, Instant)>>,
}

impl Default for BuildMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let steps = Family::new_with_constructor(StepSeconds);
        registry.register(
            "rouse_build_step_seconds",
            "How long each build step took (queued: recorded until the first step)",
            steps.clone(),
        );
        let builds = Family::<Labels, Counter>::default();
        registry.register(
            "rouse_builds",
            "Builds that ended, by status",
            builds.clone(),
        );
        Self {
            registry,
            steps,
            builds,
            current: Mutex::default(),
        }
    }
}

impl BuildMetrics {
    /// `build` moved to `status` (recorded at `created` if this is its
    /// first step): the step it leaves is observed; an end is counted.
    pub(crate) fn moved(&self, build: &str, status: BuildStatus, created: SystemTime) {
        let now = Instant::now();
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        let left = match current.remove(build) {
            Some((step, since)) => Some((step, now.duration_since(since))),
            // Its first step: it waited since it was recorded.
            None if status.is_running() => Some((
                BuildStatus::Queued,
                SystemTime::now()
                    .duration_since(created)
                    .unwrap_or(Duration::ZERO),
            )),
            None => None,
        };
        if let Some((step, took)) = left
            && step != status
        {
            self.steps
                .get_or_create(&vec![("step".to_owned(), step.as_str().to_owned())])
                .observe(took.as_secs_f64());
        }
        if status.is_running() {
            current.insert(build.to_owned(), (status, now));
        } else if status.is_terminal() {
            self.builds
                .get_or_create(&vec![("status".to_owned(), status.as_str().to_owned())])
                .inc();
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        rouse_core::prometheus::from_openmetrics(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_is_timed_once_and_ends_are_counted() {
        let m = BuildMetrics::default();
        let created = SystemTime::now() - Duration::from_secs(3);
        for status in [
            BuildStatus::Fetching,
            BuildStatus::Building,
            BuildStatus::Pushing,
            BuildStatus::RollingOut,
            BuildStatus::Succeeded,
        ] {
            m.moved("b1", status, created);
        }
        m.moved("b2", BuildStatus::Fetching, created);
        m.moved("b2", BuildStatus::Failed, created);
        let text = m.encode();
        for step in ["queued", "fetching", "building", "pushing", "rolling-out"] {
            assert!(
                text.contains(&format!(
                    "rouse_build_step_seconds_count{{step=\"{step}\"}}"
                )),
                "{step}: {text}"
            );
        }
        // Both builds waited about 3 s in the queue.
        assert!(
            text.contains("rouse_build_step_seconds_count{step=\"queued\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("rouse_build_step_seconds_bucket{le=\"1.6\",step=\"queued\"} 0")
                || text.contains("rouse_build_step_seconds_bucket{step=\"queued\",le=\"1.6\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("rouse_builds_total{status=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rouse_builds_total{status=\"failed\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE rouse_builds_total counter"), "{text}");
        assert!(
            m.current.lock().expect("lock").is_empty(),
            "ended builds are forgotten"
        );
    }
}
