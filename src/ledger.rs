//! The SQLite ledger: the source of truth for every row's outcome.
//!
//! `results` holds one row per input record of a run, in input order, with what admission
//! decided; `marks` and `outcomes`, keyed the same way, hold the in-flight marks and the
//! answers. The results CSV is rendered from the three, so a crash loses nothing that was
//! recorded. `sends` remembers, per target URL, department and invoice, what the last run
//! did with that invoice, so a rerun knows what not to send again. A run folds its marks and
//! outcomes into `sends` in one sorted pass when it ends; if it died first, the next run
//! does it when it opens the ledger.
//!
//! One thread owns the connection ([`Ledger::spawn`]); everything else talks to it over a
//! bounded channel. It commits whatever commands have queued up in one transaction (group
//! commit), and a mark is answered only once a flush of the log has covered its commit, so
//! it is durable before its request leaves without a disk flush per row (see `serve`).
//!
//! While a run sends, a commit only appends small rows at the right edge of `results`,
//! `marks` and `outcomes`, so it writes a few pages however random the invoice ids are.
//! Duplicates within a run are found in a TEMP table, which is never flushed: it only
//! matters while the run lives.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::cli::LedgerChoice;
use crate::input::Record;

const SCHEMA_VERSION: i64 = 2;
/// How a row skipped because an earlier run may have delivered it starts its message; such
/// rows still need a person, so they make the exit code 2.
pub const UNKNOWN_SKIP: &str = "unknown: ";
/// Runs whose per-row results are kept; older ones are pruned (their `sends` memory stays).
const RUNS_KEPT: i64 = 20;
/// Commands folded into one transaction at most.
const GROUP_MAX: usize = 512;

/// A row's status, as the results file spells it. `Pending` and `InFlight` exist only
/// inside a run: a row still in them at the end was never finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Sent,
    Partial,
    Failed,
    Unknown,
    Invalid,
    Duplicate,
    Skipped,
    NotSent,
    Pending,
    InFlight,
}

impl Status {
    /// The final statuses, in the order the summary lists them.
    pub const FINAL: [Status; 8] = [
        Status::Sent,
        Status::Partial,
        Status::Failed,
        Status::Unknown,
        Status::Invalid,
        Status::Duplicate,
        Status::Skipped,
        Status::NotSent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Partial => "partial",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
            Status::Invalid => "invalid",
            Status::Duplicate => "duplicate",
            Status::Skipped => "skipped",
            Status::NotSent => "not_sent",
            Status::Pending => "pending",
            Status::InFlight => "in_flight",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::FINAL
            .into_iter()
            .chain([Status::Pending, Status::InFlight])
            .find(|st| st.as_str() == s)
    }
}

/// What happened to one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub http_status: Option<u16>,
    pub attempts: u32,
    pub payment_link: Option<String>,
    pub invoice_link: Option<String>,
    pub text_sent: Option<String>,
    pub email_sent: Option<String>,
    pub errors: String,
    pub warnings: String,
    pub message: String,
    pub completed_at: String,
}

impl Outcome {
    /// An outcome reached without an HTTP answer (validation, dedupe, a stopped run).
    pub fn plain(status: Status, message: impl Into<String>) -> Outcome {
        Outcome {
            status,
            http_status: None,
            attempts: 0,
            payment_link: None,
            invoice_link: None,
            text_sent: None,
            email_sent: None,
            errors: String::new(),
            warnings: String::new(),
            message: message.into(),
            completed_at: now_rfc3339(),
        }
    }
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn rfc3339_from_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// How admission treats what earlier runs did.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub dedupe_window: Duration,
    pub resend: bool,
    pub retry_unknown: bool,
}

