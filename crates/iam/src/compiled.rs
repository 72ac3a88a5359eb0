//! A policy compiled for deciding requests: parsed once, indexed by member.
//!
//! Compiling never fails. What cannot be parsed is set aside and grants
//! nothing: a member that does not parse matches nobody, a binding whose role
//! does not parse matches nobody, and a condition that does not parse is
//! false. The problems are kept ([`CompiledPolicy::problems`]) for logs and
//! `explain`. This is what the request path uses for stored policies, which
//! were validated when they were set but may since have met a newer or older
//! release, or a deleted custom role.
//!
//! The index maps each member's canonical string to the bindings it appears
//! in, so a check looks up only the caller's own keys (its principal, its
//! groups, `allAuthenticatedUsers`, `allUsers`) and visits only the bindings
//! that name them: O(bindings of the caller), whatever the policy's size.

use std::collections::HashMap;

use crate::condition::Expr;
use crate::policy::{Policy, PolicyError};
use crate::principal::Principal;
use crate::resource::Resource;
use crate::role::RoleName;

/// A policy attached to its resource, ready for [`crate::evaluate`].
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    resource: Resource,
    pub(crate) bindings: Vec<CompiledBinding>,
    /// Member key → indices into `bindings`, ascending.
    pub(crate) index: HashMap<String, Vec<u32>>,
    problems: Vec<PolicyError>,
    etag: String,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledBinding {
    /// Position in the document, for messages.
    pub position: usize,
    /// The role as written; also the custom-role catalog key.
    pub role_key: String,
    /// `None`: the role does not parse, the binding grants nothing.
    pub role: Option<RoleName>,
    pub condition: Option<CompiledCondition>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledCondition {
    pub title: String,
    pub expression: String,
    /// `Err`: does not parse, the condition is false.
    pub expr: Result<Expr, String>,
}

impl CompiledPolicy {
    /// Compiles `policy` as the policy on `resource`.
    pub fn new(resource: Resource, policy: &Policy) -> Self {
        let problems = policy.problems(&resource, None);
        let mut bindings = Vec::with_capacity(policy.bindings.len());
        let mut index: HashMap<String, Vec<u32>> = HashMap::new();
        for (position, binding) in policy.bindings.iter().enumerate() {
            // Bindings beyond u32::MAX are ignored (they cannot be stored anyway).
            let Ok(slot) = u32::try_from(bindings.len()) else {
                break;
            };
            let condition = binding.condition.as_ref().map(|c| CompiledCondition {
                title: c.title.clone(),
                expression: c.expression.clone(),
                expr: Expr::parse(&c.expression).map_err(|e| e.to_string()),
            });
            bindings.push(CompiledBinding {
                position,
                role_key: binding.role.clone(),
                role: RoleName::parse(&binding.role).ok(),
                condition,
            });
            for member in &binding.members {
                // Only canonical spellings are indexed: a key is what a
                // caller's principal displays as.
                let Ok(principal) = Principal::parse(member) else {
                    continue;
                };
                let slots = index.entry(principal.to_string()).or_default();
                if slots.last() != Some(&slot) {
                    slots.push(slot);
                }
            }
        }
        Self {
            resource,
            bindings,
            index,
            problems,
            etag: policy.compute_etag(),
        }
    }

    /// An empty policy on `resource`.
    pub fn empty(resource: Resource) -> Self {
        Self::new(resource, &Policy::default())
    }

    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The etag of the content this was compiled from.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// What was set aside while compiling (each grants nothing).
    pub fn problems(&self) -> &[PolicyError] {
        &self.problems
    }

    /// How many bindings the policy has.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}
