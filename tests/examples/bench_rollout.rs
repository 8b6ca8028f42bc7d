//! Benchmark, not a test: a staged rollout across 10,000 simulated devices. Starts a
//! release `pinion-server` (`PINION_SERVER_BIN`, as `scripts/bench/rollout` builds it)
//! with `--rollout-interval 1`, makes the fleet `bench`, registers DEVICES devices with a
//! provisioning key of that fleet, sets release 1 on the fleet, then rolls release 2 out
//! in 4 waves (`[{"devices":1},{"percent":10},{"percent":50},{"percent":100}]`, bakeTime
//! 0s) and lets the server's rollout driver carry it out. A few client threads play every
//! device round-robin: each device polls with its ETag every POLL seconds and, when a poll
//! brings a new release, reports it at once as running with probation passed (as
//! `agent/src/report.rs` words it: per service `imageName`, `status`, `probation`).
//!
//! Prints: registration and fleet-release times; the rollout's creation; each wave's start
//! (the server's `wave N of 4 started` log line, stamped as it is read from its stderr,
//! and the `wave-started` event's `at`, to the second) and how long after it every device
//! of the wave had release 2; the server's CPU (`/proc/PID/stat`) and its rollout
//! thread's (`/proc/PID/task/TID/stat`, thread `rollouts`) while the fleet only polls and
//! during the rollout, second by second; VmRSS/VmHWM. Then the cost of starting each wave
//! on its own: a second rollout (release 3, bakeTime 1h) moved on by `POST …/promote`,
//! each request timed. `BENCH_ROLLOUT_HOLD=SECONDS` keeps the server up at the end (for
//! `perf record -p PID` or gdb).
//!
//! Run: `scripts/bench/rollout [DEVICES] [POLL] [THREADS]` (default 10000 10 4), or
//! `PINION_SERVER_BIN=… cargo run --release -p pinion-tests --example bench_rollout -- 10000 10 4`

use pinion_tests::server::server_binary;
use pinion_tests::util::{free_port, TempDir};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FLEET: &str = "bench";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
const APPS: usize = 5;
const SERVICES_PER_APP: usize = 2;
const REGISTRATION_THREADS: usize = 8;
/// Releases 1 (set on the fleet), 2 (rolled out by the driver), 3 (promoted by hand).
const RELEASES: usize = 3;
const WAVES: &str = r#"[{"devices": 1}, {"percent": 10}, {"percent": 50}, {"percent": 100}]"#;

fn digest(release: usize, n: usize) -> String {
    format!("sha256:{:064x}", 0x5eed_0000_u64 + (release as u64) * 0x1_0000 + n as u64)
}

fn image(release: usize, app: usize, service: usize) -> String {
    format!(
        "registry.example.com:5000/fleet/app{app}-svc{service}@{}",
        digest(release, app * SERVICES_PER_APP + service)
    )
}

/// The release's target state: 5 apps of 2 services, every image pinned (no registry asked).
fn release_state(release: usize) -> Value {
    let mut apps = serde_json::Map::new();
    for a in 0..APPS {
        let app_id = 100 + a;
        let services: Vec<Value> = (0..SERVICES_PER_APP)
            .map(|s| {
                let n = a * SERVICES_PER_APP + s;
                let image = image(release, a, s);
                json!({
                    "serviceId": n + 1,
                    "serviceName": format!("svc{s}"),
                    "imageName": image,
                    "config": {
                        "image": image,
                        "ports": [format!("{}:80", 8000 + n)],
                        "environment": {"LOG_LEVEL": "info", "SITE": "plant-7", "SERVICE_INDEX": n.to_string()},
                        "volumes": [format!("data-{a}-{s}:/var/lib/app")],
                        "restart": "always",
                        "labels": {"com.example.team": "edge"},
                        "networkMode": "bridge"
                    }
                })
            })
            .collect();
        apps.insert(app_id.to_string(), json!({"appId": app_id, "appName": format!("app{a}"), "services": services}));
    }
    json!({"apps": apps, "config": {"SUPERVISOR_POLL_INTERVAL": "60000"}})
}