pub struct Ledger {
    conn: Connection,
    run_id: i64,
    target: String,
    /// A durable ledger's write-ahead log, which the flusher thread flushes (see `serve`).
    wal: Option<File>,
    /// Held for the whole run: the OS drops the lock if the process dies, however it dies.
    _lock: Option<File>,
    /// Keeps a throwaway ledger's folder alive until the run ends.
    _temp: Option<tempfile::TempDir>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger, takes the run lock and starts a run record.
    pub fn open(choice: &LedgerChoice, target: &str, input: &Path) -> Result<Ledger> {
        let (path, temp, lock) = match choice {
            LedgerChoice::At(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| {
                        format!("cannot create the ledger folder {}", dir.display())
                    })?;
                }
                let lock = take_lock(path)?;
                (path.clone(), None, Some(lock))
            }
            LedgerChoice::Throwaway => {
                let dir = tempfile::Builder::new()
                    .prefix("invoice-dispatch-")
                    .tempdir()
                    .context("cannot create a temporary ledger")?;
                (dir.path().join("ledger.sqlite3"), Some(dir), None)
            }
        };
        let durable = temp.is_none();
        let mut conn = open_connection(&path, durable)
            .with_context(|| format!("ledger {} cannot be used", path.display()))?;
        let unwritable = || format!("ledger {} cannot be written", path.display());
        fold_unfinished(&mut conn).with_context(unwritable)?;
        let now = Utc::now().timestamp_millis();
        conn.execute(
            "INSERT INTO runs (started_ms, pid, input, target, folded) VALUES (?1, ?2, ?3, ?4, 0)",
            params![now, std::process::id(), input.display().to_string(), target],
        )
        .with_context(unwritable)?;
        let run_id = conn.last_insert_rowid();
        for table in ["results", "marks", "outcomes"] {
            conn.execute(
                &format!("DELETE FROM {table} WHERE id < ?1"),
                params![row_id(run_id - RUNS_KEPT + 1, 0)],
            )
            .with_context(unwritable)?;
        }
        // The file SQLite appends every commit to; it exists once anything was written.
        let wal = match (durable, conn.path()) {
            (true, Some(db)) => {
                let wal = format!("{db}-wal");
                Some(
                    File::open(&wal)
                        .with_context(|| format!("cannot open the ledger log {wal}"))?,
                )
            }
            _ => None,
        };
        Ok(Ledger {
            conn,
            run_id,
            target: target.to_string(),
            wal,
            _lock: lock,
            _temp: temp,
        })
    }

    /// Hands the connection to a writer thread; the returned handle is how the rest of the
    /// program talks to it. Joining the thread (after every handle is dropped) gives the
    /// ledger back for rendering.
    pub fn spawn(self, policy: Policy) -> (LedgerHandle, std::thread::JoinHandle<Result<Ledger>>) {
        let (tx, rx) = mpsc::channel(1024);
        let thread = std::thread::Builder::new()
            .name("ledger".into())
            .spawn(move || self.serve(rx, policy))
            .expect("spawn the ledger thread");
        (LedgerHandle { tx }, thread)
    }

    fn serve(mut self, mut rx: mpsc::Receiver<Cmd>, policy: Policy) -> Result<Ledger> {
        // A durable ledger commits without waiting for the disk (synchronous = NORMAL) and
        // hands each committed batch's marks to the flushers, which flush the log once for
        // all the batches that queued meanwhile and only then answer them. The next batch
        // is applied while the disk works, so a mark waits for about one flush.
        let flusher = match &self.wal {
            Some(wal) => {
                self.conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
                Some(Flusher::spawn(wal)?)
            }
            None => None,
        };
        let mut batch = Vec::with_capacity(GROUP_MAX);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let result = self.apply(&mut batch, &policy);
            let failed = result.as_ref().err().map(|e| format!("{e:#}"));
            // Only a mark has to be on disk before it is answered: its request leaves on
            // the strength of it. Admissions and outcomes reach the disk with the next
            // flush, which covers every earlier commit; losing them to a power cut before
            // that costs nothing a rerun cannot redo, since no request depended on them.
            let mut marks = Vec::new();
            for cmd in batch.drain(..) {
                match cmd {
                    Cmd::MarkInFlight { .. } => marks.push(cmd),
                    _ => cmd.answer(failed.clone()),
                }
            }
            match (&failed, &flusher) {
                (None, Some(flusher)) if !marks.is_empty() => flusher.flush(marks),
                _ => {
                    for cmd in marks {
                        cmd.answer(failed.clone());
                    }
                }
            }
            result?;
        }
        if let Some(flusher) = flusher {
            flusher.finish()?;
            // From here on SQLite flushes each commit itself again.
            self.conn.execute_batch("PRAGMA synchronous = FULL;")?;
        }
        fold(&mut self.conn, self.run_id)?;
        Ok(self)
    }

    fn apply(&mut self, batch: &mut [Cmd], policy: &Policy) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now_ms = Utc::now().timestamp_millis();
        for cmd in batch.iter_mut() {
            match cmd {
                // `rows` comes back holding only the rows to send, for the reply.
                Cmd::Admit { rows, .. } => {
                    *rows = admit(&tx, self.run_id, &self.target, policy, rows, now_ms)?;
                }
                Cmd::MarkInFlight { seq, .. } => {
                    tx.prepare_cached("INSERT INTO marks (id, at_ms) VALUES (?1, ?2)")?
                        .execute(params![row_id(self.run_id, *seq), now_ms])?;
                }
                Cmd::Record { seq, outcome } => {
                    write_outcome(&tx, row_id(self.run_id, *seq), outcome, now_ms)?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every result row of this run in input order: `(seq, (department, invoice) if the row
    /// was valid, outcome)`.
    pub fn for_each_result(
        &self,
        mut f: impl FnMut(u64, Option<(String, String)>, Outcome) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT r.seq,
                    coalesce(o.status, CASE WHEN m.id IS NOT NULL THEN 'in_flight' END, r.status),
                    o.http_status, coalesce(o.attempts, 0), o.payment_link, o.invoice_link,
                    o.text_sent, o.email_sent, coalesce(o.errors, ''), coalesce(o.warnings, ''),
                    coalesce(o.message, r.message), coalesce(o.completed_at, r.completed_at),
                    r.dept, r.invoice
             FROM results r
             LEFT JOIN marks m ON m.id = r.id
             LEFT JOIN outcomes o ON o.id = r.id
             WHERE r.id BETWEEN ?1 AND ?2 ORDER BY r.id",
        )?;
        let (first, last) = run_rows(self.run_id);
        let mut rows = stmt.query(params![first, last])?;
        while let Some(row) = rows.next()? {
            let status: String = row.get(1)?;
            let outcome = Outcome {
                status: Status::parse(&status)
                    .with_context(|| format!("ledger holds an unknown status {status:?}"))?,
                http_status: row.get(2)?,
                attempts: row.get(3)?,
                payment_link: row.get(4)?,
                invoice_link: row.get(5)?,
                text_sent: row.get(6)?,
                email_sent: row.get(7)?,
                errors: row.get(8)?,
                warnings: row.get(9)?,
                message: row.get(10)?,
                completed_at: row.get(11)?,
            };
            let key = match (row.get(12)?, row.get(13)?) {
                (Some(dept), Some(invoice)) => Some((dept, invoice)),
                _ => None,
            };
            f(row.get::<_, i64>(0)? as u64, key, outcome)?;
        }
        Ok(())
    }

    /// Closes the run record; rows left in flight keep their mark, so a rerun treats them
    /// as unknown.
    pub fn finish(&self, exit_code: i32) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET finished_ms = ?1, exit_code = ?2 WHERE id = ?3",
            params![Utc::now().timestamp_millis(), exit_code, self.run_id],
        )?;
        Ok(())
    }
}

