//! Spreadsheets in and out (SPEC section 14): every text encoding Excel writes a CSV in.

#[macro_use]
mod common;

use common::*;

/// The header and two rows, one invoice with letters outside ASCII, tab-separated and CRLF
/// like Excel's "Unicode Text".
fn rows_text() -> String {
    format!(
        "department_uuid\tinvoice_guid\tsend_as_text\tnote\r\n\
         {DEPT}\tÉTÉ-1\tyes\tcafé crème\r\n\
         {DEPT}\tok-2\tno\tplain\r\n"
    )
}

fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
    let mut bytes = if big_endian {
        vec![0xFE, 0xFF]
    } else {
        vec![0xFF, 0xFE]
    };
    for unit in text.encode_utf16() {
        let pair = if big_endian {
            unit.to_be_bytes()
        } else {
            unit.to_le_bytes()
        };
        bytes.extend_from_slice(&pair);
    }
    bytes
}

/// Sent and read back: the body's invoice is the right UTF-8, and the results CSV is
/// UTF-8 with a BOM, carrying the other cells decoded.
async fn assert_sent_as_utf8(w: &World, run: &Run) {
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(w.received(DEPT, "ÉTÉ-1"), 1, "{:?}", w.stats().by_invoice);
    assert_eq!(w.received(DEPT, "ok-2"), 1);
    assert!(
        run.results_text.starts_with('\u{feff}'),
        "UTF-8 BOM for Excel"
    );
    assert_eq!(run.row("ÉTÉ-1")["note"], "café crème");
    assert_eq!(run.row("ÉTÉ-1")["status"], "sent");
}

#[tokio::test]
async fn utf16_with_its_bom_is_read_whichever_byte_order() {
    for big_endian in [false, true] {
        let w = World::start().await;
        let input = w.write("unicode.txt", utf16(&rows_text(), big_endian));
        let run = w.send(&input, &[]).await;
        assert_sent_as_utf8(&w, &run).await;
    }
}

#[tokio::test]
async fn windows_1252_is_read_with_encoding_and_named_without_it() {
    let w = World::start().await;
    let text = rows_text();
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&text);
    assert!(!unmappable);
    let input = w.write("excel.csv", &bytes);
    let plain = w.send(&input, &[]).await;
    assert_eq!(plain.code, 2, "{}", plain.stderr);
    let row = &plain.rows[0];
    assert_eq!(row["status"], "invalid", "{row:?}");
    assert!(
        row["message"].contains("not valid UTF-8")
            && row["message"].contains("--encoding windows-1252"),
        "{row:?}"
    );
    assert_eq!(w.received(DEPT, "ok-2"), 1, "the other row is sent");

    let w = World::start().await;
    let input = w.write("excel.csv", &bytes);
    let run = w.send(&input, &["--encoding", "windows-1252"]).await;
    assert_sent_as_utf8(&w, &run).await;
    let bad = w.send(&input, &["--encoding", "klingon"]).await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("not an encoding"), "{}", bad.stderr);
}

/// The parts of an .xlsx (a zip) by name, as text.
fn xlsx_part(path: &std::path::Path, name: &str) -> String {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut part = zip.by_name(name).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut part, &mut text).unwrap();
    text
}

