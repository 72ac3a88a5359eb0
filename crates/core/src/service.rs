//! A service: what Rouse records about it, its scaling settings and their defaults.
//!
//! Every service owns the Pub/Sub topic `octue.services.<uuid>` (the uuid is v4,
//! fixed for the service's life) and the dispatcher's subscription on it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::names::{ProjectName, ServiceName};
use crate::sruid::Sruid;

/// Prefix of every service topic (docs/protocol.md).
pub const SERVICE_TOPIC_PREFIX: &str = "octue.services.";
/// Prefix of the dispatcher's subscription on a service topic.
pub const DISPATCHER_SUBSCRIPTION_PREFIX: &str = "rouse.dispatcher.";

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceStatus {
    /// Recorded, its topic and subscription being created. A service left in
    /// this state by a crash is finished by the reconciliation at start.
    Provisioning,
    /// Topic and subscription exist; no revision yet.
    Created,
    /// A revision serves questions.
    Ready,
    /// The latest rollout failed and nothing serves.
    Failed,
}

impl ServiceStatus {
    pub const ALL: [Self; 4] = [Self::Provisioning, Self::Created, Self::Ready, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Created => "created",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for ServiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a service scales. Defaults are chosen for one machine with two cores and
/// Octue-style questions (long, CPU-bound analyses), and documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    /// Instances kept running with nothing to do. 0 = scale to zero, Rouse's point.
    pub min_instances: u32,
    /// Upper bound on running instances. 3: enough to overlap a cold start with
    /// work on a 2-core machine without thrashing it (Cloud Run's 100 assumes a fleet).
    pub max_instances: u32,
    /// Questions one instance handles at once. 1: Octue questions are analyses that
    /// use a whole CPU (Cloud Run's 80 assumes I/O-bound web requests).
    pub concurrency: u32,
    /// How long an instance with nothing to do lives. 60 s, like Knative's
    /// stable window before scale to zero.
    pub idle_timeout: Duration,
    /// How long a waking instance may take to become ready. 120 s covers a Python
    /// service importing a scientific stack on a cold disk.
    pub wake_timeout: Duration,
    /// How long one question may run. 300 s, Cloud Run's default request timeout.
    pub request_timeout: Duration,
    /// An instance idle for `idle_timeout` is frozen (its processes paused,
    /// costing no CPU; thawed by the next question in milliseconds) rather
    /// than stopped. Off: scale to zero frees the memory too, as Cloud Run's.
    pub freeze: bool,
    /// How long a frozen instance is kept before it is stopped for real.
    /// 15 min: long enough to bridge a lull, short enough not to hold memory
    /// all day.
    pub frozen_timeout: Duration,
    /// How often a question that failed for the platform's reasons (its
    /// instance did not wake, crashed, or could not be reached) is run
    /// again, as attempt `retry_count + 1` after [`retry_backoff`]. 0: never,
    /// as Octue askers retry themselves.
    pub max_retries: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_instances: 0,
            max_instances: 3,
            concurrency: 1,
            idle_timeout: Duration::from_secs(60),
            wake_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(300),
            freeze: false,
            frozen_timeout: Duration::from_secs(15 * 60),
            max_retries: 0,
        }
    }
}

/// Hard limits on scaling settings, so a typo cannot ask for a million instances.
pub const MAX_INSTANCES_LIMIT: u32 = 1000;
pub const MAX_CONCURRENCY: u32 = 1000;
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Pub/Sub's own ceiling on delivery attempts.
pub const MAX_RETRIES: u32 = 100;

/// How long attempt `retry_count + 1` waits after attempt `retry_count`
/// failed: 1 s, doubling, at most 60 s (Pub/Sub's retry policy bounds).
pub fn retry_backoff(retry_count: u32) -> Duration {
    Duration::from_secs(1u64 << retry_count.min(6)).min(Duration::from_secs(60))
}

/// Checks a dead-letter topic id as Pub/Sub names topics: 3 to 255
/// characters, a letter first, then letters, digits and `-_.~+%`, not
/// starting with `goog`.
pub fn validate_topic_id(topic: &str) -> Result<(), String> {
    let fix = "give a topic id such as `rouse-dead-letters` (3-255 characters: a letter, then letters, digits, `-_.~+%`; not starting with `goog`)";
    let ok = (3..=255).contains(&topic.len())
        && topic.starts_with(|c: char| c.is_ascii_alphabetic())
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !topic.to_ascii_lowercase().starts_with("goog");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "dead-letter topic `{topic}` is not a Pub/Sub topic id; {fix}"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScalingError {
    #[error(
        "max_instances {max} is less than min_instances {min}; raise --max-instances or lower --min-instances"
    )]
    MaxBelowMin { min: u32, max: u32 },
    #[error("{field} {value} is out of range; use {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("{field} {value} is out of range; use 1s..=24h")]
    TimeoutOutOfRange { field: &'static str, value: String },
}

