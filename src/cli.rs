//! Command line and config file, merged into one validated [`Config`].
//!
//! Two stages, as ripgrep does it: clap parses raw flags (with their environment
//! variables), the TOML file is parsed into [`FileConfig`], and [`Config::resolve`] merges
//! built-in default < file < environment < flag and checks everything before any work starts.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::input::{Column, Flags, InputOptions};

pub const DEFAULT_BASE_URL: &str = "https://api.mykaarma.com/payment";

#[derive(Parser, Debug)]
#[command(
    name = "invoice-dispatch",
    version,
    // A later flag overrides an earlier one, so wrappers can append to a base command.
    args_override_self = true,
    about = "Send myKaarma payment requests in bulk from a CSV of invoices, politely and never twice.",
    long_about = "Send myKaarma payment requests in bulk from a CSV of invoices.\n\n\
        One request per row, at a configured rate; only requests that cannot have reached \
        the server are retried; a SQLite ledger makes reruns safe (rerunning the same \
        command resumes); a results CSV lists every row's outcome.\n\n\
        Rehearse first: `invoice-dispatch send INPUT.csv --simulate`.",
    after_help = "Credentials come from INVOICE_DISPATCH_USERNAME and INVOICE_DISPATCH_PASSWORD, or \
        `username` and `password_file` in the config file; never from the command line.\n\
        Exit codes: 0 all rows sent/skipped/duplicate, 1 fatal error, 2 some rows need attention, \
        3 stopped by a circuit breaker, 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send one payment request per row of INPUT and write a results CSV.
    Send(SendArgs),
    /// Parse and check every row of INPUT; send nothing. Exits 2 if any row is invalid.
    Validate(ValidateArgs),
    /// Run the built-in fake myKaarma API, for rehearsals, tests and benchmarks.
    Simulate(SimulateArgs),
}

#[derive(Args, Debug, Default)]
pub struct ValidateArgs {
    /// The invoices CSV.
    pub input: PathBuf,
    /// Config file (TOML); see config.example.toml.
    #[arg(long, env = "INVOICE_DISPATCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Field delimiter: ',', ';', 'tab' or '\t'. Default: sniffed from the header line.
    #[arg(long, value_name = "C", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
}

#[derive(Args, Debug, Default)]
pub struct SendArgs {
    #[command(flatten)]
    pub common: ValidateArgs,
    /// Results CSV. Default: INPUT.results.csv beside the input. Replaced atomically.
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
    /// Requests per second, retries included; 0 = unlimited. Default 10.
    #[arg(long, env = "INVOICE_DISPATCH_RATE", value_name = "N")]
    pub rate: Option<u32>,
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
    /// SQLite ledger that makes reruns safe. Default: in the user's data folder.
    #[arg(long, env = "INVOICE_DISPATCH_LEDGER", value_name = "PATH")]
    pub ledger: Option<PathBuf>,
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "\\t" | "tab" | "\t" => Ok(b'\t'),
        s if s.len() == 1 && s.is_ascii() && s != "\"" => Ok(s.as_bytes()[0]),
        _ => Err(format!(
            "{s:?} is not a single ASCII character (use ',', ';' or 'tab')"
        )),
    }
}

