//! What the control plane asks of a dispatcher in the same process, as a
//! trait owned here so the API does not depend on the dispatcher crate (and
//! runs without one). Everything else between the roles goes through the
//! store ([`rouse_store::Changes`] wakes readers in the same process).

use async_trait::async_trait;
use uuid::Uuid;

#[async_trait]
pub trait DispatchHooks: Send + Sync + 'static {
    /// Cancels a queued or running question; `false` if it is not running
    /// in this process.
    async fn cancel(&self, service_uuid: Uuid, question_uuid: &str) -> bool;
}

/// For an API without a dispatcher in the same process: cancelling is not
/// possible.
pub struct NoDispatcher;

#[async_trait]
impl DispatchHooks for NoDispatcher {
    async fn cancel(&self, _service_uuid: Uuid, _question_uuid: &str) -> bool {
        false
    }
}
