//! What is known before anything is sent: `validate`, `send --dry-run`, the checks that stop
//! a run before it starts (a missing input, an unwritable output), the question asked at a
//! terminal, and the one function that sorts records into invalid, duplicate and valid.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Result};

use super::Summary;
use crate::client::{Body, Client};
use crate::config::{DryRun, Input, Send, Target};
use crate::domain::{Clock, Counts, Status};
use crate::input::{seen, InputReader, Record, Seen};
use crate::ledger::{Entry, EntryKind};
use crate::screen::Screen;
use crate::window::SendWindow;

/// Sorts one record: invalid, a duplicate of an earlier line, or valid with its request.
pub fn sort(record: Record, seen: &mut seen::Batch) -> Result<Entry> {
    let kind = match record.parsed {
        Err(invalid) => EntryKind::Invalid(invalid.message(record.line)),
        Ok(req) => {
            let (dept, invoice) = (req.department.as_str(), req.invoice.as_str());
            match seen.first_line(dept, invoice, record.line)? {
                Some(first_line) => EntryKind::Duplicate {
                    first_line,
                    dept: dept.to_string(),
                    invoice: invoice.to_string(),
                },
                None => EntryKind::Valid(req),
            }
        }
    };
    Ok(Entry {
        seq: record.seq,
        line: record.line,
        kind,
    })
}

/// Every record of the input, sorted, with how many of each kind there were.
fn check(input: &Input, mut each: impl FnMut(&Entry) -> Result<()>) -> Result<Counted> {
    let mut reader = InputReader::open(&input.path, &input.options)?;
    tell_how_read(&reader);
    let mut seen = Seen::new()?;
    let mut raw = csv::ByteRecord::new();
    let mut counted = Counted::default();
    seen.batch(|b| {
        while let Some(record) = reader.next_record(&mut raw)? {
            let entry = sort(record, b)?;
            each(&entry)?;
            match entry.kind {
                EntryKind::Invalid(_) => counted.counts.add(Status::Invalid, None),
                EntryKind::Duplicate { .. } => counted.counts.add(Status::Duplicate, None),
                EntryKind::Valid(_) => counted.valid += 1,
            }
        }
        Ok(())
    })?;
    Ok(counted)
}

/// What a pass over the input found: invalid and duplicate rows counted, valid ones apart.
#[derive(Default)]
struct Counted {
    counts: Counts,
    valid: u64,
}

/// `validate`: every row checked, the bad ones listed on stdout.
pub fn validate(input: &Input) -> Result<u8> {
    let mut stdout = std::io::stdout().lock();
    let name = input.path.display();
    let counted = check(input, |entry| {
        match &entry.kind {
            EntryKind::Invalid(message) => writeln!(stdout, "{name}: invalid: {message}")?,
            EntryKind::Duplicate { first_line, .. } => {
                writeln!(stdout, "{name}: duplicate: duplicate of line {first_line}")?
            }
            EntryKind::Valid(_) => {}
        }
        Ok(())
    })?;
    let invalid = counted.counts.get(Status::Invalid);
    eprintln!(
        "{name}: {} rows: {} valid, {invalid} invalid, {} duplicate",
        counted.counts.rows() + counted.valid,
        counted.valid,
        counted.counts.get(Status::Duplicate)
    );
    Ok(if invalid > 0 { 2 } else { 0 })
}

/// `send --dry-run`: `validate`, plus the request each valid row would make.
pub fn dry_run(config: &DryRun, clock: &Clock) -> Result<Summary> {
    for plan in plans(config.window.as_ref(), config.skip_paid, clock) {
        eprintln!("{plan}");
    }
    let base_url = match &config.target {
        Target::Url(url) => url.clone(),
        Target::Simulator => "http://127.0.0.1:PORT".to_string(),
    };
    let mut stdout = std::io::stdout().lock();
    let counted = check(&config.input, |entry| {
        if let EntryKind::Valid(req) = &entry.kind {
            let body = serde_json::to_string(&Body::new(req))?;
            let url = Client::url_for(&base_url, req);
            writeln!(stdout, "line {}: POST {url} {body}", entry.line)?;
        }
        Ok(())
    })?;
    let code = if counted.counts.get(Status::Invalid) > 0 {
        2
    } else {
        0
    };
    let mut summary = Summary::new(counted.counts, code);
    summary.rows += counted.valid;
    summary.dry_run = true;
    summary.would_send = Some(counted.valid);
    summary.write_json(config.summary_json.as_deref())?;
    Ok(summary)
}

