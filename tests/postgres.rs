//! The shared ledger on a real PostgreSQL (SPEC section 12): runs on several machines at
//! once split one input and never send an invoice twice, whatever dies. Every test here
//! needs the server scripts/services starts, so each is ignored by plain `cargo test`; the
//! rerun, dedupe and resolve tests of tests/ledger.rs and tests/look.rs run on it too.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use invoice_dispatch::simulator::SimConfig;

/// The test that restarts the server takes this alone; the others share it, so that no
/// run of theirs loses its connection to the restart.
static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn slow_world(latency_ms: u64) -> World {
    let latency = Duration::from_millis(latency_ms);
    World::with_on(
        SimConfig {
            latency,
            ..SimConfig::default()
        },
        Backend::Postgres,
    )
    .await
}

/// `send` of `input` with its own results and summary files (`name.csv`, `name.json`).
fn second_command(
    w: &World,
    input: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let out = w.path(&format!("{name}.csv"));
    let summary = w.path(&format!("{name}.json"));
    let mut args = vec![
        "--out",
        out.to_str().unwrap(),
        "--summary-json",
        summary.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    w.send_command(input, &args)
}

fn results_of(w: &World, name: &str) -> Vec<HashMap<String, String>> {
    parse_results(&std::fs::read_to_string(w.path(&format!("{name}.csv"))).unwrap())
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn two_processes_on_one_input_split_it_and_send_every_invoice_once() {
    let _server = SERVER.read().await;
    let w = slow_world(5).await;
    let input = w.input(&rows(DEPT, "ok-", 600));
    let a = second_command(&w, &input, "a", &["--rate", "150"])
        .spawn()
        .unwrap();
    let b = second_command(&w, &input, "b", &["--rate", "150"])
        .spawn()
        .unwrap();
    let (a, b) = (
        a.wait_with_output().await.unwrap(),
        b.wait_with_output().await.unwrap(),
    );
    for out in [&a, &b] {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(w.stats().total_requests, 600);
    no_invoice_twice(&w);
    let (ra, rb) = (results_of(&w, "a"), results_of(&w, "b"));
    let sent = |r: &[HashMap<String, String>]| r.iter().filter(|r| r["status"] == "sent").count();
    assert_eq!(sent(&ra) + sent(&rb), 600);
    assert!(
        sent(&ra) > 0 && sent(&rb) > 0,
        "both took a share: {} / {}",
        sent(&ra),
        sent(&rb)
    );
    for (mine, theirs) in [(&ra, &rb), (&rb, &ra)] {
        for (row, other) in mine.iter().zip(theirs.iter()) {
            if row["status"] == "skipped" {
                assert!(row["message"].starts_with("being sent by run r"), "{row:?}");
                assert_eq!(other["status"], "sent", "{row:?}");
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn one_of_two_processes_killed_then_rerun_sends_nothing_twice() {
    let _server = SERVER.read().await;
    let w = slow_world(5).await;
    let input = w.input(&rows(DEPT, "ok-", 600));
    let mut a = second_command(&w, &input, "a", &["--rate", "150"])
        .spawn()
        .unwrap();
    let b = second_command(&w, &input, "b", &["--rate", "150"])
        .spawn()
        .unwrap();
    wait_for("requests from both", Duration::from_secs(30), || {
        w.stats().total_requests >= 100
    })
    .await;
    signal(&a, libc::SIGKILL);
    a.wait().await.unwrap();
    let b = b.wait_with_output().await.unwrap();
    // b skips what a had claimed: a has not been settled while b runs.
    assert_eq!(
        b.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );
    let rerun = w.send(&input, &[]).await;
    assert_eq!(rerun.rows.len(), 600, "{}", rerun.stderr);
    no_invoice_twice(&w);
    let unknown = rerun.summary["skipped_unknown"].as_u64().unwrap();
    assert!(unknown <= 16, "{unknown} unknown after the kill");
    // Every invoice was received (once), or is reported for a person.
    let received = w.stats().by_invoice;
    for row in &rerun.rows {
        let key = format!("{DEPT}/{}", row["invoice_guid"]);
        let unknown = row["status"] == "skipped" && row["message"].starts_with("unknown");
        assert!(received.contains_key(&key) || unknown, "{row:?}");
    }
    assert!(rerun.stderr.contains("settled run r"), "{}", rerun.stderr);
}

/// Rows of run 1 with an intent and no outcome, and those of them with a leaving mark.
async fn open_intents(w: &World) -> (Vec<i64>, Vec<i64>) {
    let client = w.pg.as_ref().unwrap().client().await;
    let open: Vec<i64> = client
        .query(
            "SELECT r.seq FROM invoice_dispatch.results r
             LEFT JOIN invoice_dispatch.outcomes o ON o.run_id = r.run_id AND o.seq = r.seq
             WHERE r.run_id = 1 AND r.status = 'pending' AND o.seq IS NULL ORDER BY r.seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let marked: Vec<i64> = client
        .query(
            "SELECT seq FROM invoice_dispatch.marks WHERE run_id = 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (open, marked)
}

/// What happens to the server between the kill and the rerun.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Then {
    Nothing,
    /// A restart: its start time is the boot id of marks written without a synchronous
    /// commit.
    Restart,
    /// One backend killed: the server recovers from a crash, keeping its start time.
    BackendCrash,
}

/// Kills one of the server's backends (a process of the server scripts/services started)
/// and waits, with a bound, until the recovered server takes connections again.
async fn crash_a_backend(w: &World) {
    let pg = w.pg.as_ref().unwrap();
    let client = pg.client().await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_for_async("the server to recover", Duration::from_secs(60), || async {
        match Pg::try_client(&pg.url, &pg.password).await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

/// A run killed with answers taking 200 ms; then `then` happens to the server.
async fn killed_run(then: Then) -> (World, std::path::PathBuf, Vec<i64>, Vec<i64>) {
    let w = slow_world(200).await;
    let input = w.input(&rows(DEPT, "ok-", 80));
    let mut child = w
        .send_command(&input, &["--concurrency", "4"])
        .spawn()
        .unwrap();
    wait_for("requests before the kill", Duration::from_secs(30), || {
        w.stats().total_requests >= 12
    })
    .await;
    signal(&child, libc::SIGKILL);
    child.wait().await.unwrap();
    let (open, marked) = open_intents(&w).await;
    assert!(
        open.iter().any(|s| !marked.contains(s)),
        "intents are made ahead of the slots"
    );
    match then {
        Then::Nothing => {}
        Then::Restart => {
            let status = std::process::Command::new("sh")
                .args(["-c", &service("INVOICE_DISPATCH_TEST_PG_RESTART")])
                .status()
                .unwrap();
            assert!(status.success(), "the server restarts");
        }
        Then::BackendCrash => crash_a_backend(&w).await,
    }
    (w, input, open, marked)
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn after_a_kill_rows_that_never_left_are_sent_and_a_server_restart_or_crash_makes_them_all_unknown(
) {
    let _server = SERVER.write().await;
    for then in [Then::Nothing, Then::Restart, Then::BackendCrash] {
        let restart = then != Then::Nothing;
        let (w, input, open, marked) = killed_run(then).await;
        let before = w.stats();
        let rerun = w.send(&input, &["--concurrency", "16"]).await;
        assert_eq!(rerun.rows.len(), 80, "{}", rerun.stderr);
        no_invoice_twice(&w);
        for seq in &open {
            let row = &rerun.rows[*seq as usize];
            let key = format!("{DEPT}/{}", row["invoice_guid"]);
            if restart || marked.contains(seq) {
                assert_eq!(row["status"], "skipped", "{then:?}: {row:?}");
                assert!(row["message"].starts_with("unknown"), "{row:?}");
                assert_eq!(w.stats().by_invoice.get(&key), before.by_invoice.get(&key));
            } else {
                assert_eq!(row["status"], "sent", "{row:?}");
                assert_eq!(w.stats().by_invoice[&key], 1);
            }
        }
    }
}

/// `send` to the simulator with `ledger` as the ledger, and PGPASSWORD as given.
async fn send_with_ledger(w: &World, ledger: &str, password: Option<&str>) -> Run {
    let input = w.input(&rows(DEPT, "ok-", 5));
    let mut cmd = w.send_command(&input, &["--ledger", ledger]);
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    w.finish(cmd.output().await.unwrap())
}

fn assert_refused(run: &Run, w: &World, says: &str, secret: &str) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(says), "{says:?} not in: {}", run.stderr);
    assert!(!run.stderr.contains(secret), "{}", run.stderr);
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn bad_servers_passwords_rights_and_schemas_are_one_clear_error_naming_host_and_database() {
    let _server = SERVER.read().await;
    let w = World::on(Backend::Postgres).await;
    let pg = w.pg.clone().unwrap();
    let (base, _) = pg.url.rsplit_once('/').unwrap();
    let run = send_with_ledger(&w, "postgres://nobody@127.0.0.1:9/nowhere", Some("pw-x1")).await;
    assert_refused(
        &run,
        &w,
        "cannot connect to the ledger postgres://nobody@127.0.0.1:9/nowhere",
        "pw-x1",
    );
    let run = send_with_ledger(&w, &pg.url, Some("wrong-pw-42")).await;
    assert_refused(&run, &w, "password authentication failed", "wrong-pw-42");
    assert!(run.stderr.contains(&pg.database), "{}", run.stderr);
    let run = send_with_ledger(
        &w,
        &format!("postgres://dispatch_admin:{}@x/db", pg.password),
        None,
    )
    .await;
    assert_refused(&run, &w, "holds a password", &pg.password);

    // A user that may not create the ledger's tables.
    let admin = pg.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE clerk_{0} LOGIN PASSWORD 'clerk-pw';
             REVOKE CREATE ON DATABASE {0} FROM PUBLIC;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
            pg.database
        ))
        .await
        .unwrap();
    let clerk = format!(
        "{}/{}",
        base.replace("dispatch_admin", &format!("clerk_{}", pg.database)),
        pg.database
    );
    let run = send_with_ledger(&w, &clerk, Some("clerk-pw")).await;
    assert_refused(&run, &w, "cannot create the ledger's tables", "clerk-pw");

    // A ledger written by a newer release.
    let ok = send_with_ledger(&w, &pg.url, Some(&pg.password)).await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    admin
        .batch_execute("UPDATE invoice_dispatch.meta SET version = 99")
        .await
        .unwrap();
    let before = w.stats().total_requests;
    let run = send_with_ledger(&w, &pg.url, Some(&pg.password)).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("newer invoice-dispatch"),
        "{}",
        run.stderr
    );
    assert_eq!(w.stats().total_requests, before);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test"]
async fn a_connection_lost_mid_run_stops_the_run_with_exit_1_and_the_rerun_is_safe() {
    let _server = SERVER.read().await;
    let w = slow_world(20).await;
    let input = w.input(&rows(DEPT, "ok-", 400));
    let child = w.send_command(&input, &["--rate", "100"]).spawn().unwrap();
    wait_for("some requests", Duration::from_secs(30), || {
        w.stats().total_requests >= 30
    })
    .await;
    let admin = w.pg.as_ref().unwrap().client().await;
    let database = &w.pg.as_ref().unwrap().database;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'invoice-dispatch'",
            &[database],
        )
        .await
        .unwrap();
    let run = w.finish(child.wait_with_output().await.unwrap());
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(database.as_str()), "{}", run.stderr);
    let rerun = w.send(&input, &[]).await;
    assert_eq!(rerun.rows.len(), 400, "{}", rerun.stderr);
    no_invoice_twice(&w);
}
