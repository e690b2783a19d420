//! The ledger: the source of truth for every row's outcome, and the memory that makes a
//! rerun safe. Two stores keep it, SQLite (one machine) and PostgreSQL (many), behind one
//! [`Store`] interface; the rerun rules are a pure function beside them ([`admission`]).
//!
//! # Never twice, whatever dies (SPEC section 7)
//!
//! Before a request leaves, the ledger can prove afterwards whether it may have left:
//!
//! 1. **Intent** (durable): a row is admitted, and so may be sent, only in a commit that is
//!    flushed before the row is queued. Intents are written in batches, ahead of the send
//!    slots: the flush happens while earlier rows' requests are out, not on any request's
//!    path. A batch is at most `concurrency` rows and the reader keeps at most two batches
//!    and one queue (`concurrency` rows) ahead, so at most about four times `concurrency`
//!    rows hold an intent without having left.
//! 2. **Leaving mark** (written, not flushed): just before a request's first byte leaves,
//!    the sending task appends the row's number to the run's journal file (SQLite,
//!    [`journal`]), or commits it without waiting for the disk (PostgreSQL,
//!    `synchronous_commit = off`). It reaches the operating system (or the server) before
//!    the request leaves, so it survives the death of the process, though not of the
//!    machine (or the server).
//! 3. **Answer** (written, flushed later): before a row gives up its send slot, its outcome
//!    reaches the OS or the server the same way (the journal; the PostgreSQL answers
//!    connection), and it rides the next durable commit. So a kill leaves at most the rows
//!    holding a slot with a mark and no answer, however far the writer has fallen behind.
//!    After a power cut a lost outcome leaves an intent with a leaving mark, or with no
//!    evidence at all, and both read as `unknown`: a lost outcome never turns into a resend.
//!
//! Each run records the machine's boot id (Linux `/proc/sys/kernel/random/boot_id`;
//! Windows, the boot time and the machine's name, see [`boot`];
//! `INVOICE_DISPATCH_TEST_BOOT_ID` for tests), or for PostgreSQL the server's start time.
//! A later run that finds a dead run's rows with an intent and no outcome settles them:
//! same boot id, so the journal is intact: a row with an answer there gets it, one with
//! only a leaving mark is `unknown`, a row without either never left and is sent
//! normally; another boot id, or none: every such row is `unknown`, since its mark may
//! have been lost.
//!
//! | what dies | what it leaves | what the next run does |
//! |---|---|---|
//! | SIGKILL, OOM kill, panic, a second Ctrl-C | intents; marks and answers in the OS cache (or on the server) | same boot: answers recorded; rows with a mark and no answer `unknown` (at most the requests in flight), the rest sent normally |
//! | power cut, kernel crash, reboot | intents (flushed); marks and recent outcomes maybe lost | another boot id: every row with an intent and no outcome `unknown` (at most ~4 x `concurrency`) |
//! | pod moved to another node (SQLite on a volume) | as above | another boot id: as above |
//! | PostgreSQL server crash or restart | intents (synchronous commits); marks and outcomes maybe lost | another server start time, or the run's `open_runs` sentinel gone (crash recovery): every such row `unknown` |
//! | the client machine, with a PostgreSQL ledger | everything committed reached the server | same server start time: marks are authoritative |
//!
//! A run that ends normally (even interrupted, or stopped by a breaker) settles its own
//! rows before it writes the results: rows never started become `not_sent`, rows still in
//! flight `unknown`; so only runs that died leave settling to the next run.
//!
//! # On Windows
//!
//! The model needs three things of the platform: a flush that puts a commit on the disk
//! before the rows it admits are queued; writes that reach the OS (not yet the disk) and
//! survive the death of the process; and a boot id. Windows gives all three, with these
//! differences from Linux:
//!
//! - **What can be flushed.** `FlushFileBuffers` (std's `sync_all`/`sync_data`) works only
//!   on a handle with write access: the SQLite log is opened for writing there, though
//!   nothing is written through it (a read-only handle fails with "Access denied", os
//!   error 5). A folder cannot be flushed at all (a read-only folder handle is refused the
//!   same way, and Windows has no `fsync` of a directory): nothing here relies on it. The
//!   SQLite log's name in its folder, its size, and a rename are NTFS metadata, which NTFS
//!   writes to its own log as units; SQLite, too, never flushes a folder on Windows. What
//!   the flush of the log guarantees is the same as Linux's `fdatasync`: a commit it
//!   returned from is on the disk, intents included.
//! - **Leaving marks and answers** are appended with `WriteFile` on a handle opened for
//!   appending (`FILE_APPEND_DATA`): each record lands whole at the end, in the system's
//!   file cache, which a killed process (Task Manager, `taskkill /F`) does not take with
//!   it. A power cut, a blue screen or a reboot may lose them: that is a new boot.
//! - **The boot id** is the boot time with the machine's name ([`boot`]); readings within
//!   two seconds are one boot. Its error is only ever toward a new boot (a run settled
//!   more than about half a day after it died, or after the clock was stepped): every open
//!   row of that run is then `unknown`, as after a power cut, never sent again.
//! - **The lock** (`LockFileEx`) is released by the system when the process dies, as on
//!   Unix; it covers a byte past the end of the file, so the pid written in it stays
//!   readable by the run it refuses.
//! - **Closing the console window** is an interrupt: the run stops starting requests, but
//!   Windows ends the process about five seconds later whatever it is doing; what it did
//!   not finish is what a kill leaves (the first row of the table above).

