//! Who may call what, against the real `pinion-server`: every route of `api::route()` ×
//! every method × every kind of caller, each answer's status compared with a table
//! written out by hand (`intended`), every 401/403/405 checked for the JSON error shape.
//! The same table is asked again with the operator signed in to the dashboard instead of
//! presenting the admin token: its session cookie is the admin on every route that takes
//! the admin; the cookie on a state-changing request from another origin is refused
//! (403); an expired cookie is nobody.
//! Then the per-address limit of failed authentication and registration: a brute force
//! is answered 429 with `Retry-After`, the right token included (no oracle), successful
//! polls never count, and with the limit off nothing is ever 429.

use pinion_tests::raw_http::{exchange, RawRequest};
use pinion_tests::util::{random_hex, wait_for};
use pinion_tests::{ApiReply, HttpReply, Server};
use serde_json::{json, Value};
use std::time::Duration;

/// Methods every route is asked with (HEAD is left out: its answer has no body to check).
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The kinds of caller, in the order of each row of `intended`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    Anonymous,
    /// The key of the device the route names (`DEVICE`).
    OwnDevice,
    /// The key of another registered device (`OTHER_DEVICE`).
    OtherDevice,
    Provisioning,
    Admin,
    /// The registry webhook token, as a Bearer token.
    Webhook,
}

const CALLERS: [Caller; 6] =
    [Caller::Anonymous, Caller::OwnDevice, Caller::OtherDevice, Caller::Provisioning, Caller::Admin, Caller::Webhook];

const DEVICE: &str = "matrix-dev-a";
const OTHER_DEVICE: &str = "matrix-dev-b";
/// Registered, never polled: the routes that reset, reserve or delete a device.
const SPARE_DEVICE: &str = "matrix-dev-spare";
const REGISTRY_HOST: &str = "registry.lan:5000";
/// The fleet `DEVICE` and `OTHER_DEVICE` are in, with a release: the fleet, release and
/// device routes are asked of it.
const FLEET: &str = "matrix";
/// A fleet of its own with a running rollout (two devices, two waves, an hour's bake):
/// the rollout routes and its commands, each once in an order every one of them takes.
const ROLLOUT_FLEET: &str = "matrix-roll";
const ROLLOUT_DEVICES: [&str; 2] = ["matrix-dev-roll-1", "matrix-dev-roll-2"];
/// Without devices: `DELETE /fleets/{fleet}` takes it.
const SPARE_FLEET: &str = "matrix-spare";

/// A release's body: one service, its image pinned already (no registry is asked).
fn release_body() -> Value {
    let image = format!("{REGISTRY_HOST}/matrix/app@sha256:{}", "5e".repeat(32));
    json!({"apps": {"1": {"appId": 1, "appName": "matrix",
                          "services": [{"serviceId": 1, "serviceName": "main", "imageName": image}]}},
           "config": {}})
}

/// What the table's paths and bodies name, made before the matrix runs.
struct Fixture {
    spare_provisioning_key_id: String,
    /// A release of `FLEET`, and one of `ROLLOUT_FLEET`.
    release: u64,
    rollout_release: u64,
    /// The running rollout of `ROLLOUT_FLEET`.
    rollout: u64,
}

// Rows of intended statuses, one column per caller in `CALLERS` order:
//                         anonymous  own device  other device  provisioning  admin  webhook
const OPEN: [u16; 6] = [200, 200, 200, 200, 200, 200];
const OWN_DEVICE_ONLY: [u16; 6] = [401, 200, 403, 403, 403, 401];
const REGISTRATION: [u16; 6] = [401, 403, 403, 200, 200, 401];
const WEBHOOK_ONLY: [u16; 6] = [401, 401, 401, 401, 401, 202];
// The key exchange checks the header's key against the body's (here not the key of
// anyone): no key at all is the original server's 400, a key that differs its 401.
const KEY_EXCHANGE_WRONG_BODY: [u16; 6] = [400, 401, 401, 401, 401, 401];
// `GET /metrics` with `--metrics-token` (a token no caller here holds): the admin token
// scrapes too; any other credential is not valid there (401), none is a 401 as well
// (the test's address is not on `--metrics-allow`).
const SCRAPE: [u16; 6] = [401, 401, 401, 401, 200, 401];
const fn admin_only(status: u16) -> [u16; 6] {
    [401, 403, 403, 403, status, 401]
}

