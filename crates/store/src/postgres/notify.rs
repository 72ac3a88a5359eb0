//! Change notices between processes: triggers in the database `NOTIFY` on
//! the channels below when a transaction that changed what a role waits on
//! commits (whichever process wrote it), and [`PgStore::listen`] turns them
//! into this process's [`Changes`], so a builder or dispatcher on another
//! machine wakes at once rather than at its next poll. The polls stay: a
//! lost connection only delays a change until the next one.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::{AsyncMessage, NoTls};

use super::PgStore;
use crate::Changes;

/// A service, its routing or its revisions changed.
pub(crate) const SERVICES: &str = "rouse_services";
/// A build was queued or asked to stop.
pub(crate) const BUILDS: &str = "rouse_builds";
/// A revision became a candidate or got its trial's verdict.
pub(crate) const REVISIONS: &str = "rouse_revisions";
/// A question was recorded for a service by a dispatcher that does not run it.
pub(crate) const HANDOVER: &str = "rouse_handover";

/// How long to wait before connecting again after the listening connection
/// was lost.
const RECONNECT: Duration = Duration::from_secs(1);

impl PgStore {
    /// Feeds `changes` from the database's notices until `shutdown`
    /// completes; reconnects when the connection is lost.
    pub fn listen(
        &self,
        changes: Changes,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let config = self.config.clone();
        let database = self.display.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => {}
                () = async {
                    loop {
                        match relay(&config, &changes).await {
                            Ok(()) => tracing::warn!(%database, "the change-notice connection closed; connecting again"),
                            Err(e) => tracing::warn!(%database, error = %e, "change notices from the database are interrupted (roles fall back to polling); connecting again"),
                        }
                        tokio::time::sleep(RECONNECT).await;
                    }
                } => {}
            }
        })
    }
}

/// One listening connection: `LISTEN`s, then relays every notice until the
/// connection ends.
async fn relay(
    config: &tokio_postgres::Config,
    changes: &Changes,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut notices) = tokio::sync::mpsc::channel::<String>(64);
    // The connection yields notices only while it is polled: drive it here,
    // handing them over.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    // Full: a wake-up is already pending, which is enough.
                    let _ = tx.try_send(n.channel().to_owned());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN {SERVICES}; LISTEN {BUILDS}; LISTEN {REVISIONS}; LISTEN {HANDOVER};"
        ))
        .await?;
    // Whatever changed while no one listened.
    changes.services_changed();
    changes.builds_changed();
    changes.revisions_changed();
    changes.handed_over();
    while let Some(channel) = notices.recv().await {
        match channel.as_str() {
            SERVICES => changes.services_changed(),
            BUILDS => changes.builds_changed(),
            REVISIONS => changes.revisions_changed(),
            HANDOVER => changes.handed_over(),
            _ => {}
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
