//! The PostgreSQL ledger's schema, created and migrated by the tool: `invoice_dispatch`,
//! versioned in `invoice_dispatch.meta`. Migrations run in one transaction under an
//! advisory lock, so two machines starting at once never migrate twice.

use anyhow::{bail, Context, Result};
use postgres::Client;

use super::connect::pg_error;
use super::{PgLocation, RUN_LOCKS};

const SCHEMA_VERSION: i32 = 4;
/// The oldest server the SQL here is written for.
const OLDEST_SERVER: i32 = 120000;

/// `MIGRATIONS[n]` takes the ledger from version `n` to `n + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 1: the tables of the SQLite store's schema 3, keyed by (run, row); `sends` holds the
    // claims of unsettled runs, and placeholders (status 'new') that lock rows never sent.
    "CREATE TABLE runs (
         id bigserial PRIMARY KEY,
         started_ms bigint NOT NULL,
         finished_ms bigint,
         pid integer NOT NULL,
         input text NOT NULL,
         target text NOT NULL,
         exit_code integer,
         folded boolean NOT NULL DEFAULT false,
         host text NOT NULL,
         os_user text NOT NULL,
         input_sha256 text NOT NULL,
         results_path text,
         version text NOT NULL,
         server_started_ms bigint NOT NULL,
         counts text
     );
     CREATE TABLE results (
         run_id bigint NOT NULL, seq bigint NOT NULL, line bigint NOT NULL,
         dept text, invoice text, status text NOT NULL, skip text,
         message text NOT NULL, completed_at text NOT NULL,
         PRIMARY KEY (run_id, seq)
     );
     CREATE INDEX results_invoice ON results (invoice);
     CREATE TABLE marks (
         run_id bigint NOT NULL, seq bigint NOT NULL, at_ms bigint NOT NULL,
         PRIMARY KEY (run_id, seq)
     );
     CREATE TABLE outcomes (
         run_id bigint NOT NULL, seq bigint NOT NULL, status text NOT NULL, skip text,
         http_status integer, attempts integer NOT NULL, payment_link text, invoice_link text,
         text_sent text, email_sent text, errors text NOT NULL, warnings text NOT NULL,
         message text NOT NULL, at_ms bigint NOT NULL,
         PRIMARY KEY (run_id, seq)
     );
     CREATE TABLE attempts (
         run_id bigint NOT NULL, seq bigint NOT NULL, n integer NOT NULL, at_ms bigint NOT NULL,
         http_status integer, what text NOT NULL, errors text NOT NULL, warnings text NOT NULL,
         PRIMARY KEY (run_id, seq, n)
     );
     CREATE TABLE sends (
         target text NOT NULL, dept text NOT NULL, invoice text NOT NULL,
         status text NOT NULL, run_id bigint NOT NULL, at_ms bigint NOT NULL,
         sent_run bigint, sent_ms bigint,
         resolution text, resolved_by text, resolved_ms bigint,
         claim_run bigint,
         PRIMARY KEY (target, dept, invoice)
     );
     CREATE INDEX sends_claims ON sends (claim_run) WHERE claim_run IS NOT NULL;
     CREATE TABLE resolutions (
         id bigserial PRIMARY KEY, target text NOT NULL, dept text NOT NULL,
         invoice text NOT NULL, verdict text NOT NULL, by_user text NOT NULL,
         at_ms bigint NOT NULL, run_id bigint NOT NULL, file text NOT NULL, line bigint NOT NULL
     );
     CREATE INDEX resolutions_invoice ON resolutions (invoice);",
    // 2: a sentinel per open run in a table crash recovery empties. A backend's crash
    // makes the server recover without a new start time, and marks committed without
    // waiting for the disk may be gone: they are trusted only while the sentinel is there.
    "CREATE UNLOGGED TABLE open_runs (run_id bigint PRIMARY KEY);",
    // 3: the pace `--rate auto` ended at, per target, where the next run starts.
    "CREATE TABLE paces (target text PRIMARY KEY, rate double precision NOT NULL, at_ms bigint NOT NULL);",
    // 4: a run paused from any machine (`pause RUN`): whether it is, and who last paused or
    // resumed it, when. Its process polls these (see `ledger::pausing`).
    "ALTER TABLE runs ADD COLUMN paused boolean NOT NULL DEFAULT false,
                     ADD COLUMN pause_by text,
                     ADD COLUMN pause_ms bigint;",
];

/// Makes sure the ledger's schema is there and current. A read-only open (`runs`,
/// `history`, ...) never creates one.
pub fn migrate(client: &mut Client, location: &PgLocation, read_only: bool) -> Result<()> {
    let server: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .map_err(|e| anyhow::anyhow!("ledger {location}: {}", pg_error(&e)))?
        .get(0);
    if server < OLDEST_SERVER {
        bail!(
            "ledger {location}: PostgreSQL {} is too old; 12 or newer is needed",
            server / 10000
        );
    }
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'invoice_dispatch')",
            &[],
        )?
        .get(0);
    if !exists && read_only {
        bail!("no ledger in {location}: nothing has been sent with it (check --ledger, or the `ledger` key)");
    }
    client.batch_execute("SET search_path = invoice_dispatch")?;
    if read_only && version(client)? == SCHEMA_VERSION {
        return Ok(());
    }
    let standby: bool = client
        .query_one(
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
            &[],
        )?
        .get(0);
    if standby {
        bail!("ledger {location}: the server is read-only (a standby?); point the ledger at the primary");
    }
    upgrade(client, location, exists)
}

fn version(client: &mut Client) -> Result<i32> {
    let row = client.query_opt(
        "SELECT version FROM meta WHERE to_regclass('invoice_dispatch.meta') IS NOT NULL",
        &[],
    );
    // Before `meta` exists the query cannot even be planned: version 0.
    Ok(row.ok().flatten().map_or(0, |r| r.get(0)))
}

fn upgrade(client: &mut Client, location: &PgLocation, exists: bool) -> Result<()> {
    // The hint about rights only when rights are what is missing: a timeout or a full
    // disk says what it is.
    let denied = |e: postgres::Error| {
        if e.code() != Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            return anyhow::anyhow!(
                "ledger {location}: cannot create the ledger's tables: {}",
                pg_error(&e)
            );
        }
        anyhow::anyhow!(
            "ledger {location}: cannot create the ledger's tables ({}): grant the user CREATE on the database, or create the schema invoice_dispatch owned by it",
            pg_error(&e)
        )
    };
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&RUN_LOCKS])?;
    if !exists {
        tx.batch_execute("CREATE SCHEMA IF NOT EXISTS invoice_dispatch")
            .map_err(denied)?;
    }
    tx.batch_execute("CREATE TABLE IF NOT EXISTS meta (version integer NOT NULL)")
        .map_err(denied)?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM meta", &[])?
        .map(|r| r.get(0));
    let current = found.unwrap_or(0);
    if current > SCHEMA_VERSION {
        bail!(
            "ledger {location} was written by a newer invoice-dispatch (ledger schema {current}, this build knows {SCHEMA_VERSION}); upgrade, or use another --ledger"
        );
    }
    if found.is_none() {
        tx.execute("INSERT INTO meta VALUES (0)", &[])?;
    }
    for (from, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(step)
            .map_err(denied)
            .with_context(|| format!("cannot bring the ledger to schema {}", from + 1))?;
        tx.execute("UPDATE meta SET version = $1", &[&(from as i32 + 1)])?;
    }
    tx.commit()?;
    Ok(())
}
