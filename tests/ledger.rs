//! Never twice, never lost: reruns, interrupts, crashes and concurrent runs on one ledger.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use invoice_dispatch::ledger::journal::Journal;
use invoice_dispatch::simulator::SimConfig;

on_both_ledgers!(
    running_the_same_command_twice_sends_nothing_the_second_time,
    reruns_retry_failed_invalid_and_keep_unknown_until_asked,
    the_dedupe_window_expires,
    a_rehearsal_never_makes_a_real_send_look_done,
    sigint_finishes_in_flight_writes_results_and_the_rerun_sends_only_the_rest,
    sigterm_is_handled_like_sigint,
    sigkill_at_a_random_moment_then_rerun_never_sends_an_invoice_twice,
    a_kill_while_the_ledger_writer_is_held_up_loses_no_answer,
    a_row_skipped_because_it_may_have_been_delivered_still_exits_2,
    simulate_with_a_ledger_rehearses_the_rerun,
);

async fn running_the_same_command_twice_sends_nothing_the_second_time(backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&rows(DEPT, "ok-", 25));
    let first = w.send(&input, &[]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(w.stats().total_requests, 25);
    let second = w.send(&input, &[]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(w.stats().total_requests, 25);
    assert_eq!(second.count("skipped"), 25);
    assert_eq!(second.summary["requests"], 0);
    let msg = &second.rows[0]["message"];
    assert!(
        msg.starts_with("sent 20") && msg.contains("by run r1"),
        "{msg}"
    );
    // Links from the first run are not in the second run's rows, but the rows still say why.
    assert_eq!(second.rows.len(), 25);
}

async fn reruns_retry_failed_invalid_and_keep_unknown_until_asked(backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&[
        &format!("{DEPT},ok-1,,"),
        &format!("{DEPT},bad-2,,"),
        &format!("{DEPT},err500-3,,"),
        "../x,ok-4,,",
    ]);
    let first = w.send(&input, &[]).await;
    assert_eq!(first.statuses(), ["sent", "failed", "unknown", "invalid"]);
    let second = w.send(&input, &[]).await;
    assert_eq!(
        second.statuses(),
        ["skipped", "failed", "skipped", "invalid"]
    );
    assert!(
        second.rows[2]["message"].starts_with("unknown"),
        "{:?}",
        second.rows[2]
    );
    assert_eq!(w.received(DEPT, "ok-1"), 1);
    assert_eq!(w.received(DEPT, "bad-2"), 2);
    assert_eq!(w.received(DEPT, "err500-3"), 1);
    assert_eq!(second.code, 2);
    let third = w.send(&input, &["--retry-unknown"]).await;
    assert_eq!(
        third.statuses(),
        ["skipped", "failed", "unknown", "invalid"]
    );
    assert_eq!(w.received(DEPT, "err500-3"), 2);
    let fourth = w.send(&input, &["--resend"]).await;
    assert_eq!(fourth.rows[0]["status"], "sent");
    assert_eq!(w.received(DEPT, "ok-1"), 2);
}

async fn the_dedupe_window_expires(backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    let window = "dedupe_window = \"1ms\"";
    w.send_with_config(&input, window, &[]).await;
    let again = w.send_with_config(&input, window, &[]).await;
    assert_eq!(again.statuses(), ["sent"]);
    assert_eq!(w.received(DEPT, "ok-1"), 2);
}

async fn a_rehearsal_never_makes_a_real_send_look_done(backend: Backend) {
    let w = World::on(backend).await;
    let other = invoice_dispatch::simulator::Simulator::spawn(SimConfig::default())
        .await
        .unwrap();
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    let run = w.send(&input, &[]).await;
    assert_eq!(run.statuses(), ["sent"]);
    // Same ledger, another target: the first send does not count there.
    let mut cmd = w.command();
    cmd.arg("send")
        .arg(&input)
        .args(["--base-url", &other.base_url(), "--ledger"])
        .arg(w.ledger_arg())
        .arg("--out")
        .arg(w.path("results.csv"));
    let run = w.finish(cmd.output().await.unwrap());
    assert_eq!(run.statuses(), ["sent"]);
    assert_eq!(other.stats().total_requests, 1);
}

