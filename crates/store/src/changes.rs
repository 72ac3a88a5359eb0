//! Change notices between the roles of one process.
//!
//! The store is the only channel between api, builder and dispatcher: each
//! role polls the records it acts on, so roles in different processes work
//! together. When they share a process, the writer also bumps the matching
//! counter here, and the reader wakes at once instead of at its next poll.
//! (Across processes a database notification can feed the same counters.)

use tokio::sync::watch;

/// One counter per kind of record a role waits on.
#[derive(Debug, Clone)]
pub struct Changes {
    services: watch::Sender<u64>,
    builds: watch::Sender<u64>,
    revisions: watch::Sender<u64>,
    handovers: watch::Sender<u64>,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}

impl Changes {
    pub fn new() -> Self {
        Self {
            services: watch::Sender::new(0),
            builds: watch::Sender::new(0),
            revisions: watch::Sender::new(0),
            handovers: watch::Sender::new(0),
        }
    }

    /// A service, its routing or its revisions changed (the dispatcher re-reads).
    pub fn services_changed(&self) {
        self.services.send_modify(|n| *n += 1);
    }

    /// A build was queued or asked to stop (the builder looks).
    pub fn builds_changed(&self) {
        self.builds.send_modify(|n| *n += 1);
    }

    /// A revision became a candidate or got its trial's verdict.
    pub fn revisions_changed(&self) {
        self.revisions.send_modify(|n| *n += 1);
    }

    /// A question was recorded by a dispatcher that does not run its
    /// service: the one that does should claim it.
    pub fn handed_over(&self) {
        self.handovers.send_modify(|n| *n += 1);
    }

    pub fn handovers(&self) -> watch::Receiver<u64> {
        self.handovers.subscribe()
    }

    pub fn services(&self) -> watch::Receiver<u64> {
        self.services.subscribe()
    }

    pub fn builds(&self) -> watch::Receiver<u64> {
        self.builds.subscribe()
    }

    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revisions.subscribe()
    }
}

/// Waits for the next change on `rx` or `poll`, whichever comes first (a
/// closed channel falls back to the poll).
pub async fn next(rx: &mut watch::Receiver<u64>, poll: std::time::Duration) {
    tokio::select! {
        r = rx.changed() => {
            if r.is_err() {
                tokio::time::sleep(poll).await;
            }
        }
        () = tokio::time::sleep(poll) => {}
    }
}
