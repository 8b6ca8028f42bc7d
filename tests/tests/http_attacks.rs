//! Attacks on pinion's HTTP server (`server/src/http_server/`) that once worked, found by
//! a reviewer on loopback: each test is one bug, kept as its regression test. Raw
//! sockets, so that the bytes on the wire are exactly the attack's.

use pinion_tests::raw_http::parse_reply;
use pinion_tests::Server;
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Opens a connection to `server` with a read timeout.
fn connect(server: &Server, timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(server.address()).expect("connecting");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream
}

/// Reads until the server closes, `timeout` passes (then `timed_out` is true) or the
/// connection is reset.
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (bytes, false),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return (bytes, true),
            Err(_) => return (bytes, false),
        }
    }
}

/// A connection whose receive buffer is 4 KiB (set before `connect`, so the window stays
/// small): a large answer does not vanish into the client's kernel buffers.
fn connect_with_small_receive_buffer(server: &Server) -> TcpStream {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(address) = server.address() else { unreachable!("the server listens on 127.0.0.1") };
    // SAFETY: plain socket calls on a descriptor this function owns until it is handed to
    // `TcpStream`, with pointers to values that live through each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let size: libc::c_int = 4096;
        let size_ptr = (&size as *const libc::c_int).cast();
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        assert_eq!(libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size_ptr, len), 0);
        let sockaddr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: address.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(address.ip().octets()) },
            sin_zero: [0; 8],
        };
        let sockaddr_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::connect(fd, (&sockaddr as *const libc::sockaddr_in).cast(), sockaddr_len);
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream
    }
}

/// `GET /api/v1/health` on a fresh connection, answered 200 within `within`.
fn health_within(server: &Server, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut stream = connect(server, within);
    stream.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: a\r\n\r\n").map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while !bytes.ends_with(b"{\"status\":\"ok\"}") {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("closed without an answer after {:?}: {:?}", start.elapsed(), bytes)),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("no answer within {within:?}: {e}")),
        }
    }
    Ok(start.elapsed())
}

/// Shows: a chunk size of 16 hex digits after a first chunk overflows
/// `body.len() as u64 + size` in `body.rs::read_chunked`. In a debug build the worker
/// thread panics (outside `catch_unwind`, which covers only the service) and is gone
/// for good: two such anonymous requests to `/health` (its route is admitted before the
/// body) leave `--workers 2` with no worker, and the server answers nothing again. In
/// the release build the sum wraps, passes the limit, and the worker reads everything
/// the client sends into memory until the body deadline. Either way the request must be
/// refused (400 or 413) and the server go on.
#[test]
fn a_chunk_size_that_overflows_the_running_total_is_refused_and_every_worker_survives() {
    let server = Server::start(&["--workers", "2"]);
    for _ in 0..2 {
        let mut stream = connect(&server, Duration::from_secs(10));
        stream
            .write_all(
                b"GET /api/v1/health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n",
            )
            .unwrap();
        let _ = stream.shutdown(Shutdown::Write);
        let (answer, _) = read_until_closed(&mut stream);
        let status = parse_reply(&answer).map(|r| r.status);
        assert!(matches!(status, Ok(400 | 413)), "wanted a 400 or 413, got {status:?}\n{}", server.log());
    }
    let answered = health_within(&server, Duration::from_secs(5));
    assert!(answered.is_ok(), "after two bad chunked bodies: {answered:?}\n{}", server.log());
}

/// Shows: `refuse_before_body` lets every body on `/health` through, so anonymous
/// clients that announce a body on `GET /api/v1/health` and never send it hold the
/// workers for the whole body timeout, and nothing else is answered meanwhile: issue
/// 11's "16 connections that announce a body stop the server", moved to one route.
#[test]
fn announcing_a_body_on_the_health_route_does_not_hold_the_workers() {
    let server = Server::start(&["--workers", "2", "--body-timeout", "60s"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&server, Duration::from_secs(60));
        stream.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n").unwrap();
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    let answered = health_within(&server, Duration::from_secs(10));
    assert!(answered.is_ok(), "with two anonymous bodies announced on /health: {answered:?}");
}

/// Shows: an answer sent with `Connection: close` (the request asked for it, or is
/// HTTP/1.0) leaves the connection open: `worker::answer` hands it back to the loop
/// whatever `keep_alive` is, so it stays until the idle timeout (75 s by default) and a
/// request pipelined after it is answered too. RFC 9112 §9.6: the server must close
/// after the answer that says close, and not process later requests.
#[test]
fn an_answer_that_says_close_closes_the_connection_and_nothing_after_it_is_answered() {
    let server = Server::start(&["--idle-timeout", "60s"]);
    let mut stream = connect(&server, Duration::from_secs(10));
    let close = b"GET /api/v1/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let next = b"GET /api/v1/health HTTP/1.1\r\nHost: a\r\n\r\n";
    stream.write_all(&[&close[..], &next[..]].concat()).unwrap();
    // This side keeps writing open, as a client waiting for the server's close does.
    let started = Instant::now();
    let (answer, timed_out) = read_until_closed(&mut stream);
    let text = String::from_utf8_lossy(&answer);
    assert!(!timed_out, "still open {:?} after an answer saying close: {text}", started.elapsed());
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "a request after Connection: close was answered: {text}");
}

