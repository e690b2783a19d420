use super::*;
use std::io::Write;

type Rows = Vec<(Record, Vec<String>)>;

fn open(
    content: &[u8],
    opts: &InputOptions,
) -> (tempfile::NamedTempFile, Result<InputReader, InputError>) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(content).unwrap();
    let r = InputReader::open(f.path(), opts);
    (f, r)
}

/// Every record plus its raw cells.
fn read_opts(content: &str, opts: &InputOptions) -> (InputReader, Rows) {
    let mut r = open(content.as_bytes(), opts).1.unwrap();
    let (mut raw, mut out) = (ByteRecord::new(), Vec::new());
    while let Some(rec) = r.next_record(&mut raw).unwrap() {
        let cells = raw.iter().map(|c| String::from_utf8_lossy(c).into_owned());
        out.push((rec, cells.collect()));
    }
    (r, out)
}

fn read(content: &str) -> Rows {
    read_opts(content, &InputOptions::default()).1
}

fn ok(row: &(Record, Vec<String>)) -> &Request {
    row.0.parsed.as_ref().unwrap()
}

fn bad(row: &(Record, Vec<String>)) -> (&str, &str, &str) {
    let i = row.0.parsed.as_ref().unwrap_err();
    (&i.column, &i.value, &i.reason)
}

fn lines(rows: &Rows) -> Vec<u64> {
    rows.iter().map(|(r, _)| r.line).collect()
}

fn fatal(content: &[u8], opts: &InputOptions) -> (InputError, String) {
    let (f, r) = open(content, opts);
    let e = r.err().unwrap();
    let msg = e.to_string();
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    (e, msg)
}

#[test]
fn booleans_spellings_blank_and_missing_defaults() {
    for w in ["true", "YES", " y ", "1", "On", "t"] {
        assert_eq!(parse_bool(w), Ok(Some(true)), "{w}");
    }
    for w in ["false", "No", "N", "0", "OFF", "f\t"] {
        assert_eq!(parse_bool(w), Ok(Some(false)), "{w}");
    }
    assert_eq!((parse_bool("  "), parse_bool("maybe")), (Ok(None), Err(())));
    let rows = read(
        "department_uuid,invoice_guid,send_as_text,esign_required\nd,i,,yes\nd,i,no,\nd,i,x,1\n",
    );
    let want = Flags {
        esign_required: true,
        ..Flags::default()
    };
    assert_eq!(ok(&rows[0]).flags, want);
    assert_eq!(
        ok(&rows[1]).flags,
        Flags {
            send_as_text: false,
            ..Flags::default()
        }
    );
    let (col, value, reason) = bad(&rows[2]);
    assert_eq!((col, value, reason), ("send_as_text", "x", BOOL_RULE));
    let defaults = Flags {
        send_as_email: false,
        ..Flags::default()
    };
    let opts = InputOptions {
        defaults,
        ..Default::default()
    };
    let (_, rows) = read_opts("department_uuid,invoice_guid\nd,i\n", &opts);
    assert_eq!(ok(&rows[0]).flags, defaults);
}

#[test]
fn header_variants_and_column_mapping() {
    for h in [
        "Department UUID,Invoice GUID",
        "departmentUuid,invoiceGuid",
        "DEPARTMENT-UUID,invoice guid",
    ] {
        assert!(read(&format!("{h}\nd,i\n"))[0].0.parsed.is_ok(), "{h}");
    }
    let mut opts = InputOptions::default();
    opts.columns.insert(Column::DepartmentUuid, "Dept".into());
    opts.columns.insert(Column::SendAsText, "SMS?".into());
    let (r, rows) = read_opts("Other,dept,Invoice Guid,sms\nkeep,d9,i9,no\n", &opts);
    let req = ok(&rows[0]);
    assert_eq!(
        (req.department.as_str(), req.invoice.as_str()),
        ("d9", "i9")
    );
    assert!(!req.flags.send_as_text);
    assert_eq!(&r.headers()[1], b"dept");
    // A mapped column no longer answers to its canonical name.
    let (_, msg) = fatal(b"department_uuid,invoice_guid\nd,i\n", &opts);
    assert!(
        msg.contains("department_uuid") && msg.contains("\"Dept\""),
        "{msg}"
    );
    let (e, msg) = fatal(
        b"Department UUID,department_uuid,invoice_guid\n",
        &InputOptions::default(),
    );
    assert!(matches!(e, InputError::DuplicateColumn { .. }) && msg.contains("Department UUID"));
    opts.columns
        .insert(Column::EsignRequired, "invoice-guid".into());
    let (e, _) = fatal(b"dept,invoice_guid\n", &opts);
    assert!(matches!(e, InputError::AmbiguousHeader { .. }));
}

