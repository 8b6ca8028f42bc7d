//! The one step that moves a rollout on, and the operator's commands, as pure functions of
//! (plan, progress, devices with what each is observed doing, now). The driver calls
//! `step` on every tick and applies the answer to the store: the rows that changed, the
//! devices to give the release or put back, the events. Nothing here reads a clock or the
//! store, so every transition has a table test.
//!
//! A device of a started wave is given the release unless it is deferred (offline, outside
//! its update window, pinned); it turns healthy or failed from its reports, or failed when
//! `deviceTimeout` passes. Failures beyond `maxFailures` pause the rollout or roll it back;
//! a wave that is healthy enough, and has baked since its last device turned healthy,
//! starts the next (or hands over to a superseding rollout).

use super::{
    DeviceStatus, Observation, OnFailure, RolloutDevice, RolloutEvent, RolloutPlan, RolloutProgress, RolloutStatus,
};
use crate::Error;

/// What a step or a command decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub progress: RolloutProgress,
    /// The rows whose stored fields changed, with their new values.
    pub changes: Vec<RolloutDevice>,
    /// Devices to give the release now.
    pub assign: Vec<String>,
    /// Devices to put back on what they ran before the rollout.
    pub revert: Vec<String>,
    pub events: Vec<RolloutEvent>,
    /// The waiting rollout that supersedes this one starts now.
    pub hand_over: bool,
}

/// What an operator may ask of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    /// Go on, accepting the failures so far (they no longer count against `maxFailures`).
    Resume,
    /// Start the next wave now, whatever the current one's health.
    Promote,
    /// Stop for good; with `rollback`, put every device it updated back.
    Abort {
        rollback: bool,
    },
}

/// One tick: judge the devices of the started waves, then stop on failures or move on.
/// Only running and paused rollouts change; a paused one only records what its devices
/// do (and hands over at once if superseded).
pub fn step(plan: &RolloutPlan, progress: &RolloutProgress, devices: &[RolloutDevice], now: i64) -> Step {
    let mut run = Run::new(plan, progress, devices, now);
    match progress.status {
        RolloutStatus::Running => run.running(),
        RolloutStatus::Paused if progress.superseded_by.is_some() => run.supersede(),
        RolloutStatus::Paused => {
            if let Some(wave) = progress.current_wave {
                run.judge_waves(0, wave);
            }
        }
        _ => {}
    }
    run.finish()
}

/// An operator's command; a `Conflict` naming the status when it does not apply.
pub fn command(
    plan: &RolloutPlan,
    progress: &RolloutProgress,
    devices: &[RolloutDevice],
    command: Command,
    now: i64,
) -> Result<Step, Error> {
    use RolloutStatus::*;
    let status = progress.status;
    let refuse = |rule: &str| Err(Error::Conflict { reason: format!("rollout is {}: {rule}", status.as_str()) });
    let mut run = Run::new(plan, progress, devices, now);
    match command {
        Command::Pause if status != Running => return refuse("only a running rollout can be paused"),
        Command::Pause => {
            run.progress.status = Paused;
            run.event("rollout-paused", None, "paused by the operator".into());
        }
        Command::Resume if status != Paused => return refuse("only a paused rollout can be resumed"),
        Command::Resume => {
            run.progress.status = Running;
            run.progress.failures_accepted = run.count(|d| d.status == DeviceStatus::Failed);
            let accepted = run.progress.failures_accepted;
            run.event(
                "rollout-resumed",
                None,
                format!("resumed by the operator, accepting {}", devices_text(accepted, "failed device")),
            );
        }
        Command::Promote if !matches!(status, Running | Paused) => {
            return refuse("only a running or paused rollout can be promoted")
        }
        Command::Promote => {
            if status == Paused {
                run.progress.failures_accepted = run.count(|d| d.status == DeviceStatus::Failed);
            }
            run.progress.status = Running;
            run.advance(" by the operator");
        }
        Command::Abort { .. } if !status.is_active() => {
            return refuse("only a running, paused or waiting rollout can be aborted")
        }
        Command::Abort { rollback } => {
            let successor = progress.superseded_by.map(|id| format!("; rollout {id} starts now")).unwrap_or_default();
            if rollback {
                run.roll_back(&format!("aborted by the operator{successor}"));
            } else {
                run.progress.status = Aborted;
                run.event("rollout-aborted", None, format!("aborted by the operator{successor}"));
            }
            run.hand_over = progress.superseded_by.is_some();
        }
    }
    Ok(run.finish())
}

