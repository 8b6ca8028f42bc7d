//! The PostgreSQL engine under `SqlStore`, for several replicas on one database: a pool
//! of connections, every write a serializable transaction run again when PostgreSQL
//! gives it up for a concurrent one (so versions count up without gaps or duplicates
//! whichever replica writes), migrations under an advisory lock (one replica migrates,
//! the others wait), and the lease on the periodic work (`lead`).

mod connect;
pub(crate) mod schema;
mod values;

pub use connect::PostgresOptions;

use super::sql::{db, numbered_placeholders, DbError, DbErrorKind, Row, Sql, Value};
use crate::Error;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, Statement};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Held while one replica migrates the schema; the others wait for it.
const MIGRATION_LOCK: i64 = 0x7069_6e69_6f6e_0001;
/// Held by the replica that runs the periodic work (tag refresh, rollout steps), on a
/// connection of its own: it goes with the replica, however the replica ends.
const LEADER_LOCK: i64 = 0x7069_6e69_6f6e_0002;
/// Held while one rollout decision is made (`Store::lock_rollouts`), on whichever replica.
const ROLLOUT_LOCK: i64 = 0x7069_6e69_6f6e_0003;
/// A write given up this many times for concurrent ones fails with its last error.
const MAX_ATTEMPTS: u32 = 20;
/// How long a request waits for a connection when every one is busy.
const CHECKOUT_WAIT: Duration = Duration::from_secs(10);

pub(super) struct PgEngine {
    connector: connect::Connector,
    pool: Mutex<Pool>,
    returned: Condvar,
    max_connections: usize,
    /// The connection holding `LEADER_LOCK`, once this replica has it.
    leader: Mutex<Option<Client>>,
}

struct Pool {
    idle: Vec<PgConn>,
    open: usize,
}

