//! The fleet at a glance, for the dashboard and for scripts alike: `GET /status/overview`
//! (per fleet: devices online / stale / offline, in sync / updating / drifting / failed;
//! running rollouts; the newest events), `GET /status/devices` (each device with its
//! polling, its agent, and per service the target against what runs; filtered and
//! paginated) and `GET /status/devices/{uuid}`. Every number is judged from the store and
//! the in-memory presence (`device_status`, `presence`); a device's verdict is kept
//! (`verdicts`) until its target version or its last report changes.

use super::auth::Caller;
use super::fleets::source_json;
use super::http::{Request, Response};
use super::rollouts::{event_json, rollout_json};
use super::{device_id, Api};
use crate::device_status::{judge, Judgement, ServiceView, SyncState};
use crate::presence::{Connectivity, DEFAULT_POLL_INTERVAL};
use crate::store::{DeviceHead, DeviceStatusRow, EventFilter, Fleet};
use crate::timefmt::{rfc3339, unix_now};
use crate::verdicts::Verdict;
use crate::Error;
use pinion_model::TargetState;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

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
    let heads = api.store.device_heads()?;
    api.verdicts.keep_only(&heads);
    let all: Vec<&DeviceHead> = heads.iter().collect();
    let verdicts = judge.verdicts(&all)?;
    let mut fleets: BTreeMap<Option<String>, BTreeMap<&'static str, u64>> =
        judge.fleets.keys().map(|name| (Some(name.clone()), BTreeMap::new())).collect();
    for (head, verdict) in heads.iter().zip(&verdicts) {
        let counts = fleets.entry(head.device.fleet.clone()).or_default();
        for key in ["devices", connectivity_key(judge.seen(head).0), sync_key(verdict.sync.as_str())] {
            *counts.entry(key).or_default() += 1;
        }
    }
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
                .chain(SyncState::ALL.iter().map(|s| sync_key(s.as_str())))
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
/// devices in uuid order, a page of them, and how many match. Only a sync state filter
/// needs every candidate judged (most from `verdicts`); the page's devices are read whole.
pub(super) fn devices(api: &Api, caller: &Caller, request: &Request) -> Result<Response, Error> {
    caller.require_admin()?;
    let filter = Filter::of(request)?;
    let offset = request.query_number("offset", 0, 0..=10_000_000)?;
    let limit = request.query_number("limit", 50, 1..=500)?;
    let judge = Judge::new(api)?;
    let heads = api.store.device_heads()?;
    let mut matching: Vec<&DeviceHead> =
        heads.iter().filter(|h| filter.admits_head(h)).filter(|h| filter.admits_seen(judge.seen(h).0)).collect();
    if filter.wants_sync() {
        let verdicts = judge.verdicts(&matching)?;
        let mut verdicts = verdicts.iter();
        matching.retain(|_| verdicts.next().is_some_and(|v| filter.admits_sync(v.sync.as_str())));
    }
    let mut page = Vec::new();
    for head in matching.iter().skip(offset).take(limit) {
        if let Some(status) = judge.device(&head.device.uuid)? {
            page.push(status);
        }
    }
    Ok(Response::json(200, &json!({"total": matching.len(), "offset": offset, "limit": limit, "devices": page})))
}

/// `GET /status/devices/{uuid}`.
pub(super) fn device(api: &Api, caller: &Caller, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    let status = Judge::new(api)?.device(uuid)?.ok_or_else(|| Error::NotFound { what: format!("device {uuid}") })?;
    Ok(Response::json(200, &status))
}

/// More devices than this to judge, and they are read in one pass over every device
/// rather than one query each.
const JUDGED_ONE_BY_ONE: usize = 200;

/// What judging devices needs once per request.
struct Judge<'a> {
    api: &'a Api,
    fleets: HashMap<String, Fleet>,
    now: Instant,
    unix_now: u64,
    /// `verdicts`' generation before anything was read.
    read_at: u64,
}

