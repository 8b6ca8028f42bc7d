//! Where the server connection goes. ureq looks the server's host up before every
//! request, also when it then reuses a kept-alive connection and throws the answer
//! away, and with a timeout set it does so on a thread of its own: an idle agent
//! started a thread every poll. A server given by IP address (`http://10.0.0.2:3002`)
//! is never looked up here; a name still goes to ureq's resolver, as before, in lower
//! case: host names are case-insensitive (RFC 4343), and glibc's /etc/hosts lookup
//! ignores case, but musl's (the static agent of the amd64 and arm64 .debs) compares
//! names byte for byte, so `https://Pinion-GW` in /etc/hosts as `pinion-gw` would not
//! resolve there.

use std::net::{IpAddr, SocketAddr};
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// IP addresses as they are; names through ureq's `DefaultResolver`.
#[derive(Debug, Default)]
pub(crate) struct AddressOrName {
    names: DefaultResolver,
}

impl Resolver for AddressOrName {
    fn resolve(&self, uri: &Uri, config: &Config, timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        match ip_address(uri) {
            Some(address) => {
                let mut addresses = self.empty();
                addresses.push(address);
                Ok(addresses)
            }
            None => match lowercase_host(uri) {
                Some(lower) => self.names.resolve(&lower, config, timeout),
                None => self.names.resolve(uri, config, timeout),
            },
        }
    }
}

/// The URL with its host in lower case, when it has capitals (None: it has none). Only
/// for the lookup: the request itself (Host, SNI) keeps the URL as configured.
fn lowercase_host(uri: &Uri) -> Option<Uri> {
    let authority = uri.authority()?;
    if !authority.host().bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority.as_str().to_ascii_lowercase().parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// The socket address of a URL whose host is an IP address (`[::1]` bracketed), with
/// its port or the scheme's.
fn ip_address(uri: &Uri) -> Option<SocketAddr> {
    let host = uri.host()?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip: IpAddr = bare.parse().ok()?;
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(port), _) => port,
        (None, Some("https")) => 443,
        (None, Some("http")) => 80,
        (None, _) => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_addresses_are_taken_as_they_are() {
        let address = |url: &str| ip_address(&url.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(address("http://127.0.0.1:3002/api/v1/x").as_deref(), Some("127.0.0.1:3002"));
        assert_eq!(address("https://10.1.2.3/api").as_deref(), Some("10.1.2.3:443"));
        assert_eq!(address("http://[::1]/").as_deref(), Some("[::1]:80"));
        assert_eq!(address("https://[fe80::1]:8443/").as_deref(), Some("[fe80::1]:8443"));
        assert_eq!(address("https://pinion.example.com/"), None);
        assert_eq!(address("http://localhost:3002/"), None);
        assert_eq!(address("http://1.2.3/"), None, "not an address: a name for the resolver");
    }

    #[test]
    fn names_are_looked_up_in_lower_case() {
        let lower = |url: &str| lowercase_host(&url.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(
            lower("https://Pinion-GW.Example:8443/api/v1/x?a=B").as_deref(),
            Some("https://pinion-gw.example:8443/api/v1/x?a=B")
        );
        assert_eq!(lower("http://LOCALHOST/").as_deref(), Some("http://localhost/"));
        assert_eq!(lower("https://pinion-gw.example/"), None, "already lower case: looked up as it is");
    }
}
