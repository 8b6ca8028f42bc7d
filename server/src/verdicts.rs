//! What each device was last judged (`device_status::judge`), kept in memory so that the
//! dashboard's refreshes, every few seconds over 10,000 devices, judge again only the
//! devices whose target version or last report changed since, instead of reading and
//! parsing every target state and report each time. An entry is good while the device's
//! target version and report time are the ones it was judged with, and for an "updating"
//! device only until it could turn "drifting"; a report received here forgets it at once
//! (report times are to the second). About 150 bytes a device.

use crate::device_status::{Judgement, Sync, DRIFT_GRACE_SECS};
use crate::store::DeviceHead;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// What the overview and the state filter need of a device's judgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub sync: Sync,
    pub reason: Option<String>,
}

struct Entry {
    target_version: u64,
    reported_at: Option<String>,
    /// Unix time after which it must be judged again, whatever changed.
    recheck_at: Option<u64>,
    verdict: Verdict,
}

#[derive(Default)]
pub struct Verdicts {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Verdicts {
    /// The verdict on `head` at `now` (Unix seconds), if it still holds.
    pub fn get(&self, head: &DeviceHead, now: u64) -> Option<Verdict> {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = entries.get(&head.device.uuid)?;
        let current = entry.target_version == head.device.target_version
            && entry.reported_at == head.device.last_report_at
            && entry.recheck_at.is_none_or(|at| now < at);
        current.then(|| entry.verdict.clone())
    }

    /// Keeps `judgement` of `head`; the verdict it makes.
    pub fn put(&self, head: &DeviceHead, judgement: &Judgement, target_set_at: Option<u64>) -> Verdict {
        let verdict = Verdict { sync: judgement.sync, reason: judgement.reason.clone() };
        // An updating device may turn drifting once the grace has passed, with no change.
        let recheck_at = match judgement.sync {
            Sync::Updating => Some(target_set_at.map_or(0, |at| at.saturating_add(DRIFT_GRACE_SECS))),
            _ => None,
        };
        let entry = Entry {
            target_version: head.device.target_version,
            reported_at: head.device.last_report_at.clone(),
            recheck_at,
            verdict: verdict.clone(),
        };
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(head.device.uuid.clone(), entry);
        verdict
    }

    /// Forgets what `uuid` was judged: it has just reported.
    pub fn forget(&self, uuid: &str) {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(uuid);
    }

    /// Forgets the devices not among `heads` (all devices): deleted ones. Only when there
    /// are more entries than devices, so a refresh pays nothing for it; an entry of a
    /// deleted device otherwise waits for the next deletion (its uuid registered again
    /// starts with another target version or report time anyway).
    pub fn keep_only(&self, heads: &[DeviceHead]) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() > heads.len() {
            let present: HashSet<&str> = heads.iter().map(|h| h.device.uuid.as_str()).collect();
            entries.retain(|uuid, _| present.contains(uuid.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeviceRecord, Membership};

    fn head(uuid: &str, target_version: u64, reported_at: Option<&str>) -> DeviceHead {
        DeviceHead {
            device: DeviceRecord {
                uuid: uuid.into(),
                device_name: None,
                device_type: None,
                registered: true,
                created_at: "2026-12-07T00:00:00Z".into(),
                registered_at: None,
                target_version,
                last_report_at: reported_at.map(str::to_string),
                id: 1,
                registration_complete: true,
                fleet: None,
                labels: Default::default(),
            },
            membership: Membership::default(),
            target_set_at: None,
        }
    }

    fn judged(sync: Sync) -> Judgement {
        Judgement { sync, reason: None, services: Vec::new() }
    }

    #[test]
    fn a_verdict_holds_until_the_target_or_the_report_changes() {
        let verdicts = Verdicts::default();
        let a = head("a", 3, Some("2026-12-07T10:00:00Z"));
        assert_eq!(verdicts.get(&a, 100), None);
        verdicts.put(&a, &judged(Sync::InSync), Some(50));
        assert_eq!(verdicts.get(&a, 1_000_000).map(|v| v.sync), Some(Sync::InSync));
        assert_eq!(verdicts.get(&head("a", 4, Some("2026-12-07T10:00:00Z")), 100), None);
        assert_eq!(verdicts.get(&head("a", 3, Some("2026-12-07T10:00:01Z")), 100), None);
        assert_eq!(verdicts.get(&head("b", 3, Some("2026-12-07T10:00:00Z")), 100), None);
    }

    #[test]
    fn an_updating_verdict_is_judged_again_once_it_could_be_drifting() {
        let verdicts = Verdicts::default();
        let a = head("a", 1, None);
        verdicts.put(&a, &judged(Sync::Updating), Some(1000));
        assert!(verdicts.get(&a, 1000 + DRIFT_GRACE_SECS - 1).is_some());
        assert!(verdicts.get(&a, 1000 + DRIFT_GRACE_SECS).is_none());
    }

    #[test]
    fn deleted_devices_are_forgotten() {
        let verdicts = Verdicts::default();
        let (a, b) = (head("a", 1, None), head("b", 1, None));
        verdicts.put(&a, &judged(Sync::NoTarget), None);
        verdicts.put(&b, &judged(Sync::NoTarget), None);
        verdicts.keep_only(std::slice::from_ref(&b));
        assert!(verdicts.get(&a, 0).is_none());
        assert!(verdicts.get(&b, 0).is_some());
    }
}
