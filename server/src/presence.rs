//! When each device last polled, kept in memory: a rollout defers a device that has not
//! polled for three of its poll intervals (`rollout_driver`). Polls answered from the poll
//! cache count too, so this costs a map lookup per poll and no write to the store.
//! The interval is what the device shows: the gap between its last two polls.
//! Replicas on one database share their polls every few seconds (`replica_sync.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval assumed for a device seen polling fewer than twice: the agent's default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// A device is offline after this many of its intervals without a poll.
pub const MISSED_POLLS: u32 = 3;
/// Bounds on a measured interval: a burst of polls does not make a device "offline"
/// after three milliseconds, and a long gap does not keep it "online" for days.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy)]
struct Seen {
    last: Instant,
    interval: Duration,
}

/// A device's polling as the dashboard shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    Online,
    Stale,
    Offline,
}

impl Connectivity {
    /// A device last heard of `gap` ago that polls every `interval`: online until it
    /// misses a second poll, stale until it misses `MISSED_POLLS`.
    pub fn after(gap: Duration, interval: Duration) -> Connectivity {
        if gap <= interval * 2 + MIN_INTERVAL {
            Connectivity::Online
        } else if gap <= interval * MISSED_POLLS + MIN_INTERVAL {
            Connectivity::Stale
        } else {
            Connectivity::Offline
        }
    }
}

pub struct Presence {
    /// Devices not seen since the server started count as seen then.
    started: Instant,
    seen: Mutex<HashMap<String, Seen>>,
    /// Polls answered here and not yet shared with the other replicas; `None` alone.
    unshared: Option<Mutex<HashMap<String, Instant>>>,
}

impl Default for Presence {
    fn default() -> Presence {
        Presence::new(Instant::now())
    }
}

impl Presence {
    pub fn new(now: Instant) -> Presence {
        Presence { started: now, seen: Mutex::new(HashMap::new()), unshared: None }
    }

    /// For one of several replicas: the polls it answers are kept for `take_unshared`.
    pub fn shared(now: Instant) -> Presence {
        Presence { unshared: Some(Mutex::default()), ..Presence::new(now) }
    }

    /// A poll by `uuid` (authenticated) at `now`.
    pub fn polled(&self, uuid: &str, now: Instant) {
        if let Some(unshared) = &self.unshared {
            unshared.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(uuid.to_string(), now);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Self::record(&mut seen, uuid, now);
    }

    /// A poll another replica answered at `at`, unless one as late is known here.
    pub fn polled_elsewhere(&self, uuid: &str, at: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.get(uuid).is_none_or(|entry| entry.last < at) {
            Self::record(&mut seen, uuid, at);
        }
    }

    /// The polls answered here since the last call (the latest of each device).
    pub fn take_unshared(&self) -> Vec<(String, Instant)> {
        match &self.unshared {
            Some(unshared) => std::mem::take(&mut *unshared.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
                .into_iter()
                .collect(),
            None => Vec::new(),
        }
    }

    fn record(seen: &mut HashMap<String, Seen>, uuid: &str, now: Instant) {
        match seen.get_mut(uuid) {
            Some(entry) => {
                let gap = now.saturating_duration_since(entry.last);
                // Several polls within a second (a retry, a restart) say nothing of the interval.
                if gap >= MIN_INTERVAL {
                    entry.interval = gap.min(MAX_INTERVAL);
                }
                entry.last = now;
            }
            None => {
                seen.insert(uuid.to_string(), Seen { last: now, interval: DEFAULT_POLL_INTERVAL });
            }
        }
    }

    /// Whether `uuid` has polled within `MISSED_POLLS` of its intervals.
    pub fn online(&self, uuid: &str, now: Instant) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Seen { last, interval } =
            seen.get(uuid).copied().unwrap_or(Seen { last: self.started, interval: DEFAULT_POLL_INTERVAL });
        // A second of slack: polls are not to the millisecond.
        now.saturating_duration_since(last) <= interval * MISSED_POLLS + MIN_INTERVAL
    }

    /// Whether `uuid` polls as often as it showed (online), has missed a poll (stale),
    /// or has missed `MISSED_POLLS` (offline); with how long ago it last polled, if it
    /// has since the server started.
    pub fn connectivity(&self, uuid: &str, now: Instant) -> (Connectivity, Option<Duration>) {
        let seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(uuid).copied();
        let Seen { last, interval } = seen.unwrap_or(Seen { last: self.started, interval: DEFAULT_POLL_INTERVAL });
        let gap = now.saturating_duration_since(last);
        (Connectivity::after(gap, interval), seen.map(|_| gap))
    }

    /// Whether `uuid` has polled since the server started (`pinion_devices`' never_seen).
    pub fn has_polled(&self, uuid: &str) -> bool {
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains_key(uuid)
    }

    /// Forgets a device (deleted).
    pub fn forget(&self, uuid: &str) {
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(uuid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_shares_its_own_polls_and_takes_only_later_ones_from_elsewhere() {
        let start = Instant::now();
        let s = Duration::from_secs;
        let presence = Presence::shared(start);
        presence.polled("a", start + s(10));
        presence.polled("a", start + s(20));
        assert_eq!(presence.take_unshared(), [("a".to_string(), start + s(20))]);
        assert!(presence.take_unshared().is_empty(), "each poll is shared once");
        presence.polled_elsewhere("a", start + s(15)); // older than what is known here
        assert_eq!(presence.connectivity("a", start + s(40)), (Connectivity::Online, Some(s(20))));
        presence.polled_elsewhere("a", start + s(30));
        presence.polled_elsewhere("b", start + s(30));
        assert_eq!(presence.connectivity("a", start + s(40)), (Connectivity::Online, Some(s(10))));
        assert!(presence.has_polled("b"));
        assert!(presence.take_unshared().is_empty(), "polls from elsewhere are not shared back");
        assert!(Presence::new(start).take_unshared().is_empty());
    }

    #[test]
    fn a_device_is_stale_after_a_missed_poll_and_offline_after_three() {
        let start = Instant::now();
        let presence = Presence::new(start);
        let s = Duration::from_secs;
        presence.polled("a", start);
        presence.polled("a", start + s(10));
        let at = |secs| presence.connectivity("a", start + s(10) + s(secs));
        assert_eq!(at(0), (Connectivity::Online, Some(s(0))));
        assert_eq!(at(21), (Connectivity::Online, Some(s(21))));
        assert_eq!(at(22).0, Connectivity::Stale);
        assert_eq!(at(31).0, Connectivity::Stale);
        assert_eq!(at(32), (Connectivity::Offline, Some(s(32))));
        // Never polled since the start: judged from the start, with no time of its own.
        assert_eq!(presence.connectivity("b", start + s(60)), (Connectivity::Online, None));
        assert_eq!(presence.connectivity("b", start + s(200)).0, Connectivity::Offline);
    }

    #[test]
    fn a_device_is_offline_after_three_of_its_own_intervals() {
        let start = Instant::now();
        let presence = Presence::new(start);
        let s = Duration::from_secs;
        // Never seen: as if seen at start, with the default interval.
        assert!(presence.online("a", start + s(180)));
        assert!(!presence.online("a", start + s(182)));
        presence.polled("a", start + s(10));
        presence.polled("a", start + s(15));
        assert!(presence.online("a", start + s(30)));
        assert!(!presence.online("a", start + s(32)));
        // A burst of polls keeps the measured interval.
        presence.polled("a", start + s(40));
        presence.polled("a", start + s(40) + Duration::from_millis(100));
        assert!(presence.online("a", start + s(110)));
        assert!(!presence.online("a", start + s(120)));
    }
}