/// The config file. Every key is optional; unknown keys are an error naming the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    base_url: Option<String>,
    rate: Option<u32>,
    burst: Option<u32>,
    concurrency: Option<usize>,
    max_attempts: Option<u32>,
    timeout: Option<String>,
    connect_timeout: Option<String>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
    retry_after_max: Option<String>,
    retry_ambiguous: Option<bool>,
    max_failure_ratio: Option<f64>,
    min_attempts_for_ratio: Option<u32>,
    shutdown_grace: Option<String>,
    ledger: Option<PathBuf>,
    dedupe_window: Option<String>,
    delimiter: Option<String>,
    log_format: Option<LogFormat>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    /// Only here to refuse it with a useful message; the value is never read or echoed.
    password: Option<toml::Value>,
    #[serde(default)]
    defaults: FileDefaults,
    #[serde(default)]
    columns: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDefaults {
    send_as_text: Option<bool>,
    send_as_email: Option<bool>,
    attach_invoice: Option<bool>,
    esign_required: Option<bool>,
    send_without_kpay: Option<bool>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        // toml's own error text quotes the offending source line, which could be a
        // password written into the wrong key: report the line number and message only.
        let file: FileConfig = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|l| format!(", line {l}")).unwrap_or_default();
            anyhow::anyhow!("config file {}{at}: {}", path.display(), e.message().trim())
        })?;
        if file.password.is_some() {
            bail!(
                "config file {}: `password` is not accepted in the config file; \
                 put it in a file named by `password_file`, or in INVOICE_DISPATCH_PASSWORD",
                path.display()
            );
        }
        Ok(file)
    }
}

/// A password that cannot leak through `Debug`, `Display` or a panic message.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// Where outcomes are recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerChoice {
    /// A persistent ledger: reruns consult it.
    At(PathBuf),
    /// A temporary ledger deleted at the end: nothing is remembered across runs.
    Throwaway,
}

/// Everything `send` needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub input: PathBuf,
    pub input_options: InputOptions,
    pub out: PathBuf,
    pub base_url: String,
    pub simulate: bool,
    pub dry_run: bool,
    pub credentials: Option<Credentials>,
    pub rate: u32,
    pub burst: u32,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub retry_after_max: Duration,
    pub retry_ambiguous: bool,
    pub retry_unknown: bool,
    pub resend: bool,
    pub max_failure_ratio: f64,
    pub min_attempts_for_ratio: u32,
    pub shutdown_grace: Duration,
    pub ledger: LedgerChoice,
    pub dedupe_window: Duration,
    pub log_format: LogFormat,
    pub quiet: bool,
    pub progress: bool,
    pub summary_json: Option<PathBuf>,
    pub yes: bool,
}

fn duration(key: &str, value: Option<&String>, default: &str) -> Result<Duration> {
    let text = value.map(String::as_str).unwrap_or(default);
    humantime::parse_duration(text).with_context(|| {
        format!("`{key}` = {text:?} is not a duration like \"500ms\", \"30s\" or \"12h\"")
    })
}

