//! Beside the flow: Runs, History and Resolve, on the desk's ledger.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::pages::{self, aside as screens};
use super::{flow, sending, Desk};
use crate::domain::RunId;
use crate::ledger;
use crate::results;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("reading the ledger failed")))
}

pub async fn runs(State(desk): State<Arc<Desk>>) -> Response {
    let location = desk.settings.ledger.clone();
    let runs = blocking(move || match ledger::open_existing(&location)? {
        Some(mut store) => store.runs(50),
        None => Ok(Vec::new()),
    })
    .await;
    screens::runs(&desk, runs).into_response()
}

pub async fn history(
    State(desk): State<Arc<Desk>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let invoice = query
        .get("invoice")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let Some(invoice) = invoice else {
        return screens::history(None, Ok(Vec::new())).into_response();
    };
    let (location, asked) = (desk.settings.ledger.clone(), invoice.clone());
    let entries = blocking(move || match ledger::open_existing(&location)? {
        Some(mut store) => store.history(&asked, None),
        None => Ok(Vec::new()),
    })
    .await;
    screens::history(Some(&invoice), entries).into_response()
}

/// A run's rows from the ledger alone, as `export` writes them: the results of any run,
/// after its desk (and its private folder) have gone.
pub async fn run_results(
    State(desk): State<Arc<Desk>>,
    UrlPath((run, what)): UrlPath<(String, String)>,
) -> Response {
    let (Some(id), true) = (
        RunId::parse(&run),
        ["results.csv", "results.xlsx"].contains(&what.as_str()),
    ) else {
        return pages::not_found().await;
    };
    let dir = desk.folder.path().join(format!("x{}", desk.next_id()));
    let path = dir.join(format!("{id}.{what}"));
    let (location, out) = (desk.settings.ledger.clone(), path.clone());
    let made = blocking(move || {
        let mut store =
            ledger::open_existing(&location)?.context("nothing has been sent with this ledger")?;
        let record = store
            .run(id)?
            .with_context(|| format!("there is no run {id}"))?;
        std::fs::create_dir_all(&dir)?;
        if out.extension().is_some_and(|e| e == "xlsx") {
            results::export_workbook(store.as_mut(), &record, &out)?;
        } else {
            let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
            results::export(store.as_mut(), id, &mut file)?;
            std::io::Write::flush(&mut file)?;
        }
        Ok(())
    })
    .await;
    match made {
        Ok(()) if what == "results.xlsx" => sending::attachment(&path, sending::XLSX).await,
        Ok(()) => sending::attachment(&path, sending::CSV).await,
        Err(e) => pages::message(StatusCode::NOT_FOUND, "No results", &format!("{e:#}")),
    }
}

pub async fn resolve_form(State(desk): State<Arc<Desk>>) -> Response {
    screens::resolve(&desk, None).into_response()
}

/// A results file with a `resolution` column: recorded all or nothing, as `resolve` does.
pub async fn resolve(State(desk): State<Arc<Desk>>, form: Multipart) -> Response {
    let id = desk.next_id();
    let dir = desk.folder.path().join(format!("r{id}"));
    let (path, _) = match flow::receive_file(&dir, form).await {
        Ok(got) => got,
        Err(refusal) => return refusal,
    };
    let (location, clock) = (desk.settings.ledger.clone(), desk.clock);
    let said = blocking(move || crate::look::resolve_file(&location, &path, None, clock)).await;
    let status = match &said {
        Ok(r) if !r.refused => StatusCode::OK,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, screens::resolve(&desk, Some(said))).into_response()
}
