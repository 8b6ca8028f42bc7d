//! What the resolver promises about where it connects and what it sends, tested against
//! scripted registries ([`FakeRegistry`], on 127.0.0.1 and 127.0.0.2) with a name table
//! standing in for DNS: link-local and metadata hosts are refused before any lookup or
//! connection (as references, token realms and redirect targets, and when a name
//! resolves to one), `--allowed-registries` is applied before any request and to every
//! hop (a redirect or token realm off the list is never connected to), credentials
//! never go in clear text to a realm on another host, and `Authorization` never follows
//! a redirect to another host.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinion_model::Reference;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver as Dns};
use ureq::unversioned::transport::NextTimeout;

use super::fake_registry::{FakeRegistry, Reply};
use super::guard::tests::Table;
use super::manifest::{sha256_of, OCI_INDEX};
use super::{Credentials, RegistryAccess, Resolved, Resolver, ResolverConfig};
use crate::Error;

const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

fn index_resolved() -> Resolved {
    Resolved { digest: sha256_of(INDEX.as_bytes()), media_type: OCI_INDEX.to_string() }
}

/// Names from a table, literal addresses as the system resolves them; every name asked
/// is recorded.
#[derive(Debug, Default, Clone)]
struct RecordingDns {
    table: Arc<Table>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl RecordingDns {
    fn new(table: Vec<(&'static str, Vec<SocketAddr>)>) -> RecordingDns {
        RecordingDns { table: Arc::new(Table(table)), asked: Arc::default() }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Dns for RecordingDns {
    fn resolve(&self, uri: &Uri, config: &Config, timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default().to_string();
        self.asked.lock().unwrap().push(host.clone());
        if host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok() {
            DefaultResolver::default().resolve(uri, config, timeout)
        } else {
            self.table.resolve(uri, config, timeout)
        }
    }
}

struct Setup<'a> {
    allowed: &'a [&'a str],
    insecure: &'a [&'a str],
    credentials: &'a [(&'a str, &'a str, &'a str)],
}

const OPEN: Setup = Setup { allowed: &[], insecure: &[], credentials: &[] };

fn resolver(setup: Setup, dns: &RecordingDns) -> Resolver {
    let mut credentials = Credentials::default();
    for (host, user, password) in setup.credentials {
        credentials.insert(host, user, password);
    }
    let allowed: Vec<String> = setup.allowed.iter().map(|h| h.to_string()).collect();
    let config = ResolverConfig {
        credentials,
        insecure_registries: setup.insecure.iter().map(|h| h.to_string()).collect(),
        request_timeout: Duration::from_secs(10),
        access: RegistryAccess::new(&allowed, false).unwrap(),
        ..ResolverConfig::default()
    };
    Resolver::with_dns(config, dns.clone())
}

fn resolve(resolver: &Resolver, reference: &str) -> Result<Resolved, Error> {
    resolver.resolve(&Reference::parse(reference).unwrap())
}

