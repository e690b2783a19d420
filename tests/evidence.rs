//! Evidence of every run (SPEC section 11): the HTML report in a real headless Chromium,
//! the metrics file through promtool, a push into a real Pushgateway, and pings. The tests
//! that need Chromium, promtool or a Pushgateway are ignored by plain `cargo test`;
//! `scripts/test` installs and starts them and runs everything.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use invoice_dispatch::simulator::SimConfig;

/// A mixed run: sent, partial, failed, unknown, invalid, duplicate, and hostile text.
fn mixed_input(w: &World) -> std::path::PathBuf {
    w.write(
        "mixed.csv",
        format!(
            "department_uuid,invoice_guid,note\n\
             {DEPT},ok-1,<b>bold</b>\n\
             {DEPT},notext-2,\n\
             {DEPT},bad-<script>alert(1)</script>,\n\
             {DEPT},err500-4,\n\
             <script>alert(2)</script>,ok-5,\n\
             {DEPT},ok-1,\n"
        ),
    )
}

#[tokio::test]
#[ignore = "needs Chromium: run scripts/test"]
async fn the_report_opens_offline_in_chromium_with_the_counts_and_the_rows_that_need_a_person() {
    let chromium = service("INVOICE_DISPATCH_TEST_CHROMIUM");
    let w = World::start().await;
    let input = mixed_input(&w);
    let report = w.path("report.html");
    let run = w
        .send(&input, &["--report", report.to_str().unwrap()])
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", report.display()))
        .output()
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    // Nothing was blocked, nothing ran, nothing complained.
    assert!(!log.contains(":CONSOLE"), "{log}");
    assert!(!dom.contains("<script"), "{dom}");
    assert!(
        !dom.contains("src=\"http") && !dom.contains("href=\"http"),
        "{dom}"
    );
    for text in [
        "Finished; 4 row(s) need a person.",
        "Rows: 6",
        "Rows that need a person: 4",
        "bad-&lt;script&gt;alert(1)&lt;/script&gt;",
        "&lt;script&gt;alert(2)&lt;/script&gt;",
        "100006 INVALID_REQUEST_DATA",
        "err500-4",
    ] {
        assert!(dom.contains(text), "{text:?} not in the page:\n{dom}");
    }
}

#[tokio::test]
#[ignore = "needs promtool and a Pushgateway: run scripts/test"]
async fn the_metrics_pass_promtool_and_a_push_lands_in_the_pushgateway() {
    let (promtool, gateway) = (
        service("INVOICE_DISPATCH_TEST_PROMTOOL"),
        service("INVOICE_DISPATCH_TEST_PUSHGATEWAY"),
    );
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},ok-1,,"), &format!("{DEPT},bad-2,,")]);
    let metrics = w.path("invoice_dispatch.prom");
    let instance = format!("test-{}", std::process::id());
    let run = w
        .send(
            &input,
            &[
                "--metrics-file",
                metrics.to_str().unwrap(),
                "--pushgateway",
                &gateway,
                "--metrics-instance",
                &instance,
            ],
        )
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics).unwrap())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("invoice_dispatch_rows{status=\"failed\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("invoice_dispatch_exit_code 2\n"), "{text}");

    let scraped = reqwest::get(format!("{gateway}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let want = format!(
        "invoice_dispatch_rows{{instance=\"{instance}\",job=\"invoice_dispatch\",status=\"sent\"}} 1"
    );
    assert!(scraped.contains(&want), "{want} not in:\n{scraped}");
}

/// Pings received: (path, body).
type Pings = Arc<Mutex<Vec<(String, String)>>>;

async fn ping_server() -> (String, Pings, tokio::task::JoinHandle<()>) {
    let pings: Pings = Arc::default();
    let seen = pings.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            seen.lock()
                .unwrap()
                .push((path, String::from_utf8_lossy(&body).into_owned()));
            "OK"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/ping/secret-uuid-4f1c",
        listener.local_addr().unwrap()
    );
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, pings, task)
}

