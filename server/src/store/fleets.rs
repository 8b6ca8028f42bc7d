//! Fleets, their frozen releases and staged rollouts, as stored: a fleet and what it
//! runs, each device's fleet, labels and pin, the rows of a rollout's devices, the tags
//! a fleet follows, and the event log. The decisions are elsewhere (`rollout/`,
//! `fleets.rs`); this is only where they are kept, so that a restart loses none.

use super::sqlite::{db, SqliteStore};
use crate::rollout::{DeviceStatus, Observation, RolloutDevice, RolloutPlan, RolloutProgress, RolloutStatus};
use crate::timefmt::rfc3339_now;
use crate::Error;
use rusqlite::{params, OptionalExtension, Row, Transaction};
use std::collections::{BTreeMap, HashMap};

/// The newest events kept; older ones are deleted as new ones come.
pub const EVENTS_KEPT: i64 = 100_000;

/// A named group of devices with one release.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub name: String,
    pub description: Option<String>,
    /// JSON of a `policy::UpdatePolicy`; `None`: the server default.
    pub update_policy: Option<String>,
    /// JSON of a `rollout::RolloutPlan`; `None`: the default plan.
    pub rollout_plan: Option<String>,
    pub current_release: Option<u64>,
    pub created_at: String,
}

impl Fleet {
    /// Its update policy; `None` for the server default. Stored from a checked one: a
    /// row that no longer reads counts as none.
    pub fn policy(&self) -> Option<crate::policy::UpdatePolicy> {
        self.update_policy.as_deref().and_then(|p| serde_json::from_str(p).ok())
    }

    /// The plan its rollouts start from: its own, else the default.
    pub fn plan(&self) -> RolloutPlan {
        self.rollout_plan.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default()
    }
}

/// A device's place in the fleets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Membership {
    pub uuid: String,
    pub fleet: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Its own target overrides its fleet's.
    pub pinned: bool,
    /// The release its current target was made from.
    pub release_id: Option<u64>,
    /// The rollout that gave it a release, and that release.
    pub rollout_id: Option<u64>,
    pub rollout_release: Option<u64>,
}

/// An immutable, pinned target state of a fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub id: u64,
    pub fleet: String,
    /// The pinned `TargetState` as JSON.
    pub state: String,
    /// The floating references it was pinned from (canonical).
    pub references: Vec<String>,
    /// `operator`, or `tag-moved` for one the server made when a followed tag moved.
    pub source: String,
    pub note: Option<String>,
    pub created_at: String,
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRollout {
    pub id: u64,
    pub fleet: String,
    pub release: u64,
    /// The fleet's release when it was created.
    pub previous_release: Option<u64>,
    pub plan: RolloutPlan,
    pub progress: RolloutProgress,
    pub created_at: String,
    pub updated_at: String,
}

/// One device row of a rollout: the pure step's `RolloutDevice` and what it ran before.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDeviceRow {
    pub device: RolloutDevice,
    /// The rollout and release that had given it a release before this one (`None`: it
    /// followed the fleet's release): what a rollback puts back.
    pub previous_rollout: Option<u64>,
    pub previous_release: Option<u64>,
}

/// Something that happened in the fleet, as `GET /events` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: u64,
    pub at: String,
    pub fleet: Option<String>,
    pub device: Option<String>,
    pub rollout: Option<u64>,
    pub release: Option<u64>,
    pub kind: String,
    pub message: String,
}

/// Which events to list: newest first, older than `before` (an id) when given.
#[derive(Debug, Clone, Default)]
pub struct EventFilter<'a> {
    pub fleet: Option<&'a str>,
    pub device: Option<&'a str>,
    /// RFC 3339: only events at or after it.
    pub since: Option<&'a str>,
    pub before: Option<u64>,
    pub limit: usize,
}

/// A new digest of a tag a fleet's release follows, waiting for `minimumAge`.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetUpdate {
    pub fleet: String,
    pub reference: String,
    pub digest: String,
    /// Unix seconds it was first seen.
    pub detected_at: i64,
}

