//! The wire contract, route by route, through `api::handle` with an in-memory SQLite
//! store and a table of digests standing in for the registry (the real registry is
//! exercised end to end in `tests/`).

use pinion_model::Reference;
use pinion_server::api::{handle, Api, Request, Response};
use pinion_server::keys::hash_secret;
use pinion_server::pinning::{Answers, Pin, ResolveDigests};
use pinion_server::store::SqlStore;
use pinion_server::Error;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ADMIN: &str = "admin-token-for-tests-0123456789";
const DIGEST_V1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const DIGEST_V2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// Stand-in registry: `nginx:latest` moves when `latest` is swapped; others are unknown.
struct Digests(Arc<Mutex<&'static str>>);

impl ResolveDigests for Digests {
    fn resolve_all(&self, refs: &[Reference], _: Duration) -> Answers {
        let latest = *self.0.lock().unwrap();
        refs.iter()
            .map(|r| {
                let answer = if r.canonical() == "docker.io/library/nginx:latest" {
                    Ok(Pin {
                        digest: latest.into(),
                        media_type: "application/vnd.oci.image.index.v1+json".into(),
                        stale: None,
                    })
                } else {
                    Err(Error::RegistryUnreachable { registry: r.domain().into(), reason: "connection refused".into() })
                };
                (r.clone(), answer)
            })
            .collect()
    }
}

struct Fixture {
    api: Api,
    /// What `nginx:latest` resolves to; tests move the tag by writing here.
    latest: Arc<Mutex<&'static str>>,
}

impl Fixture {
    fn new() -> Fixture {
        let latest = Arc::new(Mutex::new(DIGEST_V1));
        Fixture {
            latest: Arc::clone(&latest),
            api: Api {
                store: Arc::new(SqlStore::in_memory().unwrap()),
                resolver: Arc::new(Digests(latest)),
                webhook_token_hash: None,
                refresh_requests: None,
                admin_token_hash: hash_secret(ADMIN),
                resolve_deadline: Duration::from_secs(1),
                default_policy: pinion_server::policy::UpdatePolicy::default(),
                poll_cache: Default::default(),
                log_retention: Default::default(),
                trusted_proxies: Vec::new(),
                presence: Default::default(),
                rollout_lock: Default::default(),
                metrics: Default::default(),
                metrics_access: Default::default(),
                sessions: Default::default(),
                verdicts: Default::default(),
            },
        }
    }

    fn call(&self, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> Response {
        self.call_with(method, path, auth.map(|a| ("authorization", format!("Bearer {a}"))), body)
    }

    fn call_with(&self, method: &str, path: &str, header: Option<(&str, String)>, body: Option<Value>) -> Response {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query.to_string())),
            None => (path, None),
        };
        let request = Request {
            method: method.into(),
            path: path.into(),
            query,
            headers: header.map(|(n, v)| vec![(n.to_string(), v)]).unwrap_or_default(),
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            ..Default::default()
        };
        handle(&self.api, &request)
    }

    fn set_target(&self, uuid: &str, body: Value) -> Value {
        let response = self.call("POST", &format!("/api/v1/devices/{uuid}/target-state"), Some(ADMIN), Some(body));
        assert_eq!(response.status, 200, "{}", text(&response));
        json_of(&response)
    }

    /// A provisioning key (a registration token for a device set up before), then a
    /// registered device with `device_key`.
    fn register(&self, uuid: &str, device_key: &str) {
        // A device the operator prepared is claimed with a registration token for it.
        let prepared = self.call("GET", &format!("/api/v1/devices/{uuid}"), Some(ADMIN), None).status == 200;
        let issue = match prepared {
            true => format!("/api/v1/devices/{uuid}/registration-token"),
            false => "/api/v1/provisioning-keys".to_string(),
        };
        let key = json_of(&self.call("POST", &issue, Some(ADMIN), None))["key"].as_str().unwrap().to_string();
        let body =
            json!({"uuid": uuid, "deviceName": "gw", "deviceType": "raspberrypi4-64", "deviceApiKey": device_key});
        let response = self.call("POST", "/api/v1/device/register", Some(&key), Some(body));
        assert_eq!(response.status, 200, "{}", text(&response));
    }
}

fn text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

fn json_of(response: &Response) -> Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(response)))
}