impl<'a> Judge<'a> {
    fn new(api: &'a Api) -> Result<Judge<'a>, Error> {
        let read_at = api.verdicts.generation();
        let fleets = api.store.fleets()?.into_iter().map(|f| (f.name.clone(), f)).collect();
        Ok(Judge { api, fleets, now: Instant::now(), unix_now: unix_now(), read_at })
    }

    /// Its connectivity word, and when it was last seen: its last poll since the server
    /// started, else its last report (a device that has not polled since a restart is
    /// judged by that, not counted as seen at the start as rollouts count it).
    fn seen(&self, head: &DeviceHead) -> (&'static str, Option<String>) {
        let device = &head.device;
        let (polling, since_poll) = self.api.presence.connectivity(&device.uuid, self.now);
        let (connectivity, last_seen) = match (since_poll, &device.last_report_at) {
            (Some(ago), _) => (polling, rfc3339(self.unix_now.saturating_sub(ago.as_secs()))),
            (None, Some(reported_at)) => {
                let ago = unix_seconds(reported_at).map_or(u64::MAX, |at| self.unix_now.saturating_sub(at));
                (Connectivity::after(Duration::from_secs(ago), DEFAULT_POLL_INTERVAL), reported_at.clone())
            }
            (None, None) => return ("never-seen", None),
        };
        let word = match connectivity {
            Connectivity::Online => "online",
            Connectivity::Stale => "stale",
            Connectivity::Offline => "offline",
        };
        (word, Some(last_seen))
    }

    /// The verdict on each of `heads` (in uuid order): kept ones, the others judged now.
    fn verdicts(&self, heads: &[&DeviceHead]) -> Result<Vec<Verdict>, Error> {
        let kept: Vec<Option<Verdict>> = heads.iter().map(|h| self.api.verdicts.get(h, self.unix_now)).collect();
        let missing: Vec<&str> =
            heads.iter().zip(&kept).filter(|(_, v)| v.is_none()).map(|(h, _)| h.device.uuid.as_str()).collect();
        let mut judged: HashMap<String, Verdict> = HashMap::new();
        let mut judge = |row: DeviceStatusRow| {
            let uuid = row.head.device.uuid.clone();
            judged.insert(uuid, self.judged(row).1);
        };
        if missing.len() > JUDGED_ONE_BY_ONE {
            let wanted: std::collections::HashSet<&str> = missing.iter().copied().collect();
            self.api.store.visit_device_statuses(None, &mut |row| {
                if wanted.contains(row.head.device.uuid.as_str()) {
                    judge(row);
                }
            })?;
        } else {
            for uuid in &missing {
                self.api.store.visit_device_statuses(Some(uuid), &mut judge)?;
            }
        }
        // A device deleted meanwhile has nothing to judge: it has no target any more.
        let gone = Verdict { sync: SyncState::NoTarget, reason: None };
        Ok(heads
            .iter()
            .zip(kept)
            .map(|(head, kept)| kept.or_else(|| judged.remove(&head.device.uuid)).unwrap_or_else(|| gone.clone()))
            .collect())
    }

    /// One device, whole, judged now.
    fn device(&self, uuid: &str) -> Result<Option<DeviceStatus>, Error> {
        let mut found = None;
        self.api.store.visit_device_statuses(Some(uuid), &mut |row| found = Some(self.status(row)))?;
        Ok(found)
    }

    /// `row` judged, the verdict kept for the next time.
    fn judged(&self, row: DeviceStatusRow) -> (DeviceHead, Verdict, Judgement, Option<String>) {
        let DeviceStatusRow { head, target, report, system_info } = row;
        let report: Option<Value> = report.and_then(|r| serde_json::from_str(&r).ok());
        let target_state: Option<TargetState> = target.and_then(|t| serde_json::from_str(&t).ok());
        let target_set_at = head.target_set_at.as_deref().and_then(unix_seconds);
        let judgement = judge(target_state.as_ref(), report.as_ref(), target_set_at, self.unix_now);
        let verdict = self.api.verdicts.put(&head, &judgement, target_set_at, self.read_at);
        let info: Option<Value> = system_info.and_then(|i| serde_json::from_str(&i).ok());
        let agent_version =
            info.as_ref().and_then(|i| i.get("agent_version")).and_then(Value::as_str).map(str::to_string);
        (head, verdict, judgement, agent_version)
    }

    fn status(&self, row: DeviceStatusRow) -> DeviceStatus {
        let (head, _, judgement, agent_version) = self.judged(row);
        let (connectivity, last_seen) = self.seen(&head);
        let fleet = head.membership.fleet.as_ref().and_then(|name| self.fleets.get(name));
        let source = source_json(&head.membership, fleet);
        let device = head.device;
        DeviceStatus {
            source,
            uuid: device.uuid,
            device_name: device.device_name,
            fleet: device.fleet,
            labels: device.labels,
            connectivity,
            last_seen,
            agent_version,
            reported_at: device.last_report_at,
            sync: judgement.sync.as_str(),
            reason: judgement.reason,
            target_version: device.target_version,
            services: judgement.services,
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
const CONNECTIVITY_STATES: [&str; 4] = ["online", "stale", "offline", "never-seen"];

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

    /// The filters a head answers alone.
    fn admits_head(&self, head: &DeviceHead) -> bool {
        let device = &head.device;
        self.fleet.as_ref().is_none_or(|f| device.fleet.as_ref() == Some(f))
            && self.label.as_ref().is_none_or(|(k, v)| device.labels.get(k) == Some(v))
            && self.name.as_ref().is_none_or(|needle| {
                device.uuid.to_lowercase().contains(needle.as_str())
                    || device.device_name.as_ref().is_some_and(|n| n.to_lowercase().contains(needle.as_str()))
            })
    }

    /// Whether the state filter, if it is a connectivity word, admits `connectivity`.
    fn admits_seen(&self, connectivity: &str) -> bool {
        match self.state.as_deref() {
            Some(state) if CONNECTIVITY_STATES.contains(&state) => state == connectivity,
            _ => true,
        }
    }

    /// Whether the state filter is a sync word (devices must be judged to apply it).
    fn wants_sync(&self) -> bool {
        self.state.as_deref().is_some_and(|state| !CONNECTIVITY_STATES.contains(&state))
    }

    fn admits_sync(&self, sync: &str) -> bool {
        self.state.as_deref().is_none_or(|state| state == sync)
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
