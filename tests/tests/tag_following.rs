//! A push to `:latest` reaches a running device with no target set by anyone: once
//! through the background re-resolution, once through the registry's webhook (the
//! Debian docker-registry configured to notify the server). Real dockerd, registry,
//! server and agent, as in agent_e2e.rs.

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::{Agent, Auth, Docker, Registry, RegistryOptions, Server};
use serde_json::{json, Value};
use std::time::Instant;

const WEBHOOK_TOKEN: &str = "webhook-token-for-tests-0123456789";

/// A command that stops at once on SIGTERM (a plain `sleep` as PID 1 ignores it, and
/// Docker would wait its 10 s grace period on every replacement).
const SERVE: &str = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; cat /version; while true; do sleep 1; done"]"#;

fn push_version(docker: &Docker, reference: &str, version: &str) -> String {
    docker.push_busybox(reference, version, SERVE)
}

fn running_image(docker: &Docker, app_id: u32) -> Vec<String> {
    docker
        .containers_with_label(&format!("{MANAGED}={app_id}"))
        .iter()
        .filter(|c| c["State"]["Running"] == true)
        .map(|c| c["Config"]["Image"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Sets `latest` on a new device, starts its agent, waits for v1 to run.
fn device_on_latest(server: &Server, docker: &Docker, latest: &str, v1: &str, uuid: &str) -> Agent {
    let state = json!({"apps": {"5": {"appId": 5, "appName": "app", "services": [
        {"serviceId": 1, "serviceName": "main", "imageName": latest}]}}, "config": {}});
    let reply = server.set_target_state(uuid, &state);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let agent = Agent::start(&server.url(), &server.provisioning_key_for(uuid), uuid, docker);
    agent.converge("v1 running", || running_image(docker, 5) == [v1]);
    agent
}

fn history(server: &Server, uuid: &str) -> Vec<Value> {
    let reply = server.request(
        "GET",
        &format!("/api/v1/devices/{uuid}/target-state/history"),
        None,
        Some(server.admin_token()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["versions"].as_array().unwrap().clone()
}

#[test]
fn the_background_re_resolution_moves_a_running_device_to_a_new_push() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&["--refresh-interval", "2", "--cache-ttl", "1"]);
    let latest = format!("{}/follow/app:latest", registry.host());
    let v1 = format!("{}/follow/app@{}", registry.host(), push_version(docker, &latest, "v1"));
    let agent = device_on_latest(&server, docker, &latest, &v1, "follow-refresh");

    let v2 = format!("{}/follow/app@{}", registry.host(), push_version(docker, &latest, "v2"));
    agent.converge("v2 running without anyone setting a target", || running_image(docker, 5) == [v2.as_str()]);
    let versions = history(&server, "follow-refresh");
    assert_eq!(versions[0]["source"], "refresh", "{versions:?}");
    assert_eq!(versions[0]["images"][0]["imageName"], v2.as_str());
    assert_eq!(versions[1]["source"], "operator");

    let images = server.request("GET", "/api/v1/images", None, Some(server.admin_token())).json();
    let tracked = &images["images"][0];
    assert_eq!(tracked["reference"], latest.as_str());
    assert_eq!(tracked["digest"].as_str(), v2.split('@').nth(1));
    assert_eq!(tracked["devices"], json!(["follow-refresh"]));
}

#[test]
fn the_registry_webhook_moves_a_running_device_to_a_new_push() {
    let turn = take_turn();
    let docker = &turn.docker;
    let server = Server::start(&["--refresh-interval", "0", "--webhook-token", WEBHOOK_TOKEN]);
    let notify = (format!("{}/api/v1/webhooks/registry", server.url()), WEBHOOK_TOKEN.to_string());
    let registry =
        Registry::start_with(Auth::Anonymous, &RegistryOptions { notify: Some(notify), ..Default::default() });
    let latest = format!("{}/hook/app:latest", registry.host());
    let v1 = format!("{}/hook/app@{}", registry.host(), push_version(docker, &latest, "v1"));
    let agent = device_on_latest(&server, docker, &latest, &v1, "follow-hook");

    docker.import_busybox(&latest, "v2", SERVE);
    let pushed = Instant::now();
    let v2 = format!("{}/hook/app@{}", registry.host(), docker.push(&latest));
    agent.converge("v2 running after the webhook", || running_image(docker, 5) == [v2.as_str()]);
    // A figure for BENCHMARKS.md, not an assertion: the image is local, so no download.
    println!("push to new container running: {:.1} s", pushed.elapsed().as_secs_f64());
    let versions = history(&server, "follow-hook");
    assert_eq!(versions[0]["source"], "webhook", "{versions:?}");
    assert!(server.log().contains("registry webhook"), "{}", server.log());

    // Wrong or missing tokens are refused.
    let event = json!({"events": []});
    let path = "/api/v1/webhooks/registry";
    assert_eq!(server.request("POST", path, Some(&event), None).status, 401);
    assert_eq!(server.request("POST", path, Some(&event), Some("wrong")).status, 401);
    assert_eq!(server.request("POST", &format!("{path}?token={WEBHOOK_TOKEN}"), Some(&event), None).status, 202);
}
