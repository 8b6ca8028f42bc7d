//! `ports` and `expose` entries in compose's short syntax, gathered into Docker's
//! `ExposedPorts` (`{"80/tcp": {}}`) and `HostConfig.PortBindings`
//! (`{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`).
//!
//! `ports`: `[ip:][host:]container[/protocol]`, an IPv6 address in brackets
//! (`[::1]:8080:80`), ports or equal-length ranges (`8000-8001:80-81`); a bare container
//! port is published on a host port Docker picks, as compose does. `expose`:
//! `container[/protocol]`, not published.

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The most ports one entry may name; a typo like `1-65535` should not make a huge body.
const MAX_RANGE: u32 = 1024;

#[derive(Debug, Default)]
pub(super) struct Ports {
    exposed: BTreeSet<String>,
    /// `80/tcp` → (host IP, host port), sorted so the order of entries does not matter.
    bindings: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl Ports {
    pub fn is_empty(&self) -> bool {
        self.exposed.is_empty()
    }

    /// Adds one `ports` entry.
    pub fn publish(&mut self, entry: &str) -> Result<(), String> {
        let fail = |why: &str| format!("ports {entry:?}: {why}");
        let (rest, protocol) = split_protocol(entry).map_err(|e| fail(&e))?;
        let (ip, host, container) = split_addresses(rest).map_err(|e| fail(&e))?;
        let (first, last) = range(container).map_err(|e| fail(&e))?;
        let host_ports: Vec<String> = match host {
            None | Some("") => vec![String::new(); (last - first + 1) as usize],
            Some(host) => {
                let (host_first, host_last) = range(host).map_err(|e| fail(&e))?;
                if host_last - host_first == last - first {
                    (host_first..=host_last).map(|p| p.to_string()).collect()
                } else if first == last {
                    // One container port, a host range: Docker picks a free port in it.
                    vec![host.to_owned()]
                } else {
                    return Err(fail("host and container port ranges differ in length"));
                }
            }
        };
        for (port, host_port) in (first..=last).zip(host_ports) {
            let key = format!("{port}/{protocol}");
            self.exposed.insert(key.clone());
            self.bindings.entry(key).or_default().insert((ip.clone(), host_port));
        }
        Ok(())
    }

    /// Adds one `expose` entry.
    pub fn expose(&mut self, entry: &str) -> Result<(), String> {
        let fail = |why: &str| format!("expose {entry:?}: {why}");
        let (port, protocol) = split_protocol(entry).map_err(|e| fail(&e))?;
        let (first, last) = range(port).map_err(|e| fail(&e))?;
        for port in first..=last {
            self.exposed.insert(format!("{port}/{protocol}"));
        }
        Ok(())
    }

    /// (`ExposedPorts`, `PortBindings`).
    pub fn into_json(self) -> (Value, Value) {
        let exposed: Map<String, Value> = self.exposed.into_iter().map(|p| (p, json!({}))).collect();
        let bindings: Map<String, Value> = self
            .bindings
            .into_iter()
            .map(|(port, hosts)| {
                let hosts = hosts.into_iter().map(|(ip, port)| json!({"HostIp": ip, "HostPort": port}));
                (port, Value::Array(hosts.collect()))
            })
            .collect();
        (Value::Object(exposed), Value::Object(bindings))
    }
}

fn split_protocol(entry: &str) -> Result<(&str, &str), String> {
    match entry.trim().rsplit_once('/') {
        None => Ok((entry.trim(), "tcp")),
        Some((rest, p @ ("tcp" | "udp" | "sctp"))) => Ok((rest, p)),
        Some((_, p)) => Err(format!("unknown protocol {p:?} (expected tcp, udp or sctp)")),
    }
}

/// `[ip:][host:]container` → (host IP or "", host part, container part).
fn split_addresses(s: &str) -> Result<(String, Option<&str>, &str), String> {
    if let Some(bracketed) = s.strip_prefix('[') {
        let (ip, rest) = bracketed.split_once("]:").ok_or("expected [<IPv6 address>]:<host port>:<port>")?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
        let (host, container) = rest.split_once(':').ok_or("expected [<IPv6 address>]:<host port>:<port>")?;
        return Ok((ip.to_string(), Some(host), container));
    }
    let parts: Vec<&str> = s.split(':').collect();
    match parts[..] {
        [container] => Ok((String::new(), None, container)),
        [host, container] => Ok((String::new(), Some(host), container)),
        [ip, host, container] => {
            let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
            Ok((ip.to_string(), Some(host), container))
        }
        _ => Err("too many ':' (an IPv6 address goes in brackets: [::1]:8080:80)".into()),
    }
}

/// `80` or `8000-8010` → (first, last).
fn range(s: &str) -> Result<(u32, u32), String> {
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(s)?, port(s)?),
    };
    if first > last {
        return Err(format!("range {s} ends before it starts"));
    }
    if last - first >= MAX_RANGE {
        return Err(format!("range {s} is larger than {MAX_RANGE} ports"));
    }
    Ok((first, last))
}

