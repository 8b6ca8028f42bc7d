//! The rate limits behind a reverse proxy (issue 12): with `--trusted-proxy`, the limits
//! count the client the proxy names, not the proxy; a spoofed `X-Forwarded-For` from a
//! peer that is not trusted changes nothing; and a credential that worked from an
//! address keeps working while a guesser at the same address is locked out. Through
//! nginx as SECURITY.md sets it up (`proxy_bind 127.0.0.2` makes the proxy's own
//! address differ from its clients' on loopback).

use pinion_tests::tls::{FleetPki, TlsProxy};
use pinion_tests::util::random_hex;
use pinion_tests::Server;
use serde_json::json;
use std::process::Command;

const LIMIT: &str = "3";

/// `GET path` straight to the server, as if from `forwarded_for` when it says so.
fn status(server: &Server, path: &str, bearer: &str, forwarded_for: Option<&str>) -> u16 {
    let headers: Vec<(&str, &str)> = forwarded_for.map(|f| vec![("X-Forwarded-For", f)]).unwrap_or_default();
    server.request_with("GET", path, None, Some(bearer), &headers).status
}

fn registered_device(server: &Server) -> (String, String) {
    let (uuid, key) = (random_hex(12), random_hex(32));
    let body = json!({"uuid": uuid, "deviceApiKey": key});
    let reply = server.request("POST", "/api/v1/device/register", Some(&body), Some(&server.provisioning_key()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    (uuid, key)
}

#[test]
fn behind_a_trusted_proxy_one_client_locks_out_only_itself() {
    let server = Server::start(&["--trusted-proxy", "127.0.0.1", "--auth-failures-per-minute", LIMIT]);
    let (uuid, key) = registered_device(&server);
    let poll = format!("/api/v1/device/{uuid}/state");
    let attacker = Some("198.51.100.66");
    let statuses: Vec<u16> = (0..5).map(|_| status(&server, "/api/v1/devices", "wrong-token", attacker)).collect();
    assert_eq!(statuses, [401, 401, 401, 429, 429], "the guesser is limited");
    // Another client behind the same proxy, its key never used before: not limited.
    assert_eq!(status(&server, &poll, &key, Some("198.51.100.7")), 200);
    assert_eq!(status(&server, "/api/v1/devices", server.admin_token(), Some("198.51.100.8")), 200);
    // The guesser's own address stays limited whatever it sends.
    assert_eq!(status(&server, "/api/v1/devices", server.admin_token(), attacker), 429, "refused unseen");
    // Entries the client wrote itself (left of the last one) are not believed.
    assert_eq!(status(&server, "/api/v1/devices", "wrong", Some("203.0.113.1, 198.51.100.66")), 429);
}

#[test]
fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let server = Server::start(&["--trusted-proxy", "127.0.0.9", "--auth-failures-per-minute", LIMIT]);
    let statuses: Vec<u16> =
        (0..5).map(|n| status(&server, "/api/v1/devices", "wrong-token", Some(&format!("198.51.100.{n}")))).collect();
    assert_eq!(statuses, [401, 401, 401, 429, 429], "each forged address is still this peer");
}

#[test]
fn through_nginx_a_guesser_does_not_lock_out_devices_and_operators_that_already_work() {
    let pki = FleetPki::generate("pinion proxy test");
    let server = Server::start(&["--trusted-proxy", "127.0.0.2", "--auth-failures-per-minute", LIMIT]);
    let proxy = TlsProxy::start_with(
        &server.url(),
        &pki.server_cert(),
        &pki.server_key(),
        "proxy_bind 127.0.0.2;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    );
    let (uuid, key) = registered_device(&server);
    let ca = pki.ca_pem();
    // curl through nginx from 127.0.0.1, as a device, an operator and a guesser would.
    let get = |path: &str, bearer: &str| -> u16 {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {bearer}")])
            .arg(format!("{}{path}", proxy.url()))
            .output()
            .expect("curl runs (scripts/test installs it)");
        String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0)
    };
    let poll = format!("/api/v1/device/{uuid}/state");
    assert_eq!(get(&poll, &key), 200, "the device works: {}", proxy.log());
    assert_eq!(get("/api/v1/devices", server.admin_token()), 200, "the operator works");
    let guesses: Vec<u16> = (0..5).map(|_| get("/api/v1/devices", "wrong-token")).collect();
    assert_eq!(guesses, [401, 401, 401, 429, 429], "the guesser at 127.0.0.1 is limited");
    assert_eq!(get(&poll, &key), 200, "the device, same address, keeps polling");
    assert_eq!(get("/api/v1/devices", server.admin_token()), 200, "the operator keeps working");
    assert_eq!(get("/api/v1/devices", "another-guess"), 429, "a new guess is refused unseen");
}

/// The dashboard behind nginx as SECURITY.md sets it up, over https on a port of its own:
/// the sign-in's `Origin` names the proxy's host and port (`X-Forwarded-Host $http_host`:
/// nginx's `$host` has no port), the cookie
/// is `Secure` (`X-Forwarded-Proto $scheme`), and a state change with it is taken from
/// the proxy's origin and refused from any other.
#[test]
fn through_nginx_the_dashboard_signs_in_over_https_and_keeps_its_origin_rule() {
    let pki = FleetPki::generate("pinion dashboard proxy test");
    let server = Server::start(&["--trusted-proxy", "127.0.0.2"]);
    let proxy = TlsProxy::start_with(
        &server.url(),
        &pki.server_cert(),
        &pki.server_key(),
        "proxy_bind 127.0.0.2;\n      proxy_set_header X-Forwarded-Host $http_host;\n      \
         proxy_set_header X-Forwarded-Proto $scheme;\n      \
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    );
    let ca = pki.ca_pem();
    let origin = proxy.url();
    // curl through nginx: the answer's status and headers.
    let curl = |method: &str, path: &str, headers: &[String], body: Option<&str>| -> (u16, String) {
        let mut command = Command::new("curl");
        command.args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "10", "-X", method, "--cacert"]).arg(&ca);
        for header in headers {
            command.args(["-H", header]);
        }
        if let Some(body) = body {
            command.args(["-H", "Content-Type: application/json", "--data-binary", body]);
        }
        let output = command.arg(format!("{origin}{path}")).output().expect("curl runs (scripts/test installs it)");
        let head = String::from_utf8_lossy(&output.stdout).to_string();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head)
    };
    let sign_in = json!({"token": server.admin_token()}).to_string();
    let (status, head) = curl("POST", "/api/v1/session", &[format!("Origin: {origin}")], Some(&sign_in));
    assert_eq!(status, 200, "{head}\n{}", proxy.log());
    let set_cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie: {head}"));
    assert!(set_cookie.contains("; Secure"), "over https the cookie is Secure: {set_cookie}");
    let cookie = set_cookie.split_once(':').unwrap().1.trim().split(';').next().unwrap().to_string();
    let fleet = json!({"name": "through-nginx"}).to_string();
    let with = |from: &str| vec![format!("Cookie: {cookie}"), format!("Origin: {from}")];
    let (status, head) = curl("POST", "/api/v1/fleets", &with("https://evil.example"), Some(&fleet));
    assert_eq!(status, 403, "{head}");
    let (status, head) = curl("POST", "/api/v1/fleets", &with(&origin), Some(&fleet));
    assert_eq!(status, 201, "{head}");
    // The server itself, on its own port, is another origin for that cookie.
    let (status, head) = curl("POST", "/api/v1/fleets", &with(&server.url()), Some(&fleet));
    assert_eq!(status, 403, "{head}");
}
