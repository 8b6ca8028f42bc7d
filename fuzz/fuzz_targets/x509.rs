//! Fuzz target `x509`: `read_facts`, the server's reader of a certificate's serial and
//! dates (from `--tls-cert`, a file a renewal script or another user may have written),
//! never panics, and what it accepts makes sense: dates a calendar has, a hex serial,
//! and a standing before and after its validity that refuses to serve it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_server::tls::x509::{read_facts, Standing};

/// 1950-01-01 (UTCTime's first year) and 9999-12-31T23:59:59Z (GeneralizedTime's last).
const EARLIEST: i64 = -631_152_000;
const LATEST: i64 = 253_402_300_799;

fuzz_target!(|data: &[u8]| {
    let Ok(facts) = read_facts(data) else { return };
    for date in [facts.not_before, facts.not_after] {
        assert!((EARLIEST..=LATEST).contains(&date), "{date} is outside the years a certificate can name");
    }
    assert!(facts.serial.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()), "{:?}", facts.serial);
    assert!(facts.serial.len() % 2 == 0 && facts.serial.len() <= 2 * data.len(), "{:?}", facts.serial);
    let _ = facts.describe();
    let before = facts.not_before - 1;
    assert_eq!(facts.standing(before), Standing::NotYetValid);
    assert!(facts.refusal(before).is_some(), "served before its start");
    let after = facts.not_after + 1;
    assert!(matches!(facts.standing(after), Standing::Expired | Standing::NotYetValid));
    assert!(facts.refusal(after).is_some(), "served after its end");
    for now in [facts.not_before, facts.not_after, (facts.not_before / 2) + (facts.not_after / 2)] {
        let _ = (facts.standing(now), facts.refusal(now), facts.warning(now));
    }
});