fn open_connection(path: &Path, durable: bool) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .context("not a SQLite database, or corrupt")?;
    if version > SCHEMA_VERSION {
        bail!(
            "it was written by a newer invoice-dispatch (ledger schema {version}, this build knows {SCHEMA_VERSION}); upgrade, or use another --ledger"
        );
    }
    // WAL lets the results be read while the writer works; FULL makes each commit survive
    // a power cut, not only a killed process (while a run sends, the flushers do that job:
    // see `serve`). A throwaway ledger dies with the run, so it skips the flush. SQLite's
    // default checkpoint interval keeps the log at about 4 MB, rewritten in place, and a
    // flush of a file that did not grow is the cheap kind.
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .context("cannot switch the ledger to WAL mode (read-only, or corrupt?)")?;
    conn.execute_batch(if durable {
        "PRAGMA synchronous = FULL;"
    } else {
        "PRAGMA synchronous = OFF;"
    })?;
    // Each step takes the ledger from schema N to N+1, in one transaction with the version
    // bump, so a ledger is never left half migrated.
    for (from, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {step} PRAGMA user_version = {}; COMMIT;",
            from + 1
        ))
        .with_context(|| format!("cannot bring the ledger to schema {}", from + 1))?;
    }
    // Duplicates within this run: the first row of each key, by a 64-bit fingerprint of
    // the key. TEMP tables belong to this connection, spill to a temporary file (so memory
    // stays flat) and are never flushed; an 8-byte key keeps 100,000 rows in SQLite's
    // default 2 MB cache even though invoice ids arrive in random order. Its rollback
    // journal is kept in memory: on disk it was rewritten and truncated at every commit, and
    // that churn made each flush of the real log slower.
    conn.execute_batch(
        "PRAGMA temp.journal_mode = MEMORY;
         CREATE TEMP TABLE seen (fingerprint INTEGER PRIMARY KEY, seq INTEGER NOT NULL);",
    )?;
    Ok(conn)
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
];

