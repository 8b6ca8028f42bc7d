//! Container and agent log lines a device sends (`POST /device/{uuid}/logs`, NDJSON as
//! the platform's original agent writes it, `agent/src/logging/types.ts`), checked and
//! put in one stored shape. Pure: the bounds per request live here, the retention per
//! device in the store (`LogRetention`).

use crate::Error;
use serde_json::{json, Map, Value};

/// Lines one request may carry; more is a 413 and nothing of it is stored.
pub const MAX_LINES_PER_REQUEST: usize = 1000;
/// A message longer than this is cut (at a character boundary) and marked `truncated`.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Names (service, container, source) longer than this are refused.
const MAX_NAME_BYTES: usize = 256;
const LEVELS: &[&str] = &["debug", "info", "warn", "error"];

/// How much of a device's log the server keeps: the newest lines within both bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRetention {
    pub lines: usize,
    pub bytes: usize,
}

impl Default for LogRetention {
    /// 2,000 lines and 1 MiB per device: the last minutes of a chatty container, the
    /// last days of a quiet one; 10,000 devices stay within 10 GiB.
    fn default() -> Self {
        LogRetention { lines: 2000, bytes: 1024 * 1024 }
    }
}

/// One checked line: its stored JSON and the service it names (for `?service=`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub json: String,
    pub service_name: Option<String>,
}

/// Reads an NDJSON body: one object per line, blank lines skipped. A line that is not a
/// log object refuses the whole request with its line number, so a retried batch is
/// either stored whole or not at all. `now_ms` stands in for a missing `timestamp`.
pub fn parse_log_lines(body: &[u8], now_ms: i64) -> Result<Vec<LogLine>, Error> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Error::BadRequest { reason: format!("the log body is not UTF-8: {e}") })?;
    // A byte-order mark some tools write first is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        if lines.len() == MAX_LINES_PER_REQUEST {
            return Err(Error::TooManyLogLines { limit: MAX_LINES_PER_REQUEST });
        }
        let line = parse_line(raw, now_ms)
            .map_err(|reason| Error::BadRequest { reason: format!("log line {}: {reason}", index + 1) })?;
        lines.push(line);
    }
    Ok(lines)
}

fn parse_line(raw: &str, now_ms: i64) -> Result<LogLine, String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("not a JSON object".into());
    };
    let mut message = match fields.get("message") {
        Some(Value::String(message)) => message.clone(),
        Some(_) => return Err("\"message\" must be a string".into()),
        None => return Err("no \"message\"".into()),
    };
    let truncated = message.len() > MAX_MESSAGE_BYTES;
    if truncated {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    let timestamp = match fields.get("timestamp") {
        None | Some(Value::Null) => now_ms,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(ms) => ms,
            None => {
                n.as_f64().filter(|f| f.is_finite() && f.abs() < 9.0e15).ok_or("\"timestamp\" is out of range")? as i64
            }
        },
        Some(_) => return Err("\"timestamp\" must be milliseconds since the epoch".into()),
    };
    let level = match fields.get("level") {
        None | Some(Value::Null) => "info".to_string(),
        Some(Value::String(level)) if LEVELS.contains(&level.as_str()) => level.clone(),
        Some(other) => return Err(format!("\"level\" must be one of {}, not {other}", LEVELS.join(", "))),
    };
    let mut line = Map::new();
    line.insert("message".into(), message.into());
    line.insert("timestamp".into(), timestamp.into());
    line.insert("level".into(), level.into());
    if let Some(source) = fields.get("source").filter(|s| !s.is_null()) {
        let Value::Object(source) = source else {
            return Err("\"source\" must be an object {\"type\", \"name\"}".into());
        };
        let mut kept = Map::new();
        for key in ["type", "name"] {
            if let Some(value) = optional_name(source, key)? {
                kept.insert(key.into(), value.into());
            }
        }
        line.insert("source".into(), kept.into());
    }
    match fields.get("serviceId") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.is_i64() => {
            line.insert("serviceId".into(), n.clone().into());
        }
        Some(_) => return Err("\"serviceId\" must be an integer".into()),
    }
    let service_name = optional_name(&fields, "serviceName")?;
    if let Some(name) = &service_name {
        line.insert("serviceName".into(), name.clone().into());
    }
    // A container's line that names its service only as its source is found by it too.
    let service_name = service_name.or_else(|| match line.get("source") {
        Some(Value::Object(source)) if source.get("type").and_then(Value::as_str) == Some("container") => {
            source.get("name").and_then(Value::as_str).map(str::to_string)
        }
        _ => None,
    });
    if let Some(container) = optional_name(&fields, "containerId")? {
        line.insert("containerId".into(), container.into());
    }
    for flag in ["isStdErr", "isSystem"] {
        match fields.get(flag) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => {
                line.insert(flag.into(), (*b).into());
            }
            Some(_) => return Err(format!("\"{flag}\" must be true or false")),
        }
    }
    if truncated {
        line.insert("truncated".into(), json!(true));
    }
    Ok(LogLine { json: Value::Object(line).to_string(), service_name })
}