fn guide_target(image: &str) -> Value {
    json!({"apps": {"1001": {"appId": 1001, "appName": "web", "services": [
        {"serviceId": 1, "serviceName": "nginx", "imageName": image,
         "config": {"image": image, "ports": ["80:80"]}, "dashboardNote": "keep me"}]}},
        "config": {"POLL": "60"}})
}

const KEY_A: &str = "device-key-a-0123456789abcdef0123456789";
const KEY_B: &str = "device-key-b-0123456789abcdef0123456789";

#[test]
fn setting_a_target_pins_tags_and_bumps_versions() {
    let f = Fixture::new();
    let first = f.set_target("test-device-123", guide_target("nginx:latest"));
    assert_eq!(first["version"], 1);
    assert_eq!(first["status"], "ok");
    let service = &first["apps"]["1001"]["services"][0];
    assert_eq!(service["imageName"], format!("nginx@{DIGEST_V1}"));
    assert_eq!(service["config"]["image"], format!("nginx@{DIGEST_V1}"));
    assert_eq!(service["imageResolution"]["status"], "resolved");
    assert_eq!(service["dashboardNote"], "keep me");
    assert_eq!(first["resolution"]["resolved"], 1);

    *f.latest.lock().unwrap() = DIGEST_V2;
    let second = f.set_target("test-device-123", guide_target("nginx:latest"));
    assert_eq!(second["version"], 2);
    assert_eq!(second["apps"]["1001"]["services"][0]["imageName"], format!("nginx@{DIGEST_V2}"));

    let read = json_of(&f.call("GET", "/api/v1/devices/test-device-123/target-state", Some(ADMIN), None));
    assert_eq!(read["version"], 2);
    assert_eq!(read["config"], json!({"POLL": "60"}));
    assert_eq!(read["apps"]["1001"]["services"][0]["imageName"], format!("nginx@{DIGEST_V2}"));
}

#[test]
fn apps_as_an_array_stay_an_array_and_unknown_fields_are_kept() {
    let f = Fixture::new();
    let body = json!({"apps": [{"appId": 7, "appName": "a", "color": "red",
        "services": [{"serviceName": "s", "imageName": "nginx:latest"}]}], "config": {}, "fleet": "eu"});
    let answer = f.set_target("dev-1", body);
    assert!(answer["apps"].is_array());
    assert_eq!(answer["apps"][0]["color"], "red");
    assert_eq!(answer["fleet"], "eu");
    assert_eq!(answer["apps"][0]["services"][0]["imageName"], format!("nginx@{DIGEST_V1}"));
}

#[test]
fn an_unreachable_registry_keeps_the_tag_as_fallback() {
    let f = Fixture::new();
    let answer = f.set_target("dev-1", guide_target("registry.example:5000/app:v1"));
    let service = &answer["apps"]["1001"]["services"][0];
    assert_eq!(service["imageName"], "registry.example:5000/app:v1");
    assert_eq!(service["imageResolution"]["status"], "fallback");
    assert!(service["imageResolution"]["error"].as_str().unwrap().contains("connection refused"));
    assert_eq!(answer["resolution"]["fallback"], 1);
    assert_eq!(answer["resolution"]["warnings"].as_array().unwrap().len(), 1);
}

#[test]
fn an_invalid_reference_is_a_400_naming_app_and_service_and_nothing_is_stored() {
    let f = Fixture::new();
    f.set_target("dev-1", guide_target("nginx:latest"));
    for bad in ["Nginx:latest", "nginx:bad tag", "nginx\r\nX-Injected: 1", "nginx\0", &"a".repeat(300)] {
        let response = f.call("PUT", "/api/v1/devices/dev-1/target-state", Some(ADMIN), Some(guide_target(bad)));
        assert_eq!(response.status, 400, "{bad:?}: {}", text(&response));
        let error = json_of(&response);
        assert_eq!(error["error"], "invalid_image");
        assert!(error["message"].as_str().unwrap().starts_with("app web, service nginx:"), "{error}");
    }
    let read = json_of(&f.call("GET", "/api/v1/devices/dev-1/target-state", Some(ADMIN), None));
    assert_eq!(read["version"], 1);
}

