//! Deciding a request: [`evaluate`] gives a [`Permit`] (the evidence a handler
//! needs) or a typed [`Denied`]; [`test_permissions`] and [`explain`] answer
//! the administrative questions.
//!
//! The effective policy of a resource is the union of the bindings of the
//! policies given that govern it (its own and its ancestors'); a policy on any
//! other resource is ignored. A binding grants a permission when it names the
//! caller (directly, through a group, `allAuthenticatedUsers` or `allUsers`),
//! its role resolves to a set containing the permission (a `DISABLED`, missing
//! or foreign custom role resolves to nothing), and its condition, if any,
//! parses and is true. Anything else denies.

use std::fmt;
use std::time::SystemTime;

use crate::compiled::{CompiledBinding, CompiledPolicy};
use crate::condition::Context;
use crate::permission::{Permission, PermissionSet};
use crate::principal::{Caller, Principal};
use crate::resource::Resource;
use crate::role::{Resolution, RoleName, Roles};
use crate::time::Timestamp;

/// One permission check.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub caller: &'a Caller,
    pub permission: Permission,
    /// The resource acted on (`projects/P` for project-level calls such as
    /// `services.create`, `projects/P/services/S` for a service).
    pub resource: &'a Resource,
    /// The request's time, what `request.time` reads.
    pub time: SystemTime,
}

/// Evidence that a request is allowed: which binding, on which resource's
/// policy, matched the caller through which member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub permission: Permission,
    /// The resource whose policy holds the binding (the service or an ancestor).
    pub resource: Resource,
    pub role: RoleName,
    /// The member that matched: the caller itself, one of its groups,
    /// `allAuthenticatedUsers` or `allUsers`.
    pub member: Principal,
    /// The binding's condition title, if it has a condition.
    pub condition: Option<String>,
}

/// A denial. Its message names the caller, the permission and the resource,
/// never the policy (it is safe to show to the caller); the fields of the
/// [`Denial`] it derefs to say why. Boxed so that results and error enums
/// carrying it stay small.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(Box<Denial>);

/// What a [`Denied`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `None` for an anonymous caller.
    pub caller: Option<Principal>,
    pub permission: Permission,
    /// The resource acted on.
    pub resource: Resource,
    pub time: Timestamp,
    pub reason: DenyReason,
}

impl Denied {
    pub fn new(denial: Denial) -> Self {
        Self(Box::new(denial))
    }

    pub fn into_inner(self) -> Denial {
        *self.0
    }
}

impl std::ops::Deref for Denied {
    type Target = Denial;
    fn deref(&self) -> &Denial {
        &self.0
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} does not have permission `{}` on `{}`",
            caller_name(&self.caller),
            self.permission,
            self.resource
        )
    }
}

fn caller_name(caller: &Option<Principal>) -> String {
    match caller {
        Some(p) => format!("`{p}`"),
        None => "an anonymous caller".to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No binding that names this caller has a role with the permission.
    NoBinding,
    /// Bindings naming this caller have a role that lists the permission, but
    /// none of them grants it: each says why.
    NotGranted(Vec<Blocked>),
}

/// A binding that would have granted the permission but did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub resource: Resource,
    /// The binding's position in that resource's policy (`bindings[i]`).
    pub binding: usize,
    /// The role as written in the policy.
    pub role: String,
    pub member: Principal,
    pub why: BlockedBy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockedBy {
    /// The condition evaluated to false at the request's time and resource.
    ConditionFalse { title: String, expression: String },
    /// The condition does not parse, so it is false (fail closed).
    ConditionInvalid { title: String, error: String },
    /// The custom role's stage is `DISABLED`.
    RoleDisabled,
    /// The custom role belongs to another project.
    RoleOutOfScope,
}

struct Scan<'a> {
    caller: &'a Caller,
    resource: &'a Resource,
    time: Timestamp,
    /// `resource`'s name, made once and only if a condition asks for it.
    resource_name: Option<String>,
}

