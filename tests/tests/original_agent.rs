//! The platform's original TypeScript agent against `pinion-server`, replayed request by
//! request as `shared/docs/original-agent-protocol.md` gives them (its headers, gzip,
//! NDJSON), each answer checked against what that agent reads: registration (`id`,
//! `mqtt`, 200), the key exchange in each of its statuses, a crash between the two
//! phases, log uploads, and reports that send their facts only when they change.

use flate2::write::GzEncoder;
use pinion_tests::util::random_hex;
use pinion_tests::{ApiReply, Server};
use serde_json::{json, Value};
use std::io::Write;

/// The original agent's registration body (`device-manager.ts`): it makes uuid and key.
fn registration(uuid: &str, key: &str) -> Value {
    json!({"uuid": uuid, "deviceName": format!("gw-{uuid}"), "deviceType": "raspberrypi4-64",
           "deviceApiKey": key, "applicationId": 1001, "macAddress": "dc:a6:32:01:02:03",
           "osVersion": "Raspbian GNU/Linux 11", "agentVersion": "1.0.0"})
}

fn register(server: &Server, provisioning_key: &str, uuid: &str, key: &str) -> ApiReply {
    server.request("POST", "/api/v1/device/register", Some(&registration(uuid, key)), Some(provisioning_key))
}

fn key_exchange(server: &Server, uuid: &str, header_key: Option<&str>, body: Value) -> ApiReply {
    server.request("POST", &format!("/api/v1/device/{uuid}/key-exchange"), Some(&body), header_key)
}

/// `GET /device/{uuid}/state` as `api-binder.ts` sends it.
fn poll(server: &Server, uuid: &str, key: &str) -> ApiReply {
    server.send_bytes("GET", &format!("/api/v1/device/{uuid}/state"), &[("X-Device-API-Key", key)], Vec::new())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// `PATCH /device/state`, gzip, as the original agent reports.
fn report(server: &Server, key: &str, body: &Value) -> ApiReply {
    let headers = [("X-Device-API-Key", key), ("Content-Type", "application/json"), ("Content-Encoding", "gzip")];
    server.send_bytes("PATCH", "/api/v1/device/state", &headers, gzip(body.to_string().as_bytes()))
}

/// `POST /device/{uuid}/logs` as `cloud-backend.ts` sends it: NDJSON, gzip.
fn send_logs(server: &Server, uuid: &str, key: &str, lines: &[Value]) -> ApiReply {
    let ndjson: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let headers = [("X-Device-API-Key", key), ("Content-Type", "application/x-ndjson"), ("Content-Encoding", "gzip")];
    server.send_bytes("POST", &format!("/api/v1/device/{uuid}/logs"), &headers, gzip(ndjson.as_bytes()))
}

fn admin_get(server: &Server, path: &str) -> Value {
    let reply = server.request("GET", path, None, Some(server.admin_token()));
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    reply.json()
}

fn log_line(message: &str, service: &str, level: &str, timestamp: i64) -> Value {
    json!({"message": message, "timestamp": timestamp, "level": level,
           "source": {"type": "container", "name": service}, "serviceId": 1, "serviceName": service,
           "containerId": "4f2c", "isStdErr": level == "error", "isSystem": false})
}

#[test]
fn registration_answers_what_the_original_agent_reads() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let (uuid, key) = (random_hex(16), random_hex(32));
    let reply = register(&server, &provisioning_key, &uuid, &key);
    assert_eq!(reply.status, 200, "the original server answers 200: {}", reply.body);
    let answer = reply.json();
    // `response.id.toString()`: a number; `response.mqtt.username`: an object to read from.
    let id = answer["id"].as_u64().unwrap_or_else(|| panic!("a numeric id: {answer}"));
    assert_eq!(answer["uuid"], uuid.as_str());
    assert_eq!(answer["deviceName"], format!("gw-{uuid}"));
    assert_eq!(answer["deviceType"], "raspberrypi4-64");
    assert_eq!(answer["applicationId"], 1001);
    assert!(answer["createdAt"].is_string(), "{answer}");
    assert!(answer["mqtt"].is_object(), "mqtt must be an object: {answer}");
    for field in ["username", "password", "broker"] {
        assert!(answer["mqtt"][field].is_null(), "no broker, so no {field}: {answer}");
    }

    let again = register(&server, &provisioning_key, &uuid, &key);
    assert_eq!(again.status, 200, "the same registration again: {}", again.body);
    assert_eq!(again.json()["id"], id, "the same device number");
    let other = register(&server, &provisioning_key, &random_hex(16), &random_hex(32)).json();
    assert_ne!(other["id"], id, "each device has its own number");

    let device = admin_get(&server, &format!("/api/v1/devices/{uuid}"));
    assert_eq!(device["id"], id);
    let current = admin_get(&server, &format!("/api/v1/devices/{uuid}/current-state"));
    assert_eq!(current["system_info"]["mac_address"], "dc:a6:32:01:02:03", "{current}");
    assert_eq!(current["system_info"]["os_version"], "Raspbian GNU/Linux 11");
}

