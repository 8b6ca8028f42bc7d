//! Nothing a client sends makes `pinion-server` panic, answer without a JSON error, or lose
//! what it stored. One real server gets, on every route: malformed JSON, wrong types,
//! 100000-deep nesting, bodies over the size limit (413, also chunked and as a gzip
//! bomb), invalid device ids in paths, bodies and queries (too long, `..`, percent-encoded
//! NUL/CRLF, unicode), CRLF and NUL in image names, unknown routes (404) and wrong
//! methods (405 with `Allow`). Each answer must be `{"error": <code>, "message": …}` with
//! the intended status; afterwards the process still answers `/health`, and the target
//! state, devices, keys and credentials stored before are exactly as they were.

use flate2::write::GzEncoder;
use pinion_tests::raw_http::{exchange, exchange_bytes, RawRequest};
use pinion_tests::util::random_hex;
use pinion_tests::{HttpReply, Server};
use serde_json::{json, Value};
use std::io::Write;

const DEVICE: &str = "bad-input-dev";
const DIGEST: &str = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
/// The server's default `--max-body`.
const MAX_BODY: usize = 1 << 20;
const NESTING: usize = 100_000;

/// One bad request and the answer intended for it.
struct Case {
    label: String,
    request: RawRequest,
    status: u16,
    code: &'static str,
    /// For a 405: the `Allow` header intended.
    allow: Option<&'static str>,
}

/// The credentials of the callers each route takes.
struct Callers {
    admin: String,
    device_key: String,
    provisioning_key: String,
    webhook_token: String,
}

/// A route that takes a JSON body, with the caller that may call it.
struct BodyRoute {
    method: &'static str,
    path: String,
    /// The body may be empty (the route has defaults).
    empty_ok: bool,
}

impl Callers {
    /// `request` with the credentials of the caller `path` is meant for.
    fn authorize(&self, request: RawRequest) -> RawRequest {
        let path = request.target.clone();
        if path.starts_with("/api/v1/device/register") {
            request.bearer(&self.provisioning_key)
        } else if path.starts_with("/api/v1/device/") {
            request.header("X-Device-API-Key", &self.device_key)
        } else if path.starts_with("/api/v1/webhooks/") {
            request.bearer(&self.webhook_token)
        } else {
            request.bearer(&self.admin)
        }
    }
}

fn body_routes() -> Vec<BodyRoute> {
    let route = |method, path: &str, empty_ok| BodyRoute { method, path: path.to_string(), empty_ok };
    let device = |rest: &str| format!("/api/v1/devices/{DEVICE}{rest}");
    vec![
        route("PATCH", "/api/v1/device/state", false),
        route("POST", "/api/v1/device/register", false),
        route("POST", &device("/target-state"), false),
        route("PUT", &device("/target-state"), false),
        route("POST", &device("/target-state/rollback"), true),
        route("PUT", &device("/update-policy"), false),
        route("POST", "/api/v1/provisioning-keys", true),
        route("POST", &device("/key/reset"), true),
        route("POST", &device("/registration-token"), true),
        route("PUT", "/api/v1/registries/registry.lan:5000/credentials", false),
        route("POST", "/api/v1/webhooks/registry", false),
    ]
}

/// Every route, by a path that reaches it, and the `Allow` it answers a wrong method with.
fn all_routes() -> Vec<(String, &'static str)> {
    let device = |rest: &str| format!("/api/v1/devices/{DEVICE}{rest}");
    vec![
        ("/api/v1/health".into(), "GET"),
        (format!("/api/v1/device/{DEVICE}/state"), "GET"),
        ("/api/v1/device/state".into(), "PATCH"),
        ("/api/v1/device/register".into(), "POST"),
        (format!("/api/v1/device/{DEVICE}/key-exchange"), "POST"),
        (format!("/api/v1/device/{DEVICE}/logs"), "POST"),
        ("/api/v1/devices".into(), "GET"),
        (device(""), "GET, DELETE"),
        (device("/key/reset"), "POST"),
        (device("/registration-token"), "POST"),
        (device("/target-state"), "GET, POST, PUT, DELETE"),
        (device("/target-state/history"), "GET"),
        (device("/target-state/rollback"), "POST"),
        (device("/current-state"), "GET"),
        (device("/logs"), "GET"),
        (device("/metrics"), "GET"),
        (device("/update-policy"), "GET, PUT, DELETE"),
        (device("/pending-updates"), "GET"),
        ("/api/v1/images".into(), "GET"),
        ("/api/v1/webhooks/registry".into(), "POST"),
        ("/api/v1/provisioning-keys".into(), "GET, POST"),
        ("/api/v1/provisioning-keys/some-key-id".into(), "DELETE"),
        ("/api/v1/registries".into(), "GET"),
        ("/api/v1/registries/registry.lan:5000/credentials".into(), "PUT, DELETE"),
    ]
}

