//! What one answer means for a row ([`classify`], a pure table), and what a row's attempts
//! add up to ([`Tries`]). The rule that protects customers lives in [`Tries::finish`]: once
//! any attempt may have reached the server, the row can never end as a plain `failed` or
//! `not_sent`, because a rerun would send it again.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::client::{Answer, ApiMessage, Attempt};
use crate::domain::{AttemptNote, Outcome, Skip, Status};
use crate::input::Flags;

/// API error codes that mean the credentials are wrong: nothing else will succeed.
const CREDENTIAL_CODES: [i64; 2] = [100001, 100003];
/// API error codes that mean these credentials may not act for this department.
const DEPARTMENT_CODES: [i64; 3] = [100004, 100013, 100014];

/// What one classified answer means for the row: of a payment request ([`classify`]) or
/// of a paid-status check ([`classify_paid`]), so that one attempt loop serves both.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// The row has its status.
    Done(Status, String, Effect),
    /// The paid-status check lets the row go on to its payment request.
    Proceed,
    /// The paid-status check found the invoice paid: skipped, not sent.
    Skip(Skip),
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
pub(super) enum Effect {
    None,
    StopRun(String),
    BlockDepartment(String),
}

fn retry_safe(why: String, answer: Option<&Answer>) -> Verdict {
    Verdict::RetrySafe {
        why,
        after: answer.and_then(|a| a.retry_after),
        slow_pool: answer.is_some_and(|a| a.status == 429),
    }
}

fn with_problem(answer: &Answer, text: String) -> String {
    match &answer.body_problem {
        Some(problem) => format!("{text}; {problem}"),
        None => text,
    }
}

/// Classifies a payment request's attempt (SPEC section 5).
pub(super) fn classify(attempt: &Attempt, flags: &Flags) -> Verdict {
    let answer = match attempt {
        Attempt::NotConnected(why) => return retry_safe(why.clone(), None),
        Attempt::Lost(why) => return Verdict::Ambiguous(why.clone()),
        Attempt::Answered(answer) => answer,
    };
    let status = answer.status;
    let http = format!("HTTP {status}");
    // An answer that shows the request was acted on (a link, or a channel's SUCCESS) is
    // judged on its own when it is a 2xx; the breakers are for requests that were refused.
    // Any other status with it contradicts itself; what it shows is that the customer may
    // have been notified, so it is never sent again, nor retried, without a person.
    if acted_on(answer, flags) {
        if (200..300).contains(&status) {
            return judge_success(answer, flags);
        }
        return Verdict::Done(
            Status::Unknown,
            with_problem(
                answer,
                format!("{http}, yet the answer holds a payment link or a channel's SUCCESS: the request may have been acted on"),
            ),
            Effect::None,
        );
    }
    if status == 401 || answer.has_error_code(&CREDENTIAL_CODES) {
        let why = with_problem(answer, format!("{http}: credentials refused"));
        return Verdict::Done(Status::Failed, why.clone(), Effect::StopRun(why));
    }
    if status == 403 || answer.has_error_code(&DEPARTMENT_CODES) {
        let why = with_problem(
            answer,
            format!("{http}: department refused for these credentials"),
        );
        return Verdict::Done(Status::Failed, why.clone(), Effect::BlockDepartment(why));
    }
    let rejected = || {
        let why = with_problem(answer, format!("{http}: rejected"));
        Verdict::Done(Status::Failed, why, Effect::None)
    };
    match status {
        429 | 503 => retry_safe(with_problem(answer, http), Some(answer)),
        // 501 and 505 say the server could not handle the request at all; any other 5xx
        // (500, 502, 504, and gateways' 520-524) may come after the server acted.
        501 | 505 => rejected(),
        500..=599 => Verdict::Ambiguous(with_problem(answer, http)),
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
        _ => rejected(),
    }
}

/// Whether an answer shows the request was acted on (the client keeps no empty link).
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

