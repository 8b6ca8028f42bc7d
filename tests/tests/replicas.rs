//! Several `pinion-server` replicas on one PostgreSQL database behind nginx round-robin
//! (issue 16), end to end:
//! - a target written through one replica reaches real agents polling through the
//!   balancer after that replica is gone, and a registry's push notification sent to
//!   another replica moves every device to the new push;
//! - a replica SIGKILLed while all of them take target writes and devices poll through
//!   the balancer loses no acknowledged write, versions stay one sequence per device
//!   (no duplicate, no gap), devices never see a version go back, and all converge;
//! - PostgreSQL stopped (cleanly, then as a crash) under load: the replicas answer 503
//!   `store_unavailable` with `Retry-After`, never a 500 or a hang, and answer again once
//!   it is back, without a restart, with every acknowledged write kept.
//!
//! Needs PostgreSQL (`PINION_TEST_POSTGRES`: `eval "$(scripts/postgres-cluster start)"`),
//! nginx, and for the first test root (private dockerds), `docker-registry`,
//! busybox-static and the shared dockerd to build images. `scripts/test` has them all.

use pinion_tests::docker::MANAGED;
use pinion_tests::dockerd::PrivateDockerd;
use pinion_tests::fleet_api::one_service_release;
use pinion_tests::postgres::{new_database, PrivateCluster};
use pinion_tests::replicas::Replicas;
use pinion_tests::simulated::services_of;
use pinion_tests::util::{http_agent, random_hex, unique, wait_for};
use pinion_tests::{Agent, Auth, Docker, Registry, DOCKER_MANIFEST};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const WEBHOOK_TOKEN: &str = "webhook-token-for-replica-tests-0123";
/// The app every target here deploys.
const APP: u32 = 5;
/// Runs until SIGTERM, which it obeys at once (Docker would wait 10 s on a plain sleep).
const SERVE: &str = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; cat /version; while true; do sleep 1; done"]"#;
/// The bound on one HTTP request of the load threads: an answer later than this is a hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long anything here may take to happen: generous, for a loaded CI machine.
const BOUND: Duration = Duration::from_secs(120);

/// An HTTP answer, as far as these tests look at it.
#[derive(Debug)]
struct Answer {
    status: u16,
    etag: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("HTTP {} is not JSON ({e}): {}", self.status, self.body))
    }

    /// A 503 `store_unavailable` with `Retry-After: 5`, as the replicas answer while the
    /// database is away.
    fn is_store_unavailable(&self) -> bool {
        self.status == 503
            && self.retry_after.as_deref() == Some("5")
            && serde_json::from_str::<Value>(&self.body).is_ok_and(|b| b["error"] == "store_unavailable")
    }
}

/// `method url` with `headers` and an optional JSON body; a transport error (refused,
/// reset, timed out) as `Err`.
fn send(
    http: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Answer, String> {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let result = match body {
        Some(json) => http.run(builder.header("Content-Type", "application/json").body(json.to_string()).unwrap()),
        None => http.run(builder.body(()).unwrap()),
    };
    let mut response = result.map_err(|e| format!("{method} {url}: {e}"))?;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (etag, retry_after) = (header("etag"), header("retry-after"));
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Ok(Answer { status: response.status().as_u16(), etag, retry_after, body })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The images of a target (`{"apps": …}`, a poll's or a `POST`'s answer), sorted.
fn images_of(target: &Value) -> Vec<String> {
    let mut images: Vec<String> = services_of(target).into_iter().map(|s| s.3).collect();
    images.sort();
    images
}

/// Every kept version of `uuid`'s target, oldest first, as `(version, source, images)`,
/// read through the replica at `url`.
fn history(url: &str, token: &str, uuid: &str) -> Vec<(u64, String, Vec<String>)> {
    let http = http_agent(CLIENT_TIMEOUT);
    let path = format!("{url}/api/v1/devices/{uuid}/target-state/history?limit=1000");
    let answer = send(&http, "GET", &path, &[("Authorization", &bearer(token))], None).unwrap();
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    let body = answer.json();
    assert!(body["next"].is_null(), "more than 1000 versions of {uuid}");
    let mut versions: Vec<(u64, String, Vec<String>)> = body["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions in {body}"))
        .iter()
        .map(|v| {
            let mut images: Vec<String> =
                v["images"].as_array().unwrap().iter().map(|i| i["imageName"].as_str().unwrap().to_string()).collect();
            images.sort();
            (v["version"].as_u64().unwrap(), v["source"].as_str().unwrap_or_default().to_string(), images)
        })
        .collect();
    versions.reverse();
    versions
}

/// Asserts that `uuid`'s versions are exactly 1, 2, …, n; returns them by number.
fn assert_one_sequence(uuid: &str, versions: &[(u64, String, Vec<String>)]) -> BTreeMap<u64, Vec<String>> {
    let numbers: Vec<u64> = versions.iter().map(|v| v.0).collect();
    let expected: Vec<u64> = (1..=versions.len() as u64).collect();
    assert_eq!(numbers, expected, "{uuid}: versions duplicated or skipped");
    versions.iter().map(|(version, _, images)| (*version, images.clone())).collect()
}

/// A target of one service per image, each pinned by digest (no registry is asked),
/// with `marker` in the config.
fn pinned_target(images: &[String], marker: &str) -> Value {
    let services: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            json!({"serviceId": i + 1, "serviceName": format!("s{}", i + 1), "imageName": image,
                   "config": {"image": image, "restart": "always"}})
        })
        .collect();
    json!({"apps": {APP.to_string(): {"appId": APP, "appName": "app", "services": services}}, "config": {"MARK": marker}})
}

