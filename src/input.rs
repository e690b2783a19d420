//! Streaming reader for the input CSV (SPEC section 3): one reused `ByteRecord`, one parse per row.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use csv::ByteRecord;

/// The seven known columns, in the order row problems are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    DepartmentUuid,
    InvoiceGuid,
    SendAsText,
    SendAsEmail,
    AttachInvoice,
    EsignRequired,
    SendWithoutKpay,
}

impl Column {
    pub const ALL: [Column; 7] = [
        Column::DepartmentUuid,
        Column::InvoiceGuid,
        Column::SendAsText,
        Column::SendAsEmail,
        Column::AttachInvoice,
        Column::EsignRequired,
        Column::SendWithoutKpay,
    ];

    /// The config-file spelling.
    pub fn key(self) -> &'static str {
        match self {
            Column::DepartmentUuid => "department_uuid",
            Column::InvoiceGuid => "invoice_guid",
            Column::SendAsText => "send_as_text",
            Column::SendAsEmail => "send_as_email",
            Column::AttachInvoice => "attach_invoice",
            Column::EsignRequired => "esign_required",
            Column::SendWithoutKpay => "send_without_kpay",
        }
    }

    pub fn from_key(s: &str) -> Option<Column> {
        Column::ALL.into_iter().find(|c| c.key() == s)
    }
}

/// `default` + `deny_unknown_fields` so a partial `[defaults]` table works and a typo is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flags {
    pub send_as_text: bool,
    pub send_as_email: bool,
    pub attach_invoice: bool,
    pub esign_required: bool,
    pub send_without_kpay: bool,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            send_as_text: true,
            send_as_email: true,
            attach_invoice: true,
            esign_required: false,
            send_without_kpay: false,
        }
    }
}

const MAX_ID: usize = 128;
const DEPT_RULE: &str = "must be 1-128 characters of A-Z a-z 0-9 - _";
/// Excel's "CSV" on Windows is windows-1252; its "CSV UTF-8" is what is read by default.
const NOT_UTF8: &str = "not valid UTF-8: if the file was saved as Excel's \"CSV\" rather than \"CSV UTF-8\", run again with --encoding windows-1252 (or the encoding it was saved in)";
const BOOL_RULE: &str = "not a yes/no value (true/false, yes/no, y/n, 1/0, on/off, t/f)";

/// A department id that is a safe single URL path segment: 1-128 chars of A-Z a-z 0-9 - _ only.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DepartmentUuid(String);

