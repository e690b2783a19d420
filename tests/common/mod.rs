//! The test world: a temp folder, a simulator on a loopback port, and the real binary.
#![allow(dead_code)]

pub mod desk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use invoice_dispatch::simulator::{SimConfig, Simulator, Stats};

pub const BIN: &str = env!("CARGO_BIN_EXE_invoice-dispatch");
pub const USER: &str = "billing-bot";
/// Distinctive, so a leak anywhere is found by a plain substring search.
pub const PASSWORD: &str = "pw-Zq8!xK2#never-print-me";
pub const DEPT: &str = "3f2b9c1e-7a4d-4e8b-9f61-2c5d8a0e4b17";
pub const DEPT2: &str = "a81c0d52-19e6-4b3f-8c2a-6d7e90f1b345";
pub const HEADER: &str = "department_uuid,invoice_guid,send_as_text,send_as_email";

pub struct World {
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
    /// The world's ledger lives in a PostgreSQL database of its own (else a SQLite file).
    pub pg: Option<Pg>,
}

/// Which store keeps the world's ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of one test's own on the PostgreSQL that scripts/services started.
#[derive(Clone, Debug)]
pub struct Pg {
    /// postgres://user@host:port/db, without the password.
    pub url: String,
    pub password: String,
    pub database: String,
}

/// The environment variable a service test needs, set by scripts/services.
pub fn service(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts the services")
    })
}

impl Pg {
    /// A new, empty database.
    pub async fn fresh() -> Pg {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let admin = service("INVOICE_DISPATCH_TEST_PG");
        let password = service("INVOICE_DISPATCH_TEST_PGPASSWORD");
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let database = format!("t{}_{n}_{}", std::process::id(), rand::random::<u32>());
        let client = Pg::admin_client(&admin, &password).await;
        client
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        Pg {
            url: format!("{base}/{database}"),
            password,
            database,
        }
    }

    /// A connection to `url` with `password`, driven on the test's runtime.
    pub async fn admin_client(url: &str, password: &str) -> tokio_postgres::Client {
        Pg::try_client(url, password).await.unwrap()
    }

    /// The same, or why the server would not take it.
    pub async fn try_client(
        url: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = url.parse().unwrap();
        config.password(password);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// A connection to this test's database.
    pub async fn client(&self) -> tokio_postgres::Client {
        Pg::admin_client(&self.url, &self.password).await
    }
}

/// One finished run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Parsed results file (header -> cell), in file order; empty if none was written.
    pub rows: Vec<HashMap<String, String>>,
    pub results_text: String,
    pub summary: serde_json::Value,
}

impl Run {
    pub fn statuses(&self) -> Vec<String> {
        self.rows.iter().map(|r| r["status"].clone()).collect()
    }
    pub fn row(&self, invoice: &str) -> &HashMap<String, String> {
        self.rows
            .iter()
            .find(|r| r.get("invoice_guid").map(String::as_str) == Some(invoice))
            .unwrap_or_else(|| panic!("no result row for {invoice}: {:#?}", self.rows))
    }
    pub fn count(&self, status: &str) -> usize {
        self.rows.iter().filter(|r| r["status"] == status).count()
    }
}

impl World {
    pub async fn start() -> World {
        World::with(SimConfig::default()).await
    }

    pub async fn with(config: SimConfig) -> World {
        World::with_on(config, Backend::Sqlite).await
    }

    pub async fn on(backend: Backend) -> World {
        World::with_on(SimConfig::default(), backend).await
    }