/// One or two images pinned to digests no other write uses: they identify the write.
fn unique_images(seed: usize) -> Vec<String> {
    (0..1 + seed % 2).map(|i| format!("example.invalid/w/s{i}@sha256:{}", random_hex(32))).collect()
}

/// A write some replica acknowledged: the version and images it answered with.
#[derive(Debug, Clone)]
struct Acked {
    uuid: String,
    version: u64,
    images: Vec<String>,
}

/// A device's side over plain HTTP through the balancer: registered with its own key,
/// polling its target with `If-None-Match`.
struct PlainDevice {
    uuid: String,
    key: String,
    etag: Option<String>,
    /// The images of each new target a poll brought, in order.
    seen: Vec<Vec<String>>,
}

impl PlainDevice {
    fn register(http: &ureq::Agent, url: &str, provisioning_key: &str, uuid: &str) -> PlainDevice {
        let key = random_hex(32);
        let body = json!({"uuid": uuid, "deviceName": uuid, "deviceType": "plain", "deviceApiKey": key});
        let answer = send(
            http,
            "POST",
            &format!("{url}/api/v1/device/register"),
            &[("Authorization", &bearer(provisioning_key))],
            Some(&body),
        )
        .unwrap();
        assert_eq!(answer.status, 200, "registering {uuid}: {}", answer.body);
        PlainDevice { uuid: uuid.to_string(), key, etag: None, seen: Vec::new() }
    }

    /// One poll; the answer (a new target is recorded in `seen`).
    fn poll(&mut self, http: &ureq::Agent, url: &str) -> Result<Answer, String> {
        let path = format!("{url}/api/v1/device/{}/state", self.uuid);
        let mut headers = vec![("X-Device-API-Key", self.key.as_str())];
        if let Some(etag) = &self.etag {
            headers.push(("If-None-Match", etag.as_str()));
        }
        let answer = send(http, "GET", &path, &headers, None)?;
        if answer.status == 200 {
            let target = answer.json()[&self.uuid].clone();
            self.seen.push(images_of(&target));
            self.etag = answer.etag.clone();
        }
        Ok(answer)
    }

    /// Polls through `url` until the target's images are `images`; panics after `BOUND`.
    fn converge(&mut self, http: &ureq::Agent, url: &str, images: &[String]) {
        let reached = wait_for(BOUND, || {
            let answer = self.poll(http, url).unwrap_or_else(|e| panic!("{}: {e}", self.uuid));
            assert!(
                matches!(answer.status, 200 | 304),
                "{}: poll answered {}: {}",
                self.uuid,
                answer.status,
                answer.body
            );
            (self.seen.last().map(Vec::as_slice) == Some(images)).then_some(())
        });
        assert!(reached.is_some(), "{} never got {images:?}; it saw {:?}", self.uuid, self.seen.last());
    }
}

