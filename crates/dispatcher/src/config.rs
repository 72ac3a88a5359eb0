//! The dispatcher's settings, and why their defaults are what they are.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub network_topic: String,
    pub pubsub_project: String,
    pub emulator_host: Option<String>,
    /// Where instance logs go: `<logs_dir>/<service uuid>/<instance>.log`.
    pub logs_dir: PathBuf,
    /// Heartbeats while a question waits or runs. 60 s: well under the 360 s
    /// after which an Octue asker gives up.
    pub heartbeat_interval: Duration,
    /// Questions a service's worker holds before intake stops pulling. 1000:
    /// a burst several times what `max_instances × concurrency` can take,
    /// small enough to bound memory at ~10 MB per service in the worst case.
    pub queue_capacity: usize,
    /// How often the registry is re-read even without a change notice.
    pub resync_interval: Duration,
}

impl DispatcherConfig {
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
    pub const DEFAULT_QUEUE_CAPACITY: usize = 1000;
    /// 5 s: a control plane in another process (no change notice reaches
    /// this one) is seen within seconds, for one read of the services table
    /// per interval.
    pub const DEFAULT_RESYNC: Duration = Duration::from_secs(5);
}

/// Subscription of the dispatcher on the network topic.
pub const NETWORK_SUBSCRIPTION: &str = "rouse.dispatcher.network";

/// Capacity of the channel into a worker; the worker's own queue bound
/// ([`DispatcherConfig::queue_capacity`]) is what applies backpressure.
pub(crate) const WORKER_CHANNEL: usize = 64;