/// One route as `api::route()` knows it: a label, the path asked, and for each method it
/// takes (`Route::methods()`, in that order) the intended status per caller. Every other
/// method is intended to be 405 for every caller.
struct RouteCase {
    label: &'static str,
    path: String,
    methods: Vec<(&'static str, [u16; 6])>,
}

/// The intended answers, route × method × caller.
fn intended(fixture: &Fixture) -> Vec<RouteCase> {
    let route = |label, path: String, methods: Vec<(&'static str, [u16; 6])>| RouteCase { label, path, methods };
    let device = |rest: &str| format!("/api/v1/devices/{DEVICE}{rest}");
    let spare = |rest: &str| format!("/api/v1/devices/{SPARE_DEVICE}{rest}");
    let rollout = |rest: &str| format!("/api/v1/fleets/{ROLLOUT_FLEET}/rollouts/{}{rest}", fixture.rollout);
    vec![
        route("health", "/api/v1/health".into(), vec![("GET", OPEN)]),
        route("prometheus scrape", "/metrics".into(), vec![("GET", SCRAPE)]),
        route("device poll", format!("/api/v1/device/{DEVICE}/state"), vec![("GET", OWN_DEVICE_ONLY)]),
        route("device report", "/api/v1/device/state".into(), vec![("PATCH", OWN_DEVICE_ONLY)]),
        route("device register", "/api/v1/device/register".into(), vec![("POST", REGISTRATION)]),
        route("key exchange", format!("/api/v1/device/{DEVICE}/key-exchange"), vec![("POST", KEY_EXCHANGE_WRONG_BODY)]),
        route("device logs", format!("/api/v1/device/{DEVICE}/logs"), vec![("POST", OWN_DEVICE_ONLY)]),
        route("devices", "/api/v1/devices".into(), vec![("GET", admin_only(200))]),
        // On a device of their own, before it is deleted: they reset, reserve or delete it.
        route("key reset", spare("/key/reset"), vec![("POST", admin_only(200))]),
        route("registration token", spare("/registration-token"), vec![("POST", admin_only(201))]),
        route("device", spare(""), vec![("GET", admin_only(200)), ("DELETE", admin_only(200))]),
        route(
            "target state",
            device("/target-state"),
            vec![
                ("GET", admin_only(200)),
                ("POST", admin_only(200)),
                ("PUT", admin_only(200)),
                ("DELETE", admin_only(200)),
            ],
        ),
        route("target history", device("/target-state/history"), vec![("GET", admin_only(200))]),
        route("target rollback", device("/target-state/rollback"), vec![("POST", admin_only(200))]),
        route("current state", device("/current-state"), vec![("GET", admin_only(200))]),
        route("logs", device("/logs"), vec![("GET", admin_only(200))]),
        route("metrics", device("/metrics"), vec![("GET", admin_only(200))]),
        route(
            "update policy",
            device("/update-policy"),
            vec![("GET", admin_only(200)), ("PUT", admin_only(200)), ("DELETE", admin_only(200))],
        ),
        route("pending updates", device("/pending-updates"), vec![("GET", admin_only(200))]),
        route("images", "/api/v1/images".into(), vec![("GET", admin_only(200))]),
        route("registry webhook", "/api/v1/webhooks/registry".into(), vec![("POST", WEBHOOK_ONLY)]),
        route(
            "provisioning keys",
            "/api/v1/provisioning-keys".into(),
            vec![("GET", admin_only(200)), ("POST", admin_only(201))],
        ),
        route(
            "provisioning key",
            format!("/api/v1/provisioning-keys/{}", fixture.spare_provisioning_key_id),
            vec![("DELETE", admin_only(200))],
        ),
        route("registries", "/api/v1/registries".into(), vec![("GET", admin_only(200))]),
        route(
            "registry credentials",
            format!("/api/v1/registries/{REGISTRY_HOST}/credentials"),
            vec![("PUT", admin_only(200)), ("DELETE", admin_only(200))],
        ),
        // Fleets, releases, rollouts and events: the operator's alone.
        route("fleets", "/api/v1/fleets".into(), vec![("GET", admin_only(200)), ("POST", admin_only(201))]),
        route(
            "fleet",
            format!("/api/v1/fleets/{SPARE_FLEET}"),
            vec![("GET", admin_only(200)), ("PUT", admin_only(200)), ("DELETE", admin_only(200))],
        ),
        // Before any rollout of the fleet: a running one would make it a 409.
        route("fleet release", format!("/api/v1/fleets/{FLEET}/release"), vec![("PUT", admin_only(200))]),
        route(
            "releases",
            format!("/api/v1/fleets/{FLEET}/releases"),
            vec![("GET", admin_only(200)), ("POST", admin_only(201))],
        ),
        route(
            "release",
            format!("/api/v1/fleets/{FLEET}/releases/{}", fixture.release),
            vec![("GET", admin_only(200))],
        ),
        // The fleet has a running rollout: a new one is asked as a dry run (200, stores nothing).
        route(
            "rollouts",
            format!("/api/v1/fleets/{ROLLOUT_FLEET}/rollouts"),
            vec![("GET", admin_only(200)), ("POST", admin_only(200))],
        ),
        route("rollout", rollout(""), vec![("GET", admin_only(200))]),
        // One route, each command once, in an order that takes each: running → paused →
        // running → its second wave → aborted.
        route("rollout pause", rollout("/pause"), vec![("POST", admin_only(200))]),
        route("rollout resume", rollout("/resume"), vec![("POST", admin_only(200))]),
        route("rollout promote", rollout("/promote"), vec![("POST", admin_only(200))]),
        route("rollout abort", rollout("/abort"), vec![("POST", admin_only(200))]),
        route("labels", device("/labels"), vec![("PUT", admin_only(200))]),
        route("pin", format!("/api/v1/devices/{OTHER_DEVICE}/pin"), vec![("DELETE", admin_only(200))]),
        // Last of the device's: it leaves the fleet it joins here.
        route("device fleet", device("/fleet"), vec![("PUT", admin_only(200)), ("DELETE", admin_only(200))]),
        route("events", "/api/v1/events".into(), vec![("GET", admin_only(200))]),
        // The dashboard's files are for anyone; what they show comes through the API.
        route("dashboard", "/".into(), vec![("GET", OPEN)]),
        route("status overview", "/api/v1/status/overview".into(), vec![("GET", admin_only(200))]),
        route("status devices", "/api/v1/status/devices".into(), vec![("GET", admin_only(200))]),
        route("status device", device_status(DEVICE), vec![("GET", admin_only(200))]),
        // Last: its DELETE signs the matrix's own session out. A Bearer token is no session
        // (GET 401); a sign-in without a token is a 400; signing out is always possible.
        route("session", "/api/v1/session".into(), vec![("GET", [401; 6]), ("POST", [400; 6]), ("DELETE", [200; 6])]),
    ]
}

fn device_status(uuid: &str) -> String {
    format!("/api/v1/status/devices/{uuid}")
}

/// How the operator (the `Admin` column) presents itself.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AdminAs {
    /// `Authorization: Bearer <admin token>`.
    Token,
    /// The dashboard's session cookie, from a page of this server (its `Origin`).
    Session,
    /// The session cookie, from another site's page.
    SessionFromAnotherOrigin,
    /// The cookie of a session that has expired.
    ExpiredSession,
}

/// The routes that never read a session cookie: their own credentials, or none (`/metrics`
/// is for Prometheus, which has a token of its own).
const COOKIE_BLIND: [&str; 5] = ["health", "dashboard", "prometheus scrape", "key exchange", "registry webhook"];

/// What the `Admin` column is intended to get when it presents itself as `admin_as`:
/// `row` is the table's row for the route and method.
fn admin_intended(label: &str, method: &str, row: [u16; 6], admin_as: AdminAs) -> u16 {
    let (as_token, anonymous) = (row[4], row[0]);
    if as_token == 405 {
        return 405;
    }
    match admin_as {
        AdminAs::Token => as_token,
        AdminAs::ExpiredSession => anonymous,
        _ if COOKIE_BLIND.contains(&label) => anonymous,
        // Signed in: the session is described.
        AdminAs::Session if (label, method) == ("session", "GET") => 200,
        AdminAs::Session => as_token,
        AdminAs::SessionFromAnotherOrigin if (label, method) == ("session", "GET") => 200,
        AdminAs::SessionFromAnotherOrigin if method == "GET" => as_token,
        AdminAs::SessionFromAnotherOrigin => 403,
    }
}

/// The body a route is asked with: what its intended caller would send.
fn body_for(label: &str, method: &str, fixture: &Fixture) -> Option<Value> {
    let state = json!({"apps": {}, "config": {"RESIN_SUPERVISOR_POLL_INTERVAL": "60000"}});
    match (label, method) {
        ("device report", _) => Some(json!({DEVICE: {"apps": {}, "config": {}, "os_version": "matrix"}})),
        // A fresh uuid each time, so that each caller the route takes registers anew.
        ("device register", _) => Some(json!({"uuid": format!("matrix-new-{}", random_hex(6)),
                                               "deviceApiKey": random_hex(20)})),
        ("key exchange", _) => Some(json!({"uuid": DEVICE, "deviceApiKey": "matrix-not-the-key"})),
        // One NDJSON line.
        ("device logs", _) => Some(json!({"message": "matrix", "level": "info"})),
        ("target state", "POST" | "PUT") => Some(state),
        ("target rollback", _) => Some(json!({"version": 1})),
        ("update policy", "PUT") => Some(json!({"autoUpdate": false})),
        ("registry webhook", _) => Some(json!({"events": []})),
        ("provisioning keys", "POST") => Some(json!({"description": "matrix"})),
        ("registry credentials", "PUT") => Some(json!({"username": "matrix", "password": "secret"})),
        ("fleets", "POST") => Some(json!({"name": "matrix-new"})),
        ("fleet", "PUT") => Some(json!({"description": "matrix"})),
        ("fleet release", _) => Some(json!({"release": fixture.release})),
        ("releases", "POST") => Some(release_body()),
        // A dry run is refused what the real request would be: with the running rollout, one
        // that would supersede it.
        ("rollouts", "POST") => Some(json!({"release": fixture.rollout_release, "waves": [{"percent": 100}],
                                           "supersede": true, "dryRun": true})),
        // The commands take no body, except abort's optional one.
        ("rollout pause" | "rollout resume" | "rollout promote", _) => None,
        ("rollout abort", _) => Some(json!({"rollback": false})),
        ("labels", _) => Some(json!({"ring": "canary", "site": "berlin"})),
        ("device fleet", "PUT") => Some(json!({"fleet": FLEET})),
        (_, "POST" | "PUT" | "PATCH") => Some(json!({})),
        _ => None,
    }
}

/// The callers' credentials on one server.
struct Credentials {
    own_device_key: String,
    other_device_key: String,
    provisioning_key: String,
    admin_token: String,
    webhook_token: String,
    /// The operator's session cookie (`pinion_session=…`), when it signs in.
    admin_cookie: Option<String>,
}

impl Credentials {
    fn bearer(&self, caller: Caller, admin_as: AdminAs) -> Option<&str> {
        match caller {
            Caller::Anonymous => None,
            Caller::OwnDevice => Some(&self.own_device_key),
            Caller::OtherDevice => Some(&self.other_device_key),
            Caller::Provisioning => Some(&self.provisioning_key),
            Caller::Admin if admin_as == AdminAs::Token => Some(&self.admin_token),
            Caller::Admin => None,
            Caller::Webhook => Some(&self.webhook_token),
        }
    }

