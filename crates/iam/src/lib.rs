//! Rouse's IAM policy engine: Google Cloud IAM's model and vocabulary, as pure
//! logic (no I/O, no clock: the caller passes the request's time).
//!
//! # The model
//!
//! - A [`Principal`] is who a binding is for: `user:EMAIL`,
//!   `serviceAccount:NAME@PROJECT.rouse`, `group:NAME`, `allAuthenticatedUsers`,
//!   `allUsers`, or `service:NAMESPACE/NAME` (an Octue service named by its
//!   sender SRUID, used where a project trusts sender attributes).
//! - A [`Caller`] is who makes a request: an authenticated identity (user,
//!   service account or service) with its groups, or anonymous. It matches a
//!   member equal to itself, `group:G` for each of its groups,
//!   `allAuthenticatedUsers` unless anonymous, and `allUsers` always.
//! - A [`Permission`] is one of a fixed set (`services.ask`, …); a
//!   [`PermissionSet`] is a `u64` mask.
//! - A role is a named permission set: [`PredefinedRole`]s (`roles/owner`,
//!   `roles/serviceUser`, …) and [`CustomRole`]s
//!   (`projects/P/roles/ID`, with a [`Stage`]), catalogued in [`Roles`].
//! - A [`Policy`] is Google's document, `{bindings: [{role, members,
//!   condition}], etag, version}`, attached to a [`Resource`]: `rouse` →
//!   `projects/P` → `projects/P/services/S`. A request on a resource is
//!   governed by the union of the bindings of its own and its ancestors'
//!   policies.
//! - A condition is a small CEL subset ([`condition`]): time bounds on
//!   `request.time` and tests of `resource.name`.
//!
//! # Deciding
//!
//! [`evaluate`] returns evidence, not a bool: a [`Permit`] naming the resource
//! whose policy granted, the role, the member that matched and the condition,
//! or a [`Denied`] whose message names only the caller, the permission and the
//! resource, and whose [`DenyReason`] says which bindings would have granted
//! but did not. [`test_permissions`] and [`explain`] answer `rouse iam
//! test-permissions` and `rouse iam explain`.
//!
//! # Failing closed
//!
//! Setting a policy is strict ([`Policy::validate`]): unknown fields, members,
//! roles, permissions, versions, untitled or unparsable conditions and
//! bindings without members are refused, each error naming where and what.
//! Deciding is lenient but closed ([`CompiledPolicy`]): whatever a stored
//! policy holds that cannot be parsed grants nothing — a bad member matches
//! nobody, an unknown or deleted role grants nothing, a condition that does
//! not parse is false — and the rest of the policy still works. A `DISABLED`
//! custom role grants nothing, a custom role grants only in its own project,
//! and a policy passed for a resource that does not govern the request is
//! ignored. No binding, no access.
//!
//! # The hot path
//!
//! A policy is compiled once (when it changes) into an index from member to
//! bindings; a [`Caller`] precomputes its keys (identity, groups,
//! `allAuthenticatedUsers`, `allUsers`). A check then does one hash lookup per
//! key per governing policy and visits only the bindings that name the
//! caller, testing a role's permissions with one AND: O(bindings of the
//! caller), independent of the policy's size, with no allocation unless it
//! permits (the [`Permit`]) or a condition reads `resource.name`. [`mod@bench`]
//! measures it.

pub mod bench;
mod compiled;
pub mod condition;
mod decision;
pub mod permission;
pub mod policy;
pub mod principal;
pub mod resource;
pub mod role;
pub mod time;

pub use compiled::CompiledPolicy;
pub use condition::{ConditionError, Expr};
pub use decision::{
    Blocked, BlockedBy, Denial, Denied, DenyReason, Explanation, Permit, Request,
    effective_permissions, evaluate, explain, test_permissions,
};
pub use permission::{Permission, PermissionError, PermissionSet};
pub use policy::{
    Binding, Condition, ConditionFilter, EtagMismatch, Policy, PolicyError, RemoveBindingError,
};
pub use principal::{
    Caller, CallerError, Email, GroupName, Principal, PrincipalError, ServiceAccountId, ServiceId,
};
pub use resource::{Resource, ResourceError};
pub use role::{
    CustomRole, CustomRoleName, PredefinedRole, Resolution, RoleDocument, RoleError, RoleName,
    Roles, Stage,
};
pub use time::Timestamp;
