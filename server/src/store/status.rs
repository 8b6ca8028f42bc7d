//! What the dashboard's device views read: each device with its place in the fleets, the
//! target state it was given and its last report, in one query, handed over row by row so
//! that a listing of 10,000 devices holds one device's JSON at a time.

use super::fleets::Membership;
use super::sqlite::{db, device_from_row, SqliteStore};
use super::DeviceRecord;
use crate::Error;

/// One device as its status is judged from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatusRow {
    pub device: DeviceRecord,
    pub membership: Membership,
    /// The target state it was given (JSON) and when that version was made.
    pub target: Option<(String, String)>,
    /// Its last report as it sent it (JSON).
    pub report: Option<String>,
    /// Its last known system facts (JSON: `agent_version`, `os_version`, …).
    pub system_info: Option<String>,
}

pub trait StatusStore {
    /// Every device (or only `uuid`) in uuid order, each passed to `visit`.
    fn visit_device_statuses(&self, uuid: Option<&str>, visit: &mut dyn FnMut(DeviceStatusRow)) -> Result<(), Error>;
}

const STATUS_QUERY: &str = "SELECT d.uuid, d.device_name, d.device_type, d.api_key_hash IS NOT NULL, d.created_at, \
     d.registered_at, d.target_version, d.reported_at, d.id, d.registration_completed_at IS NOT NULL, d.fleet, \
     d.labels, d.pinned, d.release_id, d.rollout_id, d.rollout_release, t.state, t.created_at, d.current_state, \
     d.system_info \
     FROM devices d LEFT JOIN target_states t ON t.device_uuid = d.uuid AND t.version = d.target_version \
     WHERE ?1 IS NULL OR d.uuid = ?1 ORDER BY d.uuid";

fn status_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceStatusRow> {
    let device = device_from_row(row)?;
    let membership = Membership {
        uuid: device.uuid.clone(),
        fleet: device.fleet.clone(),
        labels: device.labels.clone(),
        pinned: row.get::<_, Option<bool>>(12)?.unwrap_or(false),
        release_id: row.get::<_, Option<i64>>(13)?.map(|v| v as u64),
        rollout_id: row.get::<_, Option<i64>>(14)?.map(|v| v as u64),
        rollout_release: row.get::<_, Option<i64>>(15)?.map(|v| v as u64),
    };
    let target_state: Option<String> = row.get(16)?;
    let target_at: Option<String> = row.get(17)?;
    Ok(DeviceStatusRow {
        device,
        membership,
        target: target_state.zip(target_at),
        report: row.get(18)?,
        system_info: row.get(19)?,
    })
}

impl StatusStore for SqliteStore {
    fn visit_device_statuses(&self, uuid: Option<&str>, visit: &mut dyn FnMut(DeviceStatusRow)) -> Result<(), Error> {
        let reader = self.reader()?;
        let mut stmt = reader.prepare_cached(STATUS_QUERY).map_err(db("reading device statuses"))?;
        let mut rows = stmt.query([uuid]).map_err(db("reading device statuses"))?;
        while let Some(row) = rows.next().map_err(db("reading device statuses"))? {
            visit(status_row(row).map_err(db("reading device statuses"))?);
        }
        Ok(())
    }
}
