//! Registry credentials stored through the API, route by route, through `api::handle`
//! with a SQLite file (to look at its bytes) and a table standing in for the registry:
//! the password goes in with `PUT`, is sealed in the database, and comes out only in the
//! poll of a device whose target pulls from that registry. The real htpasswd registry,
//! dockerd and agent are in `tests/tests/private_registry.rs`.

use pinion_model::Reference;
use pinion_server::api::{handle, Api, Request, Response};
use pinion_server::keys::hash_secret;
use pinion_server::pinning::{Answers, Pin, ResolveDigests};
use pinion_server::secrets::SecretKey;
use pinion_server::store::SqlStore;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "admin-token-for-credential-tests-01";
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PRIVATE: &str = "registry.lan:5000";
const PASSWORD: &str = "s3cret-pass-Zq7!";
const KEY_A: &str = "device-key-a-0123456789abcdef0123456789";
const KEY_B: &str = "device-key-b-0123456789abcdef0123456789";

/// Stand-in registry: every tag is at `DIGEST`.
struct OneDigest;

impl ResolveDigests for OneDigest {
    fn resolve_all(&self, refs: &[Reference], _: Duration) -> Answers {
        refs.iter()
            .map(|r| (r.clone(), Ok(Pin { digest: DIGEST.into(), media_type: "m".into(), stale: None })))
            .collect()
    }
}

struct Fixture {
    api: Api,
    db: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let db = std::env::temp_dir().join(format!("pinion-credentials-{name}-{}.db", std::process::id()));
        remove_db(&db);
        let store = SqlStore::open(&db).unwrap().with_secret_key(SecretKey::generate());
        Fixture {
            api: Api {
                store: Arc::new(store),
                resolver: Arc::new(OneDigest),
                admin_token_hash: hash_secret(ADMIN),
                webhook_token_hash: None,
                resolve_deadline: Duration::from_secs(1),
                refresh_requests: None,
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
            db,
        }
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Response {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        let request = Request {
            method: method.into(),
            path,
            query,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            ..Default::default()
        };
        handle(&self.api, &request)
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        self.call(method, path, &[("authorization", &format!("Bearer {ADMIN}"))], body)
    }

    fn put_credentials(&self, host: &str, body: Value) -> Response {
        self.admin("PUT", &format!("/api/v1/registries/{host}/credentials"), Some(body))
    }

    fn set_target(&self, uuid: &str, image: &str) -> Response {
        let response = self.admin("PUT", &format!("/api/v1/devices/{uuid}/target-state"), Some(target(image)));
        assert_eq!(response.status, 200, "{}", text(&response));
        response
    }

    fn register(&self, uuid: &str, device_key: &str) {
        let key = json_of(&self.admin("POST", "/api/v1/provisioning-keys", None))["key"].as_str().unwrap().to_string();
        let body = json!({"uuid": uuid, "deviceApiKey": device_key});
        let response =
            self.call("POST", "/api/v1/device/register", &[("authorization", &format!("Bearer {key}"))], Some(body));
        assert_eq!(response.status, 200, "{}", text(&response));
    }

    /// `uuid`'s poll with `key`, conditional on `etag`.
    fn poll(&self, uuid: &str, key: &str, etag: Option<&str>) -> Response {
        let mut headers = vec![("x-device-api-key", key)];
        if let Some(etag) = etag {
            headers.push(("if-none-match", etag));
        }
        self.call("GET", &format!("/api/v1/device/{uuid}/state"), &headers, None)
    }

    /// Every byte SQLite wrote: the database and its WAL.
    fn db_bytes(&self) -> Vec<u8> {
        let mut bytes = std::fs::read(&self.db).unwrap();
        bytes.extend(std::fs::read(format!("{}-wal", self.db.display())).unwrap_or_default());
        bytes
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        remove_db(&self.db);
    }
}

fn remove_db(db: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

fn target(image: &str) -> Value {
    json!({"apps": {"1": {"appId": 1, "appName": "app", "services": [
        {"serviceId": 1, "serviceName": "main", "imageName": image, "config": {"image": image}}]}}, "config": {}})
}

fn text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

fn json_of(response: &Response) -> Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(response)))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn etag(response: &Response) -> String {
    response.header("etag").expect("an ETag").to_string()
}

