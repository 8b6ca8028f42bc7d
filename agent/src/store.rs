//! The agent's own state in SQLite (WAL, one transaction per change): its identity, the
//! last target with its ETag, what it deployed for each service and how that went, the
//! images it pulled (only those are ever collected), and a bounded event log. After a
//! reboot without network the agent runs from here.
//!
//! The agent reads the target and the service rows many times a cycle and writes them
//! rarely, so `AgentStore` keeps a copy of what it last read of them, dropped by every
//! write it makes (whether the write succeeded or not): an idle cycle reads the database
//! once, and what is on disk stays the only state that counts after a restart. Nothing
//! else writes the database (`pinion-agent status` only reads it).
//!
//! Each service row also keeps the deployment now in place and the one before it (as the
//! `DesiredService` JSON they were created from), when the current one's probation
//! started on the boot clock (`clock.rs`; cleared once it passed), when a failed service
//! may be tried again, and a rollback while one holds.

use crate::clock::{self, Moment};
use crate::spec::{DesiredService, ServiceKey};
use crate::Error;
use rusqlite::{params, Connection, OptionalExtension, Params};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

/// Events kept in the log; older ones are dropped.
pub const EVENT_LOG_LIMIT: i64 = 500;

/// 1: the first schema. 2: deployments and rollbacks (`MIGRATE_TO_2`). 3: boot-clock
/// times, rollback holds, pulled images (`MIGRATE_TO_3`).
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identity (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    uuid        TEXT NOT NULL,
    device_key  TEXT NOT NULL,
    registered_at TEXT
);
CREATE TABLE IF NOT EXISTS target (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    etag        TEXT,
    state       TEXT NOT NULL,
    fetched_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    app_id        TEXT NOT NULL,
    service_name  TEXT NOT NULL,
    image         TEXT NOT NULL,
    config_hash   TEXT NOT NULL,
    container_id  TEXT,
    failures      INTEGER NOT NULL DEFAULT 0,
    retry_at      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    updated_at    INTEGER NOT NULL,
    deployed_spec TEXT,
    deployed_at   INTEGER NOT NULL DEFAULT 0,
    previous_spec TEXT,
    rollback_image       TEXT,
    rollback_config_hash TEXT,
    rollback_spec        TEXT,
    rollback_reason      TEXT,
    rollback_at          INTEGER,
    probation_boot       TEXT,
    probation_since      INTEGER,
    retry_boot           TEXT,
    retry_uptime         INTEGER,
    rollback_boot        TEXT,
    rollback_uptime      INTEGER,
    rollback_holds       INTEGER,
    PRIMARY KEY (app_id, service_name)
);
CREATE TABLE IF NOT EXISTS pulled_images (
    image      TEXT PRIMARY KEY,
    pulled_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    level    TEXT NOT NULL,
    message  TEXT NOT NULL
);
";

/// A version-1 database gets the columns `SCHEMA` has since version 2:
/// `deployed_spec`/`previous_spec` (`DesiredService` JSON of the deployment in place and
/// of the one before it), `deployed_at` (unix time; probation runs from it) and the
/// rollback of a deployment that failed probation.
const MIGRATE_TO_2: &str = "
ALTER TABLE services ADD COLUMN deployed_spec TEXT;
ALTER TABLE services ADD COLUMN deployed_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE services ADD COLUMN previous_spec TEXT;
ALTER TABLE services ADD COLUMN rollback_image TEXT;
ALTER TABLE services ADD COLUMN rollback_config_hash TEXT;
ALTER TABLE services ADD COLUMN rollback_spec TEXT;
ALTER TABLE services ADD COLUMN rollback_reason TEXT;
ALTER TABLE services ADD COLUMN rollback_at INTEGER;
";

