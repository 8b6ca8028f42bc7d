//! What the dashboard (and `GET /api/v1/status/…`) says of a device's apps: each service's
//! target image against what its last report says runs, and one word for the whole
//! device — in sync, updating, drifting (its target was set a while ago, its last report
//! still shows another image, and nothing is in progress), failed, or no target. Read
//! from the reports of both agents as the rollouts read them (`rollout::observe`). Pure:
//! the caller passes the target, the report, when the target was set and the time now.

use crate::rollout::observe::{error_text, reported_image, reported_service, same_image};
use crate::rollout::{observe, Observation, ReleaseImages, Standing};
use pinion_model::TargetState;
use serde::Serialize;
use serde_json::Value;

/// How long after its target was set a device that reports other images is still
/// "updating" (pulling over a slow link, waiting for its next poll) before it counts as
/// "drifting".
pub const DRIFT_GRACE_SECS: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    InSync,
    Updating,
    Drifting,
    Failed,
    NoTarget,
}

impl SyncState {
    pub const ALL: [SyncState; 5] =
        [SyncState::InSync, SyncState::Updating, SyncState::Drifting, SyncState::Failed, SyncState::NoTarget];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::InSync => "in-sync",
            SyncState::Updating => "updating",
            SyncState::Drifting => "drifting",
            SyncState::Failed => "failed",
            SyncState::NoTarget => "no-target",
        }
    }
}

/// One service of the target, as the device's report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub app: String,
    pub service: String,
    pub target_image: String,
    /// The reference the target was pinned from (`nginx:1.27`), if the server pinned it.
    pub requested: Option<String>,
    pub running_image: Option<String>,
    /// The running image is not the target's (or nothing of it runs).
    pub differs: bool,
    pub status: Option<String>,
    pub probation: Option<String>,
    pub error: Option<String>,
    pub container_id: Option<String>,
}

/// What a device is seen doing with its target.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub sync: SyncState,
    /// Why it failed or drifts, naming the service.
    pub reason: Option<String>,
    pub services: Vec<ServiceView>,
}

/// Judges `report` (the device's last) against `target` (set at `target_set_at`, Unix
/// seconds) at `now`.
pub fn judge(target: Option<&TargetState>, report: Option<&Value>, target_set_at: Option<u64>, now: u64) -> Judgement {
    let images = target.map(ReleaseImages::of).unwrap_or_default();
    if images.services.is_empty() {
        return Judgement { sync: SyncState::NoTarget, reason: None, services: Vec::new() };
    }
    let services: Vec<ServiceView> = images
        .services
        .iter()
        .map(|wanted| {
            let seen = report.and_then(|report| reported_service(report, wanted));
            let text = |name: &str| seen.and_then(|s| s.get(name)).and_then(Value::as_str).map(str::to_string);
            let running_image = seen.and_then(reported_image).map(str::to_string);
            let has_error = seen.and_then(|s| s.get("error")).is_some_and(|e| !e.is_null());
            ServiceView {
                app: wanted.app_id.clone(),
                service: wanted.name.clone(),
                target_image: wanted.image.clone(),
                requested: wanted.requested.clone(),
                differs: running_image.as_deref().is_none_or(|image| !same_image(image, &wanted.image)),
                running_image,
                status: text("status"),
                probation: text("probation"),
                error: match seen {
                    Some(seen) if has_error => Some(error_text(seen, "")),
                    _ => None,
                },
                container_id: text("containerId"),
            }
        })
        .collect();
    let everywhere = Standing { online: true, in_window: true, pinned: false };
    let (sync, reason) = match observe(&images, report, &everywhere) {
        Observation::Failed(reason) => (SyncState::Failed, Some(reason)),
        Observation::Healthy | Observation::RunningUnproven { .. } => (SyncState::InSync, None),
        _ if report.is_none() || services.iter().any(in_progress) => (SyncState::Updating, None),
        _ => match target_set_at {
            Some(set) if now >= set.saturating_add(DRIFT_GRACE_SECS) => {
                (SyncState::Drifting, services.iter().find(|s| s.differs).map(drift_reason))
            }
            _ => (SyncState::Updating, None),
        },
    };
    Judgement { sync, reason, services }
}

