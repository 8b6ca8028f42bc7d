//! The SQLite store: one file, WAL mode, every write in a transaction. Enough for a
//! fleet that one machine serves; `Store` keeps the door open for PostgreSQL.

use super::{
    DeviceRecord, KeyOwner, NewRegistration, NewTarget, PollAnswer, ProvisioningKey, Reopen, Store, StoredTarget,
};
use crate::claims::{decide_claim, Claim, Claimant, ExistingDevice};
use crate::secrets::SecretKey;
use crate::timefmt::rfc3339_now;
use crate::Error;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, Transaction};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

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

/// Idle read connections kept for reuse; more are opened when every one is busy.
const MAX_IDLE_READERS: usize = 32;
/// Page cache of each read connection, in KiB (a negative `cache_size`).
const READER_CACHE_KIB: i64 = -256;

pub struct SqliteStore {
    /// The one connection that writes (SQLite has one writer at a time anyway).
    conn: Mutex<Connection>,
    /// Read-only connections to the same file for the hot reads (device polls and key
    /// lookups): WAL lets them read while the writer writes, so polls neither wait for
    /// a target being stored nor for each other. `None` for an in-memory database,
    /// which other connections cannot open: its reads share `conn`.
    readers: Option<ReaderPool>,
    /// Seals and opens stored registry passwords (`credentials.rs`); without one they
    /// can be neither stored nor read.
    secret_key: Option<SecretKey>,
    /// Moved each time the writer connection is let go (`Store::poll_generation`).
    generation: AtomicU64,
    /// Target versions kept per device (`with_history_limit`).
    history_limit: u64,
}

/// Target versions kept per device unless told otherwise: weeks of hourly pushes to a
/// followed tag, and every version an operator is likely to roll back to.
pub const DEFAULT_HISTORY_LIMIT: u64 = 100;
/// The fewest a store keeps: the current version and the one before it, which a
/// rollback without a version goes back to.
pub const MIN_HISTORY_LIMIT: u64 = 2;

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, Error> {
        let conn = Connection::open(path)
            .map_err(|e| Error::Store { op: "opening the database", reason: format!("{}: {e}", path.display()) })?;
        let mut store = Self::init(conn)?;
        // `:memory:` and "" name a private database that no second connection can open.
        if !matches!(path.to_str(), Some(":memory:" | "")) {
            store.readers = Some(ReaderPool { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) });
        }
        Ok(store)
    }

    /// A private in-memory database, for tests, with a random secret key.
    pub fn in_memory() -> Result<SqliteStore, Error> {
        Ok(Self::init(Connection::open_in_memory().map_err(db("opening the database"))?)?
            .with_secret_key(SecretKey::generate()))
    }

    /// Keeps `versions` target versions per device (at least `MIN_HISTORY_LIMIT`);
    /// older ones are deleted as new ones are written.
    pub fn with_history_limit(mut self, versions: u64) -> SqliteStore {
        self.history_limit = versions.clamp(MIN_HISTORY_LIMIT, i64::MAX as u64);
        self
    }

    /// The key that seals stored secrets (`secrets::SecretKey::load_or_create`).
    pub fn with_secret_key(mut self, key: SecretKey) -> SqliteStore {
        self.secret_key = Some(key);
        self
    }

    pub(super) fn secret_key(&self) -> Result<&SecretKey, Error> {
        self.secret_key
            .as_ref()
            .ok_or_else(|| Error::Secrets { reason: "no secret key is configured for stored credentials".into() })
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, Error> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(db("configuring the database"))?;
        // WAL: readers never wait for the writer. FULL: an acknowledged target survives power loss.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db("configuring the database"))?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db("configuring the database"))?;
        // Writes take the write lock when they begin, waiting `busy_timeout` for it: a
        // deferred transaction that reads first and is refused the lock when it writes
        // (SQLITE_BUSY while WAL is checkpointed) fails at once, without waiting.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        let version: i64 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db("reading the schema version"))?;
        let latest = super::migrations::latest();
        if version > latest {
            return Err(Error::Store {
                op: "opening the database",
                reason: format!("schema version {version} is newer than this server ({latest}); upgrade pinion-server"),
            });
        }
        conn.execute_batch(SCHEMA).map_err(db("creating the schema"))?;
        conn.execute_batch(super::images::SCHEMA).map_err(db("creating the schema"))?;
        conn.execute_batch(super::policy::SCHEMA).map_err(db("creating the schema"))?;
        super::credentials::create_schema(&conn).map_err(db("creating the schema"))?;
        super::migrations::migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            readers: None,
            secret_key: None,
            generation: AtomicU64::new(0),
            history_limit: DEFAULT_HISTORY_LIMIT,
        })
    }

    /// The writer connection. Whatever is done with it may change a device's key or poll
    /// answer, so letting it go (after the commit) moves the poll generation.
    pub(super) fn conn(&self) -> Writer<'_> {
        Writer { guard: self.lock_conn(), generation: &self.generation }
    }

    /// The writer connection for what never changes a device's key or poll answer
    /// (reports, logs, the digest cache, policies, pending updates, provisioning keys):
    /// letting it go keeps the poll generation, so the poll cache stays warm.
    pub(super) fn conn_outside_polls(&self) -> MutexGuard<'_, Connection> {
        self.lock_conn()
    }

    fn lock_conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions
        // roll back), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn poll_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A connection for reads only, not shared with any other thread while held: one
    /// from the pool (its prepared statements cached), or a new one. Every write is
    /// committed before its request is answered, so a read started after it sees it.
    pub(super) fn reader(&self) -> Result<Reader<'_>, Error> {
        let Some(pool) = &self.readers else {
            return Ok(Reader::Shared(self.lock_conn()));
        };
        let idle = pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&pool.path)?,
        };
        Ok(Reader::Pooled { conn: Some(conn), pool })
    }
}

