//! The words every stage shares: how a row ended and why, what one attempt was, how many
//! rows ended each way, why a run stopped, and the clock the run is timed by.

use std::fmt;
use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A row's final status, as the results file spells it (SPEC section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    Sent,
    Partial,
    Failed,
    Unknown,
    Invalid,
    Duplicate,
    Skipped,
    NotSent,
}

impl Status {
    /// In the order the summary lists them.
    pub const ALL: [Status; 8] = [
        Status::Sent,
        Status::Partial,
        Status::Failed,
        Status::Unknown,
        Status::Invalid,
        Status::Duplicate,
        Status::Skipped,
        Status::NotSent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Partial => "partial",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
            Status::Invalid => "invalid",
            Status::Duplicate => "duplicate",
            Status::Skipped => "skipped",
            Status::NotSent => "not_sent",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Rows ending so need a person (SPEC section 9, exit code 2).
    pub fn needs_person(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::Partial | Status::Unknown | Status::Invalid | Status::NotSent
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run as people name it: `r42`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub i64);

impl RunId {
    /// `r42` or `42`.
    pub fn parse(s: &str) -> Option<RunId> {
        let s = s.trim();
        let digits = s.strip_prefix(['r', 'R']).unwrap_or(s);
        digits.parse().ok().filter(|n| *n > 0).map(RunId)
    }

    /// A run id given on the command line, or why it is not one.
    pub fn given(s: &str) -> anyhow::Result<RunId> {
        RunId::parse(s).ok_or_else(|| {
            anyhow::anyhow!("{s:?} is not a run id like r42 (see `invoice-dispatch runs`)")
        })
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Why a row was skipped. The kind is stored with the row; the words are for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Sent (or partial) by an earlier run within the dedupe window.
    SentEarlier { run: RunId, at: DateTime<Utc> },
    /// An earlier run may have delivered it but read no answer: a person checks.
    MaybeDelivered { run: RunId, at: DateTime<Utc> },
    /// A person checked an unknown row in myKaarma and found it delivered.
    ResolvedDelivered {
        by: String,
        on: DateTime<Utc>,
        run: RunId,
    },
    /// Another run that is still alive holds it (a shared ledger).
    BeingSent { run: RunId, host: String },
    /// `--skip-paid`: the invoice was paid already.
    AlreadyPaid { amount: Option<String> },
}

impl Skip {
    pub fn kind(&self) -> SkipKind {
        match self {
            Skip::SentEarlier { .. } => SkipKind::SentEarlier,
            Skip::MaybeDelivered { .. } => SkipKind::MaybeDelivered,
            Skip::ResolvedDelivered { .. } => SkipKind::ResolvedDelivered,
            Skip::BeingSent { .. } => SkipKind::BeingSent,
            Skip::AlreadyPaid { .. } => SkipKind::AlreadyPaid,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Skip::SentEarlier { run, at } => format!(
                "sent {} by run {run}; within the dedupe window (--resend to send again)",
                rfc3339(*at)
            ),
            Skip::MaybeDelivered { run, at } => format!(
                "unknown: run {run} sent it at {} and read no answer, so the customer may have been notified; check it in myKaarma and record what you find with `invoice-dispatch resolve`, or send again with --retry-unknown",
                rfc3339(*at)
            ),
            Skip::ResolvedDelivered { by, on, run } => format!(
                "resolved delivered by {by} on {}: run {run}'s request reached the customer; not sent again",
                rfc3339(*on)
            ),
            Skip::BeingSent { run, host } => format!("being sent by run {run} on {host}"),
            Skip::AlreadyPaid { amount: Some(a) } => format!("already paid (amount {a})"),
            Skip::AlreadyPaid { amount: None } => "already paid".to_string(),
        }
    }
}

/// What is stored of a skip: enough to count it without reading its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SkipKind {
    SentEarlier,
    MaybeDelivered,
    ResolvedDelivered,
    BeingSent,
    AlreadyPaid,
}

impl SkipKind {
    const ALL: [SkipKind; 5] = [
        SkipKind::SentEarlier,
        SkipKind::MaybeDelivered,
        SkipKind::ResolvedDelivered,
        SkipKind::BeingSent,
        SkipKind::AlreadyPaid,
    ];

    pub fn code(self) -> &'static str {
        match self {
            SkipKind::SentEarlier => "sent_earlier",
            SkipKind::MaybeDelivered => "maybe_delivered",
            SkipKind::ResolvedDelivered => "resolved_delivered",
            SkipKind::BeingSent => "being_sent",
            SkipKind::AlreadyPaid => "already_paid",
        }
    }

    pub fn parse(code: &str) -> Option<SkipKind> {
        SkipKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// One HTTP exchange of a row that was not its last (the last one's fields are the row's
/// own): kept so that `history` can tell every request apart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptNote {
    pub at: DateTime<Utc>,
    /// What the attempt was and what came of it, e.g. "HTTP 503; retried".
    pub what: String,
    pub http_status: Option<u16>,
    pub errors: String,
    pub warnings: String,
}

/// What happened to one row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    pub skip: Option<SkipKind>,
    pub http_status: Option<u16>,
    /// HTTP requests made for the row in this run.
    pub attempts: u32,
    pub payment_link: Option<String>,
    pub invoice_link: Option<String>,
    pub text_sent: Option<String>,
    pub email_sent: Option<String>,
    pub errors: String,
    pub warnings: String,
    pub message: String,
    pub completed_at: DateTime<Utc>,
    /// Every attempt before the last, oldest first.
    pub earlier: Vec<AttemptNote>,
}

impl Outcome {
    /// An outcome reached without an HTTP answer (validation, dedupe, a stopped run).
    pub fn plain(status: Status, message: impl Into<String>, at: DateTime<Utc>) -> Outcome {
        Outcome {
            status,
            skip: None,
            http_status: None,
            attempts: 0,
            payment_link: None,
            invoice_link: None,
            text_sent: None,
            email_sent: None,
            errors: String::new(),
            warnings: String::new(),
            message: message.into(),
            completed_at: at,
            earlier: Vec::new(),
        }
    }

