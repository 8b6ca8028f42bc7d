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
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
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

/// Larger than any certificate chain or key (certbot's `fullchain.pem` is about 5 KB, a
/// chain of RSA-4096 certificates some 10 KB).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A regular file of at most `MAX_FILE_BYTES`. Read whole, a link to `/dev/zero` or a
/// huge file took all memory (every 2 s in the reload thread, the server's with it),
/// and opening a FIFO waited for a writer for ever (and the reload thread with it: no
/// renewal was served again); so it is opened without blocking and checked first.
fn read(path: &Path, flag: &str) -> Result<Vec<u8>, Error> {
    let failed = |e: std::io::Error| refused(path, format!("{flag}: {e}"));
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(failed)?;
    let kind = file.metadata().map_err(failed)?.file_type();
    if !kind.is_file() {
        let what = match () {
            _ if kind.is_dir() => "a directory",
            _ if kind.is_fifo() => "a FIFO",
            _ if kind.is_char_device() || kind.is_block_device() => "a device",
            _ => "a socket",
        };
        return Err(refused(path, format!("{flag}: {what}, not a PEM file")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(failed)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(refused(path, format!("{flag}: larger than {MAX_FILE_BYTES} bytes, not a PEM certificate or key")));
    }
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `read` on another thread; its error, or a failure if it has not returned within a
    /// minute (it would block for ever).
    fn read_error(path: &Path) -> String {
        let (sender, answer) = std::sync::mpsc::channel();
        let owned = path.to_path_buf();
        std::thread::spawn(move || sender.send(read(&owned, "--tls-cert").map(|b| b.len())));
        match answer.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Err(error)) => error.to_string(),
            Ok(Ok(len)) => panic!("{}: read {len} bytes", path.display()),
            Err(_) => panic!("reading {} never returned", path.display()),
        }
    }

    #[test]
    fn what_is_not_a_small_regular_file_is_refused_without_reading_it_all_or_waiting() {
        let dir = std::env::temp_dir().join(format!("pinion-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let zero = dir.join("zero.pem");
        let _ = std::fs::remove_file(&zero);
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_error(&zero).contains("--tls-cert: a device, not a PEM file"), "{}", read_error(&zero));
        let fifo = dir.join("fifo.pem");
        let _ = std::fs::remove_file(&fifo);
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that lives through the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo {}", fifo.display());
        assert!(read_error(&fifo).contains("a FIFO, not a PEM file"), "{}", read_error(&fifo));
        assert!(read_error(&dir).contains("a directory"), "{}", read_error(&dir));
        // A sparse file: 16 GiB, as read whole, none of it on disk.
        let huge = dir.join("huge.pem");
        std::fs::File::create(&huge).unwrap().set_len(16 << 30).unwrap();
        let error = read_error(&huge);
        assert!(error.contains(&format!("{}: --tls-cert: larger than 1048576 bytes", huge.display())), "{error}");
        std::fs::File::create(&huge).unwrap().set_len(MAX_FILE_BYTES).unwrap();
        assert_eq!(read(&huge, "--tls-cert").unwrap().len() as u64, MAX_FILE_BYTES, "at the limit: read");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
