//! The agent at rest spares the flash: gateways boot from SD cards and eMMC, and an
//! agent that converged, whose polls are answered 304 and whose containers run as they
//! should, must write nothing to disk (issue 17), not to its database (no checkpoint,
//! no report or event kept, nothing per cycle) and not to its log. What it writes is read
//! from `/proc/PID/io` (`write_bytes`: what the process sent towards the disk, counted by
//! the kernel, its log file included) over several idle cycles and a heartbeat report,
//! counted by the server (`pinion_polls_total`, `pinion_reports_total`) rather than
//! slept through. An update writes, once; the agent is at rest again after it.
//!
//! The agent manages every container labelled `io.pinion.app-id` on its dockerd, so
//! these tests take turns (one agent on the test dockerd at a time).

use pinion_tests::docker::take_turn;
use pinion_tests::util::unique;
use pinion_tests::{Agent, Auth, Docker, Registry, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime};

const METRICS_TOKEN: &str = "idle-metrics-token-0123456789abcdef";
const SERVICES: [&str; 3] = ["web", "worker", "cache"];
const SLEEPS: &str = r#"["/bin/sh", "-c", "cat /version; exec sleep 3600"]"#;
/// Polls answered 304 that the idle window spans (one a second).
const IDLE_POLLS: f64 = 8.0;
/// How long a wait on the server's counters may take before the test gives up.
const COUNTERS: Duration = Duration::from_secs(60);

fn target(images: &[&str]) -> Value {
    let services: Vec<Value> = SERVICES
        .iter()
        .zip(images)
        .enumerate()
        .map(|(i, (name, image))| {
            json!({"serviceId": i + 1, "serviceName": name, "imageName": image,
                   "config": {"image": image, "restart": "always"}})
        })
        .collect();
    json!({"apps": {"17": {"appId": 17, "appName": "idle", "services": services}}, "config": {}})
}

/// The value of the metric sample `series` (`name{label="v"}`), 0 when absent.
fn counter(server: &Server, series: &str) -> f64 {
    let reply = server.request("GET", "/metrics", None, Some(METRICS_TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply
        .body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().expect("a number"))
        })
        .unwrap_or(0.0)
}

const POLLS_304: &str = "pinion_polls_total{answer=\"304\"}";
const REPORTS: &str = "pinion_reports_total{answer=\"200\"}";

