//! The space left where Docker keeps its images: below `min_free_disk` the agent stops
//! pulling (and says so) rather than filling the flash that its own database, the
//! journal and every container share. `statvfs` through libc, which the binary links
//! already (getrandom needs it): no new code in the agent but this file.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` points to writable
    // memory of the right size; statvfs fills it entirely when it returns 0.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `stats`.
    let stats = unsafe { stats.assume_init() };
    // 32 bits wide on armv7, 64 here.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_size) = (stats.f_bavail as u64, stats.f_frsize as u64);
    Ok(blocks.saturating_mul(block_size))
}

/// A size as `agent.toml` gives it: bytes, or with a `K`, `M` or `G` suffix (powers of
/// 1024; `KB`/`KiB` and the like too: `256M`, `1GiB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let upper = text.to_ascii_uppercase();
    let number_end = upper.find(|c: char| !c.is_ascii_digit()).unwrap_or(upper.len());
    let (number, unit) = upper.split_at(number_end);
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// `bytes` for people: `12.3 MiB`.
pub fn human(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    format!("{:.1} MiB", bytes as f64 / MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_the_config() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size(" 1GiB "), Some(1 << 30));
        assert_eq!(parse_size("64kb"), Some(64 << 10));
        for bad in ["", "M", "-1M", "1T", "1.5G", "12 apples", "99999999999999999999G", "1BB", "1i", "1MM"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn free_space_is_read_from_the_filesystem() {
        let free = free_bytes(Path::new("/")).unwrap();
        assert!(free > 0);
        assert!(free_bytes(Path::new("/no/such/path/here")).is_err());
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
