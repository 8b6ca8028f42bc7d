//! The operator's side of the fleet tests (`tests/fleet_*.rs`): calls with the admin
//! token, fleets with a provisioning key, releases of pushed images, and reading a
//! rollout's devices and a fleet's events back.

use crate::simulated::{services_of, SimulatedFleet};
use crate::util::demo_target;
use crate::{push_image, ApiReply, ImageSpec, Registry, Server};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// `method path` as the operator.
/// A release (or target) of one app `app` named `app_name` whose one service `service`
/// runs `image`, restarted always.
pub fn one_service_release(app: u32, app_name: &str, service: &str, image: &str) -> Value {
    let service = json!({"serviceId": 1, "serviceName": service, "imageName": image,
                         "config": {"image": image, "restart": "always"}});
    json!({"apps": {app.to_string(): {"appId": app, "appName": app_name, "services": [service]}}, "config": {}})
}

pub fn call(server: &Server, method: &str, path: &str, body: Option<Value>) -> ApiReply {
    server.request(method, path, body.as_ref(), Some(server.admin_token()))
}

/// `call`, asserting the status; the body as JSON.
pub fn expect(server: &Server, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    let reply = call(server, method, path, body);
    assert_eq!(reply.status, status, "{method} {path}: {}\nserver log:\n{}", reply.body, server.log());
    reply.json()
}

/// A fleet `name` (with `extra` fields), and a provisioning key whose devices join it.
pub fn fleet_with_key(server: &Server, name: &str, extra: Value) -> String {
    let mut body = json!({"name": name});
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    expect(server, "POST", "/api/v1/fleets", Some(body), 201);
    let key = expect(server, "POST", "/api/v1/provisioning-keys", Some(json!({"fleet": name})), 201);
    key["key"].as_str().unwrap().to_string()
}

/// Pushes one small image per name to `registry` as `<fleet>/<name>:<tag>`; the references.
pub fn push_images(registry: &Registry, fleet: &str, tag: &str, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let repository = format!("{fleet}/{name}");
            push_image(registry, &repository, tag, &ImageSpec::linux_amd64(format!("{fleet} {name} {tag}")));
            format!("{}/{repository}:{tag}", registry.host())
        })
        .collect()
}

/// A release of `images` (one service each); its id and pinned images, in service order.
pub fn make_release(server: &Server, fleet: &str, images: &[String]) -> (u64, Vec<String>) {
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    let release = expect(server, "POST", &format!("/api/v1/fleets/{fleet}/releases"), Some(demo_target(&images)), 201);
    assert_eq!(release["source"], "operator", "{release:#}");
    let pinned: Vec<String> = services_of(&release).into_iter().map(|s| s.3).collect();
    assert_eq!(pinned.len(), images.len(), "{release:#}");
    for (pinned, image) in pinned.iter().zip(&images) {
        let repository = image.split_once('@').map_or_else(|| image.rsplit_once(':').unwrap().0, |(r, _)| r);
        assert!(pinned.starts_with(&format!("{repository}@sha256:")), "{image} not pinned: {release:#}");
    }
    (release["id"].as_u64().unwrap(), pinned)
}

pub fn rollout(server: &Server, fleet: &str, id: u64) -> Value {
    expect(server, "GET", &format!("/api/v1/fleets/{fleet}/rollouts/{id}"), None, 200)
}

/// uuid → (wave, state, hasRelease) of a rollout.
pub fn device_states(rollout: &Value) -> BTreeMap<String, (u64, String, bool)> {
    rollout["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices in {rollout:#}"))
        .iter()
        .map(|d| {
            let uuid = d["uuid"].as_str().unwrap().to_string();
            (uuid, (d["wave"].as_u64().unwrap(), d["state"].as_str().unwrap().to_string(), d["hasRelease"] == true))
        })
        .collect()
}

/// The uuids of each wave (1-based waves, index 0 is wave 1).
pub fn waves_of(rollout: &Value) -> Vec<Vec<String>> {
    let mut waves: Vec<Vec<String>> = Vec::new();
    for (uuid, (wave, _, _)) in device_states(rollout) {
        let i = wave as usize - 1;
        if waves.len() <= i {
            waves.resize(i + 1, Vec::new());
        }
        waves[i].push(uuid);
    }
    waves
}

/// The fleet's events, oldest first.
pub fn events(server: &Server, fleet: &str) -> Vec<Value> {
    let answer = expect(server, "GET", &format!("/api/v1/events?fleet={fleet}&limit=1000"), None, 200);
    let mut events = answer["events"].as_array().unwrap().clone();
    events.reverse();
    events
}

/// How many events of `kind` rollout `id` has.
pub fn count_events(events: &[Value], kind: &str, rollout: u64) -> usize {
    events.iter().filter(|e| e["kind"] == kind && e["rollout"] == rollout).count()
}

/// Every device polls its target, which must be `images`, and reports it running and passed.
pub fn settle_on(devices: &mut SimulatedFleet, images: &[String]) {
    for device in devices.devices.iter_mut() {
        device.poll();
        assert_eq!(device.images(), images, "{} after the fleet's release was set", device.uuid);
        let target = device.target().unwrap().clone();
        device.report_running(&target, "passed");
    }
}
