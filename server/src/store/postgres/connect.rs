//! From `--db postgres://…` to a connection: the URL read by the client library, and
//! TLS with rustls when the URL asks for it (`sslmode=require`, or `verify-ca`/
//! `verify-full`, which mean the same here), always verifying the server's certificate
//! against `--db-ca-file` or, without one, the Mozilla roots. Never OpenSSL, and never a
//! certificate taken unchecked: libpq's `require` without a root file would take any.

use crate::store::sql::{DbError, DbErrorKind};
use crate::Error;
use postgres::config::{Host, SslMode};
use postgres::{Client, Config, NoTls};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Connections opened at most per replica unless told otherwise (`--db-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// The longest one statement may run, or wait for a lock someone else holds (a table an
/// operator locked, another replica's rollout decision): then it fails, a 503, rather
/// than hold a worker for as long as the lock is held. Every statement of the store
/// takes milliseconds; migrations run without it.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/dbname?sslmode=require`, or a socket
    /// directory as the host (`postgres://user@%2Frun%2Fpostgresql/dbname`).
    pub url: String,
    /// PEM certificates that may sign the server's (instead of the Mozilla roots).
    pub ca_file: Option<PathBuf>,
    pub max_connections: usize,
    /// How long one statement may run or wait for a lock (`STATEMENT_TIMEOUT`).
    pub statement_timeout: Duration,
}

impl PostgresOptions {
    pub fn new(url: &str) -> PostgresOptions {
        PostgresOptions {
            url: url.to_string(),
            ca_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            statement_timeout: STATEMENT_TIMEOUT,
        }
    }
}

/// How PostgreSQL probes an idle TCP connection of pinion's (seconds; a socket
/// directory's connections ignore them): a replica whose machine vanished without
/// closing its connections is found gone within half a minute, and the leader's lease
/// and the rollout lock it held go with them. PostgreSQL's default is the kernel's,
/// two hours, during which no replica would lead.
const KEEPALIVES: &str = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3";

pub(super) struct Connector {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    /// `SET` on every new connection: the statement timeout and `KEEPALIVES`.
    session: String,
}

impl Connector {
    pub(super) fn new(options: &PostgresOptions) -> Result<Connector, Error> {
        let bad = |reason: String| Error::BadRequest {
            reason: format!("--db {}: {reason}", crate::store::redacted_url(&options.url)),
        };
        // The client library knows disable/prefer/require; pinion verifies in all TLS cases.
        let url = options
            .url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        // And its schemes in lower case only (`POSTGRES://` is the same URL).
        let url = match url.split_once("://") {
            Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
            None => url,
        };
        // Its message alone is "invalid connection string"; which option, its source says.
        let mut config = Config::from_str(&url).map_err(|e| {
            use std::error::Error as _;
            bad(e.source().map_or_else(|| e.to_string(), |why| format!("{e}: {why}")))
        })?;
        if config.get_hosts().is_empty() {
            return Err(
                bad("no host: name one, or a socket directory (postgres://user@%2Frun%2Fpostgresql/db)".into()),
            );
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("pinion-server");
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(MakeRustlsConnect::new(client_config(options)?)),
            _ => {
                // `prefer` (the default) would take TLS unverified when the server offers it.
                config.ssl_mode(SslMode::Disable);
                if config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(name) if !is_loopback(name))) {
                    log::warn!(
                        "talking to PostgreSQL without TLS; add sslmode=require to --db for a database on another machine"
                    );
                }
                None
            }
        };
        let session = format!("SET statement_timeout = {}; {KEEPALIVES}", options.statement_timeout.as_millis().max(1));
        Ok(Connector { config, tls, session })
    }

    pub(super) fn connect(&self) -> Result<Client, DbError> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        let mut client = connected.map_err(unavailable)?;
        client.batch_execute(&self.session).map_err(unavailable)?;
        Ok(client)
    }
}

/// Refused, reset, timed out, TLS: whatever failed while connecting, the database is not there.
fn unavailable(e: postgres::Error) -> DbError {
    let mut e = DbError::from(e);
    if e.kind == DbErrorKind::Other {
        e.kind = DbErrorKind::Unavailable;
    }
    e
}

fn client_config(options: &PostgresOptions) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_file {
        Some(path) => {
            let bad =
                |reason: String| Error::BadRequest { reason: format!("--db-ca-file {}: {reason}", path.display()) };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::BadRequest { reason: format!("TLS to PostgreSQL: {e}") })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_host_or_with_a_bad_ca_file_is_refused_saying_why() {
        let e = Connector::new(&PostgresOptions::new("postgres:///fleet")).err().unwrap().to_string();
        assert!(e.contains("no host"), "{e}");
        let mut options = PostgresOptions::new("postgres://db.lan/fleet?sslmode=verify-full");
        options.ca_file = Some("/nonexistent/ca.pem".into());
        let e = Connector::new(&options).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = Connector::new(&PostgresOptions::new("postgres://db.lan/fleet?sslmode=sometimes")).err().unwrap();
        assert!(e.to_string().contains("invalid value for option `sslmode`"), "which option, not only where: {e}");
    }
}
