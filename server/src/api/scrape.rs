//! `GET /metrics`: the numbers of the server for Prometheus, in its text format. Off
//! unless the operator opens it (`--metrics-token`, `--metrics-allow`): then it takes the
//! metrics token (or the admin token, which may read all of this through the API anyway)
//! as a Bearer token, or no credentials from a client address on `--metrics-allow`. What
//! the store knows (devices by state and fleet, fleets, rollouts by state) is read here at
//! scrape time; what happened since the start is `crate::metrics`.

use super::auth::presented_key;
use super::client_address::Network;
use super::http::{Request, Response};
use super::Api;
use crate::keys::{constant_time_eq, hash_secret};
use crate::metrics::exposition::{Exposition, Kind, CONTENT_TYPE};
use crate::metrics::{capped_counts, MAX_FLEETS};
use crate::rollout::RolloutStatus;
use crate::Error;
use std::time::Instant;

/// Every rollout status, shown even at zero.
const ROLLOUT_STATUSES: [RolloutStatus; 7] = [
    RolloutStatus::Waiting,
    RolloutStatus::Running,
    RolloutStatus::Paused,
    RolloutStatus::Succeeded,
    RolloutStatus::Aborted,
    RolloutStatus::RolledBack,
    RolloutStatus::Superseded,
];

/// Who may scrape: off (404) unless a token or an address list is set.
#[derive(Debug, Clone, Default)]
pub struct ScrapeAccess {
    /// SHA-256 (hex) of `--metrics-token`.
    pub token_hash: Option<String>,
    /// Client addresses that may scrape without a token (`--metrics-allow`).
    pub allowed: Vec<Network>,
}

impl ScrapeAccess {
    pub fn is_on(&self) -> bool {
        self.token_hash.is_some() || !self.allowed.is_empty()
    }
}

/// Whether the request may scrape: a 404 when scraping is off, a 401 for a token that is
/// neither the metrics nor the admin token (from any address), a 401 (403 when no token
/// is configured) for no token from an address not allowed.
fn admit(api: &Api, request: &Request) -> Result<(), Error> {
    let access = &api.metrics_access;
    if !access.is_on() {
        return Err(Error::NotFound { what: "route /metrics (off: see --metrics-token, --metrics-allow)".into() });
    }
    if let Some(key) = presented_key(request) {
        let hash = hash_secret(key);
        let metrics = access.token_hash.as_ref().is_some_and(|h| constant_time_eq(h.as_bytes(), hash.as_bytes()));
        let admin = constant_time_eq(api.admin_token_hash.as_bytes(), hash.as_bytes());
        return match metrics || admin {
            true => Ok(()),
            false => Err(Error::Unauthorized { reason: "the credentials given are not valid".into() }),
        };
    }
    let client = super::client_of(api, request);
    if client.is_some_and(|client| access.allowed.iter().any(|net| net.contains(client.ip()))) {
        return Ok(());
    }
    let from = client.map_or("an unknown address".to_string(), |c| c.ip().to_string());
    match access.token_hash {
        Some(_) => Err(Error::Unauthorized {
            reason: format!("/metrics needs the metrics token (Bearer) from {from}, which is not on --metrics-allow"),
        }),
        None => Err(Error::Forbidden { reason: format!("{from} is not on --metrics-allow") }),
    }
}

/// `GET /metrics`.
pub(super) fn scrape(api: &Api, request: &Request) -> Result<Response, Error> {
    admit(api, request)?;
    let mut out = Exposition::default();
    out.family("pinion_build_info", Kind::Gauge, "The running pinion-server's version, as a label; always 1.");
    out.sample("pinion_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    store_gauges(api, &mut out)?;
    api.metrics.render(&mut out);
    Ok(Response {
        status: 200,
        headers: vec![("Content-Type".into(), CONTENT_TYPE.into()), ("Cache-Control".into(), "no-store".into())],
        body: out.into_string().into_bytes(),
    })
}

/// Devices by state and fleet, fleets, rollouts by state: read from the store now.
fn store_gauges(api: &Api, out: &mut Exposition) -> Result<(), Error> {
    let devices = api.store.devices()?;
    let now = Instant::now();
    let (mut online, mut offline, mut never_seen) = (0u64, 0u64, 0u64);
    for device in &devices {
        if !api.presence.has_polled(&device.uuid) && device.last_report_at.is_none() {
            never_seen += 1;
        } else if api.presence.online(&device.uuid, now) {
            online += 1;
        } else {
            offline += 1;
        }
    }
    out.family(
        "pinion_devices",
        Kind::Gauge,
        "Devices by state: online (polled or registered within three of its poll intervals), \
         offline, never_seen (no report ever, and no poll or registration since the server started).",
    );
    for (state, count) in [("online", online), ("offline", offline), ("never_seen", never_seen)] {
        out.sample("pinion_devices", &[("state", state)], count as f64);
    }
    out.family(
        "pinion_fleet_devices",
        Kind::Gauge,
        "Devices in each fleet (the largest 1000 fleets; the rest summed as fleet=\"_other\").",
    );
    for (fleet, count) in capped_counts(devices.iter().filter_map(|d| d.fleet.as_deref()), MAX_FLEETS) {
        out.sample("pinion_fleet_devices", &[("fleet", &fleet)], count as f64);
    }
    out.family("pinion_fleets", Kind::Gauge, "Fleets.");
    out.sample("pinion_fleets", &[], api.store.fleets()?.len() as f64);
    let counts = api.store.rollout_counts()?;
    out.family("pinion_rollouts", Kind::Gauge, "Rollouts of every fleet by state.");
    for status in ROLLOUT_STATUSES {
        let count = counts.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, count)| *count);
        out.sample("pinion_rollouts", &[("state", status.as_str())], count as f64);
    }
    Ok(())
}
