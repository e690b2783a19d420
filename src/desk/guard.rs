//! Who may use the desk: the person at this machine, holding the token it printed.
//!
//! - The token (256 random bits) comes once in the printed address; opening it sets an
//!   HttpOnly, SameSite=Strict cookie and redirects to the same page without it, so it
//!   leaves the address bar and history. Any request without the cookie is refused, pages,
//!   the stylesheet and unknown paths alike.
//! - The `Host` must be the address the desk listens on: a page elsewhere that rebinds its
//!   own name to 127.0.0.1 (DNS rebinding) sends its own name, and is refused.
//! - A change is a POST whose `Origin` is the desk's and whose address carries the token
//!   (`?csrf=`), which only the desk's own pages know: a form on another site cannot.
//! - Every answer forbids loading anything from elsewhere (CSP), framing and sniffing, and
//!   is not cached; pages send no referrer to other sites.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{pages, Desk};

/// The largest file the desk takes: a bigger one is for `send`.
pub const MAX_UPLOAD: u64 = 50 * 1000 * 1000;
/// A request's body at most: the file and the form around it.
pub const MAX_BODY: usize = MAX_UPLOAD as usize + 1024 * 1024;

pub const TOO_BIG: &str =
    "This file is over 50 MB: use `invoice-dispatch send` for files this big.";

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

pub struct Guard {
    token: String,
    /// `Host` values that name this desk.
    hosts: Vec<String>,
    cookie: String,
}

impl Guard {
    pub fn new(addr: SocketAddr) -> Guard {
        let bytes: [u8; 32] = rand::random();
        let token = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let port = addr.port();
        let ip = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        Guard {
            token,
            hosts: vec![format!("{ip}:{port}"), format!("localhost:{port}")],
            // Cookies are per host, not per port: two desks keep theirs apart.
            cookie: format!("invoice_dispatch_desk_{port}"),
        }
    }

    /// The address to open: the only way in.
    pub fn entry_url(&self) -> String {
        format!("http://{}/?token={}", self.hosts[0], self.token)
    }

    /// What a page's forms add to their address, so that their POST is let through.
    pub fn csrf(&self) -> &str {
        &self.token
    }

    fn holds_cookie(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == self.cookie && same(value, &self.token))
    }
}

/// Compares in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn query_value(req: &Request, key: &str) -> Option<String> {
    let query = req.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The middleware every request goes through.
pub async fn check(State(desk): State<Arc<Desk>>, req: Request, next: Next) -> Response {
    let mut response = match admit(&desk.guard, &req) {
        Err(refusal) => refusal,
        // The printed address: the token becomes the cookie, and leaves the address.
        Ok(Entering(true)) => enter(&desk.guard, req.uri().path()),
        Ok(Entering(false)) => next.run(req).await,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: with it Chromium sends `Origin: null` on the desk's own forms.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A request let through: true for the printed address, which carries the token.
struct Entering(bool);

/// Refuses what does not come from the person at this machine through the desk's pages.
#[allow(clippy::result_large_err)]
fn admit(guard: &Guard, req: &Request) -> Result<Entering, Response> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| guard.hosts.iter().any(|ours| ours == h))
        .ok_or_else(|| {
            refuse(
                "This address does not name the desk (its Host is not the address it listens on).",
            )
        })?;
    let token = query_value(req, "token");
    let entering = req.method() == Method::GET && token.is_some();
    if entering && !token.is_some_and(|t| same(&t, &guard.token)) {
        return Err(refuse(
            "This address has a wrong token: open the address the desk printed.",
        ));
    }
    if !entering && !guard.holds_cookie(req.headers()) {
        return Err(refuse(
            "Open the address the desk printed in its window (it carries a token): only the person at this machine may use the desk.",
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        let csrf = query_value(req, "csrf");
        let ours = origin == Some(&format!("http://{host}"));
        if !ours || !csrf.is_some_and(|t| same(&t, &guard.token)) {
            return Err(refuse("A change must come from the desk's own page."));
        }
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if length.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(pages::message(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too big",
                TOO_BIG,
            ));
        }
    }
    Ok(Entering(entering))
}

fn refuse(why: &str) -> Response {
    pages::message(StatusCode::FORBIDDEN, "Not allowed", why)
}

/// Sets the cookie and sends the browser to the same page without the token.
fn enter(guard: &Guard, path: &str) -> Response {
    // Never `//elsewhere`, which a browser reads as another site.
    let path = if path.starts_with("//") { "/" } else { path };
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict",
        guard.cookie, guard.token
    );
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, path.to_string())],
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
