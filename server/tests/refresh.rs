//! Moved tags, in process and with time injected: the background re-resolution and
//! webhooks move devices now or when their update window opens; history and rollback.
//! A table of digests stands in for the registry (the real one is in `tests/`).

use jiff::Timestamp;
use pinion_model::{Reference, TargetState};
use pinion_server::api::{handle, Api, Request, Response};
use pinion_server::keys::hash_secret;
use pinion_server::pinning::{pin_target_state, Answers, Pin, ResolveDigests};
use pinion_server::policy::{UpdatePolicy, UpdateWindow};
use pinion_server::refresh::{Outcome, Refresher};
use pinion_server::store::{PendingUpdate, SqlStore, Store};
use pinion_server::targets::store_target;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ADMIN: &str = "admin-token-for-refresh-tests-0123";
const V1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const V2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const V3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const LATEST: &str = "registry.example:5000/app:latest";
const CANONICAL: &str = "registry.example:5000/app:latest";

/// Stand-in registry: `LATEST` points wherever the test says.
struct MovableTag(Arc<Mutex<&'static str>>);

impl ResolveDigests for MovableTag {
    fn resolve_all(&self, refs: &[Reference], _: Duration) -> Answers {
        let digest = *self.0.lock().unwrap();
        refs.iter()
            .map(|r| (r.clone(), Ok(Pin { digest: digest.into(), media_type: "m".into(), stale: None })))
            .collect()
    }
}

struct Fleet {
    store: Arc<dyn Store>,
    tag: Arc<Mutex<&'static str>>,
    refresher: Refresher,
    api: Api,
}

impl Fleet {
    fn new() -> Fleet {
        let store: Arc<dyn Store> = Arc::new(SqlStore::in_memory().unwrap());
        let tag = Arc::new(Mutex::new(V1));
        let resolver: Arc<dyn ResolveDigests + Send + Sync> = Arc::new(MovableTag(Arc::clone(&tag)));
        let refresher = Refresher {
            store: Arc::clone(&store),
            resolver: Arc::clone(&resolver),
            default_policy: UpdatePolicy::default(),
            deadline: Duration::from_secs(1),
            metrics: Default::default(),
        };
        let api = Api {
            store: Arc::clone(&store),
            resolver,
            admin_token_hash: hash_secret(ADMIN),
            webhook_token_hash: None,
            resolve_deadline: Duration::from_secs(1),
            refresh_requests: None,
            default_policy: UpdatePolicy::default(),
            poll_cache: Default::default(),
            log_retention: Default::default(),
            trusted_proxies: Vec::new(),
            presence: Default::default(),
            rollout_lock: Default::default(),
            metrics: Default::default(),
            metrics_access: Default::default(),
            sessions: Default::default(),
            verdicts: Default::default(),
        };
        Fleet { store, tag, refresher, api }
    }

    /// The operator sets `LATEST` on `uuid` (pinned to wherever the tag is now).
    fn follow_latest(&self, uuid: &str) {
        let mut state: TargetState = serde_json::from_value(json!({"apps": {"1": {"appId": 1, "services": [
            {"serviceName": "web", "imageName": LATEST}]}}}))
        .unwrap();
        pin_target_state(&mut state, self.api.resolver.as_ref(), Duration::from_secs(1), "T0").unwrap();
        store_target(self.store.as_ref(), uuid, &state, "operator", None).unwrap();
    }

    fn pinned(&self, uuid: &str) -> (u64, String) {
        let target = self.store.target(uuid).unwrap().unwrap();
        let state: Value = serde_json::from_str(&target.state).unwrap();
        (target.version, state["apps"]["1"]["services"][0]["imageResolution"]["digest"].as_str().unwrap().to_string())
    }

    fn call(&self, method: &str, target: &str, body: Option<Value>) -> Response {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query.to_string())),
            None => (target, None),
        };
        let request = Request {
            method: method.into(),
            path: path.into(),
            query,
            headers: vec![("authorization".into(), format!("Bearer {ADMIN}"))],
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            ..Default::default()
        };
        handle(&self.api, &request)
    }
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn json_of(response: &Response) -> Value {
    serde_json::from_slice(&response.body).unwrap()
}