/// A step being worked out: the working copies, and what to do.
struct Run<'a> {
    plan: &'a RolloutPlan,
    before: &'a [RolloutDevice],
    now: i64,
    progress: RolloutProgress,
    devices: Vec<RolloutDevice>,
    assign: Vec<String>,
    revert: Vec<String>,
    events: Vec<RolloutEvent>,
    hand_over: bool,
}

impl<'a> Run<'a> {
    fn new(plan: &'a RolloutPlan, progress: &RolloutProgress, devices: &'a [RolloutDevice], now: i64) -> Run<'a> {
        Run {
            plan,
            before: devices,
            now,
            progress: progress.clone(),
            devices: devices.to_vec(),
            assign: Vec::new(),
            revert: Vec::new(),
            events: Vec::new(),
            hand_over: false,
        }
    }

    fn finish(self) -> Step {
        let changes =
            self.devices.iter().zip(self.before).filter(|(now, was)| now != was).map(|(d, _)| d.clone()).collect();
        Step {
            progress: self.progress,
            changes,
            assign: self.assign,
            revert: self.revert,
            events: self.events,
            hand_over: self.hand_over,
        }
    }

    fn running(&mut self) {
        let Some(wave) = self.progress.current_wave else {
            self.advance("");
            return;
        };
        self.judge_waves(0, wave);
        if self.stopped_by_failures() {
            return;
        }
        if self.wave_done(wave) {
            self.advance("");
        }
    }

    fn wave_count(&self) -> usize {
        self.progress.wave_count.max(1)
    }

    /// A device's wave; one beyond the plan's (stored before a plan had fewer) is the last.
    fn wave_of(&self, device: &RolloutDevice) -> usize {
        device.wave.min(self.wave_count() - 1)
    }

    fn count(&self, which: impl Fn(&RolloutDevice) -> bool) -> u64 {
        self.devices.iter().filter(|d| which(d)).count() as u64
    }

    fn event(&mut self, kind: &'static str, device: Option<&str>, message: String) {
        self.events.push(RolloutEvent { kind, device: device.map(str::to_string), message });
    }

    /// The current wave is over (or promoted): hand over, succeed, or start the next wave
    /// that has devices (waves with none are passed through) and give them the release.
    fn advance(&mut self, by: &str) {
        if self.progress.superseded_by.is_some() {
            self.supersede();
            return;
        }
        let next = self.progress.current_wave.map_or(0, |w| w.saturating_add(1));
        let Some(wave) = self.devices.iter().map(|d| self.wave_of(d)).filter(|w| *w >= next).min() else {
            self.progress.status = RolloutStatus::Succeeded;
            let message = if by.is_empty() {
                format!("every wave of {} is done", self.wave_count())
            } else {
                format!("promoted past its last wave{by}")
            };
            self.event("rollout-succeeded", None, message);
            return;
        };
        self.progress.current_wave = Some(wave);
        self.progress.wave_started_at = Some(self.now);
        let size = self.count(|d| self.wave_of(d) == wave);
        let skipped = match wave - next {
            0 => String::new(),
            1 => format!(" (wave {} has none)", next + 1),
            _ => format!(" (waves {} to {} have none)", next + 1, wave),
        };
        let message = format!(
            "wave {} of {} started{by}: {}{skipped}",
            wave + 1,
            self.wave_count(),
            devices_text(size, "device")
        );
        self.event("wave-started", None, message);
        self.judge_waves(wave, wave);
    }

    /// Superseded: the waiting rollout takes over (at a wave boundary, or at once when paused).
    fn supersede(&mut self) {
        let at = match self.progress.current_wave {
            _ if self.progress.status == RolloutStatus::Paused => "while paused".to_string(),
            Some(w) => format!("at the end of wave {}", w + 1),
            None => "before its first wave".to_string(),
        };
        let successor =
            self.progress.superseded_by.map_or_else(|| "another rollout".into(), |id| format!("rollout {id}"));
        self.progress.status = RolloutStatus::Superseded;
        self.hand_over = true;
        self.event("rollout-superseded", None, format!("superseded by {successor} {at}"));
    }

    /// Failures beyond `maxFailures` (those accepted by a resume left out) pause the
    /// rollout or roll it back. True if they did.
    fn stopped_by_failures(&mut self) -> bool {
        let failed = self.count(|d| d.status == DeviceStatus::Failed);
        let failures = failed.saturating_sub(self.progress.failures_accepted);
        let given = self.count(|d| {
            d.assigned || matches!(d.status, DeviceStatus::Updating | DeviceStatus::Healthy | DeviceStatus::Failed)
        });
        let limit = &self.plan.max_failures;
        let why = if failures > limit.count_limit() {
            format!("{} (maxFailures.count is {})", devices_text(failures, "failed device"), limit.count_limit())
        } else {
            match limit.percent {
                Some(p) if failures.saturating_mul(100) > u64::from(p).saturating_mul(given) => {
                    format!("{failures} of {} failed (maxFailures.percent is {p})", devices_text(given, "device"))
                }
                _ => return false,
            }
        };
        match self.plan.on_failure {
            OnFailure::Pause => {
                self.progress.status = RolloutStatus::Paused;
                self.event("rollout-paused", None, format!("paused: {why}"));
            }
            OnFailure::Rollback => self.roll_back(&why),
        }
        true
    }

    /// Rolled back: every device given the release is put back on what it ran before.
    fn roll_back(&mut self, why: &str) {
        self.progress.status = RolloutStatus::RolledBack;
        // A rollout waiting to supersede this one starts now: its wave boundary never comes.
        self.hand_over = self.progress.superseded_by.is_some();
        for device in self.devices.iter_mut().filter(|d| d.assigned) {
            device.assigned = false;
            self.revert.push(device.uuid.clone());
        }
        let message = format!(
            "rolled back ({why}): {} put back on what they ran before",
            devices_text(self.revert.len() as u64, "device")
        );
        self.event("rollout-rolled-back", None, message);
    }

    /// The wave has enough healthy devices among those not deferred, and has baked since
    /// the last of them turned healthy. Failures the operator accepted (a resume) do not
    /// hold it back; a wave of deferred devices only waits; a wave whose devices all left
    /// the fleet is done.
    fn wave_done(&self, wave: usize) -> bool {
        let in_wave: Vec<&RolloutDevice> = self.devices.iter().filter(|d| self.wave_of(d) == wave).collect();
        if in_wave.is_empty() {
            return true;
        }
        let count = |status| in_wave.iter().filter(|d| d.status == status).count() as u64;
        let failed = count(DeviceStatus::Failed).saturating_sub(self.progress.failures_accepted);
        let healthy = count(DeviceStatus::Healthy);
        let counted = count(DeviceStatus::Updating) + healthy + failed;
        if counted == 0 {
            // Only accepted failures left: nothing to wait for. Deferred or pending ones: wait.
            return count(DeviceStatus::Deferred) + count(DeviceStatus::Pending) == 0;
        }
        let last_healthy =
            in_wave.iter().filter(|d| d.status == DeviceStatus::Healthy).filter_map(|d| d.healthy_at).max();
        healthy.saturating_mul(100) >= u64::from(self.plan.success_percent).saturating_mul(counted)
            && last_healthy.is_some_and(|at| self.now >= later(at, self.plan.bake_time))
    }

    /// Judge the devices of waves `first..=last` on what they are observed doing.
    fn judge_waves(&mut self, first: usize, last: usize) {
        for i in 0..self.devices.len() {
            let wave = self.wave_of(&self.devices[i]);
            if (first..=last).contains(&wave) {
                self.judge_device(i);
            }
        }
    }

    fn judge_device(&mut self, i: usize) {
        let may_give = self.progress.status == RolloutStatus::Running;
        let device = &self.devices[i];
        let deferral = match device.observation {
            Observation::Offline => Some("offline"),
            Observation::OutsideWindow => Some("outside its update window"),
            Observation::Pinned => Some("pinned to its own target"),
            _ => None,
        };
        match device.status {
            DeviceStatus::Pending | DeviceStatus::Deferred if !device.assigned => match deferral {
                Some(reason) => self.defer(i, reason),
                None if may_give => self.give(i),
                None if device.status == DeviceStatus::Deferred => {
                    self.devices[i].reason = Some("waiting: the rollout is paused".into());
                }
                None => {}
            },
            // It has the release as its target: its update window no longer matters.
            DeviceStatus::Deferred | DeviceStatus::Updating => match (&device.observation, deferral) {
                (Observation::OutsideWindow, _) | (_, None) => {
                    if device.status == DeviceStatus::Deferred {
                        let device = &mut self.devices[i];
                        device.status = DeviceStatus::Updating;
                        device.reason = None;
                        device.updating_since = Some(self.now);
                    }
                    self.judge_updating(i);
                }
                (_, Some(reason)) => self.defer(i, reason),
            },
            DeviceStatus::Pending | DeviceStatus::Healthy | DeviceStatus::Failed => {}
        }
    }

    /// An updating device (with the release as its target): healthy, failed, or on.
    fn judge_updating(&mut self, i: usize) {
        let (now, bake, timeout) = (self.now, self.plan.bake_time, self.plan.device_timeout);
        let device = &mut self.devices[i];
        let since = *device.updating_since.get_or_insert(now);
        let late = format!("not healthy within {} of getting the release", duration_text(timeout));
        match device.observation.clone() {
            Observation::Healthy => self.healthy(i, "every service runs the release and passed probation".into()),
            Observation::RunningUnproven { fingerprint } => {
                if device.running_since.is_none() || device.fingerprint.as_deref() != Some(fingerprint.as_str()) {
                    device.running_since = Some(now);
                    device.fingerprint = Some(fingerprint);
                }
                let running_since = device.running_since.unwrap_or(now);
                if now >= later(running_since, bake) {
                    self.healthy(
                        i,
                        format!("ran every service of the release for {} without a restart", duration_text(bake)),
                    );
                } else if running_since > later(since, timeout) {
                    // It kept restarting: it got no steady start within the timeout.
                    self.fail(i, late);
                }
            }
            Observation::Failed(reason) => self.fail(i, reason),
            Observation::Updating | Observation::OutsideWindow | Observation::Offline | Observation::Pinned => {
                device.running_since = None;
                device.fingerprint = None;
                if now > later(since, timeout) {
                    self.fail(i, late);
                }
            }
        }
    }

    fn give(&mut self, i: usize) {
        let device = &mut self.devices[i];
        device.status = DeviceStatus::Updating;
        device.assigned = true;
        device.reason = None;
        device.updating_since = Some(self.now);
        device.healthy_at = None;
        device.running_since = None;
        device.fingerprint = None;
        self.assign.push(device.uuid.clone());
    }

    fn defer(&mut self, i: usize, reason: &str) {
        let device = &mut self.devices[i];
        let newly = device.status != DeviceStatus::Deferred;
        device.status = DeviceStatus::Deferred;
        device.reason = Some(reason.to_string());
        device.running_since = None;
        device.fingerprint = None;
        if newly {
            let uuid = device.uuid.clone();
            self.event("device-deferred", Some(&uuid), format!("{uuid} deferred: {reason}"));
        }
    }

    fn healthy(&mut self, i: usize, how: String) {
        let device = &mut self.devices[i];
        device.status = DeviceStatus::Healthy;
        device.reason = None;
        device.healthy_at = Some(self.now);
        let uuid = device.uuid.clone();
        self.event("device-healthy", Some(&uuid), format!("{uuid} is healthy: {how}"));
    }

    fn fail(&mut self, i: usize, reason: String) {
        let device = &mut self.devices[i];
        device.status = DeviceStatus::Failed;
        let uuid = device.uuid.clone();
        let message = format!("{uuid} failed: {reason}");
        device.reason = Some(reason);
        self.event("device-failed", Some(&uuid), message);
    }
}

/// `at` plus `seconds`, saturating.
fn later(at: i64, seconds: u64) -> i64 {
    at.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX))
}

/// `1 device`, `3 devices`.
fn devices_text(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Seconds as the plan would write them: `30m`, `2h`, `90s`.
fn duration_text(seconds: u64) -> String {
    match seconds {
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