fn port(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) && !s.starts_with('+') => Ok(p),
        _ => Err(format!("{s:?} is not a port number (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(entries: &[&str]) -> Result<(Value, Value), String> {
        let mut ports = Ports::default();
        for e in entries {
            ports.publish(e)?;
        }
        Ok(ports.into_json())
    }

    fn bindings(entries: &[&str]) -> Value {
        published(entries).unwrap().1
    }

    #[test]
    fn host_and_container_port() {
        let (exposed, b) = published(&["8080:80"]).unwrap();
        assert_eq!(exposed, json!({"80/tcp": {}}));
        assert_eq!(b, json!({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}));
    }

    #[test]
    fn bare_port_is_published_on_a_port_docker_picks() {
        assert_eq!(bindings(&["80"]), json!({"80/tcp": [{"HostIp": "", "HostPort": ""}]}));
    }

    #[test]
    fn ip_and_protocol() {
        assert_eq!(
            bindings(&["127.0.0.1:8080:80/udp"]),
            json!({"80/udp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]})
        );
        assert_eq!(bindings(&["8080:80/tcp"]), json!({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}));
        assert_eq!(bindings(&["127.0.0.1::80"]), json!({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}));
    }

    #[test]
    fn ipv6_in_brackets() {
        assert_eq!(bindings(&["[::1]:8080:80"]), json!({"80/tcp": [{"HostIp": "::1", "HostPort": "8080"}]}));
        let err = published(&["::1:8080:80"]).unwrap_err();
        assert!(err.contains("brackets"), "{err}");
        let err = published(&["[::zz]:8080:80"]).unwrap_err();
        assert!(err.contains("not an IPv6 address"), "{err}");
    }

    #[test]
    fn one_container_port_on_several_host_addresses() {
        assert_eq!(
            bindings(&["8080:80", "127.0.0.1:9090:80"]),
            json!({"80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "9090"}]})
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(
            bindings(&["8000-8001:80-81"]),
            json!({"80/tcp": [{"HostIp": "", "HostPort": "8000"}], "81/tcp": [{"HostIp": "", "HostPort": "8001"}]})
        );
        assert_eq!(bindings(&["8000-8010:80"]), json!({"80/tcp": [{"HostIp": "", "HostPort": "8000-8010"}]}));
        let err = published(&["8000-8002:80-81"]).unwrap_err();
        assert!(err.contains("differ in length"), "{err}");
        let err = published(&["81-80"]).unwrap_err();
        assert!(err.contains("ends before it starts"), "{err}");
        let err = published(&["1-65535"]).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn malformed_entries_are_refused_with_the_entry_named() {
        for (entry, why) in [
            ("", "not a port number"),
            ("http", "not a port number"),
            ("0", "not a port number"),
            ("65536", "not a port number"),
            ("80:", "not a port number"),
            ("80/icmp", "unknown protocol"),
            ("localhost:8080:80", "not an IPv4 address"),
            ("1.2.3.4:5:6:7", "too many"),
        ] {
            let err = published(&[entry]).unwrap_err();
            assert!(err.starts_with(&format!("ports {entry:?}")) && err.contains(why), "{entry}: {err}");
        }
    }

    #[test]
    fn expose_only_exposes() {
        let mut ports = Ports::default();
        ports.expose("9000/udp").unwrap();
        ports.expose("3000-3001").unwrap();
        let (exposed, b) = ports.into_json();
        assert_eq!(exposed, json!({"3000/tcp": {}, "3001/tcp": {}, "9000/udp": {}}));
        assert_eq!(b, json!({}));
    }
}