/// Sends 200 rows at 40/s, delivers `sig` after the first 10 requests, and checks the
/// interrupted run (exit 130, every row accounted for) and the rerun (only the rest sent).
async fn interrupted_mid_run_then_rerun(sig: i32, backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&rows(DEPT, "ok-", 200));
    let child = w
        .send_command(&input, &["--rate", "40", "--concurrency", "4"])
        .spawn()
        .unwrap();
    wait_for("some requests", Duration::from_secs(20), || {
        w.stats().total_requests >= 10
    })
    .await;
    signal(&child, sig);
    let out = child.wait_with_output().await.unwrap();
    let run = w.finish(out);
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert_eq!(run.rows.len(), 200);
    let sent = run.count("sent");
    assert!(sent >= 10 && run.count("not_sent") > 0, "{:?}", run.summary);
    assert_eq!(sent + run.count("not_sent"), 200, "{:?}", run.summary);
    assert_eq!(w.stats().total_requests as usize, sent);

    let rerun = w.send(&input, &[]).await;
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert_eq!(rerun.count("skipped"), sent);
    assert_eq!(rerun.count("sent"), 200 - sent);
    assert_eq!(w.stats().total_requests, 200);
    no_invoice_twice(&w);
}

async fn sigint_finishes_in_flight_writes_results_and_the_rerun_sends_only_the_rest(
    backend: Backend,
) {
    interrupted_mid_run_then_rerun(libc::SIGINT, backend).await;
}

async fn sigterm_is_handled_like_sigint(backend: Backend) {
    interrupted_mid_run_then_rerun(libc::SIGTERM, backend).await;
}

/// The ledger's file and folder as the second run names them: a symlink to the file, and
/// the same name in a symlinked folder.
fn other_names_of_the_ledger(w: &World) -> Vec<std::path::PathBuf> {
    let alias = w.path("alias.sqlite3");
    std::os::unix::fs::symlink(w.ledger(), &alias).unwrap();
    let folder = w.path("linked-folder");
    std::os::unix::fs::symlink(w.dir.path(), &folder).unwrap();
    vec![alias, folder.join("ledger.sqlite3")]
}

/// A run of `input` sending slowly, once it has sent its first request.
async fn running_first(w: &World, input: &std::path::Path) -> tokio::process::Child {
    let first = w
        .send_command(input, &["--rate", "30", "--concurrency", "2"])
        .spawn()
        .unwrap();
    wait_for(
        "the first run to start sending",
        Duration::from_secs(20),
        || w.stats().total_requests >= 1,
    )
    .await;
    first
}

/// A second `send` of `input` on `ledger` while `first` runs: exit 1, naming the ledger
/// in use and the first run's process, with no results written. Its stderr.
async fn assert_refused_while(
    w: &World,
    input: &std::path::Path,
    ledger: &std::path::Path,
    first: &tokio::process::Child,
) -> String {
    let mut second = w.command();
    second
        .arg("send")
        .arg(input)
        .args(["--base-url", &w.sim.base_url(), "--ledger"])
        .arg(ledger)
        .arg("--out")
        .arg(w.path("second.csv"));
    let out = second.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}: {stderr}", ledger.display());
    assert!(stderr.contains("is in use"), "{stderr}");
    let pid = format!("pid {}", first.id().unwrap());
    assert!(stderr.contains(&pid), "{stderr}");
    assert!(!w.path("second.csv").exists());
    stderr
}

#[tokio::test]
async fn a_second_run_through_a_symlink_is_refused_before_it_writes_and_the_first_finishes() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 60));
    let first = running_first(&w, &input).await;
    for name in other_names_of_the_ledger(&w) {
        assert_refused_while(&w, &input, &name, &first).await;
    }
    let first = w.finish(first.wait_with_output().await.unwrap());
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.count("sent"), 60);
    no_invoice_twice(&w);
    // The refused runs left no record: they never wrote.
    let runs = w.look(&["runs", "--format", "json"]).await;
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
}

