//! Policy documents, exactly Google's shape:
//!
//! ```yaml
//! bindings:
//! - role: roles/serviceUser
//!   members: [serviceAccount:a@p.rouse]
//!   condition: {expression: 'request.time < timestamp("2027-01-01T00:00:00Z")', title: expires}
//! etag: 3q2-7wAAAAA=
//! version: 3
//! ```
//!
//! A [`Policy`] is the document as written, strings and all, so that what was
//! set is what is read back. [`Policy::validate`] is the strict check made
//! when a policy is set (the first error names where, e.g. `bindings[2].members[0]`,
//! and the value); [`crate::CompiledPolicy`] is the lenient form used to
//! decide requests, where anything broken grants nothing.
//!
//! The etag is computed from the content (FNV-1a 64 over the canonical JSON of
//! `bindings` and `version`, base64), so it is stable across processes and
//! releases; [`Policy::check_etag`] is the optimistic-concurrency test behind
//! `set-iam-policy` answering ABORTED.

use serde::{Deserialize, Serialize};

use crate::condition::{ConditionError, Expr};
use crate::principal::{Principal, PrincipalError};
use crate::resource::Resource;
use crate::role::{RoleError, RoleName, Roles};

/// Policy versions Google defines and Rouse accepts: 1 (no conditions) and 3.
pub const VERSION_PLAIN: u32 = 1;
pub const VERSION_CONDITIONAL: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<Binding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default = "plain_version")]
    pub version: u32,
}

fn plain_version() -> u32 {
    VERSION_PLAIN
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            bindings: Vec::new(),
            etag: None,
            version: VERSION_PLAIN,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub role: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub expression: String,
    #[serde(default)]
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What is wrong with a policy document. Every message says where
/// (`bindings[i]…`) and names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error(
        "policy version {version} is not supported; use {VERSION_PLAIN}, or {VERSION_CONDITIONAL} when bindings have conditions"
    )]
    UnsupportedVersion { version: u32 },
    #[error(
        "policy version must be {VERSION_CONDITIONAL} because bindings[{index}] has a condition, not {version}"
    )]
    ConditionNeedsVersion3 { index: usize, version: u32 },
    #[error("bindings[{index}] (role `{role}`) has no members; remove the binding or add a member")]
    NoMembers { index: usize, role: String },
    #[error("bindings[{index}].members[{member}]: {source}")]
    Member {
        index: usize,
        member: usize,
        source: PrincipalError,
    },
    #[error("bindings[{index}].role: {source}")]
    Role { index: usize, source: RoleError },
    #[error(
        "bindings[{index}].condition.title is required (like Google IAM, every condition has a title)"
    )]
    MissingConditionTitle { index: usize },
    #[error("bindings[{index}].condition.expression: {source}")]
    Condition {
        index: usize,
        source: ConditionError,
    },
}

/// A `set-iam-policy` based on an older read: the caller answers ABORTED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the policy was changed since it was read (etag `{given}`, now `{current}`); read it again with get-iam-policy, reapply the change and set it again"
)]
pub struct EtagMismatch {
    pub given: String,
    pub current: String,
}

/// Which bindings `remove_binding` removes the member from (gcloud's
/// `--condition` / `--all`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionFilter {
    /// Only the binding without a condition (`--condition=None`, or no flag).
    Unconditional,
    /// Only the binding with exactly this condition.
    Exactly(Condition),
    /// Every binding of the role, whatever its condition (`--all`).
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveBindingError {
    #[error("policy has no binding of role `{role}` to `{member}` with that condition")]
    NotFound { role: String, member: String },
    #[error(
        "`{member}` has only conditional bindings of role `{role}`; say which with --condition, or --all for every one"
    )]
    OnlyConditional { role: String, member: String },
}

impl Policy {
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        serde_json::from_str(text).map_err(|e| PolicyError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        serde_yaml::from_str(text).map_err(|e| PolicyError::Syntax {
            format: "YAML",
            message: e.to_string(),
        })
    }

