//! pinion's own small HTTP/1.1 server, made to hold when the network misbehaves: a fleet
//! reconnecting at once, idle keep-alive connections by the ten thousand, clients that
//! trickle a header a byte a second or announce a body and never send it.
//!
//! One thread (`connections.rs`) owns every connection that is not being answered: it
//! accepts, reads request heads without blocking (epoll), enforces the head and idle
//! timeouts, and at the connection limit closes the connections that have waited
//! longest (of the address holding the most), so a new client gets in unless every
//! connection is being answered. A request whose head (and small body) has arrived goes
//! to a fixed pool of workers (`worker.rs`), which wait on a slow client's body only
//! after the service has admitted the caller, at most half of them at once, each for
//! at most a body's deadline.
//! A panic in the service fails its request with a 500, never the process (the server
//! is built with `panic = "unwind"`, the `release-server` profile).
//! With a TLS configuration every connection speaks https (`transport.rs`): the
//! handshake is made in the connection loop, the session travels with the connection.
//!
//! It replaces tiny_http 0.12, which aborted the process when descriptors ran out (its
//! issue #195), had no timeouts, and let 16 slow clients hold all of its workers.

pub mod body;
mod connections;
mod epoll;
pub mod head;
mod transport;
mod worker;

pub use head::MAX_HEAD_BYTES;

use crate::api::{Request, Response};
use std::net::TcpListener;
use std::time::Duration;

/// What the server answers with: a service that may refuse a request on its head alone.
pub trait Service: Send + Sync + 'static {
    /// Called for a request whose body is large, chunked or awaited with
    /// `Expect: 100-continue`, before any of it is read (`request.body` is empty): an
    /// answer here refuses it (bad credentials, a rate limit) without reading it.
    fn refuse_before_body(&self, request: &Request) -> Option<Response>;
    /// Answers a request, its body read (and gunzipped).
    fn handle(&self, request: &Request) -> Response;
}

/// The limits, each with the reason for its default in `Limits::default`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; past it, connections waiting for a request are closed,
    /// those of the address holding the most and the longest waiting first.
    pub max_connections: usize,
    /// Threads answering requests.
    pub workers: usize,
    /// From a connection's opening (a keep-alive one's: its next request's first byte)
    /// to the end of its request head.
    pub head_timeout: Duration,
    /// From the end of the head to the end of its body.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// For writing an answer.
    pub write_timeout: Duration,
    /// Largest body, as sent and after gunzipping.
    pub max_body: usize,
}

/// Bodies up to this size are read with their head, before the service sees the
/// request; larger ones only once `refuse_before_body` let them through.
pub const SMALL_BODY: usize = 8 * 1024;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            workers: 16,
            // A client on a slow link sends its head in one round trip or two.
            head_timeout: Duration::from_secs(10),
            // 1 MiB over a 40 kB/s cellular link.
            body_timeout: Duration::from_secs(30),
            // Longer than the 60 s poll interval of a device, so a polling device keeps
            // its connection (nginx's keepalive_timeout is 75 s too).
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
        }
    }
}

/// Descriptors kept free of connections: the database, registry sockets, log files.
pub const RESERVED_DESCRIPTORS: usize = 128;

/// Raises the open-files limit to its hard limit and gives the connection limit that
/// fits it (`wanted`, or as many as fit).
pub fn connection_limit(wanted: Option<usize>) -> usize {
    let files = match epoll::raise_open_files_limit() {
        Ok((before, after)) => {
            if after != before {
                log::info!("open files limit raised from {before} to {after}");
            }
            after
        }
        Err(e) => {
            log::warn!("the open files limit could not be read or raised: {e}");
            1024
        }
    };
    let fits = (files as usize).saturating_sub(RESERVED_DESCRIPTORS).max(16);
    match wanted {
        Some(wanted) if wanted > fits => {
            log::warn!("--max-connections {wanted} does not fit {files} open files; using {fits}");
            fits
        }
        Some(wanted) => wanted.max(1),
        None => fits.min(100_000),
    }
}

/// Serves `service` on `listener` until the process ends: https with `tls`, else http.
pub fn serve(
    listener: TcpListener,
    limits: Limits,
    service: impl Service,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    connections::run(listener, limits, std::sync::Arc::new(service), tls)
}
