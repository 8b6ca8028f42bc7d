//! What devices tell besides their apps, kept bounded: each device's last report with
//! its last known system facts, a metrics series, and its log lines. None of it changes
//! a poll answer, so it is written without moving the poll generation.

use super::sql::{args, db, SqlExt};
use super::sql_store::Touches;
use super::SqlStore;
use crate::device_logs::{LogLine, LogRetention};
use crate::telemetry::{merge_known, METRICS_PER_DEVICE, MIN_METRICS_INTERVAL_SECS};
use crate::timefmt::{rfc3339, rfc3339_now};
use crate::Error;
use serde_json::{Map, Value};

/// A report about to be stored.
#[derive(Debug, Clone)]
pub struct NewReport<'a> {
    /// The report as the device sent it (JSON object).
    pub state: &'a str,
    /// System facts and metrics it carried (JSON object), merged into the last known.
    pub known: &'a str,
    /// Its metrics sample (JSON object), if any.
    pub sample: Option<&'a str>,
    /// Unix time it came.
    pub now: i64,
}

/// What is known of a device's own account of itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CurrentReport {
    /// The last report as sent (JSON) and when it came; `None` before the first.
    pub state: Option<(String, String)>,
    /// The last known system facts and metrics (JSON object).
    pub system_info: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSample {
    pub recorded_at: String,
    /// The sample as a JSON object.
    pub sample: String,
}

/// One page of a device's log, newest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogPage {
    /// Lines that match, on every page.
    pub total: u64,
    /// Each line's JSON and when it was received.
    pub lines: Vec<(String, String)>,
}

pub trait TelemetryStore {
    /// Stores a report: `Error::NotFound` for a device that does not exist.
    fn record_report(&self, uuid: &str, report: &NewReport<'_>) -> Result<(), Error>;
    /// `None` for a device that does not exist.
    fn current_report(&self, uuid: &str) -> Result<Option<CurrentReport>, Error>;
    /// The newest `limit` metrics samples, newest first.
    fn metrics(&self, uuid: &str, limit: usize) -> Result<Vec<MetricsSample>, Error>;
    /// Appends log lines, then drops the oldest beyond `retention`.
    fn append_logs(&self, uuid: &str, lines: &[LogLine], retention: LogRetention) -> Result<(), Error>;
    fn logs(&self, uuid: &str, service: Option<&str>, limit: usize, offset: usize) -> Result<LogPage, Error>;
}

impl TelemetryStore for SqlStore {
    fn record_report(&self, uuid: &str, report: &NewReport<'_>) -> Result<(), Error> {
        let failed = db("storing a device report");
        let metrics_failed = db("storing device metrics");
        self.write("storing a device report", Touches::NothingPolled, |tx| {
            let last: Option<Option<String>> = tx
                .query_opt("SELECT system_info FROM devices WHERE uuid = ?1", args![uuid], |r| r.get(0))
                .map_err(&failed)?;
            let Some(last) = last else {
                return Err(Error::NotFound { what: format!("device {uuid}") });
            };
            let object = |json: Option<&str>| -> Map<String, Value> {
                json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default()
            };
            let known = merge_known(object(last.as_deref()), &object(Some(report.known)));
            tx.execute(
                "UPDATE devices SET current_state = ?2, reported_at = ?3, system_info = ?4 WHERE uuid = ?1",
                args![uuid, report.state, rfc3339(report.now.max(0) as u64), Value::Object(known).to_string()],
            )
            .map_err(&failed)?;
            if let Some(sample) = report.sample {
                let last: Option<i64> = tx
                    .query_opt(
                        "SELECT recorded_at FROM device_metrics WHERE device_uuid = ?1 ORDER BY id DESC LIMIT 1",
                        args![uuid],
                        |r| r.get(0),
                    )
                    .map_err(&metrics_failed)?;
                // A clock stepped back leaves `last` in the future: record, rather than
                // refuse every sample until the clock catches up.
                if last.is_none_or(|last| report.now - last >= MIN_METRICS_INTERVAL_SECS || report.now < last) {
                    tx.execute(
                        "INSERT INTO device_metrics (device_uuid, recorded_at, sample) VALUES (?1, ?2, ?3)",
                        args![uuid, report.now, sample],
                    )
                    .map_err(&metrics_failed)?;
                    tx.execute(
                        "DELETE FROM device_metrics WHERE device_uuid = ?1 AND id <= (
                             SELECT id FROM device_metrics WHERE device_uuid = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                        args![uuid, METRICS_PER_DEVICE],
                    )
                    .map_err(&metrics_failed)?;
                }
            }
            Ok(())
        })
    }

