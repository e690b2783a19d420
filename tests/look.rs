//! Looking back at the ledger: runs, history, export and resolve (SPEC section 10), and the
//! container rule (SPEC section 7).

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use invoice_dispatch::simulator::SimConfig;

fn json(look: &Look) -> serde_json::Value {
    assert_eq!(look.code, 0, "{}", look.stderr);
    serde_json::from_str(&look.stdout).unwrap_or_else(|e| panic!("{e}: {}", look.stdout))
}

/// A copy of the world's results.csv with a `resolution` column, `verdicts` by invoice.
fn with_verdicts(w: &World, name: &str, verdicts: &[(&str, &str)]) -> std::path::PathBuf {
    let text = std::fs::read_to_string(w.path("results.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    header.push("Resolution".into());
    out.write_record(&header).unwrap();
    for record in reader.records() {
        let mut row: Vec<String> = record.unwrap().iter().map(String::from).collect();
        let verdict = verdicts
            .iter()
            .find(|(inv, _)| *inv == row[1])
            .map_or("", |v| v.1);
        row.push(verdict.to_string());
        out.write_record(&row).unwrap();
    }
    w.write(name, out.into_inner().unwrap())
}

on_both_ledgers!(
    runs_history_and_export_answer_from_the_ledger,
    resolving_unknown_rows_sends_the_undelivered_one_and_skips_the_delivered,
    a_bad_resolution_records_nothing_and_names_each_line,
);

async fn runs_history_and_export_answer_from_the_ledger(backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&[
        &format!("{DEPT},ok-1,,"),
        &format!("{DEPT},err500-2,,"),
        &format!("{DEPT},bad-3,,"),
        &format!("{DEPT},ok-1,,"),
    ]);
    let run = w.send(&input, &[]).await;
    assert_eq!(run.statuses(), ["sent", "unknown", "failed", "duplicate"]);

    let runs = json(&w.look(&["runs", "--format", "json"]).await);
    let r = &runs[0];
    assert_eq!(r["id"], "r1");
    assert_eq!(r["counts"]["sent"], 1);
    assert_eq!(r["counts"]["unknown"], 1);
    assert_eq!(r["counts"]["failed"], 1);
    assert_eq!(r["counts"]["duplicate"], 1);
    assert_eq!(r["exit_code"], 2);
    assert_eq!(r["state"], "finished");
    assert_eq!(r["target"], w.sim.base_url());
    assert!(r["input"].as_str().unwrap().ends_with("input.csv"), "{r}");
    let digest = sha256_hex(&std::fs::read(&input).unwrap());
    assert_eq!(r["input_sha256"], digest);
    assert!(!r["host"].as_str().unwrap().is_empty() && !r["user"].as_str().unwrap().is_empty());
    let table = w.look(&["runs"]).await;
    assert!(
        table.stdout.contains("r1") && table.stdout.contains(&digest[..12]),
        "{}",
        table.stdout
    );

    let history = json(&w.look(&["history", "ok-1", "--format", "json"]).await);
    let sent = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["status"] == "sent")
        .unwrap_or_else(|| panic!("{history:#}"));
    assert_eq!(sent["run"], "r1");
    // Self-describing: the histories of several invoices can be joined and filtered.
    for entry in history.as_array().unwrap() {
        assert_eq!(
            (&entry["invoice"], &entry["department"]),
            (&"ok-1".into(), &DEPT.into())
        );
    }
    let csv = w.look(&["history", "ok-1", "--format", "csv"]).await;
    let csv = parse_results(&csv.stdout);
    assert!(
        csv.iter()
            .all(|e| e["invoice"] == "ok-1" && e["department"] == DEPT),
        "{csv:?}"
    );
    assert_eq!(sent["http_status"], 200);
    assert_eq!(sent["text_sent"], "SUCCESS");
    assert_eq!(
        sent["payment_link"],
        format!("https://pay.simulator.invalid/p/{DEPT}/ok-1")
    );

    let export = w.look(&["export", "r1"]).await;
    assert_eq!(export.code, 0, "{}", export.stderr);
    let exported = parse_results(&export.stdout);
    let statuses: Vec<&str> = exported.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(statuses, run.statuses());
    assert_eq!(exported[2]["errors"], run.rows[2]["errors"]);
    assert_eq!(exported[1]["line"], "3");
}

async fn resolving_unknown_rows_sends_the_undelivered_one_and_skips_the_delivered(
    backend: Backend,
) {
    let w = World::with_on(
        SimConfig {
            slow_delay: Duration::from_millis(600),
            ..SimConfig::default()
        },
        backend,
    )
    .await;
    let input = w.input(&[
        &format!("{DEPT},ok-1,,"),
        &format!("{DEPT},slow-2,,"),
        &format!("{DEPT},slow-3,,"),
    ]);
    let first = w.send(&input, &["--timeout", "0.2"]).await;
    assert_eq!(first.statuses(), ["sent", "unknown", "unknown"]);
    let file = with_verdicts(
        &w,
        "checked.csv",
        &[("slow-2", "Delivered"), ("slow-3", " not delivered ")],
    );

    let out = w.look(&["resolve", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("recorded 1 delivered and 1 not delivered"),
        "{}",
        out.stderr
    );
    let rerun = w.send(&input, &[]).await;
    assert_eq!(
        rerun.statuses(),
        ["skipped", "skipped", "sent"],
        "{}",
        rerun.stderr
    );
    assert_eq!(w.received(DEPT, "slow-2"), 1);
    assert_eq!(w.received(DEPT, "slow-3"), 2);
    let user = whoami::username();
    assert!(
        rerun.rows[1]["message"].starts_with(&format!("resolved delivered by {user} on 20")),
        "{:?}",
        rerun.rows[1]
    );
    assert!(
        rerun.rows[2]["message"].starts_with("resolved not delivered by"),
        "{:?}",
        rerun.rows[2]
    );
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);

    // The verdicts are in the invoice's history.
    let history = json(&w.look(&["history", "slow-2", "--format", "json"]).await);
    let resolution = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["what"] == "resolution")
        .unwrap_or_else(|| panic!("{history:#}"));
    assert_eq!(resolution["status"], "delivered");
    assert!(resolution["message"].as_str().unwrap().contains(&user));
    // The same file again: nothing new, nothing refused.
    let again = w.look(&["resolve", file.to_str().unwrap()]).await;
    assert_eq!(
        again.code, 2,
        "slow-3 is sent now, not unknown: {}",
        again.stderr
    );
}

