//! Thin: parse the command line, resolve the config, start logging, run the command, turn
//! the outcome into an exit code. Signals and the process's exit live here too.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use invoice_dispatch::cli::{Cli, LogFormat, SimulateArgs};
use invoice_dispatch::config::{self, Command, Config, Log};
use invoice_dispatch::screen::{self, Screen};
use invoice_dispatch::simulator::{SimConfig, Simulator};
use invoice_dispatch::{desk, look, run};
use tracing_subscriber::EnvFilter;

use invoice_dispatch::interrupts::{say, Interrupts};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version succeed; a usage error is fatal (1), not "some rows need
            // attention" (2, clap's own choice).
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let screen = Screen::default();
    let config = match config::resolve(cli.command) {
        Ok(config) => config,
        Err(e) => {
            init_tracing(Log::default(), &screen);
            return fail(e);
        }
    };
    init_tracing(config.log, &screen);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // A send drives all its requests from one thread: at zero latency the wake-ups between
    // worker threads cost more CPU than a second thread gives (the other core has the
    // ledger, the reader and, on loopback, the server). The simulator serves on all cores.
    let runtime = match &config.command {
        Command::Simulate(_) => tokio::runtime::Runtime::new(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::Error::from(e).context("cannot start the async runtime")),
    };
    match execute(config, &runtime, &screen) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("invoice-dispatch: error: {e:#}");
    ExitCode::from(1)
}

fn execute(config: Config, runtime: &tokio::runtime::Runtime, screen: &Screen) -> Result<u8> {
    match config.command {
        Command::Send(send) => {
            let prepared = run::prepare(*send)?;
            let total = run::ask(prepared.config(), &config.clock)?;
            let (progress, quiet) = (prepared.config().ui.progress, prepared.config().ui.quiet);
            let handle = run::start_prepared(prepared, config.clock, None)?;
            watch_signals(handle.controls())?;
            if !quiet {
                let bar = (progress && Screen::can_show_bar()).then(|| screen.clone());
                runtime.block_on(screen::show_progress(handle.events(), total, bar));
            }
            let summary = handle.wait()?;
            eprintln!("{}", summary.line());
            Ok(summary.exit_code)
        }
        Command::DryRun(dry) => {
            let summary = run::dry_run(&dry, &config.clock)?;
            eprintln!("{}", summary.line());
            Ok(summary.exit_code)
        }
        Command::Validate(input) => run::validate(&input),
        Command::Simulate(args) => runtime.block_on(simulate(args)).map(|()| 0),
        Command::Look(l) => look::run(l, config.clock),
        Command::Desk(args) => runtime.block_on(desk::serve(args, config.clock)),
    }
}

/// First interrupt (SIGINT/SIGTERM; on Windows Ctrl-C, Ctrl-Break, closing the console):
/// stop the run (in-flight requests finish). Second: exit at once; the intents and leaving
/// marks already in the ledger keep the rerun safe. Watched on a thread of its own, so an
/// interrupt is answered whatever the run is doing (writing results, waiting for the
/// ledger, paused) and whichever thread drives the requests.
fn watch_signals(controls: run::Controls) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal watcher")?;
    // Registered before the thread starts, so no early signal slips through.
    let interrupts = rt.block_on(async { Interrupts::watch() })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || rt.block_on(on_signals(interrupts, controls)))
        .context("cannot start the signal watcher")?;
    Ok(())
}

async fn on_signals(mut interrupts: Interrupts, controls: run::Controls) {
    interrupts.next().await;
    say("\ninterrupted: finishing the requests in flight (press Ctrl-C again to quit at once)");
    controls.stop();
    interrupts.next().await;
    say("interrupted twice: exiting now; rerun the same command to resume safely");
    std::process::exit(130);
}

async fn simulate(args: SimulateArgs) -> Result<()> {
    let addr: std::net::SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an IP:PORT address", args.listen))?;
    if !addr.ip().is_loopback() {
        anyhow::bail!("--listen {addr}: the simulator only listens on loopback addresses");
    }
    if !(0.0..=1.0).contains(&args.fail_rate) {
        anyhow::bail!("--fail-rate {} must be between 0 and 1", args.fail_rate);
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let config = SimConfig {
        latency: std::time::Duration::from_millis(args.latency),
        jitter: std::time::Duration::from_millis(args.jitter),
        fail_rate: args.fail_rate,
        rate_limit: args.rate_limit,
        capacity: match (args.capacity, args.capacity_schedule) {
            (Some(n), _) => vec![(std::time::Duration::ZERO, n)],
            (None, Some(schedule)) => schedule.0,
            (None, None) => Vec::new(),
        },
        username: args.username,
        password: args.password,
        seed: args.seed,
        ..SimConfig::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    // SIGTERM too: in a container the simulator is PID 1, which ignores a signal it does
    // not handle, so `docker stop` would wait out its timeout.
    let mut interrupts = Interrupts::watch()?;
    tokio::spawn(async move {
        interrupts.next().await;
        on_signal.cancel();
    });
    // The address goes to stdout on its own line so scripts and benches can read it.
    println!("listening on http://{bound}");
    eprintln!(
        "simulator: send with --base-url http://{bound}/payment (the real API's path, on this host); \
         stats at GET http://{bound}/__sim/stats"
    );
    Simulator::serve(listener, config, shutdown).await?;
    Ok(())
}

fn init_tracing(log: Log, screen: &Screen) {
    let default = if log.quiet { "error" } else { "info" };
    let filter = EnvFilter::try_from_env("INVOICE_DISPATCH_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("invoice_dispatch={default},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(screen.clone())
        // Colour only for a person: cron mails and log collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
