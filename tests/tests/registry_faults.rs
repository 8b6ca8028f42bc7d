//! A registry that misbehaves ends within its deadline in a clear error or fallback,
//! never a hang, never unbounded memory, never a wrong digest stored. Each fault of
//! `FakeRegistry` is run twice: through the CLI (`pinion-server image resolve` exits 1
//! with the reason and no digest, before its bound) and through the server (`POST
//! target-state` answers 200 with the service kept as a tag, status `fallback`, within
//! the resolve deadline; `GET /api/v1/images` shows no digest for the reference; the
//! server still answers afterwards).

use pinion_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Per-request timeout given to the CLI and the server.
const REQUEST_TIMEOUT: &str = "3";
/// The server's resolve deadline.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(5);
/// What "ended within its deadline" allows: the deadline plus 10 s of slack. The CLI has
/// no overall deadline: at most a HEAD and a GET of 3 s each, plus the same slack.
const SERVER_BOUND: Duration = Duration::from_secs(5 + 10);
const CLI_BOUND: Duration = Duration::from_secs(3 + 3 + 10);

/// The words a fault's reason must contain (any of them, case-insensitive).
fn mentions(text: &str, words: &[&str]) -> bool {
    let text = text.to_ascii_lowercase();
    words.iter().any(|w| text.contains(&w.to_ascii_lowercase()))
}

/// `pinion-server image resolve` against `fake`: exit 1, no digest, a reason naming the fault.
fn cli_fails(fake: &FakeRegistry, words: &[&str]) {
    let reference = format!("{}/demo/app:latest", fake.host());
    let out = run_cli_within(&["image", "resolve", &reference, "--timeout", REQUEST_TIMEOUT], Duration::from_secs(120));
    assert!(!out.timed_out, "still running after 120 s: {out}");
    assert!(out.elapsed < CLI_BOUND, "took longer than {CLI_BOUND:?}: {out}");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(!out.stdout.contains("sha256:"), "a failed resolution printed a digest: {out}");
    assert!(mentions(&out.stderr, words), "stderr should say {words:?}: {out}");
    assert!(out.stderr.contains(&fake.host()), "stderr should name the registry: {out}");
    assert!(!fake.requests().is_empty(), "the fault was never reached: {out}");
    eprintln!("CLI {:?} exit {:?} after {:?}: {}", fake.host(), out.code, out.elapsed, out.stderr.trim());
}

fn target_state(image: &str) -> Value {
    json!({"apps": {"1": {"appId": 1, "appName": "demo", "services": [
        {"serviceId": 1, "serviceName": "web", "imageName": image, "config": {"image": image}}]}}, "config": {}})
}

/// A server whose registry requests time out after 3 s and whose resolve deadline is 5 s.
fn server() -> Server {
    Server::start(&["--resolve-deadline", "5", "--registry-timeout", REQUEST_TIMEOUT, "--refresh-interval", "0"])
}

