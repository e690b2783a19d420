//! The run's HTML report (SPEC section 11): one self-contained file a person opens the
//! morning after. Charts are inline SVG drawn here; a Content-Security-Policy forbids the
//! page to load anything at all. Every value from the input or the API goes through maud,
//! which escapes it: a `<script>` in a cell is shown as text.

use std::path::Path;

use anyhow::Result;
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::{AttentionRow, Kind, Snapshot};
use crate::domain::{rfc3339, Counts, Status};
use crate::files::replace_atomically;

/// What the report shows.
pub struct Facts<'a> {
    pub run: Option<String>,
    pub started: DateTime<Utc>,
    pub input: &'a Path,
    pub results: &'a Path,
    pub exit_code: u8,
    pub stopped: Option<String>,
    pub simulation: bool,
    pub counts: &'a Counts,
    pub requests: u64,
    pub elapsed_seconds: f64,
    pub requests_per_second: f64,
    pub paused_seconds: f64,
    /// Test-only environment variables the run honoured: shown as a banner.
    pub test_overrides: &'a [String],
    pub tally: &'a Snapshot,
    pub attention: &'a [AttentionRow],
    pub attention_total: u64,
    /// The run's settings, in order: target, rate, burst, ...
    pub settings: Vec<(&'static str, String)>,
}

/// Writes the report to `path`, replacing it atomically; its size in bytes.
pub fn write(path: &Path, facts: &Facts) -> Result<usize> {
    let page = render(facts).into_string();
    replace_atomically(path, "the report", 0o600, |file| {
        Ok(file.write_all(page.as_bytes())?)
    })?;
    Ok(page.len())
}

/// The verdict in words, and its tone (`ok`, `attention` or `stopped`).
pub fn verdict(exit_code: u8, counts: &Counts, stopped: Option<&str>) -> (String, &'static str) {
    let attention = counts
        .iter()
        .filter(|(s, _)| s.needs_person())
        .map(|(_, n)| n)
        .sum::<u64>()
        + counts.skipped_unknown;
    match exit_code {
        0 => ("Every row was sent, or needed nothing.".into(), "ok"),
        2 if stopped.is_some() => (
            format!(
                "Stopped: {}. {attention} row(s) need a person or a later run.",
                stopped.unwrap_or_default()
            ),
            "attention",
        ),
        2 => (
            format!("Finished; {attention} row(s) need a person."),
            "attention",
        ),
        3 => (
            format!(
                "Stopped early by a circuit breaker: {}. The rows after it were not sent.",
                stopped.unwrap_or("a breaker tripped")
            ),
            "stopped",
        ),
        130 => (
            "Interrupted. Rows not started were not sent; run the same command again to resume."
                .into(),
            "stopped",
        ),
        _ => ("The run failed.".into(), "stopped"),
    }
}

fn render(f: &Facts) -> Markup {
    let (verdict, tone) = verdict(f.exit_code, f.counts, f.stopped.as_deref());
    let name = |p: &Path| {
        p.file_name().map_or(p.display().to_string(), |n| {
            n.to_string_lossy().into_owned()
        })
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:";
                title { "invoice-dispatch: " (name(f.input)) " — exit " (f.exit_code) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                main {
                    header class={"verdict " (tone)} {
                        @if f.simulation { p class="badge" { "SIMULATION — nothing was sent to myKaarma" } }
                        @if !f.test_overrides.is_empty() {
                            p class="badge" { "TEST OVERRIDES were set — this run is not one to trust in production: " (f.test_overrides.join(", ")) }
                        }
                        h1 { (verdict) }
                        p class="meta" {
                            "Exit code " strong { (f.exit_code) }
                            @if let Some(run) = &f.run { " · run " strong { (run) } }
                            " · started " (rfc3339(f.started))
                            @if f.paused_seconds > 0.0 { " · paused " (format!("{:.1}", f.paused_seconds)) " s" }
                            " · " (name(f.input)) " → " (name(f.results))
                        }
                    }
                    (rows_section(f.counts))
                    (requests_section(f))
                    (troubles_section(f.tally))
                    (attention_section(f))
                    (settings_section(f))
                    footer { "invoice-dispatch " (env!("CARGO_PKG_VERSION")) " · results: " code { (f.results.display()) } }
                }
            }
        }
    }
}

