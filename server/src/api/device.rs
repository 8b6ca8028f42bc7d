//! The routes agents call: poll the target state (ETag, answered from the stored body),
//! report the current state (plain or gzip JSON), and register with a provisioning key.

use super::auth::{authenticate, presented_key, Caller};
use super::http::{etag_matches, Request, Response};
use super::{device_id, Api};
use crate::keys::hash_secret;
use crate::registry_auth::with_registry_auth;
use crate::store::NewRegistration;
use crate::targets::poll_answer;
use crate::Error;
use pinion_model::{CurrentState, TargetState};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// `GET /device/{uuid}/state`: 304 when `If-None-Match` names the stored ETag, without
/// reading, parsing or serializing the state; an unchanged poll of a key seen before is
/// answered from memory, without the store (`poll_cache`). The credentials of the
/// registries its target uses are added here, never stored in the answer
/// (`registry_auth`).
pub(super) fn poll(api: &Api, request: &Request, uuid: &str) -> Result<Response, Error> {
    // Read before anything else: a write after this outdates what this poll remembers.
    let generation = api.store.poll_generation();
    let key_hash = presented_key(request).map(hash_secret);
    let if_none_match = request.header("if-none-match");
    if let (Some(generation), Some(key_hash), Some(if_none_match)) = (generation, &key_hash, if_none_match) {
        if let Some(etag) = api.poll_cache.etag(key_hash, uuid, generation) {
            if etag_matches(if_none_match, &etag) {
                return Ok(Response::empty(304).with_header("ETag", etag));
            }
        }
    }
    let caller = authenticate(api, request)?;
    let uuid = device_id(uuid)?;
    caller.require_device(uuid)?;
    let answer = match api.store.poll(uuid)? {
        Some(answer) => answer,
        None => poll_answer(uuid, &TargetState::default()),
    };
    // The credentials of the registries its target pulls from, for this device only.
    let answer = with_registry_auth(answer, &api.store.device_registry_credentials(uuid)?);
    if let (Some(generation), Some(key_hash), Caller::Device(_)) = (generation, &key_hash, &caller) {
        api.poll_cache.remember(key_hash, uuid, &answer.etag, generation);
    }
    if if_none_match.is_some_and(|inm| etag_matches(inm, &answer.etag)) {
        return Ok(Response::empty(304).with_header("ETag", answer.etag));
    }
    Ok(Response::raw_json(200, answer.body.into_bytes())
        .with_header("ETag", answer.etag)
        .with_header("Cache-Control", "no-cache"))
}

/// `PATCH /device/state`: `{"<uuid>": {current state}}`, only for the caller's own uuid.
pub(super) fn report(api: &Api, caller: &Caller, request: &Request) -> Result<Response, Error> {
    let own = caller.device()?;
    let body: Map<String, Value> = request.json()?;
    if body.is_empty() {
        return Err(Error::BadRequest { reason: "the report names no device: expected {\"<uuid>\": {…}}".into() });
    }
    let mut reports = Vec::with_capacity(body.len());
    for (uuid, state) in body {
        device_id(&uuid)?;
        if uuid != own {
            return Err(Error::Forbidden {
                reason: format!("the key of device {own} cannot report for device {uuid}"),
            });
        }
        let state: CurrentState = serde_json::from_value(state)
            .map_err(|e| Error::BadRequest { reason: format!("the report for {uuid} is not a device state: {e}") })?;
        reports.push((uuid, state));
    }
    for (uuid, state) in reports {
        let json = serde_json::to_string(&state).unwrap_or_default();
        api.store.set_current_state(&uuid, &json)?;
    }
    Ok(Response::json(200, &json!({"status": "ok"})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Registration {
    uuid: String,
    device_name: Option<String>,
    device_type: Option<String>,
    device_api_key: String,
}

/// Shortest device key accepted: 128 bits as hex. Agents make 256-bit keys.
const MIN_DEVICE_KEY_LEN: usize = 32;

/// `POST /device/register` with a provisioning key: stores the device and the hash of the
/// key the agent made. A device registers once; a second attempt is a conflict.
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
    let device = api.store.register_device(&NewRegistration {
        uuid: registration.uuid,
        device_name: registration.device_name,
        device_type: registration.device_type,
        key_hash: hash_secret(&registration.device_api_key),
        provisioning_key_id: key.map(|k| k.id.clone()).unwrap_or_else(|| "admin".into()),
    })?;
    log::info!("device {} registered", device.uuid);
    Ok(Response::json(
        201,
        &json!({
            "uuid": device.uuid,
            "deviceName": device.device_name,
            "deviceType": device.device_type,
            "registeredAt": device.registered_at,
        }),
    ))
}
