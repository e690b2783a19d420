//! Sending: a bounded pool of rows in flight, and each row's way through its gates, the
//! pacer and its attempts. The retry policy is the part that protects customers: a payment
//! request has no idempotency key, so only a request that cannot have been acted on is ever
//! sent again.
//!
//! A row's order is fixed: its intent is durable before it is queued (the reader and the
//! ledger see to that), then it takes a send slot, then (with `--skip-paid`) its paid
//! status is checked, then it takes a rate token, then its leaving mark is written, then
//! its request leaves. Rows waiting for a slot hold no token, so the burst stays exact.
//!
//! The parts, each testable alone: [`attempts`] (the one loop of attempts, for payment
//! requests and paid-status checks alike), [`pacer`] (rate, 429 pauses and a person's
//! pause: the one pacing seam), [`gate`] (a department's first row goes alone),
//! [`breaker`] (failure ratio), [`row`] (what an answer means, and what a row's attempts
//! add up to). Two seams, [`Api`] and [`Journal`], let the loop run against scripted
//! answers in tests.

mod attempts;
mod breaker;
mod gate;
mod pace;
mod pacer;
mod row;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Attempt, Client};
use crate::domain::{Clock, Counts, Outcome, Pause, Status, StopReason, Stopper};
use crate::evidence::Tally;
use crate::input::{InvoiceGuid, Request};

use attempts::{Call, Ending};
pub use pace::AutoRate;
pub use pacer::{Backoff, Gauge};
use row::Tries;

/// The paid-status check proves the credentials' scope once, for every department.
const PAID_SCOPE_KEY: &str = "";

/// A row that passed validation and admission, its intent durable, on its way to be sent.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub seq: u64,
    pub line: u64,
    pub request: Request,
    /// Said of the row before it is sent (e.g. a person's verdict on an earlier attempt).
    pub note: Option<String>,
}

/// What dispatch needs from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rate: u32,
    /// `rate = "auto"`: the pace follows the API's answers (the fixed `rate` is unused).
    pub auto: Option<AutoRate>,
    pub burst: u32,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub retry_ambiguous: bool,
    pub max_failure_ratio: f64,
    pub min_attempts_for_ratio: u32,
    pub shutdown_grace: Duration,
    /// Ask each invoice's paid status first, and skip the paid ones (SPEC section 13).
    pub skip_paid: bool,
}

/// The API, as the dispatcher sees it.
pub trait Api: Send + Sync + 'static {
    fn send(&self, req: &Request) -> impl Future<Output = Attempt> + Send;
    fn paid_status(&self, invoice: &InvoiceGuid) -> impl Future<Output = Attempt> + Send;
}

impl Api for Client {
    fn send(&self, req: &Request) -> impl Future<Output = Attempt> + Send {
        Client::send(self, req)
    }
    fn paid_status(&self, invoice: &InvoiceGuid) -> impl Future<Output = Attempt> + Send {
        Client::paid_status(self, invoice)
    }
}

/// The ledger, as the dispatcher sees it.
pub trait Journal: Send + Sync + 'static {
    /// Writes the row's leaving mark; its request may leave once this returns.
    fn leaving(&self, seq: u64) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Records the row's outcome; on failure, gives it back with the reason, so that the
    /// results can still show it.
    fn record(
        &self,
        seq: u64,
        outcome: Outcome,
    ) -> impl Future<Output = Result<(), (anyhow::Error, Outcome)>> + Send;
}

/// Live counters for the progress display and the summary.
#[derive(Default)]
pub struct Progress {
    /// Rows finished, whether by the ledger at admission or here.
    pub counts: Mutex<Counts>,
    /// HTTP requests made, paid-status checks included.
    pub requests: std::sync::atomic::AtomicU64,
    first_request: OnceLock<Instant>,
    last_answer: Mutex<Option<Instant>>,
    /// Said while nothing is sent yet (waiting for the send window).
    pub waiting: Mutex<Option<String>>,
    /// The newest messages of rows that need a person, at most [`LATEST_KEPT`].
    latest: Mutex<std::collections::VecDeque<String>>,
}

/// The newest troubles a watcher is shown.
const LATEST_KEPT: usize = 5;

impl Progress {
    pub fn finished(&self, line: u64, outcome: &Outcome) {
        self.counts
            .lock()
            .unwrap()
            .add(outcome.status, outcome.skip);
        if outcome.status.needs_person() {
            let mut latest = self.latest.lock().unwrap();
            if latest.len() == LATEST_KEPT {
                latest.pop_front();
            }
            let message = crate::evidence::clip(&outcome.message);
            latest.push_back(format!(
                "line {line}: {}: {message}",
                outcome.status.as_str()
            ));
        }
    }