#[tokio::test]
async fn a_second_run_on_the_same_ledger_exits_1_naming_the_ledger_and_the_other_process() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 100));
    let first = running_first(&w, &input).await;
    let stderr = assert_refused_while(&w, &input, &w.ledger(), &first).await;
    assert!(stderr.contains("ledger.sqlite3"), "{stderr}");
    signal(&first, libc::SIGINT);
    let mut first = first;
    first.wait().await.unwrap();
    no_invoice_twice(&w);
}

async fn sigkill_at_a_random_moment_then_rerun_never_sends_an_invoice_twice(backend: Backend) {
    let w = World::with_on(
        SimConfig {
            latency: Duration::from_millis(5),
            ..SimConfig::default()
        },
        backend,
    )
    .await;
    let n = 2000;
    let input = w.input(&rows(DEPT, "ok-", n));
    let args = ["--rate", "200", "--concurrency", "16"];
    let mut child = w.send_command(&input, &args).spawn().unwrap();
    let kill_after = 50 + rand::random::<u64>() % 1500;
    wait_for("requests before the kill", Duration::from_secs(30), || {
        w.stats().total_requests >= kill_after
    })
    .await;
    signal(&child, libc::SIGKILL);
    child.wait().await.unwrap();
    let before = w.stats().total_requests;

    let rerun = w.send(&input, &args).await;
    assert_eq!(rerun.rows.len(), n);
    no_invoice_twice(&w);
    let stats = w.stats();
    // Every invoice was either received once, or is reported for a person to check.
    let unknown = rerun
        .rows
        .iter()
        .filter(|r| r["status"] == "skipped" && r["message"].starts_with("unknown"))
        .count();
    assert!(
        unknown <= 16,
        "{unknown} rows in flight at the kill, concurrency 16"
    );
    assert_eq!(
        rerun.count("sent") + rerun.count("skipped"),
        n,
        "{:?}",
        rerun.summary
    );
    assert_eq!(
        stats.total_requests as usize,
        before as usize + rerun.count("sent")
    );
    // Rows an earlier run may have delivered need a person: exit 2, not 0.
    let want = if unknown > 0 { 2 } else { 0 };
    assert_eq!(rerun.code, want, "{}", rerun.stderr);
    assert_eq!(rerun.summary["skipped_unknown"], unknown as u64);
}

/// Holds up the ledger's writer as a slow disk or a busy server would: SQLite's write lock,
/// or PostgreSQL's lock on the table admissions write to (answers do not touch it).
enum Hold {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

const ADMITTED: &str = "SELECT count(*) FROM results WHERE status = 'pending'";

impl Hold {
    /// Takes the hold once rows admitted to be sent are `ahead` of those the API received,
    /// so that they will be sent while the writer is held. The requests received then.
    async fn take(w: &World, ahead: u64) -> (Hold, u64) {
        for _ in 0..100 {
            let hold = match &w.pg {
                None => {
                    let conn = rusqlite::Connection::open(w.ledger()).unwrap();
                    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                    Hold::Sqlite(conn)
                }
                Some(pg) => {
                    let client = pg.client().await;
                    client
                        .batch_execute(
                            "SET search_path = invoice_dispatch; BEGIN;
                             LOCK TABLE results IN EXCLUSIVE MODE",
                        )
                        .await
                        .unwrap();
                    Hold::Postgres(client)
                }
            };
            let received = w.stats().total_requests;
            let admitted: i64 = match &hold {
                Hold::Sqlite(conn) => conn.query_row(ADMITTED, [], |r| r.get(0)).unwrap(),
                Hold::Postgres(client) => client.query_one(ADMITTED, &[]).await.unwrap().get(0),
            };
            if admitted as u64 >= received + ahead {
                return (hold, received);
            }
            hold.let_go().await;
            wait_for("another request", Duration::from_secs(20), || {
                w.stats().total_requests > received
            })
            .await;
        }
        panic!("the run never got {ahead} rows ahead of its requests");
    }

