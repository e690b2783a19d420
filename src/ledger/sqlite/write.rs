//! What a run writes: admissions, outcomes, folding into `sends`, settling and pruning.

use super::*;

impl SqliteStore {
    /// Settles every run that died before it could settle itself, oldest first, so that
    /// what it left becomes what this run's admission sees.
    pub(super) fn settle_dead_runs(&mut self, now: DateTime<Utc>) -> Result<()> {
        let dead: Vec<(i64, Option<String>, bool)> = self
            .conn
            .prepare("SELECT id, boot_id, marks_durable FROM runs WHERE folded = 0 ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let this_boot = boot_id();
        for (id, boot, marks_durable) in dead {
            let run = RunId(id);
            let file = self.journal_file(run);
            // Which rows left, and what came back: the journal, if the machine has not
            // restarted since (its writes were never flushed); the marks table of a
            // schema-2 run (each of its marks was flushed before its request left);
            // otherwise nobody can tell.
            let evidence = if marks_durable {
                Evidence::Table
            } else if same_boot(boot.as_deref(), this_boot.as_deref()) && file.exists() {
                Evidence::Journal(&file)
            } else {
                Evidence::Nothing
            };
            let counts = self.settle_run(run, now, evidence, &Unfinished::dead(run))?;
            tracing::info!(
                "settled run {run}, which died before it finished: {}",
                counts.describe()
            );
            let _ = std::fs::remove_file(&file);
        }
        Ok(())
    }

    /// Gives every unfinished row of `run` its journalled answer, or else the status
    /// `rule` gives it by its leaving mark, folds the run into `sends` and `by_invoice`,
    /// and records its counts, in one durable commit.
    pub(super) fn settle_run(
        &mut self,
        run: RunId,
        now: DateTime<Utc>,
        evidence: Evidence,
        rule: &Unfinished,
    ) -> Result<Counts> {
        let tx = writing(&mut self.conn)?;
        let (first, last) = run_rows(run);
        let open: HashSet<u64> = tx
            .prepare(
                "SELECT r.seq FROM results r LEFT JOIN outcomes o ON o.id = r.id
                 WHERE r.id BETWEEN ?1 AND ?2 AND r.status = 'pending' AND o.id IS NULL",
            )?
            .query_map(params![first, last], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let journal = match evidence {
            Evidence::Journal(path) => Some(Journal::read(path, &open)?),
            Evidence::Table => Some(Journal::of_marks(marked_in_table(&tx, run)?)),
            Evidence::Nothing => None,
        };
        for &seq in &open {
            if let Some(answer) = journal.as_ref().and_then(|j| j.answer(seq)) {
                write_outcome(&tx, row_id(run, seq), answer)?;
                continue;
            }
            let (status, message, attempts) =
                rule.row(journal.as_ref().map(|j| j.marked.contains(&seq)));
            let outcome = Outcome {
                attempts,
                ..Outcome::plain(status, message, now)
            };
            write_outcome(&tx, row_id(run, seq), &outcome)?;
        }
        fold(&tx, run)?;
        let counts = count_rows(&tx, run)?;
        tx.execute(
            "UPDATE runs SET folded = 1, counts = ?1 WHERE id = ?2",
            params![counts.to_record(), run.0],
        )?;
        tx.commit()?;
        self.flush()?;
        Ok(counts)
    }
}

/// What tells which of a run's unfinished rows left, and what came back.
pub(super) enum Evidence<'a> {
    /// The run's journal file.
    Journal(&'a Path),
    /// The marks table of a run of schema 2 (no answers).
    Table,
    /// Nothing to trust: the machine restarted since the run.
    Nothing,
}

/// What every admission of one commit shares.
pub(super) struct Admitting<'a> {
    pub run: RunId,
    pub target: &'a str,
    pub policy: &'a Policy,
    pub now: DateTime<Utc>,
    /// `now`, as rows settled at admission show it.
    pub stamp: String,
}

/// Decides what becomes of one record and records it.
pub(super) fn admit(
    tx: &Transaction,
    at: &Admitting,
    entry: &Entry,
    stopped: Option<&StopReason>,
) -> Result<Admission> {
    let prior = match &entry.kind {
        EntryKind::Valid(req) => {
            prior(tx, at.target, req.department.as_str(), req.invoice.as_str())?
        }
        _ => None,
    };
    let (key, decision) = judge(entry, prior.as_ref(), at.policy, at.now, stopped);
    match decision {
        Ok((request, note)) => {
            let message = note.as_deref().unwrap_or("");
            insert_result(tx, at.run, entry, key, "pending", None, message, "")?;
            Ok(Admission::send(entry, request, note))
        }
        Err((status, skip, message)) => {
            let status_text = status.as_str();
            insert_result(
                tx,
                at.run,
                entry,
                key,
                status_text,
                skip,
                &message,
                &at.stamp,
            )?;
            Ok(Admission::Done(status, skip))
        }
    }
}

/// Its columns are those of the PostgreSQL store's `ResultRows::push` (`postgres/write.rs`),
/// a twin that gathers them into arrays for one statement instead.
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_result(
    tx: &Transaction,
    run: RunId,
    entry: &Entry,
    key: Option<(&str, &str)>,
    status: &str,
    skip: Option<SkipKind>,
    message: &str,
    completed_at: &str,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO results (id, run_id, seq, line, dept, invoice, status, skip, message, completed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        row_id(run, entry.seq),
        run.0,
        entry.seq as i64,
        entry.line as i64,
        key.map(|k| k.0),
        key.map(|k| k.1),
        status,
        skip.map(SkipKind::code),
        message,
        completed_at,
    ])?;
    Ok(())
}

