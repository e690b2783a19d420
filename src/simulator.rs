//! In-process fake of the myKaarma payment-request endpoint (SPEC §8).
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

    /// A panicking handler must not take the counters down with it.
    fn lock(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn arrive(&self, key: &str) -> Arrival {
        let mut guard = self.lock();
        let c = &mut *guard;
        let now = Instant::now();
        while c
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            c.window.pop_front();
        }
        c.window.push_back(now);
        let in_window = c.window.len();
        let rate_limited = self
            .config
            .rate_limit
            .is_some_and(|n| in_window > n as usize);
        let elapsed = now.duration_since(c.started);
        let second = elapsed.as_secs() as usize;
        let s = &mut c.stats;
        s.total_requests += 1;
        s.max_per_second = s.max_per_second.max(in_window as u64);
        if s.per_second.len() <= second {
            s.per_second.resize(second + 1, 0);
        }
        s.per_second[second] += 1;
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
    let (parts, body) = req.into_parts();
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
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = sim.shutdown.cancelled() => {}
        }
    }
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
    let dept = path
        .strip_prefix("/v4/departments/")?
        .strip_suffix("/payment-requests")?;
    (!dept.is_empty() && !dept.contains('/')).then_some(dept)
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
mod tests {
    use super::*;
    use serde_json::json;

    const ROUTE: &str = "/v4/departments/D1/payment-requests";

    struct Harness {
        sim: Simulator,
        http: reqwest::Client,
    }

