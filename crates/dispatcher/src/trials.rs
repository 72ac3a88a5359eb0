//! Readiness trials of built revisions, driven by the store.
//!
//! The builder records a candidate revision and waits; this loop (in every
//! dispatcher) finds candidates, claims one (`Candidate` → `Trying`, so two
//! dispatchers never try the same one), starts one instance of it the way a
//! worker would (runtime, environment, secrets), waits for its readiness
//! check within the service's wake timeout, stops it, and records the
//! verdict for the builder to read. A job-mode revision has nothing to probe
//! and passes.

use std::sync::Arc;
use std::time::Duration;

use rouse_core::Service;
use rouse_core::revision::{DeliveryMode, Revision};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Shared;
use crate::launch::instance_spec;
use crate::worker::{self, Context};

/// How often candidates are looked for when no notice comes (a builder in
/// another process): well inside the builder's 30 s pick-up allowance.
const TRIAL_POLL: Duration = Duration::from_secs(1);

/// Runs trials until `shutdown`; one at a time, each bounded by its
/// service's wake timeout.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut notices = shared.changes.revisions();
    loop {
        match shared.store.candidates().await {
            Ok(candidates) => {
                for revision in candidates {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    trial(&shared, revision).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read candidate revisions"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = rouse_store::changes::next(&mut notices, TRIAL_POLL) => {}
        }
    }
}

async fn trial(shared: &Arc<Shared>, revision: Revision) {
    match shared.store.claim_trial(&revision.name).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(revision = %revision.name, error = %e, "cannot claim a revision's trial");
            return;
        }
    }
    let verdict = match shared
        .store
        .get_service_by_uuid(revision.service_uuid)
        .await
    {
        Ok(Some(service)) => try_revision(&shared.ctx, &service, &revision).await,
        Ok(None) => Err("the service was deleted".into()),
        Err(e) => Err(format!("cannot read the service: {e}")),
    };
    tracing::info!(revision = %revision.name, ready = verdict.is_ok(), "readiness trial");
    match shared.store.record_trial(&revision.name, verdict).await {
        Ok(_) => shared.changes.revisions_changed(),
        Err(e) => {
            tracing::warn!(revision = %revision.name, error = %e, "cannot record a trial's verdict")
        }
    }
}

/// Starts one instance of `revision`, waits until it passes its readiness
/// check within the service's wake timeout, then stops it. `Err` says why it
/// did not become ready (with the instance's last log lines).
pub(crate) async fn try_revision(
    ctx: &Context,
    service: &Service,
    revision: &Revision,
) -> Result<(), String> {
    if revision.mode == DeliveryMode::Job {
        return Ok(());
    }
    let instance_id = format!(
        "{}-try-{}",
        service.qualified_name().replace('_', "-"),
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let spec = instance_spec(
        &ctx.config,
        service,
        revision,
        &instance_id,
        true,
        Vec::new(),
    );
    let probe = crate::launch::probe_of(revision);
    let instance = ctx
        .launcher
        .start(service.uuid, &revision.source, spec)
        .await?;
    let ready = instance
        .wait_ready(&probe, service.scaling.wake_timeout)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    instance.stop(worker::STOP_GRACE).await;
    ready
}
