//! `resolve`: a person's verdicts, checked and recorded (the rules are in `resolution`).

use super::*;

impl resolution::Verdicts for SqliteStore {
    fn target_of_file(&mut self, results: &Path) -> Result<Option<String>> {
        let path = std::path::absolute(results).unwrap_or_else(|_| results.to_path_buf());
        let found = self
            .conn
            .query_row(
                "SELECT target FROM runs WHERE results_path = ?1 ORDER BY id DESC LIMIT 1",
                params![path.display().to_string()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found)
    }

    fn unknown_under(&mut self, dept: &str, invoice: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT target FROM sends WHERE dept = ?1 AND invoice = ?2
                 AND status NOT IN ('sent', 'partial', 'failed', 'not_sent')",
        )?;
        let found = stmt.query_map(params![dept, invoice], |r| r.get(0))?;
        Ok(found.collect::<rusqlite::Result<_>>()?)
    }

    fn state(&mut self, target: &str, dept: &str, invoice: &str) -> Result<Option<SendState>> {
        let found = self
            .conn
            .prepare_cached(
                "SELECT status, run_id, resolution, resolved_by, resolved_ms FROM sends
                 WHERE target = ?1 AND dept = ?2 AND invoice = ?3",
            )?
            .query_row(params![target, dept, invoice], |r| {
                Ok(SendState {
                    status: r.get(0)?,
                    run: r.get(1)?,
                    resolution: r.get(2)?,
                    resolved_by: r.get(3)?,
                    resolved_ms: r.get(4)?,
                })
            })
            .optional()?;
        Ok(found)
    }

    /// A SQL-dialect twin of the PostgreSQL store's `record` (`postgres/resolve.rs`): the
    /// same statements, with SQLite's placeholders and write transaction.
    fn record(
        &mut self,
        target: &str,
        verdicts: &[(&Verdict, i64)],
        request: &ResolveRequest,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let tx = writing(&mut self.conn)?;
        let (by, file, at) = (
            request.by,
            request.results.display().to_string(),
            now.timestamp_millis(),
        );
        for (v, run) in verdicts {
            let verdict = resolution::stored(v);
            tx.execute(
                "INSERT INTO resolutions (target, dept, invoice, verdict, by_user, at_ms, run_id, file, line)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![target, v.dept, v.invoice, verdict, by, at, run, file, v.line as i64],
            )?;
            let changed = tx.execute(
                "UPDATE sends SET resolution = ?1, resolved_by = ?2, resolved_ms = ?3
                 WHERE target = ?4 AND dept = ?5 AND invoice = ?6
                   AND run_id = ?7 AND resolution IS NULL",
                params![verdict, by, at, target, v.dept, v.invoice, run],
            )?;
            resolution::still_as_judged(changed as u64, v)?;
        }
        tx.commit()?;
        // A verdict is a person's work: it survives a power cut as soon as it is reported.
        self.conn.execute_batch("PRAGMA wal_checkpoint(FULL);")?;
        Ok(())
    }
}