pub trait FleetStore {
    /// `Conflict` when the name is taken.
    fn create_fleet(&self, fleet: &Fleet) -> Result<(), Error>;
    fn fleet(&self, name: &str) -> Result<Option<Fleet>, Error>;
    fn fleets(&self) -> Result<Vec<Fleet>, Error>;
    /// Description, policy and plan; `false` if there is no such fleet.
    fn update_fleet(&self, fleet: &Fleet) -> Result<bool, Error>;
    /// `Conflict` while devices remain; `false` if there is no such fleet.
    fn delete_fleet(&self, name: &str) -> Result<bool, Error>;
    /// The devices of a fleet, by uuid.
    fn fleet_members(&self, fleet: &str) -> Result<Vec<Membership>, Error>;
    fn membership(&self, uuid: &str) -> Result<Option<Membership>, Error>;
    /// The last reports (state JSON) of these devices, those that have one.
    fn last_reports(&self, uuids: &[&str]) -> Result<HashMap<String, String>, Error>;
    /// Moves a device into a fleet (or out with `None`): it follows the fleet from now
    /// on (its pin and any rollout's release are dropped). `false` for no such device.
    fn set_device_fleet(&self, uuid: &str, fleet: Option<&str>) -> Result<bool, Error>;
    fn set_device_labels(&self, uuid: &str, labels: &BTreeMap<String, String>) -> Result<bool, Error>;
    /// Lets a pinned device follow its fleet again (the caller writes its new target).
    fn unpin(&self, uuid: &str) -> Result<bool, Error>;
    /// Sets (or with `None` clears) the release rollout `rollout` gave each device.
    fn set_rollout_release(&self, uuids: &[String], rollout: Option<u64>, release: Option<u64>) -> Result<(), Error>;

    /// Stores a release; its id.
    fn create_release(
        &self,
        fleet: &str,
        state: &str,
        references: &[String],
        source: &str,
        note: Option<&str>,
    ) -> Result<u64, Error>;
    fn release(&self, fleet: &str, id: u64) -> Result<Option<Release>, Error>;
    /// Newest first, older than `before` when given.
    fn releases(&self, fleet: &str, before: Option<u64>, limit: usize) -> Result<Vec<Release>, Error>;
    /// Makes `release` the fleet's current one: every device's rollout release is
    /// dropped (they follow it).
    fn set_fleet_release(&self, fleet: &str, release: u64) -> Result<(), Error>;
    /// Sets the floating references a fleet follows: those of its newest release (its
    /// active rollout's, else its current one), whose moves make new releases.
    fn set_fleet_references(&self, fleet: &str, references: &[String]) -> Result<(), Error>;
    /// Fleets whose newest release follows `reference` (canonical).
    fn fleets_following(&self, reference: &str) -> Result<Vec<String>, Error>;
    /// Records a new digest of a fleet's tag (keeping `detected_at` for the same digest);
    /// `true` when the digest was not the one recorded.
    fn put_fleet_update(&self, update: &FleetUpdate) -> Result<bool, Error>;
    fn fleet_updates(&self) -> Result<Vec<FleetUpdate>, Error>;
    fn delete_fleet_updates(&self, fleet: &str) -> Result<(), Error>;

    /// Stores a rollout with its devices; `Conflict` when the fleet has an active one
    /// that this does not supersede, or a waiting one already.
    fn create_rollout(&self, rollout: &StoredRollout, devices: &[RolloutDeviceRow]) -> Result<u64, Error>;
    fn rollout(&self, id: u64) -> Result<Option<StoredRollout>, Error>;
    /// Newest first.
    fn rollouts(&self, fleet: &str, limit: usize) -> Result<Vec<StoredRollout>, Error>;
    /// Running, paused and waiting rollouts, oldest first.
    fn active_rollouts(&self) -> Result<Vec<StoredRollout>, Error>;
    /// How many rollouts are in each status (`running`, `succeeded`, …), of every fleet.
    fn rollout_counts(&self) -> Result<Vec<(String, u64)>, Error>;
    fn rollout_devices(&self, id: u64) -> Result<Vec<RolloutDeviceRow>, Error>;
    /// Saves a step: the new progress, the changed rows, rows of devices that joined.
    fn save_rollout(&self, id: u64, progress: &RolloutProgress, rows: &[RolloutDeviceRow]) -> Result<(), Error>;

