//! `GET /metrics` on a running `pinion-server serve`, scraped as Prometheus would: the
//! exposition is checked by Prometheus' own parser and linter (`promtool check metrics`,
//! Debian's `prometheus` package), and its numbers move with what a device and a real
//! docker-registry did (polls by answer, reports, resolutions, registry latency). Who
//! may scrape: the metrics token, the admin token, an address on `--metrics-allow`;
//! nobody else (401, 403), and with neither option /metrics is off (404).

use pinion_tests::util::http_agent;
use pinion_tests::util::require_tool;
use pinion_tests::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

/// `GET path` with `headers`: (status, headers, body).
fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, BTreeMap<String, String>, String) {
    let mut request = ureq::http::Request::builder().method("GET").uri(format!("{}{path}", server.url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = http_agent(Duration::from_secs(30)).run(request.body(()).unwrap()).expect("the server answers");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap_or_default().to_string()))
        .collect();
    (status, headers, response.body_mut().read_to_string().unwrap_or_default())
}

/// A scrape with `token`: asserts 200 and Prometheus' content type, returns the text.
fn scrape(server: &Server, token: Option<&str>) -> String {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, headers, body) = get(server, "/metrics", &headers);
    assert_eq!(status, 200, "{body}\nserver output:\n{}", server.log());
    assert_eq!(headers.get("content-type").map(String::as_str), Some("text/plain; version=0.0.4; charset=utf-8"));
    body
}

/// `promtool check metrics` on `text`: Prometheus' parser and its lint, which must find
/// nothing.
fn promtool_check(text: &str) {
    let promtool = require_tool("promtool", "prometheus");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool check metrics: {}\n{said}\nthe scrape:\n{text}", output.status);
    assert!(said.trim().is_empty(), "promtool check metrics found problems:\n{said}\nthe scrape:\n{text}");
}

/// The value of the sample written exactly `series` (`name{label="v",…}`), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().expect("a number"))
        })
        .unwrap_or(0.0)
}

