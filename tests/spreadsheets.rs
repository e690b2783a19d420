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
