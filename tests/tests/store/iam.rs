//! The contract of the IAM traits: policies (a compare-and-swap on their
//! etag), service accounts and keys, custom roles, groups, the version
//! permission checks poll, and the audit log.

use std::time::{Duration, SystemTime};

use rouse_store::{
    AccountStore, AuditDecision, AuditEntry, AuditFilter, AuditStore, GroupRecord, GroupStore,
    IamSnapshot, PolicyStore, PublicKeyRecord, RoleStore, ServiceAccountRecord, StoreError,
    StoredPolicy,
};

use crate::{Fixture, contract, micros};

contract!(
    concurrent_set_policy_exactly_one_wins,
    etags_guard_policies_unless_forced,
    every_iam_change_bumps_the_version_and_load_sees_it,
    another_store_sees_the_version_change,
    pruning_removes_old_decisions_and_keeps_changes,
    groups_and_their_members_bump_the_version_and_load,
    groups_list_with_their_members,
    accounts_keys_roles_settings_and_audit,
    concurrent_creates_of_one_name_exactly_one_wins,
    concurrent_adds_of_one_member_exactly_one_adds,
);

fn policy(resource: &str, etag: &str) -> StoredPolicy {
    StoredPolicy {
        resource: resource.into(),
        document: format!(r#"{{"version":1,"bindings":[],"etag":"{etag}"}}"#),
        etag: etag.into(),
        updated_at: SystemTime::now(),
    }
}

fn account(email: &str) -> ServiceAccountRecord {
    ServiceAccountRecord {
        email: email.into(),
        project: "p".into(),
        display_name: "A".into(),
        description: String::new(),
        disabled: false,
        created_at: SystemTime::now(),
    }
}

fn key(id: &str, principal: &str) -> PublicKeyRecord {
    PublicKeyRecord {
        key_id: id.into(),
        principal: principal.into(),
        public_key: "pk".into(),
        created_at: SystemTime::now(),
    }
}

fn group(name: &str, members: &[&str]) -> GroupRecord {
    GroupRecord {
        name: name.into(),
        description: format!("the {name} group"),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        created_at: SystemTime::now(),
    }
}

fn audit(principal: &str, at: SystemTime, decision: AuditDecision) -> AuditEntry {
    AuditEntry {
        id: 0,
        at,
        principal: principal.into(),
        action: "question".into(),
        resource: "projects/p/services/s".into(),
        permission: "services.ask".into(),
        decision,
        detail: "{}".into(),
    }
}

async fn concurrent_set_policy_exactly_one_wins(f: &impl Fixture) {
    let store = f.open().await;
    store
        .set_policy(&policy("projects/p", "e1"), None, false)
        .await
        .expect("first");
    // All based on e1: one wins, the others see a stale etag.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .set_policy(&policy("projects/p", &format!("e2-{i}")), Some("e1"), false)
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(()) => won += 1,
            Err(lost) => {
                assert!(matches!(lost, StoreError::EtagMismatch { .. }), "{lost}");
                assert!(lost.to_string().contains("read the policy again"), "{lost}");
            }
        }
    }
    assert_eq!(won, 1);
    let stored = store
        .get_policy("projects/p")
        .await
        .expect("get")
        .expect("present");
    assert!(stored.etag.starts_with("e2-"), "{}", stored.etag);
    assert_eq!(store.list_policies().await.expect("list"), [stored]);
}

async fn etags_guard_policies_unless_forced(f: &impl Fixture) {
    let store = f.open().await;
    let stale = store
        .set_policy(&policy("projects/p", "e1"), Some("e0"), false)
        .await;
    assert!(
        matches!(stale, Err(StoreError::EtagMismatch { ref expected, .. }) if expected == "e0"),
        "{stale:?}"
    );
    store
        .set_policy(&policy("projects/p", "e1"), None, false)
        .await
        .expect("first");
    let exists = store
        .set_policy(&policy("projects/p", "e2"), None, false)
        .await;
    assert!(
        matches!(exists, Err(StoreError::EtagMismatch { .. })),
        "{exists:?}"
    );
    store
        .set_policy(&policy("projects/p", "e3"), Some("nonsense"), true)
        .await
        .expect("forced");
    let got = store
        .get_policy("projects/p")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.etag, "e3");
    assert_eq!(got.document, policy("projects/p", "e3").document);
    assert!(store.delete_policy("projects/p").await.expect("delete"));
    assert!(!store.delete_policy("projects/p").await.expect("delete"));
    assert_eq!(store.get_policy("projects/p").await.expect("get"), None);
    assert!(store.list_policies().await.expect("list").is_empty());
}

