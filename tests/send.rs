//! `send`, `validate` and the CSV contract, end to end against the simulator.

mod common;

use common::*;

#[tokio::test]
async fn the_sample_input_is_all_sent_with_links_and_exit_0() {
    let w = World::start().await;
    let input = w.sample("invoices.csv");
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.rows.len() >= 30);
    for row in &run.rows {
        assert_eq!(row["status"], "sent", "{row:?}");
        assert!(row["payment_link"].starts_with("https://"), "{row:?}");
        assert!(row["invoice_link"].starts_with("https://"), "{row:?}");
        assert_eq!(row["attempts"], "1");
        assert_eq!(row["http_status"], "200");
    }
    assert_eq!(w.stats().total_requests, run.rows.len() as u64);
    assert_eq!(run.summary["counts"]["sent"], run.rows.len() as u64);
    assert_eq!(run.summary["exit_code"], 0);
    assert_eq!(run.summary["simulation"], false);
}

#[tokio::test]
async fn simulate_flag_runs_against_the_built_in_simulator_and_says_so() {
    let w = World::start().await;
    let input = w.input(&[
        &format!("{DEPT},ok-1,yes,no"),
        &format!("{DEPT},ok-2,no,yes"),
    ]);
    let mut cmd = w.command();
    cmd.arg("send")
        .arg(&input)
        .arg("--simulate")
        .arg("--no-progress");
    let out = cmd.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(last.starts_with("SIMULATION"), "{last}");
    assert!(stderr.contains("http://127.0.0.1:"), "{stderr}");
    let results = std::fs::read_to_string(w.path("input.results.csv")).unwrap();
    assert_eq!(parse_results(&results).len(), 2);
    // It used its own simulator: ours saw nothing.
    assert_eq!(w.stats().total_requests, 0);
    // And a throwaway ledger: the same command sends again.
    let out = w
        .command()
        .arg("send")
        .arg(&input)
        .arg("--simulate")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let again = parse_results(&std::fs::read_to_string(w.path("input.results.csv")).unwrap());
    assert!(again.iter().all(|r| r["status"] == "sent"), "{again:?}");
}

#[tokio::test]
async fn every_boolean_spelling_and_the_defaults_reach_the_body() {
    let w = World::start().await;
    let spellings = [
        ("true", true),
        ("FALSE", false),
        ("Yes", true),
        ("no", false),
        ("Y", true),
        ("n", false),
        ("1", true),
        ("0", false),
        ("ON", true),
        ("off", false),
        ("t", true),
        ("F", false),
        (" yes ", true),
    ];
    let mut text = String::from("department_uuid,invoice_guid,send_as_text,esign_required\n");
    for (i, (s, _)) in spellings.iter().enumerate() {
        text.push_str(&format!("{DEPT},ok-{i},{s},{s}\n"));
    }
    text.push_str(&format!("{DEPT},ok-blank,,\n"));
    let input = w.write("bools.csv", text);
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let recent = w.stats().recent;
    let body = |inv: &str| {
        recent
            .iter()
            .find(|r| r.body["invoiceGuid"] == inv)
            .unwrap_or_else(|| panic!("no request for {inv}"))
            .body
            .clone()
    };
    for (i, (s, want)) in spellings.iter().enumerate() {
        let b = body(&format!("ok-{i}"));
        assert_eq!(b["sendAsText"], *want, "spelling {s:?}");
        assert_eq!(b["esignRequired"], *want, "spelling {s:?}");
        // Missing columns take the built-in defaults.
        assert_eq!(b["sendAsEmail"], true);
        assert_eq!(b["attachInvoice"], true);
        assert_eq!(b["sendWithoutKpay"], false);
    }
    let b = body("ok-blank");
    assert_eq!(b["sendAsText"], true);
    assert_eq!(b["esignRequired"], false);
}

