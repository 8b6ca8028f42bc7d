//! Faults in the middle of an update, end to end with real parts only: the agent
//! SIGKILLed at twenty seeded random points of an update, dockerd restarted during a
//! pull and while a new container starts, the registry stopped during a pull, the
//! server stopped and started again while the agent polls and reports, and the disk
//! Docker pulls to full. After each the agent must say what failed, keep the old
//! container running where it can, never run two containers for one service, keep its
//! identity and last target, and converge.
//!
//! Restarts of dockerd and the full disk use a private dockerd on a tmpfs
//! (`pinion_tests::dockerd`); the others the shared test dockerd, one agent at a time.
//! `PINION_FAULT_SEED=<n>` replays the kill points of an earlier run.

use pinion_tests::docker::take_turn;
use pinion_tests::dockerd::PrivateDockerd;
use pinion_tests::util::{require_tool, unique};
use pinion_tests::{Agent, Auth, Docker, Registry, Server, TempDir};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The app every test deploys.
const APP: u32 = 61;
/// Prints its version and runs until SIGTERM, which it obeys within a fifth of a second
/// (a stop is then quick, and its window real but short).
const CMD: &str = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; cat /version; while true; do sleep 0.2; done"]"#;
/// Agent logs name each step as it starts (`apply.rs`), so a kill can be placed.
const AGENT_LOG: &str = "info,pinion_agent=debug";
/// How long an outage or failure may take to show, and a recovery to happen.
const BOUND: Duration = Duration::from_secs(120);
/// Kills in the SIGKILL test.
const KILLS: usize = 20;

/// xorshift64: the kill points of a run follow from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    match std::env::var("PINION_FAULT_SEED") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("PINION_FAULT_SEED={text} is not a number")),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

/// Pushes a busybox image printing `version`, with `noise_mb` MiB of incompressible
/// bytes when asked (a pull that takes a while, or fills a disk), and removes it
/// locally. Returns the pinned reference (`repo@sha256:…`).
fn push_image(docker: &Docker, repo: &str, version: &str, noise_mb: usize) -> String {
    let reference = format!("{repo}:{version}");
    let dir = TempDir::new("noise");
    let noise = dir.join("noise");
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ version.len() as u64 ^ (version.as_bytes()[0] as u64) << 32);
    let bytes: Vec<u8> = (0..noise_mb * (1 << 17)).flat_map(|_| rng.next().to_le_bytes()).collect();
    std::fs::write(&noise, bytes).unwrap();
    let files: Vec<(&str, &Path)> = if noise_mb > 0 { vec![("noise", noise.as_path())] } else { vec![] };
    docker.import_busybox_with(&reference, &format!("{repo} {version}"), CMD, &files);
    let digest = docker.push(&reference);
    docker.run(&["rmi", &reference]);
    format!("{repo}@{digest}")
}

/// App `APP` with one service per `(name, image, strategy)`.
fn target(services: &[(&str, &str, &str)]) -> Value {
    let services: Vec<Value> = services
        .iter()
        .enumerate()
        .map(|(i, (name, image, strategy))| {
            json!({"serviceId": i + 1, "serviceName": name, "imageName": image,
                   "config": {"image": image, "restart": "always", "strategy": strategy}})
        })
        .collect();
    json!({"apps": {APP.to_string(): {"appId": APP, "appName": "faults", "services": services}}, "config": {}})
}

