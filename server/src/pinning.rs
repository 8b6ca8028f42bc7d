//! Turning the target state an operator sets into the one a device receives: every
//! floating tag replaced by the digest the registry serves for it now, so that a new
//! push to `:latest` becomes a plain string difference on the device. Each service's
//! `imageResolution` says where its digest came from: the registry now (`resolved`),
//! the request itself or a local image ID (`pinned`), the last answer the registry gave
//! (`cached`, with its age), or nowhere (`fallback`).
//!
//! `requested_images` and `apply_resolutions` are pure; the registry sits behind
//! `ResolveDigests`.

use crate::registry::{Resolved, Resolver};
use crate::timefmt::rfc3339;
use crate::Error;
use pinion_model::{ImageRef, ImageResolution, Reference, ResolutionStatus, Service, TargetState};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// The digest a reference is pinned to, and whether the registry gave it just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub digest: String,
    pub media_type: String,
    /// Set when the registry was not asked now and the last digest it gave is used.
    pub stale: Option<Staleness>,
}

/// A digest that is the registry's earlier answer, not one it gave just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staleness {
    /// Seconds since the registry gave this digest.
    pub age_secs: u64,
    /// When the registry gave it (Unix seconds).
    pub given_at: u64,
    /// Why the registry was not asked now.
    pub why: WhyCached,
}

/// Why an earlier answer of the registry stands in for asking it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhyCached {
    /// The registry was asked and could not answer (unreachable, timeout, 5xx, rate
    /// limit); the error as the operator reads it.
    RegistryUnavailable(String),
    /// The answer is younger than `--cache-ttl`, so the registry was not asked.
    WithinTtl { ttl_secs: u64 },
}

impl fmt::Display for WhyCached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhyCached::RegistryUnavailable(reason) => f.write_str(reason),
            WhyCached::WithinTtl { ttl_secs } => write!(f, "younger than --cache-ttl ({ttl_secs} s), not asked again"),
        }
    }
}

impl From<Resolved> for Pin {
    fn from(resolved: Resolved) -> Pin {
        Pin { digest: resolved.digest, media_type: resolved.media_type, stale: None }
    }
}

pub type Answers = HashMap<Reference, Result<Pin, Error>>;

/// Answers many references at once, within a deadline (the registry through the digest
/// cache, or a test's table).
pub trait ResolveDigests {
    /// A digest per reference, asked of the registry; only a server run with
    /// `--cache-ttl` answers a young enough entry without asking (marked `stale`).
    fn resolve_all(&self, refs: &[Reference], deadline: Duration) -> Answers;
    /// A digest per reference from the registry now (the background re-resolution).
    fn resolve_fresh(&self, refs: &[Reference], deadline: Duration) -> Answers {
        self.resolve_all(refs, deadline)
    }
    /// Refuses, without asking anyone, a reference whose registry this server may not
    /// contact (`--allowed-registries`, link-local and metadata hosts).
    fn admit(&self, _reference: &Reference) -> Result<(), Error> {
        Ok(())
    }
}

/// Every question goes to the registry, whatever `--cache-ttl` says: what
/// `Cache-Control: no-cache` on a request asks for.
pub struct Uncached<'a>(pub &'a (dyn ResolveDigests + Send + Sync));

impl ResolveDigests for Uncached<'_> {
    fn resolve_all(&self, refs: &[Reference], deadline: Duration) -> Answers {
        self.0.resolve_fresh(refs, deadline)
    }
    fn admit(&self, reference: &Reference) -> Result<(), Error> {
        self.0.admit(reference)
    }
}

impl ResolveDigests for Resolver {
    fn resolve_all(&self, refs: &[Reference], deadline: Duration) -> Answers {
        Resolver::resolve_all(self, refs, deadline).into_iter().map(|(r, a)| (r, a.map(Pin::from))).collect()
    }
    fn admit(&self, reference: &Reference) -> Result<(), Error> {
        Resolver::admit(self, reference)
    }
}

/// The `resolution` summary of a target-state answer.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct ResolutionSummary {
    pub total: usize,
    pub resolved: usize,
    pub pinned: usize,
    pub cached: usize,
    pub fallback: usize,
    pub warnings: Vec<String>,
}

