//! The fleet at a glance, for the dashboard and for scripts alike: `GET /status/overview`
//! (per fleet: devices online / stale / offline, in sync / updating / drifting / failed;
//! running rollouts; the newest events), `GET /status/devices` (each device with its
//! polling, its agent, and per service the target against what runs; filtered and
//! paginated) and `GET /status/devices/{uuid}`. Every number is judged now from the
//! store and the in-memory presence (`device_status`, `presence`).

use super::auth::Caller;
use super::fleets::source_json;
use super::http::{Request, Response};
use super::rollouts::{event_json, rollout_json};
use super::{device_id, Api};
use crate::device_status::{judge, ServiceView, Sync};
use crate::presence::Connectivity;
use crate::store::{DeviceStatusRow, EventFilter, Fleet};
use crate::timefmt::{rfc3339, unix_now};
use crate::Error;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Events the overview shows.
const OVERVIEW_EVENTS: usize = 20;
/// The longest name filter: a name is at most this long anyway.
const MAX_NAME_FILTER: usize = 256;

/// One device as `GET /status/devices` shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceStatus {
    uuid: String,
    device_name: Option<String>,
    fleet: Option<String>,
    labels: BTreeMap<String, String>,
    connectivity: &'static str,
    last_seen: Option<String>,
    agent_version: Option<String>,
    reported_at: Option<String>,
    sync: &'static str,
    reason: Option<String>,
    source: Value,
    target_version: u64,
    services: Vec<ServiceView>,
}

/// `GET /status/overview`.
pub(super) fn overview(api: &Api, caller: &Caller) -> Result<Response, Error> {
    caller.require_admin()?;
    let judge = Judge::new(api)?;
    let mut fleets: BTreeMap<Option<String>, BTreeMap<&'static str, u64>> =
        judge.fleets.keys().map(|name| (Some(name.clone()), BTreeMap::new())).collect();
    api.store.visit_device_statuses(None, &mut |row| {
        let status = judge.status(row);
        let counts = fleets.entry(status.fleet.clone()).or_default();
        for key in ["devices", connectivity_key(status.connectivity), sync_key(status.sync)] {
            *counts.entry(key).or_default() += 1;
        }
    })?;
    // Fleets by name, then the devices in none.
    let mut rows: Vec<(Option<String>, BTreeMap<&'static str, u64>)> = fleets.into_iter().collect();
    rows.sort_by_key(|(name, _)| (name.is_none(), name.clone()));
    let fleets: Vec<Value> = rows
        .into_iter()
        .map(|(name, counts)| {
            let mut entry = json!({
                "fleet": name,
                "release": name.as_ref().and_then(|n| judge.fleets.get(n)).and_then(|f| f.current_release),
            });
            for key in ["devices", "online", "stale", "offline", "neverSeen"]
                .into_iter()
                .chain(Sync::ALL.iter().map(|s| sync_key(s.as_str())))
            {
                entry[key] = counts.get(key).copied().unwrap_or(0).into();
            }
            entry
        })
        .collect();
    let mut rollouts = Vec::new();
    for rollout in api.store.active_rollouts()? {
        rollouts.push(rollout_json(&rollout, &api.store.rollout_devices(rollout.id)?, false));
    }
    let newest = EventFilter { fleet: None, device: None, since: None, before: None, limit: OVERVIEW_EVENTS };
    let events: Vec<Value> = api.store.events(&newest)?.iter().map(event_json).collect();
    Ok(Response::json(200, &json!({"fleets": fleets, "rollouts": rollouts, "events": events})))
}

/// `GET /status/devices?fleet=&label=k=v&state=&name=&offset=&limit=`: the matching
/// devices in uuid order, a page of them, and how many match.
pub(super) fn devices(api: &Api, caller: &Caller, request: &Request) -> Result<Response, Error> {
    caller.require_admin()?;
    let filter = Filter::of(request)?;
    let offset = request.query_number("offset", 0, 0..=10_000_000)?;
    let limit = request.query_number("limit", 50, 1..=500)?;
    let judge = Judge::new(api)?;
    let mut total = 0usize;
    let mut page = Vec::new();
    api.store.visit_device_statuses(None, &mut |row| {
        if !filter.admits_row(&row) {
            return;
        }
        let status = judge.status(row);
        if !filter.admits_status(&status) {
            return;
        }
        if total >= offset && page.len() < limit {
            page.push(status);
        }
        total += 1;
    })?;
    Ok(Response::json(200, &json!({"total": total, "offset": offset, "limit": limit, "devices": page})))
}

/// `GET /status/devices/{uuid}`.
pub(super) fn device(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let judge = Judge::new(api)?;
    let mut found = None;
    api.store.visit_device_statuses(Some(uuid), &mut |row| found = Some(judge.status(row)))?;
    let status = found.ok_or_else(|| Error::NotFound { what: format!("device {uuid}") })?;
    Ok(Response::json(200, &status))
}

/// What judging every device needs once per request.
struct Judge<'a> {
    api: &'a Api,
    fleets: HashMap<String, Fleet>,
    now: Instant,
    unix_now: u64,
}