/// The host a `RegistryNotAllowed` names, and its reason; panics on anything else.
fn not_allowed(result: Result<Resolved, Error>) -> (String, String) {
    match result {
        Err(Error::RegistryNotAllowed { registry, reason, .. }) => (registry, reason),
        other => panic!("expected RegistryNotAllowed, got {other:?}"),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// Serves `INDEX` for any manifest request.
fn serving_index() -> FakeRegistry {
    FakeRegistry::start(|_| Some(Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX)))
}

// --- link-local and metadata hosts ---

#[test]
fn metadata_and_link_local_references_are_refused_before_any_lookup_or_connection() {
    let dns = RecordingDns::default();
    let resolver = resolver(OPEN, &dns);
    for reference in [
        "169.254.169.254/latest/meta-data:latest",
        "169.254.169.254:80/demo/app:latest",
        "metadata.google.internal/computemetadata/v1:latest",
        "100.100.100.200/demo/app:latest",
        "[fd00:ec2::254]:80/demo/app:latest",
        "[fe80::1]:5000/demo/app:latest",
        "169.254.10.20:5000/demo/app:latest",
    ] {
        let (_, reason) = not_allowed(resolve(&resolver, reference));
        assert!(reason.contains("--allow-link-local-registries"), "{reference}: {reason}");
    }
    assert!(dns.asked().is_empty(), "looked up {:?}", dns.asked());
}

#[test]
fn a_redirect_to_a_metadata_address_is_refused_at_the_hop() {
    let registry = FakeRegistry::start(|_| {
        Some(Reply::status(307).header("Location", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"))
    });
    let dns = RecordingDns::default();
    let (host, reason) = not_allowed(resolve(&resolver(OPEN, &dns), &format!("{}/demo/app:latest", registry.addr)));
    assert_eq!(host, "169.254.169.254");
    assert!(reason.contains("metadata"), "{reason}");
    assert_eq!(dns.asked(), [registry.addr.split(':').next().unwrap()], "only the registry itself was looked up");
}

#[test]
fn names_that_resolve_to_metadata_or_link_local_addresses_are_refused_at_connect_time() {
    let registry = FakeRegistry::start(|req| {
        Some(if req.target.contains("/manifests/") && !req.target.contains("hop") {
            Reply::status(307).header("Location", "http://rebind.test/v2/demo/app/manifests/hop")
        } else {
            Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX)
        })
    });
    let port = registry.addr.rsplit_once(':').unwrap().1.to_string();
    let dns = RecordingDns::new(vec![
        ("registry.test", vec![addr(&format!("127.0.0.1:{port}"))]),
        ("rebind.test", vec![addr("169.254.169.254:80")]),
        ("link.test", vec![addr("[fe80::1]:5000")]),
    ]);
    let setup = Setup { insecure: &["registry.test", "rebind.test", "link.test"], ..OPEN };
    let resolver = resolver(setup, &dns);

    // A redirect hop whose name resolves to the metadata address.
    let (host, reason) = not_allowed(resolve(&resolver, &format!("registry.test:{port}/demo/app:latest")));
    assert_eq!(host, "rebind.test");
    assert!(reason.contains("rebind.test resolves to 169.254.169.254"), "{reason}");
    // A reference whose own name resolves to one.
    let (host, reason) = not_allowed(resolve(&resolver, "link.test:5000/demo/app:latest"));
    assert_eq!(host, "link.test:5000");
    assert!(reason.contains("link-local"), "{reason}");
    assert_eq!(registry.count("HEAD", "/v2/demo/app/manifests/hop"), 0);
}

#[test]
fn a_token_realm_on_a_metadata_host_is_never_asked() {
    let registry = FakeRegistry::start(|_| {
        Some(
            Reply::status(401)
                .header("WWW-Authenticate", r#"Bearer realm="http://metadata.google.internal/token",service="x""#),
        )
    });
    let dns = RecordingDns::default();
    let (host, reason) = not_allowed(resolve(&resolver(OPEN, &dns), &format!("{}/demo/app:latest", registry.addr)));
    assert_eq!(host, "metadata.google.internal");
    assert!(reason.contains("token realm"), "{reason}");
    assert!(!dns.asked().iter().any(|h| h.contains("metadata")), "{:?}", dns.asked());
}

// --- --allowed-registries ---

#[test]
fn a_registry_not_on_the_list_is_refused_before_any_request() {
    let registry = serving_index();
    let dns = RecordingDns::default();
    let reference = format!("{}/demo/app:latest", registry.addr);
    let restricted = resolver(Setup { allowed: &["ghcr.io", "registry.example:5000"], ..OPEN }, &dns);
    let (host, reason) = not_allowed(resolve(&restricted, &reference));
    assert_eq!(host, registry.addr);
    assert!(reason.contains("not in --allowed-registries") && reason.contains("ghcr.io"), "{reason}");
    assert!(registry.seen().is_empty(), "{:?}", registry.seen());
    assert!(dns.asked().is_empty(), "{:?}", dns.asked());

    let listed = resolver(Setup { allowed: &["ghcr.io", &registry.addr], ..OPEN }, &dns);
    assert_eq!(resolve(&listed, &reference).unwrap(), index_resolved());
    let any_port = resolver(Setup { allowed: &["127.0.0.1"], ..OPEN }, &dns);
    assert_eq!(resolve(&any_port, &reference).unwrap(), index_resolved());
}

#[test]
fn a_redirect_off_the_list_is_refused_at_the_hop_and_a_listed_one_is_followed() {
    // The "victim": another service on the registry's network, which must see nothing.
    let victim = serving_index();
    let target = format!("http://{}/internal/admin?action=delete", victim.addr);
    let registry = FakeRegistry::start(move |_| Some(Reply::status(307).header("Location", &target)));
    let reference = format!("{}/demo/app:latest", registry.addr);
    let dns = RecordingDns::default();

    let restricted = resolver(Setup { allowed: &[&registry.addr], ..OPEN }, &dns);
    let (host, reason) = not_allowed(resolve(&restricted, &reference));
    assert_eq!(host, victim.addr);
    assert!(reason.contains("not in --allowed-registries"), "{reason}");
    assert!(reason.contains(&format!("add {} to --allowed-registries", victim.addr)), "{reason}");
    assert!(victim.seen().is_empty(), "the victim was asked: {:?}", victim.seen());
    assert!(!registry.seen().is_empty(), "the listed registry was asked");

    // Listed too: followed (which is also why the refusal above is the list's doing).
    let both = resolver(Setup { allowed: &[&registry.addr, &victim.addr], ..OPEN }, &dns);
    assert_eq!(resolve(&both, &reference).unwrap(), index_resolved());
    assert!(!victim.seen().is_empty());
    // Without a list: followed, as before.
    let victim_seen = victim.seen().len();
    assert_eq!(resolve(&resolver(OPEN, &dns), &reference).unwrap(), index_resolved());
    assert!(victim.seen().len() > victim_seen);
}

#[test]
fn a_token_realm_off_the_list_is_never_asked() {
    let victim = FakeRegistry::start(|_| Some(Reply::status(200).body(r#"{"token":"t"}"#)));
    let realm = format!("http://{}/internal/admin?action=delete", victim.addr);
    let registry = FakeRegistry::start(move |req| {
        Some(match req.header("authorization") {
            Some("Bearer t") => Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX),
            _ => Reply::status(401).header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}",service="x""#)),
        })
    });
    let reference = format!("{}/demo/app:latest", registry.addr);
    let dns = RecordingDns::default();
    let restricted = resolver(Setup { allowed: &[&registry.addr], ..OPEN }, &dns);
    let (host, reason) = not_allowed(resolve(&restricted, &reference));
    assert_eq!(host, victim.addr);
    assert!(reason.starts_with("token realm") && reason.contains("not in --allowed-registries"), "{reason}");
    assert!(victim.seen().is_empty(), "the realm was asked: {:?}", victim.seen());

    let both = resolver(Setup { allowed: &[&registry.addr, &victim.addr], ..OPEN }, &dns);
    assert_eq!(resolve(&both, &reference).unwrap(), index_resolved());
    assert_eq!(victim.seen().len(), 1);
}

// --- credentials and Authorization ---

#[test]
fn credentials_never_go_in_clear_text_to_a_realm_on_another_host() {
    // registry.test (127.0.0.1) sends clients to a plain-http realm on auth.test (127.0.0.2).
    let realm = FakeRegistry::start_on("127.0.0.2", |_| Some(Reply::status(200).body(r#"{"token":"anon"}"#)));
    let realm_port = realm.addr.rsplit_once(':').unwrap().1.to_string();
    let registry = FakeRegistry::start(move |req| {
        Some(match req.header("authorization") {
            Some("Bearer anon") => Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX),
            _ => Reply::status(401).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://auth.test:{realm_port}/token",service="x""#),
            ),
        })
    });
    let port = registry.addr.rsplit_once(':').unwrap().1.to_string();
    let dns = RecordingDns::new(vec![
        ("registry.test", vec![addr(&format!("127.0.0.1:{port}"))]),
        ("auth.test", vec![addr(&realm.addr)]),
    ]);
    let domain = format!("registry.test:{port}");
    let reference = format!("{domain}/demo/app:latest");

    let with_credentials =
        resolver(Setup { insecure: &["registry.test"], credentials: &[(&domain, "user", "pass")], ..OPEN }, &dns);
    let err = resolve(&with_credentials, &reference).unwrap_err();
    assert!(matches!(&err, Error::RegistryUnauthorized { reason, .. } if reason.contains("refusing to send")), "{err}");
    assert!(realm.seen().is_empty(), "the realm was asked with the credentials: {:?}", realm.seen());

    // Anonymous: the realm on the other host is asked, without any Authorization.
    let anonymous = resolver(Setup { insecure: &["registry.test"], ..OPEN }, &dns);
    assert_eq!(resolve(&anonymous, &reference).unwrap(), index_resolved());
    let asked = realm.seen();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].header("authorization"), None);
}

#[test]
fn authorization_never_follows_a_redirect_to_another_host() {
    let elsewhere = FakeRegistry::start_on("127.0.0.2", |req| {
        Some(if req.target.starts_with("/token") {
            Reply::status(200).body(r#"{"token":"redirected-token"}"#)
        } else {
            Reply::status(200).header("Content-Type", OCI_INDEX).body(INDEX)
        })
    });
    let other = elsewhere.addr.clone();
    // Basic-protected; with the credentials it redirects manifests to the other host.
    let basic = FakeRegistry::start(move |req| {
        Some(match req.header("authorization") {
            Some("Basic dXNlcjpwYXNz") => {
                Reply::status(307).header("Location", &format!("http://{other}{}", req.target))
            }
            _ => Reply::status(401).header("WWW-Authenticate", r#"Basic realm="r""#),
        })
    });
    let dns = RecordingDns::default();
    let with_basic = resolver(Setup { credentials: &[(&basic.addr, "user", "pass")], ..OPEN }, &dns);
    assert_eq!(resolve(&with_basic, &format!("{}/demo/app:latest", basic.addr)).unwrap(), index_resolved());
    assert!(basic.seen().iter().any(|s| s.header("authorization").is_some()), "the registry got its credentials");
    let followed = elsewhere.seen();
    assert!(!followed.is_empty(), "the redirect was followed");
    for seen in &followed {
        assert_eq!(seen.header("authorization"), None, "{seen:?}");
    }

    // Bearer-protected, token from its own realm, which itself redirects to the other host.
    let other = elsewhere.addr.clone();
    let bearer = FakeRegistry::start(move |req| {
        let host = req.header("host").unwrap_or_default().to_string();
        Some(if req.target.starts_with("/token") || req.header("authorization") == Some("Bearer redirected-token") {
            // The token request, and the manifest request with the token: both elsewhere.
            Reply::status(307).header("Location", &format!("http://{other}{}", req.target))
        } else {
            Reply::status(401).header("WWW-Authenticate", &format!(r#"Bearer realm="http://{host}/token",service="x""#))
        })
    });
    let before = elsewhere.seen().len();
    let with_bearer = resolver(Setup { credentials: &[(&bearer.addr, "user", "pass")], ..OPEN }, &dns);
    assert_eq!(resolve(&with_bearer, &format!("{}/demo/app:latest", bearer.addr)).unwrap(), index_resolved());
    let token_request = bearer.seen().into_iter().find(|s| s.target.starts_with("/token")).unwrap();
    assert_eq!(token_request.header("authorization"), Some("Basic dXNlcjpwYXNz"), "the realm on the same host");
    let followed: Vec<_> = elsewhere.seen().into_iter().skip(before).collect();
    assert!(followed.iter().any(|s| s.target.starts_with("/token")), "{followed:?}");
    assert!(followed.iter().any(|s| s.target.contains("/manifests/")), "{followed:?}");
    for seen in &followed {
        assert_eq!(seen.header("authorization"), None, "{seen:?}");
    }
}