#[tokio::test]
async fn config_defaults_apply_to_blank_cells() {
    let w = World::start().await;
    let input = w.write(
        "in.csv",
        format!("department_uuid,invoice_guid,send_as_text\n{DEPT},ok-1,\n"),
    );
    let config = "[defaults]\nsend_as_text = false\nesign_required = true\n";
    let run = w.send_with_config(&input, config, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let body = &w.stats().recent[0].body;
    assert_eq!(body["sendAsText"], false);
    assert_eq!(body["esignRequired"], true);
}

#[tokio::test]
async fn header_variants_and_column_mapping_are_recognised() {
    let w = World::start().await;
    let input = w.write(
        "in.csv",
        format!("Dept,Invoice #,Send As Text,SEND_AS_EMAIL,attachInvoice\n{DEPT},ok-1,no,yes,no\n"),
    );
    let config = "[columns]\ndepartment_uuid = \"Dept\"\ninvoice_guid = \"invoice #\"\n";
    let run = w.send_with_config(&input, config, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rec = &w.stats().recent[0];
    assert_eq!(rec.key, format!("{DEPT}/ok-1"));
    assert_eq!(rec.body["sendAsText"], false);
    assert_eq!(rec.body["sendAsEmail"], true);
    assert_eq!(rec.body["attachInvoice"], false);
}

#[tokio::test]
async fn a_bom_semicolon_excel_export_is_read_and_written_back_alike() {
    let w = World::start().await;
    let input = w.sample("excel-export.csv");
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.rows.len(), 12);
    assert!(run.rows.iter().all(|r| r["status"] == "sent"));
    // Decimal commas in a pass-through column survive, and the results keep the BOM and
    // the semicolons so the same spreadsheet opens them the same way.
    assert!(run.results_text.starts_with('\u{feff}'));
    assert!(run
        .results_text
        .lines()
        .next()
        .unwrap()
        .contains(";status;"));
    assert!(run.rows[0]["Amount"].contains(','));
    let recent = w.stats().recent;
    let first = recent
        .iter()
        .find(|r| r.body["invoiceGuid"] == "INV-EX-7700")
        .unwrap();
    assert_eq!(first.body["sendAsText"], false); // "No"
    assert_eq!(first.body["sendAsEmail"], true); // "Yes"
}

#[tokio::test]
async fn hostile_departments_are_invalid_and_never_requested() {
    let w = World::start().await;
    let input = w.input(&[
        "../x,ok-1,,",
        "a/b,ok-2,,",
        "x?y=1,ok-3,,",
        "%2e%2e,ok-4,,",
        "dept#frag,ok-5,,",
        ",ok-6,,",
    ]);
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.statuses(), vec!["invalid"; 6]);
    assert!(
        run.rows[0]["message"].contains("line 2"),
        "{:?}",
        run.rows[0]
    );
    assert!(run.rows[0]["message"].contains("../x"), "{:?}", run.rows[0]);
    assert!(
        run.rows[2]["message"].contains("line 4"),
        "{:?}",
        run.rows[2]
    );
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn the_request_has_the_exact_path_headers_and_body() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},ok-exact,no,yes")]);
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let stats = w.stats();
    let rec = &stats.recent[0];
    assert_eq!(rec.path, format!("/v4/departments/{DEPT}/payment-requests"));
    assert_eq!(rec.headers["content-type"], "application/json");
    assert_eq!(rec.headers["accept"], "application/json");
    assert_eq!(
        rec.headers["user-agent"],
        format!("invoice-dispatch/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(rec.auth_user.as_deref(), Some(USER));
    assert_eq!(
        rec.body,
        serde_json::json!({"invoiceGuid": "ok-exact", "sendWithoutKpay": false,
            "attachInvoice": true, "sendAsText": false, "sendAsEmail": true, "esignRequired": false})
    );
}

#[tokio::test]
async fn edge_cases_reach_each_status_in_input_order() {
    let w = World::start().await;
    let input = w.sample("edge-cases.csv");
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let got: Vec<(String, String)> = run
        .rows
        .iter()
        .map(|r| (r["invoice_guid"].clone(), r["status"].clone()))
        .collect();
    let want = [
        ("ok-INV-1001", "sent"),
        ("warn-INV-1002", "sent"),
        ("notext-INV-1003", "partial"),
        ("bad-INV-1004", "failed"),
        ("err500-INV-1005", "unknown"),
        ("flaky-INV-1006", "sent"),
        ("noauth-INV-1007", "failed"),
        ("ok-INV-1008", "failed"),
        ("ok-INV-1009", "invalid"),
        ("", "invalid"),
        ("ok-INV-1011", "invalid"),
        ("ok-INV-1001", "duplicate"),
        ("formula-INV-1013", "sent"),
        ("nolink-INV-1014", "failed"),
        ("garbage-INV-1015", "unknown"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(run.row("warn-INV-1002")["warnings"].starts_with("150000 NO_PREFERRED_DEALER_ID"));
    assert_eq!(run.row("notext-INV-1003")["text_sent"], "FAILURE");
    assert!(run.row("bad-INV-1004")["errors"].starts_with("100006 INVALID_REQUEST_DATA"));
    assert_eq!(run.row("flaky-INV-1006")["attempts"], "3");
    assert_eq!(run.rows[11]["message"], "duplicate of line 2");
    // The refused department's later row was failed without a request.
    assert_eq!(w.received(DEPT2, "ok-INV-1008"), 0);
    assert_eq!(run.row("ok-INV-1008")["attempts"], "0");
    assert_eq!(w.received(DEPT, "ok-INV-1001"), 1);
}

#[tokio::test]
async fn api_and_tool_text_that_a_spreadsheet_would_execute_is_neutralised() {
    let w = World::start().await;
    let input = w.write(
        "in.csv",
        format!("department_uuid,invoice_guid,comment\n{DEPT},formula-1,=SUM(A1)\n"),
    );
    let run = w.send(&input, &[]).await;
    let row = &run.rows[0];
    assert_eq!(row["payment_link"], "'=HYPERLINK(\"http://evil\")");
    assert_eq!(row["invoice_link"], "'+1+1");
    // Only a cell's first character matters to a spreadsheet; this one starts with the code.
    assert_eq!(row["warnings"], "150000 @SUM(A1): -2+3");
    // Input cells are carried byte for byte, even when they look like formulas.
    assert_eq!(row["comment"], "=SUM(A1)");
}

#[tokio::test]
async fn result_columns_are_prefixed_when_the_input_already_has_one() {
    let w = World::start().await;
    let input = w.write(
        "in.csv",
        format!("department_uuid,invoice_guid,Status,message\n{DEPT},ok-1,open,hello\n"),
    );
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let row = &run.rows[0];
    assert_eq!(row["Status"], "open");
    assert_eq!(row["message"], "hello");
    assert_eq!(row["dispatch_status"], "sent");
    assert!(row.contains_key("dispatch_completed_at"));
}

#[tokio::test]
async fn pass_through_cells_survive_byte_for_byte() {
    let w = World::start().await;
    let tricky = "\"multi\nline, with \"\"quotes\"\"\"";
    let input = w.write(
        "in.csv",
        format!("department_uuid,invoice_guid,note,empty\r\n{DEPT},ok-1,{tricky},\r\n\r\n{DEPT},ok-2,  spaced  ,x\r\n"),
    );
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.rows.len(), 2);
    assert_eq!(run.rows[0]["note"], "multi\nline, with \"quotes\"");
    assert_eq!(run.rows[1]["note"], "  spaced  ");
    assert_eq!(run.rows[1]["empty"], "x");
}

#[tokio::test]
async fn the_password_appears_in_no_output_results_summary_or_ledger() {
    let w = World::start().await;
    let input = w.input(&[
        &format!("{DEPT},ok-1,,"),
        &format!("{DEPT},bad-2,,"),
        "../x,ok-3,,",
    ]);
    let run = w.send(&input, &["--log-format", "json"]).await;
    assert_eq!(run.code, 2);
    let mut haystacks = vec![
        run.stdout.clone(),
        run.stderr.clone(),
        run.results_text.clone(),
        run.summary.to_string(),
    ];
    for entry in std::fs::read_dir(w.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            haystacks.push(String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned());
        }
    }
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for h in haystacks {
        assert!(!h.contains(PASSWORD), "password leaked");
        assert!(!h.contains(&basic), "authorization header leaked");
    }
}

#[tokio::test]
async fn validate_lists_bad_rows_with_line_column_and_value_and_exits_2() {
    let w = World::start().await;
    let edge = sample_path("edge-cases.csv");
    let out = w
        .command()
        .arg("validate")
        .arg(edge)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("line 10") && stdout.contains("../etc"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 11") && stdout.contains("invoice_guid"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 12") && stdout.contains("send_as_text") && stdout.contains("maybe"),
        "{stdout}"
    );
    assert!(stdout.contains("duplicate of line 2"), "{stdout}");
    let good = sample_path("invoices.csv");
    let out = w
        .command()
        .arg("validate")
        .arg(good)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn a_quote_never_closed_cannot_swallow_the_rows_after_it() {
    let w = World::start().await;
    // Line 3 opens a quote in its last cell and never closes it: csv reads lines 3-5 as
    // one row, whose last cell holds the other two.
    let input = w.write(
        "in.csv",
        format!(
            "department_uuid,invoice_guid,note\n{DEPT},ok-1,fine\n{DEPT},ok-2,\"5 inch screen\n{DEPT},ok-3,x\n{DEPT2},ok-4,y\n"
        ),
    );
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.statuses(), ["sent", "invalid"]);
    let message = &run.row("ok-2")["message"];
    assert!(
        message.contains("line 3") && message.contains("lines 3 to 5") && message.contains("note"),
        "{message}"
    );
    assert_eq!(w.stats().total_requests, 1);
    assert_eq!(w.received(DEPT, "ok-3") + w.received(DEPT2, "ok-4"), 0);
    // The header line is no different: nothing is sent and the run says why.
    let input = w.write(
        "header.csv",
        format!("department_uuid,invoice_guid,\"note\n{DEPT},ok-5,x\n"),
    );
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("header.csv:1") && run.stderr.contains("not closed"),
        "{}",
        run.stderr
    );
    assert_eq!(w.stats().total_requests, 1);
}

