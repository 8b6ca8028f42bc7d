//! Hand-written fake registries (tiny_http, or a bare socket, on 127.0.0.1) for the
//! faults a real docker-registry cannot be made to produce: no `Docker-Content-Digest`
//! header, a registry that never answers, a 429 rate limit with `Retry-After`, a digest
//! header that does not match the body, 5xx answers, a redirect loop, a connection reset,
//! a 1 MiB header line, an endless body, a body dripping one byte a second, and a
//! registry that sends its clients elsewhere (a redirect, or a Bearer token realm, to a
//! URL the test chooses: the way a hostile registry reaches other services) or one whose
//! `404` error message is text the test chooses (control characters included).
//! Everything else is tested against the real registry (`Registry`). Each fake logs the
//! requests it saw.

use crate::util::sha256_digest;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The `Retry-After` the rate-limited fake sends.
pub const RETRY_AFTER_SECS: u64 = 42;

/// The size of the header line `giant_header` sends.
pub const GIANT_HEADER_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    NoDigestHeader,
    Hangs,
    RateLimited,
    LyingDigest,
    Schema1,
    Status(u16),
    RedirectLoop,
    RedirectTo(String),
    BearerRealm(String),
    ManifestUnknown(String),
    // Served from a bare socket (`serve_raw`):
    ConnectionReset,
    GiantHeader,
    EndlessBody,
    SlowDrip,
}

impl Fault {
    fn is_raw(&self) -> bool {
        matches!(self, Fault::ConnectionReset | Fault::GiantHeader | Fault::EndlessBody | Fault::SlowDrip)
    }
}

/// How a fake listens: tiny_http, or a bare socket for what tiny_http will not send.
enum Backend {
    Tiny(Arc<tiny_http::Server>),
    Raw(Arc<AtomicBool>),
}

/// A fake registry; stops on drop (requests held by `hangs` are then dropped, which
/// closes their connections; dripping and endless answers stop within a second).
pub struct FakeRegistry {
    backend: Backend,
    addr: SocketAddr,
    manifest: Arc<Vec<u8>>,
    claimed: String,
    seen: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    /// Serves a Docker v2 manifest for any `/v2/<repo>/manifests/<ref>`; `HEAD` has a
    /// `Content-Length` but no `Docker-Content-Digest`, neither has `GET`. The right
    /// digest is the sha256 of the body (`manifest_digest`).
    pub fn no_digest_header() -> FakeRegistry {
        FakeRegistry::start(Fault::NoDigestHeader)
    }

    /// Accepts connections and reads requests but never answers any of them.
    pub fn hangs() -> FakeRegistry {
        FakeRegistry::start(Fault::Hangs)
    }

    /// `/v2/` is fine; every manifest request gets `429 Too Many Requests` with
    /// `Retry-After: 42` and a `TOOMANYREQUESTS` error body.
    pub fn rate_limited() -> FakeRegistry {
        FakeRegistry::start(Fault::RateLimited)
    }

    /// `HEAD` claims `Docker-Content-Digest: X` without a `Content-Length` (so a careful
    /// resolver GETs); `GET` claims X again with a body whose sha256 is not X.
    pub fn lying_digest() -> FakeRegistry {
        FakeRegistry::start(Fault::LyingDigest)
    }

    /// Answers every manifest request (whatever the `Accept`) with a signed schema1
    /// manifest (`…manifest.v1+prettyjws`) and no `Docker-Content-Digest`, as an old or
    /// misconfigured registry does. The sha256 of such a body is never its digest (the
    /// signature changes per request), so a resolver must refuse it.
    pub fn schema1_only() -> FakeRegistry {
        FakeRegistry::start(Fault::Schema1)
    }

    /// Answers every manifest request with `status` (500, 502, 503…) and a distribution
    /// error body.
    pub fn status(status: u16) -> FakeRegistry {
        FakeRegistry::start(Fault::Status(status))
    }

    /// Redirects every manifest request (`307`) to the same manifest with another query,
    /// for ever.
    pub fn redirect_loop() -> FakeRegistry {
        FakeRegistry::start(Fault::RedirectLoop)
    }

    /// A fake registry on the move: answers every manifest request with `307` and
    /// `Location: url`, as a registry (or a proxy in front of one) that moved its
    /// manifests elsewhere, or one that wants its clients to fetch `url` for it.
    pub fn redirect_to(url: &str) -> FakeRegistry {
        FakeRegistry::start(Fault::RedirectTo(url.to_string()))
    }

