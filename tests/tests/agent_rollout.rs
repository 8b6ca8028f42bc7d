//! A staged rollout stopped by its canary, end to end: three gateways, each a real
//! `pinion-agent` on a private dockerd of its own, one `pinion-server` stepping rollouts
//! every second, the Debian docker-registry. The fleet runs a good release; a rollout of
//! a release whose image crashes a couple of seconds after it starts goes to one canary
//! first. The canary's agent pulls and starts it, sees it fail probation and puts the
//! good one back; the server reads the rollback from its report, marks the canary failed
//! and pauses the rollout. The point of the canary: the other gateways never get the bad
//! release as their target, never pull its image and never create a container from it,
//! which is checked on their own dockerds (containers sampled while the test runs, and
//! every image and container event the daemon recorded), on their targets (sampled), and
//! in the server's events.
//!
//! Needs root (private dockerds on tmpfs), `dockerd`, `docker-registry` and
//! busybox-static; the shared dockerd builds and pushes the images. `scripts/test` starts
//! what is missing; by hand: `(setsid nohup dockerd --host unix:///var/run/docker.sock
//! >/tmp/dockerd.log 2>&1 &)`.

use pinion_tests::dockerd::PrivateDockerd;
use pinion_tests::util::{unique, wait_for};
use pinion_tests::{Agent, Auth, Docker, Registry, Server};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The app and service both releases deploy.
const APP: u32 = 73;
const SERVICE: &str = "main";
/// The fleet (each test has a server of its own).
const FLEET: &str = "edge";
/// Agent probation: the bad image fails it well within (its second restart comes
/// about 5 s after it starts), the good one passes it without making the test long.
const PROBATION_SECS: &str = "15";
/// The good image: prints its version and runs until SIGTERM, which it obeys at once.
const GOOD_CMD: &str = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; cat /version; while true; do sleep 0.2; done"]"#;
/// The bad image: prints its version, and exits with code 3 two seconds later.
const BAD_CMD: &str = r#"["/bin/sh", "-c", "cat /version; sleep 2; exit 3"]"#;
/// How long anything here may take to happen: generous, for a loaded CI machine.
const BOUND: Duration = Duration::from_secs(180);
/// How often the watcher samples the next wave's targets and containers.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// One gateway: an agent on its own dockerd.
struct Gateway {
    name: &'static str,
    uuid: String,
    docker: Docker,
    agent: Agent,
    // Dropped after the agent (fields drop in order): the agent never sees its engine go.
    _dockerd: PrivateDockerd,
}

impl Gateway {
    fn start(name: &'static str, uuid: String, server: &Server, key: &str) -> Gateway {
        let dockerd = PrivateDockerd::start(256);
        let docker = dockerd.docker();
        // The tmpfs is small: the agent's default 256 MiB floor for pulls would stop them all.
        let env = [("PINION_PROBATION", PROBATION_SECS), ("PINION_MIN_FREE_DISK", "1M")];
        let agent = Agent::start_with_env(&server.url(), key, &uuid, &docker, &env);
        Gateway { name, uuid, docker, agent, _dockerd: dockerd }
    }

    /// `(image, state)` of every container of `APP` on its dockerd, stopped ones too.
    fn containers(&self) -> Vec<(String, String)> {
        app_containers(&self.docker)
    }

    /// Exactly one container of the service, running `image`.
    fn runs_only(&self, image: &str) -> bool {
        let all = self.containers();
        all.len() == 1 && all[0].0 == image && all[0].1 == "running"
    }

    /// The service as the gateway last reported it.
    fn reported(&self, server: &Server) -> Value {
        let reply = server.request(
            "GET",
            &format!("/api/v1/devices/{}/current-state", self.uuid),
            None,
            Some(server.admin_token()),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["apps"][APP.to_string()]["services"][SERVICE].clone()
    }

    /// Waits until `check` holds; panics with `what`, this gateway's containers and its
    /// agent's log, and the server's log, if it does not within `BOUND`.
    fn until(&self, server: &Server, what: &str, mut check: impl FnMut() -> bool) {
        if wait_for(BOUND, || check().then_some(())).is_none() {
            panic!(
                "{} ({}): {what}: not reached within {BOUND:?}\ncontainers: {:?}\nreported: {}\nagent log:\n{}\n\
                 server log:\n{}",
                self.name,
                self.uuid,
                self.containers(),
                self.reported(server),
                self.agent.log(),
                server.log()
            );
        }
    }
}

/// `(image, state)` of every container of `APP` on `docker`, stopped ones too.
fn app_containers(docker: &Docker) -> Vec<(String, String)> {
    let listing = docker.run(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label=io.pinion.app-id={APP}"),
        "--format",
        "{{.Image}}|{{.State}}",
    ]);
    listing
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(image, state)| (image.to_string(), state.to_string()))
        .collect()
}

