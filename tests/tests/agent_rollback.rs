//! Probation and automatic rollback on the device, end to end: a real dockerd, the Debian
//! docker-registry, `pinion-server` and `pinion-agent` as processes. A service's new
//! image that crashes, cannot start, or turns unhealthy within the probation period is
//! put back on the image it ran before; the agent reports the rollback and leaves the
//! rejected digest alone until the target changes.
//!
//! The agent manages every container labelled `io.pinion.app-id` on its dockerd, so
//! these tests take turns (one agent on the test dockerd at a time).

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::util::unique;
use pinion_tests::{Agent, Auth, Docker, Registry, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(90);
/// Long enough for every failure here to show, short of the 60 s default.
const PROBATION_SECS: &str = "30";
/// The command of a good image: print the version, then run.
const SLEEPS: &str = r#"["/bin/sh", "-c", "cat /version; exec sleep 3600"]"#;
/// The app and service every test deploys.
const APP: u32 = 21;
const SERVICE: &str = "main";

/// A registry, a server, and an agent (probation `PROBATION_SECS`) running v1 of
/// `<registry>/<repository>:latest` as service `main` of app 21.
struct Device<'a> {
    docker: &'a Docker,
    _registry: Registry,
    server: Server,
    agent: Agent,
    uuid: String,
    latest: String,
    /// v1 as the server pinned it (`…@sha256:…`).
    v1: String,
}

impl<'a> Device<'a> {
    fn running_v1(docker: &'a Docker, repository: &str) -> Device<'a> {
        let registry = Registry::start(Auth::Anonymous);
        // Each push to `:latest` is followed by setting the target, which must pin the new
        // digest, not one the server's digest cache still holds: no cache at all, since a
        // background refresh a moment before the push would leave a fresh entry for v1.
        let server = Server::start(&["--cache-ttl", "0"]);
        let latest = format!("{}/{repository}:latest", registry.host());
        let uuid = unique(repository.split('/').next_back().unwrap_or("rollback"));
        let v1 = push(docker, &latest, "v1", SLEEPS);
        set_latest(&server, &uuid, &latest, &v1);
        let agent = Agent::start_with_env(
            &server.url(),
            &server.provisioning_key_for(&uuid),
            &uuid,
            docker,
            &[("PINION_PROBATION", PROBATION_SECS)],
        );
        let device = Device { docker, _registry: registry, server, agent, uuid, latest, v1 };
        device.converge("v1 running", |d| d.runs_only(&d.v1));
        device
    }

    fn push(&self, version: &str, cmd: &str) -> String {
        push(self.docker, &self.latest, version, cmd)
    }

    /// Sets the target to `:latest` and checks that the server pinned it to `expected`.
    fn deploy_latest(&self, expected: &str) {
        set_latest(&self.server, &self.uuid, &self.latest, expected);
    }

    /// The service's containers, as `docker inspect` JSON.
    fn containers(&self) -> Vec<Value> {
        self.docker
            .containers_with_label(&format!("{MANAGED}={APP}"))
            .into_iter()
            .filter(|c| c["Config"]["Labels"]["io.pinion.service-name"] == SERVICE)
            .collect()
    }

    /// Exactly one container for the service, running `image`.
    fn runs_only(&self, image: &str) -> bool {
        let containers = self.containers();
        containers.len() == 1 && containers[0]["Config"]["Image"] == image && containers[0]["State"]["Running"] == true
    }

    fn container_id(&self) -> String {
        let containers = self.containers();
        assert_eq!(containers.len(), 1, "{containers:?}");
        containers[0]["Id"].as_str().unwrap().to_string()
    }

    /// The service as the device last reported it to the server.
    fn reported(&self) -> Value {
        let path = format!("/api/v1/devices/{}/current-state", self.uuid);
        let reply = self.server.request("GET", &path, None, Some(self.server.admin_token()));
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["apps"][APP.to_string()]["services"][SERVICE].clone()
    }

    /// How often the agent started a container from `image`.
    fn starts_of(&self, image: &str) -> usize {
        self.agent.log().matches(&format!(") from {image}\n")).count()
    }

    /// Waits until `check` holds, panicking with the agent's log if it does not in time.
    fn converge(&self, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let started = Instant::now();
        while started.elapsed() < CONVERGE {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "{what}: not reached within {CONVERGE:?}\ncontainers: {:#}\nagent log:\n{}",
            json!(self.containers()),
            self.agent.log()
        );
    }

    /// After `rejected` was deployed and failed: v1 runs again, in a new container, and
    /// the report says so with a reason containing `reason`.
    fn rolled_back(&self, rejected: &str, v1_before: &str, reason: &str) {
        self.converge("v1 put back", |d| d.runs_only(&d.v1) && d.container_id() != v1_before);
        self.converge("the rollback reported", |d| {
            let service = d.reported();
            service["status"] == "running" && service["rollback"]["from"] == rejected
        });
        let service = self.reported();
        assert_eq!(service["imageName"], self.v1.as_str(), "imageName is what runs: {service}");
        assert_eq!(service["targetImage"], rejected, "{service}");
        assert_eq!(service["rollback"]["to"], self.v1.as_str(), "{service}");
        let said = service["rollback"]["reason"].as_str().unwrap_or_default();
        assert!(said.contains(reason), "reason {said:?} should contain {reason:?}");
        assert!(service["rollback"]["at"].as_u64().is_some_and(|at| at > 0), "{service}");
    }
}

/// Pushes a busybox image running `cmd` as `latest`, removed locally so that the agent
/// pulls it; returns its pinned reference.
fn push(docker: &Docker, latest: &str, version: &str, cmd: &str) -> String {
    docker.import_busybox(latest, version, cmd);
    push_local(docker, latest)
}

/// Pushes the local image `latest` and removes it locally; returns its pinned reference.
fn push_local(docker: &Docker, latest: &str) -> String {
    let digest = docker.push(latest);
    docker.run(&["rmi", latest]);
    let repository = latest.strip_suffix(":latest").expect("a :latest reference");
    format!("{repository}@{digest}")
}

/// Sets the device's target to `latest` and checks that the server pinned it to `expected`.
fn set_latest(server: &Server, uuid: &str, latest: &str, expected: &str) {
    let service = json!({"serviceId": 1, "serviceName": SERVICE, "imageName": latest,
                         "config": {"image": latest, "restart": "always"}});
    let state =
        json!({"apps": {APP.to_string(): {"appId": APP, "appName": "app", "services": [service]}}, "config": {}});
    let reply = server.set_target_state(uuid, &state);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["apps"][APP.to_string()]["services"][0]["imageName"], expected, "{}", reply.body);
}

