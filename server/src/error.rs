//! The one error type of `pinion-server`. Each variant is one failed operation and names
//! what it failed on (a path, a reference, a device); `api::response` maps them to HTTP
//! statuses in one `match`, and the CLI prints them.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    // --- registries (the resolver) ---
    /// Connecting to or talking with the registry failed below HTTP (DNS, TCP, TLS, reset).
    RegistryUnreachable { registry: String, reason: String },
    /// A single request to the registry took longer than its timeout.
    RegistryTimeout { registry: String, reference: String },
    /// The overall deadline for resolving a reference passed before it was answered.
    ResolutionDeadline { reference: String, seconds: u64 },
    /// `404`: the registry has no such tag (or cannot serve it for the media types asked).
    ManifestUnknown { reference: String, reason: String },
    /// `401`/`403` after following the challenge: missing or refused credentials.
    RegistryUnauthorized { registry: String, reference: String, reason: String },
    /// `429`: the registry asks us to slow down, for `retry_after` seconds if it said.
    RateLimited { registry: String, reference: String, retry_after: Option<u64> },
    /// Any other unexpected HTTP status.
    RegistryStatus { registry: String, reference: String, status: u16 },
    /// The registry answered something we cannot use (bad challenge, schema1 manifest,
    /// body not matching its digest, malformed token response).
    RegistryProtocol { registry: String, reference: String, reason: String },
    /// A Docker `config.json` credentials file that cannot be read or parsed.
    RegistryCredentials { path: PathBuf, reason: String },
    /// A registry (or token realm, or redirect target) the server may not contact: not on
    /// `--allowed-registries`, or a link-local or cloud metadata address. Nothing was sent.
    RegistryNotAllowed { registry: String, reference: String, reason: String },

    // --- requests ---
    /// A request body or parameter that is not acceptable; `reason` says what to fix.
    BadRequest { reason: String },
    /// An image reference in a target state that Docker would refuse.
    InvalidImage { app: String, service: String, source: pinion_model::Error },
    /// A device id that is not `[A-Za-z0-9._-]{1,64}`.
    InvalidDeviceId { id: String },
    /// No credentials, or credentials that match nothing.
    Unauthorized { reason: String },
    /// Valid credentials that may not do this.
    Forbidden { reason: String },
    /// The named thing does not exist.
    NotFound { what: String },
    /// A route that exists, asked with a method it does not take.
    MethodNotAllowed { method: String, path: String },
    /// A body over the configured size limit.
    PayloadTooLarge { limit: usize },
    /// A log upload with more lines than one request may carry.
    TooManyLogLines { limit: usize },
    /// A registry event naming more references than one may.
    TooManyReferences { limit: usize },
    /// The request conflicts with what is stored (e.g. a device already registered).
    Conflict { reason: String },
    /// Well-formed, but not something that can be done: a wave list that selects nobody,
    /// a compose key the agent does not run, a release whose images could not be pinned.
    Unprocessable { reason: String },
    /// A client address over its limit of `attempts` (failed authentications,
    /// registrations); refused without looking at its credentials.
    TooManyAttempts { client: String, attempts: &'static str, retry_after_secs: u64 },

    // --- local resources ---
    /// The store (SQLite) failed; `op` says what it was doing.
    Store { op: &'static str, reason: String },
    /// The database cannot be reached (PostgreSQL restarting, every connection busy):
    /// the request may be made again shortly.
    StoreUnavailable { op: &'static str, reason: String },
    /// A file the server reads or writes.
    Io { path: PathBuf, source: std::io::Error },
    /// The certificate or key file of the server's own https (`--tls-cert`, `--tls-key`)
    /// that cannot be served: unreadable, not PEM, expired or not yet valid, a key that
    /// does not match the certificate.
    Tls { path: PathBuf, reason: String },
    /// A stored secret that cannot be sealed or opened (no key, a wrong key file, an
    /// altered value), or a key file that is not a key.
    Secrets { reason: String },
    /// Bad command-line usage; printed with a hint to `--help`.
    Usage { reason: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            RegistryUnreachable { registry, reason } => {
                write!(f, "registry {registry} unreachable: {reason}")
            }
            RegistryTimeout { registry, reference } => {
                write!(f, "registry {registry} timed out answering for {reference}")
            }
            ResolutionDeadline { reference, seconds } => {
                write!(f, "resolving {reference} did not finish within {seconds} s")
            }
            ManifestUnknown { reference, reason } => {
                write!(f, "manifest unknown for {reference}: {reason}")
            }
            RegistryUnauthorized { registry, reference, reason } => {
                write!(f, "registry {registry} refused access to {reference}: {reason}")
            }
            RateLimited { registry, reference, retry_after } => match retry_after {
                Some(s) => write!(f, "registry {registry} rate-limited the request for {reference}; retry after {s} s"),
                None => write!(f, "registry {registry} rate-limited the request for {reference}"),
            },
            RegistryStatus { registry, reference, status } => {
                write!(f, "registry {registry} answered HTTP {status} for {reference}")
            }
            RegistryProtocol { registry, reference, reason } => {
                write!(f, "registry {registry} gave an unusable answer for {reference}: {reason}")
            }
            RegistryCredentials { path, reason } => {
                write!(f, "registry credentials {}: {reason}", path.display())
            }
            RegistryNotAllowed { registry, reference, reason } => {
                write!(f, "registry {registry} is not allowed, {reference} was not resolved: {reason}")
            }
            BadRequest { reason } => write!(f, "{reason}"),
            InvalidImage { app, service, source } => {
                write!(f, "app {app}, service {service}: {source}")
            }
            InvalidDeviceId { id } => {
                write!(f, "invalid device id {id:?}: expected 1 to 64 characters of A-Z a-z 0-9 . _ -")
            }
            Unauthorized { reason } => write!(f, "{reason}"),
            Forbidden { reason } => write!(f, "{reason}"),
            NotFound { what } => write!(f, "{what} not found"),
            MethodNotAllowed { method, path } => write!(f, "{method} is not allowed on {path}"),
            PayloadTooLarge { limit } => write!(f, "request body larger than {limit} bytes"),
            TooManyReferences { limit } => {
                write!(f, "the event names more than {limit} references; at most {limit} per request")
            }
            TooManyLogLines { limit } => {
                write!(f, "more than {limit} log lines in one request; send them in smaller batches")
            }
            Conflict { reason } => write!(f, "{reason}"),
            Unprocessable { reason } => write!(f, "{reason}"),
            TooManyAttempts { client, attempts, retry_after_secs } => {
                write!(f, "too many {attempts} from {client}; retry after {retry_after_secs} s")
            }
            Store { op, reason } => write!(f, "database error while {op}: {reason}"),
            StoreUnavailable { op, reason } => write!(f, "the database is unavailable ({op}): {reason}"),
            Io { path, source } => write!(f, "{}: {source}", path.display()),
            Tls { path, reason } => write!(f, "{}: {reason}", path.display()),
            Secrets { reason } => write!(f, "{reason}"),
            Usage { reason } => write!(f, "{reason}"),
        }
    }
}

impl std::error::Error for Error {}