    fn current_report(&self, uuid: &str) -> Result<Option<CurrentReport>, Error> {
        type Row = (Option<String>, Option<String>, Option<String>);
        let row: Option<Row> = self.read(|c| {
            c.query_opt(
                "SELECT current_state, reported_at, system_info FROM devices WHERE uuid = ?1",
                args![uuid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(db("reading a device report"))
        })?;
        Ok(row.map(|(state, at, system_info)| CurrentReport { state: state.zip(at), system_info }))
    }

    fn metrics(&self, uuid: &str, limit: usize) -> Result<Vec<MetricsSample>, Error> {
        self.read(|c| {
            c.query_map(
                "SELECT recorded_at, sample FROM device_metrics WHERE device_uuid = ?1 ORDER BY id DESC LIMIT ?2",
                args![uuid, limit],
                |r| Ok(MetricsSample { recorded_at: rfc3339(r.get::<i64>(0)?.max(0) as u64), sample: r.get(1)? }),
            )
            .map_err(db("reading device metrics"))
        })
    }

    fn append_logs(&self, uuid: &str, lines: &[LogLine], retention: LogRetention) -> Result<(), Error> {
        let now = rfc3339_now();
        let trim_failed = db("trimming device logs");
        self.write("storing device logs", Touches::NothingPolled, |tx| {
            for line in lines {
                tx.execute(
                    "INSERT INTO device_logs (device_uuid, service_name, bytes, line, received_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![uuid, line.service_name, line.json.len(), line.json, now],
                )
                .map_err(|e| match e.is_constraint() {
                    true => Error::NotFound { what: format!("device {uuid}") },
                    false => db("storing device logs")(e),
                })?;
            }
            tx.execute(
                "DELETE FROM device_logs WHERE device_uuid = ?1 AND id <= (
                     SELECT id FROM device_logs WHERE device_uuid = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                args![uuid, retention.lines],
            )
            .map_err(&trim_failed)?;
            // `SUM` of integers is NUMERIC on PostgreSQL: cast back for the comparison.
            tx.execute(
                "DELETE FROM device_logs WHERE device_uuid = ?1 AND id <= (
                     SELECT id FROM (SELECT id, CAST(SUM(bytes) OVER (ORDER BY id DESC) AS BIGINT) AS newer
                                     FROM device_logs WHERE device_uuid = ?1) AS newer_logs
                     WHERE newer > ?2 ORDER BY id DESC LIMIT 1)",
                args![uuid, retention.bytes],
            )
            .map_err(&trim_failed)?;
            Ok(())
        })
    }

    fn logs(&self, uuid: &str, service: Option<&str>, limit: usize, offset: usize) -> Result<LogPage, Error> {
        let failed = db("reading device logs");
        // `CAST(?2 AS TEXT)`: PostgreSQL types a placeholder where it first meets it, and
        // `?2 IS NULL` alone says nothing of its type.
        self.read(|c| {
            let total: i64 = c
                .query_row(
                    "SELECT count(*) FROM device_logs
                     WHERE device_uuid = ?1 AND (CAST(?2 AS TEXT) IS NULL OR service_name = ?2)",
                    args![uuid, service],
                    |r| r.get(0),
                )
                .map_err(&failed)?;
            let lines = c
                .query_map(
                    "SELECT line, received_at FROM device_logs
                     WHERE device_uuid = ?1 AND (CAST(?2 AS TEXT) IS NULL OR service_name = ?2)
                     ORDER BY id DESC LIMIT ?3 OFFSET ?4",
                    args![uuid, service, limit, offset],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(&failed)?;
            Ok(LogPage { total: total as u64, lines })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_logs::parse_log_lines;
    use crate::store::testing::both_engines;
    use crate::store::{NewRegistration, Store};

    fn register(store: &SqlStore, uuid: &str) {
        store
            .register_device(&NewRegistration {
                uuid: uuid.into(),
                device_name: None,
                device_type: None,
                key_hash: format!("hash-{uuid}"),
                claimant: crate::claims::Claimant::Operator,
                system_info: Some(r#"{"mac_address":"aa:bb"}"#.into()),
            })
            .unwrap();
    }

    fn report<'a>(state: &'a str, known: &'a str, sample: Option<&'a str>, now: i64) -> NewReport<'a> {
        NewReport { state, known, sample, now }
    }

    both_engines! {
        fn facts_left_out_of_a_report_keep_their_last_value(store) {
            register(&store, "d1");
            store.record_report("d1", &report("{}", r#"{"os_version":"12","cpu_usage":5}"#, None, 100)).unwrap();
            store.record_report("d1", &report("{}", r#"{"cpu_usage":7}"#, None, 200)).unwrap();
            let current = store.current_report("d1").unwrap().unwrap();
            let info: serde_json::Value = serde_json::from_str(&current.system_info.unwrap()).unwrap();
            assert_eq!(info, serde_json::json!({"mac_address": "aa:bb", "os_version": "12", "cpu_usage": 7}));
            assert_eq!(current.state.unwrap().1, rfc3339(200));
            assert!(matches!(store.record_report("nope", &report("{}", "{}", None, 1)), Err(Error::NotFound { .. })));
            assert_eq!(store.current_report("nope").unwrap(), None);
        }

        fn metrics_are_a_bounded_series_and_a_flood_adds_one_sample_per_interval(store) {
            register(&store, "d1");
            for second in 0..30 {
                store.record_report("d1", &report("{}", "{}", Some(r#"{"cpu_usage":1}"#), 1000 + second)).unwrap();
            }
            let samples = store.metrics("d1", 100).unwrap();
            assert_eq!(samples.len(), 3, "30 reports in 30 s: one sample per {MIN_METRICS_INTERVAL_SECS} s");
            assert_eq!(samples[0].recorded_at, rfc3339(1020), "newest first");
            for n in 0..(METRICS_PER_DEVICE as i64 + 5) {
                store.record_report("d1", &report("{}", "{}", Some(r#"{"cpu_usage":2}"#), 10_000 + n * 60)).unwrap();
            }
            assert_eq!(store.metrics("d1", 10_000).unwrap().len(), METRICS_PER_DEVICE);
            // A clock stepped back still records.
            store.record_report("d1", &report("{}", "{}", Some(r#"{"cpu_usage":3}"#), 5)).unwrap();
            assert_eq!(store.metrics("d1", 1).unwrap()[0].sample, r#"{"cpu_usage":3}"#);
        }

        fn logs_keep_the_newest_lines_within_count_and_bytes(store) {
            register(&store, "d1");
            let batch = |n: usize, service: &str| {
                let body: String =
                    (0..n).map(|i| format!("{{\"message\":\"line {i}\",\"serviceName\":\"{service}\"}}\n")).collect();
                parse_log_lines(body.as_bytes(), 0).unwrap()
            };
            let retention = LogRetention { lines: 50, bytes: 1_000_000 };
            store.append_logs("d1", &batch(40, "web"), retention).unwrap();
            store.append_logs("d1", &batch(30, "db"), retention).unwrap();
            let page = store.logs("d1", None, 10, 0).unwrap();
            assert_eq!(page.total, 50);
            assert!(page.lines[0].0.contains("line 29") && page.lines[0].0.contains("db"), "{:?}", page.lines[0]);
            assert_eq!(store.logs("d1", Some("web"), 100, 0).unwrap().total, 20, "the oldest web lines went first");
            let second_page = store.logs("d1", Some("db"), 10, 10).unwrap();
            assert!(second_page.lines[0].0.contains("line 19"), "{:?}", second_page.lines[0]);

            let one_line = batch(1, "web")[0].json.len();
            let by_bytes = LogRetention { lines: 1000, bytes: one_line * 5 };
            store.append_logs("d1", &batch(8, "web"), by_bytes).unwrap();
            assert_eq!(store.logs("d1", None, 100, 0).unwrap().total, 5, "within {} bytes", one_line * 5);
            assert!(matches!(store.append_logs("nope", &batch(1, "x"), retention), Err(Error::NotFound { .. })));
        }
    }
}
