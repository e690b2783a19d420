//! What a person (or a service manager) does to say "stop": SIGINT and SIGTERM on Unix;
//! Ctrl-C, Ctrl-Break and closing the console window on Windows. `send`, `simulate` and
//! the desk watch the same set, so all stop the same way on each platform.
//!
//! On Windows closing the console is final: the system ends the process about five
//! seconds after it is told, whatever the handler does. Tokio's handler never returns for
//! it, so those seconds are ours: the run stops starting requests and writes what it can;
//! whatever it does not finish, the ledger's intents and leaving marks keep safe for the
//! rerun, as after any kill.

use anyhow::{Context, Result};

/// The interrupts this platform delivers, registered (so none is missed from the moment
/// this exists). Must be made inside a Tokio runtime with I/O enabled.
pub struct Interrupts {
    #[cfg(unix)]
    signals: [tokio::signal::unix::Signal; 2],
    #[cfg(windows)]
    console: (
        tokio::signal::windows::CtrlC,
        tokio::signal::windows::CtrlBreak,
        tokio::signal::windows::CtrlClose,
    ),
}

impl Interrupts {
    #[cfg(unix)]
    pub fn watch() -> Result<Interrupts> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Interrupts {
            signals: [
                signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
                signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            ],
        })
    }

    #[cfg(windows)]
    pub fn watch() -> Result<Interrupts> {
        use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};
        Ok(Interrupts {
            console: (
                ctrl_c().context("cannot watch Ctrl-C")?,
                ctrl_break().context("cannot watch Ctrl-Break")?,
                ctrl_close().context("cannot watch the console closing")?,
            ),
        })
    }

    /// Waits for the next interrupt, of whichever kind.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            let [int, term] = &mut self.signals;
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        }
        #[cfg(windows)]
        {
            let (c, brk, close) = &mut self.console;
            tokio::select! { _ = c.recv() => {}, _ = brk.recv() => {}, _ = close.recv() => {} }
        }
    }
}

/// A line on stderr that may find no one: closing the console window is an interrupt too,
/// writing to what it left may fail, and `eprintln!` panics when a write fails.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
