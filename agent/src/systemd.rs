//! Life under systemd without a systemd library: `ready` sends `READY=1` to the socket
//! named by `NOTIFY_SOCKET` (units with `Type=notify`), and `init_logging` writes log
//! lines with sd-daemon priority prefixes (`<3>` error … `<7>` debug) when stderr is the
//! journal, so `journalctl -p warning` works. Outside systemd both do what they did.
//! The server compiles this same file (`#[path]` in server/src/lib.rs): no crate for 80 lines.

use std::io::Write;
use std::os::unix::net::UnixDatagram;

/// Tells systemd the service is up. Without `NOTIFY_SOCKET` (not under systemd, or not
/// `Type=notify`) it does nothing; a failure to send is logged, never fatal.
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&path, b"READY=1") {
        log::warn!("could not tell systemd we are ready (NOTIFY_SOCKET {}): {e}", path.to_string_lossy());
    }
}

fn send(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        // A name in the abstract namespace, which only Linux has.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &address).map(drop)
        }
        _ => socket.send_to(message, path).map(drop),
    }
}

/// `RUST_LOG` filtering (default `info`), no timestamps (journald and terminals add their
/// own), and a priority prefix per line when stderr is the journal stream systemd gave us.
pub fn init_logging() {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format_timestamp(None);
    if stderr_is_journal() {
        builder.format(|out, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(out, "<{priority}>{}: {}", record.target(), record.args())
        });
    }
    builder.init();
}

/// systemd sets `JOURNAL_STREAM=<device>:<inode>` of the stream it connected; a process
/// whose stderr was redirected elsewhere since must not add prefixes.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(stderr).metadata() else { return false };
    expected.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("pinion-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("pinion-notify-test-{}", std::process::id());
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let listener = UnixDatagram::bind_addr(&address).unwrap();
            send(std::ffi::OsStr::new(&format!("@{name}")), b"READY=1").unwrap();
            let n = listener.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1");
        }
    }
}
