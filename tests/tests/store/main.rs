//! The store contract: every behaviour the roles rely on, run against both
//! adapters, SQLite (a file in a temporary directory) and PostgreSQL (a
//! server of the test's own, `rouse_tests::postgres`). A test is written
//! once, generic over the store, and `contract!` runs it on each.

use std::future::Future;
use std::time::{Duration, SystemTime};

use rouse_core::{ProjectName, Service, ServiceName};
use rouse_store::{
    BuildStore, DispatchStore, IamStore, LeaseStore, NodeStore, PgStore, RolloutStore, SecretStore,
    SqliteStore, Store, StoreError, TrialStore, TriggerStore,
};
use rouse_tests::postgres::Postgres;
use uuid::Uuid;

mod builds;
mod dispatch;
mod iam;

/// Every store trait: what a contract test may call.
pub trait AllStores:
    Store
    + DispatchStore
    + TriggerStore
    + BuildStore
    + RolloutStore
    + TrialStore
    + SecretStore
    + IamStore
    + LeaseStore
    + NodeStore
    + Clone
{
}
impl<T> AllStores for T where
    T: Store
        + DispatchStore
        + TriggerStore
        + BuildStore
        + RolloutStore
        + TrialStore
        + SecretStore
        + IamStore
        + LeaseStore
        + NodeStore
        + Clone
{
}

/// Where a test's store lives; `open` may be called again to reopen it.
pub trait Fixture {
    type S: AllStores;
    fn open(&self) -> impl Future<Output = Self::S>;
}

pub struct Sqlite(tempfile::TempDir);

impl Sqlite {
    pub async fn new() -> Self {
        Self(tempfile::tempdir().expect("tempdir"))
    }
}

impl Fixture for Sqlite {
    type S = SqliteStore;
    async fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.0.path().join("nested/rouse.db")).expect("open the SQLite store")
    }
}

pub struct Pg {
    url: String,
    _server: Postgres,
}

impl Pg {
    pub async fn new() -> Self {
        let server = Postgres::start(false);
        let url = server.create_database("rouse").await;
        Self {
            url,
            _server: server,
        }
    }
}

impl Fixture for Pg {
    type S = PgStore;
    async fn open(&self) -> PgStore {
        PgStore::connect(&self.url)
            .await
            .expect("connect to the PostgreSQL store")
    }
}

/// Runs each named contract test (an `async fn(&impl Fixture)` in the
/// invoking module) on SQLite and on PostgreSQL.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = $crate::Sqlite::new().await;
                    super::$name(&fixture).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = $crate::Pg::new().await;
                    super::$name(&fixture).await;
                }
            )*
        }
    };
}
pub(crate) use contract;

pub fn service(project: &str, name: &str) -> Service {
    let p = ProjectName::parse(project).expect("valid project");
    let n = ServiceName::parse(&p, name).expect("valid name");
    Service::new(p, n, Uuid::new_v4(), SystemTime::now())
}

/// Microseconds since the epoch: what both stores keep of a time.
pub fn micros(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_micros()
}

mod services {
    use super::*;

    contract!(
        round_trip_survives_reopen,
        duplicates_and_namespace_collisions_are_refused,
        stale_updates_conflict,
        concurrent_writes_keep_their_own_results,
        list_filters_by_project,
    );

