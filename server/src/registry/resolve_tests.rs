//! Whole resolutions against a scripted registry ([`FakeRegistry`]): HEAD/GET choices,
//! digest checks, error mapping, and the Bearer/Basic authentication rounds with the
//! token cache. The real Debian docker-registry is exercised by the tests in `tests/`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::fake_registry::{FakeRegistry, Reply, Seen};
use super::manifest::{self, sha256_of, DOCKER_MANIFEST, OCI_INDEX};
use super::{Credentials, Resolved, Resolver, ResolverConfig, Target};
use crate::Error;

const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
const OTHER_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn resolver(credentials: &[(&str, &str, &str)], timeout: Duration) -> Resolver {
    let mut creds = Credentials::default();
    for (host, user, password) in credentials {
        creds.insert(host, user, password);
    }
    Resolver::new(ResolverConfig { credentials: creds, request_timeout: timeout, ..ResolverConfig::default() })
}

fn anonymous() -> Resolver {
    resolver(&[], Duration::from_secs(10))
}

fn by_tag(registry: &FakeRegistry) -> Target {
    target(&registry.addr, "latest", None)
}

fn by_digest(registry: &FakeRegistry, digest: &str) -> Target {
    target(&registry.addr, digest, Some(digest))
}

fn target(domain: &str, reference: &str, wanted: Option<&str>) -> Target {
    Target {
        domain: domain.to_string(),
        path: "demo/app".to_string(),
        reference: reference.to_string(),
        wanted_digest: wanted.map(str::to_string),
        scheme: "http",
        display: format!("{domain}/demo/app:{reference}"),
    }
}

fn resolve(resolver: &Resolver, target: &Target) -> Result<Resolved, Error> {
    manifest::resolve(&resolver.inner, target)
}

fn index_resolved() -> Resolved {
    Resolved { digest: sha256_of(INDEX.as_bytes()), media_type: OCI_INDEX.to_string() }
}

/// A registry serving `INDEX` at demo/app: HEAD with the given headers, GET with the body.
fn serving(head_headers: &'static [(&'static str, &'static str)], get_content_type: &'static str) -> FakeRegistry {
    FakeRegistry::start(move |req| {
        Some(match req.method.as_str() {
            "HEAD" => head_headers.iter().fold(Reply::status(200), |r, (n, v)| r.header(n, v)),
            _ => Reply::status(200).header("Content-Type", get_content_type).body(INDEX),
        })
    })
}

#[test]
fn head_with_digest_and_length_is_enough() {
    let registry = FakeRegistry::start(|_| {
        Some(
            Reply::status(200)
                .header("Content-Type", "application/vnd.oci.image.index.v1+json; charset=utf-8")
                .header("docker-content-digest", &sha256_of(INDEX.as_bytes()))
                .header("Content-Length", &INDEX.len().to_string()),
        )
    });
    assert_eq!(resolve(&anonymous(), &by_tag(&registry)).unwrap(), index_resolved());
    let seen = registry.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let head = &seen[0];
    assert_eq!((head.method.as_str(), head.target.as_str()), ("HEAD", "/v2/demo/app/manifests/latest"));
    let accept = head.header("accept").unwrap();
    for media_type in [
        OCI_INDEX,
        DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ] {
        assert!(accept.contains(media_type), "{accept}");
    }
    assert!(head.header("user-agent").unwrap().starts_with("pinion/"));
    assert_eq!(head.header("authorization"), None);
}

#[test]
fn head_without_digest_falls_back_to_get_and_hashes_the_body() {
    let registry = serving(
        &[("Content-Type", OCI_INDEX), ("Content-Length", "88")],
        "application/vnd.oci.image.index.v1+json; charset=utf-8",
    );
    assert_eq!(resolve(&anonymous(), &by_tag(&registry)).unwrap(), index_resolved());
    assert_eq!(registry.count("GET", "/v2/demo/app/manifests/latest"), 1);
}