pub mod admission;
mod boot;
mod history;
pub mod journal;
mod pausing;
mod postgres;
mod resolution;
mod sqlite;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::dispatch::Admitted;
use crate::domain::{Clock, Counts, Outcome, RunId, SkipKind, Status, StopReason, Stopper};
use crate::input::Request;

pub use admission::{judge, Decision, Policy, Prior};
pub use boot::{boot_id, same_boot};
pub use history::HistoryEntry;
pub use pausing::{set_paused, PauseChange, PauseState};

pub use postgres::PgLocation;

/// Where the ledger lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file: reruns on this machine consult it.
    Sqlite(PathBuf),
    /// A PostgreSQL database: every machine that uses it shares one memory.
    Postgres(PgLocation),
    /// A temporary SQLite ledger deleted at the end: nothing is remembered across runs.
    Throwaway,
}

impl Location {
    /// `postgres://...` (or `postgresql://`) is a PostgreSQL ledger; anything else a path.
    /// Any other `scheme://` is refused rather than taken for a path: a mistyped URL would
    /// otherwise become a local file (its password in its name) and a memory of its own.
    pub fn parse(given: &str) -> Result<Location> {
        let given = given.trim();
        if given.is_empty() {
            anyhow::bail!("the ledger is set but empty: give a path, or a postgres:// URL");
        }
        if given.contains("://") {
            return Ok(Location::Postgres(PgLocation::parse(given)?));
        }
        Ok(Location::Sqlite(PathBuf::from(given)))
    }

    /// How the ledger is named in messages and reports (never with a password).
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(pg) => pg.to_string(),
            Location::Throwaway => "none (throwaway)".to_string(),
        }
    }
}

/// What a run records about itself.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// The target URL, or `built-in simulator`: records are scoped by it.
    pub target: String,
    /// The input file as given.
    pub input: PathBuf,
    pub input_sha256: String,
    pub results: Option<PathBuf>,
    pub host: String,
    pub user: String,
    pub started: DateTime<Utc>,
}

