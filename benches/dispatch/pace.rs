//! `pace`: `--rate auto` beside a fixed rate at the true capacity (the ideal) and one 4x
//! too high (the 429 storm), against simulators with hidden capacities of 8, 37 and 120
//! requests a second, 60 s of rows each (SPEC section 16). The server's own counts decide.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{Sim, BIN};

/// How long one run may take before it is stopped.
const LONGEST: std::time::Duration = std::time::Duration::from_secs(120);

/// One run: (successful req/s over the run as a share of the capacity, share of requests
/// answered 429, seconds to the first second at 90% of the capacity, rows failed).
fn run(capacity: u32, rate: &str) -> (f64, f64, Option<usize>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    writeln!(f, "department_uuid,invoice_guid").unwrap();
    for i in 0..capacity * 60 {
        writeln!(f, "dept-{:02},ok-{i:07}", i % 8).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let sim = Sim::with(&["--capacity", &capacity.to_string()]);
    let summary = dir.path().join("summary.json");
    let mut child = Command::new(BIN)
        .arg("send")
        .arg(&input)
        .args([
            "--base-url",
            &sim.url,
            "--no-ledger",
            "--yes",
            "--quiet",
            "--no-report",
        ])
        .args(["--rate", rate, "--concurrency", "64", "--max-rate", "500"])
        .arg("--out")
        .arg(dir.path().join("results.csv"))
        .arg("--summary-json")
        .arg(&summary)
        .env("INVOICE_DISPATCH_USERNAME", "bench")
        .env("INVOICE_DISPATCH_PASSWORD", "bench-password")
        .stderr(Stdio::null())
        .spawn()
        .expect("run send");
    // A storm of 429s can take the run far past its 60 s of rows: it is stopped (as
    // Ctrl-C would) at LONGEST, and measured as far as it got.
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait for send").is_none() {
        if started.elapsed() > LONGEST {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            child.wait().expect("wait for send");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stats = sim.stats();
    let counts = |key: &str| -> Vec<u64> {
        stats[key]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default()
    };
    let (all, throttled) = (counts("per_second"), counts("throttled_per_second"));
    let first = all.iter().position(|n| *n > 0).unwrap_or(0);
    let last = all.iter().rposition(|n| *n > 0).unwrap_or(0);
    let ok = |s: usize| all[s] - throttled.get(s).copied().unwrap_or(0);
    let successes: u64 = (first..=last).map(ok).sum();
    let total: u64 = all.iter().sum();
    let secs = (last - first + 1) as f64;
    let to_90 = (first..=last).find(|s| ok(*s) as f64 >= 0.9 * f64::from(capacity));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap_or_default()).unwrap_or_default();
    let failed = summary["counts"]["failed"].as_u64().unwrap_or(0);
    (
        successes as f64 / secs / f64::from(capacity),
        throttled.iter().sum::<u64>() as f64 / total.max(1) as f64,
        to_90.map(|s| s - first),
        failed,
    )
}

pub fn pace() {
    println!("| capacity | --rate | achieved / capacity | answered 429 | first second at 90% | rows failed |");
    println!("|---|---|---|---|---|---|");
    for capacity in [8u32, 37, 120] {
        for rate in [
            "auto".to_string(),
            capacity.to_string(),
            (4 * capacity).to_string(),
        ] {
            let (share, throttled, to_90, failed) = run(capacity, &rate);
            let to_90 = to_90.map_or("never".to_string(), |s| format!("{s} s"));
            println!(
                "| {capacity}/s | {rate} | {share:.3} | {:.2}% | {to_90} | {failed} |",
                throttled * 100.0
            );
        }
    }
}