#[tokio::test]
async fn a_missing_required_column_is_fatal_before_anything_is_sent() {
    let w = World::start().await;
    let input = w.write("in.csv", format!("department_uuid,invoice\n{DEPT},ok-1\n"));
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("invoice_guid"), "{}", run.stderr);
    assert!(run.stderr.contains("in.csv"), "{}", run.stderr);
    assert!(run.rows.is_empty());
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    let out = w
        .command()
        .arg("send")
        .arg(&input)
        .args([
            "--base-url",
            "http://payments.example.com/payment",
            "--ledger",
        ])
        .arg(w.ledger())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://"));
}

#[tokio::test]
async fn unreadable_empty_and_unknown_config_inputs_exit_1_with_the_reason() {
    let w = World::start().await;
    let run = w.send(&w.path("missing.csv"), &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("missing.csv"), "{}", run.stderr);
    // The reason once, not repeated by the error chain.
    assert_eq!(
        run.stderr.matches("os error 2").count(),
        1,
        "{}",
        run.stderr
    );
    let folder = w.path("folder.csv");
    std::fs::create_dir(&folder).unwrap();
    let run = w.send(&folder, &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("folder.csv: not a regular file"),
        "{}",
        run.stderr
    );
    let empty = w.write("empty.csv", "");
    let run = w.send(&empty, &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("empty.csv"), "{}", run.stderr);
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    let nowhere = w.path("no-such-folder").join("out.csv");
    let run = w.send(&input, &["--out", nowhere.to_str().unwrap()]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("out.csv: no such folder") && !run.stderr.contains("check-"),
        "{}",
        run.stderr
    );
    let bad = w.write("bad.toml", "rate = 5\nrtae = 10\n");
    let run = w.send(&input, &["--config", bad.to_str().unwrap()]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("rtae"), "{}", run.stderr);
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn flags_beat_environment_beats_config_file() {
    let w = World::start().await;
    let input = w.input(&[&format!("{DEPT},ok-1,,")]);
    // The config names an unreachable port; the environment overrides it with the simulator.
    let config = w.fast_config("base_url = \"http://127.0.0.1:9\"");
    let send = |input: &std::path::Path, env_url: &str, flags: &[&str]| {
        let mut cmd = w.command();
        cmd.arg("send")
            .arg(input)
            .arg("--config")
            .arg(&config)
            .arg("--ledger")
            .arg(w.ledger())
            .args(flags)
            .env("INVOICE_DISPATCH_BASE_URL", env_url);
        async move {
            let out = cmd.output().await.unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    send(&input, &w.sim.base_url(), &[]).await;
    assert_eq!(w.stats().total_requests, 1);

    // And a flag overrides the environment: here the environment names the dead port.
    let input = w.write("second.csv", format!("{HEADER}\n{DEPT},ok-2,,\n"));
    let url = w.sim.base_url();
    send(&input, "http://127.0.0.1:9", &["--base-url", &url]).await;
    assert_eq!(w.received(DEPT, "ok-2"), 1);
}

#[tokio::test]
async fn dry_run_lists_the_requests_and_sends_nothing() {
    let w = World::start().await;
    let input = w.input(&[
        &format!("{DEPT},ok-1,no,yes"),
        "../x,ok-2,,",
        &format!("{DEPT},ok-1,,"),
    ]);
    let run = w.send(&input, &["--dry-run"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert!(lines[0].starts_with("line 2: POST "), "{}", lines[0]);
    assert!(lines[0].contains(&format!("/v4/departments/{DEPT}/payment-requests")));
    assert!(
        lines[0].contains(r#""invoiceGuid":"ok-1""#) && lines[0].contains(r#""sendAsText":false"#)
    );
    assert!(run.rows.is_empty(), "a dry run writes no results file");
    let last = run.stderr.trim_end().lines().last().unwrap();
    assert_eq!(
        last,
        "DRY RUN (nothing sent): 3 rows: 1 invalid, 1 duplicate, 1 would be sent; exit 2"
    );
    assert_eq!(run.summary["dry_run"], true);
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn an_explicit_delimiter_beats_sniffing() {
    let w = World::start().await;
    // Sniffing would pick the comma (two of them); the file is really tab-separated.
    let input = w.write(
        "in.tsv",
        format!("department_uuid\tinvoice_guid\tnote\n{DEPT}\tok-1\ta, b, c\n"),
    );
    let run = w.send(&input, &["--delimiter", "tab"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(w.received(DEPT, "ok-1"), 1);
}

#[tokio::test]
async fn the_summary_json_has_every_count_and_the_last_stderr_line_is_the_summary() {
    let w = World::start().await;
    let input = w.input(&[
        &format!("{DEPT},ok-1,,"),
        &format!("{DEPT},bad-2,,"),
        &format!("{DEPT},ok-1,,"),
    ]);
    let run = w.send(&input, &[]).await;
    assert_eq!(run.code, 2);
    let counts = &run.summary["counts"];
    for status in [
        "sent",
        "partial",
        "failed",
        "unknown",
        "invalid",
        "duplicate",
        "skipped",
        "not_sent",
    ] {
        assert!(counts[status].is_u64(), "{status} missing: {}", run.summary);
    }
    assert_eq!(run.summary["rows"], 3);
    assert_eq!(counts["sent"], 1);
    assert_eq!(counts["failed"], 1);
    assert_eq!(counts["duplicate"], 1);
    assert_eq!(run.summary["requests"], 2);
    assert_eq!(run.summary["exit_code"], 2);
    let last = run.stderr.trim_end().lines().last().unwrap();
    assert!(
        last.contains("3 rows: 1 sent, 1 failed, 1 duplicate"),
        "{last}"
    );
    assert!(last.ends_with("exit 2"), "{last}");
}

#[tokio::test]
async fn an_input_file_saved_over_during_the_run_is_refused_rather_than_mislabelled() {
    let w = World::start().await;
    let input = w.input(&rows(DEPT, "ok-", 40));
    let child = w
        .send_command(&input, &["--rate", "20", "--concurrency", "2"])
        .spawn()
        .unwrap();
    wait_for("some requests", std::time::Duration::from_secs(20), || {
        w.stats().total_requests >= 5
    })
    .await;
    // Same number of rows, other invoices: positions would match, customers would not.
    w.input(&rows(DEPT, "other-", 40));
    let run = w.finish(child.wait_with_output().await.unwrap());
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("changed during the run"),
        "{}",
        run.stderr
    );
    assert!(
        run.rows.is_empty(),
        "no results file pinned on the wrong rows"
    );
}

#[tokio::test]
async fn a_usage_error_exits_1_while_help_and_version_exit_0() {
    let w = World::start().await;
    let out = w
        .command()
        .args(["send", "--no-such-flag", "x.csv"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    let out = w.command().args(["send"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    for ok in [&["--help"][..], &["--version"], &["send", "--help"]] {
        let out = w.command().args(ok).output().await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{ok:?}");
    }
}

#[tokio::test]
async fn log_format_json_in_the_config_file_makes_stderr_json() {
    let w = World::start().await;
    // A refused department logs a warning, so stderr has at least one log line.
    let input = w.input(&[&format!("{DEPT},noauth-1,,")]);
    let run = w
        .send_with_config(&input, "log_format = \"json\"", &[])
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    let (summary, logs) = lines.split_last().unwrap();
    assert!(summary.contains("1 rows: 1 failed"), "{summary}");
    assert!(!logs.is_empty(), "{}", run.stderr);
    for line in logs {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
}

/// In a container the simulator is PID 1, which the kernel spares any signal it does not
/// handle: without its own SIGTERM handler `docker stop` would wait out its timeout.
#[tokio::test]
async fn the_simulator_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let w = World::start().await;
    let mut child = w
        .command()
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .expect("the simulator says where it listens")
        .unwrap()
        .unwrap();
    assert!(first.contains("http://127.0.0.1:"), "{first}");
    signal(&child, libc::SIGTERM);
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("the simulator exits on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
