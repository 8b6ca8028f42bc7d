//! The connection loop: one thread that owns every connection not being answered. It
//! accepts, reads request heads (and small bodies) as bytes arrive, hands complete
//! requests to the workers, takes keep-alive connections back, and closes those whose
//! time is up. No client can make it wait: every socket here is non-blocking.
//!
//! At the connection limit the connections that have waited longest (idle, or with a
//! head still trickling in) are closed to make room, as nginx reuses its idle
//! keep-alive connections: a flood of idle sockets cannot keep a device out.
//!
//! Over TLS (`--tls-cert`) the handshake happens here too, without blocking, within the
//! head timeout of a new connection: a client that never finishes it is closed like one
//! that never finishes its head, and holds no worker meanwhile.

use super::epoll::{Epoll, Wakeup};
use super::head::{parse_head, BodyFraming, Head, HeadError, MAX_HEAD_BYTES};
use super::transport::{Arrived, Transport};
use super::worker::{self, Body, Job};
use super::{Limits, Service, SMALL_BODY};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
/// How often deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How long accepting pauses when the process is out of descriptors and nothing can be closed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Bytes read ahead at most: a head and a small body.
const READ_AHEAD: usize = MAX_HEAD_BYTES + SMALL_BODY;
/// After an answer given before the body was read, how long and how much of the rest
/// is read and dropped before closing (a close with unread data sends a reset, which
/// can destroy the answer before the client reads it; nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// One client connection and what it has sent that is not yet answered.
pub(super) struct Conn {
    pub transport: Transport,
    pub peer: Option<SocketAddr>,
    pub buf: Vec<u8>,
    /// By when the answer being written must be written whole.
    pub write_deadline: Instant,
    /// The request being answered is a HEAD: its answer has no body.
    pub head_request: bool,
    phase: Phase,
    /// When its current wait began: the longest waiting are closed first at the limit.
    waiting_since: Instant,
    deadline: Instant,
    /// The count of open connections, one less when this one is dropped (closed).
    open: Arc<AtomicUsize>,
    /// Watched for writability too: TLS bytes wait for room in the socket.
    watching_writes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A new TLS connection whose handshake is under way.
    Handshake,
    /// Waiting for the first byte of a request.
    Idle,
    /// Part of a head has come.
    Head,
    /// The head has come; its small body is coming.
    Body,
    /// Answered and shut for writing; what the client still sends is dropped until it
    /// closes, `LINGER` passes or `LINGER_BYTES` came.
    Linger { dropped: usize },
}

