//! Throughput, rate accuracy, memory and crash-safety of the real pipeline.
//!
//! The simulator and the sender run as two separate processes of the release binary, so
//! the sender's peak RSS is its own (getrusage of the waited child) and nothing is shared.
//!
//! ```text
//! cargo bench --bench dispatch -- send  --rows 1000 --rate 50
//! cargo bench --bench dispatch -- send  --rows 2000 --rate 0 --concurrency 32 --latency 100
//! cargo bench --bench dispatch -- send  --rows 100000 --rate 0 --concurrency 64 [--no-ledger]
//! cargo bench --bench dispatch -- overhead --loops 21 --rows 10000 --rate 0 --concurrency 64
//! cargo bench --bench dispatch -- raw   --rows 100000 --concurrency 64   (no pipeline: bare reqwest)
//! cargo bench --bench dispatch -- kill  --loops 50 --rows 2000 --rate 200 --concurrency 16
//! cargo bench --bench dispatch -- overhead --pg ...    (the ledger on scripts/services' PostgreSQL)
//! cargo bench --bench dispatch -- split --rows 20000 --rate 0 --concurrency 64 (two processes, one PostgreSQL ledger)
//! cargo bench --bench dispatch -- pace    (--rate auto against hidden capacities 8, 37, 120)
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_invoice-dispatch");

#[path = "dispatch/pace.rs"]
mod pace;

#[derive(Clone)]
struct Opts {
    mode: String,
    rows: u64,
    rate: u32,
    burst: u32,
    concurrency: u32,
    latency: u64,
    ledger: bool,
    loops: u32,
    /// The ledger is the PostgreSQL of INVOICE_DISPATCH_TEST_PG (scripts/services), not a
    /// SQLite file. Runs stay apart there because each simulator has its own URL.
    pg: bool,
}

fn parse() -> Opts {
    let mut o = Opts {
        mode: "send".into(),
        rows: 1000,
        rate: 50,
        burst: 5,
        concurrency: 64,
        latency: 0,
        ledger: true,
        loops: 20,
        pg: false,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} needs a number"))
        };
        match a.as_str() {
            "--rows" => o.rows = num(),
            "--rate" => o.rate = num() as u32,
            "--burst" => o.burst = num() as u32,
            "--concurrency" => o.concurrency = num() as u32,
            "--latency" => o.latency = num(),
            "--loops" => o.loops = num() as u32,
            "--no-ledger" => o.ledger = false,
            "--pg" => o.pg = true,
            m if !m.starts_with('-') => o.mode = m.to_string(),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// The simulator in its own process; killed (by its PID) on drop.
struct Sim {
    child: Child,
    url: String,
}

impl Sim {
    fn start(latency: u64) -> Sim {
        Sim::with(&["--latency", &latency.to_string()])
    }

    /// The simulator with these options.
    fn with(options: &[&str]) -> Sim {
        let mut child = Command::new(BIN)
            .args(["simulate", "--listen", "127.0.0.1:0"])
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the simulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the simulator address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("simulator prints its address")
            .to_string();
        Sim { child, url }
    }

    fn stats(&self) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            reqwest::get(format!("{}/__sim/stats", self.url))
                .await
                .expect("stats")
                .json()
                .await
                .expect("stats json")
        })
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_input(dir: &Path, rows: u64) -> PathBuf {
    let path = dir.join("bench.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(
        f,
        "department_uuid,invoice_guid,send_as_text,send_as_email,customer"
    )
    .unwrap();
    // Invoice ids shaped and scattered like real GUIDs: sequential ids would let every
    // index the ledger keeps append at its right edge, which real input never does.
    for i in 0..rows {
        let (a, b) = (splitmix(i), splitmix(!i));
        writeln!(
            f,
            "dept-{:02},{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x},true,true,Customer {i}",
            i % 16,
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
        .unwrap();
    }
    f.flush().unwrap();
    path
}

fn send_command(o: &Opts, sim: &Sim, dir: &Path, input: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("send")
        .arg(input)
        .args(["--base-url", &sim.url, "--yes", "--no-progress", "--quiet"])
        .args([
            "--rate",
            &o.rate.to_string(),
            "--burst",
            &o.burst.to_string(),
        ])
        .args(["--concurrency", &o.concurrency.to_string()])
        .arg("--summary-json")
        .arg(dir.join("summary.json"))
        .arg("--out")
        .arg(dir.join("results.csv"))
        .env("INVOICE_DISPATCH_USERNAME", "bench")
        .env("INVOICE_DISPATCH_PASSWORD", "bench-password")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match (o.ledger, o.pg) {
        (true, true) => {
            let var = |name: &str| {
                std::env::var(name).unwrap_or_else(|_| {
                    panic!("{name}: start scripts/services and source its env file")
                })
            };
            cmd.arg("--ledger")
                .arg(var("INVOICE_DISPATCH_TEST_PG"))
                .env("PGPASSWORD", var("INVOICE_DISPATCH_TEST_PGPASSWORD"));
        }
        (true, false) => {
            cmd.arg("--ledger").arg(dir.join("ledger.sqlite3"));
        }
        (false, _) => {
            cmd.arg("--no-ledger");
        }
    }
    cmd
}

/// A fixed, well-mixed 64-bit function of `i` (SplitMix64's finaliser).
fn splitmix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Peak RSS in MiB of the children waited for so far (the simulator is never waited
/// before this is read).
fn children_peak_rss_mib() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

/// One `send` run on a fresh input, ledger and simulator.
struct Run {
    exit: i32,
    wall: Duration,
    requests: u64,
    rps: f64,
    sim_max_per_second: u64,
    /// The largest of every child waited for so far: meaningful for the first run only.
    peak_rss_mib: f64,
}

fn run_send(o: &Opts) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), o.rows);
    let sim = Sim::start(o.latency);
    // Whatever the last run (or a build) left to write back would otherwise be flushed
    // inside this run's first ledger flushes.
    unsafe { libc::sync() };
    let started = Instant::now();
    let status = send_command(o, &sim, dir.path(), &input)
        .status()
        .expect("run send");
    let wall = started.elapsed();
    // Read before `sim` is dropped (and so waited for): only the sender counts yet.
    let peak_rss_mib = children_peak_rss_mib();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    Run {
        exit: status.code().unwrap_or(-1),
        wall,
        requests: summary["requests"].as_u64().unwrap_or(0),
        rps: summary["requests_per_second"].as_f64().unwrap_or(0.0),
        sim_max_per_second: sim.stats()["max_per_second"].as_u64().unwrap_or(0),
        peak_rss_mib,
    }
}

