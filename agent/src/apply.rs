//! The executor: runs the planner's steps through an `Engine`, in order. A failed step
//! fails only its own service (its remaining steps are skipped, the failure is recorded
//! with a retry time) and the run goes on with the others.

use crate::engine::{Engine, PullProgress};
use crate::plan::Step;
use crate::spec::{DesiredService, ServiceKey};
use crate::store::AgentStore;
use crate::Error;
use std::collections::BTreeMap;
use std::time::Duration;

/// Seconds a container gets between SIGTERM and SIGKILL when it is replaced or removed.
pub const STOP_TIMEOUT_SECS: u32 = 10;

/// What a service is doing right now, between Docker's view and the agent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activity {
    Downloading { percent: Option<u8> },
    Installing,
    Failed { kind: &'static str, message: String },
}

/// The per-service retry delay after `failures` consecutive failures: 10 s doubling to 10 min.
pub fn retry_backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs((10u64 << exponent).min(600))
}

/// Runs `steps`. `activity` is told as services change what they are doing (for
/// progress reports); the returned map holds each service's activity after the run
/// (only failures remain, other activities end when their step does).
pub fn apply(
    engine: &dyn Engine,
    store: &AgentStore,
    steps: &[Step],
    desired: &[DesiredService],
    auth_for: &dyn Fn(&str) -> Option<String>,
    activity: &mut dyn FnMut(&ServiceKey, Option<&Activity>),
) -> BTreeMap<ServiceKey, Activity> {
    let by_key: BTreeMap<&ServiceKey, &DesiredService> = desired.iter().map(|d| (&d.key, d)).collect();
    let mut failed: BTreeMap<ServiceKey, Activity> = BTreeMap::new();
    for step in steps {
        let service = step_service(step);
        if service.is_some_and(|key| failed.contains_key(key)) {
            continue;
        }
        // One line per step, so that a log cut short by a crash says where it was.
        match service {
            Some(key) => log::debug!("{key}: {step}"),
            None => log::debug!("{step}"),
        }
        if let Err((kind, error)) = run_step(engine, store, step, &by_key, auth_for, activity) {
            let message = error.to_string();
            log::warn!("{message}");
            let _ = store.log_event("error", &message);
            if let Some(key) = service {
                let failure = Activity::Failed { kind, message: message.clone() };
                activity(key, Some(&failure));
                if let Some(wanted) = by_key.get(key) {
                    if let Err(e) =
                        store.record_failure(key, &wanted.image, &wanted.config_hash, &message, &retry_backoff)
                    {
                        log::error!("{e}");
                    }
                }
                failed.insert(key.clone(), failure);
            }
        }
    }
    failed
}

fn step_service(step: &Step) -> Option<&ServiceKey> {
    match step {
        Step::Pull { service, .. }
        | Step::CreateAndStart { service, .. }
        | Step::ConnectNetwork { service, .. }
        | Step::Start { service, .. } => Some(service),
        Step::Stop { service, .. } | Step::Remove { service, .. } => service.as_ref(),
        _ => None,
    }
}