#[tokio::test]
async fn a_results_workbook_holds_what_the_csv_holds_with_real_links_dates_and_no_formulas() {
    use calamine::{Data, Reader};
    let rows_in: Vec<String> = [
        format!("{DEPT},ok-1,,"),
        format!("{DEPT},bad-2,,"),
        format!("{DEPT},=HYPERLINK(\"http://x\"),,"),
        "not a uuid!,x,,".to_string(),
        format!("{DEPT},ok-1,,"),
    ]
    .to_vec();
    let (as_csv, as_xlsx) = (World::start().await, World::start().await);
    let csv = as_csv.send(&as_csv.input(&rows_in), &[]).await;
    let out = as_xlsx.path("results.xlsx");
    let run = as_xlsx
        .send(&as_xlsx.input(&rows_in), &["--out", out.to_str().unwrap()])
        .await;
    assert_eq!(run.code, csv.code, "{}", run.stderr);

    let mut book = calamine::open_workbook_auto(&out).unwrap();
    assert_eq!(book.sheet_names(), ["Results", "Summary"]);
    let sheet = book.worksheet_range("Results").unwrap();
    let mut rows = sheet.rows();
    let header: Vec<String> = rows.next().unwrap().iter().map(|c| c.to_string()).collect();
    assert_eq!(
        header[..4],
        [
            "department_uuid",
            "invoice_guid",
            "send_as_text",
            "send_as_email"
        ]
    );
    for (row, want) in rows.zip(&csv.rows) {
        let cell = |name: &str| &row[header.iter().position(|h| h == name).unwrap()];
        for name in [
            "invoice_guid",
            "status",
            "message",
            "errors",
            "payment_link",
        ] {
            let text = cell(name).to_string();
            // The CSV neutralises formula starts with a `'`; the workbook has no need to.
            assert_eq!(
                text,
                want[name].trim_start_matches('\''),
                "{name}: {row:?} / {want:?}"
            );
        }
        if !want["http_status"].is_empty() {
            assert_eq!(
                cell("http_status"),
                &Data::Float(want["http_status"].parse().unwrap())
            );
        }
        assert!(matches!(cell("completed_at"), Data::DateTime(_)), "{row:?}");
    }
    let summary = book.worksheet_range("Summary").unwrap();
    let lines: Vec<(String, String)> = summary
        .rows()
        .map(|r| (r[0].to_string(), r[1].to_string()))
        .collect();
    assert!(
        lines.contains(&("exit code".into(), csv.code.to_string())),
        "{lines:?}"
    );
    assert!(lines.contains(&("sent".into(), "2".into())), "{lines:?}");

    let sheet_xml = xlsx_part(&out, "xl/worksheets/sheet1.xml");
    assert!(!sheet_xml.contains("<f>"), "no formula cells");
    assert!(sheet_xml.contains("<pane ") && sheet_xml.contains("<autoFilter "));
    let links = sheet_xml.matches("<hyperlink ").count();
    assert_eq!(
        links, 4,
        "the two sent rows' two links each, and nothing else"
    );
    let rels = xlsx_part(&out, "xl/worksheets/_rels/sheet1.xml.rels");
    assert!(rels.contains("https://pay.simulator.invalid/p/"), "{rels}");
    let exported = as_xlsx.path("export.xlsx");
    let export = as_xlsx
        .look(&["export", "r1", "--out", exported.to_str().unwrap()])
        .await;
    assert_eq!(export.code, 0, "{}", export.stderr);
    let mut book = calamine::open_workbook_auto(&exported).unwrap();
    let statuses: Vec<String> = book
        .worksheet_range("Results")
        .unwrap()
        .rows()
        .skip(1)
        .map(|r| r[3].to_string())
        .collect();
    assert_eq!(statuses, csv.statuses(), "export --out .xlsx");
    let styles = xlsx_part(&out, "xl/styles.xml");
    assert!(
        styles.contains("FF2E7D32") && styles.contains("FF8D6E63"),
        "sent and invalid fills"
    );
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The Results sheet of a results workbook, as header -> text per row.
fn workbook_rows(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    use calamine::Reader;
    let mut book = calamine::open_workbook_auto(path).unwrap();
    let sheet = book.worksheet_range("Results").unwrap();
    let mut rows = sheet.rows();
    let header: Vec<String> = rows.next().unwrap().iter().map(|c| c.to_string()).collect();
    rows.map(|r| {
        header
            .iter()
            .cloned()
            .zip(r.iter().map(|c| c.to_string()))
            .collect()
    })
    .collect()
}

/// `send INPUT` to the world's simulator and ledger, with the results where they fall by
/// default (beside the input), and the summary JSON.
async fn send_default_out(w: &World, input: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = w
        .command()
        .arg("send")
        .arg(input)
        .args(["--base-url", &w.sim.base_url(), "--ledger"])
        .arg(w.ledger())
        .arg("--summary-json")
        .arg(w.path("summary.json"))
        .arg("--config")
        .arg(w.fast_config(""))
        .args(["--rate", "0", "--no-progress"])
        .args(extra)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[tokio::test]
async fn a_workbooks_cells_read_as_its_csv_export_would_and_its_results_are_a_workbook() {
    let w = World::start().await;
    let input = w.write("typed.xlsx", std::fs::read(fixture("typed.xlsx")).unwrap());
    let (code, stderr) = send_default_out(&w, &input, &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("reading sheet \"Invoices\""), "{stderr}");
    assert!(
        stderr.contains("leading zeros"),
        "numbers in an ID column are warned of: {stderr}"
    );
    for invoice in ["104200", "INV-3", "2026-12-01"] {
        assert_eq!(
            w.received(DEPT, invoice),
            1,
            "{invoice}: {:?}",
            w.stats().by_invoice
        );
    }
    assert_eq!(w.stats().total_requests, 3);
    let stats = w.stats();
    let body = stats
        .recent
        .iter()
        .find(|r| r.body["invoiceGuid"] == "104200")
        .unwrap();
    assert_eq!(
        (&body.body["sendAsText"], &body.body["sendAsEmail"]),
        (&true.into(), &false.into())
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["sheet"], "Invoices");

    let rows = workbook_rows(&w.path("typed.results.xlsx"));
    let by_line: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["invoice_guid"].as_str(), r["status"].as_str()))
        .collect();
    assert_eq!(
        by_line,
        [
            ("104200", "sent"),
            ("INV-3", "sent"),
            ("#REF!", "invalid"),
            ("", "invalid"),
            ("2026-12-01", "sent")
        ]
    );
    assert_eq!(
        (rows[0]["amount"].as_str(), rows[0]["due"].as_str()),
        ("475.09", "2026-11-30")
    );
    assert_eq!(rows[0]["note"], "saved", "a formula's saved value");
    {
        use calamine::{Data, Reader};
        let mut book = calamine::open_workbook_auto(w.path("typed.results.xlsx")).unwrap();
        let sheet = book.worksheet_range("Results").unwrap();
        // Numbers stay numbers, but the ID columns are text.
        assert_eq!(
            sheet.get_value((1, 4)),
            Some(&Data::Float(475.09)),
            "amount"
        );
        assert_eq!(
            sheet.get_value((1, 1)),
            Some(&Data::String("104200".into())),
            "invoice"
        );
    }
    assert_eq!(
        rows[1]["note"], "#N/A",
        "an error where no request looks is its text"
    );
    assert!(
        rows[2]["message"].starts_with("line 4 (cell B4)"),
        "{:?}",
        rows[2]
    );
    assert!(rows[2]["message"].contains("#REF!"), "{:?}", rows[2]);
    assert!(
        rows[3]["message"].starts_with("line 5 (cell B5)"),
        "{:?}",
        rows[3]
    );
    assert!(
        rows[3]["message"].contains("formula without a saved value"),
        "{:?}",
        rows[3]
    );
}

