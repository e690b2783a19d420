//! In-process fake of the myKaarma payment-request endpoint and the invoice paid-status
//! check (SPEC §8), under `/` and under `/payment` alike, so that a rehearsal changes only
//! the host of the real base URL.
//!
//! Rehearsals, tests and benchmarks need the whole send path — retries, rate limits, hostile
//! answers — without any chance of notifying a real customer, and they need to prove
//! afterwards exactly what arrived. Hence every request, however malformed, is counted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const RECENT_CAP: usize = 1_000;
/// Real bodies are ~150 bytes; anything far bigger is hostile and simply rejected as bad data.
const BODY_LIMIT: usize = 64 * 1024;
const WINDOW: Duration = Duration::from_secs(1);
const LINK_HOST: &str = "https://pay.simulator.invalid";

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub latency: Duration,
    pub jitter: Duration,
    pub fail_rate: f64,
    pub rate_limit: Option<u32>,
    /// `--capacity`/`--capacity-schedule`: a token bucket of N/s (burst N/5) whose N may
    /// change at times counted from the first request; beyond it, 429 with Retry-After.
    pub capacity: Vec<(Duration, f64)>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub seed: Option<u64>,
    pub slow_delay: Duration,
}

impl Default for SimConfig {
    /// By hand because `slow-` rows must outlast any sane client timeout by default.
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            fail_rate: 0.0,
            rate_limit: None,
            capacity: Vec::new(),
            username: None,
            password: None,
            seed: None,
            slow_delay: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Stats {
    pub total_requests: u64,
    pub by_invoice: BTreeMap<String, u64>,
    pub max_per_second: u64,
    pub per_second: Vec<u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub recent: Vec<RequestRecord>,
    /// Of `per_second`, the requests a capacity (`--capacity`) throttled.
    #[serde(default)]
    pub throttled_per_second: Vec<u64>,
    /// Paid-status checks, apart from the payment requests above.
    #[serde(default)]
    pub paid_checks: u64,
    #[serde(default)]
    pub paid_checks_by_invoice: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestRecord {
    pub at_ms: u64,
    pub key: String,
    /// Raw path and query, so tests can prove nothing was injected into the URL.
    pub path: String,
    pub status: u16,
    /// Never contains `authorization`: stats are served over plain HTTP and may end up in logs.
    pub headers: BTreeMap<String, String>,
    pub auth_user: Option<String>,
    pub body: Value,
}

pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Simulator {
    pub async fn serve(
        listener: tokio::net::TcpListener,
        config: SimConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        run(listener, Arc::new(Shared::new(config, shutdown))).await
    }

    pub async fn spawn(config: SimConfig) -> std::io::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, CancellationToken::new()));
        let task = tokio::spawn(run(listener, shared.clone()));
        Ok(Simulator { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.shared.snapshot()
    }

    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        match (&mut self.task).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "simulator stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "simulator task failed"),
            Ok(Ok(())) => {}
        }
    }
}

impl Drop for Simulator {
    /// A forgotten handle must not leave a server answering on the runtime.
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

async fn run(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let stop = shared.shutdown.clone().cancelled_owned();
    let app = Router::new()
        .route(
            "/__sim/stats",
            get(|State(s): State<Arc<Shared>>| async move { Json(s.snapshot()) }),
        )
        .route("/__sim/reset", post(reset))
        .fallback(payment_request)
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

async fn reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    *shared.lock() = Counters::new(&shared.config);
    StatusCode::NO_CONTENT
}

struct Shared {
    config: SimConfig,
    shutdown: CancellationToken,
    counters: Mutex<Counters>,
    /// Lets tests wait for an arrival instead of sleeping.
    #[cfg(test)]
    arrivals: tokio::sync::watch::Sender<u64>,
}

struct Counters {
    started: Instant,
    /// The first request's arrival, where a capacity schedule's times start.
    first: Option<Instant>,
    /// The capacity bucket's tokens, and when it was last filled.
    bucket: (f64, Option<Instant>),
    rng: StdRng,
    window: VecDeque<Instant>,
    /// `recent` stays empty here; the ring buffer below avoids shifting a Vec on every request.
    stats: Stats,
    recent: VecDeque<RequestRecord>,
    /// Separate from `by_invoice` so a 401 or 429 does not use up a `flaky-` row's failures.
    attempts: HashMap<String, u32>,
}

impl Counters {
    fn new(config: &SimConfig) -> Self {
        Self {
            started: Instant::now(),
            first: None,
            bucket: (0.0, None),
            rng: config
                .seed
                .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64),
            window: VecDeque::new(),
            stats: Stats::default(),
            recent: VecDeque::with_capacity(RECENT_CAP),
            attempts: HashMap::new(),
        }
    }
}