async fn a_bad_resolution_records_nothing_and_names_each_line(backend: Backend) {
    let w = World::on(backend).await;
    let input = w.input(&[
        &format!("{DEPT},ok-1,,"),
        &format!("{DEPT},err500-2,,"),
        &format!("{DEPT},err500-3,,"),
    ]);
    w.send(&input, &[]).await;
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("err500-2", "delivered"), ("err500-3", "maybe")],
            "resolution \"maybe\" is neither",
        ),
        (
            &[("err500-2", "delivered"), ("ok-1", "delivered")],
            "is sent in the ledger, not unknown",
        ),
        (
            &[("err500-2", "delivered"), ("err500-3", "not delivered")],
            "",
        ),
    ];
    for (i, (verdicts, why)) in cases.iter().enumerate().take(2) {
        let file = with_verdicts(&w, &format!("bad-{i}.csv"), verdicts);
        let out = w.look(&["resolve", file.to_str().unwrap()]).await;
        assert_eq!(out.code, 2, "{}", out.stderr);
        let name = file.display().to_string();
        assert!(
            out.stderr.contains(&format!("{name}:")) && out.stderr.contains(why),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("nothing recorded"), "{}", out.stderr);
    }
    // Nothing of those files was recorded: err500-2 is still unknown.
    let history = json(&w.look(&["history", "err500-2", "--format", "json"]).await);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["what"] != "resolution"),
        "{history:#}"
    );

    // The same row twice with different verdicts.
    let text = std::fs::read_to_string(w.path("results.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[0].push_str(",resolution");
    lines[2].push_str(",delivered");
    let mut dup = lines[2].clone();
    dup.truncate(dup.len() - "delivered".len());
    dup.push_str("not delivered");
    lines.push(dup);
    lines[1].push(',');
    lines[3].push(',');
    let file = w.write("twice.csv", lines.join("\n") + "\n");
    let out = w.look(&["resolve", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("line 5 says not delivered")
            || out.stderr.contains("line 3 says delivered"),
        "{}",
        out.stderr
    );

    // A file that is not ours, and one without the column.
    let out = w.look(&["resolve", input.to_str().unwrap()]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("is not a results file"),
        "{}",
        out.stderr
    );
    let out = w
        .look(&["resolve", w.path("results.csv").to_str().unwrap()])
        .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no `resolution` column"),
        "{}",
        out.stderr
    );

    // The same verdict typed twice is one verdict, recorded once.
    lines.pop();
    lines.push(lines[2].clone());
    let file = w.write("same-twice.csv", lines.join("\n") + "\n");
    let out = w.look(&["resolve", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("recorded 1 delivered"),
        "{}",
        out.stderr
    );
    let history = json(&w.look(&["history", "err500-2", "--format", "json"]).await);
    let verdicts = history.as_array().unwrap().iter();
    assert_eq!(
        verdicts.filter(|e| e["what"] == "resolution").count(),
        1,
        "{history:#}"
    );
}

#[tokio::test]
async fn bad_look_back_requests_are_one_clear_line_and_never_create_a_ledger() {
    let w = World::start().await;
    let missing = w.path("nowhere/ledger.sqlite3");
    for args in [&["runs"][..], &["history", "x"], &["export", "r1"]] {
        let out = w
            .command()
            .args(args)
            .arg("--ledger")
            .arg(&missing)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("no ledger at") && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
    assert!(!missing.exists() && !w.path("nowhere").exists());

    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    w.send(&input, &[]).await;
    let out = w.look(&["export", "r9"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no run r9"), "{}", out.stderr);
    let out = w.look(&["export", "nine"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("not a run id like r42"),
        "{}",
        out.stderr
    );
    let out = w.look(&["history", "never-seen"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("\"never-seen\" is not in ledger"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn in_kubernetes_a_send_without_an_explicit_ledger_refuses_to_start() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    let mut cmd = w.command();
    cmd.arg("send")
        .arg(&input)
        .args(["--base-url", &w.sim.base_url()])
        .env("KUBERNETES_SERVICE_HOST", "x");
    let out = cmd.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PersistentVolume"), "{stderr}");
    assert_eq!(w.stats().total_requests, 0);
    // A rehearsal is exempt, and so is an explicit ledger.
    let mut cmd = w.command();
    cmd.arg("send")
        .arg(&input)
        .arg("--simulate")
        .env("KUBERNETES_SERVICE_HOST", "x");
    assert_eq!(cmd.output().await.unwrap().status.code(), Some(0));
    let mut cmd = w.send_command(&input, &[]);
    cmd.env("KUBERNETES_SERVICE_HOST", "x");
    assert_eq!(cmd.output().await.unwrap().status.code(), Some(0));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}
