//! Bearer tokens for registries that answer `401` with a `Bearer` challenge: asking the
//! challenge's realm for a token (`GET <realm>?service=…&scope=…`, Basic credentials if
//! configured) and caching tokens per (realm, service, scopes, user) until shortly before
//! they expire, shared by all requests and threads of a resolver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::allowed::RegistryAccess;
use super::base64;
use super::transport::{self, header};
use crate::Error;

/// Tokens shorter-lived than this are treated as living this long (docs §4.3: the spec
/// says tokens never live less; containers/image clamps the same way). Also the default.
const MIN_LIFETIME_SECS: u64 = 60;

/// Longer lifetimes are cut to this, so a token service's typo cannot pin a token forever
/// (and `Instant` arithmetic cannot overflow).
const MAX_LIFETIME_SECS: u64 = 24 * 60 * 60;

/// A cached token is dropped this long before it expires, so it is not sent stale.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// Token responses are small JSON documents (JWTs of a few KiB).
const MAX_TOKEN_RESPONSE_BYTES: u64 = 1024 * 1024;

/// What a token is for: who issues it, for which service and scopes, and on whose behalf.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    pub realm: String,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    /// The user whose credentials obtained it; `None` for an anonymous token.
    pub user: Option<String>,
}

/// Tokens by key, until shortly before expiry; one request per key at a time, so that
/// references resolved in parallel from one repository share one token.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<TokenKey, CachedToken>>,
    fetching: Mutex<HashMap<TokenKey, Arc<Mutex<()>>>>,
}

#[derive(Debug)]
struct CachedToken {
    token: String,
    usable_until: Instant,
}

impl TokenCache {
    /// A token for `key` that is not about to expire.
    pub fn get(&self, key: &TokenKey) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let cached = entries.get(key)?;
        (Instant::now() < cached.usable_until).then(|| cached.token.clone())
    }

    /// Stores a token obtained (requested) at `obtained_at`, valid for `lifetime` from then.
    pub fn put(&self, key: TokenKey, token: String, obtained_at: Instant, lifetime: Duration) {
        let usable_until = obtained_at + lifetime.saturating_sub(EXPIRY_MARGIN);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries.retain(|_, c| now < c.usable_until);
        entries.insert(key, CachedToken { token, usable_until });
    }

    /// The lock a thread holds while it asks the realm for `key`'s token.
    fn fetch_lock(&self, key: &TokenKey) -> Arc<Mutex<()>> {
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(fetching.entry(key.clone()).or_default())
    }

    /// Drops `token` for `key` (the registry refused it), unless another one replaced it.
    pub fn forget(&self, key: &TokenKey, token: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.get(key).is_some_and(|c| c.token == token) {
            entries.remove(key);
        }
    }
}

/// Who is asking, for error messages: the registry as in the reference, the reference.
pub(crate) struct Asker<'a> {
    pub domain: &'a str,
    pub scheme: &'a str,
    pub reference: &'a str,
}

