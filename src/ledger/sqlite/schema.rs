//! The SQLite ledger's schema and its migrations.

use super::*;

impl SqliteStore {
    /// Brings the schema up to date, each step in one transaction with its version bump, so
    /// a ledger is never left half migrated.
    pub(super) fn migrate(&mut self, read_only: bool) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .context("not a SQLite database, or corrupt")?;
        if version > SCHEMA_VERSION {
            bail!(
                "it was written by a newer invoice-dispatch (ledger schema {version}, this build knows {SCHEMA_VERSION}); upgrade, or use another --ledger"
            );
        }
        // WAL lets `runs` and `history` read while a run writes. A durable ledger commits
        // without waiting for the disk and flushes the log itself when a commit holds
        // intents (see `commit`); SQLite still flushes at checkpoints. A throwaway ledger
        // dies with the run, so it never flushes.
        self.conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .context("cannot switch the ledger to WAL mode (read-only, or corrupt?)")?;
        self.conn.execute_batch(if self.durable {
            "PRAGMA synchronous = NORMAL;"
        } else {
            "PRAGMA synchronous = OFF;"
        })?;
        if version < SCHEMA_VERSION && read_only && self._lock.is_none() {
            // Migrating writes: it waits for no run, and no run may start meanwhile.
            self._lock = Some(take_lock(&self.path)?);
        }
        for (from, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            self.conn
                .execute_batch(&format!(
                    "BEGIN; {step} PRAGMA user_version = {}; COMMIT;",
                    from + 1
                ))
                .with_context(|| format!("cannot bring the ledger to schema {}", from + 1))?;
        }
        Ok(())
    }
}