#[test]
fn bom_semicolon_tab_crlf_and_forced_delimiter() {
    let (r, rows) = read_opts(
        "\u{feff}department_uuid;invoice_guid;note\r\nd;i;a,b\r\n",
        &InputOptions::default(),
    );
    assert!(r.had_bom());
    assert_eq!(
        (r.delimiter(), &r.headers()[0]),
        (b';', &b"department_uuid"[..])
    );
    assert_eq!(rows[0].1, ["d", "i", "a,b"]);
    let (r, rows) = read_opts(
        "department_uuid\tinvoice_guid\nd\ti, x\n",
        &InputOptions::default(),
    );
    assert!(!r.had_bom());
    assert_eq!(
        (r.delimiter(), ok(&rows[0]).invoice.as_str()),
        (b'\t', "i, x")
    );
    let rows = read("department_uuid,invoice_guid\r\nd1,i1\r\n\r\nd2,i2\r\nd3,i3");
    assert_eq!(
        (lines(&rows), &rows[2].1[..]),
        (vec![2, 4, 5], &["d3".to_string(), "i3".into()][..])
    );
    let opts = InputOptions {
        delimiter: Some(b';'),
        ..Default::default()
    };
    assert_eq!(
        read_opts("department_uuid;invoice_guid;a,b,c,d\n", &opts)
            .0
            .headers()
            .len(),
        3
    );
    for (head, want) in [
        ("a;b,c;d", b';'),
        ("\"a;b;c\",d,e", b','),
        ("a;b,c", b','),
        ("\n \na\tb", b'\t'),
        ("ab", b','),
    ] {
        let (f, _) = open(head.as_bytes(), &InputOptions::default());
        assert_eq!(
            sniff(&mut File::open(f.path()).unwrap()).unwrap(),
            (false, want),
            "{head}"
        );
    }
}

