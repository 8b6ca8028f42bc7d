//! What a device's report says besides its apps: the facts it sends only when they change
//! (`os_version`, `agent_version`, `local_ip`, …), which must keep their last known value
//! when a later report leaves them out, and the metrics it sends every few minutes
//! (`cpu_usage`, `temperature`, `top_processes`, …), which go into a bounded time series.
//! Pure: `split_report` decides, the store keeps.

use serde_json::{Map, Value};

/// Facts sent only when they change (the platform's original agent, `api-binder.ts`).
pub const SYSTEM_FIELDS: &[&str] = &["os_version", "agent_version", "local_ip", "mac_address", "is_online"];

/// Facts sent every metrics interval; a report carrying any of them is one metrics sample.
pub const METRIC_FIELDS: &[&str] = &[
    "cpu_usage",
    "memory_usage",
    "memory_total",
    "storage_usage",
    "storage_total",
    "temperature",
    "uptime",
    "top_processes",
];

/// `top_processes` beyond this many entries are dropped from the stored sample.
pub const MAX_TOP_PROCESSES: usize = 20;
/// A metrics sample larger than this (as JSON) is not recorded; the report still is.
pub const MAX_METRICS_SAMPLE_BYTES: usize = 4 * 1024;
/// One `top_processes` entry larger than this (as JSON) is dropped.
const MAX_PROCESS_BYTES: usize = 512;
/// A system fact's text longer than this is not kept.
const MAX_FACT_CHARS: usize = 256;
/// Samples kept per device: a week at the original agent's 5-minute interval.
pub const METRICS_PER_DEVICE: usize = 2016;
/// A sample closer than this to the device's previous one is not added to the series
/// (the last known values still move), so a device reporting in a loop cannot push a
/// week of history out in minutes.
pub const MIN_METRICS_INTERVAL_SECS: i64 = 10;

/// A report, taken apart.
#[derive(Debug, Default, PartialEq)]
pub struct ReportParts {
    /// System facts and metrics present in this report: merged into the last known ones.
    pub known: Map<String, Value>,
    /// The metrics of this report as one sample, if it carried any and it fits.
    pub sample: Option<Map<String, Value>>,
    /// What was left out, for the report's answer and the log.
    pub warnings: Vec<String>,
}

/// Splits the top-level fields of a report (`{"apps", "config", "os_version", …}`).
/// A fact is kept only in its expected shape and size (a short printable text, a
/// number, true or false, or null; metrics numbers or null; `top_processes` a short
/// list of small objects), so what a device can make the server keep stays bounded.
pub fn split_report(report: &Map<String, Value>) -> ReportParts {
    let mut parts = ReportParts::default();
    let mut sample = Map::new();
    for (name, value) in report {
        if SYSTEM_FIELDS.contains(&name.as_str()) {
            match value {
                Value::String(text) if text.chars().count() > MAX_FACT_CHARS || !crate::text::is_printable(text) => {
                    parts
                        .warnings
                        .push(format!("{name}: not kept, expected at most {MAX_FACT_CHARS} printable characters"))
                }
                Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
                    parts.known.insert(name.clone(), value.clone());
                }
                _ => parts.warnings.push(format!("{name}: not kept, expected a text, a number or true/false")),
            }
        } else if name == "top_processes" {
            let Value::Array(list) = value else {
                parts.warnings.push("top_processes: not kept, expected a list".into());
                continue;
            };
            if list.len() > MAX_TOP_PROCESSES {
                parts
                    .warnings
                    .push(format!("top_processes: {} entries, the first {MAX_TOP_PROCESSES} kept", list.len()));
            }
            let small = |entry: &&Value| entry.is_object() && entry.to_string().len() <= MAX_PROCESS_BYTES;
            let kept: Vec<Value> = list.iter().take(MAX_TOP_PROCESSES).filter(small).cloned().collect();
            if kept.len() < list.len().min(MAX_TOP_PROCESSES) {
                parts.warnings.push(format!(
                    "top_processes: entries that are not objects of at most {MAX_PROCESS_BYTES} bytes dropped"
                ));
            }
            parts.known.insert(name.clone(), Value::Array(kept.clone()));
            sample.insert(name.clone(), Value::Array(kept));
        } else if METRIC_FIELDS.contains(&name.as_str()) {
            if !(value.is_number() || value.is_null()) {
                parts.warnings.push(format!("{name}: not kept, expected a number"));
                continue;
            }
            parts.known.insert(name.clone(), value.clone());
            sample.insert(name.clone(), value.clone());
        }
    }
    if !sample.is_empty() {
        let size = serde_json::to_string(&sample).map(|s| s.len()).unwrap_or(usize::MAX);
        if size > MAX_METRICS_SAMPLE_BYTES {
            parts.warnings.push(format!(
                "metrics not recorded: the sample is {size} bytes, more than {MAX_METRICS_SAMPLE_BYTES}"
            ));
            for name in METRIC_FIELDS {
                parts.known.remove(*name);
            }
        } else {
            parts.sample = Some(sample);
        }
    }
    parts
}

