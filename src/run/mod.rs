//! The run engine: one `send`, wired end to end, on a thread of its own —
//! reader thread -> ledger (admission, intents) -> dispatch -> ledger (outcomes) ->
//! settle -> results, report and metrics — and a [`Handle`] that the command line and the
//! desk both drive. There is no other way to send.
//!
//! Blocking work (reading, the ledger, writing results) runs on the run's threads; only
//! dispatch, the simulator and monitoring run on its async runtime, a current-thread one:
//! at zero latency the wake-ups between worker threads cost more CPU than a second thread
//! gives (the other core has the ledger, the reader and, on loopback, the server).

mod check;
mod handle;
mod ledger_pause;
mod outlook;
mod summary;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::config::{Input, Send, Target};
use crate::dispatch::{Admitted, Dispatcher, Progress, Shared};
use crate::domain::{exit_code, Clock, Outcome, RunId, Status, StopReason, Stopper};
use crate::evidence::metrics::Pinger;
use crate::input::{InputReader, Seen};
use crate::ledger::{
    self, Admission, Entry, LedgerHandle, Location, RunEnd, RunInfo, Served, Store,
};
use crate::results::{self, Rendered};
use crate::simulator::{SimConfig, Simulator};
use crate::window::{in_words, SendWindow, Standing};

pub use check::{ask, check_writable, dry_run, plans, preview, sort, validate, Preview};
pub use handle::{Controls, Event, Handle, State};
pub use outlook::{outlook, Bad, Earlier, Listed, Outlook, Twin};
pub use summary::Summary;
use summary::{warn_on, Evidence};

/// What the run's thread owns while it sends.
pub(crate) struct Engine {
    runtime: Runtime,
    shared: Shared,
}

/// A send whose input and outputs were checked ([`prepare`]), ready to start.
pub struct Prepared {
    config: Send,
    /// The sheet read, for a workbook.
    sheet: Option<String>,
}

impl Prepared {
    pub fn config(&self) -> &Send {
        &self.config
    }
}

/// Checks the input and outputs, so that a missing file, a hostile workbook or an
/// unwritable folder is an error before anything starts (and before any question).
pub fn prepare(config: Send) -> Result<Prepared> {
    let sheet = check::preflight(&config)?;
    Ok(Prepared { config, sheet })
}

/// Prepares `send` and starts it on a thread of its own.
pub fn start(config: Send, clock: Clock) -> Result<Handle> {
    start_prepared(prepare(config)?, clock, None)
}

/// [`start`], on a ledger store the caller opened (tests wrap one to make it fail).
pub fn start_on(config: Send, clock: Clock, store: Option<Box<dyn Store>>) -> Result<Handle> {
    start_prepared(prepare(config)?, clock, store)
}

/// Starts a prepared send, on `store` if given (else the configured ledger).
pub fn start_prepared(
    prepared: Prepared,
    clock: Clock,
    store: Option<Box<dyn Store>>,
) -> Result<Handle> {
    let Prepared { config, sheet } = prepared;
    let overrides = crate::domain::test_overrides();
    if !overrides.is_empty() {
        tracing::warn!(
            "TEST OVERRIDES SET ({}): this run does not prove what a production run would; unset them outside tests",
            overrides.join(", ")
        );
    }
    let shared = Shared {
        clock,
        ..Shared::default()
    };
    handle::spawn(shared, move |shared| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the run's async runtime")?;
        send((config, sheet), &Engine { runtime, shared }, store)
    })
}

/// `send`, on the run's thread.
fn send(
    (mut config, sheet): (Send, Option<String>),
    engine: &Engine,
    store: Option<Box<dyn Store>>,
) -> Result<Summary> {
    let clock = engine.shared.clock;
    let simulator = start_target(&mut config, engine)?;
    if config.ledger == Location::Throwaway && config.target != Target::Simulator {
        tracing::warn!(
            "RUNNING WITHOUT A LEDGER: nothing remembers what this run sends; running it again WILL notify customers twice"
        );
    }
    let started = Instant::now();
    let info = RunInfo::new(
        config.target.name(),
        &config.input.path,
        Some(&config.out),
        &clock,
    )?;
    let mut store = match store {
        Some(store) => store,
        None => ledger::open(&config.ledger, false)?,
    };
    let run = store.begin(&info, &config.policy, clock.now())?;
    if let Some(auto) = &mut config.dispatch.auto {
        // Where the last run on this ledger and target ended: no new ramp every night.
        auto.remembered = store.pace(&info.target)?;
    }
    let pinger = config.evidence.ping.clone().map(Pinger::new);
    let mut served = sending(&config, engine, (store, run), pinger.as_ref())?;
    let rendered = write_results(&config, engine, &mut served, (run, info.started))?;
    let stop = engine.shared.stopper.reason().cloned();
    let code = exit_code(&rendered.counts, stop.as_ref());
    if served.failed.is_none() {
        let store = &mut served.store;
        let kept = match engine.shared.pace.read() {
            Some((rate, _)) => store.keep_pace(&info.target, rate, clock.now()),
            None => Ok(()),
        };
        if let Err(e) = kept.and_then(|()| store.close(code, clock.now())) {
            tracing::warn!("could not close the run in the ledger: {e:#}");
        }
    }
    let mut summary = Summary::of_send(
        &config,
        &rendered,
        &engine.shared,
        started,
        (stop, code, run),
    );
    summary.sheet = sheet;
    summary.write_json(config.summary_json.as_deref())?;
    let evidence = Evidence {
        config: &config,
        summary: &summary,
        rendered: &rendered,
        tally: engine.shared.tally.snapshot(),
        started: info.started,
    };
    evidence.leave(engine, pinger.as_ref());
    if let Some(sim) = simulator {
        engine.runtime.block_on(sim.shutdown());
    }
    Ok(summary)
}

