//! The run engine driven through its handle, as the desk drives it: start, pause, resume,
//! stop and wait, with the same results as the command line; and a ledger that fails
//! mid-run, through a store that fails after N writes and through a real full filesystem.

#[macro_use]
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use invoice_dispatch::config::{self, Command};
use invoice_dispatch::domain::{Clock, Counts, RunId};
use invoice_dispatch::ledger::{self, Batch, Location, Policy, Store};
use invoice_dispatch::run::{self, State};

/// The `send` config the command line would make of `extra`, with the world's simulator,
/// ledger, results and summary, and credentials from a config file.
fn send_config(w: &World, input: &Path, extra: &[&str]) -> config::Send {
    let password = w.write("password.txt", PASSWORD);
    let config = w.fast_config(&format!(
        "username = \"{USER}\"\npassword_file = \"{}\"",
        password.display()
    ));
    let (sim, ledger) = (w.sim.base_url(), w.ledger_arg());
    let (out, summary) = (w.path("results.csv"), w.path("summary.json"));
    let mut args = vec![
        "invoice-dispatch",
        "send",
        input.to_str().unwrap(),
        "--base-url",
        &sim,
        "--ledger",
        &ledger,
        "--out",
        out.to_str().unwrap(),
        "--summary-json",
        summary.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--rate",
        "0",
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    let cli = <invoice_dispatch::cli::Cli as clap::Parser>::try_parse_from(args).unwrap();
    match config::resolve(cli.command).unwrap().command {
        Command::Send(send) => *send,
        _ => panic!("not a send"),
    }
}

/// Waits for the run's summary without holding up this test's runtime, which serves the
/// simulator.
async fn finished(handle: run::Handle) -> run::Summary {
    tokio::task::spawn_blocking(move || handle.wait())
        .await
        .unwrap()
        .unwrap()
}

/// Waits until the run's requests have all been answered: nothing is in flight.
async fn settled(handle: &run::Handle) {
    let events = handle.events();
    wait_for(
        "the requests in flight to end",
        Duration::from_secs(30),
        || {
            let e = events.borrow();
            e.requests == e.counts.get(invoice_dispatch::domain::Status::Sent)
        },
    )
    .await;
}

#[tokio::test]
async fn the_handle_pauses_resumes_and_stops_a_run_and_no_request_leaves_while_paused() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 300));
    let handle = run::start(
        send_config(&w, &input, &["--rate", "40", "--concurrency", "2"]),
        Clock::default(),
    )
    .unwrap();
    wait_for("the first requests", Duration::from_secs(30), || {
        w.stats().total_requests >= 10
    })
    .await;
    assert!(handle.pause());
    assert!(!handle.pause(), "a second pause changes nothing");
    let mut events = handle.events();
    events.wait_for(|e| e.state == State::Paused).await.unwrap();
    // A pause through the handle reaches the ledger too: `runs`, and every machine, see it.
    wait_for_async("`runs` to say paused", Duration::from_secs(2), || async {
        let runs = w.look(&["runs", "--format", "json"]).await.stdout;
        runs.contains(r#""state": "paused""#)
    })
    .await;
    settled(&handle).await;
    let paused_at = w.stats().total_requests;
    // Nothing is awaited here: a second of a paused run must bring no request at all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        w.stats().total_requests,
        paused_at,
        "a request left while paused"
    );
    assert!(handle.resume());
    wait_for("requests after the resume", Duration::from_secs(30), || {
        w.stats().total_requests >= paused_at + 10
    })
    .await;
    handle.stop();
    let summary = finished(handle).await;
    assert_eq!(summary.exit_code, 130, "{summary:?}");
    assert!(summary.paused_seconds >= 1.0, "{summary:?}");
    let run = w.left_behind();
    assert_eq!(run.rows.len(), 300);
    let sent = run.count("sent");
    assert_eq!(sent as u64, w.stats().total_requests);
    assert_eq!(sent + run.count("not_sent"), 300, "{:?}", run.statuses());
    no_invoice_twice(&w);
}

#[tokio::test]
async fn a_run_through_the_handle_writes_what_the_command_line_writes() {
    let rows_in: Vec<String> = ["ok-1", "bad-2", "notext-3", "ok-1", "err500-5"]
        .iter()
        .map(|i| format!("{DEPT},{i},,"))
        .chain(std::iter::once("not a uuid!,x,,".to_string()))
        .collect();
    let (by_handle, by_cli) = (World::start().await, World::start().await);
    let input = by_handle.input(&rows_in);
    let handle = run::start(send_config(&by_handle, &input, &[]), Clock::default()).unwrap();
    let summary = finished(handle).await;
    let cli = by_cli.send(&by_cli.input(&rows_in), &[]).await;
    assert_eq!(i32::from(summary.exit_code), cli.code, "{}", cli.stderr);
    let handle_rows = by_handle.left_behind().rows;
    assert_eq!(handle_rows.len(), cli.rows.len());
    for (a, b) in handle_rows.iter().zip(&cli.rows) {
        for column in [
            "status",
            "http_status",
            "attempts",
            "text_sent",
            "errors",
            "message",
        ] {
            assert_eq!(a[column], b[column], "{column}: {a:?} / {b:?}");
        }
    }
}

