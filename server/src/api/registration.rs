//! How an agent gets its identity, in the two phases of the platform's original agent
//! (`docs/original-agent-protocol.md`): `POST /device/register` with a provisioning key
//! and the key the agent made, then `POST /device/{uuid}/key-exchange` with that key.
//! A registration is complete once the key is used (a key exchange or a poll); until
//! then the same uuid may register again with the same provisioning key, so an agent
//! that crashed between the phases recovers by restarting (`claims.rs` has the rule).

use super::auth::Caller;
use super::http::{Request, Response};
use super::{device_id, Api};
use crate::claims::Claimant;
use crate::keys::{constant_time_eq, hash_secret};
use crate::store::NewRegistration;
use crate::Error;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Shortest device key accepted: 128 bits as hex. Agents make 256-bit keys.
const MIN_DEVICE_KEY_LEN: usize = 32;
/// Longest name, type or version string a registration may carry.
const MAX_FIELD_CHARS: usize = 128;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Registration {
    uuid: String,
    device_name: Option<String>,
    device_type: Option<String>,
    device_api_key: String,
    // What the original agent adds; kept as the device's system facts.
    application_id: Option<Value>,
    mac_address: Option<String>,
    os_version: Option<String>,
    agent_version: Option<String>,
}

/// `POST /device/register`: answers 200 with what the original agent reads (`id`,
/// `uuid`, `deviceName`, `deviceType`, `createdAt`, and `mqtt`, empty: pinion has no
/// broker, and the agent leaves MQTT off). The same registration again gets the same
/// answer; who may claim an existing uuid is `claims::decide_claim`'s rule (409 for
/// everyone else, the same answer whatever the device's state; 403 for a key bound to
/// another uuid).
pub(super) fn register(api: &Api, caller: &Caller, request: &Request) -> Result<Response, Error> {
    let key = caller.require_provisioning()?;
    let registration: Registration = request.json()?;
    device_id(&registration.uuid)?;
    if registration.device_api_key.len() < MIN_DEVICE_KEY_LEN
        || registration.device_api_key.bytes().any(|b| !b.is_ascii_graphic())
    {
        return Err(Error::BadRequest {
            reason: format!("deviceApiKey must be at least {MIN_DEVICE_KEY_LEN} printable characters"),
        });
    }
    // Keys kept apart: a device key that is also a provisioning key or a token would make
    // one credential two kinds (and could break that provisioning key for everyone).
    let key_hash = hash_secret(&registration.device_api_key);
    let same = |hash: &str| constant_time_eq(hash.as_bytes(), key_hash.as_bytes());
    if same(&api.admin_token_hash)
        || api.webhook_token_hash.as_deref().is_some_and(same)
        || api.store.provisioning_key_by_hash(&key_hash)?.is_some()
    {
        return Err(Error::BadRequest {
            reason: "deviceApiKey must be a secret of the device's own, not a key or token of another kind".into(),
        });
    }
    let mut system_info = Map::new();
    for (field, stored_as, value) in [
        ("deviceName", "", &registration.device_name),
        ("deviceType", "", &registration.device_type),
        ("macAddress", "mac_address", &registration.mac_address),
        ("osVersion", "os_version", &registration.os_version),
        ("agentVersion", "agent_version", &registration.agent_version),
    ] {
        if let Some(value) = value {
            check_printable(field, value)?;
            if !stored_as.is_empty() {
                system_info.insert(stored_as.into(), value.clone().into());
            }
        }
    }
    match &registration.application_id {
        None | Some(Value::Null) => {}
        Some(id @ Value::Number(_)) => {
            system_info.insert("application_id".into(), id.clone());
        }
        Some(Value::String(id)) => {
            check_printable("applicationId", id)?;
            system_info.insert("application_id".into(), id.clone().into());
        }
        Some(_) => return Err(Error::BadRequest { reason: "applicationId must be a number or a string".into() }),
    }
    let device = api.store.register_device(&NewRegistration {
        uuid: registration.uuid,
        device_name: registration.device_name,
        device_type: registration.device_type,
        key_hash,
        claimant: match key {
            Some(key) => Claimant::Key { id: key.id.clone(), device: key.device.clone(), single_use: key.single_use },
            None => Claimant::Operator,
        },
        system_info: Some(Value::Object(system_info).to_string()),
    })?;
    log::info!("device {} registered (number {})", device.uuid, device.id);
    // Alive now: a rollout does not defer it as offline before its first poll.
    api.presence.polled(&device.uuid, std::time::Instant::now());
    // A provisioning key made for a fleet puts the devices it registers in it (not one
    // the operator has already put in a fleet).
    if let Some(fleet) = key.and_then(|k| k.fleet.as_deref()).filter(|_| device.fleet.is_none()) {
        match api.store.set_device_fleet(&device.uuid, Some(fleet)) {
            Ok(_) => {
                crate::fleets::bring_device_to_release(api.store.as_ref(), &device.uuid)?;
                log::info!("device {} joined fleet {fleet} with its provisioning key", device.uuid);
            }
            // The fleet was deleted since the key was made: the device registers all the same.
            Err(Error::NotFound { what }) => log::warn!("device {}: {what}: it joins no fleet", device.uuid),
            Err(e) => return Err(e),
        }
    }
    let mut answer = json!({
        "id": device.id,
        "uuid": device.uuid,
        "deviceName": device.device_name,
        "deviceType": device.device_type,
        "createdAt": device.created_at,
        "registeredAt": device.registered_at,
        "mqtt": {},
    });
    if let Some(application_id) = registration.application_id.filter(|id| !id.is_null()) {
        answer["applicationId"] = application_id;
    }
    Ok(Response::json(200, &answer))
}