fn register(server: &Server, uuid: &str, device_key: &str) {
    let key = server.provisioning_key();
    let body = json!({"uuid": uuid, "deviceApiKey": device_key});
    let reply = server.request("POST", "/api/v1/device/register", Some(&body), Some(&key));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn a_scrape_passes_promtool_and_its_numbers_follow_polls_reports_and_resolutions() {
    let registry = Registry::start(Auth::Anonymous);
    push_image(&registry, "metrics/app", "1", &ImageSpec::linux_amd64("metrics v1"));
    let server = Server::start(&["--metrics-token", METRICS_TOKEN]);
    let before = scrape(&server, Some(METRICS_TOKEN));
    promtool_check(&before);
    assert_eq!(value(&before, "pinion_devices{state=\"never_seen\"}"), 0.0, "{before}");

    register(&server, "metrics-dev", "metrics-device-key-0123456789abcdef0123");
    let image = format!("{}/metrics/app:1", registry.host());
    let reply = server.set_target_state("metrics-dev", &pinion_tests::util::demo_target(&[&image]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let fleet = server.request("POST", "/api/v1/fleets", Some(&json!({"name": "edge"})), Some(server.admin_token()));
    assert!(fleet.status < 300, "{}", fleet.body);
    let joined = server.request(
        "PUT",
        "/api/v1/devices/metrics-dev/fleet",
        Some(&json!({"fleet": "edge"})),
        Some(server.admin_token()),
    );
    assert!(joined.status < 300, "{}", joined.body);
    // A device the operator prepared, whose agent never came: never seen.
    let reply = server.set_target_state("prepared-dev", &pinion_tests::util::demo_target(&[&image]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let registered = scrape(&server, Some(METRICS_TOKEN));
    assert_eq!(value(&registered, "pinion_devices{state=\"never_seen\"}"), 1.0, "{registered}");
    assert_eq!(value(&registered, "pinion_devices{state=\"online\"}"), 1.0, "registering is being seen: {registered}");
    assert_eq!(value(&registered, "pinion_fleet_devices{fleet=\"edge\"}"), 1.0, "{registered}");
    assert_eq!(value(&registered, "pinion_fleets"), 1.0, "{registered}");

    // A poll (200), the same poll again (304), a report (200), a wrong key (401).
    let key = ("X-Device-API-Key", "metrics-device-key-0123456789abcdef0123");
    let (status, headers, body) = get(&server, "/api/v1/device/metrics-dev/state", &[key]);
    assert_eq!(status, 200, "{body}");
    let etag = headers.get("etag").expect("an ETag").clone();
    let (status, _, _) = get(&server, "/api/v1/device/metrics-dev/state", &[key, ("If-None-Match", &etag)]);
    assert_eq!(status, 304);
    let report = json!({"metrics-dev": {"apps": {}, "config": {}}});
    let reply = server.send_bytes(
        "PATCH",
        "/api/v1/device/state",
        &[key, ("Content-Type", "application/json")],
        report.to_string().into_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (status, _, _) = get(&server, "/api/v1/device/metrics-dev/state", &[("X-Device-API-Key", "not-the-key")]);
    assert_eq!(status, 401);

    let after = scrape(&server, Some(METRICS_TOKEN));
    promtool_check(&after);
    for (series, moved_by) in [
        ("pinion_polls_total{answer=\"200\"}", 1.0),
        ("pinion_polls_total{answer=\"304\"}", 1.0),
        ("pinion_polls_total{answer=\"401\"}", 1.0),
        ("pinion_reports_total{answer=\"200\"}", 1.0),
    ] {
        assert_eq!(value(&after, series) - value(&before, series), moved_by, "{series}:\n{after}");
    }
    let host = registry.host();
    let resolved = format!("pinion_digest_resolutions_total{{registry=\"{host}\",status=\"resolved\"}}");
    assert_eq!(value(&after, &resolved), 2.0, "{after}");
    let requests = format!("pinion_registry_request_duration_seconds_count{{registry=\"{host}\"}}");
    assert!(value(&after, &requests) >= 1.0, "{after}");
    let all = format!("pinion_registry_request_duration_seconds_bucket{{registry=\"{host}\",le=\"+Inf\"}}");
    assert_eq!(value(&after, &all), value(&after, &requests), "{after}");
    assert_eq!(value(&after, "pinion_devices{state=\"online\"}"), 1.0, "{after}");
    assert_eq!(value(&after, "pinion_devices{state=\"never_seen\"}"), 1.0, "{after}");
    assert_eq!(value(&after, "pinion_rollouts{state=\"running\"}"), 0.0, "{after}");
    assert!(after.contains("# TYPE pinion_rollouts gauge\n"), "{after}");

    // The admin token scrapes too.
    promtool_check(&scrape(&server, Some(server.admin_token())));
}

#[test]
fn without_the_token_or_with_a_wrong_one_a_scrape_is_refused_401() {
    let server = Server::start(&["--metrics-token", METRICS_TOKEN]);
    let (status, headers, body) = get(&server, "/metrics", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(headers.contains_key("www-authenticate"), "{headers:?}");
    assert!(body.contains("unauthorized"), "{body}");
    let (status, _, body) = get(&server, "/metrics", &[("Authorization", "Bearer not-the-metrics-token-at-all")]);
    assert_eq!(status, 401, "{body}");
    // A device's key is not a metrics token.
    register(&server, "some-dev", "some-device-key-0123456789abcdef0123456");
    let (status, _, body) =
        get(&server, "/metrics", &[("Authorization", "Bearer some-device-key-0123456789abcdef0123456")]);
    assert_eq!(status, 401, "{body}");
}

#[test]
fn with_neither_a_token_nor_an_address_list_metrics_are_off() {
    let server = Server::start(&[]);
    let (status, _, body) = get(&server, "/metrics", &[]);
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = get(&server, "/metrics", &[("Authorization", &format!("Bearer {}", server.admin_token()))]);
    assert_eq!(status, 404, "off means off, for the admin too: {body}");
}

#[test]
fn an_allowed_address_scrapes_without_a_token_and_others_may_not() {
    let server = Server::start(&["--metrics-allow", "10.0.0.0/8,127.0.0.1"]);
    promtool_check(&scrape(&server, None));
    let (status, _, body) =
        get(&server, "/metrics", &[("Authorization", "Bearer a-wrong-token-from-an-allowed-address")]);
    assert_eq!(status, 401, "a wrong token is wrong from anywhere: {body}");

    let elsewhere = Server::start(&["--metrics-allow", "10.0.0.0/8"]);
    let (status, _, body) = get(&elsewhere, "/metrics", &[]);
    assert_eq!(status, 403, "{body}");
    let both = Server::start(&["--metrics-allow", "10.0.0.0/8", "--metrics-token", METRICS_TOKEN]);
    let (status, _, body) = get(&both, "/metrics", &[]);
    assert_eq!(status, 401, "{body}");
    promtool_check(&scrape(&both, Some(METRICS_TOKEN)));
}

#[test]
fn wrong_metrics_tokens_count_against_the_address_like_any_refused_credential() {
    let server = Server::start(&["--metrics-token", METRICS_TOKEN, "--auth-failures-per-minute", "2"]);
    let statuses: Vec<u16> = (0..4)
        .map(|i| get(&server, "/metrics", &[("Authorization", &format!("Bearer wrong-metrics-token-{i:04}"))]).0)
        .collect();
    assert_eq!(&statuses[..2], [401, 401], "{statuses:?}");
    assert_eq!(statuses[3], 429, "past the limit the address is refused before its token is looked at: {statuses:?}");
}