/// The image a service asks for, as the operator wrote it, and where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedImage {
    pub app: String,
    pub service: String,
    pub written: String,
    pub image: ImageRef,
}

/// Pins every service of `state` in place and says how it went. A reference that does
/// not parse is an error naming its app and service, and nothing is changed; so is one
/// on a registry the resolver does not `admit` (digest references included: the list
/// says where images may come from), and one whose registry led the resolver to a host
/// it refused (a redirect or token realm off `--allowed-registries`): that is the
/// operator's policy at work, not an outage to stand in for with the tag. An image ID
/// names no registry: it is neither admitted nor asked for.
pub fn pin_target_state(
    state: &mut TargetState,
    resolver: &dyn ResolveDigests,
    deadline: Duration,
    now: &str,
) -> Result<ResolutionSummary, Error> {
    let requested = requested_images(state)?;
    for image in &requested {
        let Some(reference) = image.image.named() else { continue };
        resolver.admit(reference).map_err(|e| match e {
            Error::RegistryNotAllowed { registry, reason, .. } => Error::RegistryNotAllowed {
                registry,
                reference: format!("{} (app {}, service {})", image.written, image.app, image.service),
                reason,
            },
            other => other,
        })?;
    }
    let mut floating: Vec<Reference> = Vec::new();
    for reference in requested.iter().filter_map(|image| image.image.named()) {
        let query = registry_query(reference);
        if reference.digest().is_none() && !floating.contains(&query) {
            floating.push(query);
        }
    }
    let answers = if floating.is_empty() { Answers::new() } else { resolver.resolve_all(&floating, deadline) };
    if let Some(refusal) = first_refusal(&requested, &answers) {
        return Err(refusal);
    }
    Ok(apply_resolutions(state, &requested, &answers, now))
}

/// The first service (in order) whose resolution ended at a host the resolver may not
/// contact, as `RegistryNotAllowed` naming that host and the service.
fn first_refusal(requested: &[RequestedImage], answers: &Answers) -> Option<Error> {
    requested.iter().find_map(|image| {
        let reference = image.image.named()?;
        match answers.get(&registry_query(reference)) {
            Some(Err(Error::RegistryNotAllowed { registry, reason, .. })) => Some(Error::RegistryNotAllowed {
                registry: registry.clone(),
                reference: format!("{} (app {}, service {})", image.written, image.app, image.service),
                reason: reason.clone(),
            }),
            _ => None,
        }
    })
}

/// The image of every service, in the order services appear. The image is `imageName`
/// (or `config.image` when there is no `imageName`), read as Docker's
/// `ParseAnyReference` reads it (an image ID or a reference); a service read back from a
/// pinned state and sent again asks for the tag it was pinned from, so it keeps
/// following it.
pub fn requested_images(state: &TargetState) -> Result<Vec<RequestedImage>, Error> {
    let mut images = Vec::new();
    for (app_key, app) in state.apps.iter() {
        let app_label = app.app_name.clone().unwrap_or(app_key);
        for (service_key, service) in app.services.iter() {
            let service_label = service.service_name.clone().unwrap_or(service_key);
            let invalid = |reason: &'static str, reference: &str| Error::InvalidImage {
                app: app_label.clone(),
                service: service_label.clone(),
                source: pinion_model::Error::InvalidReference { reference: reference.to_string(), reason },
            };
            let config_image = service.config.as_ref().and_then(|c| c.get("image"));
            let config_image = match config_image {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                Some(_) => return Err(invalid("config.image must be a string", "")),
            };
            let Some(written) = service.image_name.as_deref().or(config_image) else {
                return Err(invalid("the service has no imageName", ""));
            };
            let written = re_requested(service, written).unwrap_or(written);
            let parse = |s: &str| {
                ImageRef::parse(s).map_err(|source| Error::InvalidImage {
                    app: app_label.clone(),
                    service: service_label.clone(),
                    source,
                })
            };
            let image = parse(written)?;
            if let (Some(image_name), Some(config_image)) = (service.image_name.as_deref(), config_image) {
                if config_image != image_name && parse(config_image)? != parse(image_name)? {
                    return Err(invalid("imageName and config.image name different images", config_image));
                }
            }
            images.push(RequestedImage {
                app: app_label.clone(),
                service: service_label,
                written: written.to_string(),
                image,
            });
        }
    }
    Ok(images)
}