    fn record_events(&self, events: &[Event]) -> Result<(), Error>;
    fn events(&self, filter: &EventFilter<'_>) -> Result<Vec<Event>, Error>;
}

const FLEET_COLUMNS: &str = "name, description, update_policy, rollout_plan, current_release, created_at";

fn fleet_from_row(row: &Row<'_>) -> rusqlite::Result<Fleet> {
    Ok(Fleet {
        name: row.get(0)?,
        description: row.get(1)?,
        update_policy: row.get(2)?,
        rollout_plan: row.get(3)?,
        current_release: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        created_at: row.get(5)?,
    })
}

const MEMBER_COLUMNS: &str = "uuid, fleet, labels, pinned, release_id, rollout_id, rollout_release";

fn member_from_row(row: &Row<'_>) -> rusqlite::Result<Membership> {
    let labels: Option<String> = row.get(2)?;
    Ok(Membership {
        uuid: row.get(0)?,
        fleet: row.get(1)?,
        labels: labels.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default(),
        pinned: row.get(3)?,
        release_id: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        rollout_id: row.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        rollout_release: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
    })
}

const RELEASE_COLUMNS: &str = "id, fleet, state, refs, source, note, created_at";

fn release_from_row(row: &Row<'_>) -> rusqlite::Result<Release> {
    let refs: String = row.get(3)?;
    Ok(Release {
        id: row.get::<_, i64>(0)? as u64,
        fleet: row.get(1)?,
        state: row.get(2)?,
        references: serde_json::from_str(&refs).unwrap_or_default(),
        source: row.get(4)?,
        note: row.get(5)?,
        created_at: row.get(6)?,
    })
}

const ROLLOUT_COLUMNS: &str = "id, fleet, release_id, previous_release, plan, status, current_wave, wave_started_at, \
     wave_count, superseded_by, failures_accepted, created_at, updated_at";

fn status_from(text: &str) -> RolloutStatus {
    serde_json::from_value(serde_json::Value::String(text.to_string())).unwrap_or(RolloutStatus::Aborted)
}

fn device_status_from(text: &str) -> DeviceStatus {
    serde_json::from_value(serde_json::Value::String(text.to_string())).unwrap_or(DeviceStatus::Pending)
}

fn rollout_from_row(row: &Row<'_>) -> rusqlite::Result<StoredRollout> {
    let plan: String = row.get(4)?;
    let status: String = row.get(5)?;
    Ok(StoredRollout {
        id: row.get::<_, i64>(0)? as u64,
        fleet: row.get(1)?,
        release: row.get::<_, i64>(2)? as u64,
        previous_release: row.get::<_, Option<i64>>(3)?.map(|v| v as u64),
        // Stored from a checked plan; a row that no longer reads keeps the defaults.
        plan: serde_json::from_str(&plan).unwrap_or_default(),
        progress: RolloutProgress {
            status: status_from(&status),
            current_wave: row.get::<_, Option<i64>>(6)?.map(|v| v as usize),
            wave_started_at: row.get(7)?,
            wave_count: row.get::<_, i64>(8)? as usize,
            superseded_by: row.get::<_, Option<i64>>(9)?.map(|v| v as u64),
            failures_accepted: row.get::<_, i64>(10)? as u64,
        },
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
    })
}

const ROLLOUT_DEVICE_COLUMNS: &str = "device_uuid, wave, status, reason, updating_since, healthy_at, assigned, \
     running_since, fingerprint, previous_rollout, previous_release";

fn rollout_device_from_row(row: &Row<'_>) -> rusqlite::Result<RolloutDeviceRow> {
    let status: String = row.get(2)?;
    Ok(RolloutDeviceRow {
        device: RolloutDevice {
            uuid: row.get(0)?,
            wave: row.get::<_, i64>(1)? as usize,
            status: device_status_from(&status),
            reason: row.get(3)?,
            updating_since: row.get(4)?,
            healthy_at: row.get(5)?,
            assigned: row.get(6)?,
            running_since: row.get(7)?,
            fingerprint: row.get(8)?,
            observation: Observation::Updating,
        },
        previous_rollout: row.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        previous_release: row.get::<_, Option<i64>>(10)?.map(|v| v as u64),
    })
}

fn write_rollout_device(tx: &Transaction<'_>, rollout: u64, row: &RolloutDeviceRow) -> rusqlite::Result<()> {
    let d = &row.device;
    tx.execute(
        "INSERT INTO rollout_devices (rollout_id, device_uuid, wave, status, reason, updating_since, healthy_at,
                                      assigned, running_since, fingerprint, previous_rollout, previous_release)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (rollout_id, device_uuid) DO UPDATE SET wave = excluded.wave, status = excluded.status,
             reason = excluded.reason, updating_since = excluded.updating_since, healthy_at = excluded.healthy_at,
             assigned = excluded.assigned, running_since = excluded.running_since,
             fingerprint = excluded.fingerprint",
        params![
            rollout as i64,
            d.uuid,
            d.wave as i64,
            d.status.as_str(),
            d.reason,
            d.updating_since,
            d.healthy_at,
            d.assigned,
            d.running_since,
            d.fingerprint,
            row.previous_rollout.map(|v| v as i64),
            row.previous_release.map(|v| v as i64),
        ],
    )?;
    Ok(())
}

