//! The rate limits' events (a refused authentication, a registration) of replicas, so
//! that a client spreading its guesses over several replicas meets one limit: each
//! replica writes the events it counted, a few seconds at a time, and counts the
//! others' (`replica_sync.rs`). Rows older than ten minutes (far past any limit's
//! minute) are dropped as new ones come. Approximate by design: an event whose write
//! commits after a later-numbered one was read is not counted elsewhere.

use super::sql::{args, db, SqlExt};
use super::SqlStore;
use crate::Error;

/// How long events are kept, in milliseconds.
const KEPT_MS: i64 = 600_000;

/// Events of one kind from one client: (`auth_failure` | `registration`, client key, count).
pub type RateEvents = Vec<(String, String, u32)>;

pub trait RateEventStore {
    /// Records what `replica` counted at `at_ms` (unix milliseconds).
    fn record_rate_events(&self, replica: &str, events: &RateEvents, at_ms: i64) -> Result<(), Error>;
    /// Events other replicas recorded after event `after`, and the last event's number
    /// (`after` when there is none); `after: None` skips to the present.
    fn rate_events_after(&self, replica: &str, after: Option<i64>) -> Result<(RateEvents, i64), Error>;
}

impl RateEventStore for SqlStore {
    fn record_rate_events(&self, replica: &str, events: &RateEvents, at_ms: i64) -> Result<(), Error> {
        let failed = db("recording rate-limit events");
        self.write_bookkeeping("recording rate-limit events", |tx| {
            tx.execute("DELETE FROM rate_events WHERE at_ms < ?1", args![at_ms - KEPT_MS]).map_err(&failed)?;
            for (kind, client, count) in events {
                tx.execute(
                    "INSERT INTO rate_events (replica, kind, client, count, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![replica, kind, client, i64::from(*count), at_ms],
                )
                .map_err(&failed)?;
            }
            Ok(())
        })
    }

    fn rate_events_after(&self, replica: &str, after: Option<i64>) -> Result<(RateEvents, i64), Error> {
        let failed = db("reading rate-limit events");
        self.read(|c| {
            let last: i64 = c.query_row("SELECT COALESCE(max(id), 0) FROM rate_events", args![], |r| r.get(0)).map_err(&failed)?;
            let Some(after) = after else { return Ok((Vec::new(), last)) };
            let events = c
                .query_map(
                    "SELECT kind, client, count FROM rate_events WHERE id > ?1 AND id <= ?2 AND replica <> ?3 ORDER BY id",
                    args![after, last, replica],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get::<i64>(2)?.clamp(0, i64::from(u32::MAX)) as u32)),
                )
                .map_err(&failed)?;
            Ok((events, last.max(after)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_engines;

    both_engines! {
        fn a_replica_reads_the_others_events_once_and_never_its_own(store) {
            let (_, start) = store.rate_events_after("b", None).unwrap();
            let events = vec![("auth_failure".to_string(), "192.0.2.7".to_string(), 3)];
            store.record_rate_events("a", &events, 1_000_000).unwrap();
            store.record_rate_events("b", &vec![("registration".into(), "192.0.2.8".into(), 1)], 1_000_000).unwrap();
            let (seen, next) = store.rate_events_after("b", Some(start)).unwrap();
            assert_eq!(seen, events, "a's events, not b's own");
            assert_eq!(store.rate_events_after("b", Some(next)).unwrap().0, [], "each event once");
            // Ten minutes on, the old rows go as new ones come.
            store.record_rate_events("a", &vec![], 1_000_000 + KEPT_MS + 1).unwrap();
            assert_eq!(store.rate_events_after("c", Some(0)).unwrap().0, []);
        }
    }
}