fn case(label: impl Into<String>, request: RawRequest, status: u16, code: &'static str) -> Case {
    Case { label: label.into(), request, status, code, allow: None }
}

fn json_request(callers: &Callers, method: &str, path: &str, body: impl Into<Vec<u8>>) -> RawRequest {
    callers.authorize(RawRequest::new(method, path).header("Content-Type", "application/json").body(body))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

/// Malformed JSON, JSON of the wrong type, and deep nesting, on every route with a body.
fn malformed_bodies(callers: &Callers) -> Vec<Case> {
    let deep_arrays = "[".repeat(NESTING);
    let deep_objects = "{\"a\":".repeat(NESTING / 5);
    let deep_inside = format!("{{\"apps\": {{}}, \"config\": {{\"x\": {}}}}}", "[".repeat(NESTING));
    let balanced = format!("{}{}", "[".repeat(NESTING / 2), "]".repeat(NESTING / 2));
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("truncated object", b"{".to_vec()),
        ("truncated member", b"{\"apps\": ".to_vec()),
        ("not JSON", b"not json".to_vec()),
        ("trailing comma", b"{\"a\": 1,}".to_vec()),
        ("trailing garbage", b"{\"a\": 1} x".to_vec()),
        ("invalid UTF-8", b"\xff\xfe\x00{".to_vec()),
        ("unterminated string with NUL", b"{\"a\": \"\x00".to_vec()),
        ("lone surrogate escape", b"{\"a\": \"\\ud800\"".to_vec()),
        ("number out of range", b"{\"description\": 1e999, \"version\": 1e999}".to_vec()),
        ("single quotes", b"{'a': 1}".to_vec()),
        ("JSON null", b"null".to_vec()),
        ("JSON array", b"[]".to_vec()),
        ("JSON string", b"\"text\"".to_vec()),
        ("JSON number", b"42".to_vec()),
        ("JSON boolean", b"true".to_vec()),
        ("100000 nested [", deep_arrays.into_bytes()),
        ("20000 nested {\"a\":", deep_objects.into_bytes()),
        ("100000 nested [ inside config", deep_inside.into_bytes()),
        ("50000 balanced nested arrays", balanced.into_bytes()),
    ];
    let mut cases = Vec::new();
    for route in body_routes() {
        for (what, body) in &malformed {
            let label = format!("{} {}: {what}", route.method, route.path);
            cases.push(case(label, json_request(callers, route.method, &route.path, body.clone()), 400, "bad_request"));
        }
        if !route.empty_ok {
            let label = format!("{} {}: empty body", route.method, route.path);
            cases.push(case(label, json_request(callers, route.method, &route.path, ""), 400, "bad_request"));
        }
    }
    cases
}

