//! `--allowed-registries` and the refusal of link-local and cloud metadata registries,
//! through the CLI and the server: a refused registry is never asked (the fakes see no
//! request), the CLI exits 1 naming it, a target-state POST answers 422
//! `registry_not_allowed` and stores nothing, a webhook naming another registry is
//! ignored with a log line. Addresses that must not be connected to (169.254.169.254 and
//! friends) appear only in references that are refused before any connection; the
//! address policy itself is unit-tested in `server/src/registry/allowed.rs`.

use pinion_tests::util::demo_target;
use pinion_tests::*;
use serde_json::json;
use std::time::Duration;

const WEBHOOK_TOKEN: &str = "webhook-token-for-allowed-registries";

fn resolve(args: &[&str]) -> CliOutput {
    let mut all = vec!["image", "resolve"];
    all.extend_from_slice(args);
    run_cli_within(&all, Duration::from_secs(60))
}

#[test]
fn help_shows_the_options() {
    let out = run_cli(&["--help"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("--allowed-registries HOST[,HOST...]"), "{out}");
    assert!(out.stdout.contains("--allow-link-local-registries"), "{out}");
}

#[test]
fn cli_resolves_only_listed_registries_and_never_asks_the_others() {
    let fake = FakeRegistry::no_digest_header();
    let reference = format!("{}/demo/app:latest", fake.host());
    let out = resolve(&[&reference, "--allowed-registries", "ghcr.io,quay.io"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("not in --allowed-registries"), "{out}");
    assert!(out.stderr.contains(&fake.host()), "the refusal names the registry: {out}");
    assert!(fake.requests().is_empty(), "a refused registry was asked: {:?}", fake.requests());

    let listed = format!("ghcr.io, {}", fake.host());
    let out = resolve(&[&reference, "--allowed-registries", &listed]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.json()["digest"], fake.manifest_digest(), "{out}");
}

#[test]
fn cli_refuses_metadata_and_link_local_registries_before_connecting() {
    for (reference, kind) in [
        ("169.254.169.254/latest/meta-data:latest", "cloud metadata address"),
        ("metadata.google.internal/computemetadata/v1:latest", "cloud metadata address"),
        ("169.254.1.1:5000/demo/app:latest", "link-local address"),
        ("[fe80::1]:5000/demo/app:latest", "link-local address"),
    ] {
        // The refusal comes from the policy check that runs before any lookup or
        // connection; a connection attempt would end in "unreachable" or "timed out".
        let out = resolve(&[reference, "--timeout", "30"]);
        assert_eq!(out.code, Some(1), "{reference}: {out}");
        assert!(out.stderr.contains("is not allowed") && out.stderr.contains(kind), "{reference}: {out}");
        assert!(out.stderr.contains("--allow-link-local-registries"), "says how to allow it: {out}");
        assert!(!out.stderr.contains("unreachable") && !out.stderr.contains("timed out"), "{out}");
    }
}

#[test]
fn a_bad_list_entry_is_a_usage_error() {
    let out = resolve(&["ghcr.io/demo/app:latest", "--allowed-registries", "ghcr.io/owner"]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("--allowed-registries"), "{out}");
}

#[test]
fn server_refuses_a_target_naming_another_registry_with_422_and_stores_nothing() {
    let allowed = FakeRegistry::no_digest_header();
    let other = FakeRegistry::no_digest_header();
    let server = Server::start(&["--allowed-registries", &allowed.host()]);
    let good = format!("{}/demo/app:latest", allowed.host());
    let first = server.set_target_state("gateway-1", &demo_target(&[&good]));
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(first["apps"]["1"]["services"][0]["imageResolution"]["digest"], allowed.manifest_digest());

    let foreign = format!("{}/demo/app:latest", other.host());
    let pinned_foreign = format!("{}/demo/app@{}", other.host(), other.manifest_digest());
    for image in [&foreign, &pinned_foreign] {
        let reply = server.set_target_state("gateway-1", &demo_target(&[&good, image]));
        assert_eq!(reply.status, 422, "{image}: {}", reply.body);
        let error = reply.json();
        assert_eq!(error["error"], "registry_not_allowed", "{error:#}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(&other.host()) && message.contains("svc2"), "{message}");
    }
    assert!(other.requests().is_empty(), "a refused registry was asked: {:?}", other.requests());
    let stored = server.get_target_state("gateway-1").json();
    assert_eq!(stored["version"], first["version"], "a refused target was stored: {stored:#}");
    assert!(!stored.to_string().contains(&other.host()), "{stored:#}");
}

#[test]
fn server_refuses_a_metadata_registry_with_422_without_a_list() {
    let server = Server::start(&[]);
    let reply = server.set_target_state("gateway-1", &demo_target(&["169.254.169.254/latest/meta-data:latest"]));
    assert_eq!(reply.status, 422, "{}", reply.body);
    let error = reply.json();
    assert_eq!(error["error"], "registry_not_allowed", "{error:#}");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("169.254.169.254")), "{error:#}");
    let devices = server.request("GET", "/api/v1/devices", None, Some(server.admin_token())).json();
    assert_eq!(devices["devices"], json!([]), "nothing stored: {devices:#}");
}

#[test]
fn a_webhook_naming_another_registry_is_ignored_with_a_log_line() {
    let allowed = FakeRegistry::no_digest_header();
    let server = Server::start(&[
        "--allowed-registries",
        &allowed.host(),
        "--webhook-token",
        WEBHOOK_TOKEN,
        "--refresh-interval",
        "0",
    ]);
    let path = "/api/v1/webhooks/registry";
    let hub = json!({"push_data": {"tag": "latest"}, "repository": {"repo_name": "demo/app"}});
    let reply = server.request("POST", path, Some(&hub), Some(WEBHOOK_TOKEN));
    assert_eq!(reply.status, 202, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["references"], json!([]), "{answer:#}");
    assert_eq!(answer["ignored"], json!(["docker.io/demo/app:latest"]), "{answer:#}");
    let log = server.log();
    assert!(log.contains("docker.io/demo/app:latest ignored") && log.contains("not in --allowed-registries"), "{log}");

    let event = json!({"events": [{"action": "push", "target": {
        "mediaType": DOCKER_MANIFEST, "repository": "demo/app", "tag": "latest", "digest": allowed.manifest_digest()},
        "request": {"host": allowed.host()}}]});
    let reply = server.request("POST", path, Some(&event), Some(WEBHOOK_TOKEN));
    assert_eq!(reply.status, 202, "{}", reply.body);
    // Allowed, but no device follows it: nothing is asked of any registry.
    assert_eq!((reply.json()["references"].clone(), reply.json()["notFollowed"].clone()), (json!([]), json!(1)));
    let image = format!("{}/demo/app:latest", allowed.host());
    let target = json!({"apps": {"1": {"appId": 1, "services": [{"serviceName": "app", "imageName": image}]}}});
    assert_eq!(server.set_target_state("gw", &target).status, 200);
    let reply = server.request("POST", path, Some(&event), Some(WEBHOOK_TOKEN));
    assert_eq!(reply.json()["references"], json!([image]), "followed now: {}", reply.body);
}
