//! Simulated devices, for fleet tests that need more gateways than one dockerd can run: each
//! registers, polls its target state with its ETag (`If-None-Match`) and reports its
//! current state over the wire exactly as `pinion-agent` does (`PATCH /device/state`, the
//! report shape of `agent/src/report.rs`, with per-service `probation` and `rollback`),
//! but runs nothing: what it reports is what the test tells it to. Only the containers are
//! imagined; every request is real and goes to the real server.

use crate::server::Server;
use crate::util::random_hex;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// One simulated gateway: its identity, and the last target it was given.
pub struct SimulatedDevice {
    pub uuid: String,
    key: String,
    url: String,
    http: ureq::Agent,
    etag: Option<String>,
    /// The device's part of the last poll answer: `{"apps": {…}, "config": {…}}`.
    target: Option<Value>,
    /// The probation last reported for `target` (`None`: not reported since it came).
    probation: Option<String>,
}

/// What one round of `SimulatedDevice::step_healthy` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Round {
    /// A new target came, and was reported running, in probation.
    NewTarget(Value),
    /// The target, polled before without a report, was reported running, in probation.
    InProbation,
    /// The target of the round before was reported as having passed probation.
    Passed,
    /// Nothing changed.
    Idle,
}

/// One service of a target, as the agent names it: `(app id, service name, service id, image)`.
pub type TargetService = (String, String, Option<Value>, String);

impl SimulatedDevice {
    /// `POST /device/register` with `provisioning_key` and a device key of its own, as the
    /// agent does on first start (a key made with `{"fleet": …}` puts it in that fleet).
    pub fn register(server: &Server, provisioning_key: &str, uuid: &str) -> SimulatedDevice {
        let key = random_hex(32);
        let body = json!({"uuid": uuid, "deviceName": uuid, "deviceType": "simulated", "deviceApiKey": key});
        let reply = server.request("POST", "/api/v1/device/register", Some(&body), Some(provisioning_key));
        assert_eq!(reply.status, 200, "registering simulated device {uuid}: {}", reply.body);
        SimulatedDevice {
            uuid: uuid.to_string(),
            key,
            url: server.url(),
            http: crate::util::http_agent(Duration::from_secs(30)),
            etag: None,
            target: None,
            probation: None,
        }
    }

    /// `GET /device/{uuid}/state` with `If-None-Match: <last ETag>`: the new target when
    /// it changed (kept as the device's target), `None` on `304 Not Modified`.
    pub fn poll(&mut self) -> Option<Value> {
        let url = format!("{}/api/v1/device/{}/state", self.url, self.uuid);
        let mut request = self.http.get(&url).header("X-Device-API-Key", &self.key);
        if let Some(etag) = &self.etag {
            request = request.header("If-None-Match", etag);
        }
        let mut response = request.call().unwrap_or_else(|e| panic!("simulated device {}: GET {url}: {e}", self.uuid));
        let status = response.status().as_u16();
        if status == 304 {
            return None;
        }
        let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 200, "simulated device {}: poll answered {status}: {body}", self.uuid);
        assert!(etag.is_some(), "simulated device {}: a 200 poll answer without an ETag: {body}", self.uuid);
        let mut answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("simulated device {}: poll answer is not JSON ({e}): {body}", self.uuid));
        let state = answer
            .get_mut(&self.uuid)
            .map(Value::take)
            .unwrap_or_else(|| panic!("simulated device {}: poll answer has no state for it: {body}", self.uuid));
        self.etag = etag;
        self.target = Some(state.clone());
        self.probation = None;
        Some(state)
    }

    /// The device key it registered with (`X-Device-API-Key`), for requests of its own
    /// to another server on the same data (a migrated or restored database).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The last target polled.
    pub fn target(&self) -> Option<&Value> {
        self.target.as_ref()
    }

    /// The images of the last target polled, in (app, service) order.
    pub fn images(&self) -> Vec<String> {
        self.target.as_ref().map(|t| services_of(t).into_iter().map(|s| s.3).collect()).unwrap_or_default()
    }

    /// Reports every service of `target` running its image, with `probation` (`running`,
    /// `passed` or `failed`), as the agent does once it runs them.
    pub fn report_running(&mut self, target: &Value, probation: &str) {
        let apps = self.apps_report(target, |_, image, service| {
            service.insert("imageName".into(), image.into());
            service.insert("status".into(), "running".into());
            service.insert("probation".into(), probation.into());
        });
        self.report(apps);
        if self.target.as_ref() == Some(target) {
            self.probation = Some(probation.to_string());
        }
    }

    /// Reports what the agent reports after `service` of the current target (running `from`)
    /// failed probation and was put back on `to`: `imageName` is `to`, which runs, with
    /// `targetImage` and `rollback` naming `from`. The other services run and passed.
    pub fn report_rollback(&mut self, service: &str, from: &str, to: &str, reason: &str) {
        let target = self.target.clone().unwrap_or_else(|| panic!("simulated device {} has no target", self.uuid));
        // The agent's `at`: unix seconds.
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let apps = self.apps_report(&target, |name, image, entry| {
            entry.insert("status".into(), "running".into());
            if name == service {
                entry.insert("imageName".into(), to.into());
                entry.insert("targetImage".into(), from.into());
                entry.insert("probation".into(), "failed".into());
                entry.insert("rollback".into(), json!({"from": from, "to": to, "reason": reason, "at": at}));
            } else {
                entry.insert("imageName".into(), image.into());
                entry.insert("probation".into(), "passed".into());
            }
        });
        self.report(apps);
        self.probation = Some("failed".into());
    }

    /// Reports `service` of the current target in error (`{"type": kind, "message"}`) on
    /// its target image, as after a failed pull or start; the other services run and passed.
    pub fn report_error(&mut self, service: &str, kind: &str, message: &str) {
        let target = self.target.clone().unwrap_or_else(|| panic!("simulated device {} has no target", self.uuid));
        let apps = self.apps_report(&target, |name, image, entry| {
            entry.insert("imageName".into(), image.into());
            if name == service {
                entry.insert("status".into(), "error".into());
                entry.insert("error".into(), json!({"type": kind, "message": message}));
                entry.remove("containerId");
            } else {
                entry.insert("status".into(), "running".into());
                entry.insert("probation".into(), "passed".into());
            }
        });
        self.report(apps);
        self.probation = Some("failed".into());
    }

    /// One poll round of a healthy agent: a target not reported yet (new, or polled
    /// without a report) is reported running in probation; the round after, passed.
    pub fn step_healthy(&mut self) -> Round {
        let new = self.poll();
        let Some(target) = self.target.clone() else { return Round::Idle };
        match self.probation.as_deref() {
            None => {
                self.report_running(&target, "running");
                self.probation = Some("running".into());
                match new {
                    Some(new) => Round::NewTarget(new),
                    None => Round::InProbation,
                }
            }
            Some("running") => {
                self.report_running(&target, "passed");
                self.probation = Some("passed".into());
                Round::Passed
            }
            Some(_) => Round::Idle,
        }
    }

    /// `PATCH /device/state` with `{"<uuid>": {"apps": apps, "config": {}, …}}`.
    pub fn report(&self, apps: Value) {
        let body =
            json!({&self.uuid: {"apps": apps, "config": {}, "agent_version": "simulated", "os_version": "simulated"}});
        let url = format!("{}/api/v1/device/state", self.url);
        let mut response = self
            .http
            .patch(&url)
            .header("X-Device-API-Key", &self.key)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("simulated device {}: PATCH {url}: {e}", self.uuid));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        assert!((200..300).contains(&status), "simulated device {}: report answered {status}: {text}", self.uuid);
    }

    /// `{"<appId>": {"services": {"<name>": {…}}}}` for `target`, each service with its
    /// `serviceId` and a container id that stays the same for the same image, then `fill`.
    fn apps_report(&self, target: &Value, mut fill: impl FnMut(&str, &str, &mut Map<String, Value>)) -> Value {
        let mut apps = Map::new();
        for (app_id, name, service_id, image) in services_of(target) {
            let mut entry = Map::new();
            if let Some(id) = service_id {
                entry.insert("serviceId".into(), id);
            }
            let container = crate::util::sha256_digest(format!("{}/{app_id}/{name}/{image}", self.uuid).as_bytes());
            entry.insert("containerId".into(), container.trim_start_matches("sha256:").into());
            fill(&name, &image, &mut entry);
            let app = apps.entry(app_id).or_insert_with(|| json!({"services": {}}));
            app["services"][name.as_str()] = Value::Object(entry);
        }
        Value::Object(apps)
    }
}

