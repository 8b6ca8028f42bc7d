//! A request head, read from the bytes a connection has sent so far (httparse does the
//! syntax), and what it says about the body that follows and the connection after it.
//! Pure: no sockets here, so every rule has a test.

/// Largest request head accepted (request line and headers); more is a 431.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most headers accepted in one request.
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// Names in lowercase, values as sent (invalid UTF-8 replaced).
    pub headers: Vec<(String, String)>,
    pub body: BodyFraming,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before its body.
    pub expect_continue: bool,
    /// Bytes of the buffer the head took.
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// Why a head cannot be served; each is answered with its status and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or a malformed line or header (400).
    Malformed(String),
    /// Longer than `MAX_HEAD_BYTES` or more than `MAX_HEADERS` headers (431).
    TooLarge,
    /// A transfer coding other than chunked (501).
    UnsupportedCoding(String),
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooLarge => 431,
            HeadError::UnsupportedCoding(_) => 501,
        }
    }

    pub fn message(&self) -> String {
        match self {
            HeadError::Malformed(why) => format!("malformed request: {why}"),
            HeadError::TooLarge => format!("request head larger than {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers"),
            HeadError::UnsupportedCoding(coding) => format!("transfer coding {coding:?} is not supported"),
        }
    }
}

/// The head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let values = |name: &'static str| headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str());
    let tokens = |name: &'static str| -> Vec<String> {
        values(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };

    let codings = tokens("transfer-encoding");
    let lengths: Vec<&str> = values("content-length").flat_map(|v| v.split(',')).map(str::trim).collect();
    let body = match (codings.as_slice(), lengths.as_slice()) {
        // Both framings at once is how requests are smuggled past a proxy.
        (&[_, ..], &[_, ..]) => return Err(HeadError::Malformed("both Transfer-Encoding and Content-Length".into())),
        ([coding], []) if coding == "chunked" => BodyFraming::Chunked,
        ([], []) => BodyFraming::None,
        ([.., last], []) => return Err(HeadError::UnsupportedCoding(last.clone())),
        ([], [first, rest @ ..]) => {
            if rest.iter().any(|other| other != first) {
                return Err(HeadError::Malformed("differing Content-Length values".into()));
            }
            if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::Malformed(format!("Content-Length {first:?} is not a number")));
            }
            match first.parse::<u64>() {
                Ok(0) => BodyFraming::None,
                Ok(n) => BodyFraming::Length(n),
                Err(_) => return Err(HeadError::Malformed(format!("Content-Length {first:?} is out of range"))),
            }
        }
    };
    let connection = tokens("connection");
    let keep_alive = match version {
        1 => !connection.iter().any(|t| t == "close"),
        _ => connection.iter().any(|t| t == "keep-alive"),
    };
    let expect_continue = values("expect").any(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    Ok(Some(Head {
        method: method.to_ascii_uppercase(),
        target: target.to_string(),
        headers,
        body,
        keep_alive,
        expect_continue,
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_poll_with_its_headers() {
        let h = head("GET /api/v1/device/d1/state?x=1 HTTP/1.1\r\nHost: a\r\nX-Device-API-Key: k\r\nIf-None-Match: \"e\"\r\n\r\nrest");
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/api/v1/device/d1/state?x=1"));
        assert_eq!(h.headers[1], ("x-device-api-key".to_string(), "k".to_string()));
        assert_eq!((h.body, h.keep_alive, h.expect_continue), (BodyFraming::None, true, false));
        assert_eq!(h.len, "GET /api/v1/device/d1/state?x=1 HTTP/1.1\r\nHost: a\r\nX-Device-API-Key: k\r\nIf-None-Match: \"e\"\r\n\r\n".len());
    }

    #[test]
    fn an_incomplete_head_waits_until_it_is_too_large() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(parse_head(b""), Ok(None));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(parse_head(&long), Err(HeadError::TooLarge));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), Err(HeadError::TooLarge));
    }

    #[test]
    fn body_framing() {
        assert_eq!(head("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").body, BodyFraming::Length(12));
        assert_eq!(head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body, BodyFraming::None);
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").body,
            BodyFraming::Length(5)
        );
        assert_eq!(head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").body, BodyFraming::Chunked);
        assert!(head("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n").expect_continue);
        for (text, status) in [
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", 501),
            ("GET / HTTP/2.0\r\n\r\n", 400),
            ("GET /\r\n\r\n", 400),
            ("G\0T / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        ] {
            let error = parse_head(text.as_bytes()).unwrap_err();
            assert_eq!(error.status(), status, "{text:?}: {error:?}");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }
}
