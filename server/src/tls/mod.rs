//! The server's own https (`serve --tls-cert FILE --tls-key FILE`), so that a fleet needs
//! no TLS terminator in front of it: rustls with ring (linked already for registries and
//! PostgreSQL), the certificate and key checked before the server starts (`files`,
//! `x509`), and renewed files taken without a restart (`reload`). The handshake and the
//! encryption happen in the HTTP server (`http_server::transport`).

pub mod files;
pub mod reload;
pub mod x509;

pub use files::TlsFiles;

use crate::timefmt::unix_now;
use crate::Error;
use reload::CurrentCertificate;
use rustls::ServerConfig;
use std::sync::Arc;

/// The TLS configuration to serve with, once both files are read and checked (an error
/// names the file and what is wrong with it); starts the thread that takes renewed files.
pub fn server_config(files: TlsFiles) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let now = unix_now() as i64;
    // Taken before reading: a change while they are read is seen as a change at the next look.
    let stamps = reload::stamps(&files);
    let loaded = files::load(&files, &provider, now)?;
    log::info!(
        "https with the certificate {} ({}) and the key {}; changed files are served without a restart",
        files.cert.display(),
        loaded.facts.describe(),
        files.key.display()
    );
    if let Some(warning) = loaded.facts.warning(now) {
        log::warn!("https: {}: {warning}", files.cert.display());
    }
    let current = Arc::new(CurrentCertificate::new(loaded.certified));
    let config_error = |e: rustls::Error| Error::Tls { path: files.cert.clone(), reason: format!("TLS set-up: {e}") };
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&current) as Arc<dyn rustls::server::ResolvesServerCert>);
    // Session tickets (keys made at start, rotated every 6 h): a device whose connection a
    // NAT dropped between polls resumes without the certificate and its signature, the
    // costly part of a handshake on a small server and in bytes on a cellular link. The
    // default (resumption from a 256-entry cache) would forget all but 256 devices.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(config_error)?;
    reload::spawn(files, current, provider, stamps, loaded.facts)
        .map_err(|source| Error::Io { path: "tls-reload thread".into(), source })?;
    Ok(Arc::new(config))
}
