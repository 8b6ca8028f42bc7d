//! Tag → digest pinning through the server API: `POST /api/v1/devices/{uuid}/target-state`
//! on a running `pinion-server serve`, with real docker-registry instances (anonymous,
//! htpasswd, token) and fakes for hangs and lies. Each service comes back with
//! `imageName`/`config.image` pinned (`host/repo@sha256:…`) and an `imageResolution`,
//! or — when the registry cannot be asked — with its tag kept and status `fallback`;
//! the POST itself never hangs past the resolve deadline.

use pinion_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

/// A target state with one app holding one service per image.
fn target_state(images: &[&str]) -> Value {
    let services: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            json!({
                "serviceId": i + 1,
                "serviceName": format!("svc{}", i + 1),
                "imageName": image,
                "config": {"image": image},
            })
        })
        .collect();
    json!({"apps": {"1": {"appId": 1, "appName": "demo", "services": services}}, "config": {}})
}

/// The services of app "1" in an answer, in order.
fn services(answer: &Value) -> Vec<Value> {
    answer["apps"]["1"]["services"].as_array().cloned().unwrap_or_else(|| panic!("no services in {answer:#}"))
}

/// `POST` the state; asserts 200 and the envelope, returns the JSON.
fn set(server: &Server, uuid: &str, state: &Value) -> Value {
    let reply = server.set_target_state(uuid, state);
    assert_eq!(reply.status, 200, "POST target-state: {}\nserver output:\n{}", reply.body, server.log());
    let answer = reply.json();
    assert_eq!(answer["status"], "ok", "{answer:#}");
    assert_eq!(answer["uuid"], uuid, "{answer:#}");
    assert!(answer["version"].as_u64().is_some(), "version must be a number: {answer:#}");
    answer
}

/// Asserts `service` was resolved from `requested` to `repo_name@digest`.
fn assert_resolved(service: &Value, requested: &str, digest: &str) {
    let name = requested.rsplit_once(':').map(|(n, _)| n).unwrap();
    let pinned = format!("{name}@{digest}");
    assert_eq!(service["imageName"], pinned, "{service:#}");
    assert_eq!(service["config"]["image"], pinned, "{service:#}");
    let r = &service["imageResolution"];
    assert_eq!(r["status"], "resolved", "{service:#}");
    assert_eq!(r["requested"], requested, "{service:#}");
    assert_eq!(r["digest"], digest, "{service:#}");
    assert!(r["resolvedAt"].as_str().is_some_and(|t| t.ends_with('Z') || t.contains('+')), "{service:#}");
    assert!(r.get("error").is_none_or(Value::is_null), "{service:#}");
}

/// Asserts `service` kept its tag `requested` with status fallback; returns the error.
fn assert_fallback(service: &Value, requested: &str) -> String {
    assert_eq!(service["imageName"], requested, "{service:#}");
    assert_eq!(service["config"]["image"], requested, "{service:#}");
    let r = &service["imageResolution"];
    assert_eq!(r["status"], "fallback", "{service:#}");
    assert_eq!(r["requested"], requested, "{service:#}");
    assert!(r.get("digest").is_none_or(Value::is_null), "a fallback has no digest: {service:#}");
    let error = r["error"].as_str().unwrap_or_else(|| panic!("a fallback says why in `error`: {service:#}"));
    assert!(!error.is_empty());
    error.to_string()
}

fn assert_summary(answer: &Value, total: u64, resolved: u64, pinned: u64, fallback: u64) {
    let r = &answer["resolution"];
    assert_eq!(
        (r["total"].as_u64(), r["resolved"].as_u64(), r["pinned"].as_u64(), r["fallback"].as_u64()),
        (Some(total), Some(resolved), Some(pinned), Some(fallback)),
        "resolution summary: {r:#}"
    );
    let warnings = r["warnings"].as_array().unwrap_or_else(|| panic!("warnings must be a list: {r:#}"));
    assert!(warnings.len() as u64 >= fallback, "every fallback is warned about: {r:#}");
}