fn write_progress(tx: &Transaction<'_>, id: u64, progress: &RolloutProgress, now: &str) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE rollouts SET status = ?2, current_wave = ?3, wave_started_at = ?4, wave_count = ?5,
                             superseded_by = ?6, failures_accepted = ?7, updated_at = ?8
         WHERE id = ?1",
        params![
            id as i64,
            progress.status.as_str(),
            progress.current_wave.map(|w| w as i64),
            progress.wave_started_at,
            progress.wave_count as i64,
            progress.superseded_by.map(|v| v as i64),
            progress.failures_accepted as i64,
            now,
        ],
    )
}

impl FleetStore for SqliteStore {
    fn create_fleet(&self, fleet: &Fleet) -> Result<(), Error> {
        let inserted = self
            .conn_outside_polls()
            .execute(
                "INSERT OR IGNORE INTO fleets (name, description, update_policy, rollout_plan, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![fleet.name, fleet.description, fleet.update_policy, fleet.rollout_plan, fleet.created_at],
            )
            .map_err(db("creating a fleet"))?;
        if inserted == 0 {
            return Err(Error::Conflict { reason: format!("fleet {} exists already", fleet.name) });
        }
        Ok(())
    }

    fn fleet(&self, name: &str) -> Result<Option<Fleet>, Error> {
        self.reader()?
            .query_row(&format!("SELECT {FLEET_COLUMNS} FROM fleets WHERE name = ?1"), [name], fleet_from_row)
            .optional()
            .map_err(db("reading a fleet"))
    }

