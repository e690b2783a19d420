//! One line of an invoice's history, as both stores build it for `history` (SPEC section
//! 10): what was asked, what came back, and the words the command shows for it.

use chrono::{DateTime, Utc};

use crate::domain::{from_millis, RunId};

/// One line of an invoice's history.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub run: String,
    pub target: String,
    pub department: String,
    /// The invoice, so that the histories of several invoices can be joined and filtered.
    pub invoice: String,
    /// `request`, `row` (what the run made of the row) or `resolution`.
    pub what: String,
    pub status: String,
    pub http_status: Option<u16>,
    pub text_sent: Option<String>,
    pub email_sent: Option<String>,
    pub payment_link: Option<String>,
    pub invoice_link: Option<String>,
    pub errors: String,
    pub message: String,
}

impl HistoryEntry {
    /// An entry with its place and words; what it says of an exchange the caller adds.
    pub fn new(
        at: DateTime<Utc>,
        run: RunId,
        target: String,
        department: String,
        what: &str,
        status: String,
    ) -> Self {
        HistoryEntry {
            at,
            run: run.to_string(),
            target,
            department,
            invoice: String::new(),
            what: what.into(),
            status,
            http_status: None,
            text_sent: None,
            email_sent: None,
            payment_link: None,
            invoice_link: None,
            errors: String::new(),
            message: String::new(),
        }
    }

    /// What a run made of a row: it ends with its last request when it made any (the
    /// earlier ones are `retried` entries); others were settled without one.
    pub fn row_words(status: String, requests: i64) -> (&'static str, String) {
        let what = if requests > 0 { "request" } else { "row" };
        let status = if status == "pending" {
            "unfinished".into()
        } else {
            status
        };
        (what, status)
    }

    /// When a row's answer came; for a row settled at admission, when it was admitted.
    /// That is kept to the second, so it is never put before its run's start: a rerun's
    /// skip in the same second as the send it skips would otherwise be listed first.
    pub fn row_time(
        answered_ms: Option<i64>,
        admitted: &str,
        run_started_ms: i64,
    ) -> DateTime<Utc> {
        let started = from_millis(run_started_ms);
        match answered_ms {
            Some(ms) => from_millis(ms),
            None => DateTime::parse_from_rfc3339(admitted)
                .map(|t| t.with_timezone(&Utc).max(started))
                .unwrap_or(started),
        }
    }

    /// A person's verdict, recorded by `resolve`.
    pub fn resolution(
        at: DateTime<Utc>,
        (run, target, department): (RunId, String, String),
        verdict: String,
        (by, file, line): (&str, &str, i64),
    ) -> Self {
        HistoryEntry {
            message: format!("resolved {verdict} by {by} ({file}, line {line})"),
            ..Self::new(at, run, target, department, "resolution", verdict)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rfc3339;

    #[test]
    fn a_row_settled_at_admission_is_never_before_its_run_started() {
        let started = from_millis(1_780_000_000_250);
        let same_second = rfc3339(started);
        assert_eq!(
            HistoryEntry::row_time(None, &same_second, started.timestamp_millis()),
            started
        );
        let later = from_millis(1_780_000_003_000);
        assert_eq!(
            HistoryEntry::row_time(None, &rfc3339(later), started.timestamp_millis()),
            later
        );
        assert_eq!(
            HistoryEntry::row_time(Some(1_780_000_000_100), "", 1_780_000_000_250),
            from_millis(1_780_000_000_100),
            "an answer keeps its own time"
        );
    }
}
