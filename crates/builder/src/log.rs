//! A running build's log: lines buffered and written to the store by a
//! flusher every [`LOG_FLUSH`], the last [`LAST_LINES`] kept for the
//! failure record.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rouse_store::BuildStore;

/// Log lines a failed build's record keeps: enough to show the error.
pub const LAST_LINES: usize = 20;
/// How often build log lines are written to the store while a build runs:
/// often enough for `--follow` to feel live, rarely enough to group lines.
pub const LOG_FLUSH: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct BuildLog {
    pending: Arc<Mutex<Vec<String>>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Default for BuildLog {
    fn default() -> Self {
        Self::new()
    }
}

impl BuildLog {
    pub fn new() -> Self {
        Self {
            pending: Arc::new(Mutex::new(Vec::new())),
            tail: Arc::new(Mutex::new(VecDeque::with_capacity(LAST_LINES))),
        }
    }

    pub fn line(&self, line: impl Into<String>) {
        let line = line.into();
        if let Ok(mut tail) = self.tail.lock() {
            if tail.len() == LAST_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        if let Ok(mut p) = self.pending.lock() {
            p.push(line);
        }
    }

    fn take(&self) -> Vec<String> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// The last [`LAST_LINES`] lines.
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes the lines not written yet.
    pub async fn flush(&self, store: &dyn BuildStore, build: &str) {
        let lines = self.take();
        if lines.is_empty() {
            return;
        }
        if let Err(e) = store.append_build_log(build, lines).await {
            tracing::warn!(build, error = %e, "cannot store build log lines");
        }
    }
}
