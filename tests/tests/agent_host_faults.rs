//! Faults of the gateway, not of the image, end to end with the real dockerd: a port
//! already taken by another container, a device that is unplugged and then appears, and
//! a container name held by a container made by hand. Each makes Docker refuse the new
//! deployment with a 409 or a 500; the agent reports it as a host fault, puts the
//! deployment before it back meanwhile (only for its retry backoff, not for an hour as
//! for a bad image), and tries again until the new one runs once the fault clears,
//! without a new target.
//!
//! The agent manages every container labelled `io.pinion.app-id` on its dockerd, so
//! these tests take turns (one agent on the test dockerd at a time).

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::util::unique;
use pinion_tests::{Agent, Auth, Docker, Registry, Server};
use serde_json::{json, Value};

const APP: u32 = 41;
const SLEEPS: &str = r#"["/bin/sh", "-c", "cat /version; exec sleep 3600"]"#;
/// The device node the test plugs in and out (a copy of /dev/null's).
const DEVICE: &str = "/dev/pinion-test-fault";

fn target(services: Vec<Value>) -> Value {
    json!({"apps": {APP.to_string(): {"appId": APP, "appName": "host", "services": services}}, "config": {}})
}

fn service(id: u32, name: &str, image: &str, extra: Value) -> Value {
    let mut config = json!({"image": image, "restart": "always"});
    config.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    json!({"serviceId": id, "serviceName": name, "imageName": image, "config": config})
}

fn set(server: &Server, uuid: &str, state: &Value) {
    let reply = server.set_target_state_uncached(uuid, state);
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Whether `name`'s one container runs the image pinned from `version`'s push.
fn runs(docker: &Docker, name: &str, image_digest: &str) -> bool {
    let all: Vec<Value> = docker
        .containers_with_label(&format!("{MANAGED}={APP}"))
        .into_iter()
        .filter(|c| c["Config"]["Labels"]["io.pinion.service-name"] == name)
        .collect();
    all.len() == 1
        && all[0]["Config"]["Image"].as_str().is_some_and(|i| i.ends_with(image_digest))
        && all[0]["State"]["Running"] == true
}

/// The device's reported status of service `name`.
fn reported(server: &Server, uuid: &str, name: &str) -> Value {
    let reply =
        server.request("GET", &format!("/api/v1/devices/{uuid}/current-state"), None, Some(server.admin_token()));
    reply.json()["apps"][APP.to_string()]["services"][name].clone()
}

fn unplug() {
    let _ = std::fs::remove_file(DEVICE);
}

#[test]
fn host_faults_are_retried_until_they_clear_with_the_earlier_deployment_running_meanwhile() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let image = |name: &str| format!("{}/host/{name}:v", registry.host());
    let (v1, v2) = (image("one"), image("two"));
    docker.import_busybox(&v1, "v1", SLEEPS);
    let d1 = docker.push(&v1);
    docker.import_busybox(&v2, "v2", SLEEPS);
    let d2 = docker.push(&v2);
    unplug();

    let uuid = unique("host");
    set(&server, &uuid, &target(vec![service(1, "web", &v1, json!({}))]));
    let mut agent = Agent::start_with_env(
        &server.url(),
        &server.provisioning_key_for(&uuid),
        &uuid,
        docker,
        &[("PINION_PROBATION", "60"), ("PINION_ALLOWED_DEVICES", DEVICE)],
    );
    agent.converge("v1 running", || runs(docker, "web", &d1));

    // A port another container holds: v2 cannot start, and v1 is not put back for it.
    let port = pinion_tests::util::free_port();
    let holder = unique("port-holder");
    docker.run(&["run", "-d", "--name", &holder, "-p", &format!("127.0.0.1:{port}:80"), &v1]);
    let ports = json!({"ports": [format!("127.0.0.1:{port}:80")]});
    set(&server, &uuid, &target(vec![service(1, "web", &v2, ports)]));
    agent.converge("the port fault seen", || agent.log().contains("port is already allocated"));
    agent.converge("v1 put back meanwhile", || runs(docker, "web", &d1));
    assert!(agent.log().contains("met a fault of this host"), "{}", agent.log());
    docker.run(&["rm", "-f", &holder]);
    agent.converge("v2 running once the port is free", || runs(docker, "web", &d2));

    // A device that is not plugged in: the same, until it appears.
    let device = json!({"devices": [format!("{DEVICE}:/dev/fault")]});
    set(&server, &uuid, &target(vec![service(1, "web", &v1, device)]));
    agent.converge("the device fault seen", || agent.log().contains("error gathering device information"));
    agent.converge("v2 put back meanwhile", || runs(docker, "web", &d2));
    let made = std::process::Command::new("mknod").args([DEVICE, "c", "1", "3"]).status().expect("running mknod");
    assert!(made.success(), "mknod {DEVICE} (the test runs as root, as scripts/test does)");
    agent.converge("v1 with the device once it is plugged in", || runs(docker, "web", &d1));
    unplug();

    // A name held by a container made by hand: the new service waits for it.
    let taken = format!("extra_{APP}");
    docker.run(&["run", "-d", "--name", &taken, &v1]);
    let with_extra = vec![service(1, "web", &v1, json!({"devices": []})), service(2, "extra", &v2, json!({}))];
    set(&server, &uuid, &target(with_extra));
    agent.converge("the name conflict seen", || agent.log().contains("is already in use"));
    docker.run(&["rm", "-f", &taken]);
    agent.converge("extra running once its name is free", || runs(docker, "extra", &d2));

    assert!(agent.is_running(), "{}", agent.log());
    let last = reported(&server, &uuid, "extra");
    assert_eq!(last["status"], "running", "{last}");
}
