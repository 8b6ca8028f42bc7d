//! The operator's routes for a device's life beyond its target: remove it, reset its
//! key (a gateway whose storage was replaced comes back under its uuid), and issue a
//! one-time registration token that claims one uuid (`claims.rs` says who may claim).

use super::auth::Caller;
use super::http::{Request, Response};
use super::operator::{issue_provisioning_key, NewProvisioningKey};
use super::{device_id, Api};
use crate::timefmt::{rfc3339, unix_now};
use crate::Error;
use serde::Deserialize;
use serde_json::json;

/// `DELETE /devices/{uuid}`: the device, its key, target versions, reports, logs,
/// metrics, policy and registration tokens are gone. Its agent's next poll gets 401 and
/// leaves the gateway's containers as they are.
pub(super) fn delete(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    if !api.store.delete_device(uuid)? {
        return Err(Error::NotFound { what: format!("device {uuid}") });
    }
    log::info!("device {uuid} deleted");
    Ok(Response::json(200, &json!({"status": "ok", "uuid": uuid})))
}

/// Hours a reset device may be registered with any provisioning key, unless the
/// operator says otherwise.
const DEFAULT_OPEN_HOURS: u64 = 24;
/// The longest it may be opened for: a week.
const MAX_OPEN_HOURS: u64 = 7 * 24;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyReset {
    open_for_hours: Option<u64>,
}

/// `POST /devices/{uuid}/key/reset`: the device's key stops working now; its next
/// registration sets a new one: within `openForHours` (a day by default; 0: not at all)
/// with any provisioning key, as a gateway whose storage was replaced registers with the
/// fleet's key, and always with a registration token for it. Target, history and
/// reports are kept.
pub(super) fn reset_key(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let wanted: KeyReset = if request.body.is_empty() { Default::default() } else { request.json()? };
    let hours = wanted.open_for_hours.unwrap_or(DEFAULT_OPEN_HOURS);
    if hours > MAX_OPEN_HOURS {
        return Err(Error::BadRequest { reason: format!("openForHours must be at most {MAX_OPEN_HOURS}") });
    }
    let open_until = rfc3339(unix_now() + hours * 3600);
    if !api.store.reset_device_key(uuid, &open_until)? {
        return Err(Error::NotFound { what: format!("device {uuid}") });
    }
    log::info!("device {uuid}: key reset; any provisioning key may register it until {open_until}");
    let message = match hours {
        0 => "the device's key no longer works; a registration token for it sets a new one".to_string(),
        _ => format!(
            "the device's key no longer works; its next registration sets a new one: with any provisioning key \
             until {open_until}, with a registration token for it after that"
        ),
    };
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
    let wanted: TokenRequest = if request.body.is_empty() { Default::default() } else { request.json()? };
    let wanted = NewProvisioningKey {
        description: wanted.description,
        device: Some(uuid.to_string()),
        single_use: true,
        expires_in_hours: wanted.expires_in_hours,
    };
    wanted.checked_hours()?;
    if let Some(device) = api.store.device(uuid)? {
        if device.registered && device.registration_complete {
            return Err(Error::Conflict {
                reason: format!(
                    "device {uuid} is registered; reset its key first (POST /api/v1/devices/{uuid}/key/reset)"
                ),
            });
        }
    }
    issue_provisioning_key(api, wanted)
}
