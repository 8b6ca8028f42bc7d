//! When a deployment fails (its container exits, keeps restarting or turns unhealthy in
//! probation, or cannot be created or started), the operator should see why without
//! SSH: the container's last lines and one line of the agent's own saying what failed go
//! to the server's log route (`POST /device/{uuid}/logs`, NDJSON, in the shape the
//! platform's own agent sends). They wait here for a send that gets through: bounded in
//! memory, never written to SQLite (flash wear); an agent restart loses them, and the
//! reason still lives in the store's event log and the report.
//!
//! Probation collects on its own (`Probation::watch`); start failures are found after
//! `apply` by `failed_starts`. Choosing and building the lines is pure
//! (`failed_starts`, `container_log_lines`, `manager_log_line`); a failed send is
//! retried with backoff, or dropped when the server refuses it for good (a 4xx: an older
//! server without the route, or a body it will never take).

use crate::apply::{retry_backoff, Activity};
use crate::client::ServerClient;
use crate::engine::{Container, Engine, LogLine};
use crate::plan::Step;
use crate::spec::{DesiredService, ServiceKey};
use crate::Error;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Lines of a failed container read and sent.
pub const TAIL_LINES: u32 = 50;
/// Lines waiting at most: what the server takes in one request.
const MAX_PENDING_LINES: usize = 1000;
/// Bytes of NDJSON waiting at most; the oldest lines go first.
const MAX_PENDING_BYTES: usize = 256 * 1024;
/// `source.name` of the agent's own lines.
const MANAGER_NAME: &str = "pinion-agent";

/// NDJSON lines waiting to be sent, oldest first.
#[derive(Debug, Default)]
pub struct FailureLogs {
    pending: VecDeque<String>,
    pending_bytes: usize,
    /// Sends failed in a row, and when the next may be tried.
    failed_sends: u32,
    retry_at: Option<Instant>,
}

impl FailureLogs {
    pub fn new() -> FailureLogs {
        FailureLogs::default()
    }

    /// Queues the last lines of `service`'s `container` (id or name; `None` when it was
    /// never created) and a line saying `why` it failed. Reading the container's log is
    /// bounded (`Engine::log_tail`); when it fails, the line saying why is still queued.
    pub fn collect(&mut self, engine: &dyn Engine, service: &DesiredService, container: Option<&str>, why: &str) {
        let now = now_ms();
        if let Some(container) = container {
            match engine.log_tail(container, TAIL_LINES) {
                Ok(tail) => self.queue(container_log_lines(service, container, &tail, now)),
                Err(e) => log::debug!("{}: the failed container's log is not sent: {e}", service.key),
            }
        }
        self.queue(vec![manager_log_line(service, container, why, now)]);
    }

    /// The NDJSON lines waiting, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &str> {
        self.pending.iter().map(String::as_str)
    }

    /// Sends what waits, if anything does and a retry is due. Never fails and never
    /// blocks for longer than the client's logs timeout: a failure is logged, and the
    /// lines kept for a later try, or dropped when the server refuses them for good.
    pub fn send(&mut self, client: &ServerClient, uuid: &str, device_key: &str) {
        if self.pending.is_empty() || self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let body: String = self.pending.iter().flat_map(|line| [line.as_str(), "\n"]).collect();
        match client.send_logs(uuid, device_key, &body) {
            Ok(()) => {
                log::debug!("sent {} log line(s) of failed deployments", self.pending.len());
                self.clear();
            }
            Err(e) if refused_for_good(&e) => {
                log::warn!("{} log line(s) of failed deployments dropped: {e}", self.pending.len());
                self.clear();
            }
            Err(e) => {
                self.failed_sends += 1;
                let wait = retry_backoff(self.failed_sends);
                log::debug!("log lines of failed deployments kept, next try in {} s: {e}", wait.as_secs());
                self.retry_at = Some(Instant::now() + wait);
            }
        }
    }

    fn clear(&mut self) {
        *self = FailureLogs::default();
    }

    fn queue(&mut self, lines: Vec<String>) {
        for line in lines {
            self.pending_bytes += line.len() + 1;
            self.pending.push_back(line);
        }
        while self.pending.len() > MAX_PENDING_LINES || self.pending_bytes > MAX_PENDING_BYTES {
            let Some(dropped) = self.pending.pop_front() else { break };
            self.pending_bytes -= dropped.len() + 1;
        }
    }
}

/// A service whose new container could not be created or started in one `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedStart<'a> {
    pub service: &'a DesiredService,
    /// The container's id; `None` when none was created (or it is no longer listed).
    pub container: Option<&'a str>,
    pub why: String,
}

