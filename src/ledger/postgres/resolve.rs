//! `resolve` on PostgreSQL: the finding and recording (the rules are shared).

use std::path::Path;

use anyhow::Result;
use chrono::{DateTime, Utc};
use postgres::Client;

use crate::ledger::resolution::{self, SendState, Verdicts};
use crate::ledger::{ResolveRequest, Resolved, Verdict};

struct Pg<'a>(&'a mut Client);

pub fn resolve(
    client: &mut Client,
    request: &ResolveRequest,
    now: DateTime<Utc>,
) -> Result<Resolved> {
    resolution::resolve(&mut Pg(client), request, now)
}

impl Verdicts for Pg<'_> {
    fn target_of_file(&mut self, results: &Path) -> Result<Option<String>> {
        let path = std::path::absolute(results).unwrap_or_else(|_| results.to_path_buf());
        let row = self.0.query_opt(
            "SELECT target FROM runs WHERE results_path = $1 ORDER BY id DESC LIMIT 1",
            &[&path.display().to_string()],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn unknown_under(&mut self, dept: &str, invoice: &str) -> Result<Vec<String>> {
        let rows = self.0.query(
            "SELECT target FROM sends WHERE dept = $1 AND invoice = $2
                 AND status NOT IN ('sent', 'partial', 'failed', 'not_sent', 'new')",
            &[&dept, &invoice],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn state(&mut self, target: &str, dept: &str, invoice: &str) -> Result<Option<SendState>> {
        let row = self.0.query_opt(
            "SELECT status, run_id, resolution, resolved_by, resolved_ms FROM sends
             WHERE target = $1 AND dept = $2 AND invoice = $3",
            &[&target, &dept, &invoice],
        )?;
        Ok(row.map(|r| SendState {
            status: r.get(0),
            run: r.get(1),
            resolution: r.get(2),
            resolved_by: r.get(3),
            resolved_ms: r.get(4),
        }))
    }

    /// A SQL-dialect twin of the SQLite store's `record` (`sqlite/resolve.rs`).
    fn record(
        &mut self,
        target: &str,
        verdicts: &[(&Verdict, i64)],
        request: &ResolveRequest,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.0.transaction()?;
        let (by, file, at) = (
            request.by,
            request.results.display().to_string(),
            now.timestamp_millis(),
        );
        for (v, run) in verdicts {
            let verdict = resolution::stored(v);
            tx.execute(
                "INSERT INTO resolutions (target, dept, invoice, verdict, by_user, at_ms, run_id, file, line)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[&target, &v.dept, &v.invoice, &verdict, &by, &at, run, &file, &(v.line as i64)],
            )?;
            let changed = tx.execute(
                "UPDATE sends SET resolution = $1, resolved_by = $2, resolved_ms = $3
                 WHERE target = $4 AND dept = $5 AND invoice = $6
                   AND run_id = $7 AND resolution IS NULL",
                &[&verdict, &by, &at, &target, &v.dept, &v.invoice, run],
            )?;
            resolution::still_as_judged(changed, v)?;
        }
        tx.commit()?;
        Ok(())
    }
}
