//! A run as its watchers see it: the command line's progress bar and signals, and the desk,
//! all through one [`Handle`]. The run goes on a thread of its own; the handle pauses,
//! resumes and stops it, publishes what it looks like a few times a second, and waits for
//! its summary.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::watch;

use super::Summary;
use crate::dispatch::Shared;
use crate::domain::{Counts, Pause, Status, StopReason, Stopper};

/// How often a running run's look is published.
const EVERY: Duration = Duration::from_millis(250);

/// What a run is doing.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Sending, or about to.
    Running,
    /// Waiting for the send window to open: the words say until when.
    Waiting {
        why: String,
    },
    /// Paused by a person: no request starts until it is resumed.
    Paused,
    /// Stopped (a breaker, the window, a person): finishing the requests in flight.
    Stopping {
        why: String,
    },
    /// Done: the summary's exit code, or the error that ended it.
    Finished {
        exit_code: u8,
    },
    Failed {
        error: String,
    },
}

/// What a run looks like at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    #[serde(flatten)]
    pub state: State,
    /// Rows finished so far (at admission or after their requests).
    pub rows_done: u64,
    pub counts: Counts,
    /// Rows that failed or may have been delivered, so far.
    pub failures: u64,
    pub requests: u64,
    pub requests_per_second: f64,
    pub paused_seconds: f64,
    /// `--rate auto`: the pace allowed now, requests per second.
    pub rate_limit: Option<f64>,
    /// The newest messages of rows that need a person, newest last.
    pub latest_errors: Vec<String>,
}

impl Event {
    fn of(shared: &Shared, state: State) -> Event {
        let p = &shared.progress;
        let counts = p.counts();
        Event {
            state,
            rows_done: counts.rows(),
            failures: counts.get(Status::Failed) + counts.get(Status::Unknown),
            counts,
            requests: p.requests(),
            requests_per_second: p.requests_per_second(),
            paused_seconds: shared.pause.paused_for().as_secs_f64(),
            rate_limit: shared.pace.read().map(|(now, _)| now),
            latest_errors: p.latest_errors(),
        }
    }

    /// The state of a run still going, from its controls.
    fn running(shared: &Shared) -> State {
        if let Some(reason) = shared.stopper.reason() {
            return State::Stopping {
                why: reason.describe(),
            };
        }
        if shared.pause.is_paused() {
            return State::Paused;
        }
        match shared.progress.waiting.lock().unwrap().clone() {
            Some(why) => State::Waiting { why },
            None => State::Running,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished { .. } | State::Failed { .. })
    }
}

/// Pause, resume and stop: cheap to clone, for a signal handler or a web page.
#[derive(Clone)]
pub struct Controls {
    stopper: Arc<Stopper>,
    pause: Arc<Pause>,
}

impl Controls {
    /// Stops starting requests (in flight ones finish); the rest are `not_sent`, and the
    /// run's exit code means an interrupt (130).
    pub fn stop(&self) {
        self.stopper.stop(StopReason::Interrupted);
    }

    /// Pauses; false if it already was. With a ledger, the run's record follows within
    /// half a second, so `runs` and other machines see it (`run/ledger_pause.rs`); to pause
    /// a run of another process, use `ledger::set_paused`.
    pub fn pause(&self) -> bool {
        let paused = self.pause.pause();
        if paused {
            tracing::info!("paused: no request starts until the run is resumed");
        }
        paused
    }

    /// Resumes; false if it was not paused.
    pub fn resume(&self) -> bool {
        let resumed = self.pause.resume();
        if resumed {
            tracing::info!("resumed");
        }
        resumed
    }
}

/// A run on its way.
pub struct Handle {
    controls: Controls,
    events: watch::Receiver<Event>,
    thread: std::thread::JoinHandle<Result<Summary>>,
}

impl Handle {
    pub fn controls(&self) -> Controls {
        self.controls.clone()
    }

    pub fn pause(&self) -> bool {
        self.controls.pause()
    }

    pub fn resume(&self) -> bool {
        self.controls.resume()
    }

    pub fn stop(&self) {
        self.controls.stop()
    }

    /// What the run looks like, published a few times a second and once more when it ends.
    pub fn events(&self) -> watch::Receiver<Event> {
        self.events.clone()
    }

    /// Waits for the run to end: its summary (results written, exit code decided), or the
    /// error that ended it before it could have one.
    pub fn wait(self) -> Result<Summary> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the run's thread panicked"))?
    }
}

/// Runs `run` on a thread of its own, and its look on another.
pub(super) fn spawn(
    shared: Shared,
    run: impl FnOnce(Shared) -> Result<Summary> + std::marker::Send + 'static,
) -> Result<Handle> {
    let (tx, events) = watch::channel(Event::of(&shared, State::Running));
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let controls = Controls {
        stopper: shared.stopper.clone(),
        pause: shared.pause.clone(),
    };
    let watched = shared.clone();
    let publish = tx.clone();
    let publisher = std::thread::Builder::new()
        .name("run-events".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(EVERY)
            {
                publish.send_replace(Event::of(&watched, Event::running(&watched)));
            }
        })
        .context("cannot start the run's watcher")?;
    let thread = std::thread::Builder::new()
        .name("run".into())
        .spawn(move || {
            let result = run(shared.clone());
            // The watcher ends before the last word, so nothing it says comes after it.
            drop(done);
            let _ = publisher.join();
            let state = match &result {
                Ok(summary) => State::Finished {
                    exit_code: summary.exit_code,
                },
                Err(e) => State::Failed {
                    error: format!("{e:#}"),
                },
            };
            tx.send_replace(Event::of(&shared, state));
            result
        })
        .context("cannot start the run")?;
    Ok(Handle {
        controls,
        events,
        thread,
    })
}