/// Reads an environment variable; a value that is not valid Unicode is treated as unset.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Input options shared by `validate` and `send`.
    pub fn input_options(args: &ValidateArgs, file: &FileConfig) -> Result<InputOptions> {
        let d = &file.defaults;
        let base = Flags::default();
        let defaults = Flags {
            send_as_text: d.send_as_text.unwrap_or(base.send_as_text),
            send_as_email: d.send_as_email.unwrap_or(base.send_as_email),
            attach_invoice: d.attach_invoice.unwrap_or(base.attach_invoice),
            esign_required: d.esign_required.unwrap_or(base.esign_required),
            send_without_kpay: d.send_without_kpay.unwrap_or(base.send_without_kpay),
        };
        let mut columns = HashMap::new();
        for (key, header) in &file.columns {
            let column = Column::from_key(key).with_context(|| {
                let known: Vec<_> = Column::ALL.iter().map(|c| c.key()).collect();
                format!(
                    "[columns] has unknown key `{key}`; known: {}",
                    known.join(", ")
                )
            })?;
            columns.insert(column, header.clone());
        }
        let delimiter = match (args.delimiter, &file.delimiter) {
            (Some(d), _) => Some(d),
            (None, Some(s)) => {
                Some(parse_delimiter(s).map_err(|e| anyhow::anyhow!("config `delimiter`: {e}"))?)
            }
            (None, None) => None,
        };
        Ok(InputOptions {
            delimiter,
            columns,
            defaults,
        })
    }

    pub fn load_file(path: Option<&Path>) -> Result<FileConfig> {
        path.map(FileConfig::load)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    pub fn resolve(args: &SendArgs) -> Result<Config> {
        let file = Self::load_file(args.common.config.as_deref())?;
        let input_options = Self::input_options(&args.common, &file)?;
        let input = args.common.input.clone();

        let base_url = if args.simulate {
            // Replaced by the simulator's address once it is listening.
            String::from("http://127.0.0.1")
        } else {
            let raw = args
                .base_url
                .clone()
                .or_else(|| file.base_url.clone())
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
            check_base_url(&raw)?
        };

        let timeout = match args.timeout {
            Some(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
            Some(secs) => bail!("--timeout {secs} must be a positive number of seconds"),
            None => duration("timeout", file.timeout.as_ref(), "30s")?,
        };

        let ledger = if args.no_ledger {
            LedgerChoice::Throwaway
        } else if let Some(path) = args.ledger.clone().or_else(|| file.ledger.clone()) {
            LedgerChoice::At(path)
        } else if args.simulate || args.dry_run {
            LedgerChoice::Throwaway
        } else {
            LedgerChoice::At(default_ledger_path()?)
        };

        let username = env("INVOICE_DISPATCH_USERNAME").or_else(|| file.username.clone());
        let password = match env("INVOICE_DISPATCH_PASSWORD") {
            Some(p) => Some(Secret::new(p)),
            None => file
                .password_file
                .as_deref()
                .map(read_password_file)
                .transpose()?,
        };
        let credentials = match (username, password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (None, None) => None,
            (Some(_), None) => bail!(
                "a username is set but no password: set INVOICE_DISPATCH_PASSWORD or `password_file` in the config"
            ),
            (None, Some(_)) => bail!(
                "a password is set but no username: set INVOICE_DISPATCH_USERNAME or `username` in the config"
            ),
        };
        if credentials.is_none() && !args.simulate && !args.dry_run {
            bail!(
                "no credentials: set INVOICE_DISPATCH_USERNAME and INVOICE_DISPATCH_PASSWORD, \
                 or `username` and `password_file` in the config file (or rehearse with --simulate)"
            );
        }

        let rate = args.rate.or(file.rate).unwrap_or(10);
        let burst = args.burst.or(file.burst).unwrap_or(5);
        let concurrency = args.concurrency.or(file.concurrency).unwrap_or(8);
        let max_attempts = args.max_attempts.or(file.max_attempts).unwrap_or(5);
        if concurrency == 0 {
            bail!("concurrency must be at least 1");
        }
        if max_attempts == 0 {
            bail!("max_attempts must be at least 1");
        }
        if rate > 0 && burst == 0 {
            bail!("burst must be at least 1 when a rate is set");
        }
        let max_failure_ratio = file.max_failure_ratio.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&max_failure_ratio) {
            bail!("max_failure_ratio must be between 0 and 1, not {max_failure_ratio}");
        }

        let out = match &args.out {
            Some(out) => out.clone(),
            None => default_out(&input),
        };
        if out == input {
            bail!(
                "--out {} is the input file; results would overwrite it",
                out.display()
            );
        }

        Ok(Config {
            input,
            input_options,
            out,
            base_url,
            simulate: args.simulate,
            dry_run: args.dry_run,
            credentials,
            rate,
            burst,
            concurrency,
            max_attempts,
            timeout,
            connect_timeout: duration("connect_timeout", file.connect_timeout.as_ref(), "10s")?,
            backoff_base: duration("backoff_base", file.backoff_base.as_ref(), "500ms")?,
            backoff_max: duration("backoff_max", file.backoff_max.as_ref(), "30s")?,
            retry_after_max: duration("retry_after_max", file.retry_after_max.as_ref(), "60s")?,
            retry_ambiguous: file.retry_ambiguous.unwrap_or(false),
            retry_unknown: args.retry_unknown,
            resend: args.resend,
            max_failure_ratio,
            min_attempts_for_ratio: file.min_attempts_for_ratio.unwrap_or(20),
            shutdown_grace: duration("shutdown_grace", file.shutdown_grace.as_ref(), "10s")?,
            ledger,
            dedupe_window: duration("dedupe_window", file.dedupe_window.as_ref(), "12h")?,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            quiet: args.quiet,
            progress: !args.no_progress && !args.quiet,
            summary_json: args.summary_json.clone(),
            yes: args.yes,
        })
    }
}

