//! Target-state history and rollback: the last versions (`--history-versions`) are kept
//! with their digests; a rollback writes a new version equal to a kept one.

use super::auth::Caller;
use super::http::{Request, Response};
use super::{device_id, Api};
use crate::store::StoredTarget;
use crate::targets::{rolled_back, store_target};
use crate::Error;
use pinion_model::TargetState;
use serde::Deserialize;
use serde_json::{json, Value};

/// `GET /devices/{uuid}/target-state/history?limit=&before=`: the kept versions, newest
/// first, with each service's image; `next` is the `before` of the following page.
pub(super) fn list(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let limit = request.query_number("limit", 50, 1..=1000)?;
    let before = match request.query_value("before") {
        None => None,
        Some(_) => Some(request.query_number("before", 0, 1..=i64::MAX as usize)? as u64),
    };
    let history = api.store.target_history(uuid, before, limit)?;
    if history.is_empty() && api.store.device(uuid)?.is_none() {
        return Err(Error::NotFound { what: format!("device {uuid}") });
    }
    let versions: Vec<Value> = history.iter().map(version_json).collect::<Result<_, _>>()?;
    let next = (history.len() == limit).then(|| history.last().map(|t| t.version)).flatten();
    Ok(Response::json(200, &json!({"uuid": uuid, "versions": versions, "next": next})))
}

fn parse(uuid: &str, target: &StoredTarget) -> Result<TargetState, Error> {
    serde_json::from_str(&target.state).map_err(|e| Error::Store {
        op: "reading a target state",
        reason: format!("stored state of {uuid} v{} is not valid: {e}", target.version),
    })
}

fn version_json(target: &StoredTarget) -> Result<Value, Error> {
    let state = parse("device", target)?;
    let mut images = Vec::new();
    for (app_key, app) in state.apps.iter() {
        for (service_key, service) in app.services.iter() {
            let resolution = service.image_resolution.as_ref();
            images.push(json!({
                "app": app.app_name.clone().unwrap_or_else(|| app_key.clone()),
                "service": service.service_name.clone().unwrap_or(service_key),
                "imageName": service.image_name,
                "requested": resolution.map(|r| r.requested.clone()),
                "digest": resolution.and_then(|r| r.digest.clone()),
            }));
        }
    }
    Ok(json!({"version": target.version, "createdAt": target.created_at, "source": target.source, "images": images}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: Option<u64>,
}

/// `POST /devices/{uuid}/target-state/rollback` `{"version": N}` (default: the version
/// before the current one): a new version equal to version N.
pub(super) fn rollback(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let wanted: RollbackRequest = request.json_or_default()?;
    let current = api.store.target(uuid)?.ok_or_else(|| Error::NotFound { what: format!("target state of {uuid}") })?;
    let version = match wanted.version {
        Some(v) => v,
        None if current.version > 1 => current.version - 1,
        None => {
            return Err(Error::Conflict { reason: format!("device {uuid} has no version before {}", current.version) })
        }
    };
    let old = api
        .store
        .target_version(uuid, version)?
        .ok_or_else(|| Error::NotFound { what: format!("target version {version} of {uuid}") })?;
    let state = rolled_back(&parse(uuid, &old)?, &parse(uuid, &current)?);
    // The operator chose this version: updates held for the one it replaces are void
    // (dropped in the same write).
    let new_version = store_target(api.store.as_ref(), uuid, &state, "rollback", Some(current.version))?;
    log::info!("device {uuid}: rolled back to version {version} as version {new_version}");
    Ok(Response::json(
        200,
        &json!({"status": "ok", "uuid": uuid, "version": new_version, "restoredVersion": version,
                "apps": state.apps, "config": state.config}),
    ))
}
