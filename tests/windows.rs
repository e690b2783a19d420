//! The Windows build, run under Wine (SPEC section 17): the quick start, validate, a send
//! with the default ledger and its rerun, runs and history, a workbook in and out, paths
//! with spaces and backslashes in CRLF files, the ledger lock and Ctrl-C, and a forced kill
//! mid-send then the rerun, and the desk answering on loopback and sending a file.
//!
//! scripts/test builds the .exe (and, beside it, the ProcessPrng stand-in Wine 8 needs:
//! tests/wine/bcryptprimitives.c) and scripts/services makes the Wine prefix these tests
//! share: one prefix per suite run, since its first start is the slow part, and private
//! to the run, so its %LOCALAPPDATA% starts empty. The simulator is this test process's,
//! on a loopback port the Windows program reaches as any other.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use invoice_dispatch::simulator::SimConfig;

/// The Windows build and the Wine that runs it, from scripts/test and scripts/services.
struct Wine {
    loader: String,
    prefix: PathBuf,
    exe: PathBuf,
}

/// One finished Windows process.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Wine {
    fn get() -> Wine {
        Wine {
            loader: service("INVOICE_DISPATCH_TEST_WINE"),
            prefix: service("INVOICE_DISPATCH_TEST_WINEPREFIX").into(),
            exe: service("INVOICE_DISPATCH_TEST_WINE_EXE").into(),
        }
    }

    /// `program args...` under Wine, headless, in `dir`, with only the test credentials
    /// of this tool's variables.
    fn program(&self, program: &Path, dir: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.loader);
        for (k, _) in std::env::vars() {
            if k.starts_with("INVOICE_DISPATCH_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env("INVOICE_DISPATCH_USERNAME", USER)
            .env("INVOICE_DISPATCH_PASSWORD", PASSWORD)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// invoice-dispatch.exe in the world's folder.
    fn command(&self, w: &World, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.program(&self.exe, w.dir.path());
        cmd.args(args);
        cmd
    }

    async fn run(&self, w: &World, args: &[&str]) -> Ran {
        ran(self.command(w, args)).await
    }

    /// `send INPUT` to the world's simulator, fast backoff, plus `extra`.
    fn send(&self, w: &World, input: &str, extra: &[&str]) -> tokio::process::Command {
        let config = win(&w.fast_config(""));
        let base = w.sim.base_url();
        let mut args = vec!["send", input, "--base-url", &base, "--config", &config];
        args.extend_from_slice(&["--no-progress", "--rate", "0"]);
        args.extend_from_slice(extra);
        self.command(w, &args)
    }

    /// Where %LOCALAPPDATA% is, as a Linux path, asked of Windows itself.
    async fn local_app_data(&self, w: &World) -> PathBuf {
        let out = self
            .program(Path::new("cmd"), w.dir.path())
            .args(["/c", "echo", "%LOCALAPPDATA%"])
            .output()
            .await
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let rest = shown
            .strip_prefix("C:\\")
            .unwrap_or_else(|| panic!("%LOCALAPPDATA% is {shown:?}"));
        self.prefix.join("drive_c").join(rest.replace('\\', "/"))
    }
}

/// Runs a command to its end.
async fn ran(mut cmd: tokio::process::Command) -> Ran {
    finished(cmd.output().await.unwrap())
}

fn finished(out: std::process::Output) -> Ran {
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A Linux path as a Windows program under Wine names it: drive Z: is `/`.
fn win(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

fn results(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no results at {}: {e}", path.display()));
    parse_results(&text)
}

fn statuses(rows: &[std::collections::HashMap<String, String>]) -> Vec<&str> {
    rows.iter().map(|r| r["status"].as_str()).collect()
}

/// Invoice numbers no earlier suite run used, for the ledger every test of a run shares.
fn unique_invoices(n: usize) -> Vec<String> {
    let tag: u32 = rand::random();
    (0..n).map(|i| format!("ok-win-{tag:08x}-{i}")).collect()
}

#[tokio::test]
#[ignore = "needs Wine and the Windows build: run scripts/test"]
async fn the_quick_start_sends_the_samples_to_the_built_in_simulator() {
    let wine = Wine::get();
    let w = World::start().await;
    std::fs::create_dir(w.path("samples")).unwrap();
    std::fs::copy(sample_path("invoices.csv"), w.path("samples/invoices.csv")).unwrap();
    let ran = wine
        .run(&w, &["send", r"samples\invoices.csv", "--simulate"])
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stderr.contains("SIMULATION"), "{}", ran.stderr);
    let rows = results(&w.path("samples/invoices.results.csv"));
    assert_eq!(statuses(&rows), ["sent"; 32]);
    assert!(w.path("samples/invoices.report.html").is_file());
}

#[tokio::test]
#[ignore = "needs Wine and the Windows build: run scripts/test"]
async fn validate_names_the_line_and_column_of_each_bad_row_of_a_crlf_file() {
    let wine = Wine::get();
    let w = World::start().await;
    let text = format!(
        "department_uuid,invoice_guid,send_as_text\r\n{DEPT},ok-1,yes\r\n\
         {DEPT},,yes\r\n{DEPT},ok-3,maybe\r\n{DEPT},ok-4,no\r\n"
    );
    w.write("bad.csv", text);
    let ran = wine.run(&w, &["validate", "bad.csv"]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    let said = format!("{}{}", ran.stdout, ran.stderr);
    assert!(said.contains(r#"line 3, column "invoice_guid""#), "{said}");
    assert!(said.contains(r#"line 4, column "send_as_text""#), "{said}");
    assert!(said.contains("2 valid, 2 invalid"), "{said}");
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
#[ignore = "needs Wine and the Windows build: run scripts/test"]
async fn the_default_ledger_is_in_local_app_data_and_a_rerun_skips_everything() {
    let wine = Wine::get();
    let w = World::start().await;
    let invoices = unique_invoices(5);
    let rows: Vec<String> = invoices.iter().map(|i| format!("{DEPT},{i},,")).collect();
    w.input(&rows);

    let first = ran(wine.send(&w, "input.csv", &[])).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        statuses(&results(&w.path("input.results.csv"))),
        ["sent"; 5]
    );
    let ledger = wine
        .local_app_data(&w)
        .await
        .join("invoice-dispatch/ledger.sqlite3");
    assert!(ledger.is_file(), "no ledger at {}", ledger.display());

    let rerun = ran(wine.send(&w, "input.csv", &[])).await;
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    let rows = results(&w.path("input.results.csv"));
    assert_eq!(statuses(&rows), ["skipped"; 5]);
    for invoice in &invoices {
        assert_eq!(w.received(DEPT, invoice), 1, "{invoice}");
    }
    runs_and_history_answer_from_the_default_ledger(&wine, &w, &invoices[0]).await;
}

async fn runs_and_history_answer_from_the_default_ledger(wine: &Wine, w: &World, invoice: &str) {
    let runs = wine.run(w, &["runs", "--format", "json"]).await;
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    let ours: Vec<&serde_json::Value> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == w.sim.base_url())
        .collect();
    assert_eq!(ours.len(), 2, "{runs:#}");
    assert_eq!(ours[0]["counts"]["skipped"], 5, "newest first: {runs:#}");
    assert_eq!(ours[1]["counts"]["sent"], 5, "{runs:#}");
    assert_eq!(ours[1]["input"], "input.csv", "as given: {runs:#}");

    let history = wine.run(w, &["history", invoice, "--format", "json"]).await;
    assert_eq!(history.code, 0, "{}", history.stderr);
    let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let seen: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["sent", "skipped"], "{history:#}");
    let table = wine.run(w, &["history", invoice]).await;
    assert!(table.stdout.contains(invoice), "{}", table.stdout);
}

/// The Results sheet of a results workbook: (invoice, status) per row.
fn workbook_statuses(path: &Path) -> Vec<(String, String)> {
    use calamine::Reader;
    let mut book = calamine::open_workbook_auto(path).unwrap();
    let sheet = book.worksheet_range("Results").unwrap();
    let mut rows = sheet.rows();
    let header: Vec<String> = rows.next().unwrap().iter().map(|c| c.to_string()).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (invoice, status) = (col("invoice_guid"), col("status"));
    rows.map(|r| (r[invoice].to_string(), r[status].to_string()))
        .collect()
}

#[tokio::test]
#[ignore = "needs Wine and the Windows build: run scripts/test"]
async fn a_workbook_in_gives_a_results_workbook_out() {
    let wine = Wine::get();
    let w = World::start().await;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/typed.xlsx");
    w.write("typed.xlsx", std::fs::read(fixture).unwrap());
    let ledger = win(&w.ledger());
    let ran = ran(wine.send(&w, "typed.xlsx", &["--ledger", &ledger])).await;
    // Two rows are invalid (an error cell, a formula without a value): exit 2.
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("reading sheet \"Invoices\""),
        "{}",
        ran.stderr
    );
    let got = workbook_statuses(&w.path("typed.results.xlsx"));
    let want = [
        ("104200", "sent"),
        ("INV-3", "sent"),
        ("#REF!", "invalid"),
        ("", "invalid"),
        ("2026-12-01", "sent"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(i, s)| (i.to_string(), s.to_string()))
        .collect();
    assert_eq!(got, want);
    for invoice in ["104200", "INV-3", "2026-12-01"] {
        assert_eq!(w.received(DEPT, invoice), 1, "{invoice}");
    }
    assert_eq!(w.stats().total_requests, 3);
}

#[tokio::test]
#[ignore = "needs Wine and the Windows build: run scripts/test"]
async fn paths_with_spaces_and_backslashes_and_crlf_files_work() {
    let wine = Wine::get();
    let w = World::start().await;
    for dir in [
        "Billing Exports/March 2026",
        "Billing Exports/Results",
        "Ledger Files",
    ] {
        std::fs::create_dir_all(w.path(dir)).unwrap();
    }
    let text = format!(
        "\u{feff}department_uuid,invoice_guid,customer_name\r\n\
         {DEPT},ok-crlf-1,\"Gonzalez, Maria\"\r\n{DEPT},ok-crlf-2,James\r\n\
         {DEPT2},ok-crlf-3,\"multi\r\nline\"\r\n"
    );
    w.write("Billing Exports/March 2026/invoices march.csv", text);
    let input = r"Billing Exports\March 2026\invoices march.csv";
    let out = win(&w.path("Billing Exports/Results/march results.csv"));
    let ledger = r"Ledger Files\my ledger.sqlite3";
    let send = |ledger: String| {
        let args = ["--ledger", &ledger, "--out", &out];
        wine.send(&w, input, &args)
    };
    let first = ran(send(ledger.to_string())).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let rows = results(&w.path("Billing Exports/Results/march results.csv"));
    assert_eq!(statuses(&rows), ["sent"; 3]);
    assert_eq!(rows[0]["customer_name"], "Gonzalez, Maria");
    assert_eq!(rows[2]["customer_name"], "multi\r\nline");
    assert!(w.path("Ledger Files/my ledger.sqlite3").is_file());

    // The same ledger by its absolute name, with forward slashes: one ledger, one memory.
    let again = win(&w.path("Ledger Files/my ledger.sqlite3")).replace('\\', "/");
    let rerun = ran(send(again)).await;
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    let rows = results(&w.path("Billing Exports/Results/march results.csv"));
    assert_eq!(statuses(&rows), ["skipped"; 3]);
    assert_eq!(w.stats().total_requests, 3);
    no_invoice_twice(&w);
}

/// A send of `n` rows at `rate` on the world's ledger, left running.
fn long_send(wine: &Wine, w: &World, n: usize, rate: &str) -> tokio::process::Child {
    w.input(&rows(DEPT, "ok-", n));
    let ledger = win(&w.ledger());
    let args = ["--ledger", &ledger, "--concurrency", "8", "--rate", rate];
    wine.send(w, "input.csv", &args).spawn().unwrap()
}

/// Waits until the simulator has `n` requests; a run that ends first fails the test at
/// once, with its exit status.
async fn requests_reach(w: &World, run: &mut tokio::process::Child, n: u64) {
    wait_for(
        "the Windows run's requests",
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = run.try_wait() {
                panic!("the run ended ({status}) before {n} requests reached the simulator");
            }
            w.stats().total_requests >= n
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs Wine and the Windows build: run scripts/test"]
async fn a_second_run_on_a_locked_ledger_names_the_first_and_ctrl_c_stops_it() {
    let wine = Wine::get();
    let w = World::start().await;
    let n = 2000;
    let mut first = long_send(&wine, &w, n, "50");
    requests_reach(&w, &mut first, 20).await;

    let ledger = win(&w.ledger());
    let second = wine.send(
        &w,
        "input.csv",
        &["--ledger", &ledger, "--out", "second.csv"],
    );
    let second = ran(second).await;
    assert_eq!(second.code, 1, "{}", second.stderr);
    let named = names_a_pid(&second.stderr);
    assert!(named, "names the holder's pid: {}", second.stderr);
    assert!(!second.stderr.contains("\\\\?\\"), "{}", second.stderr);

    // Wine turns SIGINT into the console's Ctrl-C event.
    signal(&first, libc::SIGINT);
    let first = finished(first.wait_with_output().await.unwrap());
    assert_eq!(first.code, 130, "{}", first.stderr);
    assert!(first.stderr.contains("interrupted"), "{}", first.stderr);
    let rows = results(&w.path("input.results.csv"));
    assert_eq!(rows.len(), n);
    let not_sent = rows.iter().filter(|r| r["status"] == "not_sent").count();
    assert!(not_sent > 0, "stopped before the end: {:?}", first.stderr);

    let rerun = wine.send(&w, "input.csv", &["--ledger", &ledger]);
    let rerun = ran(rerun).await;
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    let rows = results(&w.path("input.results.csv"));
    assert!(rows
        .iter()
        .all(|r| r["status"] == "sent" || r["status"] == "skipped"));
    assert_eq!(w.stats().by_invoice.len(), n);
    no_invoice_twice(&w);
}

/// Whether the lock message names a pid: `(pid 1234)`.
fn names_a_pid(stderr: &str) -> bool {
    stderr
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test]
#[ignore = "needs Wine and the Windows build: run scripts/test"]
async fn a_forced_kill_mid_send_then_the_rerun_sends_no_invoice_twice() {
    let wine = Wine::get();
    let w = World::with(SimConfig {
        latency: Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await;
    let n = 1000;
    let mut child = long_send(&wine, &w, n, "200");
    let kill_after = 50 + rand::random::<u64>() % 400;
    requests_reach(&w, &mut child, kill_after).await;
    // As Task Manager's End task or `taskkill /F` would: no chance to clean up.
    signal(&child, libc::SIGKILL);
    child.wait().await.unwrap();
    let before = w.stats().total_requests;

    let ledger = win(&w.ledger());
    let rerun = wine.send(&w, "input.csv", &["--ledger", &ledger]);
    let rerun = ran(rerun).await;
    let rows = results(&w.path("input.results.csv"));
    assert_eq!(rows.len(), n);
    no_invoice_twice(&w);
    let unknown: Vec<_> = rows
        .iter()
        .filter(|r| r["status"] == "skipped" && r["message"].starts_with("unknown"))
        .collect();
    assert!(
        unknown.len() <= 8,
        "at most the requests in flight: {unknown:?}"
    );
    // The same boot: the journal was trusted, not every open row made unknown.
    assert!(
        !rows
            .iter()
            .any(|r| r["message"].contains("died with its machine")),
        "the rerun took the kill for a reboot: {}",
        rerun.stderr
    );
    let sent = rows.iter().filter(|r| r["status"] == "sent").count();
    let skipped = rows.iter().filter(|r| r["status"] == "skipped").count();
    assert_eq!(sent + skipped, n, "{}", rerun.stderr);
    assert_eq!(w.stats().total_requests as usize, before as usize + sent);
    let want = if unknown.is_empty() { 0 } else { 2 };
    assert_eq!(rerun.code, want, "{}", rerun.stderr);
}

#[tokio::test]
#[ignore = "needs Wine and the Windows build: run scripts/test"]
async fn the_desk_answers_on_loopback_and_sends_a_file() {
    let (wine, w) = (Wine::get(), World::start().await);
    let (config, ledger) = (win(&w.fast_config("rate = 50")), win(&w.ledger()));
    let base = w.sim.base_url();
    let args = [
        "desk",
        "--no-open",
        "--listen",
        "127.0.0.1:0",
        "--ledger",
        &ledger,
    ];
    let mut cmd = wine.command(&w, &args);
    cmd.args(["--base-url", &base, "--config", &config]);
    let desk = common::desk::Desk::spawn(cmd).await;
    assert_eq!(
        desk.get_with("/", &[]).await.status,
        403,
        "no token, no page"
    );
    let page = desk.get("/").await;
    assert!(page.body.contains("Send payment requests"), "{}", page.body);
    let mut csv = format!("{HEADER}\r\n");
    for row in rows(DEPT, "DESK-", 5) {
        csv.push_str(&row);
        csv.push_str("\r\n");
    }
    desk.send("in.csv", csv.as_bytes(), &[("target", "mykaarma")], 5)
        .await;
    let done = desk.wait_done(Duration::from_secs(120)).await;
    assert!(done.body.contains("nothing needs you"), "{}", done.body);
    let results = parse_results(&desk.get("/download/results.csv").await.body);
    assert_eq!(statuses(&results), vec!["sent"; 5]);
    assert_eq!(w.stats().total_requests, 5);
    assert!(desk
        .get("/download/results.xlsx")
        .await
        .body
        .starts_with("PK"));
}
