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
//! The parts, each testable alone: [`pacer`] (rate and 429 pauses), [`gate`] (a
//! department's first row goes alone), [`breaker`] (failure ratio), [`row`] (what an answer
//! means, and what a row's attempts add up to). Two seams, [`Api`] and [`Journal`], let the
//! loop run against scripted answers in tests.

mod breaker;
mod gate;
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
use crate::domain::{Clock, Counts, Outcome, Skip, Status, StopReason, Stopper};
use crate::evidence::Tally;
use crate::input::{InvoiceGuid, Request};

pub use pacer::Backoff;
use row::{classify, classify_paid, Effect, PaidVerdict, Tries, Verdict};

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
    fn record(&self, seq: u64, outcome: Outcome)
        -> impl Future<Output = anyhow::Result<()>> + Send;
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
}

impl Progress {
    pub fn finished(&self, outcome: &Outcome) {
        let mut counts = self.counts.lock().unwrap();
        counts.add(outcome.status, outcome.skip);
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
    progress: Arc<Progress>,
    tally: Arc<Tally>,
    clock: Clock,
}

/// What a row task starts with, decided in input order by the pool loop.
struct Claims {
    department: bool,
    paid_scope: bool,
}

impl<A: Api, J: Journal> Dispatcher<A, J> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        api: A,
        journal: J,
        settings: Settings,
        stopper: Arc<Stopper>,
        progress: Arc<Progress>,
        tally: Arc<Tally>,
        clock: Clock,
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            api,
            journal,
            pacer: pacer::Pacer::new(settings.rate, settings.burst),
            departments: gate::Gate::default(),
            paid_scope: gate::Gate::default(),
            failure_ratio: breaker::FailureRatio::new(
                settings.max_failure_ratio,
                settings.min_attempts_for_ratio,
            ),
            settings,
            stopper,
            progress,
            tally,
            clock,
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
        self.progress.finished(&outcome);
        if outcome.attempts > 0 {
            if let Some(reason) = self.failure_ratio.record(outcome.status) {
                self.stopper.stop(reason);
            }
        }
        if let Err(e) = self.journal.record(row.seq, outcome).await {
            self.stopper.stop(StopReason::Ledger(format!("{e:#}")));
        }
    }

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
            if let Err(done) = self.check_paid(row, &mut tries, claims.paid_scope).await {
                return done(tries, &self.clock);
            }
        }
        self.attempts(row, tries, probe).await
    }

    /// Makes the row's payment request, retrying what is safe to retry.
    async fn attempts(
        &self,
        row: &Admitted,
        mut tries: Tries,
        mut probe: Option<gate::Probe<'_>>,
    ) -> Outcome {
        let req = &row.request;
        loop {
            if let Some((status, message)) = self.gate(req).await {
                let message = tries.then(message);
                return tries.finish(status, message, self.clock.now());
            }
            if tries.attempts == 0 {
                if let Err(outcome) = self.leave(row.seq).await {
                    return tries.finish(Status::NotSent, outcome, self.clock.now());
                }
            }
            tries.attempts += 1;
            let attempt = self.timed(row.line, self.api.send(req)).await;
            let verdict = classify(&attempt, &req.flags);
            probe = Self::learn_department(probe, &verdict);
            let now = self.clock.now();
            match verdict {
                Verdict::Done(status, message, effect) => {
                    self.apply(effect, req);
                    tries.answered(attempt, now, &message);
                    return tries.finish(status, message, now);
                }
                Verdict::RetrySafe {
                    why,
                    after,
                    slow_pool,
                } => {
                    tries.answered(attempt, now, &why);
                    if tries.attempts >= self.settings.max_attempts {
                        let message = format!("gave up after {} attempts: {why}", tries.attempts);
                        return tries.finish(Status::Failed, message, now);
                    }
                    self.back_off(tries.attempts, after, slow_pool).await;
                }
                Verdict::Ambiguous(why) => {
                    tries.answered(attempt, now, &why);
                    tries.maybe_delivered(&why);
                    if !self.settings.retry_ambiguous
                        || tries.attempts >= self.settings.max_attempts
                    {
                        let message = if self.settings.retry_ambiguous {
                            format!("{why} after {} attempts; the customer may have been notified, so it is not resent", tries.attempts)
                        } else {
                            format!("{why}; the request may have been acted on, so it is not resent (retry_ambiguous is off)")
                        };
                        return tries.finish(Status::Unknown, message, now);
                    }
                    self.back_off(tries.attempts, None, false).await;
                }
            }
        }
    }

    /// Writes the leaving mark; the message for the row if it must not leave.
    async fn leave(&self, seq: u64) -> Result<(), String> {
        if let Err(e) = self.journal.leaving(seq).await {
            self.stopper.stop(StopReason::Ledger(format!("{e:#}")));
            return Err("not sent: the ledger could not record the send".to_string());
        }
        // The run may have stopped while the mark was being written.
        match self.stopper.reason() {
            Some(reason) => Err(reason.not_sent_message()),
            None => Ok(()),
        }
    }

    /// Makes one request, counted and timed for the progress line and the report.
    async fn timed(&self, line: u64, request: impl Future<Output = Attempt>) -> Attempt {
        self.progress.request_started();
        let sent = Instant::now();
        let attempt = request.await;
        self.progress.answered();
        self.tally.attempt(line, sent, sent.elapsed(), &attempt);
        attempt
    }

    /// What the probe's answer says of its department: a retry-safe answer (429, 503, no
    /// connection) says nothing about authorisation, so the department's rows go on
    /// waiting; a refusal is settled by [`Self::apply`] while the probe is still held, so no
    /// waiting row can slip through in between; anything else opens the department.
    fn learn_department<'a>(
        probe: Option<gate::Probe<'a>>,
        verdict: &Verdict,
    ) -> Option<gate::Probe<'a>> {
        match verdict {
            Verdict::RetrySafe { .. } | Verdict::Done(_, _, Effect::BlockDepartment(_)) => probe,
            _ => {
                if let Some(probe) = probe {
                    probe.open();
                }
                None
            }
        }
    }

    /// What an answer means for the rest of the run.
    fn apply(&self, effect: Effect, req: &Request) {
        match effect {
            Effect::None => {}
            Effect::StopRun(why) => self.stopper.stop(StopReason::Credentials(why)),
            Effect::BlockDepartment(why) => {
                let dept = req.department.as_str();
                if self.departments.refuse(dept, why) {
                    tracing::warn!(
                        department = dept,
                        "department refused; its remaining rows fail without a request"
                    );
                }
            }
        }
    }

    async fn back_off(&self, attempt: u32, retry_after: Option<Duration>, slow_pool: bool) {
        let backoff = self.settings.backoff;
        if slow_pool {
            self.pacer.slow_down(backoff.cap(attempt, retry_after));
        }
        self.sleep(backoff.delay(attempt, retry_after)).await;
    }

    /// Whether the row may make its next attempt now: waits for its turn, and says why not
    /// when the run stopped or the department was refused meanwhile. The refusal is checked
    /// before waiting too, so a refused department's rows do not use up rate-limit tokens.
    async fn gate(&self, req: &Request) -> Option<(Status, String)> {
        let dept = req.department.as_str();
        if let Some(why) = self.departments.refused(dept) {
            return Some((Status::Failed, refused(&why)));
        }
        if !self.pacer.turn(&self.stopper).await {
            return Some((Status::NotSent, self.not_sent_message()));
        }
        self.departments
            .refused(dept)
            .map(|why| (Status::Failed, refused(&why)))
    }

    /// Sleeps unless the run stopped first; the caller's next `gate` notices the stop.
    async fn sleep(&self, delay: Duration) {
        tokio::select! {
            _ = self.stopper.stopped() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// How a row that ends early during its paid-status check ends.
type Ending = Box<dyn FnOnce(Tries, &Clock) -> Outcome + Send>;

impl<A: Api, J: Journal> Dispatcher<A, J> {
    /// `--skip-paid`: asks the invoice's paid status, retrying anything transient. Ok to
    /// go on and send; Err with how the row ends otherwise (paid, check failed, stopped).
    async fn check_paid(
        &self,
        row: &Admitted,
        tries: &mut Tries,
        claimed: bool,
    ) -> Result<(), Ending> {
        let mut probe = match self
            .paid_scope
            .turn(PAID_SCOPE_KEY, claimed, &self.stopper)
            .await
        {
            Ok(probe) => probe,
            // The run was stopped by the refusal itself.
            Err(_) => return Err(self.stopped_ending()),
        };
        for check in 1.. {
            if !self.pacer.turn(&self.stopper).await {
                return Err(self.stopped_ending());
            }
            let attempt = self
                .timed(row.line, self.api.paid_status(&row.request.invoice))
                .await;
            let verdict = classify_paid(&attempt);
            let what = paid_words(&verdict);
            tries.answered(attempt, self.clock.now(), &what);
            match verdict {
                PaidVerdict::NotPaid => {
                    if let Some(p) = probe.take() {
                        p.open();
                    }
                    return Ok(());
                }
                PaidVerdict::Paid(amount) => {
                    if let Some(p) = probe.take() {
                        p.open();
                    }
                    let skip = Skip::AlreadyPaid { amount };
                    return Err(Box::new(move |t: Tries, c: &Clock| {
                        t.skipped(&skip, c.now())
                    }));
                }
                PaidVerdict::ScopeRefused(why) => {
                    let why = format!(
                        "{why} on the paid-status check: these credentials lack the scope {}",
                        crate::client::PAID_SCOPE
                    );
                    if let Some(p) = probe.take() {
                        p.refuse(why.clone());
                    }
                    self.stopper.stop(StopReason::Credentials(why));
                    return Err(self.stopped_ending());
                }
                PaidVerdict::Rejected(why) => {
                    let message =
                        format!("paid-status check {why}; not sent, since it may be paid");
                    return Err(Box::new(move |t: Tries, c: &Clock| {
                        t.finish(Status::Failed, message, c.now())
                    }));
                }
                PaidVerdict::Retry {
                    why,
                    after,
                    slow_pool,
                } => {
                    if check >= self.settings.max_attempts {
                        let message = format!("paid-status check gave up after {check} attempts: {why}; not sent, since it may be paid");
                        return Err(Box::new(move |t: Tries, c: &Clock| {
                            t.finish(Status::Failed, message, c.now())
                        }));
                    }
                    self.back_off(check, after, slow_pool).await;
                }
            }
        }
        unreachable!("the loop returns")
    }

    fn stopped_ending(&self) -> Ending {
        let message = self.not_sent_message();
        Box::new(move |t: Tries, c: &Clock| t.finish(Status::NotSent, message, c.now()))
    }

    /// What a row the run stopped before says: why it stopped.
    fn not_sent_message(&self) -> String {
        let reason = self.stopper.reason().cloned();
        reason.unwrap_or(StopReason::Interrupted).not_sent_message()
    }
}

fn paid_words(verdict: &PaidVerdict) -> String {
    match verdict {
        PaidVerdict::Paid(Some(amount)) => format!("paid-status check: paid (amount {amount})"),
        PaidVerdict::Paid(None) => "paid-status check: paid".into(),
        PaidVerdict::NotPaid => "paid-status check: not paid".into(),
        PaidVerdict::ScopeRefused(why) | PaidVerdict::Rejected(why) => {
            format!("paid-status check: {why}")
        }
        PaidVerdict::Retry { why, .. } => format!("paid-status check: {why}"),
    }
}

fn refused(why: &str) -> String {
    format!("not sent: {why} (earlier row)")
}
