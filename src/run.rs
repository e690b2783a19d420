//! One `send`, `send --dry-run` or `validate`, wired end to end:
//! reader thread -> ledger (admission, intents) -> dispatch -> ledger (outcomes) ->
//! settle -> results file, with the simulator, progress and the summary around it.
//!
//! The functions here are synchronous: blocking work (reading, asking, the ledger, writing
//! results) runs on this thread or its own, and only dispatch runs on the async runtime.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use crate::client::{Body, Client};
use crate::config::{DryRun, Input, Send, Target};
use crate::dispatch::{Admitted, Dispatcher, Progress};
use crate::domain::{exit_code, Clock, Counts, Outcome, Status, StopReason, Stopper};
use crate::evidence::metrics::{self, Pinger, RunMetrics};
use crate::evidence::{report, Snapshot, Tally};
use crate::input::{InputReader, Record, Request, Seen};
use crate::ledger::{
    self, Admission, Entry, EntryKind, LedgerHandle, Location, RunEnd, RunInfo, Store,
};
use crate::results::{self, Rendered};
use crate::screen::{self, Screen};
use crate::simulator::{SimConfig, Simulator};
use crate::window::{in_words, SendWindow, Standing};
use tokio::task::JoinHandle;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub counts: Counts,
    /// Of the skipped rows, those an earlier run may have delivered (they need a person).
    pub skipped_unknown: u64,
    /// Of the skipped rows, those whose invoice was paid already (`--skip-paid`).
    pub already_paid: u64,
    pub requests: u64,
    pub elapsed_seconds: f64,
    pub requests_per_second: f64,
    pub simulation: bool,
    /// Nothing was sent: `would_send` rows would be.
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_send: Option<u64>,
    pub exit_code: u8,
    pub run: Option<String>,
    pub results: Option<PathBuf>,
    pub ledger: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl Summary {
    fn new(counts: Counts, exit_code: u8) -> Summary {
        Summary {
            rows: counts.rows(),
            skipped_unknown: counts.skipped_unknown,
            already_paid: counts.already_paid,
            counts,
            requests: 0,
            elapsed_seconds: 0.0,
            requests_per_second: 0.0,
            simulation: false,
            dry_run: false,
            would_send: None,
            exit_code,
            run: None,
            results: None,
            ledger: None,
            stopped: None,
        }
    }

    /// The one-line summary that ends stderr.
    pub fn line(&self) -> String {
        let mut line = match self.would_send {
            Some(n) => {
                let mut counts = self.counts.describe();
                if n > 0 {
                    counts = if self.counts.rows() == 0 {
                        format!("{n} would be sent")
                    } else {
                        format!("{counts}, {n} would be sent")
                    };
                }
                format!("DRY RUN (nothing sent): {} rows: {counts}", self.rows)
            }
            None => format!(
                "{}{} rows: {}; {} requests in {:.1}s ({:.1} req/s)",
                if self.simulation {
                    "SIMULATION (nothing sent to myKaarma): "
                } else {
                    ""
                },
                self.rows,
                self.counts.describe(),
                self.requests,
                self.elapsed_seconds,
                self.requests_per_second
            ),
        };
        if let Some(stopped) = &self.stopped {
            line.push_str(&format!("; STOPPED: {stopped}"));
        }
        if let Some(results) = &self.results {
            line.push_str(&format!("; results: {}", results.display()));
        }
        line.push_str(&format!("; exit {}", self.exit_code));
        line
    }

    pub fn write_json(&self, path: Option<&Path>) -> Result<()> {
        if let Some(path) = path {
            let json = serde_json::to_vec_pretty(self)?;
            std::fs::write(path, json)
                .with_context(|| format!("cannot write the summary to {}", path.display()))?;
        }
        Ok(())
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `validate`: every row checked, the bad ones listed on stdout.
pub fn validate(input: &Input) -> Result<u8> {
    let mut stdout = std::io::stdout().lock();
    let checked = check(input, |record, first| {
        match (&record.parsed, first) {
            (Err(invalid), _) => writeln!(
                stdout,
                "{}: invalid: {}",
                input.path.display(),
                invalid.message(record.line)
            )?,
            (Ok(_), Some(first)) => writeln!(
                stdout,
                "{}: duplicate: duplicate of line {first}",
                input.path.display()
            )?,
            (Ok(_), None) => {}
        }
        Ok(())
    })?;
    eprintln!(
        "{}: {} rows: {} valid, {} invalid, {} duplicate",
        input.path.display(),
        checked.counts.rows() + checked.valid,
        checked.valid,
        checked.counts.get(Status::Invalid),
        checked.counts.get(Status::Duplicate)
    );
    Ok(if checked.counts.get(Status::Invalid) > 0 {
        2
    } else {
        0
    })
}

/// `send --dry-run`: `validate`, plus the request each valid row would make.
pub fn dry_run(config: &DryRun, clock: &Clock) -> Result<Summary> {
    for plan in plans(config.window.as_ref(), config.skip_paid, clock) {
        eprintln!("{plan}");
    }
    let base_url = match &config.target {
        Target::Url(url) => url.clone(),
        Target::Simulator => "http://127.0.0.1:PORT".to_string(),
    };
    let mut stdout = std::io::stdout().lock();
    let checked = check(&config.input, |record, first| {
        if let (Ok(req), None) = (&record.parsed, first) {
            let body = serde_json::to_string(&Body::new(req))?;
            let url = Client::url_for(&base_url, req);
            writeln!(stdout, "line {}: POST {url} {body}", record.line)?;
        }
        Ok(())
    })?;
    let code = if checked.counts.get(Status::Invalid) > 0 {
        2
    } else {
        0
    };
    let mut summary = Summary::new(checked.counts, code);
    summary.rows += checked.valid;
    summary.dry_run = true;
    summary.would_send = Some(checked.valid);
    summary.write_json(config.summary_json.as_deref())?;
    Ok(summary)
}

/// What a pass over the input found: invalid and duplicate rows counted, valid ones apart.
struct Checked {
    counts: Counts,
    valid: u64,
}

/// Reads every record, with the line of its first occurrence when it repeats one.
fn check(
    input: &Input,
    mut each: impl FnMut(&Record, Option<u64>) -> Result<()>,
) -> Result<Checked> {
    let mut reader = InputReader::open(&input.path, &input.options)?;
    let mut seen = Seen::new()?;
    let mut raw = csv::ByteRecord::new();
    let mut checked = Checked {
        counts: Counts::default(),
        valid: 0,
    };
    seen.batch(|b| {
        while let Some(record) = reader.next_record(&mut raw)? {
            let first = match &record.parsed {
                Ok(req) => {
                    b.first_line(req.department.as_str(), req.invoice.as_str(), record.line)?
                }
                Err(_) => None,
            };
            each(&record, first)?;
            match (&record.parsed, first) {
                (Err(_), _) => checked.counts.add(Status::Invalid, None),
                (Ok(_), Some(_)) => checked.counts.add(Status::Duplicate, None),
                (Ok(_), None) => checked.valid += 1,
            }
        }
        Ok(())
    })?;
    Ok(checked)
}

/// What the send window and `--skip-paid` will do, in words, for the prompt and dry runs.
fn plans(window: Option<&SendWindow>, skip_paid: bool, clock: &Clock) -> Vec<String> {
    let mut plans = Vec::new();
    if let Some(w) = window {
        plans.push(w.plan(clock.now()));
    }
    if skip_paid {
        plans.push(format!(
            "--skip-paid: each invoice's paid status is asked first (scope {}); paid invoices are skipped, not sent",
            crate::client::PAID_SCOPE
        ));
    }
    plans
}

/// Counts rows and requested channels, for the confirmation prompt and the progress bar.
struct Preview {
    rows: u64,
    valid: u64,
    texts: u64,
    emails: u64,
}

fn preview(input: &Input) -> Result<Preview> {
    let mut reader = InputReader::open(&input.path, &input.options)?;
    let mut raw = csv::ByteRecord::new();
    let mut p = Preview {
        rows: 0,
        valid: 0,
        texts: 0,
        emails: 0,
    };
    while let Some(record) = reader.next_record(&mut raw)? {
        p.rows += 1;
        if let Ok(req) = record.parsed {
            p.valid += 1;
            p.texts += u64::from(req.flags.send_as_text);
            p.emails += u64::from(req.flags.send_as_email);
        }
    }
    Ok(p)
}

fn confirm(p: &Preview, target: &str, plans: &[String]) -> Result<bool> {
    eprintln!(
        "About to send up to {} payment requests ({} with a text, {} with an email) to {target}.\n\
         {} of {} rows are valid; rows already sent within the dedupe window will be skipped.",
        p.valid, p.texts, p.emails, p.valid, p.rows
    );
    for plan in plans {
        eprintln!("{plan}");
    }
    eprint!("Send them? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// Fails early, before anything is sent, if `path` cannot be written.
pub fn check_writable(path: &Path, what: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".invoice-dispatch-check-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| {
            // tempfile's error names its own probe file, which would only confuse.
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => "no such folder".to_string(),
                kind => kind.to_string(),
            };
            anyhow::anyhow!(
                "cannot write {what} to {}: {reason} (in {})",
                path.display(),
                dir.display()
            )
        })
}

fn join<T>(thread: std::thread::JoinHandle<Result<T>>, what: &str) -> Result<T> {
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the {what} thread panicked"))?
}

/// What `send` needs from the process around it.
pub struct RunContext<'a> {
    pub clock: Clock,
    pub stopper: Arc<Stopper>,
    pub screen: &'a Screen,
    /// A current-thread runtime: only its own `block_on` drives its timers and sockets.
    pub runtime: &'a Runtime,
}

