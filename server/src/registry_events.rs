//! What a registry's push notification names: the tags that were pushed, as image
//! references. Understands the distribution notification envelope (the Debian
//! `docker-registry`, ACR), Docker Hub's webhook, Harbor's and Quay's. Digests in the
//! payload are not trusted: the references are resolved again against the registry.

use crate::Error;
use pinion_model::Reference;
use serde_json::Value;
use std::collections::HashSet;

/// Distinct references one notification may name at most (distribution batches 100
/// events per envelope by default); more is `Error::TooManyReferences`.
pub const MAX_REFERENCES_PER_EVENT: usize = 1000;

/// Manifest media types a tag push carries (blob pushes are `application/octet-stream`).
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
];

/// The canonical references of the tags a notification says were pushed, each once, at
/// most `MAX_REFERENCES_PER_EVENT` (reading stops at one more). A payload of no known
/// shape is an error; a known shape with no tag push is empty.
pub fn pushed_references(body: &[u8]) -> Result<Vec<String>, Error> {
    let payload: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest { reason: format!("the notification is not JSON: {e}") })?;
    let written: Vec<String> = if let Some(events) = payload.get("events").and_then(Value::as_array) {
        events.iter().filter_map(distribution_event).collect()
    } else if let (Some(push), Some(repository)) = (payload.get("push_data"), payload.get("repository")) {
        let tag = push.get("tag").and_then(Value::as_str);
        let name = repository.get("repo_name").and_then(Value::as_str);
        tag.zip(name).map(|(tag, name)| format!("docker.io/{name}:{tag}")).into_iter().collect()
    } else if payload.get("type").and_then(Value::as_str).is_some() && payload.get("event_data").is_some() {
        harbor_event(&payload)
    } else if let Some(docker_url) = payload.get("docker_url").and_then(Value::as_str) {
        quay_tags(payload.get("updated_tags")).into_iter().map(|tag| format!("{docker_url}:{tag}")).collect()
    } else {
        return Err(Error::BadRequest {
            reason: "not a registry notification this server understands (distribution events, Docker Hub, \
                     Harbor or Quay)"
                .into(),
        });
    };
    let mut references: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut not_tags = 0;
    for text in written {
        match Reference::parse(&text) {
            Ok(reference) if reference.tag().is_some() => {
                let canonical = reference.canonical();
                if seen.insert(canonical.clone()) {
                    if references.len() == MAX_REFERENCES_PER_EVENT {
                        return Err(Error::TooManyReferences { limit: MAX_REFERENCES_PER_EVENT });
                    }
                    references.push(canonical);
                }
            }
            _ => not_tags += 1,
        }
    }
    if not_tags > 0 {
        log::warn!("registry notification: {not_tags} names that are not tag references ignored");
    }
    Ok(references)
}

/// One distribution event: `push` of a manifest by tag → `host/repository:tag`.
fn distribution_event(event: &Value) -> Option<String> {
    if event.get("action").and_then(Value::as_str) != Some("push") {
        return None;
    }
    let target = event.get("target")?;
    let tag = target.get("tag").and_then(Value::as_str).filter(|t| !t.is_empty())?;
    let media_type = target.get("mediaType").and_then(Value::as_str).unwrap_or_default();
    if !MANIFEST_TYPES.contains(&media_type) {
        return None;
    }
    let repository = target.get("repository").and_then(Value::as_str)?;
    let host = event.pointer("/request/host").and_then(Value::as_str).filter(|h| !h.is_empty())?;
    Some(format!("{host}/{repository}:{tag}"))
}

/// Harbor's `PUSH_ARTIFACT`: `event_data.resources[].resource_url` = `host/project/repo:tag`.
fn harbor_event(payload: &Value) -> Vec<String> {
    if payload.get("type").and_then(Value::as_str) != Some("PUSH_ARTIFACT") {
        return vec![];
    }
    let resources = payload.pointer("/event_data/resources").and_then(Value::as_array);
    resources
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("resource_url").and_then(Value::as_str))
        .filter(|url| !url.contains('@'))
        .map(str::to_string)
        .collect()
}

/// Quay's `updated_tags`: an array of names, or (older) an object keyed by tag.
fn quay_tags(tags: Option<&Value>) -> Vec<String> {
    match tags {
        Some(Value::Array(tags)) => tags.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::Object(tags)) => tags.keys().cloned().collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::pushed_references;
    use serde_json::json;

    fn refs(payload: serde_json::Value) -> Vec<String> {
        pushed_references(payload.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn distribution_envelope_keeps_tag_pushes_of_manifests_only() {
        let envelope = json!({"events": [
            {"action": "push", "target": {"mediaType": "application/octet-stream", "repository": "demo/app",
             "digest": "sha256:11"}, "request": {"host": "127.0.0.1:5000"}},
            {"action": "push", "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "repository": "demo/app", "digest": "sha256:22"}, "request": {"host": "127.0.0.1:5000"}},
            {"action": "push", "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "repository": "demo/app", "tag": "latest", "digest": "sha256:33"}, "request": {"host": "127.0.0.1:5000"}},
            {"action": "pull", "target": {"mediaType": "application/vnd.oci.image.index.v1+json",
             "repository": "demo/app", "tag": "v1"}, "request": {"host": "127.0.0.1:5000"}},
            {"action": "push", "target": {"mediaType": "application/vnd.oci.image.index.v1+json",
             "repository": "demo/app", "tag": "latest"}, "request": {"host": "127.0.0.1:5000"}}
        ]});
        assert_eq!(refs(envelope), ["127.0.0.1:5000/demo/app:latest"]);
    }

    #[test]
    fn docker_hub_harbor_and_quay() {
        let hub = json!({"push_data": {"tag": "1.25", "pusher": "me"}, "repository": {"repo_name": "library/nginx"}});
        assert_eq!(refs(hub), ["docker.io/library/nginx:1.25"]);
        let harbor = json!({"type": "PUSH_ARTIFACT", "event_data": {"resources": [
            {"digest": "sha256:1", "tag": "latest", "resource_url": "hub.harbor.com/test-webhook/debian:latest"}]}});
        assert_eq!(refs(harbor), ["hub.harbor.com/test-webhook/debian:latest"]);
        let pull = json!({"type": "PULL_ARTIFACT", "event_data": {"resources": []}});
        assert!(refs(pull).is_empty());
        let quay = json!({"docker_url": "quay.io/ns/app", "updated_tags": ["latest", "v2"]});
        assert_eq!(refs(quay), ["quay.io/ns/app:latest", "quay.io/ns/app:v2"]);
        let old_quay = json!({"docker_url": "quay.io/ns/app", "updated_tags": {"latest": "abc"}});
        assert_eq!(refs(old_quay), ["quay.io/ns/app:latest"]);
    }

    #[test]
    fn unknown_shapes_and_bad_references_are_refused_or_dropped() {
        assert!(pushed_references(b"{\"hello\": 1}").is_err());
        assert!(pushed_references(b"not json").is_err());
        let bad = json!({"push_data": {"tag": "bad tag"}, "repository": {"repo_name": "x"}});
        assert!(refs(bad).is_empty());
    }
}