impl Scaling {
    pub fn validate(&self) -> Result<(), ScalingError> {
        let ranges = [
            ("max_instances", self.max_instances, 1, MAX_INSTANCES_LIMIT),
            ("min_instances", self.min_instances, 0, MAX_INSTANCES_LIMIT),
            ("concurrency", self.concurrency, 1, MAX_CONCURRENCY),
            ("max_retries", self.max_retries, 0, MAX_RETRIES),
        ];
        for (field, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ScalingError::OutOfRange {
                    field,
                    value: value.into(),
                    min: min.into(),
                    max: max.into(),
                });
            }
        }
        if self.max_instances < self.min_instances {
            return Err(ScalingError::MaxBelowMin {
                min: self.min_instances,
                max: self.max_instances,
            });
        }
        let timeouts = [
            ("idle_timeout", self.idle_timeout),
            ("wake_timeout", self.wake_timeout),
            ("request_timeout", self.request_timeout),
            ("frozen_timeout", self.frozen_timeout),
        ];
        for (field, value) in timeouts {
            if value < Duration::from_secs(1) || value > MAX_TIMEOUT {
                return Err(ScalingError::TimeoutOutOfRange {
                    field,
                    value: humantime::format_duration(value).to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Environment variables Rouse sets on every instance itself; a service may not
/// override them (like Cloud Run's reserved `PORT` and `K_SERVICE`).
pub const RESERVED_ENV: &[&str] = &[
    "PORT",
    "CONTEXT_ROOT",
    "OCTUE_SERVICE_NAMESPACE",
    "OCTUE_SERVICE_NAME",
    "OCTUE_SERVICE_REVISION_TAG",
    "PUBSUB_EMULATOR_HOST",
    "GOOGLE_CLOUD_PROJECT",
    "TWINED_SERVICES_TOPIC_NAME",
];
/// Every variable with this prefix is Rouse's (`ROUSE_SERVICE`, …).
pub const RESERVED_ENV_PREFIX: &str = "ROUSE_";
/// The largest value of one variable: 32 KiB, Cloud Run's limit.
pub const MAX_ENV_VALUE_LEN: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error(
        "environment variable name `{0}` is invalid: use letters, digits and `_`, not starting with a digit"
    )]
    BadName(String),
    #[error("environment variable `{0}` is set by Rouse itself and cannot be overridden")]
    Reserved(String),
    #[error(
        "environment variable `{name}` is {len} bytes long; at most {MAX_ENV_VALUE_LEN} are allowed"
    )]
    TooLong { name: String, len: usize },
    #[error("environment variable `{0}` contains a NUL byte, which no process can receive")]
    Nul(String),
}

/// A service's own environment variables, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvVars(BTreeMap<String, String>);

impl EnvVars {
    pub fn check(name: &str, value: &str) -> Result<(), EnvError> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(EnvError::BadName(name.to_owned()));
        }
        if RESERVED_ENV.contains(&name) || name.starts_with(RESERVED_ENV_PREFIX) {
            return Err(EnvError::Reserved(name.to_owned()));
        }
        if value.len() > MAX_ENV_VALUE_LEN {
            return Err(EnvError::TooLong {
                name: name.to_owned(),
                len: value.len(),
            });
        }
        if value.contains('\0') {
            return Err(EnvError::Nul(name.to_owned()));
        }
        Ok(())
    }

    pub fn from_map(map: BTreeMap<String, String>) -> Result<Self, EnvError> {
        for (k, v) in &map {
            Self::check(k, v)?;
        }
        Ok(Self(map))
    }

    pub fn set(&mut self, name: String, value: String) -> Result<(), EnvError> {
        Self::check(&name, &value)?;
        self.0.insert(name, value);
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// Where HTTP requests for a service may come from (Cloud Run's
/// `--ingress`): the ingress refuses the others before any check of the
/// caller. Questions over Pub/Sub are not affected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IngressPolicy {
    /// From anywhere.
    #[default]
    All,
    /// Only from the internal networks (`rouse server --internal-networks`:
    /// loopback and private addresses by default).
    Internal,
}