/// The last known facts with a report's own in place of theirs: each fact replaced
/// whole, never merged into.
pub fn merge_known(mut last: Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    for (name, value) in new {
        last.insert(name.clone(), value.clone());
    }
    last
}

/// The report as the operator reads it: every system fact and metric it left out filled
/// in from the last known values.
pub fn with_last_known(mut report: Map<String, Value>, known: &Map<String, Value>) -> Map<String, Value> {
    for (name, value) in known {
        report.entry(name.clone()).or_insert_with(|| value.clone());
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn system_facts_and_metrics_are_told_apart_from_apps() {
        let report = object(json!({
            "apps": {}, "config": {}, "os_version": "Debian 12", "local_ip": "10.0.0.2",
            "cpu_usage": 12.5, "temperature": 48, "top_processes": [{"pid": 1, "name": "init"}],
            "dashboard": "kept as sent"
        }));
        let parts = split_report(&report);
        assert_eq!(
            parts.known,
            object(json!({"os_version": "Debian 12", "local_ip": "10.0.0.2", "cpu_usage": 12.5,
                          "temperature": 48, "top_processes": [{"pid": 1, "name": "init"}]}))
        );
        assert_eq!(
            parts.sample,
            Some(object(json!({"cpu_usage": 12.5, "temperature": 48, "top_processes": [{"pid": 1, "name": "init"}]})))
        );
        assert!(parts.warnings.is_empty());
    }

    #[test]
    fn a_report_without_metrics_is_no_sample() {
        let parts = split_report(&object(json!({"apps": {}, "agent_version": "1.2"})));
        assert_eq!(parts.sample, None);
        assert_eq!(parts.known, object(json!({"agent_version": "1.2"})));
    }

    #[test]
    fn long_process_lists_are_cut_and_huge_samples_dropped() {
        let processes: Vec<Value> = (0..50).map(|pid| json!({"pid": pid, "name": "p"})).collect();
        let parts = split_report(&object(json!({"top_processes": processes})));
        assert_eq!(parts.sample.unwrap()["top_processes"].as_array().unwrap().len(), MAX_TOP_PROCESSES);
        assert_eq!(parts.warnings.len(), 1);

        let big_entries: Vec<Value> = (0..MAX_TOP_PROCESSES).map(|_| json!({"name": "x".repeat(400)})).collect();
        let parts = split_report(&object(json!({"cpu_usage": 1, "top_processes": big_entries, "os_version": "v"})));
        assert_eq!(parts.sample, None, "{:?}", parts.warnings);
        assert_eq!(parts.known, object(json!({"os_version": "v"})), "no metric of a dropped sample is kept");
        assert!(parts.warnings.iter().any(|w| w.starts_with("metrics not recorded")), "{:?}", parts.warnings);
    }

    #[test]
    fn facts_in_another_shape_or_too_long_are_not_kept() {
        let report = object(json!({
            "os_version": {"nested": "x".repeat(1000)}, "agent_version": "a\nforged", "local_ip": "y".repeat(300),
            "mac_address": "dc:a6:32:01:02:03", "is_online": true, "cpu_usage": "high", "temperature": null,
            "top_processes": "init", "uptime": 5
        }));
        let parts = split_report(&report);
        assert_eq!(
            parts.known,
            object(json!({"mac_address": "dc:a6:32:01:02:03", "is_online": true, "temperature": null, "uptime": 5}))
        );
        assert_eq!(parts.warnings.len(), 5, "{:?}", parts.warnings);
    }

    #[test]
    fn each_fact_is_replaced_whole() {
        let last = object(json!({"os_version": "11", "cpu_usage": 3, "local_ip": "10.0.0.2"}));
        let merged = merge_known(last, &object(json!({"os_version": "12", "cpu_usage": null})));
        assert_eq!(merged, object(json!({"os_version": "12", "cpu_usage": null, "local_ip": "10.0.0.2"})));
    }

    #[test]
    fn left_out_facts_come_from_the_last_known_ones() {
        let known = object(json!({"os_version": "Debian 12", "cpu_usage": 3}));
        let merged = with_last_known(object(json!({"apps": {}, "cpu_usage": 9})), &known);
        assert_eq!(merged, object(json!({"apps": {}, "cpu_usage": 9, "os_version": "Debian 12"})));
    }
}
