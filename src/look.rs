//! Looking back (SPEC section 10): `runs`, `history`, `export` and `resolve`, on whichever
//! store holds the ledger. Each prints a table for a person, or CSV or JSON for scripts.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cli::Format;
use crate::config::{Look, LookAt};
use crate::domain::{rfc3339, Clock, RunId, Status};
use crate::input::{InputOptions, InputReader};
use crate::ledger::{self, HistoryEntry, Location, PauseChange, RunRecord, Verdict};
use crate::results;

pub fn run(look: Look, clock: Clock) -> Result<u8> {
    match look.what {
        LookAt::Runs { last } => runs(&look.ledger, look.format, last),
        LookAt::History {
            invoice,
            department,
        } => history(&look.ledger, look.format, &invoice, department.as_deref()),
        LookAt::Export { run, out } => export(&look.ledger, run, out.as_deref()),
        LookAt::Resolve { results, target } => {
            resolve(&look.ledger, &results, target.as_deref(), clock)
        }
        LookAt::Pause { run, paused } => pause(&look.ledger, run, paused, clock),
    }
}

/// `pause RUN` / `resume RUN`: records it in the run's record, which the run follows.
fn pause(ledger: &Location, run: RunId, paused: bool, clock: Clock) -> Result<u8> {
    let by = whoami::username();
    let said = match ledger::set_paused(ledger, run, paused, &by, clock.now())? {
        PauseChange::Paused => format!(
            "paused {run}: it stops starting requests within 2 seconds; resume with `invoice-dispatch resume {run}`"
        ),
        PauseChange::Resumed => {
            format!("resumed {run}: it starts requests again within 2 seconds")
        }
        PauseChange::AlreadyPaused(state) => format!(
            "{run} is already paused ({}); resume with `invoice-dispatch resume {run}`",
            state.who_when()
        ),
        PauseChange::NotPaused => format!("{run} is not paused: nothing to resume"),
    };
    println!("{said}");
    Ok(0)
}

fn runs(ledger: &Location, format: Format, last: usize) -> Result<u8> {
    let mut store = ledger::open(ledger, true)?;
    let runs = store.runs(last)?;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => serde_json::to_writer_pretty(&mut out, &runs)?,
        Format::Csv => runs_csv(&runs, &mut out)?,
        Format::Table if runs.is_empty() => writeln!(out, "no runs in {}", store.describe())?,
        Format::Table => writeln!(out, "{}", runs_table(&runs))?,
    }
    Ok(0)
}

fn runs_table(runs: &[RunRecord]) -> comfy_table::Table {
    let mut table = new_table(&[
        "run",
        "started (UTC)",
        "took",
        "host / user",
        "input",
        "target",
        "rows",
        "exit",
    ]);
    for r in runs {
        let took = r
            .finished
            .map(|f| {
                humantime::format_duration((f - r.started).to_std().unwrap_or_default()).to_string()
            })
            .unwrap_or_default();
        let input = Path::new(&r.input)
            .file_name()
            .map_or(r.input.clone(), |n| n.to_string_lossy().into_owned());
        let exit = match (r.exit_code, &r.paused_by) {
            (Some(code), _) => code.to_string(),
            (None, Some(by)) => format!("{} (by {by})", r.state),
            (None, None) => r.state.clone(),
        };
        table.add_row(vec![
            r.id.clone(),
            r.started.format("%Y-%m-%d %H:%M").to_string(),
            took,
            format!("{} / {}", r.host, r.user),
            format!(
                "{input} ({})",
                &r.input_sha256[..r.input_sha256.len().min(12)]
            ),
            r.target.clone(),
            r.counts.describe(),
            exit,
        ]);
    }
    table
}