/// The reference as the registry is asked for it: `nginx` and `nginx:latest` are one question.
pub fn registry_query(reference: &Reference) -> Reference {
    Reference::parse(&reference.canonical()).unwrap_or_else(|_| reference.clone())
}

/// The tag a stored service was pinned from, when `image_name` is still that pin.
fn re_requested<'a>(service: &'a Service, image_name: &str) -> Option<&'a str> {
    let resolution = service.image_resolution.as_ref()?;
    let digest = resolution.digest.as_deref()?;
    let requested = Reference::parse(&resolution.requested).ok()?;
    (requested.digest().is_none() && requested.pinned(digest) == image_name).then_some(resolution.requested.as_str())
}

/// Writes each service's pinned image and `imageResolution`. `requested` must come from
/// `requested_images(state)` (same order); `now` is the time of the request.
pub fn apply_resolutions(
    state: &mut TargetState,
    requested: &[RequestedImage],
    answers: &Answers,
    now: &str,
) -> ResolutionSummary {
    let mut summary = ResolutionSummary { total: requested.len(), ..Default::default() };
    let services = state.apps.iter_mut().flat_map(|(_, app)| app.services.iter_mut().map(|(_, s)| s));
    for (service, image) in services.zip(requested) {
        let outcome = resolution_of(image, answers);
        match outcome.status {
            ResolutionStatus::Resolved => summary.resolved += 1,
            ResolutionStatus::Pinned => summary.pinned += 1,
            ResolutionStatus::Cached => summary.cached += 1,
            ResolutionStatus::Fallback => summary.fallback += 1,
        }
        if let Some(warning) = &outcome.warning {
            summary.warnings.push(format!("app {}, service {}: {} {warning}", image.app, image.service, image.written));
        }
        if let Some(config) = service.config.as_mut() {
            if config.contains_key("image") {
                config.insert("image".into(), outcome.image_name.clone().into());
            }
        }
        service.image_name = Some(outcome.image_name);
        service.image_resolution = Some(ImageResolution {
            requested: image.written.clone(),
            digest: outcome.digest,
            status: outcome.status,
            resolved_at: outcome.resolved_at.unwrap_or_else(|| now.to_string()),
            error: outcome.error,
            cache_age: outcome.cache_age,
            rolled_back_from: None,
            extra: Default::default(),
        });
    }
    summary
}

/// How one service's image was pinned, before it is written into the service.
struct Outcome {
    image_name: String,
    digest: Option<String>,
    status: ResolutionStatus,
    /// When the registry gave the digest, if not during this request.
    resolved_at: Option<String>,
    error: Option<String>,
    cache_age: Option<u64>,
    /// For the summary, after "app A, service S: <written> ".
    warning: Option<String>,
}