#[test]
fn the_password_goes_in_and_no_operator_route_gives_it_back() {
    let f = Fixture::new("operator");
    let put = f.put_credentials(PRIVATE, json!({"username": "fleet", "password": PASSWORD}));
    assert_eq!(put.status, 200, "{}", text(&put));
    let answer = json_of(&put);
    assert_eq!(answer["status"], "ok");
    assert_eq!(answer["host"], PRIVATE);
    assert_eq!(answer["username"], "fleet");
    assert_eq!(answer["devices"], Value::Null);
    assert!(!contains(&put.body, PASSWORD), "{}", text(&put));

    f.put_credentials(PRIVATE, json!({"username": "gw", "password": PASSWORD, "devices": ["dev-a"]}));
    let list = f.admin("GET", "/api/v1/registries", None);
    assert_eq!(list.status, 200);
    assert!(!contains(&list.body, PASSWORD), "{}", text(&list));
    let entries = json_of(&list)["registries"].clone();
    assert_eq!(entries.as_array().unwrap().len(), 2, "{entries}");
    assert_eq!(entries[0]["host"], PRIVATE);
    assert_eq!(entries[0]["username"], "fleet");
    assert_eq!(entries[0]["scope"], "global");
    assert!(entries[0]["updatedAt"].is_string());
    assert_eq!((entries[1]["scope"].as_str(), entries[1]["device"].as_str()), (Some("device"), Some("dev-a")));

    let image = format!("{PRIVATE}/app:latest");
    let set = f.set_target("dev-a", &image);
    assert!(!contains(&set.body, PASSWORD));
    for path in ["/api/v1/devices/dev-a/target-state", "/api/v1/devices/dev-a/target-state/history", "/api/v1/devices"]
    {
        let read = f.admin("GET", path, None);
        assert_eq!(read.status, 200, "{path}: {}", text(&read));
        assert!(!contains(&read.body, PASSWORD), "{path}: {}", text(&read));
        assert!(!contains(&read.body, "registryAuth"), "{path}: {}", text(&read));
    }
    assert!(!contains(&f.db_bytes(), PASSWORD), "the password is in the database file in clear");
    assert!(contains(&f.db_bytes(), "fleet"), "the bytes read are the database's");
}

#[test]
fn only_the_devices_own_poll_carries_the_credentials_of_its_registries() {
    let f = Fixture::new("poll");
    f.register("dev-a", KEY_A);
    f.register("dev-b", KEY_B);
    f.set_target("dev-a", &format!("{PRIVATE}/app:latest"));
    f.set_target("dev-b", "nginx:latest");
    let before_a = etag(&f.poll("dev-a", KEY_A, None));
    let before_b = f.poll("dev-b", KEY_B, None);

    f.put_credentials(PRIVATE, json!({"username": "fleet", "password": PASSWORD}));
    let poll = f.poll("dev-a", KEY_A, None);
    assert_eq!(poll.status, 200);
    let state = json_of(&poll)["dev-a"].clone();
    assert_eq!(state["registryAuth"], json!({PRIVATE: {"username": "fleet", "password": PASSWORD}}));
    assert_eq!(state["apps"]["1"]["services"][0]["imageName"], format!("{PRIVATE}/app@{DIGEST}"));
    assert_ne!(etag(&poll), before_a, "the credentials changed the answer, so its ETag");

    // Another device's key does not reach it; the admin token is not a device key.
    let other = f.poll("dev-a", KEY_B, None);
    assert_eq!(other.status, 403, "{}", text(&other));
    assert!(!contains(&other.body, PASSWORD));
    let admin = f.call("GET", "/api/v1/device/dev-a/state", &[("authorization", &format!("Bearer {ADMIN}"))], None);
    assert_eq!(admin.status, 403, "{}", text(&admin));

    // A device whose registries have no credentials gets its answer exactly as stored.
    let b = f.poll("dev-b", KEY_B, None);
    assert_eq!((b.body.clone(), etag(&b)), (before_b.body.clone(), etag(&before_b)));
    assert!(!contains(&b.body, "registryAuth"));
}

