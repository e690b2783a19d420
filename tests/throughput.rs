//! Rate limit, retries, circuit breakers: what the simulator received, not how long it took.

mod common;

use std::time::Duration;

use common::*;
use invoice_dispatch::simulator::SimConfig;

#[tokio::test]
async fn flaky_rows_are_retried_until_sent() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},flaky-1,,"), &format!("{DEPT},flaky-2,,")]);
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    for inv in ["flaky-1", "flaky-2"] {
        assert_eq!(run.row(inv)["status"], "sent");
        assert_eq!(run.row(inv)["attempts"], "3");
        assert_eq!(w.received(DEPT, inv), 3);
    }
}

#[tokio::test]
async fn retry_safe_errors_give_up_after_max_attempts_as_failed() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},flaky-1,,")]);
    let run = w.send(&input, &["--max-attempts", "2"]).await;
    assert_eq!(run.code, 2);
    let row = run.row("flaky-1");
    assert_eq!(row["status"], "failed");
    assert_eq!(row["attempts"], "2");
    assert_eq!(row["http_status"], "503");
    assert!(
        row["message"].contains("gave up after 2 attempts"),
        "{row:?}"
    );
    assert_eq!(w.received(DEPT, "flaky-1"), 2);
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_the_whole_pool() {
    let w = World::start().await;
    let mut input = vec![format!("{DEPT},rate-1,,")];
    input.extend(rows(DEPT, "ok-", 6));
    let input = w.input(&input);
    let run = w
        .send(
            &input,
            &["--concurrency", "4", "--rate", "5", "--burst", "1"],
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.row("rate-1")["attempts"], "2");
    let recent = w.stats().recent;
    let t429 = recent
        .iter()
        .find(|r| r.status == 429)
        .expect("a 429")
        .at_ms;
    // Requests already on their way when the client read the 429 may land after it, at
    // most one per other send slot (concurrency 4, the throttled row keeps its own);
    // without the pause, the 5/s pace would bring 5 within Retry-After (1 s). A count,
    // not a time, so a slow machine cannot make it fail.
    let early: Vec<_> = recent
        .iter()
        .filter(|r| r.at_ms > t429 && r.at_ms < t429 + 1000)
        .map(|r| (r.key.clone(), r.at_ms - t429))
        .collect();
    assert!(early.len() <= 3, "arrived during the pause: {early:?}");
    assert!(recent.iter().any(|r| r.at_ms >= t429 + 1000));
}

