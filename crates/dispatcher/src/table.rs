//! The services this dispatcher serves: one table behind one lock, found by
//! uuid (a service's own topic, resumed executions, cancels) or by SRUID
//! (the network topic), with one [`ServiceTable::lookup`].
//!
//! Only [`sync`](crate::sync) changes it. Lookups copy out what a caller
//! needs ([`Found`]), so the lock is never held across an `.await`.

use std::collections::HashMap;
use std::sync::RwLock;

use rouse_core::revision::Revision;
use rouse_core::{ProjectName, Service, ServiceName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::routes::{self, Routes};
use crate::worker::WorkerMsg;

/// What one service looks like to the dispatcher.
pub(crate) struct Entry {
    pub service: Service,
    pub revision: Option<Revision>,
    pub tx: mpsc::Sender<WorkerMsg>,
    /// Stops the service's intake and its workers.
    pub intake: CancellationToken,
    /// Tags and the traffic split.
    pub routes: Routes,
    /// A worker per other revision the routes reach (dropping its sender
    /// stops it).
    pub lanes: HashMap<String, mpsc::Sender<WorkerMsg>>,
    /// Whether this dispatcher runs it (holds its lease). If not, `tx`
    /// leads nowhere: its questions are recorded for the one that does.
    pub owned: bool,
}

/// How a caller names a service.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Key<'a> {
    Uuid(Uuid),
    /// `namespace/name` of its SRUID.
    Sruid(&'a str, &'a str),
    /// Its context root, `/<project>-<service>` (the ingress's routes).
    Root(&'a str),
}

/// A service as a lookup found it.
#[derive(Debug)]
pub(crate) struct Found {
    pub uuid: Uuid,
    pub project: ProjectName,
    pub name: ServiceName,
    /// Its main worker, which runs the serving revision.
    pub tx: mpsc::Sender<WorkerMsg>,
    /// The serving revision's name.
    pub serving: Option<String>,
    /// Whether this dispatcher runs it.
    pub owned: bool,
    /// Its scaling settings (timeouts included).
    pub scaling: rouse_core::service::Scaling,
    /// Where its HTTP requests may come from.
    pub ingress: rouse_core::IngressPolicy,
    routes: Routes,
    lanes: HashMap<String, mpsc::Sender<WorkerMsg>>,
}

impl Found {
    /// The worker of another revision a question should go to (`None`: the
    /// main worker); `Err` when its tag names no revision.
    pub fn lane(
        &self,
        tag: Option<&str>,
        question_uuid: &str,
    ) -> Result<Option<(String, mpsc::Sender<WorkerMsg>)>, String> {
        let chosen = routes::choose(tag, self.serving.as_deref(), &self.routes, question_uuid)?;
        Ok(chosen.and_then(|revision| {
            let tx = self.lanes.get(&revision)?.clone();
            Some((revision, tx))
        }))
    }

    /// Every worker of the service: the main one, then its lanes.
    pub fn workers(self) -> Vec<mpsc::Sender<WorkerMsg>> {
        std::iter::once(self.tx)
            .chain(self.lanes.into_values())
            .collect()
    }
}

/// Why a lookup found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Missing {
    /// Some service of this dispatcher lives in the SRUID's namespace (so
    /// the name is ours to refuse); always `false` for a uuid.
    pub namespace_is_ours: bool,
}

#[derive(Default)]
struct Inner {
    by_uuid: HashMap<Uuid, Entry>,
    /// `(namespace, name)` → service uuid, for routing by SRUID.
    by_sruid: HashMap<(String, String), Uuid>,
    /// Context root → service uuid, for routing HTTP requests.
    by_root: HashMap<String, Uuid>,
}

#[derive(Default)]
pub(crate) struct ServiceTable {
    inner: RwLock<Inner>,
}

impl ServiceTable {
    /// Finds a service by uuid or SRUID.
    pub fn lookup(&self, key: Key<'_>) -> Result<Found, Missing> {
        let missing = Missing {
            namespace_is_ours: false,
        };
        let Ok(inner) = self.inner.read() else {
            return Err(missing);
        };
        let uuid = match key {
            Key::Uuid(uuid) => Some(uuid),
            Key::Sruid(namespace, name) => inner
                .by_sruid
                .get(&(namespace.to_owned(), name.to_owned()))
                .copied(),
            Key::Root(root) => inner.by_root.get(root).copied(),
        };
        let Some(entry) = uuid.and_then(|u| inner.by_uuid.get(&u)) else {
            return Err(match key {
                Key::Uuid(_) | Key::Root(_) => missing,
                Key::Sruid(namespace, _) => Missing {
                    namespace_is_ours: inner.by_sruid.keys().any(|(ns, _)| ns == namespace),
                },
            });
        };
        Ok(Found {
            uuid: entry.service.uuid,
            project: entry.service.project.clone(),
            name: entry.service.name.clone(),
            tx: entry.tx.clone(),
            serving: entry.revision.as_ref().map(|r| r.name.clone()),
            owned: entry.owned,
            scaling: entry.service.scaling,
            ingress: entry.service.ingress,
            routes: entry.routes.clone(),
            lanes: entry.lanes.clone(),
        })
    }

