//! A deliberately small registry HTTP client for the harness itself (pushing images,
//! reading manifests back in self-tests). It follows one `401` challenge per request —
//! Basic, or Bearer with a token from the realm — and keeps the last Authorization it
//! used. It is independent of the resolver under test, so a resolver bug cannot hide
//! behind a matching harness bug.

use crate::registry::Registry;
use crate::util::{base64_std, percent_encode};
use std::sync::Mutex;
use std::time::Duration;

/// The four manifest media types, as a resolver must ask for them (registry-protocol §2).
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.manifest.v1+json";

/// One HTTP answer, fully read.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client for one registry host, with optional credentials.
pub struct RegistryClient {
    base: String,
    credentials: Option<(String, String)>,
    agent: ureq::Agent,
    authorization: Mutex<Option<String>>,
}

impl RegistryClient {
    /// A client for `http://<host>`.
    pub fn new(host: &str, credentials: Option<(&str, &str)>) -> RegistryClient {
        RegistryClient {
            base: format!("http://{host}"),
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .new_agent(),
            authorization: Mutex::new(None),
        }
    }

    /// A client for `registry` with the credentials it accepts.
    pub fn for_registry(registry: &Registry) -> RegistryClient {
        RegistryClient::new(&registry.host(), registry.auth().credentials())
    }

    /// Sends a request to `path_or_url` (a path on this registry, or an absolute URL as
    /// found in a `Location` header), answering one `401` challenge if there is one.
    pub fn request(&self, method: &str, path_or_url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpReply {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let current = self.authorization.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let reply = self.send(method, &url, headers, body, current.as_deref());
        if reply.status != 401 {
            return reply;
        }
        let Some(challenge) = reply.header("WWW-Authenticate").map(str::to_string) else {
            return reply;
        };
        let Some(authorization) = self.answer_challenge(&challenge) else {
            return reply;
        };
        *self.authorization.lock().unwrap_or_else(|p| p.into_inner()) = Some(authorization.clone());
        self.send(method, &url, headers, body, Some(&authorization))
    }

    /// `GET /v2/<repo>/manifests/<reference>` with `Accept: accept`.
    pub fn get_manifest(&self, repo: &str, reference: &str, accept: &str) -> HttpReply {
        self.request("GET", &format!("/v2/{repo}/manifests/{reference}"), &[("Accept", accept)], None)
    }

    /// `HEAD /v2/<repo>/manifests/<reference>` with `Accept: accept`.
    pub fn head_manifest(&self, repo: &str, reference: &str, accept: &str) -> HttpReply {
        self.request("HEAD", &format!("/v2/{repo}/manifests/{reference}"), &[("Accept", accept)], None)
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        authorization: Option<&str>,
    ) -> HttpReply {
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if let Some(a) = authorization {
            builder = builder.header("Authorization", a);
        }
        let result = match body {
            Some(bytes) => self.agent.run(builder.body(bytes.to_vec()).expect("valid request")),
            None if method == "POST" || method == "PUT" || method == "PATCH" => {
                self.agent.run(builder.body(Vec::new()).expect("valid request"))
            }
            None => self.agent.run(builder.body(()).expect("valid request")),
        };
        let mut response = result.unwrap_or_else(|e| panic!("harness client: {method} {url} failed: {e}"));
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(256 * 1024 * 1024)
                .read_to_vec()
                .unwrap_or_else(|e| panic!("harness client: reading {method} {url}: {e}"))
        };
        HttpReply { status, headers, body }
    }

    /// The Authorization value that answers `challenge`, or None when we have nothing
    /// to offer (no credentials for Basic, a token request that failed).
    fn answer_challenge(&self, challenge: &str) -> Option<String> {
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let (u, p) = self.credentials.as_ref()?;
            return Some(format!("Basic {}", base64_std(format!("{u}:{p}").as_bytes())));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let param = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let realm = param("realm")?;
        let mut url = format!("{realm}?service={}", percent_encode(&param("service").unwrap_or_default()));
        for scope in param("scope").unwrap_or_default().split(' ').filter(|s| !s.is_empty()) {
            url.push_str("&scope=");
            url.push_str(&percent_encode(scope));
        }
        let mut builder = ureq::http::Request::builder().method("GET").uri(&url);
        if let Some((u, p)) = &self.credentials {
            builder = builder.header("Authorization", format!("Basic {}", base64_std(format!("{u}:{p}").as_bytes())));
        }
        let mut response = self.agent.run(builder.body(()).expect("valid request")).ok()?;
        if response.status().as_u16() != 200 {
            return None;
        }
        let body: serde_json::Value = serde_json::from_slice(&response.body_mut().read_to_vec().ok()?).ok()?;
        let token = body.get("token").or_else(|| body.get("access_token"))?.as_str()?;
        Some(format!("Bearer {token}"))
    }
}

/// `Bearer realm="x",service="y",scope="a b"` → ("Bearer", [(realm, x), ...]). Quoted
/// values may contain commas and spaces.
pub fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.push((key.trim().to_string(), value));
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_with_commas_inside_quotes() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params[0], ("realm".into(), "http://127.0.0.1:1/token".into()));
        assert_eq!(params[2], ("scope".into(), "repository:a/b:pull,push repository:c:pull".into()));
        assert_eq!(params[3], ("error".into(), "insufficient_scope".into()));
        assert_eq!(parse_challenge(r#"Basic realm="basic-realm""#).1, vec![("realm".into(), "basic-realm".into())]);
    }
}
