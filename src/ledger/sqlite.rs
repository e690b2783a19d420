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
    boot_id, Admission, Batch, Entry, EntryKind, HistoryEntry, Marks, ResolveRequest, Resolved,
    ResultRow, RunEnd, RunInfo, RunRecord, Store, Unfinished, Verdict,
};
use crate::domain::{
    from_millis, rfc3339, AttemptNote, Counts, Outcome, RunId, SkipKind, Status, StopReason,
};

const SCHEMA_VERSION: i64 = 3;

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

    /// Brings the schema up to date, each step in one transaction with its version bump, so
    /// a ledger is never left half migrated.
    fn migrate(&mut self, read_only: bool) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .context("not a SQLite database, or corrupt")?;
        if version > SCHEMA_VERSION {
            bail!(
                "it was written by a newer invoice-dispatch (ledger schema {version}, this build knows {SCHEMA_VERSION}); upgrade, or use another --ledger"
            );
        }
        // WAL lets `runs` and `history` read while a run writes. A durable ledger commits
        // without waiting for the disk and flushes the log itself when a commit holds
        // intents (see `commit`); SQLite still flushes at checkpoints. A throwaway ledger
        // dies with the run, so it never flushes.
        self.conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .context("cannot switch the ledger to WAL mode (read-only, or corrupt?)")?;
        self.conn.execute_batch(if self.durable {
            "PRAGMA synchronous = NORMAL;"
        } else {
            "PRAGMA synchronous = OFF;"
        })?;
        if version < SCHEMA_VERSION && read_only && self._lock.is_none() {
            // Migrating writes: it waits for no run, and no run may start meanwhile.
            self._lock = Some(take_lock(&self.path)?);
        }
        for (from, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            self.conn
                .execute_batch(&format!(
                    "BEGIN; {step} PRAGMA user_version = {}; COMMIT;",
                    from + 1
                ))
                .with_context(|| format!("cannot bring the ledger to schema {}", from + 1))?;
        }
        Ok(())
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
            let wal = format!("{}-wal", self.path.display());
            self.wal = Some(
                File::open(&wal).with_context(|| format!("cannot open the ledger log {wal}"))?,
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

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

impl SqliteStore {
    /// Settles every run that died before it could settle itself, oldest first, so that
    /// what it left becomes what this run's admission sees.
    fn settle_dead_runs(&mut self, now: DateTime<Utc>) -> Result<()> {
        let dead: Vec<(i64, Option<String>, bool)> = self
            .conn
            .prepare("SELECT id, boot_id, marks_durable FROM runs WHERE folded = 0 ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let this_boot = boot_id();
        for (id, boot, marks_durable) in dead {
            let run = RunId(id);
            let file = self.journal_file(run);
            // Which rows left, and what came back: the journal, if the machine has not
            // restarted since (its writes were never flushed); the marks table of a
            // schema-2 run (each of its marks was flushed before its request left);
            // otherwise nobody can tell.
            let evidence = if marks_durable {
                Evidence::Table
            } else if boot.is_some() && boot == this_boot && file.exists() {
                Evidence::Journal(&file)
            } else {
                Evidence::Nothing
            };
            let counts = self.settle_run(run, now, evidence, &Unfinished::dead(run))?;
            tracing::info!(
                "settled run {run}, which died before it finished: {}",
                counts.describe()
            );
            let _ = std::fs::remove_file(&file);
        }
        Ok(())
    }

    /// Gives every unfinished row of `run` its journalled answer, or else the status
    /// `rule` gives it by its leaving mark, folds the run into `sends` and `by_invoice`,
    /// and records its counts, in one durable commit.
    fn settle_run(
        &mut self,
        run: RunId,
        now: DateTime<Utc>,
        evidence: Evidence,
        rule: &Unfinished,
    ) -> Result<Counts> {
        let tx = writing(&mut self.conn)?;
        let (first, last) = run_rows(run);
        let open: HashSet<u64> = tx
            .prepare(
                "SELECT r.seq FROM results r LEFT JOIN outcomes o ON o.id = r.id
                 WHERE r.id BETWEEN ?1 AND ?2 AND r.status = 'pending' AND o.id IS NULL",
            )?
            .query_map(params![first, last], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let journal = match evidence {
            Evidence::Journal(path) => Some(Journal::read(path, &open)?),
            Evidence::Table => Some(Journal::of_marks(marked_in_table(&tx, run)?)),
            Evidence::Nothing => None,
        };
        for &seq in &open {
            if let Some(answer) = journal.as_ref().and_then(|j| j.answer(seq)) {
                write_outcome(&tx, row_id(run, seq), answer)?;
                continue;
            }
            let (status, message, attempts) =
                rule.row(journal.as_ref().map(|j| j.marked.contains(&seq)));
            let outcome = Outcome {
                attempts,
                ..Outcome::plain(status, message, now)
            };
            write_outcome(&tx, row_id(run, seq), &outcome)?;
        }
        fold(&tx, run)?;
        let counts = count_rows(&tx, run)?;
        tx.execute(
            "UPDATE runs SET folded = 1, counts = ?1 WHERE id = ?2",
            params![counts.to_record(), run.0],
        )?;
        tx.commit()?;
        self.flush()?;
        Ok(counts)
    }
}

/// What tells which of a run's unfinished rows left, and what came back.
enum Evidence<'a> {
    /// The run's journal file.
    Journal(&'a Path),
    /// The marks table of a run of schema 2 (no answers).
    Table,
    /// Nothing to trust: the machine restarted since the run.
    Nothing,
}

/// Checkpoints the log on a thread and connection of its own while a run writes. On the
/// writer's connection a checkpoint (every 1,000 pages by default) copied pages and
/// flushed two files while admissions waited behind it; here it overlaps them. The writer
/// still flushes the log itself whenever a commit holds intents.
struct Checkpointer {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the checkpointer copies what the log holds.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

impl Checkpointer {
    fn spawn(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path).context("cannot open the ledger for checkpoints")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || loop {
                let (flag, wake) = &*stopping;
                let guard = flag.lock().unwrap();
                let (stopped, _) = wake
                    .wait_timeout_while(guard, CHECKPOINT_EVERY, |stopped| !*stopped)
                    .unwrap();
                if *stopped {
                    return;
                }
                drop(stopped);
                // One that cannot finish now (the writer is busy) is taken up next time.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            })
            .context("cannot start the ledger's checkpoint thread")?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    fn signal(&self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap() = true;
        wake.notify_one();
    }

    /// Stops it once its checkpoint in progress, if any, is done.
    fn stop(mut self) {
        self.signal();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal();
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

/// What every admission of one commit shares.
struct Admitting<'a> {
    run: RunId,
    target: &'a str,
    policy: &'a Policy,
    now: DateTime<Utc>,
    /// `now`, as rows settled at admission show it.
    stamp: String,
}

/// Decides what becomes of one record and records it.
fn admit(
    tx: &Transaction,
    at: &Admitting,
    entry: &Entry,
    stopped: Option<&StopReason>,
) -> Result<Admission> {
    let prior = match &entry.kind {
        EntryKind::Valid(req) => {
            prior(tx, at.target, req.department.as_str(), req.invoice.as_str())?
        }
        _ => None,
    };
    let (key, decision) = judge(entry, prior.as_ref(), at.policy, at.now, stopped);
    match decision {
        Ok((request, note)) => {
            let message = note.as_deref().unwrap_or("");
            insert_result(tx, at.run, entry, key, "pending", None, message, "")?;
            Ok(Admission::send(entry, request, note))
        }
        Err((status, skip, message)) => {
            let status_text = status.as_str();
            insert_result(
                tx,
                at.run,
                entry,
                key,
                status_text,
                skip,
                &message,
                &at.stamp,
            )?;
            Ok(Admission::Done(status, skip))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_result(
    tx: &Transaction,
    run: RunId,
    entry: &Entry,
    key: Option<(&str, &str)>,
    status: &str,
    skip: Option<SkipKind>,
    message: &str,
    completed_at: &str,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO results (id, run_id, seq, line, dept, invoice, status, skip, message, completed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        row_id(run, entry.seq),
        run.0,
        entry.seq as i64,
        entry.line as i64,
        key.map(|k| k.0),
        key.map(|k| k.1),
        status,
        skip.map(SkipKind::code),
        message,
        completed_at,
    ])?;
    Ok(())
}

/// What earlier runs did with this invoice for this target.
fn prior(tx: &Transaction, target: &str, dept: &str, invoice: &str) -> Result<Option<Prior>> {
    let found = tx
        .prepare_cached(
            "SELECT status, run_id, at_ms, sent_run, sent_ms, resolution, resolved_by, resolved_ms
             FROM sends WHERE target = ?1 AND dept = ?2 AND invoice = ?3",
        )?
        .query_row(params![target, dept, invoice], |r| {
            let stored = StoredPrior {
                status: r.get(0)?,
                run: r.get(1)?,
                at_ms: r.get(2)?,
                sent: (r.get(3)?, r.get(4)?),
                resolution: (r.get(5)?, r.get(6)?, r.get(7)?),
            };
            Ok(Prior::from_stored(stored, None))
        })
        .optional()?;
    Ok(found)
}

/// A transaction that takes the write lock at once. A deferred one that reads first and
/// then writes gets SQLITE_BUSY straight away, without waiting out the busy timeout, if
/// another connection (`resolve`, a backup, someone's sqlite3 shell) is writing: the run
/// would stop on a lock held for a moment.
fn writing(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// Writes a row's outcome. Its time is kept once, as `at_ms` (`completed_at` is left empty
/// and derived when read: formatting it for every row cost more than the rest of the row).
fn write_outcome(tx: &Transaction, id: i64, o: &Outcome) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO outcomes (status, skip, http_status, attempts, payment_link, invoice_link,
             text_sent, email_sent, errors, warnings, message, completed_at, id, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        o.status.as_str(),
        o.skip.map(SkipKind::code),
        o.http_status,
        o.attempts,
        o.payment_link,
        o.invoice_link,
        o.text_sent,
        o.email_sent,
        o.errors,
        o.warnings,
        o.message,
        "",
        id,
        o.completed_at.timestamp_millis(),
    ])?;
    for (n, note) in o.earlier.iter().enumerate() {
        write_attempt(tx, id, n as i64 + 1, note)?;
    }
    Ok(())
}

fn write_attempt(tx: &Transaction, id: i64, n: i64, a: &AttemptNote) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO attempts (id, n, at_ms, http_status, what, errors, warnings)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        n,
        a.at.timestamp_millis(),
        a.http_status,
        a.what,
        a.errors,
        a.warnings
    ])?;
    Ok(())
}

/// Brings `sends` up to date with the requests `run` made, and indexes its rows by invoice.
/// Rows that made no request leave `sends` alone; `sent_ms` keeps the last real send even
/// when a later `--resend` fails, so the dedupe window still holds; a new request makes an
/// earlier resolution moot.
fn fold(tx: &Transaction, run: RunId) -> Result<()> {
    let (first, last) = run_rows(run);
    // Sorted by key, so the upsert walks `sends` in order instead of jumping per row. (The
    // WHERE clause also keeps SQLite from reading ON CONFLICT as a join constraint.)
    tx.execute(
        "INSERT INTO sends (target, dept, invoice, status, run_id, at_ms, sent_run, sent_ms)
         SELECT (SELECT target FROM runs WHERE id = ?3), r.dept, r.invoice, o.status, ?3,
                coalesce(o.at_ms, 0),
                CASE WHEN o.status IN ('sent', 'partial') THEN ?3 END,
                CASE WHEN o.status IN ('sent', 'partial') THEN coalesce(o.at_ms, 0) END
         FROM results r JOIN outcomes o ON o.id = r.id
         WHERE r.id BETWEEN ?1 AND ?2 AND r.dept IS NOT NULL
               AND (o.attempts > 0 OR o.status = 'unknown')
         ORDER BY r.dept, r.invoice
         ON CONFLICT (target, dept, invoice) DO UPDATE SET
             status = excluded.status, run_id = excluded.run_id, at_ms = excluded.at_ms,
             sent_run = coalesce(excluded.sent_run, sent_run),
             sent_ms = coalesce(excluded.sent_ms, sent_ms),
             resolution = NULL, resolved_by = NULL, resolved_ms = NULL",
        params![first, last, run.0],
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO by_invoice (key, id)
         SELECT invoice_key(invoice), id FROM results
         WHERE id BETWEEN ?1 AND ?2 AND invoice IS NOT NULL ORDER BY 1, 2",
        params![first, last],
    )?;
    Ok(())
}

fn count_rows(conn: &Connection, run: RunId) -> Result<Counts> {
    let (first, last) = run_rows(run);
    let mut stmt = conn.prepare_cached(
        "SELECT coalesce(o.status, r.status), coalesce(o.skip, r.skip), count(*)
         FROM results r LEFT JOIN outcomes o ON o.id = r.id
         WHERE r.id BETWEEN ?1 AND ?2 GROUP BY 1, 2",
    )?;
    let mut rows = stmt.query(params![first, last])?;
    let mut counts = Counts::default();
    while let Some(row) = rows.next()? {
        let status: String = row.get(0)?;
        let skip: Option<String> = row.get(1)?;
        let n: i64 = row.get(2)?;
        // A row still pending belongs to a run that has not been settled: it may be in flight.
        let status = Status::parse(&status).unwrap_or(Status::Unknown);
        counts.add_n(status, skip.as_deref().and_then(SkipKind::parse), n as u64);
    }
    Ok(counts)
}

/// Drops per-row history of runs that started before `retention` ago. `sends`, the memory
/// the dedupe window reads, is never pruned; nor are the runs' own records.
fn prune(conn: &Connection, now: DateTime<Utc>, retention: Duration) -> Result<()> {
    let cutoff = now - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
    let first_kept: Option<i64> = conn.query_row(
        "SELECT coalesce(min(id), (SELECT max(id) + 1 FROM runs)) FROM runs WHERE started_ms >= ?1",
        params![cutoff.timestamp_millis()],
        |r| r.get(0),
    )?;
    let Some(first_kept) = first_kept else {
        return Ok(());
    };
    let boundary = row_id(RunId(first_kept), 0);
    let stale: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM results WHERE id < ?1)",
        params![boundary],
        |r| r.get(0),
    )?;
    if stale {
        conn.execute_batch(&format!(
            "BEGIN;
             DELETE FROM results WHERE id < {boundary};
             DELETE FROM outcomes WHERE id < {boundary};
             DELETE FROM marks WHERE id < {boundary};
             DELETE FROM attempts WHERE id < {boundary};
             DELETE FROM by_invoice WHERE id < {boundary};
             COMMIT;"
        ))?;
    }
    Ok(())
}

/// A schema-2 run's marks, which it flushed before each request left.
fn marked_in_table(conn: &Connection, run: RunId) -> Result<HashSet<u64>> {
    let (first, last) = run_rows(run);
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM marks WHERE id BETWEEN ?1 AND ?2")?
        .query_map(params![first, last], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids
        .into_iter()
        .map(|id| (id & 0xffff_ffff) as u64)
        .collect())
}

/// Every row of a run as the results file shows it, by id range.
const FINAL_ROWS: &str = "SELECT r.seq, r.line, r.dept, r.invoice,
        coalesce(o.status, r.status), coalesce(o.skip, r.skip), o.http_status,
        coalesce(o.attempts, 0), o.payment_link, o.invoice_link, o.text_sent, o.email_sent,
        coalesce(o.errors, ''), coalesce(o.warnings, ''), coalesce(o.message, r.message),
        coalesce(nullif(o.completed_at, ''), r.completed_at),
        CASE WHEN o.completed_at = '' THEN o.at_ms END
     FROM results r LEFT JOIN outcomes o ON o.id = r.id";

fn final_row(row: &rusqlite::Row, run: RunId) -> Result<ResultRow> {
    let status: String = row.get(4)?;
    let skip: Option<String> = row.get(5)?;
    let completed: String = row.get(15)?;
    // An outcome keeps its time in `at_ms` alone (see `write_outcome`).
    let outcome_ms: Option<i64> = row.get(16)?;
    let outcome = Outcome {
        status: Status::Unknown,
        skip: skip.as_deref().and_then(SkipKind::parse),
        http_status: row.get(6)?,
        attempts: row.get(7)?,
        payment_link: row.get(8)?,
        invoice_link: row.get(9)?,
        text_sent: row.get(10)?,
        email_sent: row.get(11)?,
        errors: row.get(12)?,
        warnings: row.get(13)?,
        message: row.get(14)?,
        completed_at: match outcome_ms {
            Some(ms) => from_millis(ms),
            None => DateTime::parse_from_rfc3339(&completed)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
        },
        earlier: Vec::new(),
    };
    let key = match (row.get(2)?, row.get(3)?) {
        (Some(dept), Some(invoice)) => Some((dept, invoice)),
        _ => None,
    };
    let place = (row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64);
    Ok(ResultRow::read(place, key, &status, outcome, run))
}

const RUNS: &str = "SELECT id, started_ms, finished_ms, host, os_user, input, input_sha256,
        target, counts, exit_code, pid, folded FROM runs";

/// A `runs` row as stored.
struct RawRun {
    id: i64,
    started_ms: i64,
    finished_ms: Option<i64>,
    host: String,
    user: String,
    input: String,
    sha256: String,
    target: String,
    counts: Option<String>,
    exit_code: Option<i64>,
    pid: i64,
    folded: bool,
}

impl RawRun {
    fn read(r: &rusqlite::Row) -> rusqlite::Result<RawRun> {
        Ok(RawRun {
            id: r.get(0)?,
            started_ms: r.get(1)?,
            finished_ms: r.get(2)?,
            host: r.get(3)?,
            user: r.get(4)?,
            input: r.get(5)?,
            sha256: r.get(6)?,
            target: r.get(7)?,
            counts: r.get(8)?,
            exit_code: r.get(9)?,
            pid: r.get(10)?,
            folded: r.get(11)?,
        })
    }

    fn record(self, conn: &Connection) -> Result<RunRecord> {
        let run = RunId(self.id);
        let counts = match self.counts.as_deref().and_then(Counts::from_record) {
            Some(c) => c,
            None => count_rows(conn, run)?,
        };
        let state = match (self.exit_code, self.folded) {
            (Some(_), _) => "finished",
            (None, false) if self.alive() => "running",
            _ => "died",
        };
        Ok(RunRecord {
            id: run.to_string(),
            started: from_millis(self.started_ms),
            finished: self.finished_ms.map(from_millis),
            host: self.host,
            user: self.user,
            input: self.input,
            input_sha256: self.sha256,
            target: self.target,
            skipped_unknown: counts.skipped_unknown,
            already_paid: counts.already_paid,
            counts,
            exit_code: self.exit_code,
            state: state.to_string(),
        })
    }

    /// Whether the process that ran it is still there: only this host can tell.
    fn alive(&self) -> bool {
        let here = whoami::fallible::hostname().unwrap_or_default();
        here == self.host && Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// Every row of every run that had this invoice, with each of its earlier requests.
fn history_rows(conn: &Connection, invoice: &str, dept: Option<&str>) -> Result<Vec<HistoryEntry>> {
    // Folded runs are found through the index; a run not folded yet (running, or died
    // since) by reading its rows. CROSS JOIN and `+` pin that plan: runs outside, then
    // each unfolded run's id range; left to itself the planner scans every result row.
    let mut stmt = conn.prepare(
        "SELECT r.id, r.dept, coalesce(o.status, r.status), o.http_status, o.text_sent,
                o.email_sent, o.payment_link, o.invoice_link, coalesce(o.errors, ''),
                coalesce(o.message, r.message), o.at_ms, u.target, u.id, r.completed_at, u.started_ms,
                coalesce(o.attempts, 0)
         FROM results r JOIN runs u ON u.id = r.run_id LEFT JOIN outcomes o ON o.id = r.id
         WHERE r.id IN (
                 SELECT id FROM by_invoice WHERE key = invoice_key(?1)
                 UNION ALL
                 SELECT r2.id FROM runs u2 CROSS JOIN results r2
                     ON r2.id BETWEEN u2.id * 4294967296 AND u2.id * 4294967296 + 4294967295
                 WHERE u2.folded = 0 AND +r2.invoice = ?1)
           AND r.invoice = ?1 AND (?2 IS NULL OR r.dept = ?2)
         ORDER BY r.id",
    )?;
    let mut rows = stmt.query(params![invoice, dept])?;
    let mut entries = Vec::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let department: String = r.get(1)?;
        let target: String = r.get(11)?;
        let run = RunId(r.get(12)?);
        entries.extend(earlier_attempts(conn, id, run, &target, &department)?);
        let admitted: String = r.get(13)?;
        let at = HistoryEntry::row_time(r.get(10)?, &admitted, r.get(14).unwrap_or_default());
        let (what, status) = HistoryEntry::row_words(r.get(2)?, r.get(15)?);
        entries.push(HistoryEntry {
            http_status: r.get(3)?,
            text_sent: r.get(4)?,
            email_sent: r.get(5)?,
            payment_link: r.get(6)?,
            invoice_link: r.get(7)?,
            errors: r.get(8)?,
            message: r.get(9)?,
            ..HistoryEntry::new(at, run, target, department, what, status)
        });
    }
    Ok(entries)
}

fn earlier_attempts(
    conn: &Connection,
    id: i64,
    run: RunId,
    target: &str,
    department: &str,
) -> Result<Vec<HistoryEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, http_status, what, errors FROM attempts WHERE id = ?1 ORDER BY n",
    )?;
    let found = stmt.query_map(params![id], |r| {
        Ok(HistoryEntry {
            http_status: r.get(1)?,
            errors: r.get(3)?,
            message: r.get(2)?,
            ..HistoryEntry::new(
                from_millis(r.get(0)?),
                run,
                target.to_string(),
                department.to_string(),
                "request",
                "retried".into(),
            )
        })
    })?;
    Ok(found.collect::<rusqlite::Result<_>>()?)
}

fn history_resolutions(
    conn: &Connection,
    invoice: &str,
    dept: Option<&str>,
) -> Result<Vec<HistoryEntry>> {
    let mut stmt = conn.prepare(
        "SELECT at_ms, by_user, verdict, dept, target, run_id, file, line FROM resolutions
         WHERE invoice = ?1 AND (?2 IS NULL OR dept = ?2) ORDER BY id",
    )?;
    let found = stmt.query_map(params![invoice, dept], |r| {
        let (by, verdict): (String, String) = (r.get(1)?, r.get(2)?);
        let (file, line): (String, i64) = (r.get(6)?, r.get(7)?);
        let place = (RunId(r.get(5)?), r.get(4)?, r.get(3)?);
        Ok(HistoryEntry::resolution(
            from_millis(r.get(0)?),
            place,
            verdict,
            (&by, &file, line),
        ))
    })?;
    Ok(found.collect::<rusqlite::Result<_>>()?)
}

impl resolution::Verdicts for SqliteStore {
    fn target_of_file(&mut self, results: &Path) -> Result<Option<String>> {
        let path = std::path::absolute(results).unwrap_or_else(|_| results.to_path_buf());
        let found = self
            .conn
            .query_row(
                "SELECT target FROM runs WHERE results_path = ?1 ORDER BY id DESC LIMIT 1",
                params![path.display().to_string()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found)
    }

    fn unknown_under(&mut self, dept: &str, invoice: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT target FROM sends WHERE dept = ?1 AND invoice = ?2
                 AND status NOT IN ('sent', 'partial', 'failed', 'not_sent')",
        )?;
        let found = stmt.query_map(params![dept, invoice], |r| r.get(0))?;
        Ok(found.collect::<rusqlite::Result<_>>()?)
    }

    fn state(&mut self, target: &str, dept: &str, invoice: &str) -> Result<Option<SendState>> {
        let found = self
            .conn
            .prepare_cached(
                "SELECT status, run_id, resolution, resolved_by, resolved_ms FROM sends
                 WHERE target = ?1 AND dept = ?2 AND invoice = ?3",
            )?
            .query_row(params![target, dept, invoice], |r| {
                Ok(SendState {
                    status: r.get(0)?,
                    run: r.get(1)?,
                    resolution: r.get(2)?,
                    resolved_by: r.get(3)?,
                    resolved_ms: r.get(4)?,
                })
            })
            .optional()?;
        Ok(found)
    }

    fn record(
        &mut self,
        target: &str,
        verdicts: &[(&Verdict, i64)],
        request: &ResolveRequest,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let tx = writing(&mut self.conn)?;
        let (by, file, at) = (
            request.by,
            request.results.display().to_string(),
            now.timestamp_millis(),
        );
        for (v, run) in verdicts {
            let verdict = resolution::stored(v);
            tx.execute(
                "INSERT INTO resolutions (target, dept, invoice, verdict, by_user, at_ms, run_id, file, line)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![target, v.dept, v.invoice, verdict, by, at, run, file, v.line as i64],
            )?;
            let changed = tx.execute(
                "UPDATE sends SET resolution = ?1, resolved_by = ?2, resolved_ms = ?3
                 WHERE target = ?4 AND dept = ?5 AND invoice = ?6
                   AND run_id = ?7 AND resolution IS NULL",
                params![verdict, by, at, target, v.dept, v.invoice, run],
            )?;
            resolution::still_as_judged(changed as u64, v)?;
        }
        tx.commit()?;
        // A verdict is a person's work: it survives a power cut as soon as it is reported.
        self.conn.execute_batch("PRAGMA wal_checkpoint(FULL);")?;
        Ok(())
    }
}

/// The ledger's one name: symlinks to the file or to a folder on its way, `..` and a
/// relative start all resolved. The lock, the log and the journals are named from it, so
/// two names of one ledger meet at one lock. A ledger not yet created is named from its
/// real folder.
fn real_path(ledger: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(ledger) {
        return real;
    }
    match (ledger.parent(), ledger.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or_else(|_| ledger.to_path_buf())
        }
        _ => ledger.to_path_buf(),
    }
}

