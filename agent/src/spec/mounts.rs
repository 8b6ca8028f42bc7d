//! What a service mounts: `volumes` entries in compose's short syntax and `devices`.
//!
//! `volumes`: `name:/path[:opts]` is a named volume, scoped to the app (`<appId>_name`)
//! so two apps never share one by accident; `/host:/path[:opts]` is a bind mount of an
//! absolute host path; `/path` alone is an anonymous volume. Both named and bind go to
//! `HostConfig.Binds`, which (unlike `Mounts`) creates a missing host directory, as
//! compose does. `devices`: `/dev/a[:/dev/b][:rwm]` → `HostConfig.Devices`.

use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Options a `volumes` entry may end with (comma-separated).
const VOLUME_OPTIONS: &[&str] =
    &["ro", "rw", "z", "Z", "nocopy", "shared", "rshared", "slave", "rslave", "private", "rprivate"];

#[derive(Debug, Default)]
pub(super) struct Mounts {
    /// `HostConfig.Binds` entries, in the order given.
    pub binds: Vec<String>,
    /// Container paths of anonymous volumes.
    pub anonymous: BTreeSet<String>,
    /// App-scoped named volumes to create first.
    pub named: BTreeSet<String>,
    targets: BTreeSet<String>,
}

impl Mounts {
    pub fn add(&mut self, entry: &str, app_id: &str) -> Result<(), String> {
        let fail = |why: &str| format!("volumes {entry:?}: {why}");
        let parts: Vec<&str> = entry.split(':').collect();
        let (source, target, options) = match parts[..] {
            [target] => (None, target, None),
            [source, target] => (Some(source), target, None),
            [source, target, options] => (Some(source), target, Some(options)),
            _ => return Err(fail("expected <name or /host/path>:<container path>[:<options>]")),
        };
        if !target.starts_with('/') {
            return Err(fail("the container path must be absolute"));
        }
        if !self.targets.insert(target.to_owned()) {
            return Err(fail(&format!("{target} is mounted twice")));
        }
        if let Some(options) = options {
            let given: Vec<&str> = options.split(',').collect();
            if let Some(bad) = given.iter().find(|o| !VOLUME_OPTIONS.contains(o)) {
                return Err(fail(&format!("unknown option {bad:?}")));
            }
            if given.contains(&"ro") && given.contains(&"rw") {
                return Err(fail("both ro and rw"));
            }
        }
        let suffix = options.map(|o| format!(":{o}")).unwrap_or_default();
        match source {
            None => {
                self.anonymous.insert(target.to_owned());
            }
            Some(path) if path.starts_with('/') => self.binds.push(format!("{path}:{target}{suffix}")),
            Some(path) if path.starts_with('.') || path.starts_with('~') => {
                return Err(fail("a host path must be absolute (the agent has no project directory)"))
            }
            Some(name) if valid_name(name) => {
                let scoped = format!("{}{name}", super::app_prefix(app_id));
                self.binds.push(format!("{scoped}:{target}{suffix}"));
                self.named.insert(scoped);
            }
            Some(name) => return Err(fail(&format!("invalid volume name {name:?}"))),
        }
        Ok(())
    }
}

/// Docker's rule for volume (and our network) names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(super) fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `/dev/a`, `/dev/a:/dev/b`, `/dev/a:rw` or `/dev/a:/dev/b:rwm` → a `DeviceMapping`.
pub(super) fn device(entry: &str) -> Result<Value, String> {
    let fail = |why: &str| format!("devices {entry:?}: {why}");
    let parts: Vec<&str> = entry.split(':').collect();
    let (host, container, permissions) = match parts[..] {
        [host] => (host, host, "rwm"),
        [host, p] if permissions_ok(p) => (host, host, p),
        [host, container] => (host, container, "rwm"),
        [host, container, p] if permissions_ok(p) => (host, container, p),
        [_, _, p] => return Err(fail(&format!("permissions {p:?} must be made of r, w and m"))),
        _ => return Err(fail("expected /dev/<host>[:/dev/<container>][:<permissions>]")),
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(fail("device paths must be absolute"));
    }
    Ok(json!({"PathOnHost": host, "PathInContainer": container, "CgroupPermissions": permissions}))
}

fn permissions_ok(p: &str) -> bool {
    !p.is_empty() && p.len() <= 3 && p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_volumes_are_scoped_to_the_app() {
        let mut m = Mounts::default();
        m.add("data:/data", "1001").unwrap();
        m.add("cache:/cache:ro", "1001").unwrap();
        assert_eq!(m.binds, ["1001_data:/data", "1001_cache:/cache:ro"]);
        assert_eq!(m.named.iter().collect::<Vec<_>>(), ["1001_cache", "1001_data"]);
    }

    #[test]
    fn bind_mounts_and_anonymous_volumes() {
        let mut m = Mounts::default();
        m.add("/host/path:/in:ro", "1").unwrap();
        m.add("/anon", "1").unwrap();
        assert_eq!(m.binds, ["/host/path:/in:ro"]);
        assert_eq!(m.anonymous.iter().collect::<Vec<_>>(), ["/anon"]);
        assert!(m.named.is_empty());
    }

    #[test]
    fn malformed_volumes_are_refused() {
        for (entry, why) in [
            ("data:relative", "must be absolute"),
            ("./here:/in", "host path must be absolute"),
            ("~/here:/in", "host path must be absolute"),
            ("da ta:/in", "invalid volume name"),
            ("data:/in:rx", "unknown option"),
            ("data:/in:ro,rw", "both ro and rw"),
            ("a:b:c:d", "expected"),
            ("anon", "must be absolute"),
        ] {
            let err = Mounts::default().add(entry, "1").unwrap_err();
            assert!(err.starts_with(&format!("volumes {entry:?}")) && err.contains(why), "{entry}: {err}");
        }
        let mut m = Mounts::default();
        m.add("a:/x", "1").unwrap();
        assert!(m.add("/b:/x", "1").unwrap_err().contains("mounted twice"));
    }

    #[test]
    fn devices() {
        let mapping =
            |h: &str, c: &str, p: &str| json!({"PathOnHost": h, "PathInContainer": c, "CgroupPermissions": p});
        assert_eq!(device("/dev/ttyUSB0").unwrap(), mapping("/dev/ttyUSB0", "/dev/ttyUSB0", "rwm"));
        assert_eq!(device("/dev/ttyUSB0:/dev/ttyS0").unwrap(), mapping("/dev/ttyUSB0", "/dev/ttyS0", "rwm"));
        assert_eq!(device("/dev/x:/dev/y:rw").unwrap(), mapping("/dev/x", "/dev/y", "rw"));
        assert_eq!(device("/dev/x:r").unwrap(), mapping("/dev/x", "/dev/x", "r"));
        assert!(device("/dev/x:/dev/y:rwx").unwrap_err().contains("permissions"));
        assert!(device("ttyUSB0").unwrap_err().contains("absolute"));
        assert!(device("/a:/b:r:w").unwrap_err().contains("expected"));
    }
}
