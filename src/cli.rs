//! The command line, as clap parses it: flags and their environment variables, nothing
//! checked yet. [`crate::config`] turns it, with the config file, into a validated
//! [`crate::config::Config`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "invoice-dispatch",
    version,
    // A later flag overrides an earlier one, so wrappers can append to a base command.
    args_override_self = true,
    about = "Send myKaarma payment requests in bulk from a CSV of invoices, politely and never twice.",
    long_about = "Send myKaarma payment requests in bulk from a CSV of invoices.\n\n\
        One request per row, at a configured rate; only requests that cannot have reached \
        the server are retried; a ledger makes reruns safe (rerunning the same command \
        resumes); a results CSV lists every row's outcome.\n\n\
        Rehearse first: `invoice-dispatch send INPUT.csv --simulate`.",
    after_help = "Credentials come from INVOICE_DISPATCH_USERNAME and INVOICE_DISPATCH_PASSWORD, or \
        `username` and `password_file` in the config file; never from the command line.\n\
        Exit codes: 0 all rows sent/skipped/duplicate, 1 fatal error (or a usage error), \
        2 some rows need attention, 3 stopped by a circuit breaker, 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send one payment request per row of INPUT and write its results.
    Send(Box<SendArgs>),
    /// Parse and check every row of INPUT; send nothing. Exits 2 if any row is invalid.
    Validate(InputArgs),
    /// Run the built-in fake myKaarma API, for rehearsals, tests and benchmarks.
    Simulate(SimulateArgs),
    /// List the runs the ledger remembers, newest first.
    Runs(RunsArgs),
    /// Every request and outcome for one invoice, every run, oldest first.
    History(HistoryArgs),
    /// A run's rows as a results-shaped CSV, from the ledger alone.
    Export(ExportArgs),
    /// Open the desk: a page in the browser to check a spreadsheet, send it, watch, pause
    /// and resume it, and look back; for a one-off send without the command line.
    Desk(DeskArgs),
    /// Record a person's verdict (column `resolution`: delivered / not delivered) on the
    /// unknown rows of a results file.
    Resolve(ResolveArgs),
    /// Pause a running send, from any machine that reaches its ledger: it stops starting
    /// requests within 2 seconds (those in flight finish) until it is resumed.
    Pause(PauseArgs),
    /// Resume a send paused with `pause`.
    Resume(PauseArgs),
}

#[derive(Args, Debug, Default)]
pub struct InputArgs {
    /// The invoices: a CSV, or a workbook (.xlsx, .xlsm, .xls, .ods).
    pub input: PathBuf,
    /// Config file (TOML); see config.example.toml.
    #[arg(long, env = "INVOICE_DISPATCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Field delimiter: ',', ';', 'tab' or '\t'. Default: sniffed from the header line.
    #[arg(long, value_name = "C", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    /// The CSV's text encoding, by its WHATWG label: windows-1252 for Excel's "CSV" on
    /// Windows, utf-16le... Default: UTF-8, or UTF-16 when the file starts with its BOM.
    #[arg(long, value_name = "LABEL", value_parser = parse_encoding)]
    pub encoding: Option<&'static encoding_rs::Encoding>,
    /// A workbook's sheet, by name or number (1 is the first). Default: the first.
    #[arg(long, value_name = "NAME|N")]
    pub sheet: Option<String>,
}