#[test]
fn a_moved_tag_moves_every_device_that_follows_it_and_nothing_else() {
    let fleet = Fleet::new();
    fleet.follow_latest("a");
    fleet.follow_latest("b");
    assert!(fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:00:00Z"), "refresh").is_empty());

    *fleet.tag.lock().unwrap() = V2;
    let outcomes = fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:00:00Z"), "refresh");
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes.iter().all(|(_, _, o)| *o == Outcome::Applied { version: 2 }), "{outcomes:?}");
    assert_eq!(fleet.pinned("a"), (2, V2.to_string()));
    assert_eq!(fleet.pinned("b"), (2, V2.to_string()));
    assert!(
        fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:01:00Z"), "refresh").is_empty(),
        "idempotent"
    );
}

#[test]
fn outside_its_window_a_moved_tag_waits_and_applies_when_the_window_opens() {
    let fleet = Fleet::new();
    fleet.follow_latest("gw");
    let window = UpdateWindow::new("02:00", "04:00", "Europe/Berlin").unwrap();
    let policy = UpdatePolicy { auto_update: true, update_window: Some(window) };
    fleet.store.set_update_policy("gw", &policy).unwrap();

    *fleet.tag.lock().unwrap() = V2;
    // 12:00 UTC = 13:00 in Berlin (CET): outside 02:00–04:00.
    let outcomes = fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:00:00Z"), "refresh");
    let opening = at("2026-11-29T01:00:00Z"); // 02:00 CET
    assert_eq!(outcomes, [("gw".to_string(), CANONICAL.to_string(), Outcome::Pending { apply_after: Some(opening) })]);
    assert_eq!(fleet.pinned("gw"), (1, V1.to_string()), "held");
    let pending = json_of(&fleet.call("GET", "/api/v1/devices/gw/pending-updates", None));
    assert_eq!(pending["pendingUpdates"][0]["digest"], V2, "{pending}");

    assert_eq!(fleet.refresher.apply_due(at("2026-11-29T00:59:59Z")), 0, "a second before the window");
    assert_eq!(fleet.pinned("gw"), (1, V1.to_string()));
    assert_eq!(fleet.refresher.apply_due(at("2026-11-29T01:00:00Z")), 1, "the window opens");
    assert_eq!(fleet.pinned("gw"), (2, V2.to_string()));
    assert_eq!(fleet.store.target("gw").unwrap().unwrap().source, "window");
    assert!(fleet.store.pending_updates("gw").unwrap().is_empty());
}

/// The race the refresher had with an operator: it saw the tag move while the device was
/// at version 1 and held the digest; the operator wrote version 2 meanwhile; its hold
/// landed after the operator's write. The interleaving is forced by making those store
/// calls in that order. When the window opens, version 2 must stand.
#[test]
fn a_held_update_that_lands_after_the_operators_newer_target_is_dropped_not_applied() {
    let fleet = Fleet::new();
    fleet.follow_latest("gw");
    let window = UpdateWindow::new("02:00", "04:00", "Europe/Berlin").unwrap();
    fleet.store.set_update_policy("gw", &UpdatePolicy { auto_update: true, update_window: Some(window) }).unwrap();
    let opening = at("2026-11-29T01:00:00Z");

    *fleet.tag.lock().unwrap() = V2;
    let outcomes = fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:00:00Z"), "refresh");
    assert_eq!(outcomes[0].2, Outcome::Pending { apply_after: Some(opening) });
    assert_eq!(fleet.store.pending_updates("gw").unwrap()[0].from_version, 1);

    // The operator's write (pinned to V3) drops what was held, in the same transaction.
    *fleet.tag.lock().unwrap() = V3;
    let target = json!({"apps": {"1": {"appId": 1, "services": [{"serviceName": "web", "imageName": LATEST}]}}});
    assert_eq!(fleet.call("POST", "/api/v1/devices/gw/target-state", Some(target)).status, 200);
    assert_eq!(fleet.pinned("gw"), (2, V3.to_string()));
    assert!(fleet.store.pending_updates("gw").unwrap().is_empty(), "superseded by the operator's write");

    // The refresher's hold, decided at version 1, lands now.
    let late = PendingUpdate {
        device_uuid: "gw".into(),
        reference: CANONICAL.into(),
        digest: V2.into(),
        detected_at: "2026-11-28T12:00:00Z".into(),
        apply_after: Some(opening.as_second()),
        from_version: 1,
    };
    fleet.store.add_pending_update(&late).unwrap();
    assert_eq!(fleet.refresher.apply_due(opening), 0, "nothing applied over the operator's version");
    assert_eq!(fleet.pinned("gw"), (2, V3.to_string()));
    assert!(fleet.store.pending_updates("gw").unwrap().is_empty(), "the stale hold is dropped");

    // A hold made from the version that stands is applied as before.
    fleet.store.add_pending_update(&PendingUpdate { from_version: 2, ..late }).unwrap();
    assert_eq!(fleet.refresher.apply_due(opening), 1);
    assert_eq!(fleet.pinned("gw"), (3, V2.to_string()));
}

