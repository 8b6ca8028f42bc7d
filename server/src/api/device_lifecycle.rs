//! The operator's routes for a device's life beyond its target: remove it, reset its
//! key (a gateway whose storage was replaced comes back under its uuid), and issue a
//! one-time registration token that claims one uuid (`claims.rs` says who may claim).

use super::auth::Caller;
use super::http::{Request, Response};
use super::operator::{issue_provisioning_key, NewProvisioningKey};
use super::{device_id, known_device, Api};
use crate::store::Reopen;
use crate::timefmt::{rfc3339, unix_now};
use crate::Error;
use serde::Deserialize;
use serde_json::json;

/// `DELETE /devices/{uuid}`: the device, its key, target versions, reports, logs,
/// metrics, policy, registration tokens and the registry credentials scoped to it are
/// gone. Its agent's next poll gets 401 and leaves the gateway's containers as they are.
pub(super) fn delete(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    if !api.store.delete_device(uuid)? {
        return Err(Error::NotFound { what: format!("device {uuid}") });
    }
    api.presence.forget(uuid);
    log::info!("device {uuid} deleted");
    Ok(Response::json(200, &json!({"status": "ok", "uuid": uuid})))
}

/// Hours a reset device may be registered again by the provisioning key that registered
/// it, unless the operator says otherwise.
const DEFAULT_OPEN_HOURS: u64 = 24;
/// The longest it may be reopened for: a week.
const MAX_OPEN_HOURS: u64 = 7 * 24;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyReset {
    open_for_hours: Option<u64>,
    /// The id of another provisioning key to reopen it to.
    provisioning_key: Option<String>,
}

/// `POST /devices/{uuid}/key/reset`: the device's key stops working now, and its next
/// registration sets a new one: with a registration token for it, or within
/// `openForHours` (a day by default; 0: not at all) with the provisioning key that
/// registered it, or the one named by id in `provisioningKey` (a gateway whose storage
/// was replaced comes back with the fleet's key). No other key: one that is on every
/// gateway of a fleet must not claim it later. Target, history and reports are kept.
pub(super) fn reset_key(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let wanted: KeyReset = request.json_or_default()?;
    let hours = wanted.open_for_hours.unwrap_or(DEFAULT_OPEN_HOURS);
    if hours > MAX_OPEN_HOURS {
        return Err(Error::BadRequest { reason: format!("openForHours must be at most {MAX_OPEN_HOURS}") });
    }
    if let Some(id) = &wanted.provisioning_key {
        let usable = api.store.provisioning_keys()?.into_iter().any(|k| &k.id == id && k.revoked_at.is_none());
        if !usable || hours == 0 {
            return Err(Error::BadRequest {
                reason: format!(
                    "provisioningKey {id:?} must be a provisioning key that is not revoked, with openForHours > 0"
                ),
            });
        }
    }
    let device = known_device(api, uuid)?;
    if device.registered_at.is_none() {
        return Err(Error::Conflict {
            reason: format!(
                "device {uuid} never registered: it has no key to reset; a registration token \
                 (POST /api/v1/devices/{uuid}/registration-token) registers it"
            ),
        });
    }
    let reopen = (hours > 0)
        .then(|| Reopen { until: rfc3339(unix_now() + hours * 3600), key_id: wanted.provisioning_key.clone() });
    if !api.store.reset_device_key(uuid, reopen.as_ref())? {
        return Err(Error::NotFound { what: format!("device {uuid}") });
    }
    let message = match &reopen {
        None => {
            log::info!("device {uuid}: key reset; a registration token sets a new one");
            "the device's key no longer works; a registration token for it sets a new one".to_string()
        }
        Some(reopen) => {
            let by = match &reopen.key_id {
                Some(id) => format!("provisioning key {id}"),
                None => "the provisioning key that registered it".to_string(),
            };
            log::info!("device {uuid}: key reset; {by} may register it until {}", reopen.until);
            format!(
                "the device's key no longer works; its next registration sets a new one: with {by} until {}, \
                 with a registration token for it at any time",
                reopen.until
            )
        }
    };
    let open_until = reopen.map(|r| r.until);
    Ok(Response::json(200, &json!({"status": "ok", "uuid": uuid, "openUntil": open_until, "message": message})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenRequest {
    description: Option<String>,
    expires_in_hours: Option<u64>,
}

/// `POST /devices/{uuid}/registration-token`: a provisioning key for this uuid only,
/// spent by the registration it makes, good for a week unless `expiresInHours` says
/// otherwise. The uuid is reserved from now on (created if new): no other provisioning
/// key can register it first.
pub(super) fn registration_token(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let wanted: TokenRequest = request.json_or_default()?;
    issue_provisioning_key(
        api,
        NewProvisioningKey {
            description: wanted.description,
            device: Some(uuid.to_string()),
            single_use: true,
            expires_in_hours: wanted.expires_in_hours,
            fleet: None,
        },
    )
}