    /// A fake token-protected registry: a manifest request without `Authorization` gets
    /// `401` with `WWW-Authenticate: Bearer realm="<realm>",service="fake-registry"`, one
    /// with any `Authorization` gets the manifest. The realm is whatever the test says,
    /// as a hostile registry would choose it.
    pub fn bearer_realm(realm: &str) -> FakeRegistry {
        FakeRegistry::start(Fault::BearerRealm(realm.to_string()))
    }

    /// A fake registry with words of its own: every manifest request gets `404` with a
    /// distribution error body `{"errors":[{"code":"MANIFEST_UNKNOWN","message":
    /// <message>}]}`, the message being whatever the test says (control characters and
    /// all, JSON-escaped in the body as any registry would send them).
    pub fn manifest_unknown(message: &str) -> FakeRegistry {
        FakeRegistry::start(Fault::ManifestUnknown(message.to_string()))
    }

    /// Accepts each connection, waits for the request to arrive, and closes the socket
    /// without reading it: the kernel answers with a TCP reset.
    pub fn connection_reset() -> FakeRegistry {
        FakeRegistry::start(Fault::ConnectionReset)
    }

    /// Answers `200` whose headers include one line of `GIANT_HEADER_BYTES` (1 MiB).
    pub fn giant_header() -> FakeRegistry {
        FakeRegistry::start(Fault::GiantHeader)
    }

    /// `HEAD` is a `200` without `Docker-Content-Digest` (so a resolver GETs); `GET` is a
    /// `200` without length whose body never ends.
    pub fn endless_body() -> FakeRegistry {
        FakeRegistry::start(Fault::EndlessBody)
    }

    /// `HEAD` is a `200` without `Docker-Content-Digest`; `GET` sends its headers at once
    /// and then the manifest one byte a second.
    pub fn slow_drip() -> FakeRegistry {
        FakeRegistry::start(Fault::SlowDrip)
    }