#[test]
fn guide_story_latest_moves_from_v1_to_v2() {
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let image = format!("{}/demo/app:latest", registry.host());
    let state = target_state(&[&image]);

    let v1 = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let first = set(&server, "gateway-1", &state);
    assert_resolved(&services(&first)[0], &image, &v1);
    assert_summary(&first, 1, 1, 0, 0);
    assert_eq!(first["config"], json!({}));
    assert_eq!(first["apps"]["1"]["appName"], "demo");

    let v2 = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v2"));
    assert_ne!(v1, v2);
    // Setting the target again asks the registry (no cache by default): the push is seen.
    let second = set(&server, "gateway-1", &state);
    assert_resolved(&services(&second)[0], &image, &v2);
    assert!(
        second["version"].as_u64() > first["version"].as_u64(),
        "a new target is a new version: {} then {}",
        first["version"],
        second["version"]
    );

    let stored = server.get_target_state("gateway-1");
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_resolved(&services(&stored.json())[0], &image, &v2);
}

#[test]
fn a_pinned_state_read_back_and_sent_again_follows_its_tag() {
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&["--cache-ttl", "0"]);
    let image = format!("{}/demo/app:latest", registry.host());
    push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    set(&server, "gateway-1", &target_state(&[&image]));

    // A dashboard reads the (pinned) target, the tag moves, the dashboard sends it back.
    let read = server.get_target_state("gateway-1").json();
    let v2 = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v2"));
    let resent = json!({"apps": read["apps"], "config": read["config"]});
    let answer = set(&server, "gateway-1", &resent);
    assert_resolved(&services(&answer)[0], &image, &v2);
}

#[test]
fn a_reference_with_a_digest_is_kept_and_marked_pinned() {
    let registry = Registry::start(Auth::Anonymous);
    let digest = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let server = Server::start(&[]);
    let image = format!("{}/demo/app@{digest}", registry.host());
    let answer = set(&server, "gateway-1", &target_state(&[&image]));
    let service = &services(&answer)[0];
    assert_eq!(service["imageName"], image, "{service:#}");
    assert_eq!(service["config"]["image"], image, "{service:#}");
    assert_eq!(service["imageResolution"]["status"], "pinned", "{service:#}");
    assert_eq!(service["imageResolution"]["digest"], digest, "{service:#}");
    assert_summary(&answer, 1, 0, 1, 0);
}

#[test]
fn multi_arch_tag_is_pinned_to_the_list_digest_so_arm_gateways_get_arm_images() {
    let registry = Registry::start(Auth::Anonymous);
    let list = push_manifest_list(
        &registry,
        "demo/multi",
        "latest",
        &[ImageSpec::linux_amd64("amd64"), ImageSpec::linux_arm_v7("armv7")],
    );
    let index = push_oci_index(
        &registry,
        "demo/index",
        "latest",
        &[ImageSpec::linux_amd64("amd64"), ImageSpec::linux_arm64("arm64")],
    );
    let server = Server::start(&[]);
    let list_image = format!("{}/demo/multi:latest", registry.host());
    let index_image = format!("{}/demo/index:latest", registry.host());
    let answer = set(&server, "gateway-1", &target_state(&[&list_image, &index_image]));
    let got = services(&answer);
    assert_resolved(&got[0], &list_image, list.digest());
    assert_resolved(&got[1], &index_image, index.digest());
}

#[test]
fn htpasswd_with_the_right_password_resolves() {
    let registry = Registry::start(Auth::htpasswd("alice", "correct horse"));
    let digest = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let dir = TempDir::new("api-htpasswd");
    let auth = dir.write("config.json", registry.docker_config());
    let server = Server::start(&["--registry-auth", auth.to_str().unwrap()]);
    let image = format!("{}/demo/app:latest", registry.host());
    let answer = set(&server, "gateway-1", &target_state(&[&image]));
    assert_resolved(&services(&answer)[0], &image, &digest);
}

#[test]
fn htpasswd_with_a_wrong_password_falls_back_to_the_tag_saying_the_credentials_were_refused() {
    let registry = Registry::start(Auth::htpasswd("alice", "correct horse"));
    push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let dir = TempDir::new("api-htpasswd-wrong");
    let auth = dir.write("config.json", registry.docker_config_with_password("wrong"));
    let server = Server::start(&["--registry-auth", auth.to_str().unwrap()]);
    let image = format!("{}/demo/app:latest", registry.host());
    let answer = set(&server, "gateway-1", &target_state(&[&image]));
    let error = assert_fallback(&services(&answer)[0], &image).to_ascii_lowercase();
    assert!(
        ["refused", "unauthorized", "credential", "denied"].iter().any(|w| error.contains(w)),
        "`error` should say the credentials were refused: {error}"
    );
    assert_summary(&answer, 1, 0, 0, 1);
    let warning = answer["resolution"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains(&image), "the warning names the image: {warning}");
}