/// Asserts what a device saw is a subsequence of its history: only stored versions, and
/// never an older one after a newer.
fn assert_never_backwards(device: &PlainDevice, versions: &BTreeMap<u64, Vec<String>>) {
    let by_images: BTreeMap<&Vec<String>, u64> = versions.iter().map(|(v, images)| (images, *v)).collect();
    let mut last = 0;
    for images in device.seen.iter().filter(|images| !images.is_empty()) {
        let version = *by_images
            .get(images)
            .unwrap_or_else(|| panic!("{} was served {images:?}, which is no stored version", device.uuid));
        assert!(
            version > last,
            "{} was served v{version} after v{last} (the same one again: the replicas' ETags differ)",
            device.uuid
        );
        last = version;
    }
}

/// No replica panicked (a panic in a handler is a 500 and a log line, not an exit).
fn assert_no_panic(replicas: &Replicas) {
    for (i, server) in replicas.servers.iter().enumerate() {
        let log = server.full_log();
        assert!(!log.contains("panicked"), "replica {} panicked:\n{}", i + 1, server.log());
    }
}

/// One gateway: a real agent on a dockerd of its own, polling through the balancer.
struct Gateway {
    uuid: String,
    docker: Docker,
    agent: Agent,
    // Dropped after the agent (fields drop in order): the agent never sees its engine go.
    _dockerd: PrivateDockerd,
}

impl Gateway {
    fn start(uuid: String, url: &str, key: &str) -> Gateway {
        let dockerd = PrivateDockerd::start(256);
        let docker = dockerd.docker();
        // The tmpfs is small: the agent's default 256 MiB floor for pulls would stop them.
        let agent = Agent::start_with_env(url, key, &uuid, &docker, &[("PINION_MIN_FREE_DISK", "1M")]);
        Gateway { uuid, docker, agent, _dockerd: dockerd }
    }

    /// Waits until `check` holds; panics after `BOUND` with `what`, this gateway's
    /// containers, its agent's log, the replicas' and the registry's.
    fn until(&self, what: &str, replicas: &Replicas, registry: &Registry, mut check: impl FnMut() -> bool) {
        if wait_for(BOUND, || check().then_some(())).is_none() {
            panic!(
                "{}: {what}: not reached within {BOUND:?}\ncontainers: {:#}\nagent log:\n{}\n{}--- registry ---\n{}",
                self.uuid,
                json!(self.docker.containers_with_label(&format!("{MANAGED}={APP}"))),
                self.agent.log(),
                replicas.logs(),
                registry.log()
            );
        }
    }

    /// Exactly one container of `APP`, running `image`, with `env` among its variables.
    fn runs(&self, image: &str, env: &str) -> bool {
        let containers = self.docker.containers_with_label(&format!("{MANAGED}={APP}"));
        containers.len() == 1
            && containers[0]["State"]["Running"] == true
            && containers[0]["Config"]["Image"] == image
            && containers[0]["Config"]["Env"].as_array().is_some_and(|e| e.iter().any(|v| v == env))
    }
}

