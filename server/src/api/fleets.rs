//! The fleet routes: fleets themselves, a device's fleet, labels and pin, and moving a
//! whole fleet to a release at once. Releases are in `releases.rs`, rollouts in
//! `rollouts.rs`.

use super::auth::Caller;
use super::http::{Request, Response};
use super::{device_id, known_device, Api};
use crate::fleets::{
    bring_device_to_release, bring_fleet_to_release, check_labels, followed_release, is_valid_fleet_name,
};
use crate::policy::UpdatePolicy;
use crate::rollout::RolloutPlan;
use crate::store::{Fleet, Membership};
use crate::timefmt::rfc3339_now;
use crate::Error;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewFleet {
    name: String,
    description: Option<String>,
    update_policy: Option<UpdatePolicy>,
    rollout_plan: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FleetChange {
    description: Option<String>,
    update_policy: Option<UpdatePolicy>,
    rollout_plan: Option<Value>,
}

/// A fleet name from a path or body, or a 400 naming the rule.
pub(super) fn fleet_name(name: &str) -> Result<&str, Error> {
    if is_valid_fleet_name(name) {
        Ok(name)
    } else {
        Err(Error::BadRequest {
            reason: format!(
                "fleet name {:?} must match [a-z0-9][a-z0-9-]{{0,62}}",
                name.chars().take(80).collect::<String>()
            ),
        })
    }
}

/// A fleet that exists, or a 404 naming it.
pub(super) fn known_fleet(api: &Api, name: &str) -> Result<Fleet, Error> {
    let name = fleet_name(name)?;
    api.store.fleet(name)?.ok_or_else(|| Error::NotFound { what: format!("fleet {name}") })
}

fn checked_description(description: Option<String>) -> Result<Option<String>, Error> {
    match description {
        Some(d) if d.len() > 1024 || !crate::text::is_printable(&d) => {
            Err(Error::BadRequest { reason: "description must be printable text of at most 1024 bytes".into() })
        }
        other => Ok(other),
    }
}

fn checked_plan(plan: Option<Value>) -> Result<Option<String>, Error> {
    plan.map(|value| RolloutPlan::from_json(value).map(|plan| serde_json::to_string(&plan).unwrap_or_default()))
        .transpose()
}

/// The plan a fleet's rollouts start from.
pub(super) fn fleet_plan(fleet: &Fleet) -> RolloutPlan {
    fleet.plan()
}

/// `POST /fleets`.
pub(super) fn create(api: &Api, caller: &Caller, request: &Request) -> Result<Response, Error> {
    caller.require_admin()?;
    let wanted: NewFleet = request.json()?;
    let fleet = Fleet {
        name: fleet_name(&wanted.name)?.to_string(),
        description: checked_description(wanted.description)?,
        update_policy: wanted.update_policy.map(|p| serde_json::to_string(&p).unwrap_or_default()),
        rollout_plan: checked_plan(wanted.rollout_plan)?,
        current_release: None,
        created_at: rfc3339_now(),
    };
    api.store.create_fleet(&fleet)?;
    log::info!("fleet {} created", fleet.name);
    Ok(Response::json(201, &fleet_json(api, &fleet, &[])))
}

/// `GET /fleets`.
pub(super) fn list(api: &Api, caller: &Caller) -> Result<Response, Error> {
    caller.require_admin()?;
    let mut fleets = Vec::new();
    for fleet in api.store.fleets()? {
        let members = api.store.fleet_members(&fleet.name)?;
        fleets.push(fleet_json(api, &fleet, &members));
    }
    Ok(Response::json(200, &json!({"fleets": fleets})))
}

/// `GET /fleets/{fleet}`: the fleet with its device counts.
pub(super) fn get(api: &Api, caller: &Caller, name: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let fleet = known_fleet(api, name)?;
    let members = api.store.fleet_members(&fleet.name)?;
    Ok(Response::json(200, &fleet_json(api, &fleet, &members)))
}

/// `PUT /fleets/{fleet}`: the fields given replace the stored ones.
pub(super) fn update(api: &Api, caller: &Caller, request: &Request, name: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let mut fleet = known_fleet(api, name)?;
    let change: FleetChange = request.json()?;
    if change.description.is_some() {
        fleet.description = checked_description(change.description)?;
    }
    if let Some(policy) = change.update_policy {
        fleet.update_policy = Some(serde_json::to_string(&policy).unwrap_or_default());
    }
    if change.rollout_plan.is_some() {
        fleet.rollout_plan = checked_plan(change.rollout_plan)?;
    }
    if !api.store.update_fleet(&fleet)? {
        return Err(Error::NotFound { what: format!("fleet {}", fleet.name) });
    }
    let members = api.store.fleet_members(&fleet.name)?;
    Ok(Response::json(200, &fleet_json(api, &fleet, &members)))
}

/// `DELETE /fleets/{fleet}`: 409 while devices remain.
pub(super) fn delete(api: &Api, caller: &Caller, name: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let name = fleet_name(name)?;
    if !api.store.delete_fleet(name)? {
        return Err(Error::NotFound { what: format!("fleet {name}") });
    }
    log::info!("fleet {name} deleted");
    Ok(Response::json(200, &json!({"status": "ok", "fleet": name})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetRelease {
    release: u64,
}

/// `PUT /fleets/{fleet}/release`: the whole fleet on a release at once, no waves; 409
/// while a rollout is active (abort it first).
pub(super) fn set_release(api: &Api, caller: &Caller, request: &Request, name: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let fleet = known_fleet(api, name)?;
    let FleetRelease { release } = request.json()?;
    let stored = api
        .store
        .release(&fleet.name, release)?
        .ok_or_else(|| Error::NotFound { what: format!("release {release} of fleet {}", fleet.name) })?;
    // Under the rollouts' lock: no rollout may start between this check and the write.
    api.with_rollouts(|_| set_release_now(api, &fleet, release, &stored.references))
}

fn set_release_now(api: &Api, fleet: &Fleet, release: u64, references: &[String]) -> Result<Response, Error> {
    if let Some(active) = api.store.active_rollouts()?.into_iter().find(|r| r.fleet == fleet.name) {
        return Err(Error::Conflict {
            reason: format!(
                "fleet {} has rollout {} {}: abort it first (POST …/rollouts/{}/abort)",
                fleet.name,
                active.id,
                active.progress.status.as_str(),
                active.id
            ),
        });
    }
    api.store.set_fleet_release(&fleet.name, release)?;
    api.store.set_fleet_references(&fleet.name, references)?;
    let moved = bring_fleet_to_release(api.store.as_ref(), &fleet.name)?;
    let message = format!("fleet moved to release {release} at once: {} devices given it", moved.len());
    log::info!("fleet {}: {message}", fleet.name);
    let mut event = crate::fleets::event(&fleet.name, "fleet-release-set", message);
    event.release = Some(release);
    api.store.record_events(&[event])?;
    Ok(Response::json(
        200,
        &json!({"status": "ok", "fleet": fleet.name, "release": release, "devicesUpdated": moved.len()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFleet {
    fleet: String,
}

/// `PUT /devices/{uuid}/fleet`: the device joins (or moves to) a fleet and follows it
/// from now on: a pin it had is dropped. `DELETE` leaves the fleet, keeping its target.
pub(super) fn set_device_fleet(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    known_device(api, uuid)?;
    let DeviceFleet { fleet } = request.json()?;
    let fleet = known_fleet(api, &fleet)?;
    let source = api.with_rollouts(|_| {
        // Already in it: nothing changes (a rollout's release and a pin stay).
        if known_device(api, uuid)?.fleet.as_deref() != Some(fleet.name.as_str()) {
            api.store.set_device_fleet(uuid, Some(&fleet.name))?;
        }
        bring_device_to_release(api.store.as_ref(), uuid)
    })?;
    log::info!("device {uuid} joined fleet {}", fleet.name);
    Ok(Response::json(200, &json!({"status": "ok", "uuid": uuid, "fleet": fleet.name, "source": source.to_json()})))
}

pub(super) fn leave_fleet(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let device = known_device(api, uuid)?;
    let Some(fleet) = device.fleet else {
        return Err(Error::NotFound { what: format!("fleet of device {uuid} (it is in none)") });
    };
    api.with_rollouts(|_| api.store.set_device_fleet(uuid, None))?;
    log::info!("device {uuid} left fleet {fleet}; it keeps its target as its own");
    Ok(Response::json(200, &json!({"status": "ok", "uuid": uuid, "left": fleet})))
}

/// `PUT /devices/{uuid}/labels`: replaces the device's labels.
pub(super) fn set_labels(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    known_device(api, uuid)?;
    let labels: BTreeMap<String, String> = request.json()?;
    check_labels(&labels)?;
    api.store.set_device_labels(uuid, &labels)?;
    Ok(Response::json(200, &json!({"status": "ok", "uuid": uuid, "labels": labels})))
}

/// `DELETE /devices/{uuid}/pin`: the device follows its fleet again.
pub(super) fn unpin(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let device = known_device(api, uuid)?;
    if device.fleet.is_none() {
        return Err(Error::Conflict {
            reason: format!("device {uuid} is in no fleet: there is nothing to follow (PUT /devices/{uuid}/fleet)"),
        });
    }
    let source = api.with_rollouts(|_| {
        api.store.unpin(uuid)?;
        bring_device_to_release(api.store.as_ref(), uuid)
    })?;
    Ok(Response::json(200, &json!({"status": "ok", "uuid": uuid, "source": source.to_json()})))
}

/// Where a device's target comes from, for its target-state answer.
pub(super) fn target_source(api: &Api, uuid: &str) -> Result<Value, Error> {
    let Some(member) = api.store.membership(uuid)? else { return Ok(json!({"kind": "device"})) };
    let fleet = match member.fleet.as_deref() {
        Some(name) => api.store.fleet(name)?,
        None => None,
    };
    Ok(source_json(&member, fleet.as_ref()))
}

/// Where `member`'s target comes from, as `GET …/target-state` says it under `source`.
pub(super) fn source_json(member: &Membership, fleet: Option<&Fleet>) -> Value {
    let mut source = followed_release(member, fleet).to_json();
    if let (Some(name), Some(object)) = (member.fleet.as_deref(), source.as_object_mut()) {
        object.entry("fleet").or_insert_with(|| name.into());
        if member.pinned {
            object.insert("pinned".into(), true.into());
        }
    }
    source
}

fn fleet_json(api: &Api, fleet: &Fleet, members: &[Membership]) -> Value {
    let now = Instant::now();
    let count = |test: &dyn Fn(&Membership) -> bool| members.iter().filter(|m| test(m)).count();
    let on_current = |m: &Membership| !m.pinned && m.rollout_release.is_none() && m.release_id == fleet.current_release;
    json!({
        "name": fleet.name,
        "description": fleet.description,
        "updatePolicy": fleet.policy(),
        "rolloutPlan": fleet.plan(),
        "release": fleet.current_release,
        "createdAt": fleet.created_at,
        "devices": {
            "total": members.len(),
            "onRelease": if fleet.current_release.is_some() { count(&on_current) } else { 0 },
            "inRollout": count(&|m| !m.pinned && m.rollout_release.is_some()),
            "pinned": count(&|m| m.pinned),
            "online": count(&|m| api.presence.online(&m.uuid, now)),
        },
    })
}
