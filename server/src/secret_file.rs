//! Files that hold secrets (the admin token, the key that seals registry passwords, the
//! database): refused at start when another user owns them or could read them, with the
//! command that fixes it, and the process's own files made private (umask 077).

use crate::Error;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Files the server makes from now on are its user's alone (the database, its WAL and
/// shared-memory files, the token and key files).
pub fn make_new_files_private() {
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe { libc::umask(0o077) };
}

/// `path` must belong to the user the server runs as and be unreadable to anyone else.
pub fn check_private(path: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { path: path.into(), source })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(Error::Usage {
            reason: format!(
                "{} belongs to uid {}, not to uid {uid} that the server runs as; chown it to the server's user",
                path.display(),
                meta.uid()
            ),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Usage {
            reason: format!(
                "{} is open to other users (mode {mode:o}); run: chmod 600 {}",
                path.display(),
                path.display()
            ),
        });
    }
    Ok(())
}

/// The database file (and its WAL and shared-memory files, which SQLite makes with the
/// database's mode) made private if it was left open to others by an earlier server.
pub fn make_private_if_open(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)) {
            Ok(()) => {
                log::warn!("{} was open to other users (mode {mode:o}); made it {:o}", path.display(), mode & 0o700)
            }
            Err(e) => {
                log::warn!("{} is open to other users (mode {mode:o}) and could not be changed: {e}", path.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_are_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("pinion-secret-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = check_private(&path).unwrap_err().to_string();
        assert!(error.contains("mode 644") && error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_private(&path).unwrap();
        make_private_if_open(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        make_private_if_open(&path);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