#[tokio::test]
async fn sheet_picks_a_sheet_by_name_or_number_and_a_wrong_one_lists_them() {
    let w = World::start().await;
    let input = w.write("typed.xlsx", std::fs::read(fixture("typed.xlsx")).unwrap());
    for pick in ["Other", "2"] {
        let run = w.send(&input, &["--sheet", pick, "--resend"]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(run.statuses(), ["sent"]);
    }
    assert_eq!(w.received(DEPT, "OTHER-1"), 2);
    let wrong = w.send(&input, &["--sheet", "3"]).await;
    assert_eq!(wrong.code, 1);
    assert!(
        wrong.stderr.contains("\"Invoices\", \"Other\""),
        "{}",
        wrong.stderr
    );
}

/// A zip of one part: `size` zero bytes, deflated at the fastest level (a zip bomb's shape).
fn zip_of_zeros(path: &std::path::Path, size: u64) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(size > u32::MAX as u64);
    zip.start_file("xl/worksheets/sheet1.xml", options).unwrap();
    std::io::copy(&mut std::io::Read::take(std::io::repeat(0), size), &mut zip).unwrap();
    zip.finish().unwrap();
}

/// The largest peak RSS of the children this test process has waited for, in MiB.
fn children_peak_mib() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss as u64 / 1024
}

