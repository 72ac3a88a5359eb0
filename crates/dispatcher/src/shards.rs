//! Several dispatchers on one store share the services: each runs the
//! services whose lease (`service:<uuid>`) it holds, and only those.
//!
//! - Every dispatcher holds a membership lease (`dispatcher:<holder>`) and
//!   renews it, with every service lease it holds, every [`RENEW_EVERY`];
//!   a lease not renewed for [`LEASE_TTL`] expires.
//! - A service whose lease is free, expired, or held by a process gone
//!   from this machine goes to one of the live dispatchers, the same one
//!   whichever of them looks: the highest rendezvous hash of the service
//!   and the dispatcher ([`choose`]). Held services stay where they are.
//! - The holder runs the service's worker and pulls its topic. A question
//!   for it that another dispatcher took from the shared network topic is
//!   recorded without a dispatcher; the holder claims it (at once on a
//!   PostgreSQL notice, else within [`CLAIM_EVERY`]).
//! - Every execution names the dispatcher that runs it, and every update of
//!   it is refused unless it still does (the fence): a dispatcher whose
//!   lease was taken over cannot deliver or answer a question again.
//!   Claiming unfinished executions (after a takeover, or a restart) ends
//!   those already delivered with a `QuestionInterrupted` exception rather
//!   than running them a second time: each `(question_uuid, retry_count)`
//!   runs at most once, and its asker may retry.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rouse_core::protocol::Reply;
use rouse_core::revision::ExecutionStatus;
use rouse_pubsub::Subscriber;
use rouse_runtime::holder::gone_from_here;
use rouse_store::{Lease, LeaseRecord};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Shared;
use crate::table::Key;
use crate::worker::WorkerMsg;

/// How long a lease lasts without being renewed: how long the others wait
/// for a dispatcher on another machine that stopped answering.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a dispatcher renews its leases and looks for services to take.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How often the holder looks for questions other dispatchers recorded for
/// its services (a backstop for the PostgreSQL notice; the only way on
/// SQLite).
pub const CLAIM_EVERY: Duration = Duration::from_secs(1);

const MEMBER: &str = "dispatcher:";
const SERVICE: &str = "service:";
/// `ingress:<url>`, held by a dispatcher whose ingress takes requests at
/// `<url>`: where other ingresses forward requests for its services.
pub(crate) const INGRESS: &str = "ingress:";

pub(crate) fn service_lease(uuid: Uuid) -> String {
    format!("{SERVICE}{uuid}")
}

/// This dispatcher's leases.
pub(crate) struct Shards {
    /// This process, as a lease holder (`host:pid:start`).
    pub holder: String,
    /// The services whose lease this dispatcher holds.
    held: Mutex<HashSet<Uuid>>,
    /// When the leases were last renewed.
    renewed: Mutex<tokio::time::Instant>,
}