    pub fn skipped(skip: &Skip, at: DateTime<Utc>) -> Outcome {
        Outcome {
            skip: Some(skip.kind()),
            ..Outcome::plain(Status::Skipped, skip.message(), at)
        }
    }
}

/// Rows per final status: the one tally the progress line, the summary, the results, the
/// report and the ledger's run records all use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    by_status: [u64; 8],
    /// Skipped because an earlier run may have delivered them: they need a person.
    pub skipped_unknown: u64,
    /// Skipped because the invoice was paid already.
    pub already_paid: u64,
}

impl Counts {
    pub fn add(&mut self, status: Status, skip: Option<SkipKind>) {
        self.add_n(status, skip, 1);
    }

    pub fn add_n(&mut self, status: Status, skip: Option<SkipKind>, n: u64) {
        self.by_status[status as usize] += n;
        match skip {
            Some(SkipKind::MaybeDelivered) => self.skipped_unknown += n,
            Some(SkipKind::AlreadyPaid) => self.already_paid += n,
            _ => {}
        }
    }

    pub fn get(&self, status: Status) -> u64 {
        self.by_status[status as usize]
    }

    pub fn rows(&self) -> u64 {
        self.by_status.iter().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Status, u64)> + '_ {
        Status::ALL.into_iter().map(|s| (s, self.get(s)))
    }

    /// Some row needs a person: a status that says so, or a skip because an earlier run
    /// may have delivered it.
    pub fn need_a_person(&self) -> bool {
        self.iter().any(|(s, n)| n > 0 && s.needs_person()) || self.skipped_unknown > 0
    }

    /// `3 sent, 1 failed` (statuses with no rows left out), or `none`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| match s {
                Status::Skipped if self.already_paid > 0 => {
                    format!("{n} skipped ({} already paid)", self.already_paid)
                }
                s => format!("{n} {s}"),
            })
            .collect();
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }
}

impl Counts {
    /// As the ledger keeps it: the summary's map plus the two skip counts.
    pub fn to_record(&self) -> String {
        let mut map = serde_json::Map::new();
        for (status, n) in self.iter() {
            map.insert(status.as_str().into(), n.into());
        }
        map.insert("skipped_unknown".into(), self.skipped_unknown.into());
        map.insert("already_paid".into(), self.already_paid.into());
        serde_json::Value::Object(map).to_string()
    }

