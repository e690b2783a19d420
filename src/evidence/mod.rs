//! Evidence of a run for people and monitoring (SPEC section 11): the [`Tally`] kept while
//! the run goes, the HTML [`report`], the Prometheus [`metrics`] and the pings.
//!
//! The tally is small and bounded whatever the run's length: requests per time bucket
//! (buckets widen as the run grows), a latency histogram, and API errors grouped by code.
//! The rows that need a person are collected when the results are written, not here.

pub mod metrics;
pub mod report;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::Attempt;
use crate::domain::Status;

/// A row that needs a person, as the report lists it.
#[derive(Clone, Debug)]
pub struct AttentionRow {
    pub line: u64,
    pub department: String,
    pub invoice: String,
    pub status: Status,
    pub message: String,
    pub errors: String,
}

/// Time buckets kept at most; past it, neighbours merge and each bucket covers twice as long.
const MAX_BUCKETS: usize = 600;
/// Error groups kept at most; the rest are counted together.
const MAX_GROUPS: usize = 100;
/// Input lines remembered per error group.
const LINES_PER_GROUP: usize = 5;
/// Characters the report keeps of one value. A cell or an answer is hostile and may be
/// huge (a stray quote can read the rest of a file into one cell): the report stays small.
const MAX_TEXT_CHARS: usize = 300;

/// `text`, cut to what the report keeps, saying how long it was.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((end, _)) => format!("{}… ({} bytes in all)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

/// Requests in one time bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bucket {
    pub requests: u64,
    pub throttled: u64,
    pub server_errors: u64,
    /// The auto pace's highest rate in the bucket, requests per second (`--rate auto`).
    pub pace: f64,
}

/// What kind of trouble a group is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Error,
    Warning,
    /// No answer, or one that could not be read.
    Transport,
}

/// One kind of error or warning and where it happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub count: u64,
    /// The first input lines it happened on.
    pub lines: Vec<u64>,
    /// Its first message, as the API (or the connection) put it.
    pub example: String,
}

/// The run's bounded record, filled in by the senders.
pub struct Tally {
    started: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    bucket_secs: u64,
    buckets: Vec<Bucket>,
    latency_us: hdrhistogram::Histogram<u64>,
    by_code: BTreeMap<String, u64>,
    groups: BTreeMap<(Kind, String), Group>,
    other_groups: u64,
}

/// A copy of the tally, for the report and the metrics.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub bucket_secs: u64,
    pub buckets: Vec<Bucket>,
    /// (percentile, milliseconds) for p50, p90, p99 and the maximum; empty without requests.
    pub latency_ms: Vec<(&'static str, f64)>,
    /// Requests per HTTP status (`"200"`, `"429"`, ...) or `"none"` without an answer.
    pub by_code: BTreeMap<String, u64>,
    /// Grouped by kind and `CODE TITLE`, most frequent first.
    pub groups: Vec<(Kind, String, Group)>,
    pub other_groups: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    pub fn new() -> Tally {
        let latency_us = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
            .expect("static histogram bounds are valid");
        Tally {
            started: Instant::now(),
            inner: Mutex::new(Inner {
                bucket_secs: 1,
                buckets: Vec::new(),
                latency_us,
                by_code: BTreeMap::new(),
                groups: BTreeMap::new(),
                other_groups: 0,
            }),
        }
    }

    /// One request and its answer; `line` is the input line of its row.
    pub fn attempt(&self, line: u64, sent: Instant, latency: Duration, attempt: &Attempt) {
        let second = sent.saturating_duration_since(self.started).as_secs();
        let mut inner = self.inner.lock().unwrap();
        let code = match attempt {
            Attempt::Answered(a) => a.status.to_string(),
            _ => "none".to_string(),
        };
        *inner.by_code.entry(code).or_default() += 1;
        let bucket = inner.bucket(second);
        bucket.requests += 1;
        if let Attempt::Answered(a) = attempt {
            bucket.throttled += u64::from(a.status == 429);
            bucket.server_errors += u64::from(a.status >= 500);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        inner.latency_us.saturating_record(us.max(1));
        for (kind, key, example) in troubles(attempt) {
            inner.group(kind, key, example, line);
        }
    }

    /// The auto pace when a request left at `sent`, for the rate drawn over time.
    pub fn pace(&self, sent: Instant, rate: f64) {
        let second = sent.saturating_duration_since(self.started).as_secs();
        let mut inner = self.inner.lock().unwrap();
        let bucket = inner.bucket(second);
        bucket.pace = bucket.pace.max(rate);
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner.lock().unwrap();
        let h = &inner.latency_us;
        let latency_ms = if h.is_empty() {
            Vec::new()
        } else {
            [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)]
                .into_iter()
                .map(|(name, q)| (name, h.value_at_percentile(q) as f64 / 1000.0))
                .collect()
        };
        let mut groups: Vec<(Kind, String, Group)> = inner
            .groups
            .iter()
            .map(|((kind, key), g)| {
                let mut g = g.clone();
                g.lines.sort_unstable();
                (*kind, key.clone(), g)
            })
            .collect();
        groups.sort_by(|a, b| b.2.count.cmp(&a.2.count).then(a.0.cmp(&b.0)));
        Snapshot {
            bucket_secs: inner.bucket_secs,
            buckets: inner.buckets.clone(),
            latency_ms,
            by_code: inner.by_code.clone(),
            groups,
            other_groups: inner.other_groups,
        }
    }
}

