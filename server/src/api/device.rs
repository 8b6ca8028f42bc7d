//! The routes agents call to stay in step: poll the target state (ETag, answered from the
//! stored body) and report the current state (plain or gzip JSON). Registration is in
//! `registration.rs`, logs in `telemetry.rs`.

use super::auth::{authenticate, presented_key, Caller};
use super::http::{etag_matches, Request, Response};
use super::{device_id, Api};
use crate::keys::hash_secret;
use crate::registry_auth::with_registry_auth;
use crate::store::NewReport;
use crate::targets::poll_answer;
use crate::telemetry::split_report;
use crate::timefmt::unix_now;
use crate::Error;
use pinion_model::{CurrentState, TargetState};
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
                api.presence.polled(uuid, std::time::Instant::now());
                return Ok(Response::empty(304).with_header("ETag", etag));
            }
        }
    }
    let caller = authenticate(api, request)?;
    let uuid = device_id(uuid)?;
    caller.require_device(uuid)?;
    if let (Caller::Device(owner), Some(key_hash)) = (&caller, &key_hash) {
        // The first poll with the registered key: the agent has its identity. Unless a
        // registration replaced the key since it was checked above.
        if !owner.registration_complete && !api.store.complete_registration(uuid, key_hash)? {
            return Err(Error::Unauthorized { reason: format!("the key is no longer the key of device {uuid}") });
        }
    }
    api.presence.polled(uuid, std::time::Instant::now());
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
/// System facts and metrics it leaves out keep their last known value (`telemetry`).
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
    let mut warnings = Vec::new();
    for (uuid, state) in reports {
        let parts = split_report(&state.extra);
        let json = serde_json::to_string(&state).unwrap_or_default();
        let known = Value::Object(parts.known).to_string();
        let sample = parts.sample.map(|sample| Value::Object(sample).to_string());
        let now = unix_now() as i64;
        api.store.record_report(&uuid, &NewReport { state: &json, known: &known, sample: sample.as_deref(), now })?;
        // Its report time is to the second: a second report within it must be judged too.
        api.verdicts.forget(&uuid);
        for warning in parts.warnings {
            log::warn!("device {uuid}: {warning}");
            warnings.push(warning);
        }
    }
    let mut answer = json!({"status": "ok"});
    if !warnings.is_empty() {
        answer["warnings"] = warnings.into();
    }
    Ok(Response::json(200, &answer))
}