#[test]
fn the_device_poll_answers_304_for_its_etag_quoted_or_not() {
    let f = Fixture::new();
    f.register("dev-1", KEY_A);
    let poll = |inm: Option<&str>| {
        let mut request = Request {
            method: "GET".into(),
            path: "/api/v1/device/dev-1/state".into(),
            headers: vec![("x-device-api-key".into(), KEY_A.into())],
            ..Default::default()
        };
        if let Some(inm) = inm {
            request.headers.push(("if-none-match".into(), inm.into()));
        }
        handle(&f.api, &request)
    };
    let empty = poll(None);
    assert_eq!(empty.status, 200);
    assert_eq!(json_of(&empty), json!({"dev-1": {"apps": {}, "config": {}}}));

    f.set_target("dev-1", guide_target("nginx:latest"));
    let full = poll(None);
    assert_eq!(full.status, 200);
    let etag = full.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "strong etag: {etag}");
    assert_ne!(Some(etag.as_str()), empty.header("etag"));
    let body = json_of(&full);
    assert_eq!(body["dev-1"]["apps"]["1001"]["services"][0]["imageName"], format!("nginx@{DIGEST_V1}"));

    let quoted = poll(Some(&etag));
    assert_eq!((quoted.status, quoted.body.len()), (304, 0));
    assert_eq!(poll(Some(etag.trim_matches('"'))).status, 304);
    assert_eq!(poll(Some("\"something-else\"")).status, 200);

    *f.latest.lock().unwrap() = DIGEST_V2;
    f.set_target("dev-1", guide_target("nginx:latest"));
    let moved = poll(Some(&etag));
    assert_eq!(moved.status, 200, "a moved tag is a new body with a new etag");
    assert_ne!(moved.header("etag"), Some(etag.as_str()));
}

#[test]
fn auth_matrix() {
    let f = Fixture::new();
    f.register("dev-a", KEY_A);
    f.register("dev-b", KEY_B);
    let bearer = |t: &str| Some(("authorization", format!("Bearer {t}")));
    let device_header = |k: &str| Some(("x-device-api-key", k.to_string()));
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, String)>, u16);
    let cases: Vec<Case> = vec![
        ("GET", "/api/v1/device/dev-a/state", None, 401),
        ("GET", "/api/v1/device/dev-a/state", device_header("wrong-key"), 401),
        ("GET", "/api/v1/device/dev-a/state", device_header(KEY_A), 200),
        ("GET", "/api/v1/device/dev-a/state", bearer(KEY_A), 200),
        ("GET", "/api/v1/device/dev-a/state", device_header(KEY_B), 403),
        ("GET", "/api/v1/device/dev-a/state", bearer(ADMIN), 403),
        ("GET", "/api/v1/devices", None, 401),
        ("GET", "/api/v1/devices", bearer("not-a-token"), 401),
        ("GET", "/api/v1/devices", device_header(KEY_A), 403),
        ("GET", "/api/v1/devices", bearer(KEY_A), 403),
        ("GET", "/api/v1/devices", bearer(ADMIN), 200),
        ("GET", "/api/v1/devices/dev-a/target-state", bearer(KEY_A), 403),
        ("GET", "/api/v1/devices/dev-a/current-state", bearer(KEY_A), 403),
        ("GET", "/api/v1/provisioning-keys", bearer(KEY_A), 403),
        ("GET", "/api/v1/health", None, 200),
    ];
    for (method, path, header, expected) in cases {
        let response = f.call_with(method, path, header.clone(), None);
        assert_eq!(response.status, expected, "{method} {path} with {header:?}: {}", text(&response));
        if expected >= 400 {
            let error = json_of(&response);
            assert!(error["error"].is_string() && error["message"].is_string(), "{error}");
        }
    }
    let report = json!({"dev-a": {"apps": {}, "config": {}}});
    assert_eq!(f.call("PATCH", "/api/v1/device/state", Some(KEY_B), Some(report.clone())).status, 403);
    assert_eq!(f.call("PATCH", "/api/v1/device/state", None, Some(report.clone())).status, 401);
    assert_eq!(f.call("PATCH", "/api/v1/device/state", Some(KEY_A), Some(report)).status, 200);
    let target = guide_target("nginx:latest");
    assert_eq!(f.call("POST", "/api/v1/devices/dev-a/target-state", Some(KEY_A), Some(target)).status, 403);
}