    async fn let_go(self) {
        match self {
            Hold::Sqlite(conn) => conn.execute_batch("ROLLBACK").unwrap(),
            Hold::Postgres(client) => client.batch_execute("ROLLBACK").await.unwrap(),
        }
    }

    /// Lets go once the run was killed, and waits until its sessions are gone (a session
    /// blocked on the lock learns only afterwards that its client died).
    async fn let_go_of_the_dead(self) {
        let Hold::Postgres(client) = self else {
            return self.let_go().await;
        };
        client.batch_execute("ROLLBACK").await.unwrap();
        let others = "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()";
        let client = &client;
        wait_for_async(
            "the killed run's sessions to end",
            Duration::from_secs(10),
            || async move {
                client
                    .query_one(others, &[])
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    == 0
            },
        )
        .await;
    }
}

/// Answers are kept before their send slot is released, so a kill while the writer lags
/// far behind leaves at most the slots' rows unknown: every other row the API answered is
/// known to the rerun, and skipped as sent.
async fn a_kill_while_the_ledger_writer_is_held_up_loses_no_answer(backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&rows(DEPT, "ok-", 200));
    let args = ["--rate", "50", "--concurrency", "4"];
    let mut child = w.send_command(&input, &args).spawn().unwrap();
    wait_for("the first request", Duration::from_secs(20), || {
        w.stats().total_requests >= 1
    })
    .await;
    let (hold, held_at) = Hold::take(&w, 6).await;
    wait_for(
        "answers while the writer is held",
        Duration::from_secs(4),
        || w.stats().total_requests >= held_at + 6,
    )
    .await;
    signal(&child, libc::SIGKILL);
    child.wait().await.unwrap();
    hold.let_go_of_the_dead().await;
    let before = w.stats();

    let rerun = w.send(&input, &args).await;
    assert_eq!(rerun.rows.len(), 200, "{}", rerun.stderr);
    no_invoice_twice(&w);
    let (mut unknown, mut known) = (0, 0);
    for row in &rerun.rows {
        let key = format!("{DEPT}/{}", row["invoice_guid"]);
        if before.by_invoice.contains_key(&key) {
            assert_eq!(row["status"], "skipped", "{row:?}");
            match row["message"].starts_with("unknown") {
                true => unknown += 1,
                false => known += 1,
            }
        } else {
            assert_eq!(row["status"], "sent", "{row:?}");
        }
    }
    assert!(
        unknown <= 4,
        "{unknown} unknown and {known} known of {} received, concurrency 4",
        before.total_requests
    );
}

#[tokio::test]
async fn a_corrupt_newer_or_unwritable_ledger_is_fatal_before_sending() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);

    std::fs::write(
        w.ledger(),
        b"this is not a database, just some bytes that are long enough",
    )
    .unwrap();
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("ledger"), "{}", run.stderr);
    std::fs::remove_file(w.ledger()).unwrap();

    {
        let conn = rusqlite::Connection::open(w.ledger()).unwrap();
        conn.execute_batch("PRAGMA user_version = 99;").unwrap();
    }
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("newer"), "{}", run.stderr);

    // A folder where the ledger should be: cannot be opened as a database.
    let blocked = w.write("not-a-folder", "x");
    let mut cmd = w.command();
    cmd.arg("send")
        .arg(&input)
        .args(["--base-url", &w.sim.base_url(), "--ledger"])
        .arg(blocked.join("ledger.sqlite3"));
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ledger"));

    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn no_ledger_warns_loudly_and_remembers_nothing() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    let mut cmd = w.command();
    cmd.arg("send")
        .arg(&input)
        .args(["--base-url", &w.sim.base_url(), "--no-ledger", "--out"])
        .arg(w.path("results.csv"));
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WITHOUT A LEDGER"));
    let out = w
        .command()
        .arg("send")
        .arg(&input)
        .args(["--base-url", &w.sim.base_url(), "--no-ledger"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(w.received(DEPT, "ok-1"), 2);
}

async fn a_row_skipped_because_it_may_have_been_delivered_still_exits_2(backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&[&format!("{DEPT},err500-1,,"), &format!("{DEPT},ok-2,,")]);
    let first = w.send(&input, &[]).await;
    assert_eq!(first.statuses(), ["unknown", "sent"]);
    let second = w.send(&input, &[]).await;
    assert_eq!(second.statuses(), ["skipped", "skipped"]);
    assert_eq!(second.code, 2, "{}", second.stderr);
    assert_eq!(second.summary["skipped_unknown"], 1);
    assert_eq!(w.received(DEPT, "err500-1"), 1);
}