/// A connection with the statements prepared on it, by the store's SQL text.
struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl PgEngine {
    /// Connects, checks the database answers, and brings its schema up to date.
    pub(super) fn connect(options: &PostgresOptions) -> Result<PgEngine, Error> {
        let engine = PgEngine {
            connector: connect::Connector::new(options)?,
            pool: Mutex::new(Pool { idle: Vec::new(), open: 0 }),
            returned: Condvar::new(),
            max_connections: options.max_connections.max(2),
            leader: Mutex::new(None),
        };
        engine.migrate()?;
        Ok(engine)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle connection, a new one while fewer than `max_connections` are open, or the
    /// first one returned within `CHECKOUT_WAIT`.
    fn checkout(&self) -> Result<Checkout<'_>, DbError> {
        let mut pool = self.pool();
        let deadline = std::time::Instant::now() + CHECKOUT_WAIT;
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(Checkout { conn: Some(conn), engine: self, unlock: None });
            }
            if pool.open < self.max_connections {
                pool.open += 1;
                drop(pool);
                return match self.connector.connect() {
                    Ok(client) => Ok(Checkout {
                        conn: Some(PgConn { client, statements: HashMap::new() }),
                        engine: self,
                        unlock: None,
                    }),
                    Err(e) => {
                        self.pool().open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(DbError::new(
                    DbErrorKind::Unavailable,
                    format!("all {} database connections stayed busy for {CHECKOUT_WAIT:?}", self.max_connections),
                ));
            }
            pool = self.returned.wait_timeout(pool, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Runs `work` outside any transaction. A connection found closed (the database
    /// restarted since it was last used) is replaced once.
    pub(super) fn read<T>(&self, work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>) -> Result<T, Error> {
        let mut checkout = self.checkout().map_err(db("connecting to the database"))?;
        if checkout.conn().client.is_closed() {
            checkout.discard();
            checkout = self.checkout().map_err(db("connecting to the database"))?;
        }
        let PgConn { client, statements } = checkout.conn();
        work(&mut PgSql { client, statements, retry: false })
    }

    /// Runs `work` in one transaction of `isolation` (serializable for the store's own
    /// data), again (up to `MAX_ATTEMPTS` times) while PostgreSQL gives it up for a
    /// concurrent one.
    pub(super) fn write<T>(
        &self,
        op: &'static str,
        isolation: IsolationLevel,
        work: &mut dyn FnMut(&mut dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut checkout = self.checkout().map_err(db(op))?;
            if checkout.conn().client.is_closed() {
                // A pooled connection the database closed meanwhile: nothing was sent.
                checkout.discard();
                continue;
            }
            let PgConn { client, statements } = checkout.conn();
            let started = client.build_transaction().isolation_level(isolation).start();
            let mut tx = started.map_err(|e| db(op)(DbError::from(e)))?;
            let mut sql = PgSql { client: &mut tx, statements, retry: false };
            let result = work(&mut sql);
            let retry = sql.retry;
            match result {
                Ok(value) => match tx.commit() {
                    Ok(()) => return Ok(value),
                    Err(e) => {
                        let e = DbError::from(e);
                        if e.kind != DbErrorKind::Retry || attempt >= MAX_ATTEMPTS {
                            return Err(db(op)(e));
                        }
                    }
                },
                Err(e) if !retry || attempt >= MAX_ATTEMPTS => return Err(e),
                Err(_) => {} // rolled back as `tx` drops; run again
            }
            // Apart a little, so that the same two writers do not collide again at once.
            std::thread::sleep(Duration::from_millis(u64::from(attempt) * 3));
        }
    }

    /// Waits for the database's rollout lock and holds it (on a pooled connection) until
    /// the returned guard drops; a replica that dies holding it lets it go with the
    /// connection.
    pub(super) fn lock_rollouts(&self) -> Result<Box<dyn Send + '_>, Error> {
        let op = "taking the rollout lock";
        let mut checkout = self.checkout().map_err(db(op))?;
        checkout
            .conn()
            .client
            .query_one("SELECT pg_advisory_lock($1)", &[&ROLLOUT_LOCK])
            .map_err(|e| db(op)(e.into()))?;
        checkout.unlock = Some(ROLLOUT_LOCK);
        Ok(Box::new(checkout))
    }

    /// Whether this replica runs the periodic work now: it holds `LEADER_LOCK` on a live
    /// connection, or takes it. A replica that dies lets it go with its connection, and
    /// another takes it at its next try.
    pub(super) fn lead(&self) -> Result<bool, Error> {
        let mut leader = self.leader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = leader.as_mut() {
            if client.is_valid(Duration::from_secs(5)).is_ok() {
                return Ok(true);
            }
            log::warn!("lost the database connection that held the lease on the periodic work");
            *leader = None;
        }
        let mut client = self.connector.connect().map_err(db("taking the lease on the periodic work"))?;
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .and_then(|row| row.try_get(0))
            .map_err(|e| db("taking the lease on the periodic work")(e.into()))?;
        if taken {
            log::info!("this replica runs the periodic work (tag refresh, rollout steps) now");
            *leader = Some(client);
        }
        Ok(taken)
    }

    /// Creates the schema or brings it up to date, one replica at a time; refuses a
    /// database written by a newer pinion.
    fn migrate(&self) -> Result<(), Error> {
        let op = "migrating the schema";
        let mut client = self.connector.connect().map_err(db(op))?;
        let pg = |e: postgres::Error| db(op)(e.into());
        // However long another replica's migration holds the lock, or a migration takes.
        client.batch_execute("SET statement_timeout = 0").map_err(pg)?;
        client.query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(pg)?;
        client.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").map_err(pg)?;
        let stored: Option<i64> =
            client.query_one("SELECT max(version) FROM schema_version", &[]).and_then(|r| r.try_get(0)).map_err(pg)?;
        let latest = super::migrations::latest();
        let mut version = match stored {
            Some(v) if v > latest => {
                return Err(Error::Store {
                    op: "opening the database",
                    reason: format!("schema version {v} is newer than this server ({latest}); upgrade pinion-server"),
                })
            }
            Some(v) => v,
            None => {
                let mut tx = client.transaction().map_err(pg)?;
                tx.batch_execute(schema::BASELINE).map_err(pg)?;
                tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&schema::BASELINE_VERSION])
                    .map_err(pg)?;
                tx.commit().map_err(pg)?;
                log::info!("database schema created at version {}", schema::BASELINE_VERSION);
                schema::BASELINE_VERSION
            }
        };
        for migration in super::migrations::MIGRATIONS {
            if migration.version <= version {
                continue;
            }
            let sql = migration.postgres.ok_or_else(|| Error::Store {
                op,
                reason: format!("migration {} has no PostgreSQL text", migration.version),
            })?;
            let mut tx = client.transaction().map_err(pg)?;
            tx.batch_execute(sql).map_err(|e| Error::Store {
                op,
                reason: format!("to version {}: {}", migration.version, DbError::from(e)),
            })?;
            tx.execute("UPDATE schema_version SET version = $1", &[&migration.version]).map_err(pg)?;
            tx.commit().map_err(pg)?;
            version = migration.version;
            log::info!("database schema migrated to version {version}");
        }
        client.query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).map_err(pg)?;
        Ok(())
    }
}

