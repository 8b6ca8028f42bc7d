//! Setting a target asks the registry again, and every `imageResolution` says where its
//! digest came from (issue 10, points 5 and 6), against the real Debian docker-registry
//! and `pinion-server serve`:
//! - a push followed by a plain re-POST pins the new digest (`resolved`);
//! - with the registry stopped, the re-POST answers `cached` with the last digest, its
//!   age, and the time the registry gave it;
//! - with `--cache-ttl` set, a re-POST within it is `cached` too, never `resolved` with
//!   a fresh time; `Cache-Control: no-cache` still asks;
//! - an image ID (`sha256:<64 hex>`, or 64 hex alone) is stored as given, `pinned`, and
//!   no registry hears of it; a mistyped one is a 400; the agent runs a local image by
//!   its ID and says plainly that one it does not have cannot be pulled.

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::util::{unique, wait_for};
use pinion_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A target state with one app holding one service per image.
fn target_state(images: &[&str]) -> Value {
    let services: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            json!({"serviceId": i + 1, "serviceName": format!("svc{}", i + 1), "imageName": image,
                   "config": {"image": image}})
        })
        .collect();
    json!({"apps": {"1": {"appId": 1, "appName": "demo", "services": services}}, "config": {}})
}

/// `POST` the state (with `headers`); asserts 200, returns the answer.
fn set_with(server: &Server, uuid: &str, state: &Value, headers: &[(&str, &str)]) -> Value {
    let path = format!("/api/v1/devices/{uuid}/target-state");
    let reply = server.request_with("POST", &path, Some(state), Some(server.admin_token()), headers);
    assert_eq!(reply.status, 200, "POST target-state: {}\nserver output:\n{}", reply.body, server.log());
    reply.json()
}

/// A plain `POST`, no `Cache-Control`: what the platform's dashboards and agents send.
fn set(server: &Server, uuid: &str, state: &Value) -> Value {
    set_with(server, uuid, state, &[])
}

/// The `imageResolution` of service `i` of app "1".
fn resolution(answer: &Value, i: usize) -> Value {
    answer["apps"]["1"]["services"][i]["imageResolution"].clone()
}

fn image_name(answer: &Value, i: usize) -> String {
    answer["apps"]["1"]["services"][i]["imageName"].as_str().unwrap_or_default().to_string()
}

fn summary_counts(answer: &Value) -> (u64, u64, u64, u64) {
    let r = &answer["resolution"];
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("resolution.{k} must be a number: {r:#}"));
    (n("resolved"), n("pinned"), n("cached"), n("fallback"))
}

/// Asserts a digest the registry gave during this request.
fn assert_resolved(answer: &Value, image: &str, digest: &str) {
    let r = resolution(answer, 0);
    assert_eq!(r["status"], "resolved", "{answer:#}");
    assert_eq!(r["digest"], digest, "{answer:#}");
    assert!(r.get("cacheAge").is_none(), "a fresh answer has no cache age: {r:#}");
    let name = image.rsplit_once(':').map(|(n, _)| n).unwrap();
    assert_eq!(image_name(answer, 0), format!("{name}@{digest}"), "{answer:#}");
}

/// Asserts the registry's earlier answer `digest`, which it gave during the request
/// answered with `first`, no more than `max_age` ago; returns the `error`, if any.
fn assert_cached(answer: &Value, image: &str, digest: &str, first: &Value, max_age: Duration) -> Option<String> {
    let r = resolution(answer, 0);
    assert_eq!(r["status"], "cached", "a digest that did not come from the registry now says so: {answer:#}");
    assert_eq!(r["digest"], digest, "{answer:#}");
    let name = image.rsplit_once(':').map(|(n, _)| n).unwrap();
    assert_eq!(image_name(answer, 0), format!("{name}@{digest}"), "{answer:#}");
    // `resolvedAt` is when the registry gave the digest, not the time of this request
    // (which `wait_past` put two seconds or more later): the second of the request that
    // got it, or the next one.
    let given = unix_of(&resolution(first, 0)["resolvedAt"]);
    let at = unix_of(&r["resolvedAt"]);
    assert!(at == given || at == given + 1, "resolvedAt is not when the registry answered ({given}): {r:#}");
    let age = r["cacheAge"].as_u64().unwrap_or_else(|| panic!("a cached digest carries its age: {r:#}"));
    assert!(age >= 1 && age <= max_age.as_secs() + 1, "cacheAge {age} s, resolved {max_age:?} ago: {r:#}");
    assert_eq!(summary_counts(answer).2, 1, "{answer:#}");
    r["error"].as_str().map(str::to_string)
}

