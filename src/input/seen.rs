//! Duplicates within one input (SPEC section 3): the first line of each (department,
//! invoice). The first [`IN_MEMORY`] keys are kept in a hash map; past them, in a
//! temporary SQLite file, so that memory stops growing however long the input is.
//!
//! Each key is stored as two 64-bit fingerprints: the first is the key (8 bytes keep about
//! 100,000 rows in SQLite's default 2 MB cache even though invoice ids arrive in random
//! order), the second tells two keys that share the first apart. Such a pair (about one run
//! in 10^9 at 100,000 rows) sends the later key to a table of exact keys.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// Keys kept in memory before the rest go to SQLite: about 5 MB, and most inputs fit.
const IN_MEMORY: usize = 250_000;

pub struct Seen {
    /// fingerprint -> (check fingerprint, first line).
    memory: HashMap<i64, (i64, u64)>,
    conn: Connection,
}

impl Seen {
    pub fn new() -> Result<Seen> {
        // An empty path is SQLite's private temporary file: deleted on close, and it spills
        // to disk only past its cache.
        let conn = Connection::open("").context("cannot create a temporary file for duplicates")?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             CREATE TABLE seen (fingerprint INTEGER PRIMARY KEY, check_print INTEGER NOT NULL,
                                line INTEGER NOT NULL);
             CREATE TABLE exact (dept TEXT NOT NULL, invoice TEXT NOT NULL, line INTEGER NOT NULL,
                                 PRIMARY KEY (dept, invoice)) WITHOUT ROWID;",
        )?;
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
    memory: &'a mut HashMap<i64, (i64, u64)>,
    tx: &'a Connection,
    /// A transaction was begun for this batch.
    began: bool,
}

impl Batch<'_> {
    /// The line of the first row with this department and invoice, if the row is not the
    /// first; otherwise the row becomes the first.
    pub fn first_line(&mut self, dept: &str, invoice: &str, line: u64) -> Result<Option<u64>> {
        let (print, check) = (fingerprint(0, dept, invoice), fingerprint(1, dept, invoice));
        match self.memory.get(&print) {
            Some((c, first)) if *c == check => return Ok(Some(*first)),
            Some(_) => return self.exact(dept, invoice, line),
            None if self.memory.len() < IN_MEMORY => {
                // Not in memory, and memory not yet full: nothing went to SQLite either.
                self.memory.insert(print, (check, line));
                return Ok(None);
            }
            None => {}
        }
        self.begin()?;
        let earlier: Option<(i64, i64)> = self
            .tx
            .prepare_cached("SELECT check_print, line FROM seen WHERE fingerprint = ?1")?
            .query_row(params![print], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match earlier {
            None => {
                self.tx
                    .prepare_cached(
                        "INSERT INTO seen (fingerprint, check_print, line) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![print, check, line as i64])?;
                Ok(None)
            }
            Some((c, first)) if c == check => Ok(Some(first as u64)),
            Some(_) => self.exact(dept, invoice, line),
        }
    }

    /// Begins the batch's transaction, the first time SQLite is used in it.
    fn begin(&mut self) -> Result<()> {
        if !self.began {
            self.tx.execute_batch("BEGIN")?;
            self.began = true;
        }
        Ok(())
    }

    fn exact(&mut self, dept: &str, invoice: &str, line: u64) -> Result<Option<u64>> {
        self.begin()?;
        let first: Option<i64> = self
            .tx
            .prepare_cached("SELECT line FROM exact WHERE dept = ?1 AND invoice = ?2")?
            .query_row(params![dept, invoice], |r| r.get(0))
            .optional()?;
        if first.is_none() {
            self.tx
                .prepare_cached("INSERT INTO exact (dept, invoice, line) VALUES (?1, ?2, ?3)")?
                .execute(params![dept, invoice, line as i64])?;
        }
        Ok(first.map(|l| l as u64))
    }
}

/// Stable within a process, which is as long as the table lives.
fn fingerprint(seed: u8, dept: &str, invoice: &str) -> i64 {
    let mut h = std::hash::DefaultHasher::new();
    (seed, dept, invoice).hash(&mut h);
    h.finish() as i64
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
                ])
            })
            .unwrap();
        assert_eq!(got, [None, None, Some(2), None]);
        let later = seen.batch(|b| b.first_line("d", "INV-B", 9)).unwrap();
        assert_eq!(later, Some(3));
    }

    #[test]
    fn two_keys_sharing_a_fingerprint_are_not_duplicates_of_each_other() {
        // Force the collision: INV-B's fingerprint slot already belongs to INV-A (line 2),
        // in memory and, once memory is full, in SQLite.
        let (print, other) = (fingerprint(0, "d", "INV-B"), fingerprint(1, "d", "INV-A"));
        let mut in_memory = Seen::new().unwrap();
        in_memory.memory.insert(print, (other, 2));
        let mut spilled = Seen::new().unwrap();
        spilled
            .conn
            .execute(
                "INSERT INTO seen (fingerprint, check_print, line) VALUES (?1, ?2, 2)",
                params![print, other],
            )
            .unwrap();
        spilled
            .memory
            .extend((0..IN_MEMORY as i64).map(|i| (i * 7 + 1, (0, 0))));
        for mut seen in [in_memory, spilled] {
            let got = seen
                .batch(|b| {
                    Ok([
                        b.first_line("d", "INV-B", 3)?,
                        b.first_line("d", "INV-B", 4)?,
                    ])
                })
                .unwrap();
            assert_eq!(got, [None, Some(3)]);
        }
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
