//! Devices, their keys and target-state versions, and the provisioning keys: `Store`'s
//! own operations, on either engine (`sql_store.rs`).

use super::sql::{args, db, DbError, Row, Sql, SqlExt};
use super::sql_store::Touches;
use super::{
    DeviceRecord, KeyOwner, NewRegistration, NewTarget, PollAnswer, ProvisioningKey, Reopen, SqlStore, Store,
    StoredTarget,
};
use crate::claims::{decide_claim, Claim, Claimant, ExistingDevice};
use crate::timefmt::rfc3339_now;
use crate::Error;

/// The tables of schema version 1; later versions are `migrations::MIGRATIONS`.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    uuid            TEXT PRIMARY KEY,
    device_name     TEXT,
    device_type     TEXT,
    api_key_hash    TEXT UNIQUE,
    provisioned_by  TEXT,
    created_at      TEXT NOT NULL,
    registered_at   TEXT,
    target_version  INTEGER NOT NULL DEFAULT 0,
    poll_etag       TEXT,
    poll_body       TEXT,
    current_state   TEXT,
    reported_at     TEXT
);
CREATE TABLE IF NOT EXISTS target_states (
    device_uuid  TEXT NOT NULL REFERENCES devices(uuid) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    state        TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    source       TEXT NOT NULL DEFAULT 'operator',
    PRIMARY KEY (device_uuid, version)
);
CREATE TABLE IF NOT EXISTS device_images (
    device_uuid  TEXT NOT NULL REFERENCES devices(uuid) ON DELETE CASCADE,
    reference    TEXT NOT NULL,
    PRIMARY KEY (device_uuid, reference)
);
CREATE INDEX IF NOT EXISTS device_images_by_reference ON device_images(reference);
CREATE TABLE IF NOT EXISTS provisioning_keys (
    id                  TEXT PRIMARY KEY,
    key_hash            TEXT NOT NULL UNIQUE,
    description         TEXT,
    created_at          TEXT NOT NULL,
    revoked_at          TEXT,
    devices_registered  INTEGER NOT NULL DEFAULT 0
);
";

const DEVICE_COLUMNS: &str = "uuid, device_name, device_type, api_key_hash IS NOT NULL, created_at, \
                              registered_at, target_version, reported_at, id, registration_completed_at IS NOT NULL, \
                              fleet, labels";

pub(super) fn device_from_row(row: &Row) -> Result<DeviceRecord, DbError> {
    Ok(DeviceRecord {
        uuid: row.get(0)?,
        device_name: row.get(1)?,
        device_type: row.get(2)?,
        registered: row.get(3)?,
        created_at: row.get(4)?,
        registered_at: row.get(5)?,
        target_version: row.get(6)?,
        last_report_at: row.get(7)?,
        id: row.get::<Option<u64>>(8)?.unwrap_or(0),
        registration_complete: row.get(9)?,
        fleet: row.get(10)?,
        labels: row.get::<Option<String>>(11)?.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default(),
    })
}

/// Adds a device row with the next device number, unless the device exists; true if added.
pub(super) fn insert_device(tx: &mut dyn Sql, uuid: &str, now: &str) -> Result<bool, DbError> {
    let exists: bool = tx.query_row("SELECT count(*) > 0 FROM devices WHERE uuid = ?1", args![uuid], |r| r.get(0))?;
    if exists {
        return Ok(false);
    }
    let id: i64 =
        tx.query_row("UPDATE counters SET value = value + 1 WHERE name = 'device_id' RETURNING value", args![], |r| {
            r.get(0)
        })?;
    tx.execute("INSERT INTO devices (uuid, id, created_at) VALUES (?1, ?2, ?3)", args![uuid, id, now])?;
    Ok(true)
}

fn key_from_row(row: &Row) -> Result<ProvisioningKey, DbError> {
    Ok(ProvisioningKey {
        id: row.get(0)?,
        description: row.get(1)?,
        created_at: row.get(2)?,
        revoked_at: row.get(3)?,
        devices_registered: row.get(4)?,
        device: row.get(5)?,
        single_use: row.get(6)?,
        expires_at: row.get(7)?,
        fleet: row.get(8)?,
    })
}

const TARGET_COLUMNS: &str = "t.version, t.state, t.created_at, t.source";

