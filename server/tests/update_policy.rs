//! Update policies over the wire: `PUT|GET|DELETE /devices/{uuid}/update-policy` and
//! `GET /devices/{uuid}/pending-updates`, through `api::handle` with an in-memory store.
//! The pending updates themselves come from the refresher; here they are put in the
//! store directly.

use pinion_model::Reference;
use pinion_server::api::{handle, Api, Request, Response};
use pinion_server::keys::hash_secret;
use pinion_server::pinning::{Answers, ResolveDigests};
use pinion_server::policy::{UpdatePolicy, UpdateWindow};
use pinion_server::store::{PendingUpdate, SqlStore};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "admin-token-for-tests-0123456789";
const DEVICE_KEY: &str = "device-key-a-0123456789abcdef0123456789";
const NGINX: &str = "docker.io/library/nginx:latest";
const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// No registry: the targets set here carry no images.
struct NoRegistry;

impl ResolveDigests for NoRegistry {
    fn resolve_all(&self, _: &[Reference], _: Duration) -> Answers {
        Answers::default()
    }
}

struct Fixture {
    api: Api,
}

impl Fixture {
    fn with_default(default_policy: UpdatePolicy) -> Fixture {
        Fixture {
            api: Api {
                store: Arc::new(SqlStore::in_memory().unwrap()),
                resolver: Arc::new(NoRegistry),
                admin_token_hash: hash_secret(ADMIN),
                webhook_token_hash: None,
                resolve_deadline: Duration::from_secs(1),
                refresh_requests: None,
                default_policy,
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

    /// A server with the default policy, and device `gw-1` registered with `DEVICE_KEY`.
    fn new() -> Fixture {
        let f = Fixture::with_default(UpdatePolicy::default());
        let key = json_of(&f.call("POST", "/api/v1/provisioning-keys", Some(ADMIN), None))["key"]
            .as_str()
            .unwrap()
            .to_string();
        let body = json!({"uuid": "gw-1", "deviceName": "gw", "deviceType": "rpi4", "deviceApiKey": DEVICE_KEY});
        let response = f.call("POST", "/api/v1/device/register", Some(&key), Some(body));
        assert_eq!(response.status, 200, "{}", text(&response));
        f
    }

    fn call(&self, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> Response {
        self.call_raw(method, path, auth, body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
    }

    fn call_raw(&self, method: &str, path: &str, auth: Option<&str>, body: Vec<u8>) -> Response {
        let request = Request {
            method: method.into(),
            path: path.into(),
            headers: auth.map(|a| vec![("authorization".to_string(), format!("Bearer {a}"))]).unwrap_or_default(),
            body,
            ..Default::default()
        };
        handle(&self.api, &request)
    }

    fn put_policy(&self, body: Value) -> Response {
        self.call("PUT", "/api/v1/devices/gw-1/update-policy", Some(ADMIN), Some(body))
    }

    fn pending(&self) -> Value {
        let response = self.call("GET", "/api/v1/devices/gw-1/pending-updates", Some(ADMIN), None);
        assert_eq!(response.status, 200, "{}", text(&response));
        json_of(&response)
    }

    fn hold(&self, reference: &str, apply_after: Option<i64>) {
        self.api
            .store
            .add_pending_update(&PendingUpdate {
                device_uuid: "gw-1".into(),
                reference: reference.into(),
                digest: DIGEST.into(),
                detected_at: "2026-06-10T10:00:00Z".into(),
                apply_after,
                from_version: 0,
            })
            .unwrap();
    }
}

fn text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

fn json_of(response: &Response) -> Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(response)))
}

/// A 400 with a JSON error whose message contains `needle`.
fn assert_bad_request(response: &Response, needle: &str) {
    assert_eq!(response.status, 400, "{}", text(response));
    let body = json_of(response);
    assert_eq!(body["error"], "bad_request");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} does not say {needle:?}");
}

#[test]
fn a_device_follows_the_default_until_it_has_its_own_policy() {
    let f = Fixture::new();
    let read = || json_of(&f.call("GET", "/api/v1/devices/gw-1/update-policy", Some(ADMIN), None));
    assert_eq!(
        read(),
        json!({"uuid": "gw-1", "policy": {"autoUpdate": true, "updateWindow": null}, "source": "default"})
    );

    let policy = json!({"autoUpdate": true,
        "updateWindow": {"start": "02:00", "end": "04:00", "timezone": "Europe/Berlin"}});
    let response = f.put_policy(policy.clone());
    assert_eq!(response.status, 200, "{}", text(&response));
    let expected = json!({"uuid": "gw-1", "policy": policy, "source": "device"});
    assert_eq!(json_of(&response), expected);
    assert_eq!(read(), expected);

    // Left-out fields take their defaults; the zone name is canonicalized.
    let response =
        f.put_policy(json!({"updateWindow": {"start": "22:00", "end": "02:00", "timezone": "europe/berlin"}}));
    assert_eq!(
        json_of(&response)["policy"],
        json!({"autoUpdate": true, "updateWindow": {"start": "22:00", "end": "02:00", "timezone": "Europe/Berlin"}})
    );
    let response = f.put_policy(json!({"autoUpdate": false}));
    assert_eq!(json_of(&response)["policy"], json!({"autoUpdate": false, "updateWindow": null}));

    let response = f.call("DELETE", "/api/v1/devices/gw-1/update-policy", Some(ADMIN), None);
    assert_eq!(response.status, 200, "{}", text(&response));
    assert_eq!(json_of(&response)["source"], "default");
    assert_eq!(read()["source"], "default");
}

#[test]
fn the_server_default_is_what_devices_without_a_policy_report() {
    let default = UpdatePolicy { auto_update: false, update_window: Some("22:00-02:00".parse().unwrap()) };
    let f = Fixture::with_default(default);
    let response = f.call("PUT", "/api/v1/devices/prepared/target-state", Some(ADMIN), Some(json!({"apps": {}})));
    assert_eq!(response.status, 200, "{}", text(&response));
    let answer = json_of(&f.call("GET", "/api/v1/devices/prepared/update-policy", Some(ADMIN), None));
    assert_eq!(answer["source"], "default");
    assert_eq!(
        answer["policy"],
        json!({"autoUpdate": false, "updateWindow": {"start": "22:00", "end": "02:00", "timezone": "UTC"}})
    );
}

#[test]
fn invalid_policies_are_400_with_a_message_saying_what_is_wrong() {
    let f = Fixture::new();
    let window = |start: &str, end: &str, timezone: &str| json!({"updateWindow": {"start": start, "end": end, "timezone": timezone}});
    assert_bad_request(
        &f.put_policy(window("25:00", "04:00", "UTC")),
        "updateWindow start \"25:00\" is not a time of day",
    );
    assert_bad_request(&f.put_policy(window("02:00", "4pm", "UTC")), "updateWindow end \"4pm\"");
    assert_bad_request(&f.put_policy(window("02:00", "02:00", "UTC")), "must not be empty");
    assert_bad_request(
        &f.put_policy(window("02:00", "04:00", "Europe/Nowhere")),
        "unknown time zone \"Europe/Nowhere\"",
    );
    assert_bad_request(&f.put_policy(json!({"autoUpdate": "yes"})), "invalid update policy");
    assert_bad_request(&f.put_policy(json!({"auto_update": false})), "unknown field `auto_update`");
    assert_bad_request(&f.put_policy(json!({"updateWindow": {"start": "02:00"}})), "missing field `end`");
    assert_bad_request(
        &f.call_raw("PUT", "/api/v1/devices/gw-1/update-policy", Some(ADMIN), b"{".to_vec()),
        "not valid JSON",
    );
    assert_bad_request(
        &f.call_raw("PUT", "/api/v1/devices/gw-1/update-policy", Some(ADMIN), vec![]),
        "needs a JSON body",
    );
    // Nothing was stored.
    let read = json_of(&f.call("GET", "/api/v1/devices/gw-1/update-policy", Some(ADMIN), None));
    assert_eq!(read["source"], "default");
}

#[test]
fn policies_are_for_the_operator_only() {
    let f = Fixture::new();
    let body = Some(json!({"autoUpdate": false}));
    for (method, path) in [
        ("GET", "/api/v1/devices/gw-1/update-policy"),
        ("PUT", "/api/v1/devices/gw-1/update-policy"),
        ("DELETE", "/api/v1/devices/gw-1/update-policy"),
        ("GET", "/api/v1/devices/gw-1/pending-updates"),
    ] {
        let as_device = f.call(method, path, Some(DEVICE_KEY), body.clone());
        assert_eq!(as_device.status, 403, "{method} {path} with a device key: {}", text(&as_device));
        assert_eq!(json_of(&as_device)["error"], "forbidden");
        let anonymous = f.call(method, path, None, body.clone());
        assert_eq!(anonymous.status, 401, "{method} {path} without credentials: {}", text(&anonymous));
        assert_eq!(json_of(&anonymous)["error"], "unauthorized");
        let wrong = f.call(method, path, Some("not-a-token"), body.clone());
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
    }
    let read = json_of(&f.call("GET", "/api/v1/devices/gw-1/update-policy", Some(ADMIN), None));
    assert_eq!(read["source"], "default", "the refused PUT stored nothing");
}

#[test]
fn an_unknown_device_is_404_and_is_not_created() {
    let f = Fixture::new();
    let body = Some(json!({"autoUpdate": false}));
    for (method, path) in [
        ("GET", "/api/v1/devices/nobody/update-policy"),
        ("PUT", "/api/v1/devices/nobody/update-policy"),
        ("DELETE", "/api/v1/devices/nobody/update-policy"),
        ("GET", "/api/v1/devices/nobody/pending-updates"),
    ] {
        let response = f.call(method, path, Some(ADMIN), body.clone());
        assert_eq!(response.status, 404, "{method} {path}: {}", text(&response));
        assert_eq!(json_of(&response)["message"], "device nobody not found");
    }
    assert_eq!(f.call("GET", "/api/v1/devices/nobody", Some(ADMIN), None).status, 404);
    let response = f.call("PUT", "/api/v1/devices/bad%20id/update-policy", Some(ADMIN), body);
    assert_eq!(json_of(&response)["error"], "invalid_device_id");
    let response = f.call("POST", "/api/v1/devices/gw-1/update-policy", Some(ADMIN), None);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Allow"), Some("GET, PUT, DELETE"));
}

#[test]
fn pending_updates_are_listed_with_when_and_why() {
    let f = Fixture::new();
    assert_eq!(f.pending(), json!({"uuid": "gw-1", "pendingUpdates": []}));
    let far_future = 4_102_444_799; // 2099-12-31T23:59:59Z
    f.hold(NGINX, Some(far_future));
    f.hold("docker.io/library/redis:7", None);
    assert_eq!(
        f.pending(),
        json!({"uuid": "gw-1", "pendingUpdates": [
            {"reference": NGINX, "digest": DIGEST, "detectedAt": "2026-06-10T10:00:00Z",
             "applyAfter": "2099-12-31T23:59:59Z", "reason": "outside update window"},
            {"reference": "docker.io/library/redis:7", "digest": DIGEST, "detectedAt": "2026-06-10T10:00:00Z",
             "applyAfter": null, "reason": "autoUpdate is off"},
        ]})
    );
}

#[test]
fn a_target_set_by_the_operator_supersedes_pending_updates() {
    let f = Fixture::new();
    f.hold(NGINX, Some(4_102_444_799));
    f.hold("docker.io/library/redis:7", None);
    assert_eq!(f.pending()["pendingUpdates"].as_array().unwrap().len(), 2);
    let response = f.call("PUT", "/api/v1/devices/gw-1/target-state", Some(ADMIN), Some(json!({"apps": {}})));
    assert_eq!(response.status, 200, "{}", text(&response));
    assert_eq!(f.pending()["pendingUpdates"], json!([]));
}

#[test]
fn changing_the_policy_reschedules_what_is_pending() {
    let f = Fixture::new();
    f.put_policy(json!({"autoUpdate": false}));
    f.hold(NGINX, None);
    assert_eq!(f.pending()["pendingUpdates"][0]["reason"], "autoUpdate is off");

    // A one-minute window at midnight UTC: held until the next midnight (or open now).
    f.put_policy(json!({"updateWindow": {"start": "00:00", "end": "00:01", "timezone": "UTC"}}));
    let held = &f.pending()["pendingUpdates"][0];
    assert_eq!(held["detectedAt"], "2026-06-10T10:00:00Z", "still the first detection");
    let apply_after = held["applyAfter"].as_str().unwrap();
    match held["reason"].as_str().unwrap() {
        "outside update window" => assert!(apply_after.ends_with("T00:00:00Z"), "{apply_after}"),
        reason => assert_eq!(reason, "update window open"),
    }

    // No window: due now, for the refresher's next check.
    f.put_policy(json!({}));
    assert_eq!(f.pending()["pendingUpdates"][0]["reason"], "update window open");
    let due = f.api.store.due_pending_updates(jiff::Timestamp::now().as_second()).unwrap();
    assert_eq!(due.len(), 1);

    // Back to a default that only records.
    f.put_policy(json!({"autoUpdate": false}));
    assert_eq!(f.pending()["pendingUpdates"][0]["applyAfter"], Value::Null);
}

#[test]
fn the_update_window_flag_form_matches_the_json_form() {
    let flag: UpdateWindow = "02:00-04:00@Europe/Berlin".parse().unwrap();
    let json: UpdatePolicy = serde_json::from_value(
        json!({"updateWindow": {"start": "02:00", "end": "04:00", "timezone": "Europe/Berlin"}}),
    )
    .unwrap();
    assert_eq!(json.update_window, Some(flag));
}