/// Brings `sends` up to date with what `run_id` marked and recorded, in one transaction.
/// Rows never marked were never sent and leave `sends` alone; `sent_ms` keeps the last real
/// send even when a later `--resend` fails, so the dedupe window still holds.
fn fold(conn: &mut Connection, run_id: i64) -> Result<()> {
    let tx = conn.transaction()?;
    let (first, last) = run_rows(run_id);
    // Sorted by key, so the upsert walks `sends` in order instead of jumping per row. (The
    // WHERE clause also keeps SQLite from reading ON CONFLICT as a join constraint.)
    tx.execute(
        "INSERT INTO sends (target, dept, invoice, status, run_id, at_ms, sent_run, sent_ms)
         SELECT (SELECT target FROM runs WHERE id = ?3), r.dept, r.invoice,
                coalesce(o.status, 'in_flight'), ?3, coalesce(o.at_ms, m.at_ms),
                CASE WHEN o.status IN ('sent', 'partial') THEN ?3 END,
                CASE WHEN o.status IN ('sent', 'partial') THEN o.at_ms END
         FROM marks m JOIN results r ON r.id = m.id LEFT JOIN outcomes o ON o.id = m.id
         WHERE m.id BETWEEN ?1 AND ?2
         ORDER BY r.dept, r.invoice
         ON CONFLICT (target, dept, invoice) DO UPDATE SET
             status = excluded.status, run_id = excluded.run_id, at_ms = excluded.at_ms,
             sent_run = coalesce(excluded.sent_run, sent_run),
             sent_ms = coalesce(excluded.sent_ms, sent_ms)",
        params![first, last, run_id],
    )?;
    tx.execute("UPDATE runs SET folded = 1 WHERE id = ?1", params![run_id])?;
    tx.commit()?;
    Ok(())
}

/// Folds the runs that died before they could fold themselves, oldest first, so that
/// their in-flight marks become what the next admission sees.
fn fold_unfinished(conn: &mut Connection) -> Result<()> {
    let runs: Vec<i64> = conn
        .prepare("SELECT id FROM runs WHERE folded = 0 ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for run in runs {
        fold(conn, run)?;
    }
    Ok(())
}

/// Takes the exclusive run lock beside the ledger, naming the holder when it is taken.
fn take_lock(ledger: &Path) -> Result<File> {
    // The lock sits beside the real file, so two paths to one ledger (a symlinked folder,
    // a relative and an absolute path) meet at the same lock.
    let ledger = &match (ledger.parent(), ledger.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .map(|d| d.join(name))
        .unwrap_or_else(|_| ledger.to_path_buf()),
        _ => ledger.to_path_buf(),
    };
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

/// A result row's key: the run in the high 32 bits, the input row in the low 32. As the
/// table's rowid it needs no separate primary-key index, which is one b-tree write less
/// for every row on the ledger thread's hot path.
fn row_id(run_id: i64, seq: u64) -> i64 {
    assert!(
        seq <= u64::from(u32::MAX),
        "more than 4 billion rows in one input"
    );
    (run_id << 32) | seq as i64
}

/// The first and last possible result-row ids of a run.
fn run_rows(run_id: i64) -> (i64, i64) {
    (row_id(run_id, 0), row_id(run_id, u64::from(u32::MAX)))
}

fn write_outcome(tx: &rusqlite::Transaction, id: i64, o: &Outcome, now_ms: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO outcomes (status, http_status, attempts, payment_link, invoice_link,
             text_sent, email_sent, errors, warnings, message, completed_at, id, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        o.status.as_str(),
        o.http_status,
        o.attempts,
        o.payment_link,
        o.invoice_link,
        o.text_sent,
        o.email_sent,
        o.errors,
        o.warnings,
        o.message,
        o.completed_at,
        id,
        now_ms
    ])?;
    Ok(())
}