    fn fleets(&self) -> Result<Vec<Fleet>, Error> {
        let conn = self.reader()?;
        let mut stmt =
            conn.prepare(&format!("SELECT {FLEET_COLUMNS} FROM fleets ORDER BY name")).map_err(db("listing fleets"))?;
        let rows = stmt.query_map([], fleet_from_row).map_err(db("listing fleets"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing fleets"))
    }

    fn update_fleet(&self, fleet: &Fleet) -> Result<bool, Error> {
        let changed = self
            .conn_outside_polls()
            .execute(
                "UPDATE fleets SET description = ?2, update_policy = ?3, rollout_plan = ?4 WHERE name = ?1",
                params![fleet.name, fleet.description, fleet.update_policy, fleet.rollout_plan],
            )
            .map_err(db("updating a fleet"))?;
        Ok(changed == 1)
    }

    fn delete_fleet(&self, name: &str) -> Result<bool, Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("deleting a fleet"))?;
        let members: i64 = tx
            .query_row("SELECT count(*) FROM devices WHERE fleet = ?1", [name], |r| r.get(0))
            .map_err(db("deleting a fleet"))?;
        if members > 0 {
            return Err(Error::Conflict {
                reason: format!(
                    "fleet {name} still has {members} devices: move them out first (DELETE /devices/{{uuid}}/fleet)"
                ),
            });
        }
        tx.execute(
            "DELETE FROM rollout_devices WHERE rollout_id IN (SELECT id FROM rollouts WHERE fleet = ?1)",
            [name],
        )
        .map_err(db("deleting a fleet"))?;
        tx.execute("UPDATE provisioning_keys SET fleet = NULL WHERE fleet = ?1", [name])
            .map_err(db("deleting a fleet"))?;
        let deleted = tx.execute("DELETE FROM fleets WHERE name = ?1", [name]).map_err(db("deleting a fleet"))?;
        tx.commit().map_err(db("deleting a fleet"))?;
        Ok(deleted == 1)
    }