impl IngressPolicy {
    pub const ALL: [Self; 2] = [Self::All, Self::Internal];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for IngressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything Rouse records about a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub project: ProjectName,
    pub name: ServiceName,
    pub uuid: Uuid,
    pub status: ServiceStatus,
    pub scaling: Scaling,
    pub env: EnvVars,
    /// Labels a node must carry for this service's image instances to be
    /// placed on it (Kubernetes' `nodeSelector`); empty: any engine.
    pub node_selector: BTreeMap<String, String>,
    /// Where its HTTP requests may come from.
    pub ingress: IngressPolicy,
    /// Where a question goes, as received, once it failed for the
    /// platform's reasons on its last attempt (a Pub/Sub topic id of the
    /// platform's project); `None`: it only fails.
    pub dead_letter_topic: Option<String>,
    /// Bumped by every change to the record; the store refuses a write based on
    /// a stale generation, so concurrent updates never lose each other's changes.
    pub generation: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Service {
    /// A new service with default settings, about to be provisioned.
    pub fn new(project: ProjectName, name: ServiceName, uuid: Uuid, now: SystemTime) -> Self {
        Self {
            project,
            name,
            uuid,
            status: ServiceStatus::Provisioning,
            scaling: Scaling::default(),
            env: EnvVars::default(),
            node_selector: BTreeMap::new(),
            ingress: IngressPolicy::All,
            dead_letter_topic: None,
            generation: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// `octue.services.<uuid>`: where askers publish questions for this service.
    pub fn topic_id(&self) -> String {
        format!("{SERVICE_TOPIC_PREFIX}{}", self.uuid)
    }

    /// The dispatcher's subscription on [`Self::topic_id`].
    pub fn subscription_id(&self) -> String {
        format!("{DISPATCHER_SUBSCRIPTION_PREFIX}{}", self.uuid)
    }

    /// `<project>-<name>`, the deployment manual's qualified name.
    pub fn qualified_name(&self) -> String {
        format!("{}-{}", self.project, self.name)
    }

    /// `/<project>-<name>`: the path the service listens under.
    pub fn context_root(&self) -> String {
        format!("/{}", self.qualified_name())
    }

    /// The service's SRUID without a revision tag.
    pub fn sruid(&self) -> Sruid {
        Sruid {
            namespace: self.project.namespace(),
            name: self.name.as_str().to_owned(),
            revision_tag: None,
        }
    }
}

/// Checks node labels (and selectors): keys and values up to 63 letters,
/// digits, `-`, `_` and `.`, values possibly empty. `Err` names the first
/// bad pair and the rule.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    let word = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match labels
        .iter()
        .find(|(k, v)| !word(k) || !(v.is_empty() || word(v)))
    {
        Some((key, value)) => Err(format!(
            "label `{key}={value}` is not usable: keys and values are up to 63 letters, digits, `-`, `_` and `.` (e.g. `zone=a`)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Service {
        let p = ProjectName::parse("experiment_2").expect("valid");
        let n = ServiceName::parse(&p, "hpc-preprocessor").expect("valid");
        Service::new(p, n, Uuid::nil(), SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn retries_back_off_from_one_second_to_a_minute() {
        let waits: Vec<u64> = (0..8).map(|n| retry_backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_backoff(u32::MAX).as_secs(), 60);
    }

    #[test]
    fn dead_letter_topics_are_pubsub_topic_ids() {
        for good in ["dlq", "rouse-dead-letters", "a.b_c~d+e%f", &"t".repeat(255)] {
            assert_eq!(validate_topic_id(good), Ok(()), "{good}");
        }
        for bad in [
            "ab",
            "1topic",
            "google-x",
            "a/b",
            "projects/p/topics/t",
            &"t".repeat(256),
        ] {
            let error = validate_topic_id(bad).expect_err("refused");
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
        let scaling = Scaling {
            max_retries: MAX_RETRIES + 1,
            ..Scaling::default()
        };
        assert!(scaling.validate().is_err());
    }

    #[test]
    fn derived_names() {
        let s = svc();
        assert_eq!(
            s.topic_id(),
            "octue.services.00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(s.context_root(), "/experiment_2-hpc-preprocessor");
        assert_eq!(s.sruid().to_string(), "experiment-2/hpc-preprocessor");
        assert!(crate::Sruid::parse(&s.sruid().to_string()).is_ok());
    }

    #[test]
    fn scaling_validation_names_the_field() {
        assert_eq!(Scaling::default().validate(), Ok(()));
        let bad = Scaling {
            min_instances: 4,
            max_instances: 3,
            ..Scaling::default()
        };
        assert!(
            bad.validate()
                .expect_err("must be refused")
                .to_string()
                .contains("max_instances 3")
        );
        let zero = Scaling {
            concurrency: 0,
            ..Scaling::default()
        };
        assert!(
            zero.validate()
                .expect_err("must be refused")
                .to_string()
                .contains("concurrency 0")
        );
        let idle = Scaling {
            idle_timeout: Duration::from_millis(10),
            ..Scaling::default()
        };
        assert!(
            idle.validate()
                .expect_err("must be refused")
                .to_string()
                .contains("idle_timeout 10ms")
        );
    }

    #[test]
    fn env_rules() {
        let mut env = EnvVars::default();
        assert!(env.set("LOG_LEVEL".into(), "debug".into()).is_ok());
        assert_eq!(
            env.set("PORT".into(), "1".into()),
            Err(EnvError::Reserved("PORT".into()))
        );
        assert_eq!(
            env.set("ROUSE_X".into(), "1".into()),
            Err(EnvError::Reserved("ROUSE_X".into()))
        );
        assert_eq!(
            env.set("1X".into(), "1".into()),
            Err(EnvError::BadName("1X".into()))
        );
        assert!(env.set("A-B".into(), "1".into()).is_err());
        assert!(
            env.set("BIG".into(), "x".repeat(MAX_ENV_VALUE_LEN + 1))
                .is_err()
        );
        assert_eq!(env.as_map().len(), 1);
    }
}