/// Per-request facts drawn under the one lock taken at arrival.
struct Arrival {
    at_ms: u64,
    rate_limited: bool,
    failure: Option<(u16, ApiError, bool)>,
    jitter: Duration,
}

impl Shared {
    fn new(config: SimConfig, shutdown: CancellationToken) -> Self {
        Self {
            counters: Mutex::new(Counters::new(&config)),
            config,
            shutdown,
            #[cfg(test)]
            arrivals: tokio::sync::watch::channel(0).0,
        }
    }

    /// Waits until `delay` after `arrived`, or until shutdown.
    async fn delay(&self, arrived: tokio::time::Instant, delay: Duration) {
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep_until(arrived + delay) => {}
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    /// A panicking handler must not take the counters down with it.
    fn lock(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request in the sliding window every request shares (payment requests and
    /// paid-status checks alike, as an API's rate limit would); whether it is over the limit.
    fn window(c: &mut Counters, config: &SimConfig, now: Instant) -> bool {
        while c
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            c.window.pop_front();
        }
        c.window.push_back(now);
        let in_window = c.window.len();
        c.stats.max_per_second = c.stats.max_per_second.max(in_window as u64);
        let elapsed = now.duration_since(c.started);
        let second = elapsed.as_secs() as usize;
        if c.stats.per_second.len() <= second {
            c.stats.per_second.resize(second + 1, 0);
        }
        c.stats.per_second[second] += 1;
        let over_capacity = Shared::over_capacity(c, config, now);
        if over_capacity {
            let throttled = &mut c.stats.throttled_per_second;
            if throttled.len() <= second {
                throttled.resize(second + 1, 0);
            }
            throttled[second] += 1;
        }
        config.rate_limit.is_some_and(|n| in_window > n as usize) || over_capacity
    }

    /// Takes a token from the capacity bucket; true when there is none (throttled).
    fn over_capacity(c: &mut Counters, config: &SimConfig, now: Instant) -> bool {
        let first = *c.first.get_or_insert(now);
        let since = now.duration_since(first);
        let Some(&(_, capacity)) = config.capacity.iter().rev().find(|(at, _)| *at <= since) else {
            return false;
        };
        let burst = (capacity / 5.0).max(1.0);
        let (tokens, filled) = &mut c.bucket;
        let elapsed = filled.map_or(f64::INFINITY, |t| now.duration_since(t).as_secs_f64());
        *tokens = (*tokens + elapsed * capacity).min(burst);
        *filled = Some(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            false
        } else {
            true
        }
    }

    /// A paid-status check: counted apart from payment requests. Whether it is rate limited.
    fn check_arrives(&self, invoice: &str) -> (bool, u64) {
        let mut guard = self.lock();
        let c = &mut *guard;
        let now = Instant::now();
        let limited = Shared::window(c, &self.config, now);
        c.stats.paid_checks += 1;
        *c.stats
            .paid_checks_by_invoice
            .entry(invoice.to_owned())
            .or_default() += 1;
        (limited, now.duration_since(c.started).as_millis() as u64)
    }

    fn arrive(&self, key: &str) -> Arrival {
        let mut guard = self.lock();
        let c = &mut *guard;
        let now = Instant::now();
        let rate_limited = Shared::window(c, &self.config, now);
        let elapsed = now.duration_since(c.started);
        let s = &mut c.stats;
        s.total_requests += 1;
        match s.by_invoice.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                s.by_invoice.insert(key.to_owned(), 1);
            }
        }
        #[cfg(test)]
        self.arrivals.send_replace(s.total_requests);
        let fail_rate = self.config.fail_rate;
        let failure = (fail_rate > 0.0 && c.rng.random::<f64>() < fail_rate)
            .then(|| RANDOM_FAILURES[c.rng.random_range(0..RANDOM_FAILURES.len())]);
        let jitter = match self.config.jitter.as_nanos() as u64 {
            0 => Duration::ZERO,
            max => Duration::from_nanos(c.rng.random_range(0..=max)),
        };
        Arrival {
            at_ms: elapsed.as_millis() as u64,
            rate_limited,
            failure,
            jitter,
        }
    }