    /// The cookie and `Origin` the caller sends, if it is the signed-in operator.
    fn browser_headers(&self, server: &Server, caller: Caller, admin_as: AdminAs) -> Vec<(&'static str, String)> {
        let (Caller::Admin, Some(cookie)) = (caller, &self.admin_cookie) else { return Vec::new() };
        let origin = match admin_as {
            AdminAs::SessionFromAnotherOrigin => "http://evil.example".to_string(),
            _ => server.url(),
        };
        vec![("Cookie", cookie.clone()), ("Origin", origin)]
    }
}

/// Signs in to the dashboard: the `pinion_session=…` pair of the answer's `Set-Cookie`.
fn sign_in(server: &Server) -> String {
    let body = json!({"token": server.admin_token()}).to_string();
    let request = RawRequest::new("POST", "/api/v1/session").header("Content-Type", "application/json").body(body);
    let reply = send(server, request);
    assert_eq!(reply.status, 200, "signing in: {}", reply.text());
    let set_cookie = reply.header("set-cookie").expect("a Set-Cookie header").to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{set_cookie} lacks {attribute}");
    }
    set_cookie.split(';').next().unwrap().to_string()
}

/// The fleets the table asks of: `FLEET` with `DEVICE`, `OTHER_DEVICE` and a release;
/// `ROLLOUT_FLEET` with its own two devices, a release and a rollout of it running (its
/// first wave started); `SPARE_FLEET`, empty.
fn fleets_fixture(server: &Server, credentials: &Credentials, spare_provisioning_key_id: String) -> Fixture {
    let admin = |method: &str, path: &str, body: Value, status: u16| {
        let reply = server.request(method, path, Some(&body), Some(server.admin_token()));
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        reply.json()
    };
    for name in [FLEET, ROLLOUT_FLEET, SPARE_FLEET] {
        admin("POST", "/api/v1/fleets", json!({"name": name}), 201);
    }
    for uuid in ROLLOUT_DEVICES {
        register(server, &credentials.provisioning_key, uuid, &random_hex(20));
    }
    for (uuid, fleet) in [
        (DEVICE, FLEET),
        (OTHER_DEVICE, FLEET),
        (ROLLOUT_DEVICES[0], ROLLOUT_FLEET),
        (ROLLOUT_DEVICES[1], ROLLOUT_FLEET),
    ] {
        admin("PUT", &format!("/api/v1/devices/{uuid}/fleet"), json!({"fleet": fleet}), 200);
    }
    let release = admin("POST", &format!("/api/v1/fleets/{FLEET}/releases"), release_body(), 201)["id"].as_u64();
    let rollout_release =
        admin("POST", &format!("/api/v1/fleets/{ROLLOUT_FLEET}/releases"), release_body(), 201)["id"].as_u64();
    let rollout_release = rollout_release.expect("a release id");
    let plan = json!({"release": rollout_release, "waves": [{"devices": 1}, {"percent": 100}], "bakeTime": "1h"});
    let rollout = admin("POST", &format!("/api/v1/fleets/{ROLLOUT_FLEET}/rollouts"), plan, 201);
    assert_eq!(rollout["state"], "running", "{rollout}");
    Fixture {
        spare_provisioning_key_id,
        release: release.expect("a release id"),
        rollout_release,
        rollout: rollout["id"].as_u64().expect("a rollout id"),
    }
}

