//! The session settings the ledger's reasoning assumes, pinned on every connection it
//! opens whatever the server, database or role says. A DBA can give any setting a default
//! with `ALTER DATABASE ... SET` or `ALTER ROLE ... SET`; a client's startup options
//! outrank those defaults, so most are pinned there, before the first statement.
//!
//! Pinned:
//! - `default_transaction_isolation = read committed`. Settling waits for a lock and then
//!   decides from what was committed during the wait (a leaving mark, an answer). Under
//!   `repeatable read` the decision was taken on a snapshot from before the wait: a mark
//!   committed meanwhile was invisible, its row was settled `not_sent` and sent again.
//!   Under `serializable` the settle failed instead, and no second run could start. The
//!   transactions that depend on it also say so in their `BEGIN` (`write::settle_run`).
//! - `default_transaction_read_only = off` and `default_transaction_deferrable = off`: a
//!   read-only default would fail every write of a run that has begun.
//! - `synchronous_commit = on`: an intent must be on the server's disk before its row is
//!   sent. The marks connection turns it off for itself (see `marks`).
//! - `idle_in_transaction_session_timeout = 0`, and after connecting, where the server
//!   has them, `idle_session_timeout = 0` (14+) and `transaction_timeout = 0` (17+). The
//!   run's lock is held by a session that idles between admissions, through a send-window
//!   wait and at one request a second; a server that ends it ends the run mid-send and
//!   frees its lock while its marks connection still writes.
//! - `search_path = invoice_dispatch`: the ledger is this schema's tables, whatever the
//!   role's path would find first.
//! - `TimeZone = UTC`: times are stored as epoch milliseconds and rendered by the tool;
//!   pinned so that nothing the server renders depends on a role's zone.
//! - `tcp_keepalives_*`: the server's own keepalives end a dead machine's session, and
//!   free its run's lock, in about a minute rather than the OS's two hours.
//!
//! Checked, not pinned: `statement_timeout` and `lock_timeout` are a DBA's guard for the
//! server, and kept when they are off or at least [`MIN_TIMEOUT`]. Below that, ordinary
//! statements (an admission waiting for another run's rows, settling a large run) would
//! be cancelled at random, so the connection is refused at once with the setting and its
//! value. A longer one that fires mid-run fails that write like any lost connection: no
//! request leaves without its mark, the run stops, and the error names the setting.
//!
//! Do not matter here: `DateStyle`, `IntervalStyle`, `extra_float_digits`,
//! `bytea_output`, `client_encoding` and the `lc_*` settings (values travel in binary,
//! the driver insists on UTF-8); planner and memory settings (`work_mem`, `enable_*`,
//! `jit`, parallelism: speed only); `default_tablespace`, `temp_tablespaces`,
//! `default_table_access_method` (where data lives, not what it says); `log_*` (no
//! statement carries a password); `temp_file_limit` (an error like any other);
//! `session_replication_role` (the ledger has no triggers or foreign keys to skip);
//! `row_security` (the tool owns its tables); `check_function_bodies`,
//! `standard_conforming_strings`, `xmloption` (features it does not use; values are
//! bound, never quoted into SQL).

use std::time::Duration;

use anyhow::{bail, Result};
use postgres::Client;

use super::connect::pg_error;

/// The shortest statement or lock timeout a ledger session accepts.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The `options` of the startup packet: `-c name=value` pairs, spaces escaped.
pub fn startup_options() -> String {
    [
        "default_transaction_isolation=read\\ committed",
        "default_transaction_read_only=off",
        "default_transaction_deferrable=off",
        "synchronous_commit=on",
        "idle_in_transaction_session_timeout=0",
        "search_path=invoice_dispatch",
        "TimeZone=UTC",
        "tcp_keepalives_idle=30",
        "tcp_keepalives_interval=10",
        "tcp_keepalives_count=3",
    ]
    .map(|s| format!("-c {s}"))
    .join(" ")
}

/// Refuses timeouts too short for the ledger's statements, and turns off the idle and
/// transaction timeouts of newer servers (older ones refuse unknown names at startup).
pub fn pin_the_rest(client: &mut Client) -> Result<()> {
    let timeouts = client
        .query(
            "SELECT name, setting::bigint, current_setting(name) FROM pg_settings
             WHERE name IN ('statement_timeout', 'lock_timeout') ORDER BY name DESC",
            &[],
        )
        .map_err(|e| anyhow::anyhow!("{}", pg_error(&e)))?;
    for row in timeouts {
        let (name, ms, shown): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
        if ms > 0 && (ms as u128) < MIN_TIMEOUT.as_millis() {
            bail!(
                "the database or role sets {name} = {shown}, too short for the ledger's \
                 statements: ask for it to be 0 or at least {}s for this user \
                 (ALTER ROLE ... SET {name} = 0)",
                MIN_TIMEOUT.as_secs()
            );
        }
    }
    client
        .query(
            "SELECT set_config(name, '0', false) FROM pg_settings
             WHERE name IN ('idle_session_timeout', 'transaction_timeout')",
            &[],
        )
        .map_err(|e| anyhow::anyhow!("{}", pg_error(&e)))?;
    Ok(())
}
