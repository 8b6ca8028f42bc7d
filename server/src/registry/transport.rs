//! Where and how to reach a registry: the API host for a reference's domain (`docker.io`
//! is served at `registry-1.docker.io`), http or https (plain http only for loopback and
//! configured insecure registries, like dockerd), the one ureq agent every request goes
//! through (per-request timeout, no `Authorization` across redirects, capped header size,
//! every connection through `guard`), and how transport failures become errors.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ureq::http::{HeaderMap, Response};
use ureq::unversioned::resolver::Resolver;
use ureq::unversioned::transport::DefaultConnector;

use super::guard::Refused;
use crate::Error;

/// Sent on every request, so registry operators can tell who is asking.
pub(crate) const USER_AGENT: &str = concat!("pinion/", env!("CARGO_PKG_VERSION"));

/// Status line plus headers; registries send a few KiB at most.
const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;

/// Manifests are served directly; a few redirects cover proxies in front of a registry.
const MAX_REDIRECTS: u32 = 5;

/// The one HTTP client: every request times out after `request_timeout` (connect to last
/// body byte, redirects included); HTTP error statuses are answers, not errors;
/// `Authorization` is never carried across a redirect; every connection's addresses come
/// from `resolver` (the `guard`). Without `follow_redirects` a redirect is an answer
/// like any other status (and so an error naming it), its target never asked.
pub(crate) fn agent(request_timeout: Duration, resolver: impl Resolver, follow_redirects: bool) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(request_timeout))
        .http_status_as_error(false)
        .user_agent(USER_AGENT)
        .max_response_header_size(MAX_RESPONSE_HEADER_BYTES)
        .max_redirects(if follow_redirects { MAX_REDIRECTS } else { 0 })
        .redirect_auth_headers(ureq::config::RedirectAuthHeaders::Never)
        // Digests are over the manifest bytes; ask for them uncompressed.
        .accept_encoding("")
        .build();
    ureq::Agent::with_parts(config, DefaultConnector::default(), resolver)
}

/// The host serving the registry API for a reference's domain.
pub(crate) fn api_host(domain: &str) -> &str {
    if domain.eq_ignore_ascii_case("docker.io") {
        "registry-1.docker.io"
    } else {
        domain
    }
}

/// `http` for loopback registries and those listed as insecure, `https` otherwise.
pub(crate) fn scheme(domain: &str, insecure_registries: &[String]) -> &'static str {
    if is_loopback(host_of(domain)) || is_listed_insecure(domain, insecure_registries) {
        "http"
    } else {
        "https"
    }
}

/// `<scheme>://<api host>/v2/<path>/manifests/<tag or digest>`.
pub(crate) fn manifest_url(scheme: &str, domain: &str, path: &str, tag_or_digest: &str) -> String {
    format!("{scheme}://{}/v2/{path}/manifests/{tag_or_digest}", api_host(domain))
}

/// An entry `host:port` matches exactly; an entry `host` matches that host on any port.
/// A leading `http://`/`https://` in an entry is tolerated.
fn is_listed_insecure(domain: &str, insecure_registries: &[String]) -> bool {
    insecure_registries.iter().any(|entry| {
        let lower = entry.trim().to_ascii_lowercase();
        let entry = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
            .unwrap_or(&lower)
            .trim_end_matches('/');
        entry.eq_ignore_ascii_case(domain) || (port_of(entry).is_none() && entry.eq_ignore_ascii_case(host_of(domain)))
    })
}

/// `localhost`, `127.0.0.0/8` or `::1` (bracketed or not).
pub(crate) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || bare.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host of `host[:port]` / `[v6]:port`, brackets kept.
pub(crate) fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        // A second colon means an unbracketed IPv6 address, which has no port.
        Some((host, _)) if !host.contains(':') => host,
        _ => authority,
    }
}

fn port_of(authority: &str) -> Option<&str> {
    let host = host_of(authority);
    authority[host.len()..].strip_prefix(':')
}

/// Splits an absolute http(s) URL into (scheme lowercased, authority). `None` for
/// anything else.
pub(crate) fn scheme_and_authority(url: &str) -> Option<(String, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Drop any `user:password@`.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    (!authority.is_empty()).then_some((scheme, authority))
}

