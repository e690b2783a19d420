//! Sending: one shared rate limiter, a bounded pool of in-flight requests, and the retry
//! policy. The policy is the part that protects customers: a payment request has no
//! idempotency key, so only a request that cannot have been acted on is ever sent again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{Answer, Attempt, Client};
use crate::input::{Flags, Request};
use crate::ledger::{now_rfc3339, LedgerHandle, Outcome, Status};

/// API error codes that mean the credentials are wrong: nothing else will succeed.
const CREDENTIAL_CODES: [i64; 2] = [100001, 100003];
/// API error codes that mean these credentials may not act for this department.
const DEPARTMENT_CODES: [i64; 3] = [100004, 100013, 100014];

/// A row that passed validation and dedupe, on its way to being sent.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub seq: u64,
    pub line: u64,
    pub request: Request,
}

/// Why a run stopped before the end of its input.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    Credentials(String),
    FailureRatio { failures: u64, finished: u64 },
    Interrupted,
    Ledger(String),
}

impl StopReason {
    pub fn describe(&self) -> String {
        match self {
            StopReason::Credentials(why) => format!("credentials refused ({why})"),
            StopReason::FailureRatio { failures, finished } => format!(
                "failure ratio exceeded ({failures} of {finished} finished rows failed or unknown)"
            ),
            StopReason::Interrupted => "interrupted".into(),
            StopReason::Ledger(why) => format!("the ledger could not be written ({why})"),
        }
    }
}

/// How a run is told to stop; shared by the senders and the signal handler. It holds no
/// ledger handle, so the signal handler can outlive the dispatcher (the ledger thread ends
/// only when the last handle is dropped) and keep catching signals until the run ends.
#[derive(Default)]
pub struct Stopper {
    token: CancellationToken,
    /// Also set when the reason recorded is an earlier breaker: an interrupt always bounds
    /// the wait for requests in flight by the grace period.
    interrupted: CancellationToken,
    reason: OnceLock<StopReason>,
}

impl Stopper {
    /// Stops starting requests. The first reason given is the one reported.
    pub fn stop(&self, reason: StopReason) {
        if reason == StopReason::Interrupted {
            self.interrupted.cancel();
        }
        // An interrupt was already announced by the signal handler.
        if self.reason.set(reason.clone()).is_ok() && reason != StopReason::Interrupted {
            tracing::warn!("stopping: {}", reason.describe());
        }
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<&StopReason> {
        self.reason.get()
    }
}

/// The knobs dispatch needs, copied out of the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rate: u32,
    pub burst: u32,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub retry_after_max: Duration,
    pub retry_ambiguous: bool,
    pub max_failure_ratio: f64,
    pub min_attempts_for_ratio: u32,
    pub shutdown_grace: Duration,
}

/// Counters shared with the progress display and the summary.
#[derive(Default)]
pub struct Progress {
    /// Rows settled at admission (invalid, duplicate, skipped): done without a request.
    pub admitted_done: AtomicU64,
    counts: [AtomicU64; 10],
    pub requests: AtomicU64,
    first_request: OnceLock<Instant>,
    last_answer: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn count(&self, status: Status) {
        self.counts[status as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, status: Status) -> u64 {
        self.counts[status as usize].load(Ordering::Relaxed)
    }
    pub fn done(&self) -> u64 {
        self.admitted_done.load(Ordering::Relaxed)
            + Status::FINAL.iter().map(|s| self.get(*s)).sum::<u64>()
    }
    /// Seconds from the first request leaving to the last answer read.
    pub fn sending_seconds(&self) -> f64 {
        match (self.first_request.get(), *self.last_answer.lock().unwrap()) {
            (Some(first), Some(last)) => last.duration_since(*first).as_secs_f64(),
            _ => 0.0,
        }
    }
    pub fn requests_per_second(&self) -> f64 {
        let secs = self.sending_seconds();
        let n = self.requests.load(Ordering::Relaxed) as f64;
        if secs > 0.0 {
            n / secs
        } else {
            0.0
        }
    }
}

/// What one classified answer means for the row.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The row has its status.
    Done(Status, String, Effect),
    /// Refused before it was acted on: may be sent again.
    RetrySafe {
        why: String,
        after: Option<Duration>,
        slow_pool: bool,
    },
    /// The server may have acted: resending could notify twice.
    Ambiguous(String),
}