#[test]
fn registration_needs_a_provisioning_key_and_happens_once() {
    let f = Fixture::new();
    let body = json!({"uuid": "dev-1", "deviceApiKey": KEY_A});
    assert_eq!(f.call("POST", "/api/v1/device/register", None, Some(body.clone())).status, 401);
    assert_eq!(f.call("POST", "/api/v1/device/register", Some("guess"), Some(body.clone())).status, 401);
    f.register("dev-1", KEY_A);
    let created =
        json_of(&f.call("POST", "/api/v1/provisioning-keys", Some(ADMIN), Some(json!({"description": "line 2"}))));
    let key = created["key"].as_str().unwrap();
    assert_eq!(key.len(), 64);
    let again = f.call("POST", "/api/v1/device/register", Some(key), Some(body.clone()));
    assert_eq!(again.status, 200, "the same registration again: {}", text(&again));
    assert_eq!(f.call("GET", "/api/v1/device/dev-1/state", Some(KEY_A), None).status, 200);
    let other_key = json!({"uuid": "dev-1", "deviceApiKey": KEY_B});
    let taken = f.call("POST", "/api/v1/device/register", Some(key), Some(other_key));
    assert_eq!(taken.status, 409, "another key once the device polled: {}", text(&taken));
    assert_eq!(f.call("POST", "/api/v1/device/register", Some(key), Some(body)).status, 200, "the same key still");
    let short = json!({"uuid": "dev-2", "deviceApiKey": "short"});
    assert_eq!(f.call("POST", "/api/v1/device/register", Some(key), Some(short)).status, 400);

    let listed = json_of(&f.call("GET", "/api/v1/provisioning-keys", Some(ADMIN), None));
    assert!(!listed.to_string().contains(key), "a secret is never listed");
    let id = created["id"].as_str().unwrap();
    assert_eq!(f.call("DELETE", &format!("/api/v1/provisioning-keys/{id}"), Some(ADMIN), None).status, 200);
    let revoked = json!({"uuid": "dev-3", "deviceApiKey": KEY_B});
    assert_eq!(f.call("POST", "/api/v1/device/register", Some(key), Some(revoked)).status, 401);
}

#[test]
fn a_target_prepared_before_registration_is_served_after_it() {
    let f = Fixture::new();
    f.set_target("dev-1", guide_target("nginx:latest"));
    f.register("dev-1", KEY_A);
    let poll = f.call("GET", "/api/v1/device/dev-1/state", Some(KEY_A), None);
    assert_eq!(json_of(&poll)["dev-1"]["apps"]["1001"]["services"][0]["imageName"], format!("nginx@{DIGEST_V1}"));
    let device = json_of(&f.call("GET", "/api/v1/devices/dev-1", Some(ADMIN), None));
    assert_eq!((device["registered"].clone(), device["targetVersion"].clone()), (json!(true), json!(1)));
}

#[test]
fn reports_are_kept_as_sent() {
    let f = Fixture::new();
    f.register("dev-1", KEY_A);
    let report = json!({"dev-1": {"apps": {"1001": {"services": {"1": {"status": "running"}}}}, "config": {},
        "os_version": "Debian 12", "agent_version": "0.1.0", "local_ip": "10.0.0.2"}});
    assert_eq!(f.call("PATCH", "/api/v1/device/state", Some(KEY_A), Some(report)).status, 200);
    let current = json_of(&f.call("GET", "/api/v1/devices/dev-1/current-state", Some(ADMIN), None));
    assert_eq!(current["os_version"], "Debian 12");
    assert_eq!(current["apps"]["1001"]["services"]["1"]["status"], "running");
    assert!(current["reportedAt"].is_string());
}

#[test]
fn delete_clears_the_target_with_a_new_version() {
    let f = Fixture::new();
    f.set_target("dev-1", guide_target("nginx:latest"));
    let deleted = json_of(&f.call("DELETE", "/api/v1/devices/dev-1/target-state", Some(ADMIN), None));
    assert_eq!(deleted["version"], 2);
    let read = json_of(&f.call("GET", "/api/v1/devices/dev-1/target-state", Some(ADMIN), None));
    assert_eq!((read["apps"].clone(), read["version"].clone()), (json!({}), json!(2)));
    assert_eq!(f.call("DELETE", "/api/v1/devices/nobody/target-state", Some(ADMIN), None).status, 404);
}