    /// The generation of every service in the table.
    pub fn generations(&self) -> HashMap<Uuid, u64> {
        self.inner
            .read()
            .map(|inner| {
                inner
                    .by_uuid
                    .iter()
                    .map(|(uuid, e)| (*uuid, e.service.generation))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn insert(&self, entry: Entry) {
        if let Ok(mut inner) = self.inner.write() {
            let sruid = entry.service.sruid();
            inner
                .by_sruid
                .insert((sruid.namespace, sruid.name), entry.service.uuid);
            inner
                .by_root
                .insert(entry.service.context_root(), entry.service.uuid);
            inner.by_uuid.insert(entry.service.uuid, entry);
        }
    }

    /// Changes the entry of `uuid` with `f`, if there is one.
    pub fn update<R>(&self, uuid: Uuid, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut inner = self.inner.write().ok()?;
        inner.by_uuid.get_mut(&uuid).map(f)
    }

    /// Takes the entries of `uuids` out of the table.
    pub fn remove(&self, uuids: &[Uuid]) -> Vec<Entry> {
        let Ok(mut inner) = self.inner.write() else {
            return Vec::new();
        };
        let gone: Vec<Entry> = uuids
            .iter()
            .filter_map(|u| inner.by_uuid.remove(u))
            .collect();
        inner.by_sruid.retain(|_, u| !uuids.contains(u));
        inner.by_root.retain(|_, u| !uuids.contains(u));
        gone
    }

    /// Takes every entry out of the table.
    pub fn drain(&self) -> Vec<Entry> {
        match self.inner.write() {
            Ok(mut inner) => {
                inner.by_sruid.clear();
                inner.by_root.clear();
                inner.by_uuid.drain().map(|(_, e)| e).collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn entry(project: &str, name: &str) -> (Entry, mpsc::Receiver<WorkerMsg>) {
        let p = ProjectName::parse(project).expect("valid");
        let n = ServiceName::parse(&p, name).expect("valid");
        let service = Service::new(p, n, Uuid::new_v4(), SystemTime::now());
        let (tx, rx) = mpsc::channel(1);
        let entry = Entry {
            service,
            revision: None,
            tx,
            intake: CancellationToken::new(),
            routes: Routes::default(),
            lanes: HashMap::new(),
            owned: true,
        };
        (entry, rx)
    }

    #[test]
    fn a_service_is_found_by_uuid_and_by_sruid_until_removed() {
        let table = ServiceTable::default();
        let (e, _rx) = entry("p", "svc");
        let (uuid, sruid) = (e.service.uuid, e.service.sruid());
        table.insert(e);
        let by_uuid = table.lookup(Key::Uuid(uuid)).expect("by uuid");
        assert_eq!(by_uuid.name.as_str(), "svc");
        let by_sruid = table
            .lookup(Key::Sruid(&sruid.namespace, &sruid.name))
            .expect("by sruid");
        assert_eq!(by_sruid.uuid, uuid);
        assert_eq!(
            table.lookup(Key::Sruid(&sruid.namespace, "other")).err(),
            Some(Missing {
                namespace_is_ours: true
            }),
            "another name in our namespace is ours to refuse"
        );
        assert_eq!(
            table.lookup(Key::Sruid("elsewhere", "svc")).err(),
            Some(Missing {
                namespace_is_ours: false
            })
        );
        assert_eq!(table.remove(&[uuid]).len(), 1);
        assert!(table.lookup(Key::Uuid(uuid)).is_err());
        assert_eq!(
            table
                .lookup(Key::Sruid(&sruid.namespace, &sruid.name))
                .err(),
            Some(Missing {
                namespace_is_ours: false
            }),
            "a removed service's namespace is no longer ours"
        );
    }

    #[test]
    fn a_tag_reaches_its_lane_and_an_unknown_tag_is_named() {
        let table = ServiceTable::default();
        let (mut e, _rx) = entry("p", "svc");
        let uuid = e.service.uuid;
        let (lane_tx, _lane_rx) = mpsc::channel(1);
        e.routes.tags.insert("green".into(), "svc-00002".into());
        e.lanes.insert("svc-00002".into(), lane_tx);
        table.insert(e);
        let found = table.lookup(Key::Uuid(uuid)).expect("found");
        let (revision, _) = found
            .lane(Some("green"), "q")
            .expect("routable")
            .expect("a lane");
        assert_eq!(revision, "svc-00002");
        assert!(found.lane(None, "q").expect("routable").is_none());
        let err = found.lane(Some("blue"), "q").expect_err("unknown tag");
        assert!(err.contains("`blue`"), "{err}");
        assert_eq!(found.workers().len(), 2, "the main worker and the lane");
    }
}
