//! The desk over plain HTTP: who may use it (token, host, origin, loopback, the upload
//! limit, one send at a time), that typed credentials never come back out, and a send,
//! a stop and a pause driven through its forms. Every refusal is checked to have sent
//! nothing: the simulator's counts.

mod common;

use std::time::Duration;

use common::desk::{multipart, Desk};
use common::{rows, World, DEPT, HEADER, PASSWORD, USER};
use invoice_dispatch::simulator::SimConfig;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, COOKIE, HOST, ORIGIN};

fn csv(prefix: &str, n: usize) -> Vec<u8> {
    let mut text = format!("{HEADER}\n");
    for row in rows(DEPT, prefix, n) {
        text.push_str(&row);
        text.push('\n');
    }
    text.into_bytes()
}

const MYKAARMA: (&str, &str) = ("target", "mykaarma");

/// Sends `n` rows to "myKaarma" (the world's simulator) through the desk, until the first
/// request has arrived.
async fn sending(w: &World, desk: &Desk, prefix: &str, n: usize) {
    desk.send("in.csv", &csv(prefix, n), &[MYKAARMA], n as u64)
        .await;
    common::wait_for("a first request", Duration::from_secs(30), || {
        w.stats().total_requests > 0
    })
    .await;
}

/// Waits (bounded) until the Watch screen says the send is paused.
async fn shows_paused(desk: &Desk, limit: Duration) {
    common::wait_for_async("the Watch screen to show the pause", limit, || async {
        desk.get("/watch")
            .await
            .body
            .contains("Paused: no request starts")
    })
    .await;
}

/// `runs --format json`, newest first.
async fn runs(w: &World) -> serde_json::Value {
    serde_json::from_str(&w.look(&["runs", "--format", "json"]).await.stdout).unwrap()
}

