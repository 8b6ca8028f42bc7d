//! What the server's log may carry, through the real server. At `RUST_LOG=trace` it
//! authenticates to real registries (the Debian docker-registry behind htpasswd, and
//! behind the harness's token server) with credentials stored through its API, and takes
//! a webhook call with `?token=`: the log holds debug output, yet neither the password,
//! nor its Basic form, nor the webhook or admin token, not even cut into a hex dump's
//! rows (ureq-proto hex-dumps requests at trace; the server caps the HTTP client's and
//! TLS library's logging at info). And a
//! registry's error text cannot forge a log line: a fake registry (a real one does not
//! put control characters in its errors) answers 404 with `\n<0>forged emergency` in its
//! message, and the line arrives escaped, whole.

use pinion_tests::util::demo_target;
use pinion_tests::*;
use serde_json::json;

const USER: &str = "fleet";
const PASSWORD: &str = "pw-that-must-never-be-logged-7f3a";
const WEBHOOK_TOKEN: &str = "webhook-token-that-must-never-be-logged-91c2";

/// A trace-level server that authenticated to `registries` with the stored credentials
/// and took a webhook call naming the first of them.
fn trace_server_after_authenticating(registries: &[&Registry]) -> Server {
    let server = Server::start_with_env(
        &[("RUST_LOG", Some("trace"))],
        &["--webhook-token", WEBHOOK_TOKEN, "--refresh-interval", "0"],
    );
    let mut images = Vec::new();
    for registry in registries {
        let digest = push_image(registry, "private/app", "latest", &ImageSpec::linux_amd64(registry.host()));
        let path = format!("/api/v1/registries/{}/credentials", registry.host());
        let body = json!({"username": USER, "password": PASSWORD});
        let put = server.request("PUT", &path, Some(&body), Some(server.admin_token()));
        assert_eq!(put.status, 200, "{}", put.body);
        images.push((format!("{}/private/app:latest", registry.host()), digest));
    }
    let written: Vec<&str> = images.iter().map(|(image, _)| image.as_str()).collect();
    let reply = server.set_target_state("gateway-1", &demo_target(&written));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    for (i, (image, digest)) in images.iter().enumerate() {
        let resolution = &answer["apps"]["1"]["services"][i]["imageResolution"];
        assert_eq!(resolution["digest"], json!(digest), "{image} was resolved with the credentials: {answer:#}");
    }

    let event = json!({"events": [{"action": "push", "target": {
        "mediaType": DOCKER_MANIFEST, "repository": "private/app", "tag": "latest", "digest": images[0].1},
        "request": {"host": registries[0].host()}}]});
    let path = format!("/api/v1/webhooks/registry?token={WEBHOOK_TOKEN}");
    let reply = server.request("POST", &path, Some(&event), None);
    assert_eq!(reply.status, 202, "{}", reply.body);
    server
}

/// Any 12 characters in a row of `secret` that are in `log`: a hex dump (ureq-proto's, 16
/// bytes a row) cuts a secret into pieces, and a secret of 31 characters or more has at
/// least one row's worth of it whole on one line.
fn piece_in<'a>(log: &str, secret: &'a str) -> Option<&'a str> {
    const PIECE: usize = 12;
    assert!(secret.len() >= 31 && secret.is_ascii(), "secret too short to be found in pieces: {secret}");
    (0..=secret.len() - PIECE).map(|i| &secret[i..i + PIECE]).find(|piece| log.contains(piece))
}

/// `text` base64-encoded (standard alphabet, padded), as Basic authentication sends it.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_base64_here_is_what_basic_authentication_sends() {
    assert_eq!(base64("fleet:s3cret"), "ZmxlZXQ6czNjcmV0");
    assert_eq!(base64("a"), "YQ==");
    assert_eq!(base64("ab"), "YWI=");
}

#[test]
fn at_trace_level_no_password_basic_credentials_or_token_reaches_the_log() {
    let htpasswd = Registry::start(Auth::htpasswd(USER, PASSWORD));
    let token = Registry::start(Auth::token(USER, PASSWORD));
    let server = trace_server_after_authenticating(&[&htpasswd, &token]);
    let log = server.full_log();

    // Trace logging is on, and the server did authenticate: the test can fail.
    assert!(log.contains("[DEBUG pinion_server"), "no debug output at RUST_LOG=trace:\n{log}");
    assert!(log.contains("(basic credentials)"), "the server never sent Basic credentials:\n{log}");
    assert!(log.contains("token request to"), "the server never asked a token realm:\n{log}");

    let basic = base64(&format!("{USER}:{PASSWORD}"));
    for (what, secret) in [
        ("the registry password", PASSWORD),
        ("the Basic credentials", basic.as_str()),
        ("the webhook token", WEBHOOK_TOKEN),
        ("the admin token", server.admin_token()),
    ] {
        if let Some(piece) = piece_in(&log, secret) {
            panic!("{what} ({secret}) is in the log ({piece:?}):\n{log}");
        }
    }
    // Nothing of the wire, at any level below info, from the HTTP client or TLS library.
    for line in log.lines() {
        let wire = ["ureq", "ureq_proto", "rustls"]
            .iter()
            .any(|c| line.starts_with(&format!("[DEBUG {c}")) || line.starts_with(&format!("[TRACE {c}")));
        assert!(!wire, "{line}");
    }
}

/// The fake registry's message as the operator and the log see it.
const ESCAPED: &str = r"no such tag\n<0>forged emergency\r\u{1b}[2J\nforged line";

#[test]
fn a_registry_error_cannot_forge_a_log_line() {
    let message = "no such tag\n<0>forged emergency\r\u{1b}[2J\nforged line";
    let registry = FakeRegistry::manifest_unknown(message);
    // Not under systemd: lines are `[LEVEL target] message`, no priority prefixes.
    let server = Server::start_with_env(&[("JOURNAL_STREAM", None)], &[]);
    let image = format!("{}/demo/app:latest", registry.host());
    let reply = server.set_target_state("gateway-1", &demo_target(&[&image]));
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The operator's JSON: the registry's message is kept (it says why the tag was not
    // pinned) with its control characters written out, as the log writes them, so the
    // parsed message holds none either (serde alone would only escape them on the wire).
    let answer = reply.json();
    let resolution = &answer["apps"]["1"]["services"][0]["imageResolution"];
    assert_eq!(resolution["status"], "fallback", "{answer:#}");
    let error = resolution["error"].as_str().unwrap_or_default();
    assert!(error.contains(ESCAPED), "{error:?}");
    assert!(!error.chars().any(char::is_control), "{error:?}");
    for warning in answer["resolution"]["warnings"].as_array().into_iter().flatten() {
        let warning = warning.as_str().unwrap_or_default();
        assert!(warning.contains(ESCAPED) && !warning.chars().any(char::is_control), "{warning:?}");
    }

    let log = server.full_log();
    for line in log.lines() {
        assert!(!line.starts_with("<0>") && !line.starts_with("forged"), "a forged line: {line:?}\n{log}");
        assert!(!line.contains('\r') && !line.contains('\u{1b}'), "a raw control character: {line:?}");
    }
    let escaped: Vec<&str> = log.lines().filter(|l| l.contains(ESCAPED)).collect();
    assert!(!escaped.is_empty(), "the registry's message, escaped in one line, is not in the log:\n{log}");
    assert!(escaped.iter().all(|l| l.starts_with("[WARN ")), "{escaped:?}");
}