/// `MIGRATIONS[n]` takes a ledger from schema `n` to `n + 1`; a new ledger runs them all.
pub(super) const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 1: `sends` written as each row was marked and answered.
    "CREATE TABLE runs (
         id INTEGER PRIMARY KEY,
         started_ms INTEGER NOT NULL,
         finished_ms INTEGER,
         pid INTEGER NOT NULL,
         input TEXT NOT NULL,
         target TEXT NOT NULL,
         exit_code INTEGER
     );
     CREATE TABLE sends (
         target TEXT NOT NULL,
         dept TEXT NOT NULL,
         invoice TEXT NOT NULL,
         status TEXT NOT NULL,
         run_id INTEGER NOT NULL,
         at_ms INTEGER NOT NULL,
         sent_run INTEGER,
         sent_ms INTEGER,
         PRIMARY KEY (target, dept, invoice)
     ) WITHOUT ROWID;
     CREATE TABLE results (
         id INTEGER PRIMARY KEY,
         run_id INTEGER NOT NULL,
         seq INTEGER NOT NULL,
         line INTEGER NOT NULL,
         dept TEXT,
         invoice TEXT,
         status TEXT NOT NULL,
         http_status INTEGER,
         attempts INTEGER NOT NULL DEFAULT 0,
         payment_link TEXT,
         invoice_link TEXT,
         text_sent TEXT,
         email_sent TEXT,
         errors TEXT NOT NULL DEFAULT '',
         warnings TEXT NOT NULL DEFAULT '',
         message TEXT NOT NULL DEFAULT '',
         completed_at TEXT NOT NULL DEFAULT ''
     );
     CREATE INDEX results_key ON results (run_id, dept, invoice);",
    // 2: marks and outcomes get narrow tables of their own, keyed like `results`: a commit
    // then appends a few small rows at the right edge of two b-trees instead of rewriting
    // the pages of every scattered row it touched. `sends` is folded from them once per run;
    // runs written by schema 1 updated `sends` as they went, so they count as folded.
    "ALTER TABLE runs ADD COLUMN folded INTEGER NOT NULL DEFAULT 1;
     CREATE TABLE marks (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
     CREATE TABLE outcomes (
         id INTEGER PRIMARY KEY,
         status TEXT NOT NULL,
         http_status INTEGER,
         attempts INTEGER NOT NULL,
         payment_link TEXT,
         invoice_link TEXT,
         text_sent TEXT,
         email_sent TEXT,
         errors TEXT NOT NULL,
         warnings TEXT NOT NULL,
         message TEXT NOT NULL,
         completed_at TEXT NOT NULL,
         at_ms INTEGER
     );
     INSERT INTO outcomes
         SELECT id, status, http_status, attempts, payment_link, invoice_link, text_sent,
                email_sent, errors, warnings, message, completed_at, NULL
         FROM results WHERE attempts > 0;
     DROP INDEX results_key;
     ALTER TABLE results DROP COLUMN http_status;
     ALTER TABLE results DROP COLUMN attempts;
     ALTER TABLE results DROP COLUMN payment_link;
     ALTER TABLE results DROP COLUMN invoice_link;
     ALTER TABLE results DROP COLUMN text_sent;
     ALTER TABLE results DROP COLUMN email_sent;
     ALTER TABLE results DROP COLUMN errors;
     ALTER TABLE results DROP COLUMN warnings;",
    // 3: per-attempt history, runs people can read, resolutions, and an index of every row
    // by invoice (filled in when a run is folded, so sending only ever appends). Runs written
    // by schema 2 flushed each mark before its request left, so their marks are authoritative.
    "ALTER TABLE runs ADD COLUMN host TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN os_user TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN input_sha256 TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN results_path TEXT;
     ALTER TABLE runs ADD COLUMN version TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN boot_id TEXT;
     ALTER TABLE runs ADD COLUMN marks_durable INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE runs ADD COLUMN counts TEXT;
     ALTER TABLE results ADD COLUMN skip TEXT;
     ALTER TABLE outcomes ADD COLUMN skip TEXT;
     CREATE TABLE attempts (
         id INTEGER NOT NULL,
         n INTEGER NOT NULL,
         at_ms INTEGER NOT NULL,
         http_status INTEGER,
         what TEXT NOT NULL,
         errors TEXT NOT NULL,
         warnings TEXT NOT NULL,
         PRIMARY KEY (id, n)
     ) WITHOUT ROWID;
     ALTER TABLE sends ADD COLUMN resolution TEXT;
     ALTER TABLE sends ADD COLUMN resolved_by TEXT;
     ALTER TABLE sends ADD COLUMN resolved_ms INTEGER;
     CREATE TABLE resolutions (
         id INTEGER PRIMARY KEY,
         target TEXT NOT NULL,
         dept TEXT NOT NULL,
         invoice TEXT NOT NULL,
         verdict TEXT NOT NULL,
         by_user TEXT NOT NULL,
         at_ms INTEGER NOT NULL,
         run_id INTEGER NOT NULL,
         file TEXT NOT NULL,
         line INTEGER NOT NULL
     );
     CREATE INDEX resolutions_invoice ON resolutions (invoice);
     CREATE TABLE by_invoice (key INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (key, id)) WITHOUT ROWID;
     UPDATE results SET skip = CASE WHEN message LIKE 'unknown: %' THEN 'maybe_delivered'
                                    ELSE 'sent_earlier' END
         WHERE status = 'skipped';
     INSERT INTO by_invoice SELECT invoice_key(invoice), id FROM results
         WHERE invoice IS NOT NULL AND run_id IN (SELECT id FROM runs WHERE folded = 1)
         ORDER BY 1, 2;",
    // 4: the pace `--rate auto` ended at, per target, where the next run starts.
    "CREATE TABLE paces (target TEXT PRIMARY KEY, rate REAL NOT NULL, at_ms INTEGER NOT NULL);",
    // 5: a run paused from anywhere (`pause RUN`): whether it is, and who last paused or
    // resumed it, when. Its process polls these (see `ledger::pausing`).
    "ALTER TABLE runs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN pause_by TEXT;
     ALTER TABLE runs ADD COLUMN pause_ms INTEGER;",
];
