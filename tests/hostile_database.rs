//! The PostgreSQL ledger on a database a DBA has set up their own way (issue "Never twice
//! on any ledger"): defaults for isolation, timeouts and idle sessions set on the database
//! must not change what the ledger proves. Every test needs the server scripts/services
//! starts, so each is ignored by plain `cargo test`.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use invoice_dispatch::simulator::SimConfig;

/// A world whose database has `settings` (`name = 'value'`) as its defaults, answering in
/// `latency` plus up to `jitter`.
async fn world_with_defaults(settings: &[&str], latency: u64, jitter: u64) -> World {
    let w = World::with_on(
        SimConfig {
            latency: Duration::from_millis(latency),
            jitter: Duration::from_millis(jitter),
            ..SimConfig::default()
        },
        Backend::Postgres,
    )
    .await;
    let pg = w.pg.as_ref().unwrap();
    let admin = pg.client().await;
    for setting in settings {
        admin
            .batch_execute(&format!("ALTER DATABASE {} SET {setting}", pg.database))
            .await
            .unwrap();
    }
    w
}

/// `send` of `input` with its own results and summary (`name.csv`, `name.json`).
fn named_send(
    w: &World,
    input: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let out = w.path(&format!("{name}.csv")).display().to_string();
    let summary = w.path(&format!("{name}.json")).display().to_string();
    let mut args = vec!["--out", &out, "--summary-json", &summary];
    args.extend_from_slice(extra);
    w.send_command(input, &args)
}

