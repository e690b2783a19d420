//! Copying the write-ahead log into the database while a run writes.

use super::*;

/// Checkpoints the log on a thread and connection of its own while a run writes. On the
/// writer's connection a checkpoint (every 1,000 pages by default) copied pages and
/// flushed two files while admissions waited behind it; here it overlaps them. The writer
/// still flushes the log itself whenever a commit holds intents.
pub(super) struct Checkpointer {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the checkpointer copies what the log holds.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

impl Checkpointer {
    pub(super) fn spawn(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path).context("cannot open the ledger for checkpoints")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // A checkpoint copies log frames into the file page by page and keeps none of them:
        // the default 2 MB cache would only hold pages no one reads again.
        conn.execute_batch("PRAGMA cache_size = -64")?;
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || loop {
                let (flag, wake) = &*stopping;
                let guard = flag.lock().unwrap();
                let (stopped, _) = wake
                    .wait_timeout_while(guard, CHECKPOINT_EVERY, |stopped| !*stopped)
                    .unwrap();
                if *stopped {
                    return;
                }
                drop(stopped);
                // One that cannot finish now (the writer is busy) is taken up next time.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            })
            .context("cannot start the ledger's checkpoint thread")?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    pub(super) fn signal(&self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap() = true;
        wake.notify_one();
    }

    /// Stops it once its checkpoint in progress, if any, is done.
    pub(super) fn stop(mut self) {
        self.signal();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal();
    }
}
