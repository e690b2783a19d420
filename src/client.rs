//! One HTTP call to the API (a payment request, or an invoice's paid status), turned into
//! an [`Attempt`] the retry policy in `dispatch` can branch on. Nothing here retries: hyper
//! only re-sends a request that was never written to a pooled connection, and redirects are
//! never followed, since a followed redirect would repeat a POST that notifies a customer.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use serde::{Deserialize, Serialize};

use crate::input::{InvoiceGuid, Request};

/// A password that cannot leak through `Debug`, `Display` or a panic message.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// How the client talks to the API.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub base_url: String,
    pub credentials: Option<Credentials>,
    /// For one answer; a timeout after sending means the request may have been acted on.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Idle connections kept: the dispatcher's concurrency.
    pub pool_size: usize,
}

/// The scope `--skip-paid` needs (API.md, "Get Invoice paid status").
pub const PAID_SCOPE: &str = "payment.invoice.check.paid";

/// Response bodies above this are not read: a hostile or broken server cannot exhaust memory.
pub const MAX_BODY: usize = 1024 * 1024;

/// The JSON body the API expects; always all six fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Body<'a> {
    pub invoice_guid: &'a str,
    pub send_without_kpay: bool,
    pub attach_invoice: bool,
    pub send_as_text: bool,
    pub send_as_email: bool,
    pub esign_required: bool,
}

impl<'a> Body<'a> {
    pub fn new(req: &'a Request) -> Body<'a> {
        Body {
            invoice_guid: req.invoice.as_str(),
            send_without_kpay: req.flags.send_without_kpay,
            attach_invoice: req.flags.attach_invoice,
            send_as_text: req.flags.send_as_text,
            send_as_email: req.flags.send_as_email,
            esign_required: req.flags.esign_required,
        }
    }
}

/// An entry of the API's `errors` or `warnings` arrays (the two differ only in key prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiMessage {
    pub code: Option<i64>,
    pub title: String,
    pub message: String,
}

impl ApiMessage {
    /// `CODE TITLE: message`, the results-file format.
    pub fn render(&self) -> String {
        let code = self.code.map(|c| c.to_string()).unwrap_or_default();
        let head = [code.as_str(), self.title.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        match (head.is_empty(), self.message.is_empty()) {
            (_, true) => head,
            (true, false) => self.message.clone(),
            (false, false) => format!("{head}: {}", self.message),
        }
    }
}

/// An `errors` or `warnings` entry as sent: the two differ only in their key prefix.
#[derive(Deserialize, Default)]
struct RawMessage {
    #[serde(alias = "errorCode", alias = "warningCode")]
    code: Option<serde_json::Value>,
    #[serde(alias = "errorTitle", alias = "warningTitle")]
    title: Option<String>,
    #[serde(alias = "errorMessage", alias = "warningMessage")]
    message: Option<String>,
}

impl RawMessage {
    fn parse(list: Option<Vec<RawMessage>>) -> Vec<ApiMessage> {
        let list = list.unwrap_or_default().into_iter();
        list.map(|m| ApiMessage {
            code: code(m.code),
            title: m.title.unwrap_or_default(),
            message: m.message.unwrap_or_default(),
        })
        .collect()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawBody {
    errors: Option<Vec<RawMessage>>,
    warnings: Option<Vec<RawMessage>>,
    payment_link: Option<String>,
    invoice_link: Option<String>,
    text_sent: Option<String>,
    email_sent: Option<String>,
    /// Only in a paid-status answer.
    paid: Option<bool>,
    amount: Option<serde_json::Value>,
}

fn code(v: Option<serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// What the server said, with every field optional: the API documents them all as such.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub errors: Vec<ApiMessage>,
    pub warnings: Vec<ApiMessage>,
    pub payment_link: Option<String>,
    pub invoice_link: Option<String>,
    pub text_sent: Option<String>,
    pub email_sent: Option<String>,
    /// Why the body could not be used (empty, not JSON, too large), if it could not.
    pub body_problem: Option<String>,
    pub retry_after: Option<Duration>,
    /// A paid-status answer's `paid` and `amount` (as written, e.g. `125.5`).
    pub paid: Option<bool>,
    pub amount: Option<String>,
}

impl Answer {
    pub fn has_error_code(&self, codes: &[i64]) -> bool {
        self.errors
            .iter()
            .any(|e| e.code.is_some_and(|c| codes.contains(&c)))
    }

    fn parse(status: u16, retry_after: Option<Duration>, body: Result<Vec<u8>, String>) -> Answer {
        let mut answer = Answer {
            status,
            retry_after,
            ..Answer::default()
        };
        let bytes = match body {
            Ok(b) => b,
            Err(problem) => {
                answer.body_problem = Some(problem);
                return answer;
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            answer.body_problem = Some(format!("HTTP {status} with an empty body"));
            return answer;
        }
        let raw: RawBody = match serde_json::from_slice(&bytes) {
            Ok(raw) => raw,
            Err(e) => {
                answer.body_problem = Some(format!(
                    "HTTP {status} with a body that is not the API's JSON ({e})"
                ));
                return answer;
            }
        };
        answer.errors = RawMessage::parse(raw.errors);
        answer.warnings = RawMessage::parse(raw.warnings);
        let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        answer.payment_link = non_empty(raw.payment_link);
        answer.invoice_link = non_empty(raw.invoice_link);
        answer.text_sent = non_empty(raw.text_sent);
        answer.email_sent = non_empty(raw.email_sent);
        answer.paid = raw.paid;
        answer.amount = match raw.amount {
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s),
            _ => None,
        };
        answer
    }
}

/// The result of one HTTP attempt, classified by what the server can have done with it.
#[derive(Debug)]
pub enum Attempt {
    /// An HTTP answer was read (any status).
    Answered(Answer),
    /// The request never reached the server (refused, DNS, TLS handshake): safe to retry.
    NotConnected(String),
    /// The request may have reached the server but no answer was read (timeout, connection
    /// lost after writing): resending could notify the customer twice.
    Lost(String),
}

pub struct Client {
    http: reqwest::Client,
    base_url: String,
}

impl Client {
    pub fn new(settings: &ClientSettings) -> Result<Client> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(c) = &settings.credentials {
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                c.username,
                c.password.expose()
            ));
            let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                .context("the username or password contains characters not allowed in a header")?;
            // Keeps the header out of any debug output reqwest or hyper may produce.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("invoice-dispatch/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.pool_size)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
        })
    }

    /// The request URL. The department is a validated path segment (`DepartmentUuid`), so
    /// nothing from the input can change the path or add a query.
    pub fn url(&self, req: &Request) -> String {
        Client::url_for(&self.base_url, req)
    }

    pub fn url_for(base_url: &str, req: &Request) -> String {
        format!(
            "{base_url}/v4/departments/{}/payment-requests",
            req.department.as_str()
        )
    }

    /// The payment request for one row.
    pub async fn send(&self, req: &Request) -> Attempt {
        let request = self.http.post(self.url(req)).json(&Body::new(req));
        read_answer(request.send().await).await
    }

    /// The invoice's paid status (`GET .../kpayment/v1/invoicePaidStatus`). The invoice id
    /// is sent as an encoded query value, so nothing in it can change the URL.
    pub async fn paid_status(&self, invoice: &InvoiceGuid) -> Attempt {
        let url = format!("{}/kpayment/v1/invoicePaidStatus", self.base_url);
        let request = self
            .http
            .get(url)
            .query(&[("invoiceGUID", invoice.as_str())]);
        read_answer(request.send().await).await
    }
}

