//! invoice-dispatch: send myKaarma payment requests in bulk, politely and never twice.
//!
//! How a row travels:
//!
//! ```text
//! cli        flags + env + config file -> a validated Config
//! input      CSV file -> Record (a Request with parsed newtypes, or Invalid with line/column/value)
//! ledger     admits each Record in input order (duplicate? sent by an earlier run?) and
//!            records it; durably marks a Request in flight before it leaves; records outcomes
//! dispatch   rate limiter + bounded pool + retry policy -> one Outcome per Request
//! client     one HTTP call -> Attempt (answered / never connected / lost in flight)
//! results    the ledger's outcomes beside the input, in input order -> results CSV
//! run        wires the stages for `send` and `validate`; signals, progress, summary
//! simulator  the fake API, beside all of it, for rehearsals, tests and benches
//! ```

pub mod cli;
pub mod client;
pub mod dispatch;
pub mod input;
pub mod ledger;
pub mod results;
pub mod run;
pub mod simulator;

use std::io::Write;
use std::sync::Mutex;

/// The progress bar on screen, if any, so that log lines are printed above it instead of
/// through it.
static PROGRESS_BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

pub fn set_progress_bar(bar: Option<indicatif::ProgressBar>) {
    *PROGRESS_BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// stderr for tracing, suspending the progress bar while a line is written.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = PROGRESS_BAR
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