/// What earlier runs did with this invoice for this target.
pub(super) fn prior(
    tx: &Connection,
    target: &str,
    dept: &str,
    invoice: &str,
) -> Result<Option<Prior>> {
    let found = tx
        .prepare_cached(
            "SELECT status, run_id, at_ms, sent_run, sent_ms, resolution, resolved_by, resolved_ms
             FROM sends WHERE target = ?1 AND dept = ?2 AND invoice = ?3",
        )?
        .query_row(params![target, dept, invoice], |r| {
            let stored = StoredPrior {
                status: r.get(0)?,
                run: r.get(1)?,
                at_ms: r.get(2)?,
                sent: (r.get(3)?, r.get(4)?),
                resolution: (r.get(5)?, r.get(6)?, r.get(7)?),
            };
            Ok(Prior::from_stored(stored, None))
        })
        .optional()?;
    Ok(found)
}

/// A transaction that takes the write lock at once. A deferred one that reads first and
/// then writes gets SQLITE_BUSY straight away, without waiting out the busy timeout, if
/// another connection (`resolve`, a backup, someone's sqlite3 shell) is writing: the run
/// would stop on a lock held for a moment.
pub(super) fn writing(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// Records `run` paused or resumed: one row, in a transaction that waits for the write
/// lock (the busy timeout) rather than failing, and holds it for a moment; safe while a
/// run holds the ledger (see `ledger::pausing`). False if it already was.
pub(super) fn set_pause(
    conn: &mut Connection,
    run: RunId,
    paused: bool,
    (by, now): (&str, DateTime<Utc>),
) -> Result<bool> {
    let tx = writing(conn)?;
    let changed = tx.execute(
        "UPDATE runs SET paused = ?1, pause_by = ?2, pause_ms = ?3 WHERE id = ?4 AND paused != ?1",
        params![paused, by, now.timestamp_millis(), run.0],
    )?;
    tx.commit()?;
    Ok(changed == 1)
}

/// Writes a row's outcome. Its time is kept once, as `at_ms` (`completed_at` is left empty
/// and derived when read: formatting it for every row cost more than the rest of the row).
pub(super) fn write_outcome(tx: &Transaction, id: i64, o: &Outcome) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO outcomes (status, skip, http_status, attempts, payment_link, invoice_link,
             text_sent, email_sent, errors, warnings, message, completed_at, id, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        o.status.as_str(),
        o.skip.map(SkipKind::code),
        o.http_status,
        o.attempts,
        o.payment_link,
        o.invoice_link,
        o.text_sent,
        o.email_sent,
        o.errors,
        o.warnings,
        o.message,
        "",
        id,
        o.completed_at.timestamp_millis(),
    ])?;
    for (n, note) in o.earlier.iter().enumerate() {
        write_attempt(tx, id, n as i64 + 1, note)?;
    }
    Ok(())
}

pub(super) fn write_attempt(tx: &Transaction, id: i64, n: i64, a: &AttemptNote) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO attempts (id, n, at_ms, http_status, what, errors, warnings)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        n,
        a.at.timestamp_millis(),
        a.http_status,
        a.what,
        a.errors,
        a.warnings
    ])?;
    Ok(())
}