pub(super) struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

fn open_reader(path: &Path) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Store { op: "opening a read connection", reason: format!("{}: {e}", path.display()) })?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(db("configuring a read connection"))?;
    // Reads only: a write through it would be a bug, and SQLite refuses it.
    conn.pragma_update(None, "query_only", true).map_err(db("configuring a read connection"))?;
    // A small page cache each (SQLite's default is 2 MB): there is one reader per busy
    // worker, and the operating system caches the file for all of them.
    conn.pragma_update(None, "cache_size", READER_CACHE_KIB).map_err(db("configuring a read connection"))?;
    Ok(conn)
}

/// The writer connection, held; dropping it moves the poll generation.
pub(super) struct Writer<'a> {
    guard: MutexGuard<'a, Connection>,
    generation: &'a AtomicU64,
}

impl Deref for Writer<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.guard
    }
}

impl DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.guard
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // Still holding the lock, after any transaction of this writer has committed.
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A read connection, returned to the pool when dropped.
pub(super) enum Reader<'a> {
    Shared(MutexGuard<'a, Connection>),
    Pooled { conn: Option<Connection>, pool: &'a ReaderPool },
}

impl Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Reader::Shared(guard) => guard,
            Reader::Pooled { conn, .. } => conn.as_ref().expect("a pooled connection until dropped"),
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Reader::Pooled { conn, pool } = self {
            let mut idle = pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.extend(conn.take());
            }
        }
    }
}

pub(super) fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Store { op, reason: e.to_string() }
}

pub(super) fn device_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        uuid: row.get(0)?,
        device_name: row.get(1)?,
        device_type: row.get(2)?,
        registered: row.get(3)?,
        created_at: row.get(4)?,
        registered_at: row.get(5)?,
        target_version: row.get::<_, i64>(6)? as u64,
        last_report_at: row.get(7)?,
        id: row.get::<_, Option<i64>>(8)?.unwrap_or(0) as u64,
        registration_complete: row.get(9)?,
        fleet: row.get(10)?,
        labels: row.get::<_, Option<String>>(11)?.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default(),
    })
}