/// What our agent reports once every service of `release` runs and passed probation.
fn report(uuid: &str, release: usize) -> String {
    let mut apps = serde_json::Map::new();
    for a in 0..APPS {
        let mut services = serde_json::Map::new();
        for s in 0..SERVICES_PER_APP {
            let n = a * SERVICES_PER_APP + s;
            services.insert(
                format!("svc{s}"),
                json!({"serviceId": n + 1, "imageName": image(release, a, s),
                       "containerId": format!("{:064x}", release * 0x100 + n),
                       "status": "running", "probation": "passed"}),
            );
        }
        apps.insert((100 + a).to_string(), json!({"services": services}));
    }
    json!({uuid: {"apps": apps, "config": {}, "agent_version": "0.1.0",
                  "os_version": "Debian GNU/Linux 12 (bookworm)", "local_ip": "192.168.1.20"}})
    .to_string()
}

fn uuid_of(i: usize) -> String {
    format!("bench-{i:05}")
}

fn key_of(i: usize) -> String {
    format!("{:064x}", 0xbe7c_0000_0000_u64 + i as u64)
}

fn new_agent() -> ureq::Agent {
    pinion_tests::util::http_agent(Duration::from_secs(60))
}

struct Reply {
    status: u16,
    etag: String,
    body: String,
}

fn send(agent: &ureq::Agent, method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    if body.is_some() {
        builder = builder.header("Content-Type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(body.unwrap_or("").as_bytes().to_vec()).expect("building a request");
    let mut reply = agent.run(request).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let etag = reply.headers().get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = reply.body_mut().read_to_string().unwrap_or_default();
    Reply { status: reply.status().as_u16(), etag, body }
}

/// The server as a child process; its stderr read line by line, each line of a rollout or
/// wave stamped with the moment it was read.
struct ServerProcess {
    child: Child,
    pid: u32,
    url: String,
    stamped: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: TempDir,
}

impl ServerProcess {
    fn start() -> ServerProcess {
        let binary = server_binary();
        let dir = TempDir::new("bench-rollout");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(&binary)
            .args(["serve", "--listen", &listen, "--db"])
            .arg(dir.join("server.db"))
            .args(["--refresh-interval", "0", "--rollout-interval", "1", "--registrations-per-minute", "0"])
            .env("PINION_ADMIN_TOKEN", ADMIN_TOKEN)
            // The server's default level: every event of the rollout is logged, as in production.
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("stderr");
        let stamped = Arc::new(Mutex::new(Vec::new()));
        let log_path = dir.join("server.log");
        {
            let stamped = Arc::clone(&stamped);
            std::thread::spawn(move || {
                let mut log = std::fs::File::create(log_path).expect("creating the server log");
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    let _ = writeln!(log, "{line}");
                    let kept = line.contains("started") || line.contains("succeeded") || line.contains("created");
                    if kept && !line.contains("is healthy") {
                        stamped.lock().expect("log lines").push((at, line));
                    }
                }
            });
        }
        let url = format!("http://{listen}");
        let agent = new_agent();
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.get(format!("{url}/api/v1/health")).call().is_err() {
            if Instant::now() > deadline {
                panic!("pinion-server did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = STARTED.set((child.id(), dir.path().to_path_buf()));
        ServerProcess { pid: child.id(), child, url, stamped, _dir: dir }
    }

    /// The first stamped line containing `needle`, and when it was read.
    fn line_with(&self, needle: &str) -> Option<(Instant, String)> {
        self.stamped.lock().expect("log lines").iter().find(|(_, l)| l.contains(needle)).cloned()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's pid and temp dir, for the panic hook: the release profile aborts on a
/// panic, so no `Drop` would stop the server or remove its files.
static STARTED: std::sync::OnceLock<(u32, std::path::PathBuf)> = std::sync::OnceLock::new();

/// On a panic (a request the benchmark needs failed): the server's last log lines, then
/// the server stopped and its temp dir removed, before the process aborts.
fn stop_server_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if let Some((pid, dir)) = STARTED.get() {
            eprintln!("server log, last lines:\n{}", pinion_tests::util::tail_of_file(&dir.join("server.log"), 6000));
            // SAFETY: kill has no memory preconditions; the pid is our own child's.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            let _ = std::fs::remove_dir_all(dir);
        }
    }));
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of `/proc/…/stat`, in seconds.
fn cpu_seconds(stat_path: &str) -> f64 {
    let text = std::fs::read_to_string(stat_path).unwrap_or_default();
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (field(14) + field(15)) / clock_ticks_per_second()
}

fn process_cpu(pid: u32) -> f64 {
    cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// The stat path of the server's thread named `name` (`rollouts`).
fn thread_stat(pid: u32, name: &str) -> Option<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim() == name).then(|| task.path().join("stat").display().to_string())
    })
}

