//! `Value`s to and from PostgreSQL's wire types, and PostgreSQL's errors sorted into
//! `DbErrorKind`s. Arguments take the type PostgreSQL inferred for their placeholder
//! (an integer bound where a boolean is compared becomes one), so the store's SQL needs
//! no casts.

use crate::store::sql::{DbError, DbErrorKind, Value};
use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use std::error::Error as StdError;

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::UNKNOWN => v.to_string().to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound as {ty}").into()),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => Err(format!("a real number cannot be bound as {ty}").into()),
            },
            Value::Text(v) if v.contains('\0') => Err(Box::new(NulInText)),
            Value::Text(v) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => v.as_str().to_sql(ty, out),
                _ => Err(format!("text cannot be bound as {ty}").into()),
            },
            Value::Blob(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, BoxError> {
        Ok(match *ty {
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::BYTEA => Value::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            _ => Value::Text(<String>::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::BOOL
                | Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::BYTEA
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
                | Type::UNKNOWN
        )
    }
}

/// Text with a NUL character, refused before it is sent: PostgreSQL's text cannot hold
/// one (SQLite's can), and its own refusal names only an encoding.
#[derive(Debug)]
struct NulInText;

impl std::fmt::Display for NulInText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("text with a NUL character (\\u0000), which PostgreSQL cannot store")
    }
}

impl StdError for NulInText {}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> DbError {
        if let Some(nul) = e.source().and_then(|s| s.downcast_ref::<NulInText>()) {
            return DbError::new(DbErrorKind::Unstorable, nul.to_string());
        }
        let kind = match e.code() {
            Some(code) if code.code().starts_with("23") => DbErrorKind::Constraint,
            Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE) => DbErrorKind::Unstorable,
            Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED) => DbErrorKind::Retry,
            // The server shutting down or out of connections; the cluster restarting.
            Some(code) if code.code().starts_with("57P") || code.code().starts_with("08") => DbErrorKind::Unavailable,
            Some(&SqlState::TOO_MANY_CONNECTIONS | &SqlState::CANNOT_CONNECT_NOW) => DbErrorKind::Unavailable,
            // `statement_timeout`: stuck behind a lock, or the database overloaded.
            Some(&SqlState::QUERY_CANCELED) => DbErrorKind::Unavailable,
            Some(_) => DbErrorKind::Other,
            // No SQLSTATE: the connection failed or closed below SQL.
            None if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) => DbErrorKind::Unavailable,
            None => DbErrorKind::Other,
        };
        // `Display` of a database error is only its severity and message; its detail
        // (which key a constraint refused) is what an operator needs to see.
        let message = match e.as_db_error() {
            Some(db) => match db.detail() {
                Some(detail) => format!("{}: {detail}", db.message()),
                None => db.message().to_string(),
            },
            None => format!("{e}{}", e.source().map(|s| format!(": {s}")).unwrap_or_default()),
        };
        DbError::new(kind, message)
    }
}
