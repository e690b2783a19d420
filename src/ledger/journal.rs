//! A SQLite run's journal file: what survives the death of the process between two of the
//! ledger's commits. Each sending task appends to it directly: a leaving mark just before
//! its request's first byte, and the answer before it releases its send slot. The writer
//! thread commits the answers later; a run that died is settled from the journal, so the
//! rows a kill leaves with a mark and no answer are at most those that held a slot.
//!
//! Records are written with one `write(2)` each on an `O_APPEND` file, so they are never
//! interleaved. A mark is the row number, 8 bytes little-endian (the whole format of the
//! marks file the previous release wrote, which therefore reads the same); an answer is
//! the row number with its top bit set, a 4-byte length and the outcome as JSON. A torn
//! last record (a kill in the middle of a write) is ignored: its row then reads as
//! marked, not answered.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::domain::Outcome;

const ANSWER: u64 = 1 << 63;

/// What a journal file says of the rows asked about. Settling asks only about rows with
/// no outcome in the ledger: for a run that ended normally those are few, whatever the
/// journal's size (a million-row run's is hundreds of megabytes), and it is streamed.
#[derive(Debug, Default)]
pub struct Journal {
    pub marked: HashSet<u64>,
    answers: HashMap<u64, Outcome>,
}

pub fn leave(file: &File, seq: u64) -> Result<()> {
    let mut f = file;
    f.write_all(&seq.to_le_bytes())
        .context("cannot write the leaving mark")
}

pub fn answer(file: &File, seq: u64, outcome: &Outcome) -> Result<()> {
    let mut record = Vec::with_capacity(512);
    record.extend_from_slice(&(seq | ANSWER).to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut record, outcome).context("cannot encode the answer")?;
    let len = u32::try_from(record.len() - 12).context("the answer is too long to journal")?;
    record[8..12].copy_from_slice(&len.to_le_bytes());
    let mut f = file;
    f.write_all(&record).context("cannot journal the answer")
}

impl Journal {
    /// Reads what `path` says of the rows in `open`. A missing file is an error, not an
    /// empty journal: that would read as "nothing left" and send those rows again.
    pub fn read(path: &Path, open: &HashSet<u64>) -> Result<Journal> {
        if open.is_empty() {
            return Ok(Journal::default());
        }
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Journal::parse(BufReader::new(file), open)
            .with_context(|| format!("cannot read {}", path.display()))
    }

    /// Marks kept elsewhere (a schema-2 run's table), with no answers.
    pub fn of_marks(marked: HashSet<u64>) -> Journal {
        Journal {
            marked,
            ..Journal::default()
        }
    }

    /// The answer journalled for row `seq`, if one was, whole.
    pub fn answer(&self, seq: u64) -> Option<&Outcome> {
        self.answers.get(&seq)
    }

    fn parse(mut from: impl Read + Seek, open: &HashSet<u64>) -> std::io::Result<Journal> {
        let mut journal = Journal::default();
        let mut word = [0; 8];
        while read_whole(&mut from, &mut word)? {
            let word = u64::from_le_bytes(word);
            let seq = word & !ANSWER;
            let wanted = open.contains(&seq);
            if wanted {
                journal.marked.insert(seq);
            }
            if word & ANSWER == 0 {
                continue;
            }
            let mut len = [0; 4];
            if !read_whole(&mut from, &mut len)? {
                break;
            }
            let len = u32::from_le_bytes(len) as u64;
            if !wanted {
                // Past the end, if the record is torn: the next read finds nothing.
                from.seek_relative(len as i64)?;
                continue;
            }
            let mut body = Vec::with_capacity(len as usize);
            if (&mut from).take(len).read_to_end(&mut body)? < len as usize {
                break;
            }
            if let Ok(outcome) = serde_json::from_slice(&body) {
                journal.answers.insert(seq, outcome);
            }
        }
        Ok(journal)
    }
}

/// Fills `buf`; false at the end of the file, or in a torn last record.
fn read_whole(from: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    match from.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AttemptNote, Status};
    use std::io::Cursor;

    fn outcome(n: u32) -> Outcome {
        let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        Outcome {
            payment_link: Some(format!("https://pay.example/{n}\n\"quoted\"")),
            earlier: vec![AttemptNote {
                at,
                what: "HTTP 503; retried".into(),
                ..AttemptNote::default()
            }],
            attempts: n,
            ..Outcome::plain(Status::Sent, "sent", at)
        }
    }

    #[test]
    fn marks_and_answers_read_back_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        leave(&file, 1).unwrap();
        leave(&file, 2).unwrap();
        answer(&file, 1, &outcome(1)).unwrap();
        leave(&file, 3).unwrap();
        let before = std::fs::metadata(&path).unwrap().len() as usize;
        answer(&file, 3, &outcome(3)).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let all = HashSet::from([1, 2, 3]);
        let journal = Journal::read(&path, &all).unwrap();
        assert_eq!(journal.marked, all);
        assert_eq!(journal.answer(1), Some(&outcome(1)));
        assert_eq!(journal.answer(3), Some(&outcome(3)));
        assert_eq!(journal.answer(2), None);
        // Only the rows asked about are kept.
        let some = Journal::read(&path, &HashSet::from([2, 3])).unwrap();
        assert_eq!(some.marked, HashSet::from([2, 3]));
        assert_eq!(some.answer(1), None);
        assert_eq!(some.answer(3), Some(&outcome(3)));
        // Cut anywhere inside the last answer: row 3 is marked, not answered.
        for cut in before..whole.len() {
            let torn = Journal::parse(Cursor::new(&whole[..cut]), &all).unwrap();
            assert_eq!(torn.marked, all, "cut at {cut}");
            assert_eq!(torn.answer(1), Some(&outcome(1)), "cut at {cut}");
            assert_eq!(torn.answer(3), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_previous_release_marks_file_reads_as_marks_and_a_missing_file_is_an_error() {
        let mut bytes: Vec<u8> = [7u64, 9, 1 << 40]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        bytes.extend_from_slice(&[1, 2, 3]);
        let all = HashSet::from([7, 9, 1 << 40]);
        let journal = Journal::parse(Cursor::new(&bytes), &all).unwrap();
        assert_eq!(journal.marked, all);
        assert!(journal.answers.is_empty());
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::read(&dir.path().join("none"), &all).is_err());
        let none = Journal::read(&dir.path().join("none"), &HashSet::new()).unwrap();
        assert!(none.marked.is_empty() && none.answers.is_empty());
    }
}
