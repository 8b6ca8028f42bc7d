//! The workers: each takes a request whose head has arrived, reads its body if it is a
//! large one (after the service has admitted it), answers it through the service (a
//! panic there is a 500 for that request alone), writes the answer, and hands a
//! keep-alive connection back to the connection loop.

use super::body::{BodyError, DeadlineStream, Incoming};
use super::connections::{Conn, Handback};
use super::head::Head;
use super::{Limits, Service};
use crate::api::{Request, Response};
use flate2::read::MultiGzDecoder;
use serde_json::json;
use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A request for a worker.
pub(super) struct Job {
    pub conn: Conn,
    pub head: Head,
    pub body: Body,
    /// When the connection loop handed it over.
    pub queued_at: Instant,
}

pub(super) enum Body {
    Empty,
    /// A small body, read with the head.
    Read(Vec<u8>),
    /// Still on the socket (and partly in the connection's buffer).
    Pending,
}

/// What every worker shares.
struct Shared {
    queue: Mutex<Receiver<Job>>,
    service: Arc<dyn Service>,
    handback: Arc<Handback>,
    limits: Limits,
    /// Workers reading a large body now: at most half of them, so that slow uploads
    /// (even with valid credentials) leave the others to answer polls.
    reading_bodies: AtomicUsize,
}

/// Starts the workers; the sender takes their jobs.
pub(super) fn start(limits: &Limits, service: Arc<dyn Service>, handback: Arc<Handback>) -> io::Result<Sender<Job>> {
    let (jobs, queue) = channel::<Job>();
    let shared = Arc::new(Shared {
        queue: Mutex::new(queue),
        service,
        handback,
        limits: limits.clone(),
        reading_bodies: AtomicUsize::new(0),
    });
    for i in 0..limits.workers.max(1) {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new().name(format!("http-{i}")).spawn(move || work(&shared))?;
    }
    Ok(jobs)
}

/// Counts one worker reading a large body while held.
struct BodyReader<'a>(&'a AtomicUsize);

impl<'a> BodyReader<'a> {
    fn take(count: &'a AtomicUsize, most: usize) -> Option<BodyReader<'a>> {
        let taken = count.fetch_add(1, Ordering::AcqRel) < most;
        let reader = BodyReader(count);
        taken.then_some(reader)
    }
}

impl Drop for BodyReader<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn work(shared: &Shared) {
    let (queue, service, handback, limits) = (&shared.queue, shared.service.as_ref(), &shared.handback, &shared.limits);
    loop {
        let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // A panic anywhere in answering (not only in the service) drops that connection;
        // the worker lives on, so no request can shrink the pool.
        match catch_unwind(AssertUnwindSafe(|| answer(job, service, limits, &shared.reading_bodies))) {
            Ok(Some(conn)) => handback.give(conn),
            Ok(None) => {}
            Err(_) => log::error!("answering a request panicked; its connection is closed, the server goes on"),
        }
    }
}

/// Answers one request; the connection back if it may serve another (or must linger).
fn answer(job: Job, service: &dyn Service, limits: &Limits, reading_bodies: &AtomicUsize) -> Option<Conn> {
    let Job { mut conn, head, body, queued_at } = job;
    let started = Instant::now();
    let (path, query) = match head.target.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (head.target.clone(), None),
    };
    let mut request = Request {
        method: head.method.clone(),
        path,
        query,
        headers: head.headers.clone(),
        body: Vec::new(),
        peer: conn.peer,
        tls: conn.transport.is_tls(),
    };
    conn.write_deadline = started + limits.write_timeout;
    conn.head_request = head.method == "HEAD";
    // Waited longer than a head may take: the workers are behind; say so rather than
    // answer late (the client retries; a device polls again).
    if started.duration_since(queued_at) > limits.head_timeout {
        let busy = error_response(503, "busy", "the server is busy; retry in a moment").with_header("Retry-After", "1");
        return refused(conn, &request, &busy, started);
    }
    let raw = match body {
        Body::Empty => Vec::new(),
        Body::Read(bytes) => bytes,
        Body::Pending => {
            if let Some(refusal) = guarded(|| service.refuse_before_body(&request)).unwrap_or_else(|| Some(panicked()))
            {
                return refused(conn, &request, &refusal, started);
            }
            let Some(_reader) = BodyReader::take(reading_bodies, (limits.workers / 2).max(1)) else {
                let busy = error_response(503, "busy", "too many uploads at once; retry in a moment")
                    .with_header("Retry-After", "1");
                return refused(conn, &request, &busy, started);
            };
            let go_ahead = b"HTTP/1.1 100 Continue\r\n\r\n";
            if head.expect_continue && conn.transport.write_before(go_ahead, conn.write_deadline).is_err() {
                return None;
            }
            let read = read_body(&mut conn, &head, limits);
            // The write timeout is for writing: it runs from when the answer is ready.
            conn.write_deadline = Instant::now() + limits.write_timeout;
            match read {
                Ok(bytes) => bytes,
                Err(BodyError::TooLarge { limit }) => {
                    let response =
                        error_response(413, "payload_too_large", &format!("request body larger than {limit} bytes"));
                    return refused(conn, &request, &response, started);
                }
                Err(BodyError::Malformed(why)) => {
                    let response = error_response(400, "bad_request", &format!("malformed chunked body: {why}"));
                    return refused(conn, &request, &response, started);
                }
                Err(BodyError::Incomplete(why)) => {
                    log::debug!("{} {}: {why}", request.method, request.path);
                    return None;
                }
            }
        }
    };
    request.body = match decode(&request, raw, limits.max_body) {
        Ok(body) => body,
        Err(response) => {
            write_answer(&mut conn, &request, &response, false, started);
            return None;
        }
    };
    let response = guarded(|| service.handle(&request)).unwrap_or_else(panicked);
    // However long answering took (a database connection waited for, a slow registry).
    conn.write_deadline = Instant::now() + limits.write_timeout;
    let keep_alive = head.keep_alive && response.header("connection").is_none_or(|v| !v.eq_ignore_ascii_case("close"));
    if !write_answer(&mut conn, &request, &response, keep_alive, started) {
        return None;
    }
    if !keep_alive {
        // `Connection: close`: end the connection once the client has read the answer.
        conn.linger();
    }
    Some(conn)
}

