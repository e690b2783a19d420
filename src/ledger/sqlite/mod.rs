//! The SQLite store: a ledger in one file, on one machine.
//!
//! `results` holds one row per input record of a run, in input order, with what admission
//! decided (`pending` is an intent: the row may be sent); `outcomes`, keyed the same way
//! (run in the high 32 bits, input row in the low 32), holds the answers, and `attempts`
//! every request before a row's last. While a run sends, a commit only appends at the right
//! edge of these tables, so it writes a few pages however random the invoice ids are. When
//! a run is settled, its rows are folded in one sorted pass into `sends` (per target,
//! department and invoice: what the last request did, and when it was last sent) and into
//! `by_invoice` (the index `history` reads).
//!
//! Leaving marks are appended by the sending tasks to a file beside the ledger,
//! `LEDGER.rN.marks`, and read back only when the run is settled (see the module above).
//! One run at a time holds the ledger's lock file, `LEDGER.lock`.

mod checkpoint;
mod lock;
mod read;
mod resolve;
mod schema;
mod write;

use checkpoint::Checkpointer;
use lock::{real_path, take_lock};
use read::{final_row, history_resolutions, history_rows, pause_state, RawRun, FINAL_ROWS, RUNS};
use write::{admit, count_rows, prune, set_pause, write_outcome, writing, Admitting, Evidence};

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use super::admission::{judge, Policy, Prior, StoredPrior};
use super::journal::Journal;
use super::resolution::{self, SendState};
use super::{
    boot_id, same_boot, Admission, Batch, Entry, EntryKind, HistoryEntry, Marks, PauseState,
    ResolveRequest, Resolved, ResultRow, RunEnd, RunInfo, RunRecord, Store, Unfinished, Verdict,
};
use crate::domain::{
    from_millis, rfc3339, AttemptNote, Counts, Outcome, RunId, SkipKind, Status, StopReason,
};

const SCHEMA_VERSION: i64 = 5;

pub struct SqliteStore {
    conn: Connection,
    /// The database file.
    path: PathBuf,
    /// The run begun on this connection, and its target.
    run: Option<(RunId, String)>,
    /// Whether commits are flushed (not for a throwaway ledger).
    durable: bool,
    /// The write-ahead log, flushed after every commit that holds intents.
    wal: Option<File>,
    journal_path: Option<PathBuf>,
    /// Copies the log into the database while a run writes (see [`Checkpointer`]).
    checkpointer: Option<Checkpointer>,
    /// Held for the whole run: the OS drops the lock if the process dies, however it dies.
    _lock: Option<File>,
    /// Keeps a throwaway ledger's folder alive until the run ends.
    _temp: Option<tempfile::TempDir>,
}

impl SqliteStore {
    /// Opens the ledger at `path`. A read-only open (the commands of SPEC section 10) never
    /// creates one and takes the lock only to migrate; otherwise the lock is held until the
    /// store is dropped.
    pub fn open(given: &Path, read_only: bool) -> Result<SqliteStore> {
        if read_only && !given.is_file() {
            bail!(
                "no ledger at {}: nothing has been sent with it (check --ledger, or the `ledger` key)",
                given.display()
            );
        }
        if let Some(dir) = given
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !read_only)
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the ledger folder {}", dir.display()))?;
        }
        // Resolved before anything is named from it or touches the file (see `real_path`).
        let path = &real_path(given);
        let cannot = || format!("ledger {} cannot be used", path.display());
        let lock = if read_only {
            None
        } else {
            Some(take_lock(path)?)
        };
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::default()
        };
        let conn = Connection::open_with_flags(path, flags).with_context(cannot)?;
        let mut store = SqliteStore::new(conn, path, true, lock, None).with_context(cannot)?;
        store.migrate(read_only).with_context(cannot)?;
        Ok(store)
    }

    /// A ledger that lives only as long as the run: `--no-ledger`, `--simulate`.
    pub fn throwaway() -> Result<SqliteStore> {
        let dir = tempfile::Builder::new()
            .prefix("invoice-dispatch-")
            .tempdir()
            .context("cannot create a temporary ledger")?;
        let path = dir.path().join("ledger.sqlite3");
        let conn = Connection::open(&path).context("cannot create a temporary ledger")?;
        let mut store = SqliteStore::new(conn, &path, false, None, Some(dir))?;
        store.migrate(false)?;
        Ok(store)
    }

    fn new(
        conn: Connection,
        path: &Path,
        durable: bool,
        lock: Option<File>,
        temp: Option<tempfile::TempDir>,
    ) -> Result<SqliteStore> {
        conn.busy_timeout(Duration::from_secs(5))?;
        // Commits append at the right edge of the run's tables, and `sends` is looked up
        // by random invoice ids that no cache of any size would hold at a million rows:
        // 1 MB does as well as SQLite's 2 MB default, and memory stays flat.
        conn.execute_batch("PRAGMA cache_size = -1024")?;
        conn.query_row("PRAGMA user_version", [], |_| Ok(()))
            .context("not a SQLite database, or corrupt")?;
        // The history index's key: stable across processes and versions.
        conn.create_scalar_function(
            "invoice_key",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| Ok(invoice_key(&ctx.get::<String>(0)?)),
        )?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            run: None,
            durable,
            wal: None,
            journal_path: None,
            checkpointer: None,
            _lock: lock,
            _temp: temp,
        })
    }

    fn current(&self) -> Result<(RunId, &str)> {
        match &self.run {
            Some((run, target)) => Ok((*run, target)),
            None => bail!("no run was begun on this ledger"),
        }
    }

    /// Makes every commit so far survive a power cut.
    fn flush(&self) -> Result<()> {
        if let Some(wal) = &self.wal {
            wal.sync_data().context("cannot flush the ledger to disk")?;
        }
        Ok(())
    }

    /// The run's journal (see [`Journal`]). Named `.marks` since the release before
    /// answers were journalled, which a run it left behind must still be settled from.
    fn journal_file(&self, run: RunId) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{run}.marks"));
        PathBuf::from(name)
    }
}