    fn start(fault: Fault) -> FakeRegistry {
        if fault.is_raw() {
            return FakeRegistry::start_raw(fault);
        }
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding a fake registry"));
        let addr = server.server_addr().to_ip().expect("fake registry has an IP address");
        let manifest = Arc::new(fake_manifest());
        let claimed = sha256_digest(b"not the manifest that is served");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (server, manifest, claimed, seen) =
                (Arc::clone(&server), Arc::clone(&manifest), claimed.clone(), Arc::clone(&seen));
            std::thread::Builder::new()
                .name(format!("fake-registry-{fault:?}"))
                .spawn(move || {
                    let mut held = Vec::new();
                    for request in server.incoming_requests() {
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push(format!(
                            "{} {}",
                            request.method(),
                            request.url()
                        ));
                        if fault == Fault::Hangs {
                            held.push(request);
                            continue;
                        }
                        respond(&fault, request, &manifest, &claimed);
                    }
                    drop(held);
                })
                .expect("spawning a fake registry thread")
        };
        FakeRegistry { backend: Backend::Tiny(server), addr, manifest, claimed, seen, thread: Some(thread) }
    }

    fn start_raw(fault: Fault) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a fake registry");
        let addr = listener.local_addr().expect("fake registry has an address");
        let manifest = Arc::new(fake_manifest());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (manifest, seen, stop) = (Arc::clone(&manifest), Arc::clone(&seen), Arc::clone(&stop));
            std::thread::Builder::new()
                .name(format!("fake-registry-{fault:?}"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        let (manifest, seen, stop) = (Arc::clone(&manifest), Arc::clone(&seen), Arc::clone(&stop));
                        let fault = fault.clone();
                        std::thread::spawn(move || serve_raw(fault, stream, &manifest, &seen, &stop));
                    }
                })
                .expect("spawning a fake registry thread")
        };
        let claimed = String::new();
        FakeRegistry { backend: Backend::Raw(stop), addr, manifest, claimed, seen, thread: Some(thread) }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The sha256 of the manifest body this fake serves.
    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    /// The manifest body this fake serves.
    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }

    /// The (wrong) digest `lying_digest` claims.
    pub fn claimed_digest(&self) -> &str {
        &self.claimed
    }

    /// `METHOD /path?query` of every request seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        match &self.backend {
            Backend::Tiny(server) => server.unblock(),
            Backend::Raw(stop) => {
                stop.store(true, Ordering::SeqCst);
                // Wakes the accept loop, which then sees `stop`.
                let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(fault: &Fault, request: tiny_http::Request, manifest: &[u8], claimed: &str) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let is_head = *request.method() == tiny_http::Method::Head;
    let api = header("Docker-Distribution-API-Version", "registry/2.0");
    if path == "/v2/" || path == "/v2" {
        let _ = request.respond(tiny_http::Response::from_string("{}").with_header(api).with_header(json_type()));
        return;
    }
    if !(path.starts_with("/v2/") && path.contains("/manifests/")) {
        let body = json!({"errors": [{"code": "NAME_UNKNOWN", "message": "fake registry serves manifests only"}]});
        let _ = request
            .respond(tiny_http::Response::from_string(body.to_string()).with_status_code(404).with_header(json_type()));
        return;
    }
    let manifest_type = header("Content-Type", crate::image::DOCKER_MANIFEST);
    let response = match fault {
        Fault::NoDigestHeader => tiny_http::Response::new(
            200.into(),
            vec![api, manifest_type],
            std::io::Cursor::new(manifest.to_vec()),
            Some(manifest.len()),
            None,
        ),
        Fault::LyingDigest => {
            // HEAD: no length (chunked framing, no body); GET: length and the body.
            let length = if is_head { None } else { Some(manifest.len()) };
            tiny_http::Response::new(
                200.into(),
                vec![api, manifest_type, header("Docker-Content-Digest", claimed)],
                std::io::Cursor::new(manifest.to_vec()),
                length,
                None,
            )
        }
        Fault::RateLimited => {
            let body =
                json!({"errors": [{"code": "TOOMANYREQUESTS", "message": "You have reached your pull rate limit."}]})
                    .to_string();
            let length = body.len();
            tiny_http::Response::new(
                429.into(),
                vec![api, json_type(), header("Retry-After", &RETRY_AFTER_SECS.to_string())],
                std::io::Cursor::new(body.into_bytes()),
                Some(length),
                None,
            )
        }
        Fault::Schema1 => {
            let body = schema1_manifest();
            let length = body.len();
            tiny_http::Response::new(
                200.into(),
                vec![api, header("Content-Type", SCHEMA1_SIGNED)],
                std::io::Cursor::new(body),
                Some(length),
                None,
            )
        }
        Fault::Status(status) => {
            let body = json!({"errors": [{"code": "UNKNOWN", "message": format!("fake registry answers {status}")}]})
                .to_string();
            let length = body.len();
            tiny_http::Response::new(
                (*status).into(),
                vec![api, json_type()],
                std::io::Cursor::new(body.into_bytes()),
                Some(length),
                None,
            )
        }
        Fault::RedirectLoop => {
            let hop = request.url().rsplit_once("hop=").and_then(|(_, n)| n.parse::<u64>().ok()).unwrap_or(0);
            tiny_http::Response::new(
                307.into(),
                vec![api, header("Location", &format!("{path}?hop={}", hop + 1))],
                std::io::Cursor::new(Vec::new()),
                Some(0),
                None,
            )
        }
        Fault::RedirectTo(url) => tiny_http::Response::new(
            307.into(),
            vec![api, header("Location", url)],
            std::io::Cursor::new(Vec::new()),
            Some(0),
            None,
        ),
        Fault::BearerRealm(_) if request.headers().iter().any(|h| h.field.equiv("Authorization")) => {
            tiny_http::Response::new(
                200.into(),
                vec![api, manifest_type],
                std::io::Cursor::new(manifest.to_vec()),
                Some(manifest.len()),
                None,
            )
        }
        Fault::BearerRealm(realm) => {
            let body = json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}).to_string();
            let length = body.len();
            let challenge = format!(r#"Bearer realm="{realm}",service="fake-registry""#);
            tiny_http::Response::new(
                401.into(),
                vec![api, json_type(), header("WWW-Authenticate", &challenge)],
                std::io::Cursor::new(body.into_bytes()),
                Some(length),
                None,
            )
        }
        Fault::ManifestUnknown(message) => {
            let body = json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": message}]}).to_string();
            let length = body.len();
            tiny_http::Response::new(
                404.into(),
                vec![api, json_type()],
                std::io::Cursor::new(body.into_bytes()),
                Some(length),
                None,
            )
        }
        Fault::Hangs | Fault::ConnectionReset | Fault::GiantHeader | Fault::EndlessBody | Fault::SlowDrip => {
            unreachable!("{fault:?} is not answered by tiny_http")
        }
    };
    let _ = request.respond(response);
}