/// Answers a request whose body was not (all) read, and hands the connection back to
/// linger: the client may still be sending the body, and closing on unread data would
/// reset the connection before it reads this answer.
fn refused(mut conn: Conn, request: &Request, response: &Response, started: Instant) -> Option<Conn> {
    if !write_answer(&mut conn, request, response, false, started) {
        return None;
    }
    conn.linger();
    Some(conn)
}

/// Runs the service, turning a panic into `None` (its message is logged by the panic hook).
fn guarded<T>(call: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(call)).ok()
}

fn panicked() -> Response {
    log::error!("a request handler panicked; answered 500, the server goes on");
    error_response(500, "internal_error", "the server failed on this request; it is logged")
}

fn read_body(conn: &mut Conn, head: &Head, limits: &Limits) -> Result<Vec<u8>, BodyError> {
    let deadline = Instant::now() + limits.body_timeout;
    let mut incoming = Incoming {
        buf: std::mem::take(&mut conn.buf),
        pos: 0,
        source: DeadlineStream { transport: &mut conn.transport, deadline },
    };
    let body = match head.body {
        super::head::BodyFraming::Length(n) => incoming.read_length(n, limits.max_body),
        super::head::BodyFraming::Chunked => incoming.read_chunked(limits.max_body),
        super::head::BodyFraming::None => Ok(Vec::new()),
    };
    conn.buf = incoming.into_leftover();
    body
}

/// The body as sent, or gunzipped (`Content-Encoding: gzip`, every member of it);
/// another coding is a 415, bytes that are not gzip a 400.
fn decode(request: &Request, raw: Vec<u8>, limit: usize) -> Result<Vec<u8>, Response> {
    match request.header("content-encoding").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "identity") => Ok(raw),
        Some("gzip" | "x-gzip") => gunzip(&raw, limit),
        Some(other) => Err(error_response(
            415,
            "unsupported_media_type",
            &format!("Content-Encoding {other:?} is not supported; send gzip or no encoding"),
        )),
    }
}

fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, Response> {
    let mut body = Vec::new();
    // Every member: `cat a.gz b.gz` is one gzip stream (RFC 1952), and bytes after the
    // last member fail as a bad header instead of being dropped.
    MultiGzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| error_response(400, "bad_request", &format!("reading the gzip body failed: {e}")))?;
    if body.len() > limit {
        return Err(error_response(413, "payload_too_large", &format!("request body larger than {limit} bytes")));
    }
    Ok(body)
}

