//! Where a PostgreSQL ledger is and how to reach it: the `postgres://` URL, the password
//! (from `PGPASSWORD` or a `.pgpass`-style file, never from the URL, never shown), and TLS
//! with the system's roots.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use postgres::config::SslMode;
use postgres::{Client, Config, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::settings;

/// How the connection is encrypted (libpq's `sslmode`, minus `allow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    Disable,
    /// Encrypted if the server offers it; the certificate is not checked (libpq's default).
    Prefer,
    /// Encrypted; the certificate is not checked (as libpq does without a root certificate).
    Require,
    /// Encrypted, and the certificate checked against the system's roots (and `sslrootcert`),
    /// host name included. `verify-ca` means the same here.
    VerifyFull,
}

/// A PostgreSQL ledger's address, without any password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgLocation {
    host: String,
    port: u16,
    user: String,
    dbname: String,
    tls: Tls,
    root_cert: Option<PathBuf>,
    connect_timeout: Duration,
}

impl fmt::Display for PgLocation {
    /// The URL as it can be shown: never with a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

impl PgLocation {
    /// Reads `postgres://user@host:port/db?sslmode=...`. A password in the URL is refused:
    /// URLs end up in process lists, shell histories and logs.
    pub fn parse(raw: &str) -> Result<PgLocation> {
        let Ok(url) = url::Url::parse(raw.trim()) else {
            bail!("the ledger URL is not a URL (expected postgres://user@host:port/database)");
        };
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            bail!("the ledger URL must start with postgres://");
        }
        if url.password().is_some() {
            bail!(
                "the ledger URL holds a password: take it out, and give it in PGPASSWORD or a password file (PGPASSFILE, or ~/.pgpass)"
            );
        }
        let decode = |s: &str| {
            percent_decode(s).with_context(|| format!("the ledger URL has a bad escape in {s:?}"))
        };
        let host = url.host_str().filter(|h| !h.is_empty());
        let Some(host) = host else {
            bail!("the ledger URL names no host (postgres://user@host:port/database)");
        };
        let user = match decode(url.username())? {
            u if !u.is_empty() => u,
            _ => std::env::var("PGUSER").unwrap_or_else(|_| whoami::username()),
        };
        let dbname = match decode(url.path().trim_start_matches('/'))? {
            d if !d.is_empty() => d,
            _ => std::env::var("PGDATABASE").unwrap_or_else(|_| user.clone()),
        };
        let mut location = PgLocation {
            host: host.trim_matches(['[', ']']).to_string(),
            port: url.port().unwrap_or(5432),
            user,
            dbname,
            tls: Tls::Prefer,
            root_cert: None,
            connect_timeout: Duration::from_secs(10),
        };
        for (key, value) in url.query_pairs() {
            location.option(&key, &value)?;
        }
        Ok(location)
    }

    fn option(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "sslmode" => {
                self.tls = match value {
                    "disable" => Tls::Disable,
                    "prefer" | "allow" => Tls::Prefer,
                    "require" => Tls::Require,
                    "verify-ca" | "verify-full" => Tls::VerifyFull,
                    other => bail!("the ledger URL's sslmode={other:?} is not disable, prefer, require, verify-ca or verify-full"),
                }
            }
            "sslrootcert" => self.root_cert = Some(PathBuf::from(value)),
            "connect_timeout" => {
                let secs: u64 = value
                    .parse()
                    .with_context(|| format!("the ledger URL's connect_timeout={value:?} is not a number of seconds"))?;
                self.connect_timeout = Duration::from_secs(secs.max(1));
            }
            "application_name" => {}
            other => bail!(
                "the ledger URL has the parameter {other:?}; known: sslmode, sslrootcert, connect_timeout, application_name"
            ),
        }
        Ok(())
    }

    /// Connects; errors name the host and database, never the password.
    pub fn connect(&self) -> Result<Client> {
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("invoice-dispatch")
            .connect_timeout(self.connect_timeout)
            .keepalives_idle(Duration::from_secs(30))
            .options(&settings::startup_options());
        if let Some(password) = self.password()? {
            config.password(password);
        }
        config.ssl_mode(match self.tls {
            Tls::Disable => SslMode::Disable,
            Tls::Prefer => SslMode::Prefer,
            Tls::Require | Tls::VerifyFull => SslMode::Require,
        });
        let connected = match self.tls {
            Tls::Disable => config.connect(NoTls),
            _ => config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                self.rustls()?,
            )),
        };
        let mut client = connected.map_err(|e| {
            anyhow::anyhow!("cannot connect to the ledger {self}: {}", pg_error(&e))
        })?;
        settings::pin_the_rest(&mut client).map_err(|e| anyhow::anyhow!("ledger {self}: {e}"))?;
        Ok(client)
    }

    /// `PGPASSWORD`, else the first matching line of `PGPASSFILE` or `~/.pgpass`.
    fn password(&self) -> Result<Option<String>> {
        if let Ok(p) = std::env::var("PGPASSWORD") {
            return Ok(Some(p));
        }
        let file = match std::env::var_os("PGPASSFILE") {
            Some(f) => PathBuf::from(f),
            None => match dirs::home_dir() {
                Some(home) => home.join(".pgpass"),
                None => return Ok(None),
            },
        };
        let Ok(text) = std::fs::read_to_string(&file) else {
            return Ok(None);
        };
        let port = self.port.to_string();
        let wanted = [
            self.host.as_str(),
            port.as_str(),
            self.dbname.as_str(),
            self.user.as_str(),
        ];
        Ok(text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .find_map(|line| pgpass_match(line, &wanted)))
    }

    fn rustls(&self) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS for the ledger")?;
        if self.tls != Tls::VerifyFull {
            let verifier = Arc::new(AnyCertificate(provider));
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth());
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = &self.root_cert {
            add_pem_roots(&mut roots, path)?;
        }
        Ok(builder.with_root_certificates(roots).with_no_client_auth())
    }
}

