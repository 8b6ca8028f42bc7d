//! Where a browser's request comes from: a signed-in dashboard's cookie goes with every
//! request to this server, so a state-changing one must come from a page of this server
//! (its `Origin` names the host it was sent to), and the cookie is `Secure` when the
//! browser reached the server over https: the server's own (`--tls-cert`), or behind a
//! trusted reverse proxy (`--trusted-proxy`) the proxy's, whose
//! `X-Forwarded-Host`/`Forwarded: host=` and `proto=` name what the browser saw. Pure:
//! headers in, a yes or no out.

use super::client_address::TrustedProxy;
use super::http::Request;

/// Whether `request` was sent by a page of this server: its `Origin` is `http(s)://` and
/// the host the request was sent to (`Host`, or behind a trusted proxy the host it
/// forwarded), and `https://` when the request came over https (`over_https`): a page
/// at `http://` the same host and port is anyone's on the network path, and browsers
/// that ignore the scheme for `SameSite` send the cookie with its requests. Without
/// `Origin`, only `Sec-Fetch-Site: same-origin` says so; `Origin: null` (a sandboxed
/// frame, a redirect across origins) never does.
pub fn same_origin(request: &Request, trusted: &[TrustedProxy]) -> bool {
    let Some(origin) = request.header("origin") else {
        return request.header("sec-fetch-site").is_some_and(|site| site.trim().eq_ignore_ascii_case("same-origin"));
    };
    let origin = origin.trim();
    let authority = match (origin.strip_prefix("https://"), origin.strip_prefix("http://")) {
        (Some(authority), _) => authority,
        (None, Some(authority)) if !over_https(request, trusted) => authority,
        _ => return false,
    };
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return false;
    }
    let mut hosts: Vec<&str> = request.header("host").into_iter().collect();
    if from_trusted_proxy(request, trusted) {
        hosts.extend(forwarded_values(request, "x-forwarded-host", "host"));
    }
    hosts.iter().any(|host| host.trim().eq_ignore_ascii_case(authority))
}

/// Whether the browser reached the server over https: a trusted proxy's word
/// (`X-Forwarded-Proto: https`, `Forwarded: proto=https`) when it gives one, as the
/// browser spoke to the proxy (which may reach this server over https while its own
/// clients use http: a `Secure` cookie would then never come back), else whether the
/// request came over the server's own https.
pub fn over_https(request: &Request, trusted: &[TrustedProxy]) -> bool {
    let forwarded = match from_trusted_proxy(request, trusted) {
        true => forwarded_values(request, "x-forwarded-proto", "proto").last().copied(),
        false => None,
    };
    match forwarded {
        Some(proto) => proto.trim().eq_ignore_ascii_case("https"),
        None => request.tls,
    }
}

fn from_trusted_proxy(request: &Request, trusted: &[TrustedProxy]) -> bool {
    request.peer.is_some_and(|peer| trusted.iter().any(|proxy| proxy.contains(peer.ip())))
}

