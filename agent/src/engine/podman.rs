//! Where Podman's Docker-compatible service (`podman system service`, checked against
//! Debian's podman 4.3.1, API 1.41) answers differently from dockerd, and what makes its
//! answers read as Docker's, so that the rest of the agent sees one engine. Pure: the
//! calls are made in `docker.rs`, which says at each spot what differs.
//!
//! What Podman 4.3 answers the same as dockerd (checked, nothing to do): label filters
//! on `GET /containers/json` and `/networks`; `ContainerCreate` bodies with `Binds`,
//! `NetworkMode`, `NetworkingConfig` aliases and `RestartPolicy`; `RestartCount`; image
//! inspect by digest reference; `X-Registry-Auth` (padded base64url); a pull's failure
//! as an `error` line after a `200`; volume create with labels (201, also for one that
//! exists); image removal (409 in use, 404 gone); log tails in 8-byte frames (its
//! Content-Type is `application/octet-stream`, so the first byte tells, as with
//! Docker before API 1.42); `DockerRootDir` in `/info` (Podman's GraphRoot).

use serde_json::Value;
use std::time::Duration;

/// Which engine answers on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    Podman,
}

impl EngineKind {
    /// From `GET /version`: Podman lists a component named `Podman Engine` (dockerd's is
    /// `Engine`), and says so in its `Platform.Name` too.
    pub fn of(version: &Value) -> EngineKind {
        let named_podman = |name: &str| name.to_ascii_lowercase().contains("podman");
        let component = version["Components"]
            .as_array()
            .is_some_and(|parts| parts.iter().any(|c| c["Name"].as_str().is_some_and(named_podman)));
        if component || version["Platform"]["Name"].as_str().is_some_and(named_podman) {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Docker => "Docker",
            EngineKind::Podman => "Podman",
        }
    }
}

/// A container state as Docker names it. Podman's compat API passes some of its own
/// states through (`State.Status` in an inspect, seen between the runs of a container
/// its restart policy restarts): `stopped` (exited, its cleanup not done yet) is
/// Docker's `exited`, `configured` is `created`, `stopping` is still `running`.
/// Docker never says any of these, so this holds for both.
pub fn docker_state(state: &str) -> &str {
    match state {
        "stopped" => "exited",
        "configured" => "created",
        "stopping" => "running",
        other => other,
    }
}

/// The status Docker would have answered a refusal with. Podman answers `500` for
/// nearly everything, and names the error it wraps in a `cause` field (Docker never
/// sends one). Docker answers a start whose command is missing or cannot be run, or
/// whose mount puts a file on a directory, with `400` (an invalid config: evidence
/// against the deployment, which probation rolls back); Podman's causes for the same:
/// `OCI runtime attempted to invoke a command that was not found` (older releases:
/// `OCI runtime command not found error`), `OCI permission denied` (older: `OCI runtime
/// permission denied error`), and a generic `OCI runtime error` saying `not a
/// directory`. Podman gives the permission cause to `operation not permitted` (EPERM)
/// too: a seccomp, capability or cgroup refusal, the host's, which Docker leaves a
/// `500`; so, as Docker does, only a `permission denied` (EACCES) is the image's.
/// Everything else keeps its status (a `500` stays the host's fault).
pub fn docker_status(status: u16, body: &[u8]) -> u16 {
    if status != 500 {
        return status;
    }
    let Ok(reply) = serde_json::from_slice::<Value>(body) else { return status };
    let Some(cause) = reply["cause"].as_str() else { return status };
    // The message ends with `: <cause>`, which says `permission denied` whatever the
    // runtime said: only what comes before it tells. crun capitalises (`Permission
    // denied`), runc does not.
    let message = reply["message"].as_str().unwrap_or_default();
    let message = message.strip_suffix(cause).and_then(|m| m.strip_suffix(": ")).unwrap_or(message);
    let message = message.to_ascii_lowercase();
    let invalid = match cause {
        "OCI runtime attempted to invoke a command that was not found" | "OCI runtime command not found error" => true,
        "OCI permission denied" | "OCI runtime permission denied error" => message.contains("permission denied"),
        "OCI runtime error" => message.contains("not a directory"),
        _ => false,
    };
    if invalid {
        400
    } else {
        status
    }
}

