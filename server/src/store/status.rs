//! What the dashboard's device views read. Every device's head (its record, its place in
//! the fleets, when its target was set: no JSON but its labels) in one light query, so a
//! listing of 10,000 devices filters and counts without reading 10,000 target states; and
//! the details judged from (target state, last report, system facts) row by row, for the
//! devices that need judging: one device's JSON at a time.

use super::devices::device_from_row;
use super::fleets::Membership;
use super::sql::{args, db, DbError, Row, SqlExt};
use super::{DeviceRecord, SqlStore};
use crate::Error;

/// A device without its JSON documents.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceHead {
    pub device: DeviceRecord,
    pub membership: Membership,
    /// When the version of its target it was given was made (RFC 3339), if it has one.
    pub target_set_at: Option<String>,
}

/// One device as its status is judged from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatusRow {
    pub head: DeviceHead,
    /// The target state it was given (JSON).
    pub target: Option<String>,
    /// Its last report as it sent it (JSON).
    pub report: Option<String>,
    /// Its last known system facts (JSON: `agent_version`, `os_version`, …).
    pub system_info: Option<String>,
}

pub trait StatusStore {
    /// Every device's head, in uuid order.
    fn device_heads(&self) -> Result<Vec<DeviceHead>, Error>;
    /// Every device (or only `uuid`) with its documents, in uuid order, each passed to `visit`.
    fn visit_device_statuses(&self, uuid: Option<&str>, visit: &mut dyn FnMut(DeviceStatusRow)) -> Result<(), Error>;
}

/// The head's columns: `device_from_row`'s, then the membership's, then the target's time.
const HEAD_COLUMNS: &str = "d.uuid, d.device_name, d.device_type, d.api_key_hash IS NOT NULL, d.created_at, \
     d.registered_at, d.target_version, d.reported_at, d.id, d.registration_completed_at IS NOT NULL, d.fleet, \
     d.labels, d.pinned, d.release_id, d.rollout_id, d.rollout_release, t.created_at";
const FROM: &str =
    "FROM devices d LEFT JOIN target_states t ON t.device_uuid = d.uuid AND t.version = d.target_version";

fn head_from_row(row: &Row) -> Result<DeviceHead, DbError> {
    let device = device_from_row(row)?;
    let membership = Membership {
        uuid: device.uuid.clone(),
        fleet: device.fleet.clone(),
        labels: device.labels.clone(),
        pinned: row.get::<Option<bool>>(12)?.unwrap_or(false),
        release_id: row.get(13)?,
        rollout_id: row.get(14)?,
        rollout_release: row.get(15)?,
    };
    Ok(DeviceHead { device, membership, target_set_at: row.get(16)? })
}

fn status_from_row(row: &Row) -> Result<DeviceStatusRow, DbError> {
    Ok(DeviceStatusRow {
        head: head_from_row(row)?,
        target: row.get(17)?,
        report: row.get(18)?,
        system_info: row.get(19)?,
    })
}

impl StatusStore for SqlStore {
    fn device_heads(&self) -> Result<Vec<DeviceHead>, Error> {
        self.read(|c| {
            c.query_map(&format!("SELECT {HEAD_COLUMNS} {FROM} ORDER BY d.uuid"), args![], head_from_row)
                .map_err(db("listing device heads"))
        })
    }

    fn visit_device_statuses(&self, uuid: Option<&str>, visit: &mut dyn FnMut(DeviceStatusRow)) -> Result<(), Error> {
        let columns = format!("SELECT {HEAD_COLUMNS}, t.state, d.current_state, d.system_info {FROM}");
        // Two statements: `?1 IS NULL OR d.uuid = ?1` would scan the table for one device.
        let (query, args) = match uuid {
            Some(uuid) => (format!("{columns} WHERE d.uuid = ?1"), args![uuid]),
            None => (format!("{columns} ORDER BY d.uuid"), args![]),
        };
        self.read(|c| {
            c.query_each(&query, args, &mut |row: Row| {
                visit(status_from_row(&row)?);
                Ok(())
            })
            .map_err(db("reading device statuses"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_engines;
    use crate::store::{NewReport, PollAnswer, Store, TelemetryStore};

    both_engines! {
        fn heads_and_statuses_come_in_uuid_order_with_their_documents(store) {
            let poll = PollAnswer { etag: "\"e\"".into(), body: "{}".into() };
            for (uuid, state) in [("d2", r#"{"v":2}"#), ("d1", r#"{"v":1}"#)] {
                store.set_target(uuid, &crate::store::testing::operator_target(state, &poll)).unwrap();
            }
            let report = NewReport { state: r#"{"r":1}"#, known: "{}", sample: None, now: 100 };
            store.record_report("d1", &report).unwrap();

            let heads = store.device_heads().unwrap();
            assert_eq!(heads.iter().map(|h| h.device.uuid.as_str()).collect::<Vec<_>>(), ["d1", "d2"]);
            assert!(heads[0].membership.pinned, "an operator's target pins the device");
            assert_eq!((heads[0].membership.release_id, heads[0].membership.rollout_id), (None, None));
            assert!(heads[0].target_set_at.is_some());

            let mut rows = Vec::new();
            store.visit_device_statuses(None, &mut |row| rows.push(row)).unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0].head, heads[0]);
            assert_eq!(rows[0].target.as_deref(), Some(r#"{"v":1}"#));
            assert_eq!(rows[0].report.as_deref(), Some(r#"{"r":1}"#));
            assert_eq!(rows[1].report, None);
            let mut one = Vec::new();
            store.visit_device_statuses(Some("d2"), &mut |row| one.push(row)).unwrap();
            assert_eq!(one, [rows[1].clone()]);
            store.visit_device_statuses(Some("nope"), &mut |_| panic!("no such device")).unwrap();
        }
    }
}
