//! Fuzz target `reference`: `Reference::parse` (operator input, webhook payloads) never
//! panics, and every reference it accepts is stable: its canonical form, its Display
//! form and its pinned form read back as the same repository.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_model::Reference;

/// A well-formed digest to pin with.
const DIGEST: &str = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let Ok(reference) = Reference::parse(input) else { return };

    let canonical = reference.canonical();
    let again = Reference::parse(&canonical)
        .unwrap_or_else(|e| panic!("{input:?}: its canonical form {canonical:?} does not parse: {e}"));
    assert_eq!(again.canonical(), canonical, "{input:?}: the canonical form is not a fixed point");
    assert_eq!(again.name(), reference.name(), "{input:?}: the canonical form names another repository");

    // Display is Go's String(): name, tag and digest as written.
    let shown = reference.to_string();
    let shown_back = Reference::parse(&shown)
        .unwrap_or_else(|e| panic!("{input:?}: its Display form {shown:?} does not parse: {e}"));
    assert_eq!(shown_back, reference, "{input:?}: the Display form {shown:?} reads back differently");

    // What a pinned target state stores must name the same repository.
    let pinned = reference.pinned(DIGEST);
    let pinned_back = Reference::parse(&pinned)
        .unwrap_or_else(|e| panic!("{input:?}: its pinned form {pinned:?} does not parse: {e}"));
    assert_eq!(pinned_back.name(), reference.name(), "{input:?}: pinned as {pinned:?}");
    assert_eq!(pinned_back.digest(), Some(DIGEST), "{input:?}: pinned as {pinned:?}");
});