/// A version-2 database gets the boot-clock times of version 3 (`clock.rs`): when the
/// deployment in place started its probation (NULL: passed, or from before version 3,
/// never judged again), when a failed service may be tried again and when a rollback
/// was made. The report kept while the server was away goes: it was written every
/// cycle, and the current state goes out when the server is back.
const MIGRATE_TO_3: &str = "
ALTER TABLE services ADD COLUMN probation_boot TEXT;
ALTER TABLE services ADD COLUMN probation_since INTEGER;
ALTER TABLE services ADD COLUMN retry_boot TEXT;
ALTER TABLE services ADD COLUMN retry_uptime INTEGER;
ALTER TABLE services ADD COLUMN rollback_boot TEXT;
ALTER TABLE services ADD COLUMN rollback_uptime INTEGER;
ALTER TABLE services ADD COLUMN rollback_holds INTEGER;
DROP TABLE IF EXISTS pending_report;
-- What earlier agents pulled for the deployments they still know, so that those images
-- are collected once no longer used (older ones were never recorded).
INSERT OR IGNORE INTO pulled_images (image, pulled_at) SELECT image, 0 FROM services;
INSERT OR IGNORE INTO pulled_images (image, pulled_at)
    SELECT json_extract(previous_spec, '$.image'), 0 FROM services
    WHERE json_valid(previous_spec) AND json_extract(previous_spec, '$.image') IS NOT NULL;
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uuid: String,
    pub device_key: String,
    /// Whether the server accepted the registration (or the key came from the config).
    pub registered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTarget {
    pub etag: Option<String>,
    /// The device's `TargetState` as JSON (the inner object of the poll answer).
    pub state: String,
    pub fetched_at: u64,
}

/// What the agent last did for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub key: ServiceKey,
    pub image: String,
    pub config_hash: String,
    pub container_id: Option<String>,
    /// Consecutive failures of pull/create/start for this image and config.
    pub failures: u32,
    /// Unix time before which the service is not tried again, for people to read;
    /// `retry_after` decides.
    pub retry_at: u64,
    /// When the service may be tried again, on the boot clock.
    pub retry_after: Option<Moment>,
    pub last_error: Option<String>,
    /// Unix time the deployment in place was first started (0: not known), for people.
    pub deployed_at: u64,
    /// When the probation of the deployment in place started, on the boot clock; `None`
    /// once it passed (or was never judged: no probation, or from an older agent).
    pub probation_since: Option<Moment>,
    /// Set while the target asks for a deployment that failed probation.
    pub rollback: Option<Rollback>,
}

/// A deployment that failed probation, and the earlier one put back in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// The rejected image and config: not tried again while the target asks for them.
    pub from_image: String,
    pub from_config_hash: String,
    /// What runs instead.
    pub to: DesiredService,
    /// `exited with code 1 within probation`, `failed to start: …`.
    pub reason: String,
    /// Unix time, for people.
    pub at: u64,
    /// When it was made, on the boot clock: it expires `holds_for` later (or at the next
    /// boot), and the rejected deployment is tried again.
    pub since: Option<Moment>,
    /// `probation::ROLLBACK_EXPIRES` for a deployment that failed, the retry backoff for
    /// one the host could not run.
    pub holds_for: Duration,
}

/// The deployment of a service in place and the one before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deployments {
    pub current: Option<DesiredService>,
    pub previous: Option<DesiredService>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: u64,
    pub level: String,
    pub message: String,
}

pub struct AgentStore {
    conn: Connection,
    /// The target row as last read, until the next write (module doc).
    target: RefCell<Option<Option<Rc<StoredTarget>>>>,
    /// The service rows as last read, until the next write.
    services: RefCell<Option<Rc<[ServiceRecord]>>>,
}

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Store { op, reason: e.to_string() }
}

fn spec_json(service: &DesiredService) -> String {
    serde_json::to_string(service).unwrap_or_default()
}

/// A stored deployment; one that no longer parses is treated as unknown.
fn spec_from(key: &ServiceKey, text: Option<String>) -> Option<DesiredService> {
    let text = text?;
    match serde_json::from_str::<DesiredService>(&text) {
        Ok(mut service) => {
            service.key = key.clone();
            Some(service)
        }
        Err(e) => {
            log::warn!("{key}: a stored deployment is unreadable and is ignored: {e}");
            None
        }
    }
}

/// Mode 0600 for the database and its WAL files (SQLite gives new WAL files the
/// database's mode): the stored target carries registry passwords (`registry_auth`).
fn restrict_to_owner(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot make {file} readable by its owner only: {e}"),
        }
    }
}