fn register(server: &Server, provisioning_key: &str, uuid: &str, device_key: &str) {
    let body = json!({"uuid": uuid, "deviceName": uuid, "deviceType": "test", "deviceApiKey": device_key});
    let reply = server.request("POST", "/api/v1/device/register", Some(&body), Some(provisioning_key));
    assert_eq!(reply.status, 200, "registering {uuid}: {}", reply.body);
}

/// `None` when `reply` is a JSON error `{"error": code, "message": "<non-empty>"}` and
/// nothing else; what is wrong with it otherwise.
fn error_shape_problem(reply: &ApiReply, code: &str) -> Option<String> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&reply.body) else {
        return Some(format!("body is not a JSON object: {:?}", reply.body));
    };
    let message_ok = object.get("message").and_then(Value::as_str).is_some_and(|m| !m.trim().is_empty());
    let keys_ok = object.len() == 2;
    (object.get("error").and_then(Value::as_str) != Some(code) || !message_ok || !keys_ok)
        .then(|| format!("expected {{\"error\": {code:?}, \"message\": …}}, got {}", reply.body))
}

fn error_code(status: u16) -> Option<&'static str> {
    match status {
        401 => Some("unauthorized"),
        403 => Some("forbidden"),
        405 => Some("method_not_allowed"),
        _ => None,
    }
}

