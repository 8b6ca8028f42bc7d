//! What replicas on one database share every few seconds, through it: when each device
//! last polled (`Presence::take_unshared` written, `Presence::polled_elsewhere` read), so
//! the replica stepping rollouts judges every device by all of its polls; and the rate
//! limits' events (`ClientLimits::take_unshared`, `counted_elsewhere`), so a client
//! spreading guesses over the replicas meets one limit. Times cross replicas as wall
//! clock (unix milliseconds); within one, as the monotonic clock.

use crate::api::rate_limit::{ClientLimits, LimitKind};
use crate::presence::Presence;
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often replicas share: a device is judged offline after minutes, and a rate limit
/// counts a minute, so seconds of delay change little.
pub const SHARE_EVERY: Duration = Duration::from_secs(2);

/// What one replica shares, and where its reading has got to.
pub struct ReplicaSync {
    pub store: Arc<dyn Store>,
    pub presence: Arc<Presence>,
    pub limits: Arc<ClientLimits>,
    /// This process among the replicas (random): its own events are not read back.
    pub replica: String,
}

impl ReplicaSync {
    /// Shares every `every`, on a thread of its own, for as long as the server runs.
    pub fn spawn(self, every: Duration) -> std::io::Result<()> {
        std::thread::Builder::new().name("replica-sync".into()).spawn(move || {
            let mut polls_from = 0;
            let mut events_after = None;
            loop {
                std::thread::sleep(every);
                polls_from = share(self.store.as_ref(), &self.presence, polls_from, every);
                events_after = self.share_limits(events_after);
            }
        })?;
        Ok(())
    }

    /// Writes the events counted here, counts those other replicas wrote after event
    /// `after` (`None`: from now on); returns where the next round starts.
    pub fn share_limits(&self, after: Option<i64>) -> Option<i64> {
        let mine: Vec<(String, String, u32)> = self
            .limits
            .take_unshared()
            .into_iter()
            .map(|(kind, client, count)| (kind.as_str().to_string(), client.to_string(), count))
            .collect();
        if !mine.is_empty() {
            if let Err(e) = self.store.record_rate_events(&self.replica, &mine, unix_millis(SystemTime::now())) {
                log::warn!("sharing rate-limit events with the other replicas: {e}");
            }
        }
        match self.store.rate_events_after(&self.replica, after) {
            Ok((events, last)) => {
                let now = Instant::now();
                for (kind, client, count) in events {
                    if let (Some(kind), Ok(client)) = (LimitKind::parse(&kind), client.parse()) {
                        self.limits.counted_elsewhere(kind, client, count, now);
                    }
                }
                Some(last)
            }
            Err(e) => {
                log::warn!("reading the other replicas' rate-limit events: {e}");
                after
            }
        }
    }
}

/// One round of polls: writes this replica's, takes every poll recorded since `read_from`
/// (unix ms) less a margin for replicas that write late; returns where the next starts:
/// the latest poll read (never back, never past this replica's clock). Not this replica's clock alone:
/// stepped forward (NTP catching up), it would have the next rounds skip every poll the
/// others record with their right time.
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
            let latest = polls.iter().map(|(_, at)| *at).max();
            for (uuid, at) in polls {
                let ago = Duration::from_millis(wall.saturating_sub(at).max(0) as u64);
                presence.polled_elsewhere(&uuid, now.checked_sub(ago).unwrap_or(now));
            }
            latest.map_or(read_from, |latest| latest.min(wall).max(read_from))
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
    use crate::store::{PresenceStore, SqlStore};

    #[test]
    fn a_limit_reached_through_one_replica_holds_on_the_other_after_a_round() {
        let store: Arc<dyn Store> = Arc::new(SqlStore::in_memory().unwrap());
        let replica = |name: &str| ReplicaSync {
            store: Arc::clone(&store),
            presence: Arc::new(Presence::shared(Instant::now())),
            limits: Arc::new(ClientLimits::per_minute(2, 30).shared()),
            replica: name.into(),
        };
        let (a, b) = (replica("a"), replica("b"));
        let b_from = b.share_limits(None);
        let guesser = Some(std::net::SocketAddr::from(([192, 0, 2, 9], 1234)));
        a.limits.record_failure(guesser, Instant::now());
        a.limits.record_failure(guesser, Instant::now());
        a.share_limits(None);
        assert!(b.limits.admit(guesser, false, None, Instant::now()).is_ok());
        b.share_limits(b_from);
        assert!(b.limits.admit(guesser, false, None, Instant::now()).is_err(), "b counted a's failures");
    }

    #[test]
    fn a_poll_answered_by_one_replica_is_known_to_the_other_after_a_round() {
        let store = SqlStore::in_memory().unwrap();
        crate::store::testing::add_devices(&store, &["d1"]);
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

    #[test]
    fn the_next_round_reads_on_from_the_latest_poll_not_from_this_replicas_clock() {
        let store = SqlStore::in_memory().unwrap();
        crate::store::testing::add_devices(&store, &["d1"]);
        store.record_polls(&[("d1".to_string(), 1_000)]).unwrap();
        let b = Presence::shared(Instant::now());
        assert_eq!(share(&store, &b, 0, SHARE_EVERY), 1_000, "where the data is, whatever the clock says");
        assert_eq!(share(&store, &b, 5_000, SHARE_EVERY), 5_000, "nothing new: stays");
    }
}
