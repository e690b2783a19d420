//! invoice-dispatch: send myKaarma payment requests in bulk, politely and never twice.
//!
//! How a row travels:
//!
//! ```text
//! cli, config  flags + env + config file -> a validated Config, one per command
//! input        CSV file -> Record (a Request with parsed newtypes, or Invalid with line/column/value);
//!              Seen finds repeats of earlier lines
//! ledger       admits each batch of records in input order (sent by an earlier run? being
//!              sent by another?) and makes the rows to send durable as intents; takes each
//!              request's leaving mark and each outcome; settles what a run left unfinished
//! dispatch     bounded pool + department gate + pacer + retry policy -> one Outcome per row
//! client       one HTTP call -> Attempt (answered / never connected / lost in flight)
//! results      the ledger's rows beside the input, in input order -> results CSV
//! run          wires the stages for `send`, `send --dry-run` and `validate`
//! look         the commands that read the ledger back: runs, history, export, resolve
//! evidence     the run's tally of requests, latencies and errors; the report and metrics
//! files        results, report and metrics replaced atomically and durably
//! domain       the words every stage shares: statuses, skips, counts, stop reasons, clock
//! window       the send window: when requests may leave, in the customers' time zone
//! simulator    the fake API, beside all of it, for rehearsals, tests and benches
//! ```

pub mod cli;
pub mod client;
pub mod config;
pub mod desk;
pub mod dispatch;
pub mod domain;
pub mod evidence;
pub mod files;
pub mod input;
pub mod interrupts;
pub mod ledger;
pub mod look;
pub mod results;
pub mod run;
pub mod screen;
pub mod simulator;
pub mod window;
