//! The numbered changes to the schema since its first version, one list for both
//! engines. SQLite applies each in its own transaction with `user_version` moved to its
//! number, so a database from any earlier pinion is brought up to date on open and a
//! newer one is refused. PostgreSQL starts at `postgres::schema::BASELINE_VERSION` (no
//! PostgreSQL database is older) and applies the later ones' `postgres` text.

use super::sqlite_engine::lite as db;
use crate::Error;
use rusqlite::Connection;

pub(super) struct Migration {
    pub version: i64,
    pub sql: &'static str,
    /// The same change for PostgreSQL; `None` only up to its baseline.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub postgres: Option<&'static str>,
}

/// Version 1 is the tables `CREATE TABLE IF NOT EXISTS` makes; every later change is here.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2,
        // Device numbers for the original agent's registration answer (`id`), never reused;
        // when a registration completed (its first poll or key exchange); the last known
        // system facts; and the bounded logs and metrics series. Devices registered before
        // this version had completed (a second registration was refused then).
        sql: "
        ALTER TABLE devices ADD COLUMN id INTEGER;
        ALTER TABLE devices ADD COLUMN registration_completed_at TEXT;
        ALTER TABLE devices ADD COLUMN system_info TEXT;
        UPDATE devices SET id = rowid;
        -- When exactly is not known: their registration time stands in.
        UPDATE devices SET registration_completed_at = registered_at WHERE api_key_hash IS NOT NULL;
        CREATE UNIQUE INDEX devices_by_id ON devices(id);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters (name, value) SELECT 'device_id', COALESCE(MAX(id), 0) FROM devices;
        CREATE TABLE device_logs (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            device_uuid   TEXT NOT NULL REFERENCES devices(uuid) ON DELETE CASCADE,
            service_name  TEXT,
            bytes         INTEGER NOT NULL,
            line          TEXT NOT NULL,
            received_at   TEXT NOT NULL
        );
        CREATE INDEX device_logs_by_device ON device_logs(device_uuid, id);
        CREATE INDEX device_logs_by_service ON device_logs(device_uuid, service_name, id);
        CREATE TABLE device_metrics (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            device_uuid  TEXT NOT NULL REFERENCES devices(uuid) ON DELETE CASCADE,
            recorded_at  INTEGER NOT NULL,
            sample       TEXT NOT NULL
        );
        CREATE INDEX device_metrics_by_device ON device_metrics(device_uuid, id);
    ",
        postgres: None,
    },
    Migration {
        version: 3,
        // The target version a pending update was made from: one made before the
        // operator wrote a newer version is dropped, never applied over it. 0: unknown
        // (made before this version), applied as before.
        sql: "ALTER TABLE pending_updates ADD COLUMN from_version INTEGER NOT NULL DEFAULT 0;",
        postgres: None,
    },
    Migration {
        version: 4,
        // Registration tokens: provisioning keys bound to one device, spent by the
        // registration they make, and expiring; and until when a device whose key the
        // operator reset may be registered with any provisioning key.
        sql: "
        ALTER TABLE devices ADD COLUMN open_until TEXT;
        ALTER TABLE provisioning_keys ADD COLUMN device_uuid TEXT;
        ALTER TABLE provisioning_keys ADD COLUMN single_use INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE provisioning_keys ADD COLUMN expires_at TEXT;
        CREATE INDEX provisioning_keys_by_device ON provisioning_keys(device_uuid);
    ",
        postgres: None,
    },
    Migration {
        version: 5,
        // Fleets, their frozen releases and staged rollouts (`fleets.rs`). A device's
        // fleet, labels, whether its own target pins it, the release its target was made
        // from, and the release a rollout gave it; the references a fleet's current
        // release follows; moved tags waiting for `minimumAge`; and the event log.
        sql: "
        CREATE TABLE fleets (
            name             TEXT PRIMARY KEY,
            description      TEXT,
            update_policy    TEXT,
            rollout_plan     TEXT,
            current_release  INTEGER,
            created_at       TEXT NOT NULL
        );
        ALTER TABLE devices ADD COLUMN fleet TEXT;
        ALTER TABLE devices ADD COLUMN labels TEXT;
        ALTER TABLE devices ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE devices ADD COLUMN release_id INTEGER;
        ALTER TABLE devices ADD COLUMN rollout_id INTEGER;
        ALTER TABLE devices ADD COLUMN rollout_release INTEGER;
        -- Covering: a rollout's step reads its fleet's members every tick, and a device
        -- row is kilobytes (poll body, last report) with these columns at its end.
        CREATE INDEX devices_by_fleet
            ON devices(fleet, uuid, labels, pinned, release_id, rollout_id, rollout_release);
        ALTER TABLE provisioning_keys ADD COLUMN fleet TEXT;
        CREATE TABLE releases (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            fleet       TEXT NOT NULL REFERENCES fleets(name) ON DELETE CASCADE,
            state       TEXT NOT NULL,
            refs        TEXT NOT NULL,
            source      TEXT NOT NULL,
            note        TEXT,
            created_at  TEXT NOT NULL
        );
        CREATE INDEX releases_by_fleet ON releases(fleet, id);
        CREATE TABLE fleet_images (
            fleet      TEXT NOT NULL REFERENCES fleets(name) ON DELETE CASCADE,
            reference  TEXT NOT NULL,
            PRIMARY KEY (fleet, reference)
        );
        CREATE INDEX fleet_images_by_reference ON fleet_images(reference);
        CREATE TABLE fleet_updates (
            fleet        TEXT NOT NULL REFERENCES fleets(name) ON DELETE CASCADE,
            reference    TEXT NOT NULL,
            digest       TEXT NOT NULL,
            detected_at  INTEGER NOT NULL,
            PRIMARY KEY (fleet, reference)
        );
        CREATE TABLE rollouts (
            id                 INTEGER PRIMARY KEY AUTOINCREMENT,
            fleet              TEXT NOT NULL REFERENCES fleets(name) ON DELETE CASCADE,
            release_id         INTEGER NOT NULL,
            previous_release   INTEGER,
            plan               TEXT NOT NULL,
            status             TEXT NOT NULL,
            current_wave       INTEGER,
            wave_started_at    INTEGER,
            wave_count         INTEGER NOT NULL,
            superseded_by      INTEGER,
            failures_accepted  INTEGER NOT NULL DEFAULT 0,
            created_at         TEXT NOT NULL,
            updated_at         TEXT NOT NULL
        );
        CREATE INDEX rollouts_by_fleet ON rollouts(fleet, id);
        CREATE TABLE rollout_devices (
            rollout_id        INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
            device_uuid       TEXT NOT NULL,
            wave              INTEGER NOT NULL,
            status            TEXT NOT NULL,
            reason            TEXT,
            updating_since    INTEGER,
            healthy_at        INTEGER,
            assigned          INTEGER NOT NULL DEFAULT 0,
            running_since     INTEGER,
            fingerprint       TEXT,
            previous_rollout  INTEGER,
            previous_release  INTEGER,
            PRIMARY KEY (rollout_id, device_uuid)
        );
        CREATE TABLE events (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            at          TEXT NOT NULL,
            fleet       TEXT,
            device      TEXT,
            rollout     INTEGER,
            release_id  INTEGER,
            kind        TEXT NOT NULL,
            message     TEXT NOT NULL
        );
        CREATE INDEX events_by_fleet ON events(fleet, id);
        CREATE INDEX events_by_device ON events(device, id);
    ",
        postgres: None,
    },
    Migration {
        version: 6,
        // Facts every replica must agree on (`settings.rs`): a check value of the secret
        // key that seals registry passwords, so a replica started with another key
        // refuses to start instead of failing to open them later. When each device last
        // polled, the dashboard's sessions and the rate limits' events, shared by replicas
        // (`presence.rs`, `sessions.rs`, `rate_events.rs`).
        sql: "
        CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE device_presence (
            uuid          TEXT PRIMARY KEY REFERENCES devices(uuid) ON DELETE CASCADE,
            last_poll_ms  INTEGER NOT NULL
        );
        CREATE INDEX device_presence_by_time ON device_presence(last_poll_ms);
        CREATE TABLE sessions (hash TEXT PRIMARY KEY, ends_ms INTEGER NOT NULL);
        CREATE TABLE rate_events (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            replica  TEXT NOT NULL,
            kind     TEXT NOT NULL,
            client   TEXT NOT NULL,
            count    INTEGER NOT NULL,
            at_ms    INTEGER NOT NULL
        );
        CREATE INDEX rate_events_by_time ON rate_events(at_ms);
    ",
        postgres: Some(
            r#"
        CREATE TABLE settings (name TEXT COLLATE "C" PRIMARY KEY, value TEXT COLLATE "C" NOT NULL);
        CREATE TABLE device_presence (
            uuid          TEXT COLLATE "C" PRIMARY KEY REFERENCES devices(uuid) ON DELETE CASCADE,
            last_poll_ms  BIGINT NOT NULL
        );
        CREATE INDEX device_presence_by_time ON device_presence(last_poll_ms);
        CREATE TABLE sessions (hash TEXT COLLATE "C" PRIMARY KEY, ends_ms BIGINT NOT NULL);
        CREATE TABLE rate_events (
            id       BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            replica  TEXT COLLATE "C" NOT NULL,
            kind     TEXT COLLATE "C" NOT NULL,
            client   TEXT COLLATE "C" NOT NULL,
            count    BIGINT NOT NULL,
            at_ms    BIGINT NOT NULL
        );
        CREATE INDEX rate_events_by_time ON rate_events(at_ms);
    "#,
        ),
    },
];

