//! The terminal a person watches: one progress bar, and log lines printed above it rather
//! than through it. `main` makes one [`Screen`] and hands it to the log writer and to the
//! run; nothing global.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::run::{Event, State};

/// Where the progress bar is while one is shown.
#[derive(Clone, Default)]
pub struct Screen {
    bar: Arc<Mutex<Option<indicatif::ProgressBar>>>,
}

impl Screen {
    fn bar(&self) -> Option<indicatif::ProgressBar> {
        self.bar.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn show(&self, bar: Option<indicatif::ProgressBar>) {
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = bar;
    }
}

/// stderr for tracing, with the progress bar suspended while a line is written.
pub struct LogWriter(Screen);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Screen {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.clone())
    }
}

impl Screen {
    /// Whether a bar can be shown: stderr is a terminal.
    pub fn can_show_bar() -> bool {
        std::io::stderr().is_terminal()
    }
}

/// Shows the run's progress until it ends: on `bar` if given, else a log line every 10 s.
pub async fn show_progress(
    events: watch::Receiver<Event>,
    total: Option<u64>,
    bar: Option<Screen>,
) {
    let mut ended = events.clone();
    let show = async {
        match bar {
            Some(screen) => show_bar(events, total, screen).await,
            None => log_lines(events, total).await,
        }
    };
    tokio::select! {
        _ = show => {}
        _ = ended.wait_for(Event::is_finished) => {}
    }
}

/// What the bar and the log lines say besides the counts, when the run is not just sending.
fn state_words(state: &State) -> Option<String> {
    match state {
        State::Waiting { why } => Some(why.clone()),
        State::Paused => Some("PAUSED: no request starts until the run is resumed".into()),
        State::Stopping { why } => Some(format!(
            "stopping ({why}): finishing the requests in flight"
        )),
        _ => None,
    }
}

async fn show_bar(events: watch::Receiver<Event>, total: Option<u64>, screen: Screen) {
    let bar = indicatif::ProgressBar::with_draw_target(
        total,
        indicatif::ProgressDrawTarget::stderr_with_hz(5),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  ETA {eta}  {msg}",
        )
        .expect("valid template"),
    );
    screen.show(Some(bar.clone()));
    /// Clears the bar however the task ends (it is dropped when the run ends).
    struct Clear(indicatif::ProgressBar, Screen);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.finish_and_clear();
            self.1.show(None);
        }
    }
    let _clear = Clear(bar.clone(), screen);
    loop {
        let event = events.borrow().clone();
        bar.set_position(event.rows_done);
        bar.set_message(state_words(&event.state).unwrap_or_else(|| {
            let pace = event
                .rate_limit
                .map(|r| format!(" (pace {r:.1}/s)"))
                .unwrap_or_default();
            format!(
                "{:.0} req/s{pace}  failures: {}",
                event.requests_per_second, event.failures
            )
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn log_lines(events: watch::Receiver<Event>, total: Option<u64>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        let event = events.borrow().clone();
        if let Some(words) = state_words(&event.state) {
            tracing::info!("{words}");
            if !matches!(event.state, State::Paused) {
                continue;
            }
        }
        tracing::info!(
            done = event.rows_done,
            total = total.unwrap_or(0),
            requests = event.requests,
            failures = event.failures,
            req_per_s = (event.requests_per_second * 100.0).round() / 100.0,
            pace = event.rate_limit.map(|r| (r * 100.0).round() / 100.0),
            "progress"
        );
    }
}