impl<'a> Judge<'a> {
    fn new(api: &'a Api) -> Result<Judge<'a>, Error> {
        let fleets = api.store.fleets()?.into_iter().map(|f| (f.name.clone(), f)).collect();
        Ok(Judge { api, fleets, now: Instant::now(), unix_now: unix_now() })
    }

    fn status(&self, row: DeviceStatusRow) -> DeviceStatus {
        let DeviceStatusRow { device, membership, target, report, system_info } = row;
        let (connectivity, since_poll) = self.api.presence.connectivity(&device.uuid, self.now);
        let connectivity = match (connectivity, since_poll, &device.last_report_at) {
            (_, None, None) => "never-seen",
            (Connectivity::Online, ..) => "online",
            (Connectivity::Stale, ..) => "stale",
            (Connectivity::Offline, ..) => "offline",
        };
        let last_seen = match since_poll {
            Some(ago) => Some(rfc3339(self.unix_now.saturating_sub(ago.as_secs()))),
            None => device.last_report_at.clone(),
        };
        let report: Option<Value> = report.and_then(|r| serde_json::from_str(&r).ok());
        let (target_state, target_set_at) = match &target {
            Some((state, at)) => (serde_json::from_str(state).ok(), unix_seconds(at)),
            None => (None, None),
        };
        let reported_at = device.last_report_at.as_deref().and_then(unix_seconds);
        let judged = judge(target_state.as_ref(), report.as_ref(), target_set_at, reported_at);
        let info: Option<Value> = system_info.and_then(|i| serde_json::from_str(&i).ok());
        let agent_version = info.as_ref().and_then(|i| i.get("agent_version")).and_then(Value::as_str);
        let fleet = membership.fleet.as_ref().and_then(|name| self.fleets.get(name));
        DeviceStatus {
            source: source_json(&membership, fleet),
            uuid: device.uuid,
            device_name: device.device_name,
            fleet: device.fleet,
            labels: device.labels,
            connectivity,
            last_seen,
            agent_version: agent_version.map(str::to_string),
            reported_at: device.last_report_at,
            sync: judged.sync.as_str(),
            reason: judged.reason,
            target_version: device.target_version,
            services: judged.services,
        }
    }
}

/// The filters of `GET /status/devices`, checked.
struct Filter {
    fleet: Option<String>,
    label: Option<(String, String)>,
    state: Option<String>,
    /// Lower-cased.
    name: Option<String>,
}

/// The `state` filter's words: a connectivity or a sync.
const STATES: [&str; 9] =
    ["online", "stale", "offline", "never-seen", "in-sync", "updating", "drifting", "failed", "no-target"];

impl Filter {
    fn of(request: &Request) -> Result<Filter, Error> {
        let present = |name: &str| request.query_value(name).filter(|v| !v.is_empty());
        let fleet = present("fleet");
        if let Some(name) = &fleet {
            super::fleets::fleet_name(name)?;
        }
        let label = match present("label") {
            None => None,
            Some(pair) => match pair.split_once('=') {
                Some((key, value)) => Some((key.to_string(), value.to_string())),
                None => return Err(Error::BadRequest { reason: format!("label must be key=value, not {pair:?}") }),
            },
        };
        let state = present("state");
        if let Some(state) = &state {
            if !STATES.contains(&state.as_str()) {
                let shown: String = state.chars().take(40).collect();
                return Err(Error::BadRequest {
                    reason: format!("state must be one of {}, not {shown:?}", STATES.join(", ")),
                });
            }
        }
        let name = present("name");
        if name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_FILTER) {
            return Err(Error::BadRequest { reason: format!("name must be at most {MAX_NAME_FILTER} characters") });
        }
        Ok(Filter { fleet, label, state, name: name.map(|n| n.to_lowercase()) })
    }

    /// The filters a row answers without judging it.
    fn admits_row(&self, row: &DeviceStatusRow) -> bool {
        let device = &row.device;
        self.fleet.as_ref().is_none_or(|f| device.fleet.as_ref() == Some(f))
            && self.label.as_ref().is_none_or(|(k, v)| device.labels.get(k) == Some(v))
            && self.name.as_ref().is_none_or(|needle| {
                device.uuid.contains(needle.as_str())
                    || device.device_name.as_ref().is_some_and(|n| n.to_lowercase().contains(needle.as_str()))
            })
    }

    fn admits_status(&self, status: &DeviceStatus) -> bool {
        self.state.as_deref().is_none_or(|state| status.connectivity == state || status.sync == state)
    }
}

/// The overview's key of a connectivity word.
fn connectivity_key(word: &'static str) -> &'static str {
    if word == "never-seen" {
        "neverSeen"
    } else {
        word
    }
}

/// The overview's key of a sync word.
fn sync_key(word: &'static str) -> &'static str {
    match word {
        "in-sync" => "inSync",
        "no-target" => "noTarget",
        other => other,
    }
}

fn unix_seconds(rfc3339: &str) -> Option<u64> {
    rfc3339.parse::<jiff::Timestamp>().ok().and_then(|t| u64::try_from(t.as_second()).ok())
}