/// Settles the run's rows and writes the results from the ledger. When the ledger failed
/// mid-run nothing more can be settled: the results are written from what the run knows
/// (the ledger's rows as far as it can be read, and the outcomes it could not record).
fn write_results(
    config: &Send,
    engine: &Engine,
    served: &mut Served,
    (run, started): (RunId, chrono::DateTime<chrono::Utc>),
) -> Result<Rendered> {
    let (input, now) = (&config.input, engine.shared.clock.now());
    let stop = engine.shared.stopper.reason().cloned();
    let about = summary::about(config, run, (started, now), stop.clone());
    let unsent = stop.as_ref().map_or(
        "not sent: the run ended early".into(),
        StopReason::not_sent_message,
    );
    let missing = Outcome::plain(Status::NotSent, unsent.clone(), now);
    let render_to = |rows: results::Rows, out: &std::path::Path| {
        results::render(&input.path, &input.options, rows, out, &missing, &about)
    };
    let render = |rows: results::Rows| render_to(rows, &config.out);
    if served.failed.is_none() {
        let store = &mut served.store;
        store.settle(&RunEnd { stop }, now)?;
        let rendered = render(&mut |f| store.results(run, f))?;
        if let Some(also) = &config.also_out {
            render_to(&mut |f| store.results(run, f), also)?;
        }
        return Ok(rendered);
    }
    let mut kept = kept_outcomes(served.kept.drain(..), &engine.shared);
    let store = &mut served.store;
    let mut rows = |f: &mut dyn FnMut(ledger::ResultRow) -> Result<()>| {
        store.results(run, &mut |mut row| {
            if let Some(outcome) = kept.remove(&row.seq) {
                row.outcome = outcome;
            } else if row.unfinished {
                // Every row that left has its outcome, recorded or kept: this one never did.
                row.outcome = Outcome::plain(Status::NotSent, unsent.clone(), now);
            }
            f(row)
        })
    };
    render(&mut rows).or_else(|e| {
        tracing::warn!(
            "the ledger cannot be read back ({e:#}); the results say what this run kept"
        );
        render_kept(config, kept, (run, now), &about)
    })
}

/// The outcomes the ledger refused (the writer's, and the sending tasks'), saying so.
fn kept_outcomes(
    writer: impl Iterator<Item = (u64, Outcome)>,
    shared: &Shared,
) -> HashMap<u64, Outcome> {
    let unrecorded = shared.unrecorded.lock().unwrap().split_off(0);
    writer
        .chain(unrecorded)
        .map(|(seq, mut outcome)| {
            outcome.message = match outcome.message.as_str() {
                "" => "the ledger could not record this outcome".into(),
                m => format!("{m}; the ledger could not record this outcome"),
            };
            (seq, outcome)
        })
        .collect()
}

/// The results from the outcomes the run kept alone, when the ledger cannot be read:
/// every other row may have been sent, and says where its outcome is.
fn render_kept(
    config: &Send,
    kept: HashMap<u64, Outcome>,
    (run, now): (RunId, chrono::DateTime<chrono::Utc>),
    about: results::About,
) -> Result<Rendered> {
    let unread = Outcome::plain(
        Status::Unknown,
        format!("the ledger failed and cannot be read back: this row's outcome is in it (`invoice-dispatch export {run}` once it is back)"),
        now,
    );
    let mut kept: Vec<_> = kept.into_iter().collect();
    kept.sort_by_key(|(seq, _)| *seq);
    let mut rows = |f: &mut dyn FnMut(ledger::ResultRow) -> Result<()>| {
        std::mem::take(&mut kept)
            .into_iter()
            .try_for_each(|(seq, outcome)| f(ledger::ResultRow::kept(seq, outcome)))
    };
    let input = &config.input;
    results::render(
        &input.path,
        &input.options,
        &mut rows,
        &config.out,
        &unread,
        about,
    )
}

