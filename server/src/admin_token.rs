//! The operator's admin token: from `PINION_ADMIN_TOKEN`, or made on first start and kept
//! beside the database (mode 0600), printed that one time only.

use crate::keys::{hash_secret, new_secret};
use crate::Error;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const ADMIN_TOKEN_ENV: &str = "PINION_ADMIN_TOKEN";

/// Where the generated token of the database at `db` lives: `server.db` → `server.admin-token`.
pub fn token_path(db: &Path) -> PathBuf {
    db.with_extension("admin-token")
}

/// The SHA-256 (hex) of the admin token, making and saving a token if there is none.
pub fn load_or_create(db: &Path) -> Result<String, Error> {
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
        let token = token.trim();
        if token.len() < 16 {
            return Err(Error::Usage { reason: format!("{ADMIN_TOKEN_ENV} must be at least 16 characters") });
        }
        return Ok(hash_secret(token));
    }
    let path = token_path(db);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            log::info!("admin token read from {}", path.display());
            return Ok(hash_secret(token.trim()));
        }
        Ok(_) => {
            return Err(Error::Usage { reason: format!("{} is empty; delete it to make a new token", path.display()) })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Io { path, source }),
    }
    let token = new_secret();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| Error::Io { path: path.clone(), source })?;
    writeln!(file, "{token}")
        .and_then(|_| file.sync_all())
        .map_err(|source| Error::Io { path: path.clone(), source })?;
    eprintln!("pinion-server: admin token (shown once; saved in {}, mode 0600):\n{token}", path.display());
    Ok(hash_secret(&token))
}
