//! Gateway-side limits: what the gateway's owner lets a target state ask of this host.
//! Without them, whoever holds the server (or its admin token) has root on every
//! gateway: a target can ask for a privileged container, a bind mount of `/` or the
//! Docker socket, every capability, `/dev/mem`, or the host's network. The owner opens
//! each power in `/etc/pinion/agent.toml`; everything is closed by default.
//!
//! The check is a pure function of a service's `ContainerCreate` body (exactly what
//! Docker would be sent) and the limits; a refused service is never created and is
//! reported like an invalid one. Only host paths are looked up on disk, by the caller's
//! `real_path` (symlinks resolved, in the agent's mount namespace, which must be the
//! host's: dockerd resolves them there).
//!
//! Bind sources: Docker resolves a bind mount's host path again at every start of the
//! container (restart policy, dockerd restart, reboot), so what the agent judged is not
//! what a later start mounts if a container can meanwhile swap a directory on that path
//! for a symlink. No judgement at create time can see that; the rule is therefore made
//! so that no container the agent creates can write any directory on the way to another
//! container's bind source: an entry allows one path, or (`dir/*`) the direct children
//! of one directory, never deeper, and a path allowed while another entry's paths lie
//! above it is refused. It holds whatever runs next to the container and at any later
//! start, because it depends only on the entries.
//!
//! The rules:
//! - `Privileged` needs `allow_privileged = true`.
//! - A bind mount's host path (a named volume is not one) must be absolute, contain no
//!   `..`, and (after dropping `.` and repeated or trailing slashes) be allowed by an
//!   entry of `allowed_bind_sources`:
//!   - an entry `/srv/app` allows exactly `/srv/app` (nothing under it);
//!   - an entry `/srv/apps/*` allows each direct child of `/srv/apps` (`/srv/apps/web`,
//!     not `/srv/apps` nor `/srv/apps/web/data`), except a child that is, holds or lies
//!     inside a [`PROTECTED_PATHS`] entry (`/`, the Docker and containerd sockets, run
//!     and state directories, `/var/lib/pinion`, `/etc/pinion`, `/proc`, `/sys`,
//!     `/boot`, `/dev`, the agent's `docker_socket` and database directory), which
//!     needs an entry naming exactly that path: `/var/*` allows `/var/www` but neither
//!     `/var/run` nor `/var/lib`.
//!   - The path is resolved now (symlinks followed); if that fails it is refused. A path
//!     allowed as a child must also lead to an allowed path.
//!   - Refused when a path another entry allows lies strictly above it (an entry
//!     `/srv/app` above `/srv/app/db`, an entry `/srv/*` above `/srv/web/db`), comparing
//!     the path as written and as resolved with each entry as written and as resolved: a
//!     container binding the upper path could plant a symlink on the lower one's way.
//! - A device's host path must equal or lie under an entry of `allowed_devices`, as
//!   written (udev's `/dev/serial/by-id/…` links are meant to be named, and containers
//!   cannot write `/dev` unless an entry names it exactly).
//! - Each `cap_add` value, compared upper-case without a `CAP_` prefix, must be listed in
//!   `allowed_capabilities`; `ALL` is allowed only by an `ALL` entry, which allows any.
//! - `networkMode: host` and `container:<name>` (another container's network namespace,
//!   which may be the host's or a container the owner runs by hand) need
//!   `allow_host_network = true`.
//! - With `allowed_registries` set, an image must name one of those registries, as
//!   Docker normalises it (`docker.io` for `nginx`); an image ID names no registry
//!   (nothing is pulled) and passes. Empty: any registry.
//! - Any other `HostConfig` field is refused: a field the agent learns to map later must
//!   be judged here before it can reach Docker.

use crate::config::DEFAULT_CONFIG_PATH;
use crate::spec::{DesiredService, ServiceKey};
use crate::Error;
use pinion_model::reference::ImageRef;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;

/// Host paths a bind mount reaches only through an entry naming exactly that path (a
/// `dir/*` entry does not allow a child that is, holds or lies inside one).
pub const PROTECTED_PATHS: &[&str] = &[
    "/",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/docker",
    "/run/docker",
    "/var/run/containerd",
    "/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
    // The agent's database (registry passwords, its device key) and settings (writing
    // agent.toml reopens every limit).
    "/var/lib/pinion",
    "/etc/pinion",
    "/proc",
    "/sys",
    "/boot",
    "/dev",
];