impl RunInfo {
    /// Everything but the target, read off this process and its input.
    pub fn new(
        target: &str,
        input: &Path,
        results: Option<&Path>,
        clock: &Clock,
    ) -> Result<RunInfo> {
        Ok(RunInfo {
            target: target.to_string(),
            input: input.to_path_buf(),
            input_sha256: sha256_file(input)?,
            results: results.map(absolute),
            host: whoami::fallible::hostname().unwrap_or_else(|_| "unknown".into()),
            user: whoami::username(),
            started: clock.now(),
        })
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// One input record, as admission sees it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub seq: u64,
    pub line: u64,
    pub kind: EntryKind,
}

#[derive(Clone, Debug)]
pub enum EntryKind {
    /// Failed validation; the message names line, column and value.
    Invalid(String),
    /// Repeats the record on `first_line`.
    Duplicate {
        first_line: u64,
        dept: String,
        invoice: String,
    },
    Valid(Request),
}

impl EntryKind {
    /// The (department, invoice) of a valid or duplicate row.
    pub fn key(&self) -> Option<(&str, &str)> {
        match self {
            EntryKind::Invalid(_) => None,
            EntryKind::Duplicate { dept, invoice, .. } => Some((dept, invoice)),
            EntryKind::Valid(req) => Some((req.department.as_str(), req.invoice.as_str())),
        }
    }
}

/// What admission made of a record.
#[derive(Clone, Debug)]
pub enum Admission {
    /// To be sent, with its request: its intent is durable.
    Send(Admitted),
    /// Finished at admission.
    Done(Status, Option<SkipKind>),
}

impl Admission {
    /// A valid row admitted to be sent, with what is to be said of it first.
    pub fn send(entry: &Entry, request: &Request, note: Option<String>) -> Admission {
        Admission::Send(Admitted {
            seq: entry.seq,
            line: entry.line,
            request: request.clone(),
            note,
        })
    }
}

/// How the run that is ending ended, for the rows it left unfinished.
#[derive(Clone, Debug)]
pub struct RunEnd {
    pub stop: Option<StopReason>,
}

/// What the rows a run left unfinished (admitted to be sent, with no outcome) become.
pub struct Unfinished {
    /// A row with a leaving mark: its request may have left.
    in_flight: String,
    /// A row without one, its run's marks intact: it never left.
    never_left: String,
    /// A row of a run whose marks may have been lost (another boot, a restarted server).
    unknowable: String,
}

impl Unfinished {
    /// A run settling its own rows as it ends.
    pub fn own(end: &RunEnd) -> Unfinished {
        let why = end.stop.as_ref().map(StopReason::describe);
        let in_flight = format!(
            "in flight when the run stopped ({}); the customer may have been notified, so it is not resent",
            why.as_deref().unwrap_or("the run ended early")
        );
        Unfinished {
            unknowable: in_flight.clone(),
            in_flight,
            never_left: end.stop.as_ref().map_or_else(
                || "not sent: the run ended before this row".to_string(),
                StopReason::not_sent_message,
            ),
        }
    }

    /// A run that died, settled by a later one.
    pub fn dead(run: RunId) -> Unfinished {
        Unfinished {
            in_flight: format!("in flight when run {run} died; the customer may have been notified, so it is not resent"),
            never_left: format!("not sent: run {run} died before sending it"),
            unknowable: format!("run {run} died with its machine (a reboot or power cut), on another machine, or with its database server, after deciding to send this row: it may have been sent, so it is not resent"),
        }
    }

    /// A row's status, message and attempts: `marked` is whether it has a leaving mark, or
    /// `None` when the marks cannot be trusted.
    pub fn row(&self, marked: Option<bool>) -> (Status, &str, u32) {
        match marked {
            Some(true) => (Status::Unknown, &self.in_flight, 1),
            Some(false) => (Status::NotSent, &self.never_left, 0),
            None => (Status::Unknown, &self.unknowable, 0),
        }
    }
}

/// One row of a run, as the results file and `export` show it.
#[derive(Clone, Debug)]
pub struct ResultRow {
    pub seq: u64,
    pub line: u64,
    /// (department, invoice) for a valid row.
    pub key: Option<(String, String)>,
    pub outcome: Outcome,
    /// Admitted, and not settled: its run is still going, or died, or its ledger failed.
    pub unfinished: bool,
    /// Kept by the run itself, not read from the ledger: matched to its input row by
    /// position alone (it has no key to check).
    pub kept: bool,
}

impl ResultRow {
    /// An outcome the run kept itself when its ledger could not be read back.
    pub fn kept(seq: u64, outcome: Outcome) -> ResultRow {
        ResultRow {
            seq,
            line: 0,
            key: None,
            outcome,
            unfinished: false,
            kept: true,
        }
    }

    /// A row as a store read it back, `status` as stored: one not settled yet has none.
    pub fn read(
        (seq, line): (u64, u64),
        key: Option<(String, String)>,
        status: &str,
        mut outcome: Outcome,
        run: RunId,
    ) -> ResultRow {
        let parsed = Status::parse(status);
        match parsed {
            Some(status) => outcome.status = status,
            // Only a run that has not been settled (running, or died since) has these.
            None => {
                outcome.status = Status::Unknown;
                outcome.message = format!(
                    "run {run} has not finished this row; the next send with this ledger settles it"
                );
            }
        }
        ResultRow {
            seq,
            line,
            key,
            outcome,
            unfinished: parsed.is_none(),
            kept: false,
        }
    }
}

/// A run, as `runs` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRecord {
    pub id: String,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub host: String,
    pub user: String,
    pub input: String,
    pub input_sha256: String,
    pub target: String,
    pub counts: Counts,
    pub skipped_unknown: u64,
    pub already_paid: u64,
    /// `None` while it runs, or if it died.
    pub exit_code: Option<i64>,
    /// `finished`, `running`, `paused` (running, paused through the ledger) or `died`.
    pub state: String,
    /// While it is paused: who paused it, and when.
    pub paused_by: Option<String>,
    pub paused_at: Option<DateTime<Utc>>,
}