    struct Reply {
        status: u16,
        retry_after: Option<String>,
        content_type: Option<String>,
        text: String,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_str(&self.text).unwrap()
        }
        fn error_code(&self) -> u64 {
            self.json()["errors"][0]["errorCode"].as_u64().unwrap_or(0)
        }
    }

    fn request(invoice: &str) -> Value {
        json!({"invoiceGuid": invoice, "sendWithoutKpay": false, "attachInvoice": true,
               "sendAsText": true, "sendAsEmail": false, "esignRequired": false})
    }

    impl Harness {
        async fn new(config: SimConfig) -> Self {
            let sim = Simulator::spawn(config).await.unwrap();
            Self {
                sim,
                http: reqwest::Client::new(),
            }
        }

        async fn send(&self, req: reqwest::RequestBuilder, auth: Option<&str>) -> Reply {
            let req = match auth {
                Some(auth) => req.header("authorization", auth),
                None => req,
            };
            let resp = req.send().await.unwrap();
            let header = |name| {
                resp.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let (retry_after, content_type) = (header("retry-after"), header("content-type"));
            let status = resp.status().as_u16();
            Reply {
                status,
                retry_after,
                content_type,
                text: resp.text().await.unwrap(),
            }
        }

        async fn post(&self, path: &str, body: Value, auth: Option<&str>) -> Reply {
            let url = format!("{}{path}", self.sim.base_url());
            self.send(self.http.post(url).json(&body), auth).await
        }

        async fn invoice(&self, invoice: &str) -> Reply {
            self.post(ROUTE, request(invoice), None).await
        }
    }

    #[tokio::test]
    async fn prefixes_answer_deterministically() {
        let h = Harness::new(SimConfig::default()).await;
        let ok = h.invoice("ok-1").await;
        assert_eq!((ok.status, ok.retry_after.as_deref()), (200, None));
        let ok = ok.json();
        assert_eq!(ok["paymentLink"], "https://pay.simulator.invalid/p/D1/ok-1");
        assert_eq!(ok["invoiceLink"], "https://pay.simulator.invalid/i/D1/ok-1");
        assert_eq!(ok["textSent"], "SUCCESS");
        assert_eq!(
            (&ok["emailSent"], &ok["errors"]),
            (&Value::Null, &json!([]))
        );
        assert_eq!(h.invoice("INV-9").await.json()["textSent"], "SUCCESS");
        let warn = h.invoice("warn-1").await.json();
        assert_eq!(warn["warnings"][0]["warningCode"], 150000);
        assert_eq!(h.invoice("notext-1").await.json()["textSent"], "FAILURE");
        let formula = h.invoice("formula-1").await.json();
        assert_eq!(formula["paymentLink"], "=HYPERLINK(\"http://evil\")");
        assert_eq!(formula["invoiceLink"], "+1+1");
        assert_eq!(formula["warnings"][0]["warningTitle"], "@SUM(A1)");
        assert_eq!(formula["warnings"][0]["warningMessage"], "-2+3");
        let nolink = h.invoice("nolink-1").await;
        assert_eq!((nolink.status, nolink.error_code()), (200, 100006));
        assert_eq!(nolink.json()["paymentLink"], Value::Null);
        for (invoice, status, code) in [
            ("bad-1", 400, 100006),
            ("err500-1", 500, 100005),
            ("noauth-1", 403, 100013),
        ] {
            let reply = h.invoice(invoice).await;
            assert_eq!(
                (reply.status, reply.error_code()),
                (status, code),
                "{invoice}"
            );
        }
        for body in [
            json!({"sendAsText": true}),
            json!("text"),
            json!({"invoiceGuid": ""}),
        ] {
            let reply = h.post(ROUTE, body, None).await;
            assert_eq!((reply.status, reply.error_code()), (400, 100006));
        }
        let garbage = h.invoice("garbage-1").await;
        assert_eq!(garbage.content_type.as_deref(), Some("text/html"));
        assert_eq!(
            (garbage.status, garbage.text.as_str()),
            (200, "<html>not json</html>")
        );
        let empty = h.invoice("empty-1").await;
        assert_eq!((empty.status, empty.text.as_str()), (200, ""));
        let huge = h.invoice("huge-1").await;
        assert!(huge.json()["paymentLink"].as_str().unwrap().len() > 2 << 20);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn flaky_and_rate_fail_then_succeed_per_key() {
        let h = Harness::new(SimConfig::default()).await;
        let mut seen = Vec::new();
        for invoice in [
            "flaky-1", "flaky-2", "flaky-1", "flaky-1", "flaky-1", "rate-1", "rate-1",
        ] {
            let reply = h.invoice(invoice).await;
            seen.push((reply.status, reply.retry_after));
        }
        let retry = || Some("1".to_owned());
        let expected = [
            (503, None),
            (503, None),
            (503, None),
            (200, None),
            (200, None),
        ];
        assert_eq!(seen[..5], expected);
        assert_eq!(seen[5..], [(429, retry()), (200, None)]);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn basic_auth_is_checked_and_never_recorded() {
        let user = (Some("u".to_owned()), Some("p".to_owned()));
        let config = SimConfig {
            username: user.0,
            password: user.1,
            ..SimConfig::default()
        };
        let h = Harness::new(config).await;
        for (auth, status, code) in [
            (None, 401, 100001),
            (Some("Basic !!!"), 401, 100001),
            (Some("Bearer dTpw"), 401, 100001),
            (Some("Basic dTp3cm9uZw=="), 401, 100003), // u:wrong
            (Some("basic dTpw"), 200, 0),              // u:p
        ] {
            let reply = h.post(ROUTE, request("ok-1"), auth).await;
            assert_eq!(
                (reply.status, reply.error_code()),
                (status, code),
                "{auth:?}"
            );
        }
        let stats = h.sim.stats();
        assert_eq!(stats.by_invoice["D1/ok-1"], 5);
        assert!(stats
            .recent
            .iter()
            .all(|r| !r.headers.contains_key("authorization")));
        let users: Vec<_> = stats
            .recent
            .iter()
            .map(|r| r.auth_user.as_deref())
            .collect();
        assert_eq!(users, [None, None, None, Some("u"), Some("u")]);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn rate_limit_answers_429_with_retry_after() {
        let h = Harness::new(SimConfig {
            rate_limit: Some(2),
            ..SimConfig::default()
        })
        .await;
        assert_eq!(h.invoice("ok-1").await.status, 200);
        assert_eq!(h.invoice("ok-2").await.status, 200);
        let limited = h.invoice("ok-3").await;
        assert_eq!(
            (limited.status, limited.retry_after.as_deref()),
            (429, Some("1"))
        );
        assert_eq!(
            limited.json()["errors"][0]["errorTitle"],
            "TOO_MANY_REQUESTS"
        );
        assert_eq!(h.sim.stats().max_per_second, 3);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn fail_rate_mixes_failures_but_prefixes_win() {
        let config = SimConfig {
            fail_rate: 1.0,
            seed: Some(7),
            ..SimConfig::default()
        };
        let h = Harness::new(config).await;
        let mut statuses = std::collections::BTreeSet::new();
        for i in 0..30 {
            let reply = h.invoice(&format!("INV{i}")).await;
            let expected = match reply.status {
                500 => (None, 100007),
                503 => (Some("1"), 503),
                429 => (Some("1"), 429),
                other => panic!("unexpected {other}"),
            };
            assert_eq!((reply.retry_after.as_deref(), reply.error_code()), expected);
            statuses.insert(reply.status);
        }
        assert_eq!(statuses.len(), 3);
        assert_eq!(h.invoice("ok-1").await.status, 200);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn stats_record_everything_including_hostile_paths() {
        let h = Harness::new(SimConfig::default()).await;
        h.invoice("ok-1").await;
        h.invoice("bad-1").await;
        let hostile_path = "/v4/departments/D1/x/payment-requests?a=%0d%0a";
        let hostile = h.post(hostile_path, request("ok-1"), None).await;
        assert_eq!((hostile.status, hostile.error_code()), (404, 404));
        let base = h.sim.base_url();
        let wrong_method = h.send(h.http.get(format!("{base}{ROUTE}")), None).await;
        assert_eq!(wrong_method.status, 404);

        let stats = h
            .send(h.http.get(format!("{base}/__sim/stats")), None)
            .await;
        let stats: Stats = serde_json::from_str(&stats.text).unwrap();
        assert_eq!(
            (stats.total_requests, stats.per_second.iter().sum()),
            (4, 4)
        );
        let keys = [("D1/ok-1", 1), ("D1/bad-1", 1), ("?/?", 2)];
        assert_eq!(
            stats.by_invoice,
            keys.map(|(k, n)| (k.to_owned(), n)).into()
        );
        assert_eq!(stats.by_status, [(200, 1), (400, 1), (404, 2)].into());
        let record = &stats.recent[2];
        assert_eq!((record.key.as_str(), record.status), ("?/?", 404));
        assert_eq!(
            (record.path.as_str(), &record.body),
            (hostile_path, &request("ok-1"))
        );
        assert_eq!(stats.recent[0].headers["content-type"], "application/json");
        assert_eq!(stats.recent[3].body, Value::Null);
        assert_eq!(
            h.sim.stats().recent.len(),
            4,
            "control endpoints are not recorded"
        );

        let reset = h
            .send(h.http.post(format!("{base}/__sim/reset")), None)
            .await;
        assert_eq!(reset.status, 204);
        let stats = h.sim.stats();
        assert_eq!(
            (
                stats.total_requests,
                stats.recent.len(),
                stats.by_invoice.len()
            ),
            (0, 0, 0)
        );
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn slow_rows_end_promptly_on_shutdown() {
        let h = Harness::new(SimConfig::default()).await;
        let mut arrivals = h.sim.shared.arrivals.subscribe();
        let url = format!("{}{ROUTE}", h.sim.base_url());
        let pending = tokio::spawn(h.http.post(url).json(&request("slow-1")).send());
        arrivals.wait_for(|n| *n == 1).await.unwrap();
        let limit = Duration::from_secs(10); // far below the 60 s slow_delay
        tokio::time::timeout(limit, h.sim.shutdown())
            .await
            .expect("shutdown waited");
        let resp = tokio::time::timeout(limit, pending)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[test]
    fn recent_is_a_bounded_ring() {
        let shared = Shared::new(SimConfig::default(), CancellationToken::new());
        for at_ms in 0..RECENT_CAP as u64 + 5 {
            let (key, path, headers) = (String::new(), String::new(), BTreeMap::new());
            let (status, auth_user, body) = (200, None, Value::Null);
            shared.finish(RequestRecord {
                at_ms,
                key,
                path,
                status,
                headers,
                auth_user,
                body,
            });
        }
        let stats = shared.snapshot();
        let ats = (stats.recent[0].at_ms, stats.recent.last().unwrap().at_ms);
        assert_eq!(
            (stats.recent.len(), ats),
            (RECENT_CAP, (5, RECENT_CAP as u64 + 4))
        );
        assert_eq!(stats.by_status[&200], RECENT_CAP as u64 + 5);
    }
}