impl Store for SqliteStore {
    fn begin(&mut self, run: &RunInfo, policy: &Policy, now: DateTime<Utc>) -> Result<RunId> {
        let path = self.path.display().to_string();
        let unwritable = || format!("ledger {path} cannot be written");
        self.settle_dead_runs(now).with_context(unwritable)?;
        prune(&self.conn, now, policy.retention).with_context(unwritable)?;
        self.conn
            .execute(
                "INSERT INTO runs (started_ms, pid, input, target, folded, host, os_user,
                     input_sha256, results_path, version, boot_id, marks_durable)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9, ?10, 0)",
                params![
                    run.started.timestamp_millis(),
                    std::process::id(),
                    run.input.display().to_string(),
                    run.target,
                    run.host,
                    run.user,
                    run.input_sha256,
                    run.results.as_ref().map(|p| p.display().to_string()),
                    env!("CARGO_PKG_VERSION"),
                    boot_id(),
                ],
            )
            .with_context(unwritable)?;
        let id = RunId(self.conn.last_insert_rowid());
        let journal = self.journal_file(id);
        File::create(&journal)
            .with_context(|| format!("cannot create the journal file {}", journal.display()))?;
        self.journal_path = Some(journal);
        if self.durable {
            // The file SQLite appends every commit to; it exists once anything was written.
            // Opened for writing on Windows, where `FlushFileBuffers` refuses a read-only
            // handle ("Access denied"); nothing is written through it.
            let wal = format!("{}-wal", self.path.display());
            self.wal = Some(
                File::options()
                    .read(true)
                    .write(cfg!(windows))
                    .open(&wal)
                    .with_context(|| format!("cannot open the ledger log {wal}"))?,
            );
            self.flush()?;
            self.conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
            self.checkpointer = Some(Checkpointer::spawn(&self.path)?);
        }
        self.run = Some((id, run.target.clone()));
        Ok(id)
    }

    fn marks(&self) -> Result<Marks> {
        let path = self.journal_path.as_ref().context("no run was begun")?;
        let file = File::options()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the journal file {}", path.display()))?;
        Ok(Marks::File(Arc::new(file)))
    }

    fn commit(&mut self, batch: &mut Batch, policy: &Policy, now: DateTime<Utc>) -> Result<()> {
        let (run, target) = self.current()?;
        let target = target.to_string();
        let tx = writing(&mut self.conn)?;
        let mut intents = false;
        let at = Admitting {
            run,
            target: &target,
            policy,
            now,
            stamp: rfc3339(now),
        };
        for (entries, admitted, stopped) in &mut batch.admits {
            for entry in entries.iter() {
                let a = admit(&tx, &at, entry, stopped.as_ref())?;
                intents |= matches!(a, Admission::Send { .. });
                admitted.push(a);
            }
        }
        for (seq, outcome) in &batch.outcomes {
            write_outcome(&tx, row_id(run, *seq), outcome)?;
        }
        tx.commit()?;
        // Rows go to the queue, and so may be sent, only once their intent is on disk.
        if intents {
            self.flush()?;
        }
        Ok(())
    }

    fn settle(&mut self, end: &RunEnd, now: DateTime<Utc>) -> Result<Counts> {
        let (run, _) = self.current()?;
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
            self.conn
                .execute_batch("PRAGMA wal_autocheckpoint = 1000;")?;
        }
        let journal = self.journal_path.clone().context("no run was begun")?;
        let evidence = Evidence::Journal(&journal);
        let counts = self.settle_run(run, now, evidence, &Unfinished::own(end))?;
        let _ = std::fs::remove_file(&journal);
        Ok(counts)
    }

    fn close(&mut self, exit_code: u8, now: DateTime<Utc>) -> Result<()> {
        let (run, _) = self.current()?;
        self.conn.execute(
            "UPDATE runs SET finished_ms = ?1, exit_code = ?2 WHERE id = ?3",
            params![now.timestamp_millis(), exit_code, run.0],
        )?;
        Ok(())
    }

    fn results(&mut self, run: RunId, f: &mut dyn FnMut(ResultRow) -> Result<()>) -> Result<()> {
        let mut stmt = self.conn.prepare(&format!(
            "{FINAL_ROWS} WHERE r.id BETWEEN ?1 AND ?2 ORDER BY r.id"
        ))?;
        let (first, last) = run_rows(run);
        let mut rows = stmt.query(params![first, last])?;
        while let Some(row) = rows.next()? {
            f(final_row(row, run)?)?;
        }
        Ok(())
    }

    fn runs(&mut self, last: usize) -> Result<Vec<RunRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!("{RUNS} ORDER BY id DESC LIMIT ?1"))?;
        let found: Vec<RawRun> = stmt
            .query_map(params![last as i64], RawRun::read)?
            .collect::<rusqlite::Result<_>>()?;
        found.into_iter().map(|r| r.record(&self.conn)).collect()
    }

    fn run(&mut self, run: RunId) -> Result<Option<RunRecord>> {
        let found = self
            .conn
            .query_row(
                &format!("{RUNS} WHERE id = ?1"),
                params![run.0],
                RawRun::read,
            )
            .optional()?;
        found.map(|r| r.record(&self.conn)).transpose()
    }

    fn history(&mut self, invoice: &str, dept: Option<&str>) -> Result<Vec<HistoryEntry>> {
        let mut entries = history_rows(&self.conn, invoice, dept)?;
        entries.extend(history_resolutions(&self.conn, invoice, dept)?);
        entries.sort_by_key(|e| e.at);
        Ok(entries)
    }

    fn resolve(&mut self, request: &ResolveRequest, now: DateTime<Utc>) -> Result<Resolved> {
        resolution::resolve(self, request, now)
    }

    fn pace(&mut self, target: &str) -> Result<Option<f64>> {
        let rate = self
            .conn
            .query_row("SELECT rate FROM paces WHERE target = ?1", [target], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(rate)
    }

    /// A SQL-dialect twin of the PostgreSQL store's (placeholders and upsert spelling).
    fn keep_pace(&mut self, target: &str, rate: f64, now: DateTime<Utc>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO paces (target, rate, at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (target) DO UPDATE SET rate = excluded.rate, at_ms = excluded.at_ms",
            params![target, rate, now.timestamp_millis()],
        )?;
        Ok(())
    }

    fn priors(&mut self, target: &str, keys: &[(String, String)]) -> Result<Vec<Option<Prior>>> {
        keys.iter()
            .map(|(dept, invoice)| write::prior(&self.conn, target, dept, invoice))
            .collect()
    }

    fn pause_state(&mut self, run: RunId) -> Result<PauseState> {
        pause_state(&self.conn, run)
    }

    fn set_pause(
        &mut self,
        run: RunId,
        paused: bool,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        set_pause(&mut self.conn, run, paused, (by, now))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A result row's key: the run in the high 32 bits, the input row in the low 32. As the
/// table's rowid it needs no separate primary-key index, which is one b-tree write less
/// for every row on the writer's hot path.
fn row_id(run: RunId, seq: u64) -> i64 {
    assert!(
        seq <= u64::from(u32::MAX),
        "more than 4 billion rows in one input"
    );
    (run.0 << 32) | seq as i64
}

/// The first and last possible result-row ids of a run.
fn run_rows(run: RunId) -> (i64, i64) {
    (row_id(run, 0), row_id(run, u64::from(u32::MAX)))
}

/// `history`'s index key for an invoice: its 64-bit FNV-1a hash, written out here so that
/// it is the same in every process and every version (std's hasher promises neither).
/// Another invoice with the same key only costs `history` a row it filters out.
fn invoice_key(invoice: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in invoice.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_key_is_the_same_in_every_process() {
        // FNV-1a's published values, pinned: a change would orphan every ledger's index.
        assert_eq!(invoice_key("") as u64, 0xcbf2_9ce4_8422_2325);
        assert_eq!(invoice_key("a") as u64, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(invoice_key("foobar") as u64, 0x8594_4171_f739_67e8);
        assert_ne!(invoice_key("INV-1"), invoice_key("INV-2"));
    }
}
