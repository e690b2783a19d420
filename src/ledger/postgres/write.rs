//! What a run writes: its record, its admissions and claims, its outcomes, and its settling.
//! Each batch is a handful of statements over arrays (`unnest`), not a round trip per row.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use postgres::{Client, IsolationLevel, Row, Transaction};

use super::{RUN_LOCKS, SERVER_STARTED};
use crate::domain::{rfc3339, Counts, RunId, SkipKind, Status, StopReason};
use crate::ledger::admission::{judge, Policy, Prior, StoredPrior};
use crate::ledger::{Admission, Batch, Entry, EntryKind, RunInfo, Unfinished};

/// Records the run and takes its lock, in one transaction: nobody can see the run before
/// its lock says it is alive.
pub fn begin(client: &mut Client, run: &RunInfo) -> Result<RunId> {
    let mut tx = client.transaction()?;
    let id: i64 = tx
        .query_one(
            &format!(
                "INSERT INTO runs (started_ms, pid, input, target, host, os_user, input_sha256,
                     results_path, version, server_started_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {SERVER_STARTED})
                 RETURNING id"
            ),
            &[
                &run.started.timestamp_millis(),
                &(std::process::id() as i32),
                &run.input.display().to_string(),
                &run.target,
                &run.host,
                &run.user,
                &run.input_sha256,
                &run.results.as_ref().map(|p| p.display().to_string()),
                &env!("CARGO_PKG_VERSION"),
            ],
        )?
        .get(0);
    tx.execute(
        "SELECT pg_advisory_lock($1, $2)",
        &[&RUN_LOCKS, &lock_key(RunId(id))],
    )?;
    tx.execute("INSERT INTO open_runs VALUES ($1)", &[&id])?;
    tx.commit()?;
    Ok(RunId(id))
}

/// The second key of a run's advisory lock.
pub fn lock_key(run: RunId) -> i32 {
    run.0 as i32
}

pub fn close(client: &mut Client, run: RunId, exit_code: u8, now: DateTime<Utc>) -> Result<()> {
    client.execute(
        "UPDATE runs SET finished_ms = $1, exit_code = $2 WHERE id = $3",
        &[&now.timestamp_millis(), &i32::from(exit_code), &run.0],
    )?;
    client.execute(
        "SELECT pg_advisory_unlock($1, $2)",
        &[&RUN_LOCKS, &lock_key(run)],
    )?;
    Ok(())
}

/// Settles every run that died before it could: one whose lock this session can take.
pub fn settle_dead_runs(client: &mut Client, now: DateTime<Utc>) -> Result<()> {
    let server: i64 = client
        .query_one(&format!("SELECT {SERVER_STARTED}"), &[])?
        .get(0);
    let open = client.query(
        "SELECT id, server_started_ms FROM runs WHERE NOT folded ORDER BY id",
        &[],
    )?;
    for row in open {
        let (run, started) = (RunId(row.get(0)), row.get::<_, i64>(1));
        let free: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&RUN_LOCKS, &lock_key(run)],
            )?
            .get(0);
        if !free {
            continue; // alive, elsewhere
        }
        let settled = settle_dead_run(client, run, started == server, now);
        client.execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&RUN_LOCKS, &lock_key(run)],
        )?;
        settled?;
    }
    Ok(())
}

/// Settles `run`, whose lock this session holds, unless another session settled it between
/// the listing and the lock. `same_server`: the server has not restarted since it began.
fn settle_dead_run(
    client: &mut Client,
    run: RunId,
    same_server: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    let row = client.query_one(
        "SELECT NOT folded, EXISTS (SELECT 1 FROM open_runs WHERE run_id = $1)
         FROM runs WHERE id = $1",
        &[&run.0],
    )?;
    let (open, sentinel): (bool, bool) = (row.get(0), row.get(1));
    if !open {
        return Ok(());
    }
    // Its marks were committed without waiting for the server's disk: they are there
    // unless the server restarted since the run began, or recovered from a crash (which
    // empties `open_runs`).
    let counts = settle_run(
        client,
        run,
        &Unfinished::dead(run),
        same_server && sentinel,
        now,
    )?;
    tracing::info!(
        "settled run {run}, which died before it finished: {}",
        counts.describe()
    );
    Ok(())
}

