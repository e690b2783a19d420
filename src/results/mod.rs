//! The results CSV: every input row, in input order, with its outcome from the ledger
//! (SPEC section 4); and `export`, the same columns from the ledger alone.
//!
//! Results are rendered by reading the input again beside the ledger's rows (both ordered
//! by row number), so memory does not depend on the input size, and written to a temporary
//! file in the output's folder that replaces the old results only once it is complete.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use csv::ByteRecord;

use crate::domain::{rfc3339, Counts, Outcome, RunId, SkipKind};
use crate::evidence::{clip, AttentionRow};
use crate::files::replace_atomically;
use crate::input::{InputOptions, InputReader, Record};
use crate::ledger::{ResultRow, RunRecord, Store};

pub mod workbook;

pub const COLUMNS: [&str; 11] = [
    "status",
    "http_status",
    "attempts",
    "payment_link",
    "invoice_link",
    "text_sent",
    "email_sent",
    "errors",
    "warnings",
    "message",
    "completed_at",
];

/// The rows that need a person that the report lists at most.
pub const ATTENTION_KEPT: usize = 1000;

/// What rendering the results found.
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    pub counts: Counts,
    /// The first [`ATTENTION_KEPT`] rows that need a person, in input order.
    pub attention: Vec<AttentionRow>,
    /// All rows that need a person.
    pub attention_total: u64,
}

impl Rendered {
    fn add(&mut self, record: &Record, raw: &ByteRecord, o: &Outcome, columns: (usize, usize)) {
        self.counts.add(o.status, o.skip);
        let needs_person = o.status.needs_person() || o.skip == Some(SkipKind::MaybeDelivered);
        if !needs_person {
            return;
        }
        self.attention_total += 1;
        if self.attention.len() < ATTENTION_KEPT {
            let cell = |i: usize| clip(&String::from_utf8_lossy(raw.get(i).unwrap_or(b"")));
            self.attention.push(AttentionRow {
                line: record.line,
                department: cell(columns.0),
                invoice: cell(columns.1),
                status: o.status,
                message: clip(&o.message),
                errors: clip(&o.errors),
            });
        }
    }
}

/// A spreadsheet would execute a cell starting with these; API and tool text is hostile.
fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// The result columns of one outcome, neutralised, in [`COLUMNS`] order.
fn cells(o: &Outcome) -> [String; 11] {
    let opt = |s: &Option<String>| neutralise(s.as_deref().unwrap_or("")).into_owned();
    [
        o.status.as_str().to_string(),
        o.http_status.map(|s| s.to_string()).unwrap_or_default(),
        o.attempts.to_string(),
        opt(&o.payment_link),
        opt(&o.invoice_link),
        opt(&o.text_sent),
        opt(&o.email_sent),
        neutralise(&o.errors).into_owned(),
        neutralise(&o.warnings).into_owned(),
        neutralise(&o.message).into_owned(),
        rfc3339(o.completed_at),
    ]
}

/// Where a run's rows come from: the ledger (`Store::results`), or, when the ledger
/// failed and cannot be read, what the run kept itself. Calls its argument for each row,
/// in row order.
pub type Rows<'a> = &'a mut dyn FnMut(&mut dyn FnMut(ResultRow) -> Result<()>) -> Result<()>;

/// The Summary sheet of a results workbook, from the run's counts: (label, value) lines.
pub type About<'a> = &'a dyn Fn(&Counts) -> Vec<(String, String)>;

