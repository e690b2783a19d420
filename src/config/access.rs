//! Who the tool sends as and where: the credentials (environment or config, never the
//! command line) and the API's base URL (https, or http to loopback only).

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{env, FileConfig};
use crate::client::{Credentials, Secret};

pub fn credentials(file: &FileConfig, warnings: &mut Vec<String>) -> Result<Option<Credentials>> {
    let username = env("INVOICE_DISPATCH_USERNAME").or_else(|| file.username.clone());
    let password = match env("INVOICE_DISPATCH_PASSWORD") {
        Some(p) => Some(Secret::new(p)),
        None => file
            .password_file
            .as_deref()
            .map(|path| read_password_file(path, warnings))
            .transpose()?,
    };
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(Credentials { username, password })),
        (None, None) => Ok(None),
        (Some(_), None) => bail!(
            "a username is set but no password: set INVOICE_DISPATCH_PASSWORD or `password_file` in the config"
        ),
        (None, Some(_)) => bail!(
            "a password is set but no username: set INVOICE_DISPATCH_USERNAME or `username` in the config"
        ),
    }
}

fn read_password_file(path: &Path, warnings: &mut Vec<String>) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read password_file {}", path.display()))?;
    warnings.extend(readable_by_others(path));
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("password_file {} is empty", path.display());
    }
    Ok(Secret::new(password))
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "password_file {} is readable by other users; chmod 600 it",
            path.display()
        )
    })
}

/// Windows: a file in the user's profile is the user's; ACLs elsewhere are not judged.
#[cfg(not(unix))]
fn readable_by_others(_: &Path) -> Option<String> {
    None
}

/// Normalises and checks the API base URL: https anywhere, http only to loopback, so that
/// credentials never cross a network in clear text.
pub fn check_base_url(raw: &str) -> Result<String> {
    // A value with an `@` may hold a password: it is never echoed.
    let shown = if raw.contains('@') {
        String::new()
    } else {
        format!(" {raw:?}")
    };
    let url =
        reqwest::Url::parse(raw.trim()).with_context(|| format!("base_url{shown} is not a URL"))?;
    if !url.username().is_empty() || url.password().is_some() {
        bail!("base_url must not contain credentials; use INVOICE_DISPATCH_USERNAME/PASSWORD");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("base_url {raw:?} must not have a query or fragment");
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