async fn every_iam_change_bumps_the_version_and_load_sees_it(f: &impl Fixture) {
    let store = f.open().await;
    let v0 = store.iam_version().await.expect("version");
    store
        .set_policy(&policy("projects/p", "e1"), None, false)
        .await
        .expect("set");
    let v1 = store.iam_version().await.expect("version");
    assert!(v1 > v0);
    store
        .insert_service_account(&account("a@p.rouse"))
        .await
        .expect("account");
    store
        .insert_key(&key("k1", "serviceAccount:a@p.rouse"))
        .await
        .expect("key");
    store
        .set_service_account_disabled("a@p.rouse", true)
        .await
        .expect("disable");
    store
        .set_trust_sender_attribute("p", true)
        .await
        .expect("trust");
    let v2 = store.iam_version().await.expect("version");
    assert!(v2 > v1);
    // Audit entries are not permission inputs: no bump.
    store
        .append_audit(&audit(
            "user:o@x",
            SystemTime::now(),
            AuditDecision::Granted,
        ))
        .await
        .expect("audit");
    assert_eq!(store.iam_version().await.expect("version"), v2);
    // Neither is a write that is refused.
    store
        .set_policy(&policy("projects/p", "e2"), Some("stale"), false)
        .await
        .expect_err("stale");
    assert_eq!(store.iam_version().await.expect("version"), v2);
    store
        .put_role("projects/p/roles/asker", "{}")
        .await
        .expect("role");
    let v3 = store.iam_version().await.expect("version");
    assert!(v3 > v2);
    let data = store.load_iam().await.expect("load");
    assert_eq!(data.version, v3);
    assert_eq!(data.policies.len(), 1);
    assert_eq!(
        data.roles,
        [("projects/p/roles/asker".to_owned(), "{}".to_owned())]
    );
    assert_eq!(data.keys.len(), 1);
    assert!(data.keys[0].1, "the key's account is disabled");
    assert_eq!(data.trusted_projects, vec!["p".to_owned()]);
    store
        .insert_key(&key("k2", "user:u@example.com"))
        .await
        .expect("user key");
    let data = store.load_iam().await.expect("load");
    let user_key = data
        .keys
        .iter()
        .find(|(k, _)| k.key_id == "k2")
        .expect("the user's key");
    assert!(!user_key.1, "a user's key has no account to disable it");
}

/// Permission checkers in other processes poll the version.
async fn another_store_sees_the_version_change(f: &impl Fixture) {
    let (writer, checker) = (f.open().await, f.open().await);
    let before = checker.iam_version().await.expect("version");
    writer
        .set_policy(&policy("projects/p", "e1"), None, false)
        .await
        .expect("set");
    let after = checker.iam_version().await.expect("version");
    assert!(after > before);
    let data = checker.load_iam().await.expect("load");
    assert_eq!(data.version, after);
    assert_eq!(data.policies.len(), 1);
}