/// Fields of the wrong type or value, route by route.
fn wrong_types(callers: &Callers) -> Vec<Case> {
    let target = format!("/api/v1/devices/{DEVICE}/target-state");
    let service = |service: Value| json!({"apps": {"1": {"appId": 1, "services": [service]}}});
    // Pinned, so that a case the server wrongly accepts asks no registry.
    let image = format!("busybox@{DIGEST}");
    let mut bodies: Vec<(&str, String, Value)> = Vec::new();
    let mut add = |method: &'static str, path: &str, body: Value| bodies.push((method, path.to_string(), body));
    for body in [
        json!({"apps": 5}),
        json!({"apps": "web"}),
        json!({"apps": true}),
        json!({"apps": {"1": 5}}),
        json!({"apps": [[]]}),
        json!({"apps": {"1": {"services": 5}}}),
        json!({"apps": {"1": {"appName": 5, "services": []}}}),
        json!({"config": []}),
        json!({"config": "x"}),
        service(json!({"serviceName": "web", "imageName": 5})),
        service(json!({"serviceName": ["web"], "imageName": image})),
        service(json!({"serviceName": "web", "imageName": image, "config": "x"})),
        service(json!({"serviceName": "web", "imageName": image, "imageResolution": 5})),
    ] {
        add("POST", &target, body.clone());
        add("PUT", &target, body);
    }
    for body in [
        json!({"uuid": 5, "deviceApiKey": random_hex(20)}),
        json!({"uuid": "new-dev"}),
        json!({"deviceApiKey": random_hex(20)}),
        json!({"uuid": "new-dev", "deviceApiKey": 12345}),
        json!({"uuid": "new-dev", "deviceApiKey": "short"}),
        json!({"uuid": "new-dev", "deviceApiKey": format!("{}\r\n", random_hex(20))}),
        json!({"uuid": "new-dev", "deviceApiKey": random_hex(20), "deviceName": 5}),
        json!(["new-dev", null, null, random_hex(20)]),
    ] {
        add("POST", "/api/v1/device/register", body);
    }
    for body in [json!({}), json!({DEVICE: 5}), json!({DEVICE: []}), json!({DEVICE: "running"}), json!({DEVICE: null})]
    {
        add("PATCH", "/api/v1/device/state", body);
    }
    let rollback = format!("/api/v1/devices/{DEVICE}/target-state/rollback");
    for body in [
        json!({"version": "1"}),
        json!({"version": -1}),
        json!({"version": 1.5}),
        json!({"version": 1e30}),
        json!({"version": [1]}),
        json!({"versions": 1}),
        json!([1]),
    ] {
        add("POST", &rollback, body);
    }
    let policy = format!("/api/v1/devices/{DEVICE}/update-policy");
    for body in [
        json!({"autoUpdate": "yes"}),
        json!({"autoUpdate": 1}),
        json!({"updateWindow": 5}),
        json!({"updateWindow": "02:00-04:00"}),
        json!({"updateWindow": {"start": "25:00", "end": "26:00"}}),
        json!({"updateWindow": {"start": "02:00"}}),
        json!({"updateWindow": {"start": "02:00", "end": "04:00", "timezone": "Not/A_Zone"}}),
        json!({"updateWindow": {"start": "02:00", "end": "04:00", "timezone": "../../../../etc/passwd"}}),
        json!({"updateWindow": {"start": "02:00", "end": "04:00", "timezone": "Europe/Berlin\u{0}"}}),
        json!({"updateWindow": {"start": "02:00\r\n", "end": "04:00"}}),
        json!({"unknown": 1}),
        json!([false]),
    ] {
        add("PUT", &policy, body);
    }
    for body in [
        json!({"description": 5}),
        json!({"description": ["a"]}),
        json!(["a"]),
        json!({"description": "a\u{1b}[2Jb"}),
        json!({"device": 7}),
        json!({"expiresInHours": 0}),
        json!({"expiresInHours": -1}),
        json!({"expiresInHours": 100000}),
        json!({"singleUse": "yes"}),
        json!({"devices": ["a"]}),
    ] {
        add("POST", "/api/v1/provisioning-keys", body);
    }
    for body in [json!({"openForHours": -1}), json!({"openForHours": 100000}), json!({"openFor": 1})] {
        add("POST", &format!("/api/v1/devices/{DEVICE}/key/reset"), body);
    }
    for body in [json!({"expiresInHours": 0}), json!({"device": "other"}), json!({"description": 1})] {
        add("POST", &format!("/api/v1/devices/{DEVICE}/registration-token"), body);
    }
    let credentials = "/api/v1/registries/registry.lan:5000/credentials";
    for body in [
        json!({"username": 1, "password": "p"}),
        json!({"username": "u"}),
        json!({"username": "", "password": "p"}),
        json!({"username": "u:x", "password": "p"}),
        json!({"username": "u\r\nX-Injected: 1", "password": "p"}),
        json!({"username": "u", "password": "p\u{0}"}),
        json!({"username": "u", "password": "x".repeat(8193)}),
        json!({"username": "u", "password": "p", "devices": "all"}),
        json!({"username": "u", "password": "p", "devices": []}),
        json!({"username": "u", "password": "p", "extra": 1}),
        json!(["u", "p"]),
    ] {
        add("PUT", credentials, body);
    }
    for body in [json!({"events": "push"}), json!({"push_data": 5}), json!({"anything": "else"})] {
        add("POST", "/api/v1/webhooks/registry", body);
    }
    bodies
        .into_iter()
        .map(|(method, path, body)| {
            let label = format!("{method} {path}: wrong type or value {body}");
            let label: String = label.chars().take(200).collect();
            case(label, json_request(callers, method, &path, body.to_string()), 400, "bad_request")
        })
        .collect()
}