    fn attempt(&self, key: &str) -> u32 {
        let mut c = self.lock();
        let n = c.attempts.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }

    fn finish(&self, record: RequestRecord) {
        let mut c = self.lock();
        *c.stats.by_status.entry(record.status).or_default() += 1;
        if c.recent.len() == RECENT_CAP {
            c.recent.pop_front();
        }
        c.recent.push_back(record);
    }

    fn snapshot(&self) -> Stats {
        let c = self.lock();
        Stats {
            recent: c.recent.iter().cloned().collect(),
            ..c.stats.clone()
        }
    }
}

/// The parts of a request that decide its answer.
struct Incoming<'a> {
    key: &'a str,
    dept: Option<&'a str>,
    body: &'a Value,
    creds: Option<&'a (String, String)>,
}

/// One handler for every path, so hostile URLs are still counted rather than dropped by a router.
async fn payment_request(State(sim): State<Arc<Shared>>, req: Request) -> Response {
    // The latency runs from the request's arrival, so the handler's own work is inside it
    // rather than added to it: `--latency 100` answers 100 ms after the request came.
    let arrived = tokio::time::Instant::now();
    let (parts, body) = req.into_parts();
    if let Some(invoice) = paid_status_query(&parts.method, &parts.uri) {
        let response = paid_status(&sim, &parts, &invoice);
        sim.delay(arrived, sim.config.latency).await;
        return response;
    }
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let path = parts.uri.path();
    let target = parts.uri.path_and_query().map_or(path, |p| p.as_str());
    let dept = department(&parts.method, path);
    let key = match dept {
        Some(d) => format!("{d}/{}", invoice_guid(&body).unwrap_or("?")),
        None => "?/?".to_owned(),
    };
    let arrival = sim.arrive(&key);
    let creds = basic_credentials(&parts.headers);
    let incoming = Incoming {
        key: &key,
        dept,
        body: &body,
        creds: creds.as_ref(),
    };
    let response = decide(&sim, &arrival, &incoming);
    let status = response.status().as_u16();
    let slow = status == 200 && invoice_guid(&body).is_some_and(|i| i.starts_with("slow-"));
    tracing::debug!(%key, status, "simulated answer");
    sim.finish(RequestRecord {
        at_ms: arrival.at_ms,
        path: target.to_owned(),
        key,
        status,
        headers: header_record(&parts.headers),
        auth_user: creds.map(|(user, _)| user),
        body,
    });
    let mut delay = sim.config.latency + arrival.jitter;
    if slow {
        delay += sim.config.slow_delay;
    }
    sim.delay(arrived, delay).await;
    response
}

