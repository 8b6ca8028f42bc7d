//! Registry credentials the operator stores (`PUT /registries/{host}/credentials`), for
//! every device or for named ones, and the registry hosts each device's current target
//! pulls from. The server resolves tags with the global ones; a device's own poll
//! carries those of the registries its target uses, its own entry winning over the
//! global one. Passwords are sealed (`secrets.rs`) before they reach the database, bound
//! to their host, device and user: no listing ever returns them.

use super::sql::{args, db, DbError, Row, Sql, SqlExt};
use super::sql_store::Touches;
use super::sqlite_engine::Lite;
use super::SqlStore;
use crate::keys::new_id;
use crate::registry_auth::registry_hosts;
use crate::secrets::SecretKey;
use crate::timefmt::rfc3339_now;
use crate::Error;
use pinion_model::TargetState;
use rusqlite::Connection;
use std::fmt;

/// `device_uuid` is `''` for the entry every device uses (a primary key cannot hold NULL
/// once). `revision` is new at every write, so that a device's poll ETag changes with
/// its credentials, even twice in one second. `device_registries` is written with each
/// target version (`set_target`).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registry_credentials (
    host             TEXT NOT NULL,
    device_uuid      TEXT NOT NULL DEFAULT '',
    username         TEXT NOT NULL,
    sealed_password  BLOB NOT NULL,
    revision         TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (host, device_uuid)
);
CREATE TABLE IF NOT EXISTS device_registries (
    device_uuid  TEXT NOT NULL REFERENCES devices(uuid) ON DELETE CASCADE,
    host         TEXT NOT NULL,
    PRIMARY KEY (device_uuid, host)
);
";

/// Credentials as stored, without the password: what listings show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialEntry {
    /// Normalized registry host (`docker.io`, `registry.lan:5000`).
    pub host: String,
    /// The device they are for; `None` for every device.
    pub device: Option<String>,
    pub username: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// Credentials with the password opened, for the resolver and a device's poll only.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    pub entry: CredentialEntry,
    pub password: String,
    /// Random, new at every write.
    pub revision: String,
}

/// Passwords never reach a log line.
impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("entry", &self.entry)
            .field("password", &"<redacted>")
            .field("revision", &self.revision)
            .finish()
    }
}

pub trait CredentialStore {
    /// Sets (or replaces) `host`'s credentials for each of `devices`, or for every device
    /// when `devices` is empty, in one transaction. Returns when (RFC 3339).
    fn put_registry_credentials(
        &self,
        host: &str,
        devices: &[String],
        username: &str,
        password: &str,
    ) -> Result<String, Error>;
    /// Removes `host`'s credentials for `device` (`None`: the entry for every device);
    /// `false` if there was none.
    fn delete_registry_credentials(&self, host: &str, device: Option<&str>) -> Result<bool, Error>;
    /// Every entry, by host, the global one first; no passwords.
    fn registry_credential_entries(&self) -> Result<Vec<CredentialEntry>, Error>;
    /// What `device` (`None`: the server itself) uses for `host`: the device's own
    /// entry, else the one for every device.
    fn registry_credentials_for(&self, host: &str, device: Option<&str>) -> Result<Option<RegistryCredential>, Error>;
    /// For each registry the device's current target pulls from, the credentials it uses
    /// there (as `registry_credentials_for`), by host. Empty for most devices.
    fn device_registry_credentials(&self, uuid: &str) -> Result<Vec<RegistryCredential>, Error>;
}

/// Creates the tables (SQLite's; PostgreSQL's are `postgres/schema.rs`). A database from
/// before them gets `device_registries` filled from the devices' current targets, so their
/// polls carry credentials without waiting for a new target.
pub(super) fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    let existed: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'device_registries'",
        [],
        |r| r.get(0),
    )?;
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(SCHEMA)?;
    if !existed {
        fill_device_registries(&mut Lite(&tx)).map_err(|e| {
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR), Some(e.message))
        })?;
    }
    tx.commit()
}

