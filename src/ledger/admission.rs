//! The rerun rules (SPEC sections 7 and 10) as one pure function of what the ledger knows
//! of an invoice, the run's policy and the time. The stores only fetch and record.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Entry, EntryKind};
use crate::domain::{from_millis, rfc3339, RunId, Skip, SkipKind, Status, StopReason};
use crate::input::Request;

/// How admission treats what earlier runs did.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// A row sent (or partial) this recently is skipped.
    pub dedupe_window: Duration,
    /// Send even within the dedupe window.
    pub resend: bool,
    /// Send rows an earlier run may have delivered.
    pub retry_unknown: bool,
    /// Per-row history older than this is pruned when a run starts.
    pub retention: Duration,
}

/// How the last request an earlier run made for the invoice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastStatus {
    Sent,
    Partial,
    Failed,
    /// No answer was read: it may have been delivered (this includes requests that were in
    /// flight when their run died).
    Unknown,
}

impl LastStatus {
    /// What a stored status says of the last request. Anything not known to have been
    /// refused counts as maybe delivered.
    pub fn from_stored(status: &str) -> LastStatus {
        match status {
            "sent" => LastStatus::Sent,
            "partial" => LastStatus::Partial,
            "failed" | "not_sent" => LastStatus::Failed,
            _ => LastStatus::Unknown,
        }
    }
}

/// A person's verdict on an unknown row (`resolve`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub delivered: bool,
    pub by: String,
    pub on: DateTime<Utc>,
}

/// What the ledger knows of an invoice (per target and department) from earlier runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prior {
    pub status: LastStatus,
    pub run: RunId,
    pub at: DateTime<Utc>,
    /// The last time it was sent (or partial), whatever happened after.
    pub sent: Option<(RunId, DateTime<Utc>)>,
    /// Set only while `status` is `Unknown`.
    pub resolution: Option<Resolution>,
    /// Another run holds it and is alive (a shared ledger): run and host.
    pub claimed_by: Option<(RunId, String)>,
}

/// A `sends` record's columns, as both stores keep them.
pub struct StoredPrior {
    pub status: String,
    pub run: i64,
    pub at_ms: i64,
    /// `sent_run`, `sent_ms`.
    pub sent: (Option<i64>, Option<i64>),
    /// `resolution`, `resolved_by`, `resolved_ms`.
    pub resolution: (Option<String>, Option<String>, Option<i64>),
}

impl Prior {
    pub fn from_stored(s: StoredPrior, claimed_by: Option<(RunId, String)>) -> Prior {
        Prior {
            status: LastStatus::from_stored(&s.status),
            run: RunId(s.run),
            at: from_millis(s.at_ms),
            sent: s
                .sent
                .0
                .zip(s.sent.1)
                .map(|(r, ms)| (RunId(r), from_millis(ms))),
            resolution: match s.resolution {
                (Some(verdict), Some(by), Some(ms)) => Some(Resolution {
                    delivered: verdict == "delivered",
                    by,
                    on: from_millis(ms),
                }),
                _ => None,
            },
            claimed_by,
        }
    }
}

/// What admission decides for a valid row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it; the note, if any, goes into the row's message.
    Send {
        note: Option<String>,
    },
    Skip(Skip),
}

/// What admission makes of one input record, given what the ledger knows of it: the row's
/// key, and either `Ok(request, note)` (send it) or the status, skip and message it ends
/// with now.
pub type Judgement<'e> = (
    Option<(&'e str, &'e str)>,
    Result<(&'e Request, Option<String>), (Status, Option<SkipKind>, String)>,
);