/// Adds a device row with the next device number, unless the device exists; true if added.
pub(super) fn insert_device(tx: &Transaction<'_>, uuid: &str, now: &str) -> rusqlite::Result<bool> {
    let exists: bool = tx.query_row("SELECT count(*) > 0 FROM devices WHERE uuid = ?1", [uuid], |r| r.get(0))?;
    if exists {
        return Ok(false);
    }
    let id: i64 =
        tx.query_row("UPDATE counters SET value = value + 1 WHERE name = 'device_id' RETURNING value", [], |r| {
            r.get(0)
        })?;
    tx.execute("INSERT INTO devices (uuid, id, created_at) VALUES (?1, ?2, ?3)", params![uuid, id, now])?;
    Ok(true)
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<ProvisioningKey> {
    Ok(ProvisioningKey {
        id: row.get(0)?,
        description: row.get(1)?,
        created_at: row.get(2)?,
        revoked_at: row.get(3)?,
        devices_registered: row.get::<_, i64>(4)? as u64,
        device: row.get(5)?,
        single_use: row.get(6)?,
        expires_at: row.get(7)?,
        fleet: row.get(8)?,
    })
}

const TARGET_COLUMNS: &str = "t.version, t.state, t.created_at, t.source";

fn target_from_row(row: &Row<'_>) -> rusqlite::Result<StoredTarget> {
    Ok(StoredTarget {
        version: row.get::<_, i64>(0)? as u64,
        state: row.get(1)?,
        created_at: row.get(2)?,
        source: row.get(3)?,
    })
}

const KEY_COLUMNS: &str =
    "id, description, created_at, revoked_at, devices_registered, device_uuid, single_use, expires_at, fleet";

/// Writes one target version inside `tx` (`Store::set_target`).
fn write_target(
    tx: &Transaction<'_>,
    uuid: &str,
    target: &NewTarget<'_>,
    history_limit: u64,
    now: &str,
) -> Result<u64, Error> {
    insert_device(tx, uuid, now).map_err(db("storing a target state"))?;
    let (current, pinned): (i64, bool) = tx
        .query_row("SELECT target_version, pinned FROM devices WHERE uuid = ?1", [uuid], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db("storing a target state"))?;
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
        params![uuid, version, target.poll.etag, target.poll.body],
    )
    .map_err(db("storing a target state"))?;
    // Where the state came from: a fleet release, or the device's own (a pin).
    match target.release {
        Some(release) => {
            tx.execute("UPDATE devices SET release_id = ?2 WHERE uuid = ?1", params![uuid, release as i64])
        }
        None if target.supersedes_pending => {
            tx.execute("UPDATE devices SET release_id = NULL, pinned = 1 WHERE uuid = ?1", [uuid])
        }
        None => Ok(0),
    }
    .map_err(db("storing a target state"))?;
    tx.execute(
        "INSERT INTO target_states (device_uuid, version, state, created_at, source) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![uuid, version, target.state, now, target.source],
    )
    .map_err(db("storing a target state"))?;
    tx.execute("DELETE FROM device_images WHERE device_uuid = ?1", [uuid]).map_err(db("storing a target state"))?;
    for reference in target.references {
        tx.execute(
            "INSERT OR IGNORE INTO device_images (device_uuid, reference) VALUES (?1, ?2)",
            params![uuid, reference],
        )
        .map_err(db("storing a target state"))?;
    }
    super::credentials::write_device_registries(tx, uuid, target.registries).map_err(db("storing a target state"))?;
    if target.supersedes_pending {
        tx.execute("DELETE FROM pending_updates WHERE device_uuid = ?1", [uuid])
            .map_err(db("storing a target state"))?;
    } else {
        // The refresher's own write (another tag moved): what it holds back for this
        // device still applies on top of the new version.
        tx.execute(
            "UPDATE pending_updates SET from_version = ?2 WHERE device_uuid = ?1 AND from_version = ?3",
            params![uuid, version, current],
        )
        .map_err(db("storing a target state"))?;
    }
    tx.execute(
        "DELETE FROM target_states WHERE device_uuid = ?1 AND version <= ?2",
        params![uuid, version.saturating_sub(history_limit as i64)],
    )
    .map_err(db("pruning the target history"))?;
    Ok(version as u64)
}

