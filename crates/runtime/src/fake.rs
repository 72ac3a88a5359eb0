//! A stand-in [`Instance`] for unit tests of code that drives a
//! [`Runtime`](crate::Runtime) (feature `fake`): nothing runs behind it; the
//! test decides when it passes its readiness check and when it exits, and
//! sees whether it was stopped.
//!
//! [`Instance::wait_ready`] waits for [`Fake::ready`] (or the exit, or the
//! timeout, as for a real instance), [`Instance::stop`] makes it exit
//! ("stopped") after [`FAKE_STOP`], and [`Instance::addr`] is whatever address the test gave it
//! (a listener of its own, for deliveries). Dropping the last handle of an
//! instance that was not stopped ends it, as a real runtime kills it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::instance::{self, Instance, Parts};
use crate::{ExitInfo, WakeError};

/// How long a fake takes to exit once stopped: as a real instance takes a
/// moment after SIGTERM, so that a test can tell whether its caller waited
/// for the stop.
pub const FAKE_STOP: Duration = Duration::from_millis(100);

/// The test's side of a fake instance.
#[derive(Debug, Clone)]
pub struct Fake {
    ready: Arc<watch::Sender<bool>>,
    exit: Arc<watch::Sender<Option<ExitInfo>>>,
}

/// The instance's side: how it waits and stops.
pub(crate) struct Control {
    ready: watch::Receiver<bool>,
    exit: Arc<watch::Sender<Option<ExitInfo>>>,
}

impl Instance {
    /// A fake instance `id` answering on `addr` (`None`: started with
    /// `listen: false`), logging to `log_path` (which the test may write).
    pub fn fake(id: &str, addr: Option<SocketAddr>, log_path: PathBuf) -> (Instance, Fake) {
        let (ready, ready_rx) = watch::channel(false);
        let (exit, exit_rx) = watch::channel(None);
        let exit = Arc::new(exit);
        let instance = Instance::new(Parts {
            id: id.to_owned(),
            listen: addr.is_some(),
            addr,
            log_path,
            exit: exit_rx,
            control: instance::Control::Fake(Control {
                ready: ready_rx,
                exit: exit.clone(),
            }),
        });
        let fake = Fake {
            ready: Arc::new(ready),
            exit,
        };
        (instance, fake)
    }
}

impl Fake {
    /// From now on the instance passes its readiness check.
    pub fn ready(&self) {
        self.ready.send_replace(true);
    }

    /// The instance exits by itself (a crash, or a job that ended).
    pub fn exit(&self, code: Option<i64>, description: &str) {
        set_exit(
            &self.exit,
            ExitInfo {
                code,
                description: description.to_owned(),
            },
        );
    }

    /// How it ended, once it has (exited by itself, or stopped).
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    /// Completes when the instance has exited or was stopped.
    pub async fn exited(&self) -> ExitInfo {
        let mut exit = self.exit.subscribe();
        match exit.wait_for(Option::is_some).await {
            Ok(info) => info.clone().unwrap_or_else(stopped),
            Err(_) => stopped(),
        }
    }
}

impl Control {
    pub(crate) async fn wait_ready(
        &self,
        instance: &Instance,
        timeout: Duration,
    ) -> Result<Duration, WakeError> {
        let started = Instant::now();
        let mut ready = self.ready.clone();
        let became_ready = async move {
            // A fake whose test side is gone never becomes ready.
            if ready.wait_for(|r| *r).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            exit = instance.exited() => Err(instance.exited_error(exit)),
            () = became_ready => Ok(started.elapsed()),
            () = tokio::time::sleep(timeout) => Err(instance.timeout_error(timeout)),
        }
    }

    pub(crate) async fn stop(&self) {
        if self.exit.borrow().is_none() {
            tokio::time::sleep(FAKE_STOP).await;
        }
        set_exit(&self.exit, stopped());
    }

    pub(crate) fn abandon(&self) {
        set_exit(
            &self.exit,
            ExitInfo {
                code: None,
                description: "killed: its last handle was dropped".to_owned(),
            },
        );
    }
}

fn stopped() -> ExitInfo {
    ExitInfo {
        code: None,
        description: "stopped".to_owned(),
    }
}

/// The first exit wins, as for a real instance.
fn set_exit(exit: &watch::Sender<Option<ExitInfo>>, info: ExitInfo) {
    exit.send_if_modified(|current| {
        if current.is_some() {
            return false;
        }
        *current = Some(info);
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fake_is_ready_when_told_and_stops_after_a_moment() {
        let (instance, fake) = Instance::fake(
            "f-1",
            Some(([127, 0, 0, 1], 9).into()),
            PathBuf::from("/nonexistent"),
        );
        let waiting = {
            let instance = instance.clone();
            tokio::spawn(async move {
                instance
                    .wait_ready(&crate::Probe::Tcp, Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        fake.ready();
        let waited = waiting.await.expect("join").expect("ready");
        assert_eq!(waited, Duration::from_secs(2));
        let stopping = Instant::now();
        instance.stop(Duration::from_secs(5)).await;
        assert_eq!(stopping.elapsed(), FAKE_STOP);
        assert_eq!(
            fake.exit_info().map(|e| e.description),
            Some("stopped".to_owned())
        );
        fake.exit(Some(3), "exited with code 3");
        assert_eq!(
            instance.exit().map(|e| e.description),
            Some("stopped".to_owned()),
            "the first exit wins"
        );
    }

    #[tokio::test]
    async fn dropping_the_last_handle_ends_a_fake() {
        let (instance, fake) = Instance::fake("f-3", None, PathBuf::from("/nonexistent"));
        drop(instance);
        assert_eq!(
            fake.exited().await.description,
            "killed: its last handle was dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fake_that_never_gets_ready_times_out() {
        let (instance, _fake) = Instance::fake(
            "f-2",
            Some(([127, 0, 0, 1], 9).into()),
            PathBuf::from("/nonexistent"),
        );
        let err = instance
            .wait_ready(&crate::Probe::Tcp, Duration::from_secs(5))
            .await
            .expect_err("never ready");
        assert!(matches!(err, WakeError::Timeout { .. }), "{err}");
    }
}