#[test]
fn a_crash_between_the_phases_is_recovered_by_registering_again() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let uuid = random_hex(16);
    let (lost_key, new_key) = (random_hex(32), random_hex(32));
    let first = register(&server, &provisioning_key, &uuid, &lost_key);
    assert_eq!(first.status, 200, "{}", first.body);
    // The agent died before storing its key; on restart it makes a new one.
    let second = register(&server, &provisioning_key, &uuid, &new_key);
    assert_eq!(second.status, 200, "not complete yet, so it may register again: {}", second.body);
    assert_eq!(second.json()["id"], first.json()["id"]);
    assert_eq!(poll(&server, &uuid, &lost_key).status, 401, "the lost key no longer works");

    let exchanged = key_exchange(&server, &uuid, Some(&new_key), json!({"uuid": uuid, "deviceApiKey": new_key}));
    assert_eq!(exchanged.status, 200, "{}", exchanged.body);
    // Complete now: the uuid is taken.
    let squatter = register(&server, &provisioning_key, &uuid, &random_hex(32));
    assert_eq!(squatter.status, 409, "{}", squatter.body);
    assert_eq!(squatter.json()["error"], "conflict");
    assert_eq!(register(&server, &provisioning_key, &uuid, &new_key).status, 200, "its own key stays idempotent");
    assert_eq!(poll(&server, &uuid, &new_key).status, 200);
}

#[test]
fn a_first_poll_completes_a_registration_as_a_key_exchange_does() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let (uuid, key) = (random_hex(16), random_hex(32));
    assert_eq!(register(&server, &provisioning_key, &uuid, &key).status, 200);
    assert_eq!(poll(&server, &uuid, &key).status, 200);
    assert_eq!(register(&server, &provisioning_key, &uuid, &random_hex(32)).status, 409);
}

#[test]
fn the_key_exchange_answers_with_the_original_statuses() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let (uuid, key) = (random_hex(16), random_hex(32));
    assert_eq!(register(&server, &provisioning_key, &uuid, &key).status, 200);
    let body = json!({"uuid": uuid, "deviceApiKey": key});

    let cases = [
        ("no key in the header", None, body.clone(), &uuid, 400),
        ("no key in the body", Some(key.as_str()), json!({"uuid": uuid}), &uuid, 400),
        (
            "header and body differ",
            Some(key.as_str()),
            json!({"uuid": uuid, "deviceApiKey": random_hex(32)}),
            &uuid,
            401,
        ),
        ("not the device's key", None, json!({}), &uuid, 401),
        ("an unknown device", Some(key.as_str()), json!({"deviceApiKey": key}), &"no-such-device".to_string(), 404),
    ];
    for (label, header, body, target, status) in cases {
        let reply = if label == "not the device's key" {
            let other = random_hex(32);
            key_exchange(&server, target, Some(&other), json!({"uuid": uuid, "deviceApiKey": other}))
        } else {
            key_exchange(&server, target, header, body)
        };
        assert_eq!(reply.status, status, "{label}: {}", reply.body);
        assert!(reply.json()["error"].is_string() && reply.json()["message"].is_string(), "{label}: {}", reply.body);
    }

    let reply = key_exchange(&server, &uuid, Some(&key), body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    let registered = admin_get(&server, &format!("/api/v1/devices/{uuid}"));
    assert_eq!(
        answer,
        json!({"status": "ok", "message": "Key exchange successful",
               "device": {"id": registered["id"], "uuid": uuid, "deviceName": format!("gw-{uuid}")}})
    );
}

#[test]
fn unknown_devices_in_key_exchanges_count_against_the_address() {
    let server = Server::start(&["--auth-failures-per-minute", "3"]);
    let key = random_hex(32);
    let statuses: Vec<u16> = (0..5)
        .map(|_| key_exchange(&server, &random_hex(16), Some(&key), json!({"deviceApiKey": key})).status)
        .collect();
    assert_eq!(statuses[..3], [404, 404, 404]);
    assert_eq!(statuses[3..], [429, 429], "enumerating uuids is rate limited: {statuses:?}");
}

