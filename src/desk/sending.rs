//! Send, Watch and Done: one send at a time, on the run engine's handle.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::{Form, Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::watch;

use super::flow::{find, see_other, Upload};
use super::pages::{self, flow as screens};
use super::Desk;
use crate::domain::{RunId, Status};
use crate::ledger;
use crate::run::{self, Controls, Event, Summary};

/// The send running, or the last one, and where its outputs are.
pub struct Current {
    pub upload: Arc<Upload>,
    pub controls: Controls,
    pub events: watch::Receiver<Event>,
    pub report: Option<PathBuf>,
    pub started: std::time::Instant,
    /// Its summary once it has one, or the error that ended it.
    pub ended: Mutex<Option<Result<Summary, String>>>,
}

impl Current {
    /// Waits until the run has ended.
    pub async fn finished(&self) {
        let _ = self.events.clone().wait_for(Event::is_finished).await;
    }

    /// Requests per second since the send started, its paused time left out: steadier
    /// than the engine's first-to-last figure, which a first burst inflates.
    pub fn rate(&self, event: &Event) -> f64 {
        let secs = self.started.elapsed().as_secs_f64() - event.paused_seconds;
        if secs > 1.0 {
            event.requests as f64 / secs
        } else {
            0.0
        }
    }

    pub fn summary(&self) -> Option<Result<Summary, String>> {
        self.ended.lock().unwrap().clone()
    }
}

#[derive(Deserialize)]
pub struct Typed {
    count: String,
}

pub async fn send(
    State(desk): State<Arc<Desk>>,
    UrlPath(id): UrlPath<u64>,
    Form(typed): Form<Typed>,
) -> Response {
    let Some(upload) = find(&desk, id) else {
        return pages::not_found().await;
    };
    let count = typed.count.trim().replace([',', ' '], "");
    if count.parse::<u64>().ok() != Some(upload.outlook.would_send) {
        let error = format!(
            "You typed {:?}: type the number of rows that will be sent, {}.",
            typed.count, upload.outlook.would_send
        );
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            screens::confirm(&desk, &upload, Some(&error)),
        )
            .into_response();
    }
    // Claimed before looking, so two presses at once cannot both start.
    if desk.starting.swap(true, Ordering::SeqCst) {
        return busy();
    }
    if desk.running().is_some() {
        desk.starting.store(false, Ordering::SeqCst);
        return busy();
    }
    let starter = desk.clone();
    let started = tokio::task::spawn_blocking(move || start(&starter, upload)).await;
    desk.starting.store(false, Ordering::SeqCst);
    match started {
        Ok(Ok(current)) => {
            *desk.current.lock().unwrap() = Some(current);
            see_other("/watch")
        }
        Ok(Err(e)) => pages::message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not sent",
            &format!("{e:#}"),
        ),
        Err(_) => pages::message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Not sent",
            "Starting the send failed.",
        ),
    }
}

fn busy() -> Response {
    pages::message(
        StatusCode::CONFLICT,
        "A send is already running",
        "One send at a time: watch the one running, or wait for it to end before sending another.",
    )
}

/// Starts the send on the engine, and a thread that keeps its summary when it ends.
fn start(desk: &Desk, upload: Arc<Upload>) -> Result<Arc<Current>> {
    let typed = desk.typed.lock().unwrap().clone();
    let config = desk.settings.send(&upload.job(), typed)?;
    let report = config.evidence.report.clone();
    let handle = run::start(config, desk.clock)?;
    let current = Arc::new(Current {
        upload,
        controls: handle.controls(),
        events: handle.events(),
        report,
        started: std::time::Instant::now(),
        ended: Mutex::new(None),
    });
    let keeper = current.clone();
    std::thread::Builder::new()
        .name("desk-send".into())
        .spawn(move || {
            let ended = handle.wait().map_err(|e| format!("{e:#}"));
            *keeper.ended.lock().unwrap() = Some(ended);
        })
        .context("cannot start the send's keeper")?;
    Ok(current)
}

pub async fn watch(State(desk): State<Arc<Desk>>) -> Response {
    let Some(current) = desk.current.lock().unwrap().clone() else {
        return see_other("/");
    };
    if current.summary().is_some() {
        return see_other("/done");
    }
    let event = current.events.borrow().clone();
    screens::watch(&desk, &current, &event).into_response()
}

pub async fn pause(State(desk): State<Arc<Desk>>) -> Response {
    control(&desk, |c| {
        c.pause();
    })
}

pub async fn resume(State(desk): State<Arc<Desk>>) -> Response {
    control(&desk, |c| {
        c.resume();
    })
}

pub async fn stop(State(desk): State<Arc<Desk>>) -> Response {
    control(&desk, Controls::stop)
}

fn control(desk: &Desk, act: impl FnOnce(&Controls)) -> Response {
    if let Some(current) = desk.running() {
        act(&current.controls);
    }
    see_other("/watch")
}

pub async fn done(State(desk): State<Arc<Desk>>) -> Response {
    let Some(current) = desk.current.lock().unwrap().clone() else {
        return see_other("/");
    };
    let Some(ended) = current.summary() else {
        return see_other("/watch");
    };
    let needing = match &ended {
        Ok(summary) => {
            let (ledger, run) = (desk.settings.ledger.clone(), summary.run.clone());
            tokio::task::spawn_blocking(move || needing_a_person(&ledger, run.as_deref()))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("reading the ledger failed")))
        }
        Err(_) => Ok(Vec::new()),
    };
    screens::done(&current, &ended, needing).into_response()
}

/// The rows of `run` that a person should look at: failed, unknown, invalid, or skipped
/// because an earlier run may have delivered them.
fn needing_a_person(
    location: &ledger::Location,
    run: Option<&str>,
) -> Result<Vec<ledger::ResultRow>> {
    let Some(run) = run.and_then(RunId::parse) else {
        return Ok(Vec::new());
    };
    let mut store = ledger::open(location, true)?;
    let mut rows = Vec::new();
    store.results(run, &mut |row| {
        let o = &row.outcome;
        let needs = matches!(o.status, Status::Failed | Status::Unknown | Status::Invalid)
            || o.skip == Some(crate::domain::SkipKind::MaybeDelivered);
        if needs && rows.len() < 500 {
            rows.push(row);
        }
        Ok(())
    })?;
    Ok(rows)
}

/// The last send's results (as a CSV or a workbook) and its report, as downloads.
pub async fn download(State(desk): State<Arc<Desk>>, UrlPath(what): UrlPath<String>) -> Response {
    let Some(current) = desk.current.lock().unwrap().clone() else {
        return pages::not_found().await;
    };
    let results = &current.upload.results;
    let (path, kind) = match what.as_str() {
        "results.csv" => (results.of_format("csv"), CSV),
        "results.xlsx" => (results.of_format("xlsx"), XLSX),
        "report.html" => match &current.report {
            Some(report) => (report.as_path(), "text/html; charset=utf-8"),
            None => return pages::not_found().await,
        },
        _ => return pages::not_found().await,
    };
    attachment(path, kind).await
}

pub const CSV: &str = "text/csv; charset=utf-8";
pub const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// A file as a download, under its own name made plain.
pub async fn attachment(path: &std::path::Path, kind: &str) -> Response {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return pages::not_found().await;
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!("attachment; filename=\"{plain}\"");
    (
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response()
}
