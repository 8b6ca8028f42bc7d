//! Asking registries which digest a tag points at (Docker Registry HTTP API V2 / OCI
//! distribution). Facts and their sources: `shared/docs/registry-protocol.md`.
//!
//! `Resolver::resolve` answers one reference; `Resolver::resolve_all` answers many,
//! distinct references concurrently, within one overall deadline.
//!
//! The path of one resolution: `transport` picks the URL and scheme, `manifest` sends
//! `HEAD` (then `GET` if needed) through `auth`, which follows `401` challenges
//! (`challenge`) with tokens (`token`) or Basic credentials (`credentials`). Which hosts
//! may be contacted at all is `allowed`; `guard` enforces it on every connection.

mod allowed;
mod auth;
mod base64;
// Public (not part of the API) so that `fuzz/` can reach the `WWW-Authenticate` parser.
#[doc(hidden)]
pub mod challenge;
mod credentials;
mod fanout;
mod guard;
mod manifest;
mod status;
mod token;
mod transport;

#[cfg(test)]
mod fake_registry;
#[cfg(test)]
mod resolve_tests;
#[cfg(test)]
mod safety_tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pinion_model::Reference;

pub use allowed::RegistryAccess;
pub(crate) use credentials::normalize_host;
pub use credentials::{CredentialSource, Credentials};

use crate::Error;

/// How the resolver reaches registries.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// User and password per registry host.
    pub credentials: Credentials,
    /// Credentials the operator stored through the API; they win over `credentials`,
    /// and are asked at every request, so a change applies at once.
    pub stored_credentials: Option<Arc<dyn CredentialSource>>,
    /// Registries (`host` or `host:port`) reached over plain http, like dockerd's
    /// `--insecure-registry`. Loopback registries always are.
    pub insecure_registries: Vec<String>,
    /// Timeout of each HTTP request (connect to last byte).
    pub request_timeout: Duration,
    /// Which registries may be asked (`--allowed-registries`, link-local and metadata
    /// addresses).
    pub access: RegistryAccess,
    /// Where each registry request's latency is counted (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            credentials: Credentials::default(),
            stored_credentials: None,
            insecure_registries: Vec::new(),
            request_timeout: Duration::from_secs(10),
            access: RegistryAccess::default(),
            metrics: Arc::default(),
        }
    }
}

/// A manifest's digest and media type, as the registry serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `sha256:<64 hex>` (or the digest asked for, when resolving by digest).
    pub digest: String,
    /// `Content-Type` without parameters, e.g. `application/vnd.oci.image.index.v1+json`.
    pub media_type: String,
}

/// Resolves references to digests. Cheap to clone; clones share the HTTP agent (and its
/// connection pool) and the token cache.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

/// What all clones of a resolver share.
struct Inner {
    agent: ureq::Agent,
    credentials: Credentials,
    stored_credentials: Option<Arc<dyn CredentialSource>>,
    insecure_registries: Vec<String>,
    tokens: token::TokenCache,
    plans: auth::Plans,
    access: Arc<RegistryAccess>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// One manifest to ask a registry for, with everything the request path needs.
struct Target {
    /// The registry as in the reference (`docker.io`, `127.0.0.1:5000`).
    domain: String,
    /// Repository path (`library/nginx`).
    path: String,
    /// The tag or digest put in the URL.
    reference: String,
    /// The digest written in the reference, which the answer must match.
    wanted_digest: Option<String>,
    /// `http` or `https`.
    scheme: &'static str,
    /// The reference as shown in errors and logs.
    display: String,
}

impl Inner {
    /// The user and password for `host`: the stored ones, else those of `config.json`.
    fn credentials_for(&self, host: &str) -> Option<(String, String)> {
        self.stored_credentials
            .as_ref()
            .and_then(|stored| stored.credentials_for(host))
            .or_else(|| self.credentials.credentials_for(host))
    }
}

impl Resolver {
    pub fn new(config: ResolverConfig) -> Resolver {
        Resolver::with_dns(config, ureq::unversioned::resolver::DefaultResolver::default())
    }