#[test]
fn every_route_method_and_caller_gets_the_intended_status() {
    ask_the_matrix(AdminAs::Token);
}

#[test]
fn a_session_cookie_is_the_admin_on_every_route_of_the_admin() {
    ask_the_matrix(AdminAs::Session);
}

#[test]
fn a_session_cookie_from_another_origin_changes_nothing() {
    ask_the_matrix(AdminAs::SessionFromAnotherOrigin);
}

#[test]
fn an_expired_session_cookie_is_nobody() {
    ask_the_matrix(AdminAs::ExpiredSession);
}

/// Asks every route × method × caller of a fresh server, the operator presenting itself
/// as `admin_as`, and compares each answer with the table.
fn ask_the_matrix(admin_as: AdminAs) {
    let webhook_token = random_hex(16);
    // Half the cells fail authentication on purpose: the limits must not get in the way.
    let server = Server::start(&[
        "--webhook-token",
        &webhook_token,
        "--auth-failures-per-minute",
        "1000000",
        "--registrations-per-minute",
        "1000000",
        "--metrics-token",
        &random_hex(16),
        "--session-lifetime",
        if admin_as == AdminAs::ExpiredSession { "1s" } else { "1h" },
    ]);
    let provisioning_key = server.provisioning_key();
    let credentials = Credentials {
        own_device_key: random_hex(20),
        other_device_key: random_hex(20),
        provisioning_key,
        admin_token: server.admin_token().to_string(),
        webhook_token,
        admin_cookie: None,
    };
    register(&server, &credentials.provisioning_key, DEVICE, &credentials.own_device_key);
    register(&server, &credentials.provisioning_key, OTHER_DEVICE, &credentials.other_device_key);
    // Version 1 of the target, so that history and rollback have something to show.
    let state = json!({"apps": {}, "config": {}});
    assert_eq!(server.set_target_state(DEVICE, &state).status, 200);
    register(&server, &credentials.provisioning_key, SPARE_DEVICE, &random_hex(20));
    let spare = server.request("POST", "/api/v1/provisioning-keys", Some(&json!({})), Some(server.admin_token()));
    assert_eq!(spare.status, 201, "{}", spare.body);
    let spare_id = spare.json()["id"].as_str().expect("a provisioning key id").to_string();
    let fixture = fleets_fixture(&server, &credentials, spare_id);
    let credentials =
        Credentials { admin_cookie: (admin_as != AdminAs::Token).then(|| sign_in(&server)), ..credentials };
    if admin_as == AdminAs::ExpiredSession {
        let cookie = credentials.admin_cookie.clone().unwrap();
        let expired = wait_for(Duration::from_secs(30), || {
            let reply = server.request_with("GET", "/api/v1/session", None, None, &[("Cookie", &cookie)]);
            (reply.status == 401).then_some(reply)
        });
        let expired = expired.expect("the one-second session did not expire within 30 s");
        assert!(expired.body.contains("expired"), "{}", expired.body);
    }

    let table = intended(&fixture);
    // The rollout commands' route has a row per command.
    const ROUTES: usize = 45;
    assert_eq!(table.len(), ROUTES, "one row per route of api::route()");
    let mut wrong = Vec::new();
    let mut cells = 0;
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for route in &table {
        for method in METHODS {
            let row = route.methods.iter().find(|(m, _)| *m == method).map(|(_, row)| *row).unwrap_or([405; 6]);
            for (caller, intended_status) in CALLERS.into_iter().zip(row) {
                let intended_status = match caller {
                    Caller::Admin => admin_intended(route.label, method, row, admin_as),
                    _ => intended_status,
                };
                let body = body_for(route.label, method, &fixture);
                let browser = credentials.browser_headers(&server, caller, admin_as);
                let browser: Vec<(&str, &str)> = browser.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let bearer = credentials.bearer(caller, admin_as);
                let reply = server.request_with(method, &route.path, body.as_ref(), bearer, &browser);
                cells += 1;
                *by_status.entry(reply.status).or_default() += 1;
                let cell = format!("{} {method} {} as {caller:?} ({admin_as:?})", route.label, route.path);
                if reply.status != intended_status {
                    wrong.push(format!("{cell}: {} instead of {intended_status}: {}", reply.status, reply.body));
                } else if let Some(problem) =
                    error_code(reply.status).and_then(|code| error_shape_problem(&reply, code))
                {
                    wrong.push(format!("{cell}: {problem}"));
                }
            }
        }
    }
    eprintln!(
        "auth matrix ({admin_as:?}): {cells} cells ({ROUTES} routes × {} methods × {} callers), statuses {by_status:?}",
        6, 6
    );
    assert_eq!(cells, ROUTES * METHODS.len() * CALLERS.len());
    assert!(wrong.is_empty(), "{} of {cells} cells differ from the table:\n{}", wrong.len(), wrong.join("\n"));
    // The X-Device-API-Key header is the same credential as a Bearer device key.
    let poll = format!("/api/v1/device/{DEVICE}/state");
    let by_header = server.request_with("GET", &poll, None, None, &[("X-Device-API-Key", &credentials.own_device_key)]);
    assert_eq!(by_header.status, 200, "{}", by_header.body);
    let other = server.request_with("GET", &poll, None, None, &[("X-Device-API-Key", &credentials.other_device_key)]);
    assert_eq!(other.status, 403, "{}", other.body);
}

