//! A rollout plan as the operator writes it (`POST /fleets/{fleet}/rollouts`, a fleet's
//! `rolloutPlan`): the waves, how long a wave bakes, when it counts as a success and when
//! failures stop it. Checked once, when it is given; what is stored is valid.

use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most waves a plan may have.
pub const MAX_WAVES: usize = 20;
/// The most labels one wave may select on.
pub const MAX_WAVE_LABELS: usize = 8;
/// The longest bake, timeout or minimum age: a year.
pub const MAX_DURATION: u64 = 366 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutPlan {
    #[serde(default = "default_waves")]
    pub waves: Vec<WaveSpec>,
    /// How long a wave's last healthy device must stay so before the next wave starts;
    /// for agents that do not report probation, how long a release must run without a
    /// restart to count as healthy.
    #[serde(default = "default_bake_time", with = "duration_text")]
    pub bake_time: u64,
    /// The healthy share of a wave's devices (deferred ones left out) that starts the next.
    #[serde(default = "hundred")]
    pub success_percent: u8,
    #[serde(default)]
    pub max_failures: MaxFailures,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// A device given the release that polls but is not healthy within this has failed.
    #[serde(default = "default_device_timeout", with = "duration_text")]
    pub device_timeout: u64,
    /// A new digest of a followed tag waits until it is this old before a release is
    /// made of it (fleets with `autoUpdate`); 0: at once.
    #[serde(default, with = "duration_text")]
    pub minimum_age: u64,
}

/// One wave: exactly one of its selectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaveSpec {
    /// This many more devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<u64>,
    /// Up to this percent of the fleet, counting earlier waves (cumulative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Every device not in an earlier wave whose labels include all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Failures (within the rollout so far) beyond which it stops: more than `count`, or more
/// than `percent` of the devices given the release. Either passed is enough; neither
/// given: the first failure stops it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaxFailures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