/// A URL without its query and fragment, for logs and messages: a query may carry a
/// secret (a token in a realm someone configured), and says nothing an operator needs.
pub(crate) fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub(crate) fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A header's value as text (name case-insensitive); `None` if absent or not text.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Every value of a repeatable header that is text.
pub(crate) fn header_all<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// Reads at most `limit` bytes of a body; `Ok(None)` if it is longer.
pub(crate) fn read_body(response: &mut Response<ureq::Body>, limit: u64) -> Result<Option<Vec<u8>>, ureq::Error> {
    match response.body_mut().with_config().limit(limit).read_to_vec() {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ureq::Error::BodyExceedsLimit(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A transport failure (no usable HTTP answer) as the resolver's error. `registry` names
/// the host that failed (a registry, or a token service), `reference` what was asked.
pub(crate) fn failure(err: ureq::Error, registry: &str, reference: &str) -> Error {
    let registry = registry.to_string();
    let reference = reference.to_string();
    match err {
        ureq::Error::Other(ref other) if other.is::<Refused>() => match other.downcast_ref::<Refused>() {
            Some(refused) => {
                Error::RegistryNotAllowed { registry: refused.host.clone(), reference, reason: refused.reason.clone() }
            }
            None => Error::RegistryUnreachable { registry, reason: err.to_string() },
        },
        ureq::Error::Timeout(_) => Error::RegistryTimeout { registry, reference },
        ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::TimedOut => {
            Error::RegistryTimeout { registry, reference }
        }
        ureq::Error::Protocol(_)
        | ureq::Error::LargeResponseHeader(..)
        | ureq::Error::TooManyRedirects
        | ureq::Error::RedirectFailed
        | ureq::Error::Decompress(..) => Error::RegistryProtocol { registry, reference, reason: err.to_string() },
        other => Error::RegistryUnreachable { registry, reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_is_served_at_registry_1() {
        assert_eq!(
            manifest_url("https", "docker.io", "library/nginx", "latest"),
            "https://registry-1.docker.io/v2/library/nginx/manifests/latest"
        );
        assert_eq!(
            manifest_url("http", "127.0.0.1:5000", "demo/app", "sha256:abc"),
            "http://127.0.0.1:5000/v2/demo/app/manifests/sha256:abc"
        );
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        for domain in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "[::1]"] {
            assert_eq!(scheme(domain, &[]), "http", "{domain}");
        }
        for domain in ["docker.io", "ghcr.io", "128.0.0.1:5000", "localhost.example.com", "10.0.0.1:5000", "[::2]:5000"]
        {
            assert_eq!(scheme(domain, &[]), "https", "{domain}");
        }
    }

    #[test]
    fn insecure_registries_match_host_or_host_and_port() {
        let list = vec!["10.0.0.5:5000".to_string(), "registry.lan".to_string(), "http://Other.lan:81/".to_string()];
        assert_eq!(scheme("10.0.0.5:5000", &list), "http");
        assert_eq!(scheme("10.0.0.5:5001", &list), "https");
        assert_eq!(scheme("10.0.0.5", &list), "https");
        assert_eq!(scheme("registry.lan", &list), "http");
        assert_eq!(scheme("registry.lan:8080", &list), "http");
        assert_eq!(scheme("other.lan:81", &list), "http");
        assert_eq!(scheme("registry.lan.evil", &list), "https");
    }

    #[test]
    fn hosts_and_authorities() {
        assert_eq!(host_of("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5000"), "[::1]");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("ghcr.io"), "ghcr.io");
        assert_eq!(port_of("ghcr.io"), None);
        assert_eq!(port_of("[::1]:5"), Some("5"));
        assert_eq!(
            scheme_and_authority("HTTPS://u:p@auth.docker.io/token?x=1"),
            Some(("https".to_string(), "auth.docker.io"))
        );
        assert_eq!(scheme_and_authority("http://127.0.0.1:5060"), Some(("http".to_string(), "127.0.0.1:5060")));
        assert_eq!(scheme_and_authority("ftp://x/"), None);
        assert_eq!(scheme_and_authority("https:///token"), None);
        assert_eq!(scheme_and_authority("token"), None);
    }

    #[test]
    fn urls_are_shown_without_their_query() {
        assert_eq!(without_query("https://auth.example/token?secret=1&scope=x"), "https://auth.example/token");
        assert_eq!(without_query("http://127.0.0.1:5000/v2/#frag"), "http://127.0.0.1:5000/v2/");
        assert_eq!(without_query("https://auth.docker.io/token"), "https://auth.docker.io/token");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_encode("repository:foo/bar:pull,push"), "repository%3Afoo%2Fbar%3Apull%2Cpush");
        assert_eq!(query_encode("registry.docker.io"), "registry.docker.io");
        assert_eq!(query_encode("a b&c=é"), "a%20b%26c%3D%C3%A9");
    }
}
