//! Fuzz target `target_state`: a target state as JSON (an operator's request body, a
//! stored version read back) never panics the model, and whatever parses survives being
//! stored: serializing it and parsing again gives the same value, and the same text.
//! Built with the server's serde_json features (`float_roundtrip`), as the server reads
//! and rewrites stored versions; `corpus/target_state/regression-*` is what it found.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_model::TargetState;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = serde_json::from_slice::<TargetState>(data) else { return };
    let text = serde_json::to_string(&state).expect("a parsed target state serializes");
    let again: TargetState =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("the serialized state {text:?} does not parse: {e}"));
    assert_eq!(again, state, "the state changed when serialized as {text:?}");
    let text_again = serde_json::to_string(&again).expect("a parsed target state serializes");
    assert_eq!(text_again, text, "serializing is not stable");
});
