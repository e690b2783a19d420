//! The desk (SPEC section 15): a local web page for the person with a spreadsheet. Choose a
//! file, check what would happen, type the count to confirm, watch (pause, resume, stop),
//! and download the results; beside them Runs, History and Resolve. Every send goes
//! through the run engine's [`Handle`](crate::run::Handle), as `send` does: there is no
//! second sending path.
//!
//! Only the person at this machine may use it: it listens on loopback, and every request
//! must carry the token printed with its address (see [`guard`]). Pages are rendered on
//! the server and load nothing from anywhere else; the watch screen refreshes itself, so
//! the desk needs no script at all.

mod aside;
mod flow;
mod guard;
mod pages;
mod sending;
mod settings;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::cli::DeskArgs;
use crate::client::Credentials;
use crate::domain::Clock;
use crate::interrupts::{say, Interrupts};
use settings::Settings;

pub use guard::MAX_UPLOAD;

/// The desk's state, shared by its handlers.
pub struct Desk {
    settings: Settings,
    guard: guard::Guard,
    /// Uploads live here, private to this user, and go when the desk stops.
    folder: tempfile::TempDir,
    /// Typed into the page: in this process's memory only.
    typed: Mutex<Option<Credentials>>,
    uploads: Mutex<Vec<Arc<flow::Upload>>>,
    /// The send running, or the last one.
    current: Mutex<Option<Arc<sending::Current>>>,
    next: AtomicU64,
    /// A send is being started: a second Send meanwhile is refused.
    starting: AtomicBool,
    clock: Clock,
}

impl Desk {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The send running now, if any: started, and without its summary yet.
    fn running(&self) -> Option<Arc<sending::Current>> {
        let current = self.current.lock().unwrap().clone();
        current.filter(|c| c.summary().is_none())
    }
}

/// `invoice-dispatch desk`: serves until Ctrl-C. A send running then is stopped as an
/// interrupt would stop `send` (in-flight requests finish, results are written), and the
/// exit code is 130; else 0.
pub async fn serve(args: DeskArgs, clock: Clock) -> Result<u8> {
    let addr: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an IP:PORT address", args.listen))?;
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "--listen {addr}: the desk listens on loopback only (127.0.0.1 or [::1]), so that only the person at this machine can use it"
        );
    }
    let settings = Settings::resolve(&args)?;
    // Watched from the start, so no early interrupt slips through.
    let interrupts = Interrupts::watch()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let desk = Arc::new(Desk {
        settings,
        guard: guard::Guard::new(bound),
        folder: private_folder()?,
        typed: Mutex::new(None),
        uploads: Mutex::new(Vec::new()),
        current: Mutex::new(None),
        next: AtomicU64::new(0),
        starting: AtomicBool::new(false),
        clock,
    });
    let url = desk.guard.entry_url();
    // The address goes to stdout on its own line so scripts and tests can read it.
    println!("desk: {url}");
    eprintln!("invoice-dispatch desk: open the address above in a browser on this machine; Ctrl-C stops the desk");
    if !args.no_open {
        open_browser(&url);
    }
    let stopped = Arc::new(AtomicBool::new(false));
    let shutdown = interrupted(desk.clone(), interrupts, stopped.clone());
    axum::serve(listener, router(desk.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .context("the desk's server failed")?;
    Ok(if stopped.load(Ordering::Relaxed) {
        130
    } else {
        0
    })
}

fn router(desk: Arc<Desk>) -> Router {
    Router::new()
        .route("/", get(flow::choose))
        .route("/upload", post(flow::upload))
        .route("/check/{id}", get(flow::check))
        .route("/confirm/{id}", get(flow::confirm))
        .route("/send/{id}", post(sending::send))
        .route("/watch", get(sending::watch))
        .route("/pause", post(sending::pause))
        .route("/resume", post(sending::resume))
        .route("/stop", post(sending::stop))
        .route("/done", get(sending::done))
        .route("/download/{what}", get(sending::download))
        .route("/runs", get(aside::runs))
        .route("/runs/{run}/{what}", get(aside::run_results))
        .route("/history", get(aside::history))
        .route("/resolve", get(aside::resolve_form).post(aside::resolve))
        .route("/desk.css", get(pages::stylesheet))
        .fallback(pages::not_found)
        .layer(DefaultBodyLimit::max(guard::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            desk.clone(),
            guard::check,
        ))
        .with_state(desk)
}

/// Where uploads are kept: a fresh folder only this user can enter (tempfile makes it
/// 0700 on Unix), removed when the desk stops.
fn private_folder() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("invoice-dispatch-desk-")
        .tempdir()
        .context("cannot make the desk's private folder for uploads")
}

/// Opens the default browser; on a machine without one the printed address is enough.
fn open_browser(url: &str) {
    if let Err(e) = webbrowser::open(url) {
        eprintln!(
            "invoice-dispatch desk: could not open a browser ({e}); open the address above by hand"
        );
    }
}

/// Resolves on the first interrupt (as `send` takes them: Ctrl-C, SIGTERM; Ctrl-Break and
/// closing the console on Windows), once a send running then has ended; a second one exits
/// at once (the ledger keeps the rerun safe).
async fn interrupted(desk: Arc<Desk>, mut interrupts: Interrupts, stopped: Arc<AtomicBool>) {
    interrupts.next().await;
    if let Some(current) = desk.running() {
        say("\ninterrupted: stopping the send (requests in flight finish; press Ctrl-C again to quit at once)");
        current.controls.stop();
        stopped.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = current.finished() => {}
            _ = interrupts.next() => {
                say("interrupted twice: exiting now; the ledger keeps a rerun safe");
                std::process::exit(130);
            }
        }
    }
}