/// Writes the registry hosts of every device's current target.
fn fill_device_registries(tx: &mut dyn Sql) -> Result<(), DbError> {
    let targets: Vec<(String, String)> = tx.query_map(
        "SELECT d.uuid, t.state FROM devices d
         JOIN target_states t ON t.device_uuid = d.uuid AND t.version = d.target_version",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (uuid, state) in targets {
        let Ok(state) = serde_json::from_str::<TargetState>(&state) else { continue };
        write_device_registries(tx, &uuid, &registry_hosts(&state))?;
    }
    Ok(())
}

/// What a sealed password is bound to: moved to another host, device or user, it does
/// not open.
fn associated_data(host: &str, device: &str, username: &str) -> Vec<u8> {
    format!("pinion registry credentials v1\0{host}\0{device}\0{username}").into_bytes()
}

/// Replaces the registry hosts of a device's current target (inside `set_target`'s
/// transaction).
pub(super) fn write_device_registries(tx: &mut dyn Sql, uuid: &str, hosts: &[String]) -> Result<(), DbError> {
    tx.execute("DELETE FROM device_registries WHERE device_uuid = ?1", args![uuid])?;
    for host in hosts {
        tx.execute(
            "INSERT INTO device_registries (device_uuid, host) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            args![uuid, host],
        )?;
    }
    Ok(())
}

/// One row as read: host, device ('' for all), username, sealed password, revision, updated_at.
type StoredRow = (String, String, String, Vec<u8>, String, String);

fn open_row(
    key: &SecretKey,
    (host, device, username, sealed, revision, updated_at): StoredRow,
) -> Result<RegistryCredential, Error> {
    let what = match device.as_str() {
        "" => format!("the stored password for {host}"),
        uuid => format!("the stored password for {host} (device {uuid})"),
    };
    let password = key.open(&sealed, &associated_data(&host, &device, &username), &what)?;
    let password = String::from_utf8(password).map_err(|_| Error::Secrets { reason: format!("{what} is not text") })?;
    Ok(RegistryCredential {
        entry: CredentialEntry { host, device: (!device.is_empty()).then_some(device), username, updated_at },
        password,
        revision,
    })
}

fn read_row(row: &Row) -> Result<StoredRow, DbError> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
}

const ROW_COLUMNS: &str = "c.host, c.device_uuid, c.username, c.sealed_password, c.revision, c.updated_at";

/// A device's rows, by host, its own entry before the global one. `CAST(?1 AS TEXT)`, not
/// a bare `?1`: SQLite would propagate the value into the join and compile the statement
/// again at every run (`StatementStatus::RePrepare`; 30 % of a 304 poll's CPU in
/// BENCHMARKS.md). A value with an affinity is not propagated; `+?1`, which fixed it
/// first, is no text on PostgreSQL. The index is used either way.
fn device_credentials_query() -> String {
    format!(
        "SELECT {ROW_COLUMNS} FROM device_registries r
         JOIN registry_credentials c ON c.host = r.host AND (c.device_uuid = r.device_uuid OR c.device_uuid = '')
         WHERE r.device_uuid = CAST(?1 AS TEXT)
         ORDER BY c.host, c.device_uuid = ''"
    )
}

impl CredentialStore for SqlStore {
    fn put_registry_credentials(
        &self,
        host: &str,
        devices: &[String],
        username: &str,
        password: &str,
    ) -> Result<String, Error> {
        let key = self.secret_key()?;
        let global = [String::new()];
        let scopes = if devices.is_empty() { &global[..] } else { devices };
        let now = rfc3339_now();
        // Sealed once, outside the transaction (which may run again on PostgreSQL).
        let rows: Vec<(&String, Vec<u8>, String)> = scopes
            .iter()
            .map(|device| (device, key.seal(password.as_bytes(), &associated_data(host, device, username)), new_id()))
            .collect();
        self.write("storing registry credentials", Touches::Polls, |tx| {
            for (device, sealed, revision) in &rows {
                tx.execute(
                    "INSERT INTO registry_credentials (host, device_uuid, username, sealed_password, revision, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (host, device_uuid) DO UPDATE SET username = excluded.username,
                         sealed_password = excluded.sealed_password, revision = excluded.revision,
                         updated_at = excluded.updated_at",
                    args![host, device, username, sealed, revision, now],
                )
                .map_err(db("storing registry credentials"))?;
            }
            Ok(())
        })?;
        Ok(now)
    }

