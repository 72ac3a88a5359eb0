//! What the control plane asks of the dispatcher, as a trait owned here so
//! the API does not depend on the dispatcher crate (and runs without one).

use async_trait::async_trait;
use rouse_core::Service;
use rouse_core::revision::Revision;
use uuid::Uuid;

#[async_trait]
pub trait DispatchHooks: Send + Sync + 'static {
    /// A service or revision changed: re-read the registry now.
    fn services_changed(&self);
    /// Cancels a queued or running question; `false` if it is not running.
    async fn cancel(&self, service_uuid: Uuid, question_uuid: &str) -> bool;
    /// Starts one instance of `revision` the way the dispatcher would (same
    /// runtime, environment and secrets), waits for its readiness check
    /// within the service's wake timeout, and stops it: the gate a built
    /// revision passes before it serves. `Err` says why it did not become
    /// ready (with the instance's last log lines).
    async fn try_revision(&self, service: &Service, revision: &Revision) -> Result<(), String> {
        let _ = (service, revision);
        Err("no dispatcher runs in this server (`--roles` lacks `dispatcher`), so the revision cannot be started to check it; run the api and dispatcher roles together".into())
    }
}

/// For an API without a dispatcher in the same process: the dispatcher
/// notices changes on its next re-read, and cancelling is not possible.
pub struct NoDispatcher;

#[async_trait]
impl DispatchHooks for NoDispatcher {
    fn services_changed(&self) {}
    async fn cancel(&self, _service_uuid: Uuid, _question_uuid: &str) -> bool {
        false
    }
}