/// A person's verdict on one row of a results file.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub line: u64,
    pub dept: String,
    pub invoice: String,
    pub delivered: bool,
}

/// The verdicts of one results file, for [`Store::resolve`].
pub struct ResolveRequest<'a> {
    /// The target the rows were sent to, when the caller knows it better than the ledger.
    pub target: Option<&'a str>,
    pub results: &'a Path,
    pub verdicts: &'a [Verdict],
    /// The OS user recording them.
    pub by: &'a str,
    /// Other rows of the file were refused already: check these, record nothing.
    pub refused_already: bool,
}

/// What `resolve` did, or why it recorded nothing.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    pub delivered: u64,
    pub not_delivered: u64,
    /// Verdicts the ledger already held, word for word.
    pub already: u64,
    /// (line, why) of every row refused; when any is, nothing was recorded.
    pub refused: Vec<(u64, String)>,
}

/// A store keeps the ledger's tables. The writer thread owns it during a run; the commands
/// of SPEC section 10 use it directly.
pub trait Store: Send {
    /// Settles runs that died, prunes history past `policy.retention`, records this run.
    fn begin(&mut self, run: &RunInfo, policy: &Policy, now: DateTime<Utc>) -> Result<RunId>;
    /// Where this run's leaving marks and answers go.
    fn marks(&self) -> Result<Marks>;
    /// Decides and records a batch of admissions and records outcomes, in one commit; the
    /// commit is durable before it returns when any row was admitted to be sent. Only the
    /// SQLite store is given outcomes: PostgreSQL's go with the marks.
    fn commit(&mut self, batch: &mut Batch, policy: &Policy, now: DateTime<Utc>) -> Result<()>;
    /// Settles the rows this run left unfinished and folds the run into the memory of what
    /// was sent; durable when it returns. The run's counts.
    fn settle(&mut self, end: &RunEnd, now: DateTime<Utc>) -> Result<Counts>;
    fn close(&mut self, exit_code: u8, now: DateTime<Utc>) -> Result<()>;
    /// Every row of `run`, in input order.
    fn results(&mut self, run: RunId, f: &mut dyn FnMut(ResultRow) -> Result<()>) -> Result<()>;
    /// The last `last` runs, newest first.
    fn runs(&mut self, last: usize) -> Result<Vec<RunRecord>>;
    fn run(&mut self, run: RunId) -> Result<Option<RunRecord>>;
    fn history(&mut self, invoice: &str, dept: Option<&str>) -> Result<Vec<HistoryEntry>>;
    /// Records every verdict or, if any is refused (or others were already), none.
    fn resolve(&mut self, request: &ResolveRequest, now: DateTime<Utc>) -> Result<Resolved>;
    /// How the ledger is named in messages (never with a password).
    fn describe(&self) -> String;
    /// The pace `--rate auto` last ended at for `target`, if a run kept one.
    fn pace(&mut self, target: &str) -> Result<Option<f64>>;
    /// Keeps the pace a run ended at, where the next run on `target` starts.
    fn keep_pace(&mut self, target: &str, rate: f64, now: DateTime<Utc>) -> Result<()>;
    /// What earlier runs did with these (department, invoice) keys for `target`, read
    /// without locking anything: a look ahead (the desk's Check screen), never admission.
    fn priors(&mut self, target: &str, keys: &[(String, String)]) -> Result<Vec<Option<Prior>>>;
    /// Whether `run` is paused through the ledger, and who last paused or resumed it.
    fn pause_state(&mut self, run: RunId) -> Result<PauseState> {
        anyhow::bail!(
            "ledger {} keeps no pauses (asked of {run})",
            self.describe()
        )
    }
    /// Records `run` paused (or resumed) by `by` at `now`, in a short write that needs no
    /// run lock ([`set_paused`] says why that is safe); false if it already was.
    fn set_pause(
        &mut self,
        run: RunId,
        paused: bool,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let _ = (paused, by, now);
        anyhow::bail!(
            "ledger {} keeps no pauses (asked of {run})",
            self.describe()
        )
    }
}