    pub fn from_record(text: &str) -> Option<Counts> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
        let get = |k: &str| map.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let mut counts = Counts {
            skipped_unknown: get("skipped_unknown"),
            already_paid: get("already_paid"),
            ..Counts::default()
        };
        for status in Status::ALL {
            counts.by_status[status as usize] = get(status.as_str());
        }
        Some(counts)
    }
}

/// `{"sent": 3, "partial": 0, ...}`: every status, in summary order.
impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(Status::ALL.len()))?;
        for (status, n) in self.iter() {
            map.serialize_entry(status.as_str(), &n)?;
        }
        map.end()
    }
}

/// Why a run stopped before the end of its input.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    Credentials(String),
    FailureRatio {
        failures: u64,
        finished: u64,
    },
    Interrupted,
    Ledger(String),
    /// The send window closed (SPEC section 13); the next run carries on.
    WindowClosed,
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
            StopReason::WindowClosed => "send window closed".into(),
        }
    }

    /// What a row the run never started says.
    pub fn not_sent_message(&self) -> String {
        match self {
            StopReason::WindowClosed => "send window closed".into(),
            other => format!("not sent: run stopped, {}", other.describe()),
        }
    }
}

/// SPEC section 9.
pub fn exit_code(counts: &Counts, stop: Option<&StopReason>) -> u8 {
    match stop {
        Some(StopReason::Interrupted) => 130,
        Some(StopReason::Ledger(_)) => 1,
        Some(StopReason::Credentials(_) | StopReason::FailureRatio { .. }) => 3,
        Some(StopReason::WindowClosed) => 2,
        None if counts.need_a_person() => 2,
        None => 0,
    }
}

/// How a run is told to stop: by a breaker, the send window, or a signal (from `main`).
#[derive(Default)]
pub struct Stopper {
    token: CancellationToken,
    /// Set by an interrupt even when an earlier reason was recorded: an interrupt always
    /// bounds the wait for requests in flight by the grace period.
    interrupted: CancellationToken,
    reason: OnceLock<StopReason>,
}

impl Stopper {
    /// Stops starting requests. The first reason given is the one reported.
    pub fn stop(&self, reason: StopReason) {
        if reason == StopReason::Interrupted {
            self.interrupted.cancel();
        }
        // An interrupt is announced by the signal handler itself.
        if self.reason.set(reason.clone()).is_ok() && reason != StopReason::Interrupted {
            tracing::warn!("stopping: {}", reason.describe());
        }
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<&StopReason> {
        self.reason.get()
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn stopped(&self) {
        self.token.cancelled().await
    }

    pub async fn interrupted(&self) {
        self.interrupted.cancelled().await
    }
}

/// Pausing a run (the handle's `pause`, the desk's button): no request starts while it is
/// paused; those in flight finish. A stop ends a pause's wait too.
pub struct Pause {
    paused: tokio::sync::watch::Sender<bool>,
    /// When the current pause began, and the pauses before it added up.
    time: std::sync::Mutex<(Option<std::time::Instant>, std::time::Duration)>,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            paused: tokio::sync::watch::Sender::new(false),
            time: Default::default(),
        }
    }
}

impl Pause {
    /// Pauses; false if it already was.
    pub fn pause(&self) -> bool {
        let changed = self
            .paused
            .send_if_modified(|p| !std::mem::replace(p, true));
        if changed {
            self.time.lock().unwrap().0 = Some(std::time::Instant::now());
        }
        changed
    }

    /// Resumes; false if it was not paused.
    pub fn resume(&self) -> bool {
        let changed = self
            .paused
            .send_if_modified(|p| std::mem::replace(p, false));
        if changed {
            let mut time = self.time.lock().unwrap();
            if let Some(since) = time.0.take() {
                time.1 += since.elapsed();
            }
        }
        changed
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Returns once the run is not paused.
    pub async fn resumed(&self) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|paused| !paused).await;
    }

    /// The time spent paused so far, the current pause included.
    pub fn paused_for(&self) -> std::time::Duration {
        let time = self.time.lock().unwrap();
        time.1 + time.0.map(|since| since.elapsed()).unwrap_or_default()
    }
}

