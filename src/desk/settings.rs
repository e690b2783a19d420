//! What the desk sends with: the ledger, config and API address it was started with, and
//! each send's settings, resolved exactly as `invoice-dispatch send` resolves its command
//! line (the same environment variables, config file and defaults).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Parser;

use crate::cli::{self, Cli, DeskArgs};
use crate::client::Credentials;
use crate::config::{self, FileConfig, Send};
use crate::ledger::Location;

pub struct Settings {
    pub ledger: Location,
    config: Option<PathBuf>,
    base_url: Option<String>,
    /// The user name of configured credentials (never the password), if there are any.
    pub username: Option<String>,
}

/// One send the desk starts: its input, how to read it, where its outputs go.
pub struct Job<'a> {
    pub input: &'a Path,
    pub sheet: Option<&'a str>,
    pub rehearse: bool,
    pub out: &'a Path,
    pub also_out: &'a Path,
}

impl Settings {
    pub fn resolve(args: &DeskArgs) -> Result<Settings> {
        let file = FileConfig::load(args.config.as_deref())?;
        let ledger = config::looked_at(args.ledger.as_deref(), &file)?;
        let credentials = config::credentials(&file, &mut Vec::new())?;
        if let Some(url) = &args.base_url {
            config::check_base_url(url)?;
        }
        Ok(Settings {
            ledger,
            config: args.config.clone(),
            base_url: args.base_url.clone(),
            username: credentials.map(|c| c.username),
        })
    }

    /// The `send` of `job`, as `invoice-dispatch send INPUT --yes --no-progress ...` would
    /// be resolved, on the desk's ledger (rehearsals too: they are kept apart by target).
    pub fn send(&self, job: &Job, typed: Option<Credentials>) -> Result<Send> {
        let mut argv: Vec<OsString> = ["invoice-dispatch", "send"].map(OsString::from).to_vec();
        argv.push(job.input.into());
        argv.extend(["--yes", "--no-progress", "--out"].map(OsString::from));
        argv.push(job.out.into());
        if job.rehearse {
            argv.push("--simulate".into());
        } else if let Some(url) = &self.base_url {
            argv.extend(["--base-url".into(), url.into()]);
        }
        if let Some(config) = &self.config {
            argv.extend(["--config".into(), config.into()]);
        }
        if let Some(sheet) = job.sheet {
            argv.extend(["--sheet".into(), sheet.into()]);
        }
        let cli = Cli::try_parse_from(argv).map_err(|e| anyhow!("{}", e.render()))?;
        let cli::Command::Send(mut args) = cli.command else {
            bail!("the desk's send did not parse as a send");
        };
        args.credentials = typed;
        let resolved = config::resolve(cli::Command::Send(args))?;
        for warning in &resolved.warnings {
            tracing::warn!("{warning}");
        }
        let config::Command::Send(mut send) = resolved.command else {
            bail!("the desk's send did not resolve to a send");
        };
        send.ledger = self.ledger.clone();
        send.also_out = Some(job.also_out.to_path_buf());
        Ok(*send)
    }
}
