//! The dispatcher's metrics, served as Prometheus text at `/metrics` on the
//! ingress port (`prometheus-client`). Labels name services as
//! `<project>-<service>` (their context root without the slash).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `rouse_questions_total` | counter | service, status (succeeded, failed, cancelled) |
//! | `rouse_http_requests_total` | counter | service, code |
//! | `rouse_cold_starts_total`, `rouse_cold_start_seconds` | counter, histogram (start asked → ready) | service |
//! | `rouse_thaws_total`, `rouse_thaw_seconds` | counter, histogram (thaw asked → running) | service |
//! | `rouse_wake_failures_total` | counter | service |
//! | `rouse_question_retries_total` | counter (attempts run again after the platform failed one) | service |
//! | `rouse_dead_letters_total` | counter (questions published to a dead-letter topic) | service |
//! | `rouse_queue_depth` | gauge (questions and requests waiting) | service, revision |
//! | `rouse_instances` | gauge (starting or running) | service, revision |
//! | `rouse_node_instances` | gauge (ready) | node |
//! | `rouse_dispatcher_lag_seconds` | histogram (Pub/Sub accepted a question → recorded here) | - |

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use uuid::Uuid;

type Labels = Vec<(String, String)>;

/// Histograms of seconds from 5 ms to ~20 s (cold starts, lag).
#[derive(Clone)]
struct Seconds;

impl MetricConstructor<Histogram> for Seconds {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.005, 2.0, 13))
    }
}

pub struct Metrics {
    registry: Registry,
    questions: Family<Labels, Counter>,
    http_requests: Family<Labels, Counter>,
    cold_starts: Family<Labels, Counter>,
    cold_start_seconds: Family<Labels, Histogram, Seconds>,
    thaws: Family<Labels, Counter>,
    thaw_seconds: Family<Labels, Histogram, Seconds>,
    wake_failures: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    queue_depth: Family<Labels, Gauge>,
    instances: Family<Labels, Gauge>,
    node_instances: Family<Labels, Gauge>,
    lag: Histogram,
    /// Service uuid → `<project>-<service>`, as workers start.
    names: RwLock<HashMap<Uuid, String>>,
}

fn service(name: &str) -> Labels {
    vec![("service".to_owned(), name.to_owned())]
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let questions = Family::<Labels, Counter>::default();
        registry.register(
            "rouse_questions",
            "Questions that ended, by service and status",
            questions.clone(),
        );
        let http_requests = Family::<Labels, Counter>::default();
        registry.register(
            "rouse_http_requests",
            "HTTP requests through the ingress, by service and status code",
            http_requests.clone(),
        );
        let cold_starts = Family::<Labels, Counter>::default();
        registry.register(
            "rouse_cold_starts",
            "Instances woken, by service",
            cold_starts.clone(),
        );
        let cold_start_seconds = Family::new_with_constructor(Seconds);
        registry.register(
            "rouse_cold_start_seconds",
            "Time from asking for an instance to its passing the readiness probe",
            cold_start_seconds.clone(),
        );
        let thaws = Family::<Labels, Counter>::default();
        registry.register(
            "rouse_thaws",
            "Frozen instances thawed for work, by service",
            thaws.clone(),
        );
        let thaw_seconds = Family::new_with_constructor(Seconds);
        registry.register(
            "rouse_thaw_seconds",
            "Time from asking for a frozen instance to its running again",
            thaw_seconds.clone(),
        );
        let wake_failures = Family::<Labels, Counter>::default();
        registry.register(
            "rouse_wake_failures",
            "Instances that could not be woken, by service",
            wake_failures.clone(),
        );
        let retries = Family::<Labels, Counter>::default();
        registry.register(
            "rouse_question_retries",
            "Questions run again after the platform failed an attempt, by service",
            retries.clone(),
        );
        let dead_letters = Family::<Labels, Counter>::default();
        registry.register(
            "rouse_dead_letters",
            "Questions published to their service's dead-letter topic, by service",
            dead_letters.clone(),
        );
        let queue_depth = Family::<Labels, Gauge>::default();
        registry.register(
            "rouse_queue_depth",
            "Questions and HTTP requests waiting for an instance, by service",
            queue_depth.clone(),
        );
        let instances = Family::<Labels, Gauge>::default();
        registry.register(
            "rouse_instances",
            "Instances starting or running, by service",
            instances.clone(),
        );
        let node_instances = Family::<Labels, Gauge>::default();
        registry.register(
            "rouse_node_instances",
            "Instances running (ready), by node (local: this machine's engine or processes)",
            node_instances.clone(),
        );
        let lag = Seconds.new_metric();
        registry.register(
            "rouse_dispatcher_lag_seconds",
            "Time from Pub/Sub accepting a question to the dispatcher recording it",
            lag.clone(),
        );
        Self {
            registry,
            questions,
            http_requests,
            cold_starts,
            cold_start_seconds,
            thaws,
            thaw_seconds,
            wake_failures,
            retries,
            dead_letters,
            queue_depth,
            instances,
            node_instances,
            lag,
            names: RwLock::default(),
        }
    }
}

