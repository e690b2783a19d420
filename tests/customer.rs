//! Respecting the customer (SPEC section 13): paid invoices are skipped, and requests leave
//! only inside the send window. The window is tested without waiting for real hours: the
//! run's clock starts at INVOICE_DISPATCH_TEST_NOW.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncBufReadExt;

const CHICAGO: &str = "send_window = \"08:00-20:00\"\ntimezone = \"America/Chicago\"";

#[tokio::test]
async fn paid_invoices_are_skipped_with_their_amount_and_never_sent() {
    let w = World::start().await;
    let input = w.input(&[
        &format!("{DEPT},paid-1,,"),
        &format!("{DEPT},ok-2,,"),
        &format!("{DEPT},paid-3,,"),
        &format!("{DEPT},ok-4,,"),
    ]);
    let run = w.send(&input, &["--skip-paid"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.statuses(), ["skipped", "sent", "skipped", "sent"]);
    assert_eq!(run.rows[0]["message"], "already paid (amount 125.5)");
    assert_eq!(run.rows[0]["attempts"], "0");
    let stats = w.stats();
    assert_eq!(stats.total_requests, 2);
    assert_eq!(
        (w.received(DEPT, "paid-1"), w.received(DEPT, "ok-2")),
        (0, 1)
    );
    assert_eq!(stats.paid_checks, 4);
    assert_eq!(run.summary["already_paid"], 2);
    let last = run.stderr.lines().last().unwrap();
    assert!(
        last.contains("2 sent, 2 skipped (2 already paid)"),
        "{last}"
    );
}

#[tokio::test]
async fn a_check_without_its_scope_stops_the_run_before_any_payment_request() {
    let w = World::start().await;
    let mut rows = vec![format!("{DEPT},noscope-1,,")];
    rows.extend(common::rows(DEPT, "ok-", 20));
    let input = w.input(&rows);
    let run = w.send(&input, &["--skip-paid", "--concurrency", "8"]).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("payment.invoice.check.paid"),
        "{}",
        run.stderr
    );
    assert_eq!(w.stats().total_requests, 0, "no payment request at all");
    assert_eq!(
        w.stats().paid_checks,
        1,
        "the first check proves the scope alone"
    );
    assert_eq!(run.count("not_sent"), 21);
}

/// Runs `send` with the window config, the clock starting at `now`; stops it if it takes
/// over a minute (a wrong DST offset would make it wait an hour).
async fn send_at(
    w: &World,
    input: &std::path::Path,
    config: &str,
    now: &str,
    extra: &[&str],
) -> Run {
    let config = w.fast_config(config);
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut cmd = w.send_command(input, &args);
    cmd.env("INVOICE_DISPATCH_TEST_NOW", now);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the run should not wait for long")
        .unwrap();
    w.finish(out)
}

/// The run that starts 5 s before its window closes, at 20 requests per second (burst
/// 20): the window, not the input, ends it, and the rate bounds what it sent. How many
/// went depends on how fast the process started, so only bounds are asserted: at least
/// one (the window was open), at most what the rate allows in 5 s.
fn assert_closed_mid_run(run: &Run, w: &World) {
    assert_eq!(run.code, 2, "{}", run.stderr);
    let sent = run.count("sent");
    assert!(
        (1..=120).contains(&sent),
        "at most 20/s for 5 s, plus a burst of 20: {sent}"
    );
    assert_eq!(sent + run.count("not_sent"), 200, "{:?}", run.summary);
    assert_eq!(w.stats().total_requests as usize, sent);
    let unsent = run.rows.iter().find(|r| r["status"] == "not_sent").unwrap();
    assert_eq!(unsent["message"], "send window closed");
    assert!(
        run.stderr.contains("STOPPED: send window closed"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_window_that_closes_mid_run_stops_starting_requests_and_exits_2() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 200));
    let run = send_at(
        &w,
        &input,
        CHICAGO,
        "2026-11-30T19:59:55-06:00",
        &["--rate", "20"],
    )
    .await;
    assert_closed_mid_run(&run, &w);
}

