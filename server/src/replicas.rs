//! What the replicas of one database must share, checked when each starts: the secret
//! key that seals registry passwords and the admin token. The first server to start on
//! a database records a check value of each; a replica whose key or token differs
//! refuses to start, saying which and why, instead of failing to open the passwords
//! later or answering the operator 401 on one replica in three. A server alone on its
//! SQLite file is told the same as a warning and starts (its operator may have lost the
//! key for good: the passwords sealed with it are then entered again).

use crate::keys::{hex, parse_hex};
use crate::secrets::SecretKey;
use crate::store::Store;
use crate::Error;
use std::path::Path;

const SECRET_KEY_CHECK: &str = "secret_key_check";
const ADMIN_TOKEN_SHA256: &str = "admin_token_sha256";
/// What the check value seals: opening it proves the same key.
const CHECK_PLAINTEXT: &[u8] = b"pinion secret key check v1";

/// The secret key in `key_file`, made there when missing unless the database already
/// has its registry passwords sealed with another (a replica given no key file would
/// make a key of its own, to be refused: it refuses without leaving a key behind).
pub fn load_secret_key(store: &dyn Store, key_file: &Path, replicated: bool) -> Result<SecretKey, Error> {
    if replicated && !key_file.exists() && store.setting(SECRET_KEY_CHECK)?.is_some() {
        return Err(Error::Secrets {
            reason: format!(
                "no secret key at {}, and this database's registry passwords are sealed with one: copy the key \
                 file of the server that wrote them there (every server on one database needs the same)",
                key_file.display()
            ),
        });
    }
    SecretKey::load_or_create(key_file)
}

/// Records this key's check value, or opens the recorded one with it. Another key: an
/// error for a replica; for a server alone a warning, and its key's check recorded.
pub fn check_secret_key(store: &dyn Store, key: &SecretKey, key_file: &Path, replicated: bool) -> Result<(), Error> {
    let mine = hex(&key.seal(CHECK_PLAINTEXT, SECRET_KEY_CHECK.as_bytes()));
    let stored = store.agree_setting(SECRET_KEY_CHECK, &mine)?;
    let opened =
        parse_hex(&stored).and_then(|sealed| key.open(&sealed, SECRET_KEY_CHECK.as_bytes(), "the check value").ok());
    if opened.as_deref() == Some(CHECK_PLAINTEXT) {
        return Ok(());
    }
    let problem = format!(
        "the secret key in {} is not the one this database's registry passwords are sealed with",
        key_file.display()
    );
    if !replicated {
        log::warn!("{problem}: they cannot be opened; restore that key file, or store the passwords again");
        return store.replace_setting(SECRET_KEY_CHECK, &mine);
    }
    Err(Error::Secrets {
        reason: format!("{problem}: every server on one database needs the same key file (copy it from the first one)"),
    })
}

/// Records the admin token's hash, or compares it with the recorded one (replicas on
/// PostgreSQL only: a SQLite server's token may change between starts).
pub fn check_admin_token(store: &dyn Store, token_hash: &str) -> Result<(), Error> {
    if store.agree_setting(ADMIN_TOKEN_SHA256, token_hash)? == token_hash {
        return Ok(());
    }
    Err(Error::Usage {
        reason: format!(
            "this server's admin token is not the one the other servers on this database use: give every \
             replica the same PINION_ADMIN_TOKEN (or token file); to change the token, stop them all and \
             start one with --replace-admin-token"
        ),
    })
}

/// `--replace-admin-token`: this server's token becomes the one the others must have.
pub fn replace_admin_token(store: &dyn Store, token_hash: &str) -> Result<(), Error> {
    store.replace_setting(ADMIN_TOKEN_SHA256, token_hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqlStore;

    #[test]
    fn a_second_server_with_another_secret_key_is_refused_saying_which_file() {
        let store = SqlStore::in_memory().unwrap();
        let first = SecretKey::generate();
        check_secret_key(&store, &first, Path::new("/a/key"), true).unwrap();
        check_secret_key(&store, &first, Path::new("/a/key"), true).unwrap();
        let e = check_secret_key(&store, &SecretKey::generate(), Path::new("/b/key"), true).unwrap_err().to_string();
        assert!(e.contains("/b/key") && e.contains("same key file"), "{e}");
        // A server alone starts, and its key is the one checked from then on.
        let new = SecretKey::generate();
        check_secret_key(&store, &new, Path::new("/c/key"), false).unwrap();
        check_secret_key(&store, &new, Path::new("/c/key"), true).unwrap();
        assert!(check_secret_key(&store, &first, Path::new("/a/key"), true).is_err());
    }

    #[test]
    fn a_missing_key_file_is_not_made_for_a_database_that_has_a_key() {
        let store = SqlStore::in_memory().unwrap();
        let dir = std::env::temp_dir().join(format!("pinion-replica-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = dir.join("first.key");
        let key = load_secret_key(&store, &first, true).unwrap();
        check_secret_key(&store, &key, &first, true).unwrap();
        let missing = dir.join("missing.key");
        let e = load_secret_key(&store, &missing, true).err().unwrap().to_string();
        assert!(e.contains("missing.key") && e.contains("copy the key file"), "{e}");
        assert!(!missing.exists(), "no stray key made");
        load_secret_key(&store, &first, true).unwrap();
        load_secret_key(&store, &missing, false).expect("a server alone makes a new key");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_server_with_another_admin_token_is_refused_until_replaced() {
        let store = SqlStore::in_memory().unwrap();
        check_admin_token(&store, "aaa").unwrap();
        assert!(check_admin_token(&store, "bbb").unwrap_err().to_string().contains("same PINION_ADMIN_TOKEN"));
        replace_admin_token(&store, "bbb").unwrap();
        check_admin_token(&store, "bbb").unwrap();
        assert!(check_admin_token(&store, "aaa").is_err());
    }
}
