//! What each device was last judged (`device_status::judge`), kept in memory so that the
//! dashboard's refreshes, every few seconds over 10,000 devices, judge again only the
//! devices whose target version or last report changed since, instead of reading and
//! parsing every target state and report each time. An entry is good while the device's
//! target version and report time are the ones it was judged with, and for an "updating"
//! device only until it turns "drifting"; a report received here forgets it at once
//! (report times are to the second), and a judgement read before that report is not
//! kept. About 200 bytes a device.

use crate::device_status::{Judgement, SyncState, DRIFT_GRACE_SECS};
use crate::store::DeviceHead;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// What the overview and the state filter need of a device's judgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub sync: SyncState,
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
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Counts reports (`forget`); `forgotten` says at which count each device last reported.
    generation: u64,
    forgotten: HashMap<String, u64>,
}

impl Verdicts {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The count of reports so far: taken before reading devices, it tells `put` whether
    /// a device reported after it was read.
    pub fn generation(&self) -> u64 {
        self.inner().generation
    }

    /// The verdict on `head` at `now` (Unix seconds), if it still holds.
    pub fn get(&self, head: &DeviceHead, now: u64) -> Option<Verdict> {
        let inner = self.inner();
        let entry = inner.entries.get(&head.device.uuid)?;
        let current = entry.target_version == head.device.target_version
            && entry.reported_at == head.device.last_report_at
            && entry.recheck_at.is_none_or(|at| now < at);
        current.then(|| entry.verdict.clone())
    }

    /// Keeps `judgement` of `head`, read when the generation was `read_at`, unless the
    /// device has reported since; the verdict it makes.
    pub fn put(&self, head: &DeviceHead, judgement: &Judgement, target_set_at: Option<u64>, read_at: u64) -> Verdict {
        let verdict = Verdict { sync: judgement.sync, reason: judgement.reason.clone() };
        // An updating device turns drifting once the grace after its target has passed.
        let recheck_at = match judgement.sync {
            SyncState::Updating => target_set_at.map(|at| at.saturating_add(DRIFT_GRACE_SECS)),
            _ => None,
        };
        let mut inner = self.inner();
        if inner.forgotten.get(&head.device.uuid).is_some_and(|&reported| reported > read_at) {
            return verdict;
        }
        let entry = Entry {
            target_version: head.device.target_version,
            reported_at: head.device.last_report_at.clone(),
            recheck_at,
            verdict: verdict.clone(),
        };
        inner.entries.insert(head.device.uuid.clone(), entry);
        verdict
    }

    /// Forgets what `uuid` was judged: it has just reported.
    pub fn forget(&self, uuid: &str) {
        let mut inner = self.inner();
        inner.generation += 1;
        let generation = inner.generation;
        inner.entries.remove(uuid);
        inner.forgotten.insert(uuid.to_string(), generation);
    }

    /// Forgets the devices not among `heads` (all devices): deleted ones. Only when there
    /// are more entries than devices, so a refresh pays nothing for it; an entry of a
    /// deleted device otherwise waits for the next deletion (its uuid registered again
    /// starts with target version 0 and no report, which is "no target" anyway).
    pub fn keep_only(&self, heads: &[DeviceHead]) {
        let mut inner = self.inner();
        if inner.entries.len() > heads.len() || inner.forgotten.len() > heads.len() {
            let present: HashSet<&str> = heads.iter().map(|h| h.device.uuid.as_str()).collect();
            inner.entries.retain(|uuid, _| present.contains(uuid.as_str()));
            inner.forgotten.retain(|uuid, _| present.contains(uuid.as_str()));
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

    fn judged(sync: SyncState) -> Judgement {
        Judgement { sync, reason: None, services: Vec::new() }
    }

    #[test]
    fn a_verdict_holds_until_the_target_or_the_report_changes() {
        let verdicts = Verdicts::default();
        let a = head("a", 3, Some("2026-12-07T10:00:00Z"));
        assert_eq!(verdicts.get(&a, 100), None);
        verdicts.put(&a, &judged(SyncState::InSync), Some(50), 0);
        assert_eq!(verdicts.get(&a, 1_000_000).map(|v| v.sync), Some(SyncState::InSync));
        assert_eq!(verdicts.get(&head("a", 4, Some("2026-12-07T10:00:00Z")), 100), None);
        assert_eq!(verdicts.get(&head("a", 3, Some("2026-12-07T10:00:01Z")), 100), None);
        assert_eq!(verdicts.get(&head("b", 3, Some("2026-12-07T10:00:00Z")), 100), None);
    }

    #[test]
    fn an_updating_verdict_is_judged_again_once_it_could_be_drifting() {
        let verdicts = Verdicts::default();
        let a = head("a", 1, None);
        verdicts.put(&a, &judged(SyncState::Updating), Some(1000), 0);
        assert!(verdicts.get(&a, 1000 + DRIFT_GRACE_SECS - 1).is_some());
        assert!(verdicts.get(&a, 1000 + DRIFT_GRACE_SECS).is_none());
    }

    #[test]
    fn a_judgement_read_before_a_report_is_not_kept() {
        let verdicts = Verdicts::default();
        let a = head("a", 1, Some("2026-12-07T10:00:00Z"));
        let read_at = verdicts.generation();
        // The device reports (within the same second) while its old report is judged.
        verdicts.forget("a");
        verdicts.put(&a, &judged(SyncState::Updating), Some(0), read_at);
        assert!(verdicts.get(&a, 1).is_none());
        verdicts.put(&a, &judged(SyncState::InSync), Some(0), verdicts.generation());
        assert_eq!(verdicts.get(&a, 1).map(|v| v.sync), Some(SyncState::InSync));
    }

    #[test]
    fn deleted_devices_are_forgotten() {
        let verdicts = Verdicts::default();
        let (a, b) = (head("a", 1, None), head("b", 1, None));
        verdicts.put(&a, &judged(SyncState::NoTarget), None, 0);
        verdicts.put(&b, &judged(SyncState::NoTarget), None, 0);
        verdicts.keep_only(std::slice::from_ref(&b));
        assert!(verdicts.get(&a, 0).is_none());
        assert!(verdicts.get(&b, 0).is_some());
    }
}
