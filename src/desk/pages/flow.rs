//! The five screens of a send: Choose, Check, Confirm, Watch, Done.

use axum::response::Html;
use maud::{html, Markup};

use super::{number, page, rows, steps, Mode};
use crate::desk::flow::Upload;
use crate::desk::sending::Current;
use crate::desk::Desk;
use crate::domain::Status;
use crate::ledger::ResultRow;
use crate::run::{Event, State, Summary};

fn mode(upload: &Upload) -> Mode<'_> {
    if upload.rehearse {
        Mode::Rehearse
    } else {
        Mode::Real(&upload.target)
    }
}

pub fn choose(desk: &Desk, error: Option<&str>) -> Html<String> {
    let running = desk.running().is_some();
    let body = html! {
        (steps(0))
        h1 { "Send payment requests from a spreadsheet" }
        @if running {
            p.card { "A send is running. " a href="/watch" { "Watch it" } "." }
        }
        @if let Some(error) = error { p.error { (error) } }
        form.card method="post" enctype="multipart/form-data" action={ "/upload?csrf=" (desk.guard.csrf()) } {
            label for="file" { "The invoices: a CSV or a workbook (.xlsx, .xls, .ods)" }
            input #file type="file" name="file" required accept=".csv,.txt,.tsv,.xlsx,.xlsm,.xls,.ods";
            p.note { "Drop the file on the box or click it. Up to 50 MB." }
            label for="sheet" { "Sheet (a workbook with several)" }
            input #sheet type="text" name="sheet" placeholder="the first sheet";
            fieldset {
                legend { "Send to" }
                label { input type="radio" name="target" value="rehearse" checked;
                    span { b { "Rehearse" } ": the built-in simulator. Nothing reaches myKaarma." } }
                label { input type="radio" name="target" value="mykaarma";
                    span { b { "myKaarma" } ": real customers get texts and emails." } }
            }
            (credentials(desk))
            button type="submit" { "Check the file" }
            p.note { "Nothing is sent until you have checked what will happen and typed the count." }
        }
    };
    page("Choose", Mode::Plain, false, body)
}

fn credentials(desk: &Desk) -> Markup {
    let typed = desk
        .typed
        .lock()
        .unwrap()
        .as_ref()
        .map(|c| c.username.clone());
    html! {
        @if let Some(user) = &desk.settings.username {
            p.note { "myKaarma sends go as " b { (user) } " (from the environment or the config file)." }
        } @else if let Some(user) = typed {
            p.note { "myKaarma sends go as " b { (user) } " (typed here: kept in this desk's memory only)." }
        } @else {
            fieldset {
                legend { "myKaarma credentials (only to send to myKaarma)" }
                label for="username" { "User name" }
                input #username type="text" name="username" autocomplete="username";
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password";
                p.note { "Kept in this desk's memory only: never written to disk, a log or the ledger." }
            }
        }
    }
}

pub fn check(upload: &Upload) -> Html<String> {
    let o = &upload.outlook;
    let body = html! {
        (steps(1))
        h1 { "Check: " (upload.name) }
        p.note { "Nothing has been sent. This is what sending would do now." }
        div.numbers {
            (number(o.rows, "rows in the file", ""))
            (number(o.would_send, "will be sent", "ok"))
            (number(o.invalid.total, "invalid", if o.invalid.total > 0 { "bad" } else { "" }))
            (number(o.duplicates.total, "duplicates", if o.duplicates.total > 0 { "warn" } else { "" }))
            (number(o.earlier.total, "sent before, skipped", if o.earlier.total > 0 { "warn" } else { "" }))
            (number(o.texts, "texts will go out", ""))
            (number(o.emails, "emails will go out", ""))
        }
        div.card {
            p { "Target: " b { (upload.target) } }
            @if let Some(sheet) = &o.sheet { p { "Sheet read: " b { (sheet) } } }
            @for plan in &upload.plans { p { (plan) } }
            @for note in &o.notes { p.note { (note) } }
            @if o.new_ledger { p.note { "The ledger is new: nothing has been sent with it yet." } }
        }
        @if o.would_send > 0 {
            a.button href={ "/confirm/" (upload.id) } { "Next: confirm" }
        } @else {
            p.error { "Nothing would be sent." }
        }
        a.button.secondary href="/" { "Choose another file" }
        (departments(upload))
        (listed("Invalid rows: not sent", &["line", "cell", "value", "why"], o.invalid.total,
            o.invalid.shown.iter().map(|b| [b.line.to_string(), b.cell.clone(), b.value.clone(), b.reason.clone()])))
        (listed("Duplicates: not sent again", &["line", "duplicate of line", "invoice"], o.duplicates.total,
            o.duplicates.shown.iter().map(|t| [t.line.to_string(), t.first_line.to_string(), t.invoice.clone()])))
        (listed("Sent by an earlier run, or maybe delivered: skipped", &["line", "invoice", "why"], o.earlier.total,
            o.earlier.shown.iter().map(|e| [e.line.to_string(), e.invoice.clone(), e.message.clone()])))
    };
    page("Check", mode(upload), false, body)
}