#[test]
fn a_target_set_through_one_replica_and_a_webhook_to_another_reach_agents_behind_the_balancer() {
    let builder = Docker::connect();
    let mut replicas =
        Replicas::start(3, &new_database(), &["--refresh-interval", "0", "--webhook-token", WEBHOOK_TOKEN]);
    let registry = Registry::start(Auth::Anonymous);
    let latest = format!("{}/replicas/app:latest", registry.host());
    let v1 = format!("{}/replicas/app@{}", registry.host(), builder.push_busybox(&latest, "v1", SERVE));

    // Three devices following `latest`, their targets set through replica 1, their
    // registration tokens made by replica 2; the agents know only the balancer.
    let run = unique("replicas");
    let mut state = one_service_release(APP, "app", "main", &latest);
    state["apps"][APP.to_string()]["services"][0]["config"]["environment"] = json!({"MODE": "a"});
    let uuids: Vec<String> = (0..3).map(|i| format!("{run}-{i}")).collect();
    let tokens: Vec<String> = uuids
        .iter()
        .map(|uuid| {
            let reply = replicas.servers[0].set_target_state(uuid, &state);
            assert_eq!(reply.status, 200, "{}", reply.body);
            replicas.servers[1].registration_token(uuid)
        })
        .collect();
    let url = replicas.url();
    let gateways: Vec<Gateway> = std::thread::scope(|scope| {
        let starting: Vec<_> = uuids
            .iter()
            .zip(&tokens)
            .map(|(uuid, token)| scope.spawn(|| Gateway::start(uuid.clone(), &url, token)))
            .collect();
        starting.into_iter().map(|g| g.join().expect("a gateway did not start")).collect()
    });
    for gateway in &gateways {
        gateway.until("v1 running", &replicas, &registry, || gateway.runs(&v1, "MODE=a"));
    }
    // Each device polls through every replica before the change below, so replicas 2
    // and 3 have answered its old target. Other clients' requests in between move the
    // round-robin on, so that an agent's polls do not keep landing on the same replica.
    let every_replica: BTreeSet<String> = replicas.servers.iter().map(|s| s.address().to_string()).collect();
    let http = http_agent(CLIENT_TIMEOUT);
    for gateway in &gateways {
        let polls = format!("GET /api/v1/device/{}/state", gateway.uuid);
        let spread = wait_for(BOUND, || {
            let _ = send(&http, "GET", &format!("{url}/api/v1/health"), &[], None);
            (replicas.upstreams_of(&polls) == every_replica).then_some(())
        });
        assert!(
            spread.is_some(),
            "{}'s polls did not go through every replica:\n{}",
            gateway.uuid,
            replicas.access_log()
        );
    }

    // A change written through replica 1, which is SIGKILLed at once: the agents get it
    // from replicas 2 and 3, which answered their polls of the old target before.
    state["apps"][APP.to_string()]["services"][0]["config"]["environment"] = json!({"MODE": "b"});
    for gateway in &gateways {
        let reply = replicas.servers[0].set_target_state(&gateway.uuid, &state);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["version"], 2, "{}", reply.body);
    }
    assert_eq!(replicas.kill(0).signal(), Some(9));
    for gateway in &gateways {
        gateway.until("MODE=b from the other replicas", &replicas, &registry, || gateway.runs(&v1, "MODE=b"));
    }

    // A push to the tag, and the registry's notification of it (the distribution event
    // envelope) sent to replica 3 once the push is done: replica 3 asks the registry and
    // moves every device following the tag to the new digest. (Not the registry's own
    // notification: docker-registry 2.8 sends it before the tag points at the new
    // manifest, and the server, which asks the registry at once, may see the old one.)
    builder.import_busybox(&latest, "v2", SERVE);
    let digest = builder.push(&latest);
    let v2 = format!("{}/replicas/app@{digest}", registry.host());
    builder.run(&["rmi", &latest]);
    let event = json!({"events": [{"action": "push", "target": {"mediaType": DOCKER_MANIFEST,
        "repository": "replicas/app", "tag": "latest", "digest": digest}, "request": {"host": registry.host()}}]});
    let reply = replicas.servers[2].request("POST", "/api/v1/webhooks/registry", Some(&event), Some(WEBHOOK_TOKEN));
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["references"], json!([latest]), "{}", reply.body);
    for gateway in &gateways {
        gateway
            .until("v2 running after the webhook to replica 3", &replicas, &registry, || gateway.runs(&v2, "MODE=b"));
        let versions = history(&replicas.servers[1].url(), replicas.admin_token(), &gateway.uuid);
        let sources: Vec<&str> = versions.iter().map(|v| v.1.as_str()).collect();
        assert_eq!(sources, ["operator", "operator", "webhook"], "{}: {versions:?}", gateway.uuid);
        assert_eq!(versions[2].2, std::slice::from_ref(&v2), "{}: {versions:?}", gateway.uuid);
    }
    assert_no_panic(&replicas);
}

/// What the writer and poller threads of the load tests share.
#[derive(Default)]
struct Load {
    acked: Mutex<Vec<Acked>>,
    acked_count: AtomicUsize,
    /// Answers no replica may give (5xx other than `store_unavailable`, transport errors
    /// where none is expected), with what was asked.
    failures: Mutex<Vec<String>>,
    /// 503 `store_unavailable` answers seen.
    unavailable: AtomicUsize,
    /// Set just before a replica is killed: its writer's connection errors are expected.
    killed: AtomicBool,
    stop: AtomicBool,
}

