//! The routes an operator calls with the admin token: set, read and clear a device's
//! target state (setting pins every tag), list devices, read what a device reported,
//! and manage provisioning keys.

use super::auth::Caller;
use super::http::{Request, Response};
use super::{device_id, known_device, Api};
use crate::keys::{hash_secret, new_id, new_secret};
use crate::pinning::{pin_target_state, ResolveDigests, Uncached};
use crate::registry_auth::REGISTRY_AUTH_KEY;
use crate::store::{DeviceRecord, ProvisioningKey};
use crate::targets::store_target;
use crate::telemetry::with_last_known;
use crate::timefmt::rfc3339_now;
use crate::Error;
use pinion_model::TargetState;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// `POST|PUT /devices/{uuid}/target-state`: pins, stores a new version, answers with it.
pub(super) fn set_target(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let mut state: TargetState = request.json()?;
    if state.extra.contains_key(REGISTRY_AUTH_KEY) {
        return Err(Error::BadRequest {
            reason: format!(
                "{REGISTRY_AUTH_KEY} is added by the server from stored registry credentials \
                 (PUT /api/v1/registries/{{host}}/credentials), not set in a target state"
            ),
        });
    }
    // A digest younger than the cache TTL answers without network, unless the client
    // asks for the registry's answer now (`Cache-Control: no-cache`).
    let no_cache = request.header("cache-control").is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"));
    let uncached = Uncached(api.resolver.as_ref());
    let resolver: &dyn ResolveDigests = if no_cache { &uncached } else { api.resolver.as_ref() };
    let summary = pin_target_state(&mut state, resolver, api.resolve_deadline, &rfc3339_now())?;
    for warning in &summary.warnings {
        log::warn!("device {uuid}: {warning}");
    }
    // The operator's target applies at once, whatever the update policy; it supersedes
    // the updates the policy was holding back (dropped in the same write).
    let version = store_target(api.store.as_ref(), uuid, &state, "operator", None)?;
    log::info!(
        "device {uuid}: target version {version} ({} resolved, {} pinned, {} cached, {} fallback)",
        summary.resolved,
        summary.pinned,
        summary.cached,
        summary.fallback
    );
    let mut answer = state_object(&state);
    answer.insert("status".into(), "ok".into());
    answer.insert("uuid".into(), uuid.into());
    answer.insert("version".into(), version.into());
    answer.insert("resolution".into(), serde_json::to_value(&summary).unwrap_or_default());
    Ok(Response::json(200, &answer))
}

/// `GET /devices/{uuid}/target-state`: the stored (pinned) state and its version.
pub(super) fn get_target(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let device = known_device(api, uuid)?;
    let mut answer = match api.store.target(uuid)? {
        Some(target) => {
            let state: TargetState = serde_json::from_str(&target.state).map_err(|e| Error::Store {
                op: "reading a target state",
                reason: format!("stored state of {uuid} v{} is not valid: {e}", target.version),
            })?;
            let mut answer = state_object(&state);
            answer.insert("updatedAt".into(), target.created_at.into());
            answer
        }
        None => state_object(&TargetState::default()),
    };
    answer.insert("uuid".into(), uuid.into());
    answer.insert("version".into(), device.target_version.into());
    answer.insert("source".into(), super::fleets::target_source(api, uuid)?);
    Ok(Response::json(200, &answer))
}

/// `DELETE /devices/{uuid}/target-state`: a new, empty version; the device removes its apps.
pub(super) fn delete_target(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    known_device(api, uuid)?;
    let version = store_target(api.store.as_ref(), uuid, &TargetState::default(), "operator", None)?;
    log::info!("device {uuid}: target cleared (version {version})");
    Ok(Response::json(200, &json!({"status": "ok", "uuid": uuid, "version": version})))
}

/// `GET /devices/{uuid}/current-state`: the device's last report as it sent it, the
/// system facts and metrics it left out filled in from the last known ones, which are
/// also under `system_info` (as the platform's original server answers).
pub(super) fn get_current(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let current = api.store.current_report(uuid)?.ok_or_else(|| Error::NotFound { what: format!("device {uuid}") })?;
    let system_info: Map<String, Value> =
        current.system_info.and_then(|info| serde_json::from_str(&info).ok()).unwrap_or_default();
    let mut answer = match current.state {
        Some((state, reported_at)) => {
            let report: Map<String, Value> = serde_json::from_str(&state).unwrap_or_default();
            let mut answer = with_last_known(report, &system_info);
            answer.insert("reportedAt".into(), reported_at.into());
            answer
        }
        None => {
            let mut answer = state_object(&TargetState::default());
            answer.insert("reportedAt".into(), Value::Null);
            answer
        }
    };
    answer.insert("system_info".into(), system_info.into());
    answer.insert("uuid".into(), uuid.into());
    Ok(Response::json(200, &answer))
}

/// `GET /devices[?fleet=…][&label=key=value]`.
pub(super) fn list_devices(api: &Api, caller: &Caller, request: &Request) -> Result<Response, Error> {
    caller.require_admin()?;
    let fleet = request.query_value("fleet");
    if let Some(name) = &fleet {
        super::fleets::fleet_name(name)?;
    }
    let label = match request.query_value("label") {
        None => None,
        Some(pair) => match pair.split_once('=') {
            Some((key, value)) => Some((key.to_string(), value.to_string())),
            None => return Err(Error::BadRequest { reason: format!("label must be key=value, not {pair:?}") }),
        },
    };
    let devices: Vec<Value> = api
        .store
        .devices()?
        .iter()
        .filter(|d| fleet.as_ref().is_none_or(|f| d.fleet.as_ref() == Some(f)))
        .filter(|d| label.as_ref().is_none_or(|(k, v)| d.labels.get(k) == Some(v)))
        .map(device_json)
        .collect();
    Ok(Response::json(200, &json!({"devices": devices})))
}

