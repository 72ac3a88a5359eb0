//! What the control plane asks of the dispatcher, as a trait owned here so
//! the API does not depend on the dispatcher crate (and runs without one).

use async_trait::async_trait;
use uuid::Uuid;

#[async_trait]
pub trait DispatchHooks: Send + Sync + 'static {
    /// A service or revision changed: re-read the registry now.
    fn services_changed(&self);
    /// Cancels a queued or running question; `false` if it is not running.
    async fn cancel(&self, service_uuid: Uuid, question_uuid: &str) -> bool;
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