    fn delete_registry_credentials(&self, host: &str, device: Option<&str>) -> Result<bool, Error> {
        let changed = self.write("removing registry credentials", Touches::Polls, |tx| {
            tx.execute(
                "DELETE FROM registry_credentials WHERE host = ?1 AND device_uuid = ?2",
                args![host, device.unwrap_or("")],
            )
            .map_err(db("removing registry credentials"))
        })?;
        Ok(changed > 0)
    }

    fn registry_credential_entries(&self) -> Result<Vec<CredentialEntry>, Error> {
        self.read(|c| {
            c.query_map(
                "SELECT host, device_uuid, username, updated_at FROM registry_credentials ORDER BY host, device_uuid",
                args![],
                |row| {
                    let device: String = row.get(1)?;
                    Ok(CredentialEntry {
                        host: row.get(0)?,
                        device: (!device.is_empty()).then_some(device),
                        username: row.get(2)?,
                        updated_at: row.get(3)?,
                    })
                },
            )
            .map_err(db("listing registry credentials"))
        })
    }

    fn registry_credentials_for(&self, host: &str, device: Option<&str>) -> Result<Option<RegistryCredential>, Error> {
        let row = self.read(|c| {
            c.query_opt(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM registry_credentials c
                     WHERE c.host = ?1 AND (c.device_uuid = ?2 OR c.device_uuid = '')
                     ORDER BY c.device_uuid = '' LIMIT 1"
                ),
                args![host, device.unwrap_or("")],
                read_row,
            )
            .map_err(db("reading registry credentials"))
        })?;
        match row {
            Some(row) => Ok(Some(open_row(self.secret_key()?, row)?)),
            None => Ok(None),
        }
    }

    fn device_registry_credentials(&self, uuid: &str) -> Result<Vec<RegistryCredential>, Error> {
        // Asked at every device poll: a read connection, not the writer's lock.
        let rows: Vec<StoredRow> = self.read(|c| {
            c.query_map(&device_credentials_query(), args![uuid], read_row)
                .map_err(db("reading a device's registry credentials"))
        })?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.secret_key()?;
        let mut credentials: Vec<RegistryCredential> = Vec::new();
        for row in rows {
            // Rows come by host, the device's own entry first: the first per host wins.
            if credentials.last().is_some_and(|c| c.entry.host == row.0) {
                continue;
            }
            credentials.push(open_row(key, row)?);
        }
        Ok(credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_engines;
    use crate::store::{NewTarget, PollAnswer, Store};

    fn target_on(store: &SqlStore, uuid: &str, hosts: &[&str]) {
        let poll = PollAnswer { etag: "\"e\"".into(), body: "{}".into() };
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let target = NewTarget { registries: &hosts, ..crate::store::testing::operator_target("{}", &poll) };
        store.set_target(uuid, &target).unwrap();
    }

    both_engines! {
        fn a_device_gets_the_credentials_of_its_registries_its_own_entry_winning(store) {
            store.put_registry_credentials("reg.lan:5000", &[], "fleet", "global-pw").unwrap();
            store.put_registry_credentials("reg.lan:5000", &["d2".into()], "d2-user", "d2-pw").unwrap();
            store.put_registry_credentials("other.lan", &[], "o", "other-pw").unwrap();
            target_on(&store, "d1", &["reg.lan:5000", "docker.io"]);
            target_on(&store, "d2", &["reg.lan:5000"]);
            target_on(&store, "d3", &["docker.io"]);

            let d1 = store.device_registry_credentials("d1").unwrap();
            assert_eq!(d1.len(), 1);
            assert_eq!((d1[0].entry.username.as_str(), d1[0].password.as_str()), ("fleet", "global-pw"));
            let d2 = store.device_registry_credentials("d2").unwrap();
            assert_eq!((d2[0].entry.username.as_str(), d2[0].password.as_str()), ("d2-user", "d2-pw"));
            assert_eq!(d2[0].entry.device.as_deref(), Some("d2"));
            assert!(store.device_registry_credentials("d3").unwrap().is_empty());
            assert!(store.device_registry_credentials("nobody").unwrap().is_empty());

            let server = store.registry_credentials_for("reg.lan:5000", None).unwrap().unwrap();
            assert_eq!(server.password, "global-pw");
            assert_eq!(store.registry_credentials_for("reg.lan:5000", Some("d2")).unwrap().unwrap().password, "d2-pw");
            assert_eq!(store.registry_credentials_for("nowhere", None).unwrap(), None);
            assert!(!format!("{server:?}").contains("global-pw"));

            // A new target moves the device off the registry.
            target_on(&store, "d1", &["docker.io"]);
            assert!(store.device_registry_credentials("d1").unwrap().is_empty());
        }

        fn writes_replace_list_without_passwords_and_delete_by_scope(store) {
            store.put_registry_credentials("reg.lan", &[], "a", "pw1").unwrap();
            let first = store.registry_credentials_for("reg.lan", None).unwrap().unwrap();
            store.put_registry_credentials("reg.lan", &[], "b", "pw2").unwrap();
            let second = store.registry_credentials_for("reg.lan", None).unwrap().unwrap();
            assert_eq!((second.entry.username.as_str(), second.password.as_str()), ("b", "pw2"));
            assert_ne!(first.revision, second.revision);
            store.put_registry_credentials("reg.lan", &["d1".into(), "d2".into()], "c", "pw3").unwrap();
            let listed: Vec<_> =
                store.registry_credential_entries().unwrap().into_iter().map(|e| (e.device, e.username)).collect();
            assert_eq!(
                listed,
                [(None, "b".to_string()), (Some("d1".into()), "c".into()), (Some("d2".into()), "c".into())]
            );
            assert!(store.delete_registry_credentials("reg.lan", Some("d1")).unwrap());
            assert!(!store.delete_registry_credentials("reg.lan", Some("d1")).unwrap());
            assert!(store.delete_registry_credentials("reg.lan", None).unwrap());
            assert_eq!(store.registry_credential_entries().unwrap().len(), 1);
        }

        fn a_password_moved_to_another_row_does_not_open(store) {
            store.put_registry_credentials("a.lan", &[], "u", "pw-a").unwrap();
            store.put_registry_credentials("b.lan", &[], "u", "pw-b").unwrap();
            store
                .write("moving a password", Touches::Polls, |tx| {
                    tx.execute(
                        "UPDATE registry_credentials
                         SET sealed_password = (SELECT sealed_password FROM registry_credentials WHERE host = 'a.lan')
                         WHERE host = 'b.lan'",
                        args![],
                    )
                    .map_err(db("moving a password"))
                })
                .unwrap();
            let err = store.registry_credentials_for("b.lan", None).unwrap_err();
            assert!(matches!(err, Error::Secrets { .. }), "{err}");
        }
    }

    #[test]
    fn a_database_from_before_learns_the_registries_of_current_targets() {
        let path = std::env::temp_dir().join(format!("pinion-backfill-{}.db", std::process::id()));
        let remove = || {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        };
        remove();
        {
            let store = SqlStore::open(&path).unwrap();
            let state = r#"{"apps": {"1": {"services": [{"serviceName": "s", "imageName": "reg.lan:5000/app:v1"}]}}}"#;
            let poll = PollAnswer { etag: "\"e\"".into(), body: "{}".into() };
            store.set_target("old", &crate::store::testing::operator_target(state, &poll)).unwrap();
            store
                .write("dropping a table", Touches::Polls, |tx| {
                    tx.execute("DROP TABLE device_registries", args![]).map_err(db("dropping a table"))
                })
                .unwrap();
        }
        let store = SqlStore::open(&path).unwrap().with_secret_key(SecretKey::generate());
        store.put_registry_credentials("reg.lan:5000", &[], "u", "pw").unwrap();
        assert_eq!(store.device_registry_credentials("old").unwrap().len(), 1);
        drop(store);
        remove();
    }

    #[test]
    fn without_a_key_credentials_cannot_be_stored() {
        let path = std::env::temp_dir().join(format!("pinion-no-key-{}.db", std::process::id()));
        let store = SqlStore::open(&path).unwrap();
        let err = store.put_registry_credentials("a.lan", &[], "u", "pw").unwrap_err();
        assert!(matches!(err, Error::Secrets { .. }), "{err}");
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
