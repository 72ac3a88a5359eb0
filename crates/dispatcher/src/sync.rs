//! Keeps the [`ServiceTable`](crate::table::ServiceTable) in line with the
//! store: [`diff`] (pure) says which services are new, changed (their
//! generation moved: settings, serving revision or routes) or gone, and
//! [`sync`] applies that: a worker and intake for a new service, the new
//! settings, revision and lanes for a changed one, intake and workers
//! stopped for a deleted one. Only the services this dispatcher holds the
//! lease of ([`crate::shards`]) get a worker and intake; the others are in
//! the table for routing only.

use std::collections::HashMap;
use std::sync::Arc;

use rouse_core::Service;
use rouse_core::revision::Revision;
use rouse_pubsub::Subscriber;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::WORKER_CHANNEL;
use crate::routes::Routes;
use crate::table::Entry;
use crate::worker::{Worker, WorkerMsg};
use crate::{DispatchError, Shared, intake, shards};

/// How the store's services differ from the table's.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Changes {
    /// In the store, not in the table.
    pub added: Vec<Service>,
    /// In both, at another generation.
    pub updated: Vec<Service>,
    /// In the table, no longer in the store (sorted).
    pub removed: Vec<Uuid>,
}

/// Compares `known` (service uuid → generation, what the table holds) with
/// `desired` (the store's services).
pub(crate) fn diff(known: &HashMap<Uuid, u64>, desired: Vec<Service>) -> Changes {
    let mut changes = Changes::default();
    let mut present = std::collections::HashSet::new();
    for service in desired {
        present.insert(service.uuid);
        match known.get(&service.uuid) {
            None => changes.added.push(service),
            Some(generation) if *generation != service.generation => {
                changes.updated.push(service);
            }
            Some(_) => {}
        }
    }
    changes.removed = known
        .keys()
        .filter(|u| !present.contains(u))
        .copied()
        .collect();
    changes.removed.sort();
    changes
}

/// Brings workers and intake in line with the store's services and revisions.
pub(crate) async fn sync(
    shared: &Arc<Shared>,
    subscriber: &Arc<Subscriber>,
    shutdown: &CancellationToken,
) -> Result<(), DispatchError> {
    let services = shared.store.list_services(None).await?;
    let changes = diff(&shared.table.generations(), services);
    for service in changes.updated {
        update(shared, service).await?;
    }
    for service in changes.added {
        add(shared, subscriber, shutdown, service).await?;
    }
    // Deleted services: cancelling stops intake and the workers.
    for entry in shared.table.remove(&changes.removed) {
        entry.intake.cancel();
        shards::forget(shared, entry.service.uuid).await;
        if entry.owned {
            tracing::info!(service = %entry.service.qualified_name(), "service deleted; its worker stops");
        }
    }
    Ok(())
}

/// Until `shutdown`: re-reads the registry on every services notice (or
/// every resync interval) and takes the services to run; renews the
/// leases every [`shards::RENEW_EVERY`]; claims questions other
/// dispatchers recorded for this one's services on every notice of one
/// and every [`shards::CLAIM_EVERY`].
pub(crate) async fn keep_in_sync(
    shared: &Arc<Shared>,
    subscriber: &Arc<Subscriber>,
    shutdown: &CancellationToken,
) {
    let mut services = shared.changes.services();
    let mut handovers = shared.changes.handovers();
    let (mut synced, mut renewed) = (Instant::now(), Instant::now());
    loop {
        let changed = tokio::select! {
            () = shutdown.cancelled() => return,
            r = services.changed() => r.is_ok(),
            _ = handovers.changed() => false,
            () = tokio::time::sleep(shards::CLAIM_EVERY) => false,
        };
        if renewed.elapsed() >= shards::RENEW_EVERY {
            shards::renew(shared).await;
            renewed = Instant::now();
            synced = Instant::now();
            shards::balance(shared, subscriber, shutdown).await;
        } else if changed || synced.elapsed() >= shared.ctx.config.resync_interval {
            synced = Instant::now();
            shards::balance(shared, subscriber, shutdown).await;
        }
        shards::claim(shared).await;
    }
}

/// A new service: a worker, its lanes, and intake on its topic.
async fn add(
    shared: &Arc<Shared>,
    subscriber: &Arc<Subscriber>,
    shutdown: &CancellationToken,
    service: Service,
) -> Result<(), DispatchError> {
    let revision = shared.store.serving_revision(service.uuid).await?;
    let (routes, lane_revisions) = routes_of(shared, &service, revision.as_ref()).await?;
    let token = shutdown.child_token();
    if !shared.shards.holds(service.uuid) {
        // Another dispatcher's: questions taken from the network topic are
        // recorded for it, and nothing runs here.
        shared.table.insert(Entry {
            service,
            revision,
            tx: forwarder(shared, token.clone()),
            intake: token,
            routes,
            lanes: HashMap::new(),
            owned: false,
        });
        return Ok(());
    }
    let (tx, rx) = mpsc::channel(WORKER_CHANNEL);
    let worker = Worker::new(
        shared.ctx.clone(),
        service.clone(),
        revision.clone(),
        token.clone(),
    );
    shared.ctx.tasks.spawn(worker.run(rx));
    shared.ctx.tasks.spawn(intake::service(
        shared.clone(),
        subscriber.clone(),
        service.clone(),
        tx.clone(),
        token.clone(),
    ));
    let lanes = lane_revisions
        .into_iter()
        .map(|lane| {
            (
                lane.name.clone(),
                start_lane(shared, &service, lane, &token),
            )
        })
        .collect();
    shared.table.insert(Entry {
        service,
        revision,
        tx,
        intake: token,
        routes,
        lanes,
        owned: true,
    });
    Ok(())
}

