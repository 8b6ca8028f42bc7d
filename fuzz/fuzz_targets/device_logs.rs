//! Fuzz target `device_logs`: the server's reader of the NDJSON log lines devices send
//! never panics, keeps at most its per-request count, and stores each line in a shape
//! that reads back as itself (the stored form is a fixed point of the reader).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_server::device_logs::{parse_log_lines, MAX_LINES_PER_REQUEST, MAX_MESSAGE_BYTES};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(lines) = parse_log_lines(data, 7) else { return };
    assert!(lines.len() <= MAX_LINES_PER_REQUEST);
    for line in lines {
        assert!(!line.json.contains('\n'), "a stored line spans lines: {:?}", line.json);
        let stored: Value = serde_json::from_str(&line.json).expect("stored lines are JSON");
        assert!(stored["message"].as_str().is_some_and(|m| m.len() <= MAX_MESSAGE_BYTES));
        let again = parse_log_lines(line.json.as_bytes(), 8).expect("a stored line reads back");
        let mut reread: Value = serde_json::from_str(&again[0].json).unwrap();
        let mut stored = stored;
        // `truncated` is the server's own mark, not read from a device.
        stored.as_object_mut().unwrap().remove("truncated");
        reread.as_object_mut().unwrap().remove("truncated");
        assert_eq!(reread, stored);
        assert_eq!(again[0].service_name, line.service_name);
    }
});