/// Renders the run's `rows` beside the input to `out`, replacing it atomically: a CSV, or a
/// workbook when `out` ends in `.xlsx` (its Summary sheet from `about`). `missing` is what
/// a row that `rows` does not have says (the run stopped before reading it).
pub fn render(
    input: &Path,
    options: &InputOptions,
    rows: Rows,
    out: &Path,
    missing: &Outcome,
    about: About,
) -> Result<Rendered> {
    let mut reader = InputReader::open(input, options)?;
    let mut rendered = Rendered::default();
    let header = header_row(reader.headers());
    if workbook::wanted(out) {
        let inputs = reader.headers().len();
        let mut sink = workbook::Sink::new(&header, inputs, reader.number_columns())?;
        merge(input, &mut reader, &mut sink, &mut rendered, rows, missing)?;
        let summary = about(&rendered.counts);
        replace_atomically(out, "the results", 0o600, |file| {
            sink.finish(&summary, file)
        })?;
        return Ok(rendered);
    }
    replace_atomically(out, "the results", 0o600, |file| {
        if reader.had_bom() {
            // Excel reads a BOM-less CSV as the local code page; keep what the input had.
            file.write_all(b"\xEF\xBB\xBF")?;
        }
        let mut sink = CsvSink {
            writer: csv::WriterBuilder::new()
                .delimiter(reader.delimiter())
                .from_writer(file),
            row: ByteRecord::new(),
        };
        sink.writer.write_byte_record(&header)?;
        merge(input, &mut reader, &mut sink, &mut rendered, rows, missing)?;
        sink.writer.flush()?;
        Ok(())
    })?;
    Ok(rendered)
}

/// Every input record, with its row from `rows` or `missing`, into `sink`.
fn merge(
    input: &Path,
    reader: &mut InputReader,
    sink: &mut dyn Sink,
    rendered: &mut Rendered,
    rows: Rows,
    missing: &Outcome,
) -> Result<()> {
    let mut merge = Merge {
        input,
        reader,
        sink,
        rendered,
        raw: ByteRecord::new(),
        cells: ByteRecord::new(),
    };
    rows(&mut |r| merge.ledger_row(r, missing))?;
    merge.rest(missing)
}

/// Where rendered rows go: a CSV, or the Results sheet of a workbook.
trait Sink {
    /// One row: the input's cells (as wide as its header) and the row's outcome.
    fn row(&mut self, input: &ByteRecord, outcome: &Outcome) -> Result<()>;
}

struct CsvSink<W: Write> {
    writer: csv::Writer<W>,
    row: ByteRecord,
}

impl<W: Write> Sink for CsvSink<W> {
    fn row(&mut self, input: &ByteRecord, o: &Outcome) -> Result<()> {
        self.row.clone_from(input);
        for cell in cells(o) {
            self.row.push_field(cell.as_bytes());
        }
        self.writer.write_byte_record(&self.row)?;
        Ok(())
    }
}

/// The input's header with the result columns after it; prefixed `dispatch_` when an input
/// header already has one of their names.
fn header_row(headers: &ByteRecord) -> ByteRecord {
    let collide = headers.iter().any(|h| {
        let h = String::from_utf8_lossy(h);
        COLUMNS.iter().any(|c| h.trim().eq_ignore_ascii_case(c))
    });
    let mut row = headers.clone();
    for c in COLUMNS {
        let name = if collide {
            format!("dispatch_{c}")
        } else {
            c.to_string()
        };
        row.push_field(name.as_bytes());
    }
    row
}

/// The input's records merged with the ledger's rows, both by row number.
struct Merge<'a> {
    input: &'a Path,
    reader: &'a mut InputReader,
    sink: &'a mut dyn Sink,
    rendered: &'a mut Rendered,
    raw: ByteRecord,
    cells: ByteRecord,
}

impl Merge<'_> {
    fn changed(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "{} changed during the run: its rows no longer match what was sent; the outcomes are in the ledger, rerun the same command on the original file to write the results",
            self.input.display()
        )
    }

    /// Writes input records up to the ledger's row `r`, then `r` itself. A record before it
    /// was never seen by the ledger (the run stopped before reading it).
    fn ledger_row(&mut self, r: ResultRow, missing: &Outcome) -> Result<()> {
        loop {
            let Some(record) = self.reader.next_record(&mut self.raw)? else {
                return Err(self.changed());
            };
            if record.seq < r.seq {
                self.write(&record, missing)?;
                continue;
            }
            // Outcomes are matched to rows by position; a file saved over during the run
            // would pin them on the wrong customers.
            let same = record.seq == r.seq
                && match (&record.parsed, &r.key) {
                    (Ok(req), Some((dept, invoice))) => {
                        req.department.as_str() == dept && req.invoice.as_str() == invoice
                    }
                    (Err(_), None) => true,
                    // Kept by the run, not read from the ledger (`ResultRow::kept`).
                    (_, None) => r.kept,
                    _ => false,
                };
            if !same {
                return Err(self.changed());
            }
            return self.write(&record, &r.outcome);
        }
    }

    fn rest(&mut self, unsent: &Outcome) -> Result<()> {
        while let Some(record) = self.reader.next_record(&mut self.raw)? {
            self.write(&record, unsent)?;
        }
        Ok(())
    }

    fn write(&mut self, record: &Record, o: &Outcome) -> Result<()> {
        let width = self.reader.headers().len();
        self.cells.clear();
        // Extra cells beyond the header width (an invalid row) would shift the result
        // columns; the row's message says how many there were.
        for cell in self.raw.iter().take(width) {
            self.cells.push_field(cell);
        }
        for _ in self.raw.len()..width {
            self.cells.push_field(b"");
        }
        self.sink.row(&self.cells, o)?;
        let columns = self.reader.key_columns();
        self.rendered.add(record, &self.raw, o, columns);
        Ok(())
    }
}