/// The `tx` of a service another dispatcher runs: what reaches it is
/// already recorded for that one, so it is dropped; a cancel is not ours.
fn forwarder(shared: &Shared, stop: CancellationToken) -> mpsc::Sender<WorkerMsg> {
    let (tx, mut rx) = mpsc::channel(WORKER_CHANNEL);
    shared.ctx.tasks.spawn(async move {
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                msg = rx.recv() => msg,
            };
            match msg {
                Some(WorkerMsg::Cancel { done, .. }) => {
                    let _ = done.send(false);
                }
                Some(_) => {}
                None => return,
            }
        }
    });
    tx
}

/// A changed service: its workers get the new settings and revision; lanes
/// start for revisions newly routed to, and stop for those no longer.
async fn update(shared: &Arc<Shared>, service: Service) -> Result<(), DispatchError> {
    let revision = shared.store.serving_revision(service.uuid).await?;
    let (routes, lane_revisions) = routes_of(shared, &service, revision.as_ref()).await?;
    let updated = shared.table.update(service.uuid, |entry| {
        entry.service = service.clone();
        entry.revision = revision.clone();
        entry.routes = routes;
        if !entry.owned {
            return None;
        }
        let mut lanes = HashMap::new();
        let mut kept = Vec::new();
        for lane in lane_revisions {
            let tx = match entry.lanes.remove(&lane.name) {
                Some(tx) => {
                    kept.push((tx.clone(), lane.clone()));
                    tx
                }
                None => start_lane(shared, &service, lane.clone(), &entry.intake),
            };
            lanes.insert(lane.name, tx);
        }
        // Lanes no longer routed to stop once their channel closes.
        entry.lanes = lanes;
        Some((entry.tx.clone(), kept))
    });
    let Some((tx, kept)) = updated.flatten() else {
        return Ok(());
    };
    for (lane_tx, lane) in kept {
        let _ = lane_tx
            .send(WorkerMsg::Update(
                Box::new(service.clone()),
                Some(Box::new(lane)),
            ))
            .await;
    }
    let _ = tx
        .send(WorkerMsg::Update(Box::new(service), revision.map(Box::new)))
        .await;
    Ok(())
}

/// The service's routes and the revisions (other than `serving`) they
/// reach. A routed revision that no longer exists is left out.
async fn routes_of(
    shared: &Shared,
    service: &Service,
    serving: Option<&Revision>,
) -> Result<(Routes, Vec<Revision>), DispatchError> {
    let stored = shared.store.routing(service.uuid).await?;
    let routes = Routes {
        tags: stored.tags,
        traffic: stored.traffic,
    };
    let others = routes.other_revisions(serving.map(|r| r.name.as_str()));
    if others.is_empty() {
        return Ok((routes, Vec::new()));
    }
    let revisions = shared.store.list_revisions(service.uuid).await?;
    let lanes = revisions
        .into_iter()
        .filter(|r| others.contains(&r.name))
        .collect();
    Ok((routes, lanes))
}

/// Starts the worker of a revision that a tag or a split routes to; it
/// stops when its sender is dropped or `stop` (the service's) is cancelled.
fn start_lane(
    shared: &Shared,
    service: &Service,
    revision: Revision,
    stop: &CancellationToken,
) -> mpsc::Sender<WorkerMsg> {
    tracing::info!(service = %service.qualified_name(), revision = %revision.name, "a tag or traffic split routes to this revision");
    let (tx, rx) = mpsc::channel(WORKER_CHANNEL);
    let worker = Worker::new(
        shared.ctx.clone(),
        service.clone(),
        Some(revision),
        stop.clone(),
    );
    shared.ctx.tasks.spawn(worker.run(rx));
    tx
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rouse_core::{ProjectName, ServiceName};

    use super::*;

    fn service(name: &str, generation: u64) -> Service {
        let p = ProjectName::parse("p").expect("valid");
        let n = ServiceName::parse(&p, name).expect("valid");
        let mut s = Service::new(p, n, Uuid::new_v4(), SystemTime::now());
        s.generation = generation;
        s
    }

    #[test]
    fn new_services_are_added_and_unchanged_ones_left_alone() {
        let (a, b) = (service("a", 1), service("b", 4));
        let known = HashMap::from([(b.uuid, 4)]);
        let changes = diff(&known, vec![a.clone(), b]);
        assert_eq!(
            changes,
            Changes {
                added: vec![a],
                updated: Vec::new(),
                removed: Vec::new(),
            }
        );
    }

    #[test]
    fn a_new_generation_is_an_update_and_a_missing_service_is_removed() {
        let (a, b, c) = (service("a", 2), service("b", 1), service("c", 1));
        let known = HashMap::from([(a.uuid, 1), (b.uuid, 1), (c.uuid, 1)]);
        let changes = diff(&known, vec![a.clone(), b]);
        assert_eq!(changes.updated, vec![a]);
        assert!(changes.added.is_empty());
        assert_eq!(changes.removed, vec![c.uuid]);
    }

    #[test]
    fn an_empty_store_removes_everything_and_an_empty_table_adds_everything() {
        let (a, b) = (service("a", 1), service("b", 1));
        let known = HashMap::from([(a.uuid, 1), (b.uuid, 1)]);
        let mut expected = vec![a.uuid, b.uuid];
        expected.sort();
        assert_eq!(diff(&known, Vec::new()).removed, expected);
        let changes = diff(&HashMap::new(), vec![a.clone(), b.clone()]);
        assert_eq!(changes.added, vec![a, b]);
    }
}
