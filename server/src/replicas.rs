//! What the replicas of one database must share, checked when each starts: the secret
//! key that seals registry passwords and the admin token. The first server to start on
//! a database records a check value of each; a server whose key or token differs
//! refuses to start, saying which and why, instead of failing to open the passwords
//! later or answering the operator 401 on one replica in three.

use crate::keys::{hex, parse_hex};
use crate::secrets::SecretKey;
use crate::store::Store;
use crate::Error;
use std::path::Path;

const SECRET_KEY_CHECK: &str = "secret_key_check";
const ADMIN_TOKEN_SHA256: &str = "admin_token_sha256";
/// What the check value seals: opening it proves the same key.
const CHECK_PLAINTEXT: &[u8] = b"pinion secret key check v1";

/// Records this key's check value, or opens the recorded one with it.
pub fn check_secret_key(store: &dyn Store, key: &SecretKey, key_file: &Path) -> Result<(), Error> {
    let mine = hex(&key.seal(CHECK_PLAINTEXT, SECRET_KEY_CHECK.as_bytes()));
    let stored = store.agree_setting(SECRET_KEY_CHECK, &mine)?;
    let opened =
        parse_hex(&stored).and_then(|sealed| key.open(&sealed, SECRET_KEY_CHECK.as_bytes(), "the check value").ok());
    if opened.as_deref() == Some(CHECK_PLAINTEXT) {
        return Ok(());
    }
    Err(Error::Secrets {
        reason: format!(
            "the secret key in {} is not the one this database's registry passwords are sealed with: \
             every server on one database needs the same key file (copy it from the first one)",
            key_file.display()
        ),
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
        check_secret_key(&store, &first, Path::new("/a/key")).unwrap();
        check_secret_key(&store, &first, Path::new("/a/key")).unwrap();
        let e = check_secret_key(&store, &SecretKey::generate(), Path::new("/b/key")).unwrap_err().to_string();
        assert!(e.contains("/b/key") && e.contains("same key file"), "{e}");
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
