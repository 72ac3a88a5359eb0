//! Instances another system runs (Cloud Run): nothing of theirs lives on
//! this machine. The adapter that starts them gives the [`Instance`] a
//! [`Remote`] (how to reach and stop it) and feeds its exit through a
//! watch channel, as the local runtimes' background tasks do.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::ExitInfo;
use crate::instance::{self, Instance, Parts};

/// How to reach and stop a remote instance.
#[async_trait::async_trait]
pub trait Remote: Send + Sync + 'static {
    /// The base URL requests go to (`https://….run.app/`); `None` for a
    /// job, which takes no requests.
    fn url(&self) -> Option<String>;

    /// The bearer token a request carries (an ID token whose audience is
    /// the URL), if the target checks one.
    async fn bearer(&self) -> Result<Option<String>, String>;

    /// Stops it (cancels a job's execution; a service's handle is let go,
    /// the platform scales the service itself). Returns once done or given
    /// up; errors are logged.
    async fn stop(&self);

    /// The last handle went without a stop: stop it in the background.
    fn abandon(self: Arc<Self>);
}

impl Instance {
    /// An instance `id` that `remote` runs; its exit arrives on `exit`, and
    /// what there is of its log (where its logs really are) in `log_path`.
    pub fn remote(
        id: &str,
        listen: bool,
        log_path: PathBuf,
        exit: watch::Receiver<Option<ExitInfo>>,
        remote: Arc<dyn Remote>,
    ) -> Instance {
        Instance::new(Parts {
            id: id.to_owned(),
            listen,
            addr: None,
            log_path,
            exit,
            control: instance::Control::Remote(remote),
        })
    }
}