/// The services `apply` ran `steps` for whose container could not be created or started
/// (`failed`: what `apply` returned); `containers`: the engine's listing after it. A
/// container that ran before and would not start again (`restart_failed`: dockerd going
/// down) says nothing of the deployment and is left out.
pub fn failed_starts<'a>(
    steps: &'a [Step],
    desired: &'a [DesiredService],
    failed: &BTreeMap<ServiceKey, Activity>,
    containers: &'a [Container],
) -> Vec<FailedStart<'a>> {
    let mut found = Vec::new();
    for (key, activity) in failed {
        let Activity::Failed { kind, message } = activity else { continue };
        let Some(service) = desired.iter().find(|d| &d.key == key) else { continue };
        let container = steps.iter().find_map(|step| match step {
            Step::CreateAndStart { service, name, .. } if service == key => {
                Some(containers.iter().find(|c| &c.name == name).map(|c| c.id.as_str()))
            }
            Step::Start { service, container } if service == key => Some(Some(container.as_str())),
            _ => None,
        });
        let (container, what) = match (*kind, container) {
            ("start_failed", Some(container)) => (container, "failed to start"),
            ("create_failed", Some(_)) => (None, "could not be created"),
            _ => continue,
        };
        found.push(FailedStart { service, container, why: format!("{key}: {} {what}: {message}", service.image) });
    }
    found
}

/// A 4xx but a timeout or rate limit: sending the same lines again will not help.
fn refused_for_good(error: &Error) -> bool {
    matches!(error, Error::ServerStatus { status, .. } if (400..500).contains(status) && ![408, 429].contains(status))
}

/// One NDJSON line per line of the container's tail; a line without a timestamp gets `now_ms`.
pub fn container_log_lines(service: &DesiredService, container_id: &str, tail: &[LogLine], now_ms: u64) -> Vec<String> {
    tail.iter()
        .map(|line| {
            let level = if line.stderr { "error" } else { "info" };
            let source = json!({"type": "container", "name": service.container_name});
            let mut entry = entry(service, Some(container_id), &line.text, line.timestamp_ms.unwrap_or(now_ms), level);
            entry.insert("source".into(), source);
            entry.insert("isStdErr".into(), line.stderr.into());
            Value::Object(entry).to_string()
        })
        .collect()
}

/// The agent's own line saying why the deployment failed.
pub fn manager_log_line(service: &DesiredService, container_id: Option<&str>, why: &str, now_ms: u64) -> String {
    let mut entry = entry(service, container_id, why, now_ms, "error");
    entry.insert("source".into(), json!({"type": "manager", "name": MANAGER_NAME}));
    entry.insert("isSystem".into(), true.into());
    Value::Object(entry).to_string()
}

