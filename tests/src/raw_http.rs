//! HTTP/1.1 written byte by byte on a TCP socket, for the requests an HTTP library will
//! not send (a NUL, raw unicode or `..` in the path, a method of our own, a body larger
//! than the server takes) and to read every header of the answer (`Retry-After`,
//! `Allow`). One request per connection (`Connection: close`).

use crate::client::HttpReply;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long one exchange may take before it is reported as a hang.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request as it goes on the wire; `target` is sent exactly as given.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub chunked: bool,
}

impl RawRequest {
    pub fn new(method: &str, target: &str) -> RawRequest {
        RawRequest { method: method.into(), target: target.into(), ..Default::default() }
    }

    pub fn header(mut self, name: &str, value: &str) -> RawRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> RawRequest {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> RawRequest {
        self.body = body.into();
        self
    }

    pub fn chunked(mut self) -> RawRequest {
        self.chunked = true;
        self
    }

    /// The bytes that go on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.chunked {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&self.body);
            return bytes;
        }
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut bytes = head.into_bytes();
        for chunk in self.body.chunks(16 * 1024) {
            bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        bytes
    }
}

/// Sends `request` to `address` (`127.0.0.1:PORT`) and reads the answer. The request is
/// written from another thread, so an answer sent before the whole body was read (a
/// 413) is still read; a write the server cut short is not an error.
pub fn exchange(address: &str, request: &RawRequest) -> Result<HttpReply, String> {
    exchange_bytes(address, request.to_bytes())
}

/// `exchange` with the request given as bytes, for framings `RawRequest` cannot express.
pub fn exchange_bytes(address: &str, bytes: Vec<u8>) -> Result<HttpReply, String> {
    let stream = TcpStream::connect(address).map_err(|e| format!("connecting to {address}: {e}"))?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
        let _ = writer.flush();
        // Nothing more comes: a server waiting for a body that was cut short sees its end.
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut received = Vec::new();
    let read = (&stream).read_to_end(&mut received);
    let _ = sending.join();
    if let Err(e) = read {
        // A reset after the answer arrived (the server closed with the body unread) is fine.
        if received.is_empty() {
            return Err(format!("reading the answer from {address}: {e}"));
        }
    }
    parse_reply(&received)
}

/// One HTTP/1.1 answer: status line, headers, and a body by `Content-Length`, chunked,
/// or up to the end of the connection.
pub fn parse_reply(bytes: &[u8]) -> Result<HttpReply, String> {
    let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
    let end =
        bytes.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("no header end in {:?}", shown()))?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let rest = &bytes[end + 4..];
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.get(..length).ok_or_else(|| format!("body shorter than Content-Length {length}"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpReply { status, headers, body })
}

fn dechunk(mut bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n").ok_or("chunk size line not ended")?;
        let size_text = String::from_utf8_lossy(&bytes[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(bytes.get(..size).ok_or("chunk shorter than its size")?);
        bytes = bytes.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_with_length_chunked_or_until_close() {
        let reply =
            parse_reply(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}xx").unwrap();
        assert_eq!((reply.status, reply.header("retry-after"), reply.body.as_slice()), (429, Some("7"), &b"{}"[..]));
        let reply =
            parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(reply.body, b"abcde");
        let reply = parse_reply(b"HTTP/1.1 400 Bad Request\r\n\r\nbye").unwrap();
        assert_eq!((reply.status, reply.body.as_slice()), (400, &b"bye"[..]));
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn requests_go_out_as_given() {
        let bytes = RawRequest::new("GET", "/a/../b%00").bearer("t").body("xy").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("GET /a/../b%00 HTTP/1.1\r\n"), "{text}");
        assert!(
            text.contains("Authorization: Bearer t\r\n") && text.ends_with("Content-Length: 2\r\n\r\nxy"),
            "{text}"
        );
        let chunked = String::from_utf8(RawRequest::new("POST", "/").body("abc").chunked().to_bytes()).unwrap();
        assert!(chunked.ends_with("Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{chunked}");
    }
}