/// `send`.
pub fn send(mut config: Send, cx: &RunContext) -> Result<Summary> {
    preflight(&config)?;
    let simulator = start_target(&mut config, cx)?;
    let total = ask(&config, &cx.clock)?;
    if config.ledger == Location::Throwaway && config.target != Target::Simulator {
        tracing::warn!(
            "RUNNING WITHOUT A LEDGER: nothing remembers what this run sends; running it again WILL notify customers twice"
        );
    }
    // Elapsed time is the run's, not the time a person took to answer the question.
    let started = Instant::now();
    let info = RunInfo::new(
        config.target.name(),
        &config.input.path,
        Some(&config.out),
        &cx.clock,
    )?;
    let mut store = ledger::open(&config.ledger, false)?;
    let run = store.begin(&info, &config.policy, cx.clock.now())?;
    let live = Live::default();
    let pinger = config.evidence.ping.clone().map(Pinger::new);
    let mut store = sending(&config, cx, store, &live, total, pinger.as_ref())?;
    let stop = cx.stopper.reason().cloned();
    store.settle(&RunEnd { stop: stop.clone() }, cx.clock.now())?;
    let unsent = Outcome::plain(
        Status::NotSent,
        stop.as_ref().map_or(
            "not sent: the run ended early".into(),
            StopReason::not_sent_message,
        ),
        cx.clock.now(),
    );
    let rendered = results::render(
        &config.input.path,
        &config.input.options,
        store.as_mut(),
        run,
        &config.out,
        &unsent,
    )?;
    let code = exit_code(&rendered.counts, stop.as_ref());
    if let Err(e) = store.close(code, cx.clock.now()) {
        tracing::warn!("could not close the run in the ledger: {e:#}");
    }
    let summary = summarise(&config, &rendered, &live.progress, started, stop, code, run);
    summary.write_json(config.summary_json.as_deref())?;
    let evidence = Evidence {
        config: &config,
        summary: &summary,
        rendered: &rendered,
        tally: live.tally.snapshot(),
        started: info.started,
    };
    evidence.leave(cx, pinger.as_ref());
    if let Some(sim) = simulator {
        cx.runtime.block_on(sim.shutdown());
    }
    Ok(summary)
}

