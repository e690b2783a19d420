//! The PostgreSQL store: one ledger for every machine that uses the same URL (SPEC section
//! 12), so a nightly pod, a rerun in a new pod and a laptop never send an invoice twice.
//!
//! The tables live in a schema of their own, `invoice_dispatch`, created and migrated by
//! the tool; they follow the SQLite store's, keyed by (run, row) instead of one packed id.
//! Three things differ:
//!
//! - **Claims.** Runs may overlap. Admission locks each row's `sends` record (inserting a
//!   placeholder first, so that a row never seen is locked too; in key order, so that two
//!   runs cannot deadlock) and claims the rows it will send (`claim_run`). A row claimed by
//!   another run that has not been settled is skipped, "being sent by run R on HOST", so N
//!   processes given one input split it between them. Settling a run releases its claims.
//! - **Liveness.** A run holds a session-level advisory lock on its id for as long as its
//!   connection lives. A run whose lock another session can take is dead; the taker settles
//!   it (at the start of its own run).
//! - **Leaving marks** are rows committed with `synchronous_commit = off` by a connection
//!   of their own: on the server before the request leaves, not flushed to its disk. Each
//!   answer is committed the same way, in the same statements, before its send slot is
//!   released, so a run that dies leaves at most its slots' rows marked and unanswered. The
//!   server's start time plays the boot id's part: a dead run's marks are trusted only if
//!   the server has not restarted since the run began, and its row in the unlogged
//!   `open_runs` is still there (crash recovery after one backend's crash keeps the start
//!   time but empties unlogged tables, and may have lost marks).
//! - **A settled run marks nothing more.** Settling locks the run's record first; a mark
//!   is written only with that record share-locked and not folded, so a run whose session
//!   was lost, and which another run settled, cannot send a row after its marks were read.
//!
//! Intents commit synchronously; outcomes with `synchronous_commit = off`, so that the next
//! synchronous commit (an admission, or the settle) makes them durable. The writer's
//! connection carries only intents: an outcome queued behind an intent's wait for the
//! server's disk would be lost to a kill, and its row read as unknown.
//!
//! A run's rows are joined to its outcomes and marks through `LATERAL (... OFFSET 0)`: one
//! index lookup per row by (run, row). A plain join is planned on statistics that know
//! nothing yet of the newest run, which turned it into a scan of all the run's outcomes
//! for every row.

mod connect;
mod marks;
mod read;
mod resolve;
mod schema;
mod settings;
mod write;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use postgres::Client;

use super::admission::{Policy, Prior};
use super::{
    Batch, HistoryEntry, Marks, PauseState, ResolveRequest, Resolved, ResultRow, RunEnd, RunInfo,
    RunRecord, Store, Unfinished,
};
use crate::domain::{Counts, RunId};

pub use connect::PgLocation;
pub use marks::{Mark, Note};

/// The advisory-lock namespace of run locks (the first key of the two-key form).
const RUN_LOCKS: i32 = 0x1d15;
/// The server's start time, in milliseconds, as runs record it.
const SERVER_STARTED: &str = "(extract(epoch FROM pg_postmaster_start_time()) * 1000)::bigint";

pub struct PgStore {
    client: Client,
    location: PgLocation,
    run: Option<(RunId, String)>,
}

impl PgStore {
    pub fn open(location: &PgLocation, read_only: bool) -> Result<PgStore> {
        let mut client = location.connect()?;
        schema::migrate(&mut client, location, read_only)?;
        Ok(PgStore {
            client,
            location: location.clone(),
            run: None,
        })
    }

    fn current(&self) -> Result<(RunId, String)> {
        self.run.clone().context("no run was begun on this ledger")
    }

    /// An error, said of this ledger (host and database, never the password).
    fn failed(&self, e: anyhow::Error) -> anyhow::Error {
        let why = match e.downcast_ref::<postgres::Error>() {
            Some(pg) => connect::pg_error(pg),
            None => format!("{e:#}"),
        };
        anyhow::anyhow!("ledger {}: {why}", self.location)
    }
}

