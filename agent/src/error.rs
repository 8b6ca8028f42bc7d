//! The one error type of `pinion-agent`: each variant is one failed operation and names
//! what it failed on (a file, a URL, a container, an image).

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// A configuration file or value that cannot be used.
    Config { source_name: String, reason: String },
    /// Bad command-line usage.
    Usage { reason: String },
    /// The server could not be reached (DNS, TCP, TLS, timeout).
    ServerUnreachable { url: String, reason: String },
    /// The server answered with an error status.
    ServerStatus { url: String, status: u16, message: String },
    /// The server answered something that is not the wire contract.
    ServerProtocol { url: String, reason: String },
    /// The Docker engine could not be reached over its socket.
    DockerUnreachable { socket: PathBuf, reason: String },
    /// The Docker engine refused an operation: `op` names it and what it was on
    /// (`pull 127.0.0.1:5000/app@sha256:…`, `start web_1001`).
    Docker { op: String, status: u16, message: String },
    /// The agent's own SQLite state failed; `op` says what it was doing.
    Store { op: &'static str, reason: String },
    /// A target state the agent cannot run; `reason` names the app and service.
    InvalidTarget { reason: String },
    /// A service this gateway's limits refuse (`host_limits`): each refusal names what
    /// was asked and the `agent.toml` setting that would allow it.
    Refused { service: String, refusals: Vec<crate::host_limits::Refusal> },
    /// Too little space where Docker keeps images to pull `image` (`min_free_disk`).
    LowDisk { image: String, free: u64, min_free: u64 },
    /// A local file.
    Io { path: PathBuf, source: std::io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            Config { source_name, reason } => write!(f, "configuration {source_name}: {reason}"),
            Usage { reason } => write!(f, "{reason}"),
            ServerUnreachable { url, reason } => write!(f, "server unreachable at {url}: {reason}"),
            ServerStatus { url, status, message } => write!(f, "server answered {status} for {url}: {message}"),
            ServerProtocol { url, reason } => write!(f, "unexpected answer from {url}: {reason}"),
            DockerUnreachable { socket, reason } => {
                write!(f, "Docker engine unreachable at {}: {reason}", socket.display())
            }
            Docker { op, status, message } => write!(f, "docker {op} failed ({status}): {message}"),
            Store { op, reason } => write!(f, "agent database error while {op}: {reason}"),
            InvalidTarget { reason } => write!(f, "target state cannot be run: {reason}"),
            Refused { service, refusals } => {
                write!(f, "service {service}: ")?;
                for (i, refusal) in refusals.iter().enumerate() {
                    write!(f, "{}{refusal}", if i == 0 { "" } else { "; also, " })?;
                }
                Ok(())
            }
            LowDisk { image, free, min_free } => write!(
                f,
                "not pulling {image}: {} free where Docker keeps images, below min_free_disk ({}); \
                 pulls wait until space is freed",
                crate::disk::human(*free),
                crate::disk::human(*min_free)
            ),
            Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {}