/// Decided before any delay, so the record carries the status the client will get.
fn decide(sim: &Shared, arrival: &Arrival, req: &Incoming<'_>) -> Response {
    let Some(dept) = req.dept else {
        return fail(404, NOT_FOUND, false);
    };
    if let (Some(user), Some(pass)) = (&sim.config.username, &sim.config.password) {
        match req.creds {
            None => return fail(401, NULL_CREDENTIALS, false),
            Some((u, p)) if u != user || p != pass => return fail(401, WRONG_CREDENTIAL, false),
            Some(_) => {}
        }
    }
    if arrival.rate_limited {
        return fail(429, TOO_MANY_REQUESTS, true);
    }
    let Some(invoice) = invoice_guid(req.body) else {
        return fail(400, INVALID_REQUEST_DATA, false);
    };
    let mut env = success(dept, invoice, req.body);
    match invoice.split_once('-').map_or("", |(prefix, _)| prefix) {
        "ok" | "slow" => {}
        "warn" => env.warnings.push(NO_PREFERRED_DEALER_ID),
        "notext" => env.text_sent = Some("FAILURE"),
        "bad" => return fail(400, INVALID_REQUEST_DATA, false),
        "flaky" if sim.attempt(req.key) <= 2 => return fail(503, UNAVAILABLE, false),
        "rate" if sim.attempt(req.key) == 1 => return fail(429, TOO_MANY_REQUESTS, true),
        "flaky" | "rate" => {}
        "err500" => return fail(500, INTERNAL_SERVER_EXCEPTION, false),
        "noauth" => return fail(403, INVALID_DEPARTMENT_TOKEN, false),
        "formula" => {
            env.payment_link = Some("=HYPERLINK(\"http://evil\")".into());
            env.invoice_link = Some("+1+1".into());
            let (title, message) = ("@SUM(A1)", "-2+3");
            env.warnings.push(ApiWarning {
                title,
                message,
                ..NO_PREFERRED_DEALER_ID
            });
        }
        "garbage" => {
            let html = [(header::CONTENT_TYPE, "text/html")];
            return (html, "<html>not json</html>").into_response();
        }
        "empty" => return Body::empty().into_response(),
        "huge" => env.payment_link = Some(format!("{LINK_HOST}/p/{}", "x".repeat(2 << 20))),
        // A 200 that did nothing: no link, no channel, one error (the rejected-2xx shape).
        "nolink" => {
            env.payment_link = None;
            env.invoice_link = None;
            env.text_sent = None;
            env.email_sent = None;
            env.errors.push(INVALID_REQUEST_DATA);
        }
        _ => {
            if let Some((status, error, retry_after)) = arrival.failure {
                return fail(status, error, retry_after);
            }
        }
    }
    json(200, &env, false)
}

fn invoice_guid(body: &Value) -> Option<&str> {
    body.get("invoiceGuid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The raw (still percent-encoded) department segment, or `None` for anything but our route.
fn department<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    if method != Method::POST {
        return None;
    }
    let dept = unprefixed(path)
        .strip_prefix("/v4/departments/")?
        .strip_suffix("/payment-requests")?;
    (!dept.is_empty() && !dept.contains('/')).then_some(dept)
}

/// The path without the real API's `/payment` prefix.
fn unprefixed(path: &str) -> &str {
    path.strip_prefix("/payment")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path)
}

/// The invoice asked about, if this is a paid-status check (`""` when none is given).
fn paid_status_query(method: &Method, uri: &axum::http::Uri) -> Option<String> {
    if method != Method::GET || unprefixed(uri.path()) != "/kpayment/v1/invoicePaidStatus" {
        return None;
    }
    let query = uri.query().unwrap_or("");
    let invoice = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "invoiceGUID")
        .map(|(_, v)| v.into_owned());
    Some(invoice.unwrap_or_default())
}

/// `GET /kpayment/v1/invoicePaidStatus`: `paid-` invoices are paid, `noscope-` ones are
/// refused as if the credentials lacked the scope, others are not paid.
fn paid_status(sim: &Shared, parts: &axum::http::request::Parts, invoice: &str) -> Response {
    let (limited, at_ms) = sim.check_arrives(invoice);
    let creds = basic_credentials(&parts.headers);
    let refused = match (&sim.config.username, &sim.config.password, &creds) {
        (Some(user), Some(pass), Some((u, p))) => u != user || p != pass,
        (Some(_), Some(_), None) => true,
        _ => false,
    };
    let prefix = invoice.split_once('-').map_or("", |(p, _)| p);
    let response = match () {
        _ if refused => fail(401, WRONG_CREDENTIAL, false),
        _ if limited => fail(429, TOO_MANY_REQUESTS, true),
        _ if invoice.is_empty() => fail(400, INVALID_REQUEST_DATA, false),
        _ if prefix == "noscope" => fail(403, MISSING_SCOPE, false),
        _ => {
            let paid = prefix == "paid";
            let body = serde_json::json!({
                "errors": [], "warnings": [], "paid": paid,
                "amount": if paid { Some(125.5) } else { None },
                "approvalCode": if paid { Some("SIM-APPROVED") } else { None },
            });
            (StatusCode::OK, Json(body)).into_response()
        }
    };
    sim.finish(RequestRecord {
        at_ms,
        key: format!("paid-status/{invoice}"),
        path: parts.uri.to_string(),
        status: response.status().as_u16(),
        headers: header_record(&parts.headers),
        auth_user: creds.map(|(user, _)| user),
        body: Value::Null,
    });
    response
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let (scheme, encoded) = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, pass) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

