//! `resolve` (SPEC section 10): a person's verdicts on unknown rows, judged against what
//! the ledger holds and recorded all or nothing. The rules live here; each store only
//! finds and records.

use std::path::Path;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};

use super::admission::LastStatus;
use super::{ResolveRequest, Resolved, Verdict};
use crate::domain::{from_millis, rfc3339};

/// What the ledger holds of the row a verdict is about (its `sends` record).
pub struct SendState {
    pub status: String,
    /// The run whose request it is about.
    pub run: i64,
    pub resolution: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_ms: Option<i64>,
}

/// What a store does for `resolve`.
pub trait Verdicts {
    /// The run that wrote `results` last, if one did: its target.
    fn target_of_file(&mut self, results: &Path) -> Result<Option<String>>;
    /// The targets under which this row is unknown.
    fn unknown_under(&mut self, dept: &str, invoice: &str) -> Result<Vec<String>>;
    fn state(&mut self, target: &str, dept: &str, invoice: &str) -> Result<Option<SendState>>;
    /// Records the verdicts (each with its run) in one transaction.
    fn record(
        &mut self,
        target: &str,
        verdicts: &[(&Verdict, i64)],
        request: &ResolveRequest,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

pub fn resolve(
    store: &mut impl Verdicts,
    request: &ResolveRequest,
    now: DateTime<Utc>,
) -> Result<Resolved> {
    let verdicts = request.verdicts;
    let target = match request.target {
        Some(t) => t.to_string(),
        // Unknown under no target: every verdict is refused below.
        None => target(store, request.results, verdicts)?.unwrap_or_default(),
    };
    let mut report = Resolved::default();
    let mut record: Vec<(&Verdict, i64)> = Vec::new();
    for v in verdicts {
        let state = store.state(&target, &v.dept, &v.invoice)?;
        match judge(v, verdicts, state) {
            // The same verdict typed on two lines is one verdict.
            Judged::Record(_) if record.iter().any(|(r, _)| same_row(r, v)) => report.already += 1,
            Judged::Record(run) => record.push((v, run)),
            Judged::Already => report.already += 1,
            Judged::Refused(why) => report.refused.push((v.line, why)),
        }
    }
    if !report.refused.is_empty() || request.refused_already {
        return Ok(report);
    }
    store.record(&target, &record, request, now)?;
    for (v, _) in record {
        if v.delivered {
            report.delivered += 1;
        } else {
            report.not_delivered += 1;
        }
    }
    Ok(report)
}

/// The target a results file's verdicts are about: the one its writing run sent to, or
/// else the one target under which its rows are unknown.
fn target(
    store: &mut impl Verdicts,
    results: &Path,
    verdicts: &[Verdict],
) -> Result<Option<String>> {
    if let Some(t) = store.target_of_file(results)? {
        return Ok(Some(t));
    }
    let mut targets = std::collections::BTreeSet::new();
    for v in verdicts {
        targets.extend(store.unknown_under(&v.dept, &v.invoice)?);
    }
    if targets.len() > 1 {
        let list: Vec<_> = targets.into_iter().collect();
        bail!(
            "{}: its rows are unknown under more than one target ({}); say which with --target",
            results.display(),
            list.join(", ")
        );
    }
    Ok(targets.into_iter().next())
}

enum Judged {
    /// To be recorded; the run whose request it is about.
    Record(i64),
    Already,
    Refused(String),
}

fn word(delivered: bool) -> &'static str {
    if delivered {
        "delivered"
    } else {
        "not delivered"
    }
}

fn judge(v: &Verdict, all: &[Verdict], state: Option<SendState>) -> Judged {
    let conflict = all
        .iter()
        .find(|o| same_row(o, v) && o.delivered != v.delivered);
    if let Some(other) = conflict {
        return Judged::Refused(format!(
            "says {} but line {} says {} for the same row",
            word(v.delivered),
            other.line,
            word(other.delivered)
        ));
    }
    let Some(state) = state.filter(|s| s.status != "new") else {
        return Judged::Refused(format!(
            "{} was never sent with this ledger; only unknown rows take a verdict",
            v.invoice
        ));
    };
    if LastStatus::from_stored(&state.status) != LastStatus::Unknown {
        return Judged::Refused(format!(
            "{} is {} in the ledger, not unknown; only unknown rows take a verdict",
            v.invoice, state.status
        ));
    }
    match state.resolution {
        Some(r) if r == word(v.delivered) => Judged::Already,
        Some(r) => Judged::Refused(format!(
            "{} was already resolved {r} by {} on {}",
            v.invoice,
            state.resolved_by.unwrap_or_default(),
            state
                .resolved_ms
                .map(|ms| rfc3339(from_millis(ms)))
                .unwrap_or_default()
        )),
        None => Judged::Record(state.run),
    }
}

fn same_row(a: &Verdict, b: &Verdict) -> bool {
    a.dept == b.dept && a.invoice == b.invoice
}

/// Checked in the transaction that records a verdict: the row must still be the unknown
/// request it was judged to be. A run on the same ledger may have sent it again, or a
/// person resolved it, since; then nothing of the file is recorded.
pub fn still_as_judged(changed: u64, v: &Verdict) -> Result<()> {
    if changed != 1 {
        bail!(
            "line {}: {} changed in the ledger while it was being resolved (another run, or \
             another resolve?); nothing was recorded: run resolve again",
            v.line,
            v.invoice
        );
    }
    Ok(())
}

/// The words a verdict is stored as.
pub fn stored(v: &Verdict) -> &'static str {
    word(v.delivered)
}