#[test]
fn hanging_registry_falls_back_within_the_resolve_deadline_while_others_resolve() {
    let registry = Registry::start(Auth::Anonymous);
    let digest = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let fake = FakeRegistry::hangs();
    let server = Server::start(&["--resolve-deadline", "3"]);
    let good = format!("{}/demo/app:latest", registry.host());
    let stuck = format!("{}/demo/app:latest", fake.host());

    let reply = server.set_target_state("gateway-1", &target_state(&[&good, &stuck]));
    assert!(
        reply.elapsed < Duration::from_secs(20),
        "--resolve-deadline 3 must bound the POST (took {:?})",
        reply.elapsed
    );
    assert_eq!(reply.status, 200, "{}\nserver output:\n{}", reply.body, server.log());
    let answer = reply.json();
    let got = services(&answer);
    assert_resolved(&got[0], &good, &digest);
    assert_fallback(&got[1], &stuck);
    assert_summary(&answer, 2, 1, 0, 1);
}

#[test]
fn ten_distinct_images_across_registries_and_repositories_all_resolve() {
    let a = Registry::start(Auth::Anonymous);
    let b = Registry::start(Auth::Anonymous);
    let c = Registry::start(Auth::htpasswd("carol", "pw-carol"));
    let mut expected: Vec<(String, String)> = Vec::new();
    for (registry, repos) in [
        (&a, vec!["team/api", "team/web", "team/db", "tools/cron"]),
        (&b, vec!["edge/proxy", "edge/agent", "edge/metrics"]),
        (&c, vec!["private/one", "private/two"]),
    ] {
        for repo in repos {
            let spec = ImageSpec::linux_amd64(format!("{}/{repo}", registry.host()));
            let digest = push_image(registry, repo, "stable", &spec);
            expected.push((format!("{}/{repo}:stable", registry.host()), digest));
        }
    }
    let list = push_manifest_list(&b, "edge/multi", "1.0", &[ImageSpec::linux_amd64("m"), ImageSpec::linux_arm64("m")]);
    expected.push((format!("{}/edge/multi:1.0", b.host()), list.digest().to_string()));
    assert_eq!(expected.len(), 10);

    let dir = TempDir::new("api-ten");
    let auth = dir.write("config.json", c.docker_config());
    let server = Server::start(&["--registry-auth", auth.to_str().unwrap()]);
    let images: Vec<&str> = expected.iter().map(|(i, _)| i.as_str()).collect();
    let answer = set(&server, "gateway-1", &target_state(&images));
    let got = services(&answer);
    assert_eq!(got.len(), 10);
    for (service, (image, digest)) in got.iter().zip(&expected) {
        assert_resolved(service, image, digest);
    }
    assert_summary(&answer, 10, 10, 0, 0);
}

/// A token registry with 6 tags in 2 repositories, and a server allowed to use it.
fn token_registry_with_six_tags() -> (Registry, Vec<(String, String)>, TempDir) {
    let registry = Registry::start(Auth::token("bob", "s3cret"));
    let mut expected = Vec::new();
    for repo in ["demo/a", "demo/b"] {
        for tag in ["latest", "v1", "v2"] {
            let digest = push_image(&registry, repo, tag, &ImageSpec::linux_amd64(format!("{repo}:{tag}")));
            expected.push((format!("{}/{repo}:{tag}", registry.host()), digest));
        }
    }
    let dir = TempDir::new("api-token");
    dir.write("config.json", registry.docker_config());
    (registry, expected, dir)
}

#[test]
fn token_auth_several_services_of_one_registry_share_one_token_per_repository() {
    let (registry, expected, dir) = token_registry_with_six_tags();
    let server = Server::start(&["--registry-auth", dir.join("config.json").to_str().unwrap()]);
    let images: Vec<&str> = expected.iter().map(|(i, _)| i.as_str()).collect();

    let before = registry.token_requests();
    let answer = set(&server, "gateway-1", &target_state(&images));
    for (service, (image, digest)) in services(&answer).iter().zip(&expected) {
        assert_resolved(service, image, digest);
    }
    let asked = registry.token_requests() - before;
    let distinct_repos = 2;
    assert!(asked >= 1, "the token server must have been asked");
    assert!(
        asked <= distinct_repos,
        "6 tags in {distinct_repos} repositories, resolved concurrently in one POST, took {asked} token \
         requests (expected at most one per repository scope): {:#?}",
        &registry.token_server().unwrap().request_log()[before..]
    );
}