#[test]
fn head_without_length_falls_back_to_get() {
    let registry = FakeRegistry::start(|req| {
        let digest = sha256_of(INDEX.as_bytes());
        Some(match req.method.as_str() {
            "HEAD" => Reply::status(200).header("Content-Type", OCI_INDEX).header("Docker-Content-Digest", &digest),
            _ => Reply::status(200)
                .header("Content-Type", OCI_INDEX)
                .header("Docker-Content-Digest", &digest)
                .body(INDEX),
        })
    });
    assert_eq!(resolve(&anonymous(), &by_tag(&registry)).unwrap(), index_resolved());
    assert_eq!(registry.count("GET", "/v2/demo/app/manifests/latest"), 1);
}

#[test]
fn media_type_comes_from_the_body_when_the_header_does_not_say() {
    let registry = serving(&[], "application/json");
    assert_eq!(resolve(&anonymous(), &by_tag(&registry)).unwrap(), index_resolved());
}

#[test]
fn schema1_is_refused_on_get_and_head() {
    const PRETTYJWS: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    let registry = serving(&[], PRETTYJWS);
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(matches!(&err, Error::RegistryProtocol { reason, .. } if reason.contains("schema1")), "{err}");

    let registry = serving(
        &[("Content-Type", PRETTYJWS), ("Docker-Content-Digest", OTHER_DIGEST), ("Content-Length", "10")],
        PRETTYJWS,
    );
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(matches!(&err, Error::RegistryProtocol { reason, .. } if reason.contains("schema1")), "{err}");
    assert_eq!(registry.count("GET", "/v2/demo/app/manifests/latest"), 0);

    // text/plain whose body is schema1 (registry.access.redhat.com did this).
    let registry = FakeRegistry::start(|req| {
        Some(match req.method.as_str() {
            "HEAD" => Reply::status(200),
            _ => Reply::status(200).header("Content-Type", "text/plain").body(r#"{"schemaVersion":1,"fsLayers":[]}"#),
        })
    });
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(matches!(&err, Error::RegistryProtocol { reason, .. } if reason.contains("schema1")), "{err}");
}

#[test]
fn a_digest_header_that_does_not_match_the_body_is_an_error() {
    let registry = FakeRegistry::start(|req| {
        Some(match req.method.as_str() {
            "HEAD" => Reply::status(200).header("Content-Type", OCI_INDEX),
            _ => Reply::status(200)
                .header("Content-Type", OCI_INDEX)
                .header("Docker-Content-Digest", OTHER_DIGEST)
                .body(INDEX),
        })
    });
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(
        matches!(&err, Error::RegistryProtocol { reason, .. } if reason.contains("digest header does not match content")),
        "{err}"
    );
}

#[test]
fn by_digest_the_head_confirms_it_and_answers_that_digest() {
    let digest = sha256_of(INDEX.as_bytes());
    let header = digest.clone();
    let registry = FakeRegistry::start(move |_| {
        Some(
            Reply::status(200)
                .header("Content-Type", OCI_INDEX)
                .header("Docker-Content-Digest", &header)
                .header("Content-Length", "88"),
        )
    });
    let resolved = resolve(&anonymous(), &by_digest(&registry, &digest)).unwrap();
    assert_eq!(resolved, index_resolved());
    assert_eq!(registry.seen()[0].target, format!("/v2/demo/app/manifests/{digest}"));

    // A registry naming another digest for a request by digest is not believed.
    let err = resolve(&anonymous(), &by_digest(&registry, OTHER_DIGEST)).unwrap_err();
    assert!(matches!(&err, Error::RegistryProtocol { .. }), "{err}");
}

#[test]
fn by_digest_the_body_must_hash_to_it() {
    let registry = serving(&[("Content-Type", OCI_INDEX)], OCI_INDEX);
    let err = resolve(&anonymous(), &by_digest(&registry, OTHER_DIGEST)).unwrap_err();
    assert!(matches!(&err, Error::RegistryProtocol { reason, .. } if reason.contains("requested digest")), "{err}");
    let good = sha256_of(INDEX.as_bytes());
    assert_eq!(resolve(&anonymous(), &by_digest(&registry, &good)).unwrap(), index_resolved());
}

#[test]
fn not_found_carries_the_registry_message() {
    let registry =
        FakeRegistry::start(|_| {
            Some(Reply::status(404).header("Content-Type", "application/json").body(
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"latest"}}]}"#,
            ))
        });
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(
        matches!(&err, Error::ManifestUnknown { reason, .. } if reason == "MANIFEST_UNKNOWN: manifest unknown"),
        "{err}"
    );
}

