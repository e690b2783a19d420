//! `--rate auto` against a simulator with a hidden capacity (SPEC section 16), at scales
//! that keep each test short. Every assertion is on what the simulator counted.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use invoice_dispatch::simulator::SimConfig;

/// A world whose simulator has this capacity schedule (times from the first request).
async fn with_capacity(schedule: &[(u64, f64)]) -> World {
    World::with(SimConfig {
        capacity: schedule
            .iter()
            .map(|(at, n)| (Duration::from_secs(*at), *n))
            .collect(),
        ..SimConfig::default()
    })
    .await
}

const AUTO: [&str; 4] = ["--rate", "auto", "--concurrency", "16"];

/// Share of the simulator's requests answered 429.
fn throttled(w: &World) -> f64 {
    let stats = w.stats();
    stats.by_status.get(&429).copied().unwrap_or(0) as f64 / stats.total_requests as f64
}

#[tokio::test]
async fn the_pace_reaches_a_hidden_capacity_with_few_throttles_and_no_row_failed() {
    let w = with_capacity(&[(0, 25.0)]).await;
    let input = w.input(&rows(DEPT, "ok-", 300));
    let run = w.send(&input, &AUTO).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.count("sent"), 300, "no row fails from throttling");
    assert!(throttled(&w) <= 0.03, "{:.3} throttled", throttled(&w));
    // The seconds after the ramp, as the server saw them (the last one is partial).
    let per_second = w.stats().per_second;
    let steady = &per_second[4..per_second.len() - 1];
    let mean = steady.iter().sum::<u64>() as f64 / steady.len() as f64;
    assert!(mean >= 0.85 * 25.0, "{mean:.1}/s of 25: {per_second:?}");
    let (end, peak) = (&run.summary["rate_final"], &run.summary["rate_peak"]);
    assert!(
        end.as_f64().unwrap() <= 26.0 && peak.as_f64().is_some(),
        "{}",
        run.summary
    );
}

#[tokio::test]
async fn a_capacity_drop_is_followed_within_five_seconds() {
    let w = with_capacity(&[(0, 40.0), (6, 15.0)]).await;
    let input = w.input(&rows(DEPT, "ok-", 500));
    let run = w.send(&input, &AUTO).await;
    assert_eq!(run.count("sent"), 500, "{}", run.stderr);
    let per_second = w.stats().per_second;
    // The simulator's seconds count from its start; the schedule's from the first request.
    let first = per_second.iter().position(|n| *n > 0).unwrap();
    let after = &per_second[first + 6 + 5..per_second.len() - 1];
    assert!(!after.is_empty(), "{per_second:?}");
    assert!(
        after.iter().all(|n| *n <= 16),
        "under 15/s within 5 s: {per_second:?}"
    );
    let near = after.iter().filter(|n| **n as f64 >= 0.7 * 15.0).count();
    assert!(near * 2 >= after.len(), "back near 15/s: {per_second:?}");
}

#[tokio::test]
async fn a_second_run_on_the_same_ledger_starts_at_the_pace_the_first_ended_at() {
    let w = with_capacity(&[(0, 30.0)]).await;
    let first = w.send(&w.input(&rows(DEPT, "ok-a", 240)), &AUTO).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let ended = first.summary["rate_final"].as_f64().unwrap();
    assert!(ended >= 20.0, "{}", first.summary);
    let before = w.stats().per_second.len();
    let second = w
        .send(
            &w.write(
                "two.csv",
                format!("{HEADER}\n{}\n", rows(DEPT, "ok-b", 150).join("\n")),
            ),
            &AUTO,
        )
        .await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    let per_second = w.stats().per_second;
    let start = before + per_second[before..].iter().position(|n| *n > 0).unwrap();
    let first_5 = &per_second[start..(start + 5).min(per_second.len())];
    assert!(
        first_5.iter().any(|n| *n as f64 >= 0.7 * 30.0),
        "0.7 of 30/s within 5 s: {first_5:?} (first run ended at {ended})"
    );
}

#[tokio::test]
async fn paid_checks_spend_the_same_budget() {
    let w = with_capacity(&[(0, 20.0)]).await;
    let input = w.input(&rows(DEPT, "ok-", 120));
    let run = w
        .send(
            &input,
            &["--rate", "auto", "--concurrency", "16", "--skip-paid"],
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let stats = w.stats();
    // Each invoice checked and sent; what came on top was throttled and asked again.
    assert_eq!(run.count("sent"), 120);
    assert_eq!(
        stats.paid_checks + stats.total_requests - 240,
        count_429(&w)
    );
    assert!(throttled(&w) <= 0.05, "{:.3}", throttled(&w));
    // Checks and requests together kept to the capacity: no second saw much more.
    let per_second = &stats.per_second;
    assert!(per_second.iter().all(|n| *n <= 30), "{per_second:?}");
}

fn count_429(w: &World) -> u64 {
    w.stats().by_status.get(&429).copied().unwrap_or(0)
}