#[test]
fn bad_requests_get_json_errors() {
    let f = Fixture::new();
    let raw = |method: &str, path: &str, body: &[u8]| {
        handle(
            &f.api,
            &Request {
                method: method.into(),
                path: path.into(),
                headers: vec![("authorization".into(), format!("Bearer {ADMIN}"))],
                body: body.to_vec(),
                ..Default::default()
            },
        )
    };
    let long_id_path = format!("/api/v1/devices/{}/target-state", "x".repeat(65));
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("POST", "/api/v1/devices/dev-1/target-state", b"{not json".to_vec(), 400),
        ("POST", "/api/v1/devices/dev-1/target-state", b"".to_vec(), 400),
        ("POST", "/api/v1/devices/dev-1/target-state", br#"{"apps": "web"}"#.to_vec(), 400),
        (
            "POST",
            "/api/v1/devices/dev-1/target-state",
            br#"{"apps": {"1": {"services": [{"imageName": 5}]}}}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/devices/dev-1/target-state",
            br#"{"apps": {"1": {"services": [{"serviceName": "x"}]}}}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/devices/dev-1/target-state",
            format!("{}1{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            400,
        ),
        ("POST", "/api/v1/devices/bad%20id/target-state", br#"{"apps": {}}"#.to_vec(), 400),
        ("POST", &long_id_path, br#"{"apps": {}}"#.to_vec(), 400),
        ("GET", "/api/v1/nothing-here", vec![], 404),
        ("GET", "/elsewhere", vec![], 404),
        ("PATCH", "/api/v1/devices/dev-1/target-state", vec![], 405),
        ("DELETE", "/api/v1/devices", vec![], 405),
        ("GET", "/api/v1/devices/unknown-device", vec![], 404),
    ];
    for (method, path, body, expected) in cases {
        let response = raw(method, path, &body);
        assert_eq!(response.status, expected, "{method} {path}: {}", text(&response));
        let error = json_of(&response);
        assert!(error["error"].is_string() && error["message"].is_string(), "{error}");
    }
    let not_allowed = raw("PATCH", "/api/v1/devices/dev-1/target-state", b"");
    assert_eq!(not_allowed.header("allow"), Some("GET, POST, PUT, DELETE"));
}

#[test]
fn unchanged_polls_answered_from_memory_see_every_new_target_and_only_their_own_key() {
    let f = Fixture::new();
    f.register("gw-1", KEY_A);
    f.register("gw-2", KEY_B);
    f.set_target("gw-1", guide_target("nginx:latest"));
    let poll = |uuid: &str, key: &str, etag: &str| {
        let request = Request {
            method: "GET".into(),
            path: format!("/api/v1/device/{uuid}/state"),
            headers: vec![("x-device-api-key".into(), key.into()), ("if-none-match".into(), etag.into())],
            ..Default::default()
        };
        handle(&f.api, &request)
    };
    let etag = |response: &Response| response.header("ETag").unwrap_or_default().to_string();

    let first = poll("gw-1", KEY_A, "\"none\"");
    assert_eq!(first.status, 200);
    let v1 = etag(&first);
    for _ in 0..3 {
        // The first 304 remembers the key and ETag; the next ones are answered from memory.
        assert_eq!((poll("gw-1", KEY_A, &v1).status, etag(&poll("gw-1", KEY_A, &v1))), (304, v1.clone()));
    }
    // What a dashboard and the devices do all day reads the store, and writes reports and
    // logs, but changes no poll answer: the next 304 still comes from memory.
    let (hits, _) = f.api.poll_cache.counts();
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/gw-1",
        "/api/v1/devices/gw-1/target-state",
        "/api/v1/devices/gw-1/target-state/history",
        "/api/v1/devices/gw-1/current-state",
        "/api/v1/devices/gw-1/logs",
        "/api/v1/devices/gw-1/metrics",
        "/api/v1/devices/gw-1/pending-updates",
        "/api/v1/images",
        "/api/v1/provisioning-keys",
        "/api/v1/registries",
    ] {
        assert_eq!(f.call("GET", path, Some(ADMIN), None).status, 200, "{path}");
    }
    let report = json!({"gw-1": {"apps": {}, "config": {}, "cpu_usage": 5, "os_version": "x"}});
    assert_eq!(f.call("PATCH", "/api/v1/device/state", Some(KEY_A), Some(report)).status, 200);
    let logs = Request {
        method: "POST".into(),
        path: "/api/v1/device/gw-1/logs".into(),
        headers: vec![("x-device-api-key".into(), KEY_A.into())],
        body: b"{\"message\":\"m\"}\n".to_vec(),
        ..Default::default()
    };
    assert_eq!(handle(&f.api, &logs).status, 200);
    assert_eq!(poll("gw-1", KEY_A, &v1).status, 304);
    assert_eq!(f.api.poll_cache.counts().0, hits + 1, "answered from memory after a read-only workload");

    assert_eq!(poll("gw-1", KEY_B, &v1).status, 403, "another device's key, its ETag known or not");
    assert_eq!(poll("gw-1", "not-a-key", &v1).status, 401);

    // A new target is seen by the very next poll.
    *f.latest.lock().unwrap() = DIGEST_V2;
    f.set_target("gw-1", guide_target("nginx:latest"));
    let moved = poll("gw-1", KEY_A, &v1);
    assert_eq!(moved.status, 200, "not the remembered 304");
    assert!(text(&moved).contains(DIGEST_V2), "{}", text(&moved));
    let v2 = etag(&moved);
    assert_ne!(v2, v1);
    assert_eq!(poll("gw-1", KEY_A, &v2).status, 304);
    assert_eq!(poll("gw-1", KEY_A, &v1).status, 200, "the old ETag is no longer current");
}

#[test]
fn a_device_key_may_not_be_a_provisioning_key_or_a_token_and_cannot_break_one() {
    let f = Fixture::new();
    let key =
        json_of(&f.call("POST", "/api/v1/provisioning-keys", Some(ADMIN), None))["key"].as_str().unwrap().to_string();
    for (label, device_key) in [("the provisioning key itself", key.as_str()), ("the admin token", ADMIN)] {
        let body = json!({"uuid": "dev-x", "deviceApiKey": device_key});
        let refused = f.call("POST", "/api/v1/device/register", Some(&key), Some(body));
        assert_eq!(refused.status, 400, "{label}: {}", text(&refused));
    }
    // A device stored with the provisioning key as its key (before keys were kept
    // apart): registrations with that provisioning key still work.
    f.api
        .store
        .register_device(&pinion_server::store::NewRegistration {
            uuid: "poisoned".into(),
            device_name: None,
            device_type: None,
            key_hash: pinion_server::keys::hash_secret(&key),
            claimant: pinion_server::claims::Claimant::Operator,
            system_info: None,
        })
        .unwrap();
    let body = json!({"uuid": "dev-y", "deviceApiKey": KEY_A});
    let accepted = f.call("POST", "/api/v1/device/register", Some(&key), Some(body));
    assert_eq!(accepted.status, 200, "{}", text(&accepted));
}

#[test]
fn the_status_views_judge_each_device_and_filter_and_page_them() {
    let f = Fixture::new();
    let running = format!("nginx@{DIGEST_V1}");
    let report = |uuid: &str, image: &str, status: &str, probation: &str| {
        json!({uuid: {"apps": {"1001": {"services": {"nginx": {"imageName": image, "status": status,
            "probation": probation, "containerId": "c"}}}}, "config": {}, "agent_version": "0.9.1"}})
    };
    // dev-a runs its target; dev-b is still pulling another; dev-c failed it; dev-d has
    // no target; dev-e was never registered; dev-f is named like an attack.
    for (uuid, key) in [("dev-a", KEY_A), ("dev-b", KEY_B), ("dev-c", "device-key-c-0123456789abcdef0123456789")] {
        f.register(uuid, key);
        f.set_target(uuid, guide_target("nginx:latest"));
        let (image, status, probation) = match uuid {
            "dev-a" => (running.as_str(), "Running", "passed"),
            "dev-b" => ("nginx@sha256:0000", "Downloading", "running"),
            _ => (running.as_str(), "exited", "failed"),
        };
        let sent = f.call("PATCH", "/api/v1/device/state", Some(key), Some(report(uuid, image, status, probation)));
        assert_eq!(sent.status, 200, "{}", text(&sent));
    }
    f.register("dev-d", "device-key-d-0123456789abcdef0123456789");
    f.set_target("dev-e", guide_target("nginx:latest"));
    let hostile = "<img src=x onerror=alert(1)>";
    let body =
        json!({"uuid": "dev-f", "deviceName": hostile, "deviceApiKey": "device-key-f-0123456789abcdef0123456789"});
    let key =
        json_of(&f.call("POST", "/api/v1/provisioning-keys", Some(ADMIN), None))["key"].as_str().unwrap().to_string();
    assert_eq!(f.call("POST", "/api/v1/device/register", Some(&key), Some(body)).status, 200);

    let list = |query: &str| json_of(&f.call("GET", &format!("/api/v1/status/devices{query}"), Some(ADMIN), None));
    let all = list("");
    assert_eq!(all["total"], 6);
    let by_uuid = |uuid: &str| all["devices"].as_array().unwrap().iter().find(|d| d["uuid"] == uuid).unwrap().clone();
    let a = by_uuid("dev-a");
    assert_eq!((a["sync"].as_str(), a["agentVersion"].as_str()), (Some("in-sync"), Some("0.9.1")));
    assert_eq!(a["services"][0]["targetImage"], running);
    assert_eq!(a["services"][0]["requested"], "nginx:latest");
    assert_eq!(a["services"][0]["differs"], false);
    assert_eq!(a["source"]["kind"], "device");
    assert_eq!(by_uuid("dev-b")["sync"], "updating");
    assert_eq!(by_uuid("dev-b")["services"][0]["differs"], true);
    assert_eq!(by_uuid("dev-c")["sync"], "failed");
    assert!(by_uuid("dev-c")["reason"].as_str().unwrap().starts_with("nginx: "));
    assert_eq!(by_uuid("dev-d")["sync"], "no-target");
    assert_eq!(by_uuid("dev-e")["connectivity"], "never-seen");
    assert_eq!(by_uuid("dev-f")["deviceName"], hostile, "names are data, kept as sent");

    // Filters: by state (sync or connectivity), by name or uuid, and pages.
    let uuids = |page: &Value| -> Vec<String> {
        page["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"))
            .iter()
            .map(|d| d["uuid"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(uuids(&list("?state=failed")), ["dev-c"]);
    assert_eq!(uuids(&list("?state=never-seen")), ["dev-e"]);
    assert_eq!(uuids(&list("?name=%3CIMG")), ["dev-f"]);
    assert_eq!(uuids(&list("?name=DEV-B")), ["dev-b"]);
    let page = list("?offset=2&limit=2");
    assert_eq!((page["total"].as_u64(), uuids(&page)), (Some(6), vec!["dev-c".to_string(), "dev-d".to_string()]));
    assert_eq!(list("?offset=100")["devices"], json!([]));
    for bad in ["?state=sleepy", "?limit=0", "?limit=501", "?offset=-1", "?label=nolabel", "?fleet=%20x"] {
        let answer = f.call("GET", &format!("/api/v1/status/devices{bad}"), Some(ADMIN), None);
        assert_eq!(answer.status, 400, "{bad}: {}", text(&answer));
        assert_eq!(json_of(&answer)["error"], "bad_request");
    }
    let one = json_of(&f.call("GET", "/api/v1/status/devices/dev-a", Some(ADMIN), None));
    assert_eq!(one["sync"], "in-sync");
    // dev-b's pull ends within the same second: judged again, not the kept "updating".
    let done = report("dev-b", &running, "Running", "passed");
    assert_eq!(f.call("PATCH", "/api/v1/device/state", Some(KEY_B), Some(done)).status, 200);
    assert_eq!(uuids(&list("?state=updating")), ["dev-e"], "dev-e has a target and has never reported");
    assert_eq!(uuids(&list("?state=in-sync")), ["dev-a", "dev-b"]);
    assert_eq!(f.call("GET", "/api/v1/status/devices/nobody", Some(ADMIN), None).status, 404);

    // The overview counts the same devices (none in a fleet here).
    let overview = json_of(&f.call("GET", "/api/v1/status/overview", Some(ADMIN), None));
    let counts = &overview["fleets"][0];
    assert_eq!(counts["fleet"], Value::Null);
    assert_eq!(
        [
            &counts["devices"],
            &counts["inSync"],
            &counts["updating"],
            &counts["failed"],
            &counts["noTarget"],
            &counts["neverSeen"]
        ],
        [&json!(6), &json!(2), &json!(1), &json!(1), &json!(2), &json!(1)]
    );
}