impl Scan<'_> {
    fn condition_holds(&mut self, binding: &CompiledBinding) -> Result<(), BlockedBy> {
        let Some(condition) = &binding.condition else {
            return Ok(());
        };
        match &condition.expr {
            Err(error) => Err(BlockedBy::ConditionInvalid {
                title: condition.title.clone(),
                error: error.clone(),
            }),
            Ok(expr) => {
                let resource = self.resource;
                let name = self
                    .resource_name
                    .get_or_insert_with(|| resource.to_string());
                let cx = Context {
                    time: self.time,
                    resource_name: name,
                };
                if expr.evaluate(&cx) {
                    Ok(())
                } else {
                    Err(BlockedBy::ConditionFalse {
                        title: condition.title.clone(),
                        expression: condition.expression.clone(),
                    })
                }
            }
        }
    }

    /// Calls `visit` for every binding of the governing policies that names
    /// the caller, with the member that matched and how its role resolves.
    /// `visit` returns `true` to stop.
    fn for_each_binding<'p>(
        &mut self,
        policies: &[&'p CompiledPolicy],
        roles: &Roles,
        mut visit: impl FnMut(
            &mut Self,
            &'p CompiledPolicy,
            &'p CompiledBinding,
            &'p RoleName,
            &Principal,
            Resolution,
        ) -> bool,
    ) {
        let caller = self.caller;
        for policy in policies {
            if !policy.resource().contains(self.resource) {
                continue;
            }
            for (key, member) in caller.keys() {
                let Some(slots) = policy.index.get(key.as_str()) else {
                    continue;
                };
                for slot in slots {
                    let binding = &policy.bindings[*slot as usize];
                    let Some(role) = &binding.role else {
                        continue;
                    };
                    let resolution = roles.resolve(role, &binding.role_key, policy.resource());
                    if visit(self, policy, binding, role, member, resolution) {
                        return;
                    }
                }
            }
        }
    }
}

/// Decides `request` against the policies that govern its resource (pass
/// the project's and the service's; policies on other resources are ignored).
pub fn evaluate(
    request: &Request<'_>,
    policies: &[&CompiledPolicy],
    roles: &Roles,
) -> Result<Permit, Denied> {
    let permission = request.permission;
    let mut scan = Scan {
        caller: request.caller,
        resource: request.resource,
        time: Timestamp::from_system_time(request.time),
        resource_name: None,
    };
    let mut permit = None;
    let mut blocked = Vec::new();
    scan.for_each_binding(
        policies,
        roles,
        |scan, policy, binding, role, member, resolution| {
            if !resolution.declared().contains(permission) {
                return false;
            }
            let why = match resolution {
                Resolution::Grants(_) => match scan.condition_holds(binding) {
                    Ok(()) => {
                        permit = Some((policy, binding, role, member.clone()));
                        return true;
                    }
                    Err(why) => why,
                },
                Resolution::Disabled(_) => BlockedBy::RoleDisabled,
                Resolution::OutOfScope(_) => BlockedBy::RoleOutOfScope,
                Resolution::Missing => return false,
            };
            blocked.push(Blocked {
                resource: policy.resource().clone(),
                binding: binding.position,
                role: binding.role_key.clone(),
                member: member.clone(),
                why,
            });
            false
        },
    );
    match permit {
        Some((policy, binding, role, member)) => Ok(Permit {
            permission,
            resource: policy.resource().clone(),
            role: role.clone(),
            member,
            condition: binding.condition.as_ref().map(|c| c.title.clone()),
        }),
        None => Err(Denied::new(Denial {
            caller: request.caller.principal().cloned(),
            permission,
            resource: request.resource.clone(),
            time: scan.time,
            reason: if blocked.is_empty() {
                DenyReason::NoBinding
            } else {
                DenyReason::NotGranted(blocked)
            },
        })),
    }
}

