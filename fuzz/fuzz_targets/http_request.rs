//! Fuzz target `http_request`: the server's reading of a request from the network (head
//! through httparse and pinion's framing rules, then a chunked or sized body) never
//! panics, never claims more bytes than it was given, and never returns a body over its
//! limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_server::http_server::body::Incoming;
use pinion_server::http_server::head::{parse_head, BodyFraming};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = parse_head(data) else { return };
    assert!(head.len <= data.len());
    let mut incoming = Incoming { buf: data[head.len..].to_vec(), pos: 0, source: std::io::empty() };
    let body = match head.body {
        BodyFraming::None => return,
        BodyFraming::Length(n) => incoming.read_length(n, LIMIT),
        BodyFraming::Chunked => incoming.read_chunked(LIMIT),
    };
    if let Ok(body) = body {
        assert!(body.len() <= LIMIT);
        let left = incoming.into_leftover();
        assert!(body.len() + left.len() <= data.len() - head.len);
    }
});