/// Asks the realm for a fresh token and caches it. `credentials` go along as Basic
/// authentication; they are refused to a plain-http realm elsewhere (see
/// [`may_send_credentials`]). A realm `access` refuses (off `--allowed-registries`, or a
/// metadata or link-local host) is not asked at all.
pub(crate) fn fetch(
    agent: &ureq::Agent,
    cache: &TokenCache,
    key: &TokenKey,
    credentials: Option<(&str, &str)>,
    asker: &Asker,
    access: &RegistryAccess,
) -> Result<String, Error> {
    // Shown without its query in messages and logs.
    let realm = transport::without_query(&key.realm);
    let Some((realm_scheme, realm_authority)) = transport::scheme_and_authority(&key.realm) else {
        return Err(Error::RegistryProtocol {
            registry: asker.domain.to_string(),
            reference: asker.reference.to_string(),
            reason: format!("Bearer challenge with unusable realm {realm:?}"),
        });
    };
    if let Err(reason) = access.check_hop(realm_authority) {
        return Err(Error::RegistryNotAllowed {
            registry: realm_authority.to_string(),
            reference: asker.reference.to_string(),
            reason: format!("token realm {} of {}: {reason}", realm, asker.domain),
        });
    }
    if credentials.is_some() && !may_send_credentials(&realm_scheme, realm_authority, asker) {
        return Err(Error::RegistryUnauthorized {
            registry: asker.domain.to_string(),
            reference: asker.reference.to_string(),
            reason: format!(
                "refusing to send the credentials for {} to token realm {} over plain http on another host",
                asker.domain, realm
            ),
        });
    }

    // Threads that missed the cache together wait here for the first one's token.
    let lock = cache.fetch_lock(key);
    let _one_request_per_key = lock.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(token) = cache.get(key) {
        return Ok(token);
    }

    let url = token_url(&key.realm, key.service.as_deref(), &key.scopes);
    log::debug!(
        "token request to {} (service {:?}, scope {:?}) for {} ({})",
        realm,
        key.service.as_deref().unwrap_or_default(),
        key.scopes.join(" "),
        asker.reference,
        if credentials.is_some() { "with credentials" } else { "anonymous" }
    );
    let mut request = agent.get(&url).header("Accept", "application/json");
    if let Some((user, password)) = credentials {
        request = request.header("Authorization", basic_authorization(user, password));
    }
    let obtained_at = Instant::now();
    let failure = |e| transport::failure(e, realm_authority, asker.reference);
    let mut response = request.call().map_err(failure)?;
    let status = response.status().as_u16();
    match status {
        200 => {}
        401 | 403 => {
            let reason = match credentials {
                Some(_) => format!("credentials for {} were refused by token service {realm}", asker.domain),
                None => {
                    format!("no credentials configured for {}; token service {realm} requires them", asker.domain)
                }
            };
            return Err(Error::RegistryUnauthorized {
                registry: asker.domain.to_string(),
                reference: asker.reference.to_string(),
                reason,
            });
        }
        429 => {
            let retry_after = header(response.headers(), "retry-after")
                .and_then(|v| super::status::retry_after_seconds(v, std::time::SystemTime::now()));
            return Err(Error::RateLimited {
                registry: realm_authority.to_string(),
                reference: asker.reference.to_string(),
                retry_after,
            });
        }
        _ => {
            return Err(Error::RegistryStatus {
                registry: realm_authority.to_string(),
                reference: asker.reference.to_string(),
                status,
            })
        }
    }
    let protocol = |reason: String| Error::RegistryProtocol {
        registry: realm_authority.to_string(),
        reference: asker.reference.to_string(),
        reason,
    };
    let body = transport::read_body(&mut response, MAX_TOKEN_RESPONSE_BYTES)
        .map_err(failure)?
        .ok_or_else(|| protocol(format!("token response larger than {MAX_TOKEN_RESPONSE_BYTES} bytes")))?;
    let (token, lifetime) = parse_token_response(&body).map_err(|r| protocol(format!("token response: {r}")))?;
    cache.put(key.clone(), token.clone(), obtained_at, lifetime);
    Ok(token)
}

/// `Basic base64(user:password)`.
pub(crate) fn basic_authorization(user: &str, password: &str) -> String {
    format!("Basic {}", base64::encode(format!("{user}:{password}").as_bytes()))
}

