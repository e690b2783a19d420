//! The desk as a test drives it: the real binary serving on a loopback port, and plain HTTP
//! requests with or without its token, cookie and origin.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, COOKIE, ORIGIN};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::World;

pub struct Desk {
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub token: String,
    pub port: u16,
    http: reqwest::Client,
    /// What the desk wrote on stderr, gathered as it goes.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// An answer: status, headers and body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl World {
    /// `desk` on this world's ledger, sending "myKaarma" sends to the world's simulator.
    pub async fn desk(&self, config: &str, extra: &[&str]) -> Desk {
        let mut cmd = self.command();
        cmd.args(["desk", "--no-open", "--listen", "127.0.0.1:0"])
            .arg("--ledger")
            .arg(self.ledger_arg())
            .arg("--base-url")
            .arg(self.sim.base_url())
            .arg("--config")
            .arg(self.fast_config(config))
            .args(extra);
        Desk::spawn(cmd).await
    }
}

impl Desk {
    pub async fn spawn(mut cmd: tokio::process::Command) -> Desk {
        let mut child = cmd.spawn().expect("start the desk");
        let stdout = child.stdout.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let gathered = stderr.clone();
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut all = gathered.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the desk prints its address within 30 s")
            .unwrap()
            .expect("the desk printed its address");
        let url = line.strip_prefix("desk: ").expect("desk: URL").to_string();
        let (base, token) = url.split_once("/?token=").unwrap();
        let port = base.rsplit(':').next().unwrap().parse().unwrap();
        Desk {
            child,
            base: base.to_string(),
            token: token.to_string(),
            port,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            stderr,
        }
    }

    pub fn entry_url(&self) -> String {
        format!("{}/?token={}", self.base, self.token)
    }

    /// The cookie the entry address sets.
    pub fn cookie(&self) -> String {
        format!("invoice_dispatch_desk_{}={}", self.port, self.token)
    }

    async fn answer(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the desk answers");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap_or_default(),
        }
    }

    /// GET with the cookie.
    pub async fn get(&self, path: &str) -> Answer {
        self.get_with(path, &[(COOKIE.as_str(), &self.cookie())])
            .await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Desk::answer(request).await
    }

    /// The headers of a change from the desk's own page: cookie and origin.
    pub fn own(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&self.cookie()).unwrap());
        h.insert(ORIGIN, HeaderValue::from_str(&self.base).unwrap());
        h
    }

    /// POST `body` to `path` (the csrf token added), with `headers`.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: HeaderMap,
        body: Vec<u8>,
        csrf: bool,
    ) -> Answer {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match csrf {
            true => format!("{}{path}{sep}csrf={}", self.base, self.token),
            false => format!("{}{path}", self.base),
        };
        Desk::answer(self.http.post(url).headers(headers).body(body)).await
    }

    /// A form POST from the desk's page.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let mut headers = self.own();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.post_raw(path, headers, body.into_bytes(), true).await
    }

    /// Uploads `content` as `name` with the Choose form's `fields`; the answer (a 303 to
    /// the Check screen when it was taken).
    pub async fn upload(&self, name: &str, content: &[u8], fields: &[(&str, &str)]) -> Answer {
        let (kind, body) = multipart(fields, Some(("file", name, content)));
        let mut headers = self.own();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(&kind).unwrap());
        self.post_raw("/upload", headers, body, true).await
    }

    /// Uploads, checks the count on the Check screen, confirms and sends: the upload's id.
    pub async fn send(
        &self,
        name: &str,
        content: &[u8],
        fields: &[(&str, &str)],
        count: u64,
    ) -> u64 {
        let up = self.upload(name, content, fields).await;
        assert_eq!(up.status, 303, "upload taken: {}", up.body);
        let id: u64 = up.location().rsplit('/').next().unwrap().parse().unwrap();
        let check = self.get(&format!("/check/{id}")).await;
        assert!(
            check
                .body
                .contains(&format!("<b>{count}</b><span>will be sent</span>")),
            "{}",
            check.body
        );
        let sent = self
            .post_form(&format!("/send/{id}"), &[("count", &count.to_string())])
            .await;
        assert_eq!(
            (sent.status, sent.location()),
            (303, "/watch"),
            "{}",
            sent.body
        );
        id
    }

    /// Waits for the send to end (the Watch screen sends the browser to Done).
    pub async fn wait_done(&self, limit: Duration) -> Answer {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let watch = self.get("/watch").await;
            if watch.status == 303 && watch.location() == "/done" {
                return self.get("/done").await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the send did not end within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the desk as Ctrl-C does; its exit code.
    pub async fn interrupt(mut self) -> i32 {
        super::signal(&self.child, libc::SIGINT);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the desk ends within 30 s of Ctrl-C")
            .unwrap();
        status.code().unwrap_or(-1)
    }
}

/// A multipart/form-data body: its content type and bytes.
pub fn multipart(fields: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "----invoice-dispatch-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    if let Some((field, name, content)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
