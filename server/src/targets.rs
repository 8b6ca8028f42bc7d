//! Writing a device's target-state versions, whoever writes them (the operator, the
//! background re-resolution, a webhook, an update window opening, a rollback): the
//! stored JSON, the poll answer with its ETag, and the floating references it follows,
//! in one store call. `repin` and `rolled_back` are the pure edits those writers make.

use crate::keys::hex;
use crate::pinning::registry_query;
use crate::store::{NewTarget, PollAnswer, Store};
use crate::Error;
use pinion_model::{Reference, ResolutionStatus, TargetState};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The poll answer for a target state: `{"<uuid>": {"apps", "config", …}}` and a strong
/// ETag over exactly those bytes. Computed once per stored version.
pub fn poll_answer(uuid: &str, state: &TargetState) -> PollAnswer {
    let mut wrapper = Map::new();
    wrapper.insert(uuid.to_string(), serde_json::to_value(state).unwrap_or_else(|_| json!({})));
    let body = Value::Object(wrapper).to_string();
    let etag = format!("\"{}\"", &hex(&Sha256::digest(body.as_bytes()))[..32]);
    PollAnswer { etag, body }
}

/// The floating references (canonical, `docker.io/library/nginx:latest`) the services
/// of `state` were pinned from, each once.
pub fn followed_references(state: &TargetState) -> Vec<String> {
    let mut references: Vec<String> = Vec::new();
    for (_, app) in state.apps.iter() {
        for (_, service) in app.services.iter() {
            let Some(requested) = service.image_resolution.as_ref().map(|r| r.requested.as_str()) else { continue };
            let Ok(reference) = Reference::parse(requested) else { continue };
            if reference.digest().is_none() {
                let canonical = registry_query(&reference).canonical();
                if !references.contains(&canonical) {
                    references.push(canonical);
                }
            }
        }
    }
    references
}

/// Stores `state` as the device's next version; `expected_version` guards background
/// writers against an operator's write in between.
pub fn store_target(
    store: &dyn Store,
    uuid: &str,
    state: &TargetState,
    source: &str,
    expected_version: Option<u64>,
) -> Result<u64, Error> {
    let json = serde_json::to_string(state)
        .map_err(|e| Error::BadRequest { reason: format!("the target state cannot be stored: {e}") })?;
    let poll = poll_answer(uuid, state);
    let references = followed_references(state);
    let registries = crate::registry_auth::registry_hosts(state);
    store.set_target(
        uuid,
        &NewTarget {
            state: &json,
            poll: &poll,
            references: &references,
            registries: &registries,
            source,
            expected_version,
            supersedes_pending: supersedes_pending(source),
            release: None,
        },
    )
}

/// A version the operator writes (or rolls back to) supersedes the updates the policy
/// was holding back for the device: they are dropped in the same transaction, so none
/// can later be applied over it. Versions the refresher writes leave the others held.
pub fn supersedes_pending(source: &str) -> bool {
    matches!(source, "operator" | "rollback")
}

/// Points every service that follows `reference` (canonical) at `digest`, unless it is
/// there already or was rolled back from it. Returns how many services changed.
pub fn repin(state: &mut TargetState, reference: &str, digest: &str, now: &str) -> usize {
    let mut changed = 0;
    for (_, app) in state.apps.iter_mut() {
        for (_, service) in app.services.iter_mut() {
            let Some(resolution) = service.image_resolution.as_mut() else { continue };
            let Ok(requested) = Reference::parse(&resolution.requested) else { continue };
            if requested.digest().is_some() || registry_query(&requested).canonical() != reference {
                continue;
            }
            if resolution.digest.as_deref() == Some(digest) || resolution.rolled_back_from.as_deref() == Some(digest) {
                continue;
            }
            let pinned = requested.pinned(digest);
            if let Some(config) = service.config.as_mut() {
                if config.contains_key("image") {
                    config.insert("image".into(), pinned.clone().into());
                }
            }
            service.image_name = Some(pinned);
            resolution.digest = Some(digest.to_string());
            resolution.status = ResolutionStatus::Resolved;
            resolution.resolved_at = now.to_string();
            resolution.error = None;
            resolution.cache_age = None;
            resolution.rolled_back_from = None;
            changed += 1;
        }
    }
    changed
}

