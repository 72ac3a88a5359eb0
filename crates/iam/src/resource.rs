//! Resources that carry policies, in a hierarchy:
//! `rouse` (the installation) → `projects/P` → `projects/P/services/S`.
//!
//! A request on a resource is governed by its own policy and those of its
//! ancestors; the effective policy is the union of their bindings.

use std::fmt;
use std::str::FromStr;

use rouse_core::{ProjectName, ServiceName};

/// The root resource's name: the whole installation (where a bootstrap owner
/// can be granted `roles/owner` on every project).
pub const ROOT: &str = "rouse";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource `{value}` {problem}")]
pub struct ResourceError {
    pub value: String,
    problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Root,
    Project(ProjectName),
    Service(ProjectName, ServiceName),
}

impl Resource {
    /// Parses `rouse`, `projects/P` or `projects/P/services/S`.
    pub fn parse(value: &str) -> Result<Self, ResourceError> {
        let err = |problem: String| ResourceError {
            value: value.to_owned(),
            problem,
        };
        if value == ROOT {
            return Ok(Self::Root);
        }
        let parts: Vec<&str> = value.split('/').collect();
        match parts.as_slice() {
            ["projects", p] => ProjectName::parse(p)
                .map(Self::Project)
                .map_err(|e| err(format!("names an invalid project: {e}"))),
            ["projects", p, "services", s] => {
                let project = ProjectName::parse(p)
                    .map_err(|e| err(format!("names an invalid project: {e}")))?;
                let service = ServiceName::parse(&project, s)
                    .map_err(|e| err(format!("names an invalid service: {e}")))?;
                Ok(Self::Service(project, service))
            }
            _ => Err(err(format!(
                "must be `projects/PROJECT` or `projects/PROJECT/services/SERVICE` (or `{ROOT}`)"
            ))),
        }
    }

    pub fn project(&self) -> Option<&ProjectName> {
        match self {
            Self::Root => None,
            Self::Project(p) | Self::Service(p, _) => Some(p),
        }
    }

    /// The parent resource (`None` for the root).
    pub fn parent(&self) -> Option<Resource> {
        match self {
            Self::Root => None,
            Self::Project(_) => Some(Self::Root),
            Self::Service(p, _) => Some(Self::Project(p.clone())),
        }
    }

    /// This resource and its ancestors, root first: the policies that govern it.
    pub fn lineage(&self) -> Vec<Resource> {
        let mut chain = vec![self.clone()];
        while let Some(parent) = chain.last().and_then(Resource::parent) {
            chain.push(parent);
        }
        chain.reverse();
        chain
    }

    /// Whether this resource is `other` or one of its ancestors, i.e. whether a
    /// policy on `self` governs requests on `other`.
    pub fn contains(&self, other: &Resource) -> bool {
        match (self, other) {
            (Self::Root, _) => true,
            (Self::Project(a), Self::Project(b) | Self::Service(b, _)) => a == b,
            (Self::Service(pa, sa), Self::Service(pb, sb)) => pa == pb && sa == sb,
            _ => false,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root => f.write_str(ROOT),
            Self::Project(p) => write!(f, "projects/{p}"),
            Self::Service(p, s) => write!(f, "projects/{p}/services/{s}"),
        }
    }
}

impl FromStr for Resource {
    type Err = ResourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Resource {
        Resource::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parse_display_and_hierarchy() {
        for s in ["rouse", "projects/p", "projects/experiment_2/services/hpc"] {
            assert_eq!(r(s).to_string(), s);
        }
        let svc = r("projects/p/services/b");
        assert_eq!(
            svc.lineage(),
            vec![r("rouse"), r("projects/p"), r("projects/p/services/b")]
        );
        assert!(r("projects/p").contains(&svc));
        assert!(!r("projects/q").contains(&svc));
        assert!(!r("projects/p/services/a").contains(&svc));
        assert!(!svc.contains(&r("projects/p")));
        assert!(r("rouse").contains(&svc));
    }

    #[test]
    fn errors_name_the_value() {
        for bad in [
            "projects/",
            "projects/P",
            "project/p",
            "projects/p/services/B",
            "projects/p/services/b/x",
            "",
        ] {
            let err = Resource::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }
}
