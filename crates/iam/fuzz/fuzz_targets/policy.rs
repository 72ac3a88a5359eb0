//! Arbitrary bytes as a policy document (JSON or YAML, chosen by the first
//! byte), through the parser, the strict validator, the lenient compiler,
//! `evaluate`, `test_permissions` and `explain`.
//!
//! Oracles beyond "does not panic or hang": a parsed policy round-trips
//! through its own JSON and YAML; a policy that validates compiles without
//! problems; `evaluate` agrees with `effective_permissions`; a permit names a
//! member that matches the caller and a resource that governs the request.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use rouse_iam::{
    Caller, CompiledPolicy, CustomRole, CustomRoleName, GroupName, Permission, Policy, Principal,
    Request, Resource, RoleDocument, Roles, Stage, effective_permissions, evaluate, explain,
    test_permissions,
};

fn roles() -> Roles {
    let mut roles = Roles::new();
    for (id, stage) in [("asker", Stage::Ga), ("off", Stage::Disabled)] {
        let Ok(name) = CustomRoleName::parse(&format!("projects/p/roles/{id}")) else {
            continue;
        };
        let doc = RoleDocument {
            title: id.to_owned(),
            included_permissions: vec!["services.ask".to_owned()],
            stage,
            ..RoleDocument::default()
        };
        if let Ok(role) = CustomRole::from_document(&name, &doc) {
            roles.insert(role);
        }
    }
    roles
}

fn callers() -> Vec<Caller> {
    let mut callers = vec![Caller::anonymous()];
    for (who, groups) in [
        ("user:u0@example.com", &["g0"][..]),
        ("serviceAccount:sa0@p.rouse", &[][..]),
        ("service:p/s0", &["g1", "g0"][..]),
    ] {
        let groups = groups.iter().filter_map(|g| GroupName::parse(g).ok());
        if let Some(caller) = Principal::parse(who)
            .ok()
            .and_then(|p| Caller::authenticated(p, groups).ok())
        {
            callers.push(caller);
        }
    }
    callers
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let parsed = if selector & 1 == 0 {
        Policy::from_json(text)
    } else {
        Policy::from_yaml(text)
    };
    let Ok(policy) = parsed else {
        return;
    };

    assert_eq!(
        Policy::from_json(&policy.to_json()).ok().as_ref(),
        Some(&policy)
    );
    assert_eq!(
        Policy::from_yaml(&policy.to_yaml()).ok().as_ref(),
        Some(&policy)
    );

    let roles = roles();
    let resources: Vec<Resource> = [
        "projects/p",
        "projects/p/services/a",
        "projects/q/services/a",
    ]
    .into_iter()
    .filter_map(|r| Resource::parse(r).ok())
    .collect();
    // The document is placed on one resource (the selector's other bits).
    let on = &resources[usize::from(selector >> 1) % resources.len()];
    let compiled = CompiledPolicy::new(on.clone(), &policy);
    if policy.validate(on, &roles).is_ok() {
        assert!(compiled.problems().is_empty(), "{:?}", compiled.problems());
    }
    let policies = [&compiled];
    let time = UNIX_EPOCH + Duration::from_secs(1_780_000_000 + u64::from(selector) * 86_400);

    for caller in callers() {
        for resource in &resources {
            let held = effective_permissions(&caller, resource, time, &policies, &roles);
            for permission in Permission::ALL {
                let request = Request {
                    caller: &caller,
                    permission: *permission,
                    resource,
                    time,
                };
                let decision = evaluate(&request, &policies, &roles);
                assert_eq!(decision.is_ok(), held.contains(*permission));
                if let Ok(permit) = &decision {
                    assert!(caller.matches(&permit.member));
                    assert!(permit.resource.contains(resource));
                }
            }
            let asked = [Permission::ServicesAsk, Permission::IamSetPolicy];
            let _ = test_permissions(&caller, resource, time, &asked, &policies, &roles);
            let request = Request {
                caller: &caller,
                permission: Permission::ServicesAsk,
                resource,
                time,
            };
            let _ = explain(&request, &policies, &roles).to_string();
        }
    }
});