/// CRLF, NUL and other things no image reference has, in `imageName` and `config.image`.
fn bad_image_names(callers: &Callers) -> Vec<Case> {
    let target = format!("/api/v1/devices/{DEVICE}/target-state");
    let long_name = format!("{}:latest", "a".repeat(300));
    let names = [
        "nginx\r\nX-Injected: 1",
        "nginx:latest\r\n",
        "nginx\n:latest",
        "\r\n",
        "nginx\u{0}:latest",
        "nginx:lat\u{0}est",
        "\u{0}",
        "ngïnx:latest",
        "nginx:latest\u{2028}",
        "nginx:latest\t",
        " nginx:latest",
        "Nginx:latest",
        "nginx:",
        "nginx@sha256:abc",
        "registry.lan:5000/../etc:latest",
        "registry.lan:5000/app:la/test",
        long_name.as_str(),
        "",
    ];
    let mut cases = Vec::new();
    for name in names {
        let in_image_name = json!({"apps": {"1": {"appId": 1, "services": [
            {"serviceId": 1, "serviceName": "web", "imageName": name}]}}});
        let in_config = json!({"apps": {"1": {"appId": 1, "services": [
            {"serviceId": 1, "serviceName": "web", "config": {"image": name}}]}}});
        for (place, body) in [("imageName", in_image_name), ("config.image", in_config)] {
            let label = format!("POST target-state: {place} {name:?}");
            let label: String = label.chars().take(200).collect();
            cases.push(case(label, json_request(callers, "POST", &target, body.to_string()), 400, "invalid_image"));
        }
    }
    cases
}

/// Bodies over the limit: by `Content-Length`, chunked, and as a gzip bomb.
fn oversized_bodies(callers: &Callers) -> Vec<Case> {
    let huge = format!("{{\"apps\": {{}}, \"pad\": \"{}\"}}", "x".repeat(2 * MAX_BODY)).into_bytes();
    let mut cases = Vec::new();
    for route in body_routes() {
        let request = json_request(callers, route.method, &route.path, huge.clone());
        cases.push(case(format!("{} {}: 2 MiB body", route.method, route.path), request, 413, "payload_too_large"));
    }
    let target = format!("/api/v1/devices/{DEVICE}/target-state");
    let chunked = json_request(callers, "POST", &target, huge.clone()).chunked();
    cases.push(case("POST target-state: 2 MiB chunked body", chunked, 413, "payload_too_large"));
    let health = RawRequest::new("GET", "/api/v1/health").body(huge);
    cases.push(case("GET health: 2 MiB body", health, 413, "payload_too_large"));
    let bomb = gzip(&vec![b' '; 8 * MAX_BODY]);
    let report = json_request(callers, "PATCH", "/api/v1/device/state", bomb).header("Content-Encoding", "gzip");
    cases.push(case("PATCH report: gzip bomb (8 MiB of spaces)", report, 413, "payload_too_large"));
    let nested = gzip("[".repeat(NESTING).as_bytes());
    let report = json_request(callers, "PATCH", "/api/v1/device/state", nested).header("Content-Encoding", "gzip");
    cases.push(case("PATCH report: gzipped 100000 nested [", report, 400, "bad_request"));
    let broken = json_request(callers, "PATCH", "/api/v1/device/state", "not gzip").header("Content-Encoding", "gzip");
    cases.push(case("PATCH report: broken gzip", broken, 400, "bad_request"));
    cases
}

