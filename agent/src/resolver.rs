//! Where the server connection goes. ureq looks the server's host up before every
//! request, also when it then reuses a kept-alive connection and throws the answer
//! away, and with a timeout set it does so on a thread of its own: an idle agent
//! started a thread every poll. A server given by IP address (`http://10.0.0.2:3002`)
//! is never looked up here; a name still goes to ureq's resolver, as before.

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
            None => self.names.resolve(uri, config, timeout),
        }
    }
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
}
