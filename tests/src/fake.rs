//! Hand-written fake registries (tiny_http on 127.0.0.1) for the faults a real
//! docker-registry cannot be made to produce: no `Docker-Content-Digest` header, a
//! registry that never answers, a 429 rate limit with `Retry-After`, and a digest
//! header that does not match the body. Everything else is tested against the real
//! registry (`Registry`). Each fake logs the requests it saw.

use crate::util::sha256_digest;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The `Retry-After` the rate-limited fake sends.
pub const RETRY_AFTER_SECS: u64 = 42;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    NoDigestHeader,
    Hangs,
    RateLimited,
    LyingDigest,
    Schema1,
}

/// A fake registry; stops on drop (requests held by `hangs` are then dropped, which
/// closes their connections).
pub struct FakeRegistry {
    server: Arc<tiny_http::Server>,
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

    fn start(fault: Fault) -> FakeRegistry {
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
                        respond(fault, request, &manifest, &claimed);
                    }
                    drop(held);
                })
                .expect("spawning a fake registry thread")
        };
        FakeRegistry { server, addr, manifest, claimed, seen, thread: Some(thread) }
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
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(fault: Fault, request: tiny_http::Request, manifest: &[u8], claimed: &str) {
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
        Fault::Hangs => unreachable!("hanging requests are held, not answered"),
    };
    let _ = request.respond(response);
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