const STYLE: &str = "
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;background:#f4f5f7}
main{max-width:1100px;margin:0 auto;padding:16px}
section,header{background:#fff;border-radius:10px;padding:16px 18px;margin:0 0 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
h1{font-size:1.35em;margin:.2em 0}
h2{font-size:1.05em;margin:0 0 .6em}
.verdict{border-left:8px solid #2e7d32}
.verdict.attention{border-left-color:#ef6c00}
.verdict.stopped{border-left-color:#c62828}
.meta{color:#555;margin:.2em 0;overflow-wrap:anywhere}
.badge{display:inline-block;background:#1565c0;color:#fff;border-radius:4px;padding:2px 8px;font-weight:600;margin:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e4e6ea;vertical-align:top}
th{font-weight:600;color:#444;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th.n{text-align:right}
td.msg{min-width:16em;overflow-wrap:anywhere}
td.id{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em;overflow-wrap:anywhere}
td.st{white-space:nowrap}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em;vertical-align:-.05em}
svg{width:100%;height:auto;display:block}
.legend{color:#555;font-size:.9em;margin:.4em 0 0}
.legend span{margin-right:1.2em;white-space:nowrap}
.axis{display:flex;justify-content:space-between;color:#777;font-size:.85em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
footer{color:#777;font-size:.85em;padding:4px 2px;overflow-wrap:anywhere}
.more{color:#555;margin:.6em 0 0}
@media (max-width:600px){main{padding:8px}section,header{padding:12px}th,td{padding:4px 5px}body{font-size:14px}
table.cards tr:first-child{display:none}
table.cards tr{display:block;border-bottom:1px solid #d5d8dd;padding:6px 0}
table.cards td{display:flex;gap:.6em;border:0;padding:2px 0;min-width:0;text-align:left}
table.cards td::before{content:attr(data-label);flex:0 0 6.5em;color:#666;font-family:system-ui,sans-serif;font-size:.9em}}
";

pub fn colour(status: Status) -> &'static str {
    match status {
        Status::Sent => "#2e7d32",
        Status::Partial => "#f9a825",
        Status::Failed => "#c62828",
        Status::Unknown => "#6a1b9a",
        Status::Invalid => "#8d6e63",
        Status::Duplicate => "#b0bec5",
        Status::Skipped => "#1e88e5",
        Status::NotSent => "#546e7a",
    }
}

fn rows_section(counts: &Counts) -> Markup {
    let total = counts.rows().max(1) as f64;
    // Each status's stretch of the bar: (status, rows, start, width), out of 1000.
    let mut x = 0.0;
    let stretches: Vec<(Status, u64, f64, f64)> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(status, n)| {
            let w = n as f64 / total * 1000.0;
            x += w;
            (status, n, x - w, w)
        })
        .collect();
    html! {
        section {
            h2 { "Rows: " (counts.rows()) }
            svg viewBox="0 0 1000 28" preserveAspectRatio="none" role="img" aria-label="rows by status" {
                @for (status, n, x, w) in &stretches {
                    rect x=(format!("{x:.1}")) y="0" width=(format!("{w:.1}")) height="28" fill=(colour(*status)) {
                        title { (status) ": " (n) }
                    }
                }
            }
            div class="scroll" {
                table {
                    tr { th { "status" } th class="n" { "rows" } th class="n" { "share" } }
                    @for (status, n) in counts.iter() {
                        tr {
                            td { span class="swatch" style=(format!("background:{}", colour(status))) {} (status) }
                            td class="n" { (n) }
                            td class="n" { (format!("{:.1}%", n as f64 / total * 100.0)) }
                        }
                    }
                    @if counts.skipped_unknown > 0 {
                        tr { td { "of them skipped: an earlier run may have delivered them" } td class="n" { (counts.skipped_unknown) } td {} }
                    }
                    @if counts.already_paid > 0 {
                        tr { td { "of them skipped: already paid" } td class="n" { (counts.already_paid) } td {} }
                    }
                }
            }
        }
    }
}

fn requests_section(f: &Facts) -> Markup {
    let t = f.tally;
    html! {
        section {
            h2 { "Requests: " (f.requests) " in " (format!("{:.1}", f.elapsed_seconds)) " s (" (format!("{:.1}", f.requests_per_second)) " per second)" }
            @if t.buckets.is_empty() {
                p { "No request was made." }
            } @else {
                (requests_chart(t))
                div class="axis" { span { "0 s" } span { (t.buckets.len() as u64 * t.bucket_secs) " s" } }
                p class="legend" {
                    span { span class="swatch" style="background:#90a4ae" {} "requests per second" }
                    span { span class="swatch" style="background:#ef6c00" {} "429 (slow down)" }
                    span { span class="swatch" style="background:#c62828" {} "5xx" }
                    @if t.buckets.iter().any(|b| b.pace > 0.0) {
                        span { span class="swatch" style="background:#1565c0" {} "the auto pace (rate allowed)" }
                    }
                }
            }
            @if !t.latency_ms.is_empty() {
                h2 { "Latency" }
                div class="scroll" {
                    table {
                        tr { @for (name, _) in &t.latency_ms { th class="n" { (name) } } }
                        tr { @for (_, ms) in &t.latency_ms { td class="n" { (format!("{ms:.1} ms")) } } }
                    }
                }
            }
        }
    }
}

fn requests_chart(t: &Snapshot) -> Markup {
    let (w, h) = (1000.0, 160.0);
    let n = t.buckets.len().max(1) as f64;
    let peak = t
        .buckets
        .iter()
        .map(|b| b.requests)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let bar = w / n;
    let y = |v: u64| v as f64 / peak * h;
    html! {
        svg viewBox=(format!("0 0 {w} {h}")) preserveAspectRatio="none" role="img" aria-label="requests over time" {
            @for (i, b) in t.buckets.iter().enumerate() {
                @let x = i as f64 * bar;
                @let ok = b.requests.saturating_sub(b.throttled + b.server_errors);
                rect x=(format!("{x:.2}")) y=(format!("{:.2}", h - y(b.requests))) width=(format!("{:.2}", bar.max(0.5))) height=(format!("{:.2}", y(ok))) fill="#90a4ae" {
                    title { (i as u64 * t.bucket_secs) " s: " (b.requests) " requests, " (b.throttled) " × 429, " (b.server_errors) " × 5xx" }
                }
                @if b.throttled > 0 {
                    rect x=(format!("{x:.2}")) y=(format!("{:.2}", h - y(b.throttled + b.server_errors))) width=(format!("{:.2}", bar.max(0.5))) height=(format!("{:.2}", y(b.throttled))) fill="#ef6c00" {}
                }
                @if b.server_errors > 0 {
                    rect x=(format!("{x:.2}")) y=(format!("{:.2}", h - y(b.server_errors))) width=(format!("{:.2}", bar.max(0.5))) height=(format!("{:.2}", y(b.server_errors))) fill="#c62828" {}
                }
            }
            @if t.buckets.iter().any(|b| b.pace > 0.0) {
                // The auto pace, on the same scale: requests per bucket it allowed.
                @let points = t.buckets.iter().enumerate().map(|(i, b)| {
                    let allowed = (b.pace * t.bucket_secs as f64 / peak * h).min(h);
                    format!("{:.2},{:.2}", (i as f64 + 0.5) * bar, h - allowed)
                }).collect::<Vec<_>>().join(" ");
                polyline points=(points) fill="none" stroke="#1565c0" stroke-width="2" vector-effect="non-scaling-stroke" {}
            }
        }
        p class="legend" { "peak " (format!("{:.1}", peak / t.bucket_secs as f64)) " requests per second; each bar is " (t.bucket_secs) " s" }
    }
}

fn troubles_section(t: &Snapshot) -> Markup {
    html! {
        section {
            h2 { "Errors and warnings" }
            @if t.groups.is_empty() {
                p { "None." }
            } @else {
                div class="scroll" {
                    table class="cards" {
                        tr { th { "kind" } th { "code" } th class="n" { "times" } th { "first lines" } th { "first message" } }
                        @for (kind, key, g) in &t.groups {
                            tr {
                                td data-label="kind" { (match kind { Kind::Error => "API error", Kind::Warning => "API warning", Kind::Transport => "no usable answer" }) }
                                td data-label="code" { (key) }
                                td class="n" data-label="times" { (g.count) }
                                td data-label="first lines" { (g.lines.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")) }
                                td class="msg" data-label="message" { (g.example) }
                            }
                        }
                    }
                }
                @if t.other_groups > 0 {
                    p class="more" { (t.other_groups) " more of kinds not listed (the results CSV has every row's errors)" }
                }
            }
        }
    }
}

fn attention_section(f: &Facts) -> Markup {
    html! {
        section {
            h2 { "Rows that need a person: " (f.attention_total) }
            @if f.attention.is_empty() {
                p { "None." }
            } @else {
                div class="scroll" {
                    table class="cards" {
                        tr { th class="n" { "line" } th { "department" } th { "invoice" } th { "status" } th { "why" } }
                        @for r in f.attention {
                            tr {
                                td class="n" data-label="line" { (r.line) }
                                td class="id" data-label="department" { (r.department) }
                                td class="id" data-label="invoice" { (r.invoice) }
                                td class="st" data-label="status" { span class="swatch" style=(format!("background:{}", colour(r.status))) {} (r.status) }
                                td class="msg" data-label="why" {
                                    (r.message)
                                    @if !r.errors.is_empty() { " — " (r.errors) }
                                }
                            }
                        }
                    }
                }
                @let more = f.attention_total.saturating_sub(f.attention.len() as u64);
                @if more > 0 {
                    p class="more" { (more) " more in the results CSV: " code { (f.results.display()) } }
                }
            }
        }
    }
}

fn settings_section(f: &Facts) -> Markup {
    html! {
        section {
            h2 { "Settings" }
            dl {
                @for (key, value) in &f.settings {
                    dt { (key) }
                    dd { (value) }
                }
                dt { "input" } dd { (f.input.display()) }
                dt { "results" } dd { (f.results.display()) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Answer, ApiMessage, Attempt};
    use crate::evidence::Tally;

    fn facts<'a>(counts: &'a Counts, tally: &'a Snapshot, rows: &'a [AttentionRow]) -> Facts<'a> {
        Facts {
            run: Some("r7".into()),
            started: Utc::now(),
            input: Path::new("in<put>.csv"),
            results: Path::new("in.results.csv"),
            exit_code: 2,
            stopped: None,
            simulation: false,
            counts,
            requests: 3,
            elapsed_seconds: 1.0,
            requests_per_second: 3.0,
            paused_seconds: 0.0,
            test_overrides: &[],
            tally,
            attention: rows,
            attention_total: rows.len() as u64 + 5,
            settings: vec![("target", "https://x/<b>".into())],
        }
    }

    #[test]
    fn every_value_from_the_input_or_the_api_is_escaped() {
        let tally = Tally::new();
        let hostile = Attempt::Answered(Answer {
            status: 400,
            errors: vec![ApiMessage {
                code: Some(1),
                title: "<img src=x onerror=alert(1)>".into(),
                message: "</td><script>alert(2)</script>".into(),
            }],
            ..Answer::default()
        });
        tally.attempt(
            2,
            std::time::Instant::now(),
            std::time::Duration::ZERO,
            &hostile,
        );
        let snapshot = tally.snapshot();
        let mut counts = Counts::default();
        counts.add(Status::Failed, None);
        let rows = [AttentionRow {
            line: 2,
            department: "<b>d</b>".into(),
            invoice: "<script>alert(3)</script>".into(),
            status: Status::Failed,
            message: "\"quoted\" & <i>".into(),
            errors: String::new(),
        }];
        let page = render(&facts(&counts, &snapshot, &rows)).into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(
            !page.contains("<b>d</b>") && !page.contains("in<put>"),
            "{page}"
        );
        assert!(page.contains("&lt;script&gt;alert(3)&lt;/script&gt;"));
        assert!(page.contains("5 more in the results CSV"));
        // Nothing is loaded from anywhere: no script, no external reference.
        assert!(
            !page.contains("<script") && !page.contains("src=\"http"),
            "{page}"
        );
    }
}
