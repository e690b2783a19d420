//! One `send` or `validate`, wired end to end:
//! reader thread -> ledger (admission) -> dispatch -> ledger (outcomes) -> results file,
//! with the simulator, signals, progress and the summary around it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cli::{Config, LedgerChoice};
use crate::client::{Body, Client};
use crate::dispatch::{Admitted, Dispatcher, Progress, Settings, StopReason, Stopper};
use crate::input::{InputOptions, InputReader};
use crate::ledger::{Ledger, LedgerHandle, Policy, Status};
use crate::results::{self, Counts, Unfinished};
use crate::simulator::{SimConfig, Simulator};

/// Records handed to the ledger for admission at once: large enough to amortise the
/// commit, small enough that the first request leaves at once.
const ADMIT_BATCH: usize = 64;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub counts: std::collections::BTreeMap<&'static str, u64>,
    /// Of the skipped rows, those an earlier run may have delivered (they need a person).
    pub skipped_unknown: u64,
    pub requests: u64,
    pub elapsed_seconds: f64,
    pub requests_per_second: f64,
    pub simulation: bool,
    /// Nothing was sent: the rows counted `not_sent` are those the run would send.
    pub dry_run: bool,
    pub exit_code: i32,
    pub results: Option<PathBuf>,
    pub ledger: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl Summary {
    fn new(counts: &Counts, progress: &Progress, started: Instant, simulation: bool) -> Summary {
        Summary {
            rows: counts.rows(),
            counts: counts.iter().map(|(s, n)| (s.as_str(), n)).collect(),
            skipped_unknown: counts.skipped_unknown,
            requests: progress.requests.load(Ordering::Relaxed),
            elapsed_seconds: round2(started.elapsed().as_secs_f64()),
            requests_per_second: round2(progress.requests_per_second()),
            simulation,
            dry_run: false,
            exit_code: 0,
            results: None,
            ledger: None,
            stopped: None,
        }
    }

    /// The one-line summary that ends stderr.
    pub fn line(&self) -> String {
        let counts: Vec<String> = Status::FINAL
            .iter()
            .filter_map(|s| {
                let n = self.counts.get(s.as_str()).copied().unwrap_or(0);
                let label = match s {
                    Status::NotSent if self.dry_run => "would be sent",
                    s => s.as_str(),
                };
                (n > 0).then(|| format!("{n} {label}"))
            })
            .collect();
        let counts = if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        };
        let mut line = if self.dry_run {
            format!("DRY RUN (nothing sent): {} rows: {counts}", self.rows)
        } else {
            format!(
                "{}{} rows: {counts}; {} requests in {:.1}s ({:.1} req/s)",
                if self.simulation {
                    "SIMULATION (nothing sent to myKaarma): "
                } else {
                    ""
                },
                self.rows,
                self.requests,
                self.elapsed_seconds,
                self.requests_per_second
            )
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
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// SPEC section 9.
pub fn exit_code(counts: &Counts, stop: Option<&StopReason>) -> i32 {
    match stop {
        Some(StopReason::Interrupted) => 130,
        Some(StopReason::Ledger(_)) => 1,
        Some(StopReason::Credentials(_) | StopReason::FailureRatio { .. }) => 3,
        None => {
            let attention = [
                Status::Failed,
                Status::Partial,
                Status::Unknown,
                Status::Invalid,
                Status::NotSent,
            ];
            // SPEC says skipped rows exit 0; but a row skipped because an earlier run may
            // have delivered it needs a person as much as an `unknown` row does.
            if attention.iter().any(|s| counts.get(*s) > 0) || counts.skipped_unknown > 0 {
                2
            } else {
                0
            }
        }
    }
}

/// Reads the input on its own thread, has the ledger admit each batch, and queues the rows
/// to send. Ends early (without error) when the queue's receiver is gone.
fn spawn_reader(
    input: PathBuf,
    options: InputOptions,
    ledger: LedgerHandle,
    queue: mpsc::Sender<Admitted>,
    progress: Arc<Progress>,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let mut reader = InputReader::open(&input, &options)?;
            let mut raw = csv::ByteRecord::new();
            let mut batch = Vec::with_capacity(ADMIT_BATCH);
            loop {
                let record = reader.next_record(&mut raw)?;
                let end = record.is_none();
                batch.extend(record);
                if batch.len() >= ADMIT_BATCH || (end && !batch.is_empty()) {
                    let n = batch.len();
                    let to_send = ledger.admit_blocking(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(ADMIT_BATCH),
                    ))?;
                    progress
                        .admitted_done
                        .fetch_add((n - to_send.len()) as u64, Ordering::Relaxed);
                    for record in to_send {
                        let Ok(request) = record.parsed else { continue };
                        let row = Admitted {
                            seq: record.seq,
                            line: record.line,
                            request,
                        };
                        if queue.blocking_send(row).is_err() {
                            return Ok(());
                        }
                    }
                }
                if end {
                    return Ok(());
                }
            }
        })
        .expect("spawn the reader thread")
}

