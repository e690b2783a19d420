//! A run follows the pauses recorded in its ledger (`pause RUN` from any machine, the
//! desk's buttons; SPEC section 15): a thread with a ledger connection of its own reads the
//! run's record twice a second, so a pause takes hold within 2 seconds.
//!
//! It follows the ledger's *changes*: when the record changes, the run takes its state;
//! when the run was paused or resumed here, through its [`super::Handle`], and the record
//! disagrees, the record is brought in line, so that `runs` and every other machine see it.
//! Either way the two agree after one look, and a pause through the handle is never undone
//! by a record that simply had not heard of it yet.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;

use crate::domain::{Clock, Pause, RunId};
use crate::ledger::{self, Location, PauseState, Store};

/// How often the run's record is read.
const EVERY: Duration = Duration::from_millis(500);

/// The watching thread: it ends when this is dropped, after the look in progress.
pub(super) struct PauseWatch {
    done: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PauseWatch {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts following `run`'s record in the ledger at `location`; none for a throwaway
/// ledger, which nothing outside the run can see.
pub(super) fn watch(
    location: &Location,
    run: RunId,
    (pause, clock): (Arc<Pause>, Clock),
) -> Option<PauseWatch> {
    if *location == Location::Throwaway {
        return None;
    }
    let mut follower = Follower {
        location: location.clone(),
        run,
        pause,
        clock,
        store: None,
        seen: PauseState::default(),
        failing: false,
    };
    let (done, stop) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("pauses".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(EVERY) {
                follower.look();
            }
        });
    match thread {
        Ok(thread) => Some(PauseWatch {
            done: Some(done),
            thread: Some(thread),
        }),
        Err(e) => {
            tracing::warn!("cannot follow pauses from the ledger ({e}): `invoice-dispatch pause {run}` will not reach this run; Ctrl-C still stops it");
            None
        }
    }
}

struct Follower {
    location: Location,
    run: RunId,
    pause: Arc<Pause>,
    clock: Clock,
    /// Opened on the first look, and again after a failed one.
    store: Option<Box<dyn Store>>,
    /// The record as last read.
    seen: PauseState,
    /// A look failed and said so; the next failures are not said again.
    failing: bool,
}

impl Follower {
    /// One look: a failure is a warning once, not every half second, and never the run's end.
    fn look(&mut self) {
        match self.sync() {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(
                    "the ledger answers again: pauses of {} are followed",
                    self.run
                );
            }
            Ok(()) => {}
            Err(e) => {
                self.store = None;
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(
                        "cannot read {}'s pauses from the ledger ({e:#}); it keeps sending, and follows `invoice-dispatch pause` again once it can",
                        self.run
                    );
                }
            }
        }
    }

    fn sync(&mut self) -> Result<()> {
        let run = self.run;
        let store = match &mut self.store {
            Some(store) => store,
            None => self.store.insert(ledger::open(&self.location, true)?),
        };
        let record = store.pause_state(run)?;
        if record != self.seen {
            apply(&self.pause, &record, run);
            self.seen = record;
        } else if self.pause.is_paused() != record.paused {
            let here = self.pause.is_paused();
            store.set_pause(run, here, &whoami::username(), self.clock.now())?;
            self.seen = store.pause_state(run)?;
        }
        Ok(())
    }
}

/// Makes the run paused or going, as the record says, saying so when it changes.
fn apply(pause: &Pause, record: &PauseState, run: RunId) {
    let who_when = record.who_when();
    if record.paused {
        if pause.pause() {
            tracing::info!("paused {who_when}: `invoice-dispatch resume {run}`");
        }
    } else if pause.resume() {
        tracing::info!("resumed {who_when}");
    }
}
