//! The current state the agent reports (`PATCH /device/state`): per app and service, the
//! image, the container, and what it is doing (downloading with a percent, installing,
//! running, exited, error with its type and message), and a rollback when a deployment
//! failed probation. Built by a pure function from what the agent knows, so that
//! "changed since the last report" is a string compare.
//!
//! `probation` says how far the service's deployment is through probation
//! (`probation.rs`), for the server's staged rollouts: `"running"` while the store
//! records this container as the deployment in place with its probation not yet over;
//! `"passed"` once it is over (or probation is off) and the container runs; `"failed"`
//! while a rollback is in force, or the deployment failed probation with nothing to go
//! back to. Left out otherwise: pending, downloading, not started, or started but not yet
//! recorded as the deployment in place (its probation has not begun).

use crate::apply::Activity;
use crate::engine::{Container, LABEL_APP_ID, LABEL_CONFIG_HASH, LABEL_SERVICE_NAME};
use crate::spec::{DesiredService, ServiceKey};
use crate::store::ServiceRecord;
use crate::Error;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Facts about the device sent with every report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceInfo {
    pub os_version: Option<String>,
    pub local_ip: Option<String>,
}

/// Everything a report is made from.
pub struct ReportInput<'a> {
    pub uuid: &'a str,
    /// The services run: the target's, with rollbacks in force (`probation::apply_rollbacks`).
    pub desired: &'a [DesiredService],
    pub invalid: &'a [(ServiceKey, Error)],
    pub containers: &'a [Container],
    pub activities: &'a BTreeMap<ServiceKey, Activity>,
    pub records: &'a [ServiceRecord],
    /// `Config::probation`; zero: probation is off, and a running deployment has passed.
    pub probation_period: Duration,
    /// Deployments (service, config hash) seen failing probation since the agent started,
    /// also those with nothing to go back to, which have no rollback (`Probation::failed`).
    pub failed_probation: &'a BTreeSet<(ServiceKey, String)>,
    pub info: &'a DeviceInfo,
}

/// `{"<uuid>": {"apps": {"<appId>": {"services": {"<name>": {…}}}}, "config": {}, …}}`
pub fn build_report(input: &ReportInput<'_>) -> Value {
    let mut apps: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for wanted in input.desired {
        let service = service_report(wanted, input);
        apps.entry(wanted.key.app_id.clone()).or_default().insert(wanted.key.service_name.clone(), service);
    }
    for (key, error) in input.invalid {
        // A service this gateway's limits refuse (`host_limits`), or one it cannot run.
        let kind = if let Error::Refused { .. } = error { "refused_by_gateway" } else { "invalid_service" };
        let service = json!({"status": "error", "error": {"type": kind, "message": error.to_string()}});
        apps.entry(key.app_id.clone()).or_default().insert(key.service_name.clone(), service);
    }
    let apps: Map<String, Value> =
        apps.into_iter().map(|(app_id, services)| (app_id, json!({"services": services}))).collect();
    let mut state = Map::new();
    state.insert("apps".into(), Value::Object(apps));
    state.insert("config".into(), json!({}));
    state.insert("agent_version".into(), env!("CARGO_PKG_VERSION").into());
    if let Some(os) = &input.info.os_version {
        state.insert("os_version".into(), os.clone().into());
    }
    if let Some(ip) = &input.info.local_ip {
        state.insert("local_ip".into(), ip.clone().into());
    }
    let mut body = Map::new();
    body.insert(input.uuid.to_string(), Value::Object(state));
    Value::Object(body)
}