/// `INPUT.results.csv` beside the input (`invoices.csv` -> `invoices.results.csv`).
pub fn default_out(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    input.with_file_name(format!("{stem}.results.csv"))
}

fn default_ledger_path() -> Result<PathBuf> {
    let dir = dirs::data_dir()
        .context("cannot find the user's data folder for the ledger; pass --ledger PATH")?;
    Ok(dir.join("invoice-dispatch").join("ledger.sqlite3"))
}

fn read_password_file(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read password_file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "password_file {} is readable by other users; chmod 600 it",
                    path.display()
                );
            }
        }
    }
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("password_file {} is empty", path.display());
    }
    Ok(Secret::new(password))
}

/// Normalises and checks the API base URL: https anywhere, http only to loopback, so that
/// credentials never cross a network in clear text.
pub fn check_base_url(raw: &str) -> Result<String> {
    let url = reqwest::Url::parse(raw.trim())
        .with_context(|| format!("base_url {raw:?} is not a URL"))?;
    if url.query().is_some() || url.fragment().is_some() {
        bail!("base_url {raw:?} must not have a query or fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!("base_url must not contain credentials; use INVOICE_DISPATCH_USERNAME/PASSWORD");
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => bail!(
            "base_url {raw:?}: http:// is refused for non-loopback hosts (credentials would travel in clear text); use https://"
        ),
        other => bail!("base_url {raw:?}: scheme {other:?} is not http or https"),
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_refused_except_to_loopback() {
        assert!(check_base_url("http://example.com/payment").is_err());
        assert!(check_base_url("http://10.0.0.1/payment").is_err());
        assert_eq!(
            check_base_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(check_base_url("http://[::1]:9/x").is_ok());
        assert!(check_base_url("http://localhost:9").is_ok());
        assert_eq!(
            check_base_url("https://api.mykaarma.com/payment/").unwrap(),
            "https://api.mykaarma.com/payment"
        );
        assert!(check_base_url("https://h/p?x=1").is_err());
        assert!(check_base_url("ftp://h/p").is_err());
    }

    #[test]
    fn password_in_config_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "password = \"hunter2\"\n").unwrap();
        let err = format!("{:#}", FileConfig::load(&path).unwrap_err());
        assert!(err.contains("password_file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_broken_config_line_is_not_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for text in ["rate = 5\npasword = \"hunter2\"\n", "password = hunter2\n"] {
            std::fs::write(&path, text).unwrap();
            let err = format!("{:#}", FileConfig::load(&path).unwrap_err());
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("c.toml"), "{err}");
        }
    }

    #[test]
    fn the_example_config_loads_with_every_key_uncommented() {
        let example = include_str!("../config.example.toml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, example).unwrap();
        FileConfig::load(&path).unwrap();
        // Commented-out keys are documented too: they must be real keys.
        let all: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(key, _)| {
                        !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(all.contains("\nusername = "), "{all}");
        std::fs::write(&path, all).unwrap();
        let file = FileConfig::load(&path).unwrap();
        assert_eq!(file.columns.len(), 7);
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "rate = 5\nrtae = 5\n").unwrap();
        let err = format!("{:#}", FileConfig::load(&path).unwrap_err());
        assert!(err.contains("rtae"), "{err}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    #[test]
    fn default_out_sits_beside_the_input() {
        assert_eq!(
            default_out(Path::new("dir/invoices.csv")),
            PathBuf::from("dir/invoices.results.csv")
        );
    }
}
