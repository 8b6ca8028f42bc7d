//! Who may claim a device, and a device's life after registration, each as the attack or
//! the bad day of issue 12 sends it: a provisioning-key holder squatting a device the
//! operator prepared (and reading its target's secrets), probing which uuids exist,
//! poisoning the provisioning key; a gateway whose agent database was lost coming back
//! under its uuid after the operator resets its key; a device deleted with its agent
//! still running. Real server and agent processes, a real dockerd for the agent.

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::util::{random_hex, unique};
use pinion_tests::{Agent, ApiReply, Auth, Registry, Server};
use serde_json::{json, Value};

fn register(server: &Server, provisioning_key: &str, uuid: &str, device_key: &str) -> ApiReply {
    let body = json!({"uuid": uuid, "deviceName": "gw", "deviceApiKey": device_key});
    server.request("POST", "/api/v1/device/register", Some(&body), Some(provisioning_key))
}

fn poll(server: &Server, uuid: &str, device_key: &str) -> ApiReply {
    server.send_bytes("GET", &format!("/api/v1/device/{uuid}/state"), &[("X-Device-API-Key", device_key)], Vec::new())
}

fn admin(server: &Server, method: &str, path: &str, body: Option<&Value>) -> ApiReply {
    server.request(method, path, body, Some(server.admin_token()))
}

/// A target with a secret in its configuration, and no apps.
fn secret_target(secret: &str) -> Value {
    json!({"apps": {}, "config": {"API_TOKEN": secret}})
}

#[test]
fn a_prepared_device_is_claimed_only_with_its_registration_token() {
    let server = Server::start(&[]);
    let fleet_key = server.provisioning_key();
    let prepared = unique("prepared");
    assert_eq!(server.set_target_state(&prepared, &secret_target("prepared-secret")).status, 200);

    // The attacker's exact request: the fleet's provisioning key, the prepared uuid, a key of its own.
    let squatter_key = random_hex(32);
    let squat = register(&server, &fleet_key, &prepared, &squatter_key);
    assert_eq!(squat.status, 409, "{}", squat.body);
    let stolen = poll(&server, &prepared, &squatter_key);
    assert_eq!(stolen.status, 401, "{}", stolen.body);
    assert!(!stolen.body.contains("prepared-secret"));

    // One answer whatever the uuid's state: prepared, or registered and in use.
    let taken = unique("taken");
    let taken_key = random_hex(32);
    assert_eq!(register(&server, &fleet_key, &taken, &taken_key).status, 200);
    assert_eq!(poll(&server, &taken, &taken_key).status, 200);
    let probe = register(&server, &server.provisioning_key(), &taken, &random_hex(32));
    assert_eq!(probe.status, 409);
    assert_eq!(
        squat.json()["message"].as_str().unwrap().replace(&prepared, "UUID"),
        probe.json()["message"].as_str().unwrap().replace(&taken, "UUID")
    );

    // The operator's registration token claims it, once.
    let token = server.registration_token(&prepared);
    let device_key = random_hex(32);
    let claimed = register(&server, &token, &prepared, &device_key);
    assert_eq!(claimed.status, 200, "{}", claimed.body);
    let served = poll(&server, &prepared, &device_key);
    assert_eq!(served.status, 200);
    assert!(served.body.contains("prepared-secret"));
    let twice = register(&server, &token, &prepared, &random_hex(32));
    assert_eq!(twice.status, 401, "a spent token registers nothing: {}", twice.body);
    assert_eq!(poll(&server, &prepared, &device_key).status, 200, "the claim stands");

    // A token is for its uuid only, and a registered device gets none.
    let other_token = server.registration_token(&unique("reserved"));
    let elsewhere = register(&server, &other_token, &unique("elsewhere"), &random_hex(32));
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.body);
    let path = format!("/api/v1/devices/{taken}/registration-token");
    assert_eq!(admin(&server, "POST", &path, None).status, 409);

    // A token reserves its uuid at once: the fleet key cannot get there first.
    let reserved = unique("reserved");
    let reserved_token = server.registration_token(&reserved);
    assert_eq!(register(&server, &fleet_key, &reserved, &random_hex(32)).status, 409);
    assert_eq!(register(&server, &reserved_token, &reserved, &random_hex(32)).status, 200);
    let listed = admin(&server, "GET", "/api/v1/provisioning-keys", None).json();
    let spent = listed["provisioningKeys"].as_array().unwrap().iter().find(|k| k["device"] == reserved.as_str());
    let spent = spent.expect("the token is listed with its device");
    assert_eq!(spent["singleUse"], true);
    assert!(spent["revokedAt"].is_string(), "spent: {spent}");
}

