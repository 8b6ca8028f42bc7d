//! The agent's server connection is private (issue 6): https through nginx with a
//! private fleet CA (made with `openssl`) in front of a real `pinion-server`, and plain
//! http refused to anything but loopback unless `allow_insecure_server` is set.
//!
//! Agents that get as far as Docker manage every labelled container on the test dockerd,
//! so those tests take their turn (`take_turn`); the ones that must never get that far
//! point the agent at a socket that does not exist.

use pinion_tests::docker::take_turn;
use pinion_tests::server::workspace_binary;
use pinion_tests::tls::{FleetPki, TlsProxy};
use pinion_tests::util::{unique, wait_for};
use pinion_tests::{Agent, Docker, Server, TempDir};
use serde_json::json;
use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

/// The server, with nginx terminating TLS in front of it with a certificate from `pki`.
fn https_server(pki: &FleetPki) -> (Server, TlsProxy) {
    let server = Server::start(&[]);
    let proxy = TlsProxy::start(&server.url(), &pki.server_cert(), &pki.server_key());
    (server, proxy)
}

/// An empty target for `uuid` (no apps: the agent runs nothing, and reports).
fn set_empty_target(server: &Server, uuid: &str) {
    let reply = server.set_target_state(uuid, &json!({"apps": {}, "config": {}}));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Waits until the device's report reached the server: registered, polled its target,
/// reconciled, and reported, all through `proxy`.
fn assert_registers_polls_and_reports(server: &Server, proxy: &TlsProxy, agent: &Agent, uuid: &str) {
    agent.converge("a report through https", || {
        let reply =
            server.request("GET", &format!("/api/v1/devices/{uuid}/current-state"), None, Some(server.admin_token()));
        reply.status == 200 && !reply.json()["reportedAt"].is_null()
    });
    let status = agent.status();
    assert_eq!(status["registered"], true, "{status}");
    assert!(status["target"]["etag"].is_string(), "the agent stored the polled target with its ETag: {status}");
    let access = proxy.access_log();
    for request in
        ["POST /api/v1/device/register", &format!("GET /api/v1/device/{uuid}/state"), "PATCH /api/v1/device/state"]
    {
        assert!(access.contains(request), "nginx proxied no {request}; its access log:\n{access}");
    }
    assert!(agent.log().contains("registered with the server"), "{}", agent.log());
}

#[test]
fn with_the_fleet_ca_as_ca_file_the_agent_registers_over_https_and_polls_its_target() {
    let turn = take_turn();
    let pki = FleetPki::generate("pinion test");
    let (server, proxy) = https_server(&pki);
    let uuid = unique("tls");
    set_empty_target(&server, &uuid);
    let ca_file = pki.ca_pem().display().to_string();
    let agent = Agent::start_with_env(
        &proxy.url(),
        &server.provisioning_key_for(&uuid),
        &uuid,
        &turn.docker,
        &[("PINION_CA_FILE", &ca_file)],
    );
    assert_registers_polls_and_reports(&server, &proxy, &agent, &uuid);
    assert!(
        agent.log().contains(&format!("and 1 from {ca_file}")),
        "the startup line names the CA file: {}",
        agent.log()
    );
}

#[test]
fn without_a_system_bundle_the_fleet_ca_is_trusted_beside_the_built_in_roots() {
    let turn = take_turn();
    let pki = FleetPki::generate("pinion test");
    let (server, proxy) = https_server(&pki);
    let uuid = unique("tls-nobundle");
    set_empty_target(&server, &uuid);
    let ca_file = pki.ca_pem().display().to_string();
    let agent = Agent::start_with_env(
        &proxy.url(),
        &server.provisioning_key_for(&uuid),
        &uuid,
        &turn.docker,
        &[("PINION_CA_FILE", &ca_file), ("SSL_CERT_FILE", "/nonexistent/ca-certificates.crt")],
    );
    assert_registers_polls_and_reports(&server, &proxy, &agent, &uuid);
    assert!(agent.log().contains("built-in Mozilla roots"), "{}", agent.log());
}

#[test]
fn without_ca_file_the_handshake_is_refused_as_unknown_issuer_and_the_agent_does_not_register() {
    let pki = FleetPki::generate("pinion test");
    let (server, proxy) = https_server(&pki);
    let uuid = unique("tls-refused");
    let nowhere = TempDir::new("no-docker");
    let socket = nowhere.join("docker.sock").display().to_string();
    // Never reaches Docker (registering comes first); should it, there is none to touch.
    let mut agent = Agent::start_with_env(
        &proxy.url(),
        &server.provisioning_key_for(&uuid),
        &uuid,
        &Docker::connect(),
        &[("PINION_DOCKER_SOCKET", &socket)],
    );
    agent.converge("the handshake refused", || agent.log().contains("registration deferred"));
    let log = agent.log();
    assert!(log.contains("unknown issuer") && log.contains("set ca_file"), "a clear line: {log}");
    assert!(!log.contains("registered with the server"), "{log}");
    assert!(agent.is_running(), "it keeps retrying: {log}");
    let reply = server.request("GET", &format!("/api/v1/devices/{uuid}"), None, Some(server.admin_token()));
    assert_eq!(reply.status, 404, "the server never heard of the device: {}", reply.body);
    assert!(!proxy.access_log().contains("/api/v1/device/register"), "{}", proxy.access_log());
}

/// `pinion-agent run` against `server` with `extra` settings, every connection sent
/// through an HTTP proxy that records who connects (ureq honours `ALL_PROXY`), so that
/// "no connection was attempted" is something the test sees. Returns the process's
/// output (killed after `run_for` if still running) and the request line the proxy got.
fn run_through_recording_proxy(server: &str, extra: &[(&str, &str)], run_for: Duration) -> (Output, Option<String>) {
    let dir = TempDir::new("agent-insecure");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the recording proxy");
    let proxy = format!("http://{}", listener.local_addr().expect("proxy address"));
    listener.set_nonblocking(true).expect("non-blocking listener");
    let mut command = Command::new(workspace_binary("pinion-agent"));
    command
        .arg("run")
        .env_clear()
        .env("PINION_SERVER", server)
        .env("PINION_PROVISIONING_KEY", "pk")
        .env("PINION_UUID", unique("insecure"))
        .env("PINION_DB", dir.join("agent.db"))
        .env("PINION_DOCKER_SOCKET", dir.join("docker.sock"))
        .env("ALL_PROXY", &proxy)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, value) in extra {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawning pinion-agent");
    let mut request_line = None;
    // Until it exits, or its first connection arrives.
    wait_for(run_for, || {
        request_line = request_line.take().or_else(|| first_line(&listener));
        (request_line.is_some() || matches!(child.try_wait(), Ok(Some(_)))).then_some(())
    });
    let _ = child.kill();
    let output = child.wait_with_output().expect("collecting pinion-agent's output");
    (output, request_line.or_else(|| first_line(&listener)))
}

/// The first line sent on a connection waiting at `listener`, if one is.
fn first_line(listener: &TcpListener) -> Option<String> {
    let (mut stream, _) = listener.accept().ok()?;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).lines().next().unwrap_or("(nothing sent)").to_string())
}