impl Store for SqliteStore {
    fn device(&self, uuid: &str) -> Result<Option<DeviceRecord>, Error> {
        self.reader()?
            .query_row(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE uuid = ?1"), [uuid], device_from_row)
            .optional()
            .map_err(db("reading a device"))
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY uuid"))
            .map_err(db("listing devices"))?;
        let rows = stmt.query_map([], device_from_row).map_err(db("listing devices"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing devices"))
    }

    fn device_key_hash(&self, uuid: &str) -> Result<Option<String>, Error> {
        self.reader()?
            .prepare_cached("SELECT api_key_hash FROM devices WHERE uuid = ?1")
            .and_then(|mut stmt| stmt.query_row([uuid], |r| r.get(0)).optional())
            .map(Option::flatten)
            .map_err(db("reading a device key"))
    }

    fn device_by_key_hash(&self, key_hash: &str) -> Result<Option<KeyOwner>, Error> {
        self.reader()?
            .prepare_cached("SELECT uuid, registration_completed_at IS NOT NULL FROM devices WHERE api_key_hash = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([key_hash], |r| Ok(KeyOwner { uuid: r.get(0)?, registration_complete: r.get(1)? }))
                    .optional()
            })
            .map_err(db("looking up a device key"))
    }

    fn complete_registration(&self, uuid: &str, key_hash: &str) -> Result<bool, Error> {
        let changed = self
            .conn_outside_polls()
            .execute(
                "UPDATE devices SET registration_completed_at = COALESCE(registration_completed_at, ?3)
                 WHERE uuid = ?1 AND api_key_hash = ?2",
                params![uuid, key_hash, rfc3339_now()],
            )
            .map_err(db("completing a registration"))?;
        Ok(changed == 1)
    }

    fn register_device(&self, reg: &NewRegistration) -> Result<DeviceRecord, Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("registering a device"))?;
        let now = rfc3339_now();
        let stored: Option<(Option<String>, bool, Option<String>, bool)> = tx
            .query_row(
                "SELECT api_key_hash, registration_completed_at IS NOT NULL, provisioned_by,
                        COALESCE(open_until > ?2, 0)
                 FROM devices WHERE uuid = ?1",
                params![reg.uuid, now],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db("registering a device"))?;
        let existing = stored.as_ref().map(|(key_hash, complete, by, open)| ExistingDevice {
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
                         revoked_at = CASE WHEN ?2 THEN ?3 ELSE revoked_at END
                     WHERE id = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?3)",
                    params![id, single_use, now],
                )
                .map_err(db("registering a device"))?;
            if counted == 0 {
                return Err(Error::Unauthorized {
                    reason: "the provisioning key was revoked or used up meanwhile".into(),
                });
            }
        }
        if claim == Claim::Create {
            insert_device(&tx, &reg.uuid, &now).map_err(db("registering a device"))?;
        }
        tx.execute(
            "UPDATE devices SET device_name = COALESCE(?2, device_name), device_type = COALESCE(?3, device_type),
                 provisioned_by = CASE WHEN api_key_hash IS ?4 THEN provisioned_by ELSE ?5 END,
                 api_key_hash = ?4, registered_at = COALESCE(registered_at, ?6), open_until = NULL,
                 system_info = json_patch(COALESCE(system_info, '{}'), ?7)
             WHERE uuid = ?1",
            params![
                reg.uuid,
                reg.device_name,
                reg.device_type,
                reg.key_hash,
                reg.claimant.provisioned_by(),
                now,
                reg.system_info.as_deref().unwrap_or("{}")
            ],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                Error::Conflict { reason: "this device key is already in use".into() }
            }
            e => Error::Store { op: "registering a device", reason: e.to_string() },
        })?;
        let record = tx
            .query_row(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE uuid = ?1"), [&reg.uuid], device_from_row)
            .map_err(db("registering a device"))?;
        tx.commit().map_err(db("registering a device"))?;
        Ok(record)
    }

    fn delete_device(&self, uuid: &str) -> Result<bool, Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("deleting a device"))?;
        // Its target versions, images, reports, logs, metrics and policy go by cascade;
        // the registry credentials and provisioning keys bound to it have no foreign key
        // (a key may be made for a uuid before the device), so they go here.
        let deleted = tx.execute("DELETE FROM devices WHERE uuid = ?1", [uuid]).map_err(db("deleting a device"))?;
        tx.execute("DELETE FROM provisioning_keys WHERE device_uuid = ?1", [uuid])
            .map_err(db("deleting a device's registration tokens"))?;
        tx.execute("DELETE FROM registry_credentials WHERE device_uuid = ?1", [uuid])
            .map_err(db("deleting a device's registry credentials"))?;
        tx.execute("DELETE FROM rollout_devices WHERE device_uuid = ?1", [uuid])
            .map_err(db("deleting a device from its rollouts"))?;
        tx.commit().map_err(db("deleting a device"))?;
        Ok(deleted == 1)
    }

    fn reset_device_key(&self, uuid: &str, reopen: Option<&Reopen>) -> Result<bool, Error> {
        let changed = self
            .conn()
            .execute(
                "UPDATE devices SET api_key_hash = NULL, registration_completed_at = NULL, open_until = ?2,
                     provisioned_by = CASE WHEN ?2 IS NULL THEN NULL ELSE COALESCE(?3, provisioned_by) END
                 WHERE uuid = ?1 AND registered_at IS NOT NULL",
                params![uuid, reopen.map(|r| &r.until), reopen.and_then(|r| r.key_id.as_deref())],
            )
            .map_err(db("resetting a device key"))?;
        Ok(changed == 1)
    }

    fn set_target(&self, uuid: &str, target: &NewTarget<'_>) -> Result<u64, Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("storing a target state"))?;
        let version = write_target(&tx, uuid, target, self.history_limit, &rfc3339_now())?;
        tx.commit().map_err(db("storing a target state"))?;
        Ok(version)
    }

    fn set_targets(&self, targets: &[(&str, NewTarget<'_>)]) -> Result<Vec<u64>, Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("storing target states"))?;
        let now = rfc3339_now();
        let versions = targets
            .iter()
            .map(|(uuid, target)| write_target(&tx, uuid, target, self.history_limit, &now))
            .collect::<Result<Vec<u64>, Error>>()?;
        tx.commit().map_err(db("storing target states"))?;
        Ok(versions)
    }

    fn target(&self, uuid: &str) -> Result<Option<StoredTarget>, Error> {
        self.reader()?
            .query_row(
                &format!(
                    "SELECT {TARGET_COLUMNS} FROM target_states t
                     JOIN devices d ON d.uuid = t.device_uuid AND d.target_version = t.version WHERE d.uuid = ?1"
                ),
                [uuid],
                target_from_row,
            )
            .optional()
            .map_err(db("reading a target state"))
    }

    fn target_version(&self, uuid: &str, version: u64) -> Result<Option<StoredTarget>, Error> {
        self.reader()?
            .query_row(
                &format!("SELECT {TARGET_COLUMNS} FROM target_states t WHERE t.device_uuid = ?1 AND t.version = ?2"),
                params![uuid, version as i64],
                target_from_row,
            )
            .optional()
            .map_err(db("reading a target state"))
    }

    fn target_history(&self, uuid: &str, before: Option<u64>, limit: usize) -> Result<Vec<StoredTarget>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {TARGET_COLUMNS} FROM target_states t WHERE t.device_uuid = ?1 AND t.version < ?2
                 ORDER BY t.version DESC LIMIT ?3"
            ))
            .map_err(db("reading the target history"))?;
        let before = before.map_or(i64::MAX, |v| v.min(i64::MAX as u64) as i64);
        let rows = stmt
            .query_map(params![uuid, before, limit.min(i64::MAX as usize) as i64], target_from_row)
            .map_err(db("reading the target history"))?;
        rows.collect::<Result<_, _>>().map_err(db("reading the target history"))
    }

    fn devices_using(&self, reference: &str) -> Result<Vec<String>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT device_uuid FROM device_images WHERE reference = ?1 ORDER BY device_uuid")
            .map_err(db("listing the devices of an image"))?;
        let rows = stmt.query_map([reference], |r| r.get(0)).map_err(db("listing the devices of an image"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing the devices of an image"))
    }

    fn poll(&self, uuid: &str) -> Result<Option<PollAnswer>, Error> {
        let row: Option<(Option<String>, Option<String>)> = self
            .reader()?
            .prepare_cached("SELECT poll_etag, poll_body FROM devices WHERE uuid = ?1")
            .and_then(|mut stmt| stmt.query_row([uuid], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db("reading a device's target state"))?;
        Ok(match row {
            Some((Some(etag), Some(body))) => Some(PollAnswer { etag, body }),
            _ => None,
        })
    }

    fn create_provisioning_key(&self, key: &ProvisioningKey, key_hash: &str) -> Result<(), Error> {
        let mut conn = self.conn_outside_polls();
        let tx = conn.transaction().map_err(db("creating a provisioning key"))?;
        // A key bound to a device reserves its uuid: no other key can register it first.
        if let Some(uuid) = &key.device {
            insert_device(&tx, uuid, &key.created_at).map_err(db("creating a provisioning key"))?;
        }
        tx.execute(
            "INSERT INTO provisioning_keys (id, key_hash, description, created_at, device_uuid, single_use, expires_at,
                                           fleet)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
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
        .map_err(db("creating a provisioning key"))?;
        tx.commit().map_err(db("creating a provisioning key"))?;
        Ok(())
    }

    fn provisioning_key_by_hash(&self, key_hash: &str) -> Result<Option<ProvisioningKey>, Error> {
        self.reader()?
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM provisioning_keys
                 WHERE key_hash = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)"
            ))
            .and_then(|mut stmt| stmt.query_row(params![key_hash, rfc3339_now()], key_from_row).optional())
            .map_err(db("reading a provisioning key"))
    }

    fn provisioning_keys(&self) -> Result<Vec<ProvisioningKey>, Error> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!("SELECT {KEY_COLUMNS} FROM provisioning_keys ORDER BY created_at, id"))
            .map_err(db("listing provisioning keys"))?;
        let rows = stmt.query_map([], key_from_row).map_err(db("listing provisioning keys"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing provisioning keys"))
    }

    fn revoke_provisioning_key(&self, id: &str) -> Result<bool, Error> {
        let changed = self
            .conn_outside_polls()
            .execute(
                "UPDATE provisioning_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id, rfc3339_now()],
            )
            .map_err(db("revoking a provisioning key"))?;
        Ok(changed > 0)
    }

    /// Every write goes through this process's one writer connection (one server process
    /// serves a SQLite file), so its generation sees them all.
    fn poll_generation(&self) -> Option<u64> {
        Some(SqliteStore::poll_generation(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn target_versions_count_up_and_poll_follows_the_latest() {
        let store = SqliteStore::in_memory().unwrap();
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

    #[test]
    fn a_prepared_device_is_claimed_once_by_its_registration_token() {
        let store = SqliteStore::in_memory().unwrap();
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

    #[test]
    fn a_registration_is_replaced_by_its_own_key_until_complete_and_after_a_reset() {
        let store = SqliteStore::in_memory().unwrap();
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

    #[test]
    fn deleting_a_device_takes_everything_of_it() {
        use crate::store::TelemetryStore;
        let store = SqliteStore::in_memory().unwrap();
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

    #[test]
    fn only_writes_that_change_a_key_or_a_poll_answer_move_the_poll_generation() {
        use crate::store::{ImageStore, PolicyStore, TelemetryStore};
        let store = SqliteStore::in_memory().unwrap();
        let moved = |before: u64| SqliteStore::poll_generation(&store) != before;
        let nginx = ["docker.io/library/nginx:latest".to_string()];
        let before = SqliteStore::poll_generation(&store);
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
        let before = SqliteStore::poll_generation(&store);
        store.register_device(&reg).unwrap();
        assert!(moved(before), "a new key");

        let before = SqliteStore::poll_generation(&store);
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
        let store = SqliteStore::open(&dir.join("server.db")).unwrap();
        assert!(store.readers.is_some(), "a file database reads on its own connections");
        let held = store.reader().unwrap(); // busy: the next read opens another connection
        for n in 1..=3 {
            store.set_target("d1", &new_target("{}", &poll(n), &[])).unwrap();
            assert_eq!(store.poll("d1").unwrap(), Some(poll(n)));
        }
        drop(held);
        assert_eq!(store.readers.as_ref().unwrap().idle.lock().unwrap().len(), 2, "both returned to the pool");
        assert_eq!(store.device_by_key_hash("no-such-hash").unwrap(), None);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