/// A boot-clock moment from its two columns.
fn moment(boot: Option<String>, uptime: Option<i64>) -> Option<Moment> {
    Some(Moment { boot: boot?, uptime: uptime? as u64 })
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl AgentStore {
    /// Opens the database, creating its directory and schema when needed.
    pub fn open(path: &Path) -> Result<AgentStore, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        }
        let conn = Connection::open(path)
            .map_err(|e| Error::Store { op: "opening the database", reason: format!("{}: {e}", path.display()) })?;
        restrict_to_owner(path);
        Self::init(conn)
    }

    pub fn in_memory() -> Result<AgentStore, Error> {
        Self::init(Connection::open_in_memory().map_err(db("opening the database"))?)
    }

    fn init(mut conn: Connection) -> Result<AgentStore, Error> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(db("configuring the database"))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db("configuring the database"))?;
        let version: i64 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db("reading the schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Store {
                op: "opening the database",
                reason: format!("schema version {version} is newer than this agent ({SCHEMA_VERSION})"),
            });
        }
        // An up-to-date database is only read here, so `pinion-agent status` can open it
        // while the agent writes. A migration takes the write lock first (IMMEDIATE),
        // waiting on the busy timeout instead of failing on a stale read snapshot.
        if version < SCHEMA_VERSION {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db("migrating the schema"))?;
            tx.execute_batch(SCHEMA).map_err(db("creating the schema"))?;
            // A new database (version 0) got every column from `SCHEMA`.
            if (1..2).contains(&version) {
                tx.execute_batch(MIGRATE_TO_2).map_err(db("migrating the schema to version 2"))?;
            }
            if (1..3).contains(&version) {
                tx.execute_batch(MIGRATE_TO_3).map_err(db("migrating the schema to version 3"))?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(db("writing the schema version"))?;
            tx.commit().map_err(db("migrating the schema"))?;
        }
        Ok(AgentStore { conn, target: RefCell::new(None), services: RefCell::new(None) })
    }

    /// Runs a write, first dropping what is kept of earlier reads: after it, the next
    /// read is from the database (also when the write failed, and changed who knows what).
    fn execute(&self, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
        self.target.replace(None);
        self.services.replace(None);
        self.conn.execute(sql, params)
    }

    pub fn identity(&self) -> Result<Option<Identity>, Error> {
        self.conn
            .query_row("SELECT uuid, device_key, registered_at IS NOT NULL FROM identity WHERE id = 1", [], |r| {
                Ok(Identity { uuid: r.get(0)?, device_key: r.get(1)?, registered: r.get(2)? })
            })
            .optional()
            .map_err(db("reading the identity"))
    }

    pub fn save_identity(&self, identity: &Identity) -> Result<(), Error> {
        self.execute(
            "INSERT INTO identity (id, uuid, device_key, registered_at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET uuid = excluded.uuid, device_key = excluded.device_key,
                                           registered_at = excluded.registered_at",
            params![identity.uuid, identity.device_key, identity.registered.then(|| unix_now() as i64)],
        )
        .map_err(db("saving the identity"))?;
        Ok(())
    }

    /// The stored target; shared with the copy kept until the next write.
    pub fn target(&self) -> Result<Option<Rc<StoredTarget>>, Error> {
        if let Some(kept) = &*self.target.borrow() {
            return Ok(kept.clone());
        }
        let target = self
            .conn
            .prepare_cached("SELECT etag, state, fetched_at FROM target WHERE id = 1")
            .and_then(|mut stmt| {
                stmt.query_row([], |r| {
                    Ok(StoredTarget { etag: r.get(0)?, state: r.get(1)?, fetched_at: r.get::<_, i64>(2)? as u64 })
                })
                .optional()
            })
            .map_err(db("reading the target"))?
            .map(Rc::new);
        self.target.replace(Some(target.clone()));
        Ok(target)
    }

    pub fn save_target(&self, etag: Option<&str>, state: &str) -> Result<(), Error> {
        self.execute(
            "INSERT INTO target (id, etag, state, fetched_at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET etag = excluded.etag, state = excluded.state,
                                           fetched_at = excluded.fetched_at",
            params![etag, state, unix_now() as i64],
        )
        .map_err(db("saving the target"))?;
        Ok(())
    }

    /// The service rows, in key order; shared with the copy kept until the next write.
    pub fn services(&self) -> Result<Rc<[ServiceRecord]>, Error> {
        if let Some(kept) = &*self.services.borrow() {
            return Ok(Rc::clone(kept));
        }
        let services: Rc<[ServiceRecord]> = self.read_services()?.into();
        self.services.replace(Some(Rc::clone(&services)));
        Ok(services)
    }

    fn read_services(&self) -> Result<Vec<ServiceRecord>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT app_id, service_name, image, config_hash, container_id, failures, retry_at, last_error,
                        deployed_at, rollback_image, rollback_config_hash, rollback_spec, rollback_reason, rollback_at,
                        probation_boot, probation_since, retry_boot, retry_uptime, rollback_boot, rollback_uptime,
                        rollback_holds
                 FROM services ORDER BY app_id, service_name",
            )
            .map_err(db("reading services"))?;
        let rows = stmt
            .query_map([], |r| {
                let key = ServiceKey { app_id: r.get(0)?, service_name: r.get(1)? };
                let rollback = match (r.get(9)?, r.get(10)?, spec_from(&key, r.get(11)?)) {
                    (Some(from_image), Some(from_config_hash), Some(to)) => Some(Rollback {
                        from_image,
                        from_config_hash,
                        to,
                        reason: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
                        at: r.get::<_, Option<i64>>(13)?.unwrap_or(0) as u64,
                        since: moment(r.get(18)?, r.get(19)?),
                        holds_for: r
                            .get::<_, Option<i64>>(20)?
                            .map_or(crate::probation::ROLLBACK_EXPIRES, |secs| Duration::from_secs(secs as u64)),
                    }),
                    _ => None,
                };
                Ok(ServiceRecord {
                    image: r.get(2)?,
                    config_hash: r.get(3)?,
                    container_id: r.get(4)?,
                    failures: r.get::<_, i64>(5)? as u32,
                    retry_at: r.get::<_, i64>(6)? as u64,
                    last_error: r.get(7)?,
                    deployed_at: r.get::<_, i64>(8)? as u64,
                    rollback,
                    key,
                    probation_since: moment(r.get(14)?, r.get(15)?),
                    retry_after: moment(r.get(16)?, r.get(17)?),
                })
            })
            .map_err(db("reading services"))?;
        rows.collect::<Result<_, _>>().map_err(db("reading services"))
    }

    /// Records a service as deployed (its container created and started): failures reset.
    /// A different image or config than the deployment in place becomes the deployment
    /// in place, the one before it becomes the previous one, and its probation starts now.
    pub fn record_deployed(&self, wanted: &DesiredService, container_id: &str) -> Result<(), Error> {
        let key = &wanted.key;
        let now = clock::now();
        let moved_on = self.deployments(key)?.current.is_none_or(|current| !current.same_deployment(wanted));
        self.execute(
            "INSERT INTO services (app_id, service_name, image, config_hash, container_id, failures, retry_at,
                                   last_error, updated_at, deployed_spec, deployed_at, probation_boot,
                                   probation_since)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, NULL, ?6, ?7, ?6, ?9, ?10)
             ON CONFLICT (app_id, service_name) DO UPDATE SET image = excluded.image,
                 config_hash = excluded.config_hash, container_id = excluded.container_id,
                 failures = 0, retry_at = 0, retry_boot = NULL, retry_uptime = NULL, last_error = NULL,
                 updated_at = excluded.updated_at, deployed_spec = excluded.deployed_spec,
                 previous_spec = CASE WHEN ?8 THEN services.deployed_spec ELSE services.previous_spec END,
                 deployed_at = CASE WHEN ?8 THEN excluded.deployed_at ELSE services.deployed_at END,
                 probation_boot = CASE WHEN ?8 THEN ?9 ELSE services.probation_boot END,
                 probation_since = CASE WHEN ?8 THEN ?10 ELSE services.probation_since END",
            params![
                key.app_id,
                key.service_name,
                wanted.image,
                wanted.config_hash,
                container_id,
                unix_now() as i64,
                spec_json(wanted),
                moved_on,
                now.boot,
                now.uptime as i64
            ],
        )
        .map_err(db("recording a deployed service"))?;
        Ok(())
    }

    /// The deployment of `key` in place and the one before it, as `record_deployed` kept them.
    pub fn deployments(&self, key: &ServiceKey) -> Result<Deployments, Error> {
        let specs = self
            .conn
            .prepare_cached("SELECT deployed_spec, previous_spec FROM services WHERE app_id = ?1 AND service_name = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![key.app_id, key.service_name], |r| Ok((r.get(0)?, r.get(1)?))).optional()
            })
            .map_err(db("reading deployments"))?;
        Ok(match specs {
            Some((current, previous)) => {
                Deployments { current: spec_from(key, current), previous: spec_from(key, previous) }
            }
            None => Deployments::default(),
        })
    }

    /// Records that `key`'s deployment `rollback.from_*` failed probation and
    /// `rollback.to` runs instead, until the target asks for something else or the
    /// rollback's hold runs out.
    pub fn record_rollback(&self, key: &ServiceKey, rollback: &Rollback) -> Result<(), Error> {
        self.execute(
            "UPDATE services SET rollback_image = ?3, rollback_config_hash = ?4, rollback_spec = ?5,
                 rollback_reason = ?6, rollback_at = ?7, rollback_boot = ?8, rollback_uptime = ?9,
                 rollback_holds = ?10
             WHERE app_id = ?1 AND service_name = ?2",
            params![
                key.app_id,
                key.service_name,
                rollback.from_image,
                rollback.from_config_hash,
                spec_json(&rollback.to),
                rollback.reason,
                rollback.at as i64,
                rollback.since.as_ref().map(|m| m.boot.clone()),
                rollback.since.as_ref().map(|m| m.uptime as i64),
                rollback.holds_for.as_secs() as i64
            ],
        )
        .map_err(db("recording a rollback"))?;
        Ok(())
    }

    /// The rollback in force for `key`, if any.
    pub fn rollback_of(&self, key: &ServiceKey) -> Result<Option<Rollback>, Error> {
        Ok(self.services()?.iter().find(|s| &s.key == key).and_then(|s| s.rollback.clone()))
    }

    /// Forgets `key`'s rollback: the target moved on from the rejected deployment.
    pub fn clear_rollback(&self, key: &ServiceKey) -> Result<(), Error> {
        self.execute(
            "UPDATE services SET rollback_image = NULL, rollback_config_hash = NULL, rollback_spec = NULL,
                 rollback_reason = NULL, rollback_at = NULL, rollback_boot = NULL, rollback_uptime = NULL,
                 rollback_holds = NULL
             WHERE app_id = ?1 AND service_name = ?2",
            params![key.app_id, key.service_name],
        )
        .map_err(db("clearing a rollback"))?;
        Ok(())
    }

    /// Records a failed attempt for `image`/`config_hash`: the count goes up (or restarts
    /// at 1 for a new image or config) and the next try waits until `retry_at`.
    pub fn record_failure(
        &self,
        key: &ServiceKey,
        image: &str,
        config_hash: &str,
        error: &str,
        backoff: &dyn Fn(u32) -> Duration,
    ) -> Result<ServiceRecord, Error> {
        let previous = self.services()?.iter().find(|s| &s.key == key).cloned();
        let failures = match &previous {
            Some(p) if p.image == image && p.config_hash == config_hash => p.failures + 1,
            _ => 1,
        };
        let wait = backoff(failures);
        let retry_at = unix_now() + wait.as_secs();
        let retry_after = clock::now().after(wait);
        let container_id = previous.as_ref().and_then(|p| p.container_id.clone());
        self.execute(
            "INSERT INTO services (app_id, service_name, image, config_hash, container_id, failures, retry_at,
                                   last_error, updated_at, retry_boot, retry_uptime)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (app_id, service_name) DO UPDATE SET image = excluded.image,
                 config_hash = excluded.config_hash, failures = excluded.failures,
                 retry_at = excluded.retry_at, last_error = excluded.last_error, updated_at = excluded.updated_at,
                 retry_boot = excluded.retry_boot, retry_uptime = excluded.retry_uptime",
            params![
                key.app_id,
                key.service_name,
                image,
                config_hash,
                container_id,
                failures as i64,
                retry_at as i64,
                error,
                unix_now() as i64,
                retry_after.boot,
                retry_after.uptime as i64
            ],
        )
        .map_err(db("recording a failed service"))?;
        Ok(ServiceRecord {
            key: key.clone(),
            image: image.to_string(),
            config_hash: config_hash.to_string(),
            container_id,
            failures,
            retry_at,
            last_error: Some(error.to_string()),
            deployed_at: previous.as_ref().map_or(0, |p| p.deployed_at),
            probation_since: previous.as_ref().and_then(|p| p.probation_since.clone()),
            retry_after: Some(retry_after),
            rollback: previous.and_then(|p| p.rollback),
        })
    }

    /// Starts the probation of `key`'s deployment in place again at `now`: the gateway
    /// rebooted before it passed, and how much of it ran is not known.
    pub fn restart_probation(&self, key: &ServiceKey, now: &Moment) -> Result<(), Error> {
        self.execute(
            "UPDATE services SET probation_boot = ?3, probation_since = ?4 WHERE app_id = ?1 AND service_name = ?2",
            params![key.app_id, key.service_name, now.boot, now.uptime as i64],
        )
        .map_err(db("restarting a probation"))?;
        Ok(())
    }

    /// `key`'s deployment in place passed its probation: it is never judged again.
    pub fn end_probation(&self, key: &ServiceKey) -> Result<(), Error> {
        self.execute(
            "UPDATE services SET probation_boot = NULL, probation_since = NULL WHERE app_id = ?1 AND service_name = ?2",
            params![key.app_id, key.service_name],
        )
        .map_err(db("ending a probation"))?;
        Ok(())
    }

    /// Forgets a service that is no longer in the target.
    pub fn forget_service(&self, key: &ServiceKey) -> Result<(), Error> {
        self.execute(
            "DELETE FROM services WHERE app_id = ?1 AND service_name = ?2",
            params![key.app_id, key.service_name],
        )
        .map_err(db("forgetting a service"))?;
        Ok(())
    }

    /// Remembers that the agent pulled `image`: only such images are ever collected.
    pub fn record_pulled(&self, image: &str) -> Result<(), Error> {
        self.execute(
            "INSERT INTO pulled_images (image, pulled_at) VALUES (?1, ?2) ON CONFLICT (image) DO NOTHING",
            params![image, unix_now() as i64],
        )
        .map_err(db("recording a pulled image"))?;
        Ok(())
    }

    /// The images the agent pulled and has not removed.
    pub fn pulled_images(&self) -> Result<Vec<String>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT image FROM pulled_images ORDER BY pulled_at")
            .map_err(db("reading pulled images"))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(db("reading pulled images"))?;
        rows.collect::<Result<_, _>>().map_err(db("reading pulled images"))
    }

    /// Forgets a pulled image: it was removed.
    pub fn forget_pulled(&self, image: &str) -> Result<(), Error> {
        self.execute("DELETE FROM pulled_images WHERE image = ?1", [image]).map_err(db("forgetting a pulled image"))?;
        Ok(())
    }

    /// Appends to the event log, dropping the oldest beyond `EVENT_LOG_LIMIT`.
    pub fn log_event(&self, level: &str, message: &str) -> Result<(), Error> {
        self.execute(
            "INSERT INTO events (at, level, message) VALUES (?1, ?2, ?3)",
            params![unix_now() as i64, level, message],
        )
        .map_err(db("logging an event"))?;
        self.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1", params![EVENT_LOG_LIMIT])
            .map_err(db("trimming the event log"))?;
        Ok(())
    }

    /// The newest events, newest first.
    pub fn recent_events(&self, limit: usize) -> Result<Vec<Event>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT at, level, message FROM events ORDER BY id DESC LIMIT ?1")
            .map_err(db("reading events"))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(Event { at: r.get::<_, i64>(0)? as u64, level: r.get(1)?, message: r.get(2)? })
            })
            .map_err(db("reading events"))?;
        rows.collect::<Result<_, _>>().map_err(db("reading events"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServiceKey {
        ServiceKey { app_id: "1".into(), service_name: name.into() }
    }

    #[test]
    fn identity_and_target_survive_reopening() {
        let path = std::env::temp_dir().join(format!("pinion-agent-store-{}.db", std::process::id()));
        {
            let store = AgentStore::open(&path).unwrap();
            store.save_identity(&Identity { uuid: "u".into(), device_key: "k".into(), registered: true }).unwrap();
            store.save_target(Some("\"e1\""), "{\"apps\":{}}").unwrap();
        }
        let store = AgentStore::open(&path).unwrap();
        assert_eq!(
            store.identity().unwrap(),
            Some(Identity { uuid: "u".into(), device_key: "k".into(), registered: true })
        );
        assert_eq!(store.target().unwrap().unwrap().etag.as_deref(), Some("\"e1\""));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn what_is_kept_of_a_read_goes_with_every_write_even_one_that_failed() {
        let store = AgentStore::in_memory().unwrap();
        assert!(store.services().unwrap().is_empty() && store.target().unwrap().is_none());
        store.record_deployed(&DesiredService::example("web", "a@1", "h1"), "c1").unwrap();
        store.save_target(Some("\"e1\""), "{}").unwrap();
        let (services, target) = (store.services().unwrap(), store.target().unwrap().unwrap());
        assert_eq!((services[0].container_id.as_deref(), target.etag.as_deref()), (Some("c1"), Some("\"e1\"")));
        assert!(Rc::ptr_eq(&services, &store.services().unwrap()), "read once while nothing is written");
        assert!(Rc::ptr_eq(&target, &store.target().unwrap().unwrap()));
        // Written behind the store's back (nothing does, outside tests): not seen yet.
        store.conn.execute("UPDATE services SET container_id = 'c2'", []).unwrap();
        store.conn.execute("UPDATE target SET etag = 'e2'", []).unwrap();
        assert_eq!(store.services().unwrap()[0].container_id.as_deref(), Some("c1"));
        // Any write of the store's, also one that fails, makes the next reads the database's.
        store.conn.execute_batch("DROP TABLE pulled_images").unwrap();
        assert!(store.record_pulled("a@1").is_err());
        assert_eq!(store.services().unwrap()[0].container_id.as_deref(), Some("c2"));
        assert_eq!(store.target().unwrap().unwrap().etag.as_deref(), Some("e2"));
    }

    #[test]
    fn failures_count_up_per_image_and_reset_when_deployed() {
        let store = AgentStore::in_memory().unwrap();
        let backoff = |n: u32| Duration::from_secs(10 * n as u64);
        assert_eq!(store.record_failure(&key("web"), "a@1", "h1", "boom", &backoff).unwrap().failures, 1);
        let second = store.record_failure(&key("web"), "a@1", "h1", "boom", &backoff).unwrap();
        assert_eq!(second.failures, 2);
        assert!(second.retry_at >= unix_now() + 19);
        assert_eq!(store.record_failure(&key("web"), "a@2", "h2", "boom", &backoff).unwrap().failures, 1);
        store.record_deployed(&DesiredService::example("web", "a@2", "h2"), "c1").unwrap();
        let record = &store.services().unwrap()[0];
        assert_eq!((record.failures, record.last_error.clone()), (0, None));
        store.forget_service(&key("web")).unwrap();
        assert!(store.services().unwrap().is_empty());
    }

    #[test]
    fn a_new_deployment_keeps_the_one_before_it() {
        let store = AgentStore::in_memory().unwrap();
        let (v1, v2) = (DesiredService::example("web", "a@1", "h1"), DesiredService::example("web", "a@2", "h2"));
        store.record_deployed(&v1, "c1").unwrap();
        let deployed_at = store.services().unwrap()[0].deployed_at;
        assert!(deployed_at >= unix_now() - 1);
        assert_eq!(store.deployments(&v1.key).unwrap(), Deployments { current: Some(v1.clone()), previous: None });

        // Starting the same deployment again (a new container) is no new deployment.
        store.conn.execute("UPDATE services SET deployed_at = 5", []).unwrap();
        store.record_deployed(&v1, "c2").unwrap();
        assert_eq!(store.services().unwrap()[0].deployed_at, 5);
        assert_eq!(store.deployments(&v1.key).unwrap().previous, None);

        // A failed attempt at v2 changes neither; deploying v2 moves v1 back.
        store.record_failure(&v2.key, &v2.image, &v2.config_hash, "pull failed", &|_| Duration::ZERO).unwrap();
        assert_eq!(store.deployments(&v1.key).unwrap().current, Some(v1.clone()));
        store.record_deployed(&v2, "c3").unwrap();
        assert_eq!(store.deployments(&v1.key).unwrap(), Deployments { current: Some(v2), previous: Some(v1) });
        assert!(store.services().unwrap()[0].deployed_at > 5);
    }

    #[test]
    fn a_rollback_is_kept_until_cleared() {
        let store = AgentStore::in_memory().unwrap();
        let (v1, v2) = (DesiredService::example("web", "a@1", "h1"), DesiredService::example("web", "a@2", "h2"));
        store.record_deployed(&v1, "c1").unwrap();
        store.record_deployed(&v2, "c2").unwrap();
        let rollback = Rollback {
            from_image: v2.image.clone(),
            from_config_hash: v2.config_hash.clone(),
            to: v1.clone(),
            reason: "exited with code 1 within probation".into(),
            at: 1_700_000_000,
            since: None,
            holds_for: crate::probation::ROLLBACK_EXPIRES,
        };
        store.record_rollback(&v1.key, &rollback).unwrap();
        assert_eq!(store.rollback_of(&v1.key).unwrap(), Some(rollback.clone()));
        // Putting v1 back is recorded as a deployment; the rollback stays.
        store.record_deployed(&v1, "c3").unwrap();
        assert_eq!(store.services().unwrap()[0].rollback, Some(rollback));
        store.clear_rollback(&v1.key).unwrap();
        assert_eq!(store.rollback_of(&v1.key).unwrap(), None);
    }

    #[test]
    fn a_version_1_database_gets_the_deployment_columns() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE services (
                 app_id TEXT NOT NULL, service_name TEXT NOT NULL, image TEXT NOT NULL,
                 config_hash TEXT NOT NULL, container_id TEXT, failures INTEGER NOT NULL DEFAULT 0,
                 retry_at INTEGER NOT NULL DEFAULT 0, last_error TEXT, updated_at INTEGER NOT NULL,
                 PRIMARY KEY (app_id, service_name));
             INSERT INTO services (app_id, service_name, image, config_hash, container_id, updated_at)
                 VALUES ('1', 'web', 'a@1', 'h1', 'c1', 1);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let store = AgentStore::init(conn).unwrap();
        let version: i64 = store.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let old = &store.services().unwrap()[0];
        assert_eq!((old.image.as_str(), old.container_id.as_deref(), old.deployed_at), ("a@1", Some("c1"), 0));
        assert_eq!(old.rollback, None);
        assert_eq!((old.probation_since.as_ref(), old.retry_after.as_ref()), (None, None), "settled, not held");
        assert_eq!(store.pulled_images().unwrap(), ["a@1"], "the image it runs can be collected later");
        assert_eq!(store.deployments(&key("web")).unwrap(), Deployments::default());
        let v2 = DesiredService::example("web", "a@2", "h2");
        store.record_deployed(&v2, "c2").unwrap();
        assert_eq!(store.deployments(&key("web")).unwrap().current, Some(v2));
    }

    #[test]
    fn a_newer_database_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        assert!(AgentStore::init(conn).is_err());
    }

    #[test]
    fn the_event_log_is_bounded() {
        let store = AgentStore::in_memory().unwrap();
        for i in 0..(EVENT_LOG_LIMIT + 20) {
            store.log_event("info", &format!("event {i}")).unwrap();
        }
        let count: i64 = store.conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(count, EVENT_LOG_LIMIT);
        assert_eq!(store.recent_events(1).unwrap()[0].message, format!("event {}", EVENT_LOG_LIMIT + 19));
    }
}