/// Classifies a paid-status check (`--skip-paid`). It is a GET, so anything transient is
/// safe to retry. A check refused for its scope ends the row `not_sent` and stops the run
/// before any payment request; any other refusal fails the row, since it may be paid.
pub(super) fn classify_paid(attempt: &Attempt) -> Verdict {
    let answer = match attempt {
        Attempt::NotConnected(why) | Attempt::Lost(why) => {
            return retry_safe(format!("paid-status check: {why}"), None)
        }
        Attempt::Answered(answer) => answer,
    };
    let http = format!("paid-status check: HTTP {}", answer.status);
    let scope_refused = |http: String| {
        let why = format!(
            "{} on the paid-status check: these credentials lack the scope {}",
            with_problem(answer, http),
            crate::client::PAID_SCOPE
        );
        Verdict::Done(Status::NotSent, String::new(), Effect::StopRun(why))
    };
    match answer.status {
        401 | 403 => scope_refused(format!("HTTP {}", answer.status)),
        _ if answer.has_error_code(&CREDENTIAL_CODES) => {
            scope_refused(format!("HTTP {}", answer.status))
        }
        200..=299 => match (answer.paid, &answer.body_problem) {
            (Some(true), None) => Verdict::Skip(Skip::AlreadyPaid {
                amount: answer.amount.clone(),
            }),
            (Some(false), None) => Verdict::Proceed,
            _ => retry_safe(
                with_problem(answer, format!("{http} without a paid status")),
                None,
            ),
        },
        408 | 429 | 500..=599 => retry_safe(with_problem(answer, http), Some(answer)),
        _ => Verdict::Done(
            Status::Failed,
            format!(
                "{}: rejected; not sent, since it may be paid",
                with_problem(answer, http)
            ),
            Effect::None,
        ),
    }
}

/// A row's attempts so far, and what they add up to.
#[derive(Default)]
pub(super) struct Tries {
    /// Payment requests made (the `attempts` column); paid-status checks are not counted.
    pub attempts: u32,
    last_http: Option<u16>,
    last: Option<Answer>,
    last_at: DateTime<Utc>,
    /// Why the last attempt did not settle the row, for the message of what came next.
    pub last_why: String,
    /// Set once an attempt may have reached the server, with what made it so.
    maybe_delivered: Option<String>,
    earlier: Vec<AttemptNote>,
    /// Said of the row before it was sent (a person's earlier verdict, say).
    note: Option<String>,
}

impl Tries {
    pub fn new(note: Option<String>) -> Tries {
        Tries {
            note,
            ..Tries::default()
        }
    }

    /// Takes in an attempt's answer: the previous attempt, if any, becomes history.
    pub fn answered(&mut self, attempt: Attempt, at: DateTime<Utc>, what: &str) {
        if let Some(note) = self.note_last() {
            self.earlier.push(note);
        }
        self.last_at = at;
        self.last_why = what.to_string();
        self.last = match attempt {
            Attempt::Answered(answer) => {
                self.last_http = Some(answer.status);
                Some(answer)
            }
            Attempt::NotConnected(_) | Attempt::Lost(_) => None,
        };
    }

    /// The attempt taken in last, as history, if there was one.
    fn note_last(&mut self) -> Option<AttemptNote> {
        if self.last_why.is_empty() && self.last.is_none() {
            return None;
        }
        let answer = self.last.take().unwrap_or_default();
        Some(AttemptNote {
            at: self.last_at,
            what: std::mem::take(&mut self.last_why),
            http_status: (answer.status != 0).then_some(answer.status),
            errors: join(&answer.errors),
            warnings: join(&answer.warnings),
        })
    }

    /// The attempt may have reached the server: from now on the row cannot end as a plain
    /// `failed` or `not_sent`.
    pub fn maybe_delivered(&mut self, why: &str) {
        self.maybe_delivered = Some(why.to_string());
    }

    /// What stopped the row after it made attempts ("HTTP 503; then not sent: ...").
    pub fn then(&self, message: String) -> String {
        if self.attempts > 0 && !self.last_why.is_empty() {
            format!("{}; then {message}", self.last_why)
        } else {
            message
        }
    }

    /// The row's outcome: `status` and `message`, turned into `unknown` when an earlier
    /// attempt may have been delivered and the status would have the row sent again.
    pub fn finish(self, status: Status, message: String, at: DateTime<Utc>) -> Outcome {
        let (status, message) = match (&self.maybe_delivered, status) {
            (Some(why), Status::Failed | Status::NotSent) => (
                Status::Unknown,
                format!("{message}; an earlier attempt ({why}) may have been delivered, so it is not resent"),
            ),
            _ => (status, message),
        };
        self.outcome(status, message, at)
    }

    /// A skip decided by the row's own check (`--skip-paid`).
    pub fn skipped(self, skip: &Skip, at: DateTime<Utc>) -> Outcome {
        let mut outcome = self.outcome(Status::Skipped, skip.message(), at);
        outcome.skip = Some(skip.kind());
        outcome
    }