#[derive(Args, Debug, Default)]
pub struct SendArgs {
    #[command(flatten)]
    pub common: InputArgs,
    /// Results file: a workbook when it ends in .xlsx, else a CSV. Default: beside the
    /// input, INPUT.results.csv (INPUT.results.xlsx for a workbook). Replaced atomically.
    #[arg(long, short, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// API base URL (default https://api.mykaarma.com/payment). http:// only for loopback.
    #[arg(long, env = "INVOICE_DISPATCH_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
    /// Start the built-in simulator on a loopback port and send to it instead of myKaarma.
    #[arg(long, conflicts_with = "base_url")]
    pub simulate: bool,
    /// Check every row and print the requests that would be sent; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Requests per second, retries included; 0 = unlimited; `auto` finds the fastest pace
    /// the API accepts (see --max-rate). Default 10.
    #[arg(long, env = "INVOICE_DISPATCH_RATE", value_name = "N|auto", value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// With --rate auto: the pace is never raised above this. Default 50.
    #[arg(long, env = "INVOICE_DISPATCH_MAX_RATE", value_name = "N")]
    pub max_rate: Option<f64>,
    /// Requests that may go at once after an idle spell, on top of the rate. Default 5.
    #[arg(long, env = "INVOICE_DISPATCH_BURST", value_name = "N")]
    pub burst: Option<u32>,
    /// Requests in flight at most. Default 8.
    #[arg(long, env = "INVOICE_DISPATCH_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,
    /// HTTP attempts per row at most, counting the first. Default 5.
    #[arg(long, env = "INVOICE_DISPATCH_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Seconds to wait for one answer (default 30). A timeout after sending counts as
    /// "unknown": the request may have been acted on.
    #[arg(long, env = "INVOICE_DISPATCH_TIMEOUT", value_name = "SECS")]
    pub timeout: Option<f64>,
    /// The ledger that makes reruns safe: a SQLite file. Default: in the user's data folder.
    #[arg(long, env = "INVOICE_DISPATCH_LEDGER", value_name = "PATH")]
    pub ledger: Option<String>,
    /// Run without a ledger: a rerun may notify customers twice.
    #[arg(long, conflicts_with = "ledger")]
    pub no_ledger: bool,
    /// Send rows even if the ledger says they were sent within the dedupe window.
    #[arg(long)]
    pub resend: bool,
    /// Send rows whose earlier outcome is unknown (they may have been delivered).
    #[arg(long)]
    pub retry_unknown: bool,
    /// Log format on stderr.
    #[arg(
        long,
        env = "INVOICE_DISPATCH_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT"
    )]
    pub log_format: Option<LogFormat>,
    /// Only errors and the final summary on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Also write the summary as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
    /// Do not ask for confirmation before sending to the real API.
    #[arg(long, short)]
    pub yes: bool,
    /// Ask each invoice's paid status first and skip the paid ones (needs the scope
    /// payment.invoice.check.paid).
    #[arg(long)]
    pub skip_paid: bool,
    /// Send now, whatever the config's send_window says.
    #[arg(long)]
    pub ignore_window: bool,
    /// The run's HTML report. Default: INPUT.report.html beside the results.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Write no HTML report.
    #[arg(long, conflicts_with = "report")]
    pub no_report: bool,
    /// Prometheus metrics for node_exporter's textfile collector, replaced atomically.
    #[arg(long, env = "INVOICE_DISPATCH_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Also push the metrics to this Prometheus Pushgateway (job invoice_dispatch).
    #[arg(long, env = "INVOICE_DISPATCH_PUSHGATEWAY", value_name = "URL")]
    pub pushgateway: Option<String>,
    /// The pushed metrics' `instance` label. Default: the host name.
    #[arg(long, value_name = "NAME")]
    pub metrics_instance: Option<String>,
    /// Ping URL (healthchecks.io style): URL/start when sending starts, URL or URL/<exit
    /// code> at the end. It may hold a secret, so it is never shown or logged.
    #[arg(
        long,
        env = "INVOICE_DISPATCH_PING_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub ping_url: Option<String>,
    /// Typed into the desk's page: kept in memory only, never a flag.
    #[arg(skip)]
    pub credentials: Option<crate::client::Credentials>,
}

#[derive(Args, Debug)]
pub struct DeskArgs {
    /// Address to listen on: loopback only. Default: a free port on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: String,
    /// Print the desk's address; do not open a browser.
    #[arg(long)]
    pub no_open: bool,
    /// The ledger sends are recorded in. Default: the `ledger` key of the config, or the
    /// user's data folder. Rehearsals are recorded there too, apart from real sends.
    #[arg(long, env = "INVOICE_DISPATCH_LEDGER", value_name = "PATH")]
    pub ledger: Option<String>,
    /// Config file (TOML): rate, send window, ledger, credentials...; as for `send`.
    #[arg(long, env = "INVOICE_DISPATCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The myKaarma API's base URL (default https://api.mykaarma.com/payment).
    #[arg(long, env = "INVOICE_DISPATCH_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// Milliseconds added to every answer.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency: u64,
    /// Random extra milliseconds, 0..=MS, on top of --latency.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub jitter: u64,
    /// Fraction of requests answered with a random 500/503/429.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub fail_rate: f64,
    /// Answer 429 (Retry-After: 1) above N requests in any second.
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// A hidden capacity: a token bucket of N requests/s (burst N/5); beyond it, 429 with
    /// Retry-After: 1, and the request is not acted on.
    #[arg(long, value_name = "N", conflicts_with = "capacity_schedule")]
    pub capacity: Option<f64>,
    /// The capacity changing over time, from the first request: "0s:40,30s:15,60s:40".
    #[arg(long, value_name = "SCHEDULE", value_parser = parse_schedule)]
    pub capacity_schedule: Option<Schedule>,
    /// Check Basic auth against this username (with --password).
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// Check Basic auth against this password (a throwaway test value, never a real one).
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// Seed for the random failures and jitter.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// What every command that reads the ledger takes.
#[derive(Args, Debug, Default)]
pub struct LedgerArgs {
    /// The ledger to read. Default: the `ledger` key of the config, or the user's data folder.
    #[arg(long, env = "INVOICE_DISPATCH_LEDGER", value_name = "PATH")]
    pub ledger: Option<String>,
    /// Config file (TOML), for its `ledger` key.
    #[arg(long, env = "INVOICE_DISPATCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Output: a table (default), or csv or json for scripts.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub last: usize,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The invoice_guid, as in the input.
    pub invoice: String,
    /// Only this department's rows.
    #[arg(long, value_name = "D")]
    pub department: Option<String>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run, as `runs` names it (r42).
    pub run: String,
    /// Write to this file instead of stdout: a workbook when it ends in .xlsx, else a CSV.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    /// The run, as `runs` names it (r42).
    pub run: String,
    /// The run's ledger. Default: the `ledger` key of the config, or the user's data folder.
    #[arg(long, env = "INVOICE_DISPATCH_LEDGER", value_name = "PATH|URL")]
    pub ledger: Option<String>,
    /// Config file (TOML), for its `ledger` key.
    #[arg(long, env = "INVOICE_DISPATCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl PauseArgs {
    /// The ledger is found as the look-back commands find it.
    pub fn ledger_args(&self) -> LedgerArgs {
        LedgerArgs {
            ledger: self.ledger.clone(),
            config: self.config.clone(),
            format: Format::Table,
        }
    }
}

#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// A results CSV with a `resolution` column typed in by a person.
    pub results: PathBuf,
    /// The target the rows were sent to, when the ledger cannot tell from the file.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
}