/// A short printable string field, if present (a service's name is stored as a column
/// of its own, where PostgreSQL refuses a NUL character).
fn optional_name(fields: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_NAME_BYTES => {
            Err(format!("\"{key}\" is longer than {MAX_NAME_BYTES} bytes"))
        }
        Some(Value::String(s)) if !crate::text::is_printable(s) => {
            Err(format!("\"{key}\" must be printable: no control or bidirectional-override characters"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("\"{key}\" must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> Vec<Value> {
        parse_log_lines(body.as_bytes(), 1_000)
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(&l.json).unwrap())
            .collect()
    }

    #[test]
    fn the_original_agents_lines_are_kept_field_by_field() {
        let body = r#"{"id":7,"message":"listening on :80","timestamp":1765000000123,"level":"info","source":{"type":"container","name":"web"},"serviceId":1,"serviceName":"web","containerId":"abc","isStdErr":false,"isSystem":false}

{"message":"agent started","level":"warn","source":{"type":"system","name":"agent"},"isSystem":true}
"#;
        let lines = parse_log_lines(body.as_bytes(), 42).unwrap();
        assert_eq!(lines.len(), 2, "the blank line is skipped");
        assert_eq!(lines[0].service_name.as_deref(), Some("web"));
        let first: Value = serde_json::from_str(&lines[0].json).unwrap();
        assert_eq!(
            first,
            json!({"message": "listening on :80", "timestamp": 1765000000123i64, "level": "info",
                   "source": {"type": "container", "name": "web"}, "serviceId": 1, "serviceName": "web",
                   "containerId": "abc", "isStdErr": false, "isSystem": false})
        );
        let second: Value = serde_json::from_str(&lines[1].json).unwrap();
        assert_eq!(second["timestamp"], 42, "a missing timestamp is the time received");
        assert_eq!(lines[1].service_name, None);
    }

    #[test]
    fn a_bad_line_refuses_the_request_and_names_the_line() {
        for (body, needle) in [
            ("{\"message\":\"ok\"}\nnot json", "log line 2: not JSON"),
            ("[1,2]", "log line 1: not a JSON object"),
            ("{\"level\":\"info\"}", "no \"message\""),
            ("{\"message\":5}", "\"message\" must be a string"),
            ("{\"message\":\"m\",\"level\":\"loud\"}", "\"level\" must be one of"),
            ("{\"message\":\"m\",\"timestamp\":\"yesterday\"}", "\"timestamp\""),
            ("{\"message\":\"m\",\"timestamp\":1e300}", "out of range"),
            ("{\"message\":\"m\",\"serviceId\":\"1\"}", "\"serviceId\""),
            ("{\"message\":\"m\",\"source\":\"web\"}", "\"source\""),
            ("{\"message\":\"m\",\"isStdErr\":1}", "\"isStdErr\""),
        ] {
            let error = parse_log_lines(body.as_bytes(), 0).unwrap_err().to_string();
            assert!(error.contains(needle), "{body:?}: {error}");
        }
        let long_name = format!("{{\"message\":\"m\",\"serviceName\":\"{}\"}}", "s".repeat(300));
        assert!(parse_log_lines(long_name.as_bytes(), 0).is_err());
        assert!(parse_log_lines(b"\xff\xfe", 0).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let message = "é".repeat(MAX_MESSAGE_BYTES); // two bytes each
        let line = &parsed(&json!({"message": message}).to_string())[0];
        let kept = line["message"].as_str().unwrap();
        assert!(kept.len() <= MAX_MESSAGE_BYTES && kept.len() > MAX_MESSAGE_BYTES - 2);
        assert_eq!(line["truncated"], true);
    }

    #[test]
    fn control_characters_in_messages_stay_escaped_in_the_stored_json() {
        let line = &parse_log_lines(br#"{"message":"a\nb\u0000c"}"#, 0).unwrap()[0];
        assert!(!line.json.contains('\n') && !line.json.contains('\0'), "{}", line.json);
        assert_eq!(serde_json::from_str::<Value>(&line.json).unwrap()["message"], "a\nb\u{0}c");
    }

    /// A NUL in a name was stored on SQLite and a 500 on PostgreSQL (its text holds no
    /// NUL): names are printable on both.
    #[test]
    fn names_with_control_characters_are_refused() {
        for body in [
            r#"{"message":"m","serviceName":"we\u0000b"}"#,
            r#"{"message":"m","source":{"type":"container","name":"a\u0000"}}"#,
            r#"{"message":"m","containerId":"c\u001b[2J"}"#,
        ] {
            let error = parse_log_lines(body.as_bytes(), 0).expect_err(body).to_string();
            assert!(error.contains("printable"), "{body}: {error}");
        }
    }

    #[test]
    fn more_lines_than_a_request_may_carry_are_refused() {
        let body = "{\"message\":\"m\"}\n".repeat(MAX_LINES_PER_REQUEST);
        assert_eq!(parse_log_lines(body.as_bytes(), 0).unwrap().len(), MAX_LINES_PER_REQUEST);
        let body = body + "{\"message\":\"one too many\"}";
        assert!(matches!(parse_log_lines(body.as_bytes(), 0), Err(Error::TooManyLogLines { .. })));
    }
}
