//! Probation and automatic rollback: a new deployment is watched for `probation` (default
//! 60 s) after it starts. If its container exits, keeps restarting or turns `unhealthy`
//! within that time, or Docker refuses it as invalid, the deployment before it is put
//! back for `ROLLBACK_EXPIRES` (an hour, or until the next boot) and then tried again. If
//! Docker cannot create or start it for a reason of the host's (`host_fault`: a port
//! taken, a device missing), the one before is put back too, but only for the service's
//! retry backoff (10 s doubling to 10 min): the new one runs as soon as the fault clears.
//! The decisions are pure functions (`probation_verdict`, `restore_point`,
//! `apply_rollbacks`); `Probation` runs them against the engine and the store, so that
//! the planner only ever sees the services to run. Its own bookkeeping is best-effort: a
//! store that takes no write (a full disk) is logged, never stops the cycle.

use crate::apply::{retry_backoff, Activity};
use crate::clock::Moment;
use crate::engine::{ContainerHealth, Engine};
use crate::failure_logs::FailureLogs;
use crate::spec::{DesiredService, ServiceKey};
use crate::store::{unix_now, AgentStore, Deployments, Rollback, ServiceRecord};
use crate::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Restarts by Docker's restart policy a new container may have within probation.
pub const RESTARTS_TOLERATED: u32 = 1;

/// How long a rollback holds (on the boot clock, or until the next boot): then the
/// rejected deployment is tried again, in case what failed it was passing.
pub const ROLLBACK_EXPIRES: Duration = Duration::from_secs(3600);

/// Why a container in probation has failed it, or `None` while it has not.
/// `keep_running`: whether it should run for good (restart `always`/`unless-stopped`);
/// otherwise exiting with code 0 is finishing, not failing.
pub fn probation_verdict(health: &ContainerHealth, keep_running: bool) -> Option<String> {
    let code = health.exit_code;
    if health.health.as_deref() == Some("unhealthy") {
        return Some("turned unhealthy within probation".into());
    }
    if health.restart_count > RESTARTS_TOLERATED {
        let times = health.restart_count;
        // Docker sets `State.ExitCode` to 0 at every start: once restarted and running again,
        // the code the last run exited with is gone, and a 0 would say it exited cleanly.
        if health.state == "running" {
            return Some(format!("restarted {times} times within probation"));
        }
        return Some(format!("restarted {times} times within probation (last exit code {code})"));
    }
    match health.state.as_str() {
        "dead" => Some(format!("died within probation (exit code {code})")),
        // Docker restarts a service kept running (restart `always`/`unless-stopped`) whatever
        // its exit code, so one that is `exited` was stopped: by a person, or by the engine
        // shutting down (a reboot). That is no failure of the deployment; it is started again.
        "exited" if keep_running => None,
        "exited" if code != 0 => Some(format!("exited with code {code} within probation")),
        _ => None,
    }
}

/// The deployment to put back when `attempted` failed: the one in place before it (the
/// previous one when `attempted` is already recorded as deployed, which it is once its
/// container started; only while `in_probation` then). `None` when there is none, or it
/// is the same image and config.
pub fn restore_point<'a>(
    attempted: &DesiredService,
    deployments: &'a Deployments,
    in_probation: bool,
) -> Option<&'a DesiredService> {
    let before = match &deployments.current {
        Some(current) if current.same_deployment(attempted) => deployments.previous.as_ref().filter(|_| in_probation),
        current => current.as_ref(),
    };
    before.filter(|before| !before.same_deployment(attempted))
}

/// `desired` (the target's services) with the rollbacks in `records` in force: a service
/// whose target is still the rejected image and config runs the deployment put back
/// instead. Also returns the services whose rollback no longer applies, because the
/// target asks for another image or config now, or no longer has the service.
pub fn apply_rollbacks(
    mut desired: Vec<DesiredService>,
    records: &[ServiceRecord],
) -> (Vec<DesiredService>, Vec<ServiceKey>) {
    let mut outdated = Vec::new();
    for record in records {
        let Some(rollback) = &record.rollback else { continue };
        match desired.iter_mut().find(|d| d.key == record.key) {
            Some(wanted) if wanted.image == rollback.from_image && wanted.config_hash == rollback.from_config_hash => {
                *wanted = DesiredService { key: wanted.key.clone(), ..rollback.to.clone() };
            }
            _ => outdated.push(record.key.clone()),
        }
    }
    (desired, outdated)
}