async fn pruning_removes_old_decisions_and_keeps_changes(f: &impl Fixture) {
    let store = f.open().await;
    let now = SystemTime::now();
    let entry = |age_days: u64, decision: &str| AuditEntry {
        id: 0,
        at: now - Duration::from_secs(age_days * 86_400),
        principal: "user:a@example.com".into(),
        action: "GetService".into(),
        resource: "projects/p".into(),
        permission: "services.get".into(),
        decision: decision.parse().expect("decision word"),
        detail: "{}".into(),
    };
    let mut ids = Vec::new();
    for (age, decision) in [
        (40, "granted"),
        (40, "denied"),
        (40, "changed"),
        (35, "granted"),
        (1, "granted"),
    ] {
        ids.push(
            store
                .append_audit(&entry(age, decision))
                .await
                .expect("append"),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    let before = now - Duration::from_secs(30 * 86_400);
    assert_eq!(
        store.prune_audit_decisions(before, 2).await.expect("prune"),
        2
    );
    assert_eq!(
        store.prune_audit_decisions(before, 2).await.expect("prune"),
        1
    );
    assert_eq!(
        store.prune_audit_decisions(before, 2).await.expect("prune"),
        0
    );
    let left = store
        .list_audit(&AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    let decisions: Vec<&str> = left.iter().map(|e| e.decision.as_str()).collect();
    assert_eq!(decisions, ["granted", "changed"], "newest first");
    assert_eq!(left[0].id, ids[4]);
    assert_eq!(micros(left[0].at), micros(entry(1, "granted").at));
}

async fn groups_and_their_members_bump_the_version_and_load(f: &impl Fixture) {
    let store = f.open().await;
    let v0 = store.iam_version().await.expect("version");
    let eng = group("eng", &["user:a@example.com"]);
    store.create_group(&eng).await.expect("create");
    assert!(matches!(
        store.create_group(&eng).await,
        Err(StoreError::Duplicate { what: "group", .. })
    ));
    let v1 = store.iam_version().await.expect("version");
    assert!(v1 > v0);
    assert_eq!(
        store
            .add_group_member("eng", "serviceAccount:b@p.rouse")
            .await
            .expect("add"),
        Some(true)
    );
    assert_eq!(
        store
            .add_group_member("eng", "serviceAccount:b@p.rouse")
            .await
            .expect("add again"),
        Some(false)
    );
    assert_eq!(
        store
            .add_group_member("nobody", "user:a@example.com")
            .await
            .expect("add to a missing group"),
        None
    );
    let v2 = store.iam_version().await.expect("version");
    assert!(v2 > v1);
    let got = store.get_group("eng").await.expect("get").expect("exists");
    assert_eq!(
        got.members,
        ["serviceAccount:b@p.rouse", "user:a@example.com"]
    );
    assert_eq!(got.description, eng.description);
    assert_eq!(micros(got.created_at), micros(eng.created_at));
    let data = store.load_iam().await.expect("load");
    assert_eq!(data.memberships.len(), 2);
    assert_eq!(data.version, v2);
    assert!(
        store
            .remove_group_member("eng", "user:a@example.com")
            .await
            .expect("remove")
    );
    assert!(
        !store
            .remove_group_member("eng", "user:a@example.com")
            .await
            .expect("remove again")
    );
    assert!(store.iam_version().await.expect("version") > v2);
    assert_eq!(store.list_groups().await.expect("list")[0].members.len(), 1);
    assert!(store.delete_group("eng").await.expect("delete"));
    assert!(!store.delete_group("eng").await.expect("delete again"));
    assert!(store.load_iam().await.expect("load").memberships.is_empty());
    assert!(store.get_group("eng").await.expect("get").is_none());
}

async fn groups_list_with_their_members(f: &impl Fixture) {
    let store = f.open().await;
    // Byte order: upper case sorts before lower case.
    for g in [
        group("ops", &["user:z@example.com", "user:B@example.com"]),
        group("Admins", &["user:a@example.com"]),
        group("empty", &[]),
        group("eng", &["user:b@example.com", "user:a@example.com"]),
    ] {
        store.create_group(&g).await.expect("create");
    }
    let listed: Vec<(String, Vec<String>)> = store
        .list_groups()
        .await
        .expect("list")
        .into_iter()
        .map(|g| (g.name, g.members))
        .collect();
    let expect = |name: &str, members: &[&str]| {
        (
            name.to_owned(),
            members.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        listed,
        [
            expect("Admins", &["user:a@example.com"]),
            expect("empty", &[]),
            expect("eng", &["user:a@example.com", "user:b@example.com"]),
            expect("ops", &["user:B@example.com", "user:z@example.com"]),
        ]
    );
}

async fn accounts_keys_roles_settings_and_audit(f: &impl Fixture) {
    let store = f.open().await;
    let a = account("a@p.rouse");
    store.insert_service_account(&a).await.expect("insert");
    let dup = store
        .insert_service_account(&a)
        .await
        .expect_err("duplicate");
    assert!(
        matches!(
            dup,
            StoreError::Duplicate {
                what: "service account",
                ..
            }
        ),
        "{dup}"
    );
    assert!(dup.to_string().contains("a@p.rouse"), "{dup}");
    let mut other = account("b@q.rouse");
    other.project = "q".into();
    store
        .insert_service_account(&other)
        .await
        .expect("insert other");
    assert!(
        store
            .set_service_account_disabled("a@p.rouse", true)
            .await
            .expect("disable")
    );
    assert!(
        !store
            .set_service_account_disabled("nobody@p.rouse", true)
            .await
            .expect("disable unknown")
    );
    let got = store
        .get_service_account("a@p.rouse")
        .await
        .expect("get")
        .expect("present");
    assert!(got.disabled);
    assert_eq!(micros(got.created_at), micros(a.created_at));
    let emails = |accounts: Vec<ServiceAccountRecord>| {
        accounts.into_iter().map(|a| a.email).collect::<Vec<_>>()
    };
    assert_eq!(
        emails(store.list_service_accounts(None).await.expect("list")),
        ["a@p.rouse", "b@q.rouse"]
    );
    assert_eq!(
        emails(store.list_service_accounts(Some("q")).await.expect("list")),
        ["b@q.rouse"]
    );

    let k1 = key("k1", "serviceAccount:a@p.rouse");
    store.insert_key(&k1).await.expect("key");
    store
        .insert_key(&key("k1", "serviceAccount:a@p.rouse"))
        .await
        .expect_err("a key id is unique");
    let mut k2 = key("k2", "serviceAccount:a@p.rouse");
    k2.created_at = k1.created_at + Duration::from_secs(1);
    store.insert_key(&k2).await.expect("key");
    let ids: Vec<String> = store
        .list_keys("serviceAccount:a@p.rouse")
        .await
        .expect("keys")
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    assert_eq!(ids, ["k1", "k2"], "oldest first");
    assert!(store.delete_key("k2").await.expect("delete key"));
    assert!(!store.delete_key("k2").await.expect("delete key again"));
    // Deleting the account revokes its keys at once.
    assert!(
        store
            .delete_service_account("a@p.rouse")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_service_account("a@p.rouse")
            .await
            .expect("delete again")
    );
    assert_eq!(store.get_key("k1").await.expect("get key"), None);
    assert!(
        store
            .list_service_accounts(Some("p"))
            .await
            .expect("list")
            .is_empty()
    );

    store
        .put_role("projects/p/roles/asker", "{}")
        .await
        .expect("role");
    store
        .put_role("projects/p/roles/asker", r#"{"v":2}"#)
        .await
        .expect("role again");
    store
        .put_role("projects/p/roles/Admin", "{}")
        .await
        .expect("role");
    assert_eq!(
        store
            .get_role("projects/p/roles/asker")
            .await
            .expect("get role")
            .as_deref(),
        Some(r#"{"v":2}"#)
    );
    let names: Vec<String> = store
        .list_roles()
        .await
        .expect("roles")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["projects/p/roles/Admin", "projects/p/roles/asker"]);
    assert!(
        store
            .delete_role("projects/p/roles/asker")
            .await
            .expect("delete role")
    );
    assert_eq!(
        store
            .get_role("projects/p/roles/asker")
            .await
            .expect("get role"),
        None
    );

    assert!(!store.trusts_sender_attribute("p").await.expect("trust"));
    store
        .set_trust_sender_attribute("p", true)
        .await
        .expect("set trust");
    assert!(store.trusts_sender_attribute("p").await.expect("trust"));
    store
        .set_trust_sender_attribute("p", false)
        .await
        .expect("unset trust");
    assert!(!store.trusts_sender_attribute("p").await.expect("trust"));

    let t0 = SystemTime::now();
    for (principal, decision) in [
        ("user:a", AuditDecision::Granted),
        ("user:b", AuditDecision::Denied),
        ("user:a", AuditDecision::Denied),
    ] {
        store
            .append_audit(&audit(principal, t0 + Duration::from_millis(1), decision))
            .await
            .expect("audit");
    }
    let mut elsewhere = audit(
        "user:a",
        t0 - Duration::from_secs(60),
        AuditDecision::Denied,
    );
    elsewhere.resource = "projects/q".into();
    store.append_audit(&elsewhere).await.expect("audit");
    let denied = store
        .list_audit(&AuditFilter {
            decision: Some(AuditDecision::Denied),
            resource_prefix: Some("projects/p".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0].principal, "user:a", "newest first");
    let by_a = store
        .list_audit(&AuditFilter {
            principal: Some("user:a".into()),
            since: Some(t0),
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(by_a.len(), 2);
    let all = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 4, "limit 0 means the default");
    let one = store
        .list_audit(&AuditFilter {
            limit: 1,
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(one, [all[0].clone()]);
}

async fn concurrent_creates_of_one_name_exactly_one_wins(f: &impl Fixture) {
    let store = f.open().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let account = store.insert_service_account(&account("a@p.rouse")).await;
            let member = format!("user:{i}@example.com");
            let group = store.create_group(&group("eng", &[member.as_str()])).await;
            (account, group)
        }));
    }
    let (mut accounts, mut groups) = (0, 0);
    for t in tasks {
        let (account, group) = t.await.expect("join");
        match account {
            Ok(()) => accounts += 1,
            Err(StoreError::Duplicate { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        match group {
            Ok(()) => groups += 1,
            Err(StoreError::Duplicate { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((accounts, groups), (1, 1));
    let eng = store.get_group("eng").await.expect("get").expect("exists");
    assert_eq!(eng.members.len(), 1, "only the winner's members");
}

async fn concurrent_adds_of_one_member_exactly_one_adds(f: &impl Fixture) {
    let store = f.open().await;
    store
        .create_group(&group("eng", &[]))
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.add_group_member("eng", "user:a@example.com").await
        }));
    }
    let mut added = 0;
    for t in tasks {
        if t.await.expect("join").expect("add") == Some(true) {
            added += 1;
        }
    }
    assert_eq!(added, 1);
    assert_eq!(
        store
            .get_group("eng")
            .await
            .expect("get")
            .expect("exists")
            .members,
        ["user:a@example.com"]
    );
}