/// `HostConfig` fields judged below (or harmless): any other is refused.
const KNOWN_HOST_CONFIG: &[&str] =
    &["PortBindings", "Binds", "NetworkMode", "RestartPolicy", "Privileged", "Devices", "CapAdd", "CapDrop"];

/// The gateway owner's limits (`agent.toml`); the default refuses every power.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLimits {
    pub allow_privileged: bool,
    /// Normalised absolute paths, each exact or `dir/*` (`bind_entry`).
    pub allowed_bind_sources: Vec<String>,
    /// Normalised absolute paths.
    pub allowed_devices: Vec<String>,
    /// Upper case, without `CAP_`.
    pub allowed_capabilities: Vec<String>,
    pub allow_host_network: bool,
    /// Lower case; empty allows any registry.
    pub allowed_registries: Vec<String>,
    /// The agent's Docker socket, protected like the default one.
    pub docker_socket: Option<String>,
    /// The directory of the agent's database, protected like `/var/lib/pinion`.
    pub agent_db_dir: Option<String>,
}

/// One thing a service asked for that this gateway refuses, and the setting that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `privileged`, `the bind mount of /var/run/docker.sock`, …
    pub asked: String,
    /// `set allow_privileged = true`, `add "/dev/mem" to allowed_devices`, …
    pub remedy: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is refused by this gateway; {} in {DEFAULT_CONFIG_PATH} to allow it", self.asked, self.remedy)
    }
}

/// The services of `services` this gateway allows; each refused one is moved to
/// `invalid` (so it is held, never created, and reported) with every refusal named.
pub fn enforce(
    limits: &HostLimits,
    services: Vec<DesiredService>,
    invalid: &mut Vec<(ServiceKey, Error)>,
    real_path: &dyn Fn(&str) -> Option<String>,
) -> Vec<DesiredService> {
    let mut allowed = Vec::with_capacity(services.len());
    for service in services {
        let refusals = check(limits, &service, real_path);
        if refusals.is_empty() {
            allowed.push(service);
        } else {
            invalid.push((service.key.clone(), Error::Refused { service: service_name(&service.key), refusals }));
        }
    }
    invalid.sort_by(|a, b| a.0.cmp(&b.0));
    allowed
}

fn service_name(key: &ServiceKey) -> String {
    format!("{} (app {})", key.service_name, key.app_id)
}

/// Everything `service` asks that `limits` refuse, in the order of the rules.
pub fn check(
    limits: &HostLimits,
    service: &DesiredService,
    real_path: &dyn Fn(&str) -> Option<String>,
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let host = service.create_body.get("HostConfig").and_then(Value::as_object);
    let field = |name: &str| host.and_then(|h| h.get(name));
    let strings = |name: &str| -> Vec<String> {
        field(name)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap_or("").to_owned())
            .collect()
    };

    if field("Privileged").is_some_and(|v| v != &Value::Bool(false)) && !limits.allow_privileged {
        refusals.push(Refusal { asked: "privileged".into(), remedy: "set allow_privileged = true".into() });
    }
    for bind in strings("Binds") {
        // `source:target[:options]`; a source not starting with `/` is a named volume.
        let source = bind.split(':').next().unwrap_or("");
        if source.starts_with('/') {
            refusals.extend(check_bind(limits, source, real_path));
        }
    }
    for device in field("Devices").and_then(Value::as_array).into_iter().flatten() {
        let path = device.get("PathOnHost").and_then(Value::as_str).unwrap_or("");
        if !path_allowed(path, &limits.allowed_devices) {
            refusals.push(Refusal {
                asked: format!("the device {path}"),
                remedy: format!("add \"{path}\" to allowed_devices"),
            });
        }
    }
    for cap in strings("CapAdd") {
        let name = capability(&cap);
        let listed = limits.allowed_capabilities.iter().any(|c| *c == name || c == "ALL");
        if !listed {
            refusals.push(Refusal {
                asked: format!("cap_add {cap}"),
                remedy: format!("add \"{name}\" to allowed_capabilities"),
            });
        }
    }
    if let Some(mode) = field("NetworkMode").and_then(Value::as_str) {
        let shares_a_namespace = mode == "host" || mode.starts_with("container:");
        if shares_a_namespace && !limits.allow_host_network {
            refusals
                .push(Refusal { asked: format!("networkMode {mode}"), remedy: "set allow_host_network = true".into() });
        }
    }
    if !limits.allowed_registries.is_empty() {
        if let Some(refusal) = check_registry(&limits.allowed_registries, &service.image) {
            refusals.push(refusal);
        }
    }
    for name in host.into_iter().flat_map(|h| h.keys()) {
        if !KNOWN_HOST_CONFIG.contains(&name.as_str()) {
            refusals.push(Refusal {
                asked: format!("HostConfig.{name}"),
                remedy: "no setting allows it yet; report it to pinion's maintainers".into(),
            });
        }
    }
    refusals
}

