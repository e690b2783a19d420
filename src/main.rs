use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use invoice_dispatch::cli::{Cli, Command, Config, LogFormat, SimulateArgs};
use invoice_dispatch::simulator::{SimConfig, Simulator};
use invoice_dispatch::{run, LogWriter};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, quiet) = match &cli.command {
        Command::Send(a) => (a.log_format.unwrap_or_default(), a.quiet),
        _ => (LogFormat::Text, false),
    };
    init_tracing(format, quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::Error::from(e).context("cannot start the async runtime")),
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("invoice-dispatch: error: {e:#}");
    ExitCode::from(1)
}

async fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Send(args) => {
            let config = Config::resolve(&args)?;
            let summary = run::send(config).await?;
            eprintln!("{}", summary.line());
            Ok(summary.exit_code as u8)
        }
        Command::Validate(args) => {
            let file = Config::load_file(args.config.as_deref())?;
            let options = Config::input_options(&args, &file)?;
            Ok(run::validate(&args.input, &options).await? as u8)
        }
        Command::Simulate(args) => simulate(args).await.map(|()| 0),
    }
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
        username: args.username,
        password: args.password,
        seed: args.seed,
        ..SimConfig::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    // The address goes to stdout on its own line so scripts and benches can read it.
    println!("listening on http://{bound}");
    eprintln!("simulator: POST http://{bound}/v4/departments/DEPT/payment-requests; stats at GET http://{bound}/__sim/stats");
    Simulator::serve(listener, config, shutdown).await?;
    Ok(())
}

fn init_tracing(format: LogFormat, quiet: bool) {
    let default = if quiet { "error" } else { "info" };
    let filter = EnvFilter::try_from_env("INVOICE_DISPATCH_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("invoice_dispatch={default},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        // Colour only for a person: cron mails and log collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
