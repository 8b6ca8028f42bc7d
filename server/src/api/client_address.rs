//! Who the client is behind a reverse proxy: the TCP peer, unless that peer is one of
//! the operator's `--trusted-proxy` addresses; then the nearest address in
//! `Forwarded` (RFC 7239) or `X-Forwarded-For` that is not itself a trusted proxy.
//! Read from the right: entries further left were written by the client and prove
//! nothing. Pure, so that each rule has a test; the rate limits key on what it gives.

use std::net::{IpAddr, SocketAddr};

/// An address or a network (`10.0.0.0/8`, `fd00::/8`): a proxy whose headers are
/// believed (`--trusted-proxy`), or a client that may scrape `/metrics` (`--metrics-allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    network: IpAddr,
    prefix: u8,
}

/// A reverse proxy whose `Forwarded`/`X-Forwarded-For` name the client.
pub type TrustedProxy = Network;

impl Network {
    /// `ADDR` or `ADDR/PREFIX`.
    pub fn parse(text: &str) -> Result<Network, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr =
            address.trim().parse().map_err(|_| format!("{text:?} is not an IP address or network"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= bits).ok_or(format!("{text:?}: bad prefix"))?,
        };
        Ok(Network { network, prefix })
    }

    /// Whether `address` (IPv4-mapped IPv6 as IPv4) is in this network.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                masked(u32::from(net).into(), 32, self.prefix) == masked(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                masked(u128::from(net), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits >> (width - prefix)
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address for `peer` and the request's headers (lowercase names).
pub fn client_address(peer: SocketAddr, headers: &[(String, String)], trusted: &[TrustedProxy]) -> SocketAddr {
    let is_trusted = |address: IpAddr| trusted.iter().any(|t| t.contains(address));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let header = |name: &'static str| headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str());
    // `Forwarded` wins when a proxy sends it; each element's `for=`, in order.
    let mut chain: Vec<Option<IpAddr>> = header("forwarded")
        .flat_map(|v| v.split(','))
        .map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then(|| forwarded_node(value.trim()))
            })?
        })
        .collect();
    if chain.is_empty() {
        chain =
            header("x-forwarded-for").flat_map(|v| v.split(',')).map(|entry| forwarded_node(entry.trim())).collect();
    }
    for node in chain.iter().rev() {
        match node {
            Some(address) if is_trusted(*address) => continue,
            Some(address) => return SocketAddr::new(canonical(*address), 0),
            // An entry that is not an address (`unknown`, garbage): nothing before it
            // can be believed; the proxy itself is the client.
            None => return peer,
        }
    }
    peer
}

/// `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn forwarded_node(text: &str) -> Option<IpAddr> {
    let text = text.trim_matches('"');
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    let inner = text.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().unwrap(), 40000)
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn trusted(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|t| TrustedProxy::parse(t).unwrap()).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let claimed = headers(&[("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9")]);
        assert_eq!(client_address(peer("192.0.2.1"), &claimed, &trusted(&["10.0.0.0/8"])), peer("192.0.2.1"));
        assert_eq!(client_address(peer("192.0.2.1"), &claimed, &[]), peer("192.0.2.1"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_nearest_untrusted_address_counts() {
        let proxies = trusted(&["10.0.0.0/8", "127.0.0.2"]);
        let via = |pairs: &[(&str, &str)]| client_address(peer("127.0.0.2"), &headers(pairs), &proxies).ip();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // nginx's $proxy_add_x_forwarded_for: what the client sent, then its address.
        assert_eq!(via(&[("x-forwarded-for", "198.51.100.7")]), ip("198.51.100.7"));
        assert_eq!(
            via(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 198.51.100.7")]),
            ip("198.51.100.7"),
            "forged entries on the left"
        );
        assert_eq!(via(&[("x-forwarded-for", "198.51.100.7, 10.1.2.3")]), ip("198.51.100.7"), "a chain of our proxies");
        assert_eq!(via(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "198.51.100.7")]), ip("198.51.100.7"));
        assert_eq!(via(&[("forwarded", "for=1.1.1.1, for=\"[2001:db8::1]:4711\";proto=https")]), ip("2001:db8::1"));
        assert_eq!(via(&[("forwarded", "for=198.51.100.7:80"), ("x-forwarded-for", "9.9.9.9")]), ip("198.51.100.7"));
        assert_eq!(via(&[("x-forwarded-for", "::ffff:198.51.100.7")]), ip("198.51.100.7"));
        // Nothing usable: the proxy itself.
        assert_eq!(via(&[]), ip("127.0.0.2"));
        assert_eq!(via(&[("x-forwarded-for", "unknown")]), ip("127.0.0.2"));
        assert_eq!(
            via(&[("x-forwarded-for", "1.1.1.1, garbage")]),
            ip("127.0.0.2"),
            "nothing left of garbage is believed"
        );
    }

    #[test]
    fn trusted_proxies_parse_as_addresses_or_networks() {
        assert!(TrustedProxy::parse("127.0.0.1").is_ok());
        assert!(TrustedProxy::parse("fd00::/8").is_ok());
        for bad in ["", "nginx", "10.0.0.0/33", "::/129", "10.0.0.0/x"] {
            assert!(TrustedProxy::parse(bad).is_err(), "{bad}");
        }
        let net = TrustedProxy::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.200.0.1".parse().unwrap()) && !net.contains("11.0.0.1".parse().unwrap()));
        assert!(TrustedProxy::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
    }
}