/// Device ids that are not `[A-Za-z0-9._-]{1,64}`, as they appear in a path segment.
fn bad_device_ids_in_paths() -> Vec<(&'static str, String)> {
    vec![
        ("65 characters", "d".repeat(65)),
        ("1000 characters", "d".repeat(1000)),
        ("..", "..".into()),
        (".", ".".into()),
        ("%2e%2e", "%2e%2e".into()),
        ("..%2f..%2fetc", "..%2f..%2fetc".into()),
        ("percent-encoded NUL", "dev%00".into()),
        ("percent-encoded CRLF", "dev%0d%0aX-Injected:%201".into()),
        ("percent-encoded space", "dev%20x".into()),
        ("percent-encoded unicode", "ger%C3%A4t".into()),
        ("percent-encoded emoji", "dev-%F0%9F%9A%80".into()),
        ("semicolon", "dev;rm".into()),
        ("backslash", "dev\\x".into()),
        ("quote", "dev\"x".into()),
    ]
}

/// Invalid device ids in every route that takes one, and in bodies and queries.
fn bad_device_ids(callers: &Callers) -> Vec<Case> {
    let state = json!({"apps": {}, "config": {}}).to_string();
    let mut cases = Vec::new();
    for (what, id) in bad_device_ids_in_paths() {
        let routes: Vec<(&str, String, Option<String>)> = vec![
            ("GET", format!("/api/v1/device/{id}/state"), None),
            ("GET", format!("/api/v1/devices/{id}"), None),
            ("GET", format!("/api/v1/devices/{id}/target-state"), None),
            ("POST", format!("/api/v1/devices/{id}/target-state"), Some(state.clone())),
            ("PUT", format!("/api/v1/devices/{id}/target-state"), Some(state.clone())),
            ("DELETE", format!("/api/v1/devices/{id}/target-state"), None),
            ("GET", format!("/api/v1/devices/{id}/target-state/history"), None),
            ("POST", format!("/api/v1/devices/{id}/target-state/rollback"), None),
            ("GET", format!("/api/v1/devices/{id}/current-state"), None),
            ("GET", format!("/api/v1/devices/{id}/update-policy"), None),
            ("PUT", format!("/api/v1/devices/{id}/update-policy"), Some("{\"autoUpdate\": true}".into())),
            ("DELETE", format!("/api/v1/devices/{id}/update-policy"), None),
            ("GET", format!("/api/v1/devices/{id}/pending-updates"), None),
        ];
        for (method, path, body) in routes {
            let request = json_request(callers, method, &path, body.unwrap_or_default());
            cases.push(case(format!("{method} {path} ({what})"), request, 400, "invalid_device_id"));
        }
        let query = format!("/api/v1/registries/registry.lan:5000/credentials?device={id}");
        cases.push(case(
            format!("DELETE credentials ?device= ({what})"),
            json_request(callers, "DELETE", &query, ""),
            400,
            "invalid_device_id",
        ));
    }
    // An empty id where a route needs one.
    for (method, path) in [
        ("GET", "/api/v1/device//state".to_string()),
        ("GET", "/api/v1/devices//target-state".to_string()),
        ("POST", "/api/v1/devices//target-state".to_string()),
        ("GET", "/api/v1/devices//update-policy".to_string()),
    ] {
        let request =
            json_request(callers, method, &path, if method == "POST" { state.clone() } else { String::new() });
        cases.push(case(format!("{method} {path} (empty id)"), request, 400, "invalid_device_id"));
    }
    let body_ids = ["d".repeat(65), "..".into(), "../etc".into(), "dev\u{0}".into(), "dev\r\nx".into(), "gerät".into()];
    for id in body_ids.iter().chain([&String::new()]) {
        let registration = json!({"uuid": id, "deviceApiKey": random_hex(20)}).to_string();
        let register = json_request(callers, "POST", "/api/v1/device/register", registration);
        cases.push(case(format!("register uuid {id:?}"), register, 400, "invalid_device_id"));
        let report = json_request(callers, "PATCH", "/api/v1/device/state", json!({id: {"apps": {}}}).to_string());
        cases.push(case(format!("report for {id:?}"), report, 400, "invalid_device_id"));
        let credentials = json!({"username": "u", "password": "p", "devices": [id]}).to_string();
        let put = json_request(callers, "PUT", "/api/v1/registries/registry.lan:5000/credentials", credentials);
        cases.push(case(format!("credentials for device {id:?}"), put, 400, "invalid_device_id"));
    }
    for host in ["a%00b", "..", "reg%0d%0a.lan", "reg.lan%2Fx", "ger%C3%A4t.lan", "-bad.lan"] {
        let path = format!("/api/v1/registries/{host}/credentials");
        let body = json!({"username": "u", "password": "p"}).to_string();
        cases.push(case(
            format!("PUT credentials for host {host}"),
            json_request(callers, "PUT", &path, body),
            400,
            "bad_request",
        ));
        cases.push(case(
            format!("DELETE credentials for host {host}"),
            json_request(callers, "DELETE", &path, ""),
            400,
            "bad_request",
        ));
    }
    cases
}

