//! What a device's last report says of a release: healthy, still updating, failed (and
//! why), or running it without proof of health. Read from the reports of both agents, so a
//! rollout can judge a fleet that runs either: ours reports per service `probation`
//! (`running`, `passed`, `failed`) and a `rollback` when a deployment failed it; the
//! platform's original agent reports only a status (`Running`, `Exited`), keys services by
//! service id or name, and names the image `imageName` or `image`. For those, health is
//! "ran the release without a restart through bakeTime", which `step` times from the
//! `RunningUnproven` fingerprint. Pure: the caller passes the report and the device's
//! presence (online, update window, pin).

use pinion_model::TargetState;
use serde_json::{Map, Value};

/// What the release asks each device to run: one entry per service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseImages {
    /// In (app id, service name) order.
    pub services: Vec<ReleaseService>,
}

/// One service of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseService {
    pub app_id: String,
    pub name: String,
    pub service_id: Option<String>,
    /// The pinned image (`repo@sha256:…`), or what the release carried if it could not be
    /// pinned; empty if it carried none (nothing will match it).
    pub image: String,
    /// The reference the operator wrote (`nginx:1.27`), when the server pinned it.
    pub requested: Option<String>,
}

impl ReleaseImages {
    /// The services of a release's target state, named as the agent names them: the app's
    /// `appId` else its key; the service's `serviceName` else its key; the image from
    /// `imageName` else `config.image`.
    pub fn of(state: &TargetState) -> ReleaseImages {
        let mut services = Vec::new();
        for (app_key, app) in state.apps.iter() {
            let app_id = app.app_id.as_ref().and_then(id_string).unwrap_or(app_key);
            for (service_key, service) in app.services.iter() {
                let name = service.service_name.clone().filter(|n| !n.is_empty()).unwrap_or(service_key);
                let configured = service.config.as_ref().and_then(|c| c.get("image")).and_then(Value::as_str);
                let image = service.image_name.as_deref().filter(|i| !i.is_empty()).or(configured).unwrap_or("");
                services.push(ReleaseService {
                    app_id: app_id.clone(),
                    name,
                    service_id: service.service_id.as_ref().and_then(id_string),
                    image: image.to_string(),
                    requested: service.image_resolution.as_ref().map(|r| r.requested.clone()),
                });
            }
        }
        services.sort_by(|a, b| (&a.app_id, &a.name).cmp(&(&b.app_id, &b.name)));
        ReleaseImages { services }
    }
}

/// What the server knows of a device apart from its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// It polled recently.
    pub online: bool,
    /// Its update policy's window is open now (or it has none).
    pub in_window: bool,
    /// Its own target (a device pin) overrides the rollout's.
    pub pinned: bool,
}

/// What a device is seen doing with a release.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Offline,
    /// Online, and not (yet) running the release, outside its update window.
    OutsideWindow,
    Pinned,
    /// Every service runs the release's image and passed the agent's probation.
    Healthy,
    /// Every service runs the release's image and no service reports probation (the
    /// original agent): healthy once this lasts `bakeTime` with the same `fingerprint`
    /// (its containers; another fingerprint is a restart).
    RunningUnproven {
        fingerprint: String,
    },
    Updating,
    /// Why, naming the service: `web: rolled back: exited with code 1 within probation`.
    Failed(String),
}

/// Statuses (lower-cased) of a service that stopped or could not be started or pulled.
const FAILED_STATUSES: [&str; 4] = ["error", "failed", "exited", "dead"];

/// What `report` (the device's stored current state, `{"apps": {…}, …}`) says of
/// `release`. Pinned, then offline, come first. Outside its update window a device that
/// does not already run (or fail) the release is `OutsideWindow`; one that does is judged
/// on its report, since the window only holds back giving it the release.
pub fn observe(release: &ReleaseImages, report: Option<&Value>, presence: &Standing) -> Observation {
    if presence.pinned {
        return Observation::Pinned;
    }
    if !presence.online {
        return Observation::Offline;
    }
    match judge(release, report) {
        Observation::Updating if !presence.in_window => Observation::OutsideWindow,
        seen => seen,
    }
}