/// What a row's answer means for the rest of the run.
#[derive(Debug, PartialEq)]
enum Effect {
    None,
    StopRun(String),
    BlockDepartment(String),
}

fn classify(attempt: &Attempt, flags: &Flags) -> Verdict {
    let answer = match attempt {
        Attempt::NotConnected(why) => {
            return Verdict::RetrySafe {
                why: why.clone(),
                after: None,
                slow_pool: false,
            }
        }
        Attempt::Lost(why) => return Verdict::Ambiguous(why.clone()),
        Attempt::Answered(answer) => answer,
    };
    let status = answer.status;
    let http = format!("HTTP {status}");
    let with_problem = |text: String| match &answer.body_problem {
        Some(problem) => format!("{text}; {problem}"),
        None => text,
    };
    // An answer that shows the request was acted on (a 2xx with a link or a channel
    // SUCCESS) is judged on its own; the breakers are for requests that were refused.
    if (200..300).contains(&status) && acted_on(answer, flags) {
        return judge_success(answer, flags);
    }
    if status == 401 || answer.has_error_code(&CREDENTIAL_CODES) {
        let why = with_problem(format!("{http}: credentials refused"));
        return Verdict::Done(Status::Failed, why.clone(), Effect::StopRun(why));
    }
    if status == 403 || answer.has_error_code(&DEPARTMENT_CODES) {
        let why = with_problem(format!("{http}: department refused for these credentials"));
        return Verdict::Done(Status::Failed, why.clone(), Effect::BlockDepartment(why));
    }
    match status {
        429 | 503 => Verdict::RetrySafe {
            why: with_problem(http),
            after: answer.retry_after,
            slow_pool: status == 429,
        },
        // 501 and 505 say the server could not handle the request at all; any other 5xx
        // (500, 502, 504, and gateways' 520-524) may come after the server acted.
        501 | 505 => Verdict::Done(
            Status::Failed,
            with_problem(format!("{http}: rejected")),
            Effect::None,
        ),
        500..=599 => Verdict::Ambiguous(with_problem(http)),
        200..=299 => judge_success(answer, flags),
        // Not followed (a followed redirect would resend the POST), and a 303 is what a
        // server answers after processing one: the row may have been sent.
        300..=399 => Verdict::Done(
            Status::Unknown,
            format!(
                "{http}: unexpected redirect, not followed; the request may have been processed"
            ),
            Effect::None,
        ),
        _ => Verdict::Done(
            Status::Failed,
            with_problem(format!("{http}: rejected")),
            Effect::None,
        ),
    }
}

/// Whether a 2xx answer shows the request was acted on.
fn acted_on(answer: &Answer, flags: &Flags) -> bool {
    let success = |r: &Option<String>| {
        r.as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case("SUCCESS"))
    };
    answer.payment_link.is_some()
        || (flags.send_as_text && success(&answer.text_sent))
        || (flags.send_as_email && success(&answer.email_sent))
}

fn judge_success(answer: &Answer, flags: &Flags) -> Verdict {
    let http = format!("HTTP {}", answer.status);
    if let Some(problem) = &answer.body_problem {
        // The server accepted the request; we just cannot read what it did. Sending it
        // again could notify twice, so it is reported for a person to check.
        return Verdict::Done(
            Status::Unknown,
            format!("{problem}; the request was probably accepted, so it is not resent"),
            Effect::None,
        );
    }
    let mut problems = Vec::new();
    for (requested, result, channel) in [
        (flags.send_as_text, &answer.text_sent, "text"),
        (flags.send_as_email, &answer.email_sent, "email"),
    ] {
        match result.as_deref() {
            _ if !requested => {}
            Some(r) if r.eq_ignore_ascii_case("SUCCESS") => {}
            Some(r) => problems.push(format!("{channel} not sent ({r})")),
            None => problems.push(format!("{channel} outcome missing from the answer")),
        }
    }
    if !answer.errors.is_empty() {
        problems.push(format!("{} API error(s)", answer.errors.len()));
    }
    // `failed` would be resent by a rerun, so it is kept for answers that show nothing
    // was done: no link, no channel SUCCESS, and an API error saying why.
    let status = match (acted_on(answer, flags), problems.is_empty()) {
        (_, true) => Status::Sent,
        (false, false) if !answer.errors.is_empty() => Status::Failed,
        _ => Status::Partial,
    };
    let mut message = problems.join("; ");
    if answer.payment_link.is_none() {
        message = if message.is_empty() {
            format!("{http} without a payment link")
        } else {
            format!("{http} without a payment link; {message}")
        };
    }
    Verdict::Done(status, message, Effect::None)
}

