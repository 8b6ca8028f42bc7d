//! What the server knows about each floating reference its devices follow: the digest
//! the registry last answered, when it was asked, and the last error. This is the digest
//! cache, and the list the background re-resolution walks.

use super::sqlite::{db, SqliteStore};
use crate::Error;
use rusqlite::{params, OptionalExtension, Row};

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

fn from_row(row: &Row<'_>) -> rusqlite::Result<TrackedImage> {
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

impl ImageStore for SqliteStore {
    fn tracked_image(&self, reference: &str) -> Result<Option<TrackedImage>, Error> {
        self.reader()?
            .query_row(&format!("SELECT {COLUMNS} FROM image_digests i WHERE i.reference = ?1"), [reference], from_row)
            .optional()
            .map_err(db("reading the digest cache"))
    }

    fn record_digest(
        &self,
        reference: &str,
        digest: &str,
        media_type: &str,
        now: i64,
    ) -> Result<Option<String>, Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("writing the digest cache"))?;
        let before: Option<String> = tx
            .query_row("SELECT digest FROM image_digests WHERE reference = ?1", [reference], |r| r.get(0))
            .optional()
            .map_err(db("writing the digest cache"))?
            .flatten();
        tx.execute(
            "INSERT INTO image_digests (reference, digest, media_type, checked_at, changed_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (reference) DO UPDATE SET
                 changed_at = CASE WHEN digest IS excluded.digest THEN changed_at ELSE excluded.changed_at END,
                 digest = excluded.digest, media_type = excluded.media_type, checked_at = excluded.checked_at,
                 last_error = NULL, last_error_at = NULL",
            params![reference, digest, media_type, now],
        )
        .map_err(db("writing the digest cache"))?;
        tx.commit().map_err(db("writing the digest cache"))?;
        Ok(before)
    }

    fn record_resolution_error(&self, reference: &str, error: &str, now: i64) -> Result<(), Error> {
        self.conn_outside_polls()
            .execute(
                "INSERT INTO image_digests (reference, last_error, last_error_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (reference) DO UPDATE SET last_error = excluded.last_error,
                                                       last_error_at = excluded.last_error_at",
                params![reference, error, now],
            )
            .map_err(db("writing the digest cache"))?;
        Ok(())
    }

    fn expire_unfollowed_digests(&self, before: i64) -> Result<usize, Error> {
        self.conn_outside_polls()
            .execute(
                "DELETE FROM image_digests
                 WHERE reference NOT IN (SELECT reference FROM device_images UNION SELECT reference FROM fleet_images)
                   AND MAX(COALESCE(checked_at, 0), COALESCE(last_error_at, 0)) < ?1",
                [before],
            )
            .map_err(db("expiring digests"))
    }

    fn tracked_images(&self) -> Result<Vec<TrackedImage>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(
                // Followed by devices' own targets, or by a fleet's release (`fleet_images`).
                "SELECT f.reference, i.digest, i.media_type, i.checked_at, i.changed_at, i.last_error,
                        i.last_error_at,
                        (SELECT group_concat(d.device_uuid, ' ') FROM device_images d WHERE d.reference = f.reference)
                 FROM (SELECT reference FROM device_images UNION SELECT reference FROM fleet_images) f
                 LEFT JOIN image_digests i ON i.reference = f.reference
                 ORDER BY f.reference",
            )
            .map_err(db("listing tracked images"))?;
        let rows = stmt
            .query_map([], |row| {
                let mut image = from_row(row)?;
                let devices: Option<String> = row.get(7)?;
                image.devices =
                    devices.unwrap_or_default().split(' ').filter(|d| !d.is_empty()).map(str::to_string).collect();
                image.devices.sort();
                Ok(image)
            })
            .map_err(db("listing tracked images"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing tracked images"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewTarget, PollAnswer, Store};

    #[test]
    fn digests_errors_and_the_devices_that_follow_them() {
        let store = SqliteStore::in_memory().unwrap();
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
            let target = NewTarget {
                state: "{}",
                poll: &poll,
                references: &refs,
                registries: &[],
                source: "operator",
                expected_version: None,
                supersedes_pending: true,
                release: None,
            };
            store.set_target(uuid, &target).unwrap();
        }
        let tracked = store.tracked_images().unwrap();
        assert_eq!(tracked.len(), 1);
        assert_eq!(tracked[0].devices, ["d1", "d2"]);
        assert_eq!(tracked[0].digest.as_deref(), Some("sha256:b"));
    }
}