#[test]
fn an_incomplete_registration_is_taken_over_by_no_other_provisioning_key() {
    let server = Server::start(&[]);
    let uuid = unique("incomplete");
    let (own, other) = (server.provisioning_key(), server.provisioning_key());
    assert_eq!(register(&server, &own, &uuid, &random_hex(32)).status, 200);
    // Before its first poll, another key holder tries to put its own key there.
    let intruder_key = random_hex(32);
    assert_eq!(register(&server, &other, &uuid, &intruder_key).status, 409);
    assert_eq!(poll(&server, &uuid, &intruder_key).status, 401);
    // The agent that crashed between the phases comes back with its own provisioning key.
    let device_key = random_hex(32);
    assert_eq!(register(&server, &own, &uuid, &device_key).status, 200);
    assert_eq!(poll(&server, &uuid, &device_key).status, 200);
}

#[test]
fn a_provisioning_key_cannot_be_made_a_device_key() {
    let server = Server::start(&[]);
    let fleet_key = server.provisioning_key();
    // The attacker's exact request: its provisioning key as the new device's key.
    let poisoned = register(&server, &fleet_key, &unique("poison"), &fleet_key);
    assert_eq!(poisoned.status, 400, "{}", poisoned.body);
    let with_admin = register(&server, &fleet_key, &unique("poison"), server.admin_token());
    assert_eq!(with_admin.status, 400, "{}", with_admin.body);
    // The key still registers devices for everyone else.
    assert_eq!(register(&server, &fleet_key, &unique("fine"), &random_hex(32)).status, 200);
}

#[test]
fn a_deleted_device_is_gone_with_everything_of_it() {
    let server = Server::start(&[]);
    let uuid = unique("deleted");
    let device_key = random_hex(32);
    assert_eq!(server.set_target_state(&uuid, &secret_target("s")).status, 200);
    assert_eq!(register(&server, &server.registration_token(&uuid), &uuid, &device_key).status, 200);
    assert_eq!(poll(&server, &uuid, &device_key).status, 200);
    let unused_token = server.registration_token(&unique("other"));
    let credentials = json!({"username": "robot", "password": "device-scoped-pass", "devices": [uuid]});
    let stored = admin(&server, "PUT", "/api/v1/registries/registry.lan:5000/credentials", Some(&credentials));
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_eq!(admin(&server, "DELETE", &format!("/api/v1/devices/{uuid}"), None).status, 200);
    let registries = admin(&server, "GET", "/api/v1/registries", None);
    assert!(!registries.body.contains(&uuid), "its registry credentials went with it: {}", registries.body);

    assert_eq!(poll(&server, &uuid, &device_key).status, 401, "its key is gone");
    for path in ["", "/target-state", "/current-state", "/target-state/history", "/logs"] {
        let reply = admin(&server, "GET", &format!("/api/v1/devices/{uuid}{path}"), None);
        assert_eq!(reply.status, 404, "GET {path}: {}", reply.body);
    }
    assert_eq!(admin(&server, "DELETE", &format!("/api/v1/devices/{uuid}"), None).status, 404);
    // Only the device's own tokens went with it.
    let keys = admin(&server, "GET", "/api/v1/provisioning-keys", None).json();
    assert!(!keys.to_string().contains(&uuid), "{keys}");
    assert_eq!(register(&server, &unused_token, &unique("x"), &random_hex(32)).status, 403, "still bound");
    // The uuid is free again: a new device may take it.
    assert_eq!(register(&server, &server.provisioning_key(), &uuid, &random_hex(32)).status, 200);
}