    async fn round_trip_survives_reopen(f: &impl Fixture) {
        let mut s = service("experiment_2", "hpc-preprocessor");
        s.env.set("A".into(), "1".into()).expect("valid env");
        s.scaling.idle_timeout = Duration::from_millis(1500);
        {
            let store = f.open().await;
            store.insert_service(&s).await.expect("insert");
        }
        let store = f.open().await;
        let got = store
            .get_service(&s.project, &s.name)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.uuid, s.uuid);
        assert_eq!(got.scaling, s.scaling);
        assert_eq!(got.env, s.env);
        assert_eq!(got.status, s.status);
        assert_eq!(got.generation, s.generation);
        // Timestamps are kept to the microsecond.
        assert_eq!(micros(got.created_at), micros(s.created_at));
        let by_uuid = store
            .get_service_by_uuid(s.uuid)
            .await
            .expect("get by uuid")
            .expect("present");
        assert_eq!(by_uuid.qualified_name(), s.qualified_name());
        assert!(
            store
                .get_service_by_uuid(Uuid::new_v4())
                .await
                .expect("get unknown")
                .is_none()
        );
    }

    async fn duplicates_and_namespace_collisions_are_refused(f: &impl Fixture) {
        let store = f.open().await;
        store
            .insert_service(&service("experiment_2", "a"))
            .await
            .expect("first");
        let dup = store.insert_service(&service("experiment_2", "a")).await;
        assert!(
            matches!(dup, Err(StoreError::AlreadyExists { .. })),
            "{dup:?}"
        );
        let clash = store.insert_service(&service("experiment-2", "b")).await;
        let msg = clash.expect_err("namespace clash").to_string();
        assert!(
            msg.contains("`experiment-2`") && msg.contains("`experiment_2`"),
            "{msg}"
        );
        // The failed inserts left nothing behind.
        assert_eq!(store.list_services(None).await.expect("list").len(), 1);
    }

    async fn stale_updates_conflict(f: &impl Fixture) {
        let store = f.open().await;
        let s = service("p", "svc");
        store.insert_service(&s).await.expect("insert");
        let mut a = s.clone();
        a.scaling.max_instances = 7;
        a.node_selector.insert("zone".into(), "b".into());
        a.ingress = rouse_core::IngressPolicy::Internal;
        a.scaling.freeze = true;
        a.scaling.frozen_timeout = std::time::Duration::from_secs(120);
        a.scaling.max_retries = 3;
        a.dead_letter_topic = Some("rouse-dlq".into());
        let stored = store.update_service(&a).await.expect("first update");
        assert_eq!(stored.generation, 2);
        let mut b = s.clone();
        b.scaling.concurrency = 9;
        let err = store.update_service(&b).await.expect_err("stale");
        assert!(
            matches!(err, StoreError::Conflict { expected: 1, .. }),
            "{err}"
        );
        let read = store
            .get_service_by_uuid(s.uuid)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(read.scaling, a.scaling, "freezing and retry settings too");
        assert_eq!(read.dead_letter_topic.as_deref(), Some("rouse-dlq"));
        assert_eq!(read.node_selector, a.node_selector);
        assert_eq!(read.ingress, rouse_core::IngressPolicy::Internal);
        assert!(store.delete_service(s.uuid).await.expect("delete"));
        let gone = store.update_service(&stored).await.expect_err("deleted");
        assert!(matches!(gone, StoreError::NotFound { .. }), "{gone}");
        assert!(!store.delete_service(s.uuid).await.expect("delete again"));
    }

    /// Writes at the same time still succeed or fail one by one: of two
    /// services with one name, exactly one is recorded.
    async fn concurrent_writes_keep_their_own_results(f: &impl Fixture) {
        let store = f.open().await;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let store = store.clone();
            let s = service("p", &format!("svc-{}", i / 2));
            tasks.push(tokio::spawn(async move { store.insert_service(&s).await }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(()) => ok += 1,
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(ok, 50);
        assert_eq!(store.list_services(None).await.expect("list").len(), 50);
    }

    async fn list_filters_by_project(f: &impl Fixture) {
        let store = f.open().await;
        for (p, n) in [("b", "x"), ("a", "z"), ("a", "y")] {
            store.insert_service(&service(p, n)).await.expect("insert");
        }
        let all: Vec<_> = store
            .list_services(None)
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.qualified_name())
            .collect();
        assert_eq!(all, ["a-y", "a-z", "b-x"]);
        let a = ProjectName::parse("a").expect("valid");
        assert_eq!(store.list_services(Some(&a)).await.expect("list").len(), 2);
    }
}

/// PostgreSQL only: a change written through one store (another process,
/// another machine) wakes the roles listening through another.
mod notices {
    use std::time::Duration;

    use rouse_store::{BuildStore, Changes, RevisionStore, Store};
    use tokio::sync::watch;

    use super::*;