impl MaxFailures {
    /// The failures allowed by count: `count`, else none when no percent is given
    /// either, else any number (the percent alone decides).
    pub fn count_limit(&self) -> u64 {
        match (self.count, self.percent) {
            (Some(count), _) => count,
            (None, None) => 0,
            (None, Some(_)) => u64::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    #[default]
    Pause,
    /// Put every device the rollout updated back on the release it ran before.
    Rollback,
}

fn default_waves() -> Vec<WaveSpec> {
    vec![
        WaveSpec { devices: Some(1), percent: None, labels: None },
        WaveSpec { devices: None, percent: Some(100), labels: None },
    ]
}
fn default_bake_time() -> u64 {
    15 * 60
}
fn default_device_timeout() -> u64 {
    30 * 60
}
fn hundred() -> u8 {
    100
}

impl Default for RolloutPlan {
    /// A canary, then the rest: 15 minutes' bake, every device healthy, no failure allowed.
    fn default() -> RolloutPlan {
        RolloutPlan {
            waves: default_waves(),
            bake_time: default_bake_time(),
            success_percent: 100,
            max_failures: MaxFailures::default(),
            on_failure: OnFailure::Pause,
            device_timeout: default_device_timeout(),
            minimum_age: 0,
        }
    }
}

impl RolloutPlan {
    /// A plan from JSON, checked: each wave has one selector, percents in 1..=100 that
    /// never go down, counts above 0, bounded label selectors.
    pub fn from_json(value: serde_json::Value) -> Result<RolloutPlan, Error> {
        let plan: RolloutPlan = serde_json::from_value(value)
            .map_err(|e| Error::BadRequest { reason: format!("the rollout plan is not valid: {e}") })?;
        plan.check()?;
        Ok(plan)
    }

    pub fn check(&self) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::Unprocessable { reason });
        if self.waves.is_empty() {
            return invalid("a rollout plan needs at least one wave".into());
        }
        if self.waves.len() > MAX_WAVES {
            return invalid(format!("a rollout plan has at most {MAX_WAVES} waves, not {}", self.waves.len()));
        }
        if !(1..=100).contains(&self.success_percent) {
            return invalid(format!("successPercent must be 1 to 100, not {}", self.success_percent));
        }
        if let Some(percent) = self.max_failures.percent.filter(|p| *p > 100) {
            return invalid(format!("maxFailures.percent must be 0 to 100, not {percent}"));
        }
        if self.device_timeout == 0 {
            return invalid("deviceTimeout must be more than 0".into());
        }
        for (name, seconds) in
            [("bakeTime", self.bake_time), ("deviceTimeout", self.device_timeout), ("minimumAge", self.minimum_age)]
        {
            if seconds > MAX_DURATION {
                return invalid(format!("{name} must be at most a year ({MAX_DURATION}s), not {seconds}s"));
            }
        }
        let mut last_percent = 0u8;
        for (i, wave) in self.waves.iter().enumerate() {
            let n = i + 1;
            let selectors = wave.devices.is_some() as u8 + wave.percent.is_some() as u8 + wave.labels.is_some() as u8;
            if selectors != 1 {
                return invalid(format!("wave {n} must have exactly one of devices, percent and labels"));
            }
            match (wave.devices, wave.percent, &wave.labels) {
                (Some(0), _, _) => return invalid(format!("wave {n} selects 0 devices")),
                (_, Some(p), _) if p == 0 || p > 100 => {
                    return invalid(format!("wave {n}: percent must be 1 to 100, not {p}"))
                }
                (_, Some(p), _) if p <= last_percent => {
                    return invalid(format!(
                        "wave {n}: percents are cumulative, so {p}% after {last_percent}% selects no device"
                    ))
                }
                (_, Some(p), _) => last_percent = p,
                (_, _, Some(labels)) if labels.is_empty() => return invalid(format!("wave {n} selects on no labels")),
                (_, _, Some(labels)) if labels.len() > MAX_WAVE_LABELS => {
                    return invalid(format!("wave {n} selects on more than {MAX_WAVE_LABELS} labels"))
                }
                (_, _, Some(labels)) => crate::fleets::check_labels(labels)
                    .map_err(|e| Error::Unprocessable { reason: format!("wave {n}: {e}") })?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Durations as text (`"15m"`, `"90"`, `"2h"`) or a number of seconds.
mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(seconds: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{seconds}s"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Seconds(u64),
            Text(String),
        }
        match Text::deserialize(deserializer)? {
            Text::Seconds(seconds) => Ok(seconds),
            Text::Text(text) => {
                pinion_model::duration::parse_duration(&text).map(|d| d.as_secs()).map_err(serde::de::Error::custom)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reason(value: serde_json::Value) -> String {
        RolloutPlan::from_json(value).unwrap_err().to_string()
    }

    #[test]
    fn a_plan_takes_durations_as_text_and_fills_defaults() {
        let plan =
            RolloutPlan::from_json(json!({"waves": [{"percent": 10}, {"percent": 100}], "bakeTime": "2m"})).unwrap();
        assert_eq!((plan.bake_time, plan.device_timeout, plan.success_percent), (120, 1800, 100));
        assert_eq!(plan.on_failure, OnFailure::Pause);
        assert_eq!(RolloutPlan::from_json(json!({})).unwrap(), RolloutPlan::default());
        let back = RolloutPlan::from_json(serde_json::to_value(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
    }

    #[test]
    fn bad_waves_are_named() {
        assert!(reason(json!({"waves": []})).contains("at least one wave"));
        assert!(reason(json!({"waves": [{"percent": 101}]})).contains("wave 1: percent must be 1 to 100"));
        assert!(reason(json!({"waves": [{"percent": 50}, {"percent": 20}]})).contains("wave 2"));
        assert!(reason(json!({"waves": [{"devices": 0}]})).contains("wave 1 selects 0 devices"));
        assert!(reason(json!({"waves": [{"devices": 1, "percent": 5}]})).contains("exactly one"));
        assert!(reason(json!({"waves": [{}]})).contains("exactly one"));
        assert!(reason(json!({"waves": [{"labels": {}}]})).contains("no labels"));
        assert!(reason(json!({"bakeTime": "soon"})).contains("invalid duration"));
        assert!(reason(json!({"onFailure": "explode"})).contains("unknown variant"));
        assert!(reason(json!({"successPercent": 0})).contains("successPercent"));
        assert!(reason(json!({"wavez": []})).contains("unknown field"));
        assert!(reason(json!({"minimumAge": "5124095576030431h"})).contains("minimumAge must be at most a year"));
        assert!(reason(json!({"waves": [{"labels": {"BAD KEY": "x"}}]})).contains("wave 1: label key"));
    }
}