/// Paths that are no route: 404, whatever the method.
fn unknown_routes(callers: &Callers) -> Vec<Case> {
    let long = format!("/api/v1/{}", "x/".repeat(3000));
    // `/` and `/ui/app.js`, `/ui/app.css` are the dashboard's; nothing else beside them.
    let paths = [
        "/ui/",
        "/ui/app.js/",
        "/ui/../Cargo.toml",
        "/ui/%2e%2e/app.js",
        "/index.htm",
        "/api",
        "/api/v1",
        "/api/v1/",
        "/api/v2/health",
        "/API/V1/health",
        "/api/v1/nope",
        "/api/v1/health/extra",
        "/api/v1/health%00",
        "/api/v1/%2e%2e/health",
        "/api/v1/../../etc/passwd",
        "/api/v1/devices/../../etc/passwd",
        "/api/v1/devices/a/b/c/d/e",
        "/api/v1/device/x/state/y",
        "/api/v1/devices/x/target-state/history/y",
        "/api/v1/webhooks",
        "/api/v1/registries/a/b/credentials",
        "/api/v1/provisioning-keys/a/b",
        "/api/v1/ger%C3%A4t",
        long.as_str(),
    ];
    let mut cases = Vec::new();
    for path in paths {
        for method in ["GET", "POST", "DELETE"] {
            let request = callers.authorize(RawRequest::new(method, path));
            let label: String = format!("{method} {path}").chars().take(120).collect();
            cases.push(case(label, request, 404, "not_found"));
        }
    }
    cases
}

/// Every route with every method it does not take: 405 and the methods it does in `Allow`.
fn wrong_methods(callers: &Callers) -> Vec<Case> {
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW", "PROPFIND"];
    let mut cases = Vec::new();
    for (path, allow) in all_routes() {
        for method in methods {
            if allow.split(", ").any(|m| m == method) {
                continue;
            }
            let request = callers.authorize(RawRequest::new(method, &path).body("{}"));
            cases.push(Case {
                label: format!("{method} {path}"),
                request,
                status: 405,
                code: "method_not_allowed",
                allow: Some(allow),
            });
        }
    }
    cases
}

