//! The results CSV: every input row, in input order, with its outcome from the ledger.
//!
//! It is rendered by reading the input again beside the ledger's rows (both ordered by
//! row number), so memory does not depend on the input size, and written to a temporary
//! file in the output's folder that replaces the old results only once it is complete.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::input::{InputOptions, InputReader};
use crate::ledger::{Ledger, Outcome, Status, UNKNOWN_SKIP};

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

/// Rows per final status, as rendered.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    counts: [u64; 8],
    /// Of the skipped rows, those an earlier run may have delivered.
    pub skipped_unknown: u64,
}

impl Counts {
    pub fn add(&mut self, status: Status) {
        if let Some(i) = Status::FINAL.iter().position(|s| *s == status) {
            self.counts[i] += 1;
        }
    }
    pub fn get(&self, status: Status) -> u64 {
        Status::FINAL
            .iter()
            .position(|s| *s == status)
            .map_or(0, |i| self.counts[i])
    }
    pub fn rows(&self) -> u64 {
        self.counts.iter().sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (Status, u64)> + '_ {
        Status::FINAL
            .iter()
            .copied()
            .zip(self.counts.iter().copied())
    }
}

/// Why rows that never finished did not: the stop reason, when the run stopped early.
pub struct Unfinished<'a> {
    pub stop: Option<&'a str>,
}

impl Unfinished<'_> {
    /// Final form of a row the run left pending or in flight.
    fn settle(&self, mut o: Outcome) -> Outcome {
        let why = self.stop.unwrap_or("the run ended early");
        if matches!(o.status, Status::Pending | Status::InFlight) {
            o.completed_at = crate::ledger::now_rfc3339();
        }
        match o.status {
            Status::Pending => {
                o.status = Status::NotSent;
                o.message = format!("not sent: {why}");
            }
            Status::InFlight => {
                o.status = Status::Unknown;
                o.message = format!(
                    "in flight when the run stopped ({why}); the customer may have been notified, so it is not resent"
                );
            }
            _ => {}
        }
        o
    }
}

/// A spreadsheet would execute a cell starting with these; API and tool text is hostile.
fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// Renders the results of the ledger's current run to `out`, replacing it atomically.
pub fn render(
    input: &Path,
    options: &InputOptions,
    ledger: &Ledger,
    out: &Path,
    unfinished: Unfinished<'_>,
) -> Result<Counts> {
    let mut reader = InputReader::open(input, options)?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".invoice-dispatch-")
        .suffix(".csv.tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write results in {}", dir.display()))?;
    let mut counts = Counts::default();
    {
        let mut file = std::io::BufWriter::new(temp.as_file_mut());
        if reader.had_bom() {
            // Excel reads a BOM-less CSV as the local code page; keep what the input had.
            file.write_all(b"\xEF\xBB\xBF")?;
        }
        let mut writer = csv::WriterBuilder::new()
            .delimiter(reader.delimiter())
            .flexible(false)
            .from_writer(file);
        let headers = reader.headers().clone();
        let width = headers.len();
        let collide = headers.iter().any(|h| {
            let h = String::from_utf8_lossy(h);
            COLUMNS.iter().any(|c| h.trim().eq_ignore_ascii_case(c))
        });
        let mut header_row = headers.clone();
        for c in COLUMNS {
            let name = if collide {
                format!("dispatch_{c}")
            } else {
                c.to_string()
            };
            header_row.push_field(name.as_bytes());
        }
        writer.write_byte_record(&header_row)?;

        let mut raw = csv::ByteRecord::new();
        let mut row = csv::ByteRecord::new();
        let mut write = |raw: &csv::ByteRecord, o: &Outcome| -> Result<()> {
            row.clear();
            // Extra cells beyond the header width (an invalid row) would shift the result
            // columns; the row's message says how many there were.
            for cell in raw.iter().take(width) {
                row.push_field(cell);
            }
            for _ in raw.len()..width {
                row.push_field(b"");
            }
            let http = o.http_status.map(|s| s.to_string()).unwrap_or_default();
            let attempts = o.attempts.to_string();
            let opt = |s: &Option<String>| s.clone().unwrap_or_default();
            for cell in [
                o.status.as_str().to_string(),
                http,
                attempts,
                opt(&o.payment_link),
                opt(&o.invoice_link),
                opt(&o.text_sent),
                opt(&o.email_sent),
                o.errors.clone(),
                o.warnings.clone(),
                o.message.clone(),
                o.completed_at.clone(),
            ] {
                row.push_field(neutralise(&cell).as_bytes());
            }
            writer.write_byte_record(&row)?;
            counts.add(o.status);
            if o.status == Status::Skipped && o.message.starts_with(UNKNOWN_SKIP) {
                counts.skipped_unknown += 1;
            }
            Ok(())
        };

        // Merge: the ledger's rows by seq against the input's records by seq. A record
        // the ledger never saw (the run stopped before reading it) is `not_sent`.
        let mut next_input = |raw: &mut csv::ByteRecord| reader.next_record(raw);
        let changed = || {
            anyhow::anyhow!(
                "{} changed during the run: its rows no longer match what was sent; the outcomes are in the ledger, rerun the same command on the original file to write the results",
                input.display()
            )
        };
        ledger.for_each_result(|seq, key, outcome| {
            loop {
                let record = next_input(&mut raw)?.ok_or_else(changed)?;
                if record.seq == seq {
                    // Outcomes are matched to rows by position; a file saved over during the
                    // run would pin them on the wrong customers.
                    let same = match (&record.parsed, &key) {
                        (Ok(req), Some((dept, invoice))) => {
                            req.department.as_str() == dept && req.invoice.as_str() == invoice
                        }
                        (Err(_), None) => true,
                        _ => false,
                    };
                    if !same {
                        return Err(changed());
                    }
                    return write(&raw, &unfinished.settle(outcome));
                }
                let missing = unfinished.settle(Outcome::plain(Status::Pending, ""));
                write(&raw, &missing)?;
            }
        })?;
        while next_input(&mut raw)?.is_some() {
            let missing = unfinished.settle(Outcome::plain(Status::Pending, ""));
            write(&raw, &missing)?;
        }
        writer.flush()?;
    }
    temp.as_file().sync_all()?;
    temp.persist(out)
        .with_context(|| format!("cannot replace {}", out.display()))?;
    Ok(counts)
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
}
