//! Progress of something the CLI waits for (a build, an answer), on stderr.
//!
//! On a terminal: one spinner line with the current state and the time so
//! far, redrawn every [`TICK`], and a line per state change that stays.
//! Piped: one plain line per state change, nothing else, so logs and scripts
//! read cleanly. Output a command prints meanwhile (log lines on stdout) goes
//! through [`Progress::println`], which clears the spinner first.

use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the spinner is redrawn.
const TICK: Duration = Duration::from_millis(100);
const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
/// Erases the current terminal line.
const CLEAR: &str = "\r\x1b[2K";

struct State {
    label: String,
    frame: usize,
}

pub struct Progress {
    what: String,
    tty: bool,
    started: Instant,
    state: Arc<Mutex<State>>,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Progress {
    /// Starts showing progress of `what` (e.g. "build 3f2a…") in `state`.
    pub fn start(what: impl Into<String>, state: &str) -> Self {
        Self::with_terminal(what, state, std::io::stderr().is_terminal())
    }

    fn with_terminal(what: impl Into<String>, state: &str, tty: bool) -> Self {
        let started = Instant::now();
        let shared = Arc::new(Mutex::new(State {
            label: state.to_owned(),
            frame: 0,
        }));
        let what = what.into();
        let ticker = tty.then(|| {
            let (shared, what) = (shared.clone(), what.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    let Ok(mut s) = shared.lock() else { return };
                    s.frame = (s.frame + 1) % FRAMES.len();
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "{CLEAR}{} {what} {} {:.1}s",
                        FRAMES[s.frame],
                        s.label,
                        started.elapsed().as_secs_f64()
                    );
                    let _ = err.flush();
                }
            })
        });
        let progress = Self {
            what,
            tty,
            started,
            state: shared,
            ticker: Mutex::new(ticker),
        };
        if !tty {
            progress.plain(state);
        }
        progress
    }

    fn plain(&self, state: &str) {
        eprintln!(
            "{:>7.2}s  {} {state}",
            self.started.elapsed().as_secs_f64(),
            self.what
        );
    }

    /// A new state: kept as a line of its own, and shown by the spinner.
    pub fn state(&self, state: &str) {
        if !self.tty {
            self.plain(state);
            return;
        }
        if let Ok(mut s) = self.state.lock() {
            if s.label == state {
                return;
            }
            eprintln!(
                "{CLEAR}  {:>7.2}s  {} {}",
                self.started.elapsed().as_secs_f64(),
                self.what,
                state
            );
            s.label = state.to_owned();
        }
    }

    /// Prints a line of the command's own output on stdout.
    pub fn println(&self, line: &str) {
        // Holding the state's lock keeps the spinner from drawing mid-line.
        let _guard = self.state.lock();
        if self.tty {
            eprint!("{CLEAR}");
        }
        println!("{line}");
    }

    /// Prints a note on stderr (e.g. a forwarded log record).
    pub fn note(&self, line: &str) {
        let _guard = self.state.lock();
        if self.tty {
            eprint!("{CLEAR}");
        }
        eprintln!("{line}");
    }

    /// Stops the spinner, leaving the terminal line clean.
    pub fn finish(self) {
        self.stop();
    }

    /// Stops the spinner; what is printed next starts on a clean line.
    pub fn stop(&self) {
        let ticker = self.ticker.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = ticker {
            t.abort();
            let _guard = self.state.lock();
            eprint!("{CLEAR}");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}