/// Every permission `caller` holds on `resource` at `time`.
pub fn effective_permissions(
    caller: &Caller,
    resource: &Resource,
    time: SystemTime,
    policies: &[&CompiledPolicy],
    roles: &Roles,
) -> PermissionSet {
    let mut scan = Scan {
        caller,
        resource,
        time: Timestamp::from_system_time(time),
        resource_name: None,
    };
    let mut held = PermissionSet::EMPTY;
    scan.for_each_binding(policies, roles, |scan, _, binding, _, _, resolution| {
        let granted = resolution.granted();
        if !held.is_superset(granted) && scan.condition_holds(binding).is_ok() {
            held = held.union(granted);
        }
        held == PermissionSet::ALL
    });
    held
}

/// Which of `permissions` `caller` holds on `resource` (Google's
/// `testIamPermissions`), in the order asked.
pub fn test_permissions(
    caller: &Caller,
    resource: &Resource,
    time: SystemTime,
    permissions: &[Permission],
    policies: &[&CompiledPolicy],
    roles: &Roles,
) -> Vec<Permission> {
    let held = effective_permissions(caller, resource, time, policies, roles);
    permissions
        .iter()
        .copied()
        .filter(|p| held.contains(*p))
        .collect()
}

/// The answer to `rouse iam explain`: the decision and a human-readable
/// account of it. Unlike [`Denied`]'s message this describes the policies, so
/// it is for administrators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Result<Permit, Denied>,
    /// One line per fact, most important first.
    pub lines: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(line)?;
        }
        Ok(())
    }
}