#[test]
fn quoted_delimiters_newlines_and_blank_lines_keep_line_numbers() {
    let csv = "\n  \ndepartment_uuid,invoice_guid,note\n\nd1,i1,\"a,b\"\n\"d2\",\"i\"\"2\",\"multi\nline\r\nnote\"\n   \n\nd3,i3,x\n\r\n";
    let (r, rows) = read_opts(csv, &InputOptions::default());
    assert_eq!(r.headers().len(), 3);
    assert_eq!(lines(&rows), [5, 6, 11]);
    assert_eq!(
        rows.iter().map(|(r, _)| r.seq).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(
        (&rows[0].1[2][..], ok(&rows[1]).invoice.as_str()),
        ("a,b", "i\"2")
    );
    assert_eq!(rows[1].1, ["d2", "i\"2", "multi\nline\r\nnote"]);
}

#[test]
fn a_quote_that_swallows_lines_makes_its_row_invalid() {
    let head = "department_uuid,invoice_guid,note\n";
    // Closed multi-line cells at the end of the file, with or without a final line
    // break, ending in an escaped quote or followed by blank lines: fine.
    for tail in [
        "d,i,\"a\nb\"",
        "d,i,\"a\nb\"\n",
        "d,i,\"a\nb\"\"\"\r\n",
        "d,i,\"a\n\"\n\n\n",
        "d,i,unquoted",
    ] {
        let rows = read(&format!("{head}{tail}"));
        assert!(rows[0].0.parsed.is_ok(), "{tail:?}");
    }
    // Never closed: the cell runs to the end of the file, whatever it ends with.
    for tail in [
        "d,i,\"a\nd,j,x\n",
        "d,i,\"a\nd,j,x",
        "d,i,\"a\r\nd,j,\"\"x\"\"\r\n",
        "d,i,\"a\n\n",
    ] {
        let rows = read(&format!("{head}{tail}"));
        assert_eq!(rows.len(), 1, "{tail:?}");
        assert_eq!(rows[0].0.line, 2, "{tail:?}");
        let (column, _, reason) = bad(&rows[0]);
        assert_eq!(column, "note");
        assert!(reason.contains("lines 2 to 3 "), "{tail:?}: {reason}");
    }
    // Mid-file, the swallowing ends at the next quote, which is then followed by
    // something a closing quote never is.
    let rows = read(&format!(
        "{head}d,i,\"5 inch\nd,j,x\nd,k,\"y\"\nd,l,\"multi\nline\"\n"
    ));
    assert_eq!(lines(&rows), [2, 5]);
    let (column, _, reason) = bad(&rows[0]);
    assert_eq!(column, "note");
    assert!(reason.contains("lines 2 to 4 "), "{reason}");
    assert!(rows[1].0.parsed.is_ok());
    // A later line that closes the stray quote at its very end leaves well-formed CSV;
    // the swallowed line is recognised as a row (a department seen in the file, an invoice),
    // and a note that only has commas in it is not.
    let rows = read(&format!(
        "{head}d,i,\"5 inch\nd,j,27\"\ne,k,\"Main St, Springfield\nIL, 62701\"\nd,l,x\n"
    ));
    assert_eq!(lines(&rows), [2, 4, 6]);
    let (column, _, reason) = bad(&rows[0]);
    assert_eq!(column, "note");
    assert!(reason.starts_with("line 3 inside this cell"), "{reason}");
    assert!(rows[1].0.parsed.is_ok() && rows[2].0.parsed.is_ok());
    // In the header line, nothing after it can be trusted.
    let (e, msg) = fatal(
        b"department_uuid,invoice_guid,\"note\nd,i,x\n",
        &InputOptions::default(),
    );
    assert!(
        matches!(e, InputError::Csv { line: 1, .. }) && msg.contains("not closed"),
        "{msg}"
    );
}

#[test]
fn line_numbers_with_many_rows() {
    let (mut csv, mut line, mut want) = (
        String::from("department_uuid,invoice_guid,pad\n"),
        2,
        vec![],
    );
    for i in 0..3000u64 {
        want.push(line);
        let pad = "p".repeat((i * 7 % 23) as usize);
        let multi = i % 17 == 0;
        csv += &if multi {
            format!("d,i{i},\"{pad}\n{pad}\"\r\n")
        } else {
            format!("d,i{i},{pad}\n")
        };
        line += 1 + u64::from(multi);
        if i % 13 == 0 {
            csv += "\n\r\n";
            line += 2;
        }
    }
    assert_eq!(lines(&read(&csv)), want);
}

#[test]
fn hostile_department_and_invoice_values() {
    let long = "a".repeat(129);
    for v in [
        "../x", "a/b", "x?y=1", "%2e%2e", "", "  ", "a b", "ü", &long,
    ] {
        let rows = read(&format!("department_uuid,invoice_guid\n\"{v}\",i\n"));
        let (col, _, reason) = bad(&rows[0]);
        assert_eq!(col, "department_uuid");
        assert!(reason == DEPT_RULE || reason == "required", "{v}: {reason}");
    }
    assert_eq!(DepartmentUuid::parse(" Ab-_9 ").unwrap().as_str(), "Ab-_9");
    assert!(DepartmentUuid::parse(&"a".repeat(128)).is_ok());
    assert!(
        InvoiceGuid::parse(&"é".repeat(129)).is_err()
            && InvoiceGuid::parse(&"é".repeat(128)).is_ok()
    );
    let rows = read("department_uuid,invoice_guid\nd,\"in\u{7}v\"\nd,\" ok-1 \"\nbad/,\n");
    assert_eq!(
        bad(&rows[0]),
        (
            "invoice_guid",
            "in\\u{7}v",
            "must not contain control characters"
        )
    );
    assert_eq!(ok(&rows[1]).invoice.as_str(), "ok-1");
    assert_eq!(
        bad(&rows[2]).0,
        "department_uuid",
        "department is reported first"
    );
}

#[test]
fn value_truncated_and_escaped() {
    let cell = format!("\"{}\nx", "ab".repeat(30)).replace('"', "\"\"");
    let rows = read(&format!("Department UUID,invoice_guid\n\"{cell}\",i\n"));
    assert_eq!(bad(&rows[0]).1, format!("\\\"{}a…", "ab".repeat(19)));
    let i = Invalid::new("Dept\tX".into(), "a\nb\t\u{1b}\\\u{202e}".as_bytes(), "bad");
    assert_eq!(
        i.message(12),
        r#"line 12, column "Dept\tX", value "a\nb\t\u{1b}\\\u{202e}": bad"#
    );
    assert_eq!(
        Invalid::new("c".into(), "x".repeat(40).as_bytes(), "r").value,
        "x".repeat(40)
    );
}

#[test]
fn fatal_errors_name_the_file() {
    let (_, msg) = fatal(b"Dept,invoice_guid,Note\nd,i\n", &InputOptions::default());
    assert!(
        msg.contains("department_uuid") && msg.contains(r#""Dept", "invoice_guid", "Note""#),
        "{msg}"
    );
    for empty in [&b""[..], b"\xef\xbb\xbf", b"\n\r\n  \n"] {
        assert!(matches!(
            fatal(empty, &InputOptions::default()).0,
            InputError::Empty { .. }
        ));
    }
    let e = InputReader::open(Path::new("/nonexistent/in.csv"), &InputOptions::default());
    assert!(e.err().unwrap().to_string().contains("/nonexistent/in.csv"));
}

#[test]
fn short_rows_padded_long_rows_invalid_unless_the_extra_cells_are_empty() {
    let rows = read(
        "department_uuid,invoice_guid,send_as_text,note\nd,i\nd,i,no,n,\"extra\",more\nd\nd,j,no,n,,\n",
    );
    assert_eq!(rows[0].1, ["d", "i", "", ""]);
    assert_eq!(rows[3].1, ["d", "j", "no", "n"]);
    assert!(!ok(&rows[3]).flags.send_as_text);
    assert!(ok(&rows[0]).flags.send_as_text);
    let reason = "has 6 cells but the header has 4 (a quote may be missing)";
    assert_eq!(
        (bad(&rows[1]), rows[1].1.len()),
        (("(row)", "extra", reason), 6)
    );
    assert_eq!(bad(&rows[2]), ("invoice_guid", "", "required"));
}

#[test]
fn non_utf8_cells() {
    let (_f, r) = open(
        b"department_uuid,invoice_guid,note\nd,i\xff,x\nd,i,\xfe\xff\n",
        &InputOptions::default(),
    );
    let (mut r, mut raw) = (r.unwrap(), ByteRecord::new());
    let rec = r.next_record(&mut raw).unwrap().unwrap();
    let i = rec.parsed.unwrap_err();
    assert_eq!((&i.column[..], &i.value[..]), ("invoice_guid", "i\u{fffd}"));
    assert!(
        i.reason.starts_with("not valid UTF-8") && i.reason.contains("--encoding windows-1252"),
        "{}",
        i.reason
    );
    assert!(r.next_record(&mut raw).unwrap().unwrap().parsed.is_ok());
    assert_eq!(&raw[2], b"\xfe\xff");
    assert!(r.next_record(&mut raw).unwrap().is_none());
}

#[test]
fn columns_round_trip() {
    for c in Column::ALL {
        assert_eq!(Column::from_key(c.key()), Some(c));
    }
    assert_eq!(Column::from_key("Department UUID"), None);
    assert_eq!(normalize_header(b"Department UUID"), "departmentuuid");
    fn assert_send<T: Send>() {}
    assert_send::<InputReader>();
}