/// Docker's healthcheck interval when the image sets none.
const DEFAULT_HEALTHCHECK_INTERVAL_MS: u64 = 30_000;

/// Whether the agent should run a Podman container's healthcheck itself now (libpod's
/// `GET /libpod/containers/{id}/healthcheck`, as `podman healthcheck run` does), given
/// its inspect JSON and the wall clock. Podman runs healthchecks from systemd timers;
/// without systemd (an init of another kind, a container) none ever runs, and the
/// health stays `starting` for good: a failing check would never fail probation. So a
/// running container with a healthcheck whose last check ended an interval ago or more
/// (or, with none yet, that started an interval ago) is due. Where systemd's timers do
/// run the checks, the last one is never that old, and nothing is added. Times are
/// Podman's, on this host's wall clock, as `now_ms` is.
pub fn healthcheck_due(inspected: &Value, now_ms: u64) -> bool {
    if docker_state(inspected["State"]["Status"].as_str().unwrap_or_default()) != "running" {
        return false;
    }
    let check = &inspected["Config"]["Healthcheck"];
    let has_check = check["Test"]
        .as_array()
        .and_then(|test| test.first())
        .and_then(Value::as_str)
        .is_some_and(|kind| kind != "NONE" && !kind.is_empty());
    if !has_check {
        return false;
    }
    let interval_ms = match check["Interval"].as_u64() {
        Some(0) | None => DEFAULT_HEALTHCHECK_INTERVAL_MS,
        Some(ns) => ns / 1_000_000,
    };
    let last_check = inspected["State"]["Health"]["Log"]
        .as_array()
        .and_then(|log| log.last())
        .and_then(|entry| entry["End"].as_str())
        .and_then(super::log_stream::timestamp_ms);
    let since =
        last_check.or_else(|| inspected["State"]["StartedAt"].as_str().and_then(super::log_stream::timestamp_ms));
    match since {
        Some(since) => now_ms >= since.saturating_add(interval_ms),
        None => false,
    }
}

/// Docker's healthcheck timeout and retries when the image sets none.
const DEFAULT_HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HEALTHCHECK_RETRIES: u32 = 3;
/// The longest the agent waits for a check it runs: its probation loop waits meanwhile.
const LONGEST_HEALTHCHECK_WAIT: Duration = Duration::from_secs(30);
/// What a check's exec adds to its own timeout before it is taken as hung.
const HEALTHCHECK_EXEC_SLACK: Duration = Duration::from_secs(2);

/// How long the agent waits for a healthcheck it runs (`healthcheck_due`). Podman 4.3's
/// `healthcheck run` does not stop a check at its timeout (Docker kills it and counts a
/// failure): a check that hangs holds the request, and no result is ever recorded, so
/// the health would stay `starting` for good. The agent waits for the check's timeout
/// and a little more (at most `LONGEST_HEALTHCHECK_WAIT`), then counts it as hung.
pub fn healthcheck_wait(inspected: &Value) -> Duration {
    let timeout = match inspected["Config"]["Healthcheck"]["Timeout"].as_u64() {
        Some(0) | None => DEFAULT_HEALTHCHECK_TIMEOUT,
        Some(ns) => Duration::from_nanos(ns),
    };
    timeout.min(LONGEST_HEALTHCHECK_WAIT) + HEALTHCHECK_EXEC_SLACK
}

/// Whether a check that hung now counts, as a timeout does on Docker: not within the
/// container's start period (`StartPeriod`, from its start), when failures do not count.
pub fn hung_check_counts(inspected: &Value, now_ms: u64) -> bool {
    let start_period_ms = inspected["Config"]["Healthcheck"]["StartPeriod"].as_u64().unwrap_or(0) / 1_000_000;
    let started = inspected["State"]["StartedAt"].as_str().and_then(super::log_stream::timestamp_ms);
    started.is_none_or(|started| now_ms >= started.saturating_add(start_period_ms))
}