/// Waits until the server has answered `more` further polls with 304 (and delivered
/// reports by `reports` more), counted from now.
fn until_counted(server: &Server, agent: &Agent, polls: f64, reports: f64) {
    let (polls_from, reports_from) = (counter(server, POLLS_304), counter(server, REPORTS));
    let started = Instant::now();
    while counter(server, POLLS_304) < polls_from + polls || counter(server, REPORTS) < reports_from + reports {
        assert!(
            started.elapsed() < COUNTERS,
            "{polls} polls answered 304 and {reports} reports not counted within {COUNTERS:?}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `write_bytes` of the agent's process.
fn written(agent: &Agent) -> u64 {
    let pid = agent.pid().expect("the agent runs");
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("reading /proc/PID/io of the agent");
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("write_bytes in /proc/PID/io")
}

/// Each of the agent's files with its length and modification time (`None`: none).
type Files = Vec<(String, Option<(u64, SystemTime)>)>;

/// Length and modification time of the agent's database files and its log: a change
/// the kernel's count may miss (a line appended to a log page already dirty).
fn files(agent: &Agent) -> Files {
    let db = agent.db().display().to_string();
    let paths = [db.clone(), format!("{db}-wal"), format!("{db}-shm"), agent.log_path().display().to_string()];
    paths
        .into_iter()
        .map(|path| {
            let seen = std::fs::metadata(&path).ok().and_then(|m| Some((m.len(), m.modified().ok()?)));
            (path, seen)
        })
        .collect()
}

/// Nothing written over the idle window (`idle` bytes counted by the kernel), and the
/// agent's files as they were; otherwise both, and the agent's log, in the failure.
fn assert_at_rest(agent: &Agent, idle: u64, files_before: &Files, when: &str) {
    let files_after = files(agent);
    assert!(
        idle == 0 && files_after == *files_before,
        "at rest ({when}) over {IDLE_POLLS} idle cycles, the agent wrote {idle} bytes (write_bytes); its files \
         before:\n{files_before:?}\nafter:\n{files_after:?}\nits log:\n{}",
        agent.log()
    );
}

/// Every service reported running `images` (in `SERVICES` order), its probation passed.
fn reported_at_rest(server: &Server, uuid: &str, images: &[&str]) -> bool {
    let reply =
        server.request("GET", &format!("/api/v1/devices/{uuid}/current-state"), None, Some(server.admin_token()));
    let services = &reply.json()["apps"]["17"]["services"];
    SERVICES.iter().zip(images).all(|(name, image)| {
        let service = &services[*name];
        service["status"] == "running" && service["probation"] == "passed" && service["imageName"] == *image
    })
}

/// Pushes a busybox image printing `version`; its pinned reference.
fn push(docker: &Docker, registry: &Registry, version: &str) -> String {
    let reference = format!("{}/idle/app:{version}", registry.host());
    let digest = docker.push_busybox(&reference, version, SLEEPS);
    format!("{}/idle/app@{digest}", registry.host())
}

#[test]
fn an_agent_at_rest_writes_nothing_to_disk_and_an_update_writes_once() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&["--metrics-token", METRICS_TOKEN]);
    let (v1, v2) = (push(docker, &registry, "v1"), push(docker, &registry, "v2"));
    let uuid = unique("idle");
    let reply = server.set_target_state_uncached(&uuid, &target(&[&v1, &v1, &v1]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Polls every second (the helper's default), a heartbeat report every 3 s: several
    // of each fall in the window. Probation short, so that the agent comes to rest soon.
    let env = [("PINION_REPORT_INTERVAL", "3"), ("PINION_PROBATION", "2")];
    let agent = Agent::start_with_env(&server.url(), &server.provisioning_key_for(&uuid), &uuid, docker, &env);
    agent.converge("all three running v1, reported, their probation passed", || {
        reported_at_rest(&server, &uuid, &[&v1, &v1, &v1])
    });
    // The cycle after probation collects images; then nothing is left to do.
    until_counted(&server, &agent, 2.0, 0.0);

    let at_rest = written(&agent);
    // The kernel counts this filesystem's writes: the agent stored a target and three
    // deployments. (On a tmpfs it would count none, and the window below prove nothing.)
    assert!(
        at_rest > 0,
        "write_bytes stayed 0 while the agent stored its target and deployments: the temp dir ({}) is on \
         a filesystem the kernel does not count writes to (tmpfs?); run with TMPDIR on a disk",
        std::env::temp_dir().display()
    );
    let files_at_rest = files(&agent);
    until_counted(&server, &agent, IDLE_POLLS, 1.0);
    let idle = written(&agent) - at_rest;
    assert_at_rest(&agent, idle, &files_at_rest, "converged");

    // An update of one service writes (the new target, the deployment, its probation
    // passing, events), once; at rest again, nothing.
    let reply = server.set_target_state_uncached(&uuid, &target(&[&v2, &v1, &v1]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    agent.converge("web running v2, reported, its probation passed", || {
        reported_at_rest(&server, &uuid, &[&v2, &v1, &v1])
    });
    until_counted(&server, &agent, 2.0, 0.0);
    let after_update = written(&agent);
    let update = after_update - at_rest;
    assert!(update > 0, "an update wrote nothing: the new target and deployment were not stored");
    eprintln!("one update (web v1 → v2, its probation passed): {update} bytes written");
    let files_at_rest = files(&agent);
    until_counted(&server, &agent, IDLE_POLLS, 1.0);
    let idle = written(&agent) - after_update;
    assert_at_rest(&agent, idle, &files_at_rest, "after an update");
}
