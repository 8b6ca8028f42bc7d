//! The agent's end-to-end story, run the same on any engine (`engines.rs`): the shared
//! dockerd and a private Podman service. Images go to a private registry (htpasswd)
//! through the shared dockerd's CLI, as `:latest` each time; the server holds the
//! registry's credentials and pins each push, and the agent pulls every image with them
//! (`X-Registry-Auth`). The target has one service on an app network with a named
//! volume, restart `always`:
//!
//! 1. v1 runs: its network and volume carry pinion's label, the container is on the
//!    network by the service's name, the volume is mounted, the policy is `always`;
//! 2. v1's process exits: the engine restarts the same container (its restart policy);
//! 3. v2 (a new push) replaces it: exactly one container runs, v2; the volume kept v1's
//!    writes;
//! 4. v3 crashes at once: rolled back in probation, v2 runs again;
//! 5. v4's command does not exist: it cannot start, and is rolled back as invalid (not
//!    as a fault of the host, which would be retried);
//! 6. v5 runs but its healthcheck fails: rolled back as unhealthy; so is v6, whose
//!    healthcheck hangs past its timeout (Podman 4.3 never ends such a check itself);
//! 7. once no deployment is in probation, the image no deployment uses any more (v1) is
//!    removed from the engine.
//!
//! Every step is checked on the engine with its own CLI and in what the agent reported.

use crate::docker::Docker;
use crate::engines::Engine;
use crate::util::{unique, TempDir};
use crate::{Agent, Auth, Registry, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const USER: &str = "story";
const PASSWORD: &str = "story-s3cret";
const APP: u32 = 31;
const SERVICE: &str = "main";
/// Long enough for every failure here to show, short of the 60 s default.
const PROBATION_SECS: &str = "30";
const CONVERGE: Duration = Duration::from_secs(120);
/// A good image: appends its version to the volume at each start, then runs until
/// something is written to `/data/exit` (it empties it and exits with 3), or SIGTERM.
/// (`/version` has no line end; the image's busybox has no `rm`: `: >` empties a file.)
const RUNS: &str = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; echo $(cat /version) >> /data/history; while :; do if [ -s /data/exit ]; then : > /data/exit; exit 3; fi; sleep 1; done"]"#;

/// The story's registry, server and agent, and the engine the agent runs on.
struct Story<'a> {
    engine: &'a dyn Engine,
    /// The shared dockerd's CLI, logged in to the registry: builds and pushes.
    pusher: Docker,
    _login: TempDir,
    registry: Registry,
    server: Server,
    uuid: String,
    latest: String,
    agent: Option<Agent>,
}