/// Whether `record`'s deployment is in probation at `now`, on the boot clock: the wall
/// clock (1970 at boot without an RTC, stepped by NTP later) never decides a rollback.
fn in_probation(record: &ServiceRecord, period: Duration, now: &Moment) -> bool {
    record.rollback.is_none() && record.probation_since.as_ref().is_some_and(|since| since.after(period).is_after(now))
}

/// Watches deployments in probation and rolls back those that fail it.
#[derive(Debug)]
pub struct Probation {
    period: Duration,
    /// Deployments (service, config hash) that failed probation with nothing to go back
    /// to: said once, then left to the retry backoff and Docker's restart policy.
    judged: BTreeSet<(ServiceKey, String)>,
    /// A deployment is in probation, or a rollback waits to be carried out.
    busy: bool,
}

impl Probation {
    /// `period` zero: no probation, no rollbacks.
    pub fn new(period: Duration) -> Probation {
        Probation { period, judged: BTreeSet::new(), busy: false }
    }

    /// Whether the agent should look again soon rather than after its poll interval.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Deployments (service, config hash) seen failing probation since the agent started
    /// and still the target's, with a rollback or with nothing to go back to (which the
    /// store does not record): reported as `"failed"`, never as passed.
    pub fn failed(&self) -> &BTreeSet<(ServiceKey, String)> {
        &self.judged
    }

    /// Inspects the containers of deployments in probation that are still the target's
    /// (`target`: its services before rollbacks) and rolls back those that fail; the
    /// last lines of a failed one go to `failure_logs`, with the reason.
    pub fn watch(
        &mut self,
        engine: &dyn Engine,
        store: &AgentStore,
        target: &[DesiredService],
        failure_logs: &mut FailureLogs,
        now: &Moment,
    ) -> Result<(), Error> {
        if self.period.is_zero() {
            return Ok(());
        }
        self.keep_probation_clocks(store, now);
        self.judged.retain(|(key, hash)| target.iter().any(|d| &d.key == key && &d.config_hash == hash));
        for record in store.services()?.iter().filter(|r| in_probation(r, self.period, now)) {
            let Some(wanted) = target.iter().find(|d| d.key == record.key) else { continue };
            let deployments = store.deployments(&record.key)?;
            let (Some(current), Some(container)) = (&deployments.current, &record.container_id) else { continue };
            if !current.same_deployment(wanted)
                || self.judged.contains(&(wanted.key.clone(), current.config_hash.clone()))
            {
                continue;
            }
            let health = match engine.inspect(container) {
                Ok(Some(health)) => health,
                // Gone: the planner creates it again.
                Ok(None) => continue,
                Err(e) => {
                    log::warn!("{}: probation: {e}", record.key);
                    continue;
                }
            };
            if let Some(reason) = probation_verdict(&health, current.keep_running) {
                self.judged.insert((wanted.key.clone(), current.config_hash.clone()));
                let restore = restore_point(current, &deployments, true);
                let said = self.reject(store, current, restore, reason, ROLLBACK_EXPIRES);
                failure_logs.collect(engine, current, Some(container), &said);
            }
        }
        Ok(())
    }

    /// Ends the probations that passed (each written once), and starts again those a
    /// reboot interrupted: how much of them ran is not known.
    fn keep_probation_clocks(&self, store: &AgentStore, now: &Moment) {
        let Ok(records) = store.services() else { return };
        for record in records.iter() {
            let Some(since) = &record.probation_since else { continue };
            match since.seconds_until(now) {
                None => {
                    let message = format!("{}: the gateway restarted during probation; it starts again", record.key);
                    log::info!("{message}");
                    let _ = store.log_event("info", &message);
                    logged(store.restart_probation(&record.key, now));
                }
                Some(elapsed) if elapsed >= self.period.as_secs() => logged(store.end_probation(&record.key)),
                Some(_) => {}
            }
        }
    }