#[tokio::test]
async fn hostile_workbooks_are_refused_before_any_request_saying_which() {
    use std::io::Read;
    let w = World::start().await;
    let typed = std::fs::read(fixture("typed.xlsx")).unwrap();
    zip_of_zeros(&w.path("bomb.xlsx"), (1 << 30) + (100 << 20));
    w.write("truncated.xlsx", &typed[..typed.len() / 2]);
    let random: Vec<u8> = (0..64 * 1024)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    w.write("random.xlsx", &random);
    let mut encrypted = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    encrypted.extend(std::iter::repeat_n(0u8, 1024));
    encrypted.extend("EncryptedPackage".encode_utf16().flat_map(u16::to_le_bytes));
    w.write("locked.xlsx", &encrypted);
    for (name, says) in [
        ("bomb.xlsx", "zip bomb"),
        ("truncated.xlsx", "truncated or damaged"),
        ("random.xlsx", "binary data"),
        ("locked.xlsx", "encrypted"),
    ] {
        let run = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            w.send(&w.path(name), &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} took over 20 s"));
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains(name),
            "the file is named: {}",
            run.stderr
        );
        assert_eq!(w.stats().total_requests, 0, "{name}");
    }
    assert!(
        children_peak_mib() < 300,
        "peak RSS {} MiB",
        children_peak_mib()
    );

    // Names do not decide: an .xlsx named .csv is a workbook, a CSV named .xlsx a CSV.
    w.write("workbook.csv", &typed);
    let run = w.send(&w.path("workbook.csv"), &["--dry-run"]).await;
    assert!(
        run.stderr.contains("reading sheet \"Invoices\""),
        "{}",
        run.stderr
    );
    let mut csv = String::new();
    std::fs::File::open(sample_path("invoices.csv"))
        .unwrap()
        .read_to_string(&mut csv)
        .unwrap();
    w.write("text.xlsx", &csv);
    let run = w.send(&w.path("text.xlsx"), &["--dry-run"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("reading sheet"), "{}", run.stderr);
}

