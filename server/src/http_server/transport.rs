//! A connection's bytes: plain TCP, or TLS (a rustls session over the TCP stream, when
//! the server has `--tls-cert`). The connection loop drives it without blocking (the
//! handshake, then request heads: `read_available`, `flush`), a worker with deadlines
//! (`read_before`, `write_before`). The session goes with the connection from one to the
//! other and back, and with it the plaintext it decrypted that nobody has read yet (a
//! pipelined request): whoever takes the connection reads that before the socket.
//!
//! rustls's own `Stream` is not used in the workers: it reads until a whole record has
//! come, one socket read after another, so a client trickling a record a byte at a time
//! would outlast any per-read timeout. Here every socket read and write gives up at one
//! deadline.

use rustls::ServerConnection;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub(super) enum Transport {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

pub(super) struct Tls {
    tcp: TcpStream,
    session: ServerConnection,
    /// Whether anything has arrived yet: the first bytes tell a TLS client from one
    /// speaking plain http to this port.
    started: bool,
}

/// What a read without blocking found.
pub(super) enum Arrived {
    /// The connection is open; whatever came is in the buffer (perhaps nothing).
    Open,
    /// The client closed its side (what came before is in the buffer).
    Ended,
    /// A plain http request on a TLS port (nothing was read: it is answered in plain http).
    PlainHttp,
    /// A failed handshake, a TLS error or a reset: the connection is dropped.
    Failed(io::Error),
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client took longer than its time")
}

impl Transport {
    pub fn tls(tcp: TcpStream, session: ServerConnection) -> Transport {
        Transport::Tls(Box::new(Tls { tcp, session, started: false }))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &tls.tcp,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    pub fn is_handshaking(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.session.is_handshaking())
    }

    /// TLS bytes are waiting for the socket to take them.
    pub fn wants_write(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.session.wants_write())
    }

    /// Reads, without blocking, what has arrived into `buf` until it holds `limit` bytes;
    /// over TLS, the handshake goes on meanwhile, and what the session has to send is sent
    /// as far as the socket takes it (`wants_write` says when some waits).
    pub fn read_available(&mut self, buf: &mut Vec<u8>, limit: usize) -> Arrived {
        match self {
            Transport::Plain(tcp) => read_plain_available(tcp, buf, limit),
            Transport::Tls(tls) => tls.read_available(buf, limit),
        }
    }

    /// Writes `bytes` without blocking; an error unless the socket took all of them (a
    /// short answer from the connection loop, which cannot wait).
    pub fn write_now(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.write_all(bytes),
            Transport::Tls(tls) => {
                tls.session.set_buffer_limit(None);
                tls.session.writer().write_all(bytes)?;
                match tls.flush()? {
                    true => Ok(()),
                    false => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// Ends the sending side: a TLS `close_notify` once the handshake is done (if the
    /// socket takes it now: the socket is left non-blocking, as the connection loop that
    /// lingers on it wants it), then the TCP shutdown.
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Tls(tls) if !tls.session.is_handshaking() => {
                tls.session.send_close_notify();
                // A worker's socket blocks: a client that stopped reading once its answer
                // filled the socket's buffer held the worker a write timeout more here.
                let _ = tls.tcp.set_nonblocking(true);
                let _ = tls.session.write_tls(&mut tls.tcp);
            }
            _ => {}
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }

    /// Reads some bytes (blocking), giving up at `deadline`.
    pub fn read_before(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => {
                set_read_timeout(tcp, deadline)?;
                match tcp.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(timed_out()),
                    other => other,
                }
            }
            Transport::Tls(tls) => tls.read_before(buf, deadline),
        }
    }

    /// Writes all of `bytes` (blocking) by `deadline` (a timeout per write would let a
    /// client that reads a byte now and then hold a worker for ever).
    pub fn write_before(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => write_all_before(tcp, bytes, deadline),
            Transport::Tls(tls) => tls.write_before(bytes, deadline),
        }
    }
}