/// The report alone: a failure of any service wins, then all healthy, all running.
fn judge(release: &ReleaseImages, report: Option<&Value>) -> Observation {
    if release.services.is_empty() {
        return Observation::Healthy;
    }
    let Some(report) = report else { return Observation::Updating };
    let mut all_running = true;
    let mut all_passed = true;
    let mut any_probation = false;
    let mut containers = Vec::new();
    for wanted in &release.services {
        let Some(seen) = reported_service(report, wanted) else {
            all_running = false;
            continue;
        };
        if let Some(reason) = rolled_back_from(seen, &wanted.image) {
            return Observation::Failed(bounded(format!("{}: rolled back: {reason}", wanted.name)));
        }
        let runs_release = reported_image(seen).is_some_and(|image| same_image(image, &wanted.image));
        if !runs_release {
            all_running = false;
            continue;
        }
        let status = seen.get("status").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
        if FAILED_STATUSES.contains(&status.as_str()) {
            return Observation::Failed(bounded(format!("{}: {}", wanted.name, error_text(seen, &status))));
        }
        let probation = seen.get("probation");
        any_probation |= probation.is_some();
        let probation = probation.and_then(Value::as_str);
        if probation == Some("failed") {
            return Observation::Failed(bounded(format!("{}: failed probation", wanted.name)));
        }
        if status != "running" {
            all_running = false;
            continue;
        }
        all_passed &= probation == Some("passed");
        match seen.get("containerId").and_then(Value::as_str) {
            Some(id) => containers.push(id.to_string()),
            None => containers.push(format!("{}/{} {} {status}", wanted.app_id, wanted.name, wanted.image)),
        }
    }
    if !all_running {
        Observation::Updating
    } else if all_passed {
        Observation::Healthy
    } else if !any_probation {
        containers.sort();
        Observation::RunningUnproven { fingerprint: containers.join(",") }
    } else {
        Observation::Updating
    }
}

/// The report's entry for `wanted`: its app by key or `appId`, then the service by key
/// == name, `serviceName` == name, `serviceId` == the release's, or key == that id.
pub(crate) fn reported_service<'a>(report: &'a Value, wanted: &ReleaseService) -> Option<&'a Map<String, Value>> {
    let is_app = |app: &&Value| app.get("appId").and_then(id_string).as_deref() == Some(wanted.app_id.as_str());
    let app = match report.get("apps")? {
        Value::Object(apps) => apps.get(&wanted.app_id).or_else(|| apps.values().find(is_app))?,
        Value::Array(apps) => apps.iter().find(is_app)?,
        _ => return None,
    };
    let named = |s: &&Value| s.get("serviceName").and_then(Value::as_str) == Some(wanted.name.as_str());
    let numbered =
        |s: &&Value| wanted.service_id.is_some() && s.get("serviceId").and_then(id_string) == wanted.service_id;
    let found = match app.get("services")? {
        Value::Object(services) => services
            .get(&wanted.name)
            .or_else(|| services.values().find(named))
            .or_else(|| services.values().find(numbered))
            .or_else(|| wanted.service_id.as_ref().and_then(|id| services.get(id))),
        Value::Array(services) => services.iter().find(named).or_else(|| services.iter().find(numbered)),
        _ => None,
    };
    found?.as_object()
}

/// The most of a device's own words (an error, a rollback's reason) a rollout keeps for a
/// device: they are stored with it and in every event about it.
const MAX_REASON_CHARS: usize = 300;