/// Writes the answer; true if it was written whole.
fn write_answer(conn: &mut Conn, request: &Request, response: &Response, keep_alive: bool, started: Instant) -> bool {
    let bytes = serialize(response, keep_alive, conn.head_request);
    let written = conn.transport.write_before(&bytes, conn.write_deadline);
    if log::log_enabled!(log::Level::Debug) {
        // The path only: a query may carry a token (`?token=` of a webhook).
        let peer = conn.peer.map(|p| p.to_string()).unwrap_or_default();
        match &written {
            Ok(()) => log::debug!(
                "{peer} {} {} {} {} µs",
                request.method,
                request.path,
                response.status,
                started.elapsed().as_micros()
            ),
            Err(e) => log::debug!(
                "{peer} {} {} {}: writing the answer failed: {e}",
                request.method,
                request.path,
                response.status
            ),
        }
    }
    written.is_ok()
}

/// A JSON error in the API's shape, for what fails below the API.
pub(super) fn error_response(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, &json!({"error": code, "message": message}))
}

/// Status line, headers (with `Content-Length` and, when closing, `Connection: close`)
/// and body, as one buffer: one write, one packet for a small answer.
/// For an answer to `HEAD`, `head_only`: the head as a GET's would be, without the body.
pub(super) fn serialize(response: &Response, keep_alive: bool, head_only: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + response.body.len());
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
    for (name, value) in &response.headers {
        let framing = name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection");
        // A header that would split the head is dropped, never sent.
        let splits = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
        if !framing && !splits(name) && !splits(value) {
            let _ = write!(out, "{name}: {value}\r\n");
        }
    }
    // A 304 or 204 has no body, and a length would describe the one it stands for.
    let bodiless = matches!(response.status, 204 | 304);
    if !bodiless {
        let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless && !head_only {
        out.extend_from_slice(&response.body);
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_their_length_and_never_a_header_that_splits_the_head() {
        let response = Response::json(200, &json!({"a": 1}))
            .with_header("ETag", "\"e\"")
            .with_header("X-Bad", "a\r\nSet-Cookie: x")
            .with_header("Content-Length", "999");
        let text = String::from_utf8(serialize(&response, true, false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"e\"\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
        let closing = String::from_utf8(serialize(&Response::empty(304), false, false)).unwrap();
        let head = String::from_utf8(serialize(&Response::json(405, &json!({"a": 1})), true, true)).unwrap();
        assert!(head.ends_with("Content-Length: 7\r\n\r\n"), "HEAD: the length, not the body: {head}");
        assert_eq!(closing, "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn a_panic_in_the_service_is_a_500_for_that_request() {
        let answered = guarded(|| -> Response { panic!("a bug") }).unwrap_or_else(panicked);
        assert_eq!(answered.status, 500);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&answered.body).unwrap()["error"], "internal_error");
    }

    /// A service slower than the write timeout (a store waiting for a database
    /// connection, a registry near the resolve deadline): its answer is still written.
    /// The deadline ran from when the worker took the request, so a 503 after a 10 s
    /// wait for a PostgreSQL connection, or a target stored after 10 s of resolving,
    /// reached the client as a closed connection and no answer.
    #[test]
    fn an_answer_slower_than_the_write_timeout_is_still_written() {
        use std::io::BufRead;
        struct Slow;
        impl Service for Slow {
            fn refuse_before_body(&self, _: &Request) -> Option<Response> {
                None
            }
            fn handle(&self, _: &Request) -> Response {
                std::thread::sleep(std::time::Duration::from_millis(600));
                Response::json(503, &json!({"error": "store_unavailable"}))
            }
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let limits = Limits { write_timeout: std::time::Duration::from_millis(200), workers: 1, ..Limits::default() };
        std::thread::spawn(move || super::super::serve(listener, limits, Slow, None));
        let mut client = std::net::TcpStream::connect(address).unwrap();
        client.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        client.write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: pinion\r\n\r\n").unwrap();
        let mut status = String::new();
        std::io::BufReader::new(&client).read_line(&mut status).unwrap();
        assert_eq!(status.trim_end(), "HTTP/1.1 503 Service Unavailable", "the answer, not a closed connection");
    }

    #[test]
    fn gzip_bodies_are_bounded_after_decompression() {
        use flate2::write::GzEncoder;
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&vec![b'a'; 10_000]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert_eq!(gunzip(&bomb, 10_000).unwrap().len(), 10_000);
        assert_eq!(gunzip(&bomb, 9_999).unwrap_err().status, 413);
        assert_eq!(gunzip(b"not gzip", 100).unwrap_err().status, 400);
        let mut two_members = bomb.clone();
        two_members.extend_from_slice(&bomb);
        assert_eq!(gunzip(&two_members, 20_000).unwrap().len(), 20_000, "every member is read");
        let mut trailing = bomb.clone();
        trailing.extend_from_slice(b"{\"plain\": true}");
        assert_eq!(gunzip(&trailing, 20_000).unwrap_err().status, 400, "bytes after the last member");
    }
}