/// What the send window and `--skip-paid` will do, in words, for the prompt and dry runs.
pub fn plans(window: Option<&SendWindow>, skip_paid: bool, clock: &Clock) -> Vec<String> {
    let mut plans = Vec::new();
    if let Some(w) = window {
        plans.push(w.plan(clock.now()));
    }
    if skip_paid {
        plans.push(format!(
            "--skip-paid: each invoice's paid status is asked first (scope {}); paid invoices are skipped, not sent",
            crate::client::PAID_SCOPE
        ));
    }
    plans
}

/// Counts rows and requested channels, for the confirmation prompt and the progress bar.
pub struct Preview {
    pub rows: u64,
    pub valid: u64,
    pub texts: u64,
    pub emails: u64,
}

pub fn preview(input: &Input) -> Result<Preview> {
    let mut reader = InputReader::open(&input.path, &input.options)?;
    let mut raw = csv::ByteRecord::new();
    let mut p = Preview {
        rows: 0,
        valid: 0,
        texts: 0,
        emails: 0,
    };
    while let Some(record) = reader.next_record(&mut raw)? {
        p.rows += 1;
        if let Ok(req) = record.parsed {
            p.valid += 1;
            p.texts += u64::from(req.flags.send_as_text);
            p.emails += u64::from(req.flags.send_as_email);
        }
    }
    Ok(p)
}

fn confirm(p: &Preview, target: &str, plans: &[String]) -> Result<bool> {
    eprintln!(
        "About to send up to {} payment requests ({} with a text, {} with an email) to {target}.\n\
         {} of {} rows are valid; rows already sent within the dedupe window will be skipped.",
        p.valid, p.texts, p.emails, p.valid, p.rows
    );
    for plan in plans {
        eprintln!("{plan}");
    }
    eprint!("Send them? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// The command line's question before the real API is reached, asked of a person at a
/// terminal; the row count for the progress bar, when one is shown.
pub fn ask(config: &Send, clock: &Clock) -> Result<Option<u64>> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let bar = config.ui.progress && Screen::can_show_bar();
    let ask = interactive && !config.ui.yes && config.target != Target::Simulator;
    if !bar && !ask {
        return Ok(None);
    }
    let p = preview(&config.input)?;
    let plans = plans(config.window.as_ref(), config.dispatch.skip_paid, clock);
    if ask && !confirm(&p, &config.client.base_url, &plans)? {
        bail!("nothing sent: not confirmed");
    }
    Ok(Some(p.rows))
}

/// Fatal input problems (missing file, missing column) and unwritable outputs stop the run
/// before anything else.
/// The sheet read, for a workbook.
pub(super) fn preflight(config: &Send) -> Result<Option<String>> {
    // Opening a workbook reads its sheet whole: a hostile or broken one is refused here.
    let input = &config.input;
    let reader = InputReader::open(&input.path, &input.options)?;
    tell_how_read(&reader);
    let sheet = reader.sheet().map(str::to_string);
    check_writable(&config.out, "results")?;
    if let Some(report) = &config.evidence.report {
        check_writable(report, "the report")?;
    }
    if let Some(metrics) = &config.evidence.metrics_file {
        check_writable(metrics, "the metrics")?;
    }
    if let Some(summary) = &config.summary_json {
        check_writable(summary, "the summary JSON")?;
    }
    Ok(sheet)
}

/// Says how the input is read: a workbook's sheet, and what a person should know of it.
pub(super) fn tell_how_read(reader: &InputReader) {
    if let Some(sheet) = reader.sheet() {
        tracing::info!("reading sheet {sheet:?} of {}", reader.path().display());
    }
    for note in reader.notes() {
        tracing::warn!("{note}");
    }
}

/// Fails early, before anything is sent, if `path` cannot be written.
pub fn check_writable(path: &Path, what: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".invoice-dispatch-check-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| {
            // tempfile's error names its own probe file, which would only confuse.
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => "no such folder".to_string(),
                kind => kind.to_string(),
            };
            anyhow::anyhow!(
                "cannot write {what} to {}: {reason} (in {})",
                path.display(),
                dir.display()
            )
        })
}
