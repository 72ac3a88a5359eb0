use std::time::{Duration, SystemTime};

use rouse_identity::{Account, KeyFile};
use rouse_store::{
    AccountStore, GroupStore, PolicyStore, PublicKeyRecord, ServiceAccountRecord, SqliteStore,
    StoredPolicy,
};

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    authority: Arc<Authority>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("rouse.db")).expect("store"));
    let authority = Authority::load(store.clone()).await.expect("load");
    Fixture {
        _dir: dir,
        store,
        authority,
    }
}

fn project() -> ProjectName {
    ProjectName::parse("p").expect("project")
}

fn service() -> ServiceName {
    ServiceName::parse(&project(), "b").expect("service")
}

fn service_resource() -> Resource {
    Resource::Service(project(), service())
}

async fn account_key(store: &SqliteStore, name: &str) -> KeyFile {
    let email = format!("{name}@p.rouse");
    store
        .insert_service_account(&ServiceAccountRecord {
            email: email.clone(),
            project: "p".into(),
            display_name: String::new(),
            description: String::new(),
            disabled: false,
            created_at: SystemTime::now(),
        })
        .await
        .expect("account");
    let account = Account::service_account_email(&email).expect("account");
    let (key, entry) = KeyFile::generate(account, "", SystemTime::now()).expect("key");
    store
        .insert_key(&PublicKeyRecord {
            key_id: entry.key_id,
            principal: entry.principal,
            public_key: entry.public_key.to_base64(),
            created_at: SystemTime::now(),
        })
        .await
        .expect("insert key");
    key
}

async fn grant(store: &SqliteStore, resource: &str, member: &str, role: &str) {
    let mut policy = store
        .get_policy(resource)
        .await
        .expect("get")
        .map(|p| Policy::from_json(&p.document).expect("parse"))
        .unwrap_or_default();
    policy.add_binding(role, member, None);
    let policy = policy.with_etag();
    store
        .set_policy(
            &StoredPolicy {
                resource: resource.into(),
                document: policy.to_json(),
                etag: policy.etag.clone().unwrap_or_default(),
                updated_at: SystemTime::now(),
            },
            None,
            true,
        )
        .await
        .expect("set");
}

fn question_token(key: &KeyFile, question_uuid: &str) -> String {
    rouse_identity::sign(
        key,
        &rouse_identity::service_audience(&project(), &service()),
        Some(question_uuid),
        SystemTime::now(),
        Duration::from_secs(600),
    )
    .expect("sign")
}

#[tokio::test]
async fn a_grant_is_seen_after_refresh_and_names_its_binding() {
    let f = fixture().await;
    let key = account_key(&f.store, "a").await;
    let caller = f.authority.snapshot().question_caller(
        Some(&question_token(&key, "q1")),
        &project(),
        &service(),
        "q1",
        None,
        SystemTime::now(),
    );
    // The key was added after the first load: unknown until refreshed.
    assert!(caller.is_err(), "{caller:?}");
    assert!(f.authority.refresh().await.expect("refresh"));
    let snapshot = f.authority.snapshot();
    let caller = snapshot
        .question_caller(
            Some(&question_token(&key, "q1")),
            &project(),
            &service(),
            "q1",
            None,
            SystemTime::now(),
        )
        .expect("caller");
    let denied = snapshot
        .check(
            &caller,
            Permission::ServicesAsk,
            &service_resource(),
            SystemTime::now(),
        )
        .expect_err("no binding yet");
    assert!(
        denied.to_string().contains("serviceAccount:a@p.rouse"),
        "{denied}"
    );
    grant(
        &f.store,
        "projects/p/services/b",
        "serviceAccount:a@p.rouse",
        "roles/serviceUser",
    )
    .await;
    assert!(f.authority.refresh().await.expect("refresh"));
    let permit = f
        .authority
        .snapshot()
        .check(
            &caller,
            Permission::ServicesAsk,
            &service_resource(),
            SystemTime::now(),
        )
        .expect("granted");
    assert_eq!(permit.role.to_string(), "roles/serviceUser");
    assert!(
        !f.authority.refresh().await.expect("refresh"),
        "nothing changed"
    );
}

#[tokio::test]
async fn question_tokens_are_bound_to_service_and_question() {
    let f = fixture().await;
    let key = account_key(&f.store, "a").await;
    f.authority.refresh().await.expect("refresh");
    let snapshot = f.authority.snapshot();
    let token = question_token(&key, "q1");
    let replayed = snapshot.question_caller(
        Some(&token),
        &project(),
        &service(),
        "q2",
        None,
        SystemTime::now(),
    );
    assert!(matches!(replayed, Err(AuthError::Token(_))), "{replayed:?}");
    let other = ServiceName::parse(&project(), "c").expect("name");
    let elsewhere = snapshot.question_caller(
        Some(&token),
        &project(),
        &other,
        "q1",
        None,
        SystemTime::now(),
    );
    assert!(elsewhere.is_err(), "{elsewhere:?}");
    let api = snapshot.api_caller(Some(&format!("Bearer {token}")), SystemTime::now());
    assert!(api.is_err(), "a question token is not an API token");
}