/// Brings `sends` up to date with the requests `run` made, and indexes its rows by invoice.
/// Rows that made no request leave `sends` alone; `sent_ms` keeps the last real send even
/// when a later `--resend` fails, so the dedupe window still holds; a new request makes an
/// earlier resolution moot.
pub(super) fn fold(tx: &Transaction, run: RunId) -> Result<()> {
    let (first, last) = run_rows(run);
    // Sorted by key, so the upsert walks `sends` in order instead of jumping per row. (The
    // WHERE clause also keeps SQLite from reading ON CONFLICT as a join constraint.)
    tx.execute(
        "INSERT INTO sends (target, dept, invoice, status, run_id, at_ms, sent_run, sent_ms)
         SELECT (SELECT target FROM runs WHERE id = ?3), r.dept, r.invoice, o.status, ?3,
                coalesce(o.at_ms, 0),
                CASE WHEN o.status IN ('sent', 'partial') THEN ?3 END,
                CASE WHEN o.status IN ('sent', 'partial') THEN coalesce(o.at_ms, 0) END
         FROM results r JOIN outcomes o ON o.id = r.id
         WHERE r.id BETWEEN ?1 AND ?2 AND r.dept IS NOT NULL
               AND (o.attempts > 0 OR o.status = 'unknown')
         ORDER BY r.dept, r.invoice
         ON CONFLICT (target, dept, invoice) DO UPDATE SET
             status = excluded.status, run_id = excluded.run_id, at_ms = excluded.at_ms,
             sent_run = coalesce(excluded.sent_run, sent_run),
             sent_ms = coalesce(excluded.sent_ms, sent_ms),
             resolution = NULL, resolved_by = NULL, resolved_ms = NULL",
        params![first, last, run.0],
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO by_invoice (key, id)
         SELECT invoice_key(invoice), id FROM results
         WHERE id BETWEEN ?1 AND ?2 AND invoice IS NOT NULL ORDER BY 1, 2",
        params![first, last],
    )?;
    Ok(())
}

pub(super) fn count_rows(conn: &Connection, run: RunId) -> Result<Counts> {
    let (first, last) = run_rows(run);
    let mut stmt = conn.prepare_cached(
        "SELECT coalesce(o.status, r.status), coalesce(o.skip, r.skip), count(*)
         FROM results r LEFT JOIN outcomes o ON o.id = r.id
         WHERE r.id BETWEEN ?1 AND ?2 GROUP BY 1, 2",
    )?;
    let mut rows = stmt.query(params![first, last])?;
    let mut counts = Counts::default();
    while let Some(row) = rows.next()? {
        let status: String = row.get(0)?;
        let skip: Option<String> = row.get(1)?;
        let n: i64 = row.get(2)?;
        // A row still pending belongs to a run that has not been settled: it may be in flight.
        let status = Status::parse(&status).unwrap_or(Status::Unknown);
        counts.add_n(status, skip.as_deref().and_then(SkipKind::parse), n as u64);
    }
    Ok(counts)
}

/// Drops per-row history of runs that started before `retention` ago. `sends`, the memory
/// the dedupe window reads, is never pruned; nor are the runs' own records.
pub(super) fn prune(conn: &Connection, now: DateTime<Utc>, retention: Duration) -> Result<()> {
    let cutoff = now - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
    let first_kept: Option<i64> = conn.query_row(
        "SELECT coalesce(min(id), (SELECT max(id) + 1 FROM runs)) FROM runs WHERE started_ms >= ?1",
        params![cutoff.timestamp_millis()],
        |r| r.get(0),
    )?;
    let Some(first_kept) = first_kept else {
        return Ok(());
    };
    let boundary = row_id(RunId(first_kept), 0);
    let stale: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM results WHERE id < ?1)",
        params![boundary],
        |r| r.get(0),
    )?;
    if stale {
        conn.execute_batch(&format!(
            "BEGIN;
             DELETE FROM results WHERE id < {boundary};
             DELETE FROM outcomes WHERE id < {boundary};
             DELETE FROM marks WHERE id < {boundary};
             DELETE FROM attempts WHERE id < {boundary};
             DELETE FROM by_invoice WHERE id < {boundary};
             COMMIT;"
        ))?;
    }
    Ok(())
}

/// A schema-2 run's marks, which it flushed before each request left.
pub(super) fn marked_in_table(conn: &Connection, run: RunId) -> Result<HashSet<u64>> {
    let (first, last) = run_rows(run);
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM marks WHERE id BETWEEN ?1 AND ?2")?
        .query_map(params![first, last], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids
        .into_iter()
        .map(|id| (id & 0xffff_ffff) as u64)
        .collect())
}
