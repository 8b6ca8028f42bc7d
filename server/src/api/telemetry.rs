//! Logs and metrics: a device sends its log lines (`POST /device/{uuid}/logs`, NDJSON,
//! plain or gzip), the operator reads them (`GET /devices/{uuid}/logs`) and the
//! device's metrics series (`GET /devices/{uuid}/metrics`). Both are bounded per device.

use super::auth::{authenticate, Caller};
use super::http::{Request, Response};
use super::{device_id, known_device, Api};
use crate::device_logs::{parse_log_lines, MAX_LINES_PER_REQUEST};
use crate::telemetry::METRICS_PER_DEVICE;
use crate::timefmt::unix_now_ms;
use crate::Error;
use serde_json::{json, Map, Value};

/// `POST /device/{uuid}/logs` with the device's own key: every line is checked before
/// any is stored; the oldest lines beyond the retention make room.
pub(super) fn receive_logs(api: &Api, request: &Request, uuid: &str) -> Result<Response, Error> {
    let caller = authenticate(api, request)?;
    let uuid = device_id(uuid)?;
    caller.require_device(uuid)?;
    let lines = parse_log_lines(&request.body, unix_now_ms())?;
    if !lines.is_empty() {
        api.store.append_logs(uuid, &lines, api.log_retention)?;
    }
    Ok(Response::json(200, &json!({"status": "ok", "received": lines.len()})))
}

/// `GET /devices/{uuid}/logs?service=&limit=&offset=`: newest first; `count` lines on
/// this page of `total`.
pub(super) fn list_logs(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    known_device(api, uuid)?;
    let service = request.query_value("service").filter(|s| !s.is_empty());
    let limit = request.query_number("limit", 100, 1..=MAX_LINES_PER_REQUEST)?;
    let offset = request.query_number("offset", 0, 0..=u32::MAX as usize)?;
    let page = api.store.logs(uuid, service.as_deref(), limit, offset)?;
    let logs: Vec<Value> = page
        .lines
        .into_iter()
        .map(|(line, received_at)| {
            let mut line: Map<String, Value> = serde_json::from_str(&line).unwrap_or_default();
            line.insert("receivedAt".into(), received_at.into());
            Value::Object(line)
        })
        .collect();
    Ok(Response::json(200, &json!({"count": logs.len(), "total": page.total, "logs": logs})))
}

/// `GET /devices/{uuid}/metrics?limit=`: the newest samples first, each with its time.
pub(super) fn list_metrics(api: &Api, caller: &Caller, request: &Request, uuid: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let uuid = device_id(uuid)?;
    known_device(api, uuid)?;
    let limit = request.query_number("limit", 100, 1..=METRICS_PER_DEVICE)?;
    let metrics: Vec<Value> = api
        .store
        .metrics(uuid, limit)?
        .into_iter()
        .map(|sample| {
            let mut fields: Map<String, Value> = serde_json::from_str(&sample.sample).unwrap_or_default();
            fields.insert("recorded_at".into(), sample.recorded_at.into());
            Value::Object(fields)
        })
        .collect();
    Ok(Response::json(200, &json!({"count": metrics.len(), "metrics": metrics})))
}
