//! Reading a run back: its rows, the `runs` list, an invoice's history.

use super::*;

/// Every row of a run as the results file shows it, by id range.
pub(super) const FINAL_ROWS: &str = "SELECT r.seq, r.line, r.dept, r.invoice,
        coalesce(o.status, r.status), coalesce(o.skip, r.skip), o.http_status,
        coalesce(o.attempts, 0), o.payment_link, o.invoice_link, o.text_sent, o.email_sent,
        coalesce(o.errors, ''), coalesce(o.warnings, ''), coalesce(o.message, r.message),
        coalesce(nullif(o.completed_at, ''), r.completed_at),
        CASE WHEN o.completed_at = '' THEN o.at_ms END
     FROM results r LEFT JOIN outcomes o ON o.id = r.id";

pub(super) fn final_row(row: &rusqlite::Row, run: RunId) -> Result<ResultRow> {
    let status: String = row.get(4)?;
    let skip: Option<String> = row.get(5)?;
    let completed: String = row.get(15)?;
    // An outcome keeps its time in `at_ms` alone (see `write_outcome`).
    let outcome_ms: Option<i64> = row.get(16)?;
    let outcome = Outcome {
        status: Status::Unknown,
        skip: skip.as_deref().and_then(SkipKind::parse),
        http_status: row.get(6)?,
        attempts: row.get(7)?,
        payment_link: row.get(8)?,
        invoice_link: row.get(9)?,
        text_sent: row.get(10)?,
        email_sent: row.get(11)?,
        errors: row.get(12)?,
        warnings: row.get(13)?,
        message: row.get(14)?,
        completed_at: match outcome_ms {
            Some(ms) => from_millis(ms),
            None => DateTime::parse_from_rfc3339(&completed)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
        },
        earlier: Vec::new(),
    };
    let key = match (row.get(2)?, row.get(3)?) {
        (Some(dept), Some(invoice)) => Some((dept, invoice)),
        _ => None,
    };
    let place = (row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64);
    Ok(ResultRow::read(place, key, &status, outcome, run))
}

pub(super) const RUNS: &str =
    "SELECT id, started_ms, finished_ms, host, os_user, input, input_sha256,
        target, counts, exit_code, pid, folded, paused, pause_by, pause_ms FROM runs";

/// A `runs` row as stored.
pub(super) struct RawRun {
    id: i64,
    started_ms: i64,
    finished_ms: Option<i64>,
    host: String,
    user: String,
    input: String,
    sha256: String,
    target: String,
    counts: Option<String>,
    exit_code: Option<i64>,
    pid: i64,
    folded: bool,
    pause: PauseState,
}

impl RawRun {
    pub(super) fn read(r: &rusqlite::Row) -> rusqlite::Result<RawRun> {
        Ok(RawRun {
            id: r.get(0)?,
            started_ms: r.get(1)?,
            finished_ms: r.get(2)?,
            host: r.get(3)?,
            user: r.get(4)?,
            input: r.get(5)?,
            sha256: r.get(6)?,
            target: r.get(7)?,
            counts: r.get(8)?,
            exit_code: r.get(9)?,
            pid: r.get(10)?,
            folded: r.get(11)?,
            pause: PauseState {
                paused: r.get(12)?,
                by: r.get(13)?,
                at: r.get::<_, Option<i64>>(14)?.map(from_millis),
            },
        })
    }

    pub(super) fn record(self, conn: &Connection) -> Result<RunRecord> {
        let run = RunId(self.id);
        let counts = match self.counts.as_deref().and_then(Counts::from_record) {
            Some(c) => c,
            None => count_rows(conn, run)?,
        };
        let state = match (self.exit_code, self.folded) {
            (Some(_), _) => "finished",
            (None, false) if self.alive() && self.pause.paused => "paused",
            (None, false) if self.alive() => "running",
            _ => "died",
        };
        let pause = (state == "paused").then_some(self.pause);
        Ok(RunRecord {
            id: run.to_string(),
            started: from_millis(self.started_ms),
            finished: self.finished_ms.map(from_millis),
            host: self.host,
            user: self.user,
            input: self.input,
            input_sha256: self.sha256,
            target: self.target,
            skipped_unknown: counts.skipped_unknown,
            already_paid: counts.already_paid,
            counts,
            exit_code: self.exit_code,
            state: state.to_string(),
            paused_by: pause.as_ref().and_then(|p| p.by.clone()),
            paused_at: pause.and_then(|p| p.at),
        })
    }