/// Gives the unfinished rows of `run` their status by `rule` (by their marks when those are
/// trusted), folds the run into `sends`, releases its claims and records its counts: one
/// synchronous commit.
pub fn settle_run(
    client: &mut Client,
    run: RunId,
    rule: &Unfinished,
    marks_trusted: bool,
    now: DateTime<Utc>,
) -> Result<Counts> {
    // Read committed, whatever the session's default: the lock below waits for the run's
    // mark and answer commits under way, and every statement after it must see them. Under
    // repeatable read or serializable the snapshot would be the one from before the wait,
    // a mark committed during it would be missed, and its row sent again.
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()?;
    // Waits for the run's mark commits under way and stops any after it (see `marks`), so
    // the marks read below (each statement takes a fresh snapshot, after the wait) are all
    // it will ever have.
    let folded: bool = tx
        .query_one(
            "SELECT folded FROM runs WHERE id = $1 FOR UPDATE",
            &[&run.0],
        )?
        .get(0);
    // Looked at again after the wait: a run settled meanwhile is never settled twice.
    anyhow::ensure!(!folded, "run {run} was settled meanwhile by another run");
    let (in_flight, never_left, unknowable) = (
        rule.row(Some(true)).1,
        rule.row(Some(false)).1,
        rule.row(None).1,
    );
    tx.execute(
        "INSERT INTO outcomes (run_id, seq, status, attempts, errors, warnings, message, at_ms)
         SELECT r.run_id, r.seq,
                CASE WHEN $2 AND m.seq IS NULL THEN 'not_sent' ELSE 'unknown' END,
                CASE WHEN $2 AND m.seq IS NOT NULL THEN 1 ELSE 0 END, '', '',
                CASE WHEN NOT $2 THEN $5 WHEN m.seq IS NOT NULL THEN $3 ELSE $4 END, $6
         FROM results r
         LEFT JOIN LATERAL (SELECT * FROM outcomes WHERE run_id = r.run_id AND seq = r.seq OFFSET 0) o ON true
         LEFT JOIN LATERAL (SELECT seq FROM marks WHERE run_id = r.run_id AND seq = r.seq OFFSET 0) m ON true
         WHERE r.run_id = $1 AND r.status = 'pending' AND o.seq IS NULL",
        &[
            &run.0,
            &marks_trusted,
            &in_flight,
            &never_left,
            &unknowable,
            &now.timestamp_millis(),
        ],
    )?;
    fold(&mut tx, run)?;
    let counts = count_rows(&mut tx, run)?;
    tx.execute(
        "UPDATE runs SET folded = true, counts = $1 WHERE id = $2",
        &[&counts.to_record(), &run.0],
    )?;
    tx.execute("DELETE FROM open_runs WHERE run_id = $1", &[&run.0])?;
    tx.commit()?;
    Ok(counts)
}

/// Brings `sends` up to date with the requests `run` made and releases its claims (the
/// rules are the SQLite store's `fold`).
fn fold(tx: &mut Transaction, run: RunId) -> Result<()> {
    // Rows are locked in the order admission locks them (`lock_priors`: bytes, not the
    // database's collation), so a settle and an admission cannot cross.
    tx.execute(
        "INSERT INTO sends AS s (target, dept, invoice, status, run_id, at_ms, sent_run, sent_ms)
         SELECT u.target, r.dept, r.invoice, o.status, $1::bigint, o.at_ms,
                CASE WHEN o.status IN ('sent', 'partial') THEN $1::bigint END,
                CASE WHEN o.status IN ('sent', 'partial') THEN o.at_ms END
         FROM results r
         JOIN LATERAL (SELECT * FROM outcomes WHERE run_id = r.run_id AND seq = r.seq OFFSET 0) o ON true
         JOIN runs u ON u.id = r.run_id
         WHERE r.run_id = $1 AND r.dept IS NOT NULL AND (o.attempts > 0 OR o.status = 'unknown')
         ORDER BY r.dept COLLATE \"C\", r.invoice COLLATE \"C\"
         ON CONFLICT (target, dept, invoice) DO UPDATE SET
             status = excluded.status, run_id = excluded.run_id, at_ms = excluded.at_ms,
             sent_run = coalesce(excluded.sent_run, s.sent_run),
             sent_ms = coalesce(excluded.sent_ms, s.sent_ms),
             resolution = NULL, resolved_by = NULL, resolved_ms = NULL",
        &[&run.0],
    )?;
    tx.execute(
        "UPDATE sends SET claim_run = NULL WHERE claim_run = $1",
        &[&run.0],
    )?;
    Ok(())
}

pub fn count_rows(tx: &mut impl postgres::GenericClient, run: RunId) -> Result<Counts> {
    let rows = tx.query(
        "SELECT coalesce(o.status, r.status), coalesce(o.skip, r.skip), count(*)
         FROM results r LEFT JOIN LATERAL (SELECT * FROM outcomes WHERE run_id = r.run_id AND seq = r.seq OFFSET 0) o ON true
         WHERE r.run_id = $1 GROUP BY 1, 2",
        &[&run.0],
    )?;
    let mut counts = Counts::default();
    for row in rows {
        let (status, skip, n): (String, Option<String>, i64) = (row.get(0), row.get(1), row.get(2));
        let status = Status::parse(&status).unwrap_or(Status::Unknown);
        counts.add_n(status, skip.as_deref().and_then(SkipKind::parse), n as u64);
    }
    Ok(counts)
}