/// Names and versions are shown to operators and written to logs: bounded and printable.
fn check_printable(field: &str, value: &str) -> Result<(), Error> {
    if value.chars().count() > MAX_FIELD_CHARS {
        return Err(Error::BadRequest { reason: format!("{field} is longer than {MAX_FIELD_CHARS} characters") });
    }
    if !crate::text::is_printable(value) {
        return Err(Error::BadRequest {
            reason: format!("{field} must not contain control or bidirectional-override characters"),
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyExchange {
    uuid: Option<String>,
    device_api_key: Option<String>,
}

/// `POST /device/{uuid}/key-exchange` with `Authorization: Bearer <device key>` and
/// `{"uuid", "deviceApiKey"}`, answered with the original's statuses: 400 when either
/// key is missing, 401 when they differ or do not match the device's key, 404 for an
/// unknown device (counted against the caller's address like a failed authentication,
/// so uuids cannot be enumerated quickly), else 200 and the registration is complete.
pub(super) fn key_exchange(api: &Api, request: &Request, uuid: &str) -> Result<Response, Error> {
    let uuid = device_id(uuid)?;
    let exchange: KeyExchange = request.json()?;
    let presented = super::auth::presented_key(request);
    let (Some(presented), Some(sent)) = (presented, exchange.device_api_key.as_deref()) else {
        return Err(Error::BadRequest {
            reason: "a key exchange needs the device key both as Authorization: Bearer and as deviceApiKey".into(),
        });
    };
    if exchange.uuid.as_deref().is_some_and(|body_uuid| body_uuid != uuid) {
        return Err(Error::BadRequest { reason: format!("the body names another device than {uuid}") });
    }
    let presented_hash = hash_secret(presented);
    if !constant_time_eq(presented_hash.as_bytes(), hash_secret(sent).as_bytes()) {
        return Err(Error::Unauthorized { reason: "the key in the body is not the key in the header".into() });
    }
    let device = api.store.device(uuid)?.ok_or_else(|| Error::NotFound { what: format!("device {uuid}") })?;
    let stored = api.store.device_key_hash(uuid)?;
    if !stored.is_some_and(|stored| constant_time_eq(stored.as_bytes(), presented_hash.as_bytes())) {
        return Err(Error::Unauthorized { reason: format!("the key is not the key of device {uuid}") });
    }
    if !device.registration_complete {
        if !api.store.complete_registration(uuid, &presented_hash)? {
            return Err(Error::Unauthorized { reason: format!("the key is no longer the key of device {uuid}") });
        }
        log::info!("device {uuid}: key exchange complete");
    }
    Ok(Response::json(
        200,
        &json!({
            "status": "ok",
            "message": "Key exchange successful",
            "device": {"id": device.id, "uuid": device.uuid, "deviceName": device.device_name},
        }),
    ))
}
