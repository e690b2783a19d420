//! The results as a workbook (SPEC section 14), for the person who works in a spreadsheet.
//! Sheet `Results`: the input's cells and the result columns, the header bold, frozen and
//! filterable, each status filled with the report's colour, the links clickable when they
//! are http(s), `completed_at` a real date-time. Every string is a string cell, never a
//! formula, so no cell needs the CSV's leading `'`. Sheet `Summary`: the run in a few lines.
//!
//! Rows are written as they are rendered, in constant-memory mode (one row in memory, the
//! rest in a temporary file), and the workbook is assembled into the output atomically.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use csv::ByteRecord;
use rust_xlsxwriter::{Color, ExcelDateTime, Format, Url, Workbook, Worksheet};

use crate::domain::{Outcome, Status};

/// A worksheet's rows, the header's included.
const MAX_ROWS: u32 = 1_048_576;
/// A cell's characters at most.
const MAX_CHARS: usize = 32_767;

/// Whether `out` names a workbook.
pub fn wanted(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("xlsx"))
}

/// The Results sheet being written.
pub struct Sink {
    workbook: Workbook,
    /// The next row to write.
    row: u32,
    /// Input columns before the result columns.
    inputs: u16,
    bold: Format,
    date: Format,
    /// By status, in `Status::ALL` order.
    statuses: Vec<Format>,
    /// Input columns whose numbers are written as numbers (a workbook's, but its IDs).
    numbers: Vec<bool>,
}

impl Sink {
    /// `numbers`: the input columns whose numbers are written as numbers, as the input
    /// had them (a workbook's; empty for a CSV's, whose cells are all text).
    pub fn new(header: &ByteRecord, inputs: usize, numbers: Vec<bool>) -> Result<Sink> {
        let mut workbook = Workbook::new();
        let bold = Format::new().set_bold();
        let sheet = workbook.add_worksheet_with_constant_memory()?;
        sheet.set_name("Results")?;
        for (col, name) in header.iter().enumerate() {
            let name = String::from_utf8_lossy(name);
            sheet.write_string_with_format(0, col as u16, clipped(&name), &bold)?;
        }
        sheet.set_freeze_panes(1, 0)?;
        let statuses = Status::ALL
            .iter()
            .map(|s| {
                Format::new()
                    .set_background_color(colour(*s))
                    .set_font_color(Color::White)
            })
            .collect();
        Ok(Sink {
            workbook,
            row: 1,
            inputs: inputs as u16,
            bold,
            date: Format::new().set_num_format("yyyy-mm-dd hh:mm:ss"),
            statuses,
            numbers,
        })
    }

    /// Adds the filter and the Summary sheet, and writes the workbook to `out`.
    pub fn finish(
        mut self,
        summary: &[(String, String)],
        out: &mut (dyn Write + Send),
    ) -> Result<()> {
        let last_col = self.inputs + super::COLUMNS.len() as u16 - 1;
        let sheet = self.workbook.worksheet_from_index(0)?;
        sheet.autofilter(0, 0, self.row.saturating_sub(1), last_col)?;
        let about = self.workbook.add_worksheet();
        about.set_name("Summary")?;
        about.set_column_width(0, 24)?;
        about.set_column_width(1, 60)?;
        for (row, (label, value)) in summary.iter().enumerate() {
            about.write_string_with_format(row as u32, 0, clipped(label), &self.bold)?;
            about.write_string(row as u32, 1, clipped(value))?;
        }
        self.workbook.save_to_writer(out)?;
        Ok(())
    }
}

impl super::Sink for Sink {
    fn row(&mut self, input: &ByteRecord, o: &Outcome) -> Result<()> {
        if self.row >= MAX_ROWS {
            bail!("the results have more rows than a worksheet holds ({MAX_ROWS}): write them as CSV (--out FILE.csv)");
        }
        let (row, inputs) = (self.row, self.inputs);
        let status = &self.statuses[Status::ALL.iter().position(|s| *s == o.status).unwrap_or(0)];
        let date = &self.date;
        let sheet = self.workbook.worksheet_from_index(0)?;
        for (col, cell) in input.iter().enumerate() {
            let text = String::from_utf8_lossy(cell);
            let number = self.numbers.get(col).copied().unwrap_or(false);
            let parsed = number.then(|| text.parse::<f64>().ok()).flatten();
            match parsed.filter(|n| n.is_finite()) {
                Some(n) => sheet.write_number(row, col as u16, n)?,
                None => sheet.write_string(row, col as u16, clipped(&text))?,
            };
        }
        let at = |i: usize| inputs + i as u16;
        sheet.write_string_with_format(row, at(0), o.status.as_str(), status)?;
        if let Some(http) = o.http_status {
            sheet.write_number(row, at(1), f64::from(http))?;
        }
        sheet.write_number(row, at(2), f64::from(o.attempts))?;
        link(sheet, row, at(3), o.payment_link.as_deref())?;
        link(sheet, row, at(4), o.invoice_link.as_deref())?;
        let texts = [
            o.text_sent.as_deref().unwrap_or(""),
            o.email_sent.as_deref().unwrap_or(""),
            &o.errors,
            &o.warnings,
            &o.message,
        ];
        for (i, text) in texts.into_iter().enumerate() {
            if !text.is_empty() {
                sheet.write_string(row, at(5 + i), clipped(text))?;
            }
        }
        match ExcelDateTime::from_timestamp(o.completed_at.timestamp()) {
            Ok(t) => sheet.write_datetime_with_format(row, at(10), &t, date)?,
            Err(_) => sheet.write_string(row, at(10), crate::domain::rfc3339(o.completed_at))?,
        };
        self.row += 1;
        Ok(())
    }
}

/// A link cell when `text` is an http(s) URL the format can hold; plain text otherwise.
fn link(sheet: &mut Worksheet, row: u32, col: u16, text: Option<&str>) -> Result<()> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    let web = text.starts_with("https://") || text.starts_with("http://");
    if web && sheet.write_url(row, col, Url::new(text)).is_ok() {
        return Ok(());
    }
    sheet.write_string(row, col, clipped(text))?;
    Ok(())
}

/// At most the characters a cell holds.
fn clipped(text: &str) -> &str {
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// The report's colour for a status.
fn colour(status: Status) -> Color {
    let hex = crate::evidence::report::colour(status).trim_start_matches('#');
    Color::RGB(u32::from_str_radix(hex, 16).unwrap_or(0x546e7a))
}