/// LibreOffice, headless, with a profile of the test's own so that tests running at once
/// do not share one: converts `file` to `to` (`xlsx`, `ods`, or `csv` as UTF-8 with
/// commas) into `dir`, and returns the new file.
fn soffice(file: &std::path::Path, to: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let soffice = service("INVOICE_DISPATCH_TEST_SOFFICE");
    let profile = tempfile::tempdir().unwrap();
    let filter = match to {
        "csv" => "csv:Text - txt - csv (StarCalc):44,34,76,1".to_string(),
        other => other.to_string(),
    };
    let out = std::process::Command::new(soffice)
        .arg(format!(
            "-env:UserInstallation=file://{}",
            profile.path().display()
        ))
        .args([
            "--headless",
            "--norestore",
            "--convert-to",
            &filter,
            "--outdir",
        ])
        .arg(dir)
        .arg(file)
        .env("HOME", profile.path())
        .output()
        .unwrap();
    let made = dir.join(file.with_extension(to).file_name().unwrap());
    assert!(
        out.status.success() && made.exists(),
        "soffice could not convert {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    made
}

/// The (path, body) of every request the simulator received, sorted.
fn requests(w: &World) -> Vec<(String, String)> {
    let mut all: Vec<_> = w
        .stats()
        .recent
        .into_iter()
        .map(|r| (r.path, r.body.to_string()))
        .collect();
    all.sort();
    all
}

#[tokio::test]
#[ignore = "needs LibreOffice: run scripts/test"]
async fn the_sample_saved_by_libreoffice_as_xlsx_ods_and_xls_sends_the_csvs_requests_byte_for_byte()
{
    let by_csv = World::start().await;
    let csv = by_csv.sample("invoices.csv");
    let run = by_csv.send(&csv, &[]).await;
    assert!(matches!(run.code, 0 | 2), "{}", run.stderr);
    let want = requests(&by_csv);
    assert!(want.len() > 20, "{want:?}");
    for to in ["xlsx", "ods", "xls"] {
        let w = World::start().await;
        let book = soffice(&w.sample("invoices.csv"), to, w.dir.path());
        let run = w.send(&book, &[]).await;
        assert!(matches!(run.code, 0 | 2), "{to}: {}", run.stderr);
        assert_eq!(requests(&w), want, "{to}");
    }
}

#[tokio::test]
#[ignore = "needs LibreOffice: run scripts/test"]
async fn our_results_workbook_read_back_by_libreoffice_matches_the_csv_results() {
    let (as_csv, as_xlsx) = (World::start().await, World::start().await);
    let csv = as_csv.send(&as_csv.sample("invoices.csv"), &[]).await;
    let book = as_xlsx.path("results.xlsx");
    as_xlsx
        .send(
            &as_xlsx.sample("invoices.csv"),
            &["--out", book.to_str().unwrap()],
        )
        .await;
    let back_dir = as_xlsx.path("back");
    std::fs::create_dir_all(&back_dir).unwrap();
    let back = soffice(&book, "csv", &back_dir);
    let back = parse_results(&std::fs::read_to_string(back).unwrap());
    assert_eq!(back.len(), csv.rows.len());
    for (ours, theirs) in back.iter().zip(&csv.rows) {
        for (column, want) in theirs {
            if column == "completed_at" {
                continue;
            }
            // The CSV neutralises a formula start with `'`; a workbook's string cells need not.
            assert_eq!(
                &ours[column],
                want.strip_prefix('\'').unwrap_or(want),
                "{column}"
            );
        }
    }
}

#[tokio::test]
#[ignore = "needs LibreOffice: run scripts/test"]
async fn resolve_reads_a_results_workbook_with_a_resolution_column_all_or_nothing() {
    let w = World::start().await;
    let input = w.input(&[
        &format!("{DEPT},ok-1,,"),
        &format!("{DEPT},err500-2,,"),
        &format!("{DEPT},err500-3,,"),
    ]);
    let book = w.path("results.xlsx");
    let run = w.send(&input, &["--out", book.to_str().unwrap()]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    // A person adds the column, the way a script can: out to CSV, a column, back in, over
    // the results file (the run knows it by that name).
    let pristine = w.path("pristine.xlsx");
    std::fs::copy(&book, &pristine).unwrap();
    let with_verdicts = |verdicts: [&str; 3]| {
        let dir = tempfile::tempdir_in(w.dir.path()).unwrap().keep();
        let text = std::fs::read_to_string(soffice(&pristine, "csv", &dir)).unwrap();
        let mut lines = text.lines();
        let mut edited = format!("{},resolution\n", lines.next().unwrap());
        for (line, verdict) in lines.zip(verdicts) {
            edited.push_str(&format!("{line},{verdict}\n"));
        }
        let csv = dir.join("edited.csv");
        std::fs::write(&csv, edited).unwrap();
        let made = soffice(&csv, "xlsx", &dir);
        std::fs::rename(made, &book).unwrap();
    };
    with_verdicts(["not delivered", "delivered", ""]);
    let refused = w.look(&["resolve", book.to_str().unwrap()]).await;
    assert_ne!(
        refused.code, 0,
        "a verdict on a sent row refuses the file: {}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("results.xlsx:2: ok-1 is sent"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("nothing recorded"),
        "{}",
        refused.stderr
    );
    with_verdicts(["", "delivered", "not delivered"]);
    let out = w.look(&["resolve", book.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("recorded 1 delivered and 1 not delivered"),
        "{}",
        out.stderr
    );
    let rerun = w.send(&input, &[]).await;
    assert_eq!(w.received(DEPT, "err500-2"), 1, "{}", rerun.stderr);
    assert_eq!(
        w.received(DEPT, "err500-3"),
        2,
        "the undelivered one is sent again"
    );
}
