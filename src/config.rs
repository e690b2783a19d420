//! What each command is to do, validated: the command line ([`crate::cli`]) merged with
//! the config file and the environment, built-in default < file < environment < flag, and
//! checked before any work starts (as ripgrep's "high-level args" are). Resolved before
//! logging starts, so the file's `log_format` counts too.
//!
//! The [`Config`] is a tree of what each stage consumes: the input options, the client's,
//! dispatch's and the ledger's settings, each built by a small function of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cli::{self, Format, InputArgs, LedgerArgs, LogFormat, SendArgs, SimulateArgs};
use crate::client::ClientSettings;
use crate::dispatch::{self, Backoff};
use crate::domain::{Clock, RunId};
use crate::input::{Column, Flags, InputOptions};
use crate::ledger::{Location, Policy};
use crate::window::SendWindow;

mod access;
pub use access::{check_base_url, credentials};

pub const DEFAULT_BASE_URL: &str = "https://api.mykaarma.com/payment";

/// The config file. Every key is optional; unknown keys are an error naming the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    base_url: Option<String>,
    rate: Option<cli::Rate>,
    rate_start: Option<f64>,
    min_rate: Option<f64>,
    max_rate: Option<f64>,
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
    ledger: Option<String>,
    dedupe_window: Option<String>,
    retention: Option<String>,
    delimiter: Option<String>,
    encoding: Option<String>,
    log_format: Option<LogFormat>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    /// Only here to refuse it with a useful message; the value is never read or echoed.
    password: Option<toml::Value>,
    /// Merged over the built-in defaults key by key (`Flags` is `serde(default)`).
    defaults: Option<Flags>,
    #[serde(default)]
    columns: HashMap<String, String>,
    skip_paid: Option<bool>,
    send_window: Option<String>,
    timezone: Option<String>,
    report: Option<PathBuf>,
    metrics_file: Option<PathBuf>,
    pushgateway: Option<String>,
    metrics_instance: Option<String>,
    ping_url: Option<String>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
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

/// A validated command and what it needs.
pub struct Config {
    pub command: Command,
    pub log: Log,
    pub clock: Clock,
    /// Said while resolving, before logging started; `main` logs them.
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Log {
    pub format: LogFormat,
    pub quiet: bool,
}

pub enum Command {
    Send(Box<Send>),
    DryRun(DryRun),
    Validate(Input),
    Simulate(SimulateArgs),
    Look(Look),
    Desk(cli::DeskArgs),
}

/// The input file and how to read it.
#[derive(Clone, Debug)]
pub struct Input {
    pub path: PathBuf,
    pub options: InputOptions,
}

/// Where requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The built-in simulator, started for this run on a loopback port.
    Simulator,
    Url(String),
}

impl Target {
    /// The name the ledger scopes records by. The simulator listens on a new port each run,
    /// so one stable name lets `--simulate --ledger` rehearse a rerun too.
    pub fn name(&self) -> &str {
        match self {
            Target::Simulator => "built-in simulator",
            Target::Url(url) => url,
        }
    }
}

/// `send`.
pub struct Send {
    pub input: Input,
    pub out: PathBuf,
    /// The results once more, in the other format (the desk offers both).
    pub also_out: Option<PathBuf>,
    pub target: Target,
    /// `base_url` is filled in once the target is known (the simulator's port).
    pub client: ClientSettings,
    pub dispatch: dispatch::Settings,
    pub ledger: Location,
    pub policy: Policy,
    pub summary_json: Option<PathBuf>,
    pub evidence: Evidence,
    /// When requests may leave; `None` without one, or with `--ignore-window`.
    pub window: Option<SendWindow>,
    pub ui: Ui,
}

/// Where the run leaves its evidence (SPEC section 11).
#[derive(Clone, Debug)]
pub struct Evidence {
    pub report: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    pub pushgateway: Option<reqwest::Url>,
    /// The pushed metrics' `instance` label.
    pub instance: String,
    /// Never shown: it may hold a secret.
    pub ping: Option<reqwest::Url>,
}

/// How the run talks to a person.
#[derive(Clone, Copy, Debug)]
pub struct Ui {
    pub progress: bool,
    pub quiet: bool,
    /// Do not ask before sending to the real API.
    pub yes: bool,
}

/// `send --dry-run`: validate, and list the requests that would be sent.
pub struct DryRun {
    pub input: Input,
    pub target: Target,
    pub summary_json: Option<PathBuf>,
    pub window: Option<SendWindow>,
    pub skip_paid: bool,
}

/// The commands that look back at the ledger (SPEC section 10).
pub struct Look {
    pub ledger: Location,
    pub format: Format,
    pub what: LookAt,
}