/// Fatal input problems (missing file, missing column) and unwritable outputs stop the run
/// before anything else.
fn preflight(config: &Send) -> Result<()> {
    InputReader::open(&config.input.path, &config.input.options)?;
    check_writable(&config.out, "results")?;
    if let Some(report) = &config.evidence.report {
        check_writable(report, "the report")?;
    }
    if let Some(metrics) = &config.evidence.metrics_file {
        check_writable(metrics, "the metrics")?;
    }
    if let Some(summary) = &config.summary_json {
        check_writable(summary, "the summary JSON")?;
    }
    Ok(())
}

/// What the run counts while it goes.
#[derive(Default)]
struct Live {
    progress: Arc<Progress>,
    tally: Arc<Tally>,
}

/// The run while it sends: the progress display, the send window, the ledger's writer, the
/// reader and the dispatcher. Gives the store back once they are done.
fn sending(
    config: &Send,
    cx: &RunContext,
    store: Box<dyn Store>,
    live: &Live,
    total: Option<u64>,
    pinger: Option<&Pinger>,
) -> Result<Box<dyn Store>> {
    let bar = (config.ui.progress && Screen::can_show_bar()).then(|| cx.screen.clone());
    let display = (!config.ui.quiet).then(|| {
        cx.runtime
            .spawn(screen::show_progress(live.progress.clone(), total, bar))
    });
    let closer = config
        .window
        .as_ref()
        .map(|w| keep_window(w, cx, &live.progress));
    if let Some(pinger) = pinger {
        warn_on(cx.runtime.block_on(pinger.start()));
    }
    let (handle, writer) = ledger::spawn(store, config.policy, cx.clock)?;
    let reader = dispatch_rows(config, cx, handle, live);
    for task in [closer, display].into_iter().flatten() {
        task.abort();
        let _ = cx.runtime.block_on(task);
    }
    let store = join(writer, "ledger")?;
    reader??;
    Ok(store)
}

