//! Benchmark set-up, not a test: provisions a fleet on a running pinion-server through
//! its API, for `scripts/bench/polls` and `scripts/bench/reports` to load with wrk. Each
//! device registers with a provisioning key and its own device key, gets a realistic
//! target state (5 apps, 10 services, pinned digests, so no registry is asked), and is
//! polled once for its ETag. Writes `fleet.txt` (`uuid key etag` per line) and
//! `report.json` (an agent's current-state report with `@UUID@` for the device) to DIR.
//! Run: `cargo run --release -p pinion-tests --example bench_fleet -- URL ADMIN_TOKEN N DIR`

use serde_json::{json, Value};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const THREADS: usize = 8;
const APPS: usize = 5;
const SERVICES_PER_APP: usize = 2;

/// A digest per image, fixed so every run stores the same bodies.
fn digest(n: usize) -> String {
    format!("sha256:{:064x}", 0x5eed_0000_u64 + n as u64)
}

/// 5 apps of 2 services each, with the fields a real deployment sets.
fn target_state() -> Value {
    let mut apps = serde_json::Map::new();
    for a in 0..APPS {
        let app_id = 100 + a;
        let services: Vec<Value> = (0..SERVICES_PER_APP)
            .map(|s| {
                let n = a * SERVICES_PER_APP + s;
                let image = format!("registry.example.com:5000/fleet/app{a}-svc{s}@{}", digest(n));
                json!({
                    "serviceId": n + 1,
                    "serviceName": format!("svc{s}"),
                    "imageName": image,
                    "config": {
                        "image": image,
                        "ports": [format!("{}:80", 8000 + n)],
                        "environment": {"LOG_LEVEL": "info", "SITE": "plant-7", "MQTT_URL": "mqtt://10.0.0.2:1883",
                                        "SERVICE_INDEX": n.to_string()},
                        "volumes": [format!("data-{a}-{s}:/var/lib/app"), "/etc/localtime:/etc/localtime:ro"],
                        "networks": ["backend"],
                        "restart": "always",
                        "labels": {"com.example.team": "edge", "com.example.tier": if s == 0 { "web" } else { "worker" }},
                        "networkMode": "bridge",
                        "command": ["/usr/bin/app", "--config", "/etc/app/config.yml"]
                    }
                })
            })
            .collect();
        apps.insert(app_id.to_string(), json!({"appId": app_id, "appName": format!("app{a}"), "services": services}));
    }
    json!({"apps": apps, "config": {"HOST_CONFIG_hostname": "gateway", "SUPERVISOR_POLL_INTERVAL": "60000"}})
}

/// What an agent reports for that target once it runs.
fn report_template() -> Value {
    let mut apps = serde_json::Map::new();
    for a in 0..APPS {
        let mut services = serde_json::Map::new();
        for s in 0..SERVICES_PER_APP {
            let n = a * SERVICES_PER_APP + s;
            services.insert(
                format!("svc{s}"),
                json!({"serviceId": n + 1, "imageName": format!("registry.example.com:5000/fleet/app{a}-svc{s}@{}", digest(n)),
                       "containerId": format!("{:064x}", 0xc0_0000 + n), "status": "running"}),
            );
        }
        apps.insert((100 + a).to_string(), json!({"services": services}));
    }
    json!({"@UUID@": {"apps": apps, "config": {}, "agent_version": "0.1.0",
                      "os_version": "Debian GNU/Linux 12 (bookworm)", "local_ip": "192.168.1.20"}})
}

fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let mut builder = ureq::http::Request::builder().method(method).uri(url).header("Content-Type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(body.unwrap_or("").as_bytes().to_vec()).expect("building a request");
    let mut reply = agent.run(request).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let etag = reply.headers().get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let text = reply.body_mut().read_to_string().unwrap_or_default();
    (reply.status().as_u16(), etag, text)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, admin, count, dir] = args.as_slice() else {
        eprintln!("usage: bench_fleet URL ADMIN_TOKEN N DIR");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("N is a number");
    let agent: ureq::Agent = pinion_tests::util::http_agent(Duration::from_secs(30));
    let admin_auth = format!("Bearer {admin}");
    let (status, _, body) =
        send(&agent, "POST", &format!("{url}/api/v1/provisioning-keys"), &[("Authorization", &admin_auth)], Some("{}"));
    assert_eq!(status, 201, "{body}");
    let provisioning: Value = serde_json::from_str(&body).expect("a JSON answer");
    let provisioning = format!("Bearer {}", provisioning["key"].as_str().expect("a key"));
    let state = target_state().to_string();

    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let poll_bytes = AtomicUsize::new(0);
    let mut lines: Vec<(usize, String)> = Vec::with_capacity(count);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return mine;
                        }
                        let uuid = format!("bench-{i:05}");
                        let key = format!("{:064x}", 0xbe7c_0000_0000_u64 + i as u64);
                        // Registered first: since issue 12 a uuid the operator made (by
                        // setting its target) takes no general provisioning key.
                        let registration =
                            json!({"uuid": uuid, "deviceName": uuid, "deviceType": "bench", "deviceApiKey": key})
                                .to_string();
                        let path = format!("{url}/api/v1/device/register");
                        let (status, _, body) =
                            send(&agent, "POST", &path, &[("Authorization", &provisioning)], Some(&registration));
                        // 200 since issue 10 (the original agent's registration answer), 201 before.
                        assert!(matches!(status, 200 | 201), "{status}: {body}");
                        let path = format!("{url}/api/v1/devices/{uuid}/target-state");
                        let (status, _, body) =
                            send(&agent, "POST", &path, &[("Authorization", &admin_auth)], Some(&state));
                        assert_eq!(status, 200, "{body}");
                        let path = format!("{url}/api/v1/device/{uuid}/state");
                        let (status, etag, body) = send(&agent, "GET", &path, &[("X-Device-API-Key", &key)], None);
                        assert_eq!(status, 200, "{body}");
                        poll_bytes.store(body.len(), Ordering::Relaxed);
                        mine.push((i, format!("{uuid} {key} {}", etag.trim_matches('"'))));
                    }
                })
            })
            .collect();
        for worker in workers {
            lines.extend(worker.join().expect("a provisioning thread"));
        }
    });
    lines.sort();
    let dir = std::path::Path::new(dir);
    let mut fleet = std::fs::File::create(dir.join("fleet.txt")).expect("creating fleet.txt");
    for (_, line) in &lines {
        writeln!(fleet, "{line}").expect("writing fleet.txt");
    }
    std::fs::write(dir.join("report.json"), report_template().to_string()).expect("writing report.json");
    println!(
        "provisioned {count} devices in {:.1} s ({THREADS} threads); target state set: {} bytes, \
         poll answer (200): {} bytes, report: {} bytes",
        started.elapsed().as_secs_f64(),
        state.len(),
        poll_bytes.load(Ordering::Relaxed),
        report_template().to_string().len() + 5
    );
}