fn service_report(wanted: &DesiredService, input: &ReportInput<'_>) -> Value {
    let key = &wanted.key;
    let mine: Vec<&Container> = input
        .containers
        .iter()
        .filter(|c| {
            c.labels.get(LABEL_APP_ID) == Some(&key.app_id)
                && c.labels.get(LABEL_SERVICE_NAME) == Some(&key.service_name)
        })
        .collect();
    let current = mine.iter().find(|c| c.labels.get(LABEL_CONFIG_HASH) == Some(&wanted.config_hash));
    let running_old = mine.iter().find(|c| c.state == "running");
    let shown = current.or(running_old);

    let mut service = Map::new();
    if let Some(id) = &wanted.service_id {
        service.insert("serviceId".into(), id.clone().into());
    }
    service.insert("imageName".into(), wanted.image.clone().into());
    if let Some(container) = shown {
        service.insert("containerId".into(), container.id.clone().into());
    }
    let record = input.records.iter().find(|r| &r.key == key);
    let status = match input.activities.get(key) {
        Some(Activity::Downloading { percent }) => {
            if let Some(p) = percent {
                service.insert("downloadProgress".into(), (*p).into());
            }
            "downloading"
        }
        Some(Activity::Installing) => "installing",
        Some(Activity::Failed { kind, message }) => {
            service.insert("error".into(), json!({"type": kind, "message": message}));
            "error"
        }
        None => match (current, record) {
            // Created but never started (a start that failed for the host's reasons): the
            // failure, not "installed".
            (Some(c), Some(r)) if c.state == "created" && r.last_error.is_some() => {
                service.insert("error".into(), json!({"type": "retrying", "message": r.last_error}));
                "error"
            }
            (Some(c), _) => docker_status(&c.state),
            (None, Some(r)) if r.last_error.is_some() => {
                service.insert("error".into(), json!({"type": "retrying", "message": r.last_error}));
                "error"
            }
            (None, _) => "pending",
        },
    };
    service.insert("status".into(), status.into());
    if let Some(r) = record.filter(|r| r.failures > 0) {
        service.insert("failures".into(), r.failures.into());
        service.insert("retryAt".into(), r.retry_at.into());
    }
    // `imageName` is what runs (the deployment put back); the target's image failed.
    if let Some(rollback) = record.and_then(|r| r.rollback.as_ref()) {
        service.insert("targetImage".into(), rollback.from_image.clone().into());
        service.insert(
            "rollback".into(),
            json!({"from": rollback.from_image, "to": rollback.to.image, "reason": rollback.reason, "at": rollback.at}),
        );
    }
    if let Some(probation) = probation_state(wanted, current.copied(), record, input) {
        service.insert("probation".into(), probation.into());
    }
    if current.is_none() && shown.is_some() {
        service.insert("runningImage".into(), shown.map(|c| c.image.clone()).into());
    }
    if !wanted.warnings.is_empty() {
        service.insert("warnings".into(), wanted.warnings.clone().into());
    }
    Value::Object(service)
}

/// The report's `probation` for `wanted`, whose container is `current` (the one with its
/// config hash), or `None` when there is nothing to say yet.
fn probation_state(
    wanted: &DesiredService,
    current: Option<&Container>,
    record: Option<&ServiceRecord>,
    input: &ReportInput<'_>,
) -> Option<&'static str> {
    let rejected = input.failed_probation.contains(&(wanted.key.clone(), wanted.config_hash.clone()));
    if rejected || record.is_some_and(|r| r.rollback.is_some()) {
        return Some("failed");
    }
    let current = current?;
    let running = current.state == "running";
    if input.probation_period.is_zero() {
        return running.then_some("passed");
    }
    // Only a record of this very container as the deployment in place speaks for it: until
    // `record_deployed` wrote it (just started, or a write that failed), the record is the
    // previous deployment's, whose probation may be long over, or a failed attempt's.
    let record = record.filter(|r| {
        r.image == wanted.image
            && r.config_hash == wanted.config_hash
            && r.container_id.as_deref() == Some(current.id.as_str())
    })?;
    match record.probation_since {
        Some(_) => Some("running"),
        None => running.then_some("passed"),
    }
}

/// Docker's container state as a report status.
fn docker_status(state: &str) -> &'static str {
    match state {
        "running" => "running",
        "restarting" => "restarting",
        "paused" => "paused",
        "created" => "installed",
        "exited" => "exited",
        "dead" => "dead",
        _ => "unknown",
    }
}

/// `PRETTY_NAME` from `/etc/os-release`.
pub fn os_version() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string())
}