impl Metrics {
    /// Names `uuid` in labels from now on.
    pub(crate) fn name(&self, uuid: Uuid, name: String) {
        if let Ok(mut names) = self.names.write() {
            names.insert(uuid, name);
        }
    }

    fn labels_of(&self, uuid: Uuid) -> Labels {
        let name = self
            .names
            .read()
            .ok()
            .and_then(|n| n.get(&uuid).cloned())
            .unwrap_or_else(|| uuid.to_string());
        service(&name)
    }

    pub(crate) fn question_ended(&self, uuid: Uuid, status: &str) {
        let mut labels = self.labels_of(uuid);
        labels.push(("status".to_owned(), status.to_owned()));
        self.questions.get_or_create(&labels).inc();
    }

    pub(crate) fn http_request(&self, name: &str, code: u16) {
        let mut labels = service(name);
        labels.push(("code".to_owned(), code.to_string()));
        self.http_requests.get_or_create(&labels).inc();
    }

    pub(crate) fn cold_start(&self, name: &str, took: Duration) {
        let labels = service(name);
        self.cold_starts.get_or_create(&labels).inc();
        self.cold_start_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn thawed(&self, name: &str, took: Duration) {
        let labels = service(name);
        self.thaws.get_or_create(&labels).inc();
        self.thaw_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn wake_failed(&self, name: &str) {
        self.wake_failures.get_or_create(&service(name)).inc();
    }

    pub(crate) fn retried(&self, name: &str) {
        self.retries.get_or_create(&service(name)).inc();
    }

    pub(crate) fn dead_lettered(&self, name: &str) {
        self.dead_letters.get_or_create(&service(name)).inc();
    }

    /// A worker's queue and instances; each revision's worker (the serving
    /// one, and those tags or a split reach) reports its own.
    pub(crate) fn gauges(&self, name: &str, revision: &str, queued: usize, instances: usize) {
        let mut labels = service(name);
        labels.push(("revision".to_owned(), revision.to_owned()));
        self.queue_depth
            .get_or_create(&labels)
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        self.instances
            .get_or_create(&labels)
            .set(i64::try_from(instances).unwrap_or(i64::MAX));
    }

    /// Drops the gauges a worker reported for `revision` (it runs another
    /// one now, or stopped).
    pub(crate) fn forget_gauges(&self, name: &str, revision: &str) {
        let mut labels = service(name);
        labels.push(("revision".to_owned(), revision.to_owned()));
        self.queue_depth.remove(&labels);
        self.instances.remove(&labels);
    }

    /// An instance ready on `node`, counted until the guard is dropped.
    pub(crate) fn on_node(self: &Arc<Self>, node: &str) -> OnNode {
        let labels = vec![("node".to_owned(), node.to_owned())];
        self.node_instances.get_or_create(&labels).inc();
        OnNode {
            metrics: self.clone(),
            labels,
        }
    }

    pub(crate) fn lag(&self, took: Duration) {
        self.lag.observe(took.as_secs_f64());
    }

    /// Everything, in the Prometheus text format (0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        rouse_core::prometheus::from_openmetrics(&out)
    }
}

/// One instance counted on its node (see [`Metrics::on_node`]).
pub(crate) struct OnNode {
    metrics: Arc<Metrics>,
    labels: Labels,
}

impl Drop for OnNode {
    fn drop(&mut self) {
        self.metrics
            .node_instances
            .get_or_create(&self.labels)
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_as_their_samples_and_there_is_no_eof() {
        let m = Metrics::default();
        m.name(Uuid::nil(), "p-web".into());
        m.question_ended(Uuid::nil(), "succeeded");
        m.http_request("p-web", 200);
        m.cold_start("p-web", Duration::from_millis(30));
        let m = Arc::new(m);
        let (a, b) = (m.on_node("node-2"), m.on_node("node-2"));
        let text = m.encode();
        assert!(
            text.contains("rouse_node_instances{node=\"node-2\"} 2"),
            "{text}"
        );
        drop((a, b));
        assert!(
            m.encode()
                .contains("rouse_node_instances{node=\"node-2\"} 0")
        );
        let text = m.encode();
        assert!(
            text.contains("# HELP rouse_questions_total Questions"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE rouse_questions_total counter"),
            "{text}"
        );
        assert!(
            text.contains("rouse_questions_total{service=\"p-web\",status=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE rouse_cold_start_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("rouse_cold_start_seconds_bucket{le=\"0.04\",service=\"p-web\"} 1")
                || text
                    .contains("rouse_cold_start_seconds_bucket{service=\"p-web\",le=\"0.04\"} 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