    /// Whether the process that ran it is still there: only this host can tell.
    pub(super) fn alive(&self) -> bool {
        let here = whoami::fallible::hostname().unwrap_or_default();
        here == self.host && Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// Every row of every run that had this invoice, with each of its earlier requests.
pub(super) fn history_rows(
    conn: &Connection,
    invoice: &str,
    dept: Option<&str>,
) -> Result<Vec<HistoryEntry>> {
    // Folded runs are found through the index; a run not folded yet (running, or died
    // since) by reading its rows. CROSS JOIN and `+` pin that plan: runs outside, then
    // each unfolded run's id range; left to itself the planner scans every result row.
    let mut stmt = conn.prepare(
        "SELECT r.id, r.dept, coalesce(o.status, r.status), o.http_status, o.text_sent,
                o.email_sent, o.payment_link, o.invoice_link, coalesce(o.errors, ''),
                coalesce(o.message, r.message), o.at_ms, u.target, u.id, r.completed_at, u.started_ms,
                coalesce(o.attempts, 0)
         FROM results r JOIN runs u ON u.id = r.run_id LEFT JOIN outcomes o ON o.id = r.id
         WHERE r.id IN (
                 SELECT id FROM by_invoice WHERE key = invoice_key(?1)
                 UNION ALL
                 SELECT r2.id FROM runs u2 CROSS JOIN results r2
                     ON r2.id BETWEEN u2.id * 4294967296 AND u2.id * 4294967296 + 4294967295
                 WHERE u2.folded = 0 AND +r2.invoice = ?1)
           AND r.invoice = ?1 AND (?2 IS NULL OR r.dept = ?2)
         ORDER BY r.id",
    )?;
    let mut rows = stmt.query(params![invoice, dept])?;
    let mut entries = Vec::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let department: String = r.get(1)?;
        let target: String = r.get(11)?;
        let run = RunId(r.get(12)?);
        entries.extend(earlier_attempts(conn, id, run, &target, &department)?);
        let admitted: String = r.get(13)?;
        let at = HistoryEntry::row_time(r.get(10)?, &admitted, r.get(14).unwrap_or_default());
        let (what, status) = HistoryEntry::row_words(r.get(2)?, r.get(15)?);
        entries.push(HistoryEntry {
            http_status: r.get(3)?,
            text_sent: r.get(4)?,
            email_sent: r.get(5)?,
            payment_link: r.get(6)?,
            invoice_link: r.get(7)?,
            errors: r.get(8)?,
            message: r.get(9)?,
            ..HistoryEntry::new(at, run, target, department, what, status)
        });
    }
    Ok(entries)
}

pub(super) fn earlier_attempts(
    conn: &Connection,
    id: i64,
    run: RunId,
    target: &str,
    department: &str,
) -> Result<Vec<HistoryEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, http_status, what, errors FROM attempts WHERE id = ?1 ORDER BY n",
    )?;
    let found = stmt.query_map(params![id], |r| {
        Ok(HistoryEntry {
            http_status: r.get(1)?,
            errors: r.get(3)?,
            message: r.get(2)?,
            ..HistoryEntry::new(
                from_millis(r.get(0)?),
                run,
                target.to_string(),
                department.to_string(),
                "request",
                "retried".into(),
            )
        })
    })?;
    Ok(found.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn history_resolutions(
    conn: &Connection,
    invoice: &str,
    dept: Option<&str>,
) -> Result<Vec<HistoryEntry>> {
    let mut stmt = conn.prepare(
        "SELECT at_ms, by_user, verdict, dept, target, run_id, file, line FROM resolutions
         WHERE invoice = ?1 AND (?2 IS NULL OR dept = ?2) ORDER BY id",
    )?;
    let found = stmt.query_map(params![invoice, dept], |r| {
        let (by, verdict): (String, String) = (r.get(1)?, r.get(2)?);
        let (file, line): (String, i64) = (r.get(6)?, r.get(7)?);
        let place = (RunId(r.get(5)?), r.get(4)?, r.get(3)?);
        Ok(HistoryEntry::resolution(
            from_millis(r.get(0)?),
            place,
            verdict,
            (&by, &file, line),
        ))
    })?;
    Ok(found.collect::<rusqlite::Result<_>>()?)
}

/// Whether `run` is paused through the ledger (see `ledger::pausing`).
pub(super) fn pause_state(conn: &Connection, run: RunId) -> Result<PauseState> {
    let state = conn
        .query_row(
            "SELECT paused, pause_by, pause_ms FROM runs WHERE id = ?1",
            [run.0],
            |r| {
                Ok(PauseState {
                    paused: r.get(0)?,
                    by: r.get(1)?,
                    at: r.get::<_, Option<i64>>(2)?.map(from_millis),
                })
            },
        )
        .optional()?;
    state.with_context(|| format!("no run {run} in the ledger"))
}