pub fn judge<'e>(
    entry: &'e Entry,
    prior: Option<&Prior>,
    policy: &Policy,
    now: DateTime<Utc>,
    stopped: Option<&StopReason>,
) -> Judgement<'e> {
    match &entry.kind {
        EntryKind::Invalid(m) => (None, Err((Status::Invalid, None, m.clone()))),
        EntryKind::Duplicate {
            first_line,
            dept,
            invoice,
        } => {
            let m = format!("duplicate of line {first_line}");
            (Some((dept, invoice)), Err((Status::Duplicate, None, m)))
        }
        EntryKind::Valid(request) => {
            let decision = match (decide(prior, policy, now), stopped) {
                (Decision::Skip(s), _) => Err((Status::Skipped, Some(s.kind()), s.message())),
                // Rows read after the run stopped are recorded, not sent.
                (Decision::Send { .. }, Some(stop)) => {
                    Err((Status::NotSent, None, stop.not_sent_message()))
                }
                (Decision::Send { note }, None) => Ok((request, note)),
            };
            (entry.kind.key(), decision)
        }
    }
}

pub fn decide(prior: Option<&Prior>, policy: &Policy, now: DateTime<Utc>) -> Decision {
    let send = Decision::Send { note: None };
    let Some(p) = prior else { return send };
    if let Some((run, host)) = &p.claimed_by {
        return Decision::Skip(Skip::BeingSent {
            run: *run,
            host: host.clone(),
        });
    }
    let within_window = |at: DateTime<Utc>| {
        !policy.resend && (now - at).to_std().unwrap_or_default() < policy.dedupe_window
    };
    let sent_earlier = || {
        p.sent
            .filter(|(_, at)| within_window(*at))
            .map(|(run, at)| Decision::Skip(Skip::SentEarlier { run, at }))
    };
    match (p.status, &p.resolution) {
        (LastStatus::Unknown, Some(r)) if r.delivered => {
            // A person found it delivered: it counts as sent when it was sent.
            if within_window(p.at) {
                Decision::Skip(Skip::ResolvedDelivered {
                    by: r.by.clone(),
                    on: r.on,
                    run: p.run,
                })
            } else {
                send
            }
        }
        // Not delivered: that request did not reach the customer, but an earlier one may
        // have (a --resend of a sent row): the dedupe window still counts from that one.
        (LastStatus::Unknown, Some(r)) => sent_earlier().unwrap_or_else(|| Decision::Send {
            note: Some(format!(
                "resolved not delivered by {} on {}, so sent again",
                r.by,
                rfc3339(r.on)
            )),
        }),
        (LastStatus::Unknown, None) if !policy.retry_unknown => {
            Decision::Skip(Skip::MaybeDelivered {
                run: p.run,
                at: p.at,
            })
        }
        _ => sent_earlier().unwrap_or(send),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn policy(resend: bool, retry_unknown: bool) -> Policy {
        Policy {
            dedupe_window: Duration::from_secs(12 * 3600),
            resend,
            retry_unknown,
            retention: Duration::from_secs(400 * 86400),
        }
    }

    fn prior(status: LastStatus, hours_ago: i64, sent_hours_ago: Option<i64>) -> Prior {
        let now = now();
        Prior {
            status,
            run: RunId(7),
            at: now - TimeDelta::hours(hours_ago),
            sent: sent_hours_ago.map(|h| (RunId(6), now - TimeDelta::hours(h))),
            resolution: None,
            claimed_by: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-29T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn resolved(delivered: bool, hours_ago: i64) -> Prior {
        Prior {
            resolution: Some(Resolution {
                delivered,
                by: "ana".into(),
                on: now(),
            }),
            ..prior(LastStatus::Unknown, hours_ago, None)
        }
    }

    /// The short name of a decision, for the table.
    fn name(d: Decision) -> &'static str {
        use crate::domain::SkipKind::*;
        match d {
            Decision::Send { note: None } => "send",
            Decision::Send { note: Some(_) } => "send (noted)",
            Decision::Skip(s) => match s.kind() {
                SentEarlier => "skip: sent earlier",
                MaybeDelivered => "skip: maybe delivered",
                ResolvedDelivered => "skip: resolved delivered",
                BeingSent => "skip: being sent",
                AlreadyPaid => "skip: paid",
            },
        }
    }

    #[test]
    fn the_rerun_rules_as_a_table() {
        use LastStatus::*;
        let claimed = Prior {
            claimed_by: Some((RunId(9), "pod-b".into())),
            ..prior(Failed, 1, None)
        };
        // (what the ledger knows, resend, retry_unknown, decision)
        let table: Vec<(&str, Option<Prior>, bool, bool, &str)> = vec![
            ("first seen", None, false, false, "send"),
            (
                "sent 1 h ago",
                Some(prior(Sent, 1, Some(1))),
                false,
                false,
                "skip: sent earlier",
            ),
            (
                "partial 1 h ago",
                Some(prior(Partial, 1, Some(1))),
                false,
                false,
                "skip: sent earlier",
            ),
            (
                "sent 13 h ago",
                Some(prior(Sent, 13, Some(13))),
                false,
                false,
                "send",
            ),
            (
                "sent 1 h ago, --resend",
                Some(prior(Sent, 1, Some(1))),
                true,
                false,
                "send",
            ),
            (
                "failed, never sent",
                Some(prior(Failed, 1, None)),
                false,
                false,
                "send",
            ),
            // A failed --resend does not forget the real send before it.
            (
                "failed after a send 1 h ago",
                Some(prior(Failed, 0, Some(1))),
                false,
                false,
                "skip: sent earlier",
            ),
            (
                "unknown",
                Some(prior(Unknown, 1, None)),
                false,
                false,
                "skip: maybe delivered",
            ),
            (
                "unknown a month ago",
                Some(prior(Unknown, 720, None)),
                false,
                false,
                "skip: maybe delivered",
            ),
            (
                "unknown, --retry-unknown",
                Some(prior(Unknown, 1, None)),
                false,
                true,
                "send",
            ),
            (
                "unknown, --resend only",
                Some(prior(Unknown, 1, None)),
                true,
                false,
                "skip: maybe delivered",
            ),
            (
                "resolved delivered 1 h ago",
                Some(resolved(true, 1)),
                false,
                false,
                "skip: resolved delivered",
            ),
            (
                "resolved delivered, --retry-unknown",
                Some(resolved(true, 1)),
                false,
                true,
                "skip: resolved delivered",
            ),
            (
                "resolved delivered 13 h ago",
                Some(resolved(true, 13)),
                false,
                false,
                "send",
            ),
            (
                "resolved delivered, --resend",
                Some(resolved(true, 1)),
                true,
                false,
                "send",
            ),
            (
                "resolved not delivered",
                Some(resolved(false, 1)),
                false,
                false,
                "send (noted)",
            ),
            (
                "resolved not delivered, sent by another run 2 h ago",
                Some(Prior {
                    sent: Some((RunId(6), now() - chrono::TimeDelta::hours(2))),
                    ..resolved(false, 1)
                }),
                false,
                false,
                "skip: sent earlier",
            ),
            (
                "claimed by a live run",
                Some(claimed),
                true,
                true,
                "skip: being sent",
            ),
        ];
        for (what, prior, resend, retry_unknown, want) in table {
            let got = name(decide(
                prior.as_ref(),
                &policy(resend, retry_unknown),
                now(),
            ));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn skips_say_which_run_and_when() {
        let d = decide(
            Some(&prior(LastStatus::Sent, 2, Some(2))),
            &policy(false, false),
            now(),
        );
        let Decision::Skip(skip) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            skip.message(),
            "sent 2026-11-29T06:00:00Z by run r6; within the dedupe window (--resend to send again)"
        );
        let d = decide(Some(&resolved(false, 1)), &policy(false, false), now());
        assert_eq!(
            d,
            Decision::Send {
                note: Some(
                    "resolved not delivered by ana on 2026-11-29T08:00:00Z, so sent again".into()
                )
            }
        );
    }
}