/// Every event `docker` recorded since `since` (unix seconds), one JSON line each: image
/// pulls, container creates, starts and deaths, with the image they were made from.
fn docker_events(docker: &Docker, since: u64) -> Vec<String> {
    let until = unix_now() + 1;
    let out =
        docker.run(&["events", "--since", &since.to_string(), "--until", &until.to_string(), "--format", "{{json .}}"]);
    out.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Builds a busybox image running `cmd` as `reference` on the shared dockerd, pushes it,
/// and removes it there; returns the digest the registry stored.
fn push(builder: &Docker, reference: &str, version: &str, cmd: &str) -> String {
    builder.import_busybox(reference, version, cmd);
    let digest = builder.push(reference);
    builder.run(&["rmi", reference]);
    digest
}

/// A target state of app `APP` whose service `main` runs `image`, restarted always.
fn release_body(image: &str) -> Value {
    pinion_tests::fleet_api::one_service_release(APP, "rollout", SERVICE, image)
}

/// `method path` as the operator, answered with `status`; the answer's JSON.
fn api(server: &Server, method: &str, path: &str, body: Option<&Value>, status: u16) -> Value {
    let reply = server.request(method, &format!("/api/v1{path}"), body, Some(server.admin_token()));
    assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
    reply.json()
}

/// Makes a release of `image` (pinned by the server); returns its id, after checking it
/// was pinned to `digest`.
fn make_release(server: &Server, image: &str, digest: &str) -> u64 {
    let release = api(server, "POST", &format!("/fleets/{FLEET}/releases"), Some(&release_body(image)), 201);
    let pinned = &release["apps"][APP.to_string()]["services"][0]["imageName"];
    let repository = image.rsplit_once(':').expect("a tagged image").0;
    assert_eq!(pinned, &format!("{repository}@{digest}").as_str(), "{release:#}");
    release["id"].as_u64().unwrap_or_else(|| panic!("no release id in {release}"))
}

/// Samples, until stopped, the targets of the next wave's gateways and the containers on
/// their dockerds, noting every sample that carries `needle` (the bad repository).
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<usize>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    fn start(server: Arc<Server>, gateways: Vec<(String, Docker)>, needle: String) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, seen, samples) = (stop.clone(), seen.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for (uuid, docker) in &gateways {
                        let target = server.get_target_state(uuid);
                        if target.status != 200 || target.body.contains(&needle) {
                            seen.lock().unwrap().push(format!("target of {uuid}: {} {}", target.status, target.body));
                        }
                        for (image, state) in app_containers(docker) {
                            if image.contains(&needle) {
                                seen.lock().unwrap().push(format!("container on {uuid}: {image} {state}"));
                            }
                        }
                    }
                    *samples.lock().unwrap() += 1;
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Watch { stop, seen, samples, thread: Some(thread) }
    }

    /// Stops sampling; what was seen carrying the needle, and how many rounds were taken.
    fn finish(mut self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        let seen = self.seen.lock().unwrap().clone();
        let samples = *self.samples.lock().unwrap();
        (seen, samples)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_canary_that_rolls_back_pauses_the_rollout_and_the_next_wave_never_gets_the_bad_release() {
    let since = unix_now().saturating_sub(1);
    let builder = Docker::connect();
    let registry = Registry::start(Auth::Anonymous);
    let server = Arc::new(Server::start(&["--rollout-interval", "1"]));

    // Release 1, the good image, is the fleet's before any gateway joins.
    let good_ref = format!("{}/rollout/good:v1", registry.host());
    let good_digest = push(&builder, &good_ref, "good v1", GOOD_CMD);
    let good = format!("{}/rollout/good@{good_digest}", registry.host());
    api(&server, "POST", "/fleets", Some(&json!({"name": FLEET})), 201);
    let release1 = make_release(&server, &good_ref, &good_digest);
    api(&server, "PUT", &format!("/fleets/{FLEET}/release"), Some(&json!({"release": release1})), 200);

    // Three gateways joining with the fleet's provisioning key. Waves of `devices` and
    // `percent` take devices in uuid order: the canary's sorts first.
    let run = unique("rollout");
    let key = api(&server, "POST", "/provisioning-keys", Some(&json!({"fleet": FLEET})), 201)["key"]
        .as_str()
        .expect("a provisioning key")
        .to_string();
    let canary = Gateway::start("canary", format!("{run}-a-canary"), &server, &key);
    let others = [
        Gateway::start("wave 2 (b)", format!("{run}-b"), &server, &key),
        Gateway::start("wave 2 (c)", format!("{run}-c"), &server, &key),
    ];
    let all = || std::iter::once(&canary).chain(others.iter());
    for gateway in all() {
        gateway.until(&server, "release 1 running and past probation", || {
            let service = gateway.reported(&server);
            gateway.runs_only(&good)
                && service["imageName"] == good.as_str()
                && service["status"] == "running"
                && service["probation"] == "passed"
        });
        let target = server.get_target_state(&gateway.uuid).json();
        assert_eq!(target["source"]["kind"], "fleet", "{target:#}");
        assert_eq!(target["source"]["release"], release1, "{target:#}");
    }
    let fleet = api(&server, "GET", &format!("/fleets/{FLEET}"), None, 200);
    assert_eq!(fleet["devices"]["total"], 3, "{fleet:#}");
    assert_eq!(fleet["devices"]["onRelease"], 3, "{fleet:#}");

    // Release 2: an image that crashes. The next wave is watched from before it exists.
    let bad_repository = format!("{}/rollout/bad", registry.host());
    let watch = Watch::start(
        server.clone(),
        others.iter().map(|g| (g.uuid.clone(), g.docker.clone())).collect(),
        "rollout/bad".to_string(),
    );
    let bad_ref = format!("{bad_repository}:v2");
    let bad_digest = push(&builder, &bad_ref, "bad v2", BAD_CMD);
    let bad = format!("{bad_repository}@{bad_digest}");
    let release2 = make_release(&server, &bad_ref, &bad_digest);

    let plan = json!({"release": release2, "waves": [{"devices": 1}, {"percent": 100}], "bakeTime": "2s",
                      "maxFailures": {"count": 0}});
    let mut dry_run = plan.clone();
    dry_run["dryRun"] = json!(true);
    let waves = api(&server, "POST", &format!("/fleets/{FLEET}/rollouts"), Some(&dry_run), 200);
    assert_eq!(waves["waves"][0]["devices"], json!([canary.uuid]), "the canary alone in wave 1: {waves:#}");
    assert_eq!(waves["waves"][1]["devices"], json!([others[0].uuid, others[1].uuid]), "{waves:#}");

    let rollout = api(&server, "POST", &format!("/fleets/{FLEET}/rollouts"), Some(&plan), 201);
    let id = rollout["id"].as_u64().unwrap_or_else(|| panic!("no rollout id in {rollout}"));
    assert_eq!(rollout["state"], "running", "{rollout:#}");
    assert_eq!(rollout["currentWave"], 1, "{rollout:#}");
    let device = |rollout: &Value, uuid: &str| -> Value {
        rollout["devices"]
            .as_array()
            .and_then(|devices| devices.iter().find(|d| d["uuid"] == uuid))
            .cloned()
            .unwrap_or_else(|| panic!("{uuid} is not in the rollout: {rollout:#}"))
    };
    assert_eq!(device(&rollout, &canary.uuid)["hasRelease"], true, "{rollout:#}");
    for other in &others {
        let row = device(&rollout, &other.uuid);
        assert_eq!((row["wave"].as_u64(), row["state"].as_str()), (Some(2), Some("pending")), "{rollout:#}");
    }
    let rollout_path = format!("/fleets/{FLEET}/rollouts/{id}");

    // The canary pulls release 2 and starts it; it crashes in probation and is rolled back.
    canary.until(&server, "release 2 started on the canary", || {
        docker_events(&canary.docker, since).iter().any(|e| e.contains("\"start\"") && e.contains(&bad))
    });
    canary.until(&server, "the rollback reported", || {
        let service = canary.reported(&server);
        service["rollback"]["from"] == bad.as_str() && service["status"] == "running"
    });
    let service = canary.reported(&server);
    assert_eq!(service["imageName"], good.as_str(), "release 1's image runs again: {service:#}");
    assert_eq!(service["rollback"]["to"], good.as_str(), "{service:#}");
    assert_eq!(service["probation"], "failed", "{service:#}");
    canary.until(&server, "release 1 running again on the canary", || canary.runs_only(&good));

    // The server reads the rollback: the canary failed, the rollout paused in wave 1.
    let paused = wait_for(BOUND, || {
        let rollout = api(&server, "GET", &rollout_path, None, 200);
        (rollout["state"] != "running").then_some(rollout)
    })
    .unwrap_or_else(|| panic!("rollout {id} still running after {BOUND:?}; server log:\n{}", server.log()));
    assert_eq!(paused["state"], "paused", "{paused:#}");
    assert_eq!(paused["currentWave"], 1, "{paused:#}");
    assert_eq!(paused["failed"], 1, "{paused:#}");
    let failed = device(&paused, &canary.uuid);
    assert_eq!(failed["state"], "failed", "{paused:#}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("rolled back"), "the canary's reason names the rollback: {reason:?}");
    assert!(!reason.contains("exit code 0"), "release 2 exits with code 3, never 0: {reason:?}");
    eprintln!("agent_rollout: the canary failed: {reason}");

    // Three more rollout ticks in which the paused rollout could (wrongly) move on.
    std::thread::sleep(Duration::from_secs(3));
    let after = api(&server, "GET", &rollout_path, None, 200);
    assert_eq!(after["state"], "paused", "{after:#}");
    assert_eq!(after["currentWave"], 1, "{after:#}");
    for other in &others {
        let row = device(&after, &other.uuid);
        assert_eq!(row["state"], "pending", "{after:#}");
        assert_eq!(row["hasRelease"], false, "{after:#}");
    }

    // Nothing of release 2 ever reached the next wave: not its targets, not its dockerds.
    let (seen, samples) = watch.finish();
    assert!(seen.is_empty(), "release 2 reached the next wave:\n{}", seen.join("\n"));
    assert!(samples >= 5, "the watcher took only {samples} samples");
    eprintln!("agent_rollout: {samples} samples of the next wave's targets and containers, none with release 2");
    let bad_hex = bad_digest.trim_start_matches("sha256:");
    for other in &others {
        let events = docker_events(&other.docker, since);
        assert!(
            events.iter().any(|e| e.contains(&good_digest)),
            "{}: the events show release 1's pull and start (a check that events are read): {events:#?}",
            other.name
        );
        let bad_events: Vec<&String> =
            events.iter().filter(|e| e.contains("rollout/bad") || e.contains(bad_hex)).collect();
        assert!(bad_events.is_empty(), "{}: its dockerd saw release 2: {bad_events:#?}", other.name);
        assert!(!other.docker.try_run(&["image", "inspect", &bad]), "{}: release 2's image is there", other.name);
        assert!(other.runs_only(&good), "{}: {:?}", other.name, other.containers());
        let service = other.reported(&server);
        assert_eq!(service["imageName"], good.as_str(), "{service:#}");
        assert!(service.get("rollback").is_none(), "{service:#}");
        let target = server.get_target_state(&other.uuid).json();
        assert_eq!(target["source"]["kind"], "fleet", "{target:#}");
        assert_eq!(target["source"]["release"], release1, "{target:#}");
        let events = api(&server, "GET", &format!("/events?device={}", other.uuid), None, 200);
        let about_rollout: Vec<&Value> = events["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["rollout"] == id || e["release"] == release2)
            .collect();
        assert!(about_rollout.is_empty(), "{}: events of rollout {id}: {about_rollout:#?}", other.name);
    }
    // The canary's dockerd, read the same way, did see release 2: pulled, created, died.
    let canary_events = docker_events(&canary.docker, since);
    for action in ["\"pull\"", "\"create\"", "\"die\""] {
        assert!(
            canary_events.iter().any(|e| e.contains(action) && e.contains(bad_hex)),
            "the canary's dockerd shows no {action} of release 2: {canary_events:#?}"
        );
    }

    // The fleet's events: wave 1 started, the canary failed, the rollout paused; wave 2
    // never started.
    let events = api(&server, "GET", &format!("/events?fleet={FLEET}"), None, 200);
    let of_rollout: Vec<&Value> =
        events["events"].as_array().expect("events").iter().filter(|e| e["rollout"] == id).collect();
    let kinds: Vec<&str> = of_rollout.iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in ["rollout-created", "wave-started", "device-failed", "rollout-paused"] {
        assert!(kinds.contains(&kind), "no {kind} event: {of_rollout:#?}");
    }
    let waves_started: Vec<&&Value> = of_rollout.iter().filter(|e| e["kind"] == "wave-started").collect();
    assert_eq!(waves_started.len(), 1, "only wave 1 started: {waves_started:#?}");
    assert!(waves_started[0]["message"].as_str().is_some_and(|m| m.starts_with("wave 1 ")), "{waves_started:#?}");
    let failures: Vec<&&Value> = of_rollout.iter().filter(|e| e["kind"] == "device-failed").collect();
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert_eq!(failures[0]["device"], canary.uuid.as_str(), "{failures:#?}");
    for kind in ["device-healthy", "rollout-succeeded"] {
        assert!(!kinds.contains(&kind), "a {kind} event: {of_rollout:#?}");
    }
    assert!(
        of_rollout.iter().all(|e| others.iter().all(|o| e["device"] != o.uuid.as_str())),
        "events of rollout {id} about the next wave: {of_rollout:#?}"
    );
    let fleet = api(&server, "GET", &format!("/fleets/{FLEET}"), None, 200);
    assert_eq!(fleet["release"], release1, "the fleet's release is still 1: {fleet:#}");

    // The canary keeps release 1, its target still release 2 with the rollback in force.
    assert!(canary.runs_only(&good), "{:?}", canary.containers());
    let target = server.get_target_state(&canary.uuid).json();
    assert_eq!(target["source"]["kind"], "rollout", "{target:#}");
    assert_eq!(target["source"]["release"], release2, "{target:#}");
}
