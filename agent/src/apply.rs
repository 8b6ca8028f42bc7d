//! The executor: runs the planner's steps through an `Engine`, in order. A failed step
//! fails only its own service (its remaining steps are skipped, the failure is recorded
//! with a retry time) and the run goes on with the others.

use crate::engine::{Engine, PullProgress};
use crate::plan::Step;
use crate::spec::{DesiredService, ServiceKey};
use crate::store::AgentStore;
use crate::Error;
use pinion_model::{ImageId, ImageRef};
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
/// A pull that would leave less than `min_free` bytes where Docker keeps images is not
/// started (`low_disk`, retried with backoff).
pub fn apply(
    engine: &dyn Engine,
    store: &AgentStore,
    steps: &[Step],
    desired: &[DesiredService],
    min_free: u64,
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
        if let Err((kind, error)) = run_step(engine, store, step, &by_key, min_free, auth_for, activity) {
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

/// `kind` when Docker refused the container as invalid (400: a bad config, a command the
/// image lacks): evidence against the deployment, on which probation rolls back.
/// Anything else Docker answered is the host's (`host_fault`: a name taken by another
/// container, a port allocated, a device missing, no space, a daemon error), and
/// `engine_unreachable` when Docker could not be reached at all: retried with backoff,
/// never a reason to roll back.
fn failed(kind: &'static str) -> impl Fn(Error) -> StepError {
    move |e| match e {
        Error::DockerUnreachable { .. } => ("engine_unreachable", e),
        Error::Docker { status, .. } if status != 400 && matches!(kind, "create_failed" | "start_failed") => {
            ("host_fault", e)
        }
        e => (kind, e),
    }
}

fn run_step(
    engine: &dyn Engine,
    store: &AgentStore,
    step: &Step,
    desired: &BTreeMap<&ServiceKey, &DesiredService>,
    min_free: u64,
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
            if let Ok(ImageRef::Id(id)) = ImageRef::parse(image) {
                return Err(("pull_failed", not_pullable(service, &id)));
            }
            if let Some(free) = engine.free_bytes().ok().flatten().filter(|free| *free < min_free) {
                return Err(("low_disk", Error::LowDisk { image: image.clone(), free, min_free }));
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
            // Only images the agent pulled are ever collected (`image_gc.rs`).
            if let Err(e) = store.record_pulled(image) {
                log::warn!("{e}");
            }
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
            // (`probation::after_apply` rolls back on `start_failed`, `create_failed` and
            // `host_fault`).
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

/// An image ID names an image already on the engine; a registry has no name for it, and
/// pulling it would ask Docker Hub for a repository `sha256`.
fn not_pullable(service: &ServiceKey, id: &ImageId) -> Error {
    Error::InvalidTarget {
        reason: format!(
            "{service}: image ID {id} is not on this device, and an image ID cannot be pulled; \
             load the image here, or name it by repository and tag or digest"
        ),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Container, ContainerHealth};
    use serde_json::Value;
    use std::cell::RefCell;

    /// An engine with no image at all, which records the pulls it is asked for.
    #[derive(Default)]
    struct NoImages {
        pulled: RefCell<Vec<String>>,
        /// What `free_bytes` says.
        free: Option<u64>,
    }

    impl Engine for NoImages {
        fn managed_containers(&self) -> Result<Vec<Container>, Error> {
            Ok(vec![])
        }
        fn has_image(&self, _: &str) -> Result<bool, Error> {
            Ok(false)
        }
        fn pull(&self, image: &str, _: Option<&str>, _: &mut dyn FnMut(PullProgress)) -> Result<(), Error> {
            self.pulled.borrow_mut().push(image.to_string());
            Ok(())
        }
        fn create(&self, _: &str, _: &Value) -> Result<String, Error> {
            Ok("new".into())
        }
        fn remove_image(&self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn free_bytes(&self) -> Result<Option<u64>, Error> {
            Ok(self.free)
        }
        fn start(&self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn inspect(&self, _: &str) -> Result<Option<ContainerHealth>, Error> {
            Ok(None)
        }
        fn stop(&self, _: &str, _: u32) -> Result<(), Error> {
            Ok(())
        }
        fn remove(&self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn ensure_network(&self, _: &str, _: &BTreeMap<String, String>) -> Result<(), Error> {
            Ok(())
        }
        fn ensure_volume(&self, _: &str, _: &BTreeMap<String, String>) -> Result<(), Error> {
            Ok(())
        }
        fn remove_network(&self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn managed_networks(&self) -> Result<Vec<String>, Error> {
            Ok(vec![])
        }
        fn connect_network(&self, _: &str, _: &str, _: &[String]) -> Result<(), Error> {
            Ok(())
        }
        fn log_tail(&self, _: &str, _: u32) -> Result<Vec<crate::engine::LogLine>, Error> {
            Ok(vec![])
        }
    }

    #[test]
    fn an_image_id_that_is_not_here_fails_as_pull_failed_without_asking_docker_hub() {
        let hex = "4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
        let store = AgentStore::in_memory().unwrap();
        for image in [format!("sha256:{hex}"), hex.to_string()] {
            let engine = NoImages::default();
            let wanted = DesiredService::example("web", &image, "h");
            let steps = [Step::Pull { service: wanted.key.clone(), image: image.clone() }];
            let failed = apply(&engine, &store, &steps, std::slice::from_ref(&wanted), 0, &|_| None, &mut |_, _| {});
            match &failed[&wanted.key] {
                Activity::Failed { kind: "pull_failed", message } => {
                    assert!(message.contains(&format!("image ID {image} is not on this device")), "{message}");
                    assert!(message.contains("cannot be pulled"), "{message}");
                }
                other => panic!("{image}: {other:?}"),
            }
            assert!(engine.pulled.borrow().is_empty(), "{image}: no pull was tried");
        }
        // A repository reference that is not here is pulled.
        let engine = NoImages::default();
        let wanted = DesiredService::example("web", "busybox:1.36", "h");
        let steps = [Step::Pull { service: wanted.key.clone(), image: "busybox:1.36".into() }];
        assert!(apply(&engine, &store, &steps, &[wanted], 0, &|_| None, &mut |_, _| {}).is_empty());
        assert_eq!(engine.pulled.borrow().as_slice(), ["busybox:1.36"]);
    }

    #[test]
    fn only_docker_refusing_the_container_as_invalid_blames_the_deployment() {
        let docker = |status| Error::Docker { op: "start web_1".into(), status, message: "m".into() };
        let unreachable = Error::DockerUnreachable { socket: "/s".into(), reason: "gone".into() };
        assert_eq!(failed("start_failed")(docker(400)).0, "start_failed", "a command the image lacks");
        assert_eq!(failed("create_failed")(docker(400)).0, "create_failed", "an invalid config");
        for status in [404, 409, 500, 503] {
            assert_eq!(failed("start_failed")(docker(status)).0, "host_fault", "{status}");
            assert_eq!(failed("create_failed")(docker(status)).0, "host_fault", "{status}");
        }
        assert_eq!(failed("start_failed")(unreachable).0, "engine_unreachable");
        assert_eq!(failed("restart_failed")(docker(500)).0, "restart_failed", "its own container: never rolled back");
    }

    #[test]
    fn retry_backoff_doubles_and_caps() {
        assert_eq!(retry_backoff(1), Duration::from_secs(10));
        assert_eq!(retry_backoff(2), Duration::from_secs(20));
        assert_eq!(retry_backoff(6), Duration::from_secs(320));
        assert_eq!(retry_backoff(7), Duration::from_secs(600));
        assert_eq!(retry_backoff(100), Duration::from_secs(600));
    }
}