    /// A resolver whose names are looked up by `dns` (tests: names that must resolve to
    /// addresses no test may connect to), always through the `guard`.
    pub(crate) fn with_dns(config: ResolverConfig, dns: impl ureq::unversioned::resolver::Resolver) -> Resolver {
        let access = Arc::new(config.access);
        // Through an HTTP proxy ureq never resolves a redirect's target, so the guard
        // cannot hold it to the allow-list: with both, redirects are not followed.
        let follow_redirects = !(access.is_restricted() && ureq::Proxy::try_from_env().is_some());
        if !follow_redirects {
            log::info!("an HTTP proxy and --allowed-registries are both set: registry redirects are not followed");
        }
        let guarded = guard::Guarded { inner: dns, access: Arc::clone(&access) };
        Resolver {
            inner: Arc::new(Inner {
                agent: transport::agent(config.request_timeout, guarded, follow_redirects),
                credentials: config.credentials,
                stored_credentials: config.stored_credentials,
                insecure_registries: config.insecure_registries,
                tokens: token::TokenCache::default(),
                plans: auth::Plans::default(),
                access,
                metrics: config.metrics,
            }),
        }
    }

    /// Refuses, without asking anyone, a reference whose registry may not be contacted
    /// (not on `--allowed-registries`, or a link-local or metadata host not allowed).
    pub fn admit(&self, reference: &Reference) -> Result<(), Error> {
        let domain = reference.domain();
        self.inner.access.check_registry(domain).map_err(|reason| Error::RegistryNotAllowed {
            registry: domain.to_string(),
            reference: reference.canonical(),
            reason,
        })
    }

    /// The digest `reference` points at. A reference with a digest is checked to exist
    /// (`HEAD` by digest) and answers with that digest. A reference `admit` refuses is
    /// refused before any connection.
    pub fn resolve(&self, reference: &Reference) -> Result<Resolved, Error> {
        self.admit(reference)?;
        let target = self.target(reference);
        log::debug!("resolving {} at {}", target.display, transport::api_host(&target.domain));
        let result = manifest::resolve(&self.inner, &target);
        match &result {
            Ok(resolved) => log::debug!("{} -> {} ({})", target.display, resolved.digest, resolved.media_type),
            Err(e) => log::debug!("{e}"),
        }
        result
    }

    /// Resolves the distinct `refs` concurrently (one thread each). Every reference gets an
    /// answer within `deadline`; one not resolved in time gets `ResolutionDeadline`.
    /// Threads still running then are left to finish on their own.
    pub fn resolve_all(&self, refs: &[Reference], deadline: Duration) -> HashMap<Reference, Result<Resolved, Error>> {
        let mut seen = HashSet::new();
        let distinct: Vec<Reference> = refs.iter().filter(|r| seen.insert(*r)).cloned().collect();
        let resolver = self.clone();
        let outcomes = fanout::run_with_deadline(distinct, deadline, move |r| resolver.resolve(r));
        outcomes
            .into_iter()
            .map(|(reference, outcome)| {
                let result = match outcome {
                    fanout::Outcome::Done(result) => result,
                    fanout::Outcome::Late => {
                        let display = reference.canonical();
                        log::warn!("resolving {display} did not finish within {deadline:?}");
                        Err(Error::ResolutionDeadline {
                            reference: display,
                            seconds: deadline.as_secs_f64().ceil() as u64,
                        })
                    }
                    fanout::Outcome::NotStarted(reason) => Err(Error::RegistryUnreachable {
                        registry: reference.domain().to_string(),
                        reason: format!("could not start a resolver thread: {reason}"),
                    }),
                };
                (reference, result)
            })
            .collect()
    }

    fn target(&self, reference: &Reference) -> Target {
        let domain = reference.domain().to_string();
        Target {
            scheme: transport::scheme(&domain, &self.inner.insecure_registries),
            path: reference.path().to_string(),
            reference: reference.digest().unwrap_or(reference.tag_or_latest()).to_string(),
            wanted_digest: reference.digest().map(str::to_string),
            display: reference.canonical(),
            domain,
        }
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("credentials", &self.inner.credentials)
            .field("stored_credentials", &self.inner.stored_credentials)
            .field("insecure_registries", &self.inner.insecure_registries)
            .field("access", &self.inner.access)
            .finish_non_exhaustive()
    }
}
