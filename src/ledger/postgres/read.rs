//! What the PostgreSQL ledger answers: a run's rows, the runs, an invoice's history.

use anyhow::Result;
use chrono::{DateTime, Utc};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Row};

use super::write::lock_key;
use super::RUN_LOCKS;
use crate::domain::{from_millis, Counts, Outcome, RunId, SkipKind, Status};
use crate::ledger::{HistoryEntry, PauseState, ResultRow, RunRecord};

/// Every row of `run` in input order, streamed (a million rows never sit in memory).
pub fn results(
    client: &mut Client,
    run: RunId,
    f: &mut dyn FnMut(ResultRow) -> Result<()>,
) -> Result<()> {
    let sql = "SELECT r.seq, r.line, r.dept, r.invoice, coalesce(o.status, r.status),
                      coalesce(o.skip, r.skip), o.http_status, coalesce(o.attempts, 0),
                      o.payment_link, o.invoice_link, o.text_sent, o.email_sent,
                      coalesce(o.errors, ''), coalesce(o.warnings, ''),
                      coalesce(o.message, r.message), r.completed_at, o.at_ms
               FROM results r LEFT JOIN LATERAL (SELECT * FROM outcomes WHERE run_id = r.run_id AND seq = r.seq OFFSET 0) o ON true
               WHERE r.run_id = $1 ORDER BY r.seq";
    let params: [&(dyn ToSql + Sync); 1] = [&run.0];
    let mut rows = client.query_raw(sql, params)?;
    while let Some(row) = rows.next()? {
        f(result_row(&row, run))?;
    }
    Ok(())
}

fn result_row(row: &Row, run: RunId) -> ResultRow {
    let status: String = row.get(4);
    let skip: Option<String> = row.get(5);
    let admitted: String = row.get(15);
    let completed_at = match row.get::<_, Option<i64>>(16) {
        Some(ms) => from_millis(ms),
        None => DateTime::parse_from_rfc3339(&admitted)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
    };
    let outcome = Outcome {
        status: Status::Unknown,
        skip: skip.as_deref().and_then(SkipKind::parse),
        http_status: row.get::<_, Option<i32>>(6).map(|s| s as u16),
        attempts: row.get::<_, i32>(7) as u32,
        payment_link: row.get(8),
        invoice_link: row.get(9),
        text_sent: row.get(10),
        email_sent: row.get(11),
        errors: row.get(12),
        warnings: row.get(13),
        message: row.get(14),
        completed_at,
        earlier: Vec::new(),
    };
    let key = match (row.get(2), row.get(3)) {
        (Some(dept), Some(invoice)) => Some((dept, invoice)),
        _ => None,
    };
    let place = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
    ResultRow::read(place, key, &status, outcome, run)
}

/// The last `last` runs, newest first, or the one run `only`.
pub fn runs(
    client: &mut Client,
    last: Option<usize>,
    only: Option<RunId>,
) -> Result<Vec<RunRecord>> {
    let rows = client.query(
        "SELECT id, started_ms, finished_ms, host, os_user, input, input_sha256, target, counts,
                exit_code, folded,
                EXISTS (SELECT 1 FROM pg_locks l
                        WHERE l.locktype = 'advisory' AND l.granted AND l.classid::int = $3
                          AND l.objid::int = runs.id::int AND l.objsubid = 2
                          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())),
                paused, pause_by, pause_ms
         FROM runs
         WHERE ($2::bigint IS NULL OR id = $2)
         ORDER BY id DESC LIMIT $1",
        &[&(last.unwrap_or(1) as i64), &only.map(|r| r.0), &RUN_LOCKS],
    )?;
    rows.iter().map(|row| run_record(client, row)).collect()
}

fn run_record(client: &mut Client, row: &Row) -> Result<RunRecord> {
    let run = RunId(row.get(0));
    let stored: Option<String> = row.get(8);
    let counts = match stored.as_deref().and_then(Counts::from_record) {
        Some(c) => c,
        None => super::write::count_rows(client, run)?,
    };
    let (exit_code, folded, alive): (Option<i32>, bool, bool) =
        (row.get(9), row.get(10), row.get(11));
    let pause = pause_of(row, 12);
    let state = match (exit_code, folded, alive) {
        (Some(_), _, _) => "finished",
        (None, false, true) if pause.paused => "paused",
        (None, false, true) => "running",
        _ => "died",
    };
    let pause = (state == "paused").then_some(pause);
    let _ = lock_key;
    Ok(RunRecord {
        id: run.to_string(),
        started: from_millis(row.get(1)),
        finished: row.get::<_, Option<i64>>(2).map(from_millis),
        host: row.get(3),
        user: row.get(4),
        input: row.get(5),
        input_sha256: row.get(6),
        target: row.get(7),
        skipped_unknown: counts.skipped_unknown,
        already_paid: counts.already_paid,
        counts,
        exit_code: exit_code.map(i64::from),
        state: state.to_string(),
        paused_by: pause.as_ref().and_then(|p| p.by.clone()),
        paused_at: pause.and_then(|p| p.at),
    })
}