fn set_target(server: &Server, uuid: &str, state: &Value) {
    let reply = server.set_target_state(uuid, state);
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// `(service, image, state)` of every container of `APP`, as `docker ps` lists them.
type Listing = Vec<(String, String, String)>;

fn containers(docker: &Docker) -> Listing {
    let format = r#"{{.Label "io.pinion.service-name"}}|{{.Image}}|{{.State}}"#;
    let listing = docker.run(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label=io.pinion.app-id={APP}"),
        "--format",
        format,
    ]);
    listing
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '|');
            Some((parts.next()?.to_string(), parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Each service has exactly one container, running its image.
fn runs_exactly(docker: &Docker, wanted: &[(&str, &str)]) -> bool {
    let all = containers(docker);
    all.len() == wanted.len()
        && wanted
            .iter()
            .all(|(service, image)| all.iter().any(|(s, i, state)| s == service && i == image && state == "running"))
}

/// Waits until `check` holds; panics with `what` and the agent's log if it does not
/// within `BOUND`.
fn until(agent: &Agent, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < BOUND {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not reached within {BOUND:?}; agent log:\n{}", agent.log());
}

/// The service as the server last heard of it from the device.
fn reported(server: &Server, uuid: &str, service: &str) -> Value {
    let reply =
        server.request("GET", &format!("/api/v1/devices/{uuid}/current-state"), None, Some(server.admin_token()));
    if reply.status != 200 {
        return Value::Null;
    }
    reply.json()["apps"][APP.to_string()]["services"][service].clone()
}

/// The device key the agent keeps in its database.
fn stored_device_key(db: &Path) -> String {
    let sqlite3 = require_tool("sqlite3", "sqlite3");
    let out = std::process::Command::new(sqlite3)
        .arg(db)
        .arg("SELECT device_key FROM identity WHERE id = 1")
        .output()
        .expect("running sqlite3");
    assert!(out.status.success(), "sqlite3 {}: {}", db.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Samples `docker ps` of `APP` in a thread, from `start` until `finish`.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Listing>>>,
}

impl Watch {
    fn start(docker: &Docker) -> Watch {
        let docker = docker.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push(containers(&docker));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        Watch { stop, thread: Some(thread) }
    }

    /// Every sample taken.
    fn finish(mut self) -> Vec<Listing> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the watch thread panicked")
    }
}

/// Samples in which a service had more than one running container.
fn duplicates(samples: &[Listing]) -> Vec<String> {
    let mut found = Vec::new();
    for sample in samples {
        let mut running: BTreeMap<&str, usize> = BTreeMap::new();
        for (service, _, state) in sample {
            if state == "running" {
                *running.entry(service).or_default() += 1;
            }
        }
        if running.values().any(|n| *n > 1) {
            found.push(format!("{sample:?}"));
        }
    }
    found
}

/// Asserts that every sample shows one container of `APP`, running `image`, and that
/// the samples are many enough to mean something.
fn assert_only_running(samples: &[Listing], image: &str) {
    assert!(samples.len() >= 10, "too few samples of docker ps: {}", samples.len());
    for sample in samples {
        assert!(
            sample.len() == 1 && sample[0].1 == image && sample[0].2 == "running",
            "{image} did not keep running alone through the fault: {sample:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// SIGKILL at seeded random points of an update

/// Where in an update a log line says the agent is, with its service.
fn phase_of(line: &str) -> Option<String> {
    let service = if line.contains("ktd") { "ktd" } else { "dtk" };
    let phase = if line.contains("new target state") {
        return Some("poll: saving the new target (SQLite)".into());
    } else if line.contains("applying") && line.contains("step(s)") {
        return Some("planning".into());
    } else if line.contains(": pull ") {
        "pull"
    } else if line.contains(": stop ") {
        "stop"
    } else if line.contains(": remove ") {
        "remove (between stop and create)"
    } else if line.contains(": create ") {
        "create"
    } else if line.contains("starting it") {
        "start (between create and start)"
    } else if line.contains("recording the deployment") {
        "record the deployment (SQLite)"
    } else if line.contains("started ") && line.contains(" from ") {
        "started (event log, report)"
    } else {
        return None;
    };
    Some(format!("{service}: {phase}"))
}

/// The complete lines of `path` after byte `offset`.
fn lines_after(path: &Path, offset: u64) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let tail = &bytes[(offset as usize).min(bytes.len())..];
    let text = String::from_utf8_lossy(tail);
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(str::to_string).collect()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The phases the log shows after `offset`, in order.
fn phases_seen(path: &Path, offset: u64) -> Vec<String> {
    lines_after(path, offset).iter().filter_map(|l| phase_of(l)).collect()
}

/// Waits until the log after `offset` shows `phase`, looking every 100 µs (a kill meant
/// for a phase of a few milliseconds must not come late); false after `BOUND`.
fn wait_for_phase(path: &Path, offset: u64, phase: &str) -> bool {
    wait_for_line(path, offset, |line| phase_of(line).as_deref() == Some(phase))
}

/// Waits until a line appended to the log after `offset` matches, looking every 100 µs;
/// false after `BOUND`.
fn wait_for_line(path: &Path, offset: u64, matches: impl Fn(&str) -> bool) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return false };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    // Only what was appended since the last look is read and parsed.
    let (started, mut pending, mut chunk) = (Instant::now(), Vec::new(), [0u8; 8192]);
    while started.elapsed() < BOUND {
        match file.read(&mut chunk) {
            Ok(0) | Err(_) => std::thread::sleep(Duration::from_micros(100)),
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if matches(&String::from_utf8_lossy(&line)) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// The ETag of the last new target the log shows.
fn etag_in(lines: &[String]) -> Option<String> {
    lines.iter().rev().find_map(|l| {
        let rest = l.split_once("new target state (ETag ")?.1;
        Some(rest.strip_suffix(')').unwrap_or(rest).to_string())
    })
}

#[test]
fn sigkill_at_twenty_seeded_points_of_an_update_converges_with_one_container_per_service() {
    let seed = seed();
    eprintln!("agent_faults: kill seed {seed} (PINION_FAULT_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let uuid = unique("faults");

    // Two services: download-then-kill (the default) and kill-then-download, each with
    // an image of its own with 4 MiB of noise in its layer, so both pulls take a while.
    let images: Vec<[String; 2]> = ["dtk", "ktd"]
        .iter()
        .map(|name| {
            let repo = format!("{}/faults/{name}", registry.host());
            [push_image(docker, &repo, "v1", 4), push_image(docker, &repo, "v2", 4)]
        })
        .collect();
    let state = |v: usize| {
        target(&[("dtk", &images[0][v], "download-then-kill"), ("ktd", &images[1][v], "kill-then-download")])
    };
    let wanted = |v: usize| [("dtk", images[0][v].as_str()), ("ktd", images[1][v].as_str())];

    set_target(&server, &uuid, &state(0));
    let mut agent = Agent::start_with_env(
        &server.url(),
        &server.provisioning_key_for(&uuid),
        &uuid,
        docker,
        &[("RUST_LOG", AGENT_LOG)],
    );
    until(&agent, "v1 of both services running", || runs_exactly(docker, &wanted(0)));
    let device_key = stored_device_key(&agent.db());
    assert_eq!(device_key.len(), 64, "the device key is 32 random bytes in hex");

    let watch = Watch::start(docker);
    // Round 0 measures an update; rounds 1..=KILLS kill the agent once each.
    let mut timeline: Vec<(String, Duration)> = Vec::new();
    let mut update_took = Duration::ZERO;
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..=KILLS {
        let to = (round + 1) % 2;
        for pair in &images {
            // The images of the target are gone, so that their pulls are real.
            docker.try_run(&["rmi", &pair[to]]);
        }
        let log = agent.log_path();
        let offset = file_len(&log);
        let etag_before = agent.status()["target"]["etag"].clone();
        let began = Instant::now();
        set_target(&server, &uuid, &state(to));

        if round == 0 {
            // Calibration: when each phase begins.
            let mut seen = 0;
            while !runs_exactly(docker, &wanted(to)) {
                assert!(began.elapsed() < BOUND, "the update did not finish; log:\n{}", agent.log());
                let phases = phases_seen(&log, offset);
                for phase in &phases[seen..] {
                    timeline.push((phase.clone(), began.elapsed()));
                }
                seen = phases.len();
                std::thread::sleep(Duration::from_millis(2));
            }
            update_took = began.elapsed();
            eprintln!("agent_faults: an update took {update_took:?}; phases: {timeline:?}");
            assert!(timeline.iter().any(|(p, _)| p == "ktd: pull"), "the update did not pull: {timeline:?}");
            until(&agent, "the deployment recorded", || up_to_date(&agent, &wanted(to)));
            continue;
        }

        // A phase of the measured update at random, then a moment within it.
        let segment = rng.below(timeline.len() + 1);
        let (anchor, start) = match segment {
            0 => ("setting the target".to_string(), Duration::ZERO),
            n => timeline[n - 1].clone(),
        };
        let end = timeline.get(segment).map_or(update_took, |(_, at)| *at);
        let delay = end.saturating_sub(start).mul_f64(rng.unit());
        if segment > 0 && !wait_for_phase(&log, offset, &anchor) {
            panic!("round {round}: {anchor} never began; log:\n{}", agent.log());
        }
        std::thread::sleep(delay);
        agent.kill();

        let killed_log = lines_after(&log, offset);
        let mut landed =
            killed_log.iter().filter_map(|l| phase_of(l)).next_back().unwrap_or_else(|| "before the poll".to_string());
        if landed.contains("between create and start") {
            // Docker finishes a start whose client died; which one it was shows here.
            let service = &landed[..3];
            let state = containers(docker).into_iter().find(|(s, ..)| s == service).map(|(.., state)| state);
            landed = format!("{landed}, container {}", state.as_deref().unwrap_or("gone"));
        }
        eprintln!("agent_faults: kill {round:2}: aimed at {anchor} + {delay:?}, landed in {landed}");
        *tally.entry(landed).or_default() += 1;

        // Identity and last target survive the kill.
        let status = agent.status();
        assert_eq!(status["uuid"], uuid.as_str(), "{status}");
        assert_eq!(status["registered"], true, "{status}");
        assert_eq!(stored_device_key(&agent.db()), device_key, "the device key changed");
        let new_etag = etag_in(&killed_log);
        let target_saved = killed_log.iter().any(|l| l.contains("applying"));
        match (&new_etag, target_saved) {
            (Some(etag), true) => assert_eq!(status["target"]["etag"], etag.as_str(), "{status}"),
            (Some(etag), false) => assert!(
                status["target"]["etag"] == etag.as_str() || status["target"]["etag"] == etag_before,
                "the stored target is neither the last nor the new one: {status}"
            ),
            (None, _) => assert_eq!(status["target"]["etag"], etag_before, "{status}"),
        }

        agent.restart();
        until(&agent, &format!("round {round}: the target running after the kill"), || {
            runs_exactly(docker, &wanted(to))
        });
        until(&agent, &format!("round {round}: the deployment recorded after the kill"), || {
            up_to_date(&agent, &wanted(to))
        });
        let restarted_log = agent.log();
        assert!(!restarted_log.contains("registered with the server"), "registered again:\n{restarted_log}");
        if target_saved {
            assert!(
                !restarted_log.contains("new target state"),
                "the target stored before the kill was fetched again:\n{restarted_log}"
            );
        }
    }
    let samples = watch.finish();
    let doubles = duplicates(&samples);
    assert!(doubles.is_empty(), "a service ran two containers at once:\n{}", doubles.join("\n"));
    eprintln!("agent_faults: seed {seed}, {KILLS} kills over {} samples of docker ps; landed in:", samples.len());
    for (phase, count) in &tally {
        eprintln!("agent_faults:   {count:2} × {phase}");
    }
}

/// `pinion-agent status` says every service is deployed at its target image.
fn up_to_date(agent: &Agent, wanted: &[(&str, &str)]) -> bool {
    let status = agent.status();
    let services = status["services"].as_array().cloned().unwrap_or_default();
    wanted.iter().all(|(name, image)| {
        services.iter().any(|s| {
            s["service"] == *name && s["upToDate"] == true && s["deployedImage"] == *image && s["image"] == *image
        })
    })
}

// ---------------------------------------------------------------------------------
// Outages of dockerd, the registry and the server; a full disk

/// A registry, a server and v1 of service `main` running on `docker` under an agent;
/// v2 (with `v2_noise_mb` MiB more) pushed but not yet the target.
struct Update<'a> {
    docker: &'a Docker,
    registry: Registry,
    server: Server,
    agent: Agent,
    uuid: String,
    /// `<registry>/faults/<name>`, for more versions.
    repo: String,
    v1: String,
    v2: String,
}

impl<'a> Update<'a> {
    /// Images are made on `builder` (the shared dockerd) and run on `docker`.
    fn running_v1(builder: &Docker, docker: &'a Docker, name: &str, v2_noise_mb: usize) -> Update<'a> {
        let registry = Registry::start(Auth::Anonymous);
        let server = Server::start(&[]);
        let repo = format!("{}/faults/{name}", registry.host());
        let v1 = push_image(builder, &repo, "v1", 0);
        let v2 = push_image(builder, &repo, "v2", v2_noise_mb);
        let uuid = unique(name);
        set_target(&server, &uuid, &target(&[("main", &v1, "download-then-kill")]));
        let agent = Agent::start_with_env(
            &server.url(),
            &server.provisioning_key_for(&uuid),
            &uuid,
            docker,
            // The disks here are small tmpfs: a full one is the fault these tests make.
            &[("RUST_LOG", AGENT_LOG), ("PINION_MIN_FREE_DISK", "1M")],
        );
        let update = Update { docker, registry, server, agent, uuid, repo, v1, v2 };
        until(&update.agent, "v1 running", || runs_exactly(docker, &[("main", &update.v1)]));
        update
    }

    /// Returns as soon as the agent logs that it pulls v2.
    fn deploy_v2_and_wait_for_the_pull(&self) {
        let (log, pulling) = (self.agent.log_path(), format!("pulling {}", self.v2));
        let offset = file_len(&log);
        set_target(&self.server, &self.uuid, &target(&[("main", &self.v2, "download-then-kill")]));
        let began = wait_for_line(&log, offset, |line| line.contains(&pulling));
        assert!(began, "the pull of v2 did not begin; agent log:\n{}", self.agent.log());
    }

    fn runs(&self, image: &str) -> bool {
        runs_exactly(self.docker, &[("main", image)])
    }

    /// The server shows the service failing with a message containing `needle`, while v1 runs.
    fn failure_reported_with_v1_running(&self, needle: &str) -> Value {
        let mut last = Value::Null;
        until(&self.agent, &format!("a failure ({needle}) reported while v1 runs"), || {
            last = reported(&self.server, &self.uuid, "main");
            last["status"] == "error"
                && last["error"]["message"].as_str().is_some_and(|m| m.to_lowercase().contains(needle))
                && self.runs(&self.v1)
        });
        last
    }
}

#[test]
fn dockerd_restarted_during_a_pull_and_during_a_start_brings_the_service_back_and_converges() {
    let turn = take_turn();
    let mut dockerd = PrivateDockerd::start(1024);
    let private = dockerd.docker();
    let update = Update::running_v1(&turn.docker, &private, "dockerd", 64);

    update.deploy_v2_and_wait_for_the_pull();
    dockerd.restart();
    eprintln!("agent_faults: dockerd ({}) restarted during the pull", dockerd.driver());
    let failure = update.failure_reported_with_v1_running("");
    eprintln!("agent_faults: reported after the dockerd restart: {failure}");
    assert!(update.agent.log().contains("ERROR") || update.agent.log().contains("WARN"), "{}", update.agent.log());
    until(&update.agent, "v2 running after dockerd came back", || update.runs(&update.v2));
    until(&update.agent, "v2 reported running", || {
        reported(&update.server, &update.uuid, "main")["status"] == "running"
    });

    // Again while the new container is being started: it comes up, or is left created.
    let v3 = push_image(&turn.docker, &update.repo, "v3", 0);
    let log = update.agent.log_path();
    let offset = file_len(&log);
    set_target(&update.server, &update.uuid, &target(&[("main", &v3, "download-then-kill")]));
    assert!(wait_for_line(&log, offset, |l| l.contains("starting it")), "v3 not created:\n{}", update.agent.log());
    dockerd.restart();
    eprintln!("agent_faults: dockerd restarted while v3 started: {:?}", containers(&private));
    until(&update.agent, "v3 running after dockerd came back", || update.runs(&v3));
    until(&update.agent, "v3 recorded as deployed", || update.agent.status()["services"][0]["upToDate"] == true);
    let status = update.agent.status();
    assert_eq!(status["services"][0]["rollback"], Value::Null, "an engine restart is no reason to roll back: {status}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(update.runs(&v3), "v3 stays: {:?}\n{}", containers(&private), update.agent.log());
}

#[test]
fn registry_stopped_during_a_pull_keeps_v1_running_reports_and_converges() {
    let turn = take_turn();
    let mut update = Update::running_v1(&turn.docker, &turn.docker, "registry", 64);
    let watch = Watch::start(&turn.docker);

    update.deploy_v2_and_wait_for_the_pull();
    update.registry.stop();
    let failure = update.failure_reported_with_v1_running("");
    eprintln!("agent_faults: reported with the registry away: {failure}");
    std::thread::sleep(Duration::from_secs(2));
    assert_only_running(&watch.finish(), &update.v1);

    let watch = Watch::start(&turn.docker);
    update.registry.restart();
    until(&update.agent, "v2 running after the registry came back", || update.runs(&update.v2));
    let doubles = duplicates(&watch.finish());
    assert!(doubles.is_empty(), "two containers ran at once: {doubles:?}");
}

#[test]
fn server_stopped_while_the_agent_polls_and_reports_gets_the_current_state_when_back() {
    let turn = take_turn();
    let mut update = Update::running_v1(&turn.docker, &turn.docker, "server", 16);
    until(&update.agent, "v1 reported running", || {
        reported(&update.server, &update.uuid, "main")["imageName"] == update.v1.as_str()
    });
    let watch = Watch::start(&turn.docker);

    update.deploy_v2_and_wait_for_the_pull();
    update.server.stop();
    until(&update.agent, "v2 running with the server away", || {
        update.runs(&update.v2) && update.agent.log().contains("poll failed")
    });
    update.server.restart();
    until(&update.agent, "the current state delivered", || {
        let service = reported(&update.server, &update.uuid, "main");
        service["status"] == "running" && service["imageName"] == update.v2.as_str()
    });
    assert!(update.agent.log().contains("server reachable again"));
    assert_eq!(update.agent.status()["uuid"], update.uuid.as_str());
    let doubles = duplicates(&watch.finish());
    assert!(doubles.is_empty(), "two containers ran at once: {doubles:?}");
}

/// A server that accepts connections and never answers (a proxy whose upstream hangs,
/// packets dropped on the way back): each request waits for its timeout. The agent
/// writes nothing to its database while it waits (no report kept, nothing per cycle),
/// and the state goes out once the server answers again.
#[test]
fn a_server_that_never_answers_costs_no_database_writes_and_gets_the_state_when_back() {
    let turn = take_turn();
    let mut update = Update::running_v1(&turn.docker, &turn.docker, "silent", 1);
    until(&update.agent, "v1 reported running", || {
        reported(&update.server, &update.uuid, "main")["imageName"] == update.v1.as_str()
    });
    // Without probation: a probation passing is a write (once), which would fall in the
    // window below.
    update.agent.restart_with_env(&[("PINION_PROBATION", "0")]);
    until(&update.agent, "polling again", || update.agent.log().contains("starting"));
    let address = update.server.address();
    update.server.stop();
    let silent = std::net::TcpListener::bind(address).expect("taking the server's port");
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in silent.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                held.extend(stream.ok());
            }
        })
    };
    until(&update.agent, "a poll timed out", || update.agent.log().contains("poll failed"));
    let files = |db: &Path| {
        ["", "-wal", "-shm"].map(|suffix| {
            let path = format!("{}{suffix}", db.display());
            std::fs::metadata(&path).ok().map(|m| (m.len(), m.modified().ok()))
        })
    };
    let before = files(&update.agent.db());
    // Nothing to wait for: this is the time in which nothing may happen (a heartbeat and
    // several cycles are due in it).
    std::thread::sleep(Duration::from_secs(35));
    assert_eq!(files(&update.agent.db()), before, "the agent wrote to its database while the server was away");

    stop.store(true, Ordering::SeqCst);
    let _ = std::net::TcpStream::connect(address);
    holder.join().unwrap();
    update.server.restart();
    until(&update.agent, "the state delivered once the server answers", || {
        update.agent.log().contains("server reachable again")
            && reported(&update.server, &update.uuid, "main")["status"] == "running"
    });
}

/// Every push to a tag leaves an image behind: after each deployment passes probation
/// the agent removes the images neither it nor the one before it uses (never images it
/// did not pull), and below `min_free_disk` it stops pulling, says so, and does not
/// retry in a hot loop.
#[test]
fn old_images_are_collected_and_pulls_stop_before_the_disk_is_full() {
    let turn = take_turn();
    let dockerd = PrivateDockerd::start(128);
    let private = dockerd.docker();
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let repo = format!("{}/faults/gc", registry.host());
    // Different first letters: different noise, so no layer is shared.
    let versions: Vec<String> = ["a1", "b2", "c3"].iter().map(|v| push_image(&turn.docker, &repo, v, 20)).collect();
    let kept_by_hand = format!("{}/faults/by-hand:v1", registry.host());
    turn.docker.import_busybox(&kept_by_hand, "by hand", CMD);
    turn.docker.push(&kept_by_hand);
    private.run(&["pull", &kept_by_hand]);
    let uuid = unique("gc");
    let deploy = |image: &str| set_target(&server, &uuid, &target(&[("main", image, "download-then-kill")]));
    deploy(&versions[0]);
    let env = [("RUST_LOG", AGENT_LOG), ("PINION_PROBATION", "3"), ("PINION_MIN_FREE_DISK", "1M")];
    let mut agent = Agent::start_with_env(&server.url(), &server.provisioning_key_for(&uuid), &uuid, &private, &env);
    let present = |image: &str| private.try_run(&["image", "inspect", image]);
    for image in &versions {
        deploy(image);
        until(&agent, "the new version running", || runs_exactly(&private, &[("main", image)]));
    }
    until(&agent, "the oldest image collected", || !present(&versions[0]));
    assert!(present(&versions[1]), "the deployment a rollback would put back is kept");
    assert!(present(&versions[2]), "the one running is kept");
    assert!(present(&kept_by_hand), "an image the agent did not pull is never removed");
    eprintln!("agent_faults: {} MiB free after collection", dockerd.free_bytes() >> 20);

    // Below the threshold: no pull, the refusal reported, retried with backoff.
    agent.restart_with_env(&[("PINION_MIN_FREE_DISK", "1G")]);
    let next = push_image(&turn.docker, &repo, "d4", 1);
    deploy(&next);
    until(&agent, "the low-disk refusal reported", || {
        reported(&server, &uuid, "main")["error"]["message"].as_str().is_some_and(|m| m.contains("min_free_disk"))
    });
    // Nothing to wait for: this is the time in which a hot loop would show.
    std::thread::sleep(Duration::from_secs(15));
    let refusals = agent.log().matches("below min_free_disk").count();
    assert!((1..=3).contains(&refusals), "{refusals} refusals in 15 s:\n{}", agent.log());
    assert!(!present(&next), "nothing was pulled");
    assert!(runs_exactly(&private, &[("main", &versions[2])]), "the running version is left running");
}

#[test]
fn a_full_disk_fails_the_pull_keeps_v1_running_and_converges_once_space_is_back() {
    let turn = take_turn();
    // Room for dockerd and v1 (busybox), not for v2's 64 MiB layer.
    let dockerd = PrivateDockerd::start(48);
    let private = dockerd.docker();
    let update = Update::running_v1(&turn.docker, &private, "disk", 64);
    let watch = Watch::start(&private);

    update.deploy_v2_and_wait_for_the_pull();
    let failure = update.failure_reported_with_v1_running("no space left");
    eprintln!("agent_faults: reported with {} bytes free: {failure}", dockerd.free_bytes());
    let status = update.agent.status();
    assert!(
        status["services"][0]["lastError"].as_str().is_some_and(|e| e.contains("no space left")),
        "the agent's status names the full disk: {status}"
    );
    assert_only_running(&watch.finish(), &update.v1);

    let watch = Watch::start(&private);
    dockerd.resize(512);
    until(&update.agent, "v2 running once space is back", || update.runs(&update.v2));
    let doubles = duplicates(&watch.finish());
    assert!(doubles.is_empty(), "two containers ran at once: {doubles:?}");
}
