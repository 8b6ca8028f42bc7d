//! Regression test for a bug the `target_state` fuzz target found: a number in a target
//! state (a dashboard's own key) changed when the stored version was read back and
//! written again (rollback, repin), because serde_json did not read its own output back
//! exactly without `float_roundtrip`.

use pinion_model::TargetState;
use pinion_server::store::{SqlStore, Store};
use pinion_server::targets::store_target;

/// The fuzzer's input, and the text serde_json writes for what it reads from it.
const POSTED: &str = r#"{"apps": {}, "config": {"m": -92233720368546.75808, "f": 0.1}, "lat": 52.52000000000001}"#;

#[test]
fn numbers_in_a_stored_target_survive_reading_back_and_rewriting() {
    let store = SqlStore::in_memory().unwrap();
    let posted: TargetState = serde_json::from_str(POSTED).unwrap();
    // The nearest f64 to the posted decimal, as Rust's own parser reads it.
    assert_eq!(posted.config["m"].as_f64(), Some("-92233720368546.75808".parse::<f64>().unwrap()));
    let v1 = store_target(&store, "dev-numbers", &posted, "operator", None).unwrap();
    let first = store.target_version("dev-numbers", v1).unwrap().unwrap().state;

    let read_back: TargetState = serde_json::from_str(&first).unwrap();
    assert_eq!(read_back, posted, "stored as {first}");
    let v2 = store_target(&store, "dev-numbers", &read_back, "rollback", Some(v1)).unwrap();
    let second = store.target_version("dev-numbers", v2).unwrap().unwrap().state;
    assert_eq!(second, first, "the rewritten version differs from the one it was read from");
}