#[tokio::test]
async fn disabled_accounts_and_deleted_keys_stop_working_at_once() {
    let f = fixture().await;
    let key = account_key(&f.store, "a").await;
    f.authority.refresh().await.expect("refresh");
    let bearer = format!(
        "Bearer {}",
        rouse_identity::sign(
            &key,
            rouse_identity::API_AUDIENCE,
            None,
            SystemTime::now(),
            Duration::from_secs(60)
        )
        .expect("sign")
    );
    let now = SystemTime::now();
    assert!(
        f.authority
            .snapshot()
            .api_caller(Some(&bearer), now)
            .is_ok()
    );
    f.store
        .set_service_account_disabled("a@p.rouse", true)
        .await
        .expect("disable");
    f.authority.refresh().await.expect("refresh");
    let err = f
        .authority
        .snapshot()
        .api_caller(Some(&bearer), now)
        .expect_err("disabled");
    assert!(err.to_string().contains("disabled"), "{err}");
    f.store
        .set_service_account_disabled("a@p.rouse", false)
        .await
        .expect("enable");
    f.store.delete_key(key.key_id()).await.expect("delete");
    f.authority.refresh().await.expect("refresh");
    let err = f
        .authority
        .snapshot()
        .api_caller(Some(&bearer), now)
        .expect_err("deleted");
    assert!(err.to_string().contains("not known"), "{err}");
    let err = f
        .authority
        .snapshot()
        .api_caller(Some("Basic abc"), now)
        .expect_err("not bearer");
    assert_eq!(err, AuthError::NotBearer);
    assert!(
        f.authority
            .snapshot()
            .api_caller(None, now)
            .expect("anonymous")
            .is_anonymous()
    );
}

#[tokio::test]
async fn trusted_projects_ask_as_the_sender_service() {
    let f = fixture().await;
    let snapshot = f.authority.snapshot();
    let anonymous = snapshot
        .question_caller(
            None,
            &project(),
            &service(),
            "q",
            Some("p/a:v1"),
            SystemTime::now(),
        )
        .expect("anonymous");
    assert!(anonymous.is_anonymous());
    f.store
        .set_trust_sender_attribute("p", true)
        .await
        .expect("trust");
    grant(&f.store, "projects/p", "service:p/a", "roles/serviceUser").await;
    f.authority.refresh().await.expect("refresh");
    let snapshot = f.authority.snapshot();
    let caller = snapshot
        .question_caller(
            None,
            &project(),
            &service(),
            "q",
            Some("p/a:v1"),
            SystemTime::now(),
        )
        .expect("service caller");
    assert_eq!(principal_name(&caller), "service:p/a");
    snapshot
        .check(
            &caller,
            Permission::ServicesAsk,
            &service_resource(),
            SystemTime::now(),
        )
        .expect("inherited from the project");
}

#[tokio::test]
async fn keep_fresh_sees_a_change_made_elsewhere_within_a_second() {
    let f = fixture().await;
    let shutdown = CancellationToken::new();
    let task = f.authority.keep_fresh(shutdown.clone());
    let before = f.authority.snapshot().version();
    // Another process's change: straight into the store.
    grant(&f.store, "projects/p", "allUsers", "roles/serviceUser").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while f.authority.snapshot().version() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not seen within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("task");
}

#[tokio::test]
async fn a_group_binding_grants_its_members_and_only_while_they_are_in_it() {
    let f = fixture().await;
    let key = account_key(&f.store, "a").await;
    grant(&f.store, "projects/p", "group:askers", "roles/serviceUser").await;
    f.store
        .create_group(&rouse_store::GroupRecord {
            name: "askers".into(),
            description: String::new(),
            members: Vec::new(),
            created_at: SystemTime::now(),
        })
        .await
        .expect("group");
    f.authority.refresh().await.expect("refresh");
    let ask = |snapshot: &Snapshot| {
        let caller = snapshot
            .question_caller(
                Some(&question_token(&key, "q1")),
                &project(),
                &service(),
                "q1",
                None,
                SystemTime::now(),
            )
            .expect("caller");
        snapshot.check(
            &caller,
            Permission::ServicesAsk,
            &service_resource(),
            SystemTime::now(),
        )
    };
    assert!(ask(&f.authority.snapshot()).is_err(), "not a member yet");
    f.store
        .add_group_member("askers", "serviceAccount:a@p.rouse")
        .await
        .expect("add");
    f.authority.refresh().await.expect("refresh");
    let permit = ask(&f.authority.snapshot()).expect("granted through the group");
    assert_eq!(permit.member.to_string(), "group:askers");
    // A sender trusted by its project is a principal too, and can be a member.
    f.store
        .set_trust_sender_attribute("p", true)
        .await
        .expect("trust");
    f.store
        .add_group_member("askers", "service:p/caller")
        .await
        .expect("add");
    f.authority.refresh().await.expect("refresh");
    let snapshot = f.authority.snapshot();
    let sender = snapshot
        .question_caller(
            None,
            &project(),
            &service(),
            "q2",
            Some("p/caller:1.0.0"),
            SystemTime::now(),
        )
        .expect("caller");
    assert!(
        snapshot
            .check(
                &sender,
                Permission::ServicesAsk,
                &service_resource(),
                SystemTime::now()
            )
            .is_ok()
    );
    f.store
        .remove_group_member("askers", "serviceAccount:a@p.rouse")
        .await
        .expect("remove");
    f.authority.refresh().await.expect("refresh");
    assert!(
        ask(&f.authority.snapshot()).is_err(),
        "removed from the group"
    );
}