#[test]
fn a_key_reset_reopens_a_device_only_to_the_key_that_registered_it_and_only_for_a_while() {
    let server = Server::start(&[]);
    let (fleet_key, other_key) = (server.provisioning_key(), server.provisioning_key());
    let reset =
        |uuid: &str, body: Value| admin(&server, "POST", &format!("/api/v1/devices/{uuid}/key/reset"), Some(&body));
    let registered = |uuid: &str| {
        let key = random_hex(32);
        assert_eq!(register(&server, &fleet_key, uuid, &key).status, 200);
        assert_eq!(poll(&server, uuid, &key).status, 200, "complete");
        key
    };

    // Closed at once (openForHours 0): the fleet key never claims it again; a token does.
    let closed = unique("closed");
    let old_key = registered(&closed);
    assert_eq!(reset(&closed, json!({"openForHours": 0})).status, 200);
    assert_eq!(poll(&server, &closed, &old_key).status, 401, "the old key stops at once");
    assert_eq!(register(&server, &fleet_key, &closed, &random_hex(32)).status, 409);
    let token = server.registration_token(&closed);
    assert_eq!(register(&server, &token, &closed, &random_hex(32)).status, 200);

    // Reopened to another key by name: that one, not the one that registered it.
    let moved = unique("moved");
    registered(&moved);
    let other_id = admin(&server, "GET", "/api/v1/provisioning-keys", None).json()["provisioningKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["devicesRegistered"] == 0 && k["device"].is_null())
        .map(|k| k["id"].as_str().unwrap().to_string())
        .expect("the unused key");
    assert_eq!(reset(&moved, json!({"provisioningKey": other_id, "openForHours": 1})).status, 200);
    assert_eq!(register(&server, &fleet_key, &moved, &random_hex(32)).status, 409);
    assert_eq!(register(&server, &other_key, &moved, &random_hex(32)).status, 200);

    // A device that never registered has no key to reset: its claim stays a token's.
    let prepared = unique("never");
    assert_eq!(server.set_target_state(&prepared, &secret_target("s")).status, 200);
    let refused = reset(&prepared, json!({}));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(register(&server, &fleet_key, &prepared, &random_hex(32)).status, 409);
    for bad in [json!({"openForHours": 1000}), json!({"provisioningKey": "no-such-key"}), json!({"open": 1})] {
        assert_eq!(reset(&moved, bad.clone()).status, 400, "{bad}");
    }
}

#[test]
fn a_registration_token_raced_by_fifty_registrations_registers_one() {
    let server = Server::start(&["--registrations-per-minute", "0", "--auth-failures-per-minute", "0"]);
    let uuid = unique("raced");
    assert_eq!(server.set_target_state(&uuid, &secret_target("raced-secret")).status, 200);
    let token = server.registration_token(&uuid);
    let keys: Vec<String> = (0..50).map(|_| random_hex(32)).collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let racers: Vec<_> =
            keys.iter().map(|key| scope.spawn(|| register(&server, &token, &uuid, key).status)).collect();
        racers.into_iter().map(|racer| racer.join().unwrap()).collect()
    });
    let winners: Vec<&String> = keys.iter().zip(&statuses).filter(|(_, s)| **s == 200).map(|(k, _)| k).collect();
    assert_eq!(winners.len(), 1, "statuses: {statuses:?}");
    assert!(statuses.iter().all(|s| matches!(s, 200 | 401 | 409)), "{statuses:?}");
    for key in &keys {
        let expected = if key == winners[0] { 200 } else { 401 };
        assert_eq!(poll(&server, &uuid, key).status, expected);
    }
}

