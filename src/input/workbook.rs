//! Workbooks as input (SPEC section 14): `.xlsx`, `.xlsm`, `.xls` and `.ods`, recognised by
//! their content, never by their name, and refused before anything is read when hostile.
//!
//! A sheet is turned into the CSV a person would get by exporting it: each cell becomes
//! the text they see (a whole number without `.0`, a date as ISO 8601, a formula as its
//! saved value), written to a private temporary file that the CSV reader then reads, so
//! one set of rules (headers, columns, validation, duplicates) serves both. What a CSV
//! cannot say travels beside it in [`Converted`]: each data row's number in the sheet (for
//! `C7` in messages), and the cells that hold an error or a formula without a value.
//!
//! `.xlsx` is streamed cell by cell; `.ods` and `.xls` have no streaming reader in calamine
//! and are read whole, which the size limits below keep bounded.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use calamine::{Data, Reader};
use csv::ByteRecord;

use super::{Invalid, Request};

/// More unpacked bytes than this is a zip bomb, whatever its parts say.
const MAX_UNPACKED: u64 = 1 << 30;
/// A part that unpacks to more than this many times its packed size is refused...
const MAX_RATIO: u64 = 100;
/// ...once it unpacks to more than this: small parts of repeated XML compress that well.
const RATIO_FROM: u64 = 1 << 20;
/// What a formula cell without a saved value says.
const NO_VALUE: &str = "the cell holds a formula without a saved value: open the file in the spreadsheet and save it again";
/// A worksheet's rows.
pub const MAX_ROWS: u32 = 1_048_576;

/// What a file is, by its first bytes and, for a zip, its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Csv,
    Xlsx,
    Ods,
    Xls,
}

/// Recognises the file by content. A workbook that cannot be read safely, or a file that
/// is neither text nor a workbook, is an error saying what it looks like.
pub fn kind(path: &Path) -> Result<Kind, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut head = [0u8; 8192];
    let n = read_up_to(&mut file, &mut head).map_err(|e| e.to_string())?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return zip_kind(file);
    }
    if head.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        if contains_utf16(&mut file, "EncryptedPackage").map_err(|e| e.to_string())? {
            return Err("it is an encrypted (password-protected) workbook: save it without a password, or export it as CSV UTF-8".into());
        }
        return Ok(Kind::Xls);
    }
    let utf16 = head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]);
    if !utf16 && head.contains(&0) {
        return Err("it is neither a CSV (text) nor a workbook (.xlsx, .xlsm, .xls, .ods): it holds binary data".into());
    }
    Ok(Kind::Csv)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// An `.xlsx` or `.ods` by its parts, once the zip's sizes are known to be safe.
fn zip_kind(file: File) -> Result<Kind, String> {
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        format!("it is a zip archive (as a workbook is) that is truncated or damaged ({e}); save it again, or export it as CSV UTF-8")
    })?;
    let mut total = 0u64;
    for i in 0..zip.len() {
        let part = zip
            .by_index_raw(i)
            .map_err(|e| format!("a part of the workbook cannot be read ({e})"))?;
        if part.encrypted() {
            return Err(
                "it is an encrypted (password-protected) workbook: save it without a password"
                    .into(),
            );
        }
        let (packed, unpacked) = (part.compressed_size(), part.size());
        total = total.saturating_add(unpacked);
        if unpacked > RATIO_FROM && unpacked > packed.saturating_mul(MAX_RATIO) {
            return Err(format!(
                "its part {} unpacks to {unpacked} bytes from {packed}, more than {MAX_RATIO} times its size: a zip bomb, refused",
                part.name().unwrap_or_default()
            ));
        }
    }
    if total > MAX_UNPACKED {
        return Err(format!(
            "it unpacks to {total} bytes, more than 1 GiB: a zip bomb, refused"
        ));
    }
    if let Ok(mut mimetype) = zip.by_name("mimetype") {
        let mut text = String::new();
        let _ = mimetype.by_ref().take(200).read_to_string(&mut text);
        if text.trim() == "application/vnd.oasis.opendocument.spreadsheet" {
            return Ok(Kind::Ods);
        }
    }
    if zip.by_name("[Content_Types].xml").is_ok() && zip.by_name("xl/workbook.xml").is_ok() {
        return Ok(Kind::Xlsx);
    }
    Err("it is a zip archive, but not a workbook (.xlsx, .xlsm or .ods)".into())
}

