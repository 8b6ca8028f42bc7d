//! Secrets the server must read back (registry passwords), encrypted at rest with an
//! AEAD (ChaCha20-Poly1305 from `ring`, already in the build through rustls) under a
//! 256-bit key kept in a file beside the database, never in it. A copy of the database
//! alone gives away no password.
//!
//! A sealed value is `1 ‖ nonce (12) ‖ ciphertext ‖ tag (16)`: a format byte, a random
//! nonce per encryption, and the tag over the ciphertext and the *associated data* the
//! caller names the value by (a registry host and device), so a ciphertext copied to
//! another row does not open there.

use crate::keys::hex;
use crate::Error;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Environment variable naming the key file (`--secret-key-file`).
pub const SECRET_KEY_FILE_ENV: &str = "PINION_SECRET_KEY_FILE";
/// Bytes of key: 256 bits.
pub const KEY_LEN: usize = 32;
/// The first byte of every sealed value: ChaCha20-Poly1305, nonce first, tag last.
const FORMAT_V1: u8 = 1;
const TAG_LEN: usize = 16;

/// Where the key of the database at `db` lives by default: `server.db` → `server.secret-key`.
pub fn default_key_path(db: &Path) -> PathBuf {
    db.with_extension("secret-key")
}

/// The key that seals and opens stored secrets.
pub struct SecretKey(LessSafeKey);

/// The key never reaches a log line.
impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> SecretKey {
        // Only a wrong length fails, and the type rules that out.
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 256-bit ChaCha20-Poly1305 key");
        SecretKey(LessSafeKey::new(key))
    }

    /// A fresh random key (an in-memory store's, or the first start's).
    pub fn generate() -> SecretKey {
        SecretKey::from_bytes(&random_key())
    }

    /// Reads the key file (64 hex characters), or makes one (mode 0600) when there is
    /// none. A file that is not a key is an error, never replaced: the secrets sealed
    /// with it would be lost.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = parse_hex_key(text.trim()).ok_or_else(|| Error::Secrets {
                    reason: format!(
                        "{} is not a secret key (expected {} hex characters); restore it, or move it away \
                         and set the registry credentials again",
                        path.display(),
                        KEY_LEN * 2
                    ),
                })?;
                crate::secret_file::check_private(path)?;
                log::info!("secret key read from {}", path.display());
                Ok(SecretKey::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = random_key();
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
                writeln!(file, "{}", hex(&bytes))
                    .and_then(|_| file.sync_all())
                    .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
                log::info!("secret key made and saved in {} (mode 0600); back it up with the database", path.display());
                Ok(SecretKey::from_bytes(&bytes))
            }
            Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Encrypts `plaintext`, bound to `associated_data`.
    pub fn seal(&self, plaintext: &[u8], associated_data: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).expect("the operating system's random source failed");
        let mut in_out = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(associated_data), &mut in_out)
            .expect("sealing fails only for inputs of more than 256 GiB");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        sealed.push(FORMAT_V1);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        sealed
    }

    /// Decrypts what `seal` made with the same key and associated data; `what` names
    /// the value in the error (a wrong key file, a value altered or moved).
    pub fn open(&self, sealed: &[u8], associated_data: &[u8], what: &str) -> Result<Vec<u8>, Error> {
        let refused = || Error::Secrets {
            reason: format!(
                "{what} cannot be decrypted: the secret key file is not the one it was stored with, \
                 or the stored value was altered"
            ),
        };
        let (&format, rest) = sealed.split_first().ok_or_else(refused)?;
        if format != FORMAT_V1 || rest.len() < NONCE_LEN + TAG_LEN {
            return Err(refused());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self.0.open_in_place(nonce, Aad::from(associated_data), &mut in_out).map_err(|_| refused())?;
        Ok(plaintext.to_vec())
    }
}

fn random_key() -> [u8; KEY_LEN] {
    let mut bytes = [0u8; KEY_LEN];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    bytes
}

fn parse_hex_key(text: &str) -> Option<[u8; KEY_LEN]> {
    crate::keys::parse_hex(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_sealed_value_opens_with_the_same_key_and_associated_data() {
        let key = SecretKey::generate();
        let sealed = key.seal(b"s3cret-pass", b"registry.lan:5000");
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 11 + TAG_LEN);
        assert!(!sealed.windows(11).any(|w| w == b"s3cret-pass"), "no plaintext in the sealed bytes");
        assert_eq!(key.open(&sealed, b"registry.lan:5000", "p").unwrap(), b"s3cret-pass");
        assert_ne!(key.seal(b"s3cret-pass", b"registry.lan:5000"), sealed, "a fresh nonce every time");
        assert_eq!(key.open(&key.seal(b"", b""), b"", "p").unwrap(), b"");
    }

    #[test]
    fn a_tampered_value_does_not_open() {
        let key = SecretKey::generate();
        let sealed = key.seal(b"s3cret-pass", b"ad");
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert!(key.open(&tampered, b"ad", "p").is_err(), "byte {i} flipped");
        }
        assert!(key.open(&sealed[..sealed.len() - 1], b"ad", "p").is_err(), "truncated");
        assert!(key.open(&[], b"ad", "p").is_err(), "empty");
    }

    #[test]
    fn other_associated_data_does_not_open() {
        let key = SecretKey::generate();
        let sealed = key.seal(b"s3cret-pass", b"host-a\0");
        let err = key.open(&sealed, b"host-b\0", "the password of host-b").unwrap_err();
        assert!(err.to_string().contains("the password of host-b cannot be decrypted"), "{err}");
    }

    #[test]
    fn another_key_does_not_open() {
        let sealed = SecretKey::generate().seal(b"s3cret-pass", b"ad");
        assert!(SecretKey::generate().open(&sealed, b"ad", "p").is_err());
    }

    #[test]
    fn the_key_file_is_made_once_with_mode_0600_and_read_back() {
        let dir = std::env::temp_dir().join(format!("pinion-secret-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = default_key_path(&dir.join("server.db"));
        let _ = std::fs::remove_file(&path);
        assert_eq!(path.file_name().unwrap(), "server.secret-key");
        let first = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = first.seal(b"pw", b"ad");
        let again = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed, b"ad", "p").unwrap(), b"pw", "the same key after a restart");
        assert_eq!(format!("{again:?}"), "SecretKey(<redacted>)");

        std::fs::write(&path, "not a key\n").unwrap();
        let err = SecretKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("is not a secret key"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n", "a bad key file is never replaced");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