/// Whether `hung` checks in a row (`healthcheck_wait`) make the container unhealthy, as
/// that many timeouts would on Docker: its `Retries` of them (Docker's 3 when unset).
pub fn unhealthy_after_hung_checks(inspected: &Value, hung: u32) -> bool {
    let retries = match inspected["Config"]["Healthcheck"]["Retries"].as_u64() {
        Some(0) | None => DEFAULT_HEALTHCHECK_RETRIES,
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
    };
    hung >= retries
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn podman_is_told_from_docker_by_its_version_components() {
        let podman = json!({"Platform": {"Name": "linux/amd64/debian-12"}, "ApiVersion": "1.41",
                            "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}, {"Name": "Conmon"}]});
        let docker = json!({"Platform": {"Name": ""}, "ApiVersion": "1.41",
                            "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"}, {"Name": "containerd"}]});
        assert_eq!(EngineKind::of(&podman), EngineKind::Podman);
        assert_eq!(EngineKind::of(&docker), EngineKind::Docker);
        assert_eq!(EngineKind::of(&json!({"Platform": {"Name": "Podman Engine"}})), EngineKind::Podman);
        assert_eq!(EngineKind::of(&json!("garbage")), EngineKind::Docker);
    }

    #[test]
    fn podman_states_read_as_dockers() {
        let states = ["stopped", "configured", "stopping", "running", "exited", "restarting", "dead", ""];
        let mapped = states.map(docker_state);
        assert_eq!(mapped, ["exited", "created", "running", "running", "exited", "restarting", "dead", ""]);
    }

    #[test]
    fn podman_refusals_of_an_invalid_start_read_as_dockers_400() {
        let refusal = |cause: &str, message: &str| {
            serde_json::to_vec(&json!({"cause": cause, "message": message, "response": 500})).unwrap()
        };
        let not_found = refusal(
            "OCI runtime attempted to invoke a command that was not found",
            "runc: runc create failed: unable to start container process: exec: \"/nonexistent\": stat \
             /nonexistent: no such file or directory: OCI runtime attempted to invoke a command that was not found",
        );
        assert_eq!(docker_status(500, &not_found), 400);
        let not_executable = "runc: runc create failed: unable to start container process: exec: \"/etc\": \
                              permission denied: OCI permission denied";
        assert_eq!(docker_status(500, &refusal("OCI permission denied", not_executable)), 400);
        let by_crun = "crun: open executable: Permission denied: OCI permission denied";
        assert_eq!(docker_status(500, &refusal("OCI permission denied", by_crun)), 400);
        let onto_file = refusal("OCI runtime error", "mount /etc/hostname:/bin (via /proc/self/fd/6): not a directory");
        assert_eq!(docker_status(500, &onto_file), 400);
        // The host's faults stay 500: a name taken, a runtime error of another kind.
        let taken = refusal("that name is already in use", "the container name \"web_1\" is already in use");
        assert_eq!(docker_status(500, &taken), 500);
        assert_eq!(docker_status(500, &refusal("OCI runtime error", "cgroup: no space left on device")), 500);
        // Podman's permission cause also wraps EPERM, a refusal by the host (here a
        // `nofile` above the host's hard limit, podman 4.3.1 with runc); Docker: a 500.
        let over_the_limit = "runc: runc create failed: unable to start container process: error during \
                              container init: error setting rlimits for ready process: error setting rlimit \
                              type 7: operation not permitted: OCI permission denied";
        assert_eq!(docker_status(500, &refusal("OCI permission denied", over_the_limit)), 500);
        // Docker's own replies carry no cause and keep their status.
        assert_eq!(docker_status(500, br#"{"message":"OCI permission denied"}"#), 500);
        assert_eq!(docker_status(404, &refusal("no such container", "no container with name")), 404);
        assert_eq!(docker_status(500, b"not json"), 500);
    }

    fn container(status: &str, test: Value, interval_ns: u64, log: Value) -> Value {
        json!({"State": {"Status": status, "StartedAt": "2026-12-07T23:09:27.270716131Z",
                         "Health": {"Status": "starting", "FailingStreak": 0, "Log": log}},
               "Config": {"Healthcheck": {"Test": test, "Interval": interval_ns, "Retries": 1}}})
    }

    #[test]
    fn a_podman_healthcheck_is_due_an_interval_after_the_last_one_or_the_start() {
        let started = 1_796_684_967_270; // 2026-12-07T23:09:27.270Z
        let check = json!(["CMD", "/bin/false"]);
        let fresh = container("running", check.clone(), 1_000_000_000, Value::Null);
        assert!(!healthcheck_due(&fresh, started + 999));
        assert!(healthcheck_due(&fresh, started + 1_000));
        // The last check's end counts, not the start.
        let log =
            json!([{"Start": "2026-12-07T23:09:48.705Z", "End": "2026-12-07T23:09:48.804213231Z", "ExitCode": 1}]);
        let checked = container("running", check.clone(), 1_000_000_000, log);
        let ended = started + 21_534;
        assert!(!healthcheck_due(&checked, ended + 500));
        assert!(healthcheck_due(&checked, ended + 1_000));
        // Docker's default interval when none is set.
        let default = container("running", check.clone(), 0, Value::Null);
        assert!(!healthcheck_due(&default, started + 29_999));
        assert!(healthcheck_due(&default, started + 30_000));
    }

    #[test]
    fn a_hung_podman_healthcheck_is_waited_for_its_timeout_then_counts_as_a_failure() {
        let with = |check: Value| json!({"Config": {"Healthcheck": check}});
        let one_second = with(json!({"Test": ["CMD", "sleep", "1000"], "Timeout": 1_000_000_000u64, "Retries": 1}));
        assert_eq!(healthcheck_wait(&one_second), Duration::from_secs(3));
        assert!(!unhealthy_after_hung_checks(&one_second, 0));
        assert!(unhealthy_after_hung_checks(&one_second, 1));
        // Docker's defaults: 30 s, 3 retries.
        let unset = with(json!({"Test": ["CMD", "sleep", "1000"]}));
        assert_eq!(healthcheck_wait(&unset), Duration::from_secs(32));
        assert!(!unhealthy_after_hung_checks(&unset, 2));
        assert!(unhealthy_after_hung_checks(&unset, 3));
        // An hour's timeout would hold the agent's loop for an hour.
        let an_hour = with(json!({"Test": ["CMD", "true"], "Timeout": 3_600_000_000_000u64, "Retries": 1u64 << 40}));
        assert_eq!(healthcheck_wait(&an_hour), Duration::from_secs(32));
        assert!(!unhealthy_after_hung_checks(&an_hour, u32::MAX - 1));
    }

    #[test]
    fn a_hung_podman_healthcheck_counts_only_after_the_start_period() {
        let started = 1_796_684_967_270; // 2026-12-07T23:09:27.270Z
        let with_period = json!({"State": {"StartedAt": "2026-12-07T23:09:27.270716131Z"},
                                 "Config": {"Healthcheck": {"Test": ["CMD", "true"], "StartPeriod": 60_000_000_000u64}}});
        assert!(!hung_check_counts(&with_period, started + 59_999));
        assert!(hung_check_counts(&with_period, started + 60_000));
        let without = json!({"State": {"StartedAt": "2026-12-07T23:09:27.270716131Z"},
                             "Config": {"Healthcheck": {"Test": ["CMD", "true"]}}});
        assert!(hung_check_counts(&without, started));
    }

    #[test]
    fn no_healthcheck_is_due_without_one_or_a_running_container() {
        let later = 1_900_000_000_000;
        assert!(!healthcheck_due(&container("running", json!(["NONE"]), 0, Value::Null), later));
        assert!(!healthcheck_due(&container("running", json!([]), 0, Value::Null), later));
        assert!(!healthcheck_due(&container("running", Value::Null, 0, Value::Null), later));
        assert!(!healthcheck_due(&container("stopped", json!(["CMD", "true"]), 0, Value::Null), later));
        assert!(!healthcheck_due(&json!({"State": {"Status": "running"}}), later));
        let no_times = json!({"State": {"Status": "running"}, "Config": {"Healthcheck": {"Test": ["CMD", "true"]}}});
        assert!(!healthcheck_due(&no_times, later));
    }
}