/// Runs the story with the agent on `engine`, pushing through `pusher` (the shared
/// dockerd); panics at the first step that does not hold, with the agent's log.
pub fn run(engine: &dyn Engine, pusher: &Docker) {
    let registry = Registry::start(Auth::htpasswd(USER, PASSWORD));
    let login = TempDir::new("story-login");
    let pusher = pusher.logged_in(&login, &registry.host(), USER, PASSWORD);
    // Each push to `:latest` is followed by setting the target, which must pin the new
    // digest: no digest cache.
    let server = Server::start(&["--cache-ttl", "0"]);
    let path = format!("/api/v1/registries/{}/credentials", registry.host());
    let put = server.request(
        "PUT",
        &path,
        Some(&json!({"username": USER, "password": PASSWORD})),
        Some(server.admin_token()),
    );
    assert_eq!(put.status, 200, "{}", put.body);
    let latest = format!("{}/story/app:latest", registry.host());
    let uuid = unique(&format!("story-{}", engine.name()));
    let mut story = Story { engine, pusher, _login: login, registry, server, uuid, latest, agent: None };
    let network = format!("{APP}_backend");
    let volume = format!("{APP}_data");
    // The engine keeps volumes (the agent never removes one: they hold data): a run
    // stopped half-way left this one.
    story.remove_app();

    // 1. v1 with its network and volume.
    let v1 = story.push("v1", RUNS, None);
    story.deploy(&v1);
    let agent = Agent::start_on(
        engine.socket(),
        &story.server.url(),
        &story.server.provisioning_key_for(&story.uuid),
        &story.uuid,
        &[("PINION_PROBATION", PROBATION_SECS)],
    );
    story.agent = Some(agent);
    story.converge("v1 running", |s| s.runs_only(&v1));
    let first = story.container();
    assert_eq!(first["HostConfig"]["RestartPolicy"]["Name"], "always", "{first:#}");
    let aliases = &first["NetworkSettings"]["Networks"][&network]["Aliases"];
    assert!(aliases.as_array().is_some_and(|a| a.iter().any(|n| n == SERVICE)), "on {network} as {SERVICE}: {first:#}");
    let mounted = first["Mounts"].as_array().is_some_and(|mounts| {
        mounts.iter().any(|m| m["Type"] == "volume" && m["Name"] == volume.as_str() && m["Destination"] == "/data")
    });
    assert!(mounted, "{volume} mounted at /data: {first:#}");
    for kind in ["network", "volume"] {
        let name = if kind == "network" { &network } else { &volume };
        let labels: Value = serde_json::from_str(&engine.run(&[kind, "inspect", "--format", "{{json .Labels}}", name]))
            .unwrap_or_else(|e| panic!("{kind} {name}: labels are not JSON: {e}"));
        assert_eq!(labels["io.pinion.managed"], "true", "{kind} {name}: {labels}");
    }
    story.converge("v1 reported running", |s| {
        let service = s.reported();
        service["status"] == "running" && service["imageName"] == v1.as_str()
    });

    // 2. The restart policy: the engine starts the same container again.
    let first_id = story.container_id();
    story.exec(&first_id, "echo exit > /data/exit");
    story.converge("v1 started again", |s| s.runs_only(&v1) && s.history().len() > 1);
    assert_eq!(story.container_id(), first_id, "restarted in place, not replaced");
    assert_eq!(story.history(), ["v1", "v1"]);

    // 3. v2 replaces v1; the volume keeps what v1 wrote.
    let v2 = story.push("v2", RUNS, None);
    story.deploy(&v2);
    story.converge("v2 replaces v1", |s| s.runs_only(&v2));
    assert_ne!(story.container_id(), first_id, "v2 runs in a new container");
    assert_eq!(story.history(), ["v1", "v1", "v2"], "the volume outlives the container");
    story.converge("v2 reported running", |s| {
        let service = s.reported();
        service["status"] == "running" && service["imageName"] == v2.as_str() && service.get("rollback").is_none()
    });

    // 4. v3 crashes at once: the engine restarts it (restart `always`) until probation
    //    judges it by its restart count, and puts v2 back.
    let v3 = story.push("v3", r#"["/bin/sh", "-c", "echo v3 fails; exit 1"]"#, None);
    let v2_before = story.container_id();
    story.deploy(&v3);
    story.rolled_back(&v3, &v2, &v2_before, "restarted");

    // 5. v4 cannot start: the engine refuses its command as invalid.
    let v4 = story.push("v4", r#"["/nonexistent"]"#, None);
    let v2_before = story.container_id();
    story.deploy(&v4);
    story.rolled_back(&v4, &v2, &v2_before, "failed to start");

    // 6. v5 runs, but its healthcheck always fails.
    let healthcheck = r#"HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["/bin/false"]"#;
    let v5 = story.push("v5", RUNS, Some(healthcheck));
    let v2_before = story.container_id();
    story.deploy(&v5);
    story.rolled_back(&v5, &v2, &v2_before, "unhealthy");

    // 6b. v6's healthcheck never ends: its timeout makes it a failure.
    let healthcheck = r#"HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["/bin/sleep", "1000"]"#;
    let v6 = story.push("v6", RUNS, Some(healthcheck));
    let v2_before = story.container_id();
    story.deploy(&v6);
    story.rolled_back(&v6, &v2, &v2_before, "unhealthy");

    // 7. Image collection: v1 is neither in place nor what a rollback would put back.
    assert!(engine.try_run(&["image", "inspect", &v2]), "v2 runs: its image is there");
    story.converge("v1's image removed", |s| !s.engine.try_run(&["image", "inspect", &v1]));
    assert!(engine.try_run(&["image", "inspect", &v2]), "the image in use stays");

    let agent = story.agent.take().expect("the agent runs");
    assert!(!agent.log().contains(PASSWORD), "the agent logged the registry password:\n{}", agent.log());
    drop(agent);
    story.remove_app();
}

impl Story<'_> {
    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the agent was started")
    }

    /// Imports a busybox image running `cmd` (with a Dockerfile `change` such as a
    /// HEALTHCHECK), pushes it as `:latest` and removes it from the pusher; returns its
    /// pinned reference.
    fn push(&self, version: &str, cmd: &str, change: Option<&str>) -> String {
        let docker = &self.pusher;
        docker.import_busybox(&self.latest, version, cmd);
        if let Some(change) = change {
            let scratch = unique("story-build");
            docker.run(&["create", "--name", &scratch, &self.latest]);
            docker.run(&["commit", "--change", change, &scratch, &self.latest]);
            docker.run(&["rm", &scratch]);
        }
        let digest = docker.push(&self.latest);
        docker.run(&["rmi", &self.latest]);
        let repository = self.latest.strip_suffix(":latest").expect("a :latest reference");
        format!("{repository}@{digest}")
    }

    /// Sets the target to `:latest` and checks that the server pinned it to `expected`.
    fn deploy(&self, expected: &str) {
        let config = json!({"image": self.latest, "restart": "always", "networks": ["backend"],
                            "volumes": ["data:/data"]});
        let service = json!({"serviceId": 1, "serviceName": SERVICE, "imageName": self.latest, "config": config});
        let state =
            json!({"apps": {APP.to_string(): {"appId": APP, "appName": "story", "services": [service]}}, "config": {}});
        let reply = self.server.set_target_state(&self.uuid, &state);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let pinned = &reply.json()["apps"][APP.to_string()]["services"][0];
        assert_eq!(pinned["imageName"], expected, "{}", reply.body);
        assert!(!reply.body.contains(PASSWORD), "{}", reply.body);
    }

    /// The service's containers, as the engine's `inspect` JSON.
    fn containers(&self) -> Vec<Value> {
        self.engine
            .containers_with_label(&format!("io.pinion.app-id={APP}"))
            .into_iter()
            .filter(|c| c["Config"]["Labels"]["io.pinion.service-name"] == SERVICE)
            .collect()
    }

    /// Exactly one container for the service, running `image`.
    fn runs_only(&self, image: &str) -> bool {
        let containers = self.containers();
        containers.len() == 1 && containers[0]["Config"]["Image"] == image && containers[0]["State"]["Running"] == true
    }

    fn container(&self) -> Value {
        let mut containers = self.containers();
        assert_eq!(containers.len(), 1, "one container: {containers:#?}");
        containers.pop().unwrap_or_default()
    }

    fn container_id(&self) -> String {
        self.container()["Id"].as_str().expect("an Id").to_string()
    }

    /// Removes the app's containers, network and volume from the engine (no agent runs).
    fn remove_app(&self) {
        for container in self.engine.containers_with_label(&format!("io.pinion.app-id={APP}")) {
            if let Some(id) = container["Id"].as_str() {
                self.engine.try_run(&["rm", "--force", id]);
            }
        }
        self.engine.try_run(&["network", "rm", &format!("{APP}_backend")]);
        self.engine.try_run(&["volume", "rm", "--force", &format!("{APP}_data")]);
        assert!(
            !self.engine.try_run(&["volume", "inspect", &format!("{APP}_data")]),
            "the story's volume is still there after its removal"
        );
    }

    fn exec(&self, id: &str, script: &str) -> String {
        self.engine.run(&["exec", id, "/bin/sh", "-c", script])
    }

    /// The versions that started on the volume, in order; empty while none runs.
    fn history(&self) -> Vec<String> {
        let containers = self.containers();
        let Some(id) = containers.iter().find(|c| c["State"]["Running"] == true).and_then(|c| c["Id"].as_str()) else {
            return Vec::new();
        };
        self.exec(id, "cat /data/history").lines().map(str::to_string).collect()
    }

    /// The service as the device last reported it.
    fn reported(&self) -> Value {
        let path = format!("/api/v1/devices/{}/current-state", self.uuid);
        let reply = self.server.request("GET", &path, None, Some(self.server.admin_token()));
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["apps"][APP.to_string()]["services"][SERVICE].clone()
    }

    /// After `rejected` was deployed in place of `restored` (container `before`) and
    /// failed: `restored` runs again, in a new container, and the report names the
    /// rollback with a reason containing `reason`.
    fn rolled_back(&self, rejected: &str, restored: &str, before: &str, reason: &str) {
        self.converge(&format!("{restored} put back after {rejected}"), |s| {
            s.runs_only(restored) && s.container_id() != before
        });
        self.converge("the rollback reported", |s| {
            let service = s.reported();
            service["status"] == "running" && service["rollback"]["from"] == rejected
        });
        let service = self.reported();
        assert_eq!(service["imageName"], restored, "what runs: {service}");
        assert_eq!(service["rollback"]["to"], restored, "{service}");
        let said = service["rollback"]["reason"].as_str().unwrap_or_default();
        assert!(
            said.contains(reason),
            "on {}: the rollback's reason {said:?} should contain {reason:?}\nagent log:\n{}",
            self.engine.name(),
            self.agent().log()
        );
    }

    /// Waits until `check` holds; panics with the containers, the agent's and the
    /// registry's logs if it does not in time.
    fn converge(&self, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let started = Instant::now();
        while started.elapsed() < CONVERGE {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "on {}: {what}: not reached within {CONVERGE:?}\ncontainers: {:#}\nagent log:\n{}\nregistry log:\n{}",
            self.engine.name(),
            json!(self.containers()),
            self.agent.as_ref().map(Agent::log).unwrap_or_default(),
            self.registry.log()
        );
    }
}
