//! Rollout routes: start one (or see its waves with `dryRun`), read them with per-wave
//! counts and per-device states, pause, resume, promote and abort; and the event log.

use super::auth::Caller;
use super::fleets::{fleet_plan, known_fleet};
use super::http::{Request, Response};
use super::releases::number;
use super::{device_id, Api};
use crate::rollout::{Command, DeviceStatus, RolloutPlan};
use crate::rollout_driver::{plan_waves, run_command, start_rollout, RolloutContext, RolloutRequest};
use crate::store::{EventFilter, RolloutDeviceRow, StoredRollout};
use crate::Error;
use serde::Deserialize;
use serde_json::{json, Map, Value};

impl Api {
    /// The rollout context, with the lock that keeps one decision at a time.
    pub(super) fn with_rollouts<T>(
        &self,
        run: impl FnOnce(&RolloutContext<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let _one_at_a_time = self.rollout_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _across_replicas = self.store.lock_rollouts()?;
        run(&RolloutContext {
            store: self.store.as_ref(),
            presence: &self.presence,
            default_policy: &self.default_policy,
        })
    }
}

/// `POST /fleets/{fleet}/rollouts`: the fleet's `rolloutPlan` with the body's fields over it.
pub(super) fn create(api: &Api, caller: &Caller, request: &Request, fleet: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let fleet = known_fleet(api, fleet)?;
    let mut body: Map<String, Value> = request.json()?;
    let release = match body.remove("release") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => n.as_u64().unwrap_or(0),
        Some(other) => {
            return Err(Error::BadRequest { reason: format!("release must be a release number, not {other}") })
        }
        None => return Err(Error::BadRequest { reason: "a rollout needs \"release\": the release number".into() }),
    };
    let flag = |body: &mut Map<String, Value>, name: &str| match body.remove(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err(Error::BadRequest { reason: format!("{name} must be true or false, not {other}") }),
    };
    let dry_run = flag(&mut body, "dryRun")?;
    let supersede = flag(&mut body, "supersede")?;
    let mut plan = serde_json::to_value(fleet_plan(&fleet)).unwrap_or_default();
    if let Some(object) = plan.as_object_mut() {
        object.extend(body);
    }
    let plan = RolloutPlan::from_json(plan)?;
    if api.store.release(&fleet.name, release)?.is_none() {
        return Err(Error::NotFound { what: format!("release {release} of fleet {}", fleet.name) });
    }
    if dry_run {
        // What the real request would be refused, the dry run is too.
        let active = api.store.active_rollouts()?.into_iter().find(|r| r.fleet == fleet.name);
        if let (Some(active), false) = (active, supersede) {
            return Err(Error::Conflict {
                reason: format!(
                    "fleet {} has rollout {} {}: one rollout per fleet (\"supersede\": true starts one at the end of its current wave)",
                    fleet.name,
                    active.id,
                    active.progress.status.as_str()
                ),
            });
        }
        let waves = plan_waves(api.store.as_ref(), &fleet.name, &plan)?;
        let waves: Vec<Value> = waves
            .iter()
            .enumerate()
            .map(|(i, devices)| json!({"wave": i + 1, "devices": devices, "count": devices.len()}))
            .collect();
        return Ok(Response::json(
            200,
            &json!({"dryRun": true, "fleet": fleet.name, "release": release, "waves": waves}),
        ));
    }
    let id = api.with_rollouts(|ctx| start_rollout(ctx, &fleet, RolloutRequest { release, plan, supersede }))?;
    let rollout = api.store.rollout(id)?.ok_or_else(|| Error::NotFound { what: format!("rollout {id}") })?;
    Ok(Response::json(201, &rollout_json(&rollout, &api.store.rollout_devices(id)?, true)))
}

/// `GET /fleets/{fleet}/rollouts`: newest first, with their counts.
pub(super) fn list(api: &Api, caller: &Caller, request: &Request, fleet: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let fleet = known_fleet(api, fleet)?;
    let limit = request.query_number("limit", 20, 1..=200)?;
    let mut rollouts = Vec::new();
    for rollout in api.store.rollouts(&fleet.name, limit)? {
        let rows = api.store.rollout_devices(rollout.id)?;
        rollouts.push(rollout_json(&rollout, &rows, false));
    }
    Ok(Response::json(200, &json!({"fleet": fleet.name, "rollouts": rollouts})))
}