/// The digest each service following a tag is pinned to, by app and service key.
fn pinned_digests(state: &TargetState) -> Vec<(String, String, String)> {
    let mut digests = Vec::new();
    for (app_key, app) in state.apps.iter() {
        for (service_key, service) in app.services.iter() {
            if let Some(digest) = service.image_resolution.as_ref().and_then(|r| r.digest.clone()) {
                digests.push((app_key.clone(), service_key, digest));
            }
        }
    }
    digests
}

/// `old` as the next version after `current`: each service whose digest differs from
/// the one it has in `current` remembers that digest as `rolledBackFrom`, so following
/// the tag does not bring it straight back.
pub fn rolled_back(old: &TargetState, current: &TargetState) -> TargetState {
    let current_digests = pinned_digests(current);
    let mut state = old.clone();
    for (app_key, app) in state.apps.iter_mut() {
        for (service_key, service) in app.services.iter_mut() {
            let Some(resolution) = service.image_resolution.as_mut() else { continue };
            let now = current_digests.iter().find(|(a, s, _)| *a == app_key && *s == service_key).map(|(_, _, d)| d);
            resolution.rolled_back_from = match now {
                Some(digest) if resolution.digest.as_ref() != Some(digest) => Some(digest.clone()),
                _ => None,
            };
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn pinned_state(digest: &str) -> TargetState {
        serde_json::from_value(json!({"apps": {"1": {"services": [
            {"serviceName": "web", "imageName": format!("nginx@{digest}"), "config": {"image": format!("nginx@{digest}")},
             "imageResolution": {"requested": "nginx", "digest": digest, "status": "resolved", "resolvedAt": "T0"}},
            {"serviceName": "db", "imageName": format!("redis@{A}"),
             "imageResolution": {"requested": format!("redis@{A}"), "digest": A, "status": "pinned", "resolvedAt": "T0"}}
        ]}}}))
        .unwrap()
    }

    fn service(state: &TargetState, i: usize) -> Value {
        serde_json::to_value(state).unwrap()["apps"]["1"]["services"][i].clone()
    }

    #[test]
    fn followed_references_are_the_floating_ones_normalized() {
        assert_eq!(followed_references(&pinned_state(A)), ["docker.io/library/nginx:latest"]);
    }

    #[test]
    fn repin_moves_the_services_that_follow_the_tag() {
        let mut state = pinned_state(A);
        assert_eq!(repin(&mut state, "docker.io/library/nginx:latest", A, "T1"), 0, "already there");
        assert_eq!(repin(&mut state, "docker.io/library/redis:latest", B, "T1"), 0, "nobody follows it");
        assert_eq!(repin(&mut state, "docker.io/library/nginx:latest", B, "T1"), 1);
        let web = service(&state, 0);
        assert_eq!(web["imageName"], format!("nginx@{B}"));
        assert_eq!(web["config"]["image"], format!("nginx@{B}"));
        assert_eq!(web["imageResolution"]["resolvedAt"], "T1");
        assert_eq!(service(&state, 1)["imageName"], format!("redis@{A}"), "a digest reference never moves");
    }

    #[test]
    fn a_rollback_remembers_the_digest_it_left_and_repin_respects_it() {
        let mut back = rolled_back(&pinned_state(A), &pinned_state(B));
        assert_eq!(service(&back, 0)["imageResolution"]["rolledBackFrom"], B);
        assert!(service(&back, 1)["imageResolution"].get("rolledBackFrom").is_none());
        assert_eq!(repin(&mut back, "docker.io/library/nginx:latest", B, "T2"), 0, "not straight back to B");
        let c = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
        assert_eq!(repin(&mut back, "docker.io/library/nginx:latest", c, "T2"), 1, "a new push moves it");
        assert!(service(&back, 0)["imageResolution"].get("rolledBackFrom").is_none());
    }

    #[test]
    fn the_poll_answer_wraps_the_state_in_the_uuid() {
        let answer = poll_answer("dev", &TargetState::default());
        assert_eq!(answer.body, r#"{"dev":{"apps":{},"config":{}}}"#);
        assert_eq!(answer.etag.len(), 34);
    }
}