/// Admissions and outcomes committed together.
#[derive(Default)]
pub struct Batch {
    /// Each admission request's records, and (filled in by the store) what became of them.
    pub admits: Vec<(Vec<Entry>, Vec<Admission>, Option<StopReason>)>,
    pub outcomes: Vec<(u64, Outcome)>,
}

/// Opens the ledger for a run.
pub fn open(location: &Location, read_only: bool) -> Result<Box<dyn Store>> {
    match location {
        Location::Sqlite(path) => Ok(Box::new(sqlite::SqliteStore::open(path, read_only)?)),
        Location::Postgres(pg) => Ok(Box::new(postgres::PgStore::open(pg, read_only)?)),
        Location::Throwaway => Ok(Box::new(sqlite::SqliteStore::throwaway()?)),
    }
}

/// Opens the ledger to read it; `None` for a SQLite file not made yet (nothing has been
/// sent with it), which is no error to a reader that only looks.
pub fn open_existing(location: &Location) -> Result<Option<Box<dyn Store>>> {
    match location {
        Location::Sqlite(path) if !path.is_file() => Ok(None),
        location => open(location, true).map(Some),
    }
}

/// Where leaving marks and answers go: somewhere that survives the death of the process
/// before the request leaves, and before the row's send slot is released.
#[derive(Clone)]
pub enum Marks {
    /// The run's journal file, appended to by each sending task: each append reaches the
    /// OS page cache at once, with no thread hop and no flush (see [`journal`]).
    File(Arc<File>),
    /// A PostgreSQL connection of their own (see the PostgreSQL store).
    Remote(mpsc::Sender<postgres::Mark>),
}

impl Marks {
    pub async fn leave(&self, seq: u64) -> Result<()> {
        match self {
            Marks::File(file) => journal::leave(file, seq),
            Marks::Remote(marks) => written(marks, postgres::Note::Leaving(seq)).await,
        }
    }
}

/// Sends `note` to the PostgreSQL marks connection and waits until it is on the server.
async fn written(to: &mpsc::Sender<postgres::Mark>, note: postgres::Note) -> Result<()> {
    let (reply, written) = oneshot::channel();
    to.send((note, reply)).await.map_err(|_| gone())?;
    written
        .await
        .map_err(|_| gone())?
        .map_err(|e| anyhow::anyhow!(e))
}

/// Commands folded into one commit at most.
const GROUP_MAX: usize = 512;
/// How long a commit of outcomes alone (SQLite's: already in the journal) waits for more
/// to join it. Outcomes are on no request's path, and a commit has a fixed cost (log frames, locks) that small groups
/// pay again and again; an admission, which the reader waits for, never waits.
const OUTCOME_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

enum Cmd {
    Admit {
        entries: Vec<Entry>,
        /// Set when the run has stopped: rows admitted now are `not_sent` at once.
        stopped: Option<StopReason>,
        reply: oneshot::Sender<Result<Vec<Admission>, String>>,
    },
    Record {
        seq: u64,
        outcome: Box<Outcome>,
    },
}

/// A cheap, cloneable way to reach the ledger's writer thread.
#[derive(Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<Cmd>,
    marks: Marks,
}

fn gone() -> anyhow::Error {
    anyhow::anyhow!("the ledger writer stopped")
}

/// What the writer thread gives back once every handle is gone.
pub struct Served {
    pub store: Box<dyn Store>,
    /// Why the ledger stopped taking writes mid-run, if it did.
    pub failed: Option<String>,
    /// Outcomes that reached the writer but no commit: the results still show them.
    pub kept: Vec<(u64, Outcome)>,
}

/// The writer thread; joined, it gives the store back.
pub type Writer = std::thread::JoinHandle<Served>;

/// Starts the writer thread for a run begun on `store`. Joining the thread (after every
/// handle is dropped) gives the store back for settling and rendering. A commit that fails
/// stops the run (through `stopper`): nothing more is admitted, and outcomes that come
/// after are kept for the results.
pub fn spawn(
    store: Box<dyn Store>,
    policy: Policy,
    clock: Clock,
    stopper: Arc<Stopper>,
) -> Result<(LedgerHandle, Writer)> {
    let marks = store.marks()?;
    let (tx, rx) = mpsc::channel(1024);
    let thread = std::thread::Builder::new()
        .name("ledger".into())
        .spawn(move || serve(store, rx, policy, clock, &stopper))
        .context("cannot start the ledger thread")?;
    Ok((LedgerHandle { tx, marks }, thread))
}