/// A ledger written by the first release (schema 1) is upgraded in place and keeps what it
/// knew: an invoice it sent stays skipped, one it left in flight stays unknown.
#[tokio::test]
async fn a_schema_1_ledger_is_upgraded_and_its_memory_kept() {
    let w = World::start().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    {
        let conn = rusqlite::Connection::open(w.ledger()).unwrap();
        // Schema 1 exactly as that release created it.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE runs (id INTEGER PRIMARY KEY, started_ms INTEGER NOT NULL,
                 finished_ms INTEGER, pid INTEGER NOT NULL, input TEXT NOT NULL,
                 target TEXT NOT NULL, exit_code INTEGER);
             CREATE TABLE sends (target TEXT NOT NULL, dept TEXT NOT NULL, invoice TEXT NOT NULL,
                 status TEXT NOT NULL, run_id INTEGER NOT NULL, at_ms INTEGER NOT NULL,
                 sent_run INTEGER, sent_ms INTEGER,
                 PRIMARY KEY (target, dept, invoice)) WITHOUT ROWID;
             CREATE TABLE results (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL,
                 seq INTEGER NOT NULL, line INTEGER NOT NULL, dept TEXT, invoice TEXT,
                 status TEXT NOT NULL, http_status INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
                 payment_link TEXT, invoice_link TEXT, text_sent TEXT, email_sent TEXT,
                 errors TEXT NOT NULL DEFAULT '', warnings TEXT NOT NULL DEFAULT '',
                 message TEXT NOT NULL DEFAULT '', completed_at TEXT NOT NULL DEFAULT '');
             CREATE INDEX results_key ON results (run_id, dept, invoice);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let target = w.sim.base_url();
        conn.execute(
            "INSERT INTO runs (id, started_ms, pid, input, target) VALUES (1, ?1, 1, 'old.csv', ?2)",
            rusqlite::params![now_ms - 60_000, target],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sends VALUES (?1, ?2, 'ok-1', 'sent', 1, ?3, 1, ?3),
                                      (?1, ?2, 'ok-2', 'in_flight', 1, ?3, NULL, NULL)",
            rusqlite::params![target, DEPT, now_ms - 60_000],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO results (id, run_id, seq, line, dept, invoice, status, http_status,
                 attempts, payment_link, completed_at)
             VALUES (4294967296, 1, 0, 2, ?1, 'ok-1', 'sent', 200, 1, 'https://pay/1', 'then')",
            rusqlite::params![DEPT],
        )
        .unwrap();
    }
    let input = w.input(&[
        &format!("{DEPT},ok-1,,"),
        &format!("{DEPT},ok-2,,"),
        &format!("{DEPT},ok-3,,"),
    ]);
    let run = w.send(&input, &[]).await;
    assert_eq!(
        run.statuses(),
        ["skipped", "skipped", "sent"],
        "{}",
        run.stderr
    );
    assert!(
        run.rows[0]["message"].contains("by run r1"),
        "{:?}",
        run.rows[0]
    );
    assert!(
        run.rows[1]["message"].starts_with("unknown: "),
        "{:?}",
        run.rows[1]
    );
    assert_eq!(run.code, 2);
    assert_eq!(w.stats().total_requests, 1);
    assert_eq!(w.received(DEPT, "ok-3"), 1);

    let conn = rusqlite::Connection::open(w.ledger()).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    // The old run's row details moved, not lost.
    let link: String = conn
        .query_row(
            "SELECT payment_link FROM outcomes WHERE id = 4294967296",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(link, "https://pay/1");
    // And this run's send was folded into what the next run will read.
    let status: String = conn
        .query_row("SELECT status FROM sends WHERE invoice = 'ok-3'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "sent");
}

/// The built-in simulator gets a new port each run; a rehearsal with a ledger still
/// rehearses the rerun.
async fn simulate_with_a_ledger_rehearses_the_rerun(backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&rows(DEPT, "ok-", 3));
    let simulate = |input: &std::path::Path| {
        let mut cmd = w.command();
        cmd.arg("send")
            .arg(input)
            .args(["--simulate", "--yes", "--no-progress", "--ledger"])
            .arg(w.ledger_arg())
            .arg("--out")
            .arg(w.path("results.csv"));
        cmd
    };
    let first = simulate(&input).output().await.unwrap();
    assert_eq!(first.status.code(), Some(0));
    let second = w.finish(simulate(&input).output().await.unwrap());
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.statuses(), ["skipped", "skipped", "skipped"]);
}

