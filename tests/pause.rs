//! `pause RUN` and `resume RUN` from a second process, on both ledgers (SPEC section 15):
//! the send stops starting requests within 2 seconds and no request leaves while paused
//! (the simulator's counts), `runs` says `paused`, Ctrl-C still stops it, the summary gives
//! the paused time; and what cannot be paused is refused, saying why.

#[macro_use]
mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use invoice_dispatch::domain::RunId;
use invoice_dispatch::ledger::{self, Location};
use tokio::io::AsyncBufReadExt;

/// Requests in flight at most: all that may still arrive once the run said it paused.
const CONCURRENCY: u64 = 2;

/// A `send` going in the background, its log read as it comes.
struct Sending {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Sending {
    /// `rows` invoices at 20 requests a second: several seconds of sending.
    fn start(w: &World, rows: usize) -> Sending {
        let input = w.input(&common::rows(DEPT, "inv-", rows));
        let concurrency = CONCURRENCY.to_string();
        let mut cmd = w.send_command(&input, &["--rate", "20", "--concurrency", &concurrency]);
        let mut child = cmd.stdout(Stdio::null()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let into = log.clone();
        let reader = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = into.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Sending { child, log, reader }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log says `what`; how long that took.
    async fn said(&self, what: &str, limit: Duration) -> Duration {
        let since = Instant::now();
        wait_for(&format!("the log to say {what:?}"), limit, || {
            self.log().contains(what)
        })
        .await;
        since.elapsed()
    }

    /// Waits for the process to end (bounded), with its results and summary.
    async fn finish(mut self, w: &World) -> Run {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the send ends within 60 s")
            .unwrap();
        (&mut self.reader).await.unwrap();
        w.finish(std::process::Output {
            status,
            stdout: Vec::new(),
            stderr: self.log().into_bytes(),
        })
    }
}

/// The newest run, as `runs --format json` shows it.
async fn newest_run(w: &World) -> serde_json::Value {
    let look = w.look(&["runs", "--format", "json"]).await;
    assert_eq!(look.code, 0, "{look:?}");
    let runs: serde_json::Value = serde_json::from_str(&look.stdout).unwrap();
    runs[0].clone()
}

/// The id of the run going now, once it has sent a few requests.
async fn sending_run(w: &World) -> String {
    wait_for("the first requests", Duration::from_secs(30), || {
        w.stats().total_requests >= 5
    })
    .await;
    let run = newest_run(w).await;
    assert_eq!(run["state"], "running", "{run}");
    run["id"].as_str().unwrap().to_string()
}

/// Pauses `run` from a second process and waits until the send says it paused: within
/// 2 seconds. Then no request may reach the simulator for 2 seconds.
async fn pause_and_watch_nothing_leave(w: &World, send: &Sending, run: &str) {
    let look = w.look(&["pause", run]).await;
    assert_eq!(look.code, 0, "{look:?}");
    assert!(
        look.stdout.contains(&format!(
            "paused {run}: it stops starting requests within 2 seconds; resume with `invoice-dispatch resume {run}`"
        )),
        "{look:?}"
    );
    let user = whoami::username();
    let line = format!("paused by {user} at ");
    let took = send.said(&line, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(2), "the pause took {took:?}");
    assert!(send
        .log()
        .contains(&format!("`invoice-dispatch resume {run}`")));
    let at_pause = w.stats().total_requests;
    // The absence of requests is what is checked, so the window is fixed: it starts once
    // the requests that were already on the wire when the run paused have landed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quiet_from = w.stats().total_requests;
    assert!(
        quiet_from <= at_pause + CONCURRENCY,
        "requests started while paused"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        w.stats().total_requests,
        quiet_from,
        "a request reached the simulator while the run was paused: {:?}",
        w.stats().per_second
    );
    let record = newest_run(w).await;
    assert_eq!(record["state"], "paused", "{record}");
    assert_eq!(record["paused_by"], user.as_str(), "{record}");
    let table = w.look(&["runs"]).await;
    assert!(
        table.stdout.contains(&format!("paused (by {user})")),
        "{table:?}"
    );
}

async fn pause_and_resume_from_a_second_process(backend: Backend) {
    let w = World::on(backend).await;
    let rows = 120;
    let send = Sending::start(&w, rows);
    let run = sending_run(&w).await;
    pause_and_watch_nothing_leave(&w, &send, &run).await;
    let again = w.look(&["pause", &run]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stdout.contains(&format!(
            "{run} is already paused (by {}",
            whoami::username()
        )),
        "{again:?}"
    );
    let resumed = w.look(&["resume", &run]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(
        resumed.stdout.contains(&format!("resumed {run}")),
        "{resumed:?}"
    );
    let again = w.look(&["resume", &run]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stdout.contains(&format!("{run} is not paused")),
        "{again:?}"
    );
    send.said("resumed by", Duration::from_secs(10)).await;
    let done = send.finish(&w).await;
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(done.count("sent"), rows, "{:?}", done.statuses());
    for i in 0..rows {
        assert_eq!(w.received(DEPT, &format!("inv-{i:05}")), 1, "inv-{i:05}");
    }
    assert_eq!(w.stats().total_requests, rows as u64);
    let paused = done.summary["paused_seconds"].as_f64().unwrap();
    assert!(paused >= 2.0, "{}", done.summary);
    let record = newest_run(&w).await;
    assert_eq!(record["state"], "finished", "{record}");
    assert!(record["paused_by"].is_null(), "{record}");
}

async fn ctrl_c_stops_a_paused_run(backend: Backend) {
    let w = World::on(backend).await;
    let rows = 120;
    let send = Sending::start(&w, rows);
    let run = sending_run(&w).await;
    pause_and_watch_nothing_leave(&w, &send, &run).await;
    signal(&send.child, libc::SIGINT);
    let done = send.finish(&w).await;
    assert_eq!(done.code, 130, "{}", done.stderr);
    assert_eq!(done.rows.len(), rows, "the results are written");
    let sent = done.count("sent");
    assert_eq!(sent as u64, w.stats().total_requests);
    assert!(sent < rows);
    assert_eq!(sent + done.count("not_sent"), rows, "{:?}", done.statuses());
    no_invoice_twice(&w);
    assert!(done.summary["paused_seconds"].as_f64().unwrap() >= 2.0);
    assert_eq!(done.summary["exit_code"], 130);
    let record = newest_run(&w).await;
    assert_eq!(record["state"], "finished", "{record}");
    assert_eq!(record["exit_code"], 130, "{record}");
}

async fn what_has_ended_or_never_was_cannot_be_paused(backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&rows(DEPT, "done-", 3));
    let done = w.send(&input, &[]).await;
    assert_eq!(done.code, 0, "{}", done.stderr);
    let run = newest_run(&w).await["id"].as_str().unwrap().to_string();
    for (what, verb) in [("pause", "pause"), ("resume", "resume")] {
        let look = w.look(&[what, &run]).await;
        assert_eq!(look.code, 1, "{look:?}");
        assert!(
            look.stderr.contains(&format!("{run} finished at ")),
            "{look:?}"
        );
        assert!(
            look.stderr.contains(&format!("nothing to {verb}")),
            "{look:?}"
        );
    }
    let unknown = w.look(&["pause", "r999"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown.stderr.contains("no run r999 in ledger"),
        "{unknown:?}"
    );
    let garbled = w.look(&["pause", "last-night"]).await;
    assert_eq!(garbled.code, 1, "{garbled:?}");
    assert!(
        garbled.stderr.contains("is not a run id like r42"),
        "{garbled:?}"
    );
}

on_both_ledgers!(
    pause_and_resume_from_a_second_process,
    ctrl_c_stops_a_paused_run,
    what_has_ended_or_never_was_cannot_be_paused,
);

#[tokio::test]
async fn a_run_that_died_cannot_be_paused() {
    let w = World::start().await;
    let send = Sending::start(&w, 120);
    let run = sending_run(&w).await;
    signal(&send.child, libc::SIGKILL);
    let killed = send.finish(&w).await;
    assert_eq!(killed.code, -1, "killed by a signal");
    let look = w.look(&["pause", &run]).await;
    assert_eq!(look.code, 1, "{look:?}");
    assert!(look.stderr.contains(&format!("{run} died")), "{look:?}");
    assert!(look.stderr.contains("nothing to pause"), "{look:?}");
}

#[test]
fn a_throwaway_ledger_cannot_be_paused_from_elsewhere() {
    let e = ledger::set_paused(
        &Location::Throwaway,
        RunId(1),
        true,
        "ana",
        chrono::Utc::now(),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("cannot be paused from elsewhere"),
        "{e:#}"
    );
}