/// The version a database is at once every migration has run.
pub(super) fn latest() -> i64 {
    MIGRATIONS.last().map_or(1, |m| m.version)
}

/// Brings a SQLite database to the latest version: makes the first version's tables if
/// missing, then applies every later migration; refuses a database from a newer pinion.
pub(super) fn migrate_sqlite(conn: &mut Connection) -> Result<(), Error> {
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db("reading the schema version"))?;
    let latest = latest();
    if version > latest {
        return Err(Error::Store {
            op: "opening the database",
            reason: format!("schema version {version} is newer than this server ({latest}); upgrade pinion-server"),
        });
    }
    conn.execute_batch(super::devices::SCHEMA).map_err(db("creating the schema"))?;
    conn.execute_batch(super::images::SCHEMA).map_err(db("creating the schema"))?;
    conn.execute_batch(super::policy::SCHEMA).map_err(db("creating the schema"))?;
    super::credentials::create_schema(conn).map_err(db("creating the schema"))?;
    migrate(conn)
}

/// Applies every migration newer than the database's `user_version` (0 counts as 1: a
/// new database whose first-version tables were just made).
fn migrate(conn: &mut Connection) -> Result<(), Error> {
    for migration in MIGRATIONS {
        let tx = conn.transaction().map_err(db("migrating the schema"))?;
        let version: i64 =
            tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db("reading the schema version"))?;
        if version.max(1) >= migration.version {
            continue;
        }
        tx.execute_batch(migration.sql).map_err(|e| Error::Store {
            op: "migrating the schema",
            reason: format!("to version {}: {e}", migration.version),
        })?;
        tx.pragma_update(None, "user_version", migration.version).map_err(db("writing the schema version"))?;
        tx.commit().map_err(db("migrating the schema"))?;
        log::info!("database schema migrated to version {}", migration.version);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "postgres")]
    fn every_migration_past_the_postgres_baseline_has_its_postgres_text() {
        let baseline = super::super::postgres::schema::BASELINE_VERSION;
        for m in MIGRATIONS {
            assert_eq!(m.postgres.is_some(), m.version > baseline, "migration {}", m.version);
        }
    }

    #[test]
    fn a_version_1_database_gets_device_numbers_in_the_order_devices_came() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::devices::SCHEMA).unwrap();
        conn.execute_batch(super::super::policy::SCHEMA).unwrap();
        conn.execute_batch(
            "INSERT INTO devices (uuid, created_at, api_key_hash, registered_at) VALUES ('b', 't', 'h', 't');
             INSERT INTO devices (uuid, created_at) VALUES ('a', 't');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let rows: Vec<(String, i64, bool)> = conn
            .prepare("SELECT uuid, id, registration_completed_at IS NOT NULL FROM devices ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [("b".to_string(), 1, true), ("a".to_string(), 2, false)]);
        let next: i64 =
            conn.query_row("SELECT value FROM counters WHERE name = 'device_id'", [], |r| r.get(0)).unwrap();
        assert_eq!(next, 2);
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, latest());
        migrate(&mut conn).unwrap(); // nothing left to do, and no error for it
    }
}