fn check_bind(limits: &HostLimits, source: &str, real_path: &dyn Fn(&str) -> Option<String>) -> Option<Refusal> {
    let refusal = |asked: String, remedy: String| Some(Refusal { asked, remedy });
    let protected: Vec<String> = PROTECTED_PATHS
        .iter()
        .map(|p| (*p).to_owned())
        .chain([&limits.docker_socket, &limits.agent_db_dir].into_iter().flatten().filter_map(|p| normalise(p)))
        .collect();
    let entries = &limits.allowed_bind_sources;
    let Some(path) = normalise(source).filter(|p| bind_allowed(p, entries, &protected)) else {
        let entry = normalise(source).unwrap_or_else(|| source.to_owned());
        return refusal(format!("the bind mount of {source}"), format!("add \"{entry}\" to allowed_bind_sources"));
    };
    let Some(real) = real_path(&path) else {
        return refusal(
            format!("the bind mount of {source}, whose host path the agent cannot resolve,"),
            format!(
                "make {path} resolvable (the agent must see the host's paths as dockerd does) or name its real path"
            ),
        );
    };
    // Named exactly by an entry: taken as written. Allowed as a child: where it leads counts.
    if !named_exactly(&path, entries) && !bind_allowed(&real, entries, &protected) {
        return refusal(
            format!("the bind mount of {source} (which leads to {real})"),
            format!("add \"{real}\" to allowed_bind_sources"),
        );
    }
    for entry in entries {
        let written = bind_entry_dir(entry);
        let resolved = real_path(written.1);
        let entry_dirs = [Some(written.1), resolved.as_deref()];
        let above = [&path, &real].into_iter().find_map(|mine| {
            entry_dirs.into_iter().flatten().find(|dir| allows_above(written.0, dir, mine)).map(|_| mine)
        });
        if let Some(mine) = above {
            let how = if mine == &path { String::new() } else { format!(" (which leads to {mine})") };
            return refusal(
                format!(
                    "the bind mount of {source}{how}, which lies under a path the entry \"{entry}\" allows \
                     (a container binding that could plant a symlink on its way, followed at the next start),"
                ),
                format!("remove \"{entry}\" from allowed_bind_sources, or bind only paths it allows"),
            );
        }
    }
    None
}

/// Whether `path` is allowed by an entry of `entries`: named exactly, or a direct child
/// of a `dir/*` entry's directory that is not, holds and is not inside a `protected` path.
fn bind_allowed(path: &str, entries: &[String], protected: &[String]) -> bool {
    if named_exactly(path, entries) {
        return true;
    }
    let sensitive = protected.iter().any(|p| p == path || is_under(p, path) || (p != "/" && is_under(path, p)));
    !sensitive && entries.iter().any(|e| matches!(bind_entry_dir(e), (true, dir) if parent(path) == Some(dir)))
}

/// Whether an entry other than a `dir/*` one is `path`.
fn named_exactly(path: &str, entries: &[String]) -> bool {
    entries.iter().any(|e| bind_entry_dir(e) == (false, path))
}

/// `(children, path)`: `(true, "/srv/apps")` for `/srv/apps/*`, `(false, "/srv/app")` for
/// `/srv/app`.
fn bind_entry_dir(entry: &str) -> (bool, &str) {
    match entry.strip_suffix("/*") {
        Some("") => (true, "/"),
        Some(dir) => (true, dir),
        None => (false, entry),
    }
}

/// Whether a path an entry allows (`dir` itself, or with `children` a direct child of it)
/// lies strictly above `path`.
fn allows_above(children: bool, dir: &str, path: &str) -> bool {
    is_under(path, dir) && !(children && parent(path) == Some(dir))
}

/// The directory holding `path` (normalised); `None` for `/`.
fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind('/')?;
    (path != "/").then(|| if cut == 0 { "/" } else { &path[..cut] })
}

/// Whether `path` equals or lies under an entry of `allowed` (the device rule).
fn path_allowed(path: &str, allowed: &[String]) -> bool {
    let Some(path) = normalise(path) else { return false };
    allowed.iter().any(|entry| *entry == path || is_under(&path, entry))
}

