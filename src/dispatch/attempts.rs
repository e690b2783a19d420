//! The one attempt loop: a row's payment request and its paid-status check go through it
//! alike, and differ only in what [`Call`] says: the request made, what an answer means
//! (`row::classify`, `row::classify_paid`), and whether a leaving mark must come first.
//! Pacing happens in one place, the pacer's turn, before every attempt.

use std::future::Future;
use std::time::{Duration, Instant};

use super::gate::Probe;
use super::row::{classify, classify_paid, Effect, Tries, Verdict};
use super::{refused, Admitted, Api, Dispatcher, Journal};
use crate::client::Attempt;
use crate::domain::{Outcome, Skip, Status, StopReason};
use crate::input::Request;

/// Which call the loop makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    /// The payment request: not idempotent, so it leaves only after its leaving mark, and
    /// only an answer that shows it was not acted on is retried.
    Payment,
    /// The paid-status check (`--skip-paid`): a GET, retried on anything transient.
    PaidStatus,
}

/// How the loop ended for the row.
#[derive(Debug)]
pub(super) enum Ending {
    /// The check lets the row go on to its payment request.
    Proceed,
    Finish(Status, String),
    Skipped(Skip),
}

impl Ending {
    pub fn outcome(self, tries: Tries, at: chrono::DateTime<chrono::Utc>) -> Outcome {
        match self {
            Ending::Finish(status, message) => tries.finish(status, message, at),
            Ending::Skipped(skip) => tries.skipped(&skip, at),
            // Only a check proceeds, and the row's payment request follows it.
            Ending::Proceed => tries.finish(Status::NotSent, "not sent".into(), at),
        }
    }
}

impl<A: Api, J: Journal> Dispatcher<A, J> {
    /// Makes `call` for the row until an answer settles it, retrying what is safe to retry.
    /// `probe` is held while the row goes alone for its department or the check's scope.
    pub(super) async fn attempts(
        &self,
        call: Call,
        row: &Admitted,
        tries: &mut Tries,
        mut probe: Option<Probe<'_>>,
    ) -> Ending {
        let req = &row.request;
        for made in 1.. {
            if let Some((status, message)) = self.gate(call, req).await {
                return Ending::Finish(status, tries.then(message));
            }
            if call == Call::Payment {
                if tries.attempts == 0 {
                    if let Err(message) = self.leave(row.seq).await {
                        return Ending::Finish(Status::NotSent, message);
                    }
                }
                tries.attempts += 1;
            }
            let attempt = self.make(call, row).await;
            let verdict = match call {
                Call::Payment => classify(&attempt, &req.flags),
                Call::PaidStatus => classify_paid(&attempt),
            };
            probe = self.learn(probe, &verdict);
            let (now, what) = (self.clock.now(), words(&verdict));
            tries.answered(attempt, now, &what);
            let (why, after, slow_pool) = match verdict {
                Verdict::Done(status, message, effect) => {
                    self.apply(effect, req);
                    return match status {
                        // Only a stop ends a row unsent here: it says why the run stopped.
                        Status::NotSent => Ending::Finish(status, self.not_sent_message()),
                        _ => Ending::Finish(status, message),
                    };
                }
                Verdict::Proceed => return Ending::Proceed,
                Verdict::Skip(skip) => return Ending::Skipped(skip),
                Verdict::RetrySafe {
                    why,
                    after,
                    slow_pool,
                } => (why, after, slow_pool),
                Verdict::Ambiguous(why) => {
                    tries.maybe_delivered(&why);
                    if !self.settings.retry_ambiguous || made >= self.settings.max_attempts {
                        return Ending::Finish(Status::Unknown, self.ambiguous(&why, made));
                    }
                    (why, None, false)
                }
            };
            if made >= self.settings.max_attempts {
                let mut message = format!("gave up after {made} attempts: {why}");
                if call == Call::PaidStatus {
                    message.push_str("; not sent, since it may be paid");
                }
                return Ending::Finish(Status::Failed, message);
            }
            self.back_off(made, after, slow_pool).await;
        }
        unreachable!("the loop returns")
    }