    /// The services to plan with: `target` with the rollbacks in force. Rollbacks the
    /// target has moved past are cleared, so its new image or config is tried.
    pub fn effective(&mut self, store: &AgentStore, target: Vec<DesiredService>) -> Result<Vec<DesiredService>, Error> {
        self.expire_rollbacks(store, &crate::clock::now());
        let records = store.services()?;
        let (desired, outdated) = apply_rollbacks(target, &records);
        for key in outdated {
            logged(store.clear_rollback(&key));
            let message = format!("{key}: the target changed; rollback lifted");
            log::info!("{message}");
            let _ = store.log_event("info", &message);
        }
        Ok(desired)
    }

    /// Lifts the rollbacks older than `ROLLBACK_EXPIRES` (or of an earlier boot): the
    /// rejected deployment is tried again, and judged again in its probation.
    fn expire_rollbacks(&mut self, store: &AgentStore, now: &Moment) {
        let Ok(records) = store.services() else { return };
        for record in records.iter() {
            let Some(rollback) = &record.rollback else { continue };
            if rollback.since.as_ref().is_some_and(|since| since.after(rollback.holds_for).is_after(now)) {
                continue;
            }
            logged(store.clear_rollback(&record.key));
            self.judged.remove(&(record.key.clone(), rollback.from_config_hash.clone()));
            let message = format!("{}: the rollback from {} expired; trying it again", record.key, rollback.from_image);
            log::info!("{message}");
            let _ = store.log_event("info", &message);
        }
    }

    /// After `apply` ran `desired`: a new container that could not be created or started
    /// is rolled back (the next round puts the earlier one back): for `ROLLBACK_EXPIRES`
    /// when Docker refused it as invalid, for the service's retry backoff when the host
    /// was at fault. Also ends the probations that passed by `now`, so that the report of
    /// this cycle says so (and goes out: it changed) rather than one a poll interval
    /// later, and decides `busy`.
    pub fn after_apply(
        &mut self,
        store: &AgentStore,
        desired: &[DesiredService],
        failed: &BTreeMap<ServiceKey, Activity>,
        now: &Moment,
    ) -> Result<(), Error> {
        self.busy = false;
        if self.period.is_zero() {
            return Ok(());
        }
        let records = store.services()?;
        for (key, activity) in failed {
            let Some(attempted) = desired.iter().find(|d| &d.key == key) else { continue };
            let Some(record) = records.iter().find(|r| &r.key == key) else { continue };
            let (reason, holds_for) = match activity {
                Activity::Failed { kind: "start_failed", message } => {
                    (format!("failed to start: {message}"), ROLLBACK_EXPIRES)
                }
                Activity::Failed { kind: "create_failed", message } => {
                    (format!("could not be created: {message}"), ROLLBACK_EXPIRES)
                }
                Activity::Failed { kind: "host_fault", message } => {
                    (format!("met a fault of this host: {message}"), retry_backoff(record.failures))
                }
                _ => continue,
            };
            // Putting the earlier deployment back failed: it is retried with backoff.
            if record.rollback.is_some() {
                continue;
            }
            let deployments = store.deployments(key)?;
            // Nothing to go back to: `apply` logged the failure and retries with backoff.
            if let Some(restore) = restore_point(attempted, &deployments, in_probation(record, self.period, now)) {
                self.busy = true;
                self.reject(store, attempted, Some(restore), reason, holds_for);
            }
        }
        self.keep_probation_clocks(store, now);
        self.busy |= store.services()?.iter().any(|r| in_probation(r, self.period, now));
        Ok(())
    }