/// Drops per-row history of runs that started before `retention` ago; `sends` and the runs'
/// own records stay (see the SQLite store's `prune`).
pub fn prune(client: &mut Client, now: DateTime<Utc>, retention: Duration) -> Result<()> {
    let cutoff = now - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
    let stale: Vec<i64> = client
        .query(
            "SELECT id FROM runs WHERE started_ms < $1 AND folded
                 AND EXISTS (SELECT 1 FROM results WHERE run_id = runs.id)",
            &[&cutoff.timestamp_millis()],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let mut tx = client.transaction()?;
    for table in ["results", "outcomes", "marks", "attempts"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE run_id = ANY($1)"),
            &[&stale],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// One synchronous commit of admissions: their rows are queued to be sent once it
/// returns. Outcomes never come here: each goes with the marks (see `marks`).
pub fn commit(
    client: &mut Client,
    run: RunId,
    target: &str,
    batch: &mut Batch,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<()> {
    anyhow::ensure!(
        batch.outcomes.is_empty(),
        "outcomes are written with the marks"
    );
    let mut tx = client.transaction()?;
    for (entries, admitted, stopped) in &mut batch.admits {
        *admitted = admit(&mut tx, run, target, entries, policy, now, stopped.as_ref())?;
    }
    tx.commit()?;
    Ok(())
}

/// Result rows gathered for one `INSERT ... SELECT FROM unnest(...)`.
#[derive(Default)]
struct ResultRows {
    seq: Vec<i64>,
    line: Vec<i64>,
    dept: Vec<Option<String>>,
    invoice: Vec<Option<String>>,
    status: Vec<String>,
    skip: Vec<Option<String>>,
    message: Vec<String>,
    completed_at: Vec<String>,
}

impl ResultRows {
    /// The columns of the SQLite store's `insert_result`, its twin (one row, one statement).
    fn push(
        &mut self,
        entry: &Entry,
        key: Option<(&str, &str)>,
        status: &str,
        skip: Option<SkipKind>,
        message: &str,
        completed_at: &str,
    ) {
        self.seq.push(entry.seq as i64);
        self.line.push(entry.line as i64);
        self.dept.push(key.map(|k| k.0.to_string()));
        self.invoice.push(key.map(|k| k.1.to_string()));
        self.status.push(status.to_string());
        self.skip.push(skip.map(|s| s.code().to_string()));
        self.message.push(message.to_string());
        self.completed_at.push(completed_at.to_string());
    }

    fn insert(&self, tx: &mut Transaction, run: RunId) -> Result<()> {
        tx.execute(
            "INSERT INTO results (run_id, seq, line, dept, invoice, status, skip, message, completed_at)
             SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[],
                                      $6::text[], $7::text[], $8::text[], $9::text[])",
            &[&run.0, &self.seq, &self.line, &self.dept, &self.invoice, &self.status, &self.skip, &self.message, &self.completed_at],
        )?;
        Ok(())
    }
}

/// Decides and records a batch of records, and claims the rows to send.
#[allow(clippy::too_many_arguments)]
fn admit(
    tx: &mut Transaction,
    run: RunId,
    target: &str,
    entries: &[Entry],
    policy: &Policy,
    now: DateTime<Utc>,
    stopped: Option<&StopReason>,
) -> Result<Vec<Admission>> {
    let priors = lock_priors(tx, run, target, entries)?;
    let stamp = rfc3339(now);
    let (mut rows, mut claims) = (ResultRows::default(), (Vec::new(), Vec::new()));
    let mut admitted = Vec::with_capacity(entries.len());
    for entry in entries {
        let prior = match (&entry.kind, entry.kind.key()) {
            (EntryKind::Valid(_), Some((dept, invoice))) => priors
                .get(&(dept.to_string(), invoice.to_string()))
                .and_then(Option::as_ref),
            _ => None,
        };
        let (key, decision) = judge(entry, prior, policy, now, stopped);
        match decision {
            Ok((request, note)) => {
                rows.push(
                    entry,
                    key,
                    "pending",
                    None,
                    note.as_deref().unwrap_or(""),
                    "",
                );
                if let Some((dept, invoice)) = key {
                    claims.0.push(dept.to_string());
                    claims.1.push(invoice.to_string());
                }
                admitted.push(Admission::send(entry, request, note));
            }
            Err((status, skip, message)) => {
                rows.push(entry, key, status.as_str(), skip, &message, &stamp);
                admitted.push(Admission::Done(status, skip));
            }
        }
    }
    rows.insert(tx, run)?;
    // By the rows' own addresses, found one index lookup per key (as in `lock_priors`).
    tx.execute(
        "UPDATE sends SET claim_run = $1
         WHERE ctid = ANY (ARRAY(
             SELECT x.ctid FROM unnest($3::text[], $4::text[]) AS k(d, i)
             CROSS JOIN LATERAL (
                 SELECT ctid FROM sends WHERE target = $2 AND dept = k.d AND invoice = k.i
                 OFFSET 0 -- kept apart, so it is not planned as a join on the target alone
             ) x))",
        &[&run.0, &target, &claims.0, &claims.1],
    )?;
    Ok(admitted)
}

/// Locks the `sends` record of every valid row (inserting placeholders for rows never
/// seen, so that those are locked too), in key order; what each says of earlier runs.
fn lock_priors(
    tx: &mut Transaction,
    run: RunId,
    target: &str,
    entries: &[Entry],
) -> Result<BTreeMap<(String, String), Option<Prior>>> {
    let mut keys: Vec<(String, String)> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Valid(req) => Some((
                req.department.as_str().to_string(),
                req.invoice.as_str().to_string(),
            )),
            _ => None,
        })
        .collect();
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    // One order for every lock here: Rust's (bytes). `ORDER BY d, i` would follow the
    // database's collation, which can differ, and two runs could cross.
    keys.sort();
    let (depts, invoices): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
    tx.execute(
        "INSERT INTO sends (target, dept, invoice, status, run_id, at_ms)
         SELECT $1, d, i, 'new', 0, 0
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(d, i, n)
         ORDER BY n
         ON CONFLICT DO NOTHING",
        &[&target, &depts, &invoices],
    )?;
    // One index lookup per key, driven by the keys (a join on the target alone could scan
    // every row of a target, and a run's target grows as it goes), locked in key order.
    let rows = tx.query(
        "SELECT s.dept, s.invoice, s.status, s.run_id, s.at_ms, s.sent_run, s.sent_ms,
                s.resolution, s.resolved_by, s.resolved_ms, s.claim_run, c.host
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(d, i, n)
         CROSS JOIN LATERAL (
             SELECT * FROM sends WHERE target = $1 AND dept = k.d AND invoice = k.i FOR UPDATE
         ) s
         LEFT JOIN runs c ON c.id = s.claim_run
         ORDER BY k.n",
        &[&target, &depts, &invoices],
    )?;
    Ok(rows
        .iter()
        .map(|row| ((row.get(0), row.get(1)), prior(row, run)))
        .collect())
}

/// What earlier runs did with each key, as [`lock_priors`] reads it but locking nothing and
/// adding no placeholders: a look ahead, which admission repeats under its locks.
pub(super) fn peek_priors(
    client: &mut Client,
    target: &str,
    keys: &[(String, String)],
) -> Result<Vec<Option<Prior>>> {
    let (depts, invoices): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(d, i)| (d.as_str(), i.as_str())).unzip();
    let rows = client.query(
        "SELECT s.dept, s.invoice, s.status, s.run_id, s.at_ms, s.sent_run, s.sent_ms,
                s.resolution, s.resolved_by, s.resolved_ms, s.claim_run, c.host, k.n
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(d, i, n)
         JOIN sends s ON s.target = $1 AND s.dept = k.d AND s.invoice = k.i
         LEFT JOIN runs c ON c.id = s.claim_run",
        &[&target, &depts, &invoices],
    )?;
    let mut priors = vec![None; keys.len()];
    for row in &rows {
        // The columns of `lock_priors`, then the key's place. No run of ours claims yet.
        let n: i64 = row.get(12);
        priors[n as usize - 1] = prior(row, RunId(0));
    }
    Ok(priors)
}

/// What a `sends` record says of earlier runs: nothing for a placeholder; a claim when
/// another run that has not been settled holds it.
fn prior(row: &Row, run: RunId) -> Option<Prior> {
    let status: String = row.get(2);
    let claim: Option<i64> = row.get(10);
    let claimed_by = claim.filter(|c| *c != run.0).map(|c| {
        (
            RunId(c),
            row.get::<_, Option<String>>(11).unwrap_or_default(),
        )
    });
    if status == "new" && claimed_by.is_none() {
        return None;
    }
    let stored = StoredPrior {
        status,
        run: row.get(3),
        at_ms: row.get(4),
        sent: (row.get(5), row.get(6)),
        resolution: (row.get(7), row.get(8), row.get(9)),
    };
    Some(Prior::from_stored(stored, claimed_by))
}