#[tokio::test]
async fn a_window_across_midnight_closes_in_the_morning() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 200));
    let night = "send_window = \"22:00-06:00\"\ntimezone = \"America/Chicago\"";
    let run = send_at(
        &w,
        &input,
        night,
        "2026-12-01T05:59:55-06:00",
        &["--rate", "20"],
    )
    .await;
    assert_closed_mid_run(&run, &w);
}

#[tokio::test]
async fn on_the_day_clocks_fall_back_the_window_closes_at_20_00_standard_time() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 200));
    // 2026-11-01 went from CDT (-05:00) to CST (-06:00) at 02:00.
    let run = send_at(
        &w,
        &input,
        CHICAGO,
        "2026-11-01T19:59:55-06:00",
        &["--rate", "20"],
    )
    .await;
    assert_closed_mid_run(&run, &w);
}

#[tokio::test]
async fn before_the_window_the_run_waits_and_says_until_when_even_the_day_clocks_spring_forward() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 5));
    // A request of our own marks the moment the run starts, in the simulator's records.
    let marker = format!("{}/v4/departments/MARK/payment-requests", w.sim.base_url());
    reqwest::Client::new()
        .post(marker)
        .json(&serde_json::json!({"invoiceGuid": "ok-mark"}))
        .send()
        .await
        .unwrap();
    // 2026-03-08 went from CST (-06:00) to CDT (-05:00) at 02:00: 07:59:58 CDT.
    let run = send_at(&w, &input, CHICAGO, "2026-03-08T07:59:58-05:00", &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("waiting for the send window 08:00-20:00 America/Chicago: it opens 2026-03-08 08:00 CDT (in 2s)"),
        "{}",
        run.stderr
    );
    let recent = w.stats().recent;
    let start = recent[0].at_ms;
    let first = recent[1..].iter().map(|r| r.at_ms).min().unwrap();
    assert!(
        first >= start + 1500,
        "a request left before the window opened: {first} vs {start}"
    );
    assert_eq!(run.count("sent"), 5);
}

#[tokio::test]
async fn ignore_window_sends_at_once_outside_the_window() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 3));
    let run = send_at(
        &w,
        &input,
        CHICAGO,
        "2026-11-30T03:00:00-06:00",
        &["--ignore-window"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.count("sent"), 3);
    assert!(!run.stderr.contains("waiting"), "{}", run.stderr);
}

#[tokio::test]
async fn ctrl_c_while_waiting_for_the_window_exits_at_once() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 3));
    let config = w.fast_config(CHICAGO);
    let mut cmd = w.send_command(&input, &["--config", config.to_str().unwrap()]);
    cmd.env("INVOICE_DISPATCH_TEST_NOW", "2026-11-30T03:00:00-06:00");
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = Vec::new();
    let waiting = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            said.push(line.clone());
            if line.contains("waiting for the send window") {
                return;
            }
        }
        panic!("the run ended without waiting: {said:?}");
    });
    waiting.await.expect("the run should say it is waiting");
    signal(&child, libc::SIGINT);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the wait should end at once")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(w.stats().total_requests, 0);
    let rows = parse_results(&std::fs::read_to_string(w.path("results.csv")).unwrap());
    assert!(rows.iter().all(|r| r["status"] == "not_sent"), "{rows:?}");
}

#[tokio::test]
async fn a_bad_window_is_a_config_error_naming_the_key_before_anything_is_sent() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 3));
    for (config, says) in [
        (
            "send_window = \"25:00-08:00\"\ntimezone = \"UTC\"",
            "send_window",
        ),
        (
            "send_window = \"08:00-20:00\"\ntimezone = \"Moon/Base\"",
            "`timezone`",
        ),
    ] {
        let run = w.send_with_config(&input, config, &[]).await;
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains(says) && run.stderr.contains("like"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn a_dry_run_says_what_the_window_and_skip_paid_would_do() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 2));
    let run = send_at(
        &w,
        &input,
        CHICAGO,
        "2026-11-29T21:14:00-06:00",
        &["--dry-run", "--skip-paid"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("closed now (2026-11-29 21:14 CST there); the run waits until 2026-11-30 08:00 CST (in 10h 46m)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("--skip-paid: each invoice's paid status is asked first"),
        "{}",
        run.stderr
    );
}
