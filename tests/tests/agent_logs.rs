//! A failed deployment explains itself on the server: the agent sends the last lines of
//! a container that crashes in probation, or a line saying why one could not start, to
//! `POST /device/{uuid}/logs`, and the operator reads them with
//! `GET /devices/{uuid}/logs?service=` — no SSH to the gateway. A real dockerd, the
//! Debian docker-registry, `pinion-server` and `pinion-agent` as processes.
//!
//! The agent manages every container labelled `io.pinion.app-id` on its dockerd, so
//! these tests take turns (one agent on the test dockerd at a time).

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::util::{unique, wait_for};
use pinion_tests::{Agent, Auth, Docker, Registry, Server};
use serde_json::{json, Value};
use std::time::Duration;

/// Long enough for the failure to show, short of the 60 s default.
const PROBATION_SECS: &str = "30";
/// How long the lines may take to reach the server once the rollback is under way.
const DELIVERED: Duration = Duration::from_secs(60);
/// The command of a good image: print the version, then run.
const SLEEPS: &str = r#"["/bin/sh", "-c", "cat /version; exec sleep 3600"]"#;
const APP: u32 = 31;
const SERVICE: &str = "main";
const STDOUT_MARKER: &str = "pinion-crash: loading /etc/app.conf";
const STDERR_MARKER: &str = "pinion-crash: fatal: /etc/app.conf: no such file";

/// A registry, a server, and an agent (probation `PROBATION_SECS`) running v1 of
/// `<registry>/<repository>:latest` as service `main` of app `APP`.
struct Device<'a> {
    docker: &'a Docker,
    _registry: Registry,
    server: Server,
    agent: Agent,
    uuid: String,
    latest: String,
    v1: String,
}

impl<'a> Device<'a> {
    fn running_v1(docker: &'a Docker, repository: &str) -> Device<'a> {
        let registry = Registry::start(Auth::Anonymous);
        // Each push to `:latest` is followed by setting the target, which must pin the new digest.
        let server = Server::start(&["--cache-ttl", "0"]);
        let latest = format!("{}/{repository}:latest", registry.host());
        let uuid = unique(repository.split('/').next_back().unwrap_or("logs"));
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
        device.agent.converge("v1 running", || device.runs_only(&device.v1));
        device
    }

    /// Pushes `cmd` as the next `:latest` and makes it the target.
    fn deploy(&self, version: &str, cmd: &str) -> String {
        let image = push(self.docker, &self.latest, version, cmd);
        set_latest(&self.server, &self.uuid, &self.latest, &image);
        image
    }

    fn runs_only(&self, image: &str) -> bool {
        let containers: Vec<Value> = self
            .docker
            .containers_with_label(&format!("{MANAGED}={APP}"))
            .into_iter()
            .filter(|c| c["Config"]["Labels"]["io.pinion.service-name"] == SERVICE)
            .collect();
        containers.len() == 1 && containers[0]["Config"]["Image"] == image && containers[0]["State"]["Running"] == true
    }

    /// `GET /devices/{uuid}/logs?service=main` as the operator reads it.
    fn logs(&self) -> Value {
        let path = format!("/api/v1/devices/{}/logs?service={SERVICE}&limit=1000", self.uuid);
        let reply = self.server.request("GET", &path, None, Some(self.server.admin_token()));
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    }

    /// The service's logs once `check` finds what it looks for in them; panics with the
    /// logs and the agent's log otherwise.
    fn logs_when(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let found = wait_for(DELIVERED, || {
            let logs = self.logs()["logs"].as_array().cloned().unwrap_or_default();
            check(&logs).then_some(logs)
        });
        found.unwrap_or_else(|| {
            panic!(
                "{what}: not on the server within {DELIVERED:?}\nlogs: {:#}\nagent log:\n{}",
                self.logs(),
                self.agent.log()
            )
        })
    }
}

fn push(docker: &Docker, latest: &str, version: &str, cmd: &str) -> String {
    docker.import_busybox(latest, version, cmd);
    let digest = docker.push(latest);
    docker.run(&["rmi", latest]);
    format!("{}@{digest}", latest.strip_suffix(":latest").expect("a :latest reference"))
}

fn set_latest(server: &Server, uuid: &str, latest: &str, expected: &str) {
    let service = json!({"serviceId": 1, "serviceName": SERVICE, "imageName": latest,
                         "config": {"image": latest, "restart": "always"}});
    let state =
        json!({"apps": {APP.to_string(): {"appId": APP, "appName": "app", "services": [service]}}, "config": {}});
    let reply = server.set_target_state(uuid, &state);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["apps"][APP.to_string()]["services"][0]["imageName"], expected, "{}", reply.body);
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

/// The newest line whose message contains `needle`.
fn line_with<'l>(logs: &'l [Value], needle: &str) -> Option<&'l Value> {
    logs.iter().find(|line| message(line).contains(needle))
}