    fn ambiguous(&self, why: &str, made: u32) -> String {
        if self.settings.retry_ambiguous {
            format!("{why} after {made} attempts; the customer may have been notified, so it is not resent")
        } else {
            format!("{why}; the request may have been acted on, so it is not resent (retry_ambiguous is off)")
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

    /// Makes the call once, and tells the pace whether the server said to slow down.
    async fn make(&self, call: Call, row: &Admitted) -> Attempt {
        let left = tokio::time::Instant::now();
        let attempt = match call {
            Call::Payment => self.timed(row.line, self.api.send(&row.request)).await,
            Call::PaidStatus => {
                let invoice = &row.request.invoice;
                self.timed(row.line, self.api.paid_status(invoice)).await
            }
        };
        self.pacer.answered(left, throttled(&attempt));
        attempt
    }

    /// Makes one request, counted and timed for the progress line and the report.
    async fn timed(&self, line: u64, request: impl Future<Output = Attempt>) -> Attempt {
        self.shared.progress.request_started();
        let sent = Instant::now();
        let attempt = request.await;
        self.shared.progress.answered();
        let tally = &self.shared.tally;
        tally.attempt(line, sent, sent.elapsed(), &attempt);
        if let Some((rate, _)) = self.shared.pace.read() {
            tally.pace(sent, rate);
        }
        attempt
    }

    /// What the probe's answer says of its key (a department, or the check's scope). A
    /// retry-safe answer (429, 503, no connection) says nothing, so the key's rows go on
    /// waiting; a department's refusal is settled by [`Self::apply`] while the probe is
    /// still held, so no waiting row slips through in between; a scope refused by the check
    /// refuses its key; anything else opens it.
    fn learn<'a>(&self, probe: Option<Probe<'a>>, verdict: &Verdict) -> Option<Probe<'a>> {
        match verdict {
            Verdict::RetrySafe { .. } | Verdict::Done(_, _, Effect::BlockDepartment(_)) => probe,
            Verdict::Done(Status::NotSent, _, Effect::StopRun(why)) => {
                if let Some(probe) = probe {
                    probe.refuse(why.clone());
                }
                None
            }
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
        tokio::select! {
            // The next turn notices the stop.
            _ = self.stopper.stopped() => {}
            _ = tokio::time::sleep(backoff.delay(attempt, retry_after)) => {}
        }
    }

    /// Whether the row may make its next attempt now: waits for its turn, and says why not
    /// when the run stopped or (for a payment request) the department was refused
    /// meanwhile. The refusal is checked before waiting too, so a refused department's
    /// rows do not use up rate-limit tokens.
    async fn gate(&self, call: Call, req: &Request) -> Option<(Status, String)> {
        let dept = req.department.as_str();
        let refusal = || match call {
            Call::Payment => self.departments.refused(dept),
            Call::PaidStatus => None,
        };
        if let Some(why) = refusal() {
            return Some((Status::Failed, refused(&why)));
        }
        if !self.pacer.turn(&self.stopper).await {
            return Some((Status::NotSent, self.not_sent_message()));
        }
        refusal().map(|why| (Status::Failed, refused(&why)))
    }
}

/// Whether the server said to slow down (429, or 503: unavailable for now).
fn throttled(attempt: &Attempt) -> bool {
    matches!(attempt, Attempt::Answered(a) if a.status == 429 || a.status == 503)
}

/// What an answer is called in the row's history of attempts.
/// Borrowed but for a check's words: it is on every row's path.
fn words(verdict: &Verdict) -> std::borrow::Cow<'_, str> {
    match verdict {
        Verdict::Done(_, message, Effect::StopRun(why) | Effect::BlockDepartment(why))
            if message.is_empty() =>
        {
            why.into()
        }
        Verdict::Done(_, message, _) => message.into(),
        Verdict::Proceed => "paid-status check: not paid".into(),
        Verdict::Skip(skip) => format!("paid-status check: {}", skip.message()).into(),
        Verdict::RetrySafe { why, .. } | Verdict::Ambiguous(why) => why.into(),
    }
}