/// A service being pulled, started or proven: anything but settled (running, or stopped).
fn in_progress(service: &ServiceView) -> bool {
    const SETTLED: [&str; 5] = ["running", "exited", "dead", "error", "failed"];
    let status = service.status.as_deref().unwrap_or("").to_ascii_lowercase();
    service.probation.as_deref() == Some("running") || (!status.is_empty() && !SETTLED.contains(&status.as_str()))
}

fn drift_reason(service: &ServiceView) -> String {
    match &service.running_image {
        Some(image) => format!("{}: runs {image}, not {}", service.service, service.target_image),
        None => format!("{}: not running", service.service),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WEB: &str = "127.0.0.1:5000/web@sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const OLD: &str = "127.0.0.1:5000/web@sha256:9999999999999999999999999999999999999999999999999999999999999999";

    fn target() -> TargetState {
        serde_json::from_value(json!({"apps": {"1": {"services": {"web": {"imageName": WEB}}}}})).unwrap()
    }

    fn report(image: &str, status: &str, probation: Option<&str>) -> Value {
        let mut web = json!({"imageName": image, "status": status, "containerId": "c1"});
        if let Some(p) = probation {
            web["probation"] = p.into();
        }
        json!({"apps": {"1": {"services": {"web": web}}}})
    }

    #[test]
    fn running_the_target_is_in_sync_with_either_agent() {
        for probation in [Some("passed"), None] {
            let seen = judge(Some(&target()), Some(&report(WEB, "Running", probation)), Some(100), 200);
            assert_eq!(seen.sync, SyncState::InSync, "{probation:?}");
            assert!(!seen.services[0].differs);
            assert_eq!(seen.services[0].container_id.as_deref(), Some("c1"));
        }
    }

    #[test]
    fn another_image_is_updating_within_the_grace_then_drifting() {
        let old = report(OLD, "Running", Some("passed"));
        let early = judge(Some(&target()), Some(&old), Some(100), 100 + DRIFT_GRACE_SECS - 1);
        assert_eq!(early.sync, SyncState::Updating);
        assert!(early.services[0].differs);
        let late = judge(Some(&target()), Some(&old), Some(100), 100 + DRIFT_GRACE_SECS);
        assert_eq!(late.sync, SyncState::Drifting);
        assert_eq!(late.reason.as_deref(), Some(format!("web: runs {OLD}, not {WEB}").as_str()));
        // Still pulling long after: updating, not drifting.
        let pulling = judge(Some(&target()), Some(&report(OLD, "Downloading", None)), Some(100), 10_000);
        assert_eq!(pulling.sync, SyncState::Updating);
        // In probation: updating.
        let proving = judge(Some(&target()), Some(&report(WEB, "Running", Some("running"))), Some(100), 10_000);
        assert_eq!(proving.sync, SyncState::Updating);
        // No report at all: updating (it has not said anything yet).
        assert_eq!(judge(Some(&target()), None, Some(100), 10_000).sync, SyncState::Updating);
        // The service missing from a late report: drifting, "not running".
        let empty = judge(Some(&target()), Some(&json!({"apps": {}})), Some(100), 10_000);
        assert_eq!((empty.sync, empty.reason.as_deref()), (SyncState::Drifting, Some("web: not running")));
    }

    #[test]
    fn a_failure_names_the_service_and_its_error() {
        let mut crashed = report(WEB, "exited", None);
        crashed["apps"]["1"]["services"]["web"]["error"] = json!({"type": "Exited", "message": "code 3"});
        let seen = judge(Some(&target()), Some(&crashed), Some(100), 101);
        assert_eq!((seen.sync, seen.reason.as_deref()), (SyncState::Failed, Some("web: Exited: code 3")));
        assert_eq!(seen.services[0].error.as_deref(), Some("Exited: code 3"));
        let rolled_back = json!({"apps": {"1": {"services": {"web": {"imageName": OLD, "status": "Running",
            "rollback": {"from": WEB, "reason": "failed probation"}}}}}});
        let seen = judge(Some(&target()), Some(&rolled_back), Some(100), 101);
        assert_eq!(seen.sync, SyncState::Failed);
        assert!(seen.reason.unwrap().contains("failed probation"));
    }

    #[test]
    fn no_services_is_no_target() {
        assert_eq!(judge(None, None, None, 0).sync, SyncState::NoTarget);
        assert_eq!(
            judge(Some(&TargetState::default()), Some(&report(WEB, "Running", None)), None, 0).sync,
            SyncState::NoTarget
        );
    }
}
