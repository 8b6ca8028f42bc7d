//! What the server knows about each floating reference its devices follow: the digest
//! the registry last answered, when it was asked, and the last error. This is the digest
//! cache, and the list the background re-resolution walks.

use super::sql::{args, db, DbError, Row, SqlExt};
use super::sql_store::Touches;
use super::SqlStore;
use crate::Error;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS image_digests (
    reference      TEXT PRIMARY KEY,
    digest         TEXT,
    media_type     TEXT,
    checked_at     INTEGER,
    changed_at     INTEGER,
    last_error     TEXT,
    last_error_at  INTEGER
);
";

/// A floating reference (`docker.io/library/nginx:latest`) and its last resolution.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrackedImage {
    pub reference: String,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    /// Unix time of the last answer with a digest.
    pub checked_at: Option<i64>,
    /// Unix time the digest last changed.
    pub changed_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// Devices whose current target follows it (none when only fleets' releases do).
    pub devices: Vec<String>,
}

pub trait ImageStore {
    fn tracked_image(&self, reference: &str) -> Result<Option<TrackedImage>, Error>;
    /// Records the digest the registry answered at `now`; returns the one known before.
    fn record_digest(&self, reference: &str, digest: &str, media_type: &str, now: i64)
        -> Result<Option<String>, Error>;
    fn record_resolution_error(&self, reference: &str, error: &str, now: i64) -> Result<(), Error>;
    /// Every reference some device's current target follows, with what is known of it.
    fn tracked_images(&self) -> Result<Vec<TrackedImage>, Error>;
    /// Forgets references no device follows whose last answer or error is older than
    /// `before` (Unix time); returns how many.
    fn expire_unfollowed_digests(&self, before: i64) -> Result<usize, Error>;
}

const COLUMNS: &str = "i.reference, i.digest, i.media_type, i.checked_at, i.changed_at, i.last_error, i.last_error_at";

fn from_row(row: &Row) -> Result<TrackedImage, DbError> {
    Ok(TrackedImage {
        reference: row.get(0)?,
        digest: row.get(1)?,
        media_type: row.get(2)?,
        checked_at: row.get(3)?,
        changed_at: row.get(4)?,
        last_error: row.get(5)?,
        last_error_at: row.get(6)?,
        devices: Vec::new(),
    })
}

impl ImageStore for SqlStore {
    fn tracked_image(&self, reference: &str) -> Result<Option<TrackedImage>, Error> {
        self.read(|c| {
            c.query_opt(
                &format!("SELECT {COLUMNS} FROM image_digests i WHERE i.reference = ?1"),
                args![reference],
                from_row,
            )
            .map_err(db("reading the digest cache"))
        })
    }

    fn record_digest(
        &self,
        reference: &str,
        digest: &str,
        media_type: &str,
        now: i64,
    ) -> Result<Option<String>, Error> {
        let failed = db("writing the digest cache");
        self.write("writing the digest cache", Touches::NothingPolled, |tx| {
            let before: Option<String> = tx
                .query_opt("SELECT digest FROM image_digests WHERE reference = ?1", args![reference], |r| r.get(0))
                .map_err(&failed)?
                .flatten();
            tx.execute(
                "INSERT INTO image_digests (reference, digest, media_type, checked_at, changed_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (reference) DO UPDATE SET
                     changed_at = CASE WHEN image_digests.digest IS NOT DISTINCT FROM excluded.digest
                                       THEN image_digests.changed_at ELSE excluded.changed_at END,
                     digest = excluded.digest, media_type = excluded.media_type, checked_at = excluded.checked_at,
                     last_error = NULL, last_error_at = NULL",
                args![reference, digest, media_type, now],
            )
            .map_err(&failed)?;
            Ok(before)
        })
    }

    fn record_resolution_error(&self, reference: &str, error: &str, now: i64) -> Result<(), Error> {
        self.write("writing the digest cache", Touches::NothingPolled, |tx| {
            tx.execute(
                "INSERT INTO image_digests (reference, last_error, last_error_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (reference) DO UPDATE SET last_error = excluded.last_error,
                                                       last_error_at = excluded.last_error_at",
                args![reference, error, now],
            )
            .map_err(db("writing the digest cache"))?;
            Ok(())
        })
    }