    async fn woken(rx: &mut watch::Receiver<u64>, what: &str) {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap_or_else(|_| panic!("no notice of {what} within 5 s"))
            .expect("the changes are alive");
        rx.borrow_and_update();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_written_elsewhere_wakes_the_listener() {
        let f = Pg::new().await;
        let (here, elsewhere) = (f.open().await, f.open().await);
        let changes = Changes::new();
        let (mut services, mut builds, mut revisions) =
            (changes.services(), changes.builds(), changes.revisions());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listening = here.listen(changes.clone(), async {
            let _ = stopped.await;
        });
        // Listening begins with a wake-up for whatever changed before.
        woken(&mut services, "the start").await;
        woken(&mut builds, "the start").await;
        woken(&mut revisions, "the start").await;

        let s = service("p", "svc");
        elsewhere.insert_service(&s).await.expect("insert");
        woken(&mut services, "a new service").await;
        elsewhere
            .insert_revision(&s, &builds::image("one"), SystemTime::now())
            .await
            .expect("revision");
        woken(&mut services, "a new revision").await;
        woken(&mut revisions, "a new revision").await;
        elsewhere
            .insert_build(&builds::build("b1", s.uuid))
            .await
            .expect("build");
        woken(&mut builds, "a queued build").await;
        // Executions, the hot path, send no notice.
        assert!(!builds.has_changed().expect("alive"));

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), listening)
            .await
            .expect("the listener stops on shutdown")
            .expect("join");
    }
}

/// Leases: one holder at a time, taken over only once expired.
mod leases {
    use std::time::Duration;

    use rouse_store::{Lease, LeaseStore};

    use super::*;

    contract!(
        a_lease_has_one_holder_until_it_expires,
        racing_takers_one_wins,
        a_holder_renews_all_its_leases_and_they_are_listed_by_prefix
    );

    const TTL: Duration = Duration::from_secs(10);

    async fn a_lease_has_one_holder_until_it_expires(f: &impl Fixture) {
        let (one, other) = (f.open().await, f.open().await);
        let t0 = SystemTime::now();
        assert_eq!(
            one.acquire_lease("dispatcher", "a", TTL, t0)
                .await
                .expect("take"),
            Lease::Held
        );
        let held = other
            .acquire_lease("dispatcher", "b", TTL, t0 + Duration::from_secs(1))
            .await
            .expect("try");
        let Lease::Taken { holder, until } = held else {
            panic!("b took a held lease: {held:?}")
        };
        assert_eq!(holder, "a");
        assert_eq!(micros(until), micros(t0 + TTL));
        // Renewed, it lasts from the renewal on.
        let t1 = t0 + Duration::from_secs(8);
        assert_eq!(
            one.acquire_lease("dispatcher", "a", TTL, t1)
                .await
                .expect("renew"),
            Lease::Held
        );
        assert!(matches!(
            other
                .acquire_lease("dispatcher", "b", TTL, t0 + TTL + Duration::from_secs(1))
                .await
                .expect("try"),
            Lease::Taken { .. }
        ));
        // Not renewed: expired, and taken over.
        let late = t1 + TTL + Duration::from_secs(1);
        assert_eq!(
            other
                .acquire_lease("dispatcher", "b", TTL, late)
                .await
                .expect("take over"),
            Lease::Held
        );
        let lost = one
            .acquire_lease("dispatcher", "a", TTL, late)
            .await
            .expect("renew too late");
        assert!(
            matches!(&lost, Lease::Taken { holder, .. } if holder == "b"),
            "{lost:?}"
        );
        // Only the holder gives it up; then it is free at once.
        one.release_lease("dispatcher", "a").await.expect("release");
        assert!(matches!(
            one.acquire_lease("dispatcher", "a", TTL, late)
                .await
                .expect("try"),
            Lease::Taken { .. }
        ));
        other
            .release_lease("dispatcher", "b")
            .await
            .expect("release");
        assert_eq!(
            one.acquire_lease("dispatcher", "a", TTL, late)
                .await
                .expect("take"),
            Lease::Held
        );
        // A holder known to be dead is replaced at once, unexpired; one
        // that is not the named one is not.
        assert!(matches!(
            other
                .take_lease_from("dispatcher", "c", "b", TTL, late)
                .await
                .expect("try"),
            Lease::Taken { .. }
        ));
        assert_eq!(
            other
                .take_lease_from("dispatcher", "c", "a", TTL, late)
                .await
                .expect("take from the dead"),
            Lease::Held
        );
        // Leases are named: another name is another lease.
        assert_eq!(
            other
                .acquire_lease("other", "b", TTL, late)
                .await
                .expect("take"),
            Lease::Held
        );
    }