/// Waits until the send window opens (saying until when), and arranges for the run to stop
/// starting requests when it closes. A stop (Ctrl-C) ends the wait at once.
fn keep_window(window: &SendWindow, cx: &RunContext, progress: &Progress) -> JoinHandle<()> {
    let now = cx.clock.now();
    let until = match window.standing(now) {
        Standing::Open { until } => until,
        Standing::Closed { opens, until } => {
            let why = format!(
                "waiting for the send window {window}: it opens {} (in {})",
                window.local(opens),
                in_words(opens - now)
            );
            tracing::info!("{why}");
            *progress.waiting.lock().unwrap() = Some(why);
            let wait = (opens - now).to_std().unwrap_or_default();
            cx.runtime.block_on(async {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cx.stopper.stopped() => {}
                }
            });
            *progress.waiting.lock().unwrap() = None;
            until
        }
    };
    let (clock, stopper) = (cx.clock, cx.stopper.clone());
    cx.runtime.spawn(async move {
        // The wall clock decides, looked at every second at least: a timer's clock does
        // not count the time a suspended laptop slept, and the window must not outlive it.
        loop {
            let left = (until - clock.now()).to_std().unwrap_or_default();
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        }
        stopper.stop(StopReason::WindowClosed);
    })
}

/// A warning for monitoring that failed: it never changes the run's outcome.
fn warn_on(result: Result<()>) {
    if let Err(e) = result {
        tracing::warn!("{e:#}");
    }
}

/// What the run leaves for people and monitoring once its results are written.
struct Evidence<'a> {
    config: &'a Send,
    summary: &'a Summary,
    rendered: &'a Rendered,
    tally: Snapshot,
    started: chrono::DateTime<chrono::Utc>,
}