#[tokio::test]
async fn pings_mark_the_start_and_the_exit_code_with_the_summary_and_never_show_the_url() {
    let w = World::start().await;
    let (url, pings, _server) = ping_server().await;
    let input = w.input(&[&format!("{DEPT},ok-1,,"), &format!("{DEPT},bad-2,,")]);
    let run = w.send(&input, &["--ping-url", &url]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let got = pings.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "/ping/secret-uuid-4f1c/start");
    assert_eq!(got[1].0, "/ping/secret-uuid-4f1c/2");
    assert_eq!(got[1].1, run.stderr.lines().last().unwrap());

    let input = w.write("ok.csv", format!("{HEADER}\n{DEPT},ok-3,,\n"));
    let run = w.send(&input, &["--ping-url", &url]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        pings.lock().unwrap().last().unwrap().0,
        "/ping/secret-uuid-4f1c"
    );
    assert!(!run.stderr.contains("secret-uuid"), "{}", run.stderr);
}

#[tokio::test]
async fn an_unreachable_pushgateway_or_ping_url_is_a_warning_that_keeps_the_exit_code() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    let dead = "http://127.0.0.1:9/ping/secret-uuid-dead";
    let run = w
        .send(
            &input,
            &["--ping-url", dead, "--pushgateway", "http://127.0.0.1:9"],
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("WARN"), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot push the metrics"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("cannot ping"), "{}", run.stderr);
    assert!(!run.stderr.contains("secret-uuid"), "{}", run.stderr);
    assert_eq!(run.statuses(), ["sent"]);
}

#[tokio::test]
async fn unwritable_report_or_metrics_paths_stop_the_run_before_anything_is_sent() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    for flag in ["--report", "--metrics-file", "--summary-json"] {
        let nowhere = w.path("no/such/folder/file");
        let run = w.send(&input, &[flag, nowhere.to_str().unwrap()]).await;
        assert_eq!(run.code, 1, "{flag}: {}", run.stderr);
        assert!(run.stderr.contains("no such folder"), "{}", run.stderr);
    }
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn a_report_is_written_after_an_interrupt_and_after_a_credentials_breaker() {
    let w = World::with(SimConfig {
        latency: Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await;
    let input = w.input(&rows(DEPT, "ok-", 200));
    let report = w.path("report.html");
    let child = w
        .send_command(
            &input,
            &["--rate", "40", "--report", report.to_str().unwrap()],
        )
        .spawn()
        .unwrap();
    wait_for("some requests", Duration::from_secs(20), || {
        w.stats().total_requests >= 5
    })
    .await;
    signal(&child, libc::SIGINT);
    let run = w.finish(child.wait_with_output().await.unwrap());
    assert_eq!(run.code, 130, "{}", run.stderr);
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(page.contains("Interrupted."), "{page}");
    assert!(page.contains("not_sent"), "{page}");

    let locked = World::with(SimConfig {
        username: Some(USER.into()),
        password: Some("another".into()),
        ..SimConfig::default()
    })
    .await;
    let input = locked.input(&rows(DEPT, "ok-", 30));
    let report = locked.path("report.html");
    let run = locked
        .send(&input, &["--report", report.to_str().unwrap()])
        .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(
        page.contains("Stopped early by a circuit breaker: credentials refused"),
        "{page}"
    );
}

#[tokio::test]
async fn a_run_with_test_overrides_says_so_at_start_in_the_summary_and_in_the_report() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 2));
    let report = w.path("report.html");
    let plain = w
        .send(&input, &["--report", report.to_str().unwrap()])
        .await;
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(
        plain.summary.get("test_overrides").is_none(),
        "{}",
        plain.summary
    );
    assert!(!plain.stderr.contains("TEST OVERRIDES"), "{}", plain.stderr);
    assert!(!std::fs::read_to_string(&report)
        .unwrap()
        .contains("TEST OVERRIDES"));

    let mut cmd = w.send_command(&input, &["--report", report.to_str().unwrap(), "--resend"]);
    cmd.env("INVOICE_DISPATCH_TEST_BOOT_ID", "stray-boot-id");
    let run = w.finish(cmd.output().await.unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let first = run.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("TEST OVERRIDES SET"),
        "warned at start: {}",
        run.stderr
    );
    assert_eq!(
        run.summary["test_overrides"],
        serde_json::json!(["INVOICE_DISPATCH_TEST_BOOT_ID=stray-boot-id"])
    );
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(
        page.contains("TEST OVERRIDES were set"),
        "a banner in the report"
    );
}