    async fn racing_takers_one_wins(f: &impl Fixture) {
        let mut tasks = Vec::new();
        let now = SystemTime::now();
        for i in 0..8 {
            let store = f.open().await;
            tasks.push(tokio::spawn(async move {
                store
                    .acquire_lease("dispatcher", &format!("d{i}"), TTL, now)
                    .await
            }));
        }
        let mut held = 0;
        for t in tasks {
            if t.await.expect("join").expect("acquire") == Lease::Held {
                held += 1;
            }
        }
        assert_eq!(held, 1);
    }

    async fn a_holder_renews_all_its_leases_and_they_are_listed_by_prefix(f: &impl Fixture) {
        let store = f.open().await;
        let t0 = SystemTime::now();
        for (name, holder) in [
            ("service:1", "a"),
            ("service:2", "a"),
            ("service:3", "b"),
            ("dispatcher:a", "a"),
        ] {
            assert_eq!(
                store
                    .acquire_lease(name, holder, TTL, t0)
                    .await
                    .expect("take"),
                Lease::Held
            );
        }
        // Renewed later than it expired: still a's, as no one took it.
        let late = t0 + TTL + Duration::from_secs(5);
        let mut renewed = store.renew_leases("a", TTL, late).await.expect("renew");
        renewed.sort();
        assert_eq!(renewed, ["dispatcher:a", "service:1", "service:2"]);
        let services = store.leases("service:").await.expect("list");
        let seen: Vec<_> = services
            .iter()
            .map(|l| (l.name.as_str(), l.holder.as_str()))
            .collect();
        assert_eq!(
            seen,
            [("service:1", "a"), ("service:2", "a"), ("service:3", "b")]
        );
        let until = |name: &str| {
            services
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.until)
                .expect("listed")
        };
        assert!(until("service:1") > late, "renewed");
        assert!(until("service:3") < late, "b's is not renewed by a");
        assert_eq!(store.leases("").await.expect("all").len(), 4);
        assert!(store.leases("nothing:").await.expect("none").is_empty());
        assert!(
            store
                .renew_leases("c", TTL, late)
                .await
                .expect("none")
                .is_empty()
        );
    }
}

/// Nodes: named once, listed by name, drained and removed by name.
mod nodes {
    use std::collections::BTreeMap;

    use rouse_store::{NodeRecord, StoreError};

    use super::*;

    contract!(nodes_are_named_once_drained_and_removed);

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            docker_host: format!("unix:///run/{name}.sock"),
            capacity: 4,
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            draining: false,
            created_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        }
    }

    async fn nodes_are_named_once_drained_and_removed(f: &impl Fixture) {
        let store = f.open().await;
        store.insert_node(&node("b")).await.expect("b");
        store.insert_node(&node("a")).await.expect("a");
        match store.insert_node(&node("a")).await {
            Err(StoreError::Duplicate { what: "node", name }) => assert_eq!(name, "a"),
            other => panic!("a second `a`: {other:?}"),
        }
        let listed = store.list_nodes().await.expect("list");
        assert_eq!(listed, [node("a"), node("b")]);
        assert!(store.set_node_draining("a", true).await.expect("drain"));
        assert!(!store.set_node_draining("nobody", true).await.expect("none"));
        let listed = f.open().await.list_nodes().await.expect("reopened");
        assert!(listed[0].draining && !listed[1].draining);
        assert!(store.delete_node("a").await.expect("remove"));
        assert!(!store.delete_node("a").await.expect("gone"));
        assert_eq!(store.list_nodes().await.expect("list"), [node("b")]);
    }
}
