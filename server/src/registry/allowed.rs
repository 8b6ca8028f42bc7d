//! Which hosts the resolver may talk to. The operator's `--allowed-registries` list
//! (when set, a reference on any other registry is not resolved, and no connection goes
//! to a host off the list: a listed registry answering with a redirect, or a Bearer
//! challenge whose token realm is elsewhere, cannot make the server fetch from another
//! service, such as an admin endpoint on the server's own network) and, independently of
//! it, a refusal of link-local (`169.254.0.0/16`, `fe80::/10`) and cloud metadata
//! addresses (`169.254.169.254`, `fd00:ec2::254`, `100.100.100.200`,
//! `metadata.google.internal`) unless the operator allows them explicitly
//! (`--allow-link-local-registries`, or by naming the host in `--allowed-registries`):
//! a registry, token realm or redirect pointing there would make the server fetch
//! cloud credentials for whoever controls the registry.
//!
//! With a list, a host may be contacted when it is listed (an entry `host` matches it on
//! any port, `host:port` exactly) or is implied by a listed entry: the API host of a
//! listed registry (`docker.io` → `registry-1.docker.io`) and Docker Hub's token realm
//! (`docker.io` → `auth.docker.io`). Any other hop is named in the refusal, with how to
//! allow it. Without a list every host may be, but link-local and metadata ones.
//!
//! Pure: names and addresses in, verdicts out. `guard` applies `check_hop` and
//! `check_address` to every connection (redirect hops and token realms included, and
//! every address a name resolves to); `token` applies `check_hop` to a realm before
//! asking it; `Resolver::resolve` applies `check_registry` to a reference before any
//! request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::transport::{api_host, host_of};

/// Docker Hub: references name `docker.io`, its API is served at `registry-1.docker.io`
/// (`transport::api_host`) and its Bearer challenges send clients to this token realm.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_TOKEN_REALM: &str = "auth.docker.io";

/// Hosts known by name to serve cloud instance metadata.
const METADATA_NAMES: [&str; 1] = ["metadata.google.internal"];

/// Cloud metadata services: AWS/GCP/Azure/OpenStack, AWS over IPv6, Alibaba Cloud.
const METADATA_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(100, 100, 100, 200)];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)];

/// What the operator allows. The default allows every registry except link-local and
/// metadata hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAccess {
    /// `host` or `host:port`, lowercased, brackets around IPv6 kept; empty: any registry.
    allowed: Vec<String>,
    /// `--allow-link-local-registries`.
    allow_link_local: bool,
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    Metadata,
    LinkLocal,
}

impl Special {
    fn describe(self) -> &'static str {
        match self {
            Special::Metadata => "a cloud metadata address",
            Special::LinkLocal => "a link-local address (169.254.0.0/16, fe80::/10)",
        }
    }
}

const HOW_TO_ALLOW: &str = "name it in --allowed-registries or pass --allow-link-local-registries to allow it";

impl RegistryAccess {
    /// `entries` as given to `--allowed-registries` (`host`, `host:port`, `[v6]:port`; a
    /// leading `http://`/`https://` or trailing `/` is tolerated). An entry with a path,
    /// spaces or nothing in it is refused with the reason.
    pub fn new(entries: &[String], allow_link_local: bool) -> Result<RegistryAccess, String> {
        let mut allowed = Vec::new();
        for entry in entries {
            let normalized = normalize_entry(entry).ok_or_else(|| {
                format!("{entry:?} is not a registry host (expected HOST or HOST:PORT, e.g. ghcr.io or 10.0.0.5:5000)")
            })?;
            if !allowed.contains(&normalized) {
                allowed.push(normalized);
            }
        }
        Ok(RegistryAccess { allowed, allow_link_local })
    }

