//! Facts every replica of a server must agree on (the secret key's check value, the
//! admin token's hash), kept in the database: the first writer sets each, the others
//! are compared with it at start (`replicas.rs`).

use super::sql::{args, db, SqlExt};
use super::sql_store::Touches;
use super::SqlStore;
use crate::Error;

pub trait SettingsStore {
    /// Stores `value` as setting `name` unless it has one; returns what is stored then.
    fn agree_setting(&self, name: &str, value: &str) -> Result<String, Error>;
    /// Setting `name`, if it has one.
    fn setting(&self, name: &str) -> Result<Option<String>, Error>;
    /// Replaces setting `name`.
    fn replace_setting(&self, name: &str, value: &str) -> Result<(), Error>;
}

impl SettingsStore for SqlStore {
    fn agree_setting(&self, name: &str, value: &str) -> Result<String, Error> {
        let failed = db("agreeing on a setting");
        self.write("agreeing on a setting", Touches::NothingPolled, |tx| {
            tx.execute("INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING", args![name, value])
                .map_err(&failed)?;
            tx.query_row("SELECT value FROM settings WHERE name = ?1", args![name], |r| r.get(0)).map_err(&failed)
        })
    }

    fn setting(&self, name: &str) -> Result<Option<String>, Error> {
        self.read(|c| {
            c.query_opt("SELECT value FROM settings WHERE name = ?1", args![name], |r| r.get(0))
                .map_err(db("reading a setting"))
        })
    }

    fn replace_setting(&self, name: &str, value: &str) -> Result<(), Error> {
        self.write("replacing a setting", Touches::NothingPolled, |tx| {
            tx.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                args![name, value],
            )
            .map_err(db("replacing a setting"))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_engines;

    both_engines! {
        fn the_first_value_of_a_setting_stays(store) {
            assert_eq!(store.setting("k").unwrap(), None);
            assert_eq!(store.agree_setting("k", "one").unwrap(), "one");
            assert_eq!(store.setting("k").unwrap().as_deref(), Some("one"));
            assert_eq!(store.agree_setting("k", "two").unwrap(), "one", "a second replica is told the first value");
            store.replace_setting("k", "three").unwrap();
            assert_eq!(store.agree_setting("k", "four").unwrap(), "three");
        }
    }
}
