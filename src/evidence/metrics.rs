//! Metrics for the monitoring people already run (SPEC section 11): a Prometheus text file
//! for node_exporter's textfile collector, a push to a Pushgateway, and healthchecks-style
//! pings. None of them ever changes the run's exit code: a failure is a warning.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};

use crate::domain::Counts;
use crate::files::replace_atomically;

const LAST_SUCCESS: &str = "invoice_dispatch_last_success_timestamp_seconds";
/// Pushes and pings wait this long at most: monitoring must not hold a run up.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What a run reports to monitoring.
pub struct RunMetrics<'a> {
    pub counts: &'a Counts,
    /// Requests by HTTP status (`"none"`: no answer).
    pub by_code: &'a BTreeMap<String, u64>,
    pub duration_seconds: f64,
    pub exit_code: u8,
    pub finished: DateTime<Utc>,
    /// The auto pace at the end, requests per second (`--rate auto`).
    pub rate_limit: Option<f64>,
}

impl RunMetrics<'_> {
    fn succeeded(&self) -> bool {
        self.exit_code == 0
    }

    /// The Prometheus text format. `last_success`: when a run last succeeded, if one ever did
    /// (this one, or an earlier one when this one did not).
    pub fn text(&self, last_success: Option<f64>) -> String {
        let mut out = String::new();
        let mut family = |name: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let rows = self
            .counts
            .iter()
            .map(|(s, n)| (format!("{{status=\"{s}\"}}"), n.to_string()))
            .collect();
        family(
            "invoice_dispatch_rows",
            "Rows of the last run, by final status.",
            rows,
        );
        let codes = self
            .by_code
            .iter()
            .map(|(code, n)| {
                (
                    format!("{{code=\"{}\"}}", escape_label(code)),
                    n.to_string(),
                )
            })
            .collect();
        family(
            "invoice_dispatch_requests",
            "HTTP requests of the last run, by answer status (\"none\": no answer).",
            codes,
        );
        let plain = |v: String| vec![(String::new(), v)];
        family(
            "invoice_dispatch_duration_seconds",
            "How long the last run took.",
            plain(format!("{:.3}", self.duration_seconds)),
        );
        if let Some(rate) = self.rate_limit {
            family(
                "invoice_dispatch_rate_limit",
                "The pace --rate auto allowed at the end of the last run, requests per second.",
                plain(format!("{rate:.3}")),
            );
        }
        family(
            "invoice_dispatch_exit_code",
            "The last run's exit code.",
            plain(self.exit_code.to_string()),
        );
        let finished = self.finished.timestamp_millis() as f64 / 1000.0;
        family(
            "invoice_dispatch_last_run_timestamp_seconds",
            "When the last run ended.",
            plain(format!("{finished:.3}")),
        );
        if let Some(t) = last_success {
            family(
                LAST_SUCCESS,
                "When a run last ended with exit code 0.",
                plain(format!("{t:.3}")),
            );
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes the metrics file for node_exporter's textfile collector, replaced atomically (a
/// scrape never reads half a file). When this run did not succeed, the last success is
/// carried over from the file it replaces.
pub fn write_file(path: &Path, m: &RunMetrics) -> Result<()> {
    let last_success = if m.succeeded() {
        Some(m.finished.timestamp_millis() as f64 / 1000.0)
    } else {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|old| previous_success(&old))
    };
    let text = m.text(last_success);
    // The collector runs as another user: the file must be readable by it.
    replace_atomically(path, "the metrics file", 0o644, |file| {
        Ok(file.write_all(text.as_bytes())?)
    })
}

fn previous_success(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(LAST_SUCCESS)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn http() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .user_agent(concat!("invoice-dispatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the HTTP client")
}

/// Checks a monitoring URL before the run starts (never echoing it: it may hold a secret).
pub fn check_url(what: &str, raw: &str) -> Result<reqwest::Url> {
    let Ok(url) = reqwest::Url::parse(raw.trim()) else {
        bail!("{what} is not a URL");
    };
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        bail!("{what} must be an http:// or https:// URL");
    }
    Ok(url)
}

/// Pushes the metrics to a Pushgateway (job `invoice_dispatch`, instance `instance`). A POST
/// replaces only the metrics it carries, so a run that did not succeed leaves the group's
/// last success as it was.
pub async fn push(gateway: &reqwest::Url, instance: &str, m: &RunMetrics<'_>) -> Result<()> {
    let mut url = gateway.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("the Pushgateway URL cannot take a path"))?
        .pop_if_empty()
        .extend(["metrics", "job", "invoice_dispatch", "instance", instance]);
    let last_success = m
        .succeeded()
        .then(|| m.finished.timestamp_millis() as f64 / 1000.0);
    let response = http()?
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(m.text(last_success))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot push the metrics: {}", e.without_url()))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        bail!("the Pushgateway answered {status}: {}", body.trim());
    }
    Ok(())
}

