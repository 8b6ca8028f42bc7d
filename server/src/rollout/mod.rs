//! Staged rollouts of a fleet's release, as pure decisions: which devices go in which wave
//! (`waves`), what a device's reports say of the release (`observe`), and the one step
//! that moves a rollout on (`step`), a function of (rollout, device states, now) that the
//! driver (`rollout_driver.rs`) applies to the store. Nothing here does I/O.

pub mod observe;
pub mod plan;
pub mod step;
#[cfg(test)]
mod step_tests;
pub mod waves;

pub use observe::{observe, Observation, ReleaseImages, ReleaseService, Standing};
pub use plan::{MaxFailures, OnFailure, RolloutPlan, WaveSpec};
pub use step::{command, step, Command, Step};
pub use waves::{assign_waves, FleetMember};

use serde::{Deserialize, Serialize};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutStatus {
    /// Created with `supersede` while another rollout runs: starts at that one's next
    /// wave boundary.
    Waiting,
    Running,
    Paused,
    Succeeded,
    Aborted,
    RolledBack,
    /// Another rollout took over at a wave boundary.
    Superseded,
}

impl RolloutStatus {
    /// Running, paused or waiting: it may still give devices its release.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutStatus::Waiting | RolloutStatus::Running | RolloutStatus::Paused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Waiting => "waiting",
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::Succeeded => "succeeded",
            RolloutStatus::Aborted => "aborted",
            RolloutStatus::RolledBack => "rolled-back",
            RolloutStatus::Superseded => "superseded",
        }
    }
}

/// A device's state within one rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceStatus {
    /// Its wave has not started.
    Pending,
    /// It was given the release and is not healthy yet.
    Updating,
    /// Every service of the release runs the release's digest and passed probation.
    Healthy,
    /// A rollback, a failed pull or start, or `deviceTimeout` while it polled.
    Failed,
    /// Offline, outside its update window, or pinned: counts neither for nor against the
    /// thresholds, and updates when that ends.
    Deferred,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Updating => "updating",
            DeviceStatus::Healthy => "healthy",
            DeviceStatus::Failed => "failed",
            DeviceStatus::Deferred => "deferred",
        }
    }
}

/// The stored, changing part of a rollout (its plan and release never change).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutProgress {
    pub status: RolloutStatus,
    /// The wave started last (0-based); `None` before the first starts.
    pub current_wave: Option<usize>,
    /// Unix seconds at which `current_wave` started.
    pub wave_started_at: Option<i64>,
    /// How many waves there are (the plan's, never fewer than 1).
    pub wave_count: usize,
    /// A waiting rollout (`supersede`) takes over at this one's next wave boundary.
    pub superseded_by: Option<u64>,
    /// Failures the operator accepted by resuming a paused rollout: `maxFailures`
    /// counts those beyond them.
    pub failures_accepted: u64,
}

/// One device of a rollout, as stored, with what it is observed doing now.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDevice {
    pub uuid: String,
    /// 0-based wave.
    pub wave: usize,
    pub status: DeviceStatus,
    /// Why it is failed or deferred (shown to the operator).
    pub reason: Option<String>,
    /// Unix seconds when it was given the release, or came back online after being
    /// deferred with the release already given: `deviceTimeout` counts from here.
    pub updating_since: Option<i64>,
    /// Unix seconds when it turned healthy.
    pub healthy_at: Option<i64>,
    /// Whether the release is its target (it was given it and not put back since).
    pub assigned: bool,
    /// Unix seconds since which it has been seen running every service of the release
    /// without a restart, for agents that do not report probation (`RunningUnproven`).
    pub running_since: Option<i64>,
    /// The containers seen then: a change is a restart.
    pub fingerprint: Option<String>,
    /// What its presence, update window, pin and last report say now.
    pub observation: Observation,
}

/// Something that happened, for `GET /events` (`kind` e.g. `wave-started`,
/// `device-healthy`, `device-failed`, `device-deferred`, `rollout-paused`,
/// `rollout-resumed`, `rollout-succeeded`, `rollout-aborted`, `rollout-rolled-back`,
/// `rollout-superseded`).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutEvent {
    pub kind: &'static str,
    pub device: Option<String>,
    pub message: String,
}