impl Conn {
    /// Marks an answered connection whose request body was not read: the loop drains
    /// and closes it instead of reading another request.
    pub fn linger(&mut self) {
        self.transport.shutdown_write();
        self.phase = Phase::Linger { dropped: 0 };
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What workers hand back: connections kept alive, and a wake-up for this loop.
pub(super) struct Handback {
    conns: Mutex<Vec<Conn>>,
    wakeup: Wakeup,
}

impl Handback {
    pub fn give(&self, conn: Conn) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        self.wakeup.wake();
    }
}

struct Loop {
    listener: TcpListener,
    epoll: Epoll,
    limits: Limits,
    conns: HashMap<u64, Conn>,
    open: Arc<AtomicUsize>,
    handback: Arc<Handback>,
    jobs: std::sync::mpsc::Sender<Job>,
    /// With `--tls-cert`: every connection speaks TLS.
    tls: Option<Arc<ServerConfig>>,
    /// Accepting paused (out of descriptors) until then.
    paused_until: Option<Instant>,
    /// The last time running out of descriptors was logged.
    logged_exhaustion: Option<Instant>,
}

pub(super) fn run(
    listener: TcpListener,
    limits: Limits,
    service: Arc<dyn Service>,
    tls: Option<Arc<ServerConfig>>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    let handback = Arc::new(Handback { conns: Mutex::new(Vec::new()), wakeup: Wakeup::new()? });
    epoll.add(listener.as_raw_fd(), LISTENER)?;
    epoll.add(handback.wakeup.raw_fd(), WAKE)?;
    let jobs = worker::start(&limits, service, Arc::clone(&handback))?;
    log::info!(
        "serving {} with {} workers, at most {} connections (head {:?}, body {:?}, idle {:?})",
        if tls.is_some() { "https" } else { "http" },
        limits.workers,
        limits.max_connections,
        limits.head_timeout,
        limits.body_timeout,
        limits.idle_timeout
    );
    let mut state = Loop {
        listener,
        epoll,
        limits,
        conns: HashMap::new(),
        open: Arc::new(AtomicUsize::new(0)),
        handback,
        jobs,
        tls,
        paused_until: None,
        logged_exhaustion: None,
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut ready = Vec::with_capacity(1024);
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    loop {
        let now = Instant::now();
        let mut wait = next_sweep.saturating_duration_since(now);
        if let Some(until) = state.paused_until {
            wait = wait.min(until.saturating_duration_since(now));
        }
        state.epoll.wait(&mut events, wait, &mut ready)?;
        for &token in &ready {
            match token {
                LISTENER => state.accept_all(),
                WAKE => state.take_back(),
                fd => state.read_ready(fd),
            }
        }
        let now = Instant::now();
        if state.paused_until.is_some_and(|until| now >= until) {
            state.paused_until = None;
            state.epoll.add(state.listener.as_raw_fd(), LISTENER)?;
        }
        if now >= next_sweep {
            state.sweep(now);
            next_sweep = now + SWEEP_EVERY;
        }
    }
}

impl Loop {
    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_out_of_descriptors(&e) => {
                    self.log_exhaustion(&e);
                    if self.evict_longest_waiting() == 0 {
                        // Nothing to close: stop accepting for a moment rather than spin.
                        let _ = self.epoll.remove(self.listener.as_raw_fd());
                        self.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                        return;
                    }
                }
                // ECONNABORTED and the like: that client is gone, the next may not be.
                Err(e) => log::debug!("accepting a connection: {e}"),
            }
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.open.load(Ordering::Relaxed) >= self.limits.max_connections && self.evict_longest_waiting() == 0 {
            // Every connection is being answered: this one is refused (closed at once).
            log::debug!(
                "connection from {peer} refused: {} connections are being answered",
                self.open.load(Ordering::Relaxed)
            );
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::debug!("connection from {peer}: {e}");
            return;
        }
        let (transport, phase) = match &self.tls {
            None => (Transport::Plain(stream), Phase::Idle),
            Some(config) => match rustls::ServerConnection::new(Arc::clone(config)) {
                Ok(session) => (Transport::tls(stream, session), Phase::Handshake),
                Err(e) => {
                    log::warn!("connection from {peer}: no TLS session: {e}");
                    return;
                }
            },
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let conn = Conn {
            transport,
            peer: Some(peer),
            buf: Vec::new(),
            write_deadline: now,
            head_request: false,
            phase,
            waiting_since: now,
            // A new connection has the head's time to send it (and its TLS handshake).
            deadline: now + self.limits.head_timeout,
            open: Arc::clone(&self.open),
            watching_writes: false,
        };
        self.watch(conn);
    }

    /// Puts a connection in the epoll set and the table; reads what it already sent (over
    /// TLS also what the session decrypted but nobody read: no socket event would say so).
    fn watch(&mut self, mut conn: Conn) {
        let fd = conn.transport.tcp().as_raw_fd();
        conn.watching_writes = false;
        if let Err(e) = self.epoll.add(fd, fd as u64) {
            log::warn!("watching a connection: {e}");
            return;
        }
        let (pending, tls) = (!conn.buf.is_empty(), conn.transport.is_tls());
        self.conns.insert(fd as u64, conn);
        if tls {
            self.read_ready(fd as u64);
        } else if pending {
            self.advance(fd as u64);
        }
    }

    /// Closes connections waiting here (none that a worker is answering): those of the
    /// address holding the most, the longest waiting first, one in 64 of them (at least
    /// one), so that one client's flood pushes out its own connections before others',
    /// and a flood at the limit costs a scan per 64 connections, not per connection.
    fn evict_longest_waiting(&mut self) -> usize {
        let mut per_address: HashMap<Option<IpAddr>, usize> = HashMap::new();
        for conn in self.conns.values() {
            *per_address.entry(conn.peer.map(|p| p.ip())).or_default() += 1;
        }
        let Some((&busiest, _)) = per_address.iter().max_by_key(|(_, count)| **count) else { return 0 };
        let mut waiting: Vec<(Instant, u64)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer.map(|p| p.ip()) == busiest)
            .map(|(fd, c)| (c.waiting_since, *fd))
            .collect();
        let count = (waiting.len() / 64).max(1);
        if count < waiting.len() {
            waiting.select_nth_unstable(count - 1);
        }
        for (_, fd) in &waiting[..count] {
            self.conns.remove(fd);
        }
        log::debug!("at the connection limit: closed the {count} connections that had waited longest");
        count
    }