fn address(server: &Server) -> String {
    server.url().trim_start_matches("http://").to_string()
}

fn send(server: &Server, request: RawRequest) -> HttpReply {
    exchange(&address(server), &request).unwrap_or_else(|e| panic!("{e}\nserver output:\n{}", server.log()))
}

/// The answer is the 429 of a limit: `Retry-After` in whole seconds within a minute,
/// and the JSON error body.
fn assert_limited(reply: &HttpReply, what: &str) {
    assert_eq!(reply.status, 429, "{what}: {}", reply.text());
    let retry_after: u64 = reply
        .header("Retry-After")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no whole-second Retry-After in {:?}", reply.headers));
    assert!((1..=60).contains(&retry_after), "{what}: Retry-After {retry_after}");
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", reply.text()));
    assert_eq!(body["error"], "too_many_attempts", "{what}: {body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("127.0.0.1")), "{what}: {body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{what}: {body}");
}

#[test]
fn wrong_tokens_from_one_address_are_limited_and_then_the_right_one_is_refused_too() {
    const LIMIT: usize = 2;
    let server = Server::start(&["--auth-failures-per-minute", &LIMIT.to_string()]);
    let provisioning_key = server.provisioning_key();
    let device_key = random_hex(20);
    register(&server, &provisioning_key, "limited-dev", &device_key);
    // A second device whose key has never worked from this address.
    let unused_key = random_hex(20);
    register(&server, &provisioning_key, "unused-dev", &unused_key);
    let poll = RawRequest::new("GET", "/api/v1/device/limited-dev/state").header("X-Device-API-Key", &device_key);
    // Successful polls never count, however many.
    for i in 0..50 {
        assert_eq!(send(&server, poll.clone()).status, 200, "poll {i}");
    }
    let devices = RawRequest::new("GET", "/api/v1/devices");
    for i in 0..LIMIT {
        let reply = send(&server, devices.clone().bearer(&format!("wrong-{i}")));
        assert_eq!(reply.status, 401, "wrong token {i} is checked: {}", reply.text());
    }
    assert_limited(&send(&server, devices.clone().bearer("wrong-last")), "wrong token over the limit");
    // No oracle: while limited, credentials are not looked at, right or wrong...
    let unused = RawRequest::new("GET", "/api/v1/device/unused-dev/state").header("X-Device-API-Key", &unused_key);
    assert_limited(&send(&server, unused), "a device key never used from the limited address");
    // ...except one that worked from this address lately: a guesser sharing a device's
    // address (a NAT, a proxy) does not lock it out.
    assert_eq!(send(&server, poll.clone()).status, 200, "the device's poll keeps working");
    let admin = send(&server, devices.clone().bearer(server.admin_token()));
    assert_eq!(admin.status, 200, "the admin token made the provisioning key from here: {}", admin.text());
    let health = send(&server, RawRequest::new("GET", "/api/v1/health"));
    assert_eq!(health.status, 200, "/health is never limited");

    // The same from a server with the limit off: every wrong token is a 401, never a 429.
    let unlimited = Server::start(&["--auth-failures-per-minute", "0"]);
    for i in 0..50 {
        let reply = send(&unlimited, devices.clone().bearer(&format!("wrong-{i}")));
        assert_eq!(reply.status, 401, "wrong token {i} with the limit off: {}", reply.text());
    }
    assert_eq!(send(&unlimited, devices.clone().bearer(unlimited.admin_token())).status, 200);
}

#[test]
fn a_signed_in_dashboard_is_not_locked_out_and_refused_cookies_never_count() {
    const LIMIT: usize = 3;
    let server = Server::start(&["--auth-failures-per-minute", &LIMIT.to_string()]);
    let cookie = sign_in(&server);
    let origin = server.url();
    let overview = RawRequest::new("GET", "/api/v1/status/overview");
    let with_cookie = |request: RawRequest, cookie: &str| request.header("Cookie", cookie).header("Origin", &origin);
    assert_eq!(send(&server, with_cookie(overview.clone(), &cookie)).status, 200);
    // Refused cookies and the signed-out page's own question are no guesses: none counts.
    let fleet = RawRequest::new("POST", "/api/v1/fleets").body(json!({"name": "csrf"}).to_string());
    for i in 0..3 * LIMIT {
        let unknown = send(&server, with_cookie(overview.clone(), &format!("pinion_session={}", random_hex(32))));
        assert_eq!(unknown.status, 401, "unknown cookie {i}: {}", unknown.text());
        let foreign = send(&server, fleet.clone().header("Cookie", &cookie).header("Origin", "http://evil.example"));
        assert_eq!(foreign.status, 403, "another site's page, {i}: {}", foreign.text());
        let signed_out = send(&server, RawRequest::new("GET", "/api/v1/session"));
        assert_eq!(signed_out.status, 401, "the sign-in page asking, {i}");
    }
    // A guesser at the same address: limited after LIMIT wrong tokens (so nothing before
    // counted), and the signed-in dashboard keeps working.
    let devices = RawRequest::new("GET", "/api/v1/devices");
    for i in 0..LIMIT {
        assert_eq!(send(&server, devices.clone().bearer(&format!("wrong-{i}"))).status, 401, "guess {i}");
    }
    assert_limited(&send(&server, devices.clone().bearer("wrong-last")), "the guesser over the limit");
    assert_eq!(send(&server, with_cookie(overview.clone(), &cookie)).status, 200, "the dashboard keeps working");
    // A wrong sign-in is a guess like any wrong token: refused unseen while limited.
    let wrong_sign_in = RawRequest::new("POST", "/api/v1/session").body(json!({"token": "wrong"}).to_string());
    assert_limited(&send(&server, wrong_sign_in), "a sign-in while the address is limited");
}

#[test]
fn registrations_are_limited_per_address_and_other_routes_are_not() {
    const LIMIT: usize = 2;
    let server = Server::start(&["--registrations-per-minute", &LIMIT.to_string()]);
    let provisioning_key = server.provisioning_key();
    let registration = |n: usize| json!({"uuid": format!("reg-limit-{n}"), "deviceApiKey": random_hex(20)}).to_string();
    let register = |n: usize| {
        RawRequest::new("POST", "/api/v1/device/register")
            .bearer(&provisioning_key)
            .header("Content-Type", "application/json")
            .body(registration(n))
    };
    for n in 0..LIMIT {
        let reply = send(&server, register(n));
        assert_eq!(reply.status, 200, "registration {n}: {}", reply.text());
    }
    assert_limited(&send(&server, register(LIMIT)), "a registration over the limit");
    let devices = server.request("GET", "/api/v1/devices", None, Some(server.admin_token()));
    assert_eq!(devices.status, 200, "other routes do not count registrations: {}", devices.body);
    let registered = devices.json()["devices"].as_array().map(Vec::len);
    assert_eq!(registered, Some(LIMIT), "the refused registration stored nothing: {}", devices.body);
}