/// `text` cut to `MAX_REASON_CHARS`, marked when it was.
fn bounded(text: String) -> String {
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// The reason of a rollback away from `image`, if the service reports one.
fn rolled_back_from(seen: &Map<String, Value>, image: &str) -> Option<String> {
    let rollback = seen.get("rollback")?.as_object()?;
    let from = rollback.get("from").or_else(|| seen.get("targetImage")).and_then(Value::as_str)?;
    if !same_image(from, image) {
        return None;
    }
    let reason = rollback.get("reason").and_then(Value::as_str).filter(|r| !r.is_empty());
    Some(reason.unwrap_or("no reason given").to_string())
}

/// The image a service reports running (ours: `imageName`; the original agent may say `image`).
pub(crate) fn reported_image(seen: &Map<String, Value>) -> Option<&str> {
    seen.get("imageName").or_else(|| seen.get("image")).and_then(Value::as_str)
}

/// The same image: equal references, or the same `@sha256:` digest (`nginx@sha256:x` and
/// `docker.io/library/nginx@sha256:x`).
pub(crate) fn same_image(seen: &str, wanted: &str) -> bool {
    seen == wanted || (digest(wanted).is_some() && digest(seen) == digest(wanted))
}

fn digest(image: &str) -> Option<&str> {
    image.rsplit_once('@').map(|(_, d)| d).filter(|d| d.starts_with("sha256:"))
}

/// `<type>: <message>` from the service's `error`, else its status.
pub(crate) fn error_text(seen: &Map<String, Value>, status: &str) -> String {
    let error = seen.get("error");
    if let Some(text) = error.and_then(Value::as_str) {
        return text.to_string();
    }
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (field("type"), field("message")) {
        (Some(kind), Some(message)) => format!("{kind}: {message}"),
        (Some(text), None) | (None, Some(text)) => text.to_string(),
        (None, None) => status.to_string(),
    }
}

/// An id as the wire has it: a number or a non-empty string.
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WEB: &str =
        "registry.example:5000/web@sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const DB: &str = "registry.example:5000/db@sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const OLD_WEB: &str =
        "registry.example:5000/web@sha256:9999999999999999999999999999999999999999999999999999999999999999";

    const HERE: Standing = Standing { online: true, in_window: true, pinned: false };

    /// A release of app 1001 with services web (id 1) and db (id 2), as stored: pinned.
    fn release() -> ReleaseImages {
        let state: TargetState = serde_json::from_value(json!({
            "apps": {"1001": {"appId": 1001, "appName": "shop", "services": {
                "web": {"serviceId": 1, "serviceName": "web", "imageName": WEB, "config": {"image": WEB}},
                "db": {"serviceId": 2, "serviceName": "db", "imageName": DB, "config": {"image": DB}}}}},
            "config": {}
        }))
        .unwrap();
        ReleaseImages::of(&state)
    }

    /// Our agent's report (`agent/src/report.rs`), inner state, with the given services.
    fn ours(web: Value, db: Value) -> Value {
        json!({"apps": {"1001": {"services": {"web": web, "db": db}}}, "config": {}, "agent_version": "0.9.0"})
    }

    fn running(image: &str, id: &str, container: &str, probation: &str) -> Value {
        json!({"serviceId": id, "imageName": image, "containerId": container, "status": "running", "probation": probation})
    }

    fn seen(report: &Value) -> Observation {
        observe(&release(), Some(report), &HERE)
    }

    #[test]
    fn a_release_names_its_services_as_the_agent_does() {
        let state: TargetState = serde_json::from_value(json!({
            "apps": [{"appId": "7", "services": [{"serviceName": "api", "serviceId": 3, "config": {"image": WEB}}]},
                     {"services": {"worker": {"imageName": DB}}}]
        }))
        .unwrap();
        let of = ReleaseImages::of(&state);
        let names: Vec<(&str, &str, Option<&str>, &str)> = of
            .services
            .iter()
            .map(|s| (s.app_id.as_str(), s.name.as_str(), s.service_id.as_deref(), s.image.as_str()))
            .collect();
        assert_eq!(names, [("1", "worker", None, DB), ("7", "api", Some("3"), WEB)]);
        assert_eq!(release().services[1].service_id.as_deref(), Some("1"));
    }

    #[test]
    fn our_agent() {
        let cases: &[(&str, Value, Observation)] = &[
            (
                "both passed probation",
                ours(running(WEB, "1", "c-web", "passed"), running(DB, "2", "c-db", "passed")),
                Observation::Healthy,
            ),
            (
                "one still in probation",
                ours(running(WEB, "1", "c-web", "passed"), running(DB, "2", "c-db", "running")),
                Observation::Updating,
            ),
            (
                "downloading while the old one runs",
                ours(
                    json!({"serviceId": "1", "imageName": WEB, "containerId": "c-old", "status": "downloading",
                           "downloadProgress": 42, "runningImage": OLD_WEB}),
                    running(DB, "2", "c-db", "passed"),
                ),
                Observation::Updating,
            ),
            (
                "restarting in probation",
                ours(
                    json!({"serviceId": "1", "imageName": WEB, "containerId": "c", "status": "restarting", "probation": "running"}),
                    running(DB, "2", "c-db", "passed"),
                ),
                Observation::Updating,
            ),
            (
                "still the old release (it has not polled yet)",
                ours(running(OLD_WEB, "1", "c-old", "passed"), running(DB, "2", "c-db", "passed")),
                Observation::Updating,
            ),
            (
                "a service missing from the report",
                json!({"apps": {"1001": {"services": {"web": running(WEB, "1", "c-web", "passed")}}}}),
                Observation::Updating,
            ),
            (
                "rolled back after failing probation",
                ours(
                    json!({"serviceId": "1", "imageName": OLD_WEB, "containerId": "c-old", "status": "running",
                           "targetImage": WEB, "rollback": {"from": WEB, "to": OLD_WEB,
                           "reason": "exited with code 1 within probation", "at": 1_800_000_000u64}}),
                    running(DB, "2", "c-db", "passed"),
                ),
                Observation::Failed("web: rolled back: exited with code 1 within probation".into()),
            ),
            (
                "a rollback away from another image is not this release's",
                ours(
                    json!({"serviceId": "1", "imageName": WEB, "containerId": "c", "status": "running", "probation": "passed",
                           "targetImage": OLD_WEB, "rollback": {"from": OLD_WEB, "to": WEB, "reason": "crashed", "at": 1}}),
                    running(DB, "2", "c-db", "passed"),
                ),
                Observation::Healthy,
            ),
            (
                "a failed pull",
                ours(
                    running(WEB, "1", "c-web", "passed"),
                    json!({"serviceId": "2", "imageName": DB, "status": "error",
                           "error": {"type": "pull_failed", "message": "no such host"}}),
                ),
                Observation::Failed("db: pull_failed: no such host".into()),
            ),
            (
                "a start that keeps failing",
                ours(
                    json!({"serviceId": "1", "imageName": WEB, "status": "error", "failures": 2, "retryAt": 1_900_000_000u64,
                           "error": {"type": "retrying", "message": "start failed: port is already allocated"}}),
                    running(DB, "2", "c-db", "passed"),
                ),
                Observation::Failed("web: retrying: start failed: port is already allocated".into()),
            ),
            (
                "an error of the old release's service is not this release's",
                ours(
                    json!({"serviceId": "1", "imageName": OLD_WEB, "status": "error", "error": {"type": "pull_failed", "message": "x"}}),
                    running(DB, "2", "c-db", "passed"),
                ),
                Observation::Updating,
            ),
            (
                "probation failed",
                ours(running(WEB, "1", "c-web", "failed"), running(DB, "2", "c-db", "passed")),
                Observation::Failed("web: failed probation".into()),
            ),
        ];
        for (name, report, want) in cases {
            assert_eq!(&seen(report), want, "{name}");
        }
    }

    /// The original agent's report (`docs/original-agent-protocol.md`): capitalised
    /// statuses, services keyed by service id, no probation.
    #[test]
    fn the_original_agent() {
        let original = |web: Value, db: Value| {
            json!({"apps": {"1001": {"services": {"1": web, "2": db}}}, "config": {}, "is_online": true,
                   "os_version": "Raspbian GNU/Linux 11", "cpu_usage": 12.5})
        };
        let up = |name: &str, image: &str, container: &str| json!({"serviceName": name, "imageName": image, "containerId": container, "status": "Running"});
        let unproven = |fingerprint: &str| Observation::RunningUnproven { fingerprint: fingerprint.into() };
        #[rustfmt::skip]
        let cases: &[(&str, Value, Observation)] = &[
            ("running both", original(up("web", WEB, "c9"), up("db", DB, "c1")), unproven("c1,c9")),
            ("a restart is another container", original(up("web", WEB, "c10"), up("db", DB, "c1")), unproven("c1,c10")),
            (
                "keyed by id, no name, `image`, a digest spelled out in full",
                original(
                    json!({"serviceId": 1, "image": format!("docker.io/{WEB}"), "status": "Running"}),
                    json!({"serviceId": 2, "image": DB, "status": "Running"}),
                ),
                unproven(&format!("1001/db {DB} running,1001/web {WEB} running")),
            ),
            (
                "keyed by id only",
                json!({"apps": {"1001": {"services": {"1": {"imageName": WEB, "status": "Running", "containerId": "a"},
                                                      "2": {"imageName": DB, "status": "Running", "containerId": "b"}}}}}),
                unproven("a,b"),
            ),
            ("exited", original(json!({"serviceName": "web", "imageName": WEB, "status": "Exited"}), up("db", DB, "c1")), Observation::Failed("web: exited".into())),
            ("installing", original(json!({"serviceName": "web", "imageName": WEB, "status": "Installing"}), up("db", DB, "c1")), Observation::Updating),
            ("the old release", original(up("web", OLD_WEB, "c0"), up("db", DB, "c1")), Observation::Updating),
            (
                "no image reported: nothing shows it runs the release",
                original(json!({"status": "Running"}), json!({"status": "Running"})),
                Observation::Updating,
            ),
        ];
        for (name, report, want) in cases {
            assert_eq!(&seen(report), want, "{name}");
        }
    }

    #[test]
    fn presence_comes_before_the_report() {
        let healthy = ours(running(WEB, "1", "c-web", "passed"), running(DB, "2", "c-db", "passed"));
        let updating = ours(running(OLD_WEB, "1", "c-old", "passed"), running(DB, "2", "c-db", "passed"));
        let failed = ours(json!({"imageName": WEB, "status": "exited"}), running(DB, "2", "c-db", "passed"));
        let away = Standing { online: false, ..HERE };
        let closed = Standing { in_window: false, ..HERE };
        let pinned = Standing { pinned: true, ..HERE };
        #[rustfmt::skip]
        let cases: &[(&str, Option<&Value>, Standing, Observation)] = &[
            ("pinned, even offline", Some(&healthy), Standing { pinned: true, online: false, in_window: false }, Observation::Pinned),
            ("pinned", Some(&updating), pinned, Observation::Pinned),
            ("offline", Some(&healthy), away, Observation::Offline),
            ("offline outside its window", None, Standing { online: false, in_window: false, pinned: false }, Observation::Offline),
            ("outside its window, not running the release", Some(&updating), closed, Observation::OutsideWindow),
            ("outside its window, no report yet", None, closed, Observation::OutsideWindow),
            ("outside its window, running the release", Some(&healthy), closed, Observation::Healthy),
            ("outside its window, failing the release", Some(&failed), closed, Observation::Failed("web: exited".into())),
            ("no report yet", None, HERE, Observation::Updating),
        ];
        for (name, report, presence, want) in cases {
            assert_eq!(&observe(&release(), *report, presence), want, "{name}");
        }
    }

    #[test]
    fn an_empty_release_is_healthy_once_online() {
        let empty = ReleaseImages::default();
        assert_eq!(observe(&empty, None, &HERE), Observation::Healthy);
        assert_eq!(observe(&empty, Some(&json!({"apps": {}})), &HERE), Observation::Healthy);
        assert_eq!(observe(&empty, None, &Standing { online: false, ..HERE }), Observation::Offline);
    }

    #[test]
    fn reports_of_any_shape_never_panic() {
        for report in [
            json!(null),
            json!([]),
            json!({"apps": 3}),
            json!({"apps": {"1001": []}}),
            json!({"apps": {"1001": {"services": {"web": "running"}}}}),
            json!({"apps": [{"appId": 1001, "services": [{"serviceName": "web", "status": 5}]}]}),
        ] {
            assert_eq!(seen(&report), Observation::Updating, "{report}");
        }
    }

    #[test]
    fn a_devices_own_words_are_kept_short() {
        let release = ReleaseImages::of(
            &serde_json::from_value(json!({"apps": {"1": {"services": {"web": {"imageName": "app@sha256:1"}}}}}))
                .unwrap(),
        );
        let long = "x".repeat(100_000);
        let report = json!({"apps": {"1": {"services": {"web": {"imageName": "app@sha256:1", "status": "error", "error": {"type": "t", "message": long}}}}}});
        let here = Standing { online: true, in_window: true, pinned: false };
        match observe(&release, Some(&report), &here) {
            Observation::Failed(reason) => assert_eq!(reason.chars().count(), MAX_REASON_CHARS + 1, "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