#[test]
fn a_key_bound_to_a_registered_device_is_refused() {
    let server = Server::start(&[]);
    let uuid = unique("bound");
    let key = random_hex(32);
    assert_eq!(register(&server, &server.provisioning_key(), &uuid, &key).status, 200);
    assert_eq!(poll(&server, &uuid, &key).status, 200);
    let bound = admin(&server, "POST", "/api/v1/provisioning-keys", Some(&json!({"device": uuid})));
    assert_eq!(bound.status, 409, "{}", bound.body);
}

/// The bad day: a gateway's storage is replaced. Its agent comes back with a new key
/// under the same uuid, is refused, says what the operator must do and waits (no exit,
/// no restart loop); the operator resets the key; the agent registers and carries on.
/// Then the device is deleted: its agent is refused and leaves its containers running.
#[test]
fn a_gateway_that_lost_its_database_comes_back_after_a_key_reset() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let image = format!("{}/lifecycle/idle:v1", registry.host());
    docker.import_busybox(&image, "v1", r#"["/bin/sh", "-c", "exec sleep 3600"]"#);
    docker.push(&image);
    let uuid = unique("lifecycle");
    let state = json!({"apps": {"7": {"appId": 7, "appName": "keep", "services": [
        {"serviceId": 1, "serviceName": "idle", "imageName": image, "config": {"image": image}}]}}, "config": {}});
    let running =
        || docker.containers_with_label(&format!("{MANAGED}=7")).iter().any(|c| c["State"]["Running"] == true);

    // A fleet gateway registers with the fleet's provisioning key, then gets its target.
    let fleet_key = server.provisioning_key();
    let mut first = Agent::start(&server.url(), &fleet_key, &uuid, docker);
    first.converge("registered", || first.log().contains(&format!("registered with the server as {uuid}")));
    assert_eq!(server.set_target_state(&uuid, &state).status, 200);
    first.converge("the service running", running);
    first.kill();

    // The SD card is replaced: the same uuid, a new database, the fleet's provisioning key.
    let mut agent = Agent::start(&server.url(), &fleet_key, &uuid, docker);
    agent.converge("the refusal explained", || agent.log().contains("key/reset"));
    assert!(agent.is_running(), "a refused agent waits, it does not exit:\n{}", agent.log());

    // No key holder gets in meanwhile: the refusal is the squatter's too.
    assert_eq!(register(&server, &fleet_key, &uuid, &random_hex(32)).status, 409);

    let reset = admin(&server, "POST", &format!("/api/v1/devices/{uuid}/key/reset"), None);
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert!(reset.json()["openUntil"].is_string(), "{}", reset.body);
    // Reopened to the fleet key that registered it, to no other.
    assert_eq!(register(&server, &server.provisioning_key(), &uuid, &random_hex(32)).status, 409);
    let registered = format!("registered with the server as {uuid}");
    agent.converge("registered again with the fleet key", || agent.log().contains(&registered));
    agent.converge("its target served and reported again", || {
        let current = admin(&server, "GET", &format!("/api/v1/devices/{uuid}/current-state"), None).json();
        current["apps"]["7"]["services"]["idle"]["status"] == "running"
    });
    assert!(agent.is_running(), "one process all along:\n{}", agent.log());
    assert_eq!(register(&server, &fleet_key, &uuid, &random_hex(32)).status, 409, "open until a key is set");

    let deleted = admin(&server, "DELETE", &format!("/api/v1/devices/{uuid}"), None);
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    agent.converge("told its key is gone", || agent.log().contains("does not know this device's key"));
    assert!(running(), "a deleted device's containers are left as they are");
    assert!(agent.is_running(), "{}", agent.log());
}