fn departments(upload: &Upload) -> Markup {
    let o = &upload.outlook;
    listed(
        "Rows to send, by department",
        &["department", "rows"],
        o.departments.len() as u64,
        o.departments
            .iter()
            .map(|(d, n)| [d.clone(), n.to_string()]),
    )
}

/// A table of up to the rows given, saying how many there were in all.
fn listed<const N: usize>(
    title: &str,
    header: &[&str; N],
    total: u64,
    shown: impl Iterator<Item = [String; N]>,
) -> Markup {
    let shown: Vec<_> = shown.collect();
    html! {
        @if total > 0 {
            h2 { (title) " (" (total) ")" }
            div.scroll { table {
                tr { @for h in header { th { (h) } } }
                @for row in &shown { tr { @for cell in row { td { (cell) } } } }
            } }
            @if total > shown.len() as u64 {
                p.note { "and " (total - shown.len() as u64) " more, in the results once sent." }
            }
        }
    }
}

pub fn confirm(desk: &Desk, upload: &Upload, error: Option<&str>) -> Html<String> {
    let o = &upload.outlook;
    let body = html! {
        (steps(2))
        h1 { "Confirm" }
        @if let Some(error) = error { p.error { (error) } }
        div.card {
            p { b { (rows(o.would_send)) } " of " (upload.name) " will be sent to " b { (upload.target) } ": "
                (o.texts) " with a text and " (o.emails) " with an email." }
            @for plan in &upload.plans { p.note { (plan) } }
            form method="post" action={ "/send/" (upload.id) "?csrf=" (desk.guard.csrf()) } {
                label for="count" { "Type the number of rows that will be sent (" (o.would_send) ") to confirm" }
                input #count type="text" name="count" inputmode="numeric" autocomplete="off" required;
                button.danger[!upload.rehearse] type="submit" { "Send " (o.would_send) }
            }
        }
        a.button.secondary href={ "/check/" (upload.id) } { "Back to the check" }
    };
    page("Confirm", mode(upload), false, body)
}

pub fn watch(desk: &Desk, current: &Current, event: &Event) -> Html<String> {
    // The rows the Check read.
    let total = current.upload.outlook.rows.max(event.rows_done);
    let left = total.saturating_sub(event.rows_done);
    let rate = current.rate(event);
    let time_left = match rate {
        r if r > 0.1 && !event.is_finished() => format!("{:.0} s", left as f64 / r),
        _ => "—".into(),
    };
    let csrf = desk.guard.csrf();
    let body = html! {
        (steps(3))
        h1 { "Watch: " (current.upload.name) }
        (state_line(&event.state))
        progress value=(event.rows_done) max=(total.max(1)) {}
        p { b { (event.rows_done) } " of " (rows(total)) " done" }
        div.numbers {
            (number(format!("{rate:.1}/s"), "requests per second", ""))
            @if let Some(limit) = event.rate_limit { (number(format!("{limit:.1}/s"), "pace allowed (auto)", "")) }
            (number(time_left, "time left", ""))
            (number(event.requests, "requests made", ""))
            (number(event.failures, "need a person", if event.failures > 0 { "bad" } else { "" }))
            @if event.paused_seconds > 0.0 { (number(format!("{:.0} s", event.paused_seconds), "paused", "warn")) }
        }
        h2 { "Rows by status" }
        div.scroll { table {
            @for status in Status::ALL {
                @let n = event.counts.get(status);
                @if n > 0 { tr { td { (status.as_str()) } td { (n) } } }
            }
        } }
        @if !event.latest_errors.is_empty() {
            h2 { "Latest errors" }
            div.scroll { table { @for e in event.latest_errors.iter().rev() { tr { td { (e) } } } } }
        }
        div.card {
            @match &event.state {
                State::Paused => form method="post" action={ "/resume?csrf=" (csrf) } { button type="submit" { "Resume" } },
                State::Running | State::Waiting { .. } => form method="post" action={ "/pause?csrf=" (csrf) } { button.secondary type="submit" { "Pause" } },
                _ => {}
            }
            @if !event.is_finished() && !matches!(event.state, State::Stopping { .. }) {
                form method="post" action={ "/stop?csrf=" (csrf) } { button.danger type="submit" { "Stop" } }
                p.note { "Pause: no new request starts until you resume. Stop: requests in flight finish; the rest are not sent (send the same file again later: nothing is sent twice)." }
            }
            p.note { "Closing this tab does not stop the send: open the desk's address again to come back." }
        }
    };
    page("Watch", mode(&current.upload), true, body)
}