/// A SQLite store whose commits fail after the first `left`, like a disk that fills.
struct FailingAfter {
    inner: Box<dyn Store>,
    left: usize,
}

impl Store for FailingAfter {
    fn begin(
        &mut self,
        run: &ledger::RunInfo,
        p: &Policy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<RunId> {
        self.inner.begin(run, p, now)
    }
    fn marks(&self) -> anyhow::Result<ledger::Marks> {
        self.inner.marks()
    }
    fn commit(
        &mut self,
        batch: &mut Batch,
        p: &Policy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        if self.left == 0 {
            anyhow::bail!("disk I/O error (the test's store fails now)");
        }
        self.left -= 1;
        self.inner.commit(batch, p, now)
    }
    fn settle(
        &mut self,
        end: &ledger::RunEnd,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Counts> {
        self.inner.settle(end, now)
    }
    fn close(&mut self, code: u8, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<()> {
        self.inner.close(code, now)
    }
    fn results(
        &mut self,
        run: RunId,
        f: &mut dyn FnMut(ledger::ResultRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.inner.results(run, f)
    }
    fn runs(&mut self, last: usize) -> anyhow::Result<Vec<ledger::RunRecord>> {
        self.inner.runs(last)
    }
    fn run(&mut self, run: RunId) -> anyhow::Result<Option<ledger::RunRecord>> {
        self.inner.run(run)
    }
    fn history(&mut self, i: &str, d: Option<&str>) -> anyhow::Result<Vec<ledger::HistoryEntry>> {
        self.inner.history(i, d)
    }
    fn resolve(
        &mut self,
        r: &ledger::ResolveRequest,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<ledger::Resolved> {
        self.inner.resolve(r, now)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn pace(&mut self, target: &str) -> anyhow::Result<Option<f64>> {
        self.inner.pace(target)
    }
    fn keep_pace(
        &mut self,
        t: &str,
        rate: f64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        self.inner.keep_pace(t, rate, now)
    }
    fn priors(
        &mut self,
        t: &str,
        keys: &[(String, String)],
    ) -> anyhow::Result<Vec<Option<ledger::Prior>>> {
        self.inner.priors(t, keys)
    }
}

/// What a run whose ledger failed must leave: exit 1 with the reason, a results file with
/// every row, each request the API received shown as such, nothing sent twice, nothing
/// sent after the failure but what was in flight.
fn assert_failed_run_left_results(w: &World, (code, stopped): (u8, &str), rows: usize) {
    assert_eq!(code, 1, "{stopped}");
    assert!(
        stopped.contains("the ledger could not be written"),
        "{stopped}"
    );
    let run = w.left_behind();
    assert_eq!(run.rows.len(), rows, "every row is in the results");
    no_invoice_twice(w);
    for row in &run.rows {
        let received = w.received(DEPT, &row["invoice_guid"]);
        match row["status"].as_str() {
            "sent" => assert_eq!(received, 1, "{row:?}"),
            "not_sent" => assert_eq!(received, 0, "{row:?}"),
            other => panic!("{other}: {row:?}"),
        }
    }
    assert!(
        run.count("sent") > 0 && run.count("not_sent") > 0,
        "{:?}",
        run.statuses()
    );
    assert!(
        run.rows
            .iter()
            .any(|r| r["message"].contains("the ledger could not record this outcome")),
        "outcomes the ledger refused say so"
    );
}

#[tokio::test]
async fn a_store_that_fails_mid_run_still_leaves_results_and_exit_1() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 400));
    let store = ledger::open(&Location::Sqlite(w.ledger()), false).unwrap();
    let failing = Box::new(FailingAfter {
        inner: store,
        left: 6,
    });
    let config = send_config(&w, &input, &["--concurrency", "8"]);
    let handle = run::start_on(config, Clock::default(), Some(failing)).unwrap();
    let summary = finished(handle).await;
    let stopped = summary.stopped.clone().unwrap_or_default();
    assert_failed_run_left_results(&w, (summary.exit_code, &stopped), 400);
}

/// A tmpfs of `size` mounted on a new folder, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root: run scripts/test as root"
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
#[ignore = "mounts a tmpfs, as root: run scripts/test"]
async fn a_ledger_on_a_full_filesystem_still_leaves_results_and_exit_1() {
    let w = World::start().await;
    let disk = Tmpfs::mount("600k");
    let input = w.input(&rows(DEPT, "ok-", 6000));
    let ledger = disk.0.path().join("ledger.sqlite3");
    let out = w
        .send(
            &input,
            &["--ledger", ledger.to_str().unwrap(), "--concurrency", "8"],
        )
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("No space left") || out.stderr.contains("full"),
        "{}",
        out.stderr
    );
    let stopped = out.summary["stopped"].as_str().unwrap_or_default();
    assert_failed_run_left_results(&w, (1, stopped), 6000);
}