fn read_plain_available(mut tcp: &TcpStream, buf: &mut Vec<u8>, limit: usize) -> Arrived {
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < limit {
        let room = (limit - buf.len()).min(chunk.len());
        match tcp.read(&mut chunk[..room]) {
            Ok(0) => return Arrived::Ended,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Arrived::Failed(e),
        }
    }
    Arrived::Open
}

/// Sets the socket's read timeout to what is left until `deadline` (at least 1 ms: zero
/// would mean none); an error once it has passed.
fn set_read_timeout(tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    tcp.set_read_timeout(Some(left.max(Duration::from_millis(1))))
}

fn set_write_timeout(tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    tcp.set_write_timeout(Some(left.max(Duration::from_millis(1))))
}

fn write_all_before(mut tcp: &TcpStream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        set_write_timeout(tcp, deadline)?;
        match tcp.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The first byte of a TLS connection is a handshake record's (22); a plain http client
/// starts with a method's first letter.
fn looks_like_plain_http(first: u8) -> bool {
    first.is_ascii_uppercase()
}

impl Tls {
    fn read_available(&mut self, buf: &mut Vec<u8>, limit: usize) -> Arrived {
        if !self.started {
            let mut first = [0u8; 1];
            match self.tcp.peek(&mut first) {
                Ok(1) if looks_like_plain_http(first[0]) => return Arrived::PlainHttp,
                Ok(1) => self.started = true,
                Ok(_) => return Arrived::Ended,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Arrived::Open,
                Err(e) => return Arrived::Failed(e),
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let mut ended = false;
        loop {
            // Plaintext already decrypted first: it may be all there is (a pipelined
            // request the worker handed back undecided).
            while buf.len() < limit {
                let room = (limit - buf.len()).min(chunk.len());
                match self.session.reader().read(&mut chunk[..room]) {
                    Ok(0) => return Arrived::Ended,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && ended => return Arrived::Ended,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // A TCP close without close_notify, after what came before it.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Arrived::Ended,
                    Err(e) => return Arrived::Failed(e),
                }
            }
            if let Err(e) = self.flush() {
                return Arrived::Failed(e);
            }
            if buf.len() >= limit || ended {
                return Arrived::Open;
            }
            match self.session.read_tls(&mut self.tcp) {
                Ok(0) => ended = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Arrived::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Arrived::Failed(e),
            }
            if let Err(e) = self.process() {
                return Arrived::Failed(e);
            }
        }
    }

    /// Decrypts what was read; on a TLS error, sends the alert rustls queued (if the
    /// socket takes it now) and returns the error.
    fn process(&mut self) -> io::Result<()> {
        match self.session.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.session.write_tls(&mut self.tcp);
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }

    fn flush(&mut self) -> io::Result<bool> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn flush_before(&mut self, deadline: Instant) -> io::Result<()> {
        while self.session.wants_write() {
            set_write_timeout(&self.tcp, deadline)?;
            match self.session.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_before(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            // An alert or a key update may wait to be sent before more comes.
            self.flush_before(deadline)?;
            set_read_timeout(&self.tcp, deadline)?;
            match self.session.read_tls(&mut self.tcp) {
                // The end: the reader says whether it was clean (0) or not (an error).
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(e),
            }
            self.process()?;
        }
    }

    fn write_before(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        let mut written = 0;
        while written < bytes.len() {
            // The session takes plaintext up to its buffer limit (64 KiB); what it took is
            // sent before more is given.
            let n = self.session.writer().write(&bytes[written..])?;
            if n == 0 && !self.session.wants_write() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            written += n;
            self.flush_before(deadline)?;
        }
        self.flush_before(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_is_plain_http_and_a_handshake_record_is_not() {
        for request in [&b"GET / HTTP/1.1"[..], b"POST /", b"PATCH /", b"HEAD /", b"PRI * HTTP/2.0"] {
            assert!(looks_like_plain_http(request[0]), "{:?}", String::from_utf8_lossy(request));
        }
        assert!(!looks_like_plain_http(22), "a TLS handshake record");
        assert!(!looks_like_plain_http(0x80), "an SSLv2-style hello");
    }
}
