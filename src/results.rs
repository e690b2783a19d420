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
use crate::ledger::{ResultRow, Store};

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

/// Renders the run's `rows` beside the input to `out`, replacing it atomically. `missing`
/// is what a row that `rows` does not have says (the run stopped before reading it).
pub fn render(
    input: &Path,
    options: &InputOptions,
    rows: Rows,
    out: &Path,
    missing: &Outcome,
) -> Result<Rendered> {
    let mut reader = InputReader::open(input, options)?;
    let mut rendered = Rendered::default();
    replace_atomically(out, "the results", 0o600, |file| {
        if reader.had_bom() {
            // Excel reads a BOM-less CSV as the local code page; keep what the input had.
            file.write_all(b"\xEF\xBB\xBF")?;
        }
        let mut writer = csv::WriterBuilder::new()
            .delimiter(reader.delimiter())
            .from_writer(file);
        let header = header_row(reader.headers());
        writer.write_byte_record(&header)?;
        let mut merge = Merge {
            input,
            reader: &mut reader,
            writer: &mut writer,
            rendered: &mut rendered,
            raw: ByteRecord::new(),
            row: ByteRecord::new(),
        };
        rows(&mut |r| merge.ledger_row(r, missing))?;
        merge.rest(missing)?;
        writer.flush()?;
        Ok(())
    })?;
    Ok(rendered)
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
struct Merge<'a, W: Write> {
    input: &'a Path,
    reader: &'a mut InputReader,
    writer: &'a mut csv::Writer<W>,
    rendered: &'a mut Rendered,
    raw: ByteRecord,
    row: ByteRecord,
}

impl<W: Write> Merge<'_, W> {
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
                    (_, None) => r.line == 0,
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
        self.row.clear();
        // Extra cells beyond the header width (an invalid row) would shift the result
        // columns; the row's message says how many there were.
        for cell in self.raw.iter().take(width) {
            self.row.push_field(cell);
        }
        for _ in self.raw.len()..width {
            self.row.push_field(b"");
        }
        for cell in cells(o) {
            self.row.push_field(cell.as_bytes());
        }
        self.writer.write_byte_record(&self.row)?;
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