/// `<realm>[?|&]service=<service>&scope=<s1>&scope=<s2>`: the realm's own query kept, one
/// `scope` per entry, `service` left out when the challenge had none.
pub(crate) fn token_url(realm: &str, service: Option<&str>, scopes: &[String]) -> String {
    let realm = realm.split('#').next().unwrap_or(realm);
    let mut url = realm.to_string();
    let mut separator = if realm.contains('?') {
        if realm.ends_with('?') || realm.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    let mut add = |name: &str, value: &str| {
        url.push_str(separator);
        url.push_str(name);
        url.push('=');
        url.push_str(&transport::query_encode(value));
        separator = "&";
    };
    if let Some(service) = service.filter(|s| !s.is_empty()) {
        add("service", service);
    }
    for scope in scopes {
        add("scope", scope);
    }
    url
}

/// Credentials go to an https realm, or to a plain-http realm only on loopback or on the
/// very host of a registry that is itself reached over plain http (an insecure registry
/// whose token service sits beside it). Never in clear text to another host.
pub(crate) fn may_send_credentials(realm_scheme: &str, realm_authority: &str, asker: &Asker) -> bool {
    if realm_scheme == "https" {
        return true;
    }
    let realm_host = transport::host_of(realm_authority);
    let registry_host = transport::host_of(transport::api_host(asker.domain));
    transport::is_loopback(realm_host) || (asker.scheme == "http" && realm_host.eq_ignore_ascii_case(registry_host))
}

/// The token (`token`, else `access_token`) and its lifetime (`expires_in`, default and
/// minimum 60 s, at most a day) from a token response. `issued_at` is not used: the
/// lifetime is counted from when the request was sent, which is never later than issuance
/// and immune to clock skew between us and the token service.
pub(crate) fn parse_token_response(body: &[u8]) -> Result<(String, Duration), String> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let text = |name: &str| doc.get(name).and_then(|v| v.as_str()).filter(|t| !t.is_empty());
    let token = text("token").or_else(|| text("access_token")).ok_or("neither `token` nor `access_token` is set")?;
    if token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err("the token contains characters not allowed in a header".to_string());
    }
    let expires_in = doc
        .get("expires_in")
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f > 0.0).map(|f| f as u64)))
        .unwrap_or(MIN_LIFETIME_SECS)
        .clamp(MIN_LIFETIME_SECS, MAX_LIFETIME_SECS);
    Ok((token.to_string(), Duration::from_secs(expires_in)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(realm: &str) -> TokenKey {
        TokenKey {
            realm: realm.into(),
            service: Some("svc".into()),
            scopes: vec!["repository:a:pull".into()],
            user: None,
        }
    }

    #[test]
    fn token_url_keeps_realm_query_and_repeats_scope() {
        let scopes = vec!["repository:foo/bar:pull,push".to_string(), "repository:foo/baz:pull".to_string()];
        assert_eq!(
            token_url("https://auth.docker.io/token", Some("registry.docker.io"), &scopes[..1]),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Afoo%2Fbar%3Apull%2Cpush"
        );
        assert_eq!(
            token_url("https://r.example/token?client=x", Some("svc"), &scopes),
            "https://r.example/token?client=x&service=svc&scope=repository%3Afoo%2Fbar%3Apull%2Cpush&scope=repository%3Afoo%2Fbaz%3Apull"
        );
        assert_eq!(
            token_url("https://ghcr.io/token", None, &scopes[1..]),
            "https://ghcr.io/token?scope=repository%3Afoo%2Fbaz%3Apull"
        );
        assert_eq!(token_url("https://quay.io/v2/auth", Some(""), &[]), "https://quay.io/v2/auth");
        assert_eq!(token_url("https://a/t?", Some("s"), &[]), "https://a/t?service=s");
    }

    #[test]
    fn token_response_fields_and_lifetime() {
        let hub = br#"{"token":"t1","access_token":"t1","expires_in":300,"issued_at":"2020-08-19T20:38:43Z"}"#;
        assert_eq!(parse_token_response(hub), Ok(("t1".into(), Duration::from_secs(300))));
        assert_eq!(parse_token_response(br#"{"token":"q"}"#), Ok(("q".into(), Duration::from_secs(60))));
        assert_eq!(
            parse_token_response(br#"{"access_token":"a","expires_in":5}"#),
            Ok(("a".into(), Duration::from_secs(60)))
        );
        assert_eq!(parse_token_response(br#"{"token":"","access_token":"a"}"#).map(|t| t.0), Ok("a".into()));
        assert_eq!(
            parse_token_response(br#"{"token":"t","expires_in":43200.5}"#).map(|t| t.1),
            Ok(Duration::from_secs(43200))
        );
        assert_eq!(
            parse_token_response(br#"{"token":"t","expires_in":18446744073709551615}"#).map(|t| t.1),
            Ok(Duration::from_secs(MAX_LIFETIME_SECS))
        );
        assert_eq!(
            parse_token_response(br#"{"token":"t","expires_in":"soon"}"#).map(|t| t.1),
            Ok(Duration::from_secs(60))
        );
        for bad in [&b"true"[..], b"{}", br#"{"token":3}"#, b"<html>", br#"{"token":"a\nb"}"#] {
            assert!(parse_token_response(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn cache_returns_until_expiry_margin_and_forgets_refused_tokens() {
        let cache = TokenCache::default();
        let k = key("https://r/token");
        cache.put(k.clone(), "tok".into(), Instant::now(), Duration::from_secs(60));
        assert_eq!(cache.get(&k).as_deref(), Some("tok"));
        let other_user = TokenKey { user: Some("u".into()), ..k.clone() };
        assert_eq!(cache.get(&other_user), None);
        cache.forget(&k, "not-this-one");
        assert_eq!(cache.get(&k).as_deref(), Some("tok"));
        cache.forget(&k, "tok");
        assert_eq!(cache.get(&k), None);
        // A lifetime inside the margin is already unusable.
        cache.put(k.clone(), "short".into(), Instant::now(), EXPIRY_MARGIN);
        assert_eq!(cache.get(&k), None);
    }

    #[test]
    fn credentials_never_go_in_clear_text_to_another_host() {
        let remote_http = Asker { domain: "registry.lan:5000", scheme: "http", reference: "r" };
        let remote_https = Asker { domain: "registry.lan", scheme: "https", reference: "r" };
        let local = Asker { domain: "127.0.0.1:5001", scheme: "http", reference: "r" };
        assert!(may_send_credentials("https", "auth.example.com", &remote_https));
        assert!(may_send_credentials("http", "registry.lan:5060", &remote_http));
        assert!(!may_send_credentials("http", "auth.example.com", &remote_http));
        assert!(!may_send_credentials("http", "registry.lan", &remote_https));
        assert!(may_send_credentials("http", "127.0.0.1:5060", &local));
        assert!(may_send_credentials("http", "localhost:5060", &remote_https));
        assert!(!may_send_credentials("http", "10.1.1.1:5060", &local));
    }
}
