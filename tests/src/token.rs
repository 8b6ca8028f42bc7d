//! A token server for docker-registry's `auth.token` mode, so resolver tests face the
//! same Bearer dance as with Docker Hub, GHCR or GitLab: `GET <realm>?service=&scope=`
//! with optional Basic credentials, answered with an RS256 JWT that the real registry
//! verifies. The key and a self-signed certificate come from the `openssl` CLI; the
//! certificate travels in the JWS `x5c` header and is also the registry's
//! `rootcertbundle`. `openssl dgst -sha256 -sign` gives the raw PKCS#1 v1.5 signature,
//! which is exactly the JWS RS256 signature. Requests are counted so tests can assert
//! that a client caches its tokens.

use crate::util::{base64_std_decode, base64_url, query_params, random_hex, require_tool, TempDir};
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// The registry's `auth.token.service`; must equal the JWT `aud`.
pub const TOKEN_SERVICE: &str = "pinion-test-registry";
/// The registry's `auth.token.issuer`; must equal the JWT `iss`.
pub const TOKEN_ISSUER: &str = "pinion-test-token-issuer";
/// Lifetime of issued tokens (`expires_in`).
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// One request the token server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The Basic user name, if credentials were sent.
    pub user: Option<String>,
    /// `service` query parameter.
    pub service: Option<String>,
    /// The `scope` query parameters, in order.
    pub scopes: Vec<String>,
    /// The HTTP status answered (200, or 401 for refused credentials).
    pub status: u16,
}

struct Shared {
    openssl: PathBuf,
    user: String,
    password: String,
    key_path: PathBuf,
    cert_der_b64: String,
    count: AtomicUsize,
    log: Mutex<Vec<TokenRequest>>,
}

/// A running token server on 127.0.0.1; stops on drop.
pub struct TokenServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    cert_path: PathBuf,
}

impl TokenServer {
    /// Generates a key and certificate in `dir` and starts serving tokens for
    /// `user`/`password`.
    pub fn start(dir: &TempDir, user: &str, password: &str) -> TokenServer {
        let openssl = require_tool("openssl", "openssl");
        let key_path = dir.join("token-key.pem");
        let cert_path = dir.join("token-cert.pem");
        let out = Command::new(&openssl)
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2"])
            .args(["-subj", "/CN=pinion-test-token-issuer"])
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .output()
            .expect("running openssl req");
        assert!(out.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
        let cert_der_b64 = pem_body(&cert_path);

        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding the token server"));
        let addr = server.server_addr().to_ip().expect("token server has an IP address");
        let shared = Arc::new(Shared {
            openssl,
            user: user.to_string(),
            password: password.to_string(),
            key_path,
            cert_der_b64,
            count: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        let thread = {
            let server = Arc::clone(&server);
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("token-server".into())
                .spawn(move || {
                    for request in server.incoming_requests() {
                        handle(&shared, request);
                    }
                })
                .expect("spawning the token server thread")
        };
        TokenServer { server, addr, shared, thread: Some(thread), cert_path }
    }

    /// `http://127.0.0.1:PORT/token`: the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate to use as the registry's `rootcertbundle`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// How many requests reached the token endpoint so far (granted or refused).
    pub fn requests(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Every request seen so far, in order.
    pub fn request_log(&self) -> Vec<TokenRequest> {
        self.shared.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The base64 text between the PEM armor lines: standard base64 of the DER bytes, which
/// is what `x5c` carries.
fn pem_body(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect()
}

fn handle(shared: &Shared, request: tiny_http::Request) {
    shared.count.fetch_add(1, Ordering::SeqCst);
    let url = request.url().to_string();
    let params = query_params(&url);
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone());
    let basic = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Basic ").map(str::to_string))
        .and_then(|b64| base64_std_decode(b64.trim()))
        .map(|raw| String::from_utf8_lossy(&raw).into_owned());
    let credentials = basic.as_deref().map(|s| match s.split_once(':') {
        Some((u, p)) => (u.to_string(), p.to_string()),
        None => (s.to_string(), String::new()),
    });

    let path = url.split('?').next().unwrap_or("");
    let (status, body) = if path != "/token" {
        (404, json!({"errors": [{"code": "NOT_FOUND", "message": "only /token is served"}]}))
    } else {
        match &credentials {
            Some((u, p)) if *u != shared.user || *p != shared.password => {
                (401, json!({"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]}))
            }
            _ => {
                let subject = credentials.as_ref().map(|(u, _)| u.as_str());
                let token = issue(shared, service.as_deref().unwrap_or(""), subject, &scopes);
                (
                    200,
                    json!({
                        "token": token,
                        "expires_in": TOKEN_LIFETIME_SECS,
                        "issued_at": rfc3339(now_secs()),
                    }),
                )
            }
        }
    };
    shared.log.lock().unwrap_or_else(|p| p.into_inner()).push(TokenRequest {
        user: credentials.map(|(u, _)| u),
        service,
        scopes,
        status,
    });
    let mut response = tiny_http::Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"));
    if status == 401 {
        response = response.with_header(header("WWW-Authenticate", "Basic realm=\"pinion-test-token\""));
    }
    let _ = request.respond(response);
}

/// A signed JWT granting `subject` the actions asked for in `scopes`; an anonymous
/// request (`subject` None) is granted nothing, so the registry answers 401
/// `insufficient_scope`.
fn issue(shared: &Shared, service: &str, subject: Option<&str>, scopes: &[String]) -> String {
    let access: Vec<serde_json::Value> = match subject {
        None => Vec::new(),
        Some(_) => scopes.iter().filter_map(|s| parse_scope(s)).collect(),
    };
    let now = now_secs();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [shared.cert_der_b64]});
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": subject.unwrap_or(""),
        "aud": service,
        "exp": now + TOKEN_LIFETIME_SECS,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": random_hex(16),
        "access": access,
    });
    let signing_input =
        format!("{}.{}", base64_url(header.to_string().as_bytes()), base64_url(claims.to_string().as_bytes()));
    let signature = openssl_sign(&shared.openssl, &shared.key_path, signing_input.as_bytes());
    format!("{signing_input}.{}", base64_url(&signature))
}

/// `repository:demo/app:pull,push` → `{"type","name","actions"}`. The name may contain
/// a `:` (a host with a port), so the actions follow the last `:`.
fn parse_scope(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(json!({"type": kind, "name": name, "actions": actions}))
}

fn openssl_sign(openssl: &Path, key: &Path, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(openssl)
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl dgst");
    child.stdin.take().expect("stdin").write_all(input).expect("writing to openssl");
    let out = child.wait_with_output().expect("waiting for openssl dgst");
    assert!(out.status.success(), "openssl dgst failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days, proleptic Gregorian).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, (secs / 60) % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn scope_with_host_port_name_splits_on_last_colon() {
        assert_eq!(
            parse_scope("repository:127.0.0.1:5000/x:pull,push").unwrap(),
            json!({"type": "repository", "name": "127.0.0.1:5000/x", "actions": ["pull", "push"]})
        );
        assert_eq!(parse_scope("nonsense"), None);
    }
}