/// Where the digest of `image` comes from, truthfully: the image itself (an ID or a
/// digest reference), the registry now, its earlier answer, or nowhere.
fn resolution_of(image: &RequestedImage, answers: &Answers) -> Outcome {
    let plain = |image_name: String, digest: Option<String>, status| Outcome {
        image_name,
        digest,
        status,
        resolved_at: None,
        error: None,
        cache_age: None,
        warning: None,
    };
    let reference = match &image.image {
        ImageRef::Id(id) => return plain(image.written.clone(), Some(id.digest()), ResolutionStatus::Pinned),
        ImageRef::Named(reference) => reference,
    };
    if let Some(digest) = reference.digest() {
        return plain(reference.pinned(digest), Some(digest.to_string()), ResolutionStatus::Pinned);
    }
    match answers.get(&registry_query(reference)) {
        Some(Ok(Pin { digest, stale: None, .. })) => {
            plain(reference.pinned(digest), Some(digest.clone()), ResolutionStatus::Resolved)
        }
        Some(Ok(Pin { digest, stale: Some(stale), .. })) => {
            let (error, warning) = match &stale.why {
                WhyCached::RegistryUnavailable(reason) => (
                    Some(reason.clone()),
                    Some(format!("pinned to the digest the registry gave {} s ago: {reason}", stale.age_secs)),
                ),
                WhyCached::WithinTtl { .. } => (None, None),
            };
            Outcome {
                image_name: reference.pinned(digest),
                digest: Some(digest.clone()),
                status: ResolutionStatus::Cached,
                resolved_at: Some(rfc3339(stale.given_at)),
                error,
                cache_age: Some(stale.age_secs),
                warning,
            }
        }
        failed => {
            let reason = match failed {
                Some(Err(e)) => e.to_string(),
                _ => "the registry was not asked".to_string(),
            };
            Outcome {
                warning: Some(format!("kept as a tag: {reason}")),
                error: Some(reason),
                ..plain(image.written.clone(), None, ResolutionStatus::Fallback)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::cell::RefCell;

    /// A recording stand-in for the registry: answers from a table, remembers what was asked.
    struct TableResolver {
        digests: HashMap<String, &'static str>,
        asked: RefCell<Vec<Vec<String>>>,
    }

    impl ResolveDigests for TableResolver {
        fn resolve_all(&self, refs: &[Reference], _: Duration) -> Answers {
            self.asked.borrow_mut().push(refs.iter().map(|r| r.canonical()).collect());
            refs.iter()
                .map(|r| {
                    let answer = match self.digests.get(&r.canonical()) {
                        Some(d) => Ok(Pin { digest: d.to_string(), media_type: "m".into(), stale: None }),
                        None => Err(Error::ManifestUnknown { reference: r.canonical(), reason: "no such tag".into() }),
                    };
                    (r.clone(), answer)
                })
                .collect()
        }
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn resolver() -> TableResolver {
        TableResolver {
            digests: [("docker.io/library/nginx:latest".to_string(), D1)].into_iter().collect(),
            asked: RefCell::new(vec![]),
        }
    }

    fn state(images: &[&str]) -> TargetState {
        let services: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                json!({"serviceId": i, "serviceName": format!("s{i}"), "imageName": image,
                                     "config": {"image": image, "ports": ["80:80"]}})
            })
            .collect();
        serde_json::from_value(json!({"apps": {"1": {"appId": 1, "appName": "demo", "services": services}}})).unwrap()
    }

    fn service(state: &TargetState, i: usize) -> serde_json::Value {
        let pinion_model::state::Keyed::Map(apps) = &state.apps else { panic!() };
        serde_json::to_value(&apps["1"]).unwrap()["services"][i].clone()
    }

    #[test]
    fn tags_are_pinned_and_each_distinct_reference_is_asked_once() {
        let mut target = state(&["nginx:latest", "nginx", "docker.io/library/nginx:latest"]);
        let r = resolver();
        let summary = pin_target_state(&mut target, &r, Duration::from_secs(1), "T").unwrap();
        assert_eq!((summary.total, summary.resolved, summary.fallback), (3, 3, 0));
        assert_eq!(r.asked.borrow().as_slice(), [vec!["docker.io/library/nginx:latest".to_string()]]);
        let s = service(&target, 0);
        assert_eq!(s["imageName"], format!("nginx@{D1}"));
        assert_eq!(s["config"]["image"], format!("nginx@{D1}"));
        assert_eq!(s["config"]["ports"], json!(["80:80"]));
        assert_eq!(
            s["imageResolution"],
            json!({"requested": "nginx:latest", "digest": D1, "status": "resolved", "resolvedAt": "T"})
        );
        assert_eq!(service(&target, 1)["imageResolution"]["requested"], "nginx");
    }

    #[test]
    fn a_digest_is_pinned_without_asking() {
        let written = format!("nginx:1.25@{D1}");
        let mut target = state(&[&written]);
        let r = resolver();
        let summary = pin_target_state(&mut target, &r, Duration::from_secs(1), "T").unwrap();
        assert_eq!(summary.pinned, 1);
        assert!(r.asked.borrow().is_empty());
        assert_eq!(service(&target, 0)["imageName"], format!("nginx@{D1}"));
        assert_eq!(service(&target, 0)["imageResolution"]["status"], "pinned");
    }

    #[test]
    fn an_unresolvable_tag_falls_back_with_the_reason() {
        let mut target = state(&["example.com/app:v1"]);
        let summary = pin_target_state(&mut target, &resolver(), Duration::from_secs(1), "T").unwrap();
        assert_eq!(summary.fallback, 1);
        assert!(summary.warnings[0].contains("app demo, service s0"), "{:?}", summary.warnings);
        let s = service(&target, 0);
        assert_eq!(s["imageName"], "example.com/app:v1");
        assert_eq!(s["imageResolution"]["status"], "fallback");
        assert!(s["imageResolution"]["error"].as_str().unwrap().contains("no such tag"));
    }

    #[test]
    fn a_pinned_state_sent_back_keeps_following_its_tag() {
        let mut target = state(&["nginx:latest"]);
        pin_target_state(&mut target, &resolver(), Duration::from_secs(1), "T").unwrap();
        let requested = requested_images(&target).unwrap();
        assert_eq!(requested[0].written, "nginx:latest");
    }

    #[test]
    fn an_invalid_reference_names_app_and_service_and_changes_nothing() {
        let mut target = state(&["nginx:latest", "Nginx:latest"]);
        let before = target.clone();
        let err = pin_target_state(&mut target, &resolver(), Duration::from_secs(1), "T").unwrap_err();
        assert!(err.to_string().starts_with("app demo, service s1:"), "{err}");
        assert_eq!(target, before);
    }

    /// A resolver that may contact no registry at all.
    struct NoRegistryAllowed;

    impl ResolveDigests for NoRegistryAllowed {
        fn resolve_all(&self, refs: &[Reference], _: Duration) -> Answers {
            panic!("no registry may be asked, yet {refs:?} were");
        }
        fn admit(&self, reference: &Reference) -> Result<(), Error> {
            Err(Error::RegistryNotAllowed {
                registry: reference.domain().into(),
                reference: reference.to_string(),
                reason: "none is".into(),
            })
        }
    }

    /// A resolver whose every registry sends it to a host it refuses.
    struct EveryHopRefused;

    impl ResolveDigests for EveryHopRefused {
        fn resolve_all(&self, refs: &[Reference], _: Duration) -> Answers {
            let refused = |r: &Reference| Error::RegistryNotAllowed {
                registry: "127.0.0.1:9".into(),
                reference: r.canonical(),
                reason: "127.0.0.1:9 is not in --allowed-registries".into(),
            };
            refs.iter().map(|r| (r.clone(), Err(refused(r)))).collect()
        }
    }

    #[test]
    fn a_hop_the_resolver_refused_is_an_error_naming_it_and_the_service_and_changes_nothing() {
        let mut target = state(&[&format!("nginx@{D1}"), "registry.example/app:v1"]);
        let before = target.clone();
        let err = pin_target_state(&mut target, &EveryHopRefused, Duration::from_secs(1), "T").unwrap_err();
        let Error::RegistryNotAllowed { registry, reference, reason } = &err else { panic!("{err:?}") };
        assert_eq!(registry, "127.0.0.1:9");
        assert_eq!(reference, "registry.example/app:v1 (app demo, service s1)");
        assert!(reason.contains("--allowed-registries"), "{reason}");
        assert_eq!(target, before);
    }

    const HEX: &str = "4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";

    #[test]
    fn image_ids_are_kept_as_written_and_pinned_without_any_registry() {
        let id = format!("sha256:{HEX}");
        let mut target = state(&[&id, HEX]);
        let summary = pin_target_state(&mut target, &NoRegistryAllowed, Duration::from_secs(1), "T").unwrap();
        assert_eq!((summary.total, summary.pinned, summary.resolved), (2, 2, 0));
        for (i, written) in [id.as_str(), HEX].into_iter().enumerate() {
            let s = service(&target, i);
            assert_eq!(s["imageName"], written, "stored as given");
            assert_eq!(s["config"]["image"], written);
            assert_eq!(
                s["imageResolution"],
                json!({"requested": written, "digest": id, "status": "pinned", "resolvedAt": "T"})
            );
        }
        // Read back and sent again, an ID stays what it is; nothing follows it, and it
        // names no registry to send credentials for.
        assert!(matches!(requested_images(&target).unwrap()[1].image, ImageRef::Id(_)));
        assert!(crate::targets::followed_references(&target).is_empty());
        assert!(crate::registry_auth::registry_hosts(&target).is_empty());
    }

    #[test]
    fn two_spellings_of_one_image_id_agree_and_a_short_one_is_refused() {
        let mut target: TargetState = serde_json::from_value(json!({"apps": [{"appName": "a", "services": [
            {"serviceName": "s", "imageName": format!("sha256:{HEX}"), "config": {"image": HEX}}]}]}))
        .unwrap();
        pin_target_state(&mut target, &NoRegistryAllowed, Duration::from_secs(1), "T").unwrap();

        let mut target = state(&["sha256:short"]);
        let err = pin_target_state(&mut target, &resolver(), Duration::from_secs(1), "T").unwrap_err();
        assert!(matches!(err, Error::InvalidImage { .. }), "{err:?}");
        assert!(err.to_string().contains("an image ID is sha256: and 64 lowercase hex digits"), "{err}");
    }

    /// The answers a resolver would give for `nginx:latest`.
    fn answered(pin: Result<Pin, Error>) -> (TargetState, ResolutionSummary) {
        let mut target = state(&["nginx:latest"]);
        let requested = requested_images(&target).unwrap();
        let answers: Answers = [(registry_query(&requested[0].image.named().unwrap().clone()), pin)].into();
        let summary = apply_resolutions(&mut target, &requested, &answers, "2026-01-01T00:10:00Z");
        (target, summary)
    }

    fn cached_pin(why: WhyCached) -> Result<Pin, Error> {
        let given_at = 1_767_225_600; // 2026-01-01T00:00:00Z
        Ok(Pin { digest: D1.into(), media_type: "m".into(), stale: Some(Staleness { age_secs: 600, given_at, why }) })
    }

    #[test]
    fn a_digest_from_the_cache_says_so_with_the_time_the_registry_gave_it() {
        let (target, summary) = answered(cached_pin(WhyCached::WithinTtl { ttl_secs: 900 }));
        assert_eq!((summary.cached, summary.resolved), (1, 0));
        assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
        assert_eq!(
            service(&target, 0)["imageResolution"],
            json!({"requested": "nginx:latest", "digest": D1, "status": "cached", "cacheAge": 600,
                   "resolvedAt": "2026-01-01T00:00:00Z"})
        );

        let (target, summary) = answered(cached_pin(WhyCached::RegistryUnavailable("connection refused".into())));
        assert_eq!(summary.cached, 1);
        assert!(summary.warnings[0].contains("gave 600 s ago: connection refused"), "{:?}", summary.warnings);
        let s = service(&target, 0);
        assert_eq!(s["imageName"], format!("nginx@{D1}"));
        assert_eq!(
            s["imageResolution"],
            json!({"requested": "nginx:latest", "digest": D1, "status": "cached", "cacheAge": 600,
                   "resolvedAt": "2026-01-01T00:00:00Z", "error": "connection refused"})
        );
    }

    #[test]
    fn a_fresh_answer_is_resolved_now() {
        let (target, summary) = answered(Ok(Pin { digest: D1.into(), media_type: "m".into(), stale: None }));
        assert_eq!(summary.resolved, 1);
        assert_eq!(service(&target, 0)["imageResolution"]["resolvedAt"], "2026-01-01T00:10:00Z");
    }

    #[test]
    fn image_name_and_config_image_must_agree() {
        let mut target: TargetState = serde_json::from_value(json!({"apps": [{"appName": "a", "services": [
            {"serviceName": "s", "imageName": "nginx:latest", "config": {"image": "redis:7"}}]}]}))
        .unwrap();
        let err = pin_target_state(&mut target, &resolver(), Duration::from_secs(1), "T").unwrap_err();
        assert!(err.to_string().contains("different images"), "{err}");
    }
}