fn target_from_row(row: &Row) -> Result<StoredTarget, DbError> {
    Ok(StoredTarget { version: row.get(0)?, state: row.get(1)?, created_at: row.get(2)?, source: row.get(3)? })
}

const KEY_COLUMNS: &str =
    "id, description, created_at, revoked_at, devices_registered, device_uuid, single_use, expires_at, fleet";

/// Writes one target version inside `tx` (`Store::set_target`).
fn write_target(
    tx: &mut dyn Sql,
    uuid: &str,
    target: &NewTarget<'_>,
    history_limit: u64,
    now: &str,
) -> Result<u64, Error> {
    let failed = db("storing a target state");
    insert_device(tx, uuid, now).map_err(&failed)?;
    let (current, pinned): (i64, bool) = tx
        .query_row("SELECT target_version, pinned FROM devices WHERE uuid = ?1", args![uuid], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(&failed)?;
    // A fleet's release never replaces the target of a device pinned meanwhile.
    if pinned && target.release.is_some() {
        return Ok(current as u64);
    }
    if let Some(expected) = target.expected_version {
        if current as u64 != expected {
            return Err(Error::Conflict {
                reason: format!("device {uuid} moved from target version {expected} to {current} meanwhile"),
            });
        }
    }
    let version = current + 1;
    tx.execute(
        "UPDATE devices SET target_version = ?2, poll_etag = ?3, poll_body = ?4 WHERE uuid = ?1",
        args![uuid, version, target.poll.etag, target.poll.body],
    )
    .map_err(&failed)?;
    // Where the state came from: a fleet release, or the device's own (a pin).
    match target.release {
        Some(release) => tx.execute("UPDATE devices SET release_id = ?2 WHERE uuid = ?1", args![uuid, release]),
        None if target.supersedes_pending => {
            tx.execute("UPDATE devices SET release_id = NULL, pinned = 1 WHERE uuid = ?1", args![uuid])
        }
        None => Ok(0),
    }
    .map_err(&failed)?;
    tx.execute(
        "INSERT INTO target_states (device_uuid, version, state, created_at, source) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![uuid, version, target.state, now, target.source],
    )
    .map_err(&failed)?;
    tx.execute("DELETE FROM device_images WHERE device_uuid = ?1", args![uuid]).map_err(&failed)?;
    for reference in target.references {
        tx.execute(
            "INSERT INTO device_images (device_uuid, reference) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            args![uuid, reference],
        )
        .map_err(&failed)?;
    }
    super::credentials::write_device_registries(tx, uuid, target.registries).map_err(&failed)?;
    if target.supersedes_pending {
        tx.execute("DELETE FROM pending_updates WHERE device_uuid = ?1", args![uuid]).map_err(&failed)?;
    } else {
        // The refresher's own write (another tag moved): what it holds back for this
        // device still applies on top of the new version.
        tx.execute(
            "UPDATE pending_updates SET from_version = ?2 WHERE device_uuid = ?1 AND from_version = ?3",
            args![uuid, version, current],
        )
        .map_err(&failed)?;
    }
    tx.execute(
        "DELETE FROM target_states WHERE device_uuid = ?1 AND version <= ?2",
        args![uuid, version.saturating_sub(history_limit as i64)],
    )
    .map_err(db("pruning the target history"))?;
    Ok(version as u64)
}

/// `patch` merged into the JSON object `stored` as RFC 7396 says (what SQLite's
/// `json_patch` does): its members replace, a null removes, objects merge member by member.
fn merge_patch(stored: Option<&str>, patch: &str) -> String {
    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        let serde_json::Value::Object(members) = patch else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = serde_json::Value::Object(Default::default());
        }
        let object = target.as_object_mut().expect("made an object above");
        for (name, value) in members {
            if value.is_null() {
                object.remove(name);
            } else {
                merge(object.entry(name.clone()).or_insert(serde_json::Value::Null), value);
            }
        }
    }
    let mut target = stored.and_then(|s| serde_json::from_str(s).ok()).unwrap_or(serde_json::json!({}));
    if let Ok(patch) = serde_json::from_str(patch) {
        merge(&mut target, &patch);
    }
    target.to_string()
}

