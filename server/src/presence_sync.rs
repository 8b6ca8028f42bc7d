//! Replicas on one database share when each device last polled: every few seconds each
//! writes the polls it answered (`Presence::take_unshared`) and takes the others'
//! (`Presence::polled_elsewhere`), so the replica stepping rollouts judges every device
//! by all of its polls, whichever replica answered them. Times cross replicas as wall
//! clock (unix milliseconds); within one, as the monotonic clock.

use crate::presence::Presence;
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often polls are shared: a device is judged offline after minutes, and a rollout
/// waits that long for it, so seconds of delay change no decision.
pub const SHARE_EVERY: Duration = Duration::from_secs(2);

/// Shares polls every `every`, on a thread of its own, for as long as the server runs.
pub fn spawn(store: Arc<dyn Store>, presence: Arc<Presence>, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new().name("presence".into()).spawn(move || {
        let mut read_from = 0;
        loop {
            std::thread::sleep(every);
            read_from = share(store.as_ref(), &presence, read_from, every);
        }
    })?;
    Ok(())
}

/// One round: writes this replica's polls, takes every poll recorded since `read_from`
/// (unix ms) less a margin for replicas that write late; returns where the next starts.
pub fn share(store: &dyn Store, presence: &Presence, read_from: i64, every: Duration) -> i64 {
    let (wall, now) = (unix_millis(SystemTime::now()), Instant::now());
    let mine: Vec<(String, i64)> = presence
        .take_unshared()
        .into_iter()
        .map(|(uuid, at)| (uuid, wall - now.saturating_duration_since(at).as_millis() as i64))
        .collect();
    if !mine.is_empty() {
        if let Err(e) = store.record_polls(&mine) {
            log::warn!("sharing {} polls with the other replicas: {e}", mine.len());
        }
    }
    let margin = 3 * every.as_millis() as i64;
    match store.polls_since(read_from - margin) {
        Ok(polls) => {
            for (uuid, at) in polls {
                let ago = Duration::from_millis(wall.saturating_sub(at).max(0) as u64);
                presence.polled_elsewhere(&uuid, now.checked_sub(ago).unwrap_or(now));
            }
            wall
        }
        Err(e) => {
            log::warn!("reading the other replicas' polls: {e}");
            read_from
        }
    }
}

fn unix_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewTarget, PollAnswer, SqlStore};

    #[test]
    fn a_poll_answered_by_one_replica_is_known_to_the_other_after_a_round() {
        let store = SqlStore::in_memory().unwrap();
        let poll = PollAnswer { etag: "\"e\"".into(), body: "{}".into() };
        let target = NewTarget {
            state: "{}",
            poll: &poll,
            references: &[],
            registries: &[],
            source: "operator",
            expected_version: None,
            supersedes_pending: true,
            release: None,
        };
        store.set_target("d1", &target).unwrap();
        let start = Instant::now();
        let (a, b) = (Presence::shared(start), Presence::shared(start));
        a.polled("d1", Instant::now());
        assert!(!b.has_polled("d1"));
        let read_from = share(&store, &a, 0, SHARE_EVERY);
        share(&store, &b, 0, SHARE_EVERY);
        assert!(b.has_polled("d1"), "b learnt of a's poll");
        let (_, since) = b.connectivity("d1", Instant::now());
        assert!(since.unwrap() < Duration::from_secs(5), "{since:?}");
        assert!(read_from > 0);
    }
}
