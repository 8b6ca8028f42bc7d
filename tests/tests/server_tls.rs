//! https without a proxy (issue 17): `pinion-server serve --tls-cert --tls-key` with
//! certificates from a private fleet CA (made with `openssl`). An agent trusting the CA
//! registers, polls and reports through it; the API answers over https, pipelined
//! requests and large bodies included; the dashboard's cookie is `Secure` and changes
//! nothing from an `http://` page; plain http to the port is told so; a certificate
//! changed on disk is served to new connections without a restart, a broken one is not;
//! a certificate that cannot be served stops the start; handshakes left unfinished hold
//! no worker and end at the head timeout, and idle TLS connections at the connection
//! limit make room for new clients.

use pinion_tests::docker::take_turn;
use pinion_tests::tls::{leaf_der, FleetPki, Issued, TlsClient};
use pinion_tests::util::{unique, wait_for};
use pinion_tests::{run_cli_with_env, Agent, Server, TempDir};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a changed certificate may take to be served (the server looks every 2 s and
/// waits one look for a change to settle) or a failed one to be logged.
const RELOAD_WITHIN: Duration = Duration::from_secs(30);

/// The certificate and key the server is started with, in a directory of their own, to
/// be replaced as certbot replaces its `live/` files.
struct LiveFiles {
    dir: TempDir,
}

impl LiveFiles {
    fn of(issued: &Issued) -> LiveFiles {
        let live = LiveFiles { dir: TempDir::new("live") };
        live.replace_with(issued);
        live
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("fullchain.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("privkey.pem")
    }

    /// Renames new files into place, the certificate first, then the key.
    fn replace_with(&self, issued: &Issued) {
        for (from, to) in [(&issued.cert, self.cert()), (&issued.key, self.key())] {
            let staged = self.dir.join("staged");
            std::fs::copy(from, &staged).expect("staging a file");
            std::fs::rename(&staged, &to).expect("renaming it into place");
        }
    }
}

fn https_server(live: &LiveFiles, pki: &FleetPki, extra: &[&str]) -> Server {
    Server::start_https(&live.cert(), &live.key(), &pki.ca_pem(), extra)
}

#[test]
fn an_agent_trusting_the_fleet_ca_registers_polls_and_reports_over_the_servers_own_https() {
    let turn = take_turn();
    let pki = FleetPki::generate("pinion direct");
    let server = Server::start_https(&pki.server_cert(), &pki.server_key(), &pki.ca_pem(), &[]);
    assert!(server.url().starts_with("https://localhost:"), "{}", server.url());
    let uuid = unique("direct-tls");
    let reply = server.set_target_state(&uuid, &json!({"apps": {}, "config": {"SERVED_OVER": "https"}}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ca_file = pki.ca_pem().display().to_string();
    let agent = Agent::start_with_env(
        &server.url(),
        &server.provisioning_key_for(&uuid),
        &uuid,
        &turn.docker,
        &[("PINION_CA_FILE", &ca_file)],
    );
    agent.converge("a report over https", || {
        let reply =
            server.request("GET", &format!("/api/v1/devices/{uuid}/current-state"), None, Some(server.admin_token()));
        reply.status == 200 && !reply.json()["reportedAt"].is_null()
    });
    let status = agent.status();
    assert_eq!(status["registered"], true, "{status}");
    assert!(status["target"]["etag"].is_string(), "the agent stored the polled target with its ETag: {status}");
    assert!(agent.log().contains("registered with the server"), "{}", agent.log());
    assert!(server.log().contains("(https;"), "the server says it serves https: {}", server.log());
}

#[test]
fn the_api_answers_over_https_pipelined_requests_and_large_bodies_included() {
    let pki = FleetPki::generate("pinion api");
    let server = Server::start_https(&pki.server_cert(), &pki.server_key(), &pki.ca_pem(), &[]);
    let reply = server.request("GET", "/api/v1/devices", None, Some(server.admin_token()));
    assert_eq!(reply.status, 200, "ureq over https: {}", reply.body);

    // Three requests in one write: the second's 200 KB body is read by a worker through
    // the TLS session (past what the connection loop read ahead), and the third, already
    // decrypted while the body was read, is answered after the connection comes back.
    let uuid = unique("pipelined");
    let big = "x".repeat(200_000);
    let body = json!({"apps": {}, "config": {"BIG": big}}).to_string();
    let token = server.admin_token();
    let requests = format!(
        "GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n\
         POST /api/v1/devices/{uuid}/target-state HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\
         GET /api/v1/devices/{uuid}/target-state HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n",
        body.len()
    );
    let client = TlsClient::trusting(&pki.ca_pem());
    let mut connection = client.connect(server.address()).expect("a TLS connection");
    let answers = connection.exchange(requests.as_bytes(), 3).expect("three answers");
    let statuses: Vec<&str> = answers.matches("HTTP/1.1 ").map(|_| "").collect();
    assert_eq!(statuses.len(), 3, "three answers: {}", &answers[..answers.len().min(600)]);
    assert!(answers.starts_with("HTTP/1.1 200"), "{}", &answers[..answers.len().min(300)]);
    let second_and_third: Vec<&str> = answers.split("HTTP/1.1 ").skip(2).collect();
    assert!(second_and_third.iter().all(|a| a.starts_with("200")), "{}", &answers[..answers.len().min(600)]);
    assert_eq!(answers.matches(&big).count(), 2, "the target was stored and answered whole, twice");
    // The same connection serves on (its session kept across the hand-backs), and what
    // its session decrypted past what the connection loop reads ahead (40 KB) is served
    // too: a 29 KB request head and small requests after it, 42–48 KB in all, sent at once,
    // so that their last TLS record (16 KB of plaintext each) crosses 40 KB and is all
    // there is on the socket. Its end is left in the session, and when a worker hands the
    // connection back there is nothing on the socket to wake the loop: it must look in
    // the session itself.
    let head = format!("GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n", "p".repeat(29_000));
    let small = "GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let count = (42_000 - head.len()) / small.len() + 1;
    let requests = format!("{head}{}", small.repeat(count));
    assert!((40_960..49_152).contains(&requests.len()), "{} bytes", requests.len());
    let answers = connection.exchange(requests.as_bytes(), count + 1).expect("every answer");
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), count + 1, "{}", &answers[..answers.len().min(300)]);
}

#[test]
fn a_dashboard_session_over_the_servers_https_gets_a_secure_cookie_taken_only_from_https_pages() {
    let pki = FleetPki::generate("pinion cookie");
    let server = Server::start_https(&pki.server_cert(), &pki.server_key(), &pki.ca_pem(), &[]);
    let reply = server.request("POST", "/api/v1/session", Some(&json!({"token": server.admin_token()})), None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let cookie = reply.header("set-cookie").unwrap_or_else(|| panic!("no cookie: {:?}", reply.headers));
    assert!(cookie.contains("; Secure"), "{cookie}");
    // A state change with it comes from this server's https:// page; a page at http://
    // the same host and port (anyone's on the network path) is another origin.
    let session = cookie.split(';').next().expect("the cookie's name=value");
    let https_origin = format!("https://localhost:{}", server.address().port());
    let http_origin = format!("http://localhost:{}", server.address().port());
    let create_key = |origin: &str| {
        let headers = [("Cookie", session), ("Origin", origin)];
        server.request_with("POST", "/api/v1/provisioning-keys", Some(&json!({})), None, &headers)
    };
    let reply = create_key(&https_origin);
    assert_eq!(reply.status, 201, "from the server's own page: {}", reply.body);
    let reply = create_key(&http_origin);
    assert_eq!(reply.status, 403, "from http:// the same host: {}", reply.body);

    let plain = Server::start(&[]);
    let reply = plain.request("POST", "/api/v1/session", Some(&json!({"token": plain.admin_token()})), None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let cookie = reply.header("set-cookie").unwrap_or_else(|| panic!("no cookie: {:?}", reply.headers));
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
}

/// Everything `stream` receives until the server closes it (or 10 s pass).
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (received, true),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (received, true),
            Err(_) => return (received, false),
        }
    }
}

#[test]
fn plain_http_to_the_https_port_is_answered_400_and_closed_and_garbage_is_closed() {
    let pki = FleetPki::generate("pinion plain");
    let server = Server::start_https(&pki.server_cert(), &pki.server_key(), &pki.ca_pem(), &[]);
    let mut plain = TcpStream::connect(server.address()).unwrap();
    plain.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let (answer, closed) = read_until_closed(&mut plain);
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed, "closed after the answer: {answer}");
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(answer.contains("speaks https") && answer.contains("Connection: close"), "{answer}");

    let mut garbage = TcpStream::connect(server.address()).unwrap();
    garbage.write_all(b"\x01\x02\x03 not TLS at all\r\n\r\n").unwrap();
    let (answer, closed) = read_until_closed(&mut garbage);
    assert!(closed, "closed");
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/"), "no http answer: {answer:?}");

    let reply = server.request("GET", "/api/v1/health", None, None);
    assert_eq!(reply.status, 200, "the server goes on: {}", reply.body);
}