/// Seconds since the epoch of an RFC 3339 UTC time as the server writes them
/// (`2026-01-01T00:00:00Z`).
fn unix_of(time: &Value) -> u64 {
    let text = time.as_str().unwrap_or_else(|| panic!("not a time: {time}"));
    let (date, clock) = text.strip_suffix('Z').and_then(|t| t.split_once('T')).unwrap_or_else(|| panic!("{text}"));
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let c: Vec<u64> = clock.split(':').map(|p| p.parse().unwrap()).collect();
    // Howard Hinnant's days_from_civil.
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days as u64 * 86_400 + c[0] * 3600 + c[1] * 60 + c[2]
}

/// Waits until the clock is two seconds past `first`'s `resolvedAt`, so that a cached
/// answer's age and time cannot be mistaken for a fresh one's.
fn wait_past(first: &Value) {
    let target = unix_of(&resolution(first, 0)["resolvedAt"]) + 2;
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    wait_for(Duration::from_secs(10), || (now() >= target).then_some(()));
}

#[test]
fn a_push_then_a_plain_re_post_pins_the_new_digest() {
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let image = format!("{}/demo/app:latest", registry.host());
    let state = target_state(&[&image]);

    let v1 = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let first = set(&server, "gateway-1", &state);
    assert_resolved(&first, &image, &v1);

    let v2 = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v2"));
    assert_ne!(v1, v2);
    let second = set(&server, "gateway-1", &state);
    assert_resolved(&second, &image, &v2);
    assert_eq!(summary_counts(&second), (1, 0, 0, 0), "{second:#}");
    assert!(second["version"].as_u64() > first["version"].as_u64(), "{first:#}\n{second:#}");
    let stored = server.get_target_state("gateway-1").json();
    assert_resolved(&stored, &image, &v2);
}

#[test]
fn with_the_registry_stopped_a_re_post_answers_cached_with_the_last_digest_and_its_age() {
    let mut registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&["--registry-timeout", "5s"]);
    let image = format!("{}/demo/app:latest", registry.host());
    let state = target_state(&[&image]);
    let v1 = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let resolved_at = Instant::now();
    let first = set(&server, "gateway-1", &state);
    assert_resolved(&first, &image, &v1);

    registry.stop();
    wait_past(&first);
    let answer = set(&server, "gateway-1", &state);
    let error = assert_cached(&answer, &image, &v1, &first, resolved_at.elapsed())
        .unwrap_or_else(|| panic!("a registry that could not answer is named in `error`: {answer:#}"));
    assert!(error.contains(&registry.host()), "{error}");
    let warnings = answer["resolution"]["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains(&image)), "{answer:#}");

    // Back up, with a new push: asked again, and the new digest is seen.
    registry.restart();
    let v2 = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v2"));
    assert_resolved(&set(&server, "gateway-1", &state), &image, &v2);
}

#[test]
fn with_an_explicit_cache_ttl_a_re_post_within_it_says_cached_not_resolved() {
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&["--cache-ttl", "5m"]);
    let image = format!("{}/demo/app:latest", registry.host());
    let state = target_state(&[&image]);
    let v1 = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let resolved_at = Instant::now();
    let first = set(&server, "gateway-1", &state);
    assert_resolved(&first, &image, &v1);

    let v2 = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v2"));
    wait_past(&first);
    let within = set(&server, "gateway-1", &state);
    let error = assert_cached(&within, &image, &v1, &first, resolved_at.elapsed());
    assert_eq!(error, None, "the registry was not asked, so nothing failed: {within:#}");

    // `Cache-Control: no-cache` asks the registry whatever the TTL...
    let asked_at = Instant::now();
    let fresh = set_with(&server, "gateway-1", &state, &[("Cache-Control", "no-cache")]);
    assert_resolved(&fresh, &image, &v2);
    // ...and its answer is the one the cache gives next.
    wait_past(&fresh);
    let again = set(&server, "gateway-1", &state);
    assert_cached(&again, &image, &v2, &fresh, asked_at.elapsed());
}

