//! The dashboard's sign-in sessions of replicas, in the database so that a cookie one
//! replica gave works on all of them (`sessions.rs` keeps them in memory for a server
//! alone). Kept as the SHA-256 of the cookie and when the session ends (unix ms).

use super::sql::{args, db, SqlExt};
use super::sql_store::Touches;
use super::SqlStore;
use crate::Error;

pub trait SessionStore {
    /// Stores a new session; first forgets those that ended before `forget_before` and,
    /// beyond `max - 1` sessions, the ones that end soonest.
    fn open_session(&self, hash: &str, ends_ms: i64, forget_before: i64, max: usize) -> Result<(), Error>;
    /// When the session ends, if it is known.
    fn session_end(&self, hash: &str) -> Result<Option<i64>, Error>;
    /// Forgets a session; when it would have ended, if it was known.
    fn close_session(&self, hash: &str) -> Result<Option<i64>, Error>;
}

impl SessionStore for SqlStore {
    fn open_session(&self, hash: &str, ends_ms: i64, forget_before: i64, max: usize) -> Result<(), Error> {
        let failed = db("opening a dashboard session");
        self.write("opening a dashboard session", Touches::NothingPolled, |tx| {
            tx.execute("DELETE FROM sessions WHERE ends_ms < ?1", args![forget_before]).map_err(&failed)?;
            tx.execute(
                "DELETE FROM sessions WHERE hash NOT IN (
                     SELECT hash FROM sessions ORDER BY ends_ms DESC LIMIT ?1)",
                args![max.saturating_sub(1)],
            )
            .map_err(&failed)?;
            tx.execute("INSERT INTO sessions (hash, ends_ms) VALUES (?1, ?2)", args![hash, ends_ms])
                .map_err(&failed)?;
            Ok(())
        })
    }

    fn session_end(&self, hash: &str) -> Result<Option<i64>, Error> {
        self.read(|c| {
            c.query_opt("SELECT ends_ms FROM sessions WHERE hash = ?1", args![hash], |r| r.get(0))
                .map_err(db("reading a dashboard session"))
        })
    }

    fn close_session(&self, hash: &str) -> Result<Option<i64>, Error> {
        self.write("closing a dashboard session", Touches::NothingPolled, |tx| {
            tx.query_opt("DELETE FROM sessions WHERE hash = ?1 RETURNING ends_ms", args![hash], |r| r.get(0))
                .map_err(db("closing a dashboard session"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_engines;

    both_engines! {
        fn sessions_are_kept_bounded_and_forgotten_when_long_ended(store) {
            store.open_session("old", 1_000, 0, 3).unwrap();
            store.open_session("a", 5_000, 0, 3).unwrap();
            store.open_session("b", 6_000, 0, 3).unwrap();
            assert_eq!(store.session_end("old").unwrap(), Some(1_000));
            store.open_session("c", 7_000, 0, 3).unwrap(); // three at most: the one ending soonest goes
            assert_eq!(store.session_end("old").unwrap(), None);
            store.open_session("d", 8_000, 5_500, 3).unwrap(); // ended before 5,500: forgotten
            assert_eq!(store.session_end("a").unwrap(), None);
            assert_eq!(store.close_session("c").unwrap(), Some(7_000));
            assert_eq!(store.close_session("c").unwrap(), None);
            assert_eq!(store.session_end("d").unwrap(), Some(8_000));
        }
    }
}