/// `export`: the run's rows as a results-shaped CSV from the ledger alone (no input
/// columns but the line, department and invoice). Returns the number of rows.
pub fn export(store: &mut dyn Store, run: RunId, out: &mut dyn Write) -> Result<u64> {
    let mut writer = csv::Writer::from_writer(out);
    let mut header = vec!["line", "department_uuid", "invoice_guid"];
    header.extend(COLUMNS);
    writer.write_record(&header)?;
    let mut n = 0;
    store.results(run, &mut |r| {
        let (dept, invoice) = r.key.unwrap_or_default();
        let mut row = vec![
            r.line.to_string(),
            neutralise(&dept).into_owned(),
            neutralise(&invoice).into_owned(),
        ];
        row.extend(cells(&r.outcome));
        writer.write_record(&row)?;
        n += 1;
        Ok(())
    })?;
    writer.flush()?;
    Ok(n)
}

/// `export --out FILE.xlsx`: the same rows as [`export`], as a workbook with the run's
/// record on its Summary sheet, replaced atomically. Returns the number of rows.
pub fn export_workbook(store: &mut dyn Store, record: &RunRecord, out: &Path) -> Result<u64> {
    let mut header = ByteRecord::from(vec!["line", "department_uuid", "invoice_guid"]);
    for c in COLUMNS {
        header.push_field(c.as_bytes());
    }
    let mut sink = workbook::Sink::new(&header, 3, Vec::new())?;
    let mut n = 0;
    let run = RunId::parse(&record.id).unwrap_or(RunId(0));
    store.results(run, &mut |r| {
        let (dept, invoice) = r.key.unwrap_or_default();
        let line = r.line.to_string();
        let cells = ByteRecord::from(vec![line.as_str(), dept.as_str(), invoice.as_str()]);
        n += 1;
        Sink::row(&mut sink, &cells, &r.outcome)
    })?;
    let mut summary = vec![
        ("run".to_string(), record.id.clone()),
        ("target".into(), record.target.clone()),
        ("input".into(), record.input.clone()),
        ("started".into(), rfc3339(record.started)),
        ("state".into(), record.state.clone()),
        (
            "exit code".into(),
            record.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        ),
    ];
    for status in crate::domain::Status::ALL {
        summary.push((
            status.as_str().into(),
            record.counts.get(status).to_string(),
        ));
    }
    summary.push(("version".into(), env!("CARGO_PKG_VERSION").into()));
    replace_atomically(out, "the export", 0o600, |file| sink.finish(&summary, file))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_starts_are_neutralised() {
        for s in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(neutralise(s), format!("'{s}"));
        }
        for s in ["https://pay", "", "1", "sent"] {
            assert_eq!(neutralise(s), s);
        }
    }

    #[test]
    fn result_columns_get_a_prefix_when_the_input_has_one_of_their_names() {
        let plain = header_row(&ByteRecord::from(vec!["department_uuid", "note"]));
        assert_eq!(&plain[2], b"status");
        let clash = header_row(&ByteRecord::from(vec!["department_uuid", " Status "]));
        assert_eq!(&clash[2], b"dispatch_status");
    }
}