/// Reads an answer's status, `Retry-After` and body (at most [`MAX_BODY`]).
async fn read_answer(sent: reqwest::Result<reqwest::Response>) -> Attempt {
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return classify_error(&e),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let answer = |body| Attempt::Answered(Answer::parse(status, retry_after, body));
    let too_big = || {
        answer(Err(format!(
            "HTTP {status} with a body over 1 MiB (not read)"
        )))
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY as u64)
    {
        return too_big();
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > MAX_BODY => return too_big(),
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return answer(Ok(body)),
            // The status line arrived, so the server did answer; the body is what broke.
            Err(e) => {
                let chain = error_chain(&e);
                return answer(Err(format!(
                    "HTTP {status}, but reading the body failed: {chain}"
                )));
            }
        }
    }
}

fn classify_error(e: &reqwest::Error) -> Attempt {
    let detail = error_chain(e);
    // A connect error (refused, DNS, TLS handshake, connect timeout) means no byte of the
    // request reached the server. Everything else may have been acted on.
    if e.is_connect() {
        Attempt::NotConnected(format!("could not connect: {detail}"))
    } else if e.is_timeout() {
        Attempt::Lost(format!("no answer within the timeout: {detail}"))
    } else {
        Attempt::Lost(format!("connection lost: {detail}"))
    }
}

/// The error and its causes on one line, without the URL (it is ours, not news).
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// `Retry-After` as delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let future = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(future)).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn bodies_that_are_not_the_envelope_become_a_problem_not_a_panic() {
        for body in [&b""[..], b"   ", b"<html>", b"[1,2]", b"{\"errors\": 5}"] {
            let a = Answer::parse(200, None, Ok(body.to_vec()));
            assert!(
                a.body_problem.is_some(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn envelope_fields_may_be_null_or_missing() {
        let a = Answer::parse(
            400,
            None,
            Ok(br#"{"errors":[{"errorCode":"100006","errorTitle":null}],"warnings":null,"paymentLink":""}"#.to_vec()),
        );
        assert!(a.body_problem.is_none());
        assert_eq!(a.errors[0].code, Some(100006));
        assert_eq!(a.errors[0].render(), "100006");
        assert_eq!(a.payment_link, None);
        assert!(a.has_error_code(&[100006]));
    }

    #[test]
    fn errors_and_warnings_are_read_with_their_own_key_prefixes() {
        let a = Answer::parse(
            200,
            None,
            Ok(br#"{"errors":[{"errorCode":100006,"errorTitle":"INVALID_REQUEST_DATA","errorMessage":"bad"}],
                    "warnings":[{"warningCode":150000,"warningTitle":"NO_PREFERRED_DEALER_ID","warningMessage":"w"}]}"#.to_vec()),
        );
        assert_eq!(a.errors[0].render(), "100006 INVALID_REQUEST_DATA: bad");
        assert_eq!(a.warnings[0].render(), "150000 NO_PREFERRED_DEALER_ID: w");
    }

    #[test]
    fn messages_render_as_code_title_message() {
        let m = ApiMessage {
            code: Some(150000),
            title: "NO_PREFERRED_DEALER_ID".into(),
            message: "no dealer".into(),
        };
        assert_eq!(m.render(), "150000 NO_PREFERRED_DEALER_ID: no dealer");
    }
}
