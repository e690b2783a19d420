//! The bytes of a CSV before its records: its encoding (decoded to UTF-8 when it is not),
//! its delimiter, blank lines, and the quotes csv-core reads without complaint.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use csv::ByteRecord;

/// What [`scan_quotes`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Quotes {
    Fine,
    /// A quoted cell's closing quote is followed by something other than a delimiter or a
    /// line end: the quote that opened it was most likely a stray one.
    StrayClose,
    /// The file ends inside a quoted cell.
    NeverClosed,
}

/// Checks one record as it is in the file: every quoted cell must close right before a
/// delimiter, a line end or the end of the file (a doubled quote inside is one quote).
pub(super) fn scan_quotes(bytes: &[u8], delimiter: u8) -> Quotes {
    #[derive(Clone, Copy)]
    enum At {
        CellStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let ends_cell = |b: u8| b == delimiter || b == b'\n' || b == b'\r';
    let mut at = At::CellStart;
    for &b in bytes {
        at = match at {
            At::CellStart if b == b'"' => At::Quoted,
            At::CellStart | At::Unquoted if ends_cell(b) => At::CellStart,
            At::CellStart | At::Unquoted => At::Unquoted,
            At::Quoted if b == b'"' => At::QuoteInQuoted,
            At::Quoted => At::Quoted,
            At::QuoteInQuoted if b == b'"' => At::Quoted,
            At::QuoteInQuoted if ends_cell(b) => At::CellStart,
            At::QuoteInQuoted => return Quotes::StrayClose,
        };
    }
    match at {
        At::Quoted => Quotes::NeverClosed,
        _ => Quotes::Fine,
    }
}

/// Only a record with a line break inside a cell can have swallowed other lines.
pub(super) fn has_line_break(raw: &ByteRecord) -> bool {
    raw.as_slice().iter().any(|&b| b == b'\n' || b == b'\r')
}

/// Keeps the last two chunks handed to csv, so the byte before the parser's position can be
/// looked up. csv's own record line points at any blank lines skipped before the record (and
/// at the pending LF of a CRLF), so the start line is computed backwards from the record's end.
pub(super) struct Tail<R> {
    inner: R,
    delivered: u64,
    cur: Vec<u8>,
    prev: Vec<u8>,
}

impl<R> Tail<R> {
    pub(super) fn new(inner: R) -> Tail<R> {
        Tail {
            inner,
            delivered: 0,
            cur: Vec::new(),
            prev: Vec::new(),
        }
    }
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            std::mem::swap(&mut self.cur, &mut self.prev);
            self.cur.clear();
            self.cur.extend_from_slice(&buf[..n]);
            self.delivered += n as u64;
        }
        Ok(n)
    }
}

impl<R> Tail<R> {
    pub(super) fn byte_at(&self, pos: u64) -> Option<u8> {
        let cur_start = self.delivered - self.cur.len() as u64;
        let prev_start = cur_start - self.prev.len() as u64;
        match pos.checked_sub(cur_start) {
            Some(off) => self.cur.get(off as usize).copied(),
            None => self
                .prev
                .get(pos.checked_sub(prev_start)? as usize)
                .copied(),
        }
    }
}

pub(super) const BOM: &[u8] = b"\xef\xbb\xbf";
/// Tiny under test so every test crosses many chunk boundaries in `Tail`.
pub(super) const BUF: usize = if cfg!(test) { 7 } else { 64 * 1024 };

/// An input in another encoding than UTF-8 (UTF-16 by its BOM, or `--encoding`), decoded
/// into a private temporary file of UTF-8 with a BOM that is read in its place: each pass
/// over the input (the results are rendered by reading it again) reads the same text, line
/// for line, and the results keep the BOM, so Excel opens them as UTF-8. None: the file
/// is UTF-8 (or says so with its BOM) and is read as it is.
pub(super) fn decode(
    file: &mut File,
    wanted: Option<&'static encoding_rs::Encoding>,
) -> io::Result<Option<tempfile::NamedTempFile>> {
    let mut start = [0u8; 3];
    let n = file.read(&mut start)?;
    file.seek(SeekFrom::Start(0))?;
    let bom = encoding_rs::Encoding::for_bom(&start[..n]).map(|(e, _)| e);
    let encoding = match (bom, wanted) {
        (Some(e), _) if e != encoding_rs::UTF_8 => e,
        (None, Some(e)) if e != encoding_rs::UTF_8 => e,
        _ => return Ok(None),
    };
    let mut text = encoding_rs_io::DecodeReaderBytesBuilder::new()
        .encoding(Some(encoding))
        .build(&mut *file);
    let mut utf8 = tempfile::NamedTempFile::new()?;
    utf8.write_all(BOM)?;
    io::copy(&mut text, &mut utf8)?;
    utf8.flush()?;
    Ok(Some(utf8))
}

/// A line of only whitespace; csv-core already drops truly empty lines.
pub(super) fn is_blank(raw: &ByteRecord) -> bool {
    raw.len() == 1 && raw[0].trim_ascii().is_empty()
}

/// Returns (BOM present, delimiter) from the first non-blank line: the most frequent of
/// `,` `;` tab outside double quotes; ties or none mean comma. Reads at most ~1 MiB.
pub(super) fn sniff(file: &mut File) -> io::Result<(bool, u8)> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut counts, mut quoted, mut content, mut bom) = ([0usize; 3], false, false, false);
    let mut first = true;
    'chunks: for _ in 0..16 {
        let mut n = 0;
        while n < buf.len() {
            match file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut chunk = &buf[..n];
        if std::mem::take(&mut first) && chunk.starts_with(BOM) {
            bom = true;
            chunk = &chunk[3..];
        }
        for &b in chunk {
            match b {
                b'"' => quoted = !quoted,
                b'\n' | b'\r' if !quoted && content => break 'chunks,
                b'\n' | b'\r' if !quoted => counts = [0; 3],
                _ if quoted => {}
                b',' => counts[0] += 1,
                b';' => counts[1] += 1,
                b'\t' => counts[2] += 1,
                _ => {}
            }
            content |= !b.is_ascii_whitespace();
        }
        if n < buf.len() {
            break;
        }
    }
    let max = counts.into_iter().max().unwrap_or(0);
    let delimiter = match counts.iter().filter(|&&c| c == max).count() {
        1 if max > 0 => [b',', b';', b'\t'][counts.iter().position(|&c| c == max).unwrap_or(0)],
        _ => b',',
    };
    Ok((bom, delimiter))
}