/// Decides `request` like [`evaluate`] and says why, naming bindings.
pub fn explain(request: &Request<'_>, policies: &[&CompiledPolicy], roles: &Roles) -> Explanation {
    let decision = evaluate(request, policies, roles);
    let permission = request.permission;
    let caller = request.caller.to_string();
    let time = Timestamp::from_system_time(request.time);
    let mut lines = Vec::new();
    match &decision {
        Ok(permit) => {
            let condition = match &permit.condition {
                Some(title) => format!(", under condition `{title}` (true at {time})"),
                None => String::new(),
            };
            lines.push(format!(
                "granted: {caller} has `{permission}` on `{}` through {} on {}, bound to {}{condition}",
                request.resource, permit.role, permit.resource, permit.member
            ));
        }
        Err(denied) => {
            lines.push(format!("denied: {denied} at {time}"));
            if let DenyReason::NotGranted(blocked) = &denied.reason {
                for b in blocked {
                    let why = match &b.why {
                        BlockedBy::ConditionFalse { title, expression } => format!(
                            "its condition `{title}` is false at {time} for `{}` ({expression})",
                            request.resource
                        ),
                        BlockedBy::ConditionInvalid { title, error } => {
                            format!(
                                "its condition `{title}` is invalid, so it grants nothing: {error}"
                            )
                        }
                        BlockedBy::RoleDisabled => {
                            "the role's stage is DISABLED, so it grants nothing".to_owned()
                        }
                        BlockedBy::RoleOutOfScope => format!(
                            "the custom role belongs to another project and grants nothing on {}",
                            b.resource
                        ),
                    };
                    lines.push(format!(
                        "- {} on {} (bindings[{}]) is bound to {} but {why}",
                        b.role, b.resource, b.binding, b.member
                    ));
                }
            }
            // Bindings that name the caller but whose role lacks the permission.
            let mut scan = Scan {
                caller: request.caller,
                resource: request.resource,
                time,
                resource_name: None,
            };
            scan.for_each_binding(policies, roles, |_, policy, binding, _, member, resolution| {
                let line = match resolution {
                    Resolution::Missing => Some(format!(
                        "- {} on {} (bindings[{}]) is bound to {} but the role does not exist",
                        binding.role_key,
                        policy.resource(),
                        binding.position,
                        member
                    )),
                    r if !r.declared().contains(permission) => Some(format!(
                        "- {} on {} (bindings[{}]) is bound to {} but does not include `{permission}`",
                        binding.role_key,
                        policy.resource(),
                        binding.position,
                        member
                    )),
                    _ => None,
                };
                lines.extend(line);
                false
            });
            let governing: Vec<String> = policies
                .iter()
                .filter(|p| p.resource().contains(request.resource))
                .map(|p| p.resource().to_string())
                .collect();
            let who = if request.caller.is_anonymous() {
                "allUsers".to_owned()
            } else {
                format!("{caller}, its groups, allAuthenticatedUsers or allUsers")
            };
            if governing.is_empty() {
                lines.push(format!(
                    "- no policy governing `{}` was given, so nothing is granted",
                    request.resource
                ));
            } else {
                let other = if lines.len() > 1 { "other " } else { "" };
                lines.push(format!(
                    "- no {other}binding on {} grants `{permission}` to {who}",
                    governing.join(" or ")
                ));
            }
            lines.push(format!(
                "- roles that include `{permission}`: {}",
                roles.roles_with(permission).join(", ")
            ));
        }
    }
    for policy in policies {
        if !policy.resource().contains(request.resource) {
            lines.push(format!(
                "note: the policy on {} does not govern `{}` and was ignored",
                policy.resource(),
                request.resource
            ));
        }
        for problem in policy.problems() {
            lines.push(format!(
                "note: the policy on {} has a part that grants nothing: {problem}",
                policy.resource()
            ));
        }
    }
    Explanation { decision, lines }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::role::{CustomRole, CustomRoleName, PredefinedRole, RoleDocument, Stage};
    use crate::{GroupName, Timestamp};

    fn resource(s: &str) -> Resource {
        Resource::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn principal(s: &str) -> Principal {
        Principal::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn caller(s: &str, groups: &[&str]) -> Caller {
        let groups = groups.iter().map(|g| GroupName::parse(g).expect("group"));
        Caller::authenticated(principal(s), groups).expect("identity")
    }

    fn compiled(on: &str, yaml: &str) -> CompiledPolicy {
        let policy = Policy::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
        CompiledPolicy::new(resource(on), &policy)
    }

    fn time(s: &str) -> SystemTime {
        Timestamp::parse_rfc3339(s)
            .ok()
            .and_then(Timestamp::to_system_time)
            .expect("time")
    }

    const NOW: &str = "2026-06-01T12:00:00Z";

    fn check(
        who: &Caller,
        permission: Permission,
        on: &str,
        policies: &[&CompiledPolicy],
        roles: &Roles,
    ) -> Result<Permit, Denied> {
        let on = resource(on);
        evaluate(
            &Request {
                caller: who,
                permission,
                resource: &on,
                time: time(NOW),
            },
            policies,
            roles,
        )
    }

    #[test]
    fn a_permit_names_the_binding_that_granted() {
        let service = compiled(
            "projects/p/services/b",
            "bindings:\n- role: roles/viewer\n  members: [group:eng]\n- role: roles/serviceUser\n  members: [serviceAccount:a@p.rouse, group:eng]\n",
        );
        let a = caller("serviceAccount:a@p.rouse", &[]);
        let permit = check(
            &a,
            Permission::ServicesAsk,
            "projects/p/services/b",
            &[&service],
            &Roles::new(),
        )
        .expect("granted");
        assert_eq!(
            permit,
            Permit {
                permission: Permission::ServicesAsk,
                resource: resource("projects/p/services/b"),
                role: RoleName::Predefined(PredefinedRole::ServiceUser),
                member: principal("serviceAccount:a@p.rouse"),
                condition: None,
            }
        );
        let eng = caller("user:e@example.com", &["eng"]);
        let permit = check(
            &eng,
            Permission::ServicesAsk,
            "projects/p/services/b",
            &[&service],
            &Roles::new(),
        )
        .expect("granted through the group");
        assert_eq!(permit.member, principal("group:eng"));
        let other = caller("serviceAccount:c@p.rouse", &["ops"]);
        let denied = check(
            &other,
            Permission::ServicesAsk,
            "projects/p/services/b",
            &[&service],
            &Roles::new(),
        )
        .expect_err("not bound");
        assert_eq!(denied.reason, DenyReason::NoBinding);
        assert_eq!(
            denied.to_string(),
            "`serviceAccount:c@p.rouse` does not have permission `services.ask` on `projects/p/services/b`"
        );
        // Bound, but the role lacks the permission.
        let denied = check(
            &eng,
            Permission::ServicesDelete,
            "projects/p/services/b",
            &[&service],
            &Roles::new(),
        )
        .expect_err("viewer cannot delete");
        assert_eq!(denied.reason, DenyReason::NoBinding);
    }

    #[test]
    fn all_users_and_all_authenticated_users() {
        let public = compiled(
            "projects/p/services/pub",
            "bindings:\n- role: roles/invoker\n  members: [allUsers]\n- role: roles/viewer\n  members: [allAuthenticatedUsers]\n",
        );
        let roles = Roles::new();
        let anon = Caller::anonymous();
        let someone = caller("user:x@example.com", &[]);
        let on = "projects/p/services/pub";
        let permit =
            check(&anon, Permission::ServicesAsk, on, &[&public], &roles).expect("allUsers");
        assert_eq!(permit.member, Principal::AllUsers);
        let denied =
            check(&anon, Permission::ServicesGet, on, &[&public], &roles).expect_err("anonymous");
        assert_eq!(denied.caller, None);
        assert!(
            denied.to_string().starts_with("an anonymous caller"),
            "{denied}"
        );
        let permit = check(&someone, Permission::ServicesGet, on, &[&public], &roles)
            .expect("authenticated");
        assert_eq!(permit.member, Principal::AllAuthenticatedUsers);
        check(&someone, Permission::ServicesAsk, on, &[&public], &roles).expect("allUsers too");
    }

    #[test]
    fn the_hierarchy_is_a_union_and_other_resources_are_ignored() {
        let project = compiled(
            "projects/p",
            "bindings:\n- role: roles/deployer\n  members: [user:d@example.com]\n",
        );
        let service_b = compiled(
            "projects/p/services/b",
            "bindings:\n- role: roles/serviceUser\n  members: [user:u@example.com]\n",
        );
        let service_c = compiled(
            "projects/p/services/c",
            "bindings:\n- role: roles/owner\n  members: [user:u@example.com]\n",
        );
        let other_project = compiled(
            "projects/q",
            "bindings:\n- role: roles/owner\n  members: [user:d@example.com]\n",
        );
        let root = compiled(
            "rouse",
            "bindings:\n- role: roles/owner\n  members: [user:root@example.com]\n",
        );
        let roles = Roles::new();
        let d = caller("user:d@example.com", &[]);
        let u = caller("user:u@example.com", &[]);
        let policies = [&root, &project, &service_b, &service_c, &other_project];
        let on = "projects/p/services/b";
        let permit =
            check(&d, Permission::ServicesDeploy, on, &policies, &roles).expect("project grant");
        assert_eq!(permit.resource, resource("projects/p"));
        check(&u, Permission::ServicesAsk, on, &policies, &roles).expect("service grant");
        // Owner of c is not owner of b; owner of q is not owner of p.
        check(&u, Permission::ServicesDelete, on, &policies, &roles)
            .expect_err("c's policy ignored");
        check(&d, Permission::ServicesDelete, on, &policies, &roles)
            .expect_err("q's policy ignored");
        // A service policy does not govern its project.
        check(&u, Permission::ServicesAsk, "projects/p", &policies, &roles)
            .expect_err("not upward");
        let root_caller = caller("user:root@example.com", &[]);
        let permit = check(
            &root_caller,
            Permission::IamSetPolicy,
            on,
            &policies,
            &roles,
        )
        .expect("root");
        assert_eq!(permit.resource, Resource::Root);
        let permitted = test_permissions(
            &u,
            &resource(on),
            time(NOW),
            &[
                Permission::ServicesDelete,
                Permission::ServicesAsk,
                Permission::ServicesGet,
            ],
            &policies,
            &roles,
        );
        assert_eq!(
            permitted,
            vec![Permission::ServicesAsk, Permission::ServicesGet]
        );
        assert!(
            effective_permissions(&d, &resource("projects/q"), time(NOW), &policies, &roles)
                .is_superset(PermissionSet::ALL)
        );
    }

    #[test]
    fn an_expired_time_bounded_grant_denies_and_explain_says_why() {
        let service = compiled(
            "projects/p/services/b",
            "version: 3\nbindings:\n- role: roles/serviceUser\n  members: [serviceAccount:a@p.rouse]\n  condition:\n    title: expires\n    expression: request.time < timestamp(\"2026-01-01T00:00:00Z\")\n",
        );
        let a = caller("serviceAccount:a@p.rouse", &[]);
        let roles = Roles::new();
        let on = resource("projects/p/services/b");
        let before = Request {
            caller: &a,
            permission: Permission::ServicesAsk,
            resource: &on,
            time: time("2025-12-31T23:00:00Z"),
        };
        let permit = evaluate(&before, &[&service], &roles).expect("still valid");
        assert_eq!(permit.condition.as_deref(), Some("expires"));
        let after = Request {
            time: time(NOW),
            ..before
        };
        let denied = evaluate(&after, &[&service], &roles).expect_err("expired");
        let DenyReason::NotGranted(blocked) = &denied.reason else {
            panic!("{denied:?}");
        };
        assert_eq!(blocked.len(), 1);
        assert_eq!(blocked[0].member, principal("serviceAccount:a@p.rouse"));
        assert!(
            matches!(&blocked[0].why, BlockedBy::ConditionFalse { title, .. } if title == "expires")
        );
        assert!(
            !denied.to_string().contains("expires"),
            "the denial must not reveal the policy"
        );

        let text = explain(&after, &[&service], &roles).to_string();
        assert!(
            text.contains(
                "roles/serviceUser on projects/p/services/b (bindings[0]) is bound to serviceAccount:a@p.rouse but its condition `expires` is false at 2026-06-01T12:00:00Z"
            ),
            "{text}"
        );
        let text = explain(&before, &[&service], &roles).to_string();
        assert!(
            text.starts_with("granted: serviceAccount:a@p.rouse has `services.ask`"),
            "{text}"
        );
        assert!(text.contains("under condition `expires`"), "{text}");
    }

    #[test]
    fn starts_with_on_a_project_binding_limits_it_to_some_services() {
        let project = compiled(
            "projects/p",
            "version: 3\nbindings:\n- role: roles/invoker\n  members: [group:dev]\n  condition:\n    title: dev services\n    expression: resource.name.startsWith(\"projects/p/services/dev-\")\n",
        );
        let dev = caller("user:d@example.com", &["dev"]);
        let roles = Roles::new();
        check(
            &dev,
            Permission::ServicesAsk,
            "projects/p/services/dev-a",
            &[&project],
            &roles,
        )
        .expect("dev service");
        check(
            &dev,
            Permission::ServicesAsk,
            "projects/p/services/prod",
            &[&project],
            &roles,
        )
        .expect_err("prod");
    }

    #[test]
    fn broken_parts_of_a_stored_policy_grant_nothing_and_the_rest_works() {
        let policy = Policy {
            bindings: vec![
                crate::Binding {
                    role: "roles/owner".into(),
                    members: vec!["user:a@example.com".into()],
                    condition: Some(crate::Condition {
                        expression: "request.time.getHours() < 5".into(),
                        title: "broken".into(),
                        description: None,
                    }),
                },
                crate::Binding {
                    role: "roles/nonsense".into(),
                    members: vec!["user:a@example.com".into()],
                    condition: None,
                },
                crate::Binding {
                    role: "roles/owner".into(),
                    members: vec!["User:A@example.com".into(), "robot".into()],
                    condition: None,
                },
                crate::Binding {
                    role: "roles/viewer".into(),
                    members: vec!["user:a@example.com".into()],
                    condition: None,
                },
            ],
            etag: None,
            version: 3,
        };
        let compiled = CompiledPolicy::new(resource("projects/p"), &policy);
        assert_eq!(compiled.problems().len(), 4, "{:?}", compiled.problems());
        let a = caller("user:a@example.com", &[]);
        let roles = Roles::new();
        let denied = check(
            &a,
            Permission::ServicesDelete,
            "projects/p",
            &[&compiled],
            &roles,
        )
        .expect_err("broken condition is false");
        assert!(matches!(
            &denied.reason,
            DenyReason::NotGranted(b) if matches!(b[0].why, BlockedBy::ConditionInvalid { .. })
        ));
        check(
            &a,
            Permission::ServicesGet,
            "projects/p",
            &[&compiled],
            &roles,
        )
        .expect("viewer still works");
        let on = resource("projects/p");
        let text = explain(
            &Request {
                caller: &a,
                permission: Permission::ServicesDelete,
                resource: &on,
                time: time(NOW),
            },
            &[&compiled],
            &roles,
        )
        .to_string();
        assert!(text.contains("is invalid, so it grants nothing"), "{text}");
        assert!(text.contains("roles/viewer on projects/p (bindings[3]) is bound to user:a@example.com but does not include `services.delete`"), "{text}");
        assert!(
            text.contains("note: the policy on projects/p has a part that grants nothing"),
            "{text}"
        );
    }

    #[test]
    fn custom_roles_disabled_deleted_and_foreign_grant_nothing() {
        let name = CustomRoleName::parse("projects/p/roles/asker").expect("name");
        let doc = RoleDocument {
            title: "Asker".into(),
            included_permissions: vec!["services.ask".into()],
            stage: Stage::Ga,
            ..RoleDocument::default()
        };
        let mut role = CustomRole::from_document(&name, &doc).expect("role");
        let mut roles = Roles::with_custom([role.clone()]);
        let yaml = "bindings:\n- role: projects/p/roles/asker\n  members: [user:a@example.com]\n";
        let in_p = compiled("projects/p/services/b", yaml);
        let in_q = compiled("projects/q/services/b", yaml);
        let a = caller("user:a@example.com", &[]);
        let permit = check(
            &a,
            Permission::ServicesAsk,
            "projects/p/services/b",
            &[&in_p],
            &roles,
        )
        .expect("GA role");
        assert_eq!(permit.role, RoleName::Custom(name.clone()));
        let denied = check(
            &a,
            Permission::ServicesAsk,
            "projects/q/services/b",
            &[&in_q],
            &roles,
        )
        .expect_err("foreign");
        assert!(
            matches!(&denied.reason, DenyReason::NotGranted(b) if b[0].why == BlockedBy::RoleOutOfScope)
        );

        role.stage = Stage::Disabled;
        roles.insert(role);
        let denied = check(
            &a,
            Permission::ServicesAsk,
            "projects/p/services/b",
            &[&in_p],
            &roles,
        )
        .expect_err("disabled");
        assert!(
            matches!(&denied.reason, DenyReason::NotGranted(b) if b[0].why == BlockedBy::RoleDisabled)
        );
        assert!(
            test_permissions(
                &a,
                &resource("projects/p/services/b"),
                time(NOW),
                Permission::ALL,
                &[&in_p],
                &roles
            )
            .is_empty()
        );

        roles.remove(&name);
        let denied = check(
            &a,
            Permission::ServicesAsk,
            "projects/p/services/b",
            &[&in_p],
            &roles,
        )
        .expect_err("deleted");
        assert_eq!(denied.reason, DenyReason::NoBinding);
        let on = resource("projects/p/services/b");
        let text = explain(
            &Request {
                caller: &a,
                permission: Permission::ServicesAsk,
                resource: &on,
                time: time(NOW),
            },
            &[&in_p],
            &roles,
        )
        .to_string();
        assert!(text.contains("but the role does not exist"), "{text}");
        assert!(text.contains("roles that include `services.ask`: roles/owner, roles/editor, roles/serviceUser, roles/invoker"), "{text}");
    }

    #[test]
    fn no_policies_deny_everything() {
        let a = caller("user:a@example.com", &[]);
        for p in Permission::ALL {
            let denied = check(&a, *p, "projects/p/services/b", &[], &Roles::new())
                .expect_err("nothing bound");
            assert_eq!(denied.reason, DenyReason::NoBinding);
        }
    }
}