/// Counts rows and requested channels, for the confirmation prompt and the progress bar.
struct Preview {
    rows: u64,
    valid: u64,
    texts: u64,
    emails: u64,
}

fn preview(input: &Path, options: &InputOptions) -> Result<Preview> {
    let mut reader = InputReader::open(input, options)?;
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

fn confirm(p: &Preview, target: &str) -> Result<bool> {
    eprintln!(
        "About to send up to {} payment requests ({} with a text, {} with an email) to {target}.\n\
         {} of {} rows are valid; rows already sent within the dedupe window will be skipped.",
        p.valid, p.texts, p.emails, p.valid, p.rows
    );
    eprint!("Send them? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// Fails early, before anything is sent, if the results cannot be written.
fn check_output(out: &Path) -> Result<()> {
    let dir = match out.parent() {
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
                "cannot write results to {}: {reason} (in {})",
                out.display(),
                dir.display()
            )
        })
}

/// Starts the ledger and the reader; the caller consumes the queue.
struct Pipeline {
    ledger: LedgerHandle,
    ledger_thread: std::thread::JoinHandle<Result<Ledger>>,
    reader: std::thread::JoinHandle<Result<()>>,
    queue: mpsc::Receiver<Admitted>,
}

fn start_pipeline(
    input: &Path,
    options: &InputOptions,
    ledger: Ledger,
    policy: Policy,
    queue_len: usize,
    progress: Arc<Progress>,
) -> Pipeline {
    let (handle, ledger_thread) = ledger.spawn(policy);
    let (tx, queue) = mpsc::channel(queue_len);
    let reader = spawn_reader(
        input.to_path_buf(),
        options.clone(),
        handle.clone(),
        tx,
        progress,
    );
    Pipeline {
        ledger: handle,
        ledger_thread,
        reader,
        queue,
    }
}

fn join<T>(thread: std::thread::JoinHandle<Result<T>>, what: &str) -> Result<T> {
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the {what} thread panicked"))?
}

/// `validate`: every row checked and recorded in a throwaway ledger, the bad ones listed.
pub async fn validate(input: &Path, options: &InputOptions) -> Result<i32> {
    InputReader::open(input, options)?;
    let ledger = Ledger::open(&LedgerChoice::Throwaway, "validate", input)?;
    let policy = Policy {
        dedupe_window: Duration::ZERO,
        resend: true,
        retry_unknown: true,
    };
    let progress = Arc::new(Progress::default());
    let mut p = start_pipeline(input, options, ledger, policy, 1024, progress);
    while p.queue.recv().await.is_some() {}
    join(p.reader, "reader")?;
    drop(p.ledger);
    let ledger = join(p.ledger_thread, "ledger")?;
    // Rows still pending are the valid ones: they would be sent.
    let (mut counts, mut valid) = (Counts::default(), 0u64);
    let mut stdout = std::io::stdout().lock();
    ledger.for_each_result(|_, _, outcome| {
        counts.add(outcome.status);
        valid += u64::from(outcome.status == Status::Pending);
        if matches!(outcome.status, Status::Invalid | Status::Duplicate) {
            writeln!(
                stdout,
                "{}: {}: {}",
                input.display(),
                outcome.status.as_str(),
                outcome.message
            )?;
        }
        Ok(())
    })?;
    let (invalid, duplicate) = (counts.get(Status::Invalid), counts.get(Status::Duplicate));
    eprintln!(
        "{}: {} rows: {valid} valid, {invalid} invalid, {duplicate} duplicate",
        input.display(),
        counts.rows() + valid
    );
    Ok(if invalid > 0 { 2 } else { 0 })
}

/// `send` (and `send --dry-run`).
pub async fn send(mut config: Config) -> Result<Summary> {
    // Fatal input problems (missing file, missing column) stop us before anything else.
    InputReader::open(&config.input, &config.input_options)?;
    if !config.dry_run {
        check_output(&config.out)?;
    }

    let simulator = if config.simulate {
        let sim = Simulator::spawn(SimConfig::default())
            .await
            .context("cannot start the simulator")?;
        config.base_url = sim.base_url();
        eprintln!(
            "SIMULATION: sending to the built-in simulator at {} — nothing reaches myKaarma",
            config.base_url
        );
        Some(sim)
    } else {
        None
    };

    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let show_bar = config.progress && std::io::stderr().is_terminal();
    // Only a person at a terminal about to reach the real API is asked.
    let ask = interactive && !config.yes && !config.simulate && !config.dry_run;
    let preview = if show_bar || ask {
        Some(preview(&config.input, &config.input_options)?)
    } else {
        None
    };
    if let (true, Some(p)) = (ask, &preview) {
        if !confirm(p, &config.base_url)? {
            bail!("nothing sent: not confirmed");
        }
    }

    // Elapsed time is the run's, not the time a person took to answer the question.
    let started = Instant::now();
    if config.ledger == LedgerChoice::Throwaway && !config.simulate && !config.dry_run {
        tracing::warn!(
            "RUNNING WITHOUT A LEDGER: nothing remembers what this run sends; running it again WILL notify customers twice"
        );
    }
    // The built-in simulator listens on a new port each run; one stable name scopes its
    // sends, so that `--simulate --ledger` rehearses a rerun too.
    let target = if config.simulate {
        "built-in simulator"
    } else {
        config.base_url.as_str()
    };
    let ledger = Ledger::open(&config.ledger, target, &config.input)?;
    let ledger_path = match &config.ledger {
        LedgerChoice::At(p) => Some(p.clone()),
        LedgerChoice::Throwaway => None,
    };
    let policy = Policy {
        dedupe_window: config.dedupe_window,
        resend: config.resend,
        retry_unknown: config.retry_unknown,
    };
    let progress = Arc::new(Progress::default());
    let Pipeline {
        ledger,
        ledger_thread,
        reader,
        mut queue,
    } = start_pipeline(
        &config.input,
        &config.input_options,
        ledger,
        policy,
        config.concurrency * 2,
        progress.clone(),
    );

    // Signals are watched until the run ends, rendering included: a second Ctrl-C while
    // the results are written still exits at once.
    let stopper = Arc::new(Stopper::default());
    let signals = tokio::spawn(watch_signals(stopper.clone()));
    if config.dry_run {
        let client = Client::new(
            &config.base_url,
            None,
            config.timeout,
            config.connect_timeout,
            1,
        )?;
        let mut stdout = std::io::stdout().lock();
        while let Some(row) = queue.recv().await {
            let body = serde_json::to_string(&Body::new(&row.request))?;
            writeln!(
                stdout,
                "line {}: POST {} {body}",
                row.line,
                client.url(&row.request)
            )?;
        }
    } else {
        let client = Client::new(
            &config.base_url,
            config.credentials.as_ref(),
            config.timeout,
            config.connect_timeout,
            config.concurrency,
        )?;
        let dispatcher = Dispatcher::new(
            client,
            ledger.clone(),
            settings(&config),
            progress.clone(),
            stopper.clone(),
        );
        let display = tokio::spawn(show_progress(
            progress.clone(),
            preview.as_ref().map(|p| p.rows),
            show_bar,
            config.quiet,
        ));
        dispatcher.run(queue).await;
        display.abort();
        let _ = display.await;
    }
    let read = join(reader, "reader");
    drop(ledger);
    let ledger = join(ledger_thread, "ledger")?;
    read?;

    let stop = stopper.reason().cloned();
    let stop_text = stop.as_ref().map(StopReason::describe);
    let counts = if config.dry_run {
        let mut counts = Counts::default();
        ledger.for_each_result(|_, _, o| {
            counts.add(if o.status == Status::Pending {
                Status::NotSent
            } else {
                o.status
            });
            Ok(())
        })?;
        counts
    } else {
        results::render(
            &config.input,
            &config.input_options,
            &ledger,
            &config.out,
            Unfinished {
                stop: stop_text.as_deref(),
            },
        )?
    };
    let code = if config.dry_run {
        if counts.get(Status::Invalid) > 0 {
            2
        } else {
            0
        }
    } else {
        exit_code(&counts, stop.as_ref())
    };
    if let Err(e) = ledger.finish(code) {
        tracing::warn!("could not close the run in the ledger: {e:#}");
    }
    let mut summary = Summary::new(&counts, &progress, started, config.simulate);
    summary.exit_code = code;
    summary.dry_run = config.dry_run;
    summary.stopped = stop_text;
    summary.results = (!config.dry_run).then(|| config.out.clone());
    summary.ledger = ledger_path;
    if let Some(path) = &config.summary_json {
        let json = serde_json::to_vec_pretty(&summary)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    signals.abort();
    Ok(summary)
}

fn settings(c: &Config) -> Settings {
    Settings {
        rate: c.rate,
        burst: c.burst,
        concurrency: c.concurrency,
        max_attempts: c.max_attempts,
        backoff_base: c.backoff_base,
        backoff_max: c.backoff_max,
        retry_after_max: c.retry_after_max,
        retry_ambiguous: c.retry_ambiguous,
        max_failure_ratio: c.max_failure_ratio,
        min_attempts_for_ratio: c.min_attempts_for_ratio,
        shutdown_grace: c.shutdown_grace,
    }
}

/// First SIGINT/SIGTERM: stop starting requests and finish cleanly. Second: exit at once;
/// the in-flight marks already in the ledger keep the rerun safe.
async fn watch_signals(stopper: Arc<Stopper>) {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    async fn next(int: &mut Signal, term: &mut Signal) {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    }
    next(&mut int, &mut term).await;
    eprintln!(
        "\ninterrupted: finishing the requests in flight (press Ctrl-C again to quit at once)"
    );
    stopper.stop(StopReason::Interrupted);
    next(&mut int, &mut term).await;
    eprintln!("interrupted twice: exiting now; rerun the same command to resume safely");
    std::process::exit(130);
}

/// A progress bar on a terminal; otherwise a log line every 10 s.
async fn show_progress(progress: Arc<Progress>, total: Option<u64>, bar: bool, quiet: bool) {
    if quiet {
        return;
    }
    let failures = |p: &Progress| p.get(Status::Failed) + p.get(Status::Unknown);
    if bar {
        let pb = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr_with_hz(5),
        );
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  ETA {eta}  {msg}",
            )
            .expect("valid template"),
        );
        crate::set_progress_bar(Some(pb.clone()));
        struct Clear(indicatif::ProgressBar);
        impl Drop for Clear {
            fn drop(&mut self) {
                self.0.finish_and_clear();
                crate::set_progress_bar(None);
            }
        }
        let _clear = Clear(pb.clone());
        loop {
            pb.set_position(progress.done());
            pb.set_message(format!(
                "{:.0} req/s  failures: {}",
                progress.requests_per_second(),
                failures(&progress)
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            tracing::info!(
                done = progress.done(),
                total = total.unwrap_or(0),
                requests = progress.requests.load(Ordering::Relaxed),
                failures = failures(&progress),
                req_per_s = round2(progress.requests_per_second()),
                "progress"
            );
        }
    }
}