#[test]
fn an_image_that_crashes_in_probation_is_rolled_back_and_not_retried_until_the_target_changes() {
    let turn = take_turn();
    let mut device = Device::running_v1(&turn.docker, "rollback/crash");
    let v1_before = device.container_id();

    let v2 = device.push("v2", r#"["/bin/sh", "-c", "exit 1"]"#);
    device.deploy_latest(&v2);
    device.converge("v2 deployed", |d| d.starts_of(&v2) == 1);
    device.rolled_back(&v2, &v1_before, "within probation");

    // The rejected digest is left alone while the target still asks for it.
    let restored = device.container_id();
    std::thread::sleep(Duration::from_secs(10));
    assert!(device.runs_only(&device.v1), "v1 keeps running: {:#}", json!(device.containers()));
    assert_eq!(device.container_id(), restored, "the restored container is left alone");
    assert_eq!(device.starts_of(&v2), 1, "v2 was tried again:\n{}", device.agent.log());
    assert!(device.agent.log().contains("rolling back to"), "{}", device.agent.log());

    // The rollback is kept across a restart of the agent (its database).
    device.agent.restart();
    device.converge("the agent restarted", |d| d.agent.log().contains("starting"));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(device.container_id(), restored, "the restarted agent left v1 alone");
    assert_eq!(device.starts_of(&v2), 0, "the restarted agent tried v2:\n{}", device.agent.log());

    let status = device.agent.status();
    let service = &status["services"][0];
    assert_eq!(service["image"], v2.as_str(), "status shows the target: {status:#}");
    assert_eq!(service["rollback"]["from"], v2.as_str(), "{status:#}");
    assert_eq!(service["rollback"]["to"], device.v1.as_str(), "{status:#}");

    // A new target lifts the rollback.
    let v3 = device.push("v3", SLEEPS);
    device.deploy_latest(&v3);
    device.converge("v3 replaces v1", |d| d.runs_only(&v3));
    device.converge("the report shows v3 and no rollback", |d| {
        let service = d.reported();
        service["imageName"] == v3.as_str() && service["status"] == "running" && service.get("rollback").is_none()
    });
    assert_eq!(device.agent.status()["services"][0]["rollback"], Value::Null);
}

#[test]
fn an_image_whose_container_cannot_start_is_rolled_back() {
    let turn = take_turn();
    let device = Device::running_v1(&turn.docker, "rollback/nostart");
    let v1_before = device.container_id();

    // Docker creates the container, and refuses to start it: no such executable.
    let v2 = device.push("v2", r#"["/nonexistent"]"#);
    device.deploy_latest(&v2);
    device.converge("v2 tried", |d| d.agent.log().contains("failed to start"));
    device.rolled_back(&v2, &v1_before, "failed to start");
}

#[test]
fn an_image_that_turns_unhealthy_in_probation_is_rolled_back() {
    let turn = take_turn();
    let device = Device::running_v1(&turn.docker, "rollback/unhealthy");
    let v1_before = device.container_id();

    // A v2 that runs, but whose image's healthcheck always fails.
    let docker = device.docker;
    docker.import_busybox(&device.latest, "v2", SLEEPS);
    let scratch = unique("unhealthy-build");
    docker.run(&["create", "--name", &scratch, &device.latest]);
    docker.run(&[
        "commit",
        "--change",
        r#"HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["/bin/false"]"#,
        &scratch,
        &device.latest,
    ]);
    docker.run(&["rm", &scratch]);
    let v2 = push_local(docker, &device.latest);
    device.deploy_latest(&v2);
    device.converge("v2 deployed", |d| d.starts_of(&v2) == 1);
    device.rolled_back(&v2, &v1_before, "unhealthy");
}
