//! Fuzz target `www_authenticate`: the server's `WWW-Authenticate` parser (a registry's
//! `401`, i.e. input from the network) never panics, yields well-formed challenges, and
//! reads its own output back unchanged. Each input line is one header value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_server::registry::challenge::{parse, parse_all, Challenge};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let headers: Vec<&str> = input.split('\n').collect();
    let challenges = parse_all(headers.iter().copied());
    let one_by_one: Vec<Challenge> = headers.iter().flat_map(|h| parse(h)).collect();
    assert_eq!(challenges, one_by_one, "parse_all differs from parse header by header");

    for c in &challenges {
        assert!(is_lower_token(&c.scheme), "scheme {:?} is not a lowercase token", c.scheme);
        for (name, _) in &c.params {
            assert!(is_lower_token(name), "parameter name {name:?} is not a lowercase token");
        }
    }

    let rendered = render(&challenges);
    assert_eq!(parse(&rendered), challenges, "challenges rendered as {rendered:?} read back differently");
});

/// The challenges as one header value, every parameter value quoted.
fn render(challenges: &[Challenge]) -> String {
    let rendered: Vec<String> = challenges
        .iter()
        .map(|c| {
            let params: Vec<String> = c
                .params
                .iter()
                .map(|(name, value)| format!("{name}=\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            if params.is_empty() {
                c.scheme.clone()
            } else {
                format!("{} {}", c.scheme, params.join(", "))
            }
        })
        .collect();
    rendered.join(", ")
}

/// A non-empty RFC 7230 token without uppercase letters.
fn is_lower_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&c))
}