impl DepartmentUuid {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim_ascii();
        if s.is_empty() {
            return Err("required".into());
        }
        let safe = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if s.len() > MAX_ID || !s.bytes().all(safe) {
            return Err(DEPT_RULE.into());
        }
        Ok(DepartmentUuid(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 1-128 chars, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InvoiceGuid(String);

impl InvoiceGuid {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim_ascii();
        if s.is_empty() {
            return Err("required".into());
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        if s.chars().count() > MAX_ID {
            return Err("must be at most 128 characters".into());
        }
        Ok(InvoiceGuid(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub department: DepartmentUuid,
    pub invoice: InvoiceGuid,
    pub flags: Flags,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Header text as written in the file, or "(row)".
    pub column: String,
    /// At most 40 chars of the cell (then "…"), escaped: cells are hostile and end up in terminals.
    pub value: String,
    pub reason: String,
    /// The cell's column index, when the problem is one cell's.
    pub index: Option<usize>,
    /// The cell the spreadsheet way (`C7`), for a workbook.
    pub cell: Option<String>,
}

impl Invalid {
    fn new(column: String, cell: &[u8], reason: impl Into<String>) -> Self {
        let value = escape(&String::from_utf8_lossy(cell), 40);
        Invalid {
            column,
            value,
            reason: reason.into(),
            index: None,
            cell: None,
        }
    }

    /// Says which column's cell it is.
    fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    pub fn message(&self, line: u64) -> String {
        let column = escape(&self.column, usize::MAX);
        let cell = self
            .cell
            .as_ref()
            .map(|c| format!(" (cell {c})"))
            .unwrap_or_default();
        format!(
            "line {line}{cell}, column \"{column}\", value \"{}\": {}",
            self.value, self.reason
        )
    }
}

/// Escapes quotes, backslashes, control and bidi-override characters; cuts after `limit` chars.
fn escape(s: &str, limit: usize) -> String {
    let mut out = String::with_capacity(s.len().min(limit.saturating_mul(4)));
    for (i, c) in s.chars().enumerate() {
        if i == limit {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// 0-based data row index (blank lines are not rows).
    pub seq: u64,
    /// 1-based physical line where the record starts.
    pub line: u64,
    pub parsed: Result<Request, Invalid>,
}

#[derive(Clone, Debug, Default)]
pub struct InputOptions {
    /// None = sniff from the header line.
    pub delimiter: Option<u8>,
    /// `--sheet`: a workbook's sheet by name or 1-based number; None = the first.
    pub sheet: Option<String>,
    /// `--encoding`: None = UTF-8, or UTF-16 when the file starts with its BOM.
    pub encoding: Option<&'static encoding_rs::Encoding>,
    /// Config `[columns]`: canonical column -> header name in the file (compared normalised).
    pub columns: HashMap<Column, String>,
    pub defaults: Flags,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    // Not called `source`: the reason is in the message, and a source would print it twice.
    #[error("cannot read {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("cannot read {}: {what}", path.display())]
    Refused { path: PathBuf, what: String },
    #[error("{}: not a regular file (a folder or a pipe?); the input is read more than once, so save it to a file first", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: the file is empty (no header line)", path.display())]
    Empty { path: PathBuf },
    #[error(
        "{}: required column {column} not found (looked for a header named \"{wanted}\", \
         ignoring case, spaces and punctuation); headers found: {found}",
        path.display()
    )]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        wanted: String,
        found: String,
    },
    #[error("{}: headers \"{first}\" and \"{second}\" are both column {column}", path.display())]
    DuplicateColumn {
        path: PathBuf,
        column: &'static str,
        first: String,
        second: String,
    },
    #[error("{}: header \"{header}\" matches both {first} and {second}; check [columns]", path.display())]
    AmbiguousHeader {
        path: PathBuf,
        header: String,
        first: &'static str,
        second: &'static str,
    },
    #[error("{}:{line}: malformed CSV: {message}", path.display())]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
}

pub struct InputReader {
    /// The UTF-8 text of an input in another encoding, read in its place (see [`decode`]).
    _decoded: Option<tempfile::NamedTempFile>,
    /// For a workbook: the sheet that was turned into the text read (see `workbook`).
    sheet: Option<workbook::Sheet>,
    path: PathBuf,
    rdr: csv::Reader<Tail<File>>,
    /// The same file, for reading a record again (see `check_quotes`).
    again: File,
    headers: ByteRecord,
    delimiter: u8,
    had_bom: bool,
    /// Header index of each column, in `Column::ALL` order; the first two are always present.
    index: [Option<usize>; 7],
    defaults: Flags,
    seq: u64,
    /// Departments of the valid rows so far (up to `DEPARTMENTS_KEPT`), to recognise a row
    /// swallowed into a cell (see `row_inside`).
    departments: HashSet<String>,
}

/// The text to read, twice opened (see `check_quotes`): the file itself, or the UTF-8 it
/// was decoded into, or the CSV a workbook's sheet was turned into, with what that
/// cannot say.
type Text = (
    File,
    File,
    Option<tempfile::NamedTempFile>,
    Option<workbook::Sheet>,
);

fn text_of(path: &Path, opts: &InputOptions) -> Result<Text, InputError> {
    let io_err = |error| InputError::Io {
        path: path.to_owned(),
        error,
    };
    let mut file = File::open(path).map_err(io_err)?;
    if !file.metadata().map_err(io_err)?.is_file() {
        return Err(InputError::NotAFile {
            path: path.to_owned(),
        });
    }
    let refused = |what| InputError::Refused {
        path: path.to_owned(),
        what,
    };
    let (decoded, sheet) = match workbook::kind(path).map_err(refused)? {
        workbook::Kind::Csv => (decode(&mut file, opts.encoding).map_err(io_err)?, None),
        kind => {
            let converted = workbook::convert(path, kind, opts.sheet.as_deref());
            let (csv, sheet) = converted.map_err(refused)?.split();
            (Some(csv), Some(sheet))
        }
    };
    let again = match &decoded {
        Some(text) => {
            file = text.reopen().map_err(io_err)?;
            text.reopen().map_err(io_err)?
        }
        None => File::open(path).map_err(io_err)?,
    };
    Ok((file, again, decoded, sheet))
}

/// Enough for any real export; past it, swallowed rows are recognised by the departments
/// already kept.
const DEPARTMENTS_KEPT: usize = 10_000;

impl InputReader {
    pub fn open(path: &Path, opts: &InputOptions) -> Result<InputReader, InputError> {
        let io_err = |error| InputError::Io {
            path: path.to_owned(),
            error,
        };
        let (mut file, again, decoded, sheet) = text_of(path, opts)?;
        let (had_bom, sniffed) = sniff(&mut file).map_err(io_err)?;
        // The BOM is skipped here rather than left to csv-core, which only strips it when
        // its first buffer happens to hold all three bytes.
        file.seek(SeekFrom::Start(if had_bom { 3 } else { 0 }))
            .map_err(io_err)?;
        let delimiter = opts.delimiter.unwrap_or(sniffed);
        let tail = Tail::new(file);
        let rdr = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(BUF)
            .from_reader(tail);
        let mut me = InputReader {
            _decoded: decoded,
            sheet,
            path: path.to_owned(),
            rdr,
            again,
            headers: ByteRecord::new(),
            delimiter,
            had_bom,
            index: [None; 7],
            defaults: opts.defaults,
            seq: 0,
            departments: HashSet::new(),
        };
        let mut headers = ByteRecord::new();
        loop {
            if !me.read(&mut headers)? {
                return Err(InputError::Empty { path: me.path });
            }
            if !is_blank(&headers) {
                break;
            }
        }
        let quotes = me.check_quotes(&headers)?;
        if quotes != Quotes::Fine {
            return Err(InputError::Csv {
                line: me.start_line(&headers, quotes),
                path: me.path,
                message: "a quote in the header line is not closed where its cell ends, so lines after it were read as part of the header; check the quotes".into(),
            });
        }
        me.index = me.map_columns(&headers, opts)?;
        me.headers = headers;
        Ok(me)
    }

    fn map_columns(
        &self,
        headers: &ByteRecord,
        opts: &InputOptions,
    ) -> Result<[Option<usize>; 7], InputError> {
        let wanted = Column::ALL.map(|c| opts.columns.get(&c).map_or(c.key(), String::as_str));
        let norm = wanted.map(|w| normalize_header(w.as_bytes()));
        let lossy = |i: usize| String::from_utf8_lossy(&headers[i]).into_owned();
        let mut index = [None; 7];
        for (i, h) in headers.iter().enumerate() {
            let h = normalize_header(h);
            let mut hit: Option<Column> = None;
            for (k, col) in Column::ALL.into_iter().enumerate() {
                if h.is_empty() || norm[k] != h {
                    continue;
                }
                if let Some(first) = hit {
                    let (header, first, second) = (lossy(i), first.key(), col.key());
                    return Err(InputError::AmbiguousHeader {
                        path: self.path.clone(),
                        header,
                        first,
                        second,
                    });
                }
                if let Some(j) = index[k] {
                    let (first, second) = (lossy(j), lossy(i));
                    return Err(InputError::DuplicateColumn {
                        path: self.path.clone(),
                        column: col.key(),
                        first,
                        second,
                    });
                }
                hit = Some(col);
                index[k] = Some(i);
            }
        }
        for k in 0..2 {
            if index[k].is_none() {
                let mut found: Vec<String> = headers
                    .iter()
                    .take(30)
                    .map(|h| format!("\"{}\"", escape(&String::from_utf8_lossy(h), 40)))
                    .collect();
                if headers.len() > 30 {
                    found.push("…".into());
                }
                return Err(InputError::MissingColumn {
                    path: self.path.clone(),
                    column: Column::ALL[k].key(),
                    wanted: wanted[k].to_owned(),
                    found: found.join(", "),
                });
            }
        }
        Ok(index)
    }

    /// Header cells exactly as in the file (BOM removed).
    pub fn headers(&self) -> &ByteRecord {
        &self.headers
    }

    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    pub fn had_bom(&self) -> bool {
        self.had_bom
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sheet read, for a workbook.
    pub fn sheet(&self) -> Option<&str> {
        self.sheet.as_ref().map(|s| s.name.as_str())
    }

    /// The columns in which a workbook held numbers, but the two IDs: its results write
    /// their numbers as numbers. Empty for a CSV, whose cells are all text.
    pub fn number_columns(&self) -> Vec<bool> {
        let Some(sheet) = &self.sheet else {
            return Vec::new();
        };
        let (d, v) = self.key_columns();
        let mut numbers = sheet.numeric.clone();
        for i in [d, v] {
            if let Some(n) = numbers.get_mut(i) {
                *n = false;
            }
        }
        numbers
    }

    /// What a person should know of how the input was read (numbers in an ID column).
    pub fn notes(&self) -> Vec<String> {
        let Some(sheet) = &self.sheet else {
            return Vec::new();
        };
        let (d, v) = self.key_columns();
        [d, v]
            .into_iter()
            .filter(|i| sheet.numeric.get(*i).copied().unwrap_or(false))
            .map(|i| {
                format!(
                    "{}, sheet {:?}: column {:?} holds numbers, read as their digits: leading zeros the sheet showed are gone (format the column as text to keep them)",
                    self.path.display(),
                    sheet.name,
                    String::from_utf8_lossy(&self.headers[i])
                )
            })
            .collect()
    }

    /// Header indexes of the department and invoice columns.
    pub fn key_columns(&self) -> (usize, usize) {
        (self.index[0].unwrap_or(0), self.index[1].unwrap_or(0))
    }

    /// The index of the header named `name` (compared like the known columns).
    pub fn column(&self, name: &str) -> Option<usize> {
        let wanted = normalize_header(name.as_bytes());
        self.headers
            .iter()
            .position(|h| normalize_header(h) == wanted)
    }

    fn read(&mut self, raw: &mut ByteRecord) -> Result<bool, InputError> {
        match self.rdr.read_byte_record(raw) {
            Ok(more) => Ok(more),
            Err(e) => {
                let (path, line) = (self.path.clone(), self.rdr.position().line());
                Err(match e.into_kind() {
                    csv::ErrorKind::Io(error) => InputError::Io { path, error },
                    kind => InputError::Csv {
                        path,
                        line,
                        message: format!("{kind:?}"),
                    },
                })
            }
        }
    }

    /// csv-core reads broken quoting without an error: a quote opened and never closed
    /// takes every line up to the next quote, or to the end of the file, into one cell, and
    /// the rows on those lines would be neither sent nor reported. Only a record with a line
    /// break inside a cell can have swallowed lines, so only those (rare) records are read
    /// again from the file and checked.
    fn check_quotes(&self, raw: &ByteRecord) -> Result<Quotes, InputError> {
        if !has_line_break(raw) {
            return Ok(Quotes::Fine);
        }
        let start = raw.position().map_or(0, |p| p.byte());
        let end = self.rdr.position().byte();
        let bom = if self.had_bom { 3 } else { 0 };
        let mut bytes = vec![0; usize::try_from(end - start).unwrap_or(usize::MAX)];
        let mut again = &self.again;
        again
            .seek(SeekFrom::Start(start + bom))
            .and_then(|_| again.read_exact(&mut bytes))
            .map_err(|error| InputError::Io {
                path: self.path.clone(),
                error,
            })?;
        Ok(scan_quotes(&bytes, self.delimiter))
    }

    /// A stray quote that a later line closes at its very end (`27"`) leaves well-formed
    /// CSV: the lines between are one multi-line cell, and their rows are never sent. The
    /// syntax cannot tell, so a cell is taken to have swallowed a row when one of its later
    /// lines reads as a row of this file: a department already seen in it, and an invoice.
    fn row_inside(&self, raw: &ByteRecord, line: u64) -> Option<Invalid> {
        let (d, v) = (self.index[0]?, self.index[1]?);
        let mut at = line;
        for (i, cell) in raw.iter().enumerate() {
            for text in cell.split(|&b| b == b'\n').skip(1) {
                at += 1;
                let cells: Vec<&[u8]> = text.split(|&b| b == self.delimiter).collect();
                let read = |j: usize| cells.get(j).and_then(|c| std::str::from_utf8(c).ok());
                let (Some(dept), Some(invoice)) = (read(d), read(v)) else {
                    continue;
                };
                let known = DepartmentUuid::parse(dept)
                    .is_ok_and(|dept| self.departments.contains(dept.as_str()));
                if known && InvoiceGuid::parse(invoice).is_ok() {
                    let reason = format!(
                        "line {at} inside this cell reads as a row of its own, so a quote is probably not closed where a cell ends and that row would never be sent; check the quotes and run again"
                    );
                    let column = String::from_utf8_lossy(&self.headers[i]).into_owned();
                    return Some(Invalid::new(column, cell, reason));
                }
            }
        }
        None
    }

    /// Line where `raw` (just read) starts: the parser's current line, minus the newlines
    /// inside quoted cells, minus the record's own LF terminator if it was consumed (a cell
    /// never closed has none: its last LF is inside it).
    fn start_line(&self, raw: &ByteRecord, quotes: Quotes) -> u64 {
        let inner = raw.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
        let terminator = if quotes == Quotes::NeverClosed {
            0
        } else {
            self.ended_on_lf()
        };
        self.rdr
            .position()
            .line()
            .saturating_sub(inner + terminator)
            .max(1)
    }

    fn ended_on_lf(&self) -> u64 {
        let end = self.rdr.position().byte();
        u64::from(end > 0 && self.rdr.get_ref().byte_at(end - 1) == Some(b'\n'))
    }

    /// Reads the next data record into `raw` (cells as in the file, short rows padded with empty
    /// cells to the header width; long rows left as read) and returns its parse. Ok(None) at end.
    pub fn next_record(&mut self, raw: &mut ByteRecord) -> Result<Option<Record>, InputError> {
        loop {
            if !self.read(raw)? {
                return Ok(None);
            }
            if is_blank(raw) {
                continue;
            }
            let quotes = self.check_quotes(raw)?;
            let line = self.start_line(raw, quotes);
            let seq = self.seq;
            self.seq += 1;
            let width = self.headers.len();
            let parsed = if quotes != Quotes::Fine {
                let last_line = self.rdr.position().line() - self.ended_on_lf();
                let (cell, reason) = match quotes {
                    Quotes::NeverClosed => (raw.len() - 1, format!(
                        "a quote opened in this cell is never closed, so lines {line} to {last_line} (the rest of the file) were read as this one cell and none of them is sent; add the missing quote and run again"
                    )),
                    _ => (
                        raw.iter().position(|c| c.contains(&b'\n') || c.contains(&b'\r')).unwrap_or(0),
                        format!(
                            "a quote in this cell does not close where the cell ends, so lines {line} to {last_line} were read as one row and none of them is sent; check the quotes and run again"
                        ),
                    ),
                };
                let column = self.headers.get(cell).unwrap_or(b"(row)");
                Err(Invalid::new(
                    String::from_utf8_lossy(column).into_owned(),
                    &raw[cell],
                    reason,
                ))
            } else if let Some(extra) = raw.iter().skip(width).find(|cell| !cell.is_empty()) {
                let reason = format!(
                    "has {} cells but the header has {width} (a quote may be missing)",
                    raw.len()
                );
                Err(Invalid::new("(row)".into(), extra, reason))
            } else {
                // Spreadsheets write empty cells past the last header on every row once any
                // row had something there: dropping them loses nothing.
                raw.truncate(width);
                while raw.len() < width {
                    raw.push_field(b"");
                }
                self.parse(raw).and_then(|request| {
                    let dept = request.department.as_str();
                    if self.departments.len() < DEPARTMENTS_KEPT && !self.departments.contains(dept)
                    {
                        self.departments.insert(dept.to_owned());
                    }
                    let swallowed = has_line_break(raw)
                        .then(|| self.row_inside(raw, line))
                        .flatten();
                    swallowed.map_or(Ok(request), Err)
                })
            };
            let (line, parsed) = match &self.sheet {
                Some(sheet) => sheet.record(seq, parsed, raw, (&self.index, &self.headers)),
                None => (line, parsed),
            };
            return Ok(Some(Record { seq, line, parsed }));
        }
    }

    fn parse(&self, raw: &ByteRecord) -> Result<Request, Invalid> {
        let invalid = |i: usize, reason: &str| {
            let column = String::from_utf8_lossy(&self.headers[i]).into_owned();
            Invalid::new(column, &raw[i], reason).at(i)
        };
        let text = |i: usize| std::str::from_utf8(&raw[i]).map_err(|_| invalid(i, NOT_UTF8));
        let (d, v) = (self.index[0].unwrap_or(0), self.index[1].unwrap_or(0));
        let department = DepartmentUuid::parse(text(d)?).map_err(|r| invalid(d, &r))?;
        let invoice = InvoiceGuid::parse(text(v)?).map_err(|r| invalid(v, &r))?;
        let mut flags = self.defaults;
        let slots = [
            &mut flags.send_as_text,
            &mut flags.send_as_email,
            &mut flags.attach_invoice,
            &mut flags.esign_required,
            &mut flags.send_without_kpay,
        ];
        for (slot, i) in slots.into_iter().zip(&self.index[2..]) {
            let Some(i) = *i else { continue };
            match parse_bool(text(i)?) {
                Ok(Some(b)) => *slot = b,
                Ok(None) => {}
                Err(()) => return Err(invalid(i, BOOL_RULE)),
            }
        }
        Ok(Request {
            department,
            invoice,
            flags,
        })
    }
}

/// Lower-case, ASCII letters and digits only: "Department UUID" == "departmentUuid" == "department_uuid".
pub fn normalize_header(h: &[u8]) -> String {
    h.iter()
        .filter(|b| b.is_ascii_alphanumeric())
        .map(|b| b.to_ascii_lowercase() as char)
        .collect()
}

/// true/false yes/no y/n 1/0 on/off t/f, any case, trimmed. Blank => Ok(None) (use the default).
#[allow(clippy::result_unit_err)]
pub fn parse_bool(s: &str) -> Result<Option<bool>, ()> {
    let s = s.trim_ascii();
    if s.is_empty() {
        return Ok(None);
    }
    let is = |words: &[&str]| words.iter().any(|w| s.eq_ignore_ascii_case(w));
    if is(&["true", "yes", "y", "1", "on", "t"]) {
        Ok(Some(true))
    } else if is(&["false", "no", "n", "0", "off", "f"]) {
        Ok(Some(false))
    } else {
        Err(())
    }
}

pub mod seen;
mod text;
pub mod workbook;

pub use seen::Seen;
use text::{decode, has_line_break, is_blank, scan_quotes, sniff, Quotes, Tail, BUF};

#[cfg(test)]
mod tests;
