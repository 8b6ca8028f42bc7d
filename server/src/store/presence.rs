//! When each device last polled, shared by replicas: each one writes the polls it
//! answered, a few seconds at a time, and reads the others' (`replica_sync.rs`), so
//! that the replica stepping rollouts and every dashboard see every device's polls.

use super::sql::{args, db, DbError, Sql, SqlExt};
use super::SqlStore;
use crate::Error;

pub trait PresenceStore {
    /// Records polls (device, unix milliseconds): each device keeps its latest.
    fn record_polls(&self, polls: &[(String, i64)]) -> Result<(), Error>;
    /// Every device's latest poll recorded at or after `since` (unix milliseconds).
    fn polls_since(&self, since: i64) -> Result<Vec<(String, i64)>, Error>;
}

/// Polls written in one transaction at most.
const POLLS_PER_WRITE: usize = 500;

/// Records one batch of polls inside `tx`.
fn record_batch(tx: &mut dyn Sql, polls: &[(String, i64)]) -> Result<(), DbError> {
    for (uuid, at) in polls {
        // A device deleted meanwhile is left out (its row would outlive it).
        tx.execute(
            "INSERT INTO device_presence (uuid, last_poll_ms)
             SELECT uuid, ?2 FROM devices WHERE uuid = ?1
             ON CONFLICT (uuid) DO UPDATE SET last_poll_ms = CASE
                 WHEN excluded.last_poll_ms > device_presence.last_poll_ms THEN excluded.last_poll_ms
                 ELSE device_presence.last_poll_ms END",
            args![uuid, at],
        )?;
    }
    Ok(())
}

impl PresenceStore for SqlStore {
    fn record_polls(&self, polls: &[(String, i64)]) -> Result<(), Error> {
        let failed = db("recording polls");
        // A few hundred a transaction: each short, whatever a burst of polls left to share.
        for batch in polls.chunks(POLLS_PER_WRITE) {
            self.write_bookkeeping("recording polls", |tx| record_batch(tx, batch).map_err(&failed))?;
        }
        Ok(())
    }

    fn polls_since(&self, since: i64) -> Result<Vec<(String, i64)>, Error> {
        self.read(|c| {
            c.query_map("SELECT uuid, last_poll_ms FROM device_presence WHERE last_poll_ms >= ?1", args![since], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db("reading polls"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_engines;
    use crate::store::Store;

    both_engines! {
        fn each_device_keeps_its_latest_poll_and_unknown_devices_are_left_out(store) {
            crate::store::testing::add_devices(&store, &["a", "b"]);
            store.record_polls(&[("a".into(), 2_000), ("b".into(), 1_000), ("gone".into(), 5_000)]).unwrap();
            store.record_polls(&[("a".into(), 1_500)]).unwrap(); // an older one, from a slower replica
            let mut polls = store.polls_since(0).unwrap();
            polls.sort();
            assert_eq!(polls, [("a".to_string(), 2_000), ("b".to_string(), 1_000)]);
            assert_eq!(store.polls_since(1_500).unwrap(), [("a".to_string(), 2_000)]);
            store.delete_device("a").unwrap();
            assert_eq!(store.polls_since(1_500).unwrap(), []);
        }
    }
}
