//! The store over SQL: SQLite for a one-machine server, PostgreSQL for several replicas,
//! one body of store code (`devices.rs`, `fleets.rs`, …) on either. Reads run on a
//! connection of their own; every write is a transaction (`write`).

use super::sql::Sql;
use super::sqlite_engine::SqliteEngine;
use crate::secrets::SecretKey;
use crate::Error;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Target versions kept per device unless told otherwise: weeks of hourly pushes to a
/// followed tag, and every version an operator is likely to roll back to.
pub const DEFAULT_HISTORY_LIMIT: u64 = 100;
/// The fewest a store keeps: the current version and the one before it, which a
/// rollback without a version goes back to.
pub const MIN_HISTORY_LIMIT: u64 = 2;

pub struct SqlStore {
    engine: Engine,
    /// Seals and opens stored registry passwords (`credentials.rs`); without one they
    /// can be neither stored nor read.
    secret_key: Option<SecretKey>,
    /// Moved by every write that may change a device's key or poll answer
    /// (`Store::poll_generation`); kept only where this process is the only writer.
    generation: AtomicU64,
    /// Target versions kept per device (`with_history_limit`).
    pub(super) history_limit: u64,
}

enum Engine {
    Sqlite(SqliteEngine),
    #[cfg(feature = "postgres")]
    Postgres(super::postgres::PgEngine),
}

/// What a write may change, for the poll cache (`Store::poll_generation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Touches {
    /// A device's key or poll answer (its target, its registry credentials).
    Polls,
    /// Nothing a poll answers: reports, logs, the digest cache, policies, pending
    /// updates, provisioning keys, fleets and rollouts. The poll cache stays warm.
    NothingPolled,
}

impl SqlStore {
    /// Opens (creating if needed) a SQLite database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqlStore, Error> {
        let engine = SqliteEngine::open(path)?;
        super::migrations::migrate_sqlite(&mut engine.writer())?;
        Ok(Self::with_engine(Engine::Sqlite(engine)))
    }

    /// A private in-memory SQLite database, for tests, with a random secret key.
    pub fn in_memory() -> Result<SqlStore, Error> {
        let engine = SqliteEngine::in_memory()?;
        super::migrations::migrate_sqlite(&mut engine.writer())?;
        Ok(Self::with_engine(Engine::Sqlite(engine)).with_secret_key(SecretKey::generate()))
    }

    /// Connects to a PostgreSQL database and brings its schema up to date (one replica
    /// at a time; the others wait).
    #[cfg(feature = "postgres")]
    pub fn connect(options: &super::PostgresOptions) -> Result<SqlStore, Error> {
        Ok(Self::with_engine(Engine::Postgres(super::postgres::PgEngine::connect(options)?)))
    }

    fn with_engine(engine: Engine) -> SqlStore {
        SqlStore { engine, secret_key: None, generation: AtomicU64::new(0), history_limit: DEFAULT_HISTORY_LIMIT }
    }

    /// Keeps `versions` target versions per device (at least `MIN_HISTORY_LIMIT`);
    /// older ones are deleted as new ones are written.
    pub fn with_history_limit(mut self, versions: u64) -> SqlStore {
        self.history_limit = versions.clamp(MIN_HISTORY_LIMIT, i64::MAX as u64);
        self
    }

    /// The key that seals stored secrets (`secrets::SecretKey::load_or_create`).
    pub fn with_secret_key(mut self, key: SecretKey) -> SqlStore {
        self.secret_key = Some(key);
        self
    }

    pub(super) fn secret_key(&self) -> Result<&SecretKey, Error> {
        self.secret_key
            .as_ref()
            .ok_or_else(|| Error::Secrets { reason: "no secret key is configured for stored credentials".into() })
    }

    /// Runs `work` on a connection outside any write. Every write is committed before
    /// its request is answered, so a read started after it sees it.
    pub(super) fn read<T>(&self, work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>) -> Result<T, Error> {
        match &self.engine {
            Engine::Sqlite(engine) => engine.read(work),
            #[cfg(feature = "postgres")]
            Engine::Postgres(engine) => engine.read(work),
        }
    }

    /// Runs `work` in one transaction, committed when it returns `Ok`. On PostgreSQL it
    /// may run more than once (a serialization failure runs it again), so it must not
    /// act outside the transaction.
    pub(super) fn write<T>(
        &self,
        op: &'static str,
        touches: Touches,
        mut work: impl FnMut(&mut dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match &self.engine {
            Engine::Sqlite(engine) => engine.write(op, &mut work, || {
                if touches == Touches::Polls {
                    // Still holding the writer, after the commit.
                    self.generation.fetch_add(1, Ordering::Release);
                }
            }),
            #[cfg(feature = "postgres")]
            Engine::Postgres(engine) => engine.write(op, postgres::IsolationLevel::Serializable, &mut work),
        }
    }

    /// `write` for the replicas' bookkeeping (polls seen, rate-limit events): nothing a
    /// poll answers, and each statement right on its own, so on PostgreSQL it runs read
    /// committed. Serializable, a batch of thousands of upserts that reads `devices`
    /// took a lock on the whole table and had every report that overlapped it cancelled.
    pub(super) fn write_bookkeeping<T>(
        &self,
        op: &'static str,
        mut work: impl FnMut(&mut dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match &self.engine {
            Engine::Sqlite(_) => self.write(op, Touches::NothingPolled, &mut work),
            #[cfg(feature = "postgres")]
            Engine::Postgres(engine) => engine.write(op, postgres::IsolationLevel::ReadCommitted, &mut work),
        }
    }

    /// `Store::poll_generation`: only a SQLite store, written by this process alone,
    /// can tell; replicas on PostgreSQL read every poll from the database.
    pub(super) fn local_poll_generation(&self) -> Option<u64> {
        match &self.engine {
            Engine::Sqlite(_) => Some(self.generation.load(Ordering::Acquire)),
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => None,
        }
    }

    /// `Store::lead`.
    pub(super) fn lead_periodic_work(&self) -> Result<bool, Error> {
        match &self.engine {
            Engine::Sqlite(_) => Ok(true),
            #[cfg(feature = "postgres")]
            Engine::Postgres(engine) => engine.lead(),
        }
    }

    /// Whether this is a PostgreSQL store (replicas may share it).
    pub fn is_postgres(&self) -> bool {
        !matches!(self.engine, Engine::Sqlite(_))
    }

    /// `Store::lock_rollouts`.
    pub(super) fn lock_rollouts_across_replicas(&self) -> Result<Option<Box<dyn Send + '_>>, Error> {
        match &self.engine {
            Engine::Sqlite(_) => Ok(None),
            #[cfg(feature = "postgres")]
            Engine::Postgres(engine) => engine.lock_rollouts().map(Some),
        }
    }

    /// The SQLite engine, for what only it has (online backup, tests of its pool).
    pub(super) fn sqlite(&self) -> Option<&SqliteEngine> {
        match &self.engine {
            Engine::Sqlite(engine) => Some(engine),
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => None,
        }
    }
}