    /// Pretty JSON, Google's field names.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Strict validation, for setting a policy on `on`: version, members,
    /// roles (custom roles must exist in `roles` and belong to `on`'s project),
    /// condition titles and expressions. Returns the first problem.
    pub fn validate(&self, on: &Resource, roles: &Roles) -> Result<(), PolicyError> {
        match self.problems(on, Some(roles)).into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem, in document order. Without `roles`, custom roles are
    /// only checked for shape.
    pub fn problems(&self, on: &Resource, roles: Option<&Roles>) -> Vec<PolicyError> {
        let mut problems = Vec::new();
        if self.version != VERSION_PLAIN && self.version != VERSION_CONDITIONAL {
            problems.push(PolicyError::UnsupportedVersion {
                version: self.version,
            });
        } else if self.version != VERSION_CONDITIONAL
            && let Some(index) = self.bindings.iter().position(|b| b.condition.is_some())
        {
            problems.push(PolicyError::ConditionNeedsVersion3 {
                index,
                version: self.version,
            });
        }
        for (index, binding) in self.bindings.iter().enumerate() {
            match RoleName::parse(&binding.role) {
                Err(source) => problems.push(PolicyError::Role { index, source }),
                Ok(role) => {
                    if let Some(Err(source)) = roles.map(|r| r.check(&role, on)) {
                        problems.push(PolicyError::Role { index, source });
                    }
                }
            }
            if binding.members.is_empty() {
                problems.push(PolicyError::NoMembers {
                    index,
                    role: binding.role.clone(),
                });
            }
            for (member, value) in binding.members.iter().enumerate() {
                if let Err(source) = Principal::parse(value) {
                    problems.push(PolicyError::Member {
                        index,
                        member,
                        source,
                    });
                }
            }
            if let Some(condition) = &binding.condition {
                if condition.title.trim().is_empty() {
                    problems.push(PolicyError::MissingConditionTitle { index });
                }
                if let Err(source) = Expr::parse(&condition.expression) {
                    problems.push(PolicyError::Condition { index, source });
                }
            }
        }
        problems
    }

    /// The etag of this content: base64 of FNV-1a 64 over the canonical JSON
    /// of `bindings` and `version` (the `etag` field itself is not part of it).
    pub fn compute_etag(&self) -> String {
        #[derive(Serialize)]
        struct Content<'a> {
            bindings: &'a [Binding],
            version: u32,
        }
        let canonical = serde_json::to_vec(&Content {
            bindings: &self.bindings,
            version: self.version,
        })
        .unwrap_or_default();
        base64(&fnv1a64(&canonical).to_be_bytes())
    }

    /// The policy with its `etag` field set to [`Policy::compute_etag`], as
    /// returned by get-iam-policy.
    pub fn with_etag(mut self) -> Self {
        self.etag = Some(self.compute_etag());
        self
    }

    /// Whether this (new) policy may replace `current`: it carries no etag
    /// (Google's blind overwrite) or the etag of `current`'s content.
    pub fn etag_matches(&self, current: &Policy) -> bool {
        self.check_etag(current).is_ok()
    }

    /// Like [`Policy::etag_matches`], with the error the caller turns into ABORTED.
    pub fn check_etag(&self, current: &Policy) -> Result<(), EtagMismatch> {
        match &self.etag {
            None => Ok(()),
            Some(given) => {
                let now = current.compute_etag();
                if *given == now {
                    Ok(())
                } else {
                    Err(EtagMismatch {
                        given: given.clone(),
                        current: now,
                    })
                }
            }
        }
    }

    /// gcloud's `add-iam-policy-binding`: adds `member` to the binding of
    /// `role` with the same condition, or appends a new binding; a condition
    /// raises the version to 3. Returns whether the policy changed. The result
    /// still needs [`Policy::validate`].
    pub fn add_binding(&mut self, role: &str, member: &str, condition: Option<Condition>) -> bool {
        if condition.is_some() {
            self.version = VERSION_CONDITIONAL;
        }
        if let Some(binding) = self
            .bindings
            .iter_mut()
            .find(|b| b.role == role && b.condition == condition)
        {
            if binding.members.iter().any(|m| m == member) {
                return false;
            }
            binding.members.push(member.to_owned());
            return true;
        }
        self.bindings.push(Binding {
            role: role.to_owned(),
            members: vec![member.to_owned()],
            condition,
        });
        true
    }

    /// gcloud's `remove-iam-policy-binding`: removes `member` from the
    /// bindings of `role` that `which` selects and drops bindings left empty.
    /// Returns how many bindings lost the member.
    pub fn remove_binding(
        &mut self,
        role: &str,
        member: &str,
        which: &ConditionFilter,
    ) -> Result<usize, RemoveBindingError> {
        let selected = |b: &Binding| {
            b.role == role
                && match which {
                    ConditionFilter::Unconditional => b.condition.is_none(),
                    ConditionFilter::Exactly(c) => b.condition.as_ref() == Some(c),
                    ConditionFilter::All => true,
                }
        };
        let mut removed = 0;
        for binding in self.bindings.iter_mut().filter(|b| selected(b)) {
            let before = binding.members.len();
            binding.members.retain(|m| m != member);
            removed += usize::from(binding.members.len() != before);
        }
        if removed == 0 {
            let conditional = self.bindings.iter().any(|b| {
                b.role == role && b.condition.is_some() && b.members.iter().any(|m| m == member)
            });
            return Err(if conditional && *which == ConditionFilter::Unconditional {
                RemoveBindingError::OnlyConditional {
                    role: role.to_owned(),
                    member: member.to_owned(),
                }
            } else {
                RemoveBindingError::NotFound {
                    role: role.to_owned(),
                    member: member.to_owned(),
                }
            });
        }
        self.bindings.retain(|b| !b.members.is_empty());
        Ok(removed)
    }
}