    fn outcome(self, status: Status, message: String, at: DateTime<Utc>) -> Outcome {
        let answer = self.last.unwrap_or_default();
        let message = match self.note {
            Some(note) if message.is_empty() => note,
            Some(note) => format!("{note}; {message}"),
            None => message,
        };
        Outcome {
            status,
            skip: None,
            http_status: self.last_http,
            attempts: self.attempts,
            errors: join(&answer.errors),
            warnings: join(&answer.warnings),
            payment_link: answer.payment_link,
            invoice_link: answer.invoice_link,
            text_sent: answer.text_sent,
            email_sent: answer.email_sent,
            message,
            completed_at: at,
            earlier: self.earlier,
        }
    }
}

fn join(v: &[ApiMessage]) -> String {
    v.iter().map(|m| m.render()).collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for code in [500, 502, 504, 520, 524, 599] {
            assert!(matches!(
                classify(&answered(code, |_| {}), &flags),
                Verdict::Ambiguous(_)
            ));
        }
        assert!(matches!(
            classify(&Attempt::Lost("timeout".into()), &flags),
            Verdict::Ambiguous(_)
        ));
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
    fn a_refusal_that_shows_a_link_or_a_sent_text_is_unknown_never_retried() {
        let flags = Flags {
            send_as_text: true,
            send_as_email: false,
            ..Flags::default()
        };
        for code in [400, 429, 500, 503] {
            let linked = answered(code, |a| a.payment_link = Some("https://pay/x".into()));
            assert_eq!(status_of(classify(&linked, &flags)), Status::Unknown);
            let texted = answered(code, |a| a.text_sent = Some("SUCCESS".into()));
            assert_eq!(status_of(classify(&texted, &flags)), Status::Unknown);
        }
        let email_not_asked = answered(400, |a| a.email_sent = Some("SUCCESS".into()));
        assert_eq!(
            status_of(classify(&email_not_asked, &flags)),
            Status::Failed
        );
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

    #[test]
    fn paid_checks_retry_anything_transient_and_stop_on_a_missing_scope() {
        let paid = |a: &mut Answer| {
            a.paid = Some(true);
            a.amount = Some("125.5".into());
        };
        assert_eq!(
            classify_paid(&answered(200, paid)),
            Verdict::Skip(Skip::AlreadyPaid {
                amount: Some("125.5".into())
            })
        );
        assert_eq!(
            classify_paid(&answered(200, |a| a.paid = Some(false))),
            Verdict::Proceed
        );
        for attempt in [
            Attempt::Lost("timeout".into()),
            Attempt::NotConnected("refused".into()),
            answered(500, |_| {}),
            answered(429, |_| {}),
            answered(200, |_| {}),
        ] {
            assert!(
                matches!(classify_paid(&attempt), Verdict::RetrySafe { .. }),
                "{attempt:?}"
            );
        }
        for code in [401, 403] {
            assert!(matches!(
                classify_paid(&answered(code, |_| {})),
                Verdict::Done(Status::NotSent, _, Effect::StopRun(why)) if why.contains(crate::client::PAID_SCOPE)
            ));
        }
        assert!(matches!(
            classify_paid(&answered(400, |_| {})),
            Verdict::Done(Status::Failed, _, Effect::None)
        ));
    }

    #[test]
    fn a_row_that_may_have_been_delivered_never_ends_failed_or_not_sent() {
        let now = Utc::now();
        for status in [Status::Failed, Status::NotSent] {
            let mut tries = Tries::new(None);
            tries.attempts = 2;
            tries.maybe_delivered("HTTP 500");
            let o = tries.finish(status, "HTTP 400: rejected".into(), now);
            assert_eq!(o.status, Status::Unknown);
            assert!(
                o.message.contains("(HTTP 500) may have been delivered"),
                "{}",
                o.message
            );
        }
        let tries = Tries::new(None);
        assert_eq!(
            tries.finish(Status::Failed, "x".into(), now).status,
            Status::Failed
        );
    }

    #[test]
    fn each_attempt_but_the_last_becomes_history() {
        let now = Utc::now();
        let mut tries = Tries::new(None);
        tries.attempts = 1;
        tries.answered(answered(503, |_| {}), now, "HTTP 503");
        tries.attempts = 2;
        let ok = answered(200, |a| a.payment_link = Some("p".into()));
        tries.answered(ok, now, "HTTP 200");
        let o = tries.finish(Status::Sent, String::new(), now);
        assert_eq!(o.attempts, 2);
        assert_eq!(o.http_status, Some(200));
        assert_eq!(o.payment_link.as_deref(), Some("p"));
        assert_eq!(o.earlier.len(), 1);
        assert_eq!(o.earlier[0].http_status, Some(503));
        assert_eq!(o.earlier[0].what, "HTTP 503");
    }
}
