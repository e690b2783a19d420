//! Duplicates within one input (SPEC section 3): the first line of each (department,
//! invoice), in memory that does not grow with the input.
//!
//! Each key is held as a 128-bit digest, whatever its length: two different pairs of one
//! file sharing a digest is far less likely than a disk error, so the digest is the key.
//! The first [`IN_MEMORY`] digests are kept in a hash map (about 1.6 MB); past them, in a
//! temporary SQLite file whose cache is bounded too, so that peak memory is the same at
//! 300,000 rows as at 60,000.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// Digests kept in memory before the rest go to SQLite: just under 65,536 buckets of the
/// map at its load factor, so it never doubles past them (24 bytes an entry, ~1.6 MB).
const IN_MEMORY: usize = 28_000;

/// The SQLite file's page cache, in KiB (SQLite's default is 2,000).
const CACHE_KIB: i64 = 512;

/// A key's 128-bit digest.
type Digest = (i64, i64);

pub struct Seen {
    /// digest -> first line.
    memory: HashMap<Digest, u64>,
    conn: Connection,
}

impl Seen {
    pub fn new() -> Result<Seen> {
        // An empty path is SQLite's private temporary file: deleted on close, and it spills
        // to disk only past its cache.
        let conn = Connection::open("").context("cannot create a temporary file for duplicates")?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA cache_size = -{CACHE_KIB};
             CREATE TABLE seen (hi INTEGER NOT NULL, lo INTEGER NOT NULL, line INTEGER NOT NULL,
                                PRIMARY KEY (hi, lo)) WITHOUT ROWID;"
        ))?;
        Ok(Seen {
            memory: HashMap::new(),
            conn,
        })
    }

    /// Calls `f` for a batch of rows; whatever it keeps in SQLite is one commit, not one per
    /// row (and a batch that fits in memory costs no transaction at all).
    pub fn batch<T>(&mut self, f: impl FnOnce(&mut Batch) -> Result<T>) -> Result<T> {
        let mut batch = Batch {
            memory: &mut self.memory,
            tx: &self.conn,
            began: false,
        };
        let out = f(&mut batch);
        if batch.began {
            self.conn
                .execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
        }
        out
    }
}

pub struct Batch<'a> {
    memory: &'a mut HashMap<Digest, u64>,
    tx: &'a Connection,
    /// A transaction was begun for this batch.
    began: bool,
}

impl Batch<'_> {
    /// The line of the first row with this department and invoice, if the row is not the
    /// first; otherwise the row becomes the first.
    pub fn first_line(&mut self, dept: &str, invoice: &str, line: u64) -> Result<Option<u64>> {
        let digest = digest(dept, invoice);
        if let Some(first) = self.memory.get(&digest) {
            return Ok(Some(*first));
        }
        if self.memory.len() < IN_MEMORY {
            // Not in memory, and memory not yet full: nothing went to SQLite either.
            self.memory.insert(digest, line);
            return Ok(None);
        }
        if !self.began {
            self.tx.execute_batch("BEGIN")?;
            self.began = true;
        }
        let earlier: Option<i64> = self
            .tx
            .prepare_cached("SELECT line FROM seen WHERE hi = ?1 AND lo = ?2")?
            .query_row(params![digest.0, digest.1], |r| r.get(0))
            .optional()?;
        if earlier.is_none() {
            self.tx
                .prepare_cached("INSERT INTO seen (hi, lo, line) VALUES (?1, ?2, ?3)")?
                .execute(params![digest.0, digest.1, line as i64])?;
        }
        Ok(earlier.map(|l| l as u64))
    }
}

/// Two SipHash values of the key under different seeds: stable within a process, which
/// is as long as the table lives.
fn digest(dept: &str, invoice: &str) -> Digest {
    let half = |seed: u8| {
        let mut h = std::hash::DefaultHasher::new();
        (seed, dept, invoice).hash(&mut h);
        h.finish() as i64
    };
    (half(0), half(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_name_the_first_line() {
        let mut seen = Seen::new().unwrap();
        let got = seen
            .batch(|b| {
                Ok([
                    b.first_line("d", "INV-A", 2)?,
                    b.first_line("d", "INV-B", 3)?,
                    b.first_line("d", "INV-A", 4)?,
                    b.first_line("e", "INV-A", 5)?,
                    // The pair's boundary counts: ("d", "INV-A") is not ("dI", "NV-A").
                    b.first_line("dI", "NV-A", 6)?,
                ])
            })
            .unwrap();
        assert_eq!(got, [None, None, Some(2), None, None]);
        let later = seen.batch(|b| b.first_line("d", "INV-B", 9)).unwrap();
        assert_eq!(later, Some(3));
    }

    #[test]
    fn past_the_memory_limit_keys_go_to_sqlite_and_are_still_found() {
        let mut seen = Seen::new().unwrap();
        let n = IN_MEMORY as u64 + 1000;
        let firsts = seen
            .batch(|b| {
                (0..n)
                    .map(|i| b.first_line("d", &format!("INV-{i}"), i + 2))
                    .collect::<Result<Vec<_>>>()
            })
            .unwrap();
        assert!(firsts.iter().all(Option::is_none));
        assert_eq!(seen.memory.len(), IN_MEMORY);
        let again = seen
            .batch(|b| {
                Ok([
                    b.first_line("d", "INV-3", 1)?,
                    b.first_line("d", &format!("INV-{}", n - 1), 1)?,
                ])
            })
            .unwrap();
        assert_eq!(again, [Some(5), Some(n + 1)]);
    }
}