/// Commits whatever commands have queued up together (group commit); after a failed
/// commit, refuses admissions and keeps outcomes until the run is done.
fn serve(
    mut store: Box<dyn Store>,
    mut rx: mpsc::Receiver<Cmd>,
    policy: Policy,
    clock: Clock,
    stopper: &Stopper,
) -> Served {
    let mut cmds = Vec::with_capacity(GROUP_MAX);
    let (mut failed, mut kept) = (None::<String>, Vec::new());
    while let Some(first) = rx.blocking_recv() {
        cmds.push(first);
        drain(&mut rx, &mut cmds);
        if failed.is_none()
            && cmds.len() < GROUP_MAX
            && !cmds.iter().any(|c| matches!(c, Cmd::Admit { .. }))
        {
            std::thread::sleep(OUTCOME_LINGER);
            drain(&mut rx, &mut cmds);
        }
        let mut batch = Batch::default();
        let mut replies = Vec::new();
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Admit {
                    entries,
                    stopped,
                    reply,
                } => {
                    batch.admits.push((entries, Vec::new(), stopped));
                    replies.push(reply);
                }
                Cmd::Record { seq, outcome } => batch.outcomes.push((seq, *outcome)),
            }
        }
        if failed.is_none() {
            if let Err(e) = store.commit(&mut batch, &policy, clock.now()) {
                let why = format!("{e:#}");
                stopper.stop(StopReason::Ledger(why.clone()));
                failed = Some(why);
            }
        }
        if failed.is_some() {
            kept.append(&mut batch.outcomes);
        }
        for (reply, (_, admitted, _)) in replies.into_iter().zip(batch.admits) {
            let _ = reply.send(match &failed {
                Some(e) => Err(e.clone()),
                None => Ok(admitted),
            });
        }
    }
    Served {
        store,
        failed,
        kept,
    }
}

/// Takes what has queued up, to [`GROUP_MAX`] commands.
fn drain(rx: &mut mpsc::Receiver<Cmd>, cmds: &mut Vec<Cmd>) {
    while cmds.len() < GROUP_MAX {
        match rx.try_recv() {
            Ok(cmd) => cmds.push(cmd),
            Err(_) => break,
        }
    }
}

impl LedgerHandle {
    /// Records the records' admission; what became of each, in order. Blocking: for the
    /// reader thread. The rows to send have a durable intent when this returns.
    pub fn admit_blocking(
        &self,
        entries: Vec<Entry>,
        stopped: Option<StopReason>,
    ) -> Result<Pending> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Cmd::Admit {
                entries,
                stopped,
                reply,
            })
            .map_err(|_| gone())?;
        Ok(Pending(rx))
    }
}

/// An admission on its way; [`Pending::wait`] gives its answer.
pub struct Pending(oneshot::Receiver<Result<Vec<Admission>, String>>);

impl Pending {
    pub fn wait(self) -> Result<Vec<Admission>> {
        self.0
            .blocking_recv()
            .map_err(|_| gone())?
            .map_err(|e| anyhow::anyhow!("ledger write failed: {e}"))
    }
}

impl crate::dispatch::Journal for LedgerHandle {
    async fn leaving(&self, seq: u64) -> Result<()> {
        self.marks.leave(seq).await
    }

    /// Returns once the answer would survive the death of the process, so that the rows a
    /// kill leaves with a mark and no answer are at most those holding a send slot.
    async fn record(&self, seq: u64, outcome: Outcome) -> Result<(), (anyhow::Error, Outcome)> {
        match &self.marks {
            Marks::Remote(marks) => {
                // Kept for the results should the server not take it: the cost of a copy
                // is nothing beside the round trip.
                let kept = outcome.clone();
                let note = postgres::Note::Answered(seq, Box::new(outcome));
                written(marks, note).await.map_err(|e| (e, kept))
            }
            Marks::File(file) => {
                if let Err(e) = journal::answer(file, seq, &outcome) {
                    return Err((e, outcome));
                }
                // A slot first, so that a writer that has stopped leaves the outcome here.
                let Ok(slot) = self.tx.reserve().await else {
                    return Err((gone(), outcome));
                };
                slot.send(Cmd::Record {
                    seq,
                    outcome: Box::new(outcome),
                });
                Ok(())
            }
        }
    }
}