fn add_pem_roots(roots: &mut rustls::RootCertStore, path: &Path) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read sslrootcert {}", path.display()))?;
    for cert in certs {
        let cert = cert
            .with_context(|| format!("sslrootcert {} is not PEM certificates", path.display()))?;
        roots.add(cert).with_context(|| {
            format!(
                "sslrootcert {} holds a certificate that cannot be used",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// A `.pgpass` line's password if its host, port, database and user match (`*` matches
/// anything; `\:` and `\\` are escapes).
fn pgpass_match(line: &str, wanted: &[&str; 4]) -> Option<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => field.extend(chars.next()),
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    if fields.len() != 5 {
        return None;
    }
    let matches = fields[..4]
        .iter()
        .zip(wanted)
        .all(|(f, w)| f == "*" || f == w);
    matches.then(|| fields[4].clone())
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes: Vec<u8> =
        url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned().into_bytes())
            .unwrap_or_default();
    String::from_utf8(bytes).context("not UTF-8")
}

/// A database error's own message (with its detail and hint), or the error as it is. A
/// statement cancelled by a timeout names the setting, so the DBA knows what to change.
pub fn pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; {hint}"));
            }
            if let Some(setting) = timeout_setting(db) {
                text.push_str(&format!(
                    ": the database or role sets {setting}; the ledger needs it 0 or at least {}s",
                    super::settings::MIN_TIMEOUT.as_secs()
                ));
            }
            text
        }
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// The timeout setting that cancelled a statement, if one did.
fn timeout_setting(db: &postgres::error::DbError) -> Option<&'static str> {
    use postgres::error::SqlState;
    let code = db.code();
    if *code == SqlState::QUERY_CANCELED && db.message().contains("statement timeout") {
        Some("statement_timeout")
    } else if *code == SqlState::LOCK_NOT_AVAILABLE && db.message().contains("lock timeout") {
        Some("lock_timeout")
    } else {
        None
    }
}

/// `sslmode=require` and `prefer` encrypt without checking the server's certificate, as
/// libpq does: many managed servers present a certificate from a private CA. Signatures are
/// still checked, so the handshake is genuine TLS.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_read_with_defaults_and_never_keep_a_password() {
        let l = PgLocation::parse("postgres://ana@db.example:6543/billing?sslmode=verify-full")
            .unwrap();
        assert_eq!(l.to_string(), "postgres://ana@db.example:6543/billing");
        assert_eq!(l.tls, Tls::VerifyFull);
        let err = PgLocation::parse("postgres://ana:hunter2@db/billing")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PGPASSWORD") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(PgLocation::parse("postgres://ana@db/billing?sslmode=sometimes").is_err());
        assert!(PgLocation::parse("postgres://ana@db/billing?options=x").is_err());
        assert!(PgLocation::parse("mysql://ana@db/billing").is_err());
        let l = PgLocation::parse("postgresql://ana%40corp@db/bill%20ing").unwrap();
        assert_eq!(
            (l.user.as_str(), l.dbname.as_str(), l.port),
            ("ana@corp", "bill ing", 5432)
        );
    }

    #[test]
    fn a_mistyped_ledger_url_is_refused_not_taken_for_a_path() {
        use crate::ledger::Location;
        for typo in [
            "Postgres://ana:hunter2@db/billing",
            "postgress://ana@db/billing",
        ] {
            let err = match Location::parse(typo) {
                Ok(_) => panic!("{typo} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert!(matches!(
            Location::parse("./ledger.sqlite3"),
            Ok(Location::Sqlite(_))
        ));
    }

    #[test]
    fn pgpass_lines_match_by_field_with_wildcards_and_escapes() {
        let want = ["db", "5432", "billing", "ana"];
        assert_eq!(
            pgpass_match("db:5432:billing:ana:s3cret", &want).as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            pgpass_match("*:*:*:ana:a\\:b\\\\c", &want).as_deref(),
            Some("a:b\\c")
        );
        assert_eq!(pgpass_match("db:5433:billing:ana:x", &want), None);
        assert_eq!(pgpass_match("db:5432:billing", &want), None);
    }
}