#[test]
fn a_container_crashing_in_probation_leaves_its_last_lines_readable_on_the_server() {
    let turn = take_turn();
    let device = Device::running_v1(&turn.docker, "logs/crash");
    let crash = format!(r#"["/bin/sh", "-c", "echo '{STDOUT_MARKER}'; echo '{STDERR_MARKER}' >&2; exit 1"]"#);
    let v2 = device.deploy("v2", &crash);

    let logs = device.logs_when("the crash's lines and the agent's reason", |logs| {
        line_with(logs, STDOUT_MARKER).is_some()
            && line_with(logs, STDERR_MARKER).is_some()
            && logs.iter().any(|l| l["source"]["type"] == "manager")
    });
    let stdout = line_with(&logs, STDOUT_MARKER).unwrap();
    assert_eq!(message(stdout), STDOUT_MARKER, "the line as printed, without Docker's timestamp: {stdout}");
    assert_eq!(stdout["serviceName"], SERVICE, "{stdout}");
    assert_eq!(stdout["serviceId"], 1, "{stdout}");
    assert_eq!(stdout["level"], "info", "{stdout}");
    assert_eq!(stdout["isStdErr"], false, "{stdout}");
    assert_eq!(stdout["source"]["type"], "container", "{stdout}");
    assert!(stdout["containerId"].as_str().is_some_and(|id| id.len() == 64), "{stdout}");
    assert!(stdout["timestamp"].as_u64().is_some_and(|ms| ms > 1_600_000_000_000), "Docker's time, in ms: {stdout}");
    assert!(stdout["receivedAt"].is_number() || stdout["receivedAt"].is_string(), "{stdout}");

    let stderr = line_with(&logs, STDERR_MARKER).unwrap();
    assert_eq!((&stderr["level"], &stderr["isStdErr"]), (&json!("error"), &json!(true)), "{stderr}");
    assert_eq!(stderr["serviceName"], SERVICE, "{stderr}");
    assert_eq!(stderr["containerId"], stdout["containerId"], "{stderr}");

    let manager = logs.iter().find(|l| l["source"]["type"] == "manager").unwrap();
    let said = message(manager);
    assert!(said.contains(&v2) && said.contains("within probation"), "names the image and the failure: {manager}");
    assert!(said.contains(&format!("rolling back to {}", device.v1)), "{manager}");
    assert_eq!((&manager["serviceName"], &manager["level"]), (&json!(SERVICE), &json!("error")), "{manager}");
    assert_eq!(manager["containerId"], stdout["containerId"], "{manager}");
    // Newest first: the agent's line comes after the container's.
    let position = |line: &Value| logs.iter().position(|l| l == line).unwrap();
    assert!(position(manager) < position(stdout), "{logs:#?}");

    // Sent once: the same failure is not sent again while v1 runs.
    device.agent.converge("v1 put back", || device.runs_only(&device.v1));
    std::thread::sleep(Duration::from_secs(5));
    let managers =
        device.logs()["logs"].as_array().unwrap().iter().filter(|l| l["source"]["type"] == "manager").count();
    assert_eq!(managers, 1, "{:#}", device.logs());
}

#[test]
fn a_container_that_cannot_start_says_why_on_the_server() {
    let turn = take_turn();
    let device = Device::running_v1(&turn.docker, "logs/nostart");
    // Docker creates the container, and refuses to start it: no such executable.
    let v2 = device.deploy("v2", r#"["/nonexistent"]"#);

    let logs = device.logs_when("the start failure", |logs| line_with(logs, "failed to start").is_some());
    let manager = line_with(&logs, "failed to start").unwrap();
    assert_eq!(manager["source"]["type"], "manager", "{manager}");
    assert_eq!((&manager["serviceName"], &manager["level"]), (&json!(SERVICE), &json!("error")), "{manager}");
    assert!(message(manager).contains(&v2) && message(manager).contains("/nonexistent"), "Docker's reason: {manager}");
    assert!(manager["containerId"].as_str().is_some_and(|id| id.len() == 64), "{manager}");
    device.agent.converge("v1 put back", || device.runs_only(&device.v1));
}