#[test]
fn token_auth_tokens_are_reused_by_the_next_request_until_they_expire() {
    let (registry, expected, dir) = token_registry_with_six_tags();
    let server = Server::start(&["--registry-auth", dir.join("config.json").to_str().unwrap()]);
    let images: Vec<&str> = expected.iter().map(|(i, _)| i.as_str()).collect();
    set(&server, "gateway-1", &target_state(&images));

    // Setting the target again (300 s token lifetime) asks for no new token.
    let before = registry.token_requests();
    let answer = set(&server, "gateway-2", &target_state(&images));
    for (service, (image, digest)) in services(&answer).iter().zip(&expected) {
        assert_resolved(service, image, digest);
    }
    assert_eq!(
        registry.token_requests(),
        before,
        "cached tokens must be reused: {:#?}",
        &registry.token_server().unwrap().request_log()[before..]
    );
}

#[test]
fn token_auth_with_a_wrong_password_falls_back() {
    let registry = Registry::start(Auth::token("bob", "s3cret"));
    push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let dir = TempDir::new("api-token-wrong");
    let auth = dir.write("config.json", registry.docker_config_with_password("wrong"));
    let server = Server::start(&["--registry-auth", auth.to_str().unwrap()]);
    let image = format!("{}/demo/app:latest", registry.host());
    let answer = set(&server, "gateway-1", &target_state(&[&image]));
    assert_fallback(&services(&answer)[0], &image);
}

#[test]
fn registry_faults_fall_back_and_never_store_a_wrong_digest() {
    let limited = FakeRegistry::rate_limited();
    let liar = FakeRegistry::lying_digest();
    let headerless = FakeRegistry::no_digest_header();
    let server = Server::start(&["--resolve-deadline", "10"]);
    let images = [
        format!("{}/demo/app:latest", limited.host()),
        format!("{}/demo/app:latest", liar.host()),
        format!("{}/demo/app:latest", headerless.host()),
    ];
    let reply =
        server.set_target_state("gateway-1", &target_state(&images.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    let got = services(&answer);
    let rate_error = assert_fallback(&got[0], &images[0]).to_ascii_lowercase();
    assert!(rate_error.contains("rate") && rate_error.contains("42"), "{rate_error}");
    let lie_error = assert_fallback(&got[1], &images[1]);
    assert!(lie_error.to_ascii_lowercase().contains("digest"), "{lie_error}");
    // The claimed digest may be quoted in the error, but is never pinned or stored.
    let stored = server.get_target_state("gateway-1").json();
    let stored_service = &services(&stored)[1];
    assert_eq!(stored_service["imageName"], images[1].as_str(), "{stored_service:#}");
    assert!(stored_service["imageResolution"].get("digest").is_none_or(Value::is_null), "{stored_service:#}");
    assert_resolved(&got[2], &images[2], &headerless.manifest_digest());
    assert_summary(&answer, 3, 1, 0, 2);
}

#[test]
fn an_invalid_image_reference_is_refused_with_400_and_not_stored() {
    let registry = Registry::start(Auth::Anonymous);
    push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("v1"));
    let server = Server::start(&[]);
    let good = format!("{}/demo/app:latest", registry.host());
    let first = set(&server, "gateway-1", &target_state(&[&good]));

    let bad = format!("{}/Demo/App:latest", registry.host());
    let reply = server.set_target_state("gateway-1", &target_state(&[&good, &bad]));
    assert_eq!(reply.status, 400, "{}", reply.body);
    let error = reply.json();
    assert!(error["error"].as_str().is_some() && error["message"].as_str().is_some(), "{error:#}");

    let stored = server.get_target_state("gateway-1").json();
    assert_eq!(stored["version"], first["version"], "a refused target must not be stored: {stored:#}");
    assert!(!stored.to_string().contains("Demo/App"), "{stored:#}");
}
