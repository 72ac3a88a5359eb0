//! The words of a build and a rollout: a build's status, a revision's
//! rollout state, and how a service's questions are routed to its revisions.
//! The builder, the dispatcher, the store and the API all speak them, so they
//! live here rather than in any one of those.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    Queued,
    Fetching,
    Building,
    Pushing,
    RollingOut,
    Succeeded,
    Failed,
    Cancelled,
    Superseded,
}

impl BuildStatus {
    pub const ALL: [Self; 9] = [
        Self::Queued,
        Self::Fetching,
        Self::Building,
        Self::Pushing,
        Self::RollingOut,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Fetching => "fetching",
            Self::Building => "building",
            Self::Pushing => "pushing",
            Self::RollingOut => "rolling-out",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Superseded => "superseded",
        }
    }

    /// Whether the build is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Superseded
        )
    }

    /// Whether a runner may move a build into this status.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Self::Fetching | Self::Building | Self::Pushing | Self::RollingOut
        )
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As its word (`"rolling-out"`), as shown in JSON output.
impl serde::Serialize for BuildStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An unknown build status word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown build status `{0}`: expected one of queued, fetching, building, pushing, rolling-out, succeeded, failed, cancelled, superseded"
)]
pub struct ParseStatusError(pub String);

impl FromStr for BuildStatus {
    type Err = ParseStatusError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| ParseStatusError(text.to_owned()))
    }
}

/// The rollout state of a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevisionState {
    /// May serve (every revision registered by hand, and built ones that
    /// passed their rollout).
    Ready,
    /// Built, its rollout under way: never served.
    Candidate,
    /// A dispatcher is running its readiness trial: never served.
    Trying,
    /// It passed its trial; it serves once the builder routes to it (and
    /// never by being the newest revision).
    Passed,
    /// Its rollout failed: never served.
    Failed,
}

impl RevisionState {
    pub const ALL: [Self; 5] = [
        Self::Ready,
        Self::Candidate,
        Self::Trying,
        Self::Passed,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Candidate => "candidate",
            Self::Trying => "trying",
            Self::Passed => "passed",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for RevisionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for RevisionState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An unknown revision state word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revision state `{0}`: expected one of ready, candidate, trying, passed, failed")]
pub struct ParseStateError(pub String);

impl FromStr for RevisionState {
    type Err = ParseStateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| ParseStateError(text.to_owned()))
    }
}

/// How a service's questions reach its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    /// The revision untagged questions go to; `None`: the newest ready one.
    pub serving: Option<String>,
    /// `tag` → revision: questions to `namespace/name:tag` go there.
    pub tags: BTreeMap<String, String>,
    /// Untagged questions split by percentage (adding up to 100); empty:
    /// all to the serving revision.
    pub traffic: Vec<(String, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_and_unknown_words_are_named() {
        for status in BuildStatus::ALL {
            assert_eq!(status.as_str().parse::<BuildStatus>(), Ok(status));
        }
        for state in RevisionState::ALL {
            assert_eq!(state.as_str().parse::<RevisionState>(), Ok(state));
        }
        let err = "done"
            .parse::<BuildStatus>()
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("`done`") && err.contains("rolling-out"),
            "{err}"
        );
        let err = "live"
            .parse::<RevisionState>()
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("`live`") && err.contains("candidate"), "{err}");
    }
}