impl Evidence<'_> {
    fn leave(&self, cx: &RunContext, pinger: Option<&Pinger>) {
        let e = &self.config.evidence;
        if let Some(path) = &e.report {
            let started = Instant::now();
            match report::write(path, &self.facts()) {
                Ok(bytes) => tracing::info!(
                    kib = bytes / 1024,
                    ms = started.elapsed().as_millis() as u64,
                    "report: {}",
                    path.display()
                ),
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        let metrics = RunMetrics {
            counts: &self.summary.counts,
            by_code: &self.tally.by_code,
            duration_seconds: self.summary.elapsed_seconds,
            exit_code: self.summary.exit_code,
            finished: cx.clock.now(),
        };
        if let Some(path) = &e.metrics_file {
            warn_on(metrics::write_file(path, &metrics));
        }
        if let Some(gateway) = &e.pushgateway {
            warn_on(
                cx.runtime
                    .block_on(metrics::push(gateway, &e.instance, &metrics)),
            );
        }
        if let Some(pinger) = pinger {
            let line = self.summary.line();
            warn_on(
                cx.runtime
                    .block_on(pinger.finish(self.summary.exit_code, &line)),
            );
        }
    }

    fn facts(&self) -> report::Facts<'_> {
        let (c, s) = (self.config, self.summary);
        let d = &c.dispatch;
        let settings = vec![
            (
                "target",
                match &c.target {
                    Target::Simulator => format!("built-in simulator ({})", c.client.base_url),
                    Target::Url(url) => url.clone(),
                },
            ),
            (
                "rate",
                format!("{} per second (0: unlimited), burst {}", d.rate, d.burst),
            ),
            ("concurrency", d.concurrency.to_string()),
            ("attempts per row", d.max_attempts.to_string()),
            ("ambiguous answers retried", d.retry_ambiguous.to_string()),
            ("ledger", c.ledger.describe()),
            (
                "dedupe window",
                humantime::format_duration(c.policy.dedupe_window).to_string(),
            ),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ];
        report::Facts {
            run: s.run.clone(),
            started: self.started,
            input: &c.input.path,
            results: &c.out,
            exit_code: s.exit_code,
            stopped: s.stopped.clone(),
            simulation: s.simulation,
            counts: &s.counts,
            requests: s.requests,
            elapsed_seconds: s.elapsed_seconds,
            requests_per_second: s.requests_per_second,
            tally: &self.tally,
            attention: &self.rendered.attention,
            attention_total: self.rendered.attention_total,
            settings,
        }
    }
}

/// Starts the built-in simulator when it is the target, and points the client at it.
fn start_target(config: &mut Send, cx: &RunContext) -> Result<Option<Simulator>> {
    if config.target != Target::Simulator {
        return Ok(None);
    }
    let sim = cx
        .runtime
        .block_on(Simulator::spawn(SimConfig::default()))
        .context("cannot start the simulator")?;
    config.client.base_url = sim.base_url();
    eprintln!(
        "SIMULATION: sending to the built-in simulator at {} — nothing reaches myKaarma",
        config.client.base_url
    );
    Ok(Some(sim))
}

/// Asks a person at a terminal before the real API is reached; the row count for the
/// progress bar, when one is shown.
fn ask(config: &Send, clock: &Clock) -> Result<Option<u64>> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let bar = config.ui.progress && Screen::can_show_bar();
    let ask = interactive && !config.ui.yes && config.target != Target::Simulator;
    if !bar && !ask {
        return Ok(None);
    }
    let p = preview(&config.input)?;
    let plans = plans(config.window.as_ref(), config.dispatch.skip_paid, clock);
    if ask && !confirm(&p, &config.client.base_url, &plans)? {
        bail!("nothing sent: not confirmed");
    }
    Ok(Some(p.rows))
}

/// Runs the reader and the dispatcher until every row is sent or the run stops; the
/// reader's verdict. Every ledger handle is gone when it returns.
fn dispatch_rows(
    config: &Send,
    cx: &RunContext,
    ledger: LedgerHandle,
    live: &Live,
) -> Result<Result<()>> {
    let concurrency = config.dispatch.concurrency;
    let (tx, queue) = mpsc::channel(concurrency);
    let reader = spawn_reader(
        config.input.clone(),
        ledger.clone(),
        tx,
        cx.stopper.clone(),
        live.progress.clone(),
        concurrency.clamp(1, 64),
    );
    let client = Client::new(&config.client)?;
    let dispatcher = Dispatcher::new(
        client,
        ledger,
        config.dispatch.clone(),
        cx.stopper.clone(),
        live.progress.clone(),
        live.tally.clone(),
        cx.clock,
    );
    cx.runtime.block_on(dispatcher.run(queue));
    Ok(join(reader, "reader"))
}

fn summarise(
    config: &Send,
    rendered: &Rendered,
    progress: &Progress,
    started: Instant,
    stop: Option<StopReason>,
    code: u8,
    run: crate::domain::RunId,
) -> Summary {
    let mut summary = Summary::new(rendered.counts.clone(), code);
    summary.requests = progress.requests();
    summary.elapsed_seconds = round2(started.elapsed().as_secs_f64());
    summary.requests_per_second = round2(progress.requests_per_second());
    summary.simulation = config.target == Target::Simulator;
    summary.run = Some(run.to_string());
    summary.results = Some(config.out.clone());
    summary.ledger = match &config.ledger {
        Location::Throwaway => None,
        other => Some(other.describe()),
    };
    summary.stopped = stop.as_ref().map(StopReason::describe);
    summary
}

