//! Life under systemd without a systemd library: `ready` sends `READY=1` to the socket
//! named by `NOTIFY_SOCKET` (units with `Type=notify`), and `init_logging` writes log
//! lines with sd-daemon priority prefixes (`<3>` error … `<7>` debug) when stderr is the
//! journal, so `journalctl -p warning` works. Outside systemd both do what they did.
//! Every line is one line: control characters in a message (a registry's error text, a
//! Docker error, a name a device chose) are escaped, so outside text cannot forge a log
//! line or a journal priority (`\n<0>…`).
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
    let journal = stderr_is_journal();
    builder.format(move |out, record| {
        let line = log_line(record.level(), record.target(), &record.args().to_string(), journal);
        writeln!(out, "{line}")
    });
    builder.init();
}

/// One log line: `<priority>target: message` for the journal, `[LEVEL target] message`
/// elsewhere, the message's control characters escaped.
fn log_line(level: log::Level, target: &str, message: &str, journal: bool) -> String {
    let message = escape_controls(message);
    if journal {
        let priority = match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        format!("<{priority}>{target}: {message}")
    } else {
        format!("[{level:<5} {target}] {message}")
    }
}

/// `\n`, `\r`, `\t` and `\u{…}` for control characters; other text as it is.
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_control() => escaped.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => escaped.push(c),
        }
    }
    escaped.into()
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
    fn outside_text_cannot_forge_a_line_or_a_journal_priority() {
        let forged = "manifest unknown: no such tag\n<0>pinion: forged emergency\r\u{1b}[2J";
        let line = log_line(log::Level::Warn, "pinion_server::refresh", forged, true);
        assert_eq!(
            line,
            "<4>pinion_server::refresh: manifest unknown: no such tag\\n<0>pinion: forged emergency\\r\\u{1b}[2J"
        );
        assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\u{1b}'));
        assert_eq!(log_line(log::Level::Info, "t", "plain: é ü", false), "[INFO  t] plain: é ü");
    }

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
