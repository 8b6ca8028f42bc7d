//! The agent on a gateway without an RTC, end to end: its wall clock starts at 1970 and
//! is stepped by a year forward and back in the middle of probations (libfaketime
//! preloaded into the real agent binary, reading the time from a file the test rewrites;
//! the monotonic and boot clocks stay real). A good deployment is kept, and a crashing
//! one is still rolled back: probation goes by the time since boot.
//!
//! The agent manages every container labelled `io.pinion.app-id` on its dockerd, so
//! these tests take turns (one agent on the test dockerd at a time).

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::util::unique;
use pinion_tests::{Agent, Auth, Docker, Registry, Server, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const APP: u32 = 31;
const SERVICE: &str = "main";
/// Long enough to step the clock inside it and for a crash to show.
const PROBATION_SECS: &str = "30";
const SLEEPS: &str = r#"["/bin/sh", "-c", "cat /version; exec sleep 3600"]"#;
/// Runs a few seconds, then fails; Docker restarts it (`restart: always`).
const CRASHES_SOON: &str = r#"["/bin/sh", "-c", "sleep 4; exit 1"]"#;

/// libfaketime's preload library, which the Debian package `faketime` installs.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
        .find(|lib| lib.is_file());
    found.unwrap_or_else(|| panic!("libfaketime is missing: apt-get install faketime (scripts/test installs it)"))
}

/// The agent's wall clock: a file libfaketime reads at every call.
struct WallClock(PathBuf);

impl WallClock {
    fn set(&self, when: &str) {
        std::fs::write(&self.0, format!("@{when}")).expect("writing the fake time");
    }
}

fn push(docker: &Docker, reference: &str, version: &str, cmd: &str) -> String {
    docker.import_busybox(reference, version, cmd);
    let digest = docker.push(reference);
    docker.run(&["rmi", reference]);
    digest
}

fn set_image(server: &Server, uuid: &str, image: &str) -> String {
    let state = json!({"apps": {APP.to_string(): {"appId": APP, "appName": "clock", "services": [
        {"serviceId": 1, "serviceName": SERVICE, "imageName": image,
         "config": {"image": image, "restart": "always"}}]}}, "config": {}});
    let reply = server.set_target_state_uncached(uuid, &state);
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["apps"][APP.to_string()]["services"][0]["imageName"].as_str().unwrap().to_string()
}

fn containers(docker: &Docker) -> Vec<Value> {
    docker.containers_with_label(&format!("{MANAGED}={APP}"))
}

fn runs(docker: &Docker, image: &str) -> bool {
    let all = containers(docker);
    all.len() == 1 && all[0]["Config"]["Image"] == image && all[0]["State"]["Running"] == true
}

#[test]
fn wall_clock_steps_neither_roll_back_a_good_deployment_nor_spare_a_crashing_one() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let repo = |name: &str| format!("{}/clock/{name}:v", registry.host());
    let (v1, v2, v3) = (repo("one"), repo("two"), repo("three"));
    push(docker, &v1, "v1", SLEEPS);
    push(docker, &v2, "v2", SLEEPS);
    push(docker, &v3, "v3", CRASHES_SOON);

    let dir = TempDir::new("clock");
    let clock = WallClock(dir.join("faketime"));
    clock.set("1970-01-01 00:01:40");
    let lib = libfaketime();
    let timestamp_file = clock.0.display().to_string();
    let uuid = unique("clock");
    let pinned_v1 = set_image(&server, &uuid, &v1);
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", timestamp_file.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("DONT_FAKE_MONOTONIC", "1"),
        ("PINION_PROBATION", PROBATION_SECS),
    ];
    let agent = Agent::start_with_env(&server.url(), &server.provisioning_key_for(&uuid), &uuid, docker, &env);
    agent.converge("v1 running at a boot clock of 1970", || runs(docker, &pinned_v1));

    // A good v2; in its probation the clock jumps a year ahead (NTP's first sync), then
    // back to 1970 (the next boot's fake-hwclock, say).
    let pinned_v2 = set_image(&server, &uuid, &v2);
    agent.converge("v2 running", || runs(docker, &pinned_v2));
    clock.set("1971-01-01 00:00:00");
    agent.converge("the step forward noticed", || agent.log().contains("the wall clock stepped +"));
    clock.set("1970-01-01 00:05:00");
    agent.converge("the step back noticed", || agent.log().contains("the wall clock stepped -"));
    agent.converge("v2's probation passed", || probation_passed(&agent.db()));
    assert!(runs(docker, &pinned_v2), "a good deployment was not kept:\n{}", agent.log());
    assert!(!agent.log().contains("rolling back"), "{}", agent.log());

    // A crashing v3: the clock jumps a year ahead just after it starts. Its probation
    // still runs, on the boot clock, and v2 is put back.
    let pinned_v3 = set_image(&server, &uuid, &v3);
    agent.converge("v3 started", || containers(docker).iter().any(|c| c["Config"]["Image"] == pinned_v3.as_str()));
    clock.set("1971-06-01 00:00:00");
    agent.converge("v3 rolled back to v2", || agent.log().contains("rolling back to") && runs(docker, &pinned_v2));
}

/// Whether the agent's database holds no probation in progress (`sqlite3`, read-only).
fn probation_passed(db: &Path) -> bool {
    let out = std::process::Command::new("sqlite3")
        .arg("-readonly")
        .arg(db)
        .arg("SELECT count(*) FROM services WHERE probation_since IS NOT NULL")
        .output()
        .expect("running sqlite3");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}