/// Rows of run 1 with an intent and no outcome, and what its journal holds.
fn intents_and_journal(w: &World) -> (Vec<u64>, Journal) {
    let conn = rusqlite::Connection::open(w.ledger()).unwrap();
    let open: Vec<u64> = conn
        .prepare(
            "SELECT r.seq FROM results r LEFT JOIN outcomes o ON o.id = r.id
             WHERE r.run_id = 1 AND r.status = 'pending' AND o.id IS NULL ORDER BY r.seq",
        )
        .unwrap()
        .query_map([], |r| r.get::<_, i64>(0).map(|s| s as u64))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut path = w.ledger().into_os_string();
    path.push(".r1.marks");
    let journal = Journal::read(path.as_ref(), &open.iter().copied().collect()).unwrap();
    (open, journal)
}

/// Sends the rows with answers taking 200 ms, on boot `boot`, and kills the run with
/// SIGKILL once `after` requests arrived.
async fn killed_run(w: &World, input: &std::path::Path, boot: &str, after: u64) {
    let mut child = w
        .send_command(input, &["--concurrency", "4"])
        .env("INVOICE_DISPATCH_TEST_BOOT_ID", boot)
        .spawn()
        .unwrap();
    wait_for("requests before the kill", Duration::from_secs(30), || {
        w.stats().total_requests >= after
    })
    .await;
    signal(&child, libc::SIGKILL);
    child.wait().await.unwrap();
}

