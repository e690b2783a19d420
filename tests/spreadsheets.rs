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