/// `GET /fleets/{fleet}/rollouts/{id}`: with every device's state and reason.
pub(super) fn get(api: &Api, caller: &Caller, fleet: &str, id: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let rollout = known_rollout(api, fleet, id)?;
    Ok(Response::json(200, &rollout_json(&rollout, &api.store.rollout_devices(rollout.id)?, true)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Abort {
    #[serde(default)]
    rollback: bool,
}

/// `POST /fleets/{fleet}/rollouts/{id}/{pause|resume|promote|abort}`.
pub(super) fn command(
    api: &Api,
    caller: &Caller,
    request: &Request,
    fleet: &str,
    id: &str,
    action: &str,
) -> Result<Response, Error> {
    caller.require_admin()?;
    let rollout = known_rollout(api, fleet, id)?;
    if action != "abort" && !request.body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest { reason: format!("{action} takes no body") });
    }
    let command = match action {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "promote" => Command::Promote,
        "abort" => Command::Abort { rollback: request.json_or_default::<Abort>()?.rollback },
        other => return Err(Error::NotFound { what: format!("rollout action {other}") }),
    };
    let after = api.with_rollouts(|ctx| run_command(ctx, &rollout.fleet, rollout.id, command))?;
    log::info!("fleet {}: rollout {} {action}: now {}", after.fleet, after.id, after.progress.status.as_str());
    Ok(Response::json(200, &rollout_json(&after, &api.store.rollout_devices(after.id)?, true)))
}

fn known_rollout(api: &Api, fleet: &str, id: &str) -> Result<StoredRollout, Error> {
    let fleet = known_fleet(api, fleet)?;
    let shown: String = id.chars().take(40).collect();
    let id = number(id).ok_or_else(|| Error::NotFound { what: format!("rollout {shown}") })?;
    api.store
        .rollout(id)?
        .filter(|r| r.fleet == fleet.name)
        .ok_or_else(|| Error::NotFound { what: format!("rollout {id} of fleet {}", fleet.name) })
}

pub(super) fn rollout_json(rollout: &StoredRollout, rows: &[RolloutDeviceRow], with_devices: bool) -> Value {
    let mut waves: Vec<Map<String, Value>> = (0..rollout.progress.wave_count)
        .map(|i| {
            let mut wave = Map::new();
            wave.insert("wave".into(), (i + 1).into());
            for status in ["pending", "updating", "healthy", "failed", "deferred"] {
                wave.insert(status.into(), 0.into());
            }
            wave
        })
        .collect();
    for row in rows {
        if let Some(wave) = waves.get_mut(row.device.wave) {
            let key = row.device.status.as_str();
            let count = wave.get(key).and_then(Value::as_u64).unwrap_or(0);
            wave.insert(key.into(), (count + 1).into());
        }
    }
    let mut answer = json!({
        "id": rollout.id,
        "fleet": rollout.fleet,
        "release": rollout.release,
        "previousRelease": rollout.previous_release,
        "state": rollout.progress.status.as_str(),
        "currentWave": rollout.progress.current_wave.map(|w| w + 1),
        "waveStartedAt": rollout.progress.wave_started_at.map(|t| crate::timefmt::rfc3339(t.max(0) as u64)),
        "supersededBy": rollout.progress.superseded_by,
        "plan": serde_json::to_value(&rollout.plan).unwrap_or_default(),
        "waves": waves,
        "failed": rows.iter().filter(|r| r.device.status == DeviceStatus::Failed).count(),
        "createdAt": rollout.created_at,
        "updatedAt": rollout.updated_at,
    });
    if with_devices {
        let devices: Vec<Value> = rows
            .iter()
            .map(|row| {
                json!({
                    "uuid": row.device.uuid,
                    "wave": row.device.wave + 1,
                    "state": row.device.status.as_str(),
                    "reason": row.device.reason,
                    "hasRelease": row.device.assigned,
                })
            })
            .collect();
        answer["devices"] = devices.into();
    }
    answer
}

/// `GET /events?fleet=&device=&since=&before=&limit=`: newest first, bounded.
pub(super) fn events(api: &Api, caller: &Caller, request: &Request) -> Result<Response, Error> {
    caller.require_admin()?;
    let fleet = request.query_value("fleet");
    if let Some(name) = &fleet {
        super::fleets::fleet_name(name)?;
    }
    let device = request.query_value("device");
    if let Some(uuid) = &device {
        device_id(uuid)?;
    }
    // Stored times are RFC 3339 in UTC to the second: compared as text once normalized.
    let since = match request.query_value("since") {
        None => None,
        Some(text) => {
            let at = text.parse::<jiff::Timestamp>().map_err(|e| Error::BadRequest {
                reason: format!("since must be an RFC 3339 time such as 2026-12-07T10:00:00Z: {e}"),
            })?;
            Some(crate::timefmt::rfc3339(at.as_second().max(0) as u64))
        }
    };
    let limit = request.query_number("limit", 100, 1..=1000)?;
    let before = match request.query_value("before") {
        None => None,
        Some(_) => Some(request.query_number("before", 0, 1..=i64::MAX as usize)? as u64),
    };
    let filter =
        EventFilter { fleet: fleet.as_deref(), device: device.as_deref(), since: since.as_deref(), before, limit };
    let events: Vec<Value> = api.store.events(&filter)?.iter().map(event_json).collect();
    Ok(Response::json(200, &json!({"events": events})))
}

/// One event as `GET /events` shows it.
pub(super) fn event_json(e: &crate::store::Event) -> Value {
    json!({"id": e.id, "at": e.at, "kind": e.kind, "fleet": e.fleet, "device": e.device,
           "rollout": e.rollout, "release": e.release, "message": e.message})
}