fn runs_csv(runs: &[RunRecord], out: &mut dyn Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let mut header = vec![
        "run",
        "started",
        "finished",
        "host",
        "user",
        "input",
        "input_sha256",
        "target",
        "state",
        "exit_code",
    ];
    header.extend(Status::ALL.iter().map(|s| s.as_str()));
    header.extend(["skipped_unknown", "already_paid", "paused_by", "paused_at"]);
    w.write_record(&header)?;
    for r in runs {
        let mut row = vec![
            r.id.clone(),
            rfc3339(r.started),
            r.finished.map(rfc3339).unwrap_or_default(),
            r.host.clone(),
            r.user.clone(),
            r.input.clone(),
            r.input_sha256.clone(),
            r.target.clone(),
            r.state.clone(),
            r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        ];
        row.extend(r.counts.iter().map(|(_, n)| n.to_string()));
        row.extend([r.skipped_unknown.to_string(), r.already_paid.to_string()]);
        row.extend([
            r.paused_by.clone().unwrap_or_default(),
            r.paused_at.map(rfc3339).unwrap_or_default(),
        ]);
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}

fn history(ledger: &Location, format: Format, invoice: &str, dept: Option<&str>) -> Result<u8> {
    let mut store = ledger::open(ledger, true)?;
    let mut entries = store.history(invoice, dept)?;
    for entry in &mut entries {
        entry.invoice = invoice.to_string();
    }
    if entries.is_empty() {
        let scope = dept
            .map(|d| format!(" for department {d}"))
            .unwrap_or_default();
        bail!(
            "invoice {invoice:?}{scope} is not in ledger {}",
            store.describe()
        );
    }
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => serde_json::to_writer_pretty(&mut out, &entries)?,
        Format::Csv => history_csv(&entries, &mut out)?,
        Format::Table => writeln!(out, "{}", history_table(&entries))?,
    }
    Ok(0)
}

fn history_table(entries: &[HistoryEntry]) -> comfy_table::Table {
    let mut table = new_table(&[
        "time (UTC)",
        "run",
        "department",
        "what",
        "status",
        "http",
        "text / email",
        "payment link",
        "message",
    ]);
    for e in entries {
        let channel = |c: &Option<String>| c.clone().unwrap_or_else(|| "-".into());
        let message = [e.errors.as_str(), e.message.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        table.add_row(vec![
            e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            e.run.clone(),
            e.department.clone(),
            e.what.clone(),
            e.status.clone(),
            e.http_status.map(|s| s.to_string()).unwrap_or_default(),
            format!("{} / {}", channel(&e.text_sent), channel(&e.email_sent)),
            e.payment_link.clone().unwrap_or_default(),
            message,
        ]);
    }
    table
}

fn history_csv(entries: &[HistoryEntry], out: &mut dyn Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    for e in entries {
        w.serialize(e)?;
    }
    w.flush()?;
    Ok(())
}

/// A table that fits the terminal, with control characters from the ledger shown escaped.
fn new_table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

fn export(ledger: &Location, run: RunId, out: Option<&Path>) -> Result<u8> {
    let mut store = ledger::open(ledger, true)?;
    let Some(record) = store.run(run)? else {
        bail!(
            "there is no run {run} in ledger {} (`invoice-dispatch runs` lists them)",
            store.describe()
        );
    };
    let n = match out {
        Some(path) if results::workbook::wanted(path) => {
            results::export_workbook(store.as_mut(), &record, path)?
        }
        Some(path) => {
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            );
            let n = results::export(store.as_mut(), run, &mut file)?;
            file.flush()?;
            n
        }
        None => results::export(store.as_mut(), run, &mut std::io::stdout().lock())?,
    };
    if n == 0 && record.counts.rows() > 0 {
        bail!("run {run}'s rows are no longer in the ledger: they were pruned (see `retention`)");
    }
    Ok(0)
}

fn resolve(ledger: &Location, file: &Path, target: Option<&str>, clock: Clock) -> Result<u8> {
    let said = resolve_file(ledger, file, target, clock)?;
    for line in &said.lines {
        eprintln!("{line}");
    }
    Ok(if said.refused { 2 } else { 0 })
}

