//! Moving a fleet's data between stores: `migrate-store` copies a SQLite database into
//! an empty PostgreSQL one (every table, row for row, in one transaction), and `backup`
//! copies a SQLite database that a server is using into a new file with SQLite's online
//! backup API (a consistent snapshot; the server keeps writing meanwhile).

use super::sql::{args, db, Sql, SqlExt};
use super::sql_store::Touches;
use super::SqlStore;
use crate::Error;
use std::path::Path;

/// Every table, parents before the tables that refer to them
/// (`tests::every_table_of_the_schema_is_copied` holds this to the schema).
const TABLES: &[&str] = &[
    "devices",
    "target_states",
    "device_images",
    "provisioning_keys",
    "counters",
    "device_logs",
    "device_metrics",
    "image_digests",
    "update_policies",
    "pending_updates",
    "registry_credentials",
    "device_registries",
    "fleets",
    "releases",
    "fleet_images",
    "fleet_updates",
    "rollouts",
    "rollout_devices",
    "events",
    "settings",
    "device_presence",
    "sessions",
    "rate_events",
];

/// Tables whose `id` the database numbers: after a copy, it numbers on from the largest.
const NUMBERED: &[&str] = &["device_logs", "device_metrics", "releases", "rollouts", "events", "rate_events"];

/// How many rows of each table were copied.
pub type Copied = Vec<(&'static str, u64)>;

/// Copies every row of the SQLite store `from` into the store `to`, which must hold no
/// rows yet (but its own device counter): no server may have run on it, not even one
/// that only recorded its key and token in `settings`; all of it or, on any error,
/// nothing.
pub fn copy_store(from: &SqlStore, to: &SqlStore) -> Result<Copied, Error> {
    let source =
        from.sqlite().ok_or_else(|| Error::BadRequest { reason: "the source must be a SQLite database".into() })?;
    let columns = TABLES
        .iter()
        .map(|table| source.columns(table).map(|columns| (*table, columns)))
        .collect::<Result<Vec<_>, Error>>()?;
    let op = "copying the database";
    to.write(op, Touches::Polls, |tx| {
        for table in TABLES.iter().filter(|table| **table != "counters") {
            let rows: i64 =
                tx.query_row(&format!("SELECT count(*) FROM {table}"), args![], |r| r.get(0)).map_err(db(op))?;
            if rows > 0 {
                return Err(Error::Conflict {
                    reason: format!("the target database is not empty ({rows} rows in {table}); migrate into a new one"),
                });
            }
        }
        // The new database's own rows (the device counter at 0) give way to the copied ones.
        tx.execute("DELETE FROM counters", args![]).map_err(db(op))?;
        // Every table from one snapshot of the source (one read transaction), should a
        // server still be writing it.
        let copied = from.read(|source| {
            source.execute("BEGIN", args![]).map_err(db(op))?;
            let copied = copy_tables(source, tx, &columns);
            // Ended either way: the connection goes back to the pool.
            source.execute(if copied.is_ok() { "COMMIT" } else { "ROLLBACK" }, args![]).map_err(db(op))?;
            copied
        })?;

        for table in NUMBERED.iter().filter(|_| to.is_postgres()) {
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(max(id), 0) + 1, false) FROM {table}"
                ),
                args![],
            )
            .map_err(db(op))?;
        }
        Ok(copied)
    })
}

/// Every row of each table of `columns` from `source` into `target`; rows per table.
fn copy_tables(
    source: &mut dyn Sql,
    target: &mut dyn Sql,
    columns: &[(&'static str, Vec<String>)],
) -> Result<Copied, Error> {
    let mut copied = Vec::new();
    for (table, columns) in columns {
        let list = columns.join(", ");
        let marks = (1..=columns.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let insert = format!("INSERT INTO {table} ({list}) VALUES ({marks})");
        let mut rows = 0;
        source
            .query_each(&format!("SELECT {list} FROM {table}"), args![], &mut |row| {
                rows += 1;
                target.execute(&insert, &row.values).map(drop)
            })
            .map_err(|e| Error::Store { op: "copying the database", reason: format!("table {table}: {e}") })?;
        copied.push((*table, rows));
    }
    Ok(copied)
}

/// Copies the SQLite database `db` into a new file `to` (made 0600, refused if it
/// exists), as one consistent snapshot while the database stays in use. The database is
/// opened as it is, never migrated: a backup changes nothing of what it copies, and
/// copies a database of any schema version.
pub fn backup(db: &Path, to: &Path) -> Result<(), Error> {
    super::sqlite_engine::SqliteEngine::open(db)?.backup_to(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ProvisioningKey, SettingsStore, Store};

    fn key(id: &str) -> ProvisioningKey {
        ProvisioningKey {
            id: id.into(),
            description: None,
            created_at: "2026-12-07T10:00:00Z".into(),
            revoked_at: None,
            devices_registered: 0,
            device: None,
            single_use: false,
            expires_at: None,
            fleet: None,
        }
    }

    #[test]
    fn every_table_of_the_schema_is_copied() {
        let store = SqlStore::in_memory().unwrap();
        let sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name";
        let mut schema: Vec<String> =
            store.read(|tx| tx.query_map(sql, args![], |row| row.get(0)).map_err(db("listing the tables"))).unwrap();
        let mut copied: Vec<&str> = TABLES.to_vec();
        copied.sort_unstable();
        schema.sort_unstable();
        assert_eq!(schema, copied, "a table migrate-store would leave behind, or copy that does not exist");
    }

    #[test]
    fn a_target_a_server_has_run_on_is_refused_as_not_empty_and_left_alone() {
        let from = SqlStore::in_memory().unwrap();
        from.create_provisioning_key(&key("k1"), "hash-1").unwrap();
        // A replica started on the target first: it recorded its key check, nothing else.
        let to = SqlStore::in_memory().unwrap();
        to.agree_setting("secret_key_check", "theirs").unwrap();
        let e = copy_store(&from, &to).unwrap_err().to_string();
        assert!(e.contains("not empty") && e.contains("settings"), "{e}");
        assert!(to.provisioning_keys().unwrap().is_empty());
        assert_eq!(to.agree_setting("secret_key_check", "mine").unwrap(), "theirs");

        let empty = SqlStore::in_memory().unwrap();
        let copied = copy_store(&from, &empty).unwrap();
        assert!(copied.contains(&("provisioning_keys", 1)), "{copied:?}");
        assert_eq!(empty.provisioning_keys().unwrap(), from.provisioning_keys().unwrap());
    }
}