/// The fields every line has. `serviceId` is a number on the wire; a target's id that
/// is not one is left out.
fn entry(
    service: &DesiredService,
    container_id: Option<&str>,
    message: &str,
    at_ms: u64,
    level: &str,
) -> Map<String, Value> {
    let mut entry = Map::new();
    entry.insert("message".into(), message.into());
    entry.insert("timestamp".into(), at_ms.into());
    entry.insert("level".into(), level.into());
    entry.insert("serviceName".into(), service.key.service_name.clone().into());
    if let Some(id) = service.service_id.as_deref().and_then(|id| id.parse::<u64>().ok()) {
        entry.insert("serviceId".into(), id.into());
    }
    if let Some(id) = container_id {
        entry.insert("containerId".into(), id.into());
    }
    entry
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Value {
        assert!(!line.contains('\n') && !line.contains('\r'), "one line: {line:?}");
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn container_lines_carry_the_service_container_and_stream() {
        let web = DesiredService::example("web", "a@2", "h2");
        let tail = [
            LogLine { stderr: false, timestamp_ms: Some(1_000), text: "listening on :80".into() },
            LogLine { stderr: true, timestamp_ms: None, text: "fatal: no config".into() },
        ];
        let lines = container_log_lines(&web, "c0ffee", &tail, 5_000);
        assert_eq!(
            parsed(&lines[0]),
            json!({"message": "listening on :80", "timestamp": 1000, "level": "info",
                   "source": {"type": "container", "name": "web_1"}, "serviceName": "web",
                   "serviceId": 7, "containerId": "c0ffee", "isStdErr": false})
        );
        let second = parsed(&lines[1]);
        assert_eq!((second["level"].clone(), second["isStdErr"].clone()), (json!("error"), json!(true)));
        assert_eq!(second["timestamp"], 5000, "a line without a timestamp is stamped now");
    }

    #[test]
    fn newlines_quotes_and_control_characters_stay_inside_one_line() {
        let web = DesiredService::example("web", "a@2", "h2");
        let nasty = "first\nsecond\r\n\"quoted\"\t\u{1b}[31mred\u{0}\u{7f} é";
        let tail = [LogLine { stderr: true, timestamp_ms: Some(1), text: nasty.into() }];
        let line = &container_log_lines(&web, "c", &tail, 0)[0];
        assert!(line.contains(r#"first\nsecond\r\n\"quoted\"\t\u001b[31mred\u0000"#), "{line}");
        assert_eq!(parsed(line)["message"], nasty);
        let manager = manager_log_line(&web, None, "web: a@2 exited\nwith code 1", 9);
        assert_eq!(parsed(&manager)["message"], "web: a@2 exited\nwith code 1");
    }

    #[test]
    fn the_manager_line_says_why_for_the_service() {
        let mut web = DesiredService::example("web", "a@2", "h2");
        let line = parsed(&manager_log_line(&web, Some("c0ffee"), "web: a@2 exited with code 1 within probation", 9));
        assert_eq!(
            line,
            json!({"message": "web: a@2 exited with code 1 within probation", "timestamp": 9, "level": "error",
                   "source": {"type": "manager", "name": "pinion-agent"}, "serviceName": "web", "serviceId": 7,
                   "containerId": "c0ffee", "isSystem": true})
        );
        // Never created: no container; an id that is no number is left out.
        web.service_id = Some("web-1".into());
        let line = parsed(&manager_log_line(&web, None, "could not be created", 9));
        assert!(line.get("containerId").is_none() && line.get("serviceId").is_none(), "{line}");
    }

    #[test]
    fn the_queue_keeps_the_newest_lines_within_its_bounds() {
        let mut logs = FailureLogs::new();
        logs.queue((0..MAX_PENDING_LINES + 10).map(|n| format!("{{\"n\":{n}}}")).collect());
        assert_eq!(logs.pending().count(), MAX_PENDING_LINES);
        assert_eq!(logs.pending().next(), Some("{\"n\":10}"));
        logs.queue(vec!["x".repeat(MAX_PENDING_BYTES / 2); 3]);
        assert_eq!(logs.pending().count(), 1, "whole lines go, oldest first");
        assert!(logs.pending_bytes <= MAX_PENDING_BYTES);
    }

    #[test]
    fn failed_starts_are_the_create_and_start_failures_of_this_apply() {
        let (web, db, api) = (
            DesiredService::example("web", "a@2", "h2"),
            DesiredService::example("db", "d@1", "d1"),
            DesiredService::example("api", "p@1", "p1"),
        );
        let steps = [
            Step::CreateAndStart { service: web.key.clone(), name: "web_1".into(), body: json!({}) },
            Step::CreateAndStart { service: db.key.clone(), name: "db_1".into(), body: json!({}) },
            Step::Start { service: api.key.clone(), container: "c-api".into() },
        ];
        let created = Container {
            id: "c-web".into(),
            name: "web_1".into(),
            image: web.image.clone(),
            state: "created".into(),
            status: String::new(),
            labels: BTreeMap::new(),
        };
        let failure = |kind, message: &str| Activity::Failed { kind, message: message.into() };
        let failed = BTreeMap::from([
            (web.key.clone(), failure("start_failed", "exec: \"nope\": not found")),
            (db.key.clone(), failure("create_failed", "invalid mount")),
            (api.key.clone(), failure("restart_failed", "dockerd is shutting down")),
        ]);
        let desired = [web.clone(), db.clone(), api.clone()];
        let found = failed_starts(&steps, &desired, &failed, std::slice::from_ref(&created));
        assert_eq!(
            found,
            [
                FailedStart {
                    service: &db,
                    container: None,
                    why: "1/db: d@1 could not be created: invalid mount".into()
                },
                FailedStart {
                    service: &web,
                    container: Some("c-web"),
                    why: "1/web: a@2 failed to start: exec: \"nope\": not found".into()
                },
            ]
        );
        // A pull failure, or a start failure of a container that is no longer listed.
        let failed = BTreeMap::from([
            (web.key.clone(), failure("start_failed", "x")),
            (api.key.clone(), failure("pull_failed", "not found")),
        ]);
        assert_eq!(failed_starts(&steps, &desired, &failed, &[])[0].container, None);
        assert_eq!(failed_starts(&steps, &desired, &failed, &[]).len(), 1);
    }

    #[test]
    fn only_a_final_refusal_drops_the_lines() {
        let status = |status| Error::ServerStatus { url: "u".into(), status, message: String::new() };
        assert!(refused_for_good(&status(404)), "a server without the route");
        assert!(refused_for_good(&status(413)));
        assert!(!refused_for_good(&status(429)) && !refused_for_good(&status(408)));
        assert!(!refused_for_good(&status(503)));
        assert!(!refused_for_good(&Error::ServerUnreachable { url: "u".into(), reason: "down".into() }));
    }
}