#[test]
fn rate_limited_with_retry_after_and_other_statuses() {
    let registry = FakeRegistry::start(|_| Some(Reply::status(429).header("Retry-After", "17")));
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(matches!(err, Error::RateLimited { retry_after: Some(17), .. }), "{err}");

    let registry = FakeRegistry::start(|_| Some(Reply::status(503)));
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(matches!(err, Error::RegistryStatus { status: 503, .. }), "{err}");
}

#[test]
fn an_oversized_manifest_is_refused() {
    let registry = FakeRegistry::start(|req| {
        Some(match req.method.as_str() {
            "HEAD" => Reply::status(200),
            _ => {
                Reply::status(200)
                    .header("Content-Type", OCI_INDEX)
                    .body(vec![b' '; manifest::MAX_MANIFEST_BYTES as usize + 1])
            }
        })
    });
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(matches!(&err, Error::RegistryProtocol { reason, .. } if reason.contains("larger")), "{err}");
}

#[test]
fn a_hanging_registry_times_out() {
    let registry = FakeRegistry::start(|_| None);
    let err = resolve(&resolver(&[], Duration::from_millis(300)), &by_tag(&registry)).unwrap_err();
    assert!(matches!(err, Error::RegistryTimeout { .. }), "{err}");
}

#[test]
fn a_closed_port_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = resolve(&anonymous(), &target(&format!("127.0.0.1:{port}"), "latest", None)).unwrap_err();
    assert!(matches!(err, Error::RegistryUnreachable { .. }), "{err}");
}

// --- authentication ---

const TOKEN: &str = "tok-1";