#[test]
fn gzip_ndjson_logs_are_kept_and_read_back_newest_first() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let (uuid, key) = (random_hex(16), random_hex(32));
    assert_eq!(register(&server, &provisioning_key, &uuid, &key).status, 200);
    let lines = [
        log_line("web 1", "web", "info", 1_765_000_000_001),
        log_line("db 1", "db", "warn", 1_765_000_000_002),
        log_line("web 2: panic", "web", "error", 1_765_000_000_003),
        json!({"message": "agent: reconciled", "level": "debug", "source": {"type": "manager", "name": "agent"},
               "isSystem": true}),
    ];
    let reply = send_logs(&server, &uuid, &key, &lines);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({"status": "ok", "received": 4}));

    let all = admin_get(&server, &format!("/api/v1/devices/{uuid}/logs"));
    assert_eq!((all["count"].clone(), all["total"].clone()), (json!(4), json!(4)));
    assert_eq!(all["logs"][0]["message"], "agent: reconciled", "newest first");
    let web = admin_get(&server, &format!("/api/v1/devices/{uuid}/logs?service=web&limit=1"));
    assert_eq!((web["count"].clone(), web["total"].clone()), (json!(1), json!(2)));
    let newest = &web["logs"][0];
    assert_eq!(newest["message"], "web 2: panic");
    assert_eq!(newest["level"], "error");
    assert_eq!(newest["isStdErr"], true);
    assert_eq!(newest["timestamp"], 1_765_000_000_003i64);
    assert_eq!(newest["source"], json!({"type": "container", "name": "web"}));
    assert!(newest["receivedAt"].is_string());
    let older = admin_get(&server, &format!("/api/v1/devices/{uuid}/logs?service=web&limit=1&offset=1"));
    assert_eq!(older["logs"][0]["message"], "web 1");
}

#[test]
fn a_report_without_metrics_keeps_what_the_last_one_said() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let (uuid, key) = (random_hex(16), random_hex(32));
    assert_eq!(register(&server, &provisioning_key, &uuid, &key).status, 200);
    let apps = json!({"1001": {"services": {"1": {"status": "Running"}}}});
    let full = json!({uuid.clone(): {"apps": apps, "config": {}, "is_online": true,
        "os_version": "Raspbian GNU/Linux 11", "agent_version": "1.0.0", "local_ip": "192.0.2.10",
        "cpu_usage": 12.5, "memory_usage": 300, "memory_total": 3906, "storage_usage": 5, "storage_total": 29,
        "temperature": 51.2, "uptime": 86400, "top_processes": [{"pid": 1, "name": "node", "cpu": 3.1, "mem": 2.0}]}});
    assert_eq!(report(&server, &key, &full).status, 200);
    // The next report, minutes later: only what changed.
    let sparse = json!({uuid.clone(): {"apps": {"1001": {"services": {"1": {"status": "Exited"}}}}, "config": {},
                                       "is_online": true}});
    assert_eq!(report(&server, &key, &sparse).status, 200);

    let current = admin_get(&server, &format!("/api/v1/devices/{uuid}/current-state"));
    assert_eq!(current["apps"]["1001"]["services"]["1"]["status"], "Exited", "apps are the latest report's");
    for (field, value) in [
        ("os_version", json!("Raspbian GNU/Linux 11")),
        ("agent_version", json!("1.0.0")),
        ("local_ip", json!("192.0.2.10")),
        ("cpu_usage", json!(12.5)),
        ("temperature", json!(51.2)),
    ] {
        assert_eq!(current[field], value, "{field} keeps its last known value: {current}");
        assert_eq!(current["system_info"][field], value, "system_info.{field}: {current}");
    }
    let metrics = admin_get(&server, &format!("/api/v1/devices/{uuid}/metrics?limit=10"));
    assert_eq!(metrics["count"], 1, "one report carried metrics: {metrics}");
    let sample = &metrics["metrics"][0];
    assert_eq!((sample["cpu_usage"].clone(), sample["uptime"].clone()), (json!(12.5), json!(86400)));
    assert_eq!(sample["top_processes"][0]["name"], "node");
    assert!(sample["recorded_at"].is_string());
    assert!(sample.get("os_version").is_none(), "system facts are not metrics: {sample}");
}

