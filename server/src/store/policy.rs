//! Update policies per device and the updates they hold back. A moved tag that a device's
//! policy does not let through at once is kept here as a pending update — one per
//! (device, reference), the newest digest winning — until its window opens
//! (`apply_after`), or until the operator sets a target (`autoUpdate` off: no
//! `apply_after`, recorded only).

use super::sql::{args, db, DbError, Row, SqlExt};
use super::sql_store::Touches;
use super::SqlStore;
use crate::policy::{UpdatePolicy, UpdateWindow};
use crate::timefmt::rfc3339_now;
use crate::Error;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS update_policies (
    device_uuid      TEXT PRIMARY KEY REFERENCES devices(uuid) ON DELETE CASCADE,
    auto_update      INTEGER NOT NULL,
    window_start     TEXT,
    window_end       TEXT,
    window_timezone  TEXT,
    updated_at       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_updates (
    device_uuid  TEXT NOT NULL REFERENCES devices(uuid) ON DELETE CASCADE,
    reference    TEXT NOT NULL,
    digest       TEXT NOT NULL,
    detected_at  TEXT NOT NULL,
    apply_after  INTEGER,
    PRIMARY KEY (device_uuid, reference)
);
CREATE INDEX IF NOT EXISTS pending_updates_due ON pending_updates (apply_after) WHERE apply_after IS NOT NULL;
";

/// A new digest of a tag a device follows, held back by the device's update policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingUpdate {
    pub device_uuid: String,
    /// The canonical tag reference, e.g. `docker.io/library/nginx:latest`.
    pub reference: String,
    pub digest: String,
    /// RFC 3339, when this digest was first seen for this device.
    pub detected_at: String,
    /// Unix time from which it may be applied (its window's opening); `None` when
    /// `autoUpdate` is off and it is only recorded.
    pub apply_after: Option<i64>,
    /// The device's target version it was made from: once the target has moved on, it
    /// is dropped instead of applied. 0 when not known (made by an older server).
    pub from_version: u64,
}

pub trait PolicyStore {
    /// The device's own policy; `None` when it follows the server default.
    fn update_policy(&self, uuid: &str) -> Result<Option<UpdatePolicy>, Error>;
    /// Sets the device's own policy; `NotFound` for an unknown device.
    fn set_update_policy(&self, uuid: &str, policy: &UpdatePolicy) -> Result<(), Error>;
    /// Removes the device's own policy (it follows the default again); `false` if it had none.
    fn delete_update_policy(&self, uuid: &str) -> Result<bool, Error>;
    /// The own policies of a fleet's devices (those that have one), in one read.
    fn fleet_device_policies(&self, fleet: &str) -> Result<std::collections::HashMap<String, UpdatePolicy>, Error>;

    /// Adds or replaces the pending update of (device, reference): the newest digest
    /// wins. Re-adding the same digest keeps its `detected_at` and takes the new
    /// `apply_after`.
    fn add_pending_update(&self, pending: &PendingUpdate) -> Result<(), Error>;
    /// A device's pending updates, by reference.
    fn pending_updates(&self, uuid: &str) -> Result<Vec<PendingUpdate>, Error>;
    /// Every pending update whose `apply_after` is set and not after `now_unix`, oldest
    /// first. Recorded-only ones (no `apply_after`) are never due.
    fn due_pending_updates(&self, now_unix: i64) -> Result<Vec<PendingUpdate>, Error>;
    /// Drops a device's pending updates: all of them, or those of `references`.
    fn clear_pending_updates(&self, uuid: &str, references: Option<&[String]>) -> Result<(), Error>;
}

const PENDING_COLUMNS: &str = "device_uuid, reference, digest, detected_at, apply_after, from_version";

fn pending_from_row(row: &Row) -> Result<PendingUpdate, DbError> {
    Ok(PendingUpdate {
        device_uuid: row.get(0)?,
        reference: row.get(1)?,
        digest: row.get(2)?,
        detected_at: row.get(3)?,
        apply_after: row.get(4)?,
        from_version: row.get::<i64>(5)?.max(0) as u64,
    })
}

