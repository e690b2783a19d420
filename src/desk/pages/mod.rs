//! The desk's pages, rendered on the server with maud, which escapes every value it is
//! given: file names, cells and the API's words alike. One embedded stylesheet; no script.

pub mod aside;
pub mod flow;

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

/// Where the screen's sends go, said on every screen of a flow.
pub enum Mode<'a> {
    /// Not about a send (Runs, History, Resolve).
    Plain,
    Rehearse,
    Real(&'a str),
}

/// A whole page: the header, what the sends go to, and `body`.
pub fn page(title: &str, mode: Mode, refresh: bool, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    @if refresh { meta http-equiv="refresh" content="1"; }
                    title { (title) " · invoice-dispatch desk" }
                    link rel="stylesheet" href="/desk.css";
                }
                body {
                    header {
                        span.brand { "invoice-dispatch desk" }
                        nav {
                            a href="/" { "Send" }
                            a href="/runs" { "Runs" }
                            a href="/history" { "History" }
                            a href="/resolve" { "Resolve" }
                        }
                    }
                    @match mode {
                        Mode::Plain => {}
                        Mode::Rehearse => div.banner.rehearse {
                            "REHEARSAL: the built-in simulator answers. Nothing reaches myKaarma; no customer is notified."
                        },
                        Mode::Real(target) => div.banner.real {
                            "REAL SEND to myKaarma (" (target) "): customers are notified."
                        },
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

/// A page that says one thing, with a way back.
pub fn message(status: StatusCode, title: &str, words: &str) -> Response {
    let body = html! {
        h1 { (title) }
        p.error { (words) }
        p { a.button.secondary href="/" { "Back to the start" } }
    };
    (status, page(title, Mode::Plain, false, body)).into_response()
}

pub async fn not_found() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing at this address.",
    )
}

pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("desk.css"),
    )
        .into_response()
}

/// "1 row" / "3 rows".
pub fn rows(n: u64) -> String {
    if n == 1 {
        "1 row".into()
    } else {
        format!("{n} rows")
    }
}

/// A figure in a box, coloured by what it means.
pub fn number(value: impl std::fmt::Display, label: &str, tone: &str) -> Markup {
    html! {
        div class={ "number " (tone) } { b { (value) } span { (label) } }
    }
}

/// The screens of the flow, with the current one in bold.
pub fn steps(current: usize) -> Markup {
    const STEPS: [&str; 5] = ["Choose", "Check", "Confirm", "Watch", "Done"];
    html! {
        p.steps {
            @for (i, step) in STEPS.iter().enumerate() {
                @if i > 0 { " → " }
                @if i == current { b { (step) } } @else { (step) }
            }
        }
    }
}