/// VmRSS and VmHWM in kB.
fn memory(pid: u32) -> (u64, u64) {
    let (rss, hwm, _) = memory_detail(pid);
    (rss, hwm)
}

/// VmRSS, VmHWM and RssAnon (the heap's share of VmRSS) in kB.
fn memory_detail(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"), kb("RssAnon:"))
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1000.0)
}

/// What the simulated devices have seen and done, shared with the main thread.
struct Fleet {
    count: usize,
    epoch: Instant,
    /// Per release (index 1..=RELEASES) and device: ms after `epoch` (+1) when a poll first
    /// brought that release; 0: not yet.
    first_seen: Vec<Vec<AtomicU64>>,
    /// Per device: ms after `epoch` (+1) when its last report of release 2 was answered.
    reported_two: Vec<AtomicU64>,
    polls: AtomicU64,
    full_answers: AtomicU64,
    reports: AtomicU64,
    errors: AtomicU64,
    /// The most a device's poll was late on its schedule, in ms, since the last reset.
    max_lag_ms: AtomicU64,
    stop: AtomicBool,
}

impl Fleet {
    fn new(count: usize) -> Fleet {
        Fleet {
            count,
            epoch: Instant::now(),
            first_seen: (0..=RELEASES).map(|_| (0..count).map(|_| AtomicU64::new(0)).collect()).collect(),
            reported_two: (0..count).map(|_| AtomicU64::new(0)).collect(),
            polls: AtomicU64::new(0),
            full_answers: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            max_lag_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    fn ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms.saturating_sub(1))
    }

    fn with_release(&self, release: usize) -> usize {
        self.first_seen[release].iter().filter(|t| t.load(Ordering::Relaxed) > 0).count()
    }
}