fn state_line(state: &State) -> Markup {
    html! {
        @match state {
            State::Running => p.state { "Sending…" },
            State::Waiting { why } => p.state.paused { "Waiting: " (why) },
            State::Paused => p.state.paused { "Paused: no request starts until you resume." },
            State::Stopping { why } => p.state.stopping { "Stopping (" (why) "): finishing the requests in flight." },
            State::Finished { .. } | State::Failed { .. } => p.state { "Finished: writing the results…" },
        }
    }
}

pub fn done(
    current: &Current,
    ended: &Result<Summary, String>,
    needing: anyhow::Result<Vec<ResultRow>>,
) -> Html<String> {
    let body = html! {
        (steps(4))
        h1 { "Done: " (current.upload.name) }
        @match ended {
            Err(error) => p.error { "The send failed: " (error) },
            Ok(summary) => (verdict(summary)),
        }
        h2 { "Downloads" }
        div.card {
            a.button href="/download/results.xlsx" { "Results (Excel workbook)" }
            a.button href="/download/results.csv" { "Results (CSV)" }
            @if current.report.is_some() { a.button.secondary href="/download/report.html" { "Report (HTML)" } }
            p.note { "These files go when the desk stops. The ledger keeps every row: the "
                a href="/runs" { "Runs" } " screen gives any run's results again." }
        }
        @match needing {
            Err(e) => p.error { "The rows that need a person cannot be read from the ledger: " (format!("{e:#}")) },
            Ok(rows) if rows.is_empty() => {},
            Ok(rows) => {
                h2 { "Rows that need a person" }
                @if rows.iter().any(|r| r.outcome.status != Status::Invalid) {
                    p.note { "Unknown rows may have reached the customer: check them in myKaarma, then record what you found on the Resolve screen." }
                }
                div.scroll { table {
                    tr { th { "line" } th { "invoice" } th { "status" } th { "what happened" } }
                    @for row in &rows { tr {
                        td { (row.line) }
                        td { (row.key.as_ref().map(|k| k.1.as_str()).unwrap_or("")) }
                        td { (row.outcome.status.as_str()) }
                        td { (row.outcome.message) @if !row.outcome.errors.is_empty() { " — " (row.outcome.errors) } }
                    } }
                } }
            }
        }
        a.button href="/" { "Send another file" }
    };
    page("Done", mode(&current.upload), false, body)
}

fn verdict(s: &Summary) -> Markup {
    let needs = s.counts.get(Status::Failed)
        + s.counts.get(Status::Unknown)
        + s.counts.get(Status::Invalid)
        + s.skipped_unknown;
    let (tone, words) = match s.exit_code {
        0 => ("ok", "Every row was sent, skipped or a duplicate: nothing needs you.".to_string()),
        2 => ("attention", format!("Finished, but {} need a person: see below.", rows(needs))),
        3 => ("bad", "Stopped by a circuit breaker: the API kept failing, so the rest were not sent. Send the same file again later: nothing is sent twice.".into()),
        130 => ("attention", "Stopped: the requests in flight finished and the rest were not sent. Send the same file again to send them: nothing is sent twice.".into()),
        _ => ("bad", "The send failed.".into()),
    };
    html! {
        p class={ "verdict " (tone) } { (words) }
        p.note {
            (s.requests) " requests in " (format!("{:.1}", s.elapsed_seconds)) " s ("
            (format!("{:.1}", s.requests_per_second)) " per second)"
            @if s.paused_seconds > 0.0 { "; paused " (format!("{:.1}", s.paused_seconds)) " s" }
            @if let Some(run) = &s.run { "; run " (run) }
            "."
        }
        div.numbers {
            @for status in Status::ALL {
                @let n = s.counts.get(status);
                @if n > 0 { (number(n, status.as_str(), "")) }
            }
            @if s.paused_seconds > 0.0 { (number(format!("{:.0} s", s.paused_seconds), "paused", "warn")) }
        }
    }
}
