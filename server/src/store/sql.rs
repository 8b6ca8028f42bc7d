//! The little the store asks of a SQL database, so that one body of store code runs on
//! SQLite and on PostgreSQL: statements with numbered parameters (`?1`), arguments and
//! rows of plain values, and errors sorted by what the caller can do about them.
//!
//! Statements are written in the SQL both engines speak: `ON CONFLICT … DO NOTHING`
//! rather than `INSERT OR IGNORE`, `IS NOT DISTINCT FROM` rather than `IS ?`, integers
//! 0/1 rather than booleans in columns (a comparison read back as a column is a bool on
//! PostgreSQL and an integer on SQLite: `Row::get::<bool>` takes both), an alias on every
//! subquery in `FROM`, and no engine-specific functions (`json_patch`) in the store.

use std::fmt;

/// One argument or column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What a failed statement means for its caller.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// A unique, foreign-key or not-null constraint refused the write.
    Constraint,
    /// The database gave up on this transaction for another one (a serialization failure
    /// or a deadlock): running it again may well succeed.
    Retry,
    /// The database cannot be reached (refused, closed, timed out): a 503, not a 500.
    Unavailable,
    /// A value the database cannot hold (text with a NUL character, on PostgreSQL): the
    /// request's fault, a 400.
    Unstorable,
    Other,
}

#[derive(Debug, Clone)]
pub struct DbError {
    pub kind: DbErrorKind,
    pub message: String,
}

impl DbError {
    pub fn new(kind: DbErrorKind, message: impl Into<String>) -> DbError {
        DbError { kind, message: message.into() }
    }

    pub fn is_constraint(&self) -> bool {
        self.kind == DbErrorKind::Constraint
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Maps a failed statement to the crate's error, naming what was being done. A database
/// that cannot be reached is `StoreUnavailable` (503), a value it cannot hold
/// `BadRequest` (400), anything else `Store` (500).
pub fn db(op: &'static str) -> impl Fn(DbError) -> crate::Error {
    move |e| match e.kind {
        // A write given up for concurrent ones again and again: busy, so try again soon.
        DbErrorKind::Unavailable | DbErrorKind::Retry => crate::Error::StoreUnavailable { op, reason: e.message },
        DbErrorKind::Unstorable => crate::Error::BadRequest { reason: format!("{op}: {}", e.message) },
        _ => crate::Error::Store { op, reason: e.message },
    }
}

/// One row, its columns in the order selected.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub(super) values: Vec<Value>,
}

impl Row {
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T, DbError> {
        let value = self
            .values
            .get(index)
            .ok_or_else(|| DbError::new(DbErrorKind::Other, format!("no column {index} in a row")))?;
        T::from_value(value).ok_or_else(|| {
            DbError::new(
                DbErrorKind::Other,
                format!("column {index} holds {value:?}, not {}", std::any::type_name::<T>()),
            )
        })
    }
}

/// A Rust value bound as a statement argument.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}

impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

/// Stored as SQLite stores it: the same bits as an `i64` (the store never holds a u64
/// above `i64::MAX` but ids and versions that count up from 1).
impl ToValue for u64 {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}

impl ToValue for usize {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// A column value read as a Rust value; `None` when the column holds another type.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<i64> {
        match value {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    fn from_value(value: &Value) -> Option<u64> {
        i64::from_value(value).map(|v| v as u64)
    }
}

/// An integer column or a comparison: non-zero is true.
impl FromValue for bool {
    fn from_value(value: &Value) -> Option<bool> {
        i64::from_value(value).map(|v| v != 0)
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Option<f64> {
        match value {
            Value::Real(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<String> {
        match value {
            Value::Text(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Option<Vec<u8>> {
        match value {
            Value::Blob(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Option<T>> {
        match value {
            Value::Null => Some(None),
            value => T::from_value(value).map(Some),
        }
    }
}

/// A connection, or a transaction on one, of either engine.
pub trait Sql {
    /// Runs one statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError>;
    /// Runs one query, handing each row to `each` as it is read.
    fn query_each(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut dyn FnMut(Row) -> Result<(), DbError>,
    ) -> Result<(), DbError>;
}

/// The usual shapes of a query, for any `Sql`.
pub trait SqlExt: Sql {
    /// The first row, mapped; `None` when there is none.
    fn query_opt<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        map: impl FnOnce(&Row) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        let mut first = None;
        self.query_each(sql, args, &mut |row| {
            if first.is_none() {
                first = Some(row);
            }
            Ok(())
        })?;
        first.as_ref().map(map).transpose()
    }

    /// The first row, mapped; an error when there is none.
    fn query_row<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        map: impl FnOnce(&Row) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.query_opt(sql, args, map)?
            .ok_or_else(|| DbError::new(DbErrorKind::Other, "a query that always answers a row answered none"))
    }

    /// Every row, mapped.
    fn query_map<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        mut map: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let mut rows = Vec::new();
        self.query_each(sql, args, &mut |row| {
            rows.push(map(&row)?);
            Ok(())
        })?;
        Ok(rows)
    }
}

impl<S: Sql + ?Sized> SqlExt for S {}

/// Statement arguments: `args![uuid, version]` binds `?1` and `?2`.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$($crate::store::sql::ToValue::to_value(&$arg)),*][..]
    };
}
pub(crate) use args;

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
/// `?N` placeholders as PostgreSQL numbers them (`$N`), leaving quoted text alone.
pub fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_quotes_only() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d IN (?2, ?10)"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d IN ($2, $10)"
        );
    }

    #[test]
    fn a_row_reads_integers_as_bools_and_refuses_the_wrong_type() {
        let row = Row { values: vec![Value::Int(1), Value::Null, Value::Text("x".into())] };
        assert!(row.get::<bool>(0).unwrap());
        assert_eq!(row.get::<Option<String>>(1).unwrap(), None);
        assert_eq!(row.get::<String>(2).unwrap(), "x");
        assert!(row.get::<i64>(2).is_err());
        assert!(row.get::<String>(1).is_err(), "NULL is not a string");
        assert!(row.get::<i64>(3).is_err(), "no such column");
    }
}