/// Whether `db` (a `--db` value) names a PostgreSQL database rather than a SQLite file
/// (the scheme in any case, as URL schemes are).
pub fn is_postgres_url(db: &str) -> bool {
    url_scheme(db).is_some_and(|s| s.eq_ignore_ascii_case("postgres") || s.eq_ignore_ascii_case("postgresql"))
}

/// The scheme of `db` when it is written as a URL (`scheme://…`): no SQLite file of
/// pinion's is named so, and one that is not PostgreSQL's is a mistake to refuse.
pub fn url_scheme(db: &str) -> Option<&str> {
    let (scheme, _) = db.split_once("://")?;
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then_some(scheme)
}

/// Whether `db` is a libpq connection string (`host=db dbname=fleet …`), which pinion
/// does not read: taken for a SQLite file name, it made a new database of that name
/// and wrote the password to the log.
pub fn is_conninfo(db: &str) -> bool {
    const KEYWORDS: &[&str] =
        &["host", "hostaddr", "port", "dbname", "user", "password", "passfile", "sslmode", "service", "options"];
    db.split_whitespace().next().and_then(|first| first.split_once('=')).is_some_and(|(key, _)| KEYWORDS.contains(&key))
}

/// A database URL without its password, for logs and messages: the user information up
/// to the last `@` (a password may hold `@`, `/` or `?` unescaped) and a `password=`
/// parameter. In doubt, more goes than the password.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => rest.to_string(),
        },
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((base, query)) => {
            let parameters: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{base}?{}", parameters.join("&"))
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_loses_its_password_in_messages() {
        assert_eq!(
            redacted_url("postgres://pinion:s3cr@t@db.lan:5432/fleet?sslmode=require"),
            "postgres://pinion:***@db.lan:5432/fleet?sslmode=require"
        );
        assert_eq!(redacted_url("postgres://pinion@db.lan/fleet"), "postgres://pinion@db.lan/fleet");
        assert_eq!(redacted_url("postgres://db.lan/fleet"), "postgres://db.lan/fleet");
        assert!(is_postgres_url("postgresql://h/d") && !is_postgres_url("./postgres.db"));
        assert!(is_postgres_url("POSTGRES://h/d") && !is_postgres_url("mysql://h/d"));
        assert_eq!(url_scheme("mysql://u:p@h/d"), Some("mysql"));
        assert_eq!(url_scheme("./db://x"), None);
        assert!(is_conninfo("host=db.lan dbname=fleet") && is_conninfo("dbname=fleet"));
        assert!(!is_conninfo("./fleet.db") && !is_conninfo("/var/lib/pinion/a=b.db"));
        assert_eq!(redacted_url("postgres://pinion:a/b?c@db.lan/fleet"), "postgres://pinion:***@db.lan/fleet");
        assert_eq!(
            redacted_url("postgres://db.lan/fleet?sslmode=require&password=s3cret"),
            "postgres://db.lan/fleet?sslmode=require&password=***"
        );
    }
}
