//! Life under systemd without a systemd library, shared by the agent and the server:
//! `ready` sends `READY=1` to the socket named by `NOTIFY_SOCKET` (units with
//! `Type=notify`), and `init_logging` writes log lines with sd-daemon priority prefixes
//! (`<3>` error … `<7>` debug) when stderr is the journal, so `journalctl -p warning`
//! works. Outside systemd both do what they did.
//! Every line is one line: control characters in a message (a registry's error text, a
//! Docker error, a name a device chose) are escaped, so outside text cannot forge a log
//! line or a journal priority (`\n<0>…`).
//! No secret reaches a log at any level: the HTTP client and TLS library log what goes
//! over the wire (ureq-proto hex-dumps every request at trace, `Authorization` with a
//! registry password or token included), so their records above `info` are dropped
//! whatever `RUST_LOG` says (`WIRE_CRATES`); a level set lower stays lower.
//! Its own crate (log and env_logger only) because both binaries need exactly this.

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

/// Crates that log the bytes, headers or URLs of what goes over the wire below `info`:
/// ureq (request and response heads at debug, with the path and query and `Location` at
/// trace), ureq-proto (a hex dump of every request and answer at trace) and rustls
/// (handshake messages at trace). At `info` and above they log only warnings and errors
/// in words (read in ureq 3.5, ureq-proto 0.7, rustls 0.23; `pinion_server`'s and
/// `pinion_agent`'s other dependencies do not log).
const WIRE_CRATES: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

/// The most a `WIRE_CRATES` target may log, whatever `RUST_LOG` asks.
const WIRE_CRATES_MAX: log::Level = log::Level::Info;

/// `RUST_LOG` filtering (default `info`) with `WIRE_CRATES` held to `WIRE_CRATES_MAX`, no
/// timestamps (journald and terminals add their own), and a priority prefix per line when
/// stderr is the journal stream systemd gave us.
pub fn init_logging() {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    let journal = stderr_is_journal();
    builder.format(move |out, record| {
        let line = log_line(record.level(), record.target(), &record.args().to_string(), journal);
        writeln!(out, "{line}")
    });
    let logger = WireCapped(builder.build());
    let max_level = logger.0.filter();
    // Fails only if a logger is set already, which then stays.
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max_level);
    }
}

/// env_logger's logger, with `WIRE_CRATES` records above `WIRE_CRATES_MAX` dropped. It
/// only ever drops: a target `RUST_LOG` turned down or off stays so.
struct WireCapped(env_logger::Logger);

impl log::Log for WireCapped {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        !over_wire_cap(metadata.target(), metadata.level()) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !over_wire_cap(record.target(), record.level()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Whether a record of `target` (a module path) at `level` is one of a `WIRE_CRATES`
/// crate above `WIRE_CRATES_MAX`.
fn over_wire_cap(target: &str, level: log::Level) -> bool {
    let crate_name = target.split("::").next().unwrap_or(target);
    level > WIRE_CRATES_MAX && WIRE_CRATES.contains(&crate_name)
}

/// One log line: `<priority>target: message` for the journal, `[LEVEL target] message`
/// elsewhere, the message's control characters escaped.
fn log_line(level: log::Level, target: &str, message: &str, journal: bool) -> String {
    let message = escape_unprintable(message);
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

/// No control characters (newlines, escapes, NUL), and none of the characters that make
/// a line read differently from what it holds: the bidirectional controls (U+202A–U+202E,
/// U+2066–U+2069, U+200E, U+200F, U+061C) and the line and paragraph separators
/// (U+2028, U+2029). The server checks names and versions with this.
pub fn is_printable(text: &str) -> bool {
    !text.chars().any(is_unprintable)
}

/// `text` with every character `is_printable` refuses written out (`\n`, `\r`, `\t`,
/// else `\u{…}`), so that it shows on one line as what it holds; printable text is
/// returned as it is. Every log line goes through it, and outside text kept as
/// information (a registry's error message) where refusing it would hide why something
/// failed.
pub fn escape_unprintable(text: &str) -> std::borrow::Cow<'_, str> {
    if is_printable(text) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if is_unprintable(c) => escaped.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => escaped.push(c),
        }
    }
    escaped.into()
}

fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
        || matches!(c, '\u{2028}' | '\u{2029}')
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

    fn metadata(target: &str, level: log::Level) -> log::Metadata<'_> {
        log::Metadata::builder().target(target).level(level).build()
    }

    fn capped(filters: &str) -> WireCapped {
        WireCapped(env_logger::Builder::new().parse_filters(filters).build())
    }

    #[test]
    fn the_http_client_and_tls_library_log_nothing_above_info_whatever_rust_log_says() {
        use log::Level::*;
        use log::Log;
        for filters in ["trace", "debug", "ureq=trace,ureq_proto=trace,rustls=trace", "info,ureq_proto::util=trace"] {
            let logger = capped(filters);
            for target in ["ureq", "ureq::run", "ureq_proto::util", "ureq_proto::client::mod", "rustls::common_state"] {
                for level in [Trace, Debug] {
                    assert!(!logger.enabled(&metadata(target, level)), "{filters}: {target} at {level}");
                }
                assert!(logger.enabled(&metadata(target, Info)), "{filters}: {target} at info");
                assert!(logger.enabled(&metadata(target, Warn)), "{filters}: {target} at warn");
            }
        }
        // Everything else is as RUST_LOG says.
        let trace = capped("trace");
        for target in ["pinion_server::registry::token", "pinion_agent::run", "ureqx", "rustls_pki_types", "my_ureq"] {
            assert!(trace.enabled(&metadata(target, Trace)), "{target}");
        }
    }

    #[test]
    fn a_level_turned_down_stays_down() {
        use log::Level::*;
        use log::Log;
        let off = capped("trace,ureq=off,rustls=warn");
        assert!(!off.enabled(&metadata("ureq::run", Error)));
        assert!(!off.enabled(&metadata("rustls::check", Info)));
        assert!(off.enabled(&metadata("rustls::check", Warn)));
        assert!(off.enabled(&metadata("pinion_server::api", Trace)));
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