/// One client thread: devices `first, first + step, …`, each polled every `period`.
fn play_devices(url: &str, fleet: &Fleet, first: usize, step: usize, period: Duration) {
    let agent = new_agent();
    let mut mine: Vec<usize> = (first..fleet.count).step_by(step).collect();
    // Polls in a fixed shuffled order, so that a wave's devices (consecutive uuids) poll
    // spread over the whole interval, as a real fleet's do, not in one stretch of it.
    mine.sort_by_key(|&i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17));
    if mine.is_empty() {
        return;
    }
    let markers: Vec<String> = (0..=RELEASES).map(|r| digest(r, 0)).collect();
    let mut etags: Vec<String> = vec![String::new(); mine.len()];
    let mut running: Vec<usize> = vec![0; mine.len()];
    let keys: Vec<String> = mine.iter().map(|&i| key_of(i)).collect();
    let uuids: Vec<String> = mine.iter().map(|&i| uuid_of(i)).collect();
    let slot = period / mine.len() as u32;
    // Threads start out of phase with each other.
    let start = Instant::now() + slot * first as u32 / step as u32;
    for cycle in 0u32.. {
        for (k, &i) in mine.iter().enumerate() {
            if fleet.stop.load(Ordering::Relaxed) {
                return;
            }
            let due = start + period * cycle + slot * k as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            } else {
                fleet.max_lag_ms.fetch_max((now - due).as_millis() as u64, Ordering::Relaxed);
            }
            let path = format!("{url}/api/v1/device/{}/state", uuids[k]);
            let quoted = format!("\"{}\"", etags[k]);
            let mut headers = vec![("X-Device-API-Key", keys[k].as_str())];
            if !etags[k].is_empty() {
                headers.push(("If-None-Match", quoted.as_str()));
            }
            let reply = send(&agent, "GET", &path, &headers, None);
            fleet.polls.fetch_add(1, Ordering::Relaxed);
            match reply.status {
                304 => continue,
                200 => {}
                _ => {
                    fleet.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            fleet.full_answers.fetch_add(1, Ordering::Relaxed);
            etags[k] = reply.etag.trim_matches('"').to_string();
            let release = (1..=RELEASES).rev().find(|&r| reply.body.contains(&markers[r])).unwrap_or(0);
            if release == 0 || release == running[k] {
                continue;
            }
            let _ = fleet.first_seen[release][i].compare_exchange(0, fleet.ms(), Ordering::Relaxed, Ordering::Relaxed);
            // Pulled, started and through probation at once: the server's side is measured.
            let body = report(&uuids[k], release);
            let answer = send(
                &agent,
                "PATCH",
                &format!("{url}/api/v1/device/state"),
                &[("X-Device-API-Key", &keys[k])],
                Some(&body),
            );
            if answer.status == 200 {
                running[k] = release;
                fleet.reports.fetch_add(1, Ordering::Relaxed);
                if release == 2 {
                    fleet.reported_two[i].store(fleet.ms(), Ordering::Relaxed);
                }
            } else {
                fleet.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn admin(
    agent: &ureq::Agent,
    server: &ServerProcess,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (Reply, Duration) {
    let started = Instant::now();
    let text = body.map(Value::to_string);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let reply = send(agent, method, &format!("{}{path}", server.url), &[("Authorization", &auth)], text.as_deref());
    (reply, started.elapsed())
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("HTTP {} not JSON ({e}): {}", reply.status, reply.body))
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn unix_of_rfc3339(text: &str) -> Option<f64> {
    // 2026-12-07T14:15:58Z: days from the civil date (Howard Hinnant's days_from_civil).
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits until `done` or `limit` passes; true if done.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// What the dashboard asks every few seconds, with every device reporting: the overview,
/// the first page of devices, a filtered page deep in the list, and one device.
fn dashboard_views(agent: &ureq::Agent, server: &ServerProcess, pid: u32) {
    let views = [
        "/api/v1/status/overview".to_string(),
        "/api/v1/status/devices?limit=50".to_string(),
        "/api/v1/status/devices?state=in-sync&name=9&offset=500&limit=50".to_string(),
        format!("/api/v1/status/devices/{}", uuid_of(4242)),
    ];
    println!("dashboard views (10 asks each): median / max ms, answer bytes");
    for path in views {
        let mut took = Vec::new();
        let mut bytes = 0;
        for _ in 0..10 {
            let (reply, spent) = admin(agent, server, "GET", &path, None);
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
            bytes = reply.body.len();
            took.push(spent.as_secs_f64() * 1000.0);
        }
        took.sort_by(f64::total_cmp);
        println!("  {path}: {:.0} / {:.0} ms, {bytes} bytes", percentile(&took, 0.5), percentile(&took, 1.0));
    }
    let (rss, hwm, _) = memory_detail(pid);
    println!("server memory after the dashboard views: VmRSS {} VmHWM {}", mb(rss), mb(hwm));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count: usize = args.first().map_or(10_000, |a| a.parse().expect("DEVICES is a number"));
    let poll: u64 = args.get(1).map_or(10, |a| a.parse().expect("POLL is a number of seconds"));
    let threads: usize = args.get(2).map_or(4, |a| a.parse().expect("THREADS is a number"));
    let period = Duration::from_secs(poll);
    stop_server_on_panic();
    let server = ServerProcess::start();
    let pid = server.pid;
    let agent = new_agent();
    println!(
        "server: {} (pid {pid}), --rollout-interval 1; {count} devices in fleet {FLEET:?}, each polling every {poll} s \
         ({:.0} polls/s), played by {threads} client threads",
        server_binary().display(),
        count as f64 / poll as f64
    );

    // The fleet, and a provisioning key that puts devices in it.
    let (reply, _) = admin(&agent, &server, "POST", "/api/v1/fleets", Some(&json!({"name": FLEET})));
    assert_eq!(reply.status, 201, "{}", reply.body);
    let (reply, _) = admin(&agent, &server, "POST", "/api/v1/provisioning-keys", Some(&json!({"fleet": FLEET})));
    assert_eq!(reply.status, 201, "{}", reply.body);
    let provisioning = format!("Bearer {}", json_of(&reply)["key"].as_str().expect("a provisioning key"));

    let started = Instant::now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..REGISTRATION_THREADS {
            scope.spawn(|| {
                let agent = new_agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let (uuid, key) = (uuid_of(i), key_of(i));
                    let body = json!({"uuid": uuid, "deviceName": uuid, "deviceType": "bench", "deviceApiKey": key})
                        .to_string();
                    let reply = send(
                        &agent,
                        "POST",
                        &format!("{}/api/v1/device/register", server.url),
                        &[("Authorization", &provisioning)],
                        Some(&body),
                    );
                    assert!(matches!(reply.status, 200 | 201), "{}: {}", reply.status, reply.body);
                    // The first poll with its key completes the registration.
                    let path = format!("{}/api/v1/device/{uuid}/state", server.url);
                    let reply = send(&agent, "GET", &path, &[("X-Device-API-Key", &key)], None);
                    assert_eq!(reply.status, 200, "{}", reply.body);
                }
            });
        }
    });
    println!(
        "registered {count} devices into fleet {FLEET} in {:.1} s ({REGISTRATION_THREADS} threads)",
        started.elapsed().as_secs_f64()
    );

    for release in 1..=RELEASES {
        let path = format!("/api/v1/fleets/{FLEET}/releases?note=bench-{release}");
        let (reply, took) = admin(&agent, &server, "POST", &path, Some(&release_state(release)));
        assert_eq!(reply.status, 201, "{}", reply.body);
        assert_eq!(json_of(&reply)["id"], release, "{}", reply.body);
        println!(
            "release {release} created in {:.0} ms ({} bytes)",
            took.as_secs_f64() * 1000.0,
            release_state(release).to_string().len()
        );
    }
    let (reply, took) =
        admin(&agent, &server, "PUT", &format!("/api/v1/fleets/{FLEET}/release"), Some(&json!({"release": 1})));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (rss, hwm, anon) = memory_detail(pid);
    println!(
        "PUT /fleets/{FLEET}/release {{\"release\": 1}}: {:.2} s, {} devices given it at once; server VmRSS {} (RssAnon {}) VmHWM {}",
        took.as_secs_f64(),
        json_of(&reply)["devicesUpdated"],
        mb(rss),
        mb(anon),
        mb(hwm)
    );

    // The devices come to life.
    let fleet = Arc::new(Fleet::new(count));
    let mut players = Vec::new();
    for t in 0..threads {
        let (fleet, url) = (Arc::clone(&fleet), server.url.clone());
        players.push(std::thread::spawn(move || play_devices(&url, &fleet, t, threads, period)));
    }
    let all_on_one = wait_until(period * 6, || fleet.with_release(1) == count);
    assert!(all_on_one, "only {} of {count} devices got release 1", fleet.with_release(1));
    // Two more cycles: every device has polled at least twice, so the server knows its interval.
    std::thread::sleep(period * 2);
    println!(
        "every device runs release 1 and reported it ({} reports); polls so far {}, errors {}",
        fleet.reports.load(Ordering::Relaxed),
        fleet.polls.load(Ordering::Relaxed),
        fleet.errors.load(Ordering::Relaxed)
    );

    // The fleet polling, nothing else: the baseline.
    let driver = thread_stat(pid, "rollouts").expect("the server's rollouts thread");
    let baseline = period * 3;
    fleet.max_lag_ms.store(0, Ordering::Relaxed);
    let (cpu0, driver0, polls0, wall0) =
        (process_cpu(pid), cpu_seconds(&driver), fleet.polls.load(Ordering::Relaxed), Instant::now());
    let own0 = cpu_seconds("/proc/self/stat");
    std::thread::sleep(baseline);
    let wall = wall0.elapsed().as_secs_f64();
    let (rss, hwm, anon) = memory_detail(pid);
    println!(
        "baseline, {:.0} s of polls only: {:.0} polls/s (304), server CPU {:.1} % of one core ({:.2} s), rollout thread {:.2} % \
         (idle ticks), client CPU {:.1} %; poll schedule lag at most {} ms; server VmRSS {} (RssAnon {}) VmHWM {}",
        wall,
        (fleet.polls.load(Ordering::Relaxed) - polls0) as f64 / wall,
        (process_cpu(pid) - cpu0) / wall * 100.0,
        process_cpu(pid) - cpu0,
        (cpu_seconds(&driver) - driver0) / wall * 100.0,
        (cpu_seconds("/proc/self/stat") - own0) / wall * 100.0,
        fleet.max_lag_ms.load(Ordering::Relaxed),
        mb(rss),
        mb(anon),
        mb(hwm)
    );

    // The rollout of release 2, carried out by the driver.
    fleet.max_lag_ms.store(0, Ordering::Relaxed);
    let (cpu0, driver0, polls0) = (process_cpu(pid), cpu_seconds(&driver), fleet.polls.load(Ordering::Relaxed));
    let (full0, reports0, own0) = (
        fleet.full_answers.load(Ordering::Relaxed),
        fleet.reports.load(Ordering::Relaxed),
        cpu_seconds("/proc/self/stat"),
    );
    let plan: Value = serde_json::from_str(WAVES).expect("waves");
    let body = json!({"release": 2, "waves": plan, "bakeTime": "0s"});
    let created_unix = unix_now();
    let (reply, took) = admin(&agent, &server, "POST", &format!("/api/v1/fleets/{FLEET}/rollouts"), Some(&body));
    let rollout_started = Instant::now() - took;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let created = json_of(&reply);
    let id = created["id"].as_u64().expect("a rollout id");
    let sizes: Vec<u64> = created["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .map(|w| {
            ["pending", "updating", "healthy", "failed", "deferred"].iter().map(|k| w[*k].as_u64().unwrap_or(0)).sum()
        })
        .collect();
    println!(
        "rollout {id} of release 2 created (and wave 1 started) in {:.0} ms; waves of {sizes:?} devices; bakeTime 0s",
        took.as_secs_f64() * 1000.0
    );

    // Watch it: the server's CPU and its rollout thread's, every second, with the wave.
    let mut samples: Vec<(f64, Option<u64>, String, f64, f64, u64)> = Vec::new();
    let mut last = (Instant::now(), process_cpu(pid), cpu_seconds(&driver));
    let mut list_costs = Vec::new();
    let mut peak_rss = 0;
    let finished = loop {
        std::thread::sleep(Duration::from_secs(1));
        let (reply, took) = admin(&agent, &server, "GET", &format!("/api/v1/fleets/{FLEET}/rollouts?limit=1"), None);
        list_costs.push(took.as_secs_f64() * 1000.0);
        let list = json_of(&reply);
        let rollout = &list["rollouts"][0];
        let state = rollout["state"].as_str().unwrap_or("?").to_string();
        let wave = rollout["currentWave"].as_u64();
        let now = (Instant::now(), process_cpu(pid), cpu_seconds(&driver));
        let span = (now.0 - last.0).as_secs_f64();
        peak_rss = peak_rss.max(memory(pid).0);
        samples.push((
            rollout_started.elapsed().as_secs_f64(),
            wave,
            state.clone(),
            (now.1 - last.1) / span * 100.0,
            (now.2 - last.2) / span * 100.0,
            fleet.with_release(2) as u64,
        ));
        last = now;
        if state != "running" {
            break state;
        }
        if rollout_started.elapsed() > period * 20 + Duration::from_secs(120) {
            break format!("{state} (given up waiting)");
        }
    };
    let rollout_wall = rollout_started.elapsed().as_secs_f64();
    let (rss, hwm, anon) = memory_detail(pid);
    let server_cpu = process_cpu(pid) - cpu0;
    let driver_cpu = cpu_seconds(&driver) - driver0;
    println!("rollout {id}: {finished} {rollout_wall:.1} s after it was created");
    println!("  t (s)  wave  state      server CPU  rollout thread  devices with release 2");
    for (t, wave, state, cpu, driver, with_two) in &samples {
        println!(
            "  {t:5.1}  {:>4}  {state:<9}  {cpu:8.0} %  {driver:12.0} %  {with_two:>8}",
            wave.map_or("-".into(), |w| w.to_string())
        );
    }

    // Each wave: when it started, and when the last of its devices had release 2.
    let (reply, took) = admin(&agent, &server, "GET", &format!("/api/v1/fleets/{FLEET}/rollouts/{id}"), None);
    let detail = json_of(&reply);
    println!(
        "GET …/rollouts/{id} with its {count} device rows: {:.0} ms, {} bytes",
        took.as_secs_f64() * 1000.0,
        reply.body.len()
    );
    let mut waves: Vec<Vec<usize>> = vec![Vec::new(); sizes.len()];
    for device in detail["devices"].as_array().expect("devices") {
        let uuid = device["uuid"].as_str().unwrap_or_default();
        let index: usize = uuid.trim_start_matches("bench-").parse().expect("a bench uuid");
        let wave = device["wave"].as_u64().unwrap_or(1) as usize - 1;
        waves[wave].push(index);
    }
    let deferred: Vec<u64> =
        detail["waves"].as_array().expect("waves").iter().map(|w| w["deferred"].as_u64().unwrap_or(0)).collect();
    // The events' times (whole seconds): when each wave started. Newest first, a page at
    // a time: every device's `device-healthy` came after its wave's start.
    let mut events: Vec<Value> = Vec::new();
    let mut before = String::new();
    loop {
        let path = format!("/api/v1/events?fleet={FLEET}&limit=1000{before}");
        let (reply, _) = admin(&agent, &server, "GET", &path, None);
        let page = json_of(&reply)["events"].as_array().cloned().unwrap_or_default();
        let Some(oldest) = page.last().and_then(|e| e["id"].as_u64()) else { break };
        events.extend(page.into_iter().filter(|e| e["kind"] == "wave-started"));
        before = format!("&before={oldest}");
    }
    let event_at = |kind: &str, text: &str| {
        events
            .iter()
            .find(|e| {
                e["kind"] == kind && e["rollout"] == id && e["message"].as_str().is_some_and(|m| m.contains(text))
            })
            .and_then(|e| e["at"].as_str().and_then(unix_of_rfc3339))
    };
    println!("  wave  devices  deferred  started: log line (s after create)  event `at` (s)  all had release 2 (s after the log line): first / median / last");
    let mut previous_done: Option<Instant> = None;
    for (w, members) in waves.iter().enumerate() {
        let line = server.line_with(&format!("rollout {id}: wave {} of {} started", w + 1, sizes.len()));
        let Some((start, _)) = line else {
            println!("  {:>4}  {:>7}  {:>8}  not started", w + 1, members.len(), deferred[w]);
            continue;
        };
        let mut seen: Vec<f64> = members
            .iter()
            .filter_map(|&i| match fleet.first_seen[2][i].load(Ordering::Relaxed) {
                0 => None,
                ms => Some(fleet.instant(ms).saturating_duration_since(start).as_secs_f64()),
            })
            .collect();
        seen.sort_by(f64::total_cmp);
        let at = event_at("wave-started", &format!("wave {} of", w + 1)).map(|t| t - created_unix.floor());
        let since_previous = previous_done.map(|done| {
            let late = start.saturating_duration_since(done).as_secs_f64();
            format!("; {late:.2} s after the previous wave's last healthy report")
        });
        println!(
            "  {:>4}  {:>7}  {:>8}  {:>10.2}  {:>10}  {:.2} / {:.2} / {:.2}  ({} of {} had it){}",
            w + 1,
            members.len(),
            deferred[w],
            start.saturating_duration_since(rollout_started).as_secs_f64(),
            at.map_or("?".into(), |a| format!("{a:.0}")),
            percentile(&seen, 0.0),
            percentile(&seen, 0.5),
            percentile(&seen, 1.0),
            seen.len(),
            members.len(),
            since_previous.unwrap_or_default()
        );
        previous_done = members
            .iter()
            .filter_map(|&i| match fleet.reported_two[i].load(Ordering::Relaxed) {
                0 => None,
                ms => Some(fleet.instant(ms)),
            })
            .max();
    }
    let polls = fleet.polls.load(Ordering::Relaxed) - polls0;
    println!(
        "during the rollout ({rollout_wall:.1} s): server CPU {server_cpu:.2} s = {:.1} % of one core; rollout thread {driver_cpu:.2} s \
         ({:.0} ms per second); {polls} polls ({:.0}/s), {} full answers, {} reports, errors {}; client CPU {:.1} %; \
         poll schedule lag at most {} ms",
        server_cpu / rollout_wall * 100.0,
        driver_cpu / rollout_wall * 1000.0,
        polls as f64 / rollout_wall,
        fleet.full_answers.load(Ordering::Relaxed) - full0,
        fleet.reports.load(Ordering::Relaxed) - reports0,
        fleet.errors.load(Ordering::Relaxed),
        (cpu_seconds("/proc/self/stat") - own0) / rollout_wall * 100.0,
        fleet.max_lag_ms.load(Ordering::Relaxed)
    );
    list_costs.sort_by(f64::total_cmp);
    println!(
        "server memory: VmRSS {} (RssAnon {}, peak VmRSS sampled {}), VmHWM {}; the watcher's GET …/rollouts?limit=1 (once a second): median {:.1} ms",
        mb(rss),
        mb(anon),
        mb(peak_rss),
        mb(hwm),
        percentile(&list_costs, 0.5)
    );

    // Starting each wave on its own: release 3 with a long bake, moved on by promote.
    let body = json!({"release": 3, "waves": serde_json::from_str::<Value>(WAVES).expect("waves"), "bakeTime": "1h"});
    let driver0 = cpu_seconds(&driver);
    let (reply, took) = admin(&agent, &server, "POST", &format!("/api/v1/fleets/{FLEET}/rollouts"), Some(&body));
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id3 = json_of(&reply)["id"].as_u64().expect("a rollout id");
    println!(
        "promoted by hand: rollout {id3} of release 3 (bakeTime 1h) created with wave 1 in {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    let mut given = 1;
    for wave in 2..=sizes.len() + 1 {
        // The wave before has its release: its reports are in.
        let settled = wait_until(period * 4, || fleet.with_release(3) >= given);
        let (reply, took) =
            admin(&agent, &server, "POST", &format!("/api/v1/fleets/{FLEET}/rollouts/{id3}/promote"), None);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let after = json_of(&reply);
        if wave <= sizes.len() {
            given += sizes[wave - 1] as usize;
            println!(
                "  promote → wave {wave} ({} devices): {:.0} ms{}",
                sizes[wave - 1],
                took.as_secs_f64() * 1000.0,
                if settled { "" } else { " (the wave before had not all polled yet)" }
            );
        } else {
            println!("  promote past the last wave → {}: {:.0} ms", after["state"], took.as_secs_f64() * 1000.0);
        }
    }
    let reached = wait_until(period * 4, || fleet.with_release(3) == count);
    println!(
        "  every device had release 3: {reached} ({} of {count}); rollout thread during this part {:.2} s; errors {}",
        fleet.with_release(3),
        cpu_seconds(&driver) - driver0,
        fleet.errors.load(Ordering::Relaxed)
    );
    let (rss, hwm, anon) = memory_detail(pid);
    println!("server memory at the end: VmRSS {} (RssAnon {}) VmHWM {}", mb(rss), mb(anon), mb(hwm));
    dashboard_views(&agent, &server, pid);
    // BENCH_ROLLOUT_HOLD=SECONDS: the server and its devices stay up that long, for a
    // profiler or debugger to look at (`perf record -p PID`).
    if let Some(hold) = std::env::var("BENCH_ROLLOUT_HOLD").ok().and_then(|s| s.parse().ok()) {
        println!("holding for {hold} s: server pid {pid}");
        std::thread::sleep(Duration::from_secs(hold));
    }
    fleet.stop.store(true, Ordering::Relaxed);
    for player in players {
        let _ = player.join();
    }
}