fn send(o: &Opts) {
    let run = run_send(o);
    let rss = run.peak_rss_mib;
    let rps = run.rps;
    println!(
        "send rows={} rate={} burst={} concurrency={} latency={}ms ledger={}",
        o.rows, o.rate, o.burst, o.concurrency, o.latency, o.ledger
    );
    println!(
        "  exit={} wall={:.2}s requests={} achieved={:.1} req/s{} sim_max_per_second={} peak_rss={:.1} MiB",
        run.exit,
        run.wall.as_secs_f64(),
        run.requests,
        rps,
        if o.rate > 0 {
            format!(" ({:.3} of configured {})", rps / o.rate as f64, o.rate)
        } else {
            " (unlimited)".into()
        },
        run.sim_max_per_second,
        rss
    );
}

/// What the durable ledger costs: `--loops` pairs of runs, a ledger run and a `--no-ledger`
/// run back to back (alternating which goes first). This VM's disk and CPU vary from minute
/// to minute by more than the difference being measured, so each pair is compared within
/// itself and the median of the pairs' ratios is the figure.
fn overhead(o: &Opts) {
    let mut ratios = Vec::new();
    println!(
        "overhead rows={} concurrency={} latency={}ms rate={} pairs={}",
        o.rows, o.concurrency, o.latency, o.rate, o.loops
    );
    for round in 0..o.loops {
        let mut pair = [0.0f64; 2]; // req/s with the ledger, without
        for ledger in [round % 2 == 0, round % 2 != 0] {
            let run = run_send(&Opts {
                ledger,
                ..o.clone()
            });
            assert_eq!(run.exit, 0, "a benchmark run failed");
            pair[usize::from(!ledger)] = run.rps;
        }
        let ratio = pair[0] / pair[1];
        println!(
            "  pair {round:2}: ledger {:8.1} req/s, --no-ledger {:8.1} req/s, ratio {ratio:.3}",
            pair[0], pair[1]
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "overhead: median ratio {median:.3} (the ledger costs {:.1}%); ratios ranged {:.3}..{:.3}",
        (1.0 - median) * 100.0,
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

/// Requests fired with bare reqwest at the same concurrency: the ceiling set by the
/// simulator and the HTTP stack, to compare the pipeline against.
fn raw(o: &Opts) {
    let sim = Sim::start(o.latency);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (n, elapsed) = rt.block_on(async {
        let client = reqwest::Client::new();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..o.concurrency {
            let (client, next, url, rows) = (client.clone(), next.clone(), sim.url.clone(), o.rows);
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= rows {
                        break;
                    }
                    let body = serde_json::json!({"invoiceGuid": format!("raw-{i}"), "sendAsText": true,
                        "sendAsEmail": true, "attachInvoice": true, "esignRequired": false, "sendWithoutKpay": false});
                    let r = client
                        .post(format!("{url}/v4/departments/dept-{:02}/payment-requests", i % 16))
                        .json(&body)
                        .send()
                        .await
                        .expect("raw request");
                    let _ = r.bytes().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        (o.rows, started.elapsed())
    });
    println!(
        "raw rows={n} concurrency={} latency={}ms: {:.2}s, {:.1} req/s (bare reqwest, no pipeline)",
        o.concurrency,
        o.latency,
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

/// SIGKILL the sender at a random moment, rerun the same command, and check that no
/// invoice reached the simulator twice and that the rerun's results cover every row.
fn kill(o: &Opts) {
    // (loops clean, rows reported unknown, invoices received twice, most unknown in a loop)
    let mut totals = (0u64, 0u64, 0u64, 0u64);
    for round in 0..o.loops {
        let dir = tempfile::tempdir().unwrap();
        let input = write_input(dir.path(), o.rows);
        let sim = Sim::start(o.latency);
        let full = o.rows as f64 / o.rate.max(1) as f64;
        let at = Duration::from_secs_f64(full * (0.1 + 0.8 * rand::random::<f64>()));
        let mut child = send_command(o, &sim, dir.path(), &input).spawn().unwrap();
        std::thread::sleep(at); // the random moment of the crash: this sleep is the point
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        let before = sim.stats()["total_requests"].as_u64().unwrap_or(0);
        let status = send_command(o, &sim, dir.path(), &input).status().unwrap();
        let stats = sim.stats();
        let twice = stats["by_invoice"]
            .as_object()
            .unwrap()
            .values()
            .filter(|v| v.as_u64().unwrap_or(0) > 1)
            .count() as u64;
        let results = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        let lines = results.lines().count() as u64 - 1;
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap())
                .unwrap();
        let unknown = summary["skipped_unknown"].as_u64().unwrap_or(0);
        let received = stats["by_invoice"].as_object().unwrap().len() as u64;
        println!(
            "kill {round:2}: killed at {:.2}s after {before} requests; rerun exit={} results_rows={lines} \
             skipped_unknown={unknown} invoices_received={received}/{} received_twice={twice}",
            at.as_secs_f64(),
            status.code().unwrap_or(-1),
            o.rows
        );
        if twice == 0 && lines == o.rows && unknown <= u64::from(o.concurrency) {
            totals.0 += 1;
        }
        totals.1 += unknown;
        totals.2 += twice;
        totals.3 = totals.3.max(unknown);
    }
    println!(
        "kill summary: {}/{} loops clean, {} rows reported unknown in all (at most {} after one kill; concurrency {}), {} invoices received twice",
        totals.0, o.loops, totals.1, totals.3, o.concurrency, totals.2
    );
}

/// Two processes on one input and one PostgreSQL ledger at once: every invoice must arrive
/// once, and each process sends a share.
fn split(o: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), o.rows);
    let sim = Sim::start(o.latency);
    let pg = Opts {
        pg: true,
        ledger: true,
        ..o.clone()
    };
    let spawn = |name: &str| {
        let mut cmd = send_command(&pg, &sim, dir.path(), &input);
        cmd.arg("--out")
            .arg(dir.path().join(format!("{name}.csv")))
            .arg("--summary-json")
            .arg(dir.path().join(format!("{name}.json")));
        cmd.spawn().unwrap()
    };
    let started = Instant::now();
    let (mut a, mut b) = (spawn("a"), spawn("b"));
    let (sa, sb) = (a.wait().unwrap(), b.wait().unwrap());
    let wall = started.elapsed();
    let stats = sim.stats();
    let sent = |name: &str| {
        let s: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        s["counts"]["sent"].as_u64().unwrap_or(0)
    };
    let twice = stats["by_invoice"]
        .as_object()
        .unwrap()
        .values()
        .filter(|v| v.as_u64().unwrap_or(0) > 1)
        .count();
    println!(
        "split rows={} rate={} each, concurrency={}: exits {:?}/{:?} in {:.1}s; requests={} received_twice={twice}; shares: {} + {}",
        o.rows,
        o.rate,
        o.concurrency,
        sa.code(),
        sb.code(),
        wall.as_secs_f64(),
        stats["total_requests"],
        sent("a"),
        sent("b")
    );
}

fn main() {
    let o = parse();
    match o.mode.as_str() {
        "split" => split(&o),
        "send" => send(&o),
        "raw" => raw(&o),
        "kill" => kill(&o),
        "overhead" => overhead(&o),
        "pace" => pace::pace(),
        other => panic!("unknown mode {other}: send, raw, kill, overhead, split or pace"),
    }
}
