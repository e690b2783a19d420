//! What a send would do, row by row, before anything leaves: the desk's Check screen. The
//! run's own sorting ([`super::sort`]) and rerun rules ([`ledger::judge`]), on a look at
//! the ledger that locks nothing; the run decides again, under its locks, when it sends.

use std::collections::BTreeMap;

use anyhow::Result;

use super::check::tell_how_read;
use crate::config::Send;
use crate::domain::{Clock, Status};
use crate::input::{InputReader, Seen};
use crate::ledger::{self, Entry, EntryKind, Store};

/// How many rows of each kind are listed; the rest are counted.
const LISTED: usize = 500;
/// Keys looked up in the ledger at once.
const BATCH: usize = 1000;

/// What a send of this input would do now.
#[derive(Debug, Default)]
pub struct Outlook {
    pub rows: u64,
    pub would_send: u64,
    pub texts: u64,
    pub emails: u64,
    /// Rows to send per department.
    pub departments: BTreeMap<String, u64>,
    pub invalid: Listed<Bad>,
    pub duplicates: Listed<Twin>,
    /// Rows an earlier run sent, or may have delivered: skipped.
    pub earlier: Listed<Earlier>,
    pub sheet: Option<String>,
    /// What a person should know of how the input was read.
    pub notes: Vec<String>,
    /// The ledger does not exist yet: nothing was sent with it.
    pub new_ledger: bool,
}

/// A list shown up to a bound, with how many there were in all.
#[derive(Debug)]
pub struct Listed<T> {
    pub shown: Vec<T>,
    pub total: u64,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed {
            shown: Vec::new(),
            total: 0,
        }
    }
}

impl<T> Listed<T> {
    fn push(&mut self, item: T) {
        self.total += 1;
        if self.shown.len() < LISTED {
            self.shown.push(item);
        }
    }
}

#[derive(Debug)]
pub struct Bad {
    pub line: u64,
    /// The column's header, or the cell the spreadsheet way (C7).
    pub cell: String,
    pub value: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct Twin {
    pub line: u64,
    pub first_line: u64,
    pub invoice: String,
}

#[derive(Debug)]
pub struct Earlier {
    pub line: u64,
    pub invoice: String,
    pub status: Status,
    /// When and by which run, in the run's own words.
    pub message: String,
}

/// Reads the whole input once and asks the ledger about every valid row.
pub fn outlook(config: &Send, clock: &Clock) -> Result<Outlook> {
    let input = &config.input;
    let mut reader = InputReader::open(&input.path, &input.options)?;
    tell_how_read(&reader);
    let mut o = Outlook {
        sheet: reader.sheet().map(str::to_string),
        notes: reader.notes(),
        ..Outlook::default()
    };
    let store = ledger::open_existing(&config.ledger)?;
    o.new_ledger = store.is_none();
    let mut ahead = Ahead {
        config,
        clock,
        store,
        waiting: Vec::new(),
    };
    let (mut seen, mut raw) = (Seen::new()?, csv::ByteRecord::new());
    seen.batch(|b| {
        while let Some(record) = reader.next_record(&mut raw)? {
            o.rows += 1;
            if let Err(bad) = &record.parsed {
                o.invalid.push(Bad {
                    line: record.line,
                    cell: bad.cell.clone().unwrap_or_else(|| bad.column.clone()),
                    value: bad.value.clone(),
                    reason: bad.reason.clone(),
                });
            }
            let entry = super::sort(record, b)?;
            ahead.take(entry, &mut o)?;
        }
        ahead.flush(&mut o)
    })?;
    Ok(o)
}

/// Valid rows waiting for their ledger lookup, in batches.
struct Ahead<'a> {
    config: &'a Send,
    clock: &'a Clock,
    store: Option<Box<dyn Store>>,
    waiting: Vec<Entry>,
}

impl Ahead<'_> {
    fn take(&mut self, entry: Entry, o: &mut Outlook) -> Result<()> {
        match &entry.kind {
            EntryKind::Invalid(_) => {}
            EntryKind::Duplicate {
                first_line,
                invoice,
                ..
            } => o.duplicates.push(Twin {
                line: entry.line,
                first_line: *first_line,
                invoice: invoice.clone(),
            }),
            EntryKind::Valid(_) => self.waiting.push(entry),
        }
        if self.waiting.len() >= BATCH {
            self.flush(o)?;
        }
        Ok(())
    }

    /// Judges the waiting rows as admission would.
    fn flush(&mut self, o: &mut Outlook) -> Result<()> {
        let entries = std::mem::take(&mut self.waiting);
        let keys: Vec<(String, String)> = entries
            .iter()
            .filter_map(|e| e.kind.key())
            .map(|(d, i)| (d.to_string(), i.to_string()))
            .collect();
        let target = self.config.target.name();
        let priors = match self.store.as_mut() {
            Some(store) if !keys.is_empty() => store.priors(target, &keys)?,
            _ => vec![None; keys.len()],
        };
        let (policy, now) = (&self.config.policy, self.clock.now());
        for (entry, prior) in entries.iter().zip(&priors) {
            let EntryKind::Valid(req) = &entry.kind else {
                continue;
            };
            match ledger::judge(entry, prior.as_ref(), policy, now, None).1 {
                Ok(_) => {
                    o.would_send += 1;
                    o.texts += u64::from(req.flags.send_as_text);
                    o.emails += u64::from(req.flags.send_as_email);
                    // A String only for a department not seen yet, not for every row.
                    let dept = req.department.as_str();
                    match o.departments.get_mut(dept) {
                        Some(n) => *n += 1,
                        None => {
                            o.departments.insert(dept.to_string(), 1);
                        }
                    }
                }
                Err((status, _, message)) => o.earlier.push(Earlier {
                    line: entry.line,
                    invoice: req.invoice.as_str().to_string(),
                    status,
                    message,
                }),
            }
        }
        Ok(())
    }
}