    fn fleet_members(&self, fleet: &str) -> Result<Vec<Membership>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {MEMBER_COLUMNS} FROM devices WHERE fleet = ?1 ORDER BY uuid"))
            .map_err(db("listing a fleet's devices"))?;
        let rows = stmt.query_map([fleet], member_from_row).map_err(db("listing a fleet's devices"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing a fleet's devices"))
    }

    fn membership(&self, uuid: &str) -> Result<Option<Membership>, Error> {
        self.reader()?
            .query_row(&format!("SELECT {MEMBER_COLUMNS} FROM devices WHERE uuid = ?1"), [uuid], member_from_row)
            .optional()
            .map_err(db("reading a device's fleet"))
    }

    fn last_reports(&self, uuids: &[&str]) -> Result<HashMap<String, String>, Error> {
        let conn = self.reader()?;
        let mut reports = HashMap::new();
        // SQLite binds at most 32,766 parameters; a few hundred per statement is plenty.
        for chunk in uuids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT uuid, current_state FROM devices WHERE current_state IS NOT NULL AND uuid IN ({marks})"
                ))
                .map_err(db("reading reports"))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(chunk.iter()), |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db("reading reports"))?;
            for row in rows {
                let (uuid, report): (String, String) = row.map_err(db("reading reports"))?;
                reports.insert(uuid, report);
            }
        }
        Ok(reports)
    }

    fn set_device_fleet(&self, uuid: &str, fleet: Option<&str>) -> Result<bool, Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("moving a device"))?;
        if let Some(fleet) = fleet {
            let exists: bool = tx
                .query_row("SELECT count(*) > 0 FROM fleets WHERE name = ?1", [fleet], |r| r.get(0))
                .map_err(db("moving a device"))?;
            if !exists {
                return Err(Error::NotFound { what: format!("fleet {fleet}") });
            }
        }
        let changed = tx
            .execute(
                "UPDATE devices SET fleet = ?2, pinned = 0, rollout_id = NULL, rollout_release = NULL WHERE uuid = ?1",
                params![uuid, fleet],
            )
            .map_err(db("moving a device"))?;
        tx.commit().map_err(db("moving a device"))?;
        Ok(changed == 1)
    }

    fn set_device_labels(&self, uuid: &str, labels: &BTreeMap<String, String>) -> Result<bool, Error> {
        let json = serde_json::to_string(labels).unwrap_or_else(|_| "{}".into());
        let changed = self
            .conn_outside_polls()
            .execute("UPDATE devices SET labels = ?2 WHERE uuid = ?1", params![uuid, json])
            .map_err(db("labelling a device"))?;
        Ok(changed == 1)
    }

    fn unpin(&self, uuid: &str) -> Result<bool, Error> {
        let changed = self
            .conn_outside_polls()
            .execute("UPDATE devices SET pinned = 0 WHERE uuid = ?1", [uuid])
            .map_err(db("unpinning a device"))?;
        Ok(changed == 1)
    }

    fn set_rollout_release(&self, uuids: &[String], rollout: Option<u64>, release: Option<u64>) -> Result<(), Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("assigning a release"))?;
        for uuid in uuids {
            tx.execute(
                "UPDATE devices SET rollout_id = ?2, rollout_release = ?3 WHERE uuid = ?1",
                params![uuid, rollout.map(|v| v as i64), release.map(|v| v as i64)],
            )
            .map_err(db("assigning a release"))?;
        }
        tx.commit().map_err(db("assigning a release"))
    }

    fn create_release(
        &self,
        fleet: &str,
        state: &str,
        references: &[String],
        source: &str,
        note: Option<&str>,
    ) -> Result<u64, Error> {
        let refs = serde_json::to_string(references).unwrap_or_else(|_| "[]".into());
        let id: i64 = self
            .conn_outside_polls()
            .query_row(
                "INSERT INTO releases (fleet, state, refs, source, note, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 RETURNING id",
                params![fleet, state, refs, source, note, rfc3339_now()],
                |r| r.get(0),
            )
            .map_err(db("storing a release"))?;
        Ok(id as u64)
    }

    fn release(&self, fleet: &str, id: u64) -> Result<Option<Release>, Error> {
        self.reader()?
            .query_row(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = ?1 AND id = ?2"),
                params![fleet, id as i64],
                release_from_row,
            )
            .optional()
            .map_err(db("reading a release"))
    }

    fn releases(&self, fleet: &str, before: Option<u64>, limit: usize) -> Result<Vec<Release>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
            ))
            .map_err(db("listing releases"))?;
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = stmt
            .query_map(params![fleet, before, limit.min(i64::MAX as usize) as i64], release_from_row)
            .map_err(db("listing releases"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing releases"))
    }

    fn set_fleet_release(&self, fleet: &str, release: u64) -> Result<(), Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("setting a fleet's release"))?;
        tx.execute("UPDATE fleets SET current_release = ?2 WHERE name = ?1", params![fleet, release as i64])
            .map_err(db("setting a fleet's release"))?;
        tx.execute("UPDATE devices SET rollout_id = NULL, rollout_release = NULL WHERE fleet = ?1", [fleet])
            .map_err(db("setting a fleet's release"))?;
        tx.commit().map_err(db("setting a fleet's release"))
    }

    fn set_fleet_references(&self, fleet: &str, references: &[String]) -> Result<(), Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("setting a fleet's tags"))?;
        tx.execute("DELETE FROM fleet_images WHERE fleet = ?1", [fleet]).map_err(db("setting a fleet's tags"))?;
        for reference in references {
            tx.execute(
                "INSERT OR IGNORE INTO fleet_images (fleet, reference) VALUES (?1, ?2)",
                params![fleet, reference],
            )
            .map_err(db("setting a fleet's tags"))?;
        }
        tx.commit().map_err(db("setting a fleet's tags"))
    }

    fn fleets_following(&self, reference: &str) -> Result<Vec<String>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT fleet FROM fleet_images WHERE reference = ?1 ORDER BY fleet")
            .map_err(db("listing fleets following a tag"))?;
        let rows = stmt.query_map([reference], |r| r.get(0)).map_err(db("listing fleets following a tag"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing fleets following a tag"))
    }

    fn put_fleet_update(&self, update: &FleetUpdate) -> Result<bool, Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("recording a fleet's moved tag"))?;
        let known: Option<String> = tx
            .query_row(
                "SELECT digest FROM fleet_updates WHERE fleet = ?1 AND reference = ?2",
                params![update.fleet, update.reference],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("recording a fleet's moved tag"))?;
        if known.as_deref() == Some(update.digest.as_str()) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO fleet_updates (fleet, reference, digest, detected_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (fleet, reference) DO UPDATE SET digest = excluded.digest, detected_at = excluded.detected_at",
            params![update.fleet, update.reference, update.digest, update.detected_at],
        )
        .map_err(db("recording a fleet's moved tag"))?;
        tx.commit().map_err(db("recording a fleet's moved tag"))?;
        Ok(true)
    }

    fn fleet_updates(&self) -> Result<Vec<FleetUpdate>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT fleet, reference, digest, detected_at FROM fleet_updates ORDER BY fleet, reference")
            .map_err(db("listing fleets' moved tags"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(FleetUpdate { fleet: r.get(0)?, reference: r.get(1)?, digest: r.get(2)?, detected_at: r.get(3)? })
            })
            .map_err(db("listing fleets' moved tags"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing fleets' moved tags"))
    }

    fn delete_fleet_updates(&self, fleet: &str) -> Result<(), Error> {
        self.conn_outside_polls()
            .execute("DELETE FROM fleet_updates WHERE fleet = ?1", [fleet])
            .map_err(db("dropping a fleet's moved tags"))?;
        Ok(())
    }

    fn create_rollout(&self, rollout: &StoredRollout, devices: &[RolloutDeviceRow]) -> Result<u64, Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("creating a rollout"))?;
        let active: Vec<(i64, String)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT id, status FROM rollouts WHERE fleet = ?1 AND status IN ('running', 'paused', 'waiting')",
                )
                .map_err(db("creating a rollout"))?;
            let rows =
                stmt.query_map([&rollout.fleet], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db("creating a rollout"))?;
            rows.collect::<Result<_, _>>().map_err(db("creating a rollout"))?
        };
        let superseding = rollout.progress.status == RolloutStatus::Waiting;
        if let Some((id, status)) = active.iter().find(|(_, s)| s == "waiting") {
            return Err(Error::Conflict {
                reason: format!(
                    "fleet {} has rollout {id} {status} to supersede the running one; abort it first",
                    rollout.fleet
                ),
            });
        }
        let running = active.first();
        match (running, superseding) {
            (Some((id, status)), false) => {
                return Err(Error::Conflict {
                    reason: format!(
                        "fleet {} has rollout {id} {status}: one rollout per fleet (\"supersede\": true starts this one at the end of its current wave)",
                        rollout.fleet
                    ),
                })
            }
            (None, true) => {
                return Err(Error::Conflict { reason: format!("fleet {} has no rollout to supersede", rollout.fleet) })
            }
            _ => {}
        }
        let now = rfc3339_now();
        let plan = serde_json::to_string(&rollout.plan).unwrap_or_else(|_| "{}".into());
        let id: i64 = tx
            .query_row(
                "INSERT INTO rollouts (fleet, release_id, previous_release, plan, status, current_wave,
                                       wave_started_at, wave_count, superseded_by, failures_accepted,
                                       created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, ?6, NULL, 0, ?7, ?7) RETURNING id",
                params![
                    rollout.fleet,
                    rollout.release as i64,
                    rollout.previous_release.map(|v| v as i64),
                    plan,
                    rollout.progress.status.as_str(),
                    rollout.progress.wave_count as i64,
                    now
                ],
                |r| r.get(0),
            )
            .map_err(db("creating a rollout"))?;
        if let (Some((running_id, _)), true) = (running, superseding) {
            tx.execute("UPDATE rollouts SET superseded_by = ?2 WHERE id = ?1", params![running_id, id])
                .map_err(db("creating a rollout"))?;
        }
        for row in devices {
            write_rollout_device(&tx, id as u64, row).map_err(db("creating a rollout"))?;
        }
        tx.commit().map_err(db("creating a rollout"))?;
        Ok(id as u64)
    }

    fn rollout(&self, id: u64) -> Result<Option<StoredRollout>, Error> {
        self.reader()?
            .query_row(
                &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
                [id.min(i64::MAX as u64) as i64],
                rollout_from_row,
            )
            .optional()
            .map_err(db("reading a rollout"))
    }

    fn rollouts(&self, fleet: &str, limit: usize) -> Result<Vec<StoredRollout>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE fleet = ?1 ORDER BY id DESC LIMIT ?2"))
            .map_err(db("listing rollouts"))?;
        let rows = stmt
            .query_map(params![fleet, limit.min(i64::MAX as usize) as i64], rollout_from_row)
            .map_err(db("listing rollouts"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing rollouts"))
    }

    fn active_rollouts(&self) -> Result<Vec<StoredRollout>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE status IN ('running', 'paused', 'waiting') ORDER BY id"
            ))
            .map_err(db("listing rollouts"))?;
        let rows = stmt.query_map([], rollout_from_row).map_err(db("listing rollouts"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing rollouts"))
    }

    fn rollout_counts(&self) -> Result<Vec<(String, u64)>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT status, COUNT(*) FROM rollouts GROUP BY status ORDER BY status")
            .map_err(db("counting rollouts"))?;
        let rows = stmt
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?.max(0) as u64)))
            .map_err(db("counting rollouts"))?;
        rows.collect::<Result<_, _>>().map_err(db("counting rollouts"))
    }

    fn rollout_devices(&self, id: u64) -> Result<Vec<RolloutDeviceRow>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {ROLLOUT_DEVICE_COLUMNS} FROM rollout_devices WHERE rollout_id = ?1 ORDER BY wave, device_uuid"
            ))
            .map_err(db("listing a rollout's devices"))?;
        let rows = stmt
            .query_map([id.min(i64::MAX as u64) as i64], rollout_device_from_row)
            .map_err(db("listing a rollout's devices"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing a rollout's devices"))
    }

    fn save_rollout(&self, id: u64, progress: &RolloutProgress, rows: &[RolloutDeviceRow]) -> Result<(), Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("saving a rollout"))?;
        if write_progress(&tx, id, progress, &rfc3339_now()).map_err(db("saving a rollout"))? == 0 {
            return Err(Error::NotFound { what: format!("rollout {id}") });
        }
        for row in rows {
            write_rollout_device(&tx, id, row).map_err(db("saving a rollout"))?;
        }
        tx.commit().map_err(db("saving a rollout"))
    }

    fn record_events(&self, events: &[Event]) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("recording events"))?;
        for e in events {
            tx.execute(
                "INSERT INTO events (at, fleet, device, rollout, release_id, kind, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    e.at,
                    e.fleet,
                    e.device,
                    e.rollout.map(|v| v as i64),
                    e.release.map(|v| v as i64),
                    e.kind,
                    e.message
                ],
            )
            .map_err(db("recording events"))?;
        }
        tx.execute("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1", [EVENTS_KEPT])
            .map_err(db("pruning events"))?;
        tx.commit().map_err(db("recording events"))
    }

    fn events(&self, filter: &EventFilter<'_>) -> Result<Vec<Event>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(
                "SELECT id, at, fleet, device, rollout, release_id, kind, message FROM events
                 WHERE (?1 IS NULL OR fleet = ?1) AND (?2 IS NULL OR device = ?2) AND (?3 IS NULL OR at >= ?3)
                   AND id < ?4
                 ORDER BY id DESC LIMIT ?5",
            )
            .map_err(db("listing events"))?;
        let before = filter.before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = stmt
            .query_map(
                params![filter.fleet, filter.device, filter.since, before, filter.limit.min(i64::MAX as usize) as i64],
                |r| {
                    Ok(Event {
                        id: r.get::<_, i64>(0)? as u64,
                        at: r.get(1)?,
                        fleet: r.get(2)?,
                        device: r.get(3)?,
                        rollout: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                        release: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                        kind: r.get(6)?,
                        message: r.get(7)?,
                    })
                },
            )
            .map_err(db("listing events"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing events"))
    }
}

#[cfg(test)]
#[path = "fleets_tests.rs"]
mod tests;
