//! Fuzz target `webhook`: the server's registry-notification parser (a POST body from a
//! registry or hub, whatever its shape) never panics, and every reference it names is a
//! canonical tag reference, each once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_model::Reference;
use pinion_server::registry_events::pushed_references;

fuzz_target!(|data: &[u8]| {
    let Ok(references) = pushed_references(data) else { return };
    for (i, text) in references.iter().enumerate() {
        let reference = Reference::parse(text).unwrap_or_else(|e| panic!("named {text:?}, which does not parse: {e}"));
        assert!(reference.tag().is_some(), "named {text:?}, which has no tag");
        assert_eq!(&reference.canonical(), text, "named {text:?}, which is not canonical");
        assert!(!references[..i].contains(text), "named {text:?} twice");
    }
});