    pub async fn with_on(config: SimConfig, backend: Backend) -> World {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Pg::fresh().await),
        };
        World {
            dir: tempfile::tempdir().unwrap(),
            sim: Simulator::spawn(config).await.expect("start the simulator"),
            pg,
        }
    }

    /// What `--ledger` says for the world's ledger.
    pub fn ledger_arg(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url.clone(),
            None => self.ledger().display().to_string(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// `input.csv`: `HEADER` plus the given rows — the common case of most tests.
    pub fn input(&self, rows: &[impl AsRef<str>]) -> PathBuf {
        let mut text = String::from(HEADER);
        text.push('\n');
        for r in rows {
            text.push_str(r.as_ref());
            text.push('\n');
        }
        self.write("input.csv", text)
    }

    /// A copy of `samples/NAME` in the world's folder, so its results land there too.
    pub fn sample(&self, name: &str) -> PathBuf {
        self.write(name, std::fs::read(sample_path(name)).unwrap())
    }

    pub fn ledger(&self) -> PathBuf {
        self.path("ledger.sqlite3")
    }

    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }

    /// The binary with a clean environment holding only the test credentials.
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("INVOICE_DISPATCH_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("INVOICE_DISPATCH_USERNAME", USER)
            .env("INVOICE_DISPATCH_PASSWORD", PASSWORD)
            .env("HOME", self.dir.path())
            .env("XDG_DATA_HOME", self.path("xdg"))
            .env_remove("PGPASSWORD")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(pg) = &self.pg {
            cmd.env("PGPASSWORD", &pg.password);
        }
        cmd
    }

    /// `send INPUT` to the simulator with the world's ledger, results and summary paths,
    /// fast backoff, plus `extra` flags.
    pub fn send_command(&self, input: &Path, extra: &[&str]) -> tokio::process::Command {
        let mut cmd = self.command();
        cmd.arg("send")
            .arg(input)
            .arg("--base-url")
            .arg(self.sim.base_url())
            .arg("--ledger")
            .arg(self.ledger_arg())
            .arg("--out")
            .arg(self.path("results.csv"))
            .arg("--summary-json")
            .arg(self.path("summary.json"))
            .args(["--rate", "0", "--no-progress"])
            .arg("--config")
            .arg(self.fast_config(""))
            // Later flags override earlier ones, so `extra` can replace any of the above.
            .args(extra);
        cmd
    }

    /// A config file with short backoffs (so retries are quick) plus `extra` TOML.
    pub fn fast_config(&self, extra: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.write(
            &format!("config-{n}.toml"),
            format!("backoff_base = \"20ms\"\nbackoff_max = \"100ms\"\n{extra}\n"),
        )
    }

    /// `send` with `config` (TOML) added to the fast config, plus `extra` flags.
    pub async fn send_with_config(&self, input: &Path, config: &str, extra: &[&str]) -> Run {
        let config = self.fast_config(config);
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.send(input, &args).await
    }

    pub async fn send(&self, input: &Path, extra: &[&str]) -> Run {
        let _ = std::fs::remove_file(self.path("results.csv"));
        let _ = std::fs::remove_file(self.path("summary.json"));
        let out = self.send_command(input, extra).output().await.unwrap();
        self.finish(out)
    }

    /// Collects a finished process's output, results and summary.
    pub fn finish(&self, out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            ..self.left_behind()
        }
    }

    /// The results and summary files a run left, for a run that was no process of its
    /// own (the engine driven through its handle): no exit code (-1), no output.
    pub fn left_behind(&self) -> Run {
        // Lossy: an input in another encoding is carried into the results byte for byte.
        let results_text = std::fs::read(self.path("results.csv"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let summary = std::fs::read(self.path("summary.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        Run {
            code: -1,
            stdout: String::new(),
            stderr: String::new(),
            rows: parse_results(&results_text),
            results_text,
            summary,
        }
    }

    /// How many requests the simulator received for one invoice of `DEPT`.
    pub fn received(&self, dept: &str, invoice: &str) -> u64 {
        self.stats()
            .by_invoice
            .get(&format!("{dept}/{invoice}"))
            .copied()
            .unwrap_or(0)
    }
}

pub fn sample_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

/// `n` rows `DEPT,PREFIXnnnnn,,` for `World::input`.
pub fn rows(dept: &str, prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{dept},{prefix}{i:05},,")).collect()
}

pub fn parse_results(text: &str) -> Vec<HashMap<String, String>> {
    if text.is_empty() {
        return Vec::new();
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Results keep the input's delimiter; the header has it more often than the others.
    let header = text.lines().next().unwrap_or("");
    let delimiter = [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| header.bytes().filter(|b| b == d).count())
        .unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Sends `sig` to a child that is still running.
pub fn signal(child: &tokio::process::Child, sig: i32) {
    let pid = child.id().expect("child still running") as i32;
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// A loopback port that refuses connections for as long as the socket is held: bound, so
/// nothing else can take it, and never listened on.
pub fn refusing_port() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
            0
        );
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut bound_len = len;
        assert_eq!(
            libc::getsockname(
                fd,
                &mut bound as *mut _ as *mut libc::sockaddr,
                &mut bound_len
            ),
            0
        );
        (socket, u16::from_be(bound.sin_port))
    }
}

/// No invoice reached the simulator more than once.
pub fn no_invoice_twice(w: &World) {
    let twice: Vec<_> = w
        .stats()
        .by_invoice
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "received twice: {twice:?}");
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; panics with `what` on timeout.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    wait_for_async(what, limit, || std::future::ready(cond())).await
}

/// [`wait_for`], for a condition that has to wait itself (a query, a connection).
pub async fn wait_for_async<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One finished look-back command (`runs`, `history`, ...).
#[derive(Debug)]
pub struct Look {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl World {
    /// Runs a look-back command on the world's ledger.
    pub async fn look(&self, args: &[&str]) -> Look {
        let out = self
            .command()
            .args(args)
            .arg("--ledger")
            .arg(self.ledger_arg())
            .output()
            .await
            .unwrap();
        Look {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs a test written as `async fn NAME(backend: Backend)` on both ledgers: as
/// `NAME::sqlite`, and as `NAME::postgres` (ignored by plain `cargo test`; scripts/test
/// starts PostgreSQL and runs it).
#[macro_export]
macro_rules! on_both_ledgers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }
            #[tokio::test]
            #[ignore = "needs PostgreSQL: run scripts/test"]
            async fn postgres() {
                super::$name(Backend::Postgres).await
            }
        }
    )*};
}