impl Store for SqlStore {
    fn device(&self, uuid: &str) -> Result<Option<DeviceRecord>, Error> {
        self.read(|c| {
            c.query_opt(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE uuid = ?1"), args![uuid], device_from_row)
                .map_err(db("reading a device"))
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, Error> {
        self.read(|c| {
            c.query_map(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY uuid"), args![], device_from_row)
                .map_err(db("listing devices"))
        })
    }

    fn device_key_hash(&self, uuid: &str) -> Result<Option<String>, Error> {
        self.read(|c| {
            c.query_opt("SELECT api_key_hash FROM devices WHERE uuid = ?1", args![uuid], |r| r.get(0))
                .map(Option::flatten)
                .map_err(db("reading a device key"))
        })
    }

    fn device_by_key_hash(&self, key_hash: &str) -> Result<Option<KeyOwner>, Error> {
        self.read(|c| {
            c.query_opt(
                "SELECT uuid, registration_completed_at IS NOT NULL FROM devices WHERE api_key_hash = ?1",
                args![key_hash],
                |r| Ok(KeyOwner { uuid: r.get(0)?, registration_complete: r.get(1)? }),
            )
            .map_err(db("looking up a device key"))
        })
    }

    fn complete_registration(&self, uuid: &str, key_hash: &str) -> Result<bool, Error> {
        let now = rfc3339_now();
        let changed = self.write("completing a registration", Touches::NothingPolled, |tx| {
            tx.execute(
                "UPDATE devices SET registration_completed_at = COALESCE(registration_completed_at, ?3)
                 WHERE uuid = ?1 AND api_key_hash = ?2",
                args![uuid, key_hash, now],
            )
            .map_err(db("completing a registration"))
        })?;
        Ok(changed == 1)
    }

    fn register_device(&self, reg: &NewRegistration) -> Result<DeviceRecord, Error> {
        let failed = db("registering a device");
        let now = rfc3339_now();
        self.write("registering a device", Touches::Polls, |tx| {
            type Stored = (Option<String>, bool, Option<String>, bool, Option<String>);
            let stored: Option<Stored> = tx
                .query_opt(
                    "SELECT api_key_hash, registration_completed_at IS NOT NULL, provisioned_by,
                            CASE WHEN open_until > ?2 THEN 1 ELSE 0 END, system_info
                     FROM devices WHERE uuid = ?1",
                    args![reg.uuid, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .map_err(&failed)?;
            let existing = stored.as_ref().map(|(key_hash, complete, by, open, _)| ExistingDevice {
                key_hash: key_hash.as_deref(),
                registration_complete: *complete,
                provisioned_by: by.as_deref(),
                open_after_reset: *open,
            });
            let claim = decide_claim(&reg.uuid, existing.as_ref(), &reg.claimant, &reg.key_hash)?;
            // Counted (and a single-use key spent) only while the key is still good: a
            // registration token used twice at once registers once.
            if let (Claimant::Key { id, single_use, .. }, true) = (&reg.claimant, claim != Claim::Unchanged) {
                let counted = tx
                    .execute(
                        "UPDATE provisioning_keys SET devices_registered = devices_registered + 1,
                             revoked_at = CASE WHEN ?2 <> 0 THEN ?3 ELSE revoked_at END
                         WHERE id = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?3)",
                        args![id, single_use, now],
                    )
                    .map_err(&failed)?;
                if counted == 0 {
                    return Err(Error::Unauthorized {
                        reason: "the provisioning key was revoked or used up meanwhile".into(),
                    });
                }
            }
            if claim == Claim::Create {
                insert_device(tx, &reg.uuid, &now).map_err(&failed)?;
            }
            let system_info =
                merge_patch(stored.as_ref().and_then(|s| s.4.as_deref()), reg.system_info.as_deref().unwrap_or("{}"));
            tx.execute(
                "UPDATE devices SET device_name = COALESCE(?2, device_name), device_type = COALESCE(?3, device_type),
                     provisioned_by = CASE WHEN api_key_hash IS NOT DISTINCT FROM ?4 THEN provisioned_by ELSE ?5 END,
                     api_key_hash = ?4, registered_at = COALESCE(registered_at, ?6), open_until = NULL,
                     system_info = ?7
                 WHERE uuid = ?1",
                args![
                    reg.uuid,
                    reg.device_name,
                    reg.device_type,
                    reg.key_hash,
                    reg.claimant.provisioned_by(),
                    now,
                    system_info
                ],
            )
            .map_err(|e| match e.is_constraint() {
                true => Error::Conflict { reason: "this device key is already in use".into() },
                false => failed(e),
            })?;
            tx.query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE uuid = ?1"),
                args![reg.uuid],
                device_from_row,
            )
            .map_err(&failed)
        })
    }

    fn delete_device(&self, uuid: &str) -> Result<bool, Error> {
        let deleted = self.write("deleting a device", Touches::Polls, |tx| {
            // Its target versions, images, reports, logs, metrics and policy go by cascade;
            // the registry credentials and provisioning keys bound to it have no foreign key
            // (a key may be made for a uuid before the device), so they go here.
            let deleted =
                tx.execute("DELETE FROM devices WHERE uuid = ?1", args![uuid]).map_err(db("deleting a device"))?;
            tx.execute("DELETE FROM provisioning_keys WHERE device_uuid = ?1", args![uuid])
                .map_err(db("deleting a device's registration tokens"))?;
            tx.execute("DELETE FROM registry_credentials WHERE device_uuid = ?1", args![uuid])
                .map_err(db("deleting a device's registry credentials"))?;
            tx.execute("DELETE FROM rollout_devices WHERE device_uuid = ?1", args![uuid])
                .map_err(db("deleting a device from its rollouts"))?;
            Ok(deleted)
        })?;
        Ok(deleted == 1)
    }

    fn reset_device_key(&self, uuid: &str, reopen: Option<&Reopen>) -> Result<bool, Error> {
        let changed = self.write("resetting a device key", Touches::Polls, |tx| {
            tx.execute(
                "UPDATE devices SET api_key_hash = NULL, registration_completed_at = NULL, open_until = ?2,
                     provisioned_by = CASE WHEN CAST(?2 AS TEXT) IS NULL THEN NULL ELSE COALESCE(?3, provisioned_by) END
                 WHERE uuid = ?1 AND registered_at IS NOT NULL",
                args![uuid, reopen.map(|r| &r.until), reopen.and_then(|r| r.key_id.as_deref())],
            )
            .map_err(db("resetting a device key"))
        })?;
        Ok(changed == 1)
    }

    fn set_target(&self, uuid: &str, target: &NewTarget<'_>) -> Result<u64, Error> {
        let now = rfc3339_now();
        self.write("storing a target state", Touches::Polls, |tx| {
            write_target(tx, uuid, target, self.history_limit, &now)
        })
    }

    fn set_targets(&self, targets: &[(&str, NewTarget<'_>)]) -> Result<Vec<u64>, Error> {
        let now = rfc3339_now();
        self.write("storing target states", Touches::Polls, |tx| {
            targets.iter().map(|(uuid, target)| write_target(tx, uuid, target, self.history_limit, &now)).collect()
        })
    }

    fn target(&self, uuid: &str) -> Result<Option<StoredTarget>, Error> {
        self.read(|c| {
            c.query_opt(
                &format!(
                    "SELECT {TARGET_COLUMNS} FROM target_states t
                     JOIN devices d ON d.uuid = t.device_uuid AND d.target_version = t.version WHERE d.uuid = ?1"
                ),
                args![uuid],
                target_from_row,
            )
            .map_err(db("reading a target state"))
        })
    }

    fn target_version(&self, uuid: &str, version: u64) -> Result<Option<StoredTarget>, Error> {
        self.read(|c| {
            c.query_opt(
                &format!("SELECT {TARGET_COLUMNS} FROM target_states t WHERE t.device_uuid = ?1 AND t.version = ?2"),
                args![uuid, version.min(i64::MAX as u64)],
                target_from_row,
            )
            .map_err(db("reading a target state"))
        })
    }

    fn target_history(&self, uuid: &str, before: Option<u64>, limit: usize) -> Result<Vec<StoredTarget>, Error> {
        let before = before.map_or(i64::MAX, |v| v.min(i64::MAX as u64) as i64);
        self.read(|c| {
            c.query_map(
                &format!(
                    "SELECT {TARGET_COLUMNS} FROM target_states t WHERE t.device_uuid = ?1 AND t.version < ?2
                     ORDER BY t.version DESC LIMIT ?3"
                ),
                args![uuid, before, limit],
                target_from_row,
            )
            .map_err(db("reading the target history"))
        })
    }

    fn devices_using(&self, reference: &str) -> Result<Vec<String>, Error> {
        self.read(|c| {
            c.query_map(
                "SELECT device_uuid FROM device_images WHERE reference = ?1 ORDER BY device_uuid",
                args![reference],
                |r| r.get(0),
            )
            .map_err(db("listing the devices of an image"))
        })
    }

    fn poll(&self, uuid: &str) -> Result<Option<PollAnswer>, Error> {
        let row: Option<(Option<String>, Option<String>)> = self.read(|c| {
            c.query_opt("SELECT poll_etag, poll_body FROM devices WHERE uuid = ?1", args![uuid], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db("reading a device's target state"))
        })?;
        Ok(match row {
            Some((Some(etag), Some(body))) => Some(PollAnswer { etag, body }),
            _ => None,
        })
    }

    fn create_provisioning_key(&self, key: &ProvisioningKey, key_hash: &str) -> Result<(), Error> {
        let failed = db("creating a provisioning key");
        self.write("creating a provisioning key", Touches::NothingPolled, |tx| {
            // A key bound to a device reserves its uuid: no other key can register it first.
            if let Some(uuid) = &key.device {
                insert_device(tx, uuid, &key.created_at).map_err(&failed)?;
            }
            tx.execute(
                "INSERT INTO provisioning_keys (id, key_hash, description, created_at, device_uuid, single_use,
                                               expires_at, fleet)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                args![
                    key.id,
                    key_hash,
                    key.description,
                    key.created_at,
                    key.device,
                    key.single_use,
                    key.expires_at,
                    key.fleet
                ],
            )
            .map_err(&failed)?;
            Ok(())
        })
    }

    fn provisioning_key_by_hash(&self, key_hash: &str) -> Result<Option<ProvisioningKey>, Error> {
        let now = rfc3339_now();
        self.read(|c| {
            c.query_opt(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM provisioning_keys
                     WHERE key_hash = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)"
                ),
                args![key_hash, now],
                key_from_row,
            )
            .map_err(db("reading a provisioning key"))
        })
    }

    fn provisioning_keys(&self) -> Result<Vec<ProvisioningKey>, Error> {
        self.read(|c| {
            c.query_map(
                &format!("SELECT {KEY_COLUMNS} FROM provisioning_keys ORDER BY created_at, id"),
                args![],
                key_from_row,
            )
            .map_err(db("listing provisioning keys"))
        })
    }

    fn revoke_provisioning_key(&self, id: &str) -> Result<bool, Error> {
        let now = rfc3339_now();
        let changed = self.write("revoking a provisioning key", Touches::NothingPolled, |tx| {
            tx.execute(
                "UPDATE provisioning_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                args![id, now],
            )
            .map_err(db("revoking a provisioning key"))
        })?;
        Ok(changed > 0)
    }

    /// A SQLite file has this process for its one writer, so its generation sees every
    /// write; replicas on PostgreSQL answer `None`.
    fn poll_generation(&self) -> Option<u64> {
        self.local_poll_generation()
    }

    fn lead(&self) -> Result<bool, Error> {
        self.lead_periodic_work()
    }

    fn lock_rollouts(&self) -> Result<Option<Box<dyn Send + '_>>, Error> {
        self.lock_rollouts_across_replicas()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_engines;

    fn poll(n: u32) -> PollAnswer {
        PollAnswer { etag: format!("\"e{n}\""), body: format!("{{\"n\":{n}}}") }
    }

    fn new_target<'a>(state: &'a str, poll: &'a PollAnswer, references: &'a [String]) -> NewTarget<'a> {
        NewTarget {
            state,
            poll,
            references,
            registries: &[],
            source: "operator",
            expected_version: None,
            supersedes_pending: true,
            release: None,
        }
    }

    fn key(id: &str, device: Option<&str>) -> ProvisioningKey {
        ProvisioningKey {
            id: id.into(),
            description: None,
            created_at: rfc3339_now(),
            revoked_at: None,
            devices_registered: 0,
            device: device.map(Into::into),
            single_use: device.is_some(),
            expires_at: None,
            fleet: None,
        }
    }

    fn registration(uuid: &str, key_hash: &str, claimant: &ProvisioningKey) -> NewRegistration {
        NewRegistration {
            uuid: uuid.into(),
            device_name: Some("gw".into()),
            device_type: None,
            key_hash: key_hash.into(),
            claimant: Claimant::Key {
                id: claimant.id.clone(),
                device: claimant.device.clone(),
                single_use: claimant.single_use,
            },
            system_info: None,
        }
    }

    both_engines! {
        fn target_versions_count_up_and_poll_follows_the_latest(store) {
            assert_eq!(store.poll("d1").unwrap(), None);
            let (p1, p2) = (poll(1), poll(2));
            let nginx = ["docker.io/library/nginx:latest".to_string()];
            assert_eq!(store.set_target("d1", &new_target("{\"a\":1}", &p1, &nginx)).unwrap(), 1);
            assert_eq!(store.devices_using(&nginx[0]).unwrap(), ["d1"]);
            assert_eq!(store.set_target("d1", &new_target("{\"a\":2}", &p2, &[])).unwrap(), 2);
            assert!(store.devices_using(&nginx[0]).unwrap().is_empty(), "the new version follows no tag");
            let stale = NewTarget { expected_version: Some(1), ..new_target("{}", &p1, &[]) };
            assert!(matches!(store.set_target("d1", &stale), Err(Error::Conflict { .. })));
            let history: Vec<u64> = store.target_history("d1", None, 10).unwrap().iter().map(|t| t.version).collect();
            assert_eq!(history, [2, 1]);
            assert_eq!(store.target_version("d1", 1).unwrap().unwrap().state, "{\"a\":1}");
            assert_eq!(store.target("d1").unwrap().unwrap().state, "{\"a\":2}");
            assert_eq!(store.poll("d1").unwrap(), Some(poll(2)));
            let device = store.device("d1").unwrap().unwrap();
            assert_eq!((device.target_version, device.registered), (2, false));
        }
        fn a_prepared_device_is_claimed_once_by_its_registration_token(store) {
            let (fleet, token) = (key("k1", None), key("t1", Some("d1")));
            store.create_provisioning_key(&fleet, "hash-k1").unwrap();
            store.create_provisioning_key(&token, "hash-t1").unwrap();
            assert_eq!(store.device("d1").unwrap().unwrap().id, 1, "the token reserves its uuid");
            store.set_target("d1", &new_target("{}", &poll(1), &[])).unwrap();
            let squat = registration("d1", "hash-squat", &fleet);
            assert!(matches!(store.register_device(&squat), Err(Error::Conflict { .. })), "a fleet key cannot claim it");
            let reg = registration("d1", "hash-d1", &token);
            let device = store.register_device(&reg).unwrap();
            assert!(device.registered);
            assert_eq!((device.id, device.registration_complete), (1, false));
            assert_eq!(device.target_version, 1, "the prepared target is kept");
            assert_eq!(store.register_device(&reg).unwrap(), device, "the same registration again changes nothing");
            assert_eq!(store.provisioning_key_by_hash("hash-t1").unwrap(), None, "the token is spent");
            let again = registration("d1", "hash-d1-b", &token);
            assert!(matches!(store.register_device(&again), Err(Error::Unauthorized { .. })), "spent: not twice");
            assert!(matches!(store.register_device(&squat), Err(Error::Conflict { .. })));
            assert_eq!(store.device_key_hash("d1").unwrap().as_deref(), Some("hash-d1"));
        }
        fn a_registration_is_replaced_by_its_own_key_until_complete_and_after_a_reset(store) {
            let (fleet, other) = (key("k1", None), key("k2", None));
            store.create_provisioning_key(&fleet, "hash-k1").unwrap();
            store.create_provisioning_key(&other, "hash-k2").unwrap();
            store.register_device(&registration("d2", "hash-a", &fleet)).unwrap();
            // Not complete yet: the agent may come back with another key (it crashed between phases).
            assert!(matches!(store.register_device(&registration("d2", "hash-x", &other)), Err(Error::Conflict { .. })));
            assert_eq!(store.register_device(&registration("d2", "hash-b", &fleet)).unwrap().id, 1);
            assert_eq!(store.device_by_key_hash("hash-a").unwrap(), None, "the first key no longer works");
            assert!(!store.complete_registration("d2", "hash-a").unwrap(), "not its key any more");
            assert!(store.complete_registration("d2", "hash-b").unwrap());
            assert!(store.device_by_key_hash("hash-b").unwrap().unwrap().registration_complete);
            let lost = registration("d2", "hash-c", &fleet);
            assert!(
                matches!(store.register_device(&lost), Err(Error::Conflict { .. })),
                "complete: another key is refused"
            );
            assert!(store.register_device(&registration("d2", "hash-b", &fleet)).is_ok(), "the same key is idempotent");
            let reopen = Reopen { until: "2999-01-01T00:00:00Z".into(), key_id: None };
            assert!(store.reset_device_key("d2", Some(&reopen)).unwrap(), "reset, reopened to the key that registered it");
            assert_eq!(store.device_by_key_hash("hash-b").unwrap(), None, "a reset key stops working");
            assert!(matches!(store.register_device(&registration("d2", "hash-x", &other)), Err(Error::Conflict { .. })));
            assert_eq!(store.register_device(&lost).unwrap().id, 1, "the key that registered it sets a new one");
            assert!(store.complete_registration("d2", "hash-c").unwrap());
            assert!(store.reset_device_key("d2", None).unwrap(), "reset, reopened to no key");
            let closed = registration("d2", "hash-c2", &fleet);
            assert!(matches!(store.register_device(&closed), Err(Error::Conflict { .. })), "closed to the fleet key");
            assert!(!store.reset_device_key("never-registered", None).unwrap());
            let reopen = Reopen { until: "2999-01-01T00:00:00Z".into(), key_id: Some("k2".into()) };
            assert!(store.reset_device_key("d2", Some(&reopen)).unwrap(), "reset, reopened to k2");
            assert!(store.register_device(&registration("d2", "hash-y", &other)).is_ok(), "reopened: k2 sets it");
            let late = registration("d2", "hash-z", &fleet);
            assert!(matches!(store.register_device(&late), Err(Error::Conflict { .. })), "open only until a key is set");
            assert_eq!(store.provisioning_key_by_hash("hash-k1").unwrap().unwrap().devices_registered, 3);
            assert_eq!(store.provisioning_key_by_hash("hash-k2").unwrap().unwrap().devices_registered, 1);
            assert_eq!(store.register_device(&registration("d3", "hash-d3", &other)).unwrap().id, 2, "numbers count up");
            assert!(store.revoke_provisioning_key("k1").unwrap());
            assert_eq!(store.provisioning_key_by_hash("hash-k1").unwrap(), None);
        }
        fn deleting_a_device_takes_everything_of_it(store) {
            use crate::store::TelemetryStore;
            let token = key("t1", Some("d1"));
            store.create_provisioning_key(&token, "hash-t1").unwrap();
            store.set_target("d1", &new_target("{}", &poll(1), &["docker.io/library/nginx:latest".into()])).unwrap();
            store.register_device(&registration("d1", "hash-d1", &token)).unwrap();
            store.create_provisioning_key(&key("t2", Some("d1")), "hash-t2").unwrap();
            assert!(store.delete_device("d1").unwrap());
            assert!(!store.delete_device("d1").unwrap(), "gone already");
            assert_eq!(store.device("d1").unwrap(), None);
            assert_eq!(store.device_by_key_hash("hash-d1").unwrap(), None);
            assert_eq!(store.poll("d1").unwrap(), None);
            assert_eq!(store.target_history("d1", None, 10).unwrap(), []);
            assert!(store.devices_using("docker.io/library/nginx:latest").unwrap().is_empty());
            assert_eq!(store.current_report("d1").unwrap(), None);
            assert!(store.provisioning_keys().unwrap().iter().all(|k| k.device.is_none()), "its tokens are gone");
        }
    }

    #[test]
    fn only_writes_that_change_a_key_or_a_poll_answer_move_the_poll_generation() {
        use crate::store::{ImageStore, PolicyStore, TelemetryStore};
        let store = crate::store::testing::sqlite();
        let generation = || store.poll_generation().expect("a SQLite store keeps a poll generation");
        let moved = |before: u64| generation() != before;
        let nginx = ["docker.io/library/nginx:latest".to_string()];
        let before = generation();
        store.set_target("d1", &new_target("{}", &poll(1), &nginx)).unwrap();
        assert!(moved(before), "a new target");
        let reg = NewRegistration {
            uuid: "d1".into(),
            device_name: None,
            device_type: None,
            key_hash: "hash-d1".into(),
            claimant: Claimant::Operator,
            system_info: None,
        };
        let before = generation();
        store.register_device(&reg).unwrap();
        assert!(moved(before), "a new key");

        let before = generation();
        // What a dashboard, the refresher and reporting devices do all day.
        store.device("d1").unwrap();
        store.devices().unwrap();
        store.target("d1").unwrap();
        store.target_history("d1", None, 10).unwrap();
        store.devices_using(&nginx[0]).unwrap();
        store.tracked_images().unwrap();
        store.tracked_image(&nginx[0]).unwrap();
        store.update_policy("d1").unwrap();
        store.provisioning_keys().unwrap();
        store.record_digest(&nginx[0], "sha256:a", "m", 1).unwrap();
        store.record_resolution_error(&nginx[0], "down", 2).unwrap();
        assert!(store.complete_registration("d1", "hash-d1").unwrap());
        let report = crate::store::NewReport { state: "{}", known: "{}", sample: None, now: 3 };
        store.record_report("d1", &report).unwrap();
        assert!(!moved(before), "reads, reports and the digest cache keep the poll cache warm");
    }

    #[test]
    fn reads_on_the_pooled_connections_see_every_committed_write() {
        let dir = std::env::temp_dir().join(format!("pinion-readers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqlStore::open(&dir.join("server.db")).unwrap();
        assert_eq!(store.sqlite().unwrap().idle_readers(), Some(0), "a file database reads on its own connections");
        // A read held open meanwhile: the reads below open another connection.
        store
            .read(|_held| {
                for n in 1..=3 {
                    store.set_target("d1", &new_target("{}", &poll(n), &[])).unwrap();
                    assert_eq!(store.poll("d1").unwrap(), Some(poll(n)));
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(store.sqlite().unwrap().idle_readers(), Some(2), "both returned to the pool");
        assert_eq!(store.device_by_key_hash("no-such-hash").unwrap(), None);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two stores on one database (two replicas), four writers each on one device: every
    /// version from 1 to 80 is written once, none skipped, none twice.
    fn versions_count_up_without_gaps_across_stores(first: SqlStore, second: SqlStore) {
        let stores = [first, second];
        std::thread::scope(|scope| {
            for store in &stores {
                for _ in 0..4 {
                    scope.spawn(move || {
                        for n in 0..10 {
                            store.set_target("d1", &new_target("{}", &poll(n), &[])).unwrap();
                        }
                    });
                }
            }
        });
        let mut versions: Vec<u64> =
            (1..=80).filter_map(|v| stores[0].target_version("d1", v).unwrap().map(|t| t.version)).collect();
        versions.dedup();
        assert_eq!(versions, (1..=80).collect::<Vec<u64>>());
        assert_eq!(stores[1].device("d1").unwrap().unwrap().target_version, 80);
        assert!(stores[1].target_version("d1", 81).unwrap().is_none());
    }

    #[test]
    fn sqlite_versions_count_up_without_gaps_across_stores() {
        let dir = std::env::temp_dir().join(format!("pinion-two-stores-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.db");
        let stores = (SqlStore::open(&path).unwrap(), SqlStore::open(&path).unwrap());
        versions_count_up_without_gaps_across_stores(stores.0, stores.1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg(feature = "postgres")]
    fn postgres_versions_count_up_without_gaps_across_replicas() {
        let url = crate::store::testing::new_postgres_database();
        let connect = || SqlStore::connect(&crate::store::PostgresOptions::new(&url)).unwrap();
        let (first, second) = (connect(), connect());
        assert_eq!(first.poll_generation(), None, "a replica cannot know the others' writes");
        versions_count_up_without_gaps_across_stores(first, second);
    }
}
