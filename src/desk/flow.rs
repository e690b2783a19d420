//! Choose, Check and Confirm: a file comes in, and is looked at before anything is sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use axum::extract::{Multipart, Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;

use super::guard::{MAX_UPLOAD, TOO_BIG};
use super::pages::{self, flow as screens};
use super::settings::Job;
use super::Desk;
use crate::client::{Credentials, Secret};
use crate::config::Target;
use crate::run::{self, Outlook};

/// A file the person chose, and what sending it would do.
pub struct Upload {
    pub id: u64,
    /// As the person's browser named it: shown, never used as a path.
    pub name: String,
    pub path: PathBuf,
    pub sheet: Option<String>,
    pub rehearse: bool,
    /// Where its requests would go, in words.
    pub target: String,
    pub outlook: Outlook,
    /// The rate, the send window and `skip_paid`, in words.
    pub plans: Vec<String>,
    pub results: Results,
}

impl Upload {
    pub fn job(&self) -> Job<'_> {
        Job {
            input: &self.path,
            sheet: self.sheet.as_deref(),
            rehearse: self.rehearse,
            out: &self.results.out,
            also_out: &self.results.also,
        }
    }
}

/// Where a send's results go: the file the engine writes (a workbook for a workbook, as
/// `send` names it) and the same rows in the other format.
pub struct Results {
    pub out: PathBuf,
    pub also: PathBuf,
}

impl Results {
    /// Found once, when the file comes in: naming them reads the input's first bytes.
    fn beside(input: &Path) -> Results {
        let out = crate::config::default_out(input);
        let also = match out.extension().and_then(|e| e.to_str()) {
            Some("xlsx") => out.with_extension("csv"),
            _ => out.with_extension("xlsx"),
        };
        Results { out, also }
    }

    /// The file of one format: `csv` or `xlsx`.
    pub fn of_format(&self, extension: &str) -> &Path {
        match self.out.extension() {
            Some(e) if e == extension => &self.out,
            _ => &self.also,
        }
    }
}

/// What the Choose form sent.
#[derive(Default)]
struct Chosen {
    name: String,
    path: Option<PathBuf>,
    sheet: Option<String>,
    /// Only a form that says `target=mykaarma` sends for real: one that says nothing
    /// rehearses.
    mykaarma: bool,
    username: Option<String>,
    password: Option<String>,
}

pub async fn choose(State(desk): State<Arc<Desk>>) -> Response {
    screens::choose(&desk, None).into_response()
}

pub async fn upload(State(desk): State<Arc<Desk>>, form: Multipart) -> Response {
    let id = desk.next_id();
    let dir = desk.folder.path().join(format!("u{id}"));
    let chosen = match receive(&dir, form).await {
        Ok(chosen) => chosen,
        Err(refusal) => return refusal,
    };
    if let (Some(username), Some(password)) = (chosen.username.clone(), chosen.password.clone()) {
        *desk.typed.lock().unwrap() = Some(Credentials {
            username,
            password: Secret::new(password),
        });
    }
    let looked = desk.clone();
    let made = tokio::task::spawn_blocking(move || look(&looked, id, chosen)).await;
    match made {
        Ok(Ok(upload)) => {
            desk.uploads.lock().unwrap().push(Arc::new(upload));
            see_other(&format!("/check/{id}"))
        }
        Ok(Err(e)) => {
            let _ = std::fs::remove_dir_all(&dir);
            let error = format!("{e:#}");
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                screens::choose(&desk, Some(&error)),
            )
                .into_response()
        }
        Err(_) => pages::message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed",
            "Checking the file failed.",
        ),
    }
}

/// The form's fields; the file streamed to `dir`, refused past the upload limit.
async fn receive(dir: &Path, mut form: Multipart) -> Result<Chosen, Response> {
    let bad = |why: &str| pages::message(StatusCode::BAD_REQUEST, "Not understood", why);
    let too_big = || pages::message(StatusCode::PAYLOAD_TOO_LARGE, "Too big", TOO_BIG);
    let mut chosen = Chosen::default();
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_big()),
            Err(e) => return Err(bad(&e.body_text())),
        };
        match field.name().unwrap_or_default() {
            "file" => {
                let name = field.file_name().unwrap_or_default().to_string();
                let path = dir.join(safe_name(&name));
                chosen.name = name;
                match save(field, dir, &path).await {
                    Ok(true) => chosen.path = Some(path),
                    Ok(false) => return Err(too_big()),
                    Err(e) => return Err(bad(&format!("the file could not be received: {e}"))),
                }
            }
            key => {
                let key = key.to_string();
                let value = field.text().await.map_err(|e| bad(&e.body_text()))?;
                let value =
                    Some(value.trim().to_string()).filter(|v| !v.is_empty() && v.len() < 4096);
                match key.as_str() {
                    "sheet" => chosen.sheet = value,
                    "target" => chosen.mykaarma = value.as_deref() == Some("mykaarma"),
                    "username" => chosen.username = value,
                    "password" => chosen.password = value,
                    _ => {}
                }
            }
        }
    }
    match chosen.path {
        Some(_) => Ok(chosen),
        None => Err(bad("Choose a file first.")),
    }
}

