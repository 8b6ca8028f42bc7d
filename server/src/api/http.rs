//! The server's own small view of an HTTP exchange, independent of the HTTP library, so
//! that every handler can be tested as a plain function call.

use crate::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path without the query string, percent-decoding not applied.
    pub path: String,
    pub query: Option<String>,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body, already gunzipped when it came with `Content-Encoding: gzip`.
    pub body: Vec<u8>,
    /// The client's address, for logs and the per-address limits (`rate_limit`).
    pub peer: Option<std::net::SocketAddr>,
    /// It came over the server's own https (`--tls-cert`).
    pub tls: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A query parameter, percent-decoded (the first, if it is given more than once).
    pub fn query_value(&self, name: &str) -> Option<String> {
        self.query
            .as_deref()?
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(percent_decode)
    }

    /// A numeric query parameter within `range`, `default` when absent; a clear 400 otherwise.
    pub fn query_number(
        &self,
        name: &str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, Error> {
        let Some(text) = self.query_value(name) else {
            return Ok(default);
        };
        text.parse().ok().filter(|n| range.contains(n)).ok_or_else(|| Error::BadRequest {
            reason: format!("{name} must be a whole number from {} to {}, not {text:?}", range.start(), range.end()),
        })
    }

    /// The body as JSON of type `T`; a clear 400 when it is not. Every route's body is a
    /// JSON object: anything else is refused here, since serde would also read an array
    /// as a struct's fields in order (`[]` as all defaults, `["u", "p"]` as credentials).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        if self.body.is_empty() {
            return Err(Error::BadRequest { reason: "the request needs a JSON body".into() });
        }
        if self.body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Error::BadRequest { reason: "the body must be a JSON object".into() });
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::BadRequest { reason: format!("the body is not valid JSON for this route: {e}") })
    }

    /// `json`, or the defaults when there is no body (routes whose fields are all optional).
    pub fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, Error> {
        if self.body.is_empty() {
            Ok(T::default())
        } else {
            self.json()
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
        // Serializing our own response types cannot fail (string keys, no non-finite floats).
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response::raw_json(status, body)
    }

    /// A body that is already JSON (a stored poll answer).
    pub fn raw_json(status: u16, body: Vec<u8>) -> Response {
        Response { status, headers: vec![("Content-Type".into(), "application/json".into())], body }
    }

    pub fn empty(status: u16) -> Response {
        Response { status, headers: vec![], body: vec![] }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// True when an `If-None-Match` header names `etag` (quoted or not, weak or not, or `*`).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let bare = |s: &str| s.trim().trim_start_matches("W/").trim_matches('"').to_string();
    let etag = bare(etag);
    if_none_match.split(',').any(|candidate| {
        let candidate = candidate.trim();
        candidate == "*" || bare(candidate) == etag
    })
}

/// `%XX` decoded (path segments and query values); anything else kept as it is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{etag_matches, Request};
    use serde_json::Value;

    #[test]
    fn bodies_are_json_objects_only() {
        let with = |body: &str| Request { body: body.as_bytes().to_vec(), ..Default::default() };
        assert!(with(" \n{\"a\": 1}").json::<Value>().is_ok());
        for bad in ["", "[]", "[\"u\", \"p\"]", "null", "1", "\"{\"", "x{"] {
            assert!(with(bad).json::<Value>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn query_values_and_numbers() {
        let with = |query: &str| Request { query: Some(query.into()), ..Default::default() };
        assert_eq!(with("device=d1").query_value("device").as_deref(), Some("d1"));
        assert_eq!(with("x=1&device=a%2Db").query_value("device").as_deref(), Some("a-b"));
        assert_eq!(with("devices=d1").query_value("device"), None);
        assert_eq!(Request::default().query_value("device"), None);
        assert_eq!(with("a=1&token=s3cr%2Bt").query_value("token").as_deref(), Some("s3cr+t"));
        assert_eq!(super::percent_decode("%"), "%");
        assert_eq!(super::percent_decode("%4"), "%4");
        assert_eq!(with("limit=5").query_number("limit", 100, 1..=1000).unwrap(), 5);
        assert_eq!(with("").query_number("limit", 100, 1..=1000).unwrap(), 100);
        for bad in ["limit=0", "limit=1001", "limit=-1", "limit=1e3", "limit="] {
            assert!(with(bad).query_number("limit", 100, 1..=1000).is_err(), "{bad}");
        }
    }

    #[test]
    fn etags_match_quoted_unquoted_weak_and_in_lists() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("abc", "\"abc\""));
        assert!(etag_matches("W/\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", \"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
        assert!(!etag_matches("", "\"abc\""));
    }
}