/// Credentials in shapes no caller has: 401 without telling more.
fn bad_credentials() -> Vec<Case> {
    let devices = || RawRequest::new("GET", "/api/v1/devices");
    let long = "t".repeat(60_000);
    vec![
        case("Authorization: Bearer (no token)", devices().header("Authorization", "Bearer"), 401, "unauthorized"),
        case("Authorization: Basic", devices().header("Authorization", "Basic YWRtaW46YWRtaW4="), 401, "unauthorized"),
        case("Authorization: Bearer 20000 characters", devices().bearer(&long[..20_000]), 401, "unauthorized"),
        // Past the largest head the server reads (32 KiB): refused before any credential is looked at.
        case("Authorization: Bearer 60000 characters", devices().bearer(&long), 431, "request_header_fields_too_large"),
        case("Authorization: Bearer with NUL, percent-encoded", devices().bearer("t%00k"), 401, "unauthorized"),
        case("empty X-Device-API-Key", devices().header("X-Device-API-Key", ""), 401, "unauthorized"),
        case(
            "X-Device-API-Key on a device route, wrong",
            RawRequest::new("GET", &format!("/api/v1/device/{DEVICE}/state")).header("X-Device-API-Key", "nope"),
            401,
            "unauthorized",
        ),
        case(
            "webhook ?token= wrong",
            RawRequest::new("POST", "/api/v1/webhooks/registry?token=%00").body("{}"),
            401,
            "unauthorized",
        ),
    ]
}

/// Requests broken below HTTP's grammar, answered (or not) by the HTTP library before the
/// API sees them: only the server's survival is checked for these. Raw non-ASCII in the
/// request line or a header is among them: tiny_http closes such a connection unanswered.
fn broken_framings() -> Vec<Vec<u8>> {
    vec![
        "GET /api/v1/devices/gerät/target-state HTTP/1.1\r\n\r\n".as_bytes().to_vec(),
        "GET /api/v1/device/dev-🚀/state HTTP/1.1\r\n\r\n".as_bytes().to_vec(),
        "PUT /api/v1/registries/gerät.lan/credentials HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".as_bytes().to_vec(),
        "GET /api/v1/devices HTTP/1.1\r\nAuthorization: Bearer tökén\r\n\r\n".as_bytes().to_vec(),
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET /api/v1/health HTTP/9.9\r\n\r\n".to_vec(),
        b"GET /api/v1/health\r\n\r\n".to_vec(),
        b"GET /api/v1/health HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
        b"POST /api/v1/provisioning-keys HTTP/1.1\r\nContent-Length: -1\r\n\r\n{}".to_vec(),
        b"POST /api/v1/provisioning-keys HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}".to_vec(),
        b"POST /api/v1/provisioning-keys HTTP/1.1\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{}".to_vec(),
        b"POST /api/v1/provisioning-keys HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"GET /api/v1/he\0alth HTTP/1.1\r\n\r\n".to_vec(),
        b"GET /api/v1/health HTTP/1.1\r\nX: \xff\xfe\r\nConnection: close\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        vec![0u8; 10_000],
    ]
}

/// What is wrong with `reply` as the answer to `case`; `None` when it is as intended.
fn problem(case: &Case, reply: &HttpReply) -> Option<String> {
    if reply.status != case.status {
        return Some(format!("{} instead of {}: {}", reply.status, case.status, reply.text()));
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&reply.body) else {
        return Some(format!("not a JSON object: {:?}", reply.text()));
    };
    let message_ok = body.get("message").and_then(Value::as_str).is_some_and(|m| !m.trim().is_empty());
    if body.get("error").and_then(Value::as_str) != Some(case.code) || !message_ok || body.len() != 2 {
        return Some(format!("expected {{\"error\": {:?}, \"message\": …}}, got {}", case.code, reply.text()));
    }
    if let Some(allow) = case.allow {
        if reply.header("Allow") != Some(allow) {
            return Some(format!("Allow {:?} instead of {allow:?}", reply.header("Allow")));
        }
    }
    None
}

/// What the server stores that bad input must not change.
fn snapshot(server: &Server, device_key: &str) -> Vec<(String, String)> {
    let admin = Some(server.admin_token());
    let mut seen = Vec::new();
    for path in [
        format!("/api/v1/devices/{DEVICE}/target-state"),
        format!("/api/v1/devices/{DEVICE}/target-state/history"),
        format!("/api/v1/devices/{DEVICE}/update-policy"),
        "/api/v1/devices".to_string(),
        "/api/v1/provisioning-keys".to_string(),
        "/api/v1/registries".to_string(),
    ] {
        let reply = server.request("GET", &path, None, admin);
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        seen.push((path, reply.body));
    }
    let poll = format!("/api/v1/device/{DEVICE}/state");
    let reply = server.request_with("GET", &poll, None, None, &[("X-Device-API-Key", device_key)]);
    assert_eq!(reply.status, 200, "poll: {}", reply.body);
    seen.push((poll, reply.body));
    seen
}