#[test]
fn bad_log_uploads_are_refused_whole_and_lose_nothing_else() {
    let server = Server::start(&["--max-body", "65536"]);
    let provisioning_key = server.provisioning_key();
    let (uuid, key) = (random_hex(16), random_hex(32));
    let (other, other_key) = (random_hex(16), random_hex(32));
    assert_eq!(register(&server, &provisioning_key, &uuid, &key).status, 200);
    assert_eq!(register(&server, &provisioning_key, &other, &other_key).status, 200);
    assert_eq!(send_logs(&server, &uuid, &key, &[log_line("kept", "web", "info", 1)]).status, 200);
    let total = || admin_get(&server, &format!("/api/v1/devices/{uuid}/logs"))["total"].clone();

    let malformed = b"{\"message\":\"fine\"}\n{\"message\": unquoted}\n".to_vec();
    let headers = [("X-Device-API-Key", key.as_str()), ("Content-Type", "application/x-ndjson")];
    let path = format!("/api/v1/device/{uuid}/logs");
    let reply = server.send_bytes("POST", &path, &headers, malformed);
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.json()["message"].as_str().unwrap().contains("log line 2"), "{}", reply.body);

    let too_many: String = (0..1001).map(|n| format!("{{\"message\":\"{n}\"}}\n")).collect();
    let reply = server.send_bytes("POST", &path, &headers, too_many.into_bytes());
    assert_eq!((reply.status, reply.json()["error"].clone()), (413, json!("payload_too_large")), "{}", reply.body);

    let oversized = format!("{{\"message\":\"{}\"}}\n", "x".repeat(70_000));
    let reply = server.send_bytes("POST", &path, &headers, oversized.into_bytes());
    assert_eq!(reply.status, 413, "{}", reply.body);
    // The same, gzipped small: the limit holds after decompression too.
    let bomb = format!("{{\"message\":\"{}\"}}\n", "x".repeat(10_000_000));
    let gz_headers = [headers[0], headers[1], ("Content-Encoding", "gzip")];
    let reply = server.send_bytes("POST", &path, &gz_headers, gzip(bomb.as_bytes()));
    assert_eq!(reply.status, 413, "{}", reply.body);

    // Another device's key cannot write into this device's log.
    let other_headers = [("X-Device-API-Key", other_key.as_str())];
    let reply = server.send_bytes("POST", &path, &other_headers, b"{\"message\":\"forged\"}\n".to_vec());
    assert_eq!(reply.status, 403, "{}", reply.body);
    let reply = server.send_bytes("POST", &path, &[], b"{\"message\":\"anonymous\"}\n".to_vec());
    assert_eq!(reply.status, 401, "{}", reply.body);

    assert_eq!(total(), 1, "nothing of a refused upload was stored");
    assert_eq!(admin_get(&server, &format!("/api/v1/devices/{uuid}/logs"))["logs"][0]["message"], "kept");
    assert_eq!(admin_get(&server, &format!("/api/v1/devices/{other}/logs"))["total"], 0);
    for bad in ["limit=0", "limit=100000", "offset=-1", "limit=ten"] {
        let reply =
            server.request("GET", &format!("/api/v1/devices/{uuid}/logs?{bad}"), None, Some(server.admin_token()));
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    let reply = server.request("GET", "/api/v1/devices/no-such-device/logs", None, Some(server.admin_token()));
    assert_eq!(reply.status, 404, "{}", reply.body);
}

#[test]
fn a_metrics_flood_is_bounded_and_loses_no_report() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let (uuid, key) = (random_hex(16), random_hex(32));
    assert_eq!(register(&server, &provisioning_key, &uuid, &key).status, 200);
    let started = std::time::Instant::now();
    for n in 0..200 {
        let body = json!({uuid.clone(): {"apps": {}, "config": {}, "cpu_usage": n,
            "top_processes": (0..100).map(|pid| json!({"pid": pid, "name": "p"})).collect::<Vec<_>>()}});
        let reply = report(&server, &key, &body);
        assert_eq!(reply.status, 200, "{}", reply.body);
        if n == 0 {
            assert!(reply.json()["warnings"][0].as_str().unwrap().contains("top_processes"), "{}", reply.body);
        }
    }
    let metrics = admin_get(&server, &format!("/api/v1/devices/{uuid}/metrics?limit=2016"));
    let count = metrics["count"].as_u64().unwrap();
    // One sample per 10 s at most (`MIN_METRICS_INTERVAL_SECS`), however fast they come.
    let most = started.elapsed().as_secs() / 10 + 1;
    assert!(
        (1..=most).contains(&count),
        "200 reports in {:?} are at most {most} samples, not {count}",
        started.elapsed()
    );
    assert_eq!(metrics["metrics"][0]["top_processes"].as_array().unwrap().len(), 20);
    let current = admin_get(&server, &format!("/api/v1/devices/{uuid}/current-state"));
    assert_eq!(current["cpu_usage"], 199, "the last report is always kept: {current}");
}