/// Tells the load threads to stop when dropped: a failed assertion in a thread scope's
/// body unwinds through it before the scope waits for them.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Load {
    fn stop_on_drop(&self) -> StopOnDrop<'_> {
        StopOnDrop(&self.stop)
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn acked(&self) -> usize {
        self.acked_count.load(Ordering::SeqCst)
    }

    /// Waits until `more` writes past `from` were acknowledged; panics with the replicas'
    /// logs after `BOUND`.
    fn wait_for_acks(&self, from: usize, more: usize, replicas: &Replicas) {
        let reached = wait_for(BOUND, || (self.acked() >= from + more).then_some(()));
        assert!(
            reached.is_some(),
            "fewer than {more} writes acknowledged; failures: {:?}\n{}",
            self.failures.lock().unwrap(),
            replicas.logs()
        );
    }
}

/// Writes targets of `uuids` in turn through the replica at `url` until told to stop.
/// Every 200 is recorded; a 503 `store_unavailable` is counted (and the writer pauses a
/// little, as a client honouring `Retry-After` would, shorter); any other answer is a
/// failure. A transport error ends the writer: expected only from a killed replica.
/// Returns how it ended.
fn write_until_stopped(url: &str, token: &str, uuids: &[String], writer: usize, load: &Load) -> String {
    let http = http_agent(CLIENT_TIMEOUT);
    let auth = bearer(token);
    for seq in 0.. {
        if load.stop.load(Ordering::SeqCst) {
            return "stopped".into();
        }
        let uuid = &uuids[seq % uuids.len()];
        let images = unique_images(seq + writer);
        let state = pinned_target(&images, &format!("writer {writer} write {seq}"));
        let path = format!("{url}/api/v1/devices/{uuid}/target-state");
        match send(&http, "POST", &path, &[("Authorization", &auth)], Some(&state)) {
            Ok(answer) if answer.status == 200 => {
                let body = answer.json();
                assert_eq!(images_of(&body), images, "writer {writer}: answered another target: {}", answer.body);
                let version = body["version"].as_u64().unwrap_or_else(|| panic!("no version in {}", answer.body));
                load.acked.lock().unwrap().push(Acked { uuid: uuid.clone(), version, images });
                load.acked_count.fetch_add(1, Ordering::SeqCst);
            }
            Ok(answer) if answer.is_store_unavailable() => {
                load.unavailable.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(answer) => load.fail(format!(
                "writer {writer}: POST {path}: {} {:?} {}",
                answer.status, answer.retry_after, answer.body
            )),
            Err(e) => {
                if !load.killed.load(Ordering::SeqCst) {
                    load.fail(format!("writer {writer}: {e} with no replica killed"));
                }
                return format!("cut: {e}");
            }
        }
    }
    unreachable!()
}

/// Polls `device` through the balancer until told to stop; answers other than 200, 304
/// and (if `unavailable_ok`) 503 `store_unavailable` are failures, and so is a
/// transport error: nginx hides a dead replica from the devices.
fn poll_until_stopped(url: &str, device: &mut PlainDevice, unavailable_ok: bool, load: &Load) {
    let http = http_agent(CLIENT_TIMEOUT);
    while !load.stop.load(Ordering::SeqCst) {
        match device.poll(&http, url) {
            Ok(answer) if matches!(answer.status, 200 | 304) => {}
            Ok(answer) if unavailable_ok && answer.is_store_unavailable() => {
                load.unavailable.fetch_add(1, Ordering::SeqCst);
            }
            Ok(answer) => load.fail(format!("poll of {}: {} {}", device.uuid, answer.status, answer.body)),
            Err(e) => load.fail(format!("poll of {}: {e}", device.uuid)),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every acknowledged write is stored with the images it was answered with, no two
/// share a version, and each device's versions run 1..=n. Returns the versions by
/// device, read through the replica at `url`.
fn check_acknowledged(
    url: &str,
    token: &str,
    uuids: &[String],
    acked: &[Acked],
) -> BTreeMap<String, BTreeMap<u64, Vec<String>>> {
    let distinct: BTreeSet<(&str, u64)> = acked.iter().map(|a| (a.uuid.as_str(), a.version)).collect();
    assert_eq!(distinct.len(), acked.len(), "two acknowledged writes got the same device and version");
    let stored: BTreeMap<String, BTreeMap<u64, Vec<String>>> =
        uuids.iter().map(|uuid| (uuid.clone(), assert_one_sequence(uuid, &history(url, token, uuid)))).collect();
    for write in acked {
        let images = stored[&write.uuid]
            .get(&write.version)
            .unwrap_or_else(|| panic!("acknowledged version {} of {} is lost", write.version, write.uuid));
        assert_eq!(images, &write.images, "version {} of {} is not what was acknowledged", write.version, write.uuid);
    }
    stored
}

#[test]
fn a_replica_killed_during_writes_loses_no_acknowledged_version_and_devices_converge() {
    // Every acknowledged version is checked, so none may be pruned.
    let mut replicas =
        Replicas::start(3, &new_database(), &["--history-versions", "1000000", "--refresh-interval", "0"]);
    let (url, token) = (replicas.url(), replicas.admin_token().to_string());
    let http = http_agent(CLIENT_TIMEOUT);
    let key = replicas.servers[0].provisioning_key();
    let run = unique("kill");
    let uuids: Vec<String> = (0..2).map(|i| format!("{run}-{i}")).collect();
    let mut devices: Vec<PlainDevice> =
        uuids.iter().map(|uuid| PlainDevice::register(&http, &url, &key, uuid)).collect();

    // Writers on replicas 1, 2 and 3, each writing both devices (their versions
    // interleave across replicas); the devices poll through the balancer. Replica 2 is
    // SIGKILLed after 150 acknowledged writes; the others go on for 150 more.
    const VICTIM: usize = 1;
    let load = Load::default();
    let replica_urls: Vec<String> = replicas.servers.iter().map(|s| s.url()).collect();
    let (ends, status) = std::thread::scope(|scope| {
        let _stop = load.stop_on_drop();
        let writers: Vec<_> = replica_urls
            .iter()
            .enumerate()
            .map(|(writer, replica)| {
                let (token, uuids, load) = (&token, &uuids, &load);
                scope.spawn(move || write_until_stopped(replica, token, uuids, writer, load))
            })
            .collect();
        let pollers: Vec<_> = devices
            .iter_mut()
            .map(|device| {
                let (url, load) = (&url, &load);
                scope.spawn(move || poll_until_stopped(url, device, false, load))
            })
            .collect();
        load.wait_for_acks(0, 150, &replicas);
        load.killed.store(true, Ordering::SeqCst);
        let status = replicas.kill(VICTIM);
        let at_kill = load.acked();
        load.wait_for_acks(at_kill, 150, &replicas);
        load.stop.store(true, Ordering::SeqCst);
        let ends: Vec<String> = writers.into_iter().map(|w| w.join().expect("a writer panicked")).collect();
        pollers.into_iter().for_each(|p| p.join().expect("a poller panicked"));
        (ends, status)
    });
    assert_eq!(status.signal(), Some(9), "replica 2 was not running at the kill: {status}");
    let failures = load.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:#?}\n{}", replicas.logs());
    assert!(ends[VICTIM].starts_with("cut"), "the killed replica's writer: {ends:?}");
    assert_eq!([&ends[0], &ends[2]], ["stopped", "stopped"], "the surviving replicas' writers: {ends:?}");

    // Through a surviving replica: every acknowledged version with its images, one
    // sequence per device, and at most the one write in flight at the kill stored
    // without an answer.
    let acked = load.acked.into_inner().unwrap();
    let stored = check_acknowledged(&replicas.servers[0].url(), &token, &uuids, &acked);
    let stored_count: usize = stored.values().map(BTreeMap::len).sum();
    assert!(stored_count - acked.len() <= 1, "{stored_count} versions stored, {} acknowledged", acked.len());
    println!("replicas: {} writes acknowledged ({stored_count} stored), replica 2 killed mid-write", acked.len());

    // The devices saw only stored versions, never one going back, and converge on the
    // newest through the balancer.
    for device in devices.iter_mut() {
        let versions = &stored[&device.uuid];
        assert_never_backwards(device, versions);
        let newest = versions.values().last().unwrap().clone();
        device.converge(&http, &url, &newest);
    }

    // The killed replica comes back on the same database and continues the sequence.
    replicas.restart(VICTIM);
    let victim = &replicas.servers[VICTIM];
    for uuid in &uuids {
        let newest = *stored[uuid].keys().last().unwrap();
        let answer = victim.get_target_state(uuid);
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["version"], newest, "{}", answer.body);
        let reply = victim.set_target_state(uuid, &pinned_target(&unique_images(0), "after the restart"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["version"], newest + 1, "{}", reply.body);
    }
    assert_no_panic(&replicas);
}

#[test]
fn postgres_restarted_under_load_is_503_store_unavailable_then_served_again_with_nothing_lost() {
    let mut cluster = PrivateCluster::init();
    let mut replicas =
        Replicas::start(2, &cluster.new_database(), &["--history-versions", "1000000", "--refresh-interval", "0"]);
    let (url, token) = (replicas.url(), replicas.admin_token().to_string());
    let http = http_agent(CLIENT_TIMEOUT);
    let key = replicas.servers[0].provisioning_key();
    let run = unique("pgdown");
    let uuids: Vec<String> = (0..2).map(|i| format!("{run}-{i}")).collect();
    let mut devices: Vec<PlainDevice> =
        uuids.iter().map(|uuid| PlainDevice::register(&http, &url, &key, uuid)).collect();
    let auth = bearer(&token);
    let probe_path = format!("/api/v1/devices/{}/target-state", uuids[0]);

    let load = Load::default();
    let replica_urls: Vec<String> = replicas.servers.iter().map(|s| s.url()).collect();
    let mut probes_while_down = Vec::new();
    std::thread::scope(|scope| {
        let _stop = load.stop_on_drop();
        let writers: Vec<_> = replica_urls
            .iter()
            .enumerate()
            .map(|(writer, replica)| {
                let (token, uuids, load) = (&token, &uuids, &load);
                scope.spawn(move || write_until_stopped(replica, token, uuids, writer, load))
            })
            .collect();
        let pollers: Vec<_> = devices
            .iter_mut()
            .map(|device| {
                let (url, load) = (&url, &load);
                scope.spawn(move || poll_until_stopped(url, device, true, load))
            })
            .collect();

        for crash in [false, true] {
            load.wait_for_acks(load.acked(), 20, &replicas);
            if crash {
                cluster.crash();
            } else {
                cluster.stop();
            }
            // While it is down, each replica answers (within the client's timeout) a
            // 503 store_unavailable, again and again: nothing is served from memory,
            // nothing is a 500.
            for replica in &replica_urls {
                for _ in 0..3 {
                    let answer =
                        send(&http, "GET", &format!("{replica}{probe_path}"), &[("Authorization", &auth)], None)
                            .unwrap_or_else(|e| panic!("with PostgreSQL down: {e}\n{}", replicas.logs()));
                    assert!(
                        answer.is_store_unavailable(),
                        "with PostgreSQL down, {replica} answered {answer:?}\n{}",
                        replicas.logs()
                    );
                    probes_while_down.push(answer.status);
                }
            }
            let acked_while_down = load.acked();
            cluster.start();
            // Back: each replica answers again, without being restarted.
            for replica in &replica_urls {
                let back = wait_for(BOUND, || {
                    let answer =
                        send(&http, "GET", &format!("{replica}{probe_path}"), &[("Authorization", &auth)], None)
                            .ok()?;
                    (answer.status == 200).then_some(answer)
                });
                assert!(back.is_some(), "{replica} never answered 200 after PostgreSQL came back\n{}", replicas.logs());
            }
            for (i, server) in replicas.servers.iter_mut().enumerate() {
                assert_eq!(server.exit_status(), None, "replica {} exited with PostgreSQL down", i + 1);
            }
            // Both replicas take writes again.
            load.wait_for_acks(acked_while_down, 20, &replicas);
        }
        load.stop.store(true, Ordering::SeqCst);
        let ends: Vec<String> = writers.into_iter().map(|w| w.join().expect("a writer panicked")).collect();
        assert_eq!(ends, ["stopped", "stopped"], "the writers: {ends:?}");
        pollers.into_iter().for_each(|p| p.join().expect("a poller panicked"));
    });
    let failures = load.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:#?}\n{}", replicas.logs());
    println!(
        "replicas: {} writes acknowledged, {} answers 503 store_unavailable under load, {} probes while down",
        load.acked(),
        load.unavailable.load(Ordering::SeqCst),
        probes_while_down.len()
    );

    // Nothing acknowledged is lost, versions run 1..=n, and the devices converge.
    let acked = load.acked.into_inner().unwrap();
    let stored = check_acknowledged(&replicas.servers[1].url(), &token, &uuids, &acked);
    for device in devices.iter_mut() {
        let versions = &stored[&device.uuid];
        assert_never_backwards(device, versions);
        device.converge(&http, &url, versions.values().last().unwrap());
    }
    assert_no_panic(&replicas);
}
