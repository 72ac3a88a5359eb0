//! One active dispatcher per store: the dispatcher role runs only while its
//! process holds the store's `dispatcher` lease. A second dispatcher on the
//! same store stands by, and takes over (resuming the unfinished questions,
//! as a restart does) once the active one stops renewing: killed, cut off or
//! stopped (a clean stop gives the lease up at once; a holder whose process
//! is gone from this machine is replaced at once too, so a dispatcher
//! restarted after a crash does not wait the lease out). An active dispatcher
//! that cannot renew its lease in time stops, so that two never run the same
//! questions.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rouse_store::{Lease, LeaseStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The lease's name in the store.
pub const DISPATCHER_LEASE: &str = "dispatcher";
/// How long a holder keeps the lease without renewing it: how long a
/// standby waits after the active dispatcher died.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the holder renews it, and the longest a standby waits between
/// looks.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// This process, as a lease holder: `host:pid:start` (the start time tells
/// a reused pid apart).
pub fn holder_id() -> String {
    let pid = std::process::id();
    format!("{}:{pid}:{}", hostname(), start_time(pid).unwrap_or(0))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// A process's start time (clock ticks after boot), from `/proc`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `holder` was a process of this machine that is gone: its lease
/// need not be waited out (a dispatcher restarted after a crash takes over
/// at once).
fn gone_from_here(holder: &str) -> bool {
    let mut parts = holder.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(start), Ok(pid)) = (start.parse::<u64>(), pid.parse::<u32>()) else {
        return false;
    };
    host == hostname() && start_time(pid) != Some(start)
}

/// Takes the lease if it can, once: free, expired, ours, or held by a
/// process of this machine that is gone.
pub async fn try_take(store: &dyn LeaseStore, holder: &str) -> Result<Lease, String> {
    let now = SystemTime::now();
    let read = |e: rouse_store::StoreError| format!("cannot read the dispatcher lease: {e}");
    match store
        .acquire_lease(DISPATCHER_LEASE, holder, LEASE_TTL, now)
        .await
        .map_err(read)?
    {
        Lease::Taken { holder: dead, .. } if gone_from_here(&dead) => {
            tracing::info!(previous = %dead, "the dispatcher lease's holder is gone from this machine: taking it over without waiting for it to expire");
            store
                .take_lease_from(DISPATCHER_LEASE, holder, &dead, LEASE_TTL, now)
                .await
                .map_err(read)
        }
        other => Ok(other),
    }
}

/// Waits (standing by) until this process holds the lease; `false` if
/// `shutdown` came first.
pub async fn wait_for(store: &dyn LeaseStore, holder: &str, shutdown: &CancellationToken) -> bool {
    loop {
        let wait = match try_take(store, holder).await {
            Ok(Lease::Held) => return true,
            Ok(Lease::Taken { until, .. }) => until
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_add(Duration::from_millis(50))
                .min(RENEW_EVERY),
            Err(e) => {
                tracing::warn!(error = %e, "standing by: cannot read the dispatcher lease");
                RENEW_EVERY
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Keeps the lease while the dispatcher runs: renews it every
/// [`RENEW_EVERY`]; once `shutdown` is cancelled, waits for `dispatcher`
/// (the role's task) to finish and gives the lease up. If the lease is lost
/// (taken over, or not renewed within [`LEASE_TTL`]), cancels `shutdown`
/// and fails, naming why.
pub fn keep(
    store: Arc<dyn LeaseStore>,
    holder: String,
    shutdown: CancellationToken,
    dispatcher: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let mut renewed = tokio::time::Instant::now();
        let lost = loop {
            tokio::select! {
                () = shutdown.cancelled() => break None,
                () = tokio::time::sleep(RENEW_EVERY) => {}
            }
            match try_take(store.as_ref(), &holder).await {
                Ok(Lease::Held) => renewed = tokio::time::Instant::now(),
                Ok(Lease::Taken { holder: other, .. }) => {
                    break Some(format!(
                        "the dispatcher lease was taken over by {other}: this dispatcher did not renew it within {LEASE_TTL:?}; it stops so that no question runs twice"
                    ));
                }
                Err(e) if renewed.elapsed() >= LEASE_TTL => {
                    break Some(format!(
                        "the dispatcher lease could not be renewed for {LEASE_TTL:?} ({e}); this dispatcher stops so that no question runs twice"
                    ));
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the dispatcher lease yet"),
            }
        };
        if let Some(why) = &lost {
            tracing::error!("{why}");
        }
        shutdown.cancel();
        dispatcher.await;
        if lost.is_none()
            && let Err(e) = store.release_lease(DISPATCHER_LEASE, &holder).await
        {
            tracing::warn!(error = %e, "could not give the dispatcher lease up; a standby takes over when it expires");
        }
        lost.map_or(Ok(()), Err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_gone_only_if_it_was_here_and_its_process_is_not() {
        let me = holder_id();
        assert!(!gone_from_here(&me), "this process is alive: {me}");
        let pid = std::process::id();
        let host = hostname();
        // Same pid, another start: the pid was reused.
        assert!(gone_from_here(&format!("{host}:{pid}:1")));
        // A pid no process has (above the kernel's maximum).
        assert!(gone_from_here(&format!("{host}:4294967295:1")));
        // Another machine: only its lease's expiry tells.
        assert!(!gone_from_here("elsewhere:4294967295:1"));
        assert!(!gone_from_here("not a holder"));
    }
}
