//! Puts `handle` on a socket with tiny_http: a fixed pool of worker threads, each
//! taking the next request, reading its body within the size limit (gunzipping it when
//! sent with `Content-Encoding: gzip`), answering it within the per-address limits
//! (`rate_limit`), and writing the answer.

use super::http::{Request, Response};
use super::response::error_response;
use super::{handle_limited, Api, ClientLimits};
use crate::Error;
use flate2::read::GzDecoder;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

/// Serves until the process ends. `max_body` applies to the body as received and,
/// for gzip bodies, once more after decompression; `limits` are shared by all workers.
pub fn serve(server: tiny_http::Server, api: Api, limits: ClientLimits, workers: usize, max_body: usize) {
    let server = Arc::new(server);
    let api = Arc::new(api);
    let limits = Arc::new(limits);
    let threads: Vec<_> = (0..workers.max(1))
        .map(|i| {
            let (server, api, limits) = (Arc::clone(&server), Arc::clone(&api), Arc::clone(&limits));
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || worker(&server, &api, &limits, max_body))
                .expect("spawning an HTTP worker thread")
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

fn worker(server: &tiny_http::Server, api: &Api, limits: &ClientLimits, max_body: usize) {
    loop {
        let mut incoming = match server.recv() {
            Ok(request) => request,
            Err(e) => {
                log::error!("accepting a request failed: {e}");
                continue;
            }
        };
        let started = Instant::now();
        let (response, close) = match read_request(&mut incoming, max_body) {
            Ok(request) => (handle_limited(api, limits, &request), false),
            Err(error) => (error_response(&error), true),
        };
        // Formatted only when debug logging is on: most answers are 304s of a few µs.
        let trace = log::log_enabled!(log::Level::Debug).then(|| {
            let peer = incoming.remote_addr().map(|a| a.to_string()).unwrap_or_default();
            format!("{peer} {} {} {}", incoming.method(), incoming.url(), response.status)
        });
        let written = incoming.respond(to_tiny(response, close));
        if let Some(trace) = trace {
            match written {
                Ok(()) => log::debug!("{trace} {} µs", started.elapsed().as_micros()),
                Err(e) => log::debug!("{trace}: writing the answer failed: {e}"),
            }
        }
    }
}

fn read_request(incoming: &mut tiny_http::Request, max_body: usize) -> Result<Request, Error> {
    let (path, query) = match incoming.url().split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (incoming.url().to_string(), None),
    };
    let headers: Vec<(String, String)> = incoming
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_string()))
        .collect();
    if incoming.body_length().is_some_and(|len| len > max_body) {
        return Err(Error::PayloadTooLarge { limit: max_body });
    }
    let raw = read_limited(incoming.as_reader(), max_body)?;
    let gzip = headers.iter().any(|(n, v)| n == "content-encoding" && v.trim().eq_ignore_ascii_case("gzip"));
    let body = if gzip { read_limited(&mut GzDecoder::new(raw.as_slice()), max_body)? } else { raw };
    Ok(Request {
        method: incoming.method().as_str().to_ascii_uppercase(),
        path,
        query,
        headers,
        body,
        peer: incoming.remote_addr().copied(),
    })
}

/// Reads at most `limit` bytes; one more is a 413.
fn read_limited(reader: &mut dyn Read, limit: usize) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Error::BadRequest { reason: format!("reading the request body failed: {e}") })?;
    if body.len() > limit {
        return Err(Error::PayloadTooLarge { limit });
    }
    Ok(body)
}

fn to_tiny(response: Response, close: bool) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut out = tiny_http::Response::from_data(response.body).with_status_code(response.status);
    for (name, value) in response.headers {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            out.add_header(header);
        }
    }
    if close {
        if let Ok(header) = tiny_http::Header::from_bytes("Connection", "close") {
            out.add_header(header);
        }
    }
    out
}