/// Whether the UTF-16 name appears anywhere in the file (an OLE directory entry).
/// Read in chunks that overlap by the name's length, so a workbook of any size costs a
/// chunk of memory.
fn contains_utf16(file: &mut File, name: &str) -> io::Result<bool> {
    let needle: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    file.seek(SeekFrom::Start(0))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut kept = 0;
    loop {
        let n = read_up_to(file, &mut chunk[kept..])?;
        let filled = kept + n;
        if chunk[..filled].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        if n == 0 || filled < chunk.len() {
            return Ok(false);
        }
        kept = needle.len() - 1;
        chunk.copy_within(filled - kept..filled, 0);
    }
}

/// Which sheet to read: `--sheet NAME|N` (1-based), or the first.
fn pick(names: &[String], wanted: Option<&str>) -> Result<String, String> {
    let listed = || {
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(wanted) = wanted else {
        return names
            .first()
            .cloned()
            .ok_or_else(|| "it has no sheet".to_string());
    };
    if let Some(name) = names.iter().find(|n| n.as_str() == wanted) {
        return Ok(name.clone());
    }
    match wanted.parse::<usize>() {
        Ok(n) if (1..=names.len()).contains(&n) => Ok(names[n - 1].clone()),
        _ => Err(format!(
            "it has no sheet {wanted:?}; its sheets: {}",
            listed()
        )),
    }
}

/// A sheet turned into CSV text, and what the text cannot say.
pub struct Converted {
    pub csv: tempfile::NamedTempFile,
    pub sheet: String,
    /// The sheet's row number (1-based) of each CSV record, the header's first.
    pub rows: Vec<u32>,
    /// (record, column) -> what is wrong with the cell: an error, or a formula without a
    /// saved value.
    pub problems: HashMap<(usize, usize), String>,
    /// Columns in which a cell held a number (IDs read from numbers lose leading zeros).
    pub numeric: Vec<bool>,
}

impl Converted {
    /// The text to read, and what it cannot say.
    pub fn split(self) -> (tempfile::NamedTempFile, Sheet) {
        let sheet = Sheet {
            name: self.sheet,
            rows: self.rows,
            problems: self.problems,
            numeric: self.numeric,
        };
        (self.csv, sheet)
    }
}

/// What the text of a converted sheet cannot say: where each record is in the sheet, and
/// which cells a request must not use.
pub struct Sheet {
    pub name: String,
    rows: Vec<u32>,
    problems: HashMap<(usize, usize), String>,
    pub numeric: Vec<bool>,
}

impl Sheet {
    /// Data record `seq` as the sheet has it: its row number for the line, an error cell
    /// or a formula without a value in a column the request uses made invalid, and the
    /// cell of any problem named the spreadsheet way.
    pub(super) fn record(
        &self,
        seq: u64,
        parsed: Result<Request, Invalid>,
        raw: &ByteRecord,
        (index, headers): (&[Option<usize>; 7], &ByteRecord),
    ) -> (u64, Result<Request, Invalid>) {
        let record = seq as usize + 1;
        let row = self.rows.get(record).copied().unwrap_or(0);
        let unusable = index.iter().flatten().find_map(|&i| {
            let problem = self.problems.get(&(record, i))?;
            let column = String::from_utf8_lossy(headers.get(i).unwrap_or(b"")).into_owned();
            Some(Invalid::new(column, raw.get(i).unwrap_or(b""), problem.clone()).at(i))
        });
        // The cell's own problem is the cause of any other the row has.
        let mut parsed = match unusable {
            Some(invalid) => Err(invalid),
            None => parsed,
        };
        if let Err(invalid) = &mut parsed {
            invalid.cell = invalid.index.map(|i| format!("{}{row}", column_letters(i)));
        }
        (u64::from(row), parsed)
    }
}

/// A cell of the sheet as its row collects it.
struct Cell {
    col: usize,
    text: String,
    problem: Option<String>,
    number: bool,
}

/// Converts the chosen sheet of a workbook of `kind`.
pub fn convert(path: &Path, kind: Kind, sheet: Option<&str>) -> Result<Converted, String> {
    let mut out = Out::new().map_err(|e| e.to_string())?;
    let name = match kind {
        Kind::Xlsx => {
            let mut book: calamine::Xlsx<_> =
                calamine::open_workbook(path).map_err(|e| damaged(&e))?;
            let name = pick(&book.sheet_names(), sheet)?;
            let mut cells = book
                .worksheet_cells_reader(&name)
                .map_err(|e| damaged(&e))?;
            while let Some(c) = cells.next_cell_with_formula().map_err(|e| damaged(&e))? {
                let (row, col) = c.pos;
                let formula = c.formula.is_some();
                out.cell(row, of_data(col as usize, &Data::from(c.value), formula))?;
            }
            name
        }
        Kind::Ods | Kind::Xls => {
            let mut book = calamine::open_workbook_auto(path).map_err(|e| damaged(&e))?;
            let name = pick(&book.sheet_names(), sheet)?;
            let values = book.worksheet_range(&name).map_err(|e| damaged(&e))?;
            let formulas = book.worksheet_formula(&name).unwrap_or_default();
            for (row, col, value) in values.used_cells() {
                let (r, c) = at(&values, row, col);
                let formula = formulas.get_value((r, c)).is_some_and(|f| !f.is_empty());
                out.cell(r, of_data(c as usize, value, formula))?;
            }
            // Formulas whose cells have no value at all are not among the used cells.
            for (row, col, f) in formulas.used_cells() {
                let (r, c) = at(&formulas, row, col);
                if !f.is_empty() && values.get_value((r, c)).is_none_or(|v| *v == Data::Empty) {
                    out.late(r, c as usize);
                }
            }
            name
        }
        Kind::Csv => unreachable!("a CSV is not converted"),
    };
    out.finish(name)
}

/// A used cell's place in the sheet: used cells are numbered from the range's start.
fn at<T: calamine::CellType>(range: &calamine::Range<T>, row: usize, col: usize) -> (u32, u32) {
    let (r0, c0) = range.start().unwrap_or((0, 0));
    (r0 + row as u32, c0 + col as u32)
}

fn damaged(e: &dyn std::fmt::Display) -> String {
    format!("the workbook cannot be read ({e}); save it again, or export it as CSV UTF-8")
}

/// The text a person sees in the cell's CSV export (SPEC section 14).
fn of_data(col: usize, value: &Data, formula: bool) -> Cell {
    let (text, number) = match value {
        Data::String(s) => (s.clone(), false),
        Data::Int(i) => (i.to_string(), true),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e17 => (format!("{}", *f as i64), true),
        Data::Float(f) => (format!("{f}"), true),
        Data::Bool(b) => (b.to_string(), false),
        Data::DateTime(d) => (iso(d), false),
        Data::DateTimeIso(s) | Data::DurationIso(s) => (s.clone(), false),
        Data::Error(e) => (e.to_string(), false),
        Data::Empty => (String::new(), false),
    };
    let problem = match value {
        Data::Error(e) => Some(format!("the cell holds the error {e}")),
        Data::Empty if formula => Some(NO_VALUE.into()),
        _ => None,
    };
    Cell {
        col,
        text,
        problem,
        number,
    }
}

/// A date, a time or both, as ISO 8601.
fn iso(d: &calamine::ExcelDateTime) -> String {
    match d.as_datetime() {
        Some(t) if t.time() == chrono::NaiveTime::MIN => t.format("%Y-%m-%d").to_string(),
        Some(t) if d.is_duration() => t.format("%H:%M:%S").to_string(),
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S").to_string(),
        None => d.as_f64().to_string(),
    }
}

/// The CSV being written, one sheet row at a time (cells arrive in row order).
struct Out {
    writer: csv::Writer<tempfile::NamedTempFile>,
    row: Option<u32>,
    cells: Vec<Cell>,
    rows: Vec<u32>,
    problems: HashMap<(usize, usize), String>,
    numeric: Vec<bool>,
}

impl Out {
    fn new() -> io::Result<Out> {
        Ok(Out {
            writer: csv::WriterBuilder::new()
                .flexible(true)
                .from_writer(tempfile::NamedTempFile::new()?),
            row: None,
            cells: Vec::new(),
            rows: Vec::new(),
            problems: HashMap::new(),
            numeric: Vec::new(),
        })
    }

    fn cell(&mut self, row: u32, cell: Cell) -> Result<(), String> {
        if row >= MAX_ROWS {
            return Err(format!(
                "its sheet has more than {MAX_ROWS} rows, more than a spreadsheet holds: refused"
            ));
        }
        if self.row != Some(row) {
            self.flush()?;
            self.row = Some(row);
        }
        if !cell.text.is_empty() || cell.problem.is_some() {
            self.cells.push(cell);
        }
        Ok(())
    }

    /// A formula cell without a value, found after its row was written.
    fn late(&mut self, row: u32, col: usize) {
        // Rows are written in order, so their numbers are sorted.
        if let Ok(record) = self.rows.binary_search(&(row + 1)) {
            self.problems
                .entry((record, col))
                .or_insert_with(|| NO_VALUE.into());
        }
    }

    /// Writes the row collected, unless it is blank (blank rows are not rows).
    fn flush(&mut self) -> Result<(), String> {
        let blank = self
            .cells
            .iter()
            .all(|c| c.problem.is_none() && c.text.trim().is_empty());
        let (Some(row), false) = (self.row, blank) else {
            self.cells.clear();
            return Ok(());
        };
        let width = self.cells.iter().map(|c| c.col + 1).max().unwrap_or(0);
        let mut record = vec![String::new(); width];
        let index = self.rows.len();
        for cell in self.cells.drain(..) {
            if let Some(problem) = cell.problem {
                self.problems.insert((index, cell.col), problem);
            }
            if self.numeric.len() <= cell.col {
                self.numeric.resize(cell.col + 1, false);
            }
            self.numeric[cell.col] |= cell.number && index > 0;
            record[cell.col] = cell.text;
        }
        self.writer
            .write_record(&record)
            .map_err(|e| e.to_string())?;
        self.rows.push(row + 1);
        Ok(())
    }

    fn finish(mut self, sheet: String) -> Result<Converted, String> {
        self.flush()?;
        let mut csv = self.writer.into_inner().map_err(|e| e.to_string())?;
        csv.flush().map_err(|e| e.to_string())?;
        Ok(Converted {
            csv,
            sheet,
            rows: self.rows,
            problems: self.problems,
            numeric: self.numeric,
        })
    }
}

/// A column's letters, the spreadsheet way: 0 -> A, 25 -> Z, 26 -> AA.
pub fn column_letters(mut col: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'A' + (col % 26) as u8);
        if col < 26 {
            break;
        }
        col = col / 26 - 1;
    }
    letters.reverse();
    String::from_utf8(letters).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_named_the_spreadsheet_way() {
        let names: Vec<String> = [0, 2, 25, 26, 27, 51, 52, 701, 702]
            .map(column_letters)
            .to_vec();
        assert_eq!(names, ["A", "C", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA"]);
    }

    #[test]
    fn cells_read_as_their_csv_export() {
        let text = |d: Data| of_data(0, &d, false).text;
        assert_eq!(text(Data::Float(104200.0)), "104200");
        assert_eq!(text(Data::Float(0.1)), "0.1");
        assert_eq!(text(Data::Float(475.09)), "475.09");
        assert_eq!(text(Data::Int(-3)), "-3");
        assert_eq!(text(Data::Bool(true)), "true");
        assert!(of_data(0, &Data::Error(calamine::CellErrorType::NA), false)
            .problem
            .is_some());
        assert!(of_data(0, &Data::Empty, true).problem.is_some());
        assert!(of_data(0, &Data::Empty, false).problem.is_none());
    }
}