/// The time a run goes by. Normally the system's; `INVOICE_DISPATCH_TEST_NOW` (RFC 3339)
/// starts it at another instant, from which it advances in real time, so that tests can
/// stand a run at 19:59:58 in Chicago without waiting for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    offset: TimeDelta,
}

impl Clock {
    pub const TEST_NOW: &'static str = "INVOICE_DISPATCH_TEST_NOW";

    pub fn starting_at(t: DateTime<Utc>) -> Clock {
        Clock {
            offset: t - Utc::now(),
        }
    }

    /// The system clock, or the test one when `INVOICE_DISPATCH_TEST_NOW` is set.
    pub fn from_env() -> anyhow::Result<Clock> {
        let Ok(text) = std::env::var(Self::TEST_NOW) else {
            return Ok(Clock::default());
        };
        let t = DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
            anyhow::anyhow!(
                "{}={text:?} is not an RFC 3339 time like 2026-11-01T19:59:58-06:00: {e}",
                Self::TEST_NOW
            )
        })?;
        Ok(Clock::starting_at(t.with_timezone(&Utc)))
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// The test-only environment variables the shipped binary honours. A stray one in
/// production changes what a run proves (a fixed boot id makes lost leaving marks look
/// trustworthy after a reboot), so every run that honours one says so: a warning at
/// start, `test_overrides` in the summary, a banner in the report.
pub const TEST_OVERRIDES: [&str; 2] = [Clock::TEST_NOW, "INVOICE_DISPATCH_TEST_BOOT_ID"];

/// The test overrides set in this process's environment, as `NAME=value`.
pub fn test_overrides() -> Vec<String> {
    TEST_OVERRIDES
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| format!("{name}={v}")))
        .collect()
}

/// RFC 3339 in UTC to the second, as every timestamp in our files is written.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A timestamp stored as milliseconds since the epoch.
pub fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_read_as_typed() {
        assert_eq!(RunId::parse("r42"), Some(RunId(42)));
        assert_eq!(RunId::parse(" 7 "), Some(RunId(7)));
        assert_eq!(RunId::parse("R3"), Some(RunId(3)));
        for bad in ["", "r", "x1", "r-1", "r0", "1.5"] {
            assert_eq!(RunId::parse(bad), None, "{bad}");
        }
        assert_eq!(RunId(42).to_string(), "r42");
    }

    #[test]
    fn skips_that_need_a_person_make_the_exit_code_2() {
        let mut counts = Counts::default();
        counts.add(Status::Sent, None);
        counts.add(Status::Skipped, Some(SkipKind::AlreadyPaid));
        counts.add(Status::Skipped, Some(SkipKind::ResolvedDelivered));
        assert_eq!(exit_code(&counts, None), 0);
        counts.add(Status::Skipped, Some(SkipKind::MaybeDelivered));
        assert_eq!(exit_code(&counts, None), 2);
        assert_eq!(exit_code(&counts, Some(&StopReason::Interrupted)), 130);
        assert_eq!(
            exit_code(&Counts::default(), Some(&StopReason::WindowClosed)),
            2
        );
        assert_eq!(counts.describe(), "1 sent, 3 skipped (1 already paid)");
    }

    #[test]
    fn counts_serialize_every_status_in_order() {
        let mut counts = Counts::default();
        counts.add(Status::Failed, None);
        let json = serde_json::to_string(&counts).unwrap();
        assert_eq!(
            json,
            r#"{"sent":0,"partial":0,"failed":1,"unknown":0,"invalid":0,"duplicate":0,"skipped":0,"not_sent":0}"#
        );
    }

    #[test]
    fn counts_round_trip_through_the_ledger_record() {
        let mut counts = Counts::default();
        counts.add_n(Status::Skipped, Some(SkipKind::MaybeDelivered), 2);
        counts.add(Status::Sent, None);
        assert_eq!(Counts::from_record(&counts.to_record()), Some(counts));
    }

    #[test]
    fn skip_kinds_round_trip_through_their_codes() {
        for kind in SkipKind::ALL {
            assert_eq!(SkipKind::parse(kind.code()), Some(kind));
        }
    }
}