impl Store for PgStore {
    fn begin(&mut self, run: &RunInfo, policy: &Policy, now: DateTime<Utc>) -> Result<RunId> {
        let cannot = || format!("ledger {}: cannot start a run", self.location);
        write::settle_dead_runs(&mut self.client, now).with_context(cannot)?;
        write::prune(&mut self.client, now, policy.retention).with_context(cannot)?;
        let id = write::begin(&mut self.client, run).with_context(cannot)?;
        self.run = Some((id, run.target.clone()));
        Ok(id)
    }

    fn marks(&self) -> Result<Marks> {
        let (run, _) = self.current()?;
        let name = self.location.to_string();
        Ok(Marks::Remote(marks::spawn(
            self.location.connect()?,
            run,
            name,
        )?))
    }

    fn commit(&mut self, batch: &mut Batch, policy: &Policy, now: DateTime<Utc>) -> Result<()> {
        let (run, target) = self.current()?;
        write::commit(&mut self.client, run, &target, batch, policy, now)
            .map_err(|e| self.failed(e))
    }

    fn settle(&mut self, end: &RunEnd, now: DateTime<Utc>) -> Result<Counts> {
        let (run, _) = self.current()?;
        // This run's marks are on a server it never lost (or the run would have failed
        // on the way), so they are trusted.
        write::settle_run(&mut self.client, run, &Unfinished::own(end), true, now)
            .map_err(|e| self.failed(e))
    }

    fn close(&mut self, exit_code: u8, now: DateTime<Utc>) -> Result<()> {
        let (run, _) = self.current()?;
        write::close(&mut self.client, run, exit_code, now)
    }

    fn results(&mut self, run: RunId, f: &mut dyn FnMut(ResultRow) -> Result<()>) -> Result<()> {
        read::results(&mut self.client, run, f)
    }

    fn runs(&mut self, last: usize) -> Result<Vec<RunRecord>> {
        read::runs(&mut self.client, Some(last), None)
    }

    fn run(&mut self, run: RunId) -> Result<Option<RunRecord>> {
        Ok(read::runs(&mut self.client, None, Some(run))?.pop())
    }

    fn history(&mut self, invoice: &str, dept: Option<&str>) -> Result<Vec<HistoryEntry>> {
        read::history(&mut self.client, invoice, dept)
    }

    fn resolve(&mut self, request: &ResolveRequest, now: DateTime<Utc>) -> Result<Resolved> {
        resolve::resolve(&mut self.client, request, now)
    }

    fn pace(&mut self, target: &str) -> Result<Option<f64>> {
        let row = self
            .client
            .query_opt("SELECT rate FROM paces WHERE target = $1", &[&target])?;
        Ok(row.map(|r| r.get(0)))
    }

    /// A SQL-dialect twin of the SQLite store's (placeholders and upsert spelling).
    fn keep_pace(&mut self, target: &str, rate: f64, now: DateTime<Utc>) -> Result<()> {
        self.client.execute(
            "INSERT INTO paces (target, rate, at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (target) DO UPDATE SET rate = excluded.rate, at_ms = excluded.at_ms",
            &[&target, &rate, &now.timestamp_millis()],
        )?;
        Ok(())
    }

    fn priors(&mut self, target: &str, keys: &[(String, String)]) -> Result<Vec<Option<Prior>>> {
        write::peek_priors(&mut self.client, target, keys)
    }

    fn pause_state(&mut self, run: RunId) -> Result<PauseState> {
        read::pause_state(&mut self.client, run).map_err(|e| self.failed(e))
    }

    /// One row, under the server's row lock: safe from any machine, whatever runs.
    fn set_pause(
        &mut self,
        run: RunId,
        paused: bool,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let changed = self
            .client
            .execute(
                "UPDATE runs SET paused = $1, pause_by = $2, pause_ms = $3
                 WHERE id = $4 AND paused <> $1",
                &[&paused, &by, &now.timestamp_millis(), &run.0],
            )
            .map_err(|e| self.failed(e.into()))?;
        Ok(changed == 1)
    }

    fn describe(&self) -> String {
        self.location.to_string()
    }
}