/// One connection of a bare-socket fault. Every write stops at the first error (the
/// client gave up) or when the fake is dropped.
fn serve_raw(fault: Fault, mut stream: TcpStream, manifest: &[u8], seen: &Mutex<Vec<String>>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let record = |head: &[u8]| {
        let text = String::from_utf8_lossy(head);
        let line = text.lines().next().unwrap_or("");
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !method.is_empty() {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{method} {target}"));
        }
        method == "HEAD"
    };
    if fault == Fault::ConnectionReset {
        // Closing with unread data makes the kernel send RST instead of FIN.
        let mut peeked = [0u8; 1024];
        if let Ok(n) = stream.peek(&mut peeked) {
            record(&peeked[..n]);
        }
        return;
    }
    let Some(head) = read_head(&mut stream) else { return };
    let is_head = record(&head);
    let start = |extra: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nConnection: close\r\n{extra}\r\n",
            crate::image::DOCKER_MANIFEST
        )
    };
    let keep_going = || !stop.load(Ordering::SeqCst);
    match fault {
        Fault::GiantHeader => {
            let _ = stream.write_all(start("").trim_end_matches("\r\n").as_bytes());
            let _ = stream.write_all(b"\r\nX-Padding: ");
            let chunk = [b'a'; 16 * 1024];
            let mut sent = 0;
            while sent < GIANT_HEADER_BYTES && keep_going() {
                if stream.write_all(&chunk).is_err() {
                    return;
                }
                sent += chunk.len();
            }
            let _ = stream.write_all(format!("\r\nContent-Length: {}\r\n\r\n", manifest.len()).as_bytes());
            let _ = stream.write_all(manifest);
        }
        Fault::EndlessBody | Fault::SlowDrip if is_head => {
            let _ = stream.write_all(start(&format!("Content-Length: {}\r\n", manifest.len())).as_bytes());
        }
        Fault::EndlessBody => {
            // No length: the body ends when the connection does, which is never.
            if stream.write_all(start("").as_bytes()).is_err() {
                return;
            }
            let chunk = [b' '; 64 * 1024];
            while keep_going() && stream.write_all(&chunk).is_ok() {}
        }
        Fault::SlowDrip => {
            if stream.write_all(start(&format!("Content-Length: {}\r\n", manifest.len())).as_bytes()).is_err() {
                return;
            }
            for byte in manifest {
                if !keep_going() || stream.write_all(std::slice::from_ref(byte)).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        _ => unreachable!("{fault:?} is answered by tiny_http"),
    }
    let _ = stream.flush();
}

/// The request line and headers, up to the blank line (at most 64 KiB).
fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Some(head)
}

const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A schema1 signed manifest in the shape distribution produces (the signature is not
/// valid; nothing should get as far as checking it).
fn schema1_manifest() -> Vec<u8> {
    let manifest = json!({
        "schemaVersion": 1,
        "name": "demo/app",
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": sha256_digest(b"fake layer")}],
        "history": [{"v1Compatibility": "{\"id\":\"0\",\"architecture\":\"amd64\",\"os\":\"linux\"}"}],
        "signatures": [{
            "header": {"jwk": {"crv": "P-256", "kty": "EC", "x": "AA", "y": "AA"}, "alg": "ES256"},
            "signature": crate::util::random_hex(32),
            "protected": "eyJmb3JtYXRMZW5ndGgiOjEwLCJmb3JtYXRUYWlsIjoiQ24wIn0",
        }],
    });
    serde_json::to_vec_pretty(&manifest).expect("json")
}

/// A realistic Docker v2 manifest (pretty-printed like the registry stores pushes).
fn fake_manifest() -> Vec<u8> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": crate::image::DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1234,
            "digest": sha256_digest(b"fake config"),
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": 5678,
            "digest": sha256_digest(b"fake layer"),
        }],
    });
    serde_json::to_vec_pretty(&manifest).expect("json")
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn json_type() -> tiny_http::Header {
    header("Content-Type", "application/json")
}
