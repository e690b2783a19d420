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
    pub fn row_time(
        answered_ms: Option<i64>,
        admitted: &str,
        run_started_ms: i64,
    ) -> DateTime<Utc> {
        match answered_ms {
            Some(ms) => from_millis(ms),
            None => DateTime::parse_from_rfc3339(admitted)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| from_millis(run_started_ms)),
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