#[test]
fn a_device_entry_wins_over_the_global_one() {
    let f = Fixture::new("scope");
    f.register("dev-a", KEY_A);
    f.register("dev-b", KEY_B);
    let image = format!("{PRIVATE}/app:latest");
    f.set_target("dev-a", &image);
    f.set_target("dev-b", &image);
    f.put_credentials(PRIVATE, json!({"username": "fleet", "password": "global-pass"}));
    let put =
        f.put_credentials(PRIVATE, json!({"username": "gw-a", "password": "a-pass", "devices": ["dev-a", "dev-a"]}));
    assert_eq!(json_of(&put)["devices"], json!(["dev-a"]));

    let auth_of = |uuid: &str, key: &str| json_of(&f.poll(uuid, key, None))[uuid]["registryAuth"][PRIVATE].clone();
    assert_eq!(auth_of("dev-a", KEY_A), json!({"username": "gw-a", "password": "a-pass"}));
    assert_eq!(auth_of("dev-b", KEY_B), json!({"username": "fleet", "password": "global-pass"}));

    // Without its own entry, the device falls back to the global one.
    let deleted = f.admin("DELETE", &format!("/api/v1/registries/{PRIVATE}/credentials?device=dev-a"), None);
    assert_eq!(deleted.status, 200, "{}", text(&deleted));
    assert_eq!(auth_of("dev-a", KEY_A), json!({"username": "fleet", "password": "global-pass"}));
    let again = f.admin("DELETE", &format!("/api/v1/registries/{PRIVATE}/credentials?device=dev-a"), None);
    assert_eq!(again.status, 404);
    assert_eq!(json_of(&again)["error"], "not_found");
}

#[test]
fn the_etag_changes_with_the_credentials_and_a_304_otherwise() {
    let f = Fixture::new("etag");
    f.register("dev-a", KEY_A);
    let stored = etag(&f.poll("dev-a", KEY_A, None));
    f.set_target("dev-a", &format!("{PRIVATE}/app:latest"));
    let plain = etag(&f.poll("dev-a", KEY_A, None));
    assert_ne!(plain, stored);

    f.put_credentials(PRIVATE, json!({"username": "fleet", "password": PASSWORD}));
    let first = f.poll("dev-a", KEY_A, Some(&plain));
    assert_eq!(first.status, 200, "the credentials are news");
    let with = etag(&first);
    let unchanged = f.poll("dev-a", KEY_A, Some(&with));
    assert_eq!((unchanged.status, etag(&unchanged)), (304, with.clone()));
    assert!(unchanged.body.is_empty());

    // The same values written again are a new revision: the device is told.
    f.put_credentials(PRIVATE, json!({"username": "fleet", "password": "rotated-pass"}));
    let rotated = f.poll("dev-a", KEY_A, Some(&with));
    assert_eq!(rotated.status, 200);
    assert_eq!(json_of(&rotated)["dev-a"]["registryAuth"][PRIVATE]["password"], "rotated-pass");
    assert_ne!(etag(&rotated), with);

    // Credentials removed: back to the stored answer and its ETag.
    assert_eq!(f.admin("DELETE", &format!("/api/v1/registries/{PRIVATE}/credentials"), None).status, 200);
    let removed = f.poll("dev-a", KEY_A, Some(&etag(&rotated)));
    assert_eq!(removed.status, 200);
    assert_eq!(etag(&removed), plain);
    assert!(json_of(&removed)["dev-a"].get("registryAuth").is_none());
}