/// The power-cut stand-in: after a kill, a rerun on another boot id cannot trust the
/// journal (a power cut may have lost it), so every row with an intent and no outcome is
/// unknown and none is sent; on the same boot id, the rows that never left are sent, once,
/// and those answered before the kill keep their answer.
#[tokio::test]
async fn after_a_kill_another_boot_id_makes_every_open_intent_unknown_and_the_same_sends_what_never_left(
) {
    for same_boot in [false, true] {
        let w = World::with(SimConfig {
            latency: Duration::from_millis(200),
            ..SimConfig::default()
        })
        .await;
        let input = w.input(&rows(DEPT, "ok-", 80));
        killed_run(&w, &input, "boot-A", 12).await;
        let (open, journal) = intents_and_journal(&w);
        let never_left: Vec<u64> = open
            .iter()
            .copied()
            .filter(|s| !journal.marked.contains(s))
            .collect();
        assert!(
            !never_left.is_empty(),
            "intents are written ahead of the slots: {open:?}"
        );
        let before = w.stats();
        let received_before = |invoice: &str| {
            before
                .by_invoice
                .get(&format!("{DEPT}/{invoice}"))
                .copied()
                .unwrap_or(0)
        };

        let boot = if same_boot { "boot-A" } else { "boot-B" };
        let mut rerun_cmd = w.send_command(&input, &["--concurrency", "16"]);
        rerun_cmd.env("INVOICE_DISPATCH_TEST_BOOT_ID", boot);
        let rerun = w.finish(rerun_cmd.output().await.unwrap());
        assert_eq!(rerun.rows.len(), 80, "{}", rerun.stderr);
        no_invoice_twice(&w);
        let (mut unanswered, mut answered) = (0, 0);
        for seq in &open {
            let row = &rerun.rows[*seq as usize];
            let invoice = &row["invoice_guid"];
            if same_boot && journal.answer(*seq).is_some() {
                // Answered before the kill, not yet committed: the journal has the answer.
                assert_eq!(row["status"], "skipped", "{row:?}");
                assert!(row["message"].starts_with("sent "), "{row:?}");
                assert_eq!(w.received(DEPT, invoice), 1);
                answered += 1;
            } else if journal.marked.contains(seq) || !same_boot {
                assert_eq!(row["status"], "skipped", "{row:?}");
                assert!(row["message"].starts_with("unknown"), "{row:?}");
                assert_eq!(w.received(DEPT, invoice), received_before(invoice));
                unanswered += 1;
            } else {
                assert_eq!(row["status"], "sent", "{row:?}");
                assert_eq!(w.received(DEPT, invoice), 1);
            }
        }
        if same_boot {
            assert!(unanswered <= 4, "{unanswered} unanswered, concurrency 4");
        }
        // The dead run's rows are settled in the ledger too.
        let unknown: usize = rerun
            .rows
            .iter()
            .filter(|r| r["message"].starts_with("unknown"))
            .count();
        let want = if same_boot {
            open.len() - never_left.len() - answered
        } else {
            open.len()
        };
        assert_eq!(unknown, want, "boot {boot}");
        assert_eq!(rerun.code, if unknown > 0 { 2 } else { 0 });
    }
}

/// A ledger written by the release before schema 3 (tests/fixtures/README.md) is upgraded
/// in place and keeps what it knew, its dead run included.
#[tokio::test]
async fn a_schema_2_ledger_is_upgraded_in_place_and_its_dead_run_settled() {
    let w = World::start().await;
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ledger-schema2.sqlite3"),
        w.ledger(),
    )
    .unwrap();
    {
        let conn = rusqlite::Connection::open(w.ledger()).unwrap();
        let target = w.sim.base_url();
        conn.execute("UPDATE runs SET target = ?1", [&target])
            .unwrap();
        conn.execute("UPDATE sends SET target = ?1", [&target])
            .unwrap();
    }
    let input = w.input(&[
        &format!("{DEPT},ok-A1,,"),
        &format!("{DEPT},notext-A2,,"),
        &format!("{DEPT},bad-A3,,"),
        &format!("{DEPT},err500-A4,,"),
        &format!("{DEPT},ok-B1,,"),
        &format!("{DEPT},slow-B2,,"),
        &format!("{DEPT},ok-C1,,"),
    ]);
    // The fixture's sends are from 2026-11-29: a window that still covers them.
    let run = w
        .send_with_config(&input, "dedupe_window = \"100000d\"", &[])
        .await;
    assert_eq!(
        run.statuses(),
        ["skipped", "skipped", "failed", "skipped", "skipped", "skipped", "sent"],
        "{}",
        run.stderr
    );
    for (i, prefix) in [
        (0, "sent "),
        (1, "sent "),
        (3, "unknown"),
        (4, "sent "),
        (5, "unknown"),
    ] {
        assert!(
            run.rows[i]["message"].starts_with(prefix),
            "{:?}",
            run.rows[i]
        );
    }
    assert_eq!(run.summary["skipped_unknown"], 2);
    assert_eq!(w.stats().total_requests, 2, "bad-A3 again, and ok-C1");
    assert_eq!(run.code, 2);
    let conn = rusqlite::Connection::open(w.ledger()).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    let history = w.look(&["history", "ok-A1", "--format", "json"]).await;
    assert_eq!(history.code, 0, "{}", history.stderr);
    let entries: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let sent = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["status"] == "sent")
        .unwrap_or_else(|| panic!("{entries:#}"));
    assert_eq!(sent["run"], "r1");
    assert!(
        sent["payment_link"].as_str().unwrap().contains("/p/"),
        "{sent}"
    );
}