#[tokio::test]
async fn without_the_token_nothing_is_served() {
    let w = World::start().await;
    let desk = w.desk("", &[]).await;
    for path in [
        "/",
        "/desk.css",
        "/nowhere",
        "/runs",
        "/check/1",
        "/download/results.csv",
    ] {
        let a = desk.get_with(path, &[]).await;
        assert_eq!(a.status, 403, "{path} without the cookie");
        // The right name, and the token with its first digit changed (a fixed "00"
        // would be the token itself one time in 256).
        let first = if desk.token.starts_with('0') {
            '1'
        } else {
            '0'
        };
        let wrong = format!(
            "invoice_dispatch_desk_{}={first}{}",
            desk.port,
            &desk.token[1..]
        );
        assert_eq!(
            desk.get_with(path, &[("cookie", &wrong)]).await.status,
            403,
            "{path}, wrong cookie"
        );
    }
    assert_eq!(desk.get_with("/?token=0123", &[]).await.status, 403);
    // The printed address sets the cookie and leaves the address bar.
    let entry = desk.get_with(&format!("/?token={}", desk.token), &[]).await;
    assert_eq!((entry.status, entry.location()), (303, "/"));
    let cookie = entry.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(cookie.starts_with(&desk.cookie()), "{cookie}");
    let page = desk.get("/").await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("http"),
        "{csp}"
    );
    assert_eq!(desk.get("/desk.css").await.status, 200);
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn a_wrong_host_is_refused() {
    let w = World::start().await;
    let desk = w.desk("", &[]).await;
    let rebound = format!("attacker.example:{}", desk.port);
    let a = desk
        .get_with(
            "/",
            &[("cookie", &desk.cookie()), (HOST.as_str(), &rebound)],
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let entry = desk
        .get_with(
            &format!("/?token={}", desk.token),
            &[(HOST.as_str(), &rebound)],
        )
        .await;
    assert_eq!(entry.status, 403, "the token is no use under another name");
    let local = format!("localhost:{}", desk.port);
    assert_eq!(
        desk.get_with("/", &[("cookie", &desk.cookie()), (HOST.as_str(), &local)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn changes_need_the_desks_origin_and_token() {
    let w = World::start().await;
    let desk = w.desk("", &[]).await;
    let (kind, body) = multipart(&[MYKAARMA], Some(("file", "in.csv", &csv("INV-", 3))));
    let with = |origin: Option<&str>| {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&desk.cookie()).unwrap());
        h.insert(CONTENT_TYPE, HeaderValue::from_str(&kind).unwrap());
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    };
    let cross = desk
        .post_raw(
            "/upload",
            with(Some("http://attacker.example")),
            body.clone(),
            true,
        )
        .await;
    assert_eq!(cross.status, 403, "cross-origin");
    let none = desk
        .post_raw("/upload", with(None), body.clone(), true)
        .await;
    assert_eq!(none.status, 403, "no origin");
    let no_token = desk
        .post_raw("/upload", with(Some(&desk.base)), body.clone(), false)
        .await;
    assert_eq!(no_token.status, 403, "no token");
    for path in ["/send/1", "/pause", "/resume", "/stop"] {
        let a = desk
            .post_raw(
                path,
                with(Some("http://attacker.example")),
                Vec::new(),
                true,
            )
            .await;
        assert_eq!(a.status, 403, "{path} cross-origin");
    }
    // Nothing was taken: the first upload the desk accepts is its first.
    assert_eq!(desk.get("/check/1").await.status, 404);
    let taken = desk.upload("in.csv", &csv("INV-", 3), &[MYKAARMA]).await;
    assert_eq!(taken.status, 303, "{}", taken.body);
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn an_upload_over_50_mb_is_refused() {
    let w = World::start().await;
    let desk = w.desk("", &[]).await;
    let mut big = csv("INV-", 1);
    big.resize(51 * 1000 * 1000, b'\n');
    let a = desk.upload("big.csv", &big, &[MYKAARMA]).await;
    assert_eq!(a.status, 413);
    assert!(
        a.body
            .contains("use `invoice-dispatch send` for files this big"),
        "{}",
        a.body
    );
    assert_eq!(w.stats().total_requests, 0);
}

#[tokio::test]
async fn the_desk_listens_on_loopback_only() {
    let w = World::start().await;
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = w
            .command()
            .args(["desk", "--no-open", "--listen", listen, "--ledger"])
            .arg(w.ledger())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("loopback only"), "{stderr}");
        assert!(out.stdout.is_empty(), "no address printed");
    }
}

#[tokio::test]
async fn a_second_send_while_one_runs_is_refused() {
    let w = World::start().await;
    let desk = w.desk("rate = 5", &[]).await;
    // Past the new ledger's creation, which a look at it would wait for.
    sending(&w, &desk, "A-", 20).await;
    let up = desk.upload("second.csv", &csv("B-", 5), &[MYKAARMA]).await;
    assert_eq!(up.status, 303, "{}", up.body);
    let id = up.location().rsplit('/').next().unwrap().to_string();
    let second = desk
        .post_form(&format!("/send/{id}"), &[("count", "5")])
        .await;
    assert_eq!(second.status, 409, "{}", second.body);
    assert!(second.body.contains("already running"), "{}", second.body);
    desk.post_form("/stop", &[]).await;
    desk.wait_done(Duration::from_secs(60)).await;
    let stats = w.stats();
    assert!(
        stats.by_invoice.keys().all(|k| k.contains("/A-")),
        "{:?}",
        stats.by_invoice
    );
    common::no_invoice_twice(&w);
}

#[tokio::test]
async fn typed_credentials_stay_in_memory() {
    let sim = SimConfig {
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ..SimConfig::default()
    };
    let w = World::with(sim).await;
    let mut cmd = w.command();
    cmd.env_remove("INVOICE_DISPATCH_USERNAME")
        .env_remove("INVOICE_DISPATCH_PASSWORD");
    cmd.args(["desk", "--no-open", "--ledger"])
        .arg(w.ledger())
        .arg("--base-url")
        .arg(w.sim.base_url());
    let desk = Desk::spawn(cmd).await;
    let choose = desk.get("/").await;
    assert!(
        choose.body.contains("name=\"password\""),
        "asks for credentials"
    );
    let fields = [MYKAARMA, ("username", USER), ("password", PASSWORD)];
    desk.send("in.csv", &csv("INV-", 4), &fields, 4).await;
    let done = desk.wait_done(Duration::from_secs(60)).await;
    assert!(done.body.contains("nothing needs you"), "{}", done.body);
    assert_eq!(
        w.stats().by_status.get(&200),
        Some(&4),
        "sent with the typed credentials"
    );
    let mut seen = vec![
        done.body,
        desk.get("/").await.body,
        desk.get("/check/1").await.body,
    ];
    for path in [
        "/confirm/1",
        "/runs",
        "/history?invoice=INV-00001",
        "/resolve",
        "/download/results.csv",
        "/download/report.html",
    ] {
        seen.push(desk.get(path).await.body);
    }
    assert!(seen[1].contains(USER), "the page shows the user name");
    for body in &seen {
        assert!(!body.contains(PASSWORD), "a page holds the password");
    }
    let stderr = desk.stderr.lock().unwrap().clone();
    assert_eq!(desk.interrupt().await, 0);
    assert!(!stderr.contains(PASSWORD));
    for entry in walk(w.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        let found = bytes
            .windows(PASSWORD.len())
            .any(|win| win == PASSWORD.as_bytes());
        assert!(!found, "{} holds the password", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn a_stop_leaves_the_rest_not_sent_and_means_130() {
    let w = World::start().await;
    let desk = w.desk("rate = 5", &[]).await;
    sending(&w, &desk, "INV-", 40).await;
    let stopped = desk.post_form("/stop", &[]).await;
    assert_eq!(stopped.location(), "/watch");
    let done = desk.wait_done(Duration::from_secs(60)).await;
    assert!(
        done.body
            .contains("Stopped: the requests in flight finished"),
        "{}",
        done.body
    );
    let results = common::parse_results(&desk.get("/download/results.csv").await.body);
    assert_eq!(results.len(), 40);
    let sent = results.iter().filter(|r| r["status"] == "sent").count();
    let not_sent = results.iter().filter(|r| r["status"] == "not_sent").count();
    assert_eq!(sent as u64, w.stats().total_requests);
    assert_eq!(sent + not_sent, 40, "sent or not_sent, nothing else");
    assert!(not_sent > 0);
    let runs = runs(&w).await;
    assert_eq!(runs[0]["exit_code"], 130, "{runs}");
}

#[tokio::test]
async fn a_pause_typed_elsewhere_pauses_the_desks_send() {
    let w = World::start().await;
    let desk = w.desk("rate = 5", &[]).await;
    sending(&w, &desk, "P-", 30).await;
    let runs = runs(&w).await;
    let run = runs[0]["id"].as_str().unwrap().to_string();
    let paused = w.look(&["pause", &run]).await;
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    shows_paused(&desk, Duration::from_secs(2)).await;
    let at_pause = w.stats().total_requests;
    // An absence: no request over a span of ten requests' worth at the configured rate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.stats().total_requests,
        at_pause,
        "no request while paused"
    );
    assert!(at_pause < 30);
    assert_eq!(w.look(&["resume", &run]).await.code, 0);
    let done = desk.wait_done(Duration::from_secs(60)).await;
    assert!(done.body.contains("nothing needs you"), "{}", done.body);
    assert!(
        done.body.contains("<span>paused</span>"),
        "the paused time is shown"
    );
    assert_eq!(w.stats().total_requests, 30);
    common::no_invoice_twice(&w);
}

#[tokio::test]
async fn the_desks_pause_button_is_recorded_in_the_ledger() {
    let w = World::start().await;
    let desk = w.desk("rate = 5", &[]).await;
    sending(&w, &desk, "Q-", 30).await;
    assert_eq!(desk.post_form("/pause", &[]).await.location(), "/watch");
    common::wait_for_async("runs to say paused", Duration::from_secs(2), || async {
        runs(&w).await[0]["state"] == "paused"
    })
    .await;
    desk.post_form("/resume", &[]).await;
    desk.wait_done(Duration::from_secs(60)).await;
    assert_eq!(w.stats().total_requests, 30);
    common::no_invoice_twice(&w);
}

#[tokio::test]
async fn ctrl_c_on_the_desk_stops_its_paused_send_and_means_130() {
    let w = World::start().await;
    let desk = w.desk("rate = 5", &[]).await;
    sending(&w, &desk, "C-", 30).await;
    desk.post_form("/pause", &[]).await;
    shows_paused(&desk, Duration::from_secs(5)).await;
    assert_eq!(desk.interrupt().await, 130);
    let runs = runs(&w).await;
    assert_eq!(runs[0]["exit_code"], 130, "{runs}");
    assert_eq!(runs[0]["state"], "finished", "{runs}");
    let sent = runs[0]["counts"]["sent"].as_u64().unwrap();
    assert_eq!(sent, w.stats().total_requests);
    assert_eq!(runs[0]["counts"]["not_sent"].as_u64().unwrap(), 30 - sent);
    common::no_invoice_twice(&w);
}

#[tokio::test]
async fn a_runs_results_outlive_the_desk_that_sent_it() {
    let w = World::start().await;
    let first = w.desk("", &[]).await;
    first.send("in.csv", &csv("R-", 4), &[MYKAARMA], 4).await;
    first.wait_done(Duration::from_secs(60)).await;
    assert_eq!(first.interrupt().await, 0, "nothing running: a plain exit");
    let desk = w.desk("", &[]).await;
    let runs = desk.get("/runs").await;
    assert!(
        runs.body.contains("href=\"/runs/r1/results.csv\""),
        "{}",
        runs.body
    );
    let rows = common::parse_results(&desk.get("/runs/r1/results.csv").await.body);
    let invoices: Vec<&str> = rows.iter().map(|r| r["invoice_guid"].as_str()).collect();
    assert_eq!(invoices, ["R-00000", "R-00001", "R-00002", "R-00003"]);
    assert!(rows.iter().all(|r| r["status"] == "sent"));
    let book = desk.get("/runs/r1/results.xlsx").await;
    assert_eq!(book.status, 200);
    assert!(book.body.starts_with("PK"));
    assert_eq!(desk.get("/runs/r9/results.csv").await.status, 404);
    assert_eq!(desk.get("/runs/r1/ledger.sqlite3").await.status, 404);
    assert_eq!(w.stats().total_requests, 4);
}

#[tokio::test]
async fn a_form_that_names_no_target_rehearses() {
    let w = World::start().await;
    let desk = w.desk("", &[]).await;
    let up = desk.upload("in.csv", &csv("T-", 2), &[]).await;
    assert_eq!(up.status, 303, "{}", up.body);
    let check = desk.get(up.location()).await;
    assert!(check.body.contains("REHEARSAL"), "{}", check.body);
    assert!(!check.body.contains("REAL SEND"), "{}", check.body);
}