    fn expire_unfollowed_digests(&self, before: i64) -> Result<usize, Error> {
        let expired = self.write("expiring digests", Touches::NothingPolled, |tx| {
            // The later of the two times before `before`: each of them before it (SQLite's
            // two-argument `MAX` is `GREATEST` on PostgreSQL).
            tx.execute(
                "DELETE FROM image_digests
                 WHERE reference NOT IN (SELECT reference FROM device_images UNION SELECT reference FROM fleet_images)
                   AND COALESCE(checked_at, 0) < ?1 AND COALESCE(last_error_at, 0) < ?1",
                args![before],
            )
            .map_err(db("expiring digests"))
        })?;
        Ok(expired as usize)
    }

    fn tracked_images(&self) -> Result<Vec<TrackedImage>, Error> {
        self.read(|c| {
            let mut images: Vec<TrackedImage> = Vec::new();
            c.query_each(
                // Followed by devices' own targets, or by a fleet's release (`fleet_images`):
                // one row per following device (one without a device for a reference only
                // fleets follow), the devices of a reference in order.
                "SELECT f.reference, i.digest, i.media_type, i.checked_at, i.changed_at, i.last_error,
                        i.last_error_at, d.device_uuid
                 FROM (SELECT reference FROM device_images UNION SELECT reference FROM fleet_images) AS f
                 LEFT JOIN image_digests i ON i.reference = f.reference
                 LEFT JOIN device_images d ON d.reference = f.reference
                 ORDER BY f.reference, d.device_uuid",
                args![],
                &mut |row: Row| {
                    let reference: String = row.get(0)?;
                    if images.last().is_none_or(|image| image.reference != reference) {
                        images.push(from_row(&row)?);
                    }
                    if let Some(device) = row.get::<Option<String>>(7)? {
                        images.last_mut().expect("pushed above").devices.push(device);
                    }
                    Ok(())
                },
            )
            .map_err(db("listing tracked images"))?;
            Ok(images)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_engines;
    use crate::store::{NewTarget, PollAnswer, Store};

    both_engines! {
        fn digests_errors_and_the_devices_that_follow_them(store) {
            let nginx = "docker.io/library/nginx:latest".to_string();
            assert_eq!(store.record_digest(&nginx, "sha256:a", "m", 100).unwrap(), None);
            assert_eq!(store.record_digest(&nginx, "sha256:a", "m", 200).unwrap().as_deref(), Some("sha256:a"));
            let cached = store.tracked_image(&nginx).unwrap().unwrap();
            assert_eq!((cached.checked_at, cached.changed_at), (Some(200), Some(100)));
            store.record_resolution_error(&nginx, "registry down", 300).unwrap();
            assert_eq!(store.record_digest(&nginx, "sha256:b", "m", 400).unwrap().as_deref(), Some("sha256:a"));
            let moved = store.tracked_image(&nginx).unwrap().unwrap();
            assert_eq!((moved.changed_at, moved.last_error), (Some(400), None));

            let poll = PollAnswer { etag: "\"e\"".into(), body: "{}".into() };
            let refs = [nginx.clone()];
            for uuid in ["d2", "d1"] {
                let target = NewTarget { references: &refs, ..crate::store::testing::operator_target("{}", &poll) };
                store.set_target(uuid, &target).unwrap();
            }
            let tracked = store.tracked_images().unwrap();
            assert_eq!(tracked.len(), 1);
            assert_eq!(tracked[0].devices, ["d1", "d2"]);
            assert_eq!(tracked[0].digest.as_deref(), Some("sha256:b"));

            // Only followed references stay; the others while they were asked recently.
            let (redis, alpine) = ("docker.io/library/redis:7", "docker.io/library/alpine:3");
            store.record_digest(redis, "sha256:r", "m", 100).unwrap();
            store.record_resolution_error(alpine, "not found", 500).unwrap();
            assert_eq!(store.expire_unfollowed_digests(450).unwrap(), 1);
            assert_eq!(store.tracked_image(redis).unwrap(), None);
            assert!(store.tracked_image(alpine).unwrap().is_some(), "its error is recent");
            assert_eq!(store.expire_unfollowed_digests(1000).unwrap(), 1);
            assert!(store.tracked_image(&nginx).unwrap().is_some(), "followed: kept however old");
        }
    }
}
