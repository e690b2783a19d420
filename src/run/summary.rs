//! What a finished run says: the one-line summary and its JSON, and the evidence it leaves
//! for people and monitoring (report, metrics, pings), the same whoever started the run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Engine;
use crate::config::{Send, Target};
use crate::dispatch::Shared;
use crate::domain::{Counts, RunId, StopReason};
use crate::evidence::metrics::{self, Pinger, RunMetrics};
use crate::evidence::{report, Snapshot};
use crate::ledger::Location;
use crate::results::Rendered;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub counts: Counts,
    /// Of the skipped rows, those an earlier run may have delivered (they need a person).
    pub skipped_unknown: u64,
    /// Of the skipped rows, those whose invoice was paid already (`--skip-paid`).
    pub already_paid: u64,
    pub requests: u64,
    pub elapsed_seconds: f64,
    pub requests_per_second: f64,
    /// Time the run spent paused by a person.
    pub paused_seconds: f64,
    /// `--rate auto`: the pace allowed at the end, and at its highest (requests/s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_final: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_peak: Option<f64>,
    pub simulation: bool,
    /// Nothing was sent: `would_send` rows would be.
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_send: Option<u64>,
    pub exit_code: u8,
    pub run: Option<String>,
    pub results: Option<PathBuf>,
    /// The sheet read, for a workbook input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    pub ledger: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Test-only environment variables this run honoured (a production run has none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub test_overrides: Vec<String>,
}

impl Summary {
    pub fn new(counts: Counts, exit_code: u8) -> Summary {
        Summary {
            rows: counts.rows(),
            skipped_unknown: counts.skipped_unknown,
            already_paid: counts.already_paid,
            counts,
            requests: 0,
            elapsed_seconds: 0.0,
            requests_per_second: 0.0,
            paused_seconds: 0.0,
            rate_final: None,
            rate_peak: None,
            simulation: false,
            dry_run: false,
            would_send: None,
            exit_code,
            run: None,
            results: None,
            sheet: None,
            ledger: None,
            stopped: None,
            test_overrides: crate::domain::test_overrides(),
        }
    }

    /// The one-line summary that ends stderr.
    pub fn line(&self) -> String {
        let mut line = match self.would_send {
            Some(n) => {
                let mut counts = self.counts.describe();
                if n > 0 {
                    counts = if self.counts.rows() == 0 {
                        format!("{n} would be sent")
                    } else {
                        format!("{counts}, {n} would be sent")
                    };
                }
                format!("DRY RUN (nothing sent): {} rows: {counts}", self.rows)
            }
            None => format!(
                "{}{} rows: {}; {} requests in {:.1}s ({:.1} req/s)",
                if self.simulation {
                    "SIMULATION (nothing sent to myKaarma): "
                } else {
                    ""
                },
                self.rows,
                self.counts.describe(),
                self.requests,
                self.elapsed_seconds,
                self.requests_per_second
            ),
        };
        if let Some(sheet) = &self.sheet {
            line = format!("sheet {sheet:?}: {line}");
        }
        if self.paused_seconds > 0.0 {
            line.push_str(&format!("; paused {:.1}s", self.paused_seconds));
        }
        if let Some(stopped) = &self.stopped {
            line.push_str(&format!("; STOPPED: {stopped}"));
        }
        if let Some(results) = &self.results {
            line.push_str(&format!("; results: {}", results.display()));
        }
        line.push_str(&format!("; exit {}", self.exit_code));
        line
    }

    pub fn write_json(&self, path: Option<&Path>) -> Result<()> {
        if let Some(path) = path {
            let json = serde_json::to_vec_pretty(self)?;
            std::fs::write(path, json)
                .with_context(|| format!("cannot write the summary to {}", path.display()))?;
        }
        Ok(())
    }

    /// A finished send's summary.
    pub(super) fn of_send(
        config: &Send,
        rendered: &Rendered,
        shared: &Shared,
        started: Instant,
        (stop, code, run): (Option<StopReason>, u8, RunId),
    ) -> Summary {
        let progress = &shared.progress;
        let mut summary = Summary::new(rendered.counts.clone(), code);
        summary.requests = progress.requests();
        summary.elapsed_seconds = round2(started.elapsed().as_secs_f64());
        summary.requests_per_second = round2(progress.requests_per_second());
        summary.paused_seconds = round2(shared.pause.paused_for().as_secs_f64());
        if let Some((now, peak)) = shared.pace.read() {
            (summary.rate_final, summary.rate_peak) = (Some(round2(now)), Some(round2(peak)));
        }
        summary.simulation = config.target == Target::Simulator;
        summary.run = Some(run.to_string());
        summary.results = Some(config.out.clone());
        summary.ledger = match &config.ledger {
            Location::Throwaway => None,
            other => Some(other.describe()),
        };
        summary.stopped = stop.as_ref().map(StopReason::describe);
        summary
    }
}