/// `--rate`: a number of requests per second, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum Rate {
    Fixed(u32),
    #[serde(deserialize_with = "auto_word")]
    Auto,
}

fn auto_word<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    let word = <String as serde::Deserialize>::deserialize(d)?;
    match word.trim() {
        "auto" => Ok(()),
        other => Err(serde::de::Error::custom(format!(
            "rate = {other:?}: a number of requests per second, or \"auto\""
        ))),
    }
}

pub fn parse_rate(s: &str) -> Result<Rate, String> {
    match s.trim() {
        "auto" => Ok(Rate::Auto),
        n => n
            .parse()
            .map(Rate::Fixed)
            .map_err(|_| format!("{s:?} is not a number of requests per second, or auto")),
    }
}

/// `--capacity-schedule`: (time from the first request, requests per second), in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule(pub Vec<(std::time::Duration, f64)>);

pub fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let mut steps = Vec::new();
    for step in s.split(',') {
        let (at, n) = step
            .split_once(':')
            .ok_or_else(|| format!("{step:?} is not TIME:RATE, like 30s:15"))?;
        let at = humantime::parse_duration(at.trim()).map_err(|e| format!("{at:?}: {e}"))?;
        let n: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a rate"))?;
        if !(n.is_finite() && n > 0.0) {
            return Err(format!("{n} is not a positive rate"));
        }
        steps.push((at, n));
    }
    steps.sort_by_key(|(at, _)| *at);
    Ok(Schedule(steps))
}

pub fn parse_encoding(s: &str) -> Result<&'static encoding_rs::Encoding, String> {
    encoding_rs::Encoding::for_label(s.trim().as_bytes()).ok_or_else(|| {
        format!(
            "{s:?} is not an encoding's name (try windows-1252, iso-8859-1, utf-16le, shift_jis)"
        )
    })
}

pub fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "\\t" | "tab" | "\t" => Ok(b'\t'),
        s if s.len() == 1 && s.is_ascii() && s != "\"" => Ok(s.as_bytes()[0]),
        _ => Err(format!(
            "{s:?} is not a single ASCII character (use ',', ';' or 'tab')"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// clap matches an option's type to its parser only when the option is given: each
    /// option whose parser returns its own type is given here once.
    #[test]
    fn options_with_their_own_parsers_read_into_their_types() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "invoice-dispatch",
            "simulate",
            "--capacity-schedule",
            "30s:15,0s:40",
        ])
        .unwrap();
        let Command::Simulate(args) = cli.command else {
            panic!("not simulate")
        };
        let want = vec![
            (std::time::Duration::ZERO, 40.0),
            (std::time::Duration::from_secs(30), 15.0),
        ];
        assert_eq!(args.capacity_schedule, Some(Schedule(want)));
        let cli = Cli::try_parse_from([
            "invoice-dispatch",
            "send",
            "in.xlsx",
            "--rate",
            "auto",
            "--max-rate",
            "80",
            "--sheet",
            "2",
            "--encoding",
            "windows-1252",
            "--delimiter",
            ";",
        ])
        .unwrap();
        let Command::Send(args) = cli.command else {
            panic!("not send")
        };
        assert_eq!((args.rate, args.max_rate), (Some(Rate::Auto), Some(80.0)));
        assert_eq!(args.common.encoding, Some(encoding_rs::WINDOWS_1252));
        assert!(parse_schedule("30:15").is_err() && parse_rate("fast").is_err());
    }
}