/// Terminates the session that holds a running run's lock (its advisory lock), and only
/// that one: the run's marks connection goes on writing. Waits, with a bound, until there
/// is such a session.
async fn terminate_the_lock_holder(w: &World) {
    let admin = w.pg.as_ref().unwrap().client().await;
    let database = w.pg.as_ref().unwrap().database.clone();
    wait_for_async(
        "a run's lock holder to terminate",
        Duration::from_secs(30),
        || {
            let (admin, database) = (&admin, &database);
            async move {
                admin
                    .query_one(
                        "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l
                     JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 7445
                       AND a.datname = $1",
                        &[database],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    > 0
            }
        },
    )
    .await;
}

/// Run A sends; only its lock holder is terminated; run B starts at once on the same input
/// and settles A as dead while A's marks connection still writes; then C reruns. Nothing
/// may reach the API twice, and C accounts for every row.
async fn lock_holder_lost_mid_run(w: &World, try_no: usize) {
    const ROWS: usize = 120;
    let input = w.write(
        &format!("input-{try_no}.csv"),
        format!(
            "{HEADER}\n{}\n",
            rows(DEPT, &format!("ok-{try_no}-"), ROWS).join("\n")
        ),
    );
    let fast = ["--rate", "120", "--concurrency", "64"];
    let a = named_send(w, &input, &format!("a{try_no}"), &fast)
        .spawn()
        .unwrap();
    let before = w.stats().total_requests;
    wait_for("A's first requests", Duration::from_secs(30), || {
        w.stats().total_requests >= before + 20
    })
    .await;
    terminate_the_lock_holder(w).await;
    let b = named_send(w, &input, &format!("b{try_no}"), &fast)
        .spawn()
        .unwrap();
    let (a, b) = (
        a.wait_with_output().await.unwrap(),
        b.wait_with_output().await.unwrap(),
    );
    let b_err = String::from_utf8_lossy(&b.stderr);
    assert!(
        matches!(b.status.code(), Some(0 | 2)),
        "try {try_no}: B exits {:?}: {b_err}",
        b.status.code()
    );
    no_invoice_twice(w);
    let c = w.finish(
        named_send(w, &input, "results", &fast)
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(c.rows.len(), ROWS, "try {try_no}: {}", c.stderr);
    no_invoice_twice(w);
    for row in &c.rows {
        let received = w.received(DEPT, &row["invoice_guid"]);
        match row["status"].as_str() {
            // Sent now, or by A or B: the ledger knows.
            "sent" => assert_eq!(received, 1, "{row:?}"),
            "skipped" if row["message"].starts_with("unknown") => assert!(received <= 1),
            "skipped" => assert_eq!(received, 1, "try {try_no}: {row:?}"),
            other => panic!(
                "try {try_no}: row ends {other}: {row:?}\nA: {}\nB: {b_err}",
                String::from_utf8_lossy(&a.stderr)
            ),
        }
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn repeatable_read_by_default_a_lost_lock_holder_never_makes_a_double_send() {
    lock_holders_lost_under("repeatable read", 20).await;
}

/// `tries` of [`lock_holder_lost_mid_run`] on a database whose default isolation is
/// `isolation`, answers taking 0.7-1 s.
async fn lock_holders_lost_under(isolation: &str, tries: usize) {
    let default = format!("default_transaction_isolation = '{isolation}'");
    let w = world_with_defaults(&[&default], 700, 300).await;
    for try_no in 0..tries {
        lock_holder_lost_mid_run(&w, try_no).await;
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn serializable_by_default_the_second_run_starts_and_finishes() {
    lock_holders_lost_under("serializable", 4).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn idle_session_timeout_does_not_end_a_slow_run_or_a_window_wait() {
    let w = world_with_defaults(&["idle_session_timeout = '1s'"], 0, 0).await;
    let input = w.input(&rows(DEPT, "ok-", 8));
    let run = w.send(&input, &["--rate", "1", "--burst", "1"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.count("sent"), 8);

    // The clock starts 3 s before the window opens: the run's connections idle while it
    // waits (the wait is real; only the clock's start is the test's).
    let input = w.input(&rows(DEPT, "ok-w-", 3));
    let config = w.fast_config("send_window = \"08:00-20:00\"\ntimezone = \"UTC\"");
    let mut cmd = w.send_command(&input, &["--config", config.to_str().unwrap()]);
    cmd.env("INVOICE_DISPATCH_TEST_NOW", "2026-11-30T07:59:57Z");
    let run = w.finish(cmd.output().await.unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.count("sent"), 3);
    assert!(
        run.stderr.contains("08:00"),
        "the wait is said: {}",
        run.stderr
    );
    no_invoice_twice(&w);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn a_tiny_statement_timeout_is_a_clear_error_naming_it_and_nothing_is_sent() {
    let w = world_with_defaults(&["statement_timeout = '3ms'"], 0, 0).await;
    let input = w.input(&rows(DEPT, "ok-", 5));
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("statement_timeout"), "{}", run.stderr);
    assert!(run.stderr.contains("3ms"), "{}", run.stderr);
    assert!(!run.stderr.contains("grant"), "{}", run.stderr);
    assert_eq!(w.stats().total_requests, 0);
}

/// Backends of the world's database waiting for a lock.
async fn waiting_for_locks(admin: &tokio_postgres::Client, database: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND wait_event_type = 'Lock'",
            &[&database],
        )
        .await
        .unwrap()
        .get(0)
}

/// The race of the double send, made certain: A's marks connection is held up inside its
/// statement (its run's record share-locked, its marks not yet committed) by a person's
/// uncommitted marks on the rows it is about to mark; A's lock holder is lost; B starts
/// and its settle waits for A's statement. Then A's marks commit, and its requests leave.
/// B must see those marks: the rows are A's, unknown, never B's to send.
#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn a_mark_committed_while_the_settle_waits_is_seen_under_repeatable_read() {
    let w = world_with_defaults(
        &["default_transaction_isolation = 'repeatable read'"],
        300,
        0,
    )
    .await;
    let pg = w.pg.as_ref().unwrap();
    let (admin, person) = (pg.client().await, pg.client().await);
    let input = w.input(&rows(DEPT, "ok-", 40));
    let a = named_send(&w, &input, "a", &["--rate", "5", "--burst", "1"])
        .spawn()
        .unwrap();
    wait_for_async("A's first requests", Duration::from_secs(30), || async {
        w.stats().total_requests >= 2
    })
    .await;
    person
        .batch_execute(
            "BEGIN; INSERT INTO invoice_dispatch.marks
             SELECT 1, s, 0 FROM generate_series(
                 (SELECT max(seq) + 2 FROM invoice_dispatch.marks), 39) AS s
             ON CONFLICT DO NOTHING",
        )
        .await
        .unwrap();
    wait_for_async("A's marks to wait", Duration::from_secs(30), || async {
        waiting_for_locks(&admin, &pg.database).await >= 1
    })
    .await;
    terminate_the_lock_holder(&w).await;
    let b = named_send(&w, &input, "b", &["--rate", "0"])
        .spawn()
        .unwrap();
    wait_for_async(
        "B's settle to wait for A",
        Duration::from_secs(30),
        || async { waiting_for_locks(&admin, &pg.database).await >= 2 },
    )
    .await;
    person.batch_execute("ROLLBACK").await.unwrap();
    let (a, b) = (
        w.finish(a.wait_with_output().await.unwrap()),
        w.finish(b.wait_with_output().await.unwrap()),
    );
    no_invoice_twice(&w);
    assert!(matches!(b.code, 0 | 2), "B: {}\nA: {}", b.stderr, a.stderr);
    let c = w.send(&input, &[]).await;
    assert_eq!(c.rows.len(), 40, "{}", c.stderr);
    no_invoice_twice(&w);
    assert!(
        c.statuses().iter().all(|s| s == "sent" || s == "skipped"),
        "{:?}",
        c.rows
    );
}