pub enum LookAt {
    Runs {
        last: usize,
    },
    History {
        invoice: String,
        department: Option<String>,
    },
    Export {
        run: RunId,
        out: Option<PathBuf>,
    },
    Resolve {
        results: PathBuf,
        target: Option<String>,
    },
    /// `pause` (or, `paused: false`, `resume`): writes the run's record.
    Pause {
        run: RunId,
        paused: bool,
    },
}

/// Resolves the command line into a validated config.
pub fn resolve(cli: cli::Command) -> Result<Config> {
    let clock = Clock::from_env()?;
    let mut warnings = Vec::new();
    let (command, log) = match cli {
        cli::Command::Send(args) => send_or_dry_run(&args, &mut warnings)?,
        cli::Command::Validate(args) => {
            let file = FileConfig::load(args.config.as_deref())?;
            (Command::Validate(input(&args, &file)?), Log::default())
        }
        cli::Command::Simulate(args) => (Command::Simulate(args), Log::default()),
        cli::Command::Desk(args) => (Command::Desk(args), Log::default()),
        cli::Command::Runs(a) => look(&a.ledger, LookAt::Runs { last: a.last })?,
        cli::Command::History(a) => look(
            &a.ledger,
            LookAt::History {
                invoice: a.invoice,
                department: a.department,
            },
        )?,
        cli::Command::Export(a) => {
            let run = RunId::given(&a.run)?;
            look(&a.ledger, LookAt::Export { run, out: a.out })?
        }
        cli::Command::Pause(a) => pause(&a, true)?,
        cli::Command::Resume(a) => pause(&a, false)?,
        cli::Command::Resolve(a) => look(
            &a.ledger,
            LookAt::Resolve {
                results: a.results,
                target: a.target,
            },
        )?,
    };
    Ok(Config {
        command,
        log,
        clock,
        warnings,
    })
}

fn send_or_dry_run(args: &SendArgs, warnings: &mut Vec<String>) -> Result<(Command, Log)> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let log = Log {
        format: args.log_format.or(file.log_format).unwrap_or_default(),
        quiet: args.quiet,
    };
    let input = input(&args.common, &file)?;
    let target = target(args, &file)?;
    let window = window(args, &file)?;
    if args.dry_run {
        let dry = DryRun {
            input,
            target,
            summary_json: args.summary_json.clone(),
            window,
            skip_paid: args.skip_paid || file.skip_paid.unwrap_or(false),
        };
        return Ok((Command::DryRun(dry), log));
    }
    let out = match &args.out {
        Some(out) => out.clone(),
        None => default_out(&input.path),
    };
    if out == input.path {
        bail!(
            "--out {} is the input file; results would overwrite it",
            out.display()
        );
    }
    let dispatch = dispatch_settings(args, &file)?;
    let send = Send {
        client: client(args, &file, &target, dispatch.concurrency, warnings)?,
        dispatch,
        ledger: ledger(args, &file)?,
        policy: policy(args, &file)?,
        summary_json: args.summary_json.clone(),
        evidence: evidence(args, &file, &input.path, &out)?,
        window,
        ui: Ui {
            progress: !args.no_progress && !args.quiet,
            quiet: args.quiet,
            yes: args.yes,
        },
        input,
        out,
        also_out: None,
        target,
    };
    Ok((Command::Send(Box::new(send)), log))
}

/// Input options shared by `validate` and `send`.
fn input(args: &InputArgs, file: &FileConfig) -> Result<Input> {
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
            Some(cli::parse_delimiter(s).map_err(|e| anyhow::anyhow!("config `delimiter`: {e}"))?)
        }
        (None, None) => None,
    };
    let encoding = match (args.encoding, &file.encoding) {
        (Some(e), _) => Some(e),
        (None, Some(s)) => {
            Some(cli::parse_encoding(s).map_err(|e| anyhow::anyhow!("config `encoding`: {e}"))?)
        }
        (None, None) => None,
    };
    Ok(Input {
        path: args.input.clone(),
        options: InputOptions {
            delimiter,
            sheet: args.sheet.clone(),
            encoding,
            columns,
            defaults: file.defaults.unwrap_or_default(),
        },
    })
}

fn target(args: &SendArgs, file: &FileConfig) -> Result<Target> {
    if args.simulate {
        return Ok(Target::Simulator);
    }
    let raw = args
        .base_url
        .clone()
        .or_else(|| file.base_url.clone())
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
    Ok(Target::Url(check_base_url(&raw)?))
}