#[test]
fn bad_credentials_requests_are_400_json_naming_the_problem() {
    let f = Fixture::new("validation");
    let ok = json!({"username": "fleet", "password": PASSWORD});
    for (host, body, code, needle) in [
        ("myregistry", ok.clone(), "bad_request", "not a registry host"),
        ("https:", ok.clone(), "bad_request", "not a registry host"),
        ("reg.lan%2Fapp", ok.clone(), "bad_request", "not a registry host"),
        (PRIVATE, json!({"username": "fleet"}), "bad_request", "missing field `password`"),
        (PRIVATE, json!({"password": PASSWORD}), "bad_request", "missing field `username`"),
        (PRIVATE, json!({"user": "fleet", "password": PASSWORD}), "bad_request", "unknown field `user`"),
        (PRIVATE, json!({"username": "", "password": PASSWORD}), "bad_request", "username must not be empty"),
        (PRIVATE, json!({"username": "a:b", "password": PASSWORD}), "bad_request", "must not contain ':'"),
        (PRIVATE, json!({"username": "fleet", "password": "a\nb"}), "bad_request", "control characters"),
        (PRIVATE, json!({"username": "fleet", "password": PASSWORD, "devices": []}), "bad_request", "at least one"),
        (PRIVATE, json!({"username": "fleet", "password": PASSWORD, "devices": ["a/b"]}), "invalid_device_id", "a/b"),
        (PRIVATE, json!({"username": 5, "password": PASSWORD}), "bad_request", "invalid registry credentials"),
    ] {
        let response = f.put_credentials(host, body.clone());
        assert_eq!(response.status, 400, "{host} {body}: {}", text(&response));
        let error = json_of(&response);
        assert_eq!(error["error"], code, "{error}");
        assert!(error["message"].as_str().unwrap().contains(needle), "{needle}: {error}");
        assert!(!contains(&response.body, PASSWORD), "{error}");
    }
    let no_body = f.admin("PUT", &format!("/api/v1/registries/{PRIVATE}/credentials"), None);
    assert_eq!(no_body.status, 400);
    assert_eq!(json_of(&f.admin("GET", "/api/v1/registries", None))["registries"], json!([]), "nothing stored");

    let post = f.admin("POST", &format!("/api/v1/registries/{PRIVATE}/credentials"), Some(json!({})));
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("PUT, DELETE"));
    let missing = f.admin("DELETE", "/api/v1/registries/docker.io/credentials", None);
    assert_eq!(missing.status, 404);

    // The server adds registryAuth; a target that sets it is refused.
    let mut state = target("nginx:latest");
    state["registryAuth"] = json!({"docker.io": {"username": "u", "password": "p"}});
    let refused = f.admin("PUT", "/api/v1/devices/dev-a/target-state", Some(state));
    assert_eq!(refused.status, 400, "{}", text(&refused));
    assert!(json_of(&refused)["message"].as_str().unwrap().contains("registryAuth"));
}

#[test]
fn credentials_routes_take_the_admin_token_only() {
    let f = Fixture::new("auth");
    f.register("dev-a", KEY_A);
    let routes = [
        ("PUT", format!("/api/v1/registries/{PRIVATE}/credentials"), Some(json!({"username": "u", "password": "p"}))),
        ("GET", "/api/v1/registries".to_string(), None),
        ("DELETE", format!("/api/v1/registries/{PRIVATE}/credentials"), None),
    ];
    for (method, path, body) in routes {
        let anonymous = f.call(method, &path, &[], body.clone());
        assert_eq!(anonymous.status, 401, "{method} {path}");
        assert_eq!(json_of(&anonymous)["error"], "unauthorized");
        let device = f.call(method, &path, &[("x-device-api-key", KEY_A)], body.clone());
        assert_eq!(device.status, 403, "{method} {path}");
        assert_eq!(json_of(&device)["error"], "forbidden");
        let bearer_device = f.call(method, &path, &[("authorization", &format!("Bearer {KEY_A}"))], body.clone());
        assert_eq!(bearer_device.status, 403, "{method} {path}");
        let wrong = f.call(method, &path, &[("authorization", "Bearer not-the-admin-token")], body);
        assert_eq!(wrong.status, 401, "{method} {path}");
    }
    assert_eq!(json_of(&f.admin("GET", "/api/v1/registries", None))["registries"], json!([]));
}
