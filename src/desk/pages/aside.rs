//! Runs, History and Resolve.

use axum::response::Html;
use maud::html;

use super::{page, Mode};
use crate::desk::Desk;
use crate::domain::rfc3339;
use crate::ledger::{HistoryEntry, RunRecord};
use crate::look::Resolution;

pub fn runs(desk: &Desk, runs: anyhow::Result<Vec<RunRecord>>) -> Html<String> {
    let body = html! {
        h1 { "Runs" }
        p.note { "The last 50 sends recorded in " (desk.settings.ledger.describe()) ", newest first. Each run's results come from the ledger: the status of every row, with its line, department and invoice." }
        @match runs {
            Err(e) => p.error { (format!("{e:#}")) },
            Ok(runs) if runs.is_empty() => p.card { "No runs yet." },
            Ok(runs) => div.scroll { table {
                tr { th { "run" } th { "started" } th { "state" } th { "target" } th { "input" } th { "rows" } th { "sent" } th { "need a person" } th { "exit" } th { "results" } }
                @for r in &runs { tr {
                    td { (r.id) }
                    td { (r.started.format("%Y-%m-%d %H:%M UTC")) }
                    td { (r.state) }
                    td { (r.target) }
                    td title=(r.input) { (file_name(&r.input)) }
                    td { (r.counts.rows()) }
                    td { (r.counts.get(crate::domain::Status::Sent)) }
                    td { (needing(r)) }
                    td { (r.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                    td { a href={ "/runs/" (r.id) "/results.xlsx" } { "xlsx" } " · " a href={ "/runs/" (r.id) "/results.csv" } { "csv" } }
                } }
            } },
        }
    };
    page("Runs", Mode::Plain, false, body)
}

pub fn history(invoice: Option<&str>, entries: anyhow::Result<Vec<HistoryEntry>>) -> Html<String> {
    let body = html! {
        h1 { "History of an invoice" }
        form.card method="get" action="/history" {
            label for="invoice" { "Invoice (invoice_guid, as in the file)" }
            input #invoice type="search" name="invoice" value=(invoice.unwrap_or_default()) required;
            button type="submit" { "Search" }
        }
        @if let Some(invoice) = invoice {
            @match entries {
                Err(e) => p.error { (format!("{e:#}")) },
                Ok(entries) if entries.is_empty() => p.card { "Nothing recorded for " b { (invoice) } "." },
                Ok(entries) => div.scroll { table {
                    tr { th { "when" } th { "run" } th { "target" } th { "department" } th { "what" } th { "status" } th { "text" } th { "email" } th { "message" } }
                    @for e in &entries { tr {
                        td { (rfc3339(e.at)) } td { (e.run) } td { (e.target) } td { (e.department) }
                        td { (e.what) } td { (e.status) }
                        td { (e.text_sent.as_deref().unwrap_or("")) } td { (e.email_sent.as_deref().unwrap_or("")) }
                        td { (e.message) @if !e.errors.is_empty() { " — " (e.errors) } }
                    } }
                } },
            }
        }
    };
    page("History", Mode::Plain, false, body)
}

pub fn resolve(desk: &Desk, said: Option<anyhow::Result<Resolution>>) -> Html<String> {
    let body = html! {
        h1 { "Resolve unknown rows" }
        p { "A row is " b { "unknown" } " when its request may have reached myKaarma but no answer came back. Check those invoices in myKaarma, type "
            code { "delivered" } " or " code { "not delivered" } " in a " code { "resolution" } " column of the results file, save it, and upload it here. The next send skips the delivered rows and sends the others." }
        @match said {
            None => {},
            Some(Err(e)) => p.error { (format!("{e:#}")) },
            Some(Ok(r)) => p class=(if r.refused { "error" } else { "card" }) {
                @for line in &r.lines { (line) br; }
            },
        }
        form.card method="post" enctype="multipart/form-data" action={ "/resolve?csrf=" (desk.guard.csrf()) } {
            label for="file" { "The results file, with its resolution column filled in" }
            input #file type="file" name="file" required accept=".csv,.xlsx,.xls,.ods";
            button type="submit" { "Record the verdicts" }
        }
    };
    page("Resolve", Mode::Plain, false, body)
}

/// A path's last part, as a person named the file (the desk's uploads live in its folder).
fn file_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// As Done counts them: failed, unknown, invalid, and skipped as maybe delivered.
fn needing(r: &RunRecord) -> u64 {
    use crate::domain::Status::{Failed, Invalid, Unknown};
    [Failed, Unknown, Invalid]
        .map(|s| r.counts.get(s))
        .iter()
        .sum::<u64>()
        + r.skipped_unknown
}