/// What `resolve` made of a results file, in words for a person.
pub struct Resolution {
    pub lines: Vec<String>,
    /// Nothing was recorded: some rows were refused (a resolution is all or nothing).
    pub refused: bool,
}

/// Records the verdicts typed into `file`'s `resolution` column, all or none.
pub fn resolve_file(
    ledger: &Location,
    file: &Path,
    target: Option<&str>,
    clock: Clock,
) -> Result<Resolution> {
    let Typed {
        verdicts,
        mut refused,
        blank,
    } = read_verdicts(file)?;
    let name = file.display();
    if verdicts.is_empty() && refused.is_empty() {
        let line = format!("{name}: no row has a verdict in its resolution column ({blank} left blank); nothing recorded");
        return Ok(Resolution {
            lines: vec![line],
            refused: false,
        });
    }
    let mut store = ledger::open(ledger, false)?;
    let by = whoami::username();
    let request = ledger::ResolveRequest {
        target,
        results: file,
        verdicts: &verdicts,
        by: &by,
        refused_already: !refused.is_empty(),
    };
    let report = store.resolve(&request, clock.now())?;
    refused.extend(report.refused.iter().cloned());
    refused.sort();
    if !refused.is_empty() {
        let mut lines: Vec<String> = refused
            .iter()
            .map(|(line, why)| format!("{name}:{line}: {why}"))
            .collect();
        lines.push(format!(
            "{name}: {} row(s) refused; nothing recorded (a resolution is all or nothing): correct them and run resolve again",
            refused.len()
        ));
        return Ok(Resolution {
            lines,
            refused: true,
        });
    }
    let line = format!(
        "{name}: recorded {} delivered and {} not delivered by {by} in {} ({} already recorded, {blank} left blank); the next send skips the delivered rows and sends the others",
        report.delivered,
        report.not_delivered,
        store.describe(),
        report.already
    );
    Ok(Resolution {
        lines: vec![line],
        refused: false,
    })
}

/// What a results file's `resolution` column says.
struct Typed {
    verdicts: Vec<Verdict>,
    /// (line, why) of rows refused while reading.
    refused: Vec<(u64, String)>,
    blank: u64,
}

/// The verdicts typed into a results file's `resolution` column.
fn read_verdicts(file: &Path) -> Result<Typed> {
    let mut reader = InputReader::open(file, &InputOptions::default())?;
    let ours = ["status", "dispatch_status"]
        .iter()
        .any(|c| reader.column(c).is_some())
        && reader
            .column("completed_at")
            .or(reader.column("dispatch_completed_at"))
            .is_some();
    if !ours {
        bail!("{} is not a results file of invoice-dispatch (it has no status and completed_at columns)", file.display());
    }
    let Some(column) = reader.column("resolution") else {
        bail!(
            "{} has no `resolution` column: add one, type `delivered` or `not delivered` on the unknown rows you checked in myKaarma, save, and run resolve again",
            file.display()
        );
    };
    let (mut verdicts, mut refused, mut blank) = (Vec::new(), Vec::new(), 0);
    let mut raw = csv::ByteRecord::new();
    while let Some(record) = reader.next_record(&mut raw)? {
        let word = String::from_utf8_lossy(raw.get(column).unwrap_or(b""))
            .trim()
            .to_lowercase();
        if word.is_empty() {
            blank += 1;
            continue;
        }
        let delivered = match word
            .replace(['_', '-'], " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_str()
        {
            "delivered" => true,
            "not delivered" => false,
            _ => {
                refused.push((
                    record.line,
                    format!("resolution {word:?} is neither `delivered` nor `not delivered`"),
                ));
                continue;
            }
        };
        match record.parsed {
            Ok(req) => verdicts.push(Verdict {
                line: record.line,
                dept: req.department.as_str().to_string(),
                invoice: req.invoice.as_str().to_string(),
                delivered,
            }),
            Err(invalid) => refused.push((
                record.line,
                format!("not a row that was sent: {}", invalid.reason),
            )),
        }
    }
    Ok(Typed {
        verdicts,
        refused,
        blank,
    })
}