/// The Summary sheet of a results workbook, given the counts the results add up to.
pub(super) fn about(
    config: &Send,
    run: RunId,
    (started, now): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    stop: Option<StopReason>,
) -> impl Fn(&Counts) -> Vec<(String, String)> {
    let target = match &config.target {
        Target::Simulator => format!(
            "built-in simulator ({}): nothing reached myKaarma",
            config.client.base_url
        ),
        Target::Url(url) => url.clone(),
    };
    let ledger = config.ledger.describe();
    let ms = (now - started).num_milliseconds().max(0) as u64;
    let took = humantime::format_duration(std::time::Duration::from_millis(ms));
    let mut head = vec![
        ("run".to_string(), run.to_string()),
        ("target".into(), target),
        ("started".into(), crate::domain::rfc3339(started)),
        ("duration".into(), took.to_string()),
    ];
    if let Some(stop) = &stop {
        head.push(("stopped".into(), stop.describe()));
    }
    move |counts: &Counts| {
        let mut lines = head.clone();
        for status in crate::domain::Status::ALL {
            lines.push((status.as_str().to_string(), counts.get(status).to_string()));
        }
        let code = crate::domain::exit_code(counts, stop.as_ref());
        lines.push(("exit code".into(), code.to_string()));
        lines.push(("ledger".into(), ledger.clone()));
        lines.push(("version".into(), env!("CARGO_PKG_VERSION").to_string()));
        lines
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A warning for monitoring that failed: it never changes the run's outcome.
pub(super) fn warn_on(result: Result<()>) {
    if let Err(e) = result {
        tracing::warn!("{e:#}");
    }
}

/// What the run leaves for people and monitoring once its results are written.
pub(super) struct Evidence<'a> {
    pub config: &'a Send,
    pub summary: &'a Summary,
    pub rendered: &'a Rendered,
    pub tally: Snapshot,
    pub started: chrono::DateTime<chrono::Utc>,
}

impl Evidence<'_> {
    pub fn leave(&self, engine: &Engine, pinger: Option<&Pinger>) {
        let e = &self.config.evidence;
        if let Some(path) = &e.report {
            let started = Instant::now();
            match report::write(path, &self.facts()) {
                Ok(bytes) => tracing::info!(
                    kib = bytes / 1024,
                    ms = started.elapsed().as_millis() as u64,
                    "report: {}",
                    path.display()
                ),
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        let metrics = RunMetrics {
            counts: &self.summary.counts,
            by_code: &self.tally.by_code,
            duration_seconds: self.summary.elapsed_seconds,
            exit_code: self.summary.exit_code,
            finished: engine.shared.clock.now(),
            rate_limit: self.summary.rate_final,
        };
        if let Some(path) = &e.metrics_file {
            warn_on(metrics::write_file(path, &metrics));
        }
        if let Some(gateway) = &e.pushgateway {
            warn_on(
                engine
                    .runtime
                    .block_on(metrics::push(gateway, &e.instance, &metrics)),
            );
        }
        if let Some(pinger) = pinger {
            let line = self.summary.line();
            warn_on(
                engine
                    .runtime
                    .block_on(pinger.finish(self.summary.exit_code, &line)),
            );
        }
    }

    fn facts(&self) -> report::Facts<'_> {
        let (c, s) = (self.config, self.summary);
        let d = &c.dispatch;
        let settings = vec![
            (
                "target",
                match &c.target {
                    Target::Simulator => format!("built-in simulator ({})", c.client.base_url),
                    Target::Url(url) => url.clone(),
                },
            ),
            (
                "rate",
                match (d.auto, s.rate_final, s.rate_peak) {
                    (Some(a), Some(end), Some(peak)) => format!(
                        "auto: started at {:.1}, ended at {end:.1}, highest {peak:.1} per second (bounds {}-{})",
                        a.remembered.unwrap_or(a.start), a.min, a.max
                    ),
                    _ => format!("{} per second (0: unlimited), burst {}", d.rate, d.burst),
                },
            ),
            ("concurrency", d.concurrency.to_string()),
            ("attempts per row", d.max_attempts.to_string()),
            ("ambiguous answers retried", d.retry_ambiguous.to_string()),
            ("ledger", c.ledger.describe()),
            (
                "dedupe window",
                humantime::format_duration(c.policy.dedupe_window).to_string(),
            ),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ];
        report::Facts {
            run: s.run.clone(),
            started: self.started,
            input: &c.input.path,
            results: &c.out,
            exit_code: s.exit_code,
            stopped: s.stopped.clone(),
            simulation: s.simulation,
            counts: &s.counts,
            requests: s.requests,
            elapsed_seconds: s.elapsed_seconds,
            requests_per_second: s.requests_per_second,
            paused_seconds: s.paused_seconds,
            test_overrides: &s.test_overrides,
            tally: &self.tally,
            attention: &self.rendered.attention,
            attention_total: self.rendered.attention_total,
            settings,
        }
    }
}