type PolicyRow = (bool, Option<String>, Option<String>, Option<String>);

fn policy_from_row(uuid: &str, (auto_update, start, end, timezone): PolicyRow) -> Result<UpdatePolicy, Error> {
    let update_window = match (start, end, timezone) {
        (Some(start), Some(end), Some(timezone)) => {
            // Re-validated on the way out: a time zone the system tzdb no longer
            // knows is an error here rather than a silently wrong window.
            Some(UpdateWindow::new(&start, &end, &timezone).map_err(|e| Error::Store {
                op: "reading an update policy",
                reason: format!("stored update window of device {uuid}: {e}"),
            })?)
        }
        _ => None,
    };
    Ok(UpdatePolicy { auto_update, update_window })
}

impl PolicyStore for SqlStore {
    fn update_policy(&self, uuid: &str) -> Result<Option<UpdatePolicy>, Error> {
        let row: Option<PolicyRow> = self.read(|c| {
            c.query_opt(
                "SELECT auto_update, window_start, window_end, window_timezone FROM update_policies
                 WHERE device_uuid = ?1",
                args![uuid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(db("reading an update policy"))
        })?;
        row.map(|row| policy_from_row(uuid, row)).transpose()
    }

    fn fleet_device_policies(&self, fleet: &str) -> Result<std::collections::HashMap<String, UpdatePolicy>, Error> {
        let rows: Vec<(String, PolicyRow)> = self.read(|c| {
            c.query_map(
                "SELECT p.device_uuid, p.auto_update, p.window_start, p.window_end, p.window_timezone
                 FROM update_policies p JOIN devices d ON d.uuid = p.device_uuid WHERE d.fleet = ?1",
                args![fleet],
                |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))),
            )
            .map_err(db("reading update policies"))
        })?;
        let mut policies = std::collections::HashMap::new();
        for (uuid, row) in rows {
            let policy = policy_from_row(&uuid, row)?;
            policies.insert(uuid, policy);
        }
        Ok(policies)
    }

    fn set_update_policy(&self, uuid: &str, policy: &UpdatePolicy) -> Result<(), Error> {
        let window = policy.update_window.as_ref();
        let now = rfc3339_now();
        self.write("storing an update policy", Touches::NothingPolled, |tx| {
            tx.execute(
                "INSERT INTO update_policies (device_uuid, auto_update, window_start, window_end, window_timezone, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device_uuid) DO UPDATE SET auto_update = excluded.auto_update,
                     window_start = excluded.window_start, window_end = excluded.window_end,
                     window_timezone = excluded.window_timezone, updated_at = excluded.updated_at",
                args![
                    uuid,
                    policy.auto_update,
                    window.map(UpdateWindow::start),
                    window.map(UpdateWindow::end),
                    window.map(UpdateWindow::timezone),
                    now
                ],
            )
            .map_err(|e| unknown_device_or(e, uuid, "storing an update policy"))?;
            Ok(())
        })
    }

    fn delete_update_policy(&self, uuid: &str) -> Result<bool, Error> {
        let deleted = self.write("removing an update policy", Touches::NothingPolled, |tx| {
            tx.execute("DELETE FROM update_policies WHERE device_uuid = ?1", args![uuid])
                .map_err(db("removing an update policy"))
        })?;
        Ok(deleted > 0)
    }

    fn add_pending_update(&self, p: &PendingUpdate) -> Result<(), Error> {
        self.write("storing a pending update", Touches::NothingPolled, |tx| {
            tx.execute(
                "INSERT INTO pending_updates (device_uuid, reference, digest, detected_at, apply_after, from_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device_uuid, reference) DO UPDATE SET
                     detected_at = CASE WHEN pending_updates.digest = excluded.digest
                                        THEN pending_updates.detected_at ELSE excluded.detected_at END,
                     digest = excluded.digest, apply_after = excluded.apply_after,
                     from_version = excluded.from_version",
                args![p.device_uuid, p.reference, p.digest, p.detected_at, p.apply_after, p.from_version],
            )
            .map_err(|e| unknown_device_or(e, &p.device_uuid, "storing a pending update"))?;
            Ok(())
        })
    }

    fn pending_updates(&self, uuid: &str) -> Result<Vec<PendingUpdate>, Error> {
        self.read(|c| {
            c.query_map(
                &format!("SELECT {PENDING_COLUMNS} FROM pending_updates WHERE device_uuid = ?1 ORDER BY reference"),
                args![uuid],
                pending_from_row,
            )
            .map_err(db("listing pending updates"))
        })
    }

    fn due_pending_updates(&self, now_unix: i64) -> Result<Vec<PendingUpdate>, Error> {
        self.read(|c| {
            c.query_map(
                &format!(
                    "SELECT {PENDING_COLUMNS} FROM pending_updates
                     WHERE apply_after IS NOT NULL AND apply_after <= ?1
                     ORDER BY apply_after, device_uuid, reference"
                ),
                args![now_unix],
                pending_from_row,
            )
            .map_err(db("listing due pending updates"))
        })
    }

    fn clear_pending_updates(&self, uuid: &str, references: Option<&[String]>) -> Result<(), Error> {
        let failed = db("clearing pending updates");
        self.write("clearing pending updates", Touches::NothingPolled, |tx| {
            match references {
                None => {
                    tx.execute("DELETE FROM pending_updates WHERE device_uuid = ?1", args![uuid]).map_err(&failed)?;
                }
                Some(references) => {
                    for reference in references {
                        tx.execute(
                            "DELETE FROM pending_updates WHERE device_uuid = ?1 AND reference = ?2",
                            args![uuid, reference],
                        )
                        .map_err(&failed)?;
                    }
                }
            }
            Ok(())
        })
    }
}