    pub fn latest_errors(&self) -> Vec<String> {
        self.latest.lock().unwrap().iter().cloned().collect()
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn request_started(&self) {
        let _ = self.first_request.set(Instant::now());
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn answered(&self) {
        *self.last_answer.lock().unwrap() = Some(Instant::now());
    }

    /// Requests per second, from the first request leaving to the last answer read.
    pub fn requests_per_second(&self) -> f64 {
        let secs = match (self.first_request.get(), *self.last_answer.lock().unwrap()) {
            (Some(first), Some(last)) => last.duration_since(*first).as_secs_f64(),
            _ => 0.0,
        };
        if secs > 0.0 {
            self.requests() as f64 / secs
        } else {
            0.0
        }
    }
}

/// What the dispatcher shares with the run around it: the controls a person or a breaker
/// acts through, the live counters, and the clock.
#[derive(Clone, Default)]
pub struct Shared {
    pub stopper: Arc<Stopper>,
    pub pause: Arc<Pause>,
    pub progress: Arc<Progress>,
    pub tally: Arc<Tally>,
    /// The auto pace, now and at its highest (`--rate auto`).
    pub pace: Arc<Gauge>,
    /// Outcomes the ledger refused (it failed mid-run): the results still show them.
    pub unrecorded: Arc<Mutex<Vec<(u64, Outcome)>>>,
    pub clock: Clock,
}

/// Everything the row tasks share.
pub struct Dispatcher<A, J> {
    api: A,
    journal: J,
    settings: Settings,
    pacer: pacer::Pacer,
    departments: gate::Gate,
    paid_scope: gate::Gate,
    failure_ratio: breaker::FailureRatio,
    stopper: Arc<Stopper>,
    shared: Shared,
    clock: Clock,
}

/// What a row task starts with, decided in input order by the pool loop.
struct Claims {
    department: bool,
    paid_scope: bool,
}

impl<A: Api, J: Journal> Dispatcher<A, J> {
    pub fn new(api: A, journal: J, settings: Settings, shared: Shared) -> Arc<Self> {
        Arc::new(Dispatcher {
            api,
            journal,
            pacer: pacer::Pacer::new(&settings, shared.pause.clone(), shared.pace.clone()),
            departments: gate::Gate::default(),
            paid_scope: gate::Gate::default(),
            failure_ratio: breaker::FailureRatio::new(
                settings.max_failure_ratio,
                settings.min_attempts_for_ratio,
            ),
            settings,
            stopper: shared.stopper.clone(),
            clock: shared.clock,
            shared,
        })
    }

    /// Sends every queued row, at most `concurrency` at once, until the queue ends or the
    /// run is stopped; then waits for the requests in flight (bounded by `shutdown_grace`
    /// when interrupted). Rows left in the queue are the caller's to report `not_sent`.
    pub async fn run(self: Arc<Self>, mut rows: mpsc::Receiver<Admitted>) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut tasks = JoinSet::new();
        loop {
            // The permit is taken before the next row is accepted, so a stopped run leaves
            // unstarted rows in the queue rather than in tasks.
            let permit = tokio::select! {
                biased;
                _ = self.stopper.stopped() => break,
                p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let row = tokio::select! {
                biased;
                _ = self.stopper.stopped() => break,
                r = rows.recv() => match r { Some(r) => r, None => break },
            };
            while tasks.try_join_next().is_some() {}
            let claims = Claims {
                department: self.departments.claim(row.request.department.as_str()),
                paid_scope: self.settings.skip_paid && self.paid_scope.claim(PAID_SCOPE_KEY),
            };
            tasks.spawn(self.clone().send_row(row, permit, claims));
        }
        drop(rows);
        self.drain(tasks).await;
    }

    async fn drain(&self, mut tasks: JoinSet<()>) {
        let grace = self.settings.shutdown_grace;
        let drained = tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => true,
            _ = async {
                self.stopper.interrupted().await;
                tokio::time::sleep(grace).await;
            } => false,
        };
        if !drained {
            tracing::warn!(
                "{} request(s) still in flight after the {:?} grace period; they are reported unknown",
                tasks.len(),
                grace
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    async fn send_row(
        self: Arc<Self>,
        row: Admitted,
        _permit: OwnedSemaphorePermit,
        claims: Claims,
    ) {
        let outcome = self.row_outcome(&row, claims).await;
        self.shared.progress.finished(row.line, &outcome);
        if outcome.attempts > 0 {
            if let Some(reason) = self.failure_ratio.record(outcome.status) {
                self.stopper.stop(reason);
            }
        }
        if let Err((e, outcome)) = self.journal.record(row.seq, outcome).await {
            self.stopper.stop(StopReason::Ledger(format!("{e:#}")));
            self.shared
                .unrecorded
                .lock()
                .unwrap()
                .push((row.seq, outcome));
        }
    }

    /// The row's way through its department's gate, its paid-status check and its payment
    /// request: one attempt loop for each call it makes.
    async fn row_outcome(&self, row: &Admitted, claims: Claims) -> Outcome {
        let mut tries = Tries::new(row.note.clone());
        let dept = row.request.department.as_str();
        let probe = match self
            .departments
            .turn(dept, claims.department, &self.stopper)
            .await
        {
            Ok(probe) => probe,
            Err(why) => return tries.finish(Status::Failed, refused(&why), self.clock.now()),
        };
        if self.settings.skip_paid {
            let scope = self
                .paid_scope
                .turn(PAID_SCOPE_KEY, claims.paid_scope, &self.stopper)
                .await;
            let ending = match scope {
                Ok(scope) => {
                    self.attempts(Call::PaidStatus, row, &mut tries, scope)
                        .await
                }
                // The run was stopped by the refusal itself.
                Err(_) => Ending::Finish(Status::NotSent, self.not_sent_message()),
            };
            if !matches!(ending, Ending::Proceed) {
                return ending.outcome(tries, self.clock.now());
            }
        }
        let ending = self.attempts(Call::Payment, row, &mut tries, probe).await;
        ending.outcome(tries, self.clock.now())
    }

    /// What a row the run stopped before says: why it stopped.
    fn not_sent_message(&self) -> String {
        let reason = self.stopper.reason().cloned();
        reason.unwrap_or(StopReason::Interrupted).not_sent_message()
    }
}

fn refused(why: &str) -> String {
    format!("not sent: {why} (earlier row)")
}
