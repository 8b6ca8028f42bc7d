//! The name resolver every registry connection goes through (ureq's `Resolver`), so
//! that no hop escapes the operator's policy: a host off `--allowed-registries` (when
//! set) or a link-local or cloud metadata host is refused by name or literal address
//! before any lookup, and every link-local or metadata address a name resolves to is
//! dropped. Neither a redirect from a listed registry to another service, nor a token
//! realm elsewhere, nor a name that resolves (or re-resolves) to `169.254.169.254` gets
//! a connection. The policy is `allowed::RegistryAccess` (`check_hop`, `check_address`).

use std::fmt;
use std::sync::Arc;

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use super::allowed::RegistryAccess;

/// A refused connection: the host and why. Travels inside `ureq::Error::Other` and
/// becomes `Error::RegistryNotAllowed` in `transport::failure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub host: String,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection to {} refused: {}", self.host, self.reason)
    }
}

impl std::error::Error for Refused {}

/// `inner` (the system resolver, or a test's table) with `access` applied to its answers.
#[derive(Debug)]
pub(crate) struct Guarded<R = DefaultResolver> {
    pub inner: R,
    pub access: Arc<RegistryAccess>,
}

impl<R: Resolver> Resolver for Guarded<R> {
    fn resolve(&self, uri: &Uri, config: &Config, timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = match (uri.host(), uri.port_u16()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => return self.inner.resolve(uri, config, timeout),
        };
        let refuse = |reason: String| {
            log::warn!("refusing to connect to {authority}: {reason}");
            ureq::Error::Other(Box::new(Refused { host: authority.clone(), reason }))
        };
        // An HTTP proxy (`HTTPS_PROXY`, `ALL_PROXY`) is asked for by ureq, not sent to by a
        // registry: only the link-local and metadata refusal applies to it. (Through a
        // proxy ureq does not resolve the target, so hops are not seen here at all; see
        // SECURITY.md, "Not promised".)
        let is_proxy = config
            .proxy()
            .is_some_and(|p| uri.host() == Some(p.host()) && uri.port_u16().is_none_or(|port| port == p.port()));
        if is_proxy {
            self.access.check_host(&authority).map_err(refuse)?;
        } else {
            self.access.check_hop(&authority).map_err(refuse)?;
        }
        let resolved = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        let mut refusal = None;
        for addr in resolved.iter().copied() {
            match self.access.check_address(&authority, addr.ip()) {
                Ok(()) => kept.push(addr),
                Err(reason) => refusal = Some(reason),
            }
        }
        match refusal {
            Some(reason) if kept.is_empty() => Err(refuse(reason)),
            Some(reason) => {
                log::warn!("{authority}: skipping addresses: {reason}");
                Ok(kept)
            }
            None => Ok(kept),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// A resolver answering from a table (name → addresses), for names that must resolve
    /// to addresses no test may really connect to. Unknown names: host not found.
    #[derive(Debug, Default)]
    pub(crate) struct Table(pub Vec<(&'static str, Vec<SocketAddr>)>);

    impl Resolver for Table {
        fn resolve(&self, uri: &Uri, _: &Config, _: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
            let host = uri.host().unwrap_or_default();
            let addrs = self.0.iter().find(|(name, _)| *name == host).map(|(_, a)| a.clone()).unwrap_or_default();
            let mut out = self.empty();
            for addr in addrs {
                out.push(addr);
            }
            if out.is_empty() {
                Err(ureq::Error::HostNotFound)
            } else {
                Ok(out)
            }
        }
    }

    fn guarded(table: Table, access: RegistryAccess) -> Guarded<Table> {
        Guarded { inner: table, access: Arc::new(access) }
    }

    fn resolve(resolver: &impl Resolver, url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: Uri = url.parse().unwrap();
        resolver.resolve(&uri, &Config::default(), NextTimeout::default()).map(|a| a.iter().copied().collect())
    }

    fn refused(err: ureq::Error) -> Refused {
        match err {
            ureq::Error::Other(e) => e.downcast_ref::<Refused>().cloned().expect("a Refused"),
            other => panic!("expected a refusal, got {other}"),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn names_resolving_to_metadata_or_link_local_addresses_are_refused() {
        let table = Table(vec![
            ("rebind.test", vec![addr("169.254.169.254:80")]),
            ("mixed.test", vec![addr("[fe80::1]:80"), addr("127.0.0.1:80")]),
            ("fine.test", vec![addr("127.0.0.1:5000")]),
        ]);
        let resolver = guarded(table, RegistryAccess::default());
        let refusal = refused(resolve(&resolver, "http://rebind.test/v2/").unwrap_err());
        assert_eq!(refusal.host, "rebind.test");
        assert!(refusal.reason.contains("169.254.169.254"), "{refusal}");
        assert_eq!(resolve(&resolver, "http://mixed.test/").unwrap(), [addr("127.0.0.1:80")]);
        assert_eq!(resolve(&resolver, "http://fine.test:5000/").unwrap(), [addr("127.0.0.1:5000")]);
    }

    #[test]
    fn metadata_hosts_are_refused_before_any_lookup() {
        // The table knows none of these names: a lookup would fail differently.
        let resolver = guarded(Table::default(), RegistryAccess::default());
        for url in [
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://169.254.169.254/latest/",
            "http://[fd00:ec2::254]/",
        ] {
            let refusal = refused(resolve(&resolver, url).unwrap_err());
            assert!(refusal.reason.contains("metadata"), "{url}: {refusal}");
        }
        // The real resolver too: a literal address needs no DNS, and is never connected to.
        let system = Guarded { inner: DefaultResolver::default(), access: Arc::new(RegistryAccess::default()) };
        let refusal = refused(resolve(&system, "http://169.254.169.254:80/latest/meta-data/").unwrap_err());
        assert_eq!(refusal.host, "169.254.169.254:80");
    }

    #[test]
    fn an_http_proxy_is_not_held_to_the_list_but_is_to_the_link_local_refusal() {
        let list = RegistryAccess::new(&["registry.lan:5000".to_string()], false).unwrap();
        let table = Table(vec![("proxy.lan", vec![addr("10.0.0.9:3128")]), ("other.lan", vec![addr("10.0.0.8:80")])]);
        let resolver = guarded(table, list.clone());
        let proxied = |proxy: &str| Config::builder().proxy(Some(ureq::Proxy::new(proxy).unwrap())).build();
        let resolve_with = |resolver: &Guarded<Table>, config: &Config, url: &str| {
            let uri: Uri = url.parse().unwrap();
            resolver.resolve(&uri, config, NextTimeout::default()).map(|a| a.iter().copied().collect::<Vec<_>>())
        };
        let config = proxied("http://proxy.lan:3128");
        assert_eq!(resolve_with(&resolver, &config, "http://proxy.lan:3128").unwrap(), [addr("10.0.0.9:3128")]);
        assert!(resolve_with(&resolver, &config, "http://other.lan/").is_err(), "only the proxy itself");
        let metadata = guarded(Table::default(), list);
        let refusal = refused(
            resolve_with(&metadata, &proxied("http://169.254.169.254:80"), "http://169.254.169.254:80").unwrap_err(),
        );
        assert!(refusal.reason.contains("metadata"), "{refusal}");
    }

    #[test]
    fn an_operator_may_allow_them() {
        let table = Table(vec![("registry.lan", vec![addr("169.254.3.3:5000")])]);
        let named = guarded(table, RegistryAccess::new(&["registry.lan".to_string()], false).unwrap());
        assert_eq!(resolve(&named, "http://registry.lan:5000/").unwrap(), [addr("169.254.3.3:5000")]);
        let table = Table(vec![("registry.lan", vec![addr("169.254.3.3:5000")])]);
        let all = guarded(table, RegistryAccess::new(&[], true).unwrap());
        assert_eq!(resolve(&all, "http://registry.lan:5000/").unwrap(), [addr("169.254.3.3:5000")]);
    }
}