#[test]
fn a_changed_certificate_is_served_to_new_connections_without_a_restart() {
    let pki = FleetPki::generate("pinion renewal");
    let first = pki.issue("first", "pinion first", None);
    let live = LiveFiles::of(&first);
    let server = https_server(&live, &pki, &[]);
    let client = TlsClient::trusting(&pki.ca_pem());
    let mut before = client.connect(server.address()).expect("a TLS connection");
    assert_eq!(before.peer_leaf(), leaf_der(&first.cert), "the first certificate");

    let renewed = pki.issue("renewed", "pinion renewed", None);
    assert_ne!(leaf_der(&renewed.cert), leaf_der(&first.cert));
    live.replace_with(&renewed);
    let served = wait_for(RELOAD_WITHIN, || {
        let connection = client.connect(server.address()).ok()?;
        (connection.peer_leaf() == leaf_der(&renewed.cert)).then_some(connection)
    });
    let mut after =
        served.unwrap_or_else(|| panic!("the renewed certificate was never served; server log:\n{}", server.log()));
    assert!(server.log().contains("serving the changed certificate"), "{}", server.log());
    let answer = after.exchange(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n", 1).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The connection opened before keeps its session and its certificate.
    let answer = before.exchange(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n", 1).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(before.peer_leaf(), leaf_der(&first.cert));
    assert_eq!(server.request("GET", "/api/v1/health", None, None).status, 200, "ureq trusts the renewed one too");
}

/// Waits until the server's log holds `count` lines containing `text`.
fn wait_for_log(server: &Server, text: &str, count: usize) -> String {
    let found = wait_for(RELOAD_WITHIN, || {
        let log = server.full_log();
        (log.matches(text).count() >= count).then_some(log)
    });
    found.unwrap_or_else(|| panic!("no {count}× {text:?} in the server log:\n{}", server.log()))
}

#[test]
fn a_broken_renewal_keeps_the_old_certificate_served_and_says_why() {
    let pki = FleetPki::generate("pinion broken");
    let first = pki.issue("first", "pinion first", None);
    let stranger = pki.issue("stranger", "pinion stranger", None);
    let live = LiveFiles::of(&first);
    let server = https_server(&live, &pki, &[]);
    let client = TlsClient::trusting(&pki.ca_pem());
    let served = || client.connect(server.address()).expect("a TLS connection").peer_leaf();
    assert_eq!(served(), leaf_der(&first.cert));
    let failure = "the changed certificate files do not load";

    // A key that is another certificate's.
    std::fs::copy(&stranger.key, live.key()).unwrap();
    let log = wait_for_log(&server, failure, 1);
    assert!(log.contains("does not belong to the certificate"), "{log}");
    assert!(log.contains(&live.key().display().to_string()), "names the key file: {log}");
    assert_eq!(served(), leaf_der(&first.cert), "the old certificate is still served");

    // A certificate file that is not one (with the key of the first back).
    std::fs::copy(&first.key, live.key()).unwrap();
    std::fs::write(live.cert(), "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n").unwrap();
    let log = wait_for_log(&server, failure, 2);
    assert!(log.contains(&live.cert().display().to_string()), "names the certificate file: {log}");
    assert_eq!(served(), leaf_der(&first.cert), "the old certificate is still served");

    // A FIFO in its place: opening it waited for a writer for ever, and the thread that
    // takes renewals with it (the good pair below was never served).
    let fifo = live.dir.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("running mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    std::fs::rename(&fifo, live.cert()).expect("renaming the FIFO into place");
    let log = wait_for_log(&server, failure, 3);
    assert!(log.contains("--tls-cert: a FIFO, not a PEM file"), "{log}");

    // A good pair again is served.
    live.replace_with(&stranger);
    let renewed = wait_for(RELOAD_WITHIN, || (served() == leaf_der(&stranger.cert)).then_some(()));
    assert!(renewed.is_some(), "the repaired files were never served: {}", server.log());
    assert_eq!(server.full_log().matches(failure).count(), 3, "each failure said once: {}", server.log());
}

/// `serve` with `--tls-cert cert --tls-key key` (either left out when `None`) and
/// `env`: its exit code and stderr; asserts it stopped before opening the database.
fn refused_start(cert: Option<&Path>, key: Option<&Path>, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = TempDir::new("tls-refused");
    let db = dir.join("server.db").display().to_string();
    let mut args = vec!["serve".to_string(), "--listen".into(), "127.0.0.1:0".into(), "--db".into(), db];
    for (flag, path) in [("--tls-cert", cert), ("--tls-key", key)] {
        if let Some(path) = path {
            args.extend([flag.to_string(), path.display().to_string()]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [&[("PINION_ADMIN_TOKEN", "admin-token-0123456789abcdef")][..], env].concat();
    let out = run_cli_with_env(&args, &env, Duration::from_secs(60));
    assert!(!out.timed_out, "serve did not stop: {out}");
    assert!(!dir.join("server.db").exists(), "the database was opened before the refusal: {out}");
    (out.code, out.stderr)
}

#[test]
fn certificates_that_cannot_be_served_stop_the_start_with_a_message_naming_the_file() {
    let pki = FleetPki::generate("pinion refused");
    let expired = pki.issue("expired", "pinion expired", Some(("20200101000000Z", "20200201000000Z")));
    let early = pki.issue("early", "pinion early", Some(("20990101000000Z", "20991231000000Z")));
    let other = pki.issue("other", "pinion other", None);
    let files = TempDir::new("tls-files");
    let not_pem = files.write("not-pem.pem", "hello, I am no certificate\n");
    let encrypted = files
        .write("encrypted.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
    let missing = PathBuf::from("/nonexistent/pinion/fullchain.pem");
    let (cert, key) = (pki.server_cert(), pki.server_key());
    let cases: &[(&Path, &Path, &Path, &[&str])] = &[
        (&expired.cert, &expired.key, &expired.cert, &["expired at 2020-02-01T00:00:00Z", "renew it"]),
        (&early.cert, &early.key, &early.cert, &["not valid before 2099-01-01T00:00:00Z", "clock"]),
        (&cert, &other.key, &other.key, &["does not belong to the certificate", &cert.display().to_string()]),
        (&missing, &key, &missing, &["--tls-cert", "No such file or directory"]),
        (&cert, &missing, &missing, &["--tls-key", "No such file or directory"]),
        (&not_pem, &key, &not_pem, &["no PEM certificate"]),
        (&cert, &not_pem, &not_pem, &["no PEM private key"]),
        (&key, &cert, &key, &["no PEM certificate"]),
        (&cert, &encrypted, &encrypted, &["encrypted key"]),
    ];
    for (cert, key, named, phrases) in cases {
        let (code, stderr) = refused_start(Some(cert), Some(key), &[]);
        assert_eq!(code, Some(1), "{cert:?} {key:?}: {stderr}");
        assert!(stderr.contains(&format!("pinion-server: {}: ", named.display())), "names {named:?}: {stderr}");
        for phrase in *phrases {
            assert!(stderr.contains(phrase), "{cert:?} {key:?}: no {phrase:?} in {stderr}");
        }
    }
    let (code, stderr) = refused_start(Some(&cert), None, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert needs --tls-key"), "{stderr}");
    let (code, stderr) = refused_start(None, Some(&key), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-key needs --tls-cert"), "{stderr}");
    let cert_env = cert.display().to_string();
    let (code, stderr) = refused_start(None, None, &[("PINION_TLS_CERT", &cert_env)]);
    assert_eq!(code, Some(2), "the environment variable counts as the flag: {stderr}");
}

/// Whether the server has closed `stream`, without blocking.
fn closed_by_server(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    stream.set_nonblocking(true).unwrap();
    let closed = loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn handshakes_never_finished_hold_no_worker_and_end_at_the_head_timeout() {
    let pki = FleetPki::generate("pinion slowloris");
    let server = Server::start_https(
        &pki.server_cert(),
        &pki.server_key(),
        &pki.ca_pem(),
        &["--workers", "1", "--head-timeout", "3s", "--idle-timeout", "600s"],
    );
    let client = TlsClient::trusting(&pki.ca_pem());
    let hello = client.client_hello_prefix(40);
    let opened = Instant::now();
    let mut slow = Vec::new();
    for i in 0..60 {
        let mut stream = TcpStream::connect(server.address()).expect("connecting");
        match i % 3 {
            // Connects, says nothing.
            0 => {}
            // Begins a ClientHello and stops.
            1 => stream.write_all(&hello).expect("a partial ClientHello"),
            // Finishes the handshake and sends no request.
            _ => stream = client.handshake(stream).expect("a handshake").tcp,
        }
        slow.push(stream);
    }
    // One worker, sixty stalled clients: an https request is answered regardless.
    for _ in 0..3 {
        let reply = server.request("GET", "/api/v1/health", None, None);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Closed by the head timeout (3 s), not the idle one (600 s): waited for 60 s, a
    // bound a loaded machine keeps, rather than 3 s and a slack it may not.
    let closed = wait_for(Duration::from_secs(60), || slow.iter().all(closed_by_server).then_some(()));
    let open = slow.iter().filter(|s| !closed_by_server(s)).count();
    assert!(closed.is_some(), "{open} of 60 still open {:?} after they opened", opened.elapsed());
    assert_eq!(server.request("GET", "/api/v1/health", None, None).status, 200);
}

/// A body whose TLS record comes a byte at a time: each socket read returns within any
/// per-read timeout, so only a deadline over the whole body ends it (rustls's own
/// `Stream` reads until a record is whole, which would take this one 400 s).
#[test]
fn a_body_trickled_a_tls_byte_at_a_time_ends_at_the_body_timeout_and_frees_its_worker() {
    let pki = FleetPki::generate("pinion trickle");
    let server = Server::start_https(
        &pki.server_cert(),
        &pki.server_key(),
        &pki.ca_pem(),
        &["--workers", "2", "--body-timeout", "3s", "--head-timeout", "600s", "--idle-timeout", "600s"],
    );
    let client = TlsClient::trusting(&pki.ca_pem());
    let mut connection = client.connect(server.address()).expect("a TLS connection");
    let head = format!(
        "POST /api/v1/devices/{}/target-state HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        unique("trickled"),
        server.admin_token()
    );
    connection.session.writer().write_all(head.as_bytes()).unwrap();
    connection.session.write_tls(&mut connection.tcp).expect("sending the head");
    // Past the 8 KiB read with the head: a worker reads it.
    let mut record = Vec::new();
    connection.session.writer().write_all(&[b' '; 4000]).unwrap();
    connection.session.write_tls(&mut record).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut answered_meanwhile = false;
    while sent < record.len() && started.elapsed() < Duration::from_secs(60) {
        if connection.tcp.write_all(&record[sent..sent + 1]).is_err() || closed_by_server(&connection.tcp) {
            break;
        }
        sent += 1;
        if !answered_meanwhile && sent == 10 {
            let reply = server.request("GET", "/api/v1/health", None, None);
            assert_eq!(reply.status, 200, "the other worker answers meanwhile: {}", reply.body);
            answered_meanwhile = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered_meanwhile, "closed after {sent} bytes, before the request meanwhile");
    assert!(
        sent < record.len() && closed_by_server(&connection.tcp),
        "{sent} of the record's {} bytes sent in {:?} and the connection is open",
        record.len(),
        started.elapsed()
    );
    for _ in 0..3 {
        assert_eq!(server.request("GET", "/api/v1/health", None, None).status, 200, "both workers free");
    }
}

#[test]
fn idle_tls_connections_at_the_connection_limit_make_room_for_new_clients() {
    let pki = FleetPki::generate("pinion idle");
    let server = Server::start_https(
        &pki.server_cert(),
        &pki.server_key(),
        &pki.ca_pem(),
        &["--max-connections", "32", "--idle-timeout", "600s", "--head-timeout", "600s"],
    );
    let client = TlsClient::trusting(&pki.ca_pem());
    let mut idle = Vec::new();
    for _ in 0..100 {
        // At the limit the longest waiting are closed, some while their handshake is
        // under way: those fail here, as they should.
        if let Ok(mut connection) = client.connect(server.address()) {
            let answer = connection.exchange(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n", 1);
            if answer.is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
                idle.push(connection);
            }
        }
    }
    assert!(idle.len() >= 32, "each connection was served before the next came: {}", idle.len());
    for _ in 0..5 {
        let reply = server.request("GET", "/api/v1/devices", None, Some(server.admin_token()));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let still_open = idle.iter().filter(|c| !closed_by_server(&c.tcp)).count();
    assert!(still_open <= 32, "the server holds at most 32 connections; {still_open} idle ones are open");
}