/// Shows: the answer to a `HEAD` carries a body (here a 405's JSON), which RFC 9110
/// §9.3.2 forbids: a keep-alive client reads no body after a HEAD answer, so it takes
/// those bytes for the start of its next answer and the connection is out of step.
#[test]
fn an_answer_to_head_has_no_body() {
    let server = Server::start(&[]);
    let mut stream = connect(&server, Duration::from_secs(10));
    stream
        .write_all(
            b"HEAD /api/v1/health HTTP/1.1\r\nHost: a\r\n\r\nGET /api/v1/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let _ = stream.shutdown(Shutdown::Write);
    let (answer, _) = read_until_closed(&mut stream);
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an answer head") + 4;
    let after_head = String::from_utf8_lossy(&answer[end..]).into_owned();
    assert!(after_head.starts_with("HTTP/1.1 200"), "bytes after the HEAD answer's head: {after_head:?}");
}

/// Shows: a registration whose body is read after `refuse_before_body` (here with
/// `Expect: 100-continue`; also chunked, or over 8 KiB) is counted twice against
/// `--registrations-per-minute`: once by `refuse_before_body`'s `limits.admit(.., true, ..)`
/// and again by `handle_limited`. With a limit of 2, the second registration is a 429.
#[test]
fn a_registration_with_expect_100_continue_counts_once_against_the_registration_limit() {
    let server = Server::start(&["--registrations-per-minute", "2"]);
    let key = server.provisioning_key();
    let register = |uuid: &str, expect: bool| -> u16 {
        let body = json!({"uuid": uuid, "deviceApiKey": format!("{uuid}-key-0123456789abcdef0123456789")}).to_string();
        let mut stream = connect(&server, Duration::from_secs(10));
        let expect_line = if expect { "Expect: 100-continue\r\n" } else { "" };
        let head = format!(
            "POST /api/v1/device/register HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\n{expect_line}Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        if expect {
            let mut interim = [0u8; 25];
            stream.read_exact(&mut interim).unwrap();
            assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        stream.write_all(body.as_bytes()).unwrap();
        let _ = stream.shutdown(Shutdown::Write);
        let (answer, _) = read_until_closed(&mut stream);
        parse_reply(&answer).unwrap().status
    };
    assert_eq!(register("gw-expect", true), 200);
    assert_eq!(register("gw-plain", false), 200, "the second of two allowed registrations");
}

/// Shows: the write timeout (10 s, `Limits::write_timeout`) bounds each `write` call,
/// not the answer: a client that reads an answer larger than the socket buffers (4 MiB
/// on loopback; here a 6 MB target, or a large fleet's device list) a few kilobytes a
/// second keeps the worker for as long as it likes (here the only one, so nothing else
/// is answered; measured: still held after 60 s).
#[test]
fn a_client_that_reads_its_answer_slowly_does_not_hold_a_worker_past_the_write_timeout() {
    let server = Server::start(&["--workers", "1", "--max-body", "16000000"]);
    let image = format!("registry.example.com/app@sha256:{}", "ab".repeat(32));
    let environment: serde_json::Map<String, serde_json::Value> =
        (0..6000).map(|i| (format!("K{i}"), json!("v".repeat(1000)))).collect();
    let target = json!({"apps": {"1": {"appId": 1, "services": [{"serviceId": 1, "serviceName": "web",
        "imageName": image, "config": {"image": image, "environment": environment}}]}}});
    assert_eq!(server.set_target_state("big", &target).status, 200);

    let mut slow = connect_with_small_receive_buffer(&server);
    let request = format!(
        "GET /api/v1/devices/big/target-state HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\r\n",
        server.admin_token()
    );
    slow.write_all(request.as_bytes()).unwrap();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 16 * 1024];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_secs(1));
            match slow.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    // 10 s of write timeout, and slack for a loaded machine.
    let answered = health_within(&server, Duration::from_secs(25));
    let _ = reader.join();
    assert!(answered.is_ok(), "while one client reads its answer slowly: {answered:?}");
}

/// Shows: `registry_events::pushed_references` de-duplicates with `Vec::contains`, so its
/// cost is quadratic in the tags named, and the 1,000-reference cap is checked only
/// after it: one Quay-shaped webhook of 60,000 tags (under 1 MiB) keeps a worker busy
/// for seconds of CPU (about 10 s in a debug build; 120,000 tags fit in 1 MiB) before
/// it is refused. It should be refused at once.
#[test]
fn a_webhook_naming_many_tags_is_refused_without_quadratic_work() {
    const TOKEN: &str = "webhook-token-for-the-attacks-0123";
    let server = Server::start(&["--webhook-token", TOKEN]);
    let tags: Vec<String> = (0..60_000).map(|i| format!("t{i}")).collect();
    let body = json!({"docker_url": "quay.io/ns/app", "updated_tags": tags}).to_string();
    let mut stream = connect(&server, Duration::from_secs(120));
    let head = format!(
        "POST /api/v1/webhooks/registry HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let _ = stream.shutdown(Shutdown::Write);
    let (answer, _) = read_until_closed(&mut stream);
    // How fast is a benchmark's question; here: refused, reading stopped at 1,001.
    assert_eq!(parse_reply(&answer).map(|r| r.status), Ok(413));
}

/// Shows: `--history-versions` above `i64::MAX` (an operator's "keep them all") wraps in
/// `set_target`'s `version - self.history_limit as i64` to `version + …`, and the prune
/// deletes every version, the one just written included: the target reads back empty
/// (`"apps": {}`). Just above `i64::MAX` the subtraction overflows instead (a panic in
/// a debug build). The flag should be capped, or the prune done in unsigned arithmetic.
#[test]
fn a_huge_history_limit_keeps_the_target_just_written() {
    let server = Server::start(&["--history-versions", "10000000000000000000"]);
    let image = format!("registry.example.com/app@sha256:{}", "ab".repeat(32));
    let target =
        json!({"apps": {"1": {"appId": 1, "services": [{"serviceId": 1, "serviceName": "web", "imageName": image}]}}});
    assert_eq!(server.set_target_state("gw", &target).status, 200);
    let stored = server.get_target_state("gw");
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert!(stored.json()["apps"]["1"].is_object(), "the target just written is gone: {}", stored.body);
}
