//! The SQLite engine under `SqlStore`: one file in WAL mode, one writer connection and
//! a pool of read-only ones, every write an immediate transaction.

use super::sql::{DbError, DbErrorKind, Row, Sql, Value};
use crate::Error;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Idle read connections kept for reuse; more are opened when every one is busy.
const MAX_IDLE_READERS: usize = 32;
/// Page cache of each read connection, in KiB (a negative `cache_size`).
const READER_CACHE_KIB: i64 = -256;
/// Prepared statements kept per connection (rusqlite's default is 16; the store has more
/// than that on its hot paths).
const STATEMENT_CACHE: usize = 64;

pub(super) struct SqliteEngine {
    /// The one connection that writes (SQLite has one writer at a time anyway).
    writer: Mutex<Connection>,
    /// Read-only connections to the same file for reads: WAL lets them read while the
    /// writer writes, so polls neither wait for a target being stored nor for each
    /// other. `None` for an in-memory database, which other connections cannot open:
    /// its reads share the writer.
    readers: Option<ReaderPool>,
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl SqliteEngine {
    /// Opens (creating if needed) the database file, configured for the store.
    pub(super) fn open(path: &Path) -> Result<SqliteEngine, Error> {
        let conn = Connection::open(path)
            .map_err(|e| Error::Store { op: "opening the database", reason: format!("{}: {e}", path.display()) })?;
        let mut engine = Self::configure(conn)?;
        // `:memory:` and "" name a private database that no second connection can open.
        if !matches!(path.to_str(), Some(":memory:" | "")) {
            engine.readers = Some(ReaderPool { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) });
        }
        Ok(engine)
    }

    pub(super) fn in_memory() -> Result<SqliteEngine, Error> {
        Self::configure(Connection::open_in_memory().map_err(lite("opening the database"))?)
    }

    fn configure(mut conn: Connection) -> Result<SqliteEngine, Error> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(lite("configuring the database"))?;
        // WAL: readers never wait for the writer. FULL: an acknowledged target survives power loss.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(lite("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(lite("configuring the database"))?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(lite("configuring the database"))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Writes take the write lock when they begin, waiting `busy_timeout` for it: a
        // deferred transaction that reads first and is refused the lock when it writes
        // (SQLITE_BUSY while WAL is checkpointed) fails at once, without waiting.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        Ok(SqliteEngine { writer: Mutex::new(conn), readers: None })
    }

    /// The writer connection, held (for schema migrations and backups).
    pub(super) fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions
        // roll back), so a poisoned lock is still safe to use.
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` in one immediate transaction on the writer, committing what it
    /// returns `Ok` for; `after_commit` runs while the writer is still held.
    pub(super) fn write<T>(
        &self,
        op: &'static str,
        work: &mut dyn FnMut(&mut dyn Sql) -> Result<T, Error>,
        after_commit: impl FnOnce(),
    ) -> Result<T, Error> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(lite(op))?;
        let value = work(&mut Lite(&tx))?;
        tx.commit().map_err(lite(op))?;
        after_commit();
        Ok(value)
    }

    /// Runs `work` on a connection of its own (pooled), outside any write: every write
    /// is committed before its request is answered, so a read started after it sees it.
    pub(super) fn read<T>(&self, work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>) -> Result<T, Error> {
        let Some(pool) = &self.readers else {
            return work(&mut Lite(&self.writer()));
        };
        let idle = pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&pool.path)?,
        };
        let result = work(&mut Lite(&conn));
        let mut idle = pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// The columns of `table`, in their order.
    pub(super) fn columns(&self, table: &str) -> Result<Vec<String>, Error> {
        let conn = self.writer();
        let mut stmt =
            conn.prepare(&format!("PRAGMA table_info({table})")).map_err(lite("reading a table's columns"))?;
        let columns = stmt.query_map([], |r| r.get::<_, String>(1)).map_err(lite("reading a table's columns"))?;
        columns.collect::<Result<_, _>>().map_err(lite("reading a table's columns"))
    }

    /// Copies the database into a new file `to` (mode 0600) with SQLite's online backup
    /// API in one step: one consistent snapshot, read while the server goes on writing
    /// (WAL), synced to disk before it returns.
    pub(super) fn backup_to(&self, to: &Path) -> Result<(), Error> {
        let failed = |e: &dyn std::fmt::Display| Error::Store {
            op: "backing up the database",
            reason: format!("{}: {e}", to.display()),
        };
        // Made here, private, and never over an existing file.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .map_err(|source| Error::Io { path: to.to_path_buf(), source })?;
        let mut target = Connection::open(to).map_err(|e| failed(&e))?;
        let copied = match &self.readers {
            Some(pool) => {
                let source = open_reader(&pool.path)?;
                copy_all(&source, &mut target)
            }
            None => copy_all(&self.writer(), &mut target),
        };
        copied.map_err(|e| failed(&e))?;
        target.pragma_update(None, "journal_mode", "DELETE").map_err(|e| failed(&e))?;
        drop(target);
        std::fs::File::open(to)
            .and_then(|f| f.sync_all())
            .map_err(|source| Error::Io { path: to.to_path_buf(), source })
    }

    #[cfg(test)]
    pub(super) fn idle_readers(&self) -> Option<usize> {
        self.readers.as_ref().map(|pool| pool.idle.lock().unwrap().len())
    }
}

/// Every page of `source` into `target`, in one backup step.
fn copy_all(source: &Connection, target: &mut Connection) -> Result<(), String> {
    let backup = rusqlite::backup::Backup::new(source, target).map_err(|e| e.to_string())?;
    match backup.step(-1).map_err(|e| e.to_string())? {
        rusqlite::backup::StepResult::Done => Ok(()),
        other => Err(format!("the backup stopped short: {other:?}")),
    }
}

fn open_reader(path: &Path) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Store { op: "opening a read connection", reason: format!("{}: {e}", path.display()) })?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(lite("configuring a read connection"))?;
    // Reads only: a write through it would be a bug, and SQLite refuses it.
    conn.pragma_update(None, "query_only", true).map_err(lite("configuring a read connection"))?;
    // A small page cache each (SQLite's default is 2 MB): there is one reader per busy
    // worker, and the operating system caches the file for all of them.
    conn.pragma_update(None, "cache_size", READER_CACHE_KIB).map_err(lite("configuring a read connection"))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// A rusqlite connection (or transaction, through `Deref`) as `Sql`.
pub(super) struct Lite<'a>(pub(super) &'a Connection);

impl Sql for Lite<'_> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        let mut stmt = self.0.prepare_cached(sql).map_err(DbError::from)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args.iter())).map_err(DbError::from)? as u64)
    }

    fn query_each(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut dyn FnMut(Row) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let mut stmt = self.0.prepare_cached(sql).map_err(DbError::from)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter())).map_err(DbError::from)?;
        while let Some(row) = rows.next().map_err(DbError::from)? {
            let values = (0..columns)
                .map(|i| row.get_ref(i).map(value_from_sqlite))
                .collect::<Result<_, _>>()
                .map_err(DbError::from)?;
            each(Row { values })?;
        }
        Ok(())
    }
}

fn value_from_sqlite(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Int(v),
        ValueRef::Real(v) => Value::Real(v),
        ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
        ValueRef::Blob(v) => Value::Blob(v.to_vec()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        let kind = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => DbErrorKind::Constraint,
            _ => DbErrorKind::Other,
        };
        DbError::new(kind, e.to_string())
    }
}

/// A rusqlite error while doing `op`.
pub(super) fn lite(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Store { op, reason: e.to_string() }
}
