//! The desk in real Chromium, driven through chromedriver (WebDriver), as a person would
//! use it: choose a file, read the Check, type the count, send, pause, resume, stop,
//! download the results. The simulator's counts say what reached "myKaarma".
//!
//! Needs Chromium and chromedriver (scripts/test installs and names them). Screenshots of
//! each screen, at desktop and phone width, go to $INVOICE_DISPATCH_SCREENSHOTS when it is
//! set (scripts/screenshots sets it to docs/desk), else to the test's own folder.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::desk::Desk;
use common::{rows, service, World, DEPT, DEPT2, HEADER};
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncBufReadExt, BufReader};

struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    shots: PathBuf,
}

impl Browser {
    async fn start(fallback: &Path) -> Browser {
        let driver = service("INVOICE_DISPATCH_TEST_CHROMEDRIVER");
        let chromium = service("INVOICE_DISPATCH_TEST_CHROMIUM");
        let mut child = tokio::process::Command::new(driver)
            .arg("--port=0")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').parse::<u16>().unwrap();
                }
            }
            panic!("chromedriver ended without saying its port");
        })
        .await
        .expect("chromedriver says its port within 30 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let caps = serde_json::json!({ "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run", "--disable-extensions"],
        }});
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        let shots = std::env::var_os("INVOICE_DISPATCH_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| fallback.to_path_buf());
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            _driver: child,
            shots,
        }
    }

    async fn page(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// Waits (bounded) until the page, as it refreshes itself, says `words`.
    async fn wait_for_text(&self, words: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.page().await.contains(words) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page did not say {words:?} within {limit:?}:\n{}",
                self.page().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn click_button(&self, text: &str) {
        let xpath =
            format!("//button[normalize-space()='{text}'] | //a[normalize-space()='{text}']");
        self.client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
    }

    /// The screen as it looks at desktop and at phone width.
    async fn shoot(&self, name: &str) {
        for (width, height, suffix) in [(1280, 900, "desktop"), (390, 844, "phone")] {
            self.client.set_window_size(width, height).await.unwrap();
            let png = self.client.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
            std::fs::write(self.shots.join(format!("{name}-{suffix}.png")), png).unwrap();
        }
        self.client.set_window_size(1280, 900).await.unwrap();
    }

    /// Fetches a download the page links to, with the browser's own cookie.
    async fn download(&self, desk: &Desk, path: &str) -> Vec<u8> {
        let cookies = self.client.get_all_cookies().await.unwrap();
        let cookie = cookies
            .iter()
            .find(|c| c.name().starts_with("invoice_dispatch_desk_"))
            .expect("the desk's cookie");
        assert_eq!(cookie.http_only(), Some(true));
        let answer = reqwest::Client::new()
            .get(format!("{}{path}", desk.base))
            .header("cookie", format!("{}={}", cookie.name(), cookie.value()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        answer.bytes().await.unwrap().to_vec()
    }
}

/// 24 new rows, 3 an earlier run sent, 1 duplicate, 2 invalid.
fn mixed_input(w: &World) -> PathBuf {
    let mut text = format!("{HEADER}\n");
    for row in rows(DEPT, "NEW-", 24).iter().chain(&rows(DEPT2, "OLD-", 3)) {
        text.push_str(row);
        text.push('\n');
    }
    text.push_str(&format!("{DEPT},NEW-00003,,\n"));
    text.push_str(",BAD-1,,\n");
    text.push_str(&format!("{DEPT},BAD-2,maybe,\n"));
    w.write("March invoices.csv", text)
}

#[tokio::test]
#[ignore = "needs Chromium and chromedriver: scripts/test runs it"]
async fn the_whole_flow_in_chromium() {
    let w = World::start().await;
    let earlier = w.input(&rows(DEPT2, "OLD-", 3));
    assert_eq!(w.send(&earlier, &["--rate", "0"]).await.code, 0);
    let desk = w.desk("rate = 6", &[]).await;
    let b = Browser::start(&w.path("shots")).await;

    b.client.goto(&desk.entry_url()).await.unwrap();
    assert_eq!(
        b.client.current_url().await.unwrap().path(),
        "/",
        "the token left the address"
    );
    b.shoot("1-choose").await;
    b.type_into("#file", mixed_input(&w).to_str().unwrap())
        .await;
    b.click("input[value=mykaarma]").await;
    b.click_button("Check the file").await;

    b.wait_for_text("Check: March invoices.csv", Duration::from_secs(30))
        .await;
    let check = b.page().await;
    for words in [
        "<b>30</b><span>rows in the file</span>",
        "<b>24</b><span>will be sent</span>",
        "<b>2</b><span>invalid</span>",
        "<b>1</b><span>duplicates</span>",
        "<b>3</b><span>sent before, skipped</span>",
        "<td>maybe</td>",
        "<td>department_uuid</td>",
        "OLD-00002",
        "duplicate of line",
    ] {
        assert!(check.contains(words), "Check shows {words:?}:\n{check}");
    }
    b.shoot("2-check").await;
    b.click_button("Next: confirm").await;
    b.wait_for_text("Type the number of rows", Duration::from_secs(10))
        .await;
    b.type_into("#count", "23").await;
    b.shoot("3-confirm").await;
    b.click_button("Send 24").await;
    b.wait_for_text("You typed", Duration::from_secs(10)).await;
    assert_eq!(w.stats().total_requests, 3, "a wrong count sends nothing");
    b.type_into("#count", "24").await;
    b.click_button("Send 24").await;

    b.wait_for_text("Watch: March invoices.csv", Duration::from_secs(10))
        .await;
    common::wait_for("a request from the desk", Duration::from_secs(30), || {
        w.stats().total_requests > 3
    })
    .await;
    b.click_button("Pause").await;
    b.wait_for_text("Paused: no request starts", Duration::from_secs(5))
        .await;
    let at_pause = w.stats().total_requests;
    // An absence: nothing may arrive over a span longer than the run needs per request.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        w.stats().total_requests,
        at_pause,
        "no request while paused"
    );
    assert!(at_pause < 27, "paused before the end");
    b.shoot("4-watch-paused").await;
    b.click_button("Resume").await;
    b.wait_for_text("Done: March invoices.csv", Duration::from_secs(60))
        .await;
    let done = b.page().await;
    assert!(
        done.contains("need a person"),
        "the invalid rows need a person:\n{done}"
    );
    b.shoot("5-done").await;

    let results = common::parse_results(
        &String::from_utf8(b.download(&desk, "/download/results.csv").await).unwrap(),
    );
    let count = |s: &str| results.iter().filter(|r| r["status"] == s).count();
    assert_eq!(
        (
            count("sent"),
            count("skipped"),
            count("duplicate"),
            count("invalid")
        ),
        (24, 3, 1, 2)
    );
    assert!(b
        .download(&desk, "/download/results.xlsx")
        .await
        .starts_with(b"PK"));
    assert!(
        String::from_utf8(b.download(&desk, "/download/report.html").await)
            .unwrap()
            .contains("<html")
    );
    let stats = w.stats();
    assert_eq!(stats.total_requests, 27);
    assert!(
        stats.by_invoice.values().all(|n| *n == 1),
        "every invoice exactly once: {:?}",
        stats.by_invoice
    );

    send_a_workbook(&b, &w).await;
    look_around(&b).await;
}

/// The same flow from a workbook's second sheet: results as a workbook too.
async fn send_a_workbook(b: &Browser, w: &World) {
    let path = w.path("April.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    book.add_worksheet()
        .set_name("Notes")
        .unwrap()
        .write(0, 0, "not the invoices")
        .unwrap();
    let sheet = book.add_worksheet().set_name("Invoices").unwrap();
    for (c, h) in HEADER.split(',').enumerate() {
        sheet.write(0, c as u16, h).unwrap();
    }
    for r in 1..=5u32 {
        sheet.write(r, 0, DEPT).unwrap();
        sheet.write(r, 1, format!("WB-{r}")).unwrap();
        sheet.write(r, 2, r % 2 == 0).unwrap();
    }
    book.save(&path).unwrap();
    b.click_button("Send another file").await;
    b.type_into("#file", path.to_str().unwrap()).await;
    b.type_into("#sheet", "Invoices").await;
    b.click("input[value=mykaarma]").await;
    b.click_button("Check the file").await;
    b.wait_for_text("Sheet read: <b>Invoices</b>", Duration::from_secs(30))
        .await;
    b.click_button("Next: confirm").await;
    b.type_into("#count", "5").await;
    b.click_button("Send 5").await;
    b.wait_for_text("Done: April.xlsx", Duration::from_secs(60))
        .await;
    assert!(b.page().await.contains("nothing needs you"));
    let stats = w.stats();
    assert_eq!(stats.total_requests, 32);
    assert!(
        stats.by_invoice.values().all(|n| *n == 1),
        "every invoice exactly once"
    );
}

/// Runs, History and Resolve, as screens.
async fn look_around(b: &Browser) {
    b.click_button("Runs").await;
    b.wait_for_text("<h1>Runs</h1>", Duration::from_secs(10))
        .await;
    assert_eq!(
        b.page().await.matches("<td>finished</td>").count(),
        3,
        "{}",
        b.page().await
    );
    b.shoot("6-runs").await;
    b.click_button("History").await;
    b.type_into("#invoice", "OLD-00001").await;
    b.click_button("Search").await;
    b.wait_for_text("<th>when</th>", Duration::from_secs(10))
        .await;
    assert!(b.page().await.contains("by run r1"), "{}", b.page().await);
    b.shoot("7-history").await;
    b.click_button("Resolve").await;
    b.wait_for_text("Resolve unknown rows", Duration::from_secs(10))
        .await;
    b.shoot("8-resolve").await;
}

#[tokio::test]
#[ignore = "needs Chromium and chromedriver: scripts/test runs it"]
async fn a_stop_in_chromium_leaves_the_rest_not_sent() {
    let w = World::start().await;
    let desk = w.desk("rate = 4", &[]).await;
    let b = Browser::start(&w.path("shots")).await;
    b.client.goto(&desk.entry_url()).await.unwrap();
    b.type_into("#file", w.input(&rows(DEPT, "S-", 40)).to_str().unwrap())
        .await;
    b.click_button("Check the file").await;
    b.wait_for_text("REHEARSAL", Duration::from_secs(30)).await;
    b.click_button("Next: confirm").await;
    b.type_into("#count", "40").await;
    b.click_button("Send 40").await;
    b.wait_for_text("Sending", Duration::from_secs(10)).await;
    b.click_button("Stop").await;
    b.wait_for_text("Done: input.csv", Duration::from_secs(60))
        .await;
    assert!(b
        .page()
        .await
        .contains("Stopped: the requests in flight finished"));
    let results = common::parse_results(
        &String::from_utf8(b.download(&desk, "/download/results.csv").await).unwrap(),
    );
    let not_sent = results.iter().filter(|r| r["status"] == "not_sent").count();
    assert!(
        not_sent > 0
            && results
                .iter()
                .all(|r| r["status"] == "sent" || r["status"] == "not_sent")
    );
    let runs = w.look(&["runs", "--format", "json"]).await;
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs[0]["exit_code"], 130, "{runs}");
    assert_eq!(runs[0]["target"], "built-in simulator", "a rehearsal");
    assert_eq!(
        w.stats().total_requests,
        0,
        "a rehearsal reaches no myKaarma"
    );
}