/// Healthchecks-style pings: `URL/start` when sending starts, then `URL` (exit 0) or
/// `URL/<exit code>`, with the summary line as the body. The URL may carry a secret, so no
/// message ever shows it.
pub struct Pinger {
    url: reqwest::Url,
}

impl Pinger {
    pub fn new(url: reqwest::Url) -> Pinger {
        Pinger { url }
    }

    pub async fn start(&self) -> Result<()> {
        self.ping("start", String::new()).await
    }

    pub async fn finish(&self, exit_code: u8, summary: &str) -> Result<()> {
        let code = if exit_code == 0 {
            String::new()
        } else {
            exit_code.to_string()
        };
        self.ping(&code, summary.to_string()).await
    }

    async fn ping(&self, last: &str, body: String) -> Result<()> {
        let mut url = self.url.clone();
        if !last.is_empty() {
            url.path_segments_mut()
                .map_err(|()| anyhow::anyhow!("the ping URL cannot take a path"))?
                .pop_if_empty()
                .push(last);
        }
        let response = http()?.post(url).body(body).send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot ping (the ping URL is not shown): {}",
                e.without_url()
            )
        })?;
        if !response.status().is_success() {
            bail!(
                "the ping URL answered {} (the URL is not shown)",
                response.status()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    #[test]
    fn a_failed_run_keeps_the_last_success_of_the_file_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invoice_dispatch.prom");
        let mut counts = Counts::default();
        counts.add(Status::Sent, None);
        let codes = BTreeMap::from([("200".to_string(), 1)]);
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let run = |exit_code, finished| RunMetrics {
            counts: &counts,
            by_code: &codes,
            duration_seconds: 1.5,
            exit_code,
            finished,
            rate_limit: Some(37.5),
        };
        write_file(&path, &run(0, at(1_000))).unwrap();
        write_file(&path, &run(2, at(2_000))).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("invoice_dispatch_last_success_timestamp_seconds 1000.000\n"),
            "{text}"
        );
        assert!(
            text.contains("invoice_dispatch_last_run_timestamp_seconds 2000.000\n"),
            "{text}"
        );
        assert!(text.contains("invoice_dispatch_exit_code 2\n"), "{text}");
        assert!(
            text.contains("invoice_dispatch_rows{status=\"sent\"} 1\n"),
            "{text}"
        );
        // A first run that fails has no last success at all.
        std::fs::remove_file(&path).unwrap();
        write_file(&path, &run(3, at(3_000))).unwrap();
        assert!(!std::fs::read_to_string(&path)
            .unwrap()
            .contains(LAST_SUCCESS));
    }

    #[test]
    fn monitoring_urls_are_checked_without_being_echoed() {
        let err = check_url("--ping-url", "hc-ping.com/secret-uuid")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret-uuid"), "{err}");
        assert!(check_url("--ping-url", "ftp://x/secret").is_err());
        assert!(check_url("--ping-url", "https://hc-ping.com/uuid").is_ok());
    }
}