    /// Records that `rejected` failed, and the rollback to `restore` if there is one;
    /// returns what it logged.
    fn reject(
        &self,
        store: &AgentStore,
        rejected: &DesiredService,
        restore: Option<&DesiredService>,
        reason: String,
        holds_for: Duration,
    ) -> String {
        let key = &rejected.key;
        let Some(restore) = restore else {
            let message = format!("{key}: {} {reason}; there is no earlier deployment to go back to", rejected.image);
            log::warn!("{message}");
            let _ = store.log_event("warn", &message);
            return message;
        };
        let message = format!(
            "{key}: {} {reason}; rolling back to {} for {} s, then trying it again",
            rejected.image,
            restore.image,
            holds_for.as_secs()
        );
        log::warn!("{message}");
        let _ = store.log_event("warn", &message);
        let rollback = Rollback {
            from_image: rejected.image.clone(),
            from_config_hash: rejected.config_hash.clone(),
            to: restore.clone(),
            reason,
            at: unix_now(),
            since: Some(crate::clock::now()),
            holds_for,
        };
        logged(store.record_rollback(key, &rollback));
        message
    }
}

/// A store write whose failure (a full disk) is logged, not passed on: probation's
/// bookkeeping must not keep the cycle from applying and reporting.
fn logged(result: Result<(), Error>) {
    if let Err(e) = result {
        log::error!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(state: &str, exit_code: i64, restart_count: u32, health: Option<&str>) -> ContainerHealth {
        ContainerHealth { state: state.into(), exit_code, restart_count, health: health.map(String::from) }
    }

    #[test]
    fn verdicts() {
        let verdict = |h: ContainerHealth, keep_running| probation_verdict(&h, keep_running);
        assert_eq!(verdict(health("running", 0, 0, None), true), None);
        assert_eq!(verdict(health("running", 0, 0, Some("starting")), true), None);
        assert_eq!(verdict(health("running", 0, 1, Some("healthy")), true), None, "one restart is tolerated");
        assert_eq!(verdict(health("restarting", 1, 1, None), true), None, "not yet");
        assert_eq!(
            verdict(health("exited", 1, 0, None), false).as_deref(),
            Some("exited with code 1 within probation")
        );
        // Docker would have restarted it had it crashed: it was stopped (dockerd restarted, a reboot).
        assert_eq!(verdict(health("exited", 143, 0, None), true), None, "stopped, not failed");
        assert_eq!(verdict(health("exited", 0, 0, None), true), None, "stopped, not failed");
        assert_eq!(verdict(health("exited", 0, 0, None), false), None, "a job that finished");
        assert!(verdict(health("exited", 2, 0, None), false).is_some());
        assert_eq!(
            verdict(health("restarting", 1, 2, None), true).as_deref(),
            Some("restarted 2 times within probation (last exit code 1)")
        );
        assert_eq!(
            verdict(health("running", 0, 2, None), true).as_deref(),
            Some("restarted 2 times within probation"),
            "running again after a restart: Docker has reset the exit code to 0"
        );
        assert_eq!(
            verdict(health("running", 0, 0, Some("unhealthy")), true).as_deref(),
            Some("turned unhealthy within probation")
        );
        assert!(verdict(health("dead", 137, 0, None), false).is_some());
        assert_eq!(verdict(health("created", 0, 0, None), true), None);
    }

    #[test]
    fn the_restore_point_is_the_deployment_before_the_failed_one() {
        let (v1, v2) = (DesiredService::example("web", "a@1", "h1"), DesiredService::example("web", "a@2", "h2"));
        // v2 never started: v1 is still the deployment in place.
        let before_v2 = Deployments { current: Some(v1.clone()), previous: None };
        assert_eq!(restore_point(&v2, &before_v2, false), Some(&v1));
        // v2 started and failed later: the previous one, but only within probation.
        let after_v2 = Deployments { current: Some(v2.clone()), previous: Some(v1.clone()) };
        assert_eq!(restore_point(&v2, &after_v2, true), Some(&v1));
        assert_eq!(restore_point(&v2, &after_v2, false), None);
        // A first install has nothing to go back to.
        assert_eq!(restore_point(&v1, &Deployments::default(), true), None);
        assert_eq!(restore_point(&v1, &Deployments { current: Some(v1.clone()), previous: None }, true), None);
        // A config change alone is a deployment too.
        let v1b = DesiredService::example("web", "a@1", "h1b");
        assert_eq!(restore_point(&v1b, &before_v2, false), Some(&v1));
    }

    fn record(key: &ServiceKey, rollback: Option<Rollback>) -> ServiceRecord {
        ServiceRecord {
            key: key.clone(),
            image: String::new(),
            config_hash: String::new(),
            container_id: None,
            failures: 0,
            retry_at: 0,
            last_error: None,
            deployed_at: 1,
            probation_since: None,
            retry_after: None,
            rollback,
        }
    }

    #[test]
    fn rollbacks_replace_the_rejected_target_until_it_changes() {
        let (v1, v2, v3) = (
            DesiredService::example("web", "a@1", "h1"),
            DesiredService::example("web", "a@2", "h2"),
            DesiredService::example("web", "a@3", "h3"),
        );
        let other = DesiredService::example("db", "d@1", "d1");
        let rollback = Rollback {
            from_image: v2.image.clone(),
            from_config_hash: v2.config_hash.clone(),
            to: v1.clone(),
            reason: "exited with code 1 within probation".into(),
            at: 1,
            since: None,
            holds_for: ROLLBACK_EXPIRES,
        };
        let records = [record(&v2.key, Some(rollback)), record(&other.key, None)];

        let (desired, outdated) = apply_rollbacks(vec![other.clone(), v2.clone()], &records);
        assert_eq!(desired, vec![other.clone(), v1.clone()], "v2 is not tried again");
        assert!(outdated.is_empty());

        let (desired, outdated) = apply_rollbacks(vec![other.clone(), v3.clone()], &records);
        assert_eq!(desired, vec![other.clone(), v3], "a new target is tried");
        assert_eq!(outdated, vec![v2.key.clone()]);

        let (desired, outdated) = apply_rollbacks(vec![other.clone()], &records);
        assert_eq!((desired, outdated), (vec![other], vec![v2.key.clone()]), "the service left the target");
    }

    /// An engine that only answers `inspect`, with `health` for every container.
    struct Inspecting(ContainerHealth);

    impl Engine for Inspecting {
        fn managed_containers(&self) -> Result<Vec<crate::engine::Container>, Error> {
            Ok(vec![])
        }
        fn has_image(&self, _: &str) -> Result<bool, Error> {
            Ok(true)
        }
        fn pull(&self, _: &str, _: Option<&str>, _: &mut dyn FnMut(crate::engine::PullProgress)) -> Result<(), Error> {
            Ok(())
        }
        fn remove_image(&self, _: &str) -> Result<(), Error> {
            unreachable!()
        }
        fn free_bytes(&self) -> Result<Option<u64>, Error> {
            unreachable!()
        }
        fn create(&self, _: &str, _: &serde_json::Value) -> Result<String, Error> {
            Ok("new".into())
        }
        fn start(&self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn inspect(&self, _: &str) -> Result<Option<ContainerHealth>, Error> {
            Ok(Some(self.0.clone()))
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
            Ok(vec![crate::engine::LogLine { stderr: true, timestamp_ms: Some(1), text: "panic: no config".into() }])
        }
    }

    #[test]
    fn a_failing_deployment_in_probation_is_rolled_back_once() {
        let store = AgentStore::in_memory().unwrap();
        let (v1, v2) = (DesiredService::example("web", "a@1", "h1"), DesiredService::example("web", "a@2", "h2"));
        store.record_deployed(&v1, "c1").unwrap();
        store.record_deployed(&v2, "c2").unwrap();
        let now = store.services().unwrap()[0].probation_since.clone().expect("v2's probation runs");
        let at = |secs| now.after(Duration::from_secs(secs));
        let mut probation = Probation::new(Duration::from_secs(60));
        let mut logs = FailureLogs::new();
        probation.after_apply(&store, std::slice::from_ref(&v2), &BTreeMap::new(), &now).unwrap();
        assert!(probation.busy(), "v2 is in probation");

        // Running fine: nothing happens.
        probation
            .watch(&Inspecting(health("running", 0, 0, None)), &store, std::slice::from_ref(&v2), &mut logs, &now)
            .unwrap();
        assert_eq!(store.rollback_of(&v2.key).unwrap(), None);
        // Crashing as Docker shows it under restart `always`: restarted again and again.
        let crashing = Inspecting(health("restarting", 1, 2, None));
        probation.watch(&crashing, &store, std::slice::from_ref(&v2), &mut logs, &at(5)).unwrap();
        let rollback = store.rollback_of(&v2.key).unwrap().expect("rolled back");
        assert_eq!((rollback.from_image.as_str(), rollback.to.image.as_str()), ("a@2", "a@1"));
        assert_eq!(rollback.reason, "restarted 2 times within probation (last exit code 1)");
        assert_eq!(probation.effective(&store, vec![v2.clone()]).unwrap(), vec![v1.clone()]);
        assert!(store.recent_events(1).unwrap()[0].message.contains("rolling back to a@1"));
        // The operator gets the container's last lines and the reason, once.
        let sent: Vec<serde_json::Value> = logs.pending().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(
            (sent[0]["message"].as_str(), sent[0]["containerId"].as_str()),
            (Some("panic: no config"), Some("c2"))
        );
        let said = sent[1]["message"].as_str().unwrap();
        assert!(said.contains("restarted 2 times within probation") && said.contains("rolling back to a@1"), "{said}");
        assert_eq!(sent[1]["source"]["type"], "manager");

        // v1 is put back; it is not judged (there is nowhere further to go), nor is v2 retried.
        store.record_deployed(&v1, "c3").unwrap();
        probation.watch(&crashing, &store, std::slice::from_ref(&v2), &mut logs, &at(6)).unwrap();
        probation.after_apply(&store, std::slice::from_ref(&v1), &BTreeMap::new(), &at(6)).unwrap();
        assert!(!probation.busy(), "a deployment under a rollback is not watched");
        assert_eq!(logs.pending().count(), 2, "said once");
        assert_eq!(probation.effective(&store, vec![v2.clone()]).unwrap(), vec![v1.clone()]);

        // A new target lifts the rollback.
        let v3 = DesiredService::example("web", "a@3", "h3");
        assert_eq!(probation.effective(&store, vec![v3.clone()]).unwrap(), vec![v3]);
        assert_eq!(store.rollback_of(&v2.key).unwrap(), None);
    }

    /// The boot clock decides, never the wall clock: a gateway without an RTC boots at
    /// 1970 and NTP steps it by decades later.
    #[test]
    fn probation_passes_once_on_the_boot_clock_and_starts_again_after_a_reboot() {
        let store = AgentStore::in_memory().unwrap();
        let (v1, v2) = (DesiredService::example("web", "a@1", "h1"), DesiredService::example("web", "a@2", "h2"));
        store.record_deployed(&v1, "c1").unwrap();
        store.record_deployed(&v2, "c2").unwrap();
        let since = store.services().unwrap()[0].probation_since.clone().expect("v2's probation runs");
        let mut probation = Probation::new(Duration::from_secs(60));
        let mut logs = FailureLogs::new();
        let crashing = Inspecting(health("restarting", 1, 2, None));
        // Passed: written once, and never judged again on this boot.
        probation
            .watch(&crashing, &store, std::slice::from_ref(&v2), &mut logs, &since.after(Duration::from_secs(60)))
            .unwrap();
        assert_eq!(store.services().unwrap()[0].probation_since, None, "passed");
        probation.watch(&crashing, &store, std::slice::from_ref(&v2), &mut logs, &since).unwrap();
        assert_eq!(store.rollback_of(&v2.key).unwrap(), None, "a settled deployment is not judged");
        // Nor after a reboot: a brief unhealthy start at boot rolls nothing back.
        let rebooted = Moment { boot: "next-boot".into(), uptime: 100 };
        probation.watch(&crashing, &store, std::slice::from_ref(&v2), &mut logs, &rebooted).unwrap();
        assert_eq!(store.rollback_of(&v2.key).unwrap(), None);

        // A reboot in the middle of a probation: it starts again, and still catches a crash.
        let v3 = DesiredService::example("web", "a@3", "h3");
        store.record_deployed(&v3, "c3").unwrap();
        let booted = Moment { boot: "third-boot".into(), uptime: 3 };
        let healthy = Inspecting(health("running", 0, 0, None));
        probation.watch(&healthy, &store, std::slice::from_ref(&v3), &mut logs, &booted).unwrap();
        assert_eq!(store.services().unwrap()[0].probation_since, Some(booted.clone()), "started again");
        probation
            .watch(&crashing, &store, std::slice::from_ref(&v3), &mut logs, &booted.after(Duration::from_secs(10)))
            .unwrap();
        let rollback = store.rollback_of(&v3.key).unwrap().expect("rolled back");
        assert_eq!(rollback.to.image, "a@2");
    }

    /// Ended as soon as it is over, so that the report of the same cycle says `passed`;
    /// one that failed with nothing to go back to is still `failed`.
    #[test]
    fn a_probation_ends_after_the_apply_it_runs_out_in_and_a_failure_is_remembered() {
        let store = AgentStore::in_memory().unwrap();
        let v1 = DesiredService::example("web", "a@1", "h1");
        store.record_deployed(&v1, "c1").unwrap();
        let since = store.services().unwrap()[0].probation_since.clone().expect("v1's probation runs");
        let at = |secs| since.after(Duration::from_secs(secs));
        let mut probation = Probation::new(Duration::from_secs(60));
        probation.after_apply(&store, std::slice::from_ref(&v1), &BTreeMap::new(), &at(59)).unwrap();
        assert!(probation.busy() && store.services().unwrap()[0].probation_since.is_some(), "not yet");
        probation.after_apply(&store, std::slice::from_ref(&v1), &BTreeMap::new(), &at(60)).unwrap();
        assert!(!probation.busy());
        assert_eq!(store.services().unwrap()[0].probation_since, None, "passed");
        assert!(probation.failed().is_empty());

        // A first install that crashes: no rollback (nothing to go back to), but failed.
        let db = DesiredService::example("db", "d@1", "d1");
        store.record_deployed(&db, "c2").unwrap();
        let crashing = Inspecting(health("restarting", 1, 2, None));
        let mut logs = FailureLogs::new();
        probation.watch(&crashing, &store, &[v1.clone(), db.clone()], &mut logs, &crate::clock::now()).unwrap();
        assert_eq!(store.rollback_of(&db.key).unwrap(), None);
        assert_eq!(probation.failed(), &BTreeSet::from([(db.key.clone(), "d1".to_string())]));
    }

    #[test]
    fn a_rollback_expires_and_the_deployment_is_judged_again() {
        let store = AgentStore::in_memory().unwrap();
        let (v1, v2) = (DesiredService::example("web", "a@1", "h1"), DesiredService::example("web", "a@2", "h2"));
        store.record_deployed(&v1, "c1").unwrap();
        store.record_deployed(&v2, "c2").unwrap();
        let now = crate::clock::now();
        let mut probation = Probation::new(Duration::from_secs(60));
        let mut logs = FailureLogs::new();
        let crashing = Inspecting(health("restarting", 1, 2, None));
        probation.watch(&crashing, &store, std::slice::from_ref(&v2), &mut logs, &now).unwrap();
        assert!(store.rollback_of(&v2.key).unwrap().is_some());
        assert_eq!(probation.effective(&store, vec![v2.clone()]).unwrap(), vec![v1.clone()], "held for now");
        // An hour later (here: made an hour ago), v2 is tried again.
        let mut rollback = store.rollback_of(&v2.key).unwrap().unwrap();
        rollback.since = Some(Moment { boot: now.boot.clone(), uptime: now.uptime.saturating_sub(3600) });
        store.record_rollback(&v2.key, &rollback).unwrap();
        assert_eq!(probation.effective(&store, vec![v2.clone()]).unwrap(), vec![v2.clone()], "expired");
        assert_eq!(store.rollback_of(&v2.key).unwrap(), None);
        assert!(!probation.judged.contains(&(v2.key.clone(), v2.config_hash.clone())), "judged again when it runs");
        // One made on an earlier boot has expired too.
        rollback.since = Some(Moment { boot: "earlier-boot".into(), uptime: now.uptime + 10 });
        store.record_rollback(&v2.key, &rollback).unwrap();
        assert_eq!(probation.effective(&store, vec![v2.clone()]).unwrap(), vec![v2]);
    }

    #[test]
    fn a_fault_of_the_host_puts_the_earlier_deployment_back_only_for_the_retry_backoff() {
        let store = AgentStore::in_memory().unwrap();
        let (v1, v2) = (DesiredService::example("web", "a@1", "h1"), DesiredService::example("web", "a@2", "h2"));
        store.record_deployed(&v1, "c1").unwrap();
        let message = "docker start web_1 failed (500): port is already allocated".to_string();
        store.record_failure(&v2.key, &v2.image, &v2.config_hash, &message, &retry_backoff).unwrap();
        let failed = BTreeMap::from([(v2.key.clone(), Activity::Failed { kind: "host_fault", message })]);
        let mut probation = Probation::new(Duration::from_secs(60));
        probation.after_apply(&store, std::slice::from_ref(&v2), &failed, &crate::clock::now()).unwrap();
        let rollback = store.rollback_of(&v2.key).unwrap().expect("v1 put back meanwhile");
        assert_eq!((rollback.to.image.as_str(), rollback.holds_for), ("a@1", Duration::from_secs(10)));
        assert!(rollback.reason.starts_with("met a fault of this host"), "{}", rollback.reason);
        assert_eq!(probation.effective(&store, vec![v2.clone()]).unwrap(), vec![v1.clone()]);
        // Ten seconds on, v2 is tried again.
        let mut later = rollback.clone();
        later.since = later.since.map(|m| Moment { uptime: m.uptime.saturating_sub(10), ..m });
        store.record_rollback(&v2.key, &later).unwrap();
        assert_eq!(probation.effective(&store, vec![v2.clone()]).unwrap(), vec![v2]);
    }

    #[test]
    fn a_new_container_that_fails_to_start_is_rolled_back() {
        let store = AgentStore::in_memory().unwrap();
        let (v1, v2) = (DesiredService::example("web", "a@1", "h1"), DesiredService::example("web", "a@2", "h2"));
        store.record_deployed(&v1, "c1").unwrap();
        let message = "docker start web_1 failed (400): exec: \"nope\": not found".to_string();
        store.record_failure(&v2.key, &v2.image, &v2.config_hash, &message, &|_| Duration::from_secs(10)).unwrap();
        let failed = BTreeMap::from([(v2.key.clone(), Activity::Failed { kind: "start_failed", message })]);
        let mut probation = Probation::new(Duration::from_secs(60));
        probation.after_apply(&store, std::slice::from_ref(&v2), &failed, &crate::clock::now()).unwrap();
        let rollback = store.rollback_of(&v2.key).unwrap().expect("rolled back");
        assert_eq!(rollback.to, v1);
        assert!(rollback.reason.starts_with("failed to start: "), "{}", rollback.reason);
        assert!(probation.busy(), "the rollback is carried out soon");

        // A first install has nothing to go back to: the retry backoff goes on.
        let db = DesiredService::example("db", "d@1", "d1");
        store.record_failure(&db.key, &db.image, &db.config_hash, "x", &|_| Duration::from_secs(10)).unwrap();
        let failed = BTreeMap::from([(db.key.clone(), Activity::Failed { kind: "start_failed", message: "x".into() })]);
        let mut first = Probation::new(Duration::from_secs(60));
        first.after_apply(&store, std::slice::from_ref(&db), &failed, &crate::clock::now()).unwrap();
        assert_eq!(store.rollback_of(&db.key).unwrap(), None);
        assert!(!first.busy());

        // Off: nothing is rolled back.
        store.clear_rollback(&v2.key).unwrap();
        let failed = BTreeMap::from([(v2.key.clone(), Activity::Failed { kind: "start_failed", message: "x".into() })]);
        Probation::new(Duration::ZERO)
            .after_apply(&store, std::slice::from_ref(&v2), &failed, &crate::clock::now())
            .unwrap();
        assert_eq!(store.rollback_of(&v2.key).unwrap(), None);
    }
}
