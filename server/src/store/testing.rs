//! Stores for the store's own tests, one body of tests on both engines (`both_engines!`):
//! an in-memory SQLite database, and a new database of its own on the PostgreSQL cluster
//! that `PINION_TEST_POSTGRES` names (`scripts/postgres-cluster` starts a private one;
//! `scripts/test` does so itself). Without it the PostgreSQL half fails, saying so.

use super::{NewTarget, PollAnswer, SqlStore, Store};
use crate::secrets::SecretKey;
use std::sync::atomic::{AtomicU32, Ordering};

/// An operator's target of `state` (no followed tags, no registries), as tests store it.
pub fn operator_target<'a>(state: &'a str, poll: &'a PollAnswer) -> NewTarget<'a> {
    NewTarget {
        state,
        poll,
        references: &[],
        registries: &[],
        source: "operator",
        expected_version: None,
        supersedes_pending: true,
        release: None,
    }
}

/// Devices `uuids`, each with an operator's target `{}`.
pub fn add_devices(store: &SqlStore, uuids: &[&str]) {
    let poll = PollAnswer { etag: "\"e\"".into(), body: "{}".into() };
    for uuid in uuids {
        store.set_target(uuid, &operator_target("{}", &poll)).unwrap();
    }
}

/// The variable naming a maintenance database of the test cluster.
pub const POSTGRES_ENV: &str = "PINION_TEST_POSTGRES";

pub fn sqlite() -> SqlStore {
    SqlStore::in_memory().expect("an in-memory SQLite store")
}

/// A store on a new, empty PostgreSQL database.
#[cfg(feature = "postgres")]
pub fn postgres() -> SqlStore {
    let url = new_postgres_database();
    SqlStore::connect(&super::PostgresOptions::new(&url))
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
        .with_secret_key(SecretKey::generate())
}

/// The URL of a new, empty database on the test cluster.
#[cfg(feature = "postgres")]
pub fn new_postgres_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_ENV} is not set: these tests need a PostgreSQL cluster. Start a private one with \
             `eval \"$(scripts/postgres-cluster start)\"` (it prints the export), or run scripts/test"
        )
    });
    let name = format!("pinion_t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let mut client = postgres::Client::connect(&admin, postgres::NoTls)
        .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={admin}: {e}; is the cluster running (scripts/postgres-cluster)?"));
    client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("creating {name}: {e}"));
    with_database(&admin, &name)
}

/// `url` naming database `name` instead of its own.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// Each test once per engine: `both_engines! { fn name(store) { … } }` makes
/// `sqlite::name` and `postgres::name`, `store` a new `SqlStore` of each.
macro_rules! both_engines {
    ($($(#[$meta:meta])* fn $name:ident($store:ident) $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let $store = $crate::store::testing::sqlite(); $body } )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let $store = $crate::store::testing::postgres(); $body } )*
        }
    };
}
pub(crate) use both_engines;

#[cfg(test)]
mod tests {
    #[test]
    fn a_test_database_url_keeps_host_and_options() {
        assert_eq!(
            super::with_database("postgres://postgres@%2Ftmp%2Fpg:5433/postgres?sslmode=disable", "t1"),
            "postgres://postgres@%2Ftmp%2Fpg:5433/t1?sslmode=disable"
        );
        assert_eq!(super::with_database("postgres://u@h", "t2"), "postgres://u@h/t2");
    }
}