/// `POST target-state` naming `fake`'s image: 200 within the bound, the tag kept as a
/// fallback whose error names the fault; no digest for it in `/images` or the stored
/// target; the server still answers.
fn server_falls_back(fake: &FakeRegistry, words: &[&str]) {
    let server = server();
    let image = format!("{}/demo/app:latest", fake.host());
    let reply = server.set_target_state("gateway-1", &target_state(&image));
    assert!(reply.elapsed < SERVER_BOUND, "POST took {:?} with a {RESOLVE_DEADLINE:?} deadline", reply.elapsed);
    assert_eq!(reply.status, 200, "{}\nserver output:\n{}", reply.body, server.log());
    let answer = reply.json();
    let service = &answer["apps"]["1"]["services"][0];
    let resolution = &service["imageResolution"];
    assert_eq!(resolution["status"], "fallback", "{service:#}");
    assert_eq!(service["imageName"], image.as_str(), "{service:#}");
    assert_eq!(service["config"]["image"], image.as_str(), "{service:#}");
    assert!(resolution.get("digest").is_none_or(Value::is_null), "{service:#}");
    let error = resolution["error"].as_str().unwrap_or_default();
    assert!(mentions(error, words), "`error` should say {words:?}: {service:#}");
    assert_eq!(answer["resolution"]["fallback"], 1, "{answer:#}");
    eprintln!("server {image}: HTTP {} after {:?}, fallback: {error}", reply.status, reply.elapsed);

    let images = server.request("GET", "/api/v1/images", None, Some(server.admin_token()));
    assert_eq!(images.status, 200, "{}", images.body);
    let images = images.json();
    let entry = images["images"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["reference"].as_str().is_some_and(|r| r.contains(&fake.host()))))
        .unwrap_or_else(|| panic!("{image} is not listed: {images:#}"))
        .clone();
    assert!(entry["digest"].is_null(), "a digest was stored for a failing registry: {entry:#}");
    assert!(entry["lastError"].as_str().is_some_and(|e| !e.is_empty()), "{entry:#}");

    let stored = server.get_target_state("gateway-1");
    assert_eq!(stored.status, 200, "the server stopped answering: {}\n{}", stored.body, server.log());
    let stored = stored.json();
    let stored_service = &stored["apps"]["1"]["services"][0];
    assert_eq!(stored_service["imageName"], image.as_str(), "{stored:#}");
    assert!(!stored.to_string().contains("@sha256:"), "a digest was pinned: {stored:#}");
}

#[test]
fn connection_reset_cli_fails() {
    cli_fails(&FakeRegistry::connection_reset(), &["reset", "closed", "unreachable"]);
}

#[test]
fn connection_reset_server_falls_back() {
    server_falls_back(&FakeRegistry::connection_reset(), &["reset", "closed", "unreachable"]);
}

#[test]
fn http_5xx_cli_fails_naming_the_status() {
    for status in [500, 502, 503] {
        cli_fails(&FakeRegistry::status(status), &[&format!("HTTP {status}")]);
    }
}

#[test]
fn http_5xx_server_falls_back() {
    for status in [500, 502, 503] {
        server_falls_back(&FakeRegistry::status(status), &[&format!("HTTP {status}")]);
    }
}

#[test]
fn rate_limit_server_falls_back_and_stores_no_digest() {
    server_falls_back(&FakeRegistry::rate_limited(), &["rate-limited"]);
}

#[test]
fn redirect_loop_cli_fails() {
    let fake = FakeRegistry::redirect_loop();
    cli_fails(&fake, &["redirect"]);
    let requests = fake.requests().len();
    assert!(requests <= 12, "the loop was followed {requests} times: {:?}", fake.requests());
}

#[test]
fn redirect_loop_server_falls_back() {
    server_falls_back(&FakeRegistry::redirect_loop(), &["redirect"]);
}

#[test]
fn giant_header_cli_fails() {
    cli_fails(&FakeRegistry::giant_header(), &["header"]);
}

#[test]
fn giant_header_server_falls_back() {
    server_falls_back(&FakeRegistry::giant_header(), &["header"]);
}

#[test]
fn endless_body_cli_fails_at_the_manifest_size_limit() {
    let fake = FakeRegistry::endless_body();
    cli_fails(&fake, &["larger than"]);
    assert!(fake.requests().iter().any(|r| r.starts_with("GET ")), "{:?}", fake.requests());
}

#[test]
fn endless_body_server_falls_back() {
    server_falls_back(&FakeRegistry::endless_body(), &["larger than"]);
}

#[test]
fn lying_digest_server_falls_back_and_stores_no_digest() {
    let fake = FakeRegistry::lying_digest();
    server_falls_back(&fake, &["does not match"]);
}

#[test]
fn slow_drip_cli_fails_at_the_request_timeout() {
    let fake = FakeRegistry::slow_drip();
    cli_fails(&fake, &["timed out"]);
    assert!(fake.requests().iter().any(|r| r.starts_with("GET ")), "{:?}", fake.requests());
}

#[test]
fn slow_drip_server_falls_back() {
    server_falls_back(&FakeRegistry::slow_drip(), &["timed out", "did not finish"]);
}

#[test]
fn hanging_registry_server_stores_no_digest() {
    server_falls_back(&FakeRegistry::hangs(), &["timed out", "did not finish"]);
}