pub(super) fn get_device(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    Ok(Response::json(200, &device_json(&known_device(api, uuid)?)))
}

/// Hours a provisioning key bound to a device stays good when the operator does not say.
pub(super) const DEFAULT_BOUND_KEY_HOURS: u64 = 7 * 24;
/// The longest an expiring key may be made for: a year.
const MAX_KEY_HOURS: u64 = 366 * 24;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct NewProvisioningKey {
    pub description: Option<String>,
    /// Binds the key to one device: it registers that uuid only, even one the operator
    /// prepared (which an unbound key cannot claim).
    pub device: Option<String>,
    /// Revoked by the first registration it makes.
    #[serde(default)]
    pub single_use: bool,
    /// Registers nothing after this many hours; a bound key defaults to a week.
    pub expires_in_hours: Option<u64>,
    /// Every device it registers joins this fleet.
    pub fleet: Option<String>,
}

/// `POST /provisioning-keys`: the secret is in this answer and nowhere else, ever.
pub(super) fn create_provisioning_key(api: &Api, caller: &Caller, request: &Request) -> Result<Response, Error> {
    caller.require_admin()?;
    let wanted: NewProvisioningKey = request.json_or_default()?;
    issue_provisioning_key(api, wanted)
}

/// Makes a provisioning key as asked and answers 201 with its secret.
pub(super) fn issue_provisioning_key(api: &Api, wanted: NewProvisioningKey) -> Result<Response, Error> {
    let hours = wanted.checked_hours()?;
    // A key for a device that has completed its registration would claim nothing.
    if let Some(device) = wanted.device.as_deref().map(|uuid| api.store.device(uuid)).transpose()?.flatten() {
        if device.registered && device.registration_complete {
            let uuid = &device.uuid;
            return Err(Error::Conflict {
                reason: format!(
                    "device {uuid} is registered; reset its key first (POST /api/v1/devices/{uuid}/key/reset)"
                ),
            });
        }
    }
    if let Some(fleet) = &wanted.fleet {
        super::fleets::known_fleet(api, fleet)?;
    }
    let secret = new_secret();
    let now = crate::timefmt::unix_now();
    let key = ProvisioningKey {
        id: new_id(),
        description: wanted.description,
        created_at: crate::timefmt::rfc3339(now),
        revoked_at: None,
        devices_registered: 0,
        device: wanted.device,
        single_use: wanted.single_use,
        expires_at: hours.map(|h| crate::timefmt::rfc3339(now + h * 3600)),
        fleet: wanted.fleet,
    };
    api.store.create_provisioning_key(&key, &hash_secret(&secret))?;
    match &key.device {
        Some(device) => log::info!("provisioning key {} created for device {device}", key.id),
        None => log::info!("provisioning key {} created", key.id),
    }
    let mut answer = key_json(&key);
    answer["key"] = secret.into();
    Ok(Response::json(201, &answer))
}

impl NewProvisioningKey {
    /// The hours the key is good for (`None`: until revoked), once every field is checked.
    pub(super) fn checked_hours(&self) -> Result<Option<u64>, Error> {
        if let Some(device) = &self.device {
            device_id(device)?;
        }
        if let Some(description) = &self.description {
            if description.chars().count() > 256 || !crate::text::is_printable(description) {
                return Err(Error::BadRequest {
                    reason: "description must be at most 256 printable characters".into(),
                });
            }
        }
        let hours = match (self.expires_in_hours, &self.device) {
            (Some(0), _) => return Err(Error::BadRequest { reason: "expiresInHours must be at least 1".into() }),
            (Some(hours), _) if hours > MAX_KEY_HOURS => {
                return Err(Error::BadRequest { reason: format!("expiresInHours must be at most {MAX_KEY_HOURS}") })
            }
            (Some(hours), _) => Some(hours),
            (None, Some(_)) => Some(DEFAULT_BOUND_KEY_HOURS),
            (None, None) => None,
        };
        Ok(hours)
    }
}

pub(super) fn list_provisioning_keys(api: &Api, caller: &Caller) -> Result<Response, Error> {
    caller.require_admin()?;
    let keys: Vec<Value> = api.store.provisioning_keys()?.iter().map(key_json).collect();
    Ok(Response::json(200, &json!({"provisioningKeys": keys})))
}

pub(super) fn revoke_provisioning_key(api: &Api, caller: &Caller, id: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    if !api.store.revoke_provisioning_key(id)? {
        return Err(Error::NotFound { what: format!("provisioning key {id}") });
    }
    log::info!("provisioning key {id} revoked");
    Ok(Response::json(200, &json!({"status": "ok", "id": id})))
}

/// A target state as a JSON object, its unknown fields included.
fn state_object(state: &TargetState) -> Map<String, Value> {
    match serde_json::to_value(state) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn device_json(device: &DeviceRecord) -> Value {
    json!({
        "id": device.id,
        "uuid": device.uuid,
        "deviceName": device.device_name,
        "deviceType": device.device_type,
        "registered": device.registered,
        "createdAt": device.created_at,
        "registeredAt": device.registered_at,
        "targetVersion": device.target_version,
        "lastReportAt": device.last_report_at,
        "fleet": device.fleet,
        "labels": device.labels,
    })
}

fn key_json(key: &ProvisioningKey) -> Value {
    json!({
        "id": key.id,
        "description": key.description,
        "createdAt": key.created_at,
        "revokedAt": key.revoked_at,
        "devicesRegistered": key.devices_registered,
        "device": key.device,
        "singleUse": key.single_use,
        "expiresAt": key.expires_at,
        "fleet": key.fleet,
    })
}