/// Takes the exclusive run lock beside the ledger (named by [`real_path`]), naming the
/// holder when it is taken.
fn take_lock(ledger: &Path) -> Result<File> {
    let mut name = ledger.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open the ledger lock {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            bail!(
                "ledger {} is in use by another invoice-dispatch run ({}); wait for it to finish, or use another --ledger",
                ledger.display(),
                if holder.is_empty() { "pid unknown".to_string() } else { format!("pid {holder}") }
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// `MIGRATIONS[n]` takes a ledger from schema `n` to `n + 1`; a new ledger runs them all.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 1: `sends` written as each row was marked and answered.
    "CREATE TABLE runs (
         id INTEGER PRIMARY KEY,
         started_ms INTEGER NOT NULL,
         finished_ms INTEGER,
         pid INTEGER NOT NULL,
         input TEXT NOT NULL,
         target TEXT NOT NULL,
         exit_code INTEGER
     );
     CREATE TABLE sends (
         target TEXT NOT NULL,
         dept TEXT NOT NULL,
         invoice TEXT NOT NULL,
         status TEXT NOT NULL,
         run_id INTEGER NOT NULL,
         at_ms INTEGER NOT NULL,
         sent_run INTEGER,
         sent_ms INTEGER,
         PRIMARY KEY (target, dept, invoice)
     ) WITHOUT ROWID;
     CREATE TABLE results (
         id INTEGER PRIMARY KEY,
         run_id INTEGER NOT NULL,
         seq INTEGER NOT NULL,
         line INTEGER NOT NULL,
         dept TEXT,
         invoice TEXT,
         status TEXT NOT NULL,
         http_status INTEGER,
         attempts INTEGER NOT NULL DEFAULT 0,
         payment_link TEXT,
         invoice_link TEXT,
         text_sent TEXT,
         email_sent TEXT,
         errors TEXT NOT NULL DEFAULT '',
         warnings TEXT NOT NULL DEFAULT '',
         message TEXT NOT NULL DEFAULT '',
         completed_at TEXT NOT NULL DEFAULT ''
     );
     CREATE INDEX results_key ON results (run_id, dept, invoice);",
    // 2: marks and outcomes get narrow tables of their own, keyed like `results`: a commit
    // then appends a few small rows at the right edge of two b-trees instead of rewriting
    // the pages of every scattered row it touched. `sends` is folded from them once per run;
    // runs written by schema 1 updated `sends` as they went, so they count as folded.
    "ALTER TABLE runs ADD COLUMN folded INTEGER NOT NULL DEFAULT 1;
     CREATE TABLE marks (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
     CREATE TABLE outcomes (
         id INTEGER PRIMARY KEY,
         status TEXT NOT NULL,
         http_status INTEGER,
         attempts INTEGER NOT NULL,
         payment_link TEXT,
         invoice_link TEXT,
         text_sent TEXT,
         email_sent TEXT,
         errors TEXT NOT NULL,
         warnings TEXT NOT NULL,
         message TEXT NOT NULL,
         completed_at TEXT NOT NULL,
         at_ms INTEGER
     );
     INSERT INTO outcomes
         SELECT id, status, http_status, attempts, payment_link, invoice_link, text_sent,
                email_sent, errors, warnings, message, completed_at, NULL
         FROM results WHERE attempts > 0;
     DROP INDEX results_key;
     ALTER TABLE results DROP COLUMN http_status;
     ALTER TABLE results DROP COLUMN attempts;
     ALTER TABLE results DROP COLUMN payment_link;
     ALTER TABLE results DROP COLUMN invoice_link;
     ALTER TABLE results DROP COLUMN text_sent;
     ALTER TABLE results DROP COLUMN email_sent;
     ALTER TABLE results DROP COLUMN errors;
     ALTER TABLE results DROP COLUMN warnings;",
    // 3: per-attempt history, runs people can read, resolutions, and an index of every row
    // by invoice (filled in when a run is folded, so sending only ever appends). Runs written
    // by schema 2 flushed each mark before its request left, so their marks are authoritative.
    "ALTER TABLE runs ADD COLUMN host TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN os_user TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN input_sha256 TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN results_path TEXT;
     ALTER TABLE runs ADD COLUMN version TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN boot_id TEXT;
     ALTER TABLE runs ADD COLUMN marks_durable INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE runs ADD COLUMN counts TEXT;
     ALTER TABLE results ADD COLUMN skip TEXT;
     ALTER TABLE outcomes ADD COLUMN skip TEXT;
     CREATE TABLE attempts (
         id INTEGER NOT NULL,
         n INTEGER NOT NULL,
         at_ms INTEGER NOT NULL,
         http_status INTEGER,
         what TEXT NOT NULL,
         errors TEXT NOT NULL,
         warnings TEXT NOT NULL,
         PRIMARY KEY (id, n)
     ) WITHOUT ROWID;
     ALTER TABLE sends ADD COLUMN resolution TEXT;
     ALTER TABLE sends ADD COLUMN resolved_by TEXT;
     ALTER TABLE sends ADD COLUMN resolved_ms INTEGER;
     CREATE TABLE resolutions (
         id INTEGER PRIMARY KEY,
         target TEXT NOT NULL,
         dept TEXT NOT NULL,
         invoice TEXT NOT NULL,
         verdict TEXT NOT NULL,
         by_user TEXT NOT NULL,
         at_ms INTEGER NOT NULL,
         run_id INTEGER NOT NULL,
         file TEXT NOT NULL,
         line INTEGER NOT NULL
     );
     CREATE INDEX resolutions_invoice ON resolutions (invoice);
     CREATE TABLE by_invoice (key INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (key, id)) WITHOUT ROWID;
     UPDATE results SET skip = CASE WHEN message LIKE 'unknown: %' THEN 'maybe_delivered'
                                    ELSE 'sent_earlier' END
         WHERE status = 'skipped';
     INSERT INTO by_invoice SELECT invoice_key(invoice), id FROM results
         WHERE invoice IS NOT NULL AND run_id IN (SELECT id FROM runs WHERE folded = 1)
         ORDER BY 1, 2;",
];

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