#[tokio::test]
async fn ambiguous_failures_end_unknown_after_one_attempt() {
    let w = World::with(SimConfig {
        slow_delay: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await;
    let input = w.input(&[&format!("{DEPT},err500-1,,"), &format!("{DEPT},slow-2,,")]);
    let run = w.send(&input, &["--timeout", "0.3"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    for inv in ["err500-1", "slow-2"] {
        let row = run.row(inv);
        assert_eq!(row["status"], "unknown", "{row:?}");
        assert_eq!(row["attempts"], "1");
        assert_eq!(w.received(DEPT, inv), 1);
    }
    assert_eq!(run.row("err500-1")["http_status"], "500");
    assert_eq!(run.row("slow-2")["http_status"], "");
}

#[tokio::test]
async fn ambiguous_failures_are_retried_only_when_allowed() {
    let w = World::with(SimConfig {
        slow_delay: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await;
    let input = w.input(&[&format!("{DEPT},err500-1,,"), &format!("{DEPT},slow-2,,")]);
    let run = w
        .send_with_config(
            &input,
            "retry_ambiguous = true",
            &["--timeout", "0.3", "--max-attempts", "3"],
        )
        .await;
    for inv in ["err500-1", "slow-2"] {
        let row = run.row(inv);
        assert_eq!(row["status"], "unknown", "{row:?}");
        assert_eq!(row["attempts"], "3");
        assert_eq!(w.received(DEPT, inv), 3);
    }
}

#[tokio::test]
async fn wrong_credentials_stop_the_run_with_exit_3() {
    let w = World::with(SimConfig {
        username: Some(USER.into()),
        password: Some("the-right-one".into()),
        ..SimConfig::default()
    })
    .await;
    let concurrency = 4;
    let input = w.input(&rows(DEPT, "ok-", 200));
    let run = w
        .send(&input, &["--concurrency", &concurrency.to_string()])
        .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.summary["stopped"]
        .as_str()
        .unwrap()
        .contains("credentials"));
    assert_eq!(run.rows.len(), 200);
    assert!(
        run.count("not_sent") >= 200 - 2 * concurrency,
        "{:?}",
        run.statuses()
    );
    assert_eq!(run.count("sent"), 0);
    let recent = w.stats().recent;
    let first = recent.iter().position(|r| r.status == 401).unwrap();
    assert!(
        recent.len() - first - 1 <= concurrency,
        "{} requests after the first 401",
        recent.len() - first - 1
    );
}

#[tokio::test]
async fn a_refused_department_gets_exactly_one_request() {
    let w = World::start().await;
    let mut input = vec![format!("{DEPT2},noauth-0,,")];
    input.extend(rows(DEPT2, "ok-", 5));
    input.extend(rows(DEPT, "ok-", 3));
    let input = w.input(&input);
    let run = w.send(&input, &["--concurrency", "1"]).await;
    assert_eq!(run.code, 2);
    let stats = w.stats();
    let to_dept2: u64 = stats
        .by_invoice
        .iter()
        .filter(|(k, _)| k.starts_with(DEPT2))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(to_dept2, 1);
    assert_eq!(run.count("failed"), 6);
    assert_eq!(run.count("sent"), 3);
    assert!(
        run.rows[1]["message"].contains("department refused"),
        "{:?}",
        run.rows[1]
    );
}

/// The row that goes alone is the department's first in input order, however the pool
/// happens to start the rows' tasks.
#[tokio::test]
async fn the_probe_is_each_departments_first_row_at_any_concurrency() {
    let w = World::start().await;
    let depts: Vec<String> = (1..=40)
        .map(|i| format!("{i:08x}-0000-4000-8000-{i:012x}"))
        .collect();
    let mut input = Vec::new();
    for (i, dept) in depts.iter().enumerate() {
        input.push(format!("{dept},noauth-{i},,"));
        input.push(format!("{dept},ok-{i}-a,,"));
        input.push(format!("{dept},ok-{i}-b,,"));
    }
    let input = w.input(&input);
    // Every probe is refused, which would trip the failure-ratio stop halfway.
    let run = w
        .send_with_config(&input, "max_failure_ratio = 1.0", &["--concurrency", "64"])
        .await;
    let stats = w.stats();
    assert_eq!(stats.total_requests, 40, "{:?}", stats.by_invoice);
    for (i, dept) in depts.iter().enumerate() {
        assert_eq!(w.received(dept, &format!("noauth-{i}")), 1);
    }
    assert_eq!(run.count("failed"), 120);
}

#[tokio::test]
async fn a_failing_server_trips_the_failure_ratio_stop() {
    let w = World::with(SimConfig {
        fail_rate: 1.0,
        seed: Some(7),
        ..SimConfig::default()
    })
    .await;
    let input = w.input(&rows(DEPT, "inv-", 300));
    let run = w
        .send_with_config(
            &input,
            "retry_after_max = \"50ms\"\nmin_attempts_for_ratio = 20",
            &["--max-attempts", "2", "--concurrency", "4"],
        )
        .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.summary["stopped"]
        .as_str()
        .unwrap()
        .contains("failure ratio"));
    assert!(run.count("not_sent") > 200, "{:?}", run.summary);
    assert_eq!(run.rows.len(), 300);
    assert!(w.stats().total_requests < 100);
}

#[tokio::test]
async fn the_rate_limit_is_never_exceeded_counting_retries() {
    let w = World::start().await;
    let mut input = rows(DEPT, "ok-", 40);
    input.extend(rows(DEPT, "flaky-", 5));
    let input = w.input(&input);
    let run = w
        .send(
            &input,
            &["--rate", "20", "--burst", "2", "--concurrency", "16"],
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let stats = w.stats();
    assert_eq!(stats.total_requests, 40 + 5 * 3);
    assert!(
        stats.max_per_second <= 22,
        "max_per_second {}",
        stats.max_per_second
    );
}

#[tokio::test]
async fn unreachable_servers_are_retried_then_failed_not_unknown() {
    let w = World::start().await;
    // A port bound and never listened on: connection refused, safe to retry. Held for
    // the whole test, so no other process can take it meanwhile.
    let (_socket, port) = refusing_port();
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    let mut cmd = w.command();
    cmd.arg("send")
        .arg(&input)
        .args(["--max-attempts", "3", "--ledger"])
        .arg(w.ledger())
        .arg("--out")
        .arg(w.path("results.csv"))
        .arg("--config")
        .arg(w.fast_config(""))
        .arg("--base-url")
        .arg(format!("http://127.0.0.1:{port}"));
    let run = w.finish(cmd.output().await.unwrap());
    let row = run.row("ok-1");
    assert_eq!(row["status"], "failed", "{row:?}");
    assert_eq!(row["attempts"], "3");
    assert!(row["message"].contains("connect"), "{row:?}");
}
