//! The SQLite ledger: the source of truth for every row's outcome.
//!
//! Two tables carry it. `results` holds one row per input record of a run; the results
//! CSV is rendered from it, so a crash loses nothing that was recorded. `sends` remembers,
//! per target URL, department and invoice, what the last run did with that invoice, so a
//! rerun knows what not to send again.
//!
//! One thread owns the connection ([`Ledger::spawn`]); everything else talks to it over a
//! bounded channel. It commits whatever commands have queued up in one transaction (group
//! commit) and only then answers, so an in-flight mark is durable before its request leaves
//! without costing a disk flush per row.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::cli::LedgerChoice;
use crate::input::{Record, Request};

const SCHEMA_VERSION: i64 = 1;
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
        let conn = open_connection(&path, durable)
            .with_context(|| format!("ledger {} cannot be used", path.display()))?;
        let now = Utc::now().timestamp_millis();
        conn.execute(
            "INSERT INTO runs (started_ms, pid, input, target) VALUES (?1, ?2, ?3, ?4)",
            params![now, std::process::id(), input.display().to_string(), target],
        )
        .with_context(|| format!("ledger {} cannot be written", path.display()))?;
        let run_id = conn.last_insert_rowid();
        conn.execute(
            "DELETE FROM results WHERE id < ?1",
            params![row_id(run_id - RUNS_KEPT + 1, 0)],
        )
        .with_context(|| format!("ledger {} cannot be written", path.display()))?;
        Ok(Ledger {
            conn,
            run_id,
            target: target.to_string(),
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
            // Answer only after the commit: that is what makes a mark durable.
            let failed = result.as_ref().err().map(|e| format!("{e:#}"));
            for cmd in batch.drain(..) {
                cmd.answer(failed.clone());
            }
            result?;
        }
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
                // Only `sends` is written: rendering reads a pending row whose invoice is in
                // flight for this run as in flight, which saves a write on the hot path.
                Cmd::MarkInFlight { request, .. } => {
                    tx.prepare_cached(
                        "INSERT INTO sends (target, dept, invoice, status, run_id, at_ms)
                         VALUES (?1, ?2, ?3, 'in_flight', ?4, ?5)
                         ON CONFLICT (target, dept, invoice) DO UPDATE SET
                           status = 'in_flight', run_id = ?4, at_ms = ?5",
                    )?
                    .execute(params![
                        self.target,
                        request.department.as_str(),
                        request.invoice.as_str(),
                        self.run_id,
                        now_ms
                    ])?;
                }
                Cmd::Record {
                    seq,
                    request,
                    outcome,
                    marked,
                } => {
                    write_outcome(&tx, self.run_id, *seq, outcome)?;
                    // Only a marked row's outcome changes what a rerun does. `sent_ms`
                    // remembers the last real send even when a later --resend fails, so the
                    // dedupe window still holds.
                    if *marked {
                        let sent = matches!(outcome.status, Status::Sent | Status::Partial);
                        tx.prepare_cached(
                            "UPDATE sends SET status = ?4, run_id = ?5, at_ms = ?6,
                                 sent_run = CASE WHEN ?7 THEN ?5 ELSE sent_run END,
                                 sent_ms = CASE WHEN ?7 THEN ?6 ELSE sent_ms END
                             WHERE target = ?1 AND dept = ?2 AND invoice = ?3",
                        )?
                        .execute(params![
                            self.target,
                            request.department.as_str(),
                            request.invoice.as_str(),
                            outcome.status.as_str(),
                            self.run_id,
                            now_ms,
                            sent
                        ])?;
                    }
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
                    CASE WHEN r.status = 'pending' AND s.status = 'in_flight' AND s.run_id = r.run_id
                         THEN 'in_flight' ELSE r.status END,
                    r.http_status, r.attempts, r.payment_link, r.invoice_link, r.text_sent,
                    r.email_sent, r.errors, r.warnings, r.message, r.completed_at,
                    r.dept, r.invoice
             FROM results r
             LEFT JOIN sends s ON s.target = ?2 AND s.dept = r.dept AND s.invoice = r.invoice
             WHERE r.id BETWEEN ?1 AND ?3 ORDER BY r.id",
        )?;
        let mut rows = stmt.query(params![
            row_id(self.run_id, 0),
            self.target,
            row_id(self.run_id, u32::MAX as u64)
        ])?;
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
    // a power cut, not only a killed process. Group commit pays for the flush. A throwaway
    // ledger dies with the run, so it skips the flush.
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .context("cannot switch the ledger to WAL mode (read-only, or corrupt?)")?;
    conn.execute_batch("PRAGMA wal_autocheckpoint = 10000;")?;
    conn.execute_batch(if durable {
        "PRAGMA synchronous = FULL;"
    } else {
        "PRAGMA synchronous = OFF;"
    })?;
    if version < SCHEMA_VERSION {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS runs (
                 id INTEGER PRIMARY KEY,
                 started_ms INTEGER NOT NULL,
                 finished_ms INTEGER,
                 pid INTEGER NOT NULL,
                 input TEXT NOT NULL,
                 target TEXT NOT NULL,
                 exit_code INTEGER
             );
             CREATE TABLE IF NOT EXISTS sends (
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
             CREATE TABLE IF NOT EXISTS results (
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
             CREATE INDEX IF NOT EXISTS results_key ON results (run_id, dept, invoice);
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .context("cannot create the ledger tables")?;
    }
    Ok(conn)
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

fn write_outcome(tx: &rusqlite::Transaction, run_id: i64, seq: u64, o: &Outcome) -> Result<()> {
    tx.prepare_cached(
        "UPDATE results SET status = ?1, http_status = ?2, attempts = ?3, payment_link = ?4,
             invoice_link = ?5, text_sent = ?6, email_sent = ?7, errors = ?8, warnings = ?9,
             message = ?10, completed_at = ?11
         WHERE id = ?12",
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
        row_id(run_id, seq)
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
    let mut first_line = tx.prepare_cached(
        // MIN, not ORDER BY seq: that would make SQLite walk the primary key instead of
        // the (run_id, dept, invoice) index, and admission would be quadratic.
        "SELECT MIN(line) FROM results WHERE run_id = ?1 AND dept = ?2 AND invoice = ?3",
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
                let first: Option<u64> =
                    first_line.query_row(params![run_id, dept, invoice], |r| r.get(0))?;
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
        request: Request,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Record {
        seq: u64,
        request: Request,
        outcome: Box<Outcome>,
        /// Whether the row was marked in flight: only then does its outcome replace the
        /// mark in `sends`.
        marked: bool,
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
    pub async fn mark_in_flight(&self, request: &Request) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::MarkInFlight {
                request: request.clone(),
                reply: tx,
            })
            .await
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| anyhow::anyhow!("ledger write failed: {e}"))
    }

    pub async fn record(
        &self,
        seq: u64,
        request: Request,
        outcome: Outcome,
        marked: bool,
    ) -> Result<()> {
        self.tx
            .send(Cmd::Record {
                seq,
                request,
                outcome: Box::new(outcome),
                marked,
            })
            .await
            .map_err(|_| gone())
    }
}