/// Decides, in input order, what happens to each record, records that decision, and
/// returns the records that are to be sent.
fn admit(
    tx: &rusqlite::Transaction,
    run_id: i64,
    target: &str,
    policy: &Policy,
    rows: &mut Vec<Record>,
    now_ms: i64,
) -> Result<Vec<Record>> {
    let mut to_send = Vec::new();
    let mut insert = tx.prepare_cached(
        "INSERT INTO results (id, run_id, seq, line, dept, invoice, status, message, completed_at)
         VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut earlier = tx.prepare_cached(
        "SELECT status, run_id, at_ms, sent_run, sent_ms FROM sends
         WHERE target = ?1 AND dept = ?2 AND invoice = ?3",
    )?;
    let window_ms = i64::try_from(policy.dedupe_window.as_millis()).unwrap_or(i64::MAX);
    let stamp = now_rfc3339();
    for record in rows.drain(..) {
        let (dept, invoice, status, message) = match &record.parsed {
            Err(invalid) => (None, None, Status::Invalid, invalid.message(record.line)),
            Ok(req) => {
                let dept = req.department.as_str();
                let invoice = req.invoice.as_str();
                let first = first_line(tx, run_id, record.seq, dept, invoice)?;
                let prior: Option<Prior> = earlier
                    .query_row(params![target, dept, invoice], |r| {
                        Ok(Prior {
                            status: r.get(0)?,
                            run: r.get(1)?,
                            at_ms: r.get(2)?,
                            sent_run: r.get(3)?,
                            sent_ms: r.get(4)?,
                        })
                    })
                    .optional()?;
                let (status, message) = match (first, prior) {
                    (Some(line), _) => (Status::Duplicate, format!("duplicate of line {line}")),
                    (None, Some(p))
                        if matches!(p.status.as_str(), "in_flight" | "unknown")
                            && !policy.retry_unknown =>
                    {
                        (
                            Status::Skipped,
                            format!(
                                "{UNKNOWN_SKIP}run {} sent it at {} and read no answer, so the customer may have been notified; check, then use --retry-unknown to send again",
                                p.run,
                                rfc3339_from_ms(p.at_ms)
                            ),
                        )
                    }
                    (None, Some(Prior { sent_run: Some(run), sent_ms: Some(at), .. }))
                        if !policy.resend && now_ms.saturating_sub(at) < window_ms =>
                    {
                        (
                            Status::Skipped,
                            format!(
                                "sent {} by run {run}; within the dedupe window (--resend to send again)",
                                rfc3339_from_ms(at)
                            ),
                        )
                    }
                    _ => (Status::Pending, String::new()),
                };
                (Some(dept), Some(invoice), status, message)
            }
        };
        let completed = if status == Status::Pending {
            ""
        } else {
            stamp.as_str()
        };
        insert.execute(params![
            run_id,
            record.seq as i64,
            record.line as i64,
            dept,
            invoice,
            status.as_str(),
            message,
            completed,
            row_id(run_id, record.seq)
        ])?;
        if status == Status::Pending {
            to_send.push(record);
        }
    }
    Ok(to_send)
}

/// The line of this run's first row with the same department and invoice, if the row is
/// not the first; otherwise the row becomes the first.
fn first_line(
    tx: &rusqlite::Transaction,
    run_id: i64,
    seq: u64,
    dept: &str,
    invoice: &str,
) -> Result<Option<u64>> {
    let key = fingerprint(dept, invoice);
    let earlier: Option<u64> = tx
        .prepare_cached("SELECT seq FROM seen WHERE fingerprint = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?;
    let Some(earlier) = earlier else {
        tx.prepare_cached("INSERT INTO seen (fingerprint, seq) VALUES (?1, ?2)")?
            .execute(params![key, seq as i64])?;
        return Ok(None);
    };
    let same: Option<u64> = tx
        .prepare_cached("SELECT line FROM results WHERE id = ?1 AND dept = ?2 AND invoice = ?3")?
        .query_row(params![row_id(run_id, earlier), dept, invoice], |r| {
            r.get(0)
        })
        .optional()?;
    if same.is_some() {
        return Ok(same);
    }
    // Two keys with one fingerprint (about one run in 10^9 at 100,000 rows): the slot
    // belongs to the other key, so this key's first row is found by reading the run.
    let (first, last) = run_rows(run_id);
    let line = tx
        .prepare_cached(
            "SELECT MIN(line) FROM results
             WHERE id BETWEEN ?1 AND ?2 AND dept = ?3 AND invoice = ?4",
        )?
        .query_row(params![first, last, dept, invoice], |r| r.get(0))?;
    Ok(line)
}

/// Stable within a process, which is as long as the `seen` table lives.
fn fingerprint(dept: &str, invoice: &str) -> i64 {
    let mut h = std::hash::DefaultHasher::new();
    (dept, invoice).hash(&mut h);
    h.finish() as i64
}

/// What the ledger knows of an invoice from earlier runs.
struct Prior {
    status: String,
    run: i64,
    at_ms: i64,
    sent_run: Option<i64>,
    sent_ms: Option<i64>,
}

enum Cmd {
    Admit {
        rows: Vec<Record>,
        reply: oneshot::Sender<Result<Vec<Record>, String>>,
    },
    MarkInFlight {
        seq: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Record {
        seq: u64,
        outcome: Box<Outcome>,
    },
}

impl Cmd {
    fn answer(self, failed: Option<String>) {
        let verdict = |f: Option<String>| f.map_or(Ok(()), Err);
        match self {
            Cmd::Admit { rows, reply } => {
                let _ = reply.send(verdict(failed).map(|()| rows));
            }
            Cmd::MarkInFlight { reply, .. } => {
                let _ = reply.send(verdict(failed));
            }
            Cmd::Record { .. } => {}
        }
    }
}

/// Makes committed batches durable, then answers them.
///
/// SQLite writes a commit to the log before `commit` returns; flushing the log file makes
/// that commit, and every one before it, survive a power cut. A commit that was written but
/// not yet flushed when the power went is rolled back on the next open (the log's frame
/// checksums end at the last whole commit), and nobody was answered for it, so no request
/// left on its strength. With synchronous = NORMAL SQLite still flushes on checkpoints.
///
/// Two flushers take turns: a batch committed while one flush runs starts its own flush at
/// once instead of waiting for that one to end (the disk serves two flushes about as fast
/// as one). Whichever flush ends first covers every commit written before it began.
struct Flusher {
    tx: std::sync::mpsc::Sender<Vec<Cmd>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Once a flush fails nothing after it is known to be on disk.
    failed: Arc<Mutex<Option<String>>>,
}

const FLUSHERS: usize = 2;

impl Flusher {
    fn spawn(wal: &File) -> Result<Flusher> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Cmd>>();
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(Mutex::new(None::<String>));
        let mut threads = Vec::new();
        for _ in 0..FLUSHERS {
            let (rx, failed, wal) = (rx.clone(), failed.clone(), wal.try_clone()?);
            let flusher = move || loop {
                // Everything committed so far, taken under the lock so the other flusher
                // starts on what commits next.
                let batches: Vec<Vec<Cmd>> = {
                    let rx = rx.lock().unwrap();
                    let Ok(first) = rx.recv() else { return };
                    std::iter::once(first).chain(rx.try_iter()).collect()
                };
                if failed.lock().unwrap().is_none() {
                    if let Err(e) = wal.sync_data() {
                        let mut failed = failed.lock().unwrap();
                        failed.get_or_insert(format!("cannot flush the ledger to disk: {e}"));
                    }
                }
                let verdict = failed.lock().unwrap().clone();
                for cmd in batches.into_iter().flatten() {
                    cmd.answer(verdict.clone());
                }
            };
            threads.push(
                std::thread::Builder::new()
                    .name("ledger-flush".into())
                    .spawn(flusher)
                    .context("cannot start the ledger flusher")?,
            );
        }
        Ok(Flusher {
            tx,
            threads,
            failed,
        })
    }

    fn flush(&self, batch: Vec<Cmd>) {
        // The flushers only stop once this sender is dropped.
        let _ = self.tx.send(batch);
    }

    /// Waits for the last flush; the first flush error, if any.
    fn finish(self) -> Result<()> {
        drop(self.tx);
        for thread in self.threads {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the ledger flusher panicked"))?;
        }
        match self.failed.lock().unwrap().take() {
            Some(e) => bail!(e),
            None => Ok(()),
        }
    }
}

/// A cheap, cloneable way to reach the ledger thread.
#[derive(Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<Cmd>,
}

fn gone() -> anyhow::Error {
    anyhow::anyhow!("the ledger writer stopped")
}

impl LedgerHandle {
    /// Records the rows' admission and returns those to send. Blocking: for the reader
    /// thread.
    pub fn admit_blocking(&self, rows: Vec<Record>) -> Result<Vec<Record>> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .blocking_send(Cmd::Admit { rows, reply: tx })
            .map_err(|_| gone())?;
        rx.blocking_recv()
            .map_err(|_| gone())?
            .map_err(|e| anyhow::anyhow!("ledger write failed: {e}"))
    }

    /// Durably marks the row in flight; returns once the mark is committed.
    pub async fn mark_in_flight(&self, seq: u64) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::MarkInFlight { seq, reply: tx })
            .await
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| anyhow::anyhow!("ledger write failed: {e}"))
    }

    pub async fn record(&self, seq: u64, outcome: Outcome) -> Result<()> {
        self.tx
            .send(Cmd::Record {
                seq,
                outcome: Box::new(outcome),
            })
            .await
            .map_err(|_| gone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{DepartmentUuid, Flags, InvoiceGuid, Request};

    const DEPT: &str = "3f2b9c1e-7a4d-4e8b-9f61-2c5d8a0e4b17";

    fn record(seq: u64, invoice: &str) -> Record {
        Record {
            seq,
            line: seq + 2,
            parsed: Ok(Request {
                department: DepartmentUuid::parse(DEPT).unwrap(),
                invoice: InvoiceGuid::parse(invoice).unwrap(),
                flags: Flags::default(),
            }),
        }
    }

    /// Admits the records in one transaction; the status and message each was given.
    fn admit_all(ledger: &mut Ledger, rows: Vec<Record>) -> Vec<(String, String)> {
        let policy = Policy {
            dedupe_window: Duration::from_secs(3600),
            resend: false,
            retry_unknown: false,
        };
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        let tx = ledger.conn.transaction().unwrap();
        admit(
            &tx,
            ledger.run_id,
            "http://127.0.0.1:1",
            &policy,
            &mut { rows },
            0,
        )
        .unwrap();
        let out = seqs
            .iter()
            .map(|seq| {
                tx.query_row(
                    "SELECT status, message FROM results WHERE id = ?1",
                    params![row_id(ledger.run_id, *seq)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap()
            })
            .collect();
        tx.commit().unwrap();
        out
    }

    #[test]
    fn two_keys_sharing_a_fingerprint_are_not_duplicates_of_each_other() {
        let mut ledger = Ledger::open(
            &LedgerChoice::Throwaway,
            "http://127.0.0.1:1",
            Path::new("in.csv"),
        )
        .unwrap();
        admit_all(&mut ledger, vec![record(0, "INV-A")]);
        // Force the collision: INV-B's fingerprint slot already belongs to row 0 (INV-A).
        ledger
            .conn
            .execute(
                "INSERT INTO seen (fingerprint, seq) VALUES (?1, 0)",
                params![fingerprint(DEPT, "INV-B")],
            )
            .unwrap();
        let got = admit_all(
            &mut ledger,
            vec![record(1, "INV-B"), record(2, "INV-B"), record(3, "INV-A")],
        );
        let want = [
            ("pending", ""),
            ("duplicate", "duplicate of line 3"),
            ("duplicate", "duplicate of line 2"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(s, m)| (s.as_str(), m.as_str())).collect();
        assert_eq!(got, want);
    }
}