/// A token-protected registry with its token service on the same fake: `/token` hands out
/// `TOKEN` (to `user:pass` only, when `require_credentials`), manifests want it.
fn token_registry(require_credentials: bool, challenge_scope: Option<&'static str>) -> FakeRegistry {
    FakeRegistry::start(move |req: &Seen| {
        let host = req.header("host").unwrap_or_default().to_string();
        if req.target.starts_with("/token") {
            let ok = !require_credentials || req.header("authorization") == Some("Basic dXNlcjpwYXNz");
            return Some(if ok {
                Reply::status(200)
                    .header("Content-Type", "application/json")
                    .body(format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#))
            } else {
                Reply::status(401).body(r#"{"details":"incorrect username or password"}"#)
            });
        }
        if req.header("authorization") == Some(&format!("Bearer {TOKEN}")) {
            return Some(Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX));
        }
        let scope = challenge_scope.map(|s| format!(r#",scope="{s}""#)).unwrap_or_default();
        Some(Reply::status(401).header("WWW-Authenticate", r#"Basic realm="ignored-when-bearer-is-offered""#).header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="http://{host}/token?from=challenge",service="fake"{scope}"#),
        ))
    })
}

#[test]
fn bearer_challenge_gets_a_token_once_and_reuses_it() {
    let registry = token_registry(true, Some("repository:demo/app:pull"));
    let resolver = resolver(&[(registry.addr.as_str(), "user", "pass")], Duration::from_secs(10));
    assert_eq!(resolve(&resolver, &by_tag(&registry)).unwrap(), index_resolved());

    let tokens: Vec<Seen> = registry.seen().into_iter().filter(|s| s.target.starts_with("/token")).collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].target, "/token?from=challenge&service=fake&scope=repository%3Ademo%2Fapp%3Apull");
    assert_eq!(tokens[0].header("authorization"), Some("Basic dXNlcjpwYXNz"));

    // Second resolution, from another clone: the cached token goes along with the first try.
    let before = registry.seen().len();
    assert_eq!(resolve(&resolver.clone(), &by_tag(&registry)).unwrap(), index_resolved());
    let after: Vec<Seen> = registry.seen().into_iter().skip(before).collect();
    assert_eq!(after.iter().filter(|s| s.target.starts_with("/token")).count(), 0, "{after:?}");
    assert_eq!(after[0].header("authorization"), Some("Bearer tok-1"));
}

#[test]
fn bearer_challenge_without_scope_asks_for_pull_on_the_repository() {
    let registry = token_registry(false, None);
    assert_eq!(resolve(&anonymous(), &by_tag(&registry)).unwrap(), index_resolved());
    let token_request = registry.seen().into_iter().find(|s| s.target.starts_with("/token")).unwrap();
    assert_eq!(token_request.target, "/token?from=challenge&service=fake&scope=repository%3Ademo%2Fapp%3Apull");
    assert_eq!(token_request.header("authorization"), None);
}

#[test]
fn refused_and_missing_credentials_are_told_apart() {
    let registry = token_registry(true, Some("repository:demo/app:pull"));
    let wrong = resolver(&[(&registry.addr, "user", "wrong")], Duration::from_secs(10));
    let err = resolve(&wrong, &by_tag(&registry)).unwrap_err();
    let refused = format!("credentials for {} were refused", registry.addr);
    assert!(matches!(&err, Error::RegistryUnauthorized { reason, .. } if reason.contains(&refused)), "{err}");

    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    let missing = format!("no credentials configured for {}", registry.addr);
    assert!(matches!(&err, Error::RegistryUnauthorized { reason, .. } if reason.contains(&missing)), "{err}");
}

#[test]
fn an_anonymous_token_that_is_not_enough_is_unauthorized() {
    // The token service gives anyone a token; the registry accepts none of them.
    let registry = FakeRegistry::start(|req| {
        let host = req.header("host").unwrap_or_default().to_string();
        Some(if req.target.starts_with("/token") {
            Reply::status(200).body(r#"{"access_token":"useless"}"#)
        } else {
            Reply::status(401).header("WWW-Authenticate", &format!(r#"Bearer realm="http://{host}/token",service="fake",scope="repository:demo/app:pull",error="insufficient_scope""#))
        })
    });
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(
        matches!(&err, Error::RegistryUnauthorized { reason, .. } if reason.contains("no credentials configured")),
        "{err}"
    );
    // One fresh token is tried, not fetched again and again.
    assert_eq!(registry.count("GET", "/token"), 1);
}

#[test]
fn insufficient_scope_with_a_new_scope_gets_a_new_token() {
    let registry = FakeRegistry::start(|req| {
        let host = req.header("host").unwrap_or_default().to_string();
        if req.target.starts_with("/token") {
            let token = if req.target.contains("wider") { "wide" } else { "narrow" };
            return Some(Reply::status(200).body(format!(r#"{{"token":"{token}"}}"#)));
        }
        let challenge = |scope: &str| format!(r#"Bearer realm="http://{host}/token",service="fake",scope="{scope}""#);
        Some(match req.header("authorization") {
            Some("Bearer wide") => Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX),
            Some("Bearer narrow") => Reply::status(401).header(
                "WWW-Authenticate",
                &format!(
                    "{},error=\"insufficient_scope\"",
                    challenge("repository:demo/app:pull repository:wider:pull")
                ),
            ),
            _ => Reply::status(401).header("WWW-Authenticate", &challenge("repository:demo/app:pull")),
        })
    });
    assert_eq!(resolve(&anonymous(), &by_tag(&registry)).unwrap(), index_resolved());
    let tokens: Vec<String> =
        registry.seen().into_iter().filter(|s| s.target.starts_with("/token")).map(|s| s.target).collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens[1].ends_with("&scope=repository%3Ademo%2Fapp%3Apull&scope=repository%3Awider%3Apull"), "{tokens:?}");
}

#[test]
fn a_refused_cached_token_is_replaced() {
    // The registry takes only the token it issued last.
    let issued = Arc::new(AtomicUsize::new(0));
    let issued_by_server = Arc::clone(&issued);
    let registry = FakeRegistry::start(move |req| {
        let host = req.header("host").unwrap_or_default().to_string();
        let current = issued_by_server.load(Ordering::SeqCst);
        if req.target.starts_with("/token") {
            let next = issued_by_server.fetch_add(1, Ordering::SeqCst) + 1;
            return Some(Reply::status(200).body(format!(r#"{{"token":"t{next}"}}"#)));
        }
        Some(match req.header("authorization") {
            Some(a) if a == format!("Bearer t{current}") && req.method == "HEAD" => Reply::status(200)
                .header("Content-Type", OCI_INDEX)
                .header("Docker-Content-Digest", &sha256_of(INDEX.as_bytes()))
                .header("Content-Length", "88"),
            _ => Reply::status(401)
                .header("WWW-Authenticate", &format!(r#"Bearer realm="http://{host}/token",service="fake""#)),
        })
    });
    let resolver = anonymous();
    assert_eq!(resolve(&resolver, &by_tag(&registry)).unwrap(), index_resolved());
    assert_eq!(issued.load(Ordering::SeqCst), 1);
    // The registry stops taking t1 (as if it expired early) while it is still cached.
    issued.store(2, Ordering::SeqCst);
    let before = registry.seen().len();
    // t1 goes along, is refused, is forgotten; a fresh token (t3) is fetched and taken.
    assert_eq!(resolve(&resolver, &by_tag(&registry)).unwrap(), index_resolved());
    assert_eq!(issued.load(Ordering::SeqCst), 3);
    assert_eq!(registry.seen()[before].header("authorization"), Some("Bearer t1"));
    // And t3 is what the cache holds now.
    let before = registry.seen().len();
    assert_eq!(resolve(&resolver, &by_tag(&registry)).unwrap(), index_resolved());
    assert_eq!(registry.seen().len(), before + 1);
    assert_eq!(registry.seen()[before].header("authorization"), Some("Bearer t3"));
}

#[test]
fn basic_challenge_uses_configured_credentials() {
    let registry = FakeRegistry::start(|req| {
        Some(match req.header("authorization") {
            Some("Basic dXNlcjpwYXNz") => Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX),
            _ => Reply::status(401).header("WWW-Authenticate", r#"Basic realm="basic-realm""#),
        })
    });
    let good = resolver(&[(registry.addr.as_str(), "user", "pass")], Duration::from_secs(10));
    assert_eq!(resolve(&good, &by_tag(&registry)).unwrap(), index_resolved());
    // Next time the credentials go along with the first request.
    let before = registry.seen().len();
    assert_eq!(resolve(&good, &by_tag(&registry)).unwrap(), index_resolved());
    assert_eq!(registry.seen()[before].header("authorization"), Some("Basic dXNlcjpwYXNz"));

    let wrong = resolver(&[(&registry.addr, "user", "nope")], Duration::from_secs(10));
    let err = resolve(&wrong, &by_tag(&registry)).unwrap_err();
    assert!(matches!(&err, Error::RegistryUnauthorized { reason, .. } if reason.contains("were refused")), "{err}");

    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(
        matches!(&err, Error::RegistryUnauthorized { reason, .. } if reason.contains("no credentials configured")),
        "{err}"
    );
}

#[test]
fn forbidden_is_unauthorized() {
    let registry = FakeRegistry::start(|_| Some(Reply::status(403)));
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(matches!(err, Error::RegistryUnauthorized { .. }), "{err}");
}

#[test]
fn credentials_are_not_sent_to_a_plain_http_realm_on_another_host() {
    let registry = FakeRegistry::start(|_| {
        Some(
            Reply::status(401)
                .header("WWW-Authenticate", r#"Bearer realm="http://auth.example.invalid/token",service="x""#),
        )
    });
    let with_credentials = resolver(&[(registry.addr.as_str(), "user", "pass")], Duration::from_secs(10));
    let err = resolve(&with_credentials, &by_tag(&registry)).unwrap_err();
    assert!(matches!(&err, Error::RegistryUnauthorized { reason, .. } if reason.contains("refusing to send")), "{err}");
}

#[test]
fn a_challenge_without_a_usable_scheme_or_realm_is_reported() {
    let registry =
        FakeRegistry::start(|_| Some(Reply::status(401).header("WWW-Authenticate", r#"Bearer service="x""#)));
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(matches!(&err, Error::RegistryProtocol { reason, .. } if reason.contains("realm")), "{err}");

    let registry = FakeRegistry::start(|_| Some(Reply::status(401)));
    let err = resolve(&anonymous(), &by_tag(&registry)).unwrap_err();
    assert!(matches!(err, Error::RegistryUnauthorized { .. }), "{err}");
}

// --- many references under one deadline ---

#[test]
fn resolve_all_answers_distinct_references_and_gives_up_on_late_ones_at_the_deadline() {
    use pinion_model::Reference;
    let registry = FakeRegistry::start(|req| {
        if req.target.ends_with(":slow") || req.target.ends_with("/slow") {
            return None; // never answers
        }
        Some(Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX))
    });
    let fast = Reference::parse(&format!("{}/demo/app:fast", registry.addr)).unwrap();
    let slow = Reference::parse(&format!("{}/demo/app:slow", registry.addr)).unwrap();
    let refs = [fast.clone(), slow.clone(), fast.clone()];

    let started = std::time::Instant::now();
    let answers = anonymous().resolve_all(&refs, Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_secs(5), "held past the deadline");

    assert_eq!(answers.len(), 2);
    assert_eq!(answers[&fast].as_ref().unwrap(), &index_resolved());
    assert!(matches!(&answers[&slow], Err(Error::ResolutionDeadline { seconds: 1, .. })), "{:?}", answers[&slow]);
    // The duplicate was asked once (HEAD, then GET for the missing digest header).
    assert_eq!(registry.count("HEAD", "/v2/demo/app/manifests/fast"), 1);
}

#[test]
fn resolve_by_digest_through_the_public_api() {
    use pinion_model::Reference;
    let registry = serving(&[("Content-Type", OCI_INDEX)], OCI_INDEX);
    let digest = sha256_of(INDEX.as_bytes());
    let reference = Reference::parse(&format!("{}/demo/app:v1@{digest}", registry.addr)).unwrap();
    assert_eq!(anonymous().resolve(&reference).unwrap(), index_resolved());
    assert_eq!(registry.count("HEAD", &format!("/v2/demo/app/manifests/{digest}")), 1);
}

#[test]
fn resolver_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Resolver>();
}

/// Stand-in for the credentials an operator stores through the API.
#[derive(Debug, Default)]
struct Stored(std::sync::Mutex<Option<(String, String)>>);

impl super::CredentialSource for Stored {
    fn credentials_for(&self, _host: &str) -> Option<(String, String)> {
        self.0.lock().unwrap().clone()
    }
}

#[test]
fn stored_credentials_win_over_config_json_and_apply_at_once() {
    let registry = FakeRegistry::start(|req| {
        Some(match req.header("authorization") {
            Some("Basic dXNlcjpwYXNz") => Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX),
            _ => Reply::status(401).header("WWW-Authenticate", r#"Basic realm="basic-realm""#),
        })
    });
    let stored = Arc::new(Stored::default());
    let mut config_json = Credentials::default();
    config_json.insert(&registry.addr, "user", "stale");
    let resolver = Resolver::new(ResolverConfig {
        credentials: config_json,
        stored_credentials: Some(Arc::clone(&stored) as Arc<dyn super::CredentialSource>),
        ..ResolverConfig::default()
    });
    let err = resolve(&resolver, &by_tag(&registry)).unwrap_err();
    assert!(matches!(&err, Error::RegistryUnauthorized { reason, .. } if reason.contains("were refused")), "{err}");
    *stored.0.lock().unwrap() = Some(("user".into(), "pass".into()));
    assert_eq!(resolve(&resolver, &by_tag(&registry)).unwrap(), index_resolved());
}