    fn log_exhaustion(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self.logged_exhaustion.is_none_or(|at| now.duration_since(at) > Duration::from_secs(10)) {
            log::warn!(
                "out of descriptors with {} connections open ({error}); closing the longest waiting. \
                 Raise LimitNOFILE or lower --max-connections",
                self.open.load(Ordering::Relaxed)
            );
            self.logged_exhaustion = Some(now);
        }
    }

    /// Connections the workers are done with, for their next request.
    fn take_back(&mut self) {
        self.handback.wakeup.clear();
        let conns = std::mem::take(&mut *self.handback.conns.lock().unwrap_or_else(|p| p.into_inner()));
        let now = Instant::now();
        for mut conn in conns {
            if conn.transport.tcp().set_nonblocking(true).is_err() {
                continue;
            }
            conn.waiting_since = now;
            if let Phase::Linger { .. } = conn.phase {
                conn.buf = Vec::new();
                conn.deadline = now + LINGER;
            } else {
                conn.phase = Phase::Idle;
                conn.deadline = now + self.limits.idle_timeout;
                if conn.buf.is_empty() {
                    // An idle connection keeps no read-ahead memory.
                    conn.buf = Vec::new();
                }
            }
            self.watch(conn);
        }
    }

    fn read_ready(&mut self, fd: u64) {
        let Some(conn) = self.conns.get_mut(&fd) else { return };
        if let Phase::Linger { dropped } = &mut conn.phase {
            // Raw bytes, dropped unread (over TLS too: nothing in them is answered).
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match conn.transport.tcp().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) if *dropped + n < LINGER_BYTES => *dropped += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    _ => break,
                }
            }
            self.conns.remove(&fd);
            return;
        }
        let ended = match conn.transport.read_available(&mut conn.buf, READ_AHEAD) {
            Arrived::Open => false,
            Arrived::Ended => true,
            Arrived::PlainHttp => return self.refuse_plain_http(fd),
            Arrived::Failed(e) => {
                if conn.phase == Phase::Handshake {
                    log::debug!(
                        "TLS handshake with {} failed: {e}",
                        conn.peer.map(|p| p.to_string()).unwrap_or_default()
                    );
                }
                self.conns.remove(&fd);
                return;
            }
        };
        if conn.phase == Phase::Handshake && !conn.transport.is_handshaking() {
            // Its head time still runs from the opening: the handshake took part of it.
            conn.phase = Phase::Idle;
        }
        self.watch_writes(fd);
        self.advance(fd);
        if ended {
            // A client that sent its request and shut its side still gets its answer
            // (the request went to a worker); anything short of a request is dropped.
            self.conns.remove(&fd);
        }
    }

    /// Watches a TLS connection for room in its socket while the session has bytes the
    /// socket did not take (a handshake flight larger than the socket's buffer), and
    /// stops once they went: a socket with room is always writable.
    fn watch_writes(&mut self, fd: u64) {
        let Some(conn) = self.conns.get_mut(&fd) else { return };
        let wants = conn.transport.wants_write();
        if wants != conn.watching_writes {
            conn.watching_writes = wants;
            if let Err(e) = self.epoll.watch_writes(fd as i32, fd, wants) {
                log::debug!("watching a connection for writing: {e}");
                self.conns.remove(&fd);
            }
        }
    }

    /// A plain http request on the TLS port: answered in plain http over the TCP stream,
    /// saying so, and closed (nginx answers such a request 400 too).
    fn refuse_plain_http(&mut self, fd: u64) {
        let Some(conn) = self.conns.get_mut(&fd) else { return };
        let message = "this port speaks https: use https:// instead of http://";
        let response = worker::error_response(400, "bad_request", message);
        let mut tcp = conn.transport.tcp();
        if tcp.write_all(&worker::serialize(&response, false, false)).is_err() {
            self.conns.remove(&fd);
            return;
        }
        self.close_after_answer(fd);
    }

    /// Moves a connection's request on with what it has sent: a complete request goes
    /// to a worker, a broken one is answered and closed.
    fn advance(&mut self, fd: u64) {
        let Some(conn) = self.conns.get_mut(&fd) else { return };
        if conn.buf.is_empty() {
            return;
        }
        let now = Instant::now();
        if conn.phase == Phase::Idle {
            conn.phase = Phase::Head;
            conn.waiting_since = now;
            // A new connection's head time runs from its opening, not from its first byte.
            conn.deadline = conn.deadline.min(now + self.limits.head_timeout);
        }
        let head = match parse_head(&conn.buf) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(error) => return self.refuse(fd, &error),
        };
        let body = match head.body {
            BodyFraming::None => Body::Empty,
            BodyFraming::Length(n) if n > self.limits.max_body as u64 => {
                let message = format!("request body larger than {} bytes", self.limits.max_body);
                return self.answer_and_close(fd, 413, "payload_too_large", &message);
            }
            BodyFraming::Length(n) if n as usize <= SMALL_BODY && !head.expect_continue => {
                let end = head.len + n as usize;
                if conn.buf.len() < end {
                    if conn.phase == Phase::Head {
                        conn.phase = Phase::Body;
                        conn.deadline = now + self.limits.body_timeout;
                    }
                    return;
                }
                Body::Read(conn.buf[head.len..end].to_vec())
            }
            _ => Body::Pending,
        };
        self.dispatch(fd, head, body);
    }

    fn dispatch(&mut self, fd: u64, head: Head, body: Body) {
        let Some(mut conn) = self.conns.remove(&fd) else { return };
        let _ = self.epoll.remove(fd as i32);
        let consumed = head.len + if let Body::Read(bytes) = &body { bytes.len() } else { 0 };
        conn.buf.drain(..consumed);
        if conn.transport.tcp().set_nonblocking(false).is_err() {
            return;
        }
        // The workers live as long as the process; a send fails only while it exits.
        let _ = self.jobs.send(Job { conn, head, body, queued_at: Instant::now() });
    }

    fn refuse(&mut self, fd: u64, error: &HeadError) {
        let code = match error.status() {
            431 => "request_header_fields_too_large",
            501 => "not_implemented",
            _ => "bad_request",
        };
        self.answer_and_close(fd, error.status(), code, &error.message());
    }

    /// Answers without a worker (the socket's buffer takes a short answer whole) and
    /// closes, lingering: the client may still be sending what this refuses.
    fn answer_and_close(&mut self, fd: u64, status: u16, code: &str, message: &str) {
        let Some(conn) = self.conns.get_mut(&fd) else { return };
        let response = worker::error_response(status, code, message);
        if conn.transport.write_now(&worker::serialize(&response, false, false)).is_err() {
            self.conns.remove(&fd);
            return;
        }
        self.close_after_answer(fd);
    }

    fn close_after_answer(&mut self, fd: u64) {
        let Some(conn) = self.conns.get_mut(&fd) else { return };
        conn.linger();
        conn.buf = Vec::new();
        conn.deadline = Instant::now() + LINGER;
    }

    fn sweep(&mut self, now: Instant) {
        let expired: Vec<u64> = self.conns.iter().filter(|(_, c)| c.deadline <= now).map(|(fd, _)| *fd).collect();
        for fd in expired {
            if let Some(conn) = self.conns.remove(&fd) {
                log::debug!(
                    "closed {} after its {} timeout",
                    conn.peer.map(|p| p.to_string()).unwrap_or_default(),
                    match conn.phase {
                        Phase::Handshake => "handshake (counted in the head's)",
                        Phase::Idle => "idle",
                        Phase::Head => "head",
                        Phase::Body => "body",
                        Phase::Linger { .. } => "linger",
                    }
                );
            }
        }
    }
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
