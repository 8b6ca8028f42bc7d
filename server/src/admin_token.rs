//! The operator's admin token: from `PINION_ADMIN_TOKEN`, or made on first start and kept
//! beside the database (mode 0600), printed that one time only, and only to a terminal
//! (never into a journal or a log file: there, the file's path is logged instead).

use crate::keys::{hash_secret, new_secret};
use crate::Error;
use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const ADMIN_TOKEN_ENV: &str = "PINION_ADMIN_TOKEN";
/// Shortest admin token accepted, from the environment or the file.
const MIN_TOKEN_LEN: usize = 16;

/// Where the generated token of the database at `db` lives: `server.db` → `server.admin-token`.
pub fn token_path(db: &Path) -> PathBuf {
    db.with_extension("admin-token")
}

/// The SHA-256 (hex) of the admin token, making and saving a token if there is none.
pub fn load_or_create(db: &Path) -> Result<String, Error> {
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(Error::Usage {
                reason: format!("{ADMIN_TOKEN_ENV} must be at least {MIN_TOKEN_LEN} characters"),
            });
        }
        return Ok(hash_secret(token));
    }
    let path = token_path(db);
    match std::fs::read_to_string(&path) {
        Ok(token) if token.trim().len() >= MIN_TOKEN_LEN => {
            crate::secret_file::check_private(&path)?;
            log::info!("admin token read from {}", path.display());
            return Ok(hash_secret(token.trim()));
        }
        Ok(_) => {
            return Err(Error::Usage {
                reason: format!(
                    "{} holds no token of at least {MIN_TOKEN_LEN} characters; delete it to make a new one",
                    path.display()
                ),
            })
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
    if std::io::stderr().is_terminal() {
        eprintln!("pinion-server: admin token (shown once; saved in {}, mode 0600):\n{token}", path.display());
    } else {
        log::info!("admin token made and saved in {} (mode 0600); read it there", path.display());
    }
    Ok(hash_secret(&token))
}