#[test]
fn bad_input_on_every_route_is_a_json_error_and_loses_nothing() {
    let webhook_token = random_hex(16);
    // Many requests here fail on purpose; the per-address limits are not under test.
    let server = Server::start(&[
        "--webhook-token",
        &webhook_token,
        "--auth-failures-per-minute",
        "0",
        "--registrations-per-minute",
        "0",
    ]);
    let address = server.url().trim_start_matches("http://").to_string();
    let callers = Callers {
        admin: server.admin_token().to_string(),
        device_key: random_hex(20),
        provisioning_key: server.provisioning_key(),
        webhook_token,
    };
    let registration = json!({"uuid": DEVICE, "deviceName": "bad input", "deviceApiKey": callers.device_key});
    let reply = server.request("POST", "/api/v1/device/register", Some(&registration), Some(&callers.provisioning_key));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let state = json!({"apps": {"1": {"appId": 1, "appName": "web", "services": [
        {"serviceId": 1, "serviceName": "web", "imageName": format!("registry.lan:5000/web@{DIGEST}"),
         "config": {"ports": ["80:80"], "environment": {"A": "1"}}}]}},
        "config": {"RESIN_SUPERVISOR_POLL_INTERVAL": "60000"}});
    let reply = server.set_target_state(DEVICE, &state);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let policy = json!({"autoUpdate": false, "updateWindow": {"start": "02:00", "end": "04:00"}});
    let path = format!("/api/v1/devices/{DEVICE}/update-policy");
    let reply = server.request("PUT", &path, Some(&policy), Some(server.admin_token()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let before = snapshot(&server, &callers.device_key);

    let groups: Vec<(&str, Vec<Case>)> = vec![
        ("malformed JSON, wrong top-level types, deep nesting", malformed_bodies(&callers)),
        ("wrong field types and values", wrong_types(&callers)),
        ("CRLF, NUL and other bad image names", bad_image_names(&callers)),
        ("oversized bodies", oversized_bodies(&callers)),
        ("invalid device ids and hosts", bad_device_ids(&callers)),
        ("unknown routes", unknown_routes(&callers)),
        ("wrong methods", wrong_methods(&callers)),
        ("bad credentials", bad_credentials()),
    ];
    let mut wrong = Vec::new();
    let mut tried = 0;
    for (group, cases) in &groups {
        for case in cases {
            tried += 1;
            let outcome = exchange(&address, &case.request);
            let trouble = match &outcome {
                Ok(reply) => problem(case, reply),
                Err(e) => Some(format!("no answer: {e}")),
            };
            if let Some(trouble) = trouble {
                wrong.push(format!("[{group}] {}: {trouble}", case.label));
            }
        }
        eprintln!("bad input: {group}: {} cases", cases.len());
    }
    let framings = broken_framings();
    for bytes in &framings {
        // The HTTP library answers these (or closes); what matters is that the server lives on.
        let _ = exchange_bytes(&address, bytes.clone());
    }
    eprintln!(
        "bad input: {tried} cases checked for status and JSON error, {} broken framings for survival, {} wrong",
        framings.len(),
        wrong.len()
    );

    let health = server.request("GET", "/api/v1/health", None, None);
    assert_eq!(health.status, 200, "the server still answers: {}", health.body);
    assert!(wrong.is_empty(), "{} of {tried} bad inputs were answered wrongly:\n{}", wrong.len(), wrong.join("\n"));
    let after = snapshot(&server, &callers.device_key);
    for ((path, old), (_, new)) in before.iter().zip(&after) {
        assert_eq!(old, new, "GET {path} changed under bad input");
    }
    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}