/// The values of `x_header` (comma-separated), or else of `Forwarded`'s `name=` pairs, in
/// order: the last is what the nearest proxy saw.
fn forwarded_values<'a>(request: &'a Request, x_header: &'a str, name: &str) -> Vec<&'a str> {
    let all = |header: &'a str| {
        request.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(header)).map(|(_, v)| v.as_str())
    };
    let forwarded: Vec<&str> = all("forwarded")
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| key.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().trim_matches('"'))
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    all(x_header).flat_map(|v| v.split(',')).map(str::trim).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            peer: Some(peer.parse().unwrap()),
            ..Default::default()
        }
    }

    fn proxies() -> Vec<TrustedProxy> {
        vec![TrustedProxy::parse("10.0.0.1").unwrap()]
    }

    #[test]
    fn the_origin_must_name_the_host_the_request_was_sent_to() {
        let same = request("127.0.0.1:5", &[("host", "127.0.0.1:3002"), ("origin", "http://127.0.0.1:3002")]);
        assert!(same_origin(&same, &[]));
        let upper = request("127.0.0.1:5", &[("host", "Fleet.Example"), ("origin", "https://fleet.example")]);
        assert!(same_origin(&upper, &[]));
        for foreign in [
            "http://evil.example",
            "http://127.0.0.1:3003",
            "null",
            "",
            "127.0.0.1:3002",
            "http://127.0.0.1:3002/x",
            "http://user@127.0.0.1:3002",
            "file://127.0.0.1:3002",
        ] {
            let r = request("127.0.0.1:5", &[("host", "127.0.0.1:3002"), ("origin", foreign)]);
            assert!(!same_origin(&r, &[]), "{foreign:?}");
        }
        // No Origin: only the browser's own word that it is the same origin.
        assert!(!same_origin(&request("127.0.0.1:5", &[("host", "h")]), &[]));
        assert!(same_origin(&request("127.0.0.1:5", &[("host", "h"), ("sec-fetch-site", "same-origin")]), &[]));
        assert!(!same_origin(&request("127.0.0.1:5", &[("host", "h"), ("sec-fetch-site", "cross-site")]), &[]));
        // No Host at all: nothing to match.
        assert!(!same_origin(&request("127.0.0.1:5", &[("origin", "http://h")]), &[]));
    }

    #[test]
    fn a_forwarded_host_counts_only_from_a_trusted_proxy() {
        let headers =
            [("host", "127.0.0.1:3002"), ("origin", "https://fleet.example"), ("x-forwarded-host", "fleet.example")];
        assert!(same_origin(&request("10.0.0.1:5", &headers), &proxies()));
        assert!(!same_origin(&request("10.0.0.2:5", &headers), &proxies()));
        let forwarded = [
            ("host", "backend"),
            ("origin", "https://fleet.example"),
            ("forwarded", "for=1.2.3.4;host=fleet.example;proto=https"),
        ];
        assert!(same_origin(&request("10.0.0.1:5", &forwarded), &proxies()));
    }

    #[test]
    fn https_is_what_a_trusted_proxy_says() {
        let https = [("x-forwarded-proto", "https")];
        assert!(over_https(&request("10.0.0.1:5", &https), &proxies()));
        assert!(!over_https(&request("10.0.0.9:5", &https), &proxies()));
        assert!(!over_https(&request("10.0.0.1:5", &[("x-forwarded-proto", "http")]), &proxies()));
        assert!(over_https(&request("10.0.0.1:5", &[("forwarded", "for=1.2.3.4;proto=https")]), &proxies()));
        assert!(!over_https(&request("10.0.0.1:5", &[]), &proxies()));
    }

    /// Over https, a page at `http://` the same host (injected by anyone on the path)
    /// is another origin: it was taken as this server's own.
    #[test]
    fn over_https_only_an_https_origin_is_the_same_origin() {
        let own = |peer: &str, headers: &[(&str, &str)]| Request { tls: true, ..request(peer, headers) };
        let host = ("host", "fleet.example:3002");
        assert!(same_origin(&own("192.0.2.7:5", &[host, ("origin", "https://fleet.example:3002")]), &[]));
        assert!(!same_origin(&own("192.0.2.7:5", &[host, ("origin", "http://fleet.example:3002")]), &[]));
        let forwarded = |proto: &str| {
            let headers =
                [("host", "backend"), ("origin", "http://fleet.example"), ("x-forwarded-host", "fleet.example")];
            request("10.0.0.1:5", &[&headers[..], &[("x-forwarded-proto", proto)]].concat())
        };
        assert!(!same_origin(&forwarded("https"), &proxies()), "the proxy's client used https");
        assert!(same_origin(&forwarded("http"), &proxies()), "the proxy's client used http");
        let plain = request("192.0.2.7:5", &[host, ("origin", "http://fleet.example:3002")]);
        assert!(same_origin(&plain, &[]), "plain http, or a proxy that does not say: either scheme");
    }

    #[test]
    fn the_servers_own_https_is_https_unless_a_trusted_proxy_says_its_client_used_http() {
        let own = |peer: &str, headers: &[(&str, &str)]| Request { tls: true, ..request(peer, headers) };
        assert!(over_https(&own("192.0.2.7:5", &[]), &[]));
        assert!(over_https(&own("192.0.2.7:5", &[("x-forwarded-proto", "http")]), &proxies()), "not a trusted proxy");
        assert!(!over_https(&own("10.0.0.1:5", &[("x-forwarded-proto", "http")]), &proxies()));
        assert!(over_https(&own("10.0.0.1:5", &[]), &proxies()), "a trusted proxy that says nothing");
    }
}