/// FNV-1a, 64 bits: tiny, and stable across Rust releases (unlike std's hasher).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::{CustomRole, CustomRoleName, RoleDocument};

    fn on() -> Resource {
        Resource::parse("projects/p/services/b").expect("resource")
    }

    fn problem(json: &str) -> String {
        let policy = Policy::from_json(json).unwrap_or_else(|e| panic!("{e}"));
        policy
            .validate(&on(), &Roles::new())
            .expect_err(json)
            .to_string()
    }

    #[test]
    fn parses_google_json_and_yaml() {
        let json = r#"{
          "version": 3,
          "etag": "BwXhqDdRzLk=",
          "bindings": [
            {"role": "roles/serviceUser", "members": ["serviceAccount:a@p.rouse", "group:eng"]},
            {"role": "roles/viewer", "members": ["allAuthenticatedUsers"],
             "condition": {"title": "expires", "description": "until 2027",
                           "expression": "request.time < timestamp(\"2027-01-01T00:00:00Z\")"}}
          ]
        }"#;
        let policy = Policy::from_json(json).expect("valid");
        policy.validate(&on(), &Roles::new()).expect("valid");
        let yaml = policy.to_yaml();
        assert!(yaml.starts_with("bindings:"), "{yaml}");
        assert_eq!(Policy::from_yaml(&yaml).expect("yaml"), policy);
        assert_eq!(Policy::from_json(&policy.to_json()).expect("json"), policy);
        assert_eq!(Policy::from_json("{}").expect("empty"), Policy::default());
    }

    #[test]
    fn unknown_fields_are_named() {
        for (doc, field) in [
            (r#"{"bindings": [], "auditConfigs": []}"#, "auditConfigs"),
            (
                r#"{"bindings": [{"role": "roles/owner", "member": ["allUsers"]}]}"#,
                "member",
            ),
            (
                r#"{"version": 3, "bindings": [{"role": "roles/owner", "members": ["allUsers"], "condition": {"title": "t", "expression": "true", "location": "x"}}]}"#,
                "location",
            ),
        ] {
            let err = Policy::from_json(doc).expect_err(doc).to_string();
            assert!(err.contains(&format!("`{field}`")), "{err}");
        }
        let err = Policy::from_yaml("bindings: []\nowner: me\n")
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("`owner`"), "{err}");
    }

    #[test]
    fn validation_names_where_and_what() {
        for (json, needle) in [
            (
                r#"{"bindings": [{"role": "roles/owner", "members": []}]}"#,
                "bindings[0] (role `roles/owner`) has no members",
            ),
            (
                r#"{"bindings": [{"role": "roles/owner"}]}"#,
                "has no members",
            ),
            (
                r#"{"bindings": [{"role": "roles/owner", "members": ["allUsers", "bob"]}]}"#,
                "bindings[0].members[1]: principal `bob`",
            ),
            (
                r#"{"bindings": [{"role": "roles/god", "members": ["allUsers"]}]}"#,
                "bindings[0].role: unknown predefined role `roles/god`",
            ),
            (
                r#"{"bindings": [{"role": "projects/p/roles/asker", "members": ["allUsers"]}]}"#,
                "`projects/p/roles/asker` does not exist",
            ),
            (r#"{"version": 2}"#, "version 2 is not supported"),
            (
                r#"{"version": 1, "bindings": [{"role": "roles/owner", "members": ["allUsers"], "condition": {"title": "t", "expression": "true"}}]}"#,
                "must be 3 because bindings[0] has a condition",
            ),
            (
                r#"{"bindings": [{"role": "roles/owner", "members": ["allUsers"], "condition": {"title": "t", "expression": "true"}}]}"#,
                "must be 3",
            ),
            (
                r#"{"version": 3, "bindings": [{"role": "roles/owner", "members": ["allUsers"], "condition": {"expression": "true"}}]}"#,
                "bindings[0].condition.title is required",
            ),
            (
                r#"{"version": 3, "bindings": [{"role": "roles/owner", "members": ["allUsers"], "condition": {"title": "t", "expression": "request.time < 3"}}]}"#,
                "bindings[0].condition.expression: condition `request.time < 3` does not parse at position 16",
            ),
        ] {
            let err = problem(json);
            assert!(err.contains(needle), "{json}\n{err}");
        }
    }

    #[test]
    fn custom_roles_in_policies() {
        let name = CustomRoleName::parse("projects/p/roles/asker").expect("name");
        let doc = RoleDocument {
            title: "Asker".into(),
            included_permissions: vec!["services.ask".into()],
            ..RoleDocument::default()
        };
        let roles = Roles::with_custom([CustomRole::from_document(&name, &doc).expect("role")]);
        let policy = Policy::from_json(
            r#"{"bindings": [{"role": "projects/p/roles/asker", "members": ["allUsers"]}]}"#,
        )
        .expect("json");
        policy.validate(&on(), &roles).expect("valid in p");
        let err = policy
            .validate(&Resource::parse("projects/q").expect("resource"), &roles)
            .expect_err("other project")
            .to_string();
        assert!(err.contains("belongs to project `p`"), "{err}");
    }

    #[test]
    fn etags_follow_content() {
        let mut policy = Policy::default();
        let empty = policy.compute_etag();
        assert_eq!(empty.len(), 12);
        assert_eq!(empty, Policy::default().compute_etag());
        policy.add_binding("roles/viewer", "allUsers", None);
        let one = policy.compute_etag();
        assert_ne!(one, empty);
        // The etag field is not part of the content.
        assert_eq!(policy.clone().with_etag().compute_etag(), one);

        let read = policy.clone().with_etag();
        let mut mine = read.clone();
        mine.add_binding("roles/owner", "user:a@example.com", None);
        assert!(mine.etag_matches(&policy));
        // Someone else changed it first: the stale etag is refused.
        let mut theirs = read.clone();
        theirs.add_binding("roles/editor", "user:b@example.com", None);
        let err = mine.check_etag(&theirs).expect_err("stale");
        assert!(err.to_string().contains("read it again"), "{err}");
        // No etag: Google's blind overwrite.
        mine.etag = None;
        assert!(mine.etag_matches(&theirs));
    }

    #[test]
    fn etag_is_stable() {
        // Pinned: a change to the hash or the canonical form would make every
        // stored etag stale at once.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(base64(b"\x00\x01\x02\x03\x04\x05\x06\x07"), "AAECAwQFBgc=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
        let policy = Policy::from_json(
            r#"{"bindings": [{"role": "roles/viewer", "members": ["allUsers"]}]}"#,
        )
        .expect("json");
        assert_eq!(policy.compute_etag(), policy.clone().compute_etag());
        assert_eq!(
            Policy::default().compute_etag(),
            base64(&fnv1a64(br#"{"bindings":[],"version":1}"#).to_be_bytes())
        );
    }

    #[test]
    fn add_and_remove_bindings_like_gcloud() {
        let mut policy = Policy::default();
        assert!(policy.add_binding("roles/serviceUser", "serviceAccount:a@p.rouse", None));
        assert!(!policy.add_binding("roles/serviceUser", "serviceAccount:a@p.rouse", None));
        assert!(policy.add_binding("roles/serviceUser", "group:eng", None));
        assert_eq!(policy.bindings.len(), 1);
        let expires = Condition {
            expression: r#"request.time < timestamp("2027-01-01T00:00:00Z")"#.into(),
            title: "expires".into(),
            description: None,
        };
        assert!(policy.add_binding(
            "roles/serviceUser",
            "user:c@example.com",
            Some(expires.clone())
        ));
        assert_eq!(policy.version, 3);
        assert_eq!(policy.bindings.len(), 2);
        policy.validate(&on(), &Roles::new()).expect("valid");

        let err = policy
            .remove_binding(
                "roles/serviceUser",
                "user:c@example.com",
                &ConditionFilter::Unconditional,
            )
            .expect_err("conditional only");
        assert!(
            matches!(err, RemoveBindingError::OnlyConditional { .. }),
            "{err}"
        );
        assert_eq!(
            policy.remove_binding(
                "roles/serviceUser",
                "user:c@example.com",
                &ConditionFilter::Exactly(expires)
            ),
            Ok(1)
        );
        assert_eq!(policy.bindings.len(), 1, "emptied binding dropped");
        assert_eq!(
            policy.remove_binding("roles/serviceUser", "group:eng", &ConditionFilter::All),
            Ok(1)
        );
        assert!(matches!(
            policy.remove_binding("roles/owner", "group:eng", &ConditionFilter::All),
            Err(RemoveBindingError::NotFound { .. })
        ));
    }
}
