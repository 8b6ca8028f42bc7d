//! Turning the target state an operator sets into the one a device receives: every
//! floating tag replaced by the digest the registry serves for it now, so that a new
//! push to `:latest` becomes a plain string difference on the device.
//!
//! `requested_images` and `apply_resolutions` are pure; the registry sits behind
//! `ResolveDigests`.

use crate::registry::{Resolved, Resolver};
use crate::Error;
use pinion_model::{ImageResolution, Reference, ResolutionStatus, Service, TargetState};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// The digest a reference is pinned to, and whether it is a fresh answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub digest: String,
    pub media_type: String,
    /// Set when the registry could not be asked and the last digest it gave is used.
    pub stale: Option<Staleness>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staleness {
    /// Seconds since the registry gave this digest.
    pub age_secs: u64,
    /// Why the registry could not be asked now.
    pub reason: String,
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
    /// A digest per reference; a fresh cache entry may answer without asking the registry.
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

/// Every question goes to the registry: what `Cache-Control: no-cache` on a request asks for.
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
    pub reference: Reference,
}

/// Pins every service of `state` in place and says how it went. A reference that does
/// not parse is an error naming its app and service, and nothing is changed; so is one
/// on a registry the resolver does not `admit` (digest references included: the list
/// says where images may come from).
pub fn pin_target_state(
    state: &mut TargetState,
    resolver: &dyn ResolveDigests,
    deadline: Duration,
    now: &str,
) -> Result<ResolutionSummary, Error> {
    let requested = requested_images(state)?;
    for image in &requested {
        resolver.admit(&image.reference).map_err(|e| match e {
            Error::RegistryNotAllowed { registry, reason, .. } => Error::RegistryNotAllowed {
                registry,
                reference: format!("{} (app {}, service {})", image.written, image.app, image.service),
                reason,
            },
            other => other,
        })?;
    }
    let mut floating: Vec<Reference> = Vec::new();
    for image in &requested {
        let query = registry_query(&image.reference);
        if image.reference.digest().is_none() && !floating.contains(&query) {
            floating.push(query);
        }
    }
    let answers = if floating.is_empty() { Answers::new() } else { resolver.resolve_all(&floating, deadline) };
    Ok(apply_resolutions(state, &requested, &answers, now))
}

/// The image of every service, in the order services appear. The image is `imageName`
/// (or `config.image` when there is no `imageName`); a service read back from a pinned
/// state and sent again asks for the tag it was pinned from, so it keeps following it.
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
                Reference::parse(s).map_err(|source| Error::InvalidImage {
                    app: app_label.clone(),
                    service: service_label.clone(),
                    source,
                })
            };
            let reference = parse(written)?;
            if let (Some(image_name), Some(config_image)) = (service.image_name.as_deref(), config_image) {
                if config_image != image_name && parse(config_image)? != parse(image_name)? {
                    return Err(invalid("imageName and config.image name different images", config_image));
                }
            }
            images.push(RequestedImage {
                app: app_label.clone(),
                service: service_label,
                written: written.to_string(),
                reference,
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
/// `requested_images(state)` (same order).
pub fn apply_resolutions(
    state: &mut TargetState,
    requested: &[RequestedImage],
    answers: &Answers,
    now: &str,
) -> ResolutionSummary {
    let mut summary = ResolutionSummary { total: requested.len(), ..Default::default() };
    let services = state.apps.iter_mut().flat_map(|(_, app)| app.services.iter_mut().map(|(_, s)| s));
    for (service, image) in services.zip(requested) {
        let mut cache_age = None;
        let (image_name, digest, status, error) = match image.reference.digest() {
            Some(digest) => {
                summary.pinned += 1;
                (image.reference.pinned(digest), Some(digest.to_string()), ResolutionStatus::Pinned, None)
            }
            None => match answers.get(&registry_query(&image.reference)) {
                Some(Ok(Pin { digest, stale: None, .. })) => {
                    summary.resolved += 1;
                    (image.reference.pinned(digest), Some(digest.clone()), ResolutionStatus::Resolved, None)
                }
                Some(Ok(Pin { digest, stale: Some(stale), .. })) => {
                    summary.cached += 1;
                    summary.warnings.push(format!(
                        "app {}, service {}: {} pinned to the digest the registry gave {} s ago: {}",
                        image.app, image.service, image.written, stale.age_secs, stale.reason
                    ));
                    cache_age = Some(stale.age_secs);
                    let pinned = image.reference.pinned(digest);
                    (pinned, Some(digest.clone()), ResolutionStatus::Cached, Some(stale.reason.clone()))
                }
                failed => {
                    summary.fallback += 1;
                    let reason = match failed {
                        Some(Err(e)) => e.to_string(),
                        _ => "the registry was not asked".to_string(),
                    };
                    summary.warnings.push(format!(
                        "app {}, service {}: {} kept as a tag: {reason}",
                        image.app, image.service, image.written
                    ));
                    (image.written.clone(), None, ResolutionStatus::Fallback, Some(reason))
                }
            },
        };
        if let Some(config) = service.config.as_mut() {
            if config.contains_key("image") {
                config.insert("image".into(), image_name.clone().into());
            }
        }
        service.image_name = Some(image_name);
        service.image_resolution = Some(ImageResolution {
            requested: image.written.clone(),
            digest,
            status,
            resolved_at: now.to_string(),
            error,
            cache_age,
            rolled_back_from: None,
            extra: Default::default(),
        });
    }
    summary
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

    #[test]
    fn image_name_and_config_image_must_agree() {
        let mut target: TargetState = serde_json::from_value(json!({"apps": [{"appName": "a", "services": [
            {"serviceName": "s", "imageName": "nginx:latest", "config": {"image": "redis:7"}}]}]}))
        .unwrap();
        let err = pin_target_state(&mut target, &resolver(), Duration::from_secs(1), "T").unwrap_err();
        assert!(err.to_string().contains("different images"), "{err}");
    }
}