impl Inner {
    fn bucket(&mut self, second: u64) -> &mut Bucket {
        let mut index = (second / self.bucket_secs) as usize;
        while index >= MAX_BUCKETS {
            // Halve the resolution: merge neighbours, so the record stays bounded.
            self.buckets = self
                .buckets
                .chunks(2)
                .map(|pair| Bucket {
                    requests: pair.iter().map(|b| b.requests).sum(),
                    throttled: pair.iter().map(|b| b.throttled).sum(),
                    server_errors: pair.iter().map(|b| b.server_errors).sum(),
                    pace: pair.iter().map(|b| b.pace).fold(0.0, f64::max),
                })
                .collect();
            self.bucket_secs *= 2;
            index = (second / self.bucket_secs) as usize;
        }
        if self.buckets.len() <= index {
            self.buckets.resize(index + 1, Bucket::default());
        }
        &mut self.buckets[index]
    }

    fn group(&mut self, kind: Kind, key: String, example: String, line: u64) {
        let (key, example) = (clip(&key), clip(&example));
        let full = self.groups.len() >= MAX_GROUPS;
        let group = match self.groups.get_mut(&(kind, key.clone())) {
            Some(g) => g,
            None if full => {
                self.other_groups += 1;
                return;
            }
            None => self.groups.entry((kind, key)).or_insert(Group {
                example,
                ..Group::default()
            }),
        };
        group.count += 1;
        if group.lines.len() < LINES_PER_GROUP && group.lines.last() != Some(&line) {
            group.lines.push(line);
        }
    }
}

/// The API errors and warnings of an answer, or what went wrong without one, each as
/// (kind, `CODE TITLE`, first message).
fn troubles(attempt: &Attempt) -> Vec<(Kind, String, String)> {
    let answer = match attempt {
        Attempt::Answered(a) => a,
        Attempt::NotConnected(why) => {
            return vec![(Kind::Transport, transport_key(why), why.clone())]
        }
        Attempt::Lost(why) => return vec![(Kind::Transport, transport_key(why), why.clone())],
    };
    let mut out = Vec::new();
    for (kind, list) in [
        (Kind::Error, &answer.errors),
        (Kind::Warning, &answer.warnings),
    ] {
        for m in list {
            let code = m.code.map(|c| c.to_string()).unwrap_or_default();
            let key = format!("{code} {}", m.title).trim().to_string();
            out.push((kind, key, m.message.clone()));
        }
    }
    if let Some(problem) = &answer.body_problem {
        let key = format!("HTTP {} unreadable body", answer.status);
        out.push((Kind::Transport, key, problem.clone()));
    }
    out
}

/// The part of a transport error before its details ("could not connect", ...).
fn transport_key(why: &str) -> String {
    why.split(':').next().unwrap_or(why).trim().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_values_are_clipped_on_a_character_boundary() {
        assert_eq!(super::clip("short"), "short");
        let long = "é".repeat(1000);
        let clipped = super::clip(&long);
        assert!(clipped.starts_with(&"é".repeat(300)), "{clipped}");
        assert!(clipped.ends_with("… (2000 bytes in all)"), "{clipped}");
    }

    use super::*;
    use crate::client::{Answer, ApiMessage};

    #[test]
    fn a_long_run_keeps_a_bounded_number_of_buckets_and_every_request() {
        let tally = Tally::new();
        let start = tally.started;
        for s in 0..5000u64 {
            let at = start + Duration::from_secs(s);
            let attempt = Attempt::Answered(Answer {
                status: if s % 10 == 0 { 429 } else { 200 },
                ..Answer::default()
            });
            tally.attempt(2, at, Duration::from_millis(20), &attempt);
        }
        let snap = tally.snapshot();
        assert!(snap.buckets.len() <= MAX_BUCKETS, "{}", snap.buckets.len());
        assert_eq!(snap.buckets.iter().map(|b| b.requests).sum::<u64>(), 5000);
        assert_eq!(snap.buckets.iter().map(|b| b.throttled).sum::<u64>(), 500);
        assert_eq!(snap.by_code["429"], 500);
        assert_eq!(snap.bucket_secs, 16);
        let p50 = snap.latency_ms[0].1;
        assert!((19.0..=21.0).contains(&p50), "{p50}");
    }

    #[test]
    fn errors_are_grouped_by_code_with_their_first_lines() {
        let tally = Tally::new();
        let bad = Attempt::Answered(Answer {
            status: 400,
            errors: vec![ApiMessage {
                code: Some(100006),
                title: "INVALID_REQUEST_DATA".into(),
                message: "bad <data>".into(),
            }],
            ..Answer::default()
        });
        for line in 2..12 {
            tally.attempt(line, Instant::now(), Duration::ZERO, &bad);
        }
        tally.attempt(
            40,
            Instant::now(),
            Duration::ZERO,
            &Attempt::Lost("connection lost: reset".into()),
        );
        let snap = tally.snapshot();
        let (kind, key, group) = &snap.groups[0];
        assert_eq!(
            (*kind, key.as_str()),
            (Kind::Error, "100006 INVALID_REQUEST_DATA")
        );
        assert_eq!(group.count, 10);
        assert_eq!(
            group.lines,
            [2, 3, 4, 5, 6],
            "the first five, in line order"
        );
        assert_eq!(group.example, "bad <data>");
        assert_eq!(snap.groups[1].1, "connection lost");
    }
}