/// A pooled connection, returned when dropped unless it was closed or discarded.
struct Checkout<'a> {
    conn: Option<PgConn>,
    engine: &'a PgEngine,
    /// An advisory lock this connection holds, let go before it returns to the pool.
    unlock: Option<i64>,
}

impl Checkout<'_> {
    fn conn(&mut self) -> &mut PgConn {
        self.conn.as_mut().expect("a checked-out connection until dropped")
    }

    fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let (Some(key), Some(conn)) = (self.unlock, self.conn.as_mut()) {
            if conn.client.query_one("SELECT pg_advisory_unlock($1)", &[&key]).is_err() {
                self.conn = None; // closing the connection lets the lock go
            }
        }
        let mut pool = self.engine.pool();
        match self.conn.take() {
            Some(conn) if !conn.client.is_closed() => pool.idle.push(conn),
            _ => pool.open -= 1,
        }
        drop(pool);
        self.engine.returned.notify_one();
    }
}

/// A connection or transaction as `Sql`, preparing each statement once per connection.
struct PgSql<'a, C: GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
    /// Set when a statement failed for a concurrent transaction: `write` runs it again.
    retry: bool,
}

impl<C: GenericClient> PgSql<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(&numbered_placeholders(sql)).map_err(|e| self.failed(e))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn failed(&mut self, e: postgres::Error) -> DbError {
        let e = DbError::from(e);
        self.retry |= e.kind == DbErrorKind::Retry;
        e
    }
}