type StepError = (&'static str, Error);

/// `kind` for a failure of the step itself, or `engine_unreachable` when Docker could not
/// be reached at all: that says nothing of the image, and probation rolls back only on
/// `create_failed` and `start_failed`.
fn failed(kind: &'static str) -> impl Fn(Error) -> StepError {
    move |e| match e {
        Error::DockerUnreachable { .. } => ("engine_unreachable", e),
        e => (kind, e),
    }
}

fn run_step(
    engine: &dyn Engine,
    store: &AgentStore,
    step: &Step,
    desired: &BTreeMap<&ServiceKey, &DesiredService>,
    auth_for: &dyn Fn(&str) -> Option<String>,
    activity: &mut dyn FnMut(&ServiceKey, Option<&Activity>),
) -> Result<(), StepError> {
    match step {
        Step::EnsureNetwork { name, labels } => engine.ensure_network(name, labels).map_err(|e| ("network_failed", e)),
        Step::EnsureVolume { name, labels } => engine.ensure_volume(name, labels).map_err(|e| ("volume_failed", e)),
        Step::RemoveNetwork { name } => engine.remove_network(name).map_err(|e| ("network_failed", e)),
        Step::Pull { service, image } => {
            if engine.has_image(image).map_err(|e| ("pull_failed", e))? {
                return Ok(());
            }
            log::info!("{}/{}: pulling {image}", service.app_id, service.service_name);
            activity(service, Some(&Activity::Downloading { percent: None }));
            let auth = auth_for(image);
            let mut last_percent = None;
            let result = engine.pull(image, auth.as_deref(), &mut |progress: PullProgress| {
                let percent = progress.percent();
                if percent != last_percent {
                    last_percent = percent;
                    activity(service, Some(&Activity::Downloading { percent }));
                }
            });
            activity(service, None);
            result.map_err(|e| ("pull_failed", e))?;
            let _ = store.log_event("info", &format!("pulled {image}"));
            Ok(())
        }
        Step::Stop { container, .. } => engine.stop(container, STOP_TIMEOUT_SECS).map_err(|e| ("stop_failed", e)),
        Step::Remove { service, container } => {
            engine.remove(container).map_err(|e| ("remove_failed", e))?;
            if let Some(key) = service.as_ref().filter(|key| !desired.contains_key(key)) {
                store.forget_service(key).map_err(|e| ("store_failed", e))?;
                let _ = store.log_event("info", &format!("removed {}/{}", key.app_id, key.service_name));
            }
            Ok(())
        }
        Step::CreateAndStart { service, name, body } => {
            activity(service, Some(&Activity::Installing));
            let id = engine.create(name, body).map_err(failed("create_failed"))?;
            log::debug!("{service}: created {name} ({}), starting it", short(&id));
            engine.start(&id).map_err(failed("start_failed"))?;
            activity(service, None);
            if let Some(wanted) = desired.get(service) {
                log::debug!("{service}: recording the deployment of {}", short(&id));
                store.record_deployed(wanted, &id).map_err(|e| ("store_failed", e))?;
                let message = format!("started {name} ({}) from {}", short(&id), wanted.image);
                log::info!("{message}");
                let _ = store.log_event("info", &message);
            }
            Ok(())
        }
        Step::ConnectNetwork { container, network, aliases, .. } => {
            engine.connect_network(network, container, aliases).map_err(|e| {
                // The planner cannot see a container's networks: a container left without
                // one would look up to date. Remove it, so the next round recreates it.
                if let Err(remove) = engine.remove(container) {
                    log::error!("{remove}");
                }
                ("network_failed", e)
            })
        }
        Step::Start { service, container } => {
            // The deployment's own container, stopped after it ran (dockerd restarting stops
            // it, and answers starts with errors while it goes down): failing to start it
            // again says nothing of the image, so it is retried, not rolled back
            // (`probation::after_apply` rolls back on `start_failed` only).
            let ran_before = store.services().is_ok_and(|records| {
                records.iter().any(|r| &r.key == service && r.container_id.as_deref() == Some(container))
            });
            let kind = if ran_before { "restart_failed" } else { "start_failed" };
            engine.start(container).map_err(failed(kind))?;
            if let Some(wanted) = desired.get(service) {
                store.record_deployed(wanted, container).map_err(|e| ("store_failed", e))?;
            }
            let _ = store.log_event("info", &format!("started {}", short(container)));
            Ok(())
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::retry_backoff;
    use std::time::Duration;

    #[test]
    fn retry_backoff_doubles_and_caps() {
        assert_eq!(retry_backoff(1), Duration::from_secs(10));
        assert_eq!(retry_backoff(2), Duration::from_secs(20));
        assert_eq!(retry_backoff(6), Duration::from_secs(320));
        assert_eq!(retry_backoff(7), Duration::from_secs(600));
        assert_eq!(retry_backoff(100), Duration::from_secs(600));
    }
}
