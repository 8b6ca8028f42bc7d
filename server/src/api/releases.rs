//! A fleet's releases: immutable target states, every tag pinned once, when the release
//! is made. The body is a target state's `{"apps": …}`, or a docker-compose file
//! (`Content-Type: application/yaml`).

use super::auth::Caller;
use super::fleets::known_fleet;
use super::http::{Request, Response};
use super::Api;
use crate::pinning::pin_target_state;
use crate::registry_auth::REGISTRY_AUTH_KEY;
use crate::store::Release;
use crate::targets::followed_references;
use crate::timefmt::rfc3339_now;
use crate::Error;
use pinion_model::TargetState;
use serde_json::{json, Value};

/// `POST /fleets/{fleet}/releases[?allowTags=true]`.
pub(super) fn create(api: &Api, caller: &Caller, request: &Request, fleet: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let fleet = known_fleet(api, fleet)?;
    let mut state = release_body(request, &fleet.name)?;
    check_release(&state)?;
    if state.extra.contains_key(REGISTRY_AUTH_KEY) {
        return Err(Error::BadRequest {
            reason: format!(
                "{REGISTRY_AUTH_KEY} is added by the server from stored registry credentials, not set in a release"
            ),
        });
    }
    let allow_tags = request.query_value("allowTags").is_some_and(|v| v == "true" || v == "1");
    let summary = pin_target_state(&mut state, api.resolver.as_ref(), api.resolve_deadline, &rfc3339_now())?;
    if summary.fallback > 0 && !allow_tags {
        return Err(Error::Unprocessable {
            reason: format!(
                "{} of {} images could not be pinned to a digest ({}): a release is frozen to digests; \
                 add ?allowTags=true to make it with their tags",
                summary.fallback,
                summary.total,
                summary.warnings.join("; ")
            ),
        });
    }
    let json = serde_json::to_string(&state)
        .map_err(|e| Error::BadRequest { reason: format!("the release cannot be stored: {e}") })?;
    let references = followed_references(&state);
    let note = request.query_value("note").filter(|n| n.len() <= 200 && crate::text::is_printable(n));
    let id = api.store.create_release(&fleet.name, &json, &references, "operator", note.as_deref())?;
    log::info!(
        "fleet {}: release {id} created ({} images, {} pinned)",
        fleet.name,
        summary.total,
        summary.resolved + summary.pinned + summary.cached
    );
    let mut event =
        crate::fleets::event(&fleet.name, "release-created", format!("release {id} created by the operator"));
    event.release = Some(id);
    api.store.record_events(&[event])?;
    let release =
        api.store.release(&fleet.name, id)?.ok_or_else(|| Error::NotFound { what: format!("release {id}") })?;
    let mut answer = release_json(&release, true);
    answer["resolution"] = serde_json::to_value(&summary).unwrap_or_default();
    Ok(Response::json(201, &answer))
}

/// A release runs something: at least one service, and no keys a target state does not
/// have (a misspelt `"app"` would otherwise make an empty release that clears every device).
fn check_release(state: &TargetState) -> Result<(), Error> {
    if let Some(key) = state.extra.keys().next() {
        let shown: String = key.chars().take(40).collect();
        return Err(Error::Unprocessable { reason: format!("a release has \"apps\" and \"config\", not {shown:?}") });
    }
    let services: usize = state.apps.iter().map(|(_, app)| app.services.iter().count()).sum();
    if services == 0 {
        return Err(Error::Unprocessable {
            reason: "a release needs at least one service (\"apps\": {\"<id>\": {\"services\": {…}}})".into(),
        });
    }
    Ok(())
}

/// The body as a target state: JSON, or a compose file.
fn release_body(request: &Request, fleet: &str) -> Result<TargetState, Error> {
    let content_type = request.header("content-type").unwrap_or("").to_ascii_lowercase();
    let media = content_type.split(';').next().unwrap_or("").trim();
    if matches!(media, "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml") {
        let text = std::str::from_utf8(&request.body)
            .map_err(|_| Error::BadRequest { reason: "the compose file is not UTF-8".into() })?;
        let value = crate::compose::target_from_compose(text, fleet)?;
        return serde_json::from_value(value).map_err(|e| Error::Unprocessable {
            reason: format!("the compose file does not make a target state: {e}"),
        });
    }
    request.json()
}

/// `GET /fleets/{fleet}/releases[?before=&limit=]`: newest first, without their apps.
pub(super) fn list(api: &Api, caller: &Caller, request: &Request, fleet: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let fleet = known_fleet(api, fleet)?;
    let limit = request.query_number("limit", 50, 1..=1000)?;
    let before = match request.query_value("before") {
        None => None,
        Some(_) => Some(request.query_number("before", 0, 1..=i64::MAX as usize)? as u64),
    };
    let releases: Vec<Value> =
        api.store.releases(&fleet.name, before, limit)?.iter().map(|r| release_json(r, false)).collect();
    Ok(Response::json(200, &json!({"fleet": fleet.name, "current": fleet.current_release, "releases": releases})))
}

/// `GET /fleets/{fleet}/releases/{id}`: one release with its pinned apps.
pub(super) fn get(api: &Api, caller: &Caller, fleet: &str, id: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let fleet = known_fleet(api, fleet)?;
    let id = release_id(id)?;
    let release = api
        .store
        .release(&fleet.name, id)?
        .ok_or_else(|| Error::NotFound { what: format!("release {id} of fleet {}", fleet.name) })?;
    Ok(Response::json(200, &release_json(&release, true)))
}

/// A release number from a path.
pub(super) fn release_id(text: &str) -> Result<u64, Error> {
    number(text)
        .ok_or_else(|| Error::NotFound { what: format!("release {}", text.chars().take(40).collect::<String>()) })
}

/// A release or rollout number as a path writes it: digits only (no `+1`, no `01`).
pub(super) fn number(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    digits.then(|| text.parse::<u64>().ok()).flatten().filter(|n| *n <= i64::MAX as u64)
}

fn release_json(release: &Release, with_state: bool) -> Value {
    let mut answer = json!({
        "id": release.id,
        "fleet": release.fleet,
        "source": release.source,
        "note": release.note,
        "references": release.references,
        "createdAt": release.created_at,
    });
    if with_state {
        let state: Value = serde_json::from_str(&release.state).unwrap_or_default();
        answer["apps"] = state.get("apps").cloned().unwrap_or_else(|| json!({}));
        if let Some(config) = state.get("config") {
            answer["config"] = config.clone();
        }
    }
    answer
}