impl Shards {
    pub fn new(holder: String) -> Self {
        Self {
            holder,
            held: Mutex::default(),
            renewed: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Whether this dispatcher runs `service`.
    pub fn holds(&self, service: Uuid) -> bool {
        self.held.lock().is_ok_and(|h| h.contains(&service))
    }

    fn held(&self) -> Vec<Uuid> {
        self.held
            .lock()
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    fn set(&self, service: Uuid, held: bool) {
        if let Ok(mut h) = self.held.lock() {
            if held {
                h.insert(service);
            } else {
                h.remove(&service);
            }
        }
    }
}

/// The live dispatcher that should take `service`: the highest rendezvous
/// hash (FNV-1a of the service and the holder, mixed; stable across
/// builds), so
/// every dispatcher that looks picks the same one, and a dispatcher's
/// arrival or departure moves only the services it wins or held.
pub(crate) fn choose<'a>(service: Uuid, members: &[&'a str]) -> Option<&'a str> {
    members
        .iter()
        .copied()
        .max_by_key(|m| (fnv1a(service.as_bytes(), m.as_bytes()), *m))
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain([0u8].iter()).chain(b) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV leaves the last bytes in the low bits: mix them through (the
    // finaliser of MurmurHash3), as the largest hash wins.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// Whether `lease` still binds others: unexpired, and not held by a
/// process gone from this machine.
fn live(lease: &LeaseRecord, now: SystemTime) -> bool {
    lease.until > now && !gone_from_here(&lease.holder)
}

/// Renews this dispatcher's membership and leases. A service lease found
/// taken over (this dispatcher did not renew it in time) stops the
/// service's worker here; leases that could not be renewed for
/// [`LEASE_TTL`] are given up here the same way.
pub(crate) async fn renew(shared: &Arc<Shared>) {
    let shards = &shared.shards;
    let now = SystemTime::now();
    let member = format!("{MEMBER}{}", shards.holder);
    let renewed = async {
        shared
            .store
            .acquire_lease(&member, &shards.holder, LEASE_TTL, now)
            .await?;
        shared
            .store
            .renew_leases(&shards.holder, LEASE_TTL, now)
            .await
    }
    .await;
    let lost: Vec<Uuid> = match renewed {
        Ok(names) => {
            if let Ok(mut at) = shards.renewed.lock() {
                *at = tokio::time::Instant::now();
            }
            let names: HashSet<&str> = names.iter().map(String::as_str).collect();
            shards
                .held()
                .into_iter()
                .filter(|s| !names.contains(service_lease(*s).as_str()))
                .collect()
        }
        Err(e) => {
            let since = shards
                .renewed
                .lock()
                .map(|at| at.elapsed())
                .unwrap_or_default();
            if since < LEASE_TTL {
                tracing::warn!(error = %e, "cannot renew the dispatcher's leases yet");
                return;
            }
            tracing::error!(error = %e, "the dispatcher's leases could not be renewed for {LEASE_TTL:?}: another dispatcher may take its services over, so it stops running them");
            shards.held()
        }
    };
    if lost.is_empty() {
        return;
    }
    for service in &lost {
        shards.set(*service, false);
        tracing::error!(%service, "this dispatcher no longer holds the service's lease: another took it over; its worker here stops and its questions are the other's");
    }
    for entry in shared.table.remove(&lost) {
        entry.intake.cancel();
    }
    // Back in the table as another dispatcher's.
    shared.request_sync();
}

/// Takes the lease of every service in the table that no live dispatcher
/// holds and that [`choose`] gives this one, and starts running it.
pub(crate) async fn balance(
    shared: &Arc<Shared>,
    subscriber: &Arc<Subscriber>,
    shutdown: &CancellationToken,
) {
    let shards = &shared.shards;
    let leases = match shared.store.leases("").await {
        Ok(leases) => leases,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the dispatchers' leases");
            return;
        }
    };
    let now = SystemTime::now();
    let mut members: Vec<&str> = leases
        .iter()
        .filter(|l| l.name.starts_with(MEMBER) && live(l, now))
        .map(|l| l.holder.as_str())
        .collect();
    if !members.contains(&shards.holder.as_str()) {
        members.push(&shards.holder);
    }
    let mut taken_over = Vec::new();
    let holders: HashMap<&str, &LeaseRecord> = leases
        .iter()
        .filter_map(|l| Some((l.name.strip_prefix(SERVICE)?, l)))
        .collect();
    for service in shared.table.generations().into_keys() {
        if shards.holds(service) {
            continue;
        }
        let current = holders.get(service.to_string().as_str());
        if current.is_some_and(|l| live(l, now)) {
            continue;
        }
        if choose(service, &members) != Some(shards.holder.as_str()) {
            continue;
        }
        let name = service_lease(service);
        let previous = current.map_or(shards.holder.as_str(), |l| l.holder.as_str());
        match shared
            .store
            .take_lease_from(&name, &shards.holder, previous, LEASE_TTL, now)
            .await
        {
            Ok(Lease::Held) => {
                match current.map(|l| &l.holder) {
                    Some(gone) => {
                        tracing::info!(%service, previous = %gone, "took the service over from a dispatcher that stopped renewing its lease (or whose process is gone)");
                        if *gone != shards.holder {
                            taken_over.push(service);
                        }
                    }
                    None => tracing::info!(%service, "this dispatcher runs the service now"),
                }
                shards.set(service, true);
                // Its forwarding entry gives way to a worker and intake.
                for entry in shared.table.remove(&[service]) {
                    entry.intake.cancel();
                }
            }
            Ok(Lease::Taken { .. }) => {}
            Err(e) => tracing::warn!(%service, error = %e, "cannot take a service's lease"),
        }
    }
    if let Err(e) = crate::sync::sync(shared, subscriber, shutdown).await {
        tracing::warn!(error = %e, "cannot re-read the service registry");
    }
    if !taken_over.is_empty() {
        publish_left_over(shared, &taken_over).await;
    }
}

/// Publishes the answers the previous holder of `services` recorded and
/// did not publish: it was killed between the two, and its own outbox
/// flush runs only when it starts again, which it may never do. (One that
/// merely stopped renewing may publish it too: the same event, by uuid.)
async fn publish_left_over(shared: &Arc<Shared>, services: &[Uuid]) {
    match shared.store.unpublished_events_of(services).await {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => {
            let left = pending.len();
            let sent = shared.ctx.replier.publish_pending(pending).await;
            tracing::info!(
                sent,
                left,
                "published the answers a dispatcher taken over from had recorded and not sent"
            );
            if sent < left {
                shared.ctx.replier.retry_outbox();
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the outbox of services taken over; the outbox retries");
            shared.ctx.replier.retry_outbox();
        }
    }
}

/// Claims the unfinished executions of the services this dispatcher holds
/// that another dispatcher (or none) runs, and hands them to their
/// workers; those already delivered end with `QuestionInterrupted`.
pub(crate) async fn claim(shared: &Arc<Shared>) {
    // Only services whose worker runs here: a question claimed for a
    // service held but not yet (or no longer) running here would name this
    // dispatcher with nothing to run it, and no later claim would see it.
    // The others are claimed on a later tick, once their worker runs.
    let services: Vec<Uuid> = shared
        .shards
        .held()
        .into_iter()
        .filter(|s| {
            shared
                .table
                .lookup(Key::Uuid(*s))
                .is_ok_and(|entry| entry.owned)
        })
        .collect();
    if services.is_empty() {
        return;
    }
    let claimed = match shared
        .store
        .claim_executions(&services, &shared.shards.holder)
        .await
    {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim the questions of this dispatcher's services");
            return;
        }
    };
    if claimed.is_empty() {
        return;
    }
    tracing::info!(executions = claimed.len(), "resuming unfinished executions");
    for execution in claimed {
        if execution.delivered_at.is_some() {
            let reply = Reply::exception(
                "QuestionInterrupted",
                format!(
                    "the dispatcher running question {} (retry {}) stopped while the service had it; whether it finished is unknown, and it is not run twice: ask again with retry_count {}",
                    execution.question_uuid,
                    execution.retry_count,
                    execution.retry_count + 1
                ),
            );
            shared
                .ctx
                .replier
                .finish(
                    execution,
                    reply,
                    ExecutionStatus::Failed,
                    "rouse/dispatcher",
                )
                .await;
            continue;
        }
        match shared.table.lookup(Key::Uuid(execution.service_uuid)) {
            Ok(service) if service.owned => {
                let _ = service.tx.send(WorkerMsg::Run(Box::new(execution))).await;
            }
            _ => {
                // Deleted, or given up since: its next holder claims it.
                tracing::debug!(question = %execution.question_uuid, "a claimed question's service is not run here any more");
            }
        }
    }
}

/// Gives up every lease this dispatcher holds (a clean stop): the others
/// take its services over at once.
pub(crate) async fn release(shared: &Shared) {
    let shards = &shared.shards;
    let mut names: Vec<String> = shards.held().into_iter().map(service_lease).collect();
    names.push(format!("{MEMBER}{}", shards.holder));
    for name in names {
        if let Err(e) = shared.store.release_lease(&name, &shards.holder).await {
            tracing::warn!(lease = %name, error = %e, "could not give a lease up; it expires in {LEASE_TTL:?}");
        }
    }
}

/// Gives up the lease of a deleted service.
pub(crate) async fn forget(shared: &Shared, service: Uuid) {
    if shared.shards.holds(service) {
        shared.shards.set(service, false);
        let _ = shared
            .store
            .release_lease(&service_lease(service), &shared.shards.holder)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dispatcher_chooses_the_same_one_and_services_spread() {
        let members = ["h:1:1", "h:2:2", "h:3:3"];
        let mut counts = HashMap::new();
        for _ in 0..300 {
            let service = Uuid::new_v4();
            let chosen = choose(service, &members).expect("one");
            let mut reversed = members;
            reversed.reverse();
            assert_eq!(
                choose(service, &reversed),
                Some(chosen),
                "order matters not"
            );
            *counts.entry(chosen).or_insert(0) += 1;
        }
        for m in members {
            let n = counts.get(m).copied().unwrap_or(0);
            assert!((60..=140).contains(&n), "{m} got {n} of 300: {counts:?}");
        }
        assert_eq!(choose(Uuid::new_v4(), &[]), None);
    }

    #[test]
    fn a_departure_moves_only_the_departed_ones_services() {
        let all = ["a:1:1", "b:2:2", "c:3:3"];
        let rest = ["a:1:1", "c:3:3"];
        for _ in 0..200 {
            let service = Uuid::new_v4();
            let before = choose(service, &all).expect("one");
            let after = choose(service, &rest).expect("one");
            if before != "b:2:2" {
                assert_eq!(before, after);
            }
        }
    }
}