/// The services of a target (`{"apps": …}`, apps and services as objects or arrays), named
/// as the agent names them: the app's `appId` else its key; the service's `serviceName`
/// else its key; the image from `imageName` else `config.image`.
pub fn services_of(target: &Value) -> Vec<TargetService> {
    let entries = |v: &Value| -> Vec<(String, Value)> {
        match v {
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Value::Array(list) => list.iter().enumerate().map(|(i, v)| (i.to_string(), v.clone())).collect(),
            _ => Vec::new(),
        }
    };
    let id_text = |v: &Value| match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    for (app_key, app) in entries(&target["apps"]) {
        let app_id = id_text(&app["appId"]).unwrap_or(app_key);
        for (service_key, service) in entries(&app["services"]) {
            let name =
                service["serviceName"].as_str().filter(|n| !n.is_empty()).map(str::to_string).unwrap_or(service_key);
            let image = service["imageName"]
                .as_str()
                .filter(|i| !i.is_empty())
                .or_else(|| service["config"]["image"].as_str())
                .unwrap_or_default()
                .to_string();
            let service_id = service.get("serviceId").cloned().filter(|v| !v.is_null());
            out.push((app_id.clone(), name, service_id, image));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// Many simulated devices registered with one provisioning key, named `<prefix>-00`, …
pub struct SimulatedFleet {
    pub devices: Vec<SimulatedDevice>,
}

impl SimulatedFleet {
    /// `count` devices `<prefix>-00` … registered with `provisioning_key` (zero-padded to
    /// two digits, so uuid order is number order).
    pub fn register(server: &Server, provisioning_key: &str, prefix: &str, count: usize) -> SimulatedFleet {
        let devices = (0..count)
            .map(|i| SimulatedDevice::register(server, provisioning_key, &format!("{prefix}-{i:02}")))
            .collect();
        SimulatedFleet { devices }
    }

    pub fn device(&mut self, uuid: &str) -> &mut SimulatedDevice {
        self.devices.iter_mut().find(|d| d.uuid == uuid).unwrap_or_else(|| panic!("no simulated device {uuid}"))
    }

    pub fn uuids(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.uuid.clone()).collect()
    }

    /// Polls every device; the (uuid, new target) of those whose target changed.
    pub fn poll_all(&mut self) -> Vec<(String, Value)> {
        self.devices.iter_mut().filter_map(|d| d.poll().map(|t| (d.uuid.clone(), t))).collect()
    }

    /// `step_healthy` for every device `which` selects: (uuid, what it did) of each.
    pub fn step_healthy(&mut self, which: impl Fn(&str) -> bool) -> Vec<(String, Round)> {
        self.devices.iter_mut().filter(|d| which(&d.uuid)).map(|d| (d.uuid.clone(), d.step_healthy())).collect()
    }
}