/// Everything the senders share.
pub struct Dispatcher {
    client: Client,
    ledger: LedgerHandle,
    settings: Settings,
    limiter: Option<DefaultDirectRateLimiter>,
    /// A 429 pauses every sender, not just the row that got it.
    pause_until: Mutex<Option<Instant>>,
    stopper: Arc<Stopper>,
    /// What is known of each department's authorisation; see [`Department`].
    departments: Mutex<HashMap<String, Department>>,
    progress: Arc<Progress>,
    /// Rows that made at least one request, and those of them that failed or ended unknown.
    finished: AtomicU64,
    failures: AtomicU64,
}

impl Dispatcher {
    pub fn new(
        client: Client,
        ledger: LedgerHandle,
        settings: Settings,
        progress: Arc<Progress>,
        stopper: Arc<Stopper>,
    ) -> Arc<Dispatcher> {
        let limiter = std::num::NonZeroU32::new(settings.rate).map(|rate| {
            let burst = std::num::NonZeroU32::new(settings.burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Arc::new(Dispatcher {
            client,
            ledger,
            settings,
            limiter,
            pause_until: Mutex::new(None),
            stopper,
            departments: Mutex::new(HashMap::new()),
            progress,
            finished: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    fn stop(&self, reason: StopReason) {
        self.stopper.stop(reason);
    }

    fn stop_reason(&self) -> Option<&StopReason> {
        self.stopper.reason()
    }

    /// Sends every admitted row, at most `concurrency` at once, until the queue ends or the
    /// run is stopped; then waits for the requests in flight (bounded by `shutdown_grace`
    /// when interrupted).
    pub async fn run(self: Arc<Self>, mut rows: mpsc::Receiver<Admitted>) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut tasks = JoinSet::new();
        loop {
            // The permit is taken before the next row is accepted, so a stopped run leaves
            // unstarted rows in the queue (and so `not_sent`) rather than in tasks.
            let permit = tokio::select! {
                biased;
                _ = self.stopper.token.cancelled() => break,
                p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let row = tokio::select! {
                biased;
                _ = self.stopper.token.cancelled() => break,
                r = rows.recv() => match r { Some(r) => r, None => break },
            };
            while tasks.try_join_next().is_some() {}
            let first_of_department = self.claim_department(&row.request);
            tasks.spawn(self.clone().send_row(row, permit, first_of_department));
        }
        drop(rows);
        let grace = self.settings.shutdown_grace;
        let drained = tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => true,
            _ = async {
                self.stopper.interrupted.cancelled().await;
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
        first_of_department: bool,
    ) {
        let outcome = self.attempts(&row, first_of_department).await;
        self.progress.count(outcome.status);
        if outcome.attempts > 0 {
            let finished = self.finished.fetch_add(1, Ordering::Relaxed) + 1;
            let failures = if matches!(outcome.status, Status::Failed | Status::Unknown) {
                self.failures.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                self.failures.load(Ordering::Relaxed)
            };
            if finished >= u64::from(self.settings.min_attempts_for_ratio)
                && failures as f64 > self.settings.max_failure_ratio * finished as f64
            {
                self.stop(StopReason::FailureRatio { failures, finished });
            }
        }
        if let Err(e) = self.ledger.record(row.seq, outcome).await {
            self.stop(StopReason::Ledger(format!("{e:#}")));
        }
    }

    fn blocked_reason(&self, req: &Request) -> Option<String> {
        match self
            .departments
            .lock()
            .unwrap()
            .get(req.department.as_str())
        {
            Some(Department::Refused(why)) => Some(why.clone()),
            _ => None,
        }
    }

    /// Makes the row its department's probe if the department has not been seen. Decided
    /// here, in input order, rather than when the row's task first runs: tasks start in any
    /// order, and the row that goes alone must be the department's first.
    fn claim_department(&self, req: &Request) -> bool {
        claim(
            &mut self.departments.lock().unwrap(),
            req.department.as_str(),
        )
    }

    /// Lets the first row of a department go alone; the department's other rows wait for
    /// its answer, so a department the credentials may not use costs one request, not
    /// `concurrency` of them. Err if the department was refused.
    async fn department_turn(
        &self,
        req: &Request,
        claimed: bool,
    ) -> Result<Option<Probe<'_>>, String> {
        let dept = req.department.as_str();
        loop {
            let notified = {
                let mut map = self.departments.lock().unwrap();
                // Unclaimed again if the last probe said nothing about authorisation.
                if claimed || claim(&mut map, dept) {
                    return Ok(Some(Probe {
                        dispatcher: self,
                        dept: dept.to_string(),
                    }));
                }
                match &map[dept] {
                    Department::Open => return Ok(None),
                    Department::Refused(why) => return Err(why.clone()),
                    // Registered before the lock is released, so a wake-up cannot be missed.
                    Department::Probing(notify) => notify.clone().notified_owned(),
                }
            };
            tokio::select! {
                _ = self.stopper.token.cancelled() => return Ok(None),
                _ = notified => {}
            }
        }
    }

    fn settle_department(&self, dept: &str, state: Option<Department>) {
        let mut map = self.departments.lock().unwrap();
        let previous = match state {
            Some(state) => map.insert(dept.to_string(), state),
            None => map.remove(dept),
        };
        if let Some(Department::Probing(notify)) = previous {
            notify.notify_waiters();
        }
    }

    /// Waits for a global 429 pause and a rate-limit token; false if the run stopped first.
    /// A token taken while a pause began is thrown away, so that the senders released
    /// together at the end of a pause still queue for tokens instead of bursting.
    async fn wait_turn(&self) -> bool {
        loop {
            let pause = *self.pause_until.lock().unwrap();
            if let Some(until) = pause.filter(|u| *u > Instant::now()) {
                tokio::select! {
                    _ = self.stopper.token.cancelled() => return false,
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
            }
            if let Some(limiter) = &self.limiter {
                tokio::select! {
                    _ = self.stopper.token.cancelled() => return false,
                    _ = limiter.until_ready() => {}
                }
            }
            let paused = self
                .pause_until
                .lock()
                .unwrap()
                .is_some_and(|u| u > Instant::now());
            if !paused {
                return !self.stopper.token.is_cancelled();
            }
        }
    }

    /// The wait before retry number `attempt`: `Retry-After` when given (capped), else the
    /// exponential backoff cap for that attempt. The pool pauses this long after a 429; the
    /// row itself waits a random part of it when there was no `Retry-After`.
    fn backoff_cap(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.settings.retry_after_max);
        }
        self.settings
            .backoff_base
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.settings.backoff_max)
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self.backoff_cap(attempt, retry_after);
        if retry_after.is_some() {
            return cap;
        }
        // Full jitter: spreads retries so that rows refused together do not return together.
        cap.mul_f64(rand::rng().random::<f64>())
    }

    /// Makes the row's attempts.
    async fn attempts(&self, row: &Admitted, first_of_department: bool) -> Outcome {
        let req = &row.request;
        let mut attempts = 0u32;
        let mut last_http: Option<u16> = None;
        let mut last_answer: Option<Answer> = None;
        // Set once any attempt may have reached the server: from then on the row can never
        // end as a plain `failed` or `not_sent`, because a rerun would resend it.
        let mut maybe_delivered = false;
        let mut last_why = String::new();
        let mut probe = match self.department_turn(req, first_of_department).await {
            Ok(probe) => probe,
            Err(why) => return outcome(Status::Failed, refused(why), 0, None, None),
        };
        loop {
            let gated = self.gate(req).await;
            if let Some((status, message)) = gated {
                let (status, message) = if maybe_delivered {
                    (Status::Unknown, format!("{last_why}; then {message}"))
                } else if attempts > 0 {
                    (status, format!("{last_why}; then {message}"))
                } else {
                    (status, message)
                };
                return outcome(status, message, attempts, last_http, last_answer);
            }
            if attempts == 0 {
                // Marked after the rate-limit wait, right before the request leaves, so a
                // crash reports as unknown only the rows that may really have been sent.
                // Concurrent marks share one commit in the ledger thread.
                if let Err(e) = self.ledger.mark_in_flight(row.seq).await {
                    self.stop(StopReason::Ledger(format!("{e:#}")));
                    let message = "not sent: the ledger could not record the send".to_string();
                    return outcome(Status::NotSent, message, 0, None, None);
                }
                // The run may have stopped while the mark was being committed.
                if let Some(reason) = self.stop_reason() {
                    let message = format!("not sent: run stopped, {}", reason.describe());
                    return outcome(Status::NotSent, message, 0, None, None);
                }
            }
            attempts += 1;
            let _ = self.progress.first_request.set(Instant::now());
            self.progress.requests.fetch_add(1, Ordering::Relaxed);
            let attempt = self.client.send(req).await;
            *self.progress.last_answer.lock().unwrap() = Some(Instant::now());
            let verdict = classify(&attempt, &req.flags);
            // A refusal settles the department for its waiting rows; a retry-safe answer
            // (429, 503, no connection) says nothing about authorisation, so they go on
            // waiting; anything else opens the department to them.
            probe = match (probe, &verdict) {
                (Some(p), Verdict::Done(_, _, Effect::BlockDepartment(why))) => {
                    p.refuse(why.clone());
                    None
                }
                (Some(p), Verdict::RetrySafe { .. }) => Some(p),
                (Some(p), _) => {
                    p.open();
                    None
                }
                (None, _) => None,
            };
            if let Attempt::Answered(answer) = attempt {
                last_http = Some(answer.status);
                last_answer = Some(answer);
            }
            match verdict {
                Verdict::Done(status, message, effect) => {
                    match effect {
                        Effect::None => {}
                        Effect::StopRun(why) => self.stop(StopReason::Credentials(why)),
                        Effect::BlockDepartment(why) => {
                            tracing::warn!(
                                department = req.department.as_str(),
                                "department refused; its remaining rows fail without a request"
                            );
                            self.settle_department(
                                req.department.as_str(),
                                Some(Department::Refused(why)),
                            );
                        }
                    }
                    let (status, message) = match status {
                        Status::Failed if maybe_delivered => (
                            Status::Unknown,
                            format!("{message}, but an earlier attempt ({last_why}) may have been delivered"),
                        ),
                        _ => (status, message),
                    };
                    return outcome(status, message, attempts, last_http, last_answer);
                }
                Verdict::RetrySafe {
                    why,
                    after,
                    slow_pool,
                } => {
                    last_why = why;
                    if attempts >= self.settings.max_attempts {
                        let status = if maybe_delivered {
                            Status::Unknown
                        } else {
                            Status::Failed
                        };
                        let mut message = format!("gave up after {attempts} attempts: {last_why}");
                        if maybe_delivered {
                            message.push_str("; an earlier attempt may have been delivered");
                        }
                        return outcome(status, message, attempts, last_http, last_answer);
                    }
                    let delay = self.backoff(attempts, after);
                    if slow_pool {
                        let until = Instant::now() + self.backoff_cap(attempts, after);
                        let mut pause = self.pause_until.lock().unwrap();
                        *pause = Some(pause.map_or(until, |p| p.max(until)));
                    }
                    self.sleep(delay).await;
                }
                Verdict::Ambiguous(why) => {
                    maybe_delivered = true;
                    last_why = why;
                    if !self.settings.retry_ambiguous || attempts >= self.settings.max_attempts {
                        let message = if self.settings.retry_ambiguous {
                            format!("{last_why} after {attempts} attempts; the customer may have been notified, so it is not resent")
                        } else {
                            format!("{last_why}; the request may have been acted on, so it is not resent (retry_ambiguous is off)")
                        };
                        return outcome(Status::Unknown, message, attempts, last_http, last_answer);
                    }
                    let delay = self.backoff(attempts, None);
                    self.sleep(delay).await;
                }
            }
        }
    }

    /// Whether the row may make its next attempt now: waits for its turn, and says why not
    /// when the run stopped or the department was refused meanwhile. The refusal is checked
    /// before waiting too, so a refused department's rows do not use up rate-limit tokens.
    async fn gate(&self, req: &Request) -> Option<(Status, String)> {
        if let Some(why) = self.blocked_reason(req) {
            return Some((Status::Failed, refused(why)));
        }
        if !self.wait_turn().await {
            let reason = self.stop_reason().map(StopReason::describe);
            return Some((
                Status::NotSent,
                format!("not sent: run stopped, {}", reason.unwrap_or_default()),
            ));
        }
        self.blocked_reason(req)
            .map(|why| (Status::Failed, refused(why)))
    }

    /// Sleeps unless the run stopped first; the caller's next `wait_turn` notices the stop.
    async fn sleep(&self, delay: Duration) {
        tokio::select! {
            _ = self.stopper.token.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A department's authorisation, as learnt from its first answer.
enum Department {
    /// Its first request is on its way; the department's other rows wait on this.
    Probing(Arc<tokio::sync::Notify>),
    Open,
    Refused(String),
}

/// Registers the department as being probed unless it is known already; true if the caller
/// is now its probe.
fn claim(departments: &mut HashMap<String, Department>, dept: &str) -> bool {
    if departments.contains_key(dept) {
        return false;
    }
    departments.insert(dept.to_string(), Department::Probing(Arc::default()));
    true
}

/// Held by the row probing a department. Dropped without `open` (refused, or the row
/// ended without an answer), it hands the probe to the next waiting row unless the
/// department was marked refused.
struct Probe<'a> {
    dispatcher: &'a Dispatcher,
    dept: String,
}

impl Probe<'_> {
    fn open(self) {
        self.dispatcher
            .settle_department(&self.dept, Some(Department::Open));
    }

    /// Marks the department refused and wakes its rows in one step, so that none of them
    /// can become the next probe in between.
    fn refuse(self, why: String) {
        self.dispatcher
            .settle_department(&self.dept, Some(Department::Refused(why)));
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let mut map = self.dispatcher.departments.lock().unwrap();
        if let Some(Department::Probing(_)) = map.get(&self.dept) {
            if let Some(Department::Probing(notify)) = map.remove(&self.dept) {
                notify.notify_waiters();
            }
        }
    }
}

fn refused(why: String) -> String {
    format!("not sent: {why} (earlier row)")
}

fn outcome(
    status: Status,
    message: String,
    attempts: u32,
    http_status: Option<u16>,
    answer: Option<Answer>,
) -> Outcome {
    let answer = answer.unwrap_or_default();
    let join = |v: &[crate::client::ApiMessage]| {
        v.iter().map(|m| m.render()).collect::<Vec<_>>().join(" | ")
    };
    Outcome {
        status,
        http_status,
        attempts,
        errors: join(&answer.errors),
        warnings: join(&answer.warnings),
        payment_link: answer.payment_link,
        invoice_link: answer.invoice_link,
        text_sent: answer.text_sent,
        email_sent: answer.email_sent,
        message,
        completed_at: now_rfc3339(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ApiMessage;

    fn answered(status: u16, f: impl FnOnce(&mut Answer)) -> Attempt {
        let mut a = Answer {
            status,
            ..Answer::default()
        };
        f(&mut a);
        Attempt::Answered(a)
    }

    fn err(code: i64) -> ApiMessage {
        ApiMessage {
            code: Some(code),
            title: "T".into(),
            message: "m".into(),
        }
    }

    fn status_of(v: Verdict) -> Status {
        match v {
            Verdict::Done(s, _, _) => s,
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn only_refusals_are_retried_without_permission() {
        let flags = Flags::default();
        for code in [429, 503] {
            assert!(matches!(
                classify(&answered(code, |_| {}), &flags),
                Verdict::RetrySafe { .. }
            ));
        }
        assert!(matches!(
            classify(&Attempt::NotConnected("refused".into()), &flags),
            Verdict::RetrySafe { .. }
        ));
        for code in [500, 502, 504] {
            assert!(matches!(
                classify(&answered(code, |_| {}), &flags),
                Verdict::Ambiguous(_)
            ));
        }
        assert!(matches!(
            classify(&Attempt::Lost("timeout".into()), &flags),
            Verdict::Ambiguous(_)
        ));
        for code in [520, 524, 599] {
            assert!(matches!(
                classify(&answered(code, |_| {}), &flags),
                Verdict::Ambiguous(_)
            ));
        }
        assert_eq!(
            status_of(classify(&answered(303, |_| {}), &flags)),
            Status::Unknown
        );
        for code in [400, 404, 409, 422, 501, 505] {
            assert_eq!(
                status_of(classify(&answered(code, |_| {}), &flags)),
                Status::Failed
            );
        }
    }

    #[test]
    fn credential_and_department_refusals_have_run_wide_effects() {
        let flags = Flags::default();
        assert!(matches!(
            classify(&answered(401, |_| {}), &flags),
            Verdict::Done(Status::Failed, _, Effect::StopRun(_))
        ));
        assert!(matches!(
            classify(&answered(400, |a| a.errors.push(err(100003))), &flags),
            Verdict::Done(Status::Failed, _, Effect::StopRun(_))
        ));
        assert!(matches!(
            classify(&answered(403, |_| {}), &flags),
            Verdict::Done(Status::Failed, _, Effect::BlockDepartment(_))
        ));
        assert!(matches!(
            classify(&answered(400, |a| a.errors.push(err(100014))), &flags),
            Verdict::Done(Status::Failed, _, Effect::BlockDepartment(_))
        ));
    }

    #[test]
    fn success_needs_every_requested_channel() {
        let flags = Flags::default();
        let ok = |a: &mut Answer| {
            a.payment_link = Some("p".into());
            a.text_sent = Some("SUCCESS".into());
            a.email_sent = Some("SUCCESS".into());
        };
        assert_eq!(
            status_of(classify(&answered(200, ok), &flags)),
            Status::Sent
        );
        let text_failed = |a: &mut Answer| {
            ok(a);
            a.text_sent = Some("FAILURE".into());
        };
        assert_eq!(
            status_of(classify(&answered(200, text_failed), &flags)),
            Status::Partial
        );
        let no_text = Flags {
            send_as_text: false,
            ..Flags::default()
        };
        assert_eq!(
            status_of(classify(&answered(200, text_failed), &no_text)),
            Status::Sent
        );
        let with_error = |a: &mut Answer| {
            ok(a);
            a.errors.push(err(1));
        };
        assert_eq!(
            status_of(classify(&answered(200, with_error), &flags)),
            Status::Partial
        );
        // A channel SUCCESS means the customer was notified: never `failed` (resent).
        let text_only = |a: &mut Answer| {
            a.text_sent = Some("SUCCESS".into());
            a.errors.push(err(100006));
        };
        assert_eq!(
            status_of(classify(&answered(200, text_only), &flags)),
            Status::Partial
        );
        let acted_with_bad_code = |a: &mut Answer| {
            ok(a);
            a.errors.push(err(100003));
        };
        assert!(matches!(
            classify(&answered(200, acted_with_bad_code), &flags),
            Verdict::Done(Status::Partial, _, Effect::None)
        ));
        let no_link = |a: &mut Answer| a.errors.push(err(100006));
        assert_eq!(
            status_of(classify(&answered(200, no_link), &flags)),
            Status::Failed
        );
        let unreadable = |a: &mut Answer| a.body_problem = Some("not JSON".into());
        assert_eq!(
            status_of(classify(&answered(200, unreadable), &flags)),
            Status::Unknown
        );
    }
}