/// Whether `run` is paused through the ledger (see `ledger::pausing`).
pub fn pause_state(client: &mut Client, run: RunId) -> Result<PauseState> {
    let row = client.query_opt(
        "SELECT paused, pause_by, pause_ms FROM runs WHERE id = $1",
        &[&run.0],
    )?;
    let row = row.ok_or_else(|| anyhow::anyhow!("no run {run} in the ledger"))?;
    Ok(pause_of(&row, 0))
}

/// The pause columns, from `first` on.
fn pause_of(row: &Row, first: usize) -> PauseState {
    PauseState {
        paused: row.get(first),
        by: row.get(first + 1),
        at: row.get::<_, Option<i64>>(first + 2).map(from_millis),
    }
}

/// Every row of every run that had this invoice, each request before a row's last, and
/// every verdict a person recorded, oldest first.
pub fn history(
    client: &mut Client,
    invoice: &str,
    dept: Option<&str>,
) -> Result<Vec<HistoryEntry>> {
    let rows = client.query(
        "SELECT r.run_id, r.dept, coalesce(o.status, r.status), o.http_status, o.text_sent,
                o.email_sent, o.payment_link, o.invoice_link, coalesce(o.errors, ''),
                coalesce(o.message, r.message), o.at_ms, u.target, r.completed_at, u.started_ms,
                coalesce(o.attempts, 0), r.seq
         FROM results r JOIN runs u ON u.id = r.run_id
         LEFT JOIN LATERAL (SELECT * FROM outcomes WHERE run_id = r.run_id AND seq = r.seq OFFSET 0) o ON true
         WHERE r.invoice = $1 AND ($2::text IS NULL OR r.dept = $2)
         ORDER BY r.run_id, r.seq",
        &[&invoice, &dept],
    )?;
    let mut entries = Vec::new();
    for row in &rows {
        entries.extend(earlier_attempts(client, row)?);
        entries.push(row_entry(row));
    }
    entries.extend(resolutions(client, invoice, dept)?);
    entries.sort_by_key(|e| e.at);
    Ok(entries)
}

fn row_entry(row: &Row) -> HistoryEntry {
    let admitted: String = row.get(12);
    let at = HistoryEntry::row_time(row.get(10), &admitted, row.get(13));
    let requests = i64::from(row.get::<_, i32>(14));
    let (what, status) = HistoryEntry::row_words(row.get(2), requests);
    HistoryEntry {
        http_status: row.get::<_, Option<i32>>(3).map(|s| s as u16),
        text_sent: row.get(4),
        email_sent: row.get(5),
        payment_link: row.get(6),
        invoice_link: row.get(7),
        errors: row.get(8),
        message: row.get(9),
        ..HistoryEntry::new(at, RunId(row.get(0)), row.get(11), row.get(1), what, status)
    }
}

fn earlier_attempts(client: &mut Client, row: &Row) -> Result<Vec<HistoryEntry>> {
    let (run, seq): (i64, i64) = (row.get(0), row.get(15));
    let found = client.query(
        "SELECT at_ms, http_status, what, errors FROM attempts WHERE run_id = $1 AND seq = $2 ORDER BY n",
        &[&run, &seq],
    )?;
    Ok(found
        .iter()
        .map(|a| HistoryEntry {
            http_status: a.get::<_, Option<i32>>(1).map(|s| s as u16),
            errors: a.get(3),
            message: a.get(2),
            ..HistoryEntry::new(
                from_millis(a.get(0)),
                RunId(run),
                row.get(11),
                row.get(1),
                "request",
                "retried".into(),
            )
        })
        .collect())
}

fn resolutions(
    client: &mut Client,
    invoice: &str,
    dept: Option<&str>,
) -> Result<Vec<HistoryEntry>> {
    let found = client.query(
        "SELECT at_ms, by_user, verdict, dept, target, run_id, file, line FROM resolutions
         WHERE invoice = $1 AND ($2::text IS NULL OR dept = $2) ORDER BY id",
        &[&invoice, &dept],
    )?;
    Ok(found
        .iter()
        .map(|r| {
            let (by, verdict, file, line): (String, String, String, i64) =
                (r.get(1), r.get(2), r.get(6), r.get(7));
            let place = (RunId(r.get(5)), r.get(4), r.get(3));
            HistoryEntry::resolution(from_millis(r.get(0)), place, verdict, (&by, &file, line))
        })
        .collect())
}