    /// Whether `--allowed-registries` restricts registries at all.
    pub fn is_restricted(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// A reference's registry (`docker.io`, `ghcr.io`, `10.0.0.5:5000`) may be resolved:
    /// it is on the list (when there is one) and is not a link-local or metadata host
    /// unless allowed. `Err` is the reason, for the operator.
    pub fn check_registry(&self, domain: &str) -> Result<(), String> {
        let api = api_host(domain);
        if self.is_restricted() && !self.is_listed(domain) && !self.is_listed(api) {
            return Err(format!("{domain} is not in --allowed-registries ({})", self.allowed.join(", ")));
        }
        self.check_host(api)
    }

    /// A host about to be contacted on the way to a registry (`host[:port]`: its API
    /// host, a redirect target, a token realm). With a list, it must be listed or implied
    /// by a listed entry (its API host, Docker Hub's token realm); in any case
    /// `check_host` applies. `Err` is the reason, naming the host and how to allow it.
    pub fn check_hop(&self, authority: &str) -> Result<(), String> {
        if self.is_restricted() && !self.admits_hop(authority) {
            return Err(format!(
                "{authority} is not in --allowed-registries ({}) and a registry on it sent the server there \
                 (a redirect or a token realm); add {authority} to --allowed-registries to allow it",
                self.allowed.join(", ")
            ));
        }
        self.check_host(authority)
    }

    /// Any host about to be contacted (`host[:port]`: an API host, a token realm, a
    /// redirect target), judged by its name or literal address.
    pub fn check_host(&self, authority: &str) -> Result<(), String> {
        match classify_host(host_of(authority)) {
            Some(special) if !self.allows_special(authority) => {
                Err(format!("{} is {}; {HOW_TO_ALLOW}", host_of(authority), special.describe()))
            }
            _ => Ok(()),
        }
    }

    /// An address that `authority`'s name resolved to at connect time.
    pub fn check_address(&self, authority: &str, ip: IpAddr) -> Result<(), String> {
        match classify_ip(ip) {
            Some(special) if !self.allows_special(authority) => {
                Err(format!("{} resolves to {ip}, {}; {HOW_TO_ALLOW}", host_of(authority), special.describe()))
            }
            _ => Ok(()),
        }
    }

    fn allows_special(&self, authority: &str) -> bool {
        self.allow_link_local || self.is_listed(authority)
    }

    /// An entry `host:port` matches exactly; an entry `host` matches the host on any port.
    fn is_listed(&self, authority: &str) -> bool {
        let Some(target) = normalize_entry(authority) else { return false };
        self.allowed.iter().any(|entry| matches(entry, &target))
    }

    /// Listed, or a host a listed entry implies (with that entry's port, if it has one).
    fn admits_hop(&self, authority: &str) -> bool {
        let Some(target) = normalize_entry(authority) else { return false };
        self.allowed.iter().any(|entry| {
            matches(entry, &target) || implied_hosts(entry).iter().any(|implied| matches(implied, &target))
        })
    }
}

/// Whether the normalized `target` is what the normalized `entry` names: the same host,
/// and the same port unless the entry has none.
fn matches(entry: &str, target: &str) -> bool {
    let (entry_host, entry_port) = split(entry);
    let (host, port) = split(target);
    entry_host == host && (entry_port.is_none() || entry_port == port)
}

/// The hosts a listed registry is reached through besides its own name: its API host
/// (`docker.io` → `registry-1.docker.io`) and, for Docker Hub, its token realm
/// (`auth.docker.io`); each with the entry's port, if it has one.
fn implied_hosts(entry: &str) -> Vec<String> {
    let (host, port) = split(entry);
    let mut hosts = Vec::new();
    if api_host(host) != host {
        hosts.push(api_host(host).to_string());
    }
    if host == DOCKER_HUB {
        hosts.push(DOCKER_HUB_TOKEN_REALM.to_string());
    }
    match port {
        Some(port) => hosts.into_iter().map(|h| format!("{h}:{port}")).collect(),
        None => hosts,
    }
}

/// `host[:port]` lowercased, without scheme, trailing `/` or a trailing dot on the name;
/// a bare IPv6 address gets brackets. `None` for anything that is not an authority.
fn normalize_entry(entry: &str) -> Option<String> {
    let lower = entry.trim().to_ascii_lowercase();
    let bare = lower.strip_prefix("http://").or_else(|| lower.strip_prefix("https://")).unwrap_or(&lower);
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if bare.is_empty() || bare.contains(['/', '?', '#', '@', ' ', ',']) {
        return None;
    }
    if bare.parse::<Ipv6Addr>().is_ok() {
        return Some(format!("[{bare}]"));
    }
    let (host, port) = split(bare);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host == "[]" || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return None;
    }
    Some(match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

/// (host, port) of a normalized authority.
fn split(authority: &str) -> (&str, Option<&str>) {
    let host = host_of(authority);
    (host, authority[host.len()..].strip_prefix(':'))
}

/// Whether a host name or literal address (brackets allowed) is special.
pub(crate) fn classify_host(host: &str) -> Option<Special> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = bare.strip_suffix('.').unwrap_or(bare);
    if METADATA_NAMES.iter().any(|m| m.eq_ignore_ascii_case(name)) {
        return Some(Special::Metadata);
    }
    // A zone (`fe80::1%eth0`) is only ever on a link-local address.
    let address = name.split('%').next().unwrap_or(name);
    address.parse::<IpAddr>().ok().and_then(classify_ip)
}

/// Whether an address is a metadata service or link-local (IPv4-mapped and NAT64
/// embeddings of IPv4 addresses judged as the IPv4 address).
pub(crate) fn classify_ip(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if METADATA_V6.contains(&v6) {
                return Some(Special::Metadata);
            }
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                return Some(Special::LinkLocal);
            }
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let embedded = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return classify_v4(embedded);
            }
            None
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Special> {
    if METADATA_V4.contains(&ip) {
        Some(Special::Metadata)
    } else if ip.is_link_local() {
        Some(Special::LinkLocal)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(entries: &[&str], allow_link_local: bool) -> RegistryAccess {
        RegistryAccess::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>(), allow_link_local).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn metadata_and_link_local_addresses_are_recognized() {
        for metadata in
            ["169.254.169.254", "100.100.100.200", "fd00:ec2::254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"]
        {
            assert_eq!(classify_ip(ip(metadata)), Some(Special::Metadata), "{metadata}");
        }
        for link_local in ["169.254.0.1", "169.254.255.255", "fe80::1", "febf::ffff", "::ffff:169.254.1.1"] {
            assert_eq!(classify_ip(ip(link_local)), Some(Special::LinkLocal), "{link_local}");
        }
        for ordinary in [
            "127.0.0.1",
            "10.0.0.1",
            "169.253.255.255",
            "169.255.0.0",
            "100.100.100.201",
            "::1",
            "fec0::1",
            "fd00:ec2::253",
            "2001:db8::1",
        ] {
            assert_eq!(classify_ip(ip(ordinary)), None, "{ordinary}");
        }
    }

    #[test]
    fn hosts_by_name_or_literal() {
        assert_eq!(classify_host("metadata.google.internal"), Some(Special::Metadata));
        assert_eq!(classify_host("METADATA.google.internal."), Some(Special::Metadata));
        assert_eq!(classify_host("[fd00:ec2::254]"), Some(Special::Metadata));
        assert_eq!(classify_host("[fe80::1%25eth0]"), Some(Special::LinkLocal));
        assert_eq!(classify_host("169.254.10.10"), Some(Special::LinkLocal));
        assert_eq!(classify_host("metadata.google.internal.evil.example"), None);
        assert_eq!(classify_host("ghcr.io"), None);
        assert_eq!(classify_host("127.0.0.1"), None);
    }

    #[test]
    fn by_default_every_registry_but_link_local_and_metadata_ones() {
        let open = RegistryAccess::default();
        assert!(!open.is_restricted());
        for fine in ["docker.io", "ghcr.io", "127.0.0.1:5000", "10.0.0.5:5000", "[::1]:5000"] {
            assert_eq!(open.check_registry(fine), Ok(()), "{fine}");
        }
        for refused in
            ["169.254.169.254", "169.254.169.254:80", "metadata.google.internal", "[fe80::1]:5000", "100.100.100.200"]
        {
            let reason = open.check_registry(refused).unwrap_err();
            assert!(reason.contains("--allow-link-local-registries"), "{refused}: {reason}");
        }
        assert!(open.check_registry("169.254.169.254").unwrap_err().contains("metadata"));
        assert!(open.check_registry("169.254.1.1:5000").unwrap_err().contains("link-local"));
    }

    #[test]
    fn the_list_admits_its_hosts_only() {
        let list = access(&["ghcr.io", "10.0.0.5:5000", "https://Docker.IO/", "[::1]"], false);
        assert!(list.is_restricted());
        for fine in ["ghcr.io", "ghcr.io:443", "GHCR.io", "10.0.0.5:5000", "docker.io", "[::1]:5000"] {
            assert_eq!(list.check_registry(fine), Ok(()), "{fine}");
        }
        for refused in
            ["quay.io", "10.0.0.5:5001", "10.0.0.5", "ghcr.io.evil.example", "evil-ghcr.io", "127.0.0.1:5000"]
        {
            let reason = list.check_registry(refused).unwrap_err();
            assert!(
                reason.contains("not in --allowed-registries") && reason.contains("ghcr.io"),
                "{refused}: {reason}"
            );
        }
        // Docker Hub listed by its API host admits docker.io references too.
        assert_eq!(access(&["registry-1.docker.io"], false).check_registry("docker.io"), Ok(()));
    }

    #[test]
    fn without_a_list_every_hop_but_link_local_and_metadata_ones() {
        let open = RegistryAccess::default();
        for fine in ["127.0.0.1:5001", "auth.docker.io", "registry.lan", "[::1]:8080"] {
            assert_eq!(open.check_hop(fine), Ok(()), "{fine}");
        }
        let reason = open.check_hop("169.254.169.254").unwrap_err();
        assert!(reason.contains("metadata") && reason.contains("--allow-link-local-registries"), "{reason}");
    }

    #[test]
    fn with_a_list_a_hop_must_be_listed_or_implied_by_a_listed_entry() {
        let list = access(&["127.0.0.1:5000", "registry.lan", "docker.io"], false);
        for fine in [
            "127.0.0.1:5000",
            "registry.lan",
            "registry.lan:8443",
            "REGISTRY.lan.",
            "docker.io",
            "registry-1.docker.io",
            "registry-1.docker.io:443",
            "auth.docker.io",
        ] {
            assert_eq!(list.check_hop(fine), Ok(()), "{fine}");
        }
        for refused in [
            "127.0.0.1:5001",
            "127.0.0.1",
            "localhost:5000",
            "registry.lan.evil.example",
            "auth.docker.io.evil.example",
            "production.cloudflare.docker.com",
            "[::1]:5000",
        ] {
            let reason = list.check_hop(refused).unwrap_err();
            assert!(reason.starts_with(&format!("{refused} is not in --allowed-registries (")), "{reason}");
            assert!(reason.contains(&format!("add {refused} to --allowed-registries")), "{reason}");
        }
        // A port on the entry is kept on what it implies.
        let hub_443 = access(&["docker.io:443"], false);
        assert_eq!(hub_443.check_hop("registry-1.docker.io:443"), Ok(()));
        assert_eq!(hub_443.check_hop("auth.docker.io:443"), Ok(()));
        assert!(hub_443.check_hop("auth.docker.io:8080").is_err());
        // Only Docker Hub implies its token realm: another registry's realm is listed by name.
        let ghcr = access(&["ghcr.io"], false);
        assert!(ghcr.check_hop("auth.docker.io").is_err());
        assert!(ghcr.check_hop("registry-1.docker.io").is_err());
        // The link-local refusal still applies to an implied host, and a listed one allows it.
        assert_eq!(access(&["169.254.10.10:5000"], false).check_hop("169.254.10.10:5000"), Ok(()));
    }

    #[test]
    fn every_reference_the_list_admits_has_its_api_host_admitted_as_a_hop() {
        let list = access(&["docker.io", "ghcr.io", "10.0.0.5:5000", "registry-1.docker.io"], false);
        for domain in ["docker.io", "ghcr.io", "10.0.0.5:5000"] {
            assert_eq!(list.check_registry(domain), Ok(()), "{domain}");
            assert_eq!(list.check_hop(api_host(domain)), Ok(()), "{domain}");
        }
    }

    #[test]
    fn link_local_only_when_named_or_allowed() {
        let named = access(&["169.254.169.254", "registry.lan"], false);
        assert_eq!(named.check_registry("169.254.169.254:8080"), Ok(()));
        assert_eq!(named.check_host("169.254.169.254"), Ok(()));
        assert!(named.check_host("169.254.1.1").is_err(), "only the named address");
        assert_eq!(named.check_address("registry.lan:5000", ip("169.254.7.7")), Ok(()), "the operator named it");
        assert!(named.check_address("other.lan", ip("169.254.7.7")).is_err());

        let everything = access(&[], true);
        assert_eq!(everything.check_registry("169.254.169.254"), Ok(()));
        assert_eq!(everything.check_address("x.lan", ip("fe80::1")), Ok(()));

        let open = RegistryAccess::default();
        let reason = open.check_address("rebind.example:443", ip("169.254.169.254")).unwrap_err();
        assert!(reason.starts_with("rebind.example resolves to 169.254.169.254, a cloud metadata address"), "{reason}");
        assert_eq!(open.check_address("registry.example", ip("93.184.216.34")), Ok(()));
    }

    #[test]
    fn bad_list_entries_are_refused() {
        for bad in ["", " ", "ghcr.io/owner", "user@ghcr.io", "ghcr.io:port", "ghcr.io:99999", "a b", "[]"] {
            assert!(RegistryAccess::new(&[bad.to_string()], false).is_err(), "{bad:?}");
        }
        assert_eq!(access(&["fe80::1"], false), access(&["[fe80::1]"], false));
        assert_eq!(access(&["ghcr.io", "GHCR.IO."], false), access(&["ghcr.io"], false));
    }
}