#[test]
fn each_fact_keeps_the_last_value_sent_and_facts_out_of_shape_are_not_kept() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let (uuid, key) = (random_hex(16), random_hex(32));
    assert_eq!(register(&server, &provisioning_key, &uuid, &key).status, 200);
    // Found by attack: facts were merged (RFC 7396), so objects under a fact piled up
    // report after report (40 reports of 1 MB made a 40 MB row) and null deleted a fact.
    for n in 0..5 {
        let body = json!({uuid.clone(): {"apps": {}, "config": {}, "os_version": {format!("k{n}"): "x".repeat(100_000)},
                                         "agent_version": format!("1.0.{n}"), "local_ip": "y".repeat(100_000)}});
        let reply = report(&server, &key, &body);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["warnings"].as_array().map(Vec::len), Some(2), "{}", reply.body);
    }
    let body = json!({uuid.clone(): {"apps": {}, "config": {}, "temperature": null}});
    assert_eq!(report(&server, &key, &body).status, 200);
    let current = admin_get(&server, &format!("/api/v1/devices/{uuid}/current-state"));
    let info = &current["system_info"];
    assert_eq!(info["agent_version"], "1.0.4", "the last value sent: {info}");
    assert_eq!(info["os_version"], "Raspbian GNU/Linux 11", "the registration's, not an object: {info}");
    assert!(info.get("local_ip").is_none(), "a 100,000-character address is not kept: {info}");
    assert!(info.get("temperature").is_some_and(Value::is_null), "null is a value, not a deletion: {info}");
    assert!(info.to_string().len() < 4096, "bounded: {} bytes", info.to_string().len());
}

#[test]
fn a_first_poll_racing_a_re_registration_never_completes_the_unused_new_key() {
    // Found by attack: the poll checked key 1, a re-registration swapped in key 2, and the
    // poll then marked the registration complete, under key 2, which nobody had used.
    let server = Server::start(&["--auth-failures-per-minute", "0", "--registrations-per-minute", "0"]);
    let provisioning_key = server.provisioning_key();
    for attempt in 0..100 {
        let (uuid, first, second) = (random_hex(16), random_hex(32), random_hex(32));
        assert_eq!(register(&server, &provisioning_key, &uuid, &first).status, 200);
        let (polled, registered) = std::thread::scope(|s| {
            let polled = s.spawn(|| poll(&server, &uuid, &first).status);
            let registered = s.spawn(|| register(&server, &provisioning_key, &uuid, &second).status);
            (polled.join().unwrap(), registered.join().unwrap())
        });
        match (polled, registered) {
            // The poll completed the registration under key 1 first: key 2 is refused.
            (200, 409) => {}
            // Key 2 replaced key 1 first: the poll is refused, and the registration stays
            // open (key 2 has not been used), so another one is still accepted.
            (401, 200) => {
                let third = register(&server, &provisioning_key, &uuid, &random_hex(32));
                assert_eq!(third.status, 200, "attempt {attempt}: an unused key was marked complete: {}", third.body);
            }
            other => panic!("attempt {attempt}: poll and registration answered {other:?}"),
        }
    }
}

#[test]
fn a_gzip_body_is_read_whole_or_refused_and_other_codings_are_415() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let (uuid, key) = (random_hex(16), random_hex(32));
    assert_eq!(register(&server, &provisioning_key, &uuid, &key).status, 200);
    let path = format!("/api/v1/device/{uuid}/logs");
    let headers = [("X-Device-API-Key", key.as_str()), ("Content-Encoding", "gzip")];
    // Found by attack: only the first gzip member was read; the rest was dropped unsaid.
    let mut two_members = gzip(b"{\"message\":\"first\"}\n");
    two_members.extend(gzip(b"{\"message\":\"second\"}\n"));
    let reply = server.send_bytes("POST", &path, &headers, two_members);
    assert_eq!((reply.status, reply.json()["received"].clone()), (200, json!(2)), "{}", reply.body);

    let mut trailing = gzip(b"{\"message\":\"third\"}\n");
    trailing.extend_from_slice(b"{\"message\":\"not gzip\"}\n");
    let reply = server.send_bytes("POST", &path, &headers, trailing);
    assert_eq!(reply.status, 400, "bytes after the gzip stream: {}", reply.body);

    let brotli = [("X-Device-API-Key", key.as_str()), ("Content-Encoding", "br")];
    let reply = server.send_bytes("POST", &path, &brotli, b"{\"message\":\"m\"}\n".to_vec());
    assert_eq!((reply.status, reply.json()["error"].clone()), (415, json!("unsupported_media_type")), "{}", reply.body);
    assert_eq!(admin_get(&server, &format!("/api/v1/devices/{uuid}/logs"))["total"], 2, "only the whole upload");
}