/// The local address the device uses to reach `server_host` (a UDP "connect" sends nothing).
pub fn local_ip(server_host: &str) -> Option<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect(server_host).ok()?;
    socket.local_addr().ok().map(|a| a.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Strategy;
    use crate::store::{Rollback, ServiceRecord};

    fn wanted(name: &str) -> DesiredService {
        DesiredService {
            key: ServiceKey { app_id: "1".into(), service_name: name.into() },
            service_id: Some("7".into()),
            image: format!("app@sha256:{name}"),
            container_name: format!("{name}_1"),
            create_body: json!({}),
            config_hash: format!("hash-{name}"),
            strategy: Strategy::DownloadThenKill,
            keep_running: true,
            networks: Default::default(),
            volumes: Default::default(),
            warnings: vec!["ulimits: not supported by pinion-agent, ignored".into()],
        }
    }

    fn container(name: &str, hash: &str, state: &str) -> Container {
        let labels = [(LABEL_APP_ID, "1"), (LABEL_SERVICE_NAME, name), (LABEL_CONFIG_HASH, hash)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Container {
            id: format!("id-{name}-{hash}"),
            name: format!("{name}_1"),
            image: "old".into(),
            state: state.into(),
            status: String::new(),
            labels,
        }
    }

    #[test]
    fn each_service_says_what_it_is_doing() {
        let desired = [wanted("up"), wanted("pulling"), wanted("broken"), wanted("waiting")];
        let containers = [
            container("up", "hash-up", "running"),
            container("pulling", "old-hash", "running"),
            container("broken", "old-hash", "running"),
        ];
        let activities: BTreeMap<ServiceKey, Activity> = [
            (desired[1].key.clone(), Activity::Downloading { percent: Some(42) }),
            (desired[2].key.clone(), Activity::Failed { kind: "pull_failed", message: "no such host".into() }),
        ]
        .into_iter()
        .collect();
        let records = [ServiceRecord {
            key: desired[3].key.clone(),
            image: desired[3].image.clone(),
            config_hash: desired[3].config_hash.clone(),
            container_id: None,
            failures: 2,
            retry_at: 1_900_000_000,
            last_error: Some("start failed".into()),
            deployed_at: 0,
            probation_since: None,
            retry_after: None,
            rollback: None,
        }];
        let refusal = crate::host_limits::Refusal { asked: "privileged".into(), remedy: "set x".into() };
        let invalid = [
            (
                ServiceKey { app_id: "2".into(), service_name: "bad".into() },
                Error::InvalidTarget { reason: "app 2, service bad: no image".into() },
            ),
            (
                ServiceKey { app_id: "2".into(), service_name: "root".into() },
                Error::Refused { service: "root (app 2)".into(), refusals: vec![refusal] },
            ),
        ];
        let report = build_report(&ReportInput {
            uuid: "dev",
            desired: &desired,
            invalid: &invalid,
            containers: &containers,
            activities: &activities,
            records: &records,
            probation_period: Duration::from_secs(60),
            failed_probation: &BTreeSet::new(),
            info: &DeviceInfo { os_version: Some("Debian".into()), local_ip: None },
        });
        let services = &report["dev"]["apps"]["1"]["services"];
        assert_eq!(services["up"]["status"], "running");
        assert_eq!(services["up"]["containerId"], "id-up-hash-up");
        assert_eq!(services["up"]["warnings"][0], "ulimits: not supported by pinion-agent, ignored");
        assert_eq!(services["pulling"]["status"], "downloading");
        assert_eq!(services["pulling"]["downloadProgress"], 42);
        assert_eq!(services["pulling"]["runningImage"], "old", "the old container still runs");
        assert_eq!(services["broken"]["status"], "error");
        assert_eq!(services["broken"]["error"], json!({"type": "pull_failed", "message": "no such host"}));
        assert_eq!(services["waiting"]["status"], "error");
        assert_eq!(
            (services["waiting"]["failures"].clone(), services["waiting"]["retryAt"].clone()),
            (json!(2), json!(1_900_000_000u64))
        );
        assert_eq!(report["dev"]["apps"]["2"]["services"]["bad"]["error"]["type"], "invalid_service");
        let root = &report["dev"]["apps"]["2"]["services"]["root"];
        assert_eq!(
            (root["status"].as_str(), root["error"]["type"].as_str()),
            (Some("error"), Some("refused_by_gateway"))
        );
        assert!(root["error"]["message"].as_str().unwrap().starts_with("service root (app 2): privileged is refused"));
        assert_eq!(report["dev"]["os_version"], "Debian");
        assert!(services["up"].get("rollback").is_none());
    }

    #[test]
    fn a_rollback_shows_what_runs_and_what_was_rejected() {
        let (v1, v2) = (DesiredService::example("web", "app@1", "h1"), DesiredService::example("web", "app@2", "h2"));
        let reason = "exited with code 1 within probation";
        let rollback = Rollback {
            from_image: v2.image.clone(),
            from_config_hash: v2.config_hash.clone(),
            to: v1.clone(),
            reason: reason.into(),
            at: 1_800_000_000,
            since: None,
            holds_for: crate::probation::ROLLBACK_EXPIRES,
        };
        let records = [ServiceRecord {
            key: v1.key.clone(),
            image: v1.image.clone(),
            config_hash: v1.config_hash.clone(),
            container_id: Some("id-web-h1".into()),
            failures: 0,
            retry_at: 0,
            last_error: None,
            deployed_at: 1_800_000_000,
            probation_since: None,
            retry_after: None,
            rollback: Some(rollback),
        }];
        let report = build_report(&ReportInput {
            uuid: "dev",
            desired: &[v1],
            invalid: &[],
            containers: &[container("web", "h1", "running")],
            activities: &BTreeMap::new(),
            records: &records,
            probation_period: Duration::from_secs(60),
            failed_probation: &BTreeSet::new(),
            info: &DeviceInfo::default(),
        });
        let web = &report["dev"]["apps"]["1"]["services"]["web"];
        assert_eq!((web["status"].as_str(), web["imageName"].as_str()), (Some("running"), Some("app@1")));
        assert_eq!(web["targetImage"], "app@2");
        assert_eq!(web["rollback"], json!({"from": "app@2", "to": "app@1", "reason": reason, "at": 1_800_000_000u64}));
        assert_eq!(web["probation"], "failed", "what runs is not the target's");
    }

    /// The record `store.record_deployed(wanted, container_id)` leaves, its probation
    /// started at `probation_since`.
    fn deployed(wanted: &DesiredService, container_id: &str, probation_since: Option<u64>) -> ServiceRecord {
        ServiceRecord {
            key: wanted.key.clone(),
            image: wanted.image.clone(),
            config_hash: wanted.config_hash.clone(),
            container_id: Some(container_id.into()),
            failures: 0,
            retry_at: 0,
            last_error: None,
            deployed_at: 1_800_000_000,
            probation_since: probation_since.map(|uptime| crate::clock::Moment { boot: "boot".into(), uptime }),
            retry_after: None,
            rollback: None,
        }
    }

    /// Each service's `probation` (absent: `None`) with probation `period`.
    fn probation_of(
        desired: &[DesiredService],
        containers: &[Container],
        records: &[ServiceRecord],
        period: Duration,
        failed_probation: &BTreeSet<(ServiceKey, String)>,
    ) -> Vec<(String, Option<String>)> {
        let report = build_report(&ReportInput {
            uuid: "dev",
            desired,
            invalid: &[],
            containers,
            activities: &BTreeMap::new(),
            records,
            probation_period: period,
            failed_probation,
            info: &DeviceInfo::default(),
        });
        let services = report["dev"]["apps"]["1"]["services"].as_object().unwrap().clone();
        let mut said: Vec<(String, Option<String>)> = services
            .into_iter()
            .map(|(name, s)| (name, s.get("probation").and_then(|p| p.as_str()).map(String::from)))
            .collect();
        said.sort();
        said
    }

    #[test]
    fn probation_says_whether_the_deployment_in_place_passed_it() {
        let (watched, settled, pending) = (wanted("watched"), wanted("settled"), wanted("pending"));
        let (old_settled, stopped) = (DesiredService::example("old", "app@0", "hash-0"), wanted("stopped"));
        let desired = [watched.clone(), settled.clone(), pending.clone(), stopped.clone()];
        let containers = [
            container("watched", "hash-watched", "running"),
            container("settled", "hash-settled", "running"),
            container("stopped", "hash-stopped", "exited"),
        ];
        let records = [
            deployed(&watched, "id-watched-hash-watched", Some(100)),
            deployed(&settled, "id-settled-hash-settled", None),
            deployed(&stopped, "id-stopped-hash-stopped", None),
            // What ran before: nothing of `pending` yet.
            ServiceRecord { key: pending.key.clone(), ..deployed(&old_settled, "id-old", None) },
        ];
        let none = BTreeSet::new();
        let minute = Duration::from_secs(60);
        assert_eq!(
            probation_of(&desired, &containers, &records, minute, &none),
            [
                ("pending".into(), None),
                ("settled".into(), Some("passed".into())),
                ("stopped".into(), None),
                ("watched".into(), Some("running".into())),
            ]
        );
        // Probation off: a running deployment has passed; `probation_since` is never cleared then.
        let off = probation_of(&desired, &containers, &records, Duration::ZERO, &none);
        assert_eq!(off[3], ("watched".into(), Some("passed".into())));
        assert_eq!((off[0].1.as_deref(), off[2].1.as_deref()), (None, None));
        // Failed with nothing to go back to: no rollback in the store, but not passed.
        let rejected = BTreeSet::from([(watched.key.clone(), watched.config_hash.clone())]);
        assert_eq!(probation_of(&desired, &containers, &records, minute, &rejected)[3].1.as_deref(), Some("failed"));
    }

    /// Started, but the store still records the deployment before it (the agent died in
    /// between, or the write failed): that one's probation is over, this one's has not begun.
    #[test]
    fn a_deployment_not_yet_recorded_has_not_passed() {
        let (v1, v2) = (wanted("web"), DesiredService::example("web", "app@2", "hash-2"));
        let running_v2 = [container("web", "hash-2", "running")];
        let v1_settled = deployed(&v1, "id-web-hash-web", None);
        let minute = Duration::from_secs(60);
        let none = BTreeSet::new();
        let of =
            |records: &[ServiceRecord]| probation_of(std::slice::from_ref(&v2), &running_v2, records, minute, &none);
        assert_eq!(of(std::slice::from_ref(&v1_settled))[0].1, None);
        assert_eq!(of(&[])[0].1, None, "nothing on record");
        // A failed attempt at v2 names it, but the container on record is still v1's.
        let attempt =
            ServiceRecord { last_error: Some("start failed".into()), ..deployed(&v2, "id-web-hash-web", None) };
        assert_eq!(of(&[attempt])[0].1, None);
        assert_eq!(of(&[deployed(&v2, "id-web-hash-2", Some(5))])[0].1.as_deref(), Some("running"), "recorded");
    }
}