/// The run while it sends: the send window, the pauses recorded in the ledger, the
/// ledger's writer, the reader and the dispatcher. Gives the store back once they are done.
fn sending(
    config: &Send,
    engine: &Engine,
    (store, run): (Box<dyn Store>, RunId),
    pinger: Option<&Pinger>,
) -> Result<Served> {
    let shared = &engine.shared;
    // Followed until no request can start any more: then a pause has nothing to hold.
    let _pauses = ledger_pause::watch(&config.ledger, run, (shared.pause.clone(), shared.clock));
    let closer = config.window.as_ref().map(|w| keep_window(w, engine));
    if let Some(pinger) = pinger {
        warn_on(engine.runtime.block_on(pinger.start()));
    }
    let (handle, writer) =
        ledger::spawn(store, config.policy, shared.clock, shared.stopper.clone())?;
    let reader = dispatch_rows(config, engine, handle);
    if let Some(task) = closer {
        task.abort();
        let _ = engine.runtime.block_on(task);
    }
    let served = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the ledger thread panicked"))?;
    reader?;
    Ok(served)
}

/// Waits until the send window opens (saying until when), and arranges for the run to stop
/// starting requests when it closes. A stop (Ctrl-C) ends the wait at once.
fn keep_window(window: &SendWindow, engine: &Engine) -> JoinHandle<()> {
    let (clock, stopper) = (engine.shared.clock, engine.shared.stopper.clone());
    let progress = &engine.shared.progress;
    let now = clock.now();
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
            engine.runtime.block_on(async {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopper.stopped() => {}
                }
            });
            *progress.waiting.lock().unwrap() = None;
            until
        }
    };
    engine.runtime.spawn(async move {
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

/// Starts the built-in simulator when it is the target, and points the client at it.
fn start_target(config: &mut Send, engine: &Engine) -> Result<Option<Simulator>> {
    if config.target != Target::Simulator {
        return Ok(None);
    }
    let sim = engine
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

/// Runs the reader and the dispatcher until every row is sent or the run stops; the
/// reader's verdict. Every ledger handle is gone when it returns.
fn dispatch_rows(config: &Send, engine: &Engine, ledger: LedgerHandle) -> Result<()> {
    let concurrency = config.dispatch.concurrency;
    let (tx, queue) = mpsc::channel(concurrency);
    let shared = &engine.shared;
    let reader = spawn_reader(
        config.input.clone(),
        ledger.clone(),
        tx,
        (shared.stopper.clone(), shared.progress.clone()),
        concurrency.clamp(1, 64),
    );
    let client = Client::new(&config.client)?;
    let dispatcher = Dispatcher::new(client, ledger, config.dispatch.clone(), shared.clone());
    engine.runtime.block_on(dispatcher.run(queue));
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?
}

/// Reads the input on its own thread: records sorted (duplicates found), each batch
/// admitted by the ledger (two batches at most in flight, so an intent flush overlaps the
/// next batch's reading), and the rows to send queued. Once the run has stopped it keeps
/// reading, so that every row is in the ledger, `not_sent`; once the ledger has failed it
/// stops, and the results say what became of the rest.
fn spawn_reader(
    input: Input,
    ledger: LedgerHandle,
    queue: mpsc::Sender<Admitted>,
    (stopper, progress): (Arc<Stopper>, Arc<Progress>),
    batch: usize,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let mut reader = InputReader::open(&input.path, &input.options)?;
            let mut seen = Seen::new()?;
            let mut raw = csv::ByteRecord::new();
            let mut in_flight: VecDeque<ledger::Pending> = VecDeque::new();
            loop {
                let entries = read_batch(&mut reader, &mut seen, &mut raw, batch)?;
                let end = entries.is_empty();
                if !end {
                    in_flight.push_back(ledger.admit_blocking(entries, stopper.reason().cloned())?);
                }
                while in_flight.len() > 1 || (end && !in_flight.is_empty()) {
                    let pending = in_flight.pop_front().expect("not empty");
                    match pending.wait() {
                        Ok(admitted) => queue_rows(admitted, &queue, &progress),
                        // The writer has stopped the run; what was not admitted is not sent.
                        Err(_) => return Ok(()),
                    }
                }
                if end {
                    return Ok(());
                }
            }
        })
        .expect("spawn the reader thread")
}

/// Up to `batch` records, sorted.
fn read_batch(
    reader: &mut InputReader,
    seen: &mut Seen,
    raw: &mut csv::ByteRecord,
    batch: usize,
) -> Result<Vec<Entry>> {
    seen.batch(|b| {
        let mut entries = Vec::with_capacity(batch);
        while entries.len() < batch {
            let Some(record) = reader.next_record(raw)? else {
                break;
            };
            entries.push(sort(record, b)?);
        }
        Ok(entries)
    })
}

/// Queues the rows admission sent on; counts the rest as done. A closed queue (the
/// dispatcher stopped) leaves rows admitted but unsent, which settling makes `not_sent`.
fn queue_rows(admitted: Vec<Admission>, queue: &mpsc::Sender<Admitted>, progress: &Progress) {
    for admission in admitted {
        match admission {
            // A closed queue: the dispatcher stopped; settling reports the row.
            Admission::Send(row) => drop(queue.blocking_send(row)),
            Admission::Done(status, skip) => progress.counts.lock().unwrap().add(status, skip),
        }
    }
}