#[test]
fn plain_http_to_a_remote_host_exits_78_before_any_connection_naming_the_key() {
    let (output, connected) =
        run_through_recording_proxy("http://pinion.example.invalid", &[], Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("allow_insecure_server = true"), "says which key to set: {stderr}");
    assert!(stderr.contains("PINION_ALLOW_INSECURE_SERVER"), "{stderr}");
    assert_eq!(connected, None, "no connection may be attempted: {stderr}");
}

#[test]
fn allow_insecure_server_lifts_the_refusal() {
    let (output, connected) = run_through_recording_proxy(
        "http://pinion.example.invalid",
        &[("PINION_ALLOW_INSECURE_SERVER", "true")],
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(78), "{stderr}");
    let connected = connected.unwrap_or_else(|| panic!("the agent never tried the server: {stderr}"));
    assert!(connected.contains("pinion.example.invalid"), "the agent went for the server: {connected}");
}

#[test]
fn other_schemes_and_a_bad_ca_file_exit_78_naming_what_to_fix() {
    let (output, connected) = run_through_recording_proxy(
        "ftp://pinion.example.com",
        &[("PINION_ALLOW_INSECURE_SERVER", "true")],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("scheme \"ftp\""), "{stderr}");
    assert_eq!(connected, None);

    let (output, connected) = run_through_recording_proxy(
        "https://pinion.example.invalid",
        &[("PINION_CA_FILE", "/nonexistent/fleet-ca.pem")],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("ca_file /nonexistent/fleet-ca.pem"), "{stderr}");
    assert_eq!(connected, None);
}

/// A server (or whoever answers in its place) that redirects: ureq strips only
/// `Authorization` when it follows a redirect, so `X-Device-API-Key` went wherever the
/// answer pointed, plain http included. The agent follows no redirect at all now.
#[test]
fn a_redirecting_server_gets_no_key_followed_anywhere() {
    let turn = take_turn();
    let elsewhere = TcpListener::bind("127.0.0.1:0").expect("binding the redirect target");
    elsewhere.set_nonblocking(true).expect("non-blocking listener");
    let target = format!("http://{}/api/v1/stolen", elsewhere.local_addr().unwrap());
    let redirector = TcpListener::bind("127.0.0.1:0").expect("binding the redirecting server");
    let server = format!("http://{}", redirector.local_addr().unwrap());
    let answer = format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n");
    std::thread::spawn(move || {
        for stream in redirector.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut head);
            let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
        }
    });
    let key = "device-key-redirect-0123456789abcdef0123456789";
    let agent = Agent::start_with_env(
        &server,
        "unused-provisioning-key",
        &unique("redirect"),
        &turn.docker,
        &[("PINION_DEVICE_KEY", key)],
    );
    let said = wait_for(Duration::from_secs(30), || agent.log().contains("redirects to").then_some(()));
    assert!(said.is_some(), "the agent names the redirect it did not follow: {}", agent.log());
    assert!(agent.log().contains("/api/v1/stolen"), "{}", agent.log());
    assert_eq!(first_line(&elsewhere), None, "nothing may reach the redirect's target");
}