/// Just the file of a form (Resolve's): its path, and the name the browser gave it.
pub async fn receive_file(dir: &Path, form: Multipart) -> Result<(PathBuf, String), Response> {
    let chosen = receive(dir, form).await?;
    Ok((chosen.path.unwrap_or_default(), chosen.name))
}

/// Streams a field to `path`; false if it grew past the limit (nothing is kept then).
async fn save(
    mut field: axum::extract::multipart::Field<'_>,
    dir: &Path,
    path: &Path,
) -> Result<bool> {
    tokio::fs::create_dir_all(dir).await?;
    let mut file = tokio::fs::File::create(path).await?;
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await? {
        size += chunk.len() as u64;
        if size > MAX_UPLOAD {
            drop(file);
            tokio::fs::remove_dir_all(dir).await?;
            return Ok(false);
        }
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(true)
}

/// A file name the browser gave, made safe to use in our folder: its last part, with
/// only plain characters, never empty or hidden.
fn safe_name(given: &str) -> String {
    let last = given.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = last
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || " ._-()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let clean = clean.trim_start_matches(['.', ' ']).trim_end();
    if clean.is_empty() {
        "upload.csv".into()
    } else {
        clean.to_string()
    }
}

/// Resolves the send this file would make, and looks ahead at it.
fn look(desk: &Desk, id: u64, chosen: Chosen) -> Result<Upload> {
    let (path, rehearse) = (chosen.path.unwrap_or_default(), !chosen.mykaarma);
    let results = Results::beside(&path);
    let job = Job {
        input: &path,
        sheet: chosen.sheet.as_deref(),
        rehearse,
        out: &results.out,
        also_out: &results.also,
    };
    let typed = desk.typed.lock().unwrap().clone();
    let send = desk.settings.send(&job, typed)?;
    let target = match &send.target {
        Target::Simulator => {
            "the built-in simulator (a rehearsal: nothing reaches myKaarma)".into()
        }
        Target::Url(url) => url.clone(),
    };
    let mut plans = vec![rate_words(&send)];
    plans.extend(run::plans(
        send.window.as_ref(),
        send.dispatch.skip_paid,
        &desk.clock,
    ));
    Ok(Upload {
        id,
        name: chosen.name,
        sheet: chosen.sheet,
        rehearse,
        target,
        outlook: run::outlook(&send, &desk.clock)?,
        plans,
        results,
        path,
    })
}

fn rate_words(send: &crate::config::Send) -> String {
    let d = &send.dispatch;
    match (&d.auto, d.rate) {
        (Some(auto), _) => format!(
            "Rate: found as it goes (auto), from {}/s up to {}/s.",
            auto.remembered.unwrap_or(auto.start),
            auto.max
        ),
        (None, 0) => "Rate: as fast as the API answers (no limit set).".into(),
        (None, n) => format!("Rate: {n} requests per second at most."),
    }
}

pub fn find(desk: &Desk, id: u64) -> Option<Arc<Upload>> {
    desk.uploads
        .lock()
        .unwrap()
        .iter()
        .find(|u| u.id == id)
        .cloned()
}

pub async fn check(State(desk): State<Arc<Desk>>, UrlPath(id): UrlPath<u64>) -> Response {
    match find(&desk, id) {
        Some(upload) => screens::check(&upload).into_response(),
        None => pages::not_found().await,
    }
}

pub async fn confirm(State(desk): State<Arc<Desk>>, UrlPath(id): UrlPath<u64>) -> Response {
    match find(&desk, id) {
        Some(upload) => screens::confirm(&desk, &upload, None).into_response(),
        None => pages::not_found().await,
    }
}

pub fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}
