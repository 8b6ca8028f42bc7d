//! Fleets, their frozen releases and staged rollouts, as stored: a fleet and what it
//! runs, each device's fleet, labels and pin, the rows of a rollout's devices, the tags
//! a fleet follows, and the event log. The decisions are elsewhere (`rollout/`,
//! `fleets.rs`); this is only where they are kept, so that a restart loses none.

use super::sql::{args, db, DbError, Row, Sql, SqlExt, ToValue};
use super::sql_store::Touches;
use super::SqlStore;
use crate::rollout::{DeviceStatus, Observation, RolloutDevice, RolloutPlan, RolloutProgress, RolloutStatus};
use crate::timefmt::rfc3339_now;
use crate::Error;
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

fn fleet_from_row(row: &Row) -> Result<Fleet, DbError> {
    Ok(Fleet {
        name: row.get(0)?,
        description: row.get(1)?,
        update_policy: row.get(2)?,
        rollout_plan: row.get(3)?,
        current_release: row.get(4)?,
        created_at: row.get(5)?,
    })
}

const MEMBER_COLUMNS: &str = "uuid, fleet, labels, pinned, release_id, rollout_id, rollout_release";

fn member_from_row(row: &Row) -> Result<Membership, DbError> {
    let labels: Option<String> = row.get(2)?;
    Ok(Membership {
        uuid: row.get(0)?,
        fleet: row.get(1)?,
        labels: labels.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default(),
        pinned: row.get(3)?,
        release_id: row.get(4)?,
        rollout_id: row.get(5)?,
        rollout_release: row.get(6)?,
    })
}

const RELEASE_COLUMNS: &str = "id, fleet, state, refs, source, note, created_at";

