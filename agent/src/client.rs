//! The agent's side of the wire contract: register with a provisioning key, poll the
//! target state with `If-None-Match`, report the current state, and send log lines.

use crate::resolver::AddressOrName;
use crate::Error;
use serde_json::{json, Value};
use std::time::Duration;

/// The largest poll answer accepted.
const MAX_TARGET_BYTES: u64 = 4 << 20;
/// Sending logs is a side errand of reconciling: it may not hold it up for long.
const LOGS_TIMEOUT: Duration = Duration::from_secs(5);
/// Each connection ureq keeps alive holds an input and an output buffer of this size
/// (two pairs under TLS), zeroed when first used: ureq's 128 KiB each was 512 KiB of the
/// agent's memory over https. Response headers must fit in the input buffer (a head
/// beyond it fails as "Peer disconnected", where ureq's default allowed 64 KiB); bodies
/// stream through both in pieces.
pub const CONNECTION_BUFFER_BYTES: usize = 16 * 1024;

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll {
    /// 304: the target is the one stored.
    NotModified,
    /// A target: its ETag and the device's state object as JSON text.
    Changed { etag: Option<String>, state: String },
}

pub struct ServerClient {
    base: String,
    http: ureq::Agent,
}

impl ServerClient {
    /// A client of the server at `base` (checked by `Config::server_url`), trusting for
    /// https what `tls` (`tls::server_trust`) holds.
    pub fn new(base: &str, timeout: Duration, tls: ureq::tls::TlsConfig) -> ServerClient {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .tls_config(tls)
            .http_status_as_error(false)
            // Never follow a redirect: it would carry the device key (ureq strips only
            // `Authorization`) to whatever scheme and host the answer names.
            .max_redirects(0)
            .input_buffer_size(CONNECTION_BUFFER_BYTES)
            .output_buffer_size(CONNECTION_BUFFER_BYTES)
            .user_agent(format!("pinion-agent/{}", env!("CARGO_PKG_VERSION")))
            .build();
        let connector = ureq::unversioned::transport::DefaultConnector::new();
        let http = ureq::Agent::with_parts(config, connector, AddressOrName::default());
        ServerClient { base: base.trim_end_matches('/').to_string(), http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// `POST /device/register` with the provisioning key and the key this agent made.
    pub fn register(
        &self,
        provisioning_key: &str,
        uuid: &str,
        device_key: &str,
        name: Option<&str>,
        device_type: Option<&str>,
    ) -> Result<(), Error> {
        let url = self.url("/device/register");
        let body = json!({"uuid": uuid, "deviceApiKey": device_key, "deviceName": name, "deviceType": device_type});
        let response = self
            .http
            .post(&url)
            .header("Authorization", format!("Bearer {provisioning_key}"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| unreachable(&url, e))?;
        expect_success(&url, response).map(|_| ())
    }

    /// `GET /device/{uuid}/state`, conditional on the stored ETag.
    pub fn poll(&self, uuid: &str, device_key: &str, etag: Option<&str>) -> Result<Poll, Error> {
        let url = self.url(&format!("/device/{uuid}/state"));
        let mut request = self.http.get(&url).header("X-Device-API-Key", device_key);
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        let response = request.call().map_err(|e| unreachable(&url, e))?;
        if response.status().as_u16() == 304 {
            return Ok(Poll::NotModified);
        }
        let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = expect_success(&url, response)?;
        let mut answer: Value = serde_json::from_str(&body).map_err(|e| Error::ServerProtocol {
            url: url.clone(),
            reason: format!("target state is not JSON: {e}"),
        })?;
        let state = answer.get_mut(uuid).map(Value::take).ok_or_else(|| Error::ServerProtocol {
            url: url.clone(),
            reason: format!("the answer has no state for {uuid}"),
        })?;
        Ok(Poll::Changed { etag, state: state.to_string() })
    }

    /// `PATCH /device/state` with a report body (`{"<uuid>": {…}}`).
    pub fn report(&self, device_key: &str, body: &str) -> Result<(), Error> {
        let url = self.url("/device/state");
        let response = self
            .http
            .patch(&url)
            .header("X-Device-API-Key", device_key)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| unreachable(&url, e))?;
        expect_success(&url, response).map(|_| ())
    }

    /// `POST /device/{uuid}/logs` with NDJSON lines (one JSON object each, `\n` after
    /// each), within `LOGS_TIMEOUT` whatever the client's own timeout.
    pub fn send_logs(&self, uuid: &str, device_key: &str, ndjson: &str) -> Result<(), Error> {
        let url = self.url(&format!("/device/{uuid}/logs"));
        let response = self
            .http
            .post(&url)
            .config()
            .timeout_global(Some(LOGS_TIMEOUT))
            .build()
            .header("X-Device-API-Key", device_key)
            .header("Content-Type", "application/x-ndjson")
            .send(ndjson)
            .map_err(|e| unreachable(&url, e))?;
        expect_success(&url, response).map(|_| ())
    }
}

fn unreachable(url: &str, error: ureq::Error) -> Error {
    let reason = match error {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Rustls(e) => tls_reason(&e.to_string()),
        // From inside the transport, rustls's refusal of the certificate comes as `Io`.
        other => {
            let text = other.to_string();
            if text.contains("invalid peer certificate") {
                tls_reason(&text)
            } else {
                text
            }
        }
    };
    Error::ServerUnreachable { url: url.to_string(), reason }
}

/// A failed TLS handshake in words, saying what to do when it is the usual one: a
/// server certificate from a CA the agent does not trust.
fn tls_reason(rustls_error: &str) -> String {
    if rustls_error.contains("UnknownIssuer") {
        format!(
            "TLS handshake refused ({rustls_error}): the server's certificate is from an unknown issuer, \
             not signed by a CA this agent trusts; set ca_file (PINION_CA_FILE) to the fleet CA's PEM file"
        )
    } else {
        format!("TLS handshake failed: {rustls_error}")
    }
}

/// The body of a 2xx answer; otherwise the server's `message` in an error. A redirect
/// is an error naming where it pointed: the agent sends its key only to `server`.
fn expect_success(url: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<String, Error> {
    let status = response.status().as_u16();
    if (300..400).contains(&status) {
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
        return Err(Error::ServerStatus {
            url: url.to_string(),
            status,
            message: format!(
                "the server redirects to {:?}; the agent does not follow redirects with its key: \
                 set server (PINION_SERVER) to the server's own address",
                location.chars().take(200).collect::<String>()
            ),
        });
    }
    let body =
        response.body_mut().with_config().limit(MAX_TARGET_BYTES).read_to_string().map_err(|e| unreachable(url, e))?;
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    Err(Error::ServerStatus { url: url.to_string(), status, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_issuer_says_which_key_to_set() {
        let reason = tls_reason("invalid peer certificate: UnknownIssuer");
        assert!(reason.contains("unknown issuer") && reason.contains("ca_file"), "{reason}");
        let other = tls_reason("invalid peer certificate: Expired");
        assert!(other.contains("Expired") && !other.contains("ca_file"), "{other}");
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// One connection on loopback: reads a request (head and Content-Length body),
    /// answers `head_padding` bytes of extra header and `body`; gives the request body.
    fn serve(head_padding: usize, body: String) -> (String, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut got = vec![0; length];
            reader.read_exact(&mut got).unwrap();
            let mut out = stream;
            let pad = "x".repeat(head_padding);
            write!(
                out,
                "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nX-Pad: {pad}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            length
        });
        (base, handle)
    }

    #[test]
    fn bodies_far_bigger_than_the_buffers_go_both_ways() {
        let filler = "y".repeat(300 * 1024);
        let (base, server) = serve(0, json!({"u": {"apps": {}, "filler": filler}}).to_string());
        let client = ServerClient::new(&base, Duration::from_secs(10), ureq::tls::TlsConfig::default());
        match client.poll("u", "k", None).unwrap() {
            Poll::Changed { state, .. } => assert!(state.len() > 300 * 1024),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
        let (base, server) = serve(0, "{}".into());
        let client = ServerClient::new(&base, Duration::from_secs(10), ureq::tls::TlsConfig::default());
        client.report("k", &"z".repeat(200 * 1024)).unwrap();
        assert_eq!(server.join().unwrap(), 200 * 1024);
    }

    #[test]
    fn a_response_head_of_twelve_kib_fits_the_input_buffer() {
        // Heads over CONNECTION_BUFFER_BYTES fail ("Peer disconnected"); 12 KiB is more
        // than proxies in front of a server add (nginx answers at most 8 KiB by default).
        let (base, server) = serve(12 * 1024, json!({"u": {"apps": {}}}).to_string());
        let client = ServerClient::new(&base, Duration::from_secs(10), ureq::tls::TlsConfig::default());
        let result = client.poll("u", "k", None);
        server.join().unwrap();
        assert!(matches!(result, Ok(Poll::Changed { .. })), "{result:?}");
    }
}