fn params(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl<C: GenericClient> Sql for PgSql<'_, C> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, &params(args)).map_err(|e| self.failed(e))
    }

    fn query_each(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut dyn FnMut(Row) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        use postgres::fallible_iterator::FallibleIterator;
        let statement = self.statement(sql)?;
        let columns = statement.columns().len();
        let outcome = (|| -> Result<Result<(), DbError>, postgres::Error> {
            let mut rows = self.client.query_raw(&statement, params(args))?;
            while let Some(row) = rows.next()? {
                let values = (0..columns).map(|i| row.try_get::<_, Value>(i)).collect::<Result<_, _>>()?;
                if let Err(e) = each(Row { values }) {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(()))
        })();
        outcome.map_err(|e| self.failed(e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::new_postgres_database;
    use crate::store::{SqlStore, Store};

    #[test]
    fn replicas_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
        let url = new_postgres_database();
        let options = PostgresOptions::new(&url);
        std::thread::scope(|scope| {
            let starts: Vec<_> = (0..4).map(|_| scope.spawn(|| SqlStore::connect(&options).map(|_| ()))).collect();
            for start in starts {
                start.join().unwrap().unwrap();
            }
        });
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let row = client.query_one("SELECT count(*), max(version) FROM schema_version", &[]).unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, super::super::migrations::latest()));
        client.execute("UPDATE schema_version SET version = version + 1", &[]).unwrap();
        let e = SqlStore::connect(&options).err().expect("a newer schema is refused").to_string();
        assert!(e.contains("newer than this server"), "{e}");
    }

    #[test]
    fn tls_to_postgres_verifies_the_server_certificate_against_the_ca_file() {
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("{name} is not set: start the test cluster with scripts/postgres-cluster"))
        };
        let (tls_url, ca) = (var("PINION_TEST_POSTGRES_TLS"), var("PINION_TEST_POSTGRES_CA"));
        let name = new_postgres_database().rsplit('/').next().unwrap().to_string();
        let url = crate::store::testing::with_database(&tls_url, &name);
        let mut options = PostgresOptions::new(&url);
        options.ca_file = Some(ca.into());
        let store = SqlStore::connect(&options).unwrap_or_else(|e| panic!("TLS with the CA file: {e}"));
        assert_eq!(store.devices().unwrap(), []);
        let e = SqlStore::connect(&PostgresOptions::new(&url)).err().expect("a certificate no known CA signed");
        assert!(matches!(e, Error::StoreUnavailable { .. }) && e.to_string().contains("certificate"), "{e}");
        let plain = url.replace("sslmode=require", "sslmode=disable");
        SqlStore::connect(&PostgresOptions::new(&plain)).expect("the same database without TLS, when asked");
    }

    #[test]
    fn a_database_that_does_not_answer_is_unavailable() {
        let options = PostgresOptions::new("postgres://pinion@127.0.0.1:1/pinion");
        let e = SqlStore::connect(&options).err().expect("nothing listens on port 1");
        assert!(matches!(e, Error::StoreUnavailable { .. }), "{e:?}");
    }

    /// A lock held in the database (an operator's `LOCK TABLE`, a long migration) made
    /// every request wait on it for as long as it was held: the workers hung, `/health`
    /// with them, and the answers came never. A statement now gives up after
    /// `statement_timeout`, and that is a 503, not a 500.
    #[test]
    fn a_statement_stuck_behind_a_lock_gives_up_as_unavailable() {
        let url = new_postgres_database();
        let mut options = PostgresOptions::new(&url);
        options.statement_timeout = Duration::from_millis(300);
        let store = SqlStore::connect(&options).unwrap();
        let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = holder.transaction().unwrap();
        tx.batch_execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE").unwrap();
        let started = std::time::Instant::now();
        let e = store.devices().expect_err("the table is locked");
        assert!(matches!(e, Error::StoreUnavailable { .. }) && e.to_string().contains("timeout"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
        tx.rollback().unwrap();
        assert_eq!(store.devices().unwrap(), [], "and works again once the lock is let go");
    }

    /// The leader's lease (and the rollout lock) go with the connection holding them; a
    /// replica whose machine vanishes (power, network) closes nothing, and PostgreSQL kept
    /// the lease for the kernel's keepalive time, two hours, with no replica leading. Every
    /// connection asks PostgreSQL to probe it within seconds.
    #[test]
    fn every_connection_is_probed_so_a_vanished_replica_lets_its_locks_go() {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
        let name = new_postgres_database().rsplit('/').next().unwrap().to_string();
        let url = crate::store::testing::with_database(&var("PINION_TEST_POSTGRES_TLS"), &name)
            .replace("sslmode=require", "sslmode=disable");
        let connector = connect::Connector::new(&PostgresOptions::new(&url)).unwrap();
        let mut client = connector.connect().unwrap();
        let row = client
            .query_one("SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_count')", &[])
            .unwrap();
        let (idle, count): (String, String) = (row.get(0), row.get(1));
        assert!(idle.parse::<u32>().is_ok_and(|s| (1..=30).contains(&s)), "tcp_keepalives_idle {idle}");
        assert!(count.parse::<u32>().is_ok_and(|n| n >= 1), "tcp_keepalives_count {count}");
    }

    /// PostgreSQL's text holds no NUL character, which SQLite's does: a string with one
    /// is the request's fault (400) wherever it comes from, not a database error (500).
    #[test]
    fn text_with_a_nul_character_is_a_bad_request_not_a_store_error() {
        use crate::store::TelemetryStore;
        let store = crate::store::testing::postgres();
        let e = store.logs("d1", Some("we\0b"), 10, 0).expect_err("PostgreSQL cannot compare it");
        assert!(matches!(e, Error::BadRequest { .. }) && e.to_string().contains("NUL"), "{e:?}");
        assert_eq!(store.logs("d1", Some("web"), 10, 0).unwrap().total, 0, "the pool goes on");
    }

    #[test]
    fn the_rollout_lock_is_held_by_one_replica_at_a_time() {
        let url = new_postgres_database();
        let connect = || SqlStore::connect(&PostgresOptions::new(&url)).unwrap();
        let (first, second) = (connect(), connect());
        let held = first.lock_rollouts().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _second = second.lock_rollouts().unwrap();
                tx.send(()).unwrap();
            });
            assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "the second waits while the first holds it");
            drop(held);
            rx.recv_timeout(Duration::from_secs(10)).expect("the second takes it once the first lets go");
        });
    }

    #[test]
    fn the_periodic_work_has_one_leader_and_passes_on_when_it_goes() {
        let url = new_postgres_database();
        let connect = || SqlStore::connect(&PostgresOptions::new(&url)).unwrap();
        let (first, second) = (connect(), connect());
        assert!(first.lead().unwrap());
        assert!(first.lead().unwrap(), "it keeps the lease");
        assert!(!second.lead().unwrap(), "one leader at a time");
        drop(first); // its connections close, and the lease with them
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !second.lead().unwrap() {
            assert!(std::time::Instant::now() < deadline, "the lease never passed on");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