/// A batch of records on its way through admission, with the requests of its valid rows.
type InFlight = (ledger::Pending, Vec<(Entry, Option<Request>)>);

/// Reads the input on its own thread: duplicates found, each batch admitted by the ledger
/// (two batches at most in flight, so an intent flush overlaps the next batch's reading),
/// and the rows to send queued. Once the run has stopped it keeps reading, so that every
/// row is in the ledger, `not_sent`.
fn spawn_reader(
    input: Input,
    ledger: LedgerHandle,
    queue: mpsc::Sender<Admitted>,
    stopper: Arc<Stopper>,
    progress: Arc<Progress>,
    batch: usize,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let mut reader = InputReader::open(&input.path, &input.options)?;
            let mut seen = Seen::new()?;
            let mut raw = csv::ByteRecord::new();
            let mut in_flight: VecDeque<InFlight> = VecDeque::new();
            loop {
                let rows = read_batch(&mut reader, &mut seen, &mut raw, batch)?;
                let end = rows.is_empty();
                if !end {
                    let entries = rows.iter().map(|(e, _)| e.clone()).collect();
                    let pending = ledger.admit_blocking(entries, stopper.reason().cloned())?;
                    in_flight.push_back((pending, rows));
                }
                while in_flight.len() > 1 || (end && !in_flight.is_empty()) {
                    let (pending, rows) = in_flight.pop_front().expect("not empty");
                    queue_rows(pending.wait()?, rows, &queue, &progress);
                }
                if end {
                    return Ok(());
                }
            }
        })
        .expect("spawn the reader thread")
}

/// Up to `batch` records, with duplicates of earlier lines found.
fn read_batch(
    reader: &mut InputReader,
    seen: &mut Seen,
    raw: &mut csv::ByteRecord,
    batch: usize,
) -> Result<Vec<(Entry, Option<Request>)>> {
    seen.batch(|b| {
        let mut rows = Vec::with_capacity(batch);
        while rows.len() < batch {
            let Some(record) = reader.next_record(raw)? else {
                break;
            };
            let (kind, request) = match record.parsed {
                Err(invalid) => (EntryKind::Invalid(invalid.message(record.line)), None),
                Ok(req) => {
                    let (dept, invoice) = (req.department.as_str(), req.invoice.as_str());
                    match b.first_line(dept, invoice, record.line)? {
                        Some(first_line) => {
                            let kind = EntryKind::Duplicate {
                                first_line,
                                dept: dept.to_string(),
                                invoice: invoice.to_string(),
                            };
                            (kind, None)
                        }
                        None => {
                            let kind = EntryKind::Valid {
                                dept: dept.to_string(),
                                invoice: invoice.to_string(),
                            };
                            (kind, Some(req))
                        }
                    }
                }
            };
            rows.push((
                Entry {
                    seq: record.seq,
                    line: record.line,
                    kind,
                },
                request,
            ));
        }
        Ok(rows)
    })
}

/// Queues the rows admission sent on; counts the rest as done. A closed queue (the
/// dispatcher stopped) leaves rows admitted but unsent, which settling makes `not_sent`.
fn queue_rows(
    admitted: Vec<Admission>,
    rows: Vec<(Entry, Option<Request>)>,
    queue: &mpsc::Sender<Admitted>,
    progress: &Progress,
) {
    for (admission, (entry, request)) in admitted.into_iter().zip(rows) {
        match (admission, request) {
            (Admission::Send { note }, Some(request)) => {
                let row = Admitted {
                    seq: entry.seq,
                    line: entry.line,
                    request,
                    note,
                };
                // A closed queue: the dispatcher stopped; settling reports the row.
                let _ = queue.blocking_send(row);
            }
            (Admission::Done(status, skip), _) => {
                let mut counts = progress.counts.lock().unwrap();
                counts.add(status, skip);
            }
            // Admission sends only valid rows: those come with their request.
            (Admission::Send { .. }, None) => unreachable!("a row to send without a request"),
        }
    }
}
