//! `pinion-server` over real HTTP: what only a socket shows (body limits, gzip reports,
//! the admin token made on first start) and the `image parse` command line.

use flate2::write::GzEncoder;
use pinion_tests::util::{free_port, http_agent, tail_of_file, wait_for};
use pinion_tests::{run_cli, server_binary, Server, TempDir};
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response =
        http_agent(Duration::from_secs(30)).run(request.body(body).unwrap()).expect("the server answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn register(server: &Server, uuid: &str, device_key: &str) {
    let key = server.request("POST", "/api/v1/provisioning-keys", None, Some(server.admin_token())).json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = server.request(
        "POST",
        "/api/v1/device/register",
        Some(&json!({"uuid": uuid, "deviceApiKey": device_key})),
        Some(&key),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn an_oversized_body_is_a_413_json_error_and_the_server_stays_up() {
    let server = Server::start(&["--max-body", "65536"]);
    let url = format!("{}/api/v1/devices/dev-1/target-state", server.url());
    let auth = format!("Bearer {}", server.admin_token());
    let huge = format!("{{\"apps\": {{}}, \"pad\": \"{}\"}}", "x".repeat(200_000)).into_bytes();
    let (status, error) = send("POST", &url, &[("Authorization", &auth), ("Content-Type", "application/json")], huge);
    assert_eq!(status, 413);
    assert_eq!(error["error"], "payload_too_large", "{error}");
    assert!(error["message"].as_str().unwrap().contains("65536"), "{error}");
    let health = server.request("GET", "/api/v1/health", None, None);
    assert_eq!(health.status, 200, "the server stays up");
    let reply = server.request("GET", "/api/v1/devices/dev-1/target-state", None, Some(server.admin_token()));
    assert_eq!(reply.status, 404, "nothing was stored: {}", reply.body);
}

#[test]
fn gzip_reports_are_accepted_and_broken_gzip_is_a_400() {
    let server = Server::start(&[]);
    let key = "device-key-0123456789abcdef0123456789abcdef";
    register(&server, "gz-1", key);
    let report = json!({"gz-1": {"apps": {"1": {"services": {"web": {"status": "running"}}}}, "config": {},
                                 "os_version": "Debian GNU/Linux 12"}});
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(report.to_string().as_bytes()).unwrap();
    let gzipped = encoder.finish().unwrap();
    let url = format!("{}/api/v1/device/state", server.url());
    let headers = [("X-Device-API-Key", key), ("Content-Type", "application/json"), ("Content-Encoding", "gzip")];
    let (status, answer) = send("PATCH", &url, &headers, gzipped);
    assert_eq!(status, 200, "{answer}");
    let current = server.request("GET", "/api/v1/devices/gz-1/current-state", None, Some(server.admin_token()));
    assert_eq!(current.json()["os_version"], "Debian GNU/Linux 12");

    let (status, error) = send("PATCH", &url, &headers, b"not gzip at all".to_vec());
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"], "bad_request");
}

/// `pinion-server serve` on `db` under umask 022 (what a shell or `cargo run` gives), its
/// output (not a terminal) to `log`; `None` if it exits before listening.
fn start_server(
    db: &std::path::Path,
    log_path: &std::path::Path,
    extra: &[&str],
) -> Option<(std::process::Child, u16)> {
    let port = free_port();
    let log_file = std::fs::File::create(log_path).unwrap();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("umask 022; exec \"$@\"")
        .arg("sh")
        .arg(server_binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
        .arg(db)
        .args(extra)
        .env_remove("PINION_ADMIN_TOKEN")
        .env_remove("PINION_WEBHOOK_TOKEN")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    let mut child = command.spawn().unwrap();
    let up = wait_for(Duration::from_secs(30), || {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Some(false);
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
    });
    match up {
        Some(true) => Some((child, port)),
        Some(false) => None,
        None => panic!("server neither started nor exited: {}", tail_of_file(log_path, 4000)),
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn the_admin_token_is_made_once_saved_0600_and_never_written_to_a_log() {
    let dir = TempDir::new("admin-token");
    let db = dir.join("fleet.db");
    let (mut first, port) = start_server(&db, &dir.join("first.log"), &[]).expect("the server starts");
    let token_path = dir.join("fleet.admin-token");
    let token = std::fs::read_to_string(&token_path).expect("the token file exists").trim().to_string();
    assert_eq!(token.len(), 64);
    assert_eq!(mode(&token_path), 0o600);
    let log = tail_of_file(&dir.join("first.log"), 8000);
    assert!(!log.contains(&token), "a token printed where no terminal reads it ends in a journal: {log}");
    assert!(log.contains("fleet.admin-token"), "the log says where the token is: {log}");
    let devices = format!("http://127.0.0.1:{port}/api/v1/devices");
    assert_eq!(send("GET", &devices, &[("Authorization", &format!("Bearer {token}"))], vec![]).0, 200);
    // Under umask 022 the database and its WAL and shared-memory files are still private.
    for file in ["fleet.db", "fleet.db-wal", "fleet.db-shm", "fleet.secret-key"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    first.kill().unwrap();
    first.wait().unwrap();

    let (mut second, port) = start_server(&db, &dir.join("second.log"), &[]).expect("the server starts again");
    let devices = format!("http://127.0.0.1:{port}/api/v1/devices");
    assert_eq!(send("GET", &devices, &[("Authorization", &format!("Bearer {token}"))], vec![]).0, 200);
    assert_eq!(send("GET", &devices, &[("Authorization", "Bearer wrong")], vec![]).0, 401);
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn token_and_key_files_open_to_others_or_too_short_are_refused_at_start_with_the_fix() {
    let dir = TempDir::new("secret-files");
    let db = dir.join("fleet.db");
    let (mut server, _) = start_server(&db, &dir.join("made.log"), &[]).expect("the server starts");
    server.kill().unwrap();
    server.wait().unwrap();
    let token_path = dir.join("fleet.admin-token");
    let key_path = dir.join("fleet.secret-key");

    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(start_server(&db, &dir.join("open.log"), &[]).is_none(), "a world-readable token file is refused");
    let log = tail_of_file(&dir.join("open.log"), 4000);
    assert!(log.contains("chmod 600") && log.contains("fleet.admin-token"), "{log}");
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(start_server(&db, &dir.join("key.log"), &[]).is_none(), "a group-readable key file is refused");
    assert!(tail_of_file(&dir.join("key.log"), 4000).contains("fleet.secret-key"));
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let saved = std::fs::read_to_string(&token_path).unwrap();
    std::fs::write(&token_path, "x\n").unwrap();
    assert!(start_server(&db, &dir.join("short.log"), &[]).is_none(), "a one-character token is refused");
    assert!(tail_of_file(&dir.join("short.log"), 4000).contains("at least 16 characters"));
    std::fs::write(&token_path, saved).unwrap();

    for webhook in ["", "short"] {
        let refused = start_server(&db, &dir.join("webhook.log"), &["--webhook-token", webhook]);
        assert!(refused.is_none(), "webhook token {webhook:?} is refused");
        assert!(tail_of_file(&dir.join("webhook.log"), 4000).contains("webhook token"));
    }
    // And with everything in order it starts.
    let (mut server, _) = start_server(&db, &dir.join("ok.log"), &["--webhook-token", "a-long-enough-webhook-token"])
        .expect("the server starts with private files and a long token");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn image_parse_prints_docker_normalized_fields() {
    let digest = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
    let cases = [
        (
            "nginx",
            json!({"name": "docker.io/library/nginx", "domain": "docker.io", "path": "library/nginx", "tag": null,
                   "digest": null, "familiar": "nginx", "canonical": "docker.io/library/nginx:latest"}),
        ),
        (
            "index.docker.io/user/app:v1",
            json!({"name": "docker.io/user/app", "domain": "docker.io", "path": "user/app", "tag": "v1",
                   "digest": null, "familiar": "user/app", "canonical": "docker.io/user/app:v1"}),
        ),
        (
            &format!("localhost:5000/app:1.0@{digest}"),
            json!({"name": "localhost:5000/app", "domain": "localhost:5000", "path": "app", "tag": "1.0",
                   "digest": digest, "familiar": "localhost:5000/app",
                   "canonical": format!("localhost:5000/app@{digest}")}),
        ),
    ];
    for (input, expected) in cases {
        let out = run_cli(&["image", "parse", input]);
        assert_eq!(out.code, Some(0), "{input}: {}", out.stderr);
        assert_eq!(out.json(), expected, "{input}");
    }
    for bad in ["Nginx", "nginx:", "a".repeat(64).as_str(), "nginx@sha256:abc"] {
        let out = run_cli(&["image", "parse", bad]);
        assert_eq!(out.code, Some(2), "{bad}: {}", out.stdout);
        assert!(out.stderr.contains("invalid image reference"), "{bad}: {}", out.stderr);
    }
}
