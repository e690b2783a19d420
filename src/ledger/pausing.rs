//! Pausing a run from anywhere (SPEC section 15): `pause RUN`, `resume RUN` and the desk's
//! buttons record the run's pause in its record in the ledger; the run's process looks at
//! that record twice a second and stops (or starts again) starting requests.
//!
//! # Why writing while a run holds a SQLite ledger is safe
//!
//! A run's lock file keeps a second *run* out; it is not what keeps the database whole:
//! SQLite's own locks are, and in WAL mode they let any number of connections read while
//! one at a time writes (a run already writes through two: its writer and its
//! checkpointer). A pause is one `UPDATE` of one row of `runs`, in a `BEGIN IMMEDIATE`
//! transaction with the store's 5 s busy timeout:
//! - it waits for the run's commit in progress, never cuts into it, and holds the write
//!   lock for well under a millisecond (one row; no flush, the run's writer flushes the
//!   log with its next intents), so the run's writer, which waits up to the same 5 s for
//!   the lock, never fails a commit because of it;
//! - it touches no row the sending writes: the run's own record is written when the run
//!   begins and when it ends, and the intents, marks and outcomes live elsewhere;
//! - it does not close the log under the run: a connection deletes the log only when it is
//!   the last one open, and the run keeps its own open until it has finished.
//!
//! On PostgreSQL it is one `UPDATE` from any machine, under the server's row locks.

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};

use super::{open, Location, RunRecord};
use crate::domain::{rfc3339, RunId};

/// Whether a run is paused through the ledger, and who last paused or resumed it, when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PauseState {
    pub paused: bool,
    /// `None` until someone paused it.
    pub by: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

impl PauseState {
    /// "by ana at 14:02" in the time of the machine that says it.
    pub fn who_when(&self) -> String {
        let by = self.by.as_deref().unwrap_or("someone");
        match self.at {
            Some(at) => format!(
                "by {by} at {}",
                at.with_timezone(&chrono::Local).format("%H:%M")
            ),
            None => format!("by {by}"),
        }
    }
}

/// What [`set_paused`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PauseChange {
    /// It was going; it is paused now.
    Paused,
    /// It was paused; it goes on now.
    Resumed,
    /// Somebody had paused it already; nothing changed.
    AlreadyPaused(PauseState),
    /// It was not paused; nothing changed.
    NotPaused,
}

/// Pauses (`paused`) or resumes run `run` of the ledger at `location`, as `by` (an OS user)
/// at `now`: the run's process follows within 2 seconds, wherever it runs. For the command
/// line's `pause`/`resume` and the desk's buttons. Refuses a run the ledger does not know,
/// one that has finished or died, and a throwaway ledger (nothing outside the run sees it).
/// It takes no run lock, so it works while the run holds the ledger (see the module).
pub fn set_paused(
    location: &Location,
    run: RunId,
    paused: bool,
    by: &str,
    now: DateTime<Utc>,
) -> Result<PauseChange> {
    if *location == Location::Throwaway {
        bail!(
            "a run without a ledger (--no-ledger, or --simulate without --ledger) cannot be paused from elsewhere: nothing outside it can see it; pause it where it runs"
        );
    }
    let mut store = open(location, true)?;
    let Some(record) = store.run(run)? else {
        bail!(
            "no run {run} in ledger {} (see `invoice-dispatch runs`)",
            store.describe()
        );
    };
    refuse_ended(&record, paused)?;
    if store.set_pause(run, paused, by, now)? {
        return Ok(if paused {
            PauseChange::Paused
        } else {
            PauseChange::Resumed
        });
    }
    Ok(match paused {
        true => PauseChange::AlreadyPaused(store.pause_state(run)?),
        false => PauseChange::NotPaused,
    })
}

/// A run that has ended has nothing to pause or resume.
fn refuse_ended(record: &RunRecord, pausing: bool) -> Result<()> {
    let what = if pausing { "pause" } else { "resume" };
    let id = &record.id;
    match record.state.as_str() {
        "running" | "paused" => Ok(()),
        "finished" => {
            let at = record.finished.map(rfc3339).unwrap_or_default();
            bail!("{id} finished at {at}: nothing to {what}")
        }
        _ => bail!(
            "{id} died (its process on {} is gone without finishing): nothing to {what}; the next send with this ledger settles it",
            record.host
        ),
    }
}