fn header_record(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::<String, String>::new();
    for (name, value) in headers {
        if name == header::AUTHORIZATION || name == header::PROXY_AUTHORIZATION {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    out
}

#[derive(Clone, Copy, Serialize)]
struct ApiError {
    #[serde(rename = "errorCode")]
    code: u32,
    #[serde(rename = "errorTitle")]
    title: &'static str,
    #[serde(rename = "errorMessage")]
    message: &'static str,
    #[serde(rename = "errorDescription")]
    description: &'static str,
}

#[derive(Clone, Copy, Serialize)]
struct ApiWarning {
    #[serde(rename = "warningCode")]
    code: u32,
    #[serde(rename = "warningTitle")]
    title: &'static str,
    #[serde(rename = "warningMessage")]
    message: &'static str,
    #[serde(rename = "warningDescription")]
    description: &'static str,
}

const DESCRIPTION: &str = "simulated by invoice-dispatch";

const fn error(code: u32, title: &'static str, message: &'static str) -> ApiError {
    ApiError {
        code,
        title,
        message,
        description: DESCRIPTION,
    }
}

const NULL_CREDENTIALS: ApiError = error(100001, "NULL_CREDENTIALS", "No credentials");
const WRONG_CREDENTIAL: ApiError = error(100003, "WRONG_CREDENTIAL", "Wrong credentials");
const INTERNAL_SERVER_EXCEPTION: ApiError = error(100005, "INTERNAL_SERVER_EXCEPTION", "Failed");
const INVALID_REQUEST_DATA: ApiError = error(100006, "INVALID_REQUEST_DATA", "Invalid data");
const INTERNAL_SERVER_ERROR: ApiError = error(100007, "INTERNAL_SERVER_ERROR", "Failed");
const INVALID_DEPARTMENT_TOKEN: ApiError = error(100013, "INVALID_DEPARTMENT_TOKEN", "Denied");
const MISSING_SCOPE: ApiError = error(
    100002,
    "ACCESS_FORBIDDEN",
    "These credentials lack the scope payment.invoice.check.paid",
);
const TOO_MANY_REQUESTS: ApiError = error(429, "TOO_MANY_REQUESTS", "Slow down");
const UNAVAILABLE: ApiError = error(503, "SERVICE_UNAVAILABLE", "Try again later");
const NOT_FOUND: ApiError = error(404, "NOT_FOUND", "No such endpoint");
const NO_PREFERRED_DEALER_ID: ApiWarning = ApiWarning {
    code: 150000,
    title: "NO_PREFERRED_DEALER_ID",
    message: "No preferred dealer id",
    description: DESCRIPTION,
};
/// What `fail_rate` picks from: status, error, whether a Retry-After is sent.
const RANDOM_FAILURES: [(u16, ApiError, bool); 3] = [
    (500, INTERNAL_SERVER_ERROR, false),
    (503, UNAVAILABLE, true),
    (429, TOO_MANY_REQUESTS, true),
];

/// Links stay `Option` and are serialized as `null`, because the real API may omit them.
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    errors: Vec<ApiError>,
    warnings: Vec<ApiWarning>,
    payment_link: Option<String>,
    invoice_link: Option<String>,
    text_sent: Option<&'static str>,
    email_sent: Option<&'static str>,
}

fn success(dept: &str, invoice: &str, body: &Value) -> Envelope {
    let sent = |flag| {
        body.get(flag)
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .then_some("SUCCESS")
    };
    Envelope {
        payment_link: Some(format!("{LINK_HOST}/p/{dept}/{invoice}")),
        invoice_link: Some(format!("{LINK_HOST}/i/{dept}/{invoice}")),
        text_sent: sent("sendAsText"),
        email_sent: sent("sendAsEmail"),
        ..Envelope::default()
    }
}

fn json(status: u16, env: &Envelope, retry_after: bool) -> Response {
    let status = StatusCode::from_u16(status).expect("simulator statuses are valid");
    let mut response = (status, Json(env)).into_response();
    if retry_after {
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn fail(status: u16, error: ApiError, retry_after: bool) -> Response {
    let env = Envelope {
        errors: vec![error],
        ..Envelope::default()
    };
    json(status, &env, retry_after)
}

#[cfg(test)]
mod tests;