#[test]
fn with_auto_update_off_a_moved_tag_is_only_recorded() {
    let fleet = Fleet::new();
    fleet.follow_latest("gw");
    fleet.store.set_update_policy("gw", &UpdatePolicy { auto_update: false, update_window: None }).unwrap();
    *fleet.tag.lock().unwrap() = V2;
    let outcomes = fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:00:00Z"), "refresh");
    assert_eq!(outcomes[0].2, Outcome::Pending { apply_after: None });
    assert_eq!(fleet.refresher.apply_due(at("2030-01-01T00:00:00Z")), 0);
    assert_eq!(fleet.pinned("gw"), (1, V1.to_string()));
    assert_eq!(fleet.store.pending_updates("gw").unwrap()[0].digest, V2);

    // A target set by the operator applies at once and supersedes what was pending.
    let target = json!({"apps": {"1": {"appId": 1, "services": [{"serviceName": "web", "imageName": LATEST}]}}});
    assert_eq!(fleet.call("POST", "/api/v1/devices/gw/target-state", Some(target)).status, 200);
    assert_eq!(fleet.pinned("gw"), (2, V2.to_string()));
    assert!(fleet.store.pending_updates("gw").unwrap().is_empty());
}

#[test]
fn history_keeps_every_version_and_a_rollback_restores_one_without_following_back() {
    let fleet = Fleet::new();
    fleet.follow_latest("gw");
    *fleet.tag.lock().unwrap() = V2;
    fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:00:00Z"), "webhook");

    let history = json_of(&fleet.call("GET", "/api/v1/devices/gw/target-state/history", None));
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!((versions[0]["version"].clone(), versions[0]["source"].clone()), (json!(2), json!("webhook")));
    assert_eq!(versions[0]["images"][0]["digest"], V2);
    assert_eq!(versions[1]["images"][0]["digest"], V1);

    let rollback = fleet.call("POST", "/api/v1/devices/gw/target-state/rollback", None);
    assert_eq!(rollback.status, 200, "{}", String::from_utf8_lossy(&rollback.body));
    assert_eq!(
        (json_of(&rollback)["version"].clone(), json_of(&rollback)["restoredVersion"].clone()),
        (json!(3), json!(1))
    );
    assert_eq!(fleet.pinned("gw"), (3, V1.to_string()));
    assert_eq!(fleet.store.target("gw").unwrap().unwrap().source, "rollback");

    // The tag still points at the digest rolled away from: following it does not go back.
    assert!(fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:05:00Z"), "refresh").is_empty());
    assert_eq!(fleet.pinned("gw"), (3, V1.to_string()));
    // A new push does.
    *fleet.tag.lock().unwrap() = V3;
    fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:10:00Z"), "refresh");
    assert_eq!(fleet.pinned("gw"), (4, V3.to_string()));

    let explicit = fleet.call("POST", "/api/v1/devices/gw/target-state/rollback", Some(json!({"version": 2})));
    assert_eq!(json_of(&explicit)["restoredVersion"], 2);
    assert_eq!(fleet.pinned("gw"), (5, V2.to_string()));
    assert_eq!(
        fleet.call("POST", "/api/v1/devices/gw/target-state/rollback", Some(json!({"version": 99}))).status,
        404
    );
    assert_eq!(
        fleet.call("POST", "/api/v1/devices/gw/target-state/rollback", Some(json!({"version": "x"}))).status,
        400
    );
    assert_eq!(fleet.call("POST", "/api/v1/devices/nobody/target-state/rollback", None).status, 404);
}

/// Stand-in registry behind `--allowed-registries ghcr.io`: admits only ghcr.io, and
/// records what it is asked.
struct OnlyGhcr(Mutex<Vec<String>>);

impl ResolveDigests for OnlyGhcr {
    fn resolve_all(&self, refs: &[Reference], _: Duration) -> Answers {
        self.0.lock().unwrap().extend(refs.iter().map(Reference::canonical));
        refs.iter().map(|r| (r.clone(), Ok(Pin { digest: V2.into(), media_type: "m".into(), stale: None }))).collect()
    }

    fn admit(&self, reference: &Reference) -> Result<(), pinion_server::Error> {
        match reference.domain() {
            "ghcr.io" => Ok(()),
            other => Err(pinion_server::Error::RegistryNotAllowed {
                registry: other.to_string(),
                reference: reference.canonical(),
                reason: format!("{other} is not in --allowed-registries (ghcr.io)"),
            }),
        }
    }
}

#[test]
fn a_refresh_or_webhook_reference_on_a_registry_not_allowed_is_ignored_without_asking() {
    let fleet = Fleet::new();
    fleet.follow_latest("a");
    let registry = Arc::new(OnlyGhcr(Mutex::new(Vec::new())));
    let refresher = Refresher {
        store: Arc::clone(&fleet.store),
        resolver: Arc::clone(&registry) as Arc<dyn ResolveDigests + Send + Sync>,
        default_policy: UpdatePolicy::default(),
        deadline: Duration::from_secs(1),
        metrics: Default::default(),
    };
    for source in ["refresh", "webhook"] {
        let outcomes = refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:00:00Z"), source);
        assert!(outcomes.is_empty(), "{outcomes:?}");
    }
    assert!(registry.0.lock().unwrap().is_empty(), "asked {:?}", registry.0.lock().unwrap());
    assert_eq!(fleet.pinned("a").1, V1, "the device stays where it was");

    // An admitted reference that a device follows is asked as before.
    let followed: TargetState = serde_json::from_value(json!({"apps": {"1": {"appId": 1, "services": [
        {"serviceName": "web", "imageName": format!("ghcr.io/owner/app@{V1}"),
         "imageResolution": {"requested": "ghcr.io/owner/app:latest", "digest": V1, "status": "resolved",
                             "resolvedAt": "2026-11-28T11:00:00Z"}}]}}}))
    .unwrap();
    store_target(fleet.store.as_ref(), "b", &followed, "operator", None).unwrap();
    refresher.refresh(&["ghcr.io/owner/app:latest".into()], at("2026-11-28T12:00:00Z"), "refresh");
    assert_eq!(registry.0.lock().unwrap().as_slice(), ["ghcr.io/owner/app:latest"]);
}

#[test]
fn history_keeps_the_last_versions_pages_through_them_and_rolls_back_to_the_oldest_kept() {
    let mut fleet = Fleet::new();
    let store: Arc<dyn Store> = Arc::new(SqlStore::in_memory().unwrap().with_history_limit(3));
    fleet.store = Arc::clone(&store);
    fleet.api.store = Arc::clone(&store);
    fleet.refresher.store = store;
    fleet.follow_latest("gw");
    for digest in [V2, V3, V1, V2, V3] {
        *fleet.tag.lock().unwrap() = digest;
        fleet.refresher.refresh(&[CANONICAL.into()], at("2026-11-28T12:00:00Z"), "refresh");
    }
    assert_eq!(fleet.pinned("gw"), (6, V3.to_string()));
    let versions = |query: &str| -> (Vec<u64>, Value) {
        let response = fleet.call("GET", &format!("/api/v1/devices/gw/target-state/history{query}"), None);
        let page = json_of(&response);
        assert_eq!(response.status, 200, "{query}: {page}");
        let listed = page["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
        (listed, page["next"].clone())
    };
    assert_eq!(versions(""), (vec![6, 5, 4], Value::Null), "three kept, the oldest gone");
    assert_eq!(versions("?limit=2"), (vec![6, 5], json!(5)));
    assert_eq!(versions("?limit=2&before=5"), (vec![4], Value::Null));
    assert_eq!(fleet.call("GET", "/api/v1/devices/gw/target-state/history?limit=0", None).status, 400);

    let gone = fleet.call("POST", "/api/v1/devices/gw/target-state/rollback", Some(json!({"version": 3})));
    assert_eq!(gone.status, 404, "{}", String::from_utf8_lossy(&gone.body));
    let oldest = fleet.call("POST", "/api/v1/devices/gw/target-state/rollback", Some(json!({"version": 4})));
    assert_eq!(oldest.status, 200, "{}", String::from_utf8_lossy(&oldest.body));
    assert_eq!(fleet.pinned("gw"), (7, V1.to_string()), "version 4 pinned V1");
    assert_eq!(versions("").0, vec![7, 6, 5]);
}
