//! Reading `--tls-cert` and `--tls-key`: PEM files (the certificate chain, leaf first, as
//! certbot's `fullchain.pem` has it; a PKCS#8, PKCS#1 or SEC1 key, as `privkey.pem`),
//! checked as a whole before anything is served with them: parseable, the key matching
//! the certificate, the certificate valid now. Each failure names its file.

use super::x509::{read_facts, CertificateFacts};
use crate::Error;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The certificate and key files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate chain and its key, checked and ready to serve.
pub struct Loaded {
    pub certified: Arc<CertifiedKey>,
    pub facts: CertificateFacts,
}

fn refused(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tls { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads and checks both files; `now` in Unix seconds.
pub fn load(files: &TlsFiles, provider: &CryptoProvider, now: i64) -> Result<Loaded, Error> {
    let cert_pem = read(&files.cert, "--tls-cert")?;
    let key_pem = read(&files.key, "--tls-key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(&files.cert, format!("--tls-cert: not a PEM certificate chain ({})", pem_error(&e))))?;
    let Some(leaf) = chain.first() else {
        return Err(refused(&files.cert, "--tls-cert: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"));
    };
    let facts =
        read_facts(leaf).map_err(|why| refused(&files.cert, format!("--tls-cert: its first certificate is {why}")))?;
    if let Some(why) = facts.refusal(now) {
        return Err(refused(&files.cert, format!("--tls-cert: {why}")));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound if key_pem.windows(9).any(|w| w == b"ENCRYPTED") => {
                "an encrypted key, which the server cannot open unattended: decrypt it \
                 (openssl pkey -in KEY -out KEY.plain) and keep it readable only by the server"
                    .into()
            }
            pem::Error::NoItemsFound => {
                "no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in it".into()
            }
            other => format!("not a PEM private key ({})", pem_error(&other)),
        };
        refused(&files.key, format!("--tls-key: {why}"))
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => refused(
            &files.key,
            format!("--tls-key: this key does not belong to the certificate in {}", files.cert.display()),
        ),
        other => refused(&files.key, format!("--tls-key: the key cannot be used: {other}")),
    })?;
    Ok(Loaded { certified: Arc::new(certified), facts })
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| refused(path, format!("{flag}: {e}")))
}

/// A PEM error without the key bytes a `Debug` of it could hold.
fn pem_error(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a section without its END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "bad base64".into(),
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => "nothing in it".into(),
        _ => "malformed PEM".into(),
    }
}
