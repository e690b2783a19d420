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

#[tokio::test]
async fn the_real_apis_paths_under_payment_answer_too() {
    let h = Harness::new(SimConfig::default()).await;
    let reply = h
        .post(&format!("/payment{ROUTE}"), request("ok-1"), None)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(h.sim.stats().by_invoice["D1/ok-1"], 1);
    // Not a prefix of the path in general: only /payment itself.
    let reply = h
        .post(&format!("/paymentx{ROUTE}"), request("ok-1"), None)
        .await;
    assert_eq!(reply.status, 404);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn paid_status_answers_by_prefix_and_is_counted_apart() {
    let h = Harness::new(SimConfig::default()).await;
    let base = h.sim.base_url();
    let check = |invoice: &str| {
        let url = format!("{base}/payment/kpayment/v1/invoicePaidStatus");
        h.http.get(url).query(&[("invoiceGUID", invoice)])
    };
    let paid = h.send(check("paid-1 & co"), None).await;
    assert_eq!(paid.status, 200);
    assert_eq!(paid.json()["paid"], true);
    assert_eq!(paid.json()["amount"], 125.5);
    let unpaid = h.send(check("ok-2"), None).await;
    assert_eq!(
        (unpaid.status, unpaid.json()["paid"].clone()),
        (200, json!(false))
    );
    let refused = h.send(check("noscope-3"), None).await;
    assert_eq!(refused.status, 403);
    let stats = h.sim.stats();
    assert_eq!(stats.total_requests, 0, "checks are not payment requests");
    assert_eq!(stats.paid_checks, 3);
    assert_eq!(stats.paid_checks_by_invoice["paid-1 & co"], 1);
    h.sim.shutdown().await;
}
