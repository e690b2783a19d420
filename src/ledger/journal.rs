//! A SQLite run's journal file: what survives the death of the process between two of the
//! ledger's commits. Each sending task appends to it directly: a leaving mark just before
//! its request's first byte, and the answer before it releases its send slot. The writer
//! thread commits the answers later; a run that died is settled from the journal, so the
//! rows a kill leaves with a mark and no answer are at most those that held a slot.
//!
//! Records are written with one `write(2)` each on an `O_APPEND` file, so they are never
//! interleaved. A mark is the row number, 8 bytes little-endian (the whole format of a
//! marks file written by the previous release, which therefore reads the same); an answer is the row number with
//! its top bit set, a 4-byte length and the outcome as JSON. A torn last record (a kill
//! in the middle of a write) is ignored: its row then reads as marked, not answered.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::domain::Outcome;

const ANSWER: u64 = 1 << 63;

/// What a journal file says.
#[derive(Debug, Default)]
pub struct Journal {
    pub marked: HashSet<u64>,
    pub answers: HashMap<u64, Outcome>,
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
    /// Reads `path`; no file is an empty journal.
    pub fn read(path: &Path) -> Result<Journal> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Journal::parse(&bytes))
    }

    fn parse(mut bytes: &[u8]) -> Journal {
        let mut journal = Journal::default();
        while let Some((head, rest)) = bytes.split_first_chunk::<8>() {
            let word = u64::from_le_bytes(*head);
            let seq = word & !ANSWER;
            journal.marked.insert(seq);
            bytes = rest;
            if word & ANSWER == 0 {
                continue;
            }
            let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
                break;
            };
            let len = u32::from_le_bytes(*len) as usize;
            let Some((body, rest)) = rest.split_at_checked(len) else {
                break;
            };
            if let Ok(outcome) = serde_json::from_slice(body) {
                journal.answers.insert(seq, outcome);
            }
            bytes = rest;
        }
        journal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AttemptNote, Status};

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
        let journal = Journal::read(&path).unwrap();
        assert_eq!(journal.marked, HashSet::from([1, 2, 3]));
        assert_eq!(journal.answers[&1], outcome(1));
        assert_eq!(journal.answers[&3], outcome(3));
        assert_eq!(journal.answers.len(), 2);
        // Cut anywhere inside the last answer: row 3 is marked, not answered.
        for cut in before..whole.len() {
            let torn = Journal::parse(&whole[..cut]);
            assert_eq!(torn.marked, HashSet::from([1, 2, 3]), "cut at {cut}");
            assert_eq!(
                torn.answers.keys().collect::<Vec<_>>(),
                vec![&1],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_previous_release_marks_file_reads_as_marks_and_no_file_as_nothing() {
        let mut bytes: Vec<u8> = [7u64, 9, 1 << 40]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        bytes.extend_from_slice(&[1, 2, 3]);
        let journal = Journal::parse(&bytes);
        assert_eq!(journal.marked, HashSet::from([7, 9, 1 << 40]));
        assert!(journal.answers.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let none = Journal::read(&dir.path().join("none")).unwrap();
        assert!(none.marked.is_empty() && none.answers.is_empty());
    }
}