/// A foreign-key violation means the device does not exist.
fn unknown_device_or(e: DbError, uuid: &str, op: &'static str) -> Error {
    match e.is_constraint() {
        true => Error::NotFound { what: format!("device {uuid}") },
        false => db(op)(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_engines;
    use crate::store::Store;

    /// Adds devices `d1` and `d2` (created by registering nothing: an empty target).
    fn add_devices(store: &SqlStore) {
        for uuid in ["d1", "d2"] {
            store
                .write("adding a device", Touches::Polls, |tx| {
                    tx.execute(
                        "INSERT INTO devices (uuid, created_at) VALUES (?1, '2026-01-01T00:00:00Z')",
                        args![uuid],
                    )
                    .map_err(db("adding a device"))
                })
                .unwrap();
        }
    }

    fn pending(
        uuid: &str,
        reference: &str,
        digest: &str,
        detected_at: &str,
        apply_after: Option<i64>,
    ) -> PendingUpdate {
        PendingUpdate {
            device_uuid: uuid.into(),
            reference: reference.into(),
            digest: digest.into(),
            detected_at: detected_at.into(),
            apply_after,
            from_version: 1,
        }
    }

    const NGINX: &str = "docker.io/library/nginx:latest";
    const REDIS: &str = "docker.io/library/redis:7";

    both_engines! {
        fn policies_are_stored_per_device_and_can_be_removed(store) {
            add_devices(&store);
            assert_eq!(store.update_policy("d1").unwrap(), None);
            let policy = UpdatePolicy {
                auto_update: true,
                update_window: Some(UpdateWindow::new("22:00", "02:00", "UTC").unwrap()),
            };
            store.set_update_policy("d1", &policy).unwrap();
            assert_eq!(store.update_policy("d1").unwrap(), Some(policy));
            let off = UpdatePolicy { auto_update: false, update_window: None };
            store.set_update_policy("d1", &off).unwrap();
            assert_eq!(store.update_policy("d1").unwrap(), Some(off), "replaced, window gone");
            assert_eq!(store.update_policy("d2").unwrap(), None);
            assert!(store.delete_update_policy("d1").unwrap());
            assert!(!store.delete_update_policy("d1").unwrap());
            assert_eq!(store.update_policy("d1").unwrap(), None);
            assert!(matches!(store.set_update_policy("nope", &UpdatePolicy::default()), Err(Error::NotFound { .. })));
            assert!(store.device("nope").unwrap().is_none());
        }

        fn the_newest_digest_per_reference_wins(store) {
            add_devices(&store);
            store.add_pending_update(&pending("d1", NGINX, "sha256:aa", "2026-06-10T10:00:00Z", Some(100))).unwrap();
            store.add_pending_update(&pending("d1", REDIS, "sha256:cc", "2026-06-10T10:00:00Z", None)).unwrap();
            store.add_pending_update(&pending("d1", NGINX, "sha256:bb", "2026-06-10T11:00:00Z", Some(200))).unwrap();
            assert_eq!(
                store.pending_updates("d1").unwrap(),
                vec![
                    pending("d1", NGINX, "sha256:bb", "2026-06-10T11:00:00Z", Some(200)),
                    pending("d1", REDIS, "sha256:cc", "2026-06-10T10:00:00Z", None),
                ]
            );
            // The same digest again (e.g. re-held after a policy change): first detection kept.
            store.add_pending_update(&pending("d1", NGINX, "sha256:bb", "2026-06-10T12:00:00Z", Some(300))).unwrap();
            assert_eq!(
                store.pending_updates("d1").unwrap()[0],
                pending("d1", NGINX, "sha256:bb", "2026-06-10T11:00:00Z", Some(300))
            );
            assert_eq!(store.pending_updates("d2").unwrap(), vec![]);
            assert!(matches!(
                store.add_pending_update(&pending("nope", NGINX, "sha256:aa", "2026-06-10T10:00:00Z", None)),
                Err(Error::NotFound { .. })
            ));
        }

        fn due_updates_are_those_whose_time_has_come(store) {
            add_devices(&store);
            store.add_pending_update(&pending("d1", NGINX, "sha256:aa", "t", Some(100))).unwrap();
            store.add_pending_update(&pending("d1", REDIS, "sha256:bb", "t", None)).unwrap();
            store.add_pending_update(&pending("d2", NGINX, "sha256:aa", "t", Some(50))).unwrap();
            store.add_pending_update(&pending("d2", REDIS, "sha256:bb", "t", Some(150))).unwrap();
            let due = |now| -> Vec<(String, String)> {
                store.due_pending_updates(now).unwrap().into_iter().map(|p| (p.device_uuid, p.reference)).collect()
            };
            assert_eq!(due(49), vec![]);
            assert_eq!(due(50), vec![("d2".into(), NGINX.into())]);
            assert_eq!(due(100), vec![("d2".into(), NGINX.into()), ("d1".into(), NGINX.into())], "oldest first");
            assert_eq!(due(i64::MAX).len(), 3, "recorded-only updates are never due");
        }

        fn clearing_some_or_all_of_a_devices_pending_updates(store) {
            add_devices(&store);
            for uuid in ["d1", "d2"] {
                store.add_pending_update(&pending(uuid, NGINX, "sha256:aa", "t", Some(1))).unwrap();
                store.add_pending_update(&pending(uuid, REDIS, "sha256:bb", "t", None)).unwrap();
            }
            store.clear_pending_updates("d1", Some(&[NGINX.to_string(), "docker.io/library/other:1".into()])).unwrap();
            let refs = |uuid| store.pending_updates(uuid).unwrap().into_iter().map(|p| p.reference).collect::<Vec<_>>();
            assert_eq!(refs("d1"), vec![REDIS]);
            store.clear_pending_updates("d1", Some(&[])).unwrap();
            assert_eq!(refs("d1"), vec![REDIS]);
            store.clear_pending_updates("d1", None).unwrap();
            assert_eq!(refs("d1"), Vec::<String>::new());
            assert_eq!(refs("d2"), vec![NGINX, REDIS], "other devices keep theirs");
        }
    }
}