fn release_from_row(row: &Row) -> Result<Release, DbError> {
    let refs: String = row.get(3)?;
    Ok(Release {
        id: row.get(0)?,
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

fn rollout_from_row(row: &Row) -> Result<StoredRollout, DbError> {
    let plan: String = row.get(4)?;
    let status: String = row.get(5)?;
    Ok(StoredRollout {
        id: row.get(0)?,
        fleet: row.get(1)?,
        release: row.get(2)?,
        previous_release: row.get(3)?,
        // Stored from a checked plan; a row that no longer reads keeps the defaults.
        plan: serde_json::from_str(&plan).unwrap_or_default(),
        progress: RolloutProgress {
            status: status_from(&status),
            current_wave: row.get::<Option<i64>>(6)?.map(|v| v as usize),
            wave_started_at: row.get(7)?,
            wave_count: row.get::<i64>(8)? as usize,
            superseded_by: row.get(9)?,
            failures_accepted: row.get(10)?,
        },
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
    })
}

const ROLLOUT_DEVICE_COLUMNS: &str = "device_uuid, wave, status, reason, updating_since, healthy_at, assigned, \
     running_since, fingerprint, previous_rollout, previous_release";

fn rollout_device_from_row(row: &Row) -> Result<RolloutDeviceRow, DbError> {
    let status: String = row.get(2)?;
    Ok(RolloutDeviceRow {
        device: RolloutDevice {
            uuid: row.get(0)?,
            wave: row.get::<i64>(1)? as usize,
            status: device_status_from(&status),
            reason: row.get(3)?,
            updating_since: row.get(4)?,
            healthy_at: row.get(5)?,
            assigned: row.get(6)?,
            running_since: row.get(7)?,
            fingerprint: row.get(8)?,
            observation: Observation::Updating,
        },
        previous_rollout: row.get(9)?,
        previous_release: row.get(10)?,
    })
}

fn write_rollout_device(tx: &mut dyn Sql, rollout: u64, row: &RolloutDeviceRow) -> Result<(), DbError> {
    let d = &row.device;
    tx.execute(
        "INSERT INTO rollout_devices (rollout_id, device_uuid, wave, status, reason, updating_since, healthy_at,
                                      assigned, running_since, fingerprint, previous_rollout, previous_release)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (rollout_id, device_uuid) DO UPDATE SET wave = excluded.wave, status = excluded.status,
             reason = excluded.reason, updating_since = excluded.updating_since, healthy_at = excluded.healthy_at,
             assigned = excluded.assigned, running_since = excluded.running_since,
             fingerprint = excluded.fingerprint",
        args![
            rollout,
            d.uuid,
            d.wave,
            d.status.as_str(),
            d.reason,
            d.updating_since,
            d.healthy_at,
            d.assigned,
            d.running_since,
            d.fingerprint,
            row.previous_rollout,
            row.previous_release,
        ],
    )?;
    Ok(())
}

fn write_progress(tx: &mut dyn Sql, id: u64, progress: &RolloutProgress, now: &str) -> Result<u64, DbError> {
    tx.execute(
        "UPDATE rollouts SET status = ?2, current_wave = ?3, wave_started_at = ?4, wave_count = ?5,
                             superseded_by = ?6, failures_accepted = ?7, updated_at = ?8
         WHERE id = ?1",
        args![
            id,
            progress.status.as_str(),
            progress.current_wave,
            progress.wave_started_at,
            progress.wave_count,
            progress.superseded_by,
            progress.failures_accepted,
            now,
        ],
    )
}

impl FleetStore for SqlStore {
    fn create_fleet(&self, fleet: &Fleet) -> Result<(), Error> {
        let inserted = self.write("creating a fleet", Touches::NothingPolled, |tx| {
            tx.execute(
                "INSERT INTO fleets (name, description, update_policy, rollout_plan, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                args![fleet.name, fleet.description, fleet.update_policy, fleet.rollout_plan, fleet.created_at],
            )
            .map_err(db("creating a fleet"))
        })?;
        if inserted == 0 {
            return Err(Error::Conflict { reason: format!("fleet {} exists already", fleet.name) });
        }
        Ok(())
    }

    fn fleet(&self, name: &str) -> Result<Option<Fleet>, Error> {
        self.read(|c| {
            c.query_opt(&format!("SELECT {FLEET_COLUMNS} FROM fleets WHERE name = ?1"), args![name], fleet_from_row)
                .map_err(db("reading a fleet"))
        })
    }

    fn fleets(&self) -> Result<Vec<Fleet>, Error> {
        self.read(|c| {
            c.query_map(&format!("SELECT {FLEET_COLUMNS} FROM fleets ORDER BY name"), args![], fleet_from_row)
                .map_err(db("listing fleets"))
        })
    }

    fn update_fleet(&self, fleet: &Fleet) -> Result<bool, Error> {
        let changed = self.write("updating a fleet", Touches::NothingPolled, |tx| {
            tx.execute(
                "UPDATE fleets SET description = ?2, update_policy = ?3, rollout_plan = ?4 WHERE name = ?1",
                args![fleet.name, fleet.description, fleet.update_policy, fleet.rollout_plan],
            )
            .map_err(db("updating a fleet"))
        })?;
        Ok(changed == 1)
    }

    fn delete_fleet(&self, name: &str) -> Result<bool, Error> {
        let failed = db("deleting a fleet");
        let deleted = self.write("deleting a fleet", Touches::NothingPolled, |tx| {
            let members: i64 = tx
                .query_row("SELECT count(*) FROM devices WHERE fleet = ?1", args![name], |r| r.get(0))
                .map_err(&failed)?;
            if members > 0 {
                return Err(Error::Conflict {
                    reason: format!(
                        "fleet {name} still has {members} devices: move them out first (DELETE /devices/{{uuid}}/fleet)"
                    ),
                });
            }
            tx.execute(
                "DELETE FROM rollout_devices WHERE rollout_id IN (SELECT id FROM rollouts WHERE fleet = ?1)",
                args![name],
            )
            .map_err(&failed)?;
            tx.execute("UPDATE provisioning_keys SET fleet = NULL WHERE fleet = ?1", args![name]).map_err(&failed)?;
            tx.execute("DELETE FROM fleets WHERE name = ?1", args![name]).map_err(&failed)
        })?;
        Ok(deleted == 1)
    }

    fn fleet_members(&self, fleet: &str) -> Result<Vec<Membership>, Error> {
        self.read(|c| {
            c.query_map(
                &format!("SELECT {MEMBER_COLUMNS} FROM devices WHERE fleet = ?1 ORDER BY uuid"),
                args![fleet],
                member_from_row,
            )
            .map_err(db("listing a fleet's devices"))
        })
    }

    fn membership(&self, uuid: &str) -> Result<Option<Membership>, Error> {
        self.read(|c| {
            c.query_opt(&format!("SELECT {MEMBER_COLUMNS} FROM devices WHERE uuid = ?1"), args![uuid], member_from_row)
                .map_err(db("reading a device's fleet"))
        })
    }

    fn last_reports(&self, uuids: &[&str]) -> Result<HashMap<String, String>, Error> {
        self.read(|c| {
            let mut reports = HashMap::new();
            // SQLite binds at most 32,766 parameters, PostgreSQL 65,535; a few hundred per
            // statement is plenty.
            for chunk in uuids.chunks(500) {
                let marks = (1..=chunk.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                c.query_each(
                    &format!(
                        "SELECT uuid, current_state FROM devices WHERE current_state IS NOT NULL AND uuid IN ({marks})"
                    ),
                    &chunk.iter().map(|uuid| uuid.to_value()).collect::<Vec<_>>(),
                    &mut |row: Row| {
                        reports.insert(row.get(0)?, row.get(1)?);
                        Ok(())
                    },
                )
                .map_err(db("reading reports"))?;
            }
            Ok(reports)
        })
    }

    fn set_device_fleet(&self, uuid: &str, fleet: Option<&str>) -> Result<bool, Error> {
        let failed = db("moving a device");
        let changed = self.write("moving a device", Touches::NothingPolled, |tx| {
            if let Some(fleet) = fleet {
                let exists: bool = tx
                    .query_row("SELECT count(*) > 0 FROM fleets WHERE name = ?1", args![fleet], |r| r.get(0))
                    .map_err(&failed)?;
                if !exists {
                    return Err(Error::NotFound { what: format!("fleet {fleet}") });
                }
            }
            tx.execute(
                "UPDATE devices SET fleet = ?2, pinned = 0, rollout_id = NULL, rollout_release = NULL WHERE uuid = ?1",
                args![uuid, fleet],
            )
            .map_err(&failed)
        })?;
        Ok(changed == 1)
    }

    fn set_device_labels(&self, uuid: &str, labels: &BTreeMap<String, String>) -> Result<bool, Error> {
        let json = serde_json::to_string(labels).unwrap_or_else(|_| "{}".into());
        let changed = self.write("labelling a device", Touches::NothingPolled, |tx| {
            tx.execute("UPDATE devices SET labels = ?2 WHERE uuid = ?1", args![uuid, json])
                .map_err(db("labelling a device"))
        })?;
        Ok(changed == 1)
    }

    fn unpin(&self, uuid: &str) -> Result<bool, Error> {
        let changed = self.write("unpinning a device", Touches::NothingPolled, |tx| {
            tx.execute("UPDATE devices SET pinned = 0 WHERE uuid = ?1", args![uuid]).map_err(db("unpinning a device"))
        })?;
        Ok(changed == 1)
    }

    fn set_rollout_release(&self, uuids: &[String], rollout: Option<u64>, release: Option<u64>) -> Result<(), Error> {
        self.write("assigning a release", Touches::NothingPolled, |tx| {
            for uuid in uuids {
                tx.execute(
                    "UPDATE devices SET rollout_id = ?2, rollout_release = ?3 WHERE uuid = ?1",
                    args![uuid, rollout, release],
                )
                .map_err(db("assigning a release"))?;
            }
            Ok(())
        })
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
        let now = rfc3339_now();
        self.write("storing a release", Touches::NothingPolled, |tx| {
            tx.query_row(
                "INSERT INTO releases (fleet, state, refs, source, note, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 RETURNING id",
                args![fleet, state, refs, source, note, now],
                |r| r.get(0),
            )
            .map_err(db("storing a release"))
        })
    }

    fn release(&self, fleet: &str, id: u64) -> Result<Option<Release>, Error> {
        self.read(|c| {
            c.query_opt(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = ?1 AND id = ?2"),
                args![fleet, id.min(i64::MAX as u64)],
                release_from_row,
            )
            .map_err(db("reading a release"))
        })
    }

    fn releases(&self, fleet: &str, before: Option<u64>, limit: usize) -> Result<Vec<Release>, Error> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.read(|c| {
            c.query_map(
                &format!(
                    "SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
                ),
                args![fleet, before, limit],
                release_from_row,
            )
            .map_err(db("listing releases"))
        })
    }

    fn set_fleet_release(&self, fleet: &str, release: u64) -> Result<(), Error> {
        let failed = db("setting a fleet's release");
        self.write("setting a fleet's release", Touches::NothingPolled, |tx| {
            tx.execute("UPDATE fleets SET current_release = ?2 WHERE name = ?1", args![fleet, release])
                .map_err(&failed)?;
            tx.execute("UPDATE devices SET rollout_id = NULL, rollout_release = NULL WHERE fleet = ?1", args![fleet])
                .map_err(&failed)?;
            Ok(())
        })
    }

    fn set_fleet_references(&self, fleet: &str, references: &[String]) -> Result<(), Error> {
        let failed = db("setting a fleet's tags");
        self.write("setting a fleet's tags", Touches::NothingPolled, |tx| {
            tx.execute("DELETE FROM fleet_images WHERE fleet = ?1", args![fleet]).map_err(&failed)?;
            for reference in references {
                tx.execute(
                    "INSERT INTO fleet_images (fleet, reference) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    args![fleet, reference],
                )
                .map_err(&failed)?;
            }
            Ok(())
        })
    }

    fn fleets_following(&self, reference: &str) -> Result<Vec<String>, Error> {
        self.read(|c| {
            c.query_map("SELECT fleet FROM fleet_images WHERE reference = ?1 ORDER BY fleet", args![reference], |r| {
                r.get(0)
            })
            .map_err(db("listing fleets following a tag"))
        })
    }

    fn put_fleet_update(&self, update: &FleetUpdate) -> Result<bool, Error> {
        let failed = db("recording a fleet's moved tag");
        self.write("recording a fleet's moved tag", Touches::NothingPolled, |tx| {
            let known: Option<String> = tx
                .query_opt(
                    "SELECT digest FROM fleet_updates WHERE fleet = ?1 AND reference = ?2",
                    args![update.fleet, update.reference],
                    |r| r.get(0),
                )
                .map_err(&failed)?;
            if known.as_deref() == Some(update.digest.as_str()) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO fleet_updates (fleet, reference, digest, detected_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (fleet, reference) DO UPDATE SET digest = excluded.digest, detected_at = excluded.detected_at",
                args![update.fleet, update.reference, update.digest, update.detected_at],
            )
            .map_err(&failed)?;
            Ok(true)
        })
    }

    fn fleet_updates(&self) -> Result<Vec<FleetUpdate>, Error> {
        self.read(|c| {
            c.query_map(
                "SELECT fleet, reference, digest, detected_at FROM fleet_updates ORDER BY fleet, reference",
                args![],
                |r| {
                    Ok(FleetUpdate {
                        fleet: r.get(0)?,
                        reference: r.get(1)?,
                        digest: r.get(2)?,
                        detected_at: r.get(3)?,
                    })
                },
            )
            .map_err(db("listing fleets' moved tags"))
        })
    }

    fn delete_fleet_updates(&self, fleet: &str) -> Result<(), Error> {
        self.write("dropping a fleet's moved tags", Touches::NothingPolled, |tx| {
            tx.execute("DELETE FROM fleet_updates WHERE fleet = ?1", args![fleet])
                .map_err(db("dropping a fleet's moved tags"))?;
            Ok(())
        })
    }

    fn create_rollout(&self, rollout: &StoredRollout, devices: &[RolloutDeviceRow]) -> Result<u64, Error> {
        let failed = db("creating a rollout");
        let now = rfc3339_now();
        let plan = serde_json::to_string(&rollout.plan).unwrap_or_else(|_| "{}".into());
        self.write("creating a rollout", Touches::NothingPolled, |tx| {
            let active: Vec<(u64, String)> = tx
                .query_map(
                    "SELECT id, status FROM rollouts WHERE fleet = ?1 AND status IN ('running', 'paused', 'waiting')",
                    args![rollout.fleet],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(&failed)?;
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
                    return Err(Error::Conflict {
                        reason: format!("fleet {} has no rollout to supersede", rollout.fleet),
                    })
                }
                _ => {}
            }
            let id: u64 = tx
                .query_row(
                    "INSERT INTO rollouts (fleet, release_id, previous_release, plan, status, current_wave,
                                           wave_started_at, wave_count, superseded_by, failures_accepted,
                                           created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, ?6, NULL, 0, ?7, ?7) RETURNING id",
                    args![
                        rollout.fleet,
                        rollout.release,
                        rollout.previous_release,
                        plan,
                        rollout.progress.status.as_str(),
                        rollout.progress.wave_count,
                        now
                    ],
                    |r| r.get(0),
                )
                .map_err(&failed)?;
            if let (Some((running_id, _)), true) = (running, superseding) {
                tx.execute("UPDATE rollouts SET superseded_by = ?2 WHERE id = ?1", args![running_id, id])
                    .map_err(&failed)?;
            }
            for row in devices {
                write_rollout_device(tx, id, row).map_err(&failed)?;
            }
            Ok(id)
        })
    }

    fn rollout(&self, id: u64) -> Result<Option<StoredRollout>, Error> {
        self.read(|c| {
            c.query_opt(
                &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
                args![id.min(i64::MAX as u64)],
                rollout_from_row,
            )
            .map_err(db("reading a rollout"))
        })
    }

    fn rollouts(&self, fleet: &str, limit: usize) -> Result<Vec<StoredRollout>, Error> {
        self.read(|c| {
            c.query_map(
                &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE fleet = ?1 ORDER BY id DESC LIMIT ?2"),
                args![fleet, limit],
                rollout_from_row,
            )
            .map_err(db("listing rollouts"))
        })
    }

    fn active_rollouts(&self) -> Result<Vec<StoredRollout>, Error> {
        self.read(|c| {
            c.query_map(
                &format!(
                    "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE status IN ('running', 'paused', 'waiting') ORDER BY id"
                ),
                args![],
                rollout_from_row,
            )
            .map_err(db("listing rollouts"))
        })
    }

    fn rollout_counts(&self) -> Result<Vec<(String, u64)>, Error> {
        self.read(|c| {
            c.query_map("SELECT status, COUNT(*) FROM rollouts GROUP BY status ORDER BY status", args![], |row| {
                Ok((row.get::<String>(0)?, row.get::<i64>(1)?.max(0) as u64))
            })
            .map_err(db("counting rollouts"))
        })
    }

    fn rollout_devices(&self, id: u64) -> Result<Vec<RolloutDeviceRow>, Error> {
        self.read(|c| {
            c.query_map(
                &format!(
                    "SELECT {ROLLOUT_DEVICE_COLUMNS} FROM rollout_devices WHERE rollout_id = ?1 ORDER BY wave, device_uuid"
                ),
                args![id.min(i64::MAX as u64)],
                rollout_device_from_row,
            )
            .map_err(db("listing a rollout's devices"))
        })
    }

    fn save_rollout(&self, id: u64, progress: &RolloutProgress, rows: &[RolloutDeviceRow]) -> Result<(), Error> {
        let failed = db("saving a rollout");
        let now = rfc3339_now();
        self.write("saving a rollout", Touches::NothingPolled, |tx| {
            if write_progress(tx, id, progress, &now).map_err(&failed)? == 0 {
                return Err(Error::NotFound { what: format!("rollout {id}") });
            }
            for row in rows {
                write_rollout_device(tx, id, row).map_err(&failed)?;
            }
            Ok(())
        })
    }

    fn record_events(&self, events: &[Event]) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        self.write("recording events", Touches::NothingPolled, |tx| {
            for e in events {
                tx.execute(
                    "INSERT INTO events (at, fleet, device, rollout, release_id, kind, message)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    args![e.at, e.fleet, e.device, e.rollout, e.release, e.kind, e.message],
                )
                .map_err(db("recording events"))?;
            }
            tx.execute("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1", args![EVENTS_KEPT])
                .map_err(db("pruning events"))?;
            Ok(())
        })
    }

    fn events(&self, filter: &EventFilter<'_>) -> Result<Vec<Event>, Error> {
        let before = filter.before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.read(|c| {
            c.query_map(
                "SELECT id, at, fleet, device, rollout, release_id, kind, message FROM events
                 WHERE (CAST(?1 AS TEXT) IS NULL OR fleet = ?1) AND (CAST(?2 AS TEXT) IS NULL OR device = ?2)
                   AND (CAST(?3 AS TEXT) IS NULL OR at >= ?3)
                   AND id < ?4
                 ORDER BY id DESC LIMIT ?5",
                args![filter.fleet, filter.device, filter.since, before, filter.limit],
                |r| {
                    Ok(Event {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        fleet: r.get(2)?,
                        device: r.get(3)?,
                        rollout: r.get(4)?,
                        release: r.get(5)?,
                        kind: r.get(6)?,
                        message: r.get(7)?,
                    })
                },
            )
            .map_err(db("listing events"))
        })
    }
}

#[cfg(test)]
#[path = "fleets_tests.rs"]
mod tests;