/// Lines of the registry's access log that are registry API reads (`HEAD`/`GET /v2/…`).
fn registry_reads(registry: &Registry) -> Vec<String> {
    let mut lines = Vec::new();
    let mut logs: Vec<_> = std::fs::read_dir(registry.dir().path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("registry-"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines.extend(text.lines().filter(|l| l.contains("\"HEAD /v2/") || l.contains("\"GET /v2/")).map(String::from));
    }
    lines
}

#[test]
fn image_ids_are_stored_as_given_pinned_and_no_registry_is_asked() {
    let registry = Registry::start_with(Auth::Anonymous, &RegistryOptions { access_log: true, ..Default::default() });
    let digest = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    // Only this registry may be asked: an ID taken for a Docker Hub repository `sha256`
    // would be refused (422), not pinned.
    let server = Server::start(&["--allowed-registries", &registry.host()]);
    let hex = "4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
    let id = format!("sha256:{hex}");
    let before = registry_reads(&registry).len();

    let answer = set(&server, "gateway-ids", &target_state(&[&id, hex]));
    assert_eq!(summary_counts(&answer), (0, 2, 0, 0), "{answer:#}");
    for (i, written) in [id.as_str(), hex].into_iter().enumerate() {
        assert_eq!(image_name(&answer, i), written, "stored as given: {answer:#}");
        assert_eq!(answer["apps"]["1"]["services"][i]["config"]["image"], written, "{answer:#}");
        let r = resolution(&answer, i);
        assert_eq!((r["status"].as_str(), r["digest"].as_str()), (Some("pinned"), Some(id.as_str())), "{r:#}");
        assert_eq!(r["requested"], written, "{r:#}");
    }
    let stored = server.get_target_state("gateway-ids").json();
    assert_eq!(stored["apps"], answer["apps"]);
    let images = server.request("GET", "/api/v1/images", None, Some(server.admin_token()));
    assert!(!images.body.contains(hex), "an image ID is not a followed tag: {}", images.body);

    // The one read that follows is the tag's own: had the IDs been asked for, their
    // reads would have been logged before it.
    let tag = format!("{}/demo/app:latest", registry.host());
    assert_resolved(&set(&server, "gateway-tag", &target_state(&[&tag])), &tag, &digest);
    let reads = wait_for(Duration::from_secs(10), || {
        let reads = registry_reads(&registry);
        (reads.len() > before).then_some(reads)
    })
    .unwrap_or_else(|| panic!("the access log never showed the tag's read:\n{}", registry.log()));
    let after: Vec<&String> = reads[before..].iter().collect();
    assert!(after.iter().all(|l| l.contains("/v2/demo/app/manifests/latest")), "reads after the IDs: {after:#?}");

    for bad in ["sha256:short", "sha256:4C0FDAA8B6341BFDECA5F18F7837462C80CFF90527EE35EF185571E1C327BEAC"] {
        let reply = server.set_target_state("gateway-ids", &target_state(&[bad]));
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_image", "{}", reply.body);
        assert!(reply.body.contains("image ID"), "the message says what is wrong: {}", reply.body);
    }
    assert_eq!(server.get_target_state("gateway-ids").json()["version"], stored["version"], "nothing stored");
}

/// A command that stops at once on SIGTERM.
const SERVE: &str = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; cat /version; while true; do sleep 1; done"]"#;

#[test]
fn the_agent_runs_a_local_image_by_its_id_and_says_why_a_missing_one_cannot_be_pulled() {
    let turn = take_turn();
    let docker = &turn.docker;
    let server = Server::start(&[]);
    let local = format!("pinion-test/local-id:{}", unique("v"));
    let id = docker.import_busybox(&local, "by-id", SERVE).trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "docker import printed {id:?}");
    let hex = id.trim_start_matches("sha256:").to_string();

    let uuid = unique("ids");
    let state = json!({"apps": {"7": {"appId": 7, "appName": "local", "services": [
        {"serviceId": 1, "serviceName": "by-digest", "imageName": id, "config": {"restart": "always"}},
        {"serviceId": 2, "serviceName": "by-hex", "imageName": hex, "config": {"restart": "always"}}]}},
        "config": {}});
    let reply = server.set_target_state(&uuid, &state);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let agent = Agent::start(&server.url(), &server.provisioning_key_for(&uuid), &uuid, docker);
    let runs = |name: &str, image: &str| {
        docker.containers_with_label(&format!("{MANAGED}=7")).iter().any(|c| {
            c["Config"]["Labels"]["io.pinion.service-name"] == name
                && c["Config"]["Image"] == image
                && c["State"]["Running"] == true
        })
    };
    agent.converge("both services running from the local image", || runs("by-digest", &id) && runs("by-hex", &hex));

    let missing = format!("sha256:{}", "0".repeat(64));
    let state = json!({"apps": {"7": {"appId": 7, "appName": "local", "services": [
        {"serviceId": 3, "serviceName": "missing", "imageName": missing}]}}, "config": {}});
    let reply = server.set_target_state(&uuid, &state);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let path = format!("/api/v1/devices/{uuid}/current-state");
    // Reported as `pull_failed` when it fails, as `retrying` (same message) while the
    // agent waits to try again.
    agent.converge("the missing image reported as pull_failed", || {
        let current = server.request("GET", &path, None, Some(server.admin_token())).json();
        let error = &current["apps"]["7"]["services"]["missing"]["error"];
        (error["type"] == "pull_failed" || error["type"] == "retrying")
            && error["message"].as_str().is_some_and(|m| m.contains(&missing) && m.contains("cannot be pulled"))
    });
    assert!(!agent.log().contains(&format!("pulling {missing}")), "an image ID is never pulled:\n{}", agent.log());
    docker.try_run(&["rmi", "-f", &local]);
}
