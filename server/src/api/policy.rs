//! The operator's routes for update policies: read, set and remove a device's own policy
//! (without one it follows the server default), and list the updates a policy holds
//! back. Changing a policy reschedules what is pending under the new one.

use super::auth::Caller;
use super::http::{Request, Response};
use super::{device_id, known_device, Api};
use crate::policy::{decide, Decision, UpdatePolicy};
use crate::store::PendingUpdate;
use crate::timefmt::rfc3339;
use crate::Error;
use jiff::Timestamp;
use serde_json::{json, Value};

/// `GET /devices/{uuid}/update-policy`: the policy in force and where it comes from.
pub(super) fn get(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    known_device(api, uuid)?;
    Ok(Response::json(200, &policy_json(api, uuid)?))
}

/// `PUT /devices/{uuid}/update-policy`: the device's own policy, validated; answers as `GET`.
pub(super) fn set(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    known_device(api, uuid)?;
    // Through `Value` so that the message names the field without a line and column.
    let body: Value = request.json()?;
    let policy: UpdatePolicy = serde_json::from_value(body)
        .map_err(|e| Error::BadRequest { reason: format!("invalid update policy: {e}") })?;
    api.store.set_update_policy(uuid, &policy)?;
    let rescheduled = reschedule(api, uuid, &policy, Timestamp::now())?;
    log::info!("device {uuid}: update policy set ({rescheduled} pending updates rescheduled)");
    Ok(Response::json(200, &policy_json(api, uuid)?))
}

/// `DELETE /devices/{uuid}/update-policy`: back to the server default; answers as `GET`.
pub(super) fn delete(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    known_device(api, uuid)?;
    if api.store.delete_update_policy(uuid)? {
        let rescheduled = reschedule(api, uuid, &api.default_policy, Timestamp::now())?;
        log::info!(
            "device {uuid}: update policy removed, the default applies ({rescheduled} pending updates rescheduled)"
        );
    }
    Ok(Response::json(200, &policy_json(api, uuid)?))
}

/// `GET /devices/{uuid}/pending-updates`: moved tags held back, and why.
pub(super) fn pending(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    known_device(api, uuid)?;
    let now = Timestamp::now().as_second();
    let pending: Vec<Value> = api.store.pending_updates(uuid)?.iter().map(|p| pending_json(p, now)).collect();
    Ok(Response::json(200, &json!({"uuid": uuid, "pendingUpdates": pending})))
}

/// The policy in force for `uuid`: its own, its fleet's, or the server default.
fn effective_policy(api: &Api, uuid: &str) -> Result<(UpdatePolicy, &'static str), Error> {
    crate::fleets::effective_policy(api.store.as_ref(), uuid, &api.default_policy)
}

fn policy_json(api: &Api, uuid: &str) -> Result<Value, Error> {
    let (policy, source) = effective_policy(api, uuid)?;
    Ok(json!({"uuid": uuid, "policy": policy, "source": source}))
}

fn pending_json(pending: &PendingUpdate, now: i64) -> Value {
    let reason = match pending.apply_after {
        None => "autoUpdate is off",
        Some(at) if at <= now => "update window open",
        Some(_) => "outside update window",
    };
    json!({
        "reference": pending.reference,
        "digest": pending.digest,
        "detectedAt": pending.detected_at,
        "applyAfter": pending.apply_after.map(|at| rfc3339(at.max(0) as u64)),
        "reason": reason,
    })
}

/// Re-decides each pending update of `uuid` under `policy`: a window removed or opened
/// makes them due now (the refresher applies them at its next check), a new window
/// moves their time, `autoUpdate` off leaves them recorded only. Returns how many.
fn reschedule(api: &Api, uuid: &str, policy: &UpdatePolicy, now: Timestamp) -> Result<usize, Error> {
    let apply_after = match decide(policy, now) {
        Decision::ApplyNow => Some(now.as_second()),
        Decision::HoldUntil(opening) => Some(opening.as_second()),
        Decision::RecordOnly => None,
    };
    let pending = api.store.pending_updates(uuid)?;
    for update in &pending {
        api.store.add_pending_update(&PendingUpdate { apply_after, ..update.clone() })?;
    }
    Ok(pending.len())
}