fn client(
    args: &SendArgs,
    file: &FileConfig,
    target: &Target,
    pool_size: usize,
    warnings: &mut Vec<String>,
) -> Result<ClientSettings> {
    let timeout = match args.timeout {
        Some(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
        Some(secs) => bail!("--timeout {secs} must be a positive number of seconds"),
        None => duration("timeout", file.timeout.as_ref(), "30s")?,
    };
    let credentials = match &args.credentials {
        Some(typed) => Some(typed.clone()),
        None => credentials(file, warnings)?,
    };
    if credentials.is_none() && *target != Target::Simulator {
        bail!(
            "no credentials: set INVOICE_DISPATCH_USERNAME and INVOICE_DISPATCH_PASSWORD, \
             or `username` and `password_file` in the config file (or rehearse with --simulate)"
        );
    }
    Ok(ClientSettings {
        base_url: match target {
            Target::Url(url) => url.clone(),
            Target::Simulator => String::new(),
        },
        credentials,
        timeout,
        connect_timeout: duration("connect_timeout", file.connect_timeout.as_ref(), "10s")?,
        pool_size,
    })
}

/// `rate = "auto"`: the pace's bounds (SPEC section 16).
fn auto_rate(args: &SendArgs, file: &FileConfig) -> Result<dispatch::AutoRate> {
    let bounds = dispatch::AutoRate {
        start: file.rate_start.unwrap_or(5.0),
        min: file.min_rate.unwrap_or(1.0),
        max: args.max_rate.or(file.max_rate).unwrap_or(50.0),
        remembered: None,
    };
    let sane = |v: f64| v.is_finite() && v > 0.0;
    if !(sane(bounds.start) && sane(bounds.min) && sane(bounds.max)) || bounds.min > bounds.max {
        bail!(
            "rate_start, min_rate and max_rate must be positive, with min_rate <= max_rate (they are {}, {}, {})",
            bounds.start,
            bounds.min,
            bounds.max
        );
    }
    Ok(bounds)
}

fn dispatch_settings(args: &SendArgs, file: &FileConfig) -> Result<dispatch::Settings> {
    // With an auto pace the fixed rate is unused: 0, no limit of its own.
    let (rate, auto) = match args.rate.or(file.rate) {
        Some(cli::Rate::Fixed(n)) => (n, None),
        Some(cli::Rate::Auto) => (0, Some(auto_rate(args, file)?)),
        None => (10, None),
    };
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
    Ok(dispatch::Settings {
        rate,
        auto,
        burst,
        concurrency,
        max_attempts,
        backoff: Backoff {
            base: duration("backoff_base", file.backoff_base.as_ref(), "500ms")?,
            max: duration("backoff_max", file.backoff_max.as_ref(), "30s")?,
            retry_after_max: duration("retry_after_max", file.retry_after_max.as_ref(), "60s")?,
        },
        retry_ambiguous: file.retry_ambiguous.unwrap_or(false),
        max_failure_ratio,
        min_attempts_for_ratio: file.min_attempts_for_ratio.unwrap_or(20),
        shutdown_grace: duration("shutdown_grace", file.shutdown_grace.as_ref(), "10s")?,
        skip_paid: args.skip_paid || file.skip_paid.unwrap_or(false),
    })
}

/// The send window, checked even when `--ignore-window` sets it aside for this run.
fn window(args: &SendArgs, file: &FileConfig) -> Result<Option<SendWindow>> {
    let window = match &file.send_window {
        Some(w) => Some(SendWindow::parse(w, file.timezone.as_deref())?),
        None if file.timezone.is_some() => {
            bail!("config `timezone` is set but `send_window` is not: add send_window = \"08:00-20:00\", or remove timezone")
        }
        None => None,
    };
    Ok(window.filter(|_| !args.ignore_window))
}

fn policy(args: &SendArgs, file: &FileConfig) -> Result<Policy> {
    Ok(Policy {
        dedupe_window: duration("dedupe_window", file.dedupe_window.as_ref(), "12h")?,
        resend: args.resend,
        retry_unknown: args.retry_unknown,
        retention: duration("retention", file.retention.as_ref(), "400d")?,
    })
}

fn evidence(args: &SendArgs, file: &FileConfig, input: &Path, out: &Path) -> Result<Evidence> {
    use crate::evidence::metrics::check_url;
    let report = match (&args.report, args.no_report, &file.report) {
        (_, true, _) => None,
        (Some(path), _, _) | (None, false, Some(path)) => Some(path.clone()),
        (None, false, None) => Some(default_report(input, out)),
    };
    let pushgateway = args
        .pushgateway
        .clone()
        .or_else(|| file.pushgateway.clone());
    let ping = args.ping_url.clone().or_else(|| file.ping_url.clone());
    Ok(Evidence {
        report,
        metrics_file: args
            .metrics_file
            .clone()
            .or_else(|| file.metrics_file.clone()),
        pushgateway: pushgateway
            .map(|u| check_url("pushgateway", &u))
            .transpose()?,
        instance: match args
            .metrics_instance
            .clone()
            .or_else(|| file.metrics_instance.clone())
        {
            Some(name) => name,
            None => whoami::fallible::hostname().unwrap_or_else(|_| "unknown".into()),
        },
        ping: ping.map(|u| check_url("ping_url", &u)).transpose()?,
    })
}

/// `INPUT.report.html` beside the results.
fn default_report(input: &Path, out: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    out.with_file_name(format!("{stem}.report.html"))
}

/// Where `send` keeps its ledger (SPEC section 7).
fn ledger(args: &SendArgs, file: &FileConfig) -> Result<Location> {
    if args.no_ledger {
        return Ok(Location::Throwaway);
    }
    if let Some(given) = args.ledger.as_deref().or(file.ledger.as_deref()) {
        return location(given);
    }
    if args.simulate {
        return Ok(Location::Throwaway);
    }
    if env("KUBERNETES_SERVICE_HOST").is_some() {
        bail!(
            "running in Kubernetes without an explicit ledger: the default one would live in \
             the container and vanish with it, and the next run would notify every customer \
             again; give --ledger (or the `ledger` key, or INVOICE_DISPATCH_LEDGER) a path on a \
             PersistentVolume"
        );
    }
    Ok(Location::Sqlite(default_ledger_path()?))
}

fn location(given: &str) -> Result<Location> {
    Location::parse(given)
}

/// The ledger the look-back commands read: `--ledger`, the config's, or the default.
fn look(args: &LedgerArgs, what: LookAt) -> Result<(Command, Log)> {
    let look = Look {
        ledger: looked_at(
            args.ledger.as_deref(),
            &FileConfig::load(args.config.as_deref())?,
        )?,
        format: args.format,
        what,
    };
    Ok((Command::Look(look), Log::default()))
}

/// `--ledger`, else the config's `ledger` key, else the default.
pub fn looked_at(given: Option<&str>, file: &FileConfig) -> Result<Location> {
    match given.or(file.ledger.as_deref()) {
        Some(given) => location(given),
        None => Ok(Location::Sqlite(default_ledger_path()?)),
    }
}

/// `pause` (`paused`) or `resume`.
fn pause(a: &cli::PauseArgs, paused: bool) -> Result<(Command, Log)> {
    let run = RunId::given(&a.run)?;
    look(&a.ledger_args(), LookAt::Pause { run, paused })
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

/// `INPUT.results.csv` beside the input (`invoices.csv` -> `invoices.results.csv`), or
/// `INPUT.results.xlsx` for a workbook (recognised by content, as it is read).
pub fn default_out(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    let workbook = !matches!(
        crate::input::workbook::kind(input),
        Ok(crate::input::workbook::Kind::Csv) | Err(_)
    );
    let extension = if workbook { "xlsx" } else { "csv" };
    input.with_file_name(format!("{stem}.results.{extension}"))
}

/// `~/.local/share/invoice-dispatch/` on Linux; on Windows `%LOCALAPPDATA%\invoice-dispatch\`
/// (SPEC 17), not the roaming profile: a domain profile that roams would copy the ledger
/// between machines at logon and logoff, each copy forgetting the other's sends.
fn default_ledger_path() -> Result<PathBuf> {
    let dir = if cfg!(windows) {
        dirs::data_local_dir()
    } else {
        dirs::data_dir()
    };
    let dir =
        dir.context("cannot find the user's data folder for the ledger; pass --ledger PATH")?;
    Ok(dir.join("invoice-dispatch").join("ledger.sqlite3"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Secret;

    fn load(text: &str) -> Result<FileConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        FileConfig::load(Some(&path))
    }

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
        for with_password in ["https://u:hunter2@h/p?x=1", "https://u:hunter2@[bad/p"] {
            let err = format!("{:#}", check_base_url(with_password).unwrap_err());
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn password_in_config_is_refused_without_echoing_it() {
        let err = format!("{:#}", load("password = \"hunter2\"\n").unwrap_err());
        assert!(err.contains("password_file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_broken_config_line_is_not_echoed() {
        for text in ["rate = 5\npasword = \"hunter2\"\n", "password = hunter2\n"] {
            let err = format!("{:#}", load(text).unwrap_err());
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("c.toml"), "{err}");
        }
    }

    #[test]
    fn the_example_config_loads_with_every_key_uncommented() {
        let example = include_str!("../config.example.toml");
        load(example).unwrap();
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
        let file = load(&all).unwrap();
        assert_eq!(file.columns.len(), 7);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = format!("{:#}", load("rate = 5\nrtae = 5\n").unwrap_err());
        assert!(err.contains("rtae"), "{err}");
        let err = format!(
            "{:#}",
            load("[defaults]\nsend_as_txt = true\n").unwrap_err()
        );
        assert!(err.contains("send_as_txt"), "{err}");
    }

    #[test]
    fn defaults_merge_over_the_built_in_ones_key_by_key() {
        let file = load("[defaults]\nesign_required = true\n").unwrap();
        let flags = file.defaults.unwrap();
        assert!(flags.esign_required && flags.send_as_text);
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