/// Whether `path` lies strictly under `dir` (both normalised).
fn is_under(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return path != "/";
    }
    path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// An absolute path without `.` components, repeated or trailing slashes; `None` for a
/// relative path or one with a `..` component (refused outright rather than resolved).
pub fn normalise(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// A capability as Docker reads it: upper case, without the `CAP_` prefix.
pub fn capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").map(str::to_owned).unwrap_or(upper)
}

/// A registry host as entries are compared: lower case, Docker Hub as `docker.io`.
pub fn registry(host: &str) -> String {
    match host.trim().to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

fn check_registry(allowed: &[String], image: &str) -> Option<Refusal> {
    match ImageRef::parse(image) {
        Ok(ImageRef::Id(_)) => None,
        Ok(ImageRef::Named(reference)) => {
            let domain = registry(reference.domain());
            (!allowed.contains(&domain)).then(|| Refusal {
                asked: format!("the image {image} from registry {domain}"),
                remedy: format!("add \"{domain}\" to allowed_registries"),
            })
        }
        Err(_) => Some(Refusal {
            asked: format!("the image {image}, which names no registry this gateway can check"),
            remedy: "fix the image reference; allowed_registries cannot be checked".into(),
        }),
    }
}

/// `"a, b,c"` → `["a", "b", "c"]`: the list syntax of `agent.toml` and its environment
/// variables (one quoted string, comma-separated; spaces around entries ignored).
pub fn parse_list(
    key: &str,
    value: &str,
    item: impl Fn(&str) -> Result<String, String>,
) -> Result<Vec<String>, String> {
    let mut items = Vec::new();
    for raw in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parsed = item(raw).map_err(|why| format!("{key}: {raw:?} {why}"))?;
        if !items.contains(&parsed) {
            items.push(parsed);
        }
    }
    Ok(items)
}

/// An entry of `allowed_bind_sources`: a path, or a directory followed by `/*` (its
/// direct children).
pub fn bind_entry(raw: &str) -> Result<String, String> {
    let entry = path_entry(raw)?;
    let (_, dir) = bind_entry_dir(&entry);
    if dir.contains('*') {
        return Err("may hold `*` only as its last part (\"/srv/apps/*\": each directory in /srv/apps)".into());
    }
    Ok(entry)
}

/// An entry of `allowed_devices` (or, checked further, `allowed_bind_sources`).
pub fn path_entry(raw: &str) -> Result<String, String> {
    normalise(raw).ok_or_else(|| "must be an absolute path without `..`".to_owned())
}

/// An entry of `allowed_capabilities`.
pub fn capability_entry(raw: &str) -> Result<String, String> {
    let name = capability(raw);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("is not a capability name (like NET_ADMIN, or ALL)".into());
    }
    Ok(name)
}

/// An entry of `allowed_registries`: a host, with its port if it has one.
pub fn registry_entry(raw: &str) -> Result<String, String> {
    let ok = raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !ok {
        return Err("must be a registry host (like docker.io or registry.example.com:5000)".into());
    }
    Ok(registry(raw))
}

/// The host path `path` resolves to, symlinks followed: the real path of its longest
/// existing ancestor with the missing rest appended (Docker creates a missing bind
/// source). `None` when it cannot be resolved: a part that exists but does not resolve
/// (a dangling or looping symlink, no permission), or a path that is not UTF-8.
pub fn real_path(path: &str) -> Option<String> {
    let mut existing = std::path::PathBuf::from(normalise(path)?);
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(mut real) => {
                real.extend(rest.iter().rev());
                return real.to_str().map(str::to_owned);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::symlink_metadata(&existing).is_err() => {}
            Err(_) => return None,
        }
        rest.push(existing.file_name()?.to_owned());
        if !existing.pop() {
            return None;
        }
    }
}

/// Which errors were already logged, so that a refused or invalid service is logged when
/// it appears, not every cycle; one that goes away and comes back is logged again.
#[derive(Debug, Default)]
pub struct LoggedOnce {
    seen: BTreeSet<String>,
}

impl LoggedOnce {
    /// The messages among `current` not logged last time.
    pub fn fresh(&mut self, current: &[(ServiceKey, Error)]) -> Vec<String> {
        let now: BTreeSet<String> = current.iter().map(|(_, e)| e.to_string()).collect();
        let fresh = now.difference(&self.seen).cloned().collect();
        self.seen = now;
        fresh
    }
}

#[cfg(test)]
mod tests;
