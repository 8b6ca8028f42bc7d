//! Pulling from private registries. The server puts the credentials this device needs
//! into its target state, `"registryAuth": {"<host>": {"username", "password"}}`, for
//! the registries its target pulls from; a pull from one of them carries Docker's
//! `X-Registry-Auth` header: base64url (RFC 4648 §5, padded) of
//! `{"username", "password", "serveraddress"}`. Passwords never reach a log line, a
//! report or `status`.

use crate::store::AgentStore;
use pinion_model::{Reference, TargetState};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The key of the credentials in the target state.
pub const REGISTRY_AUTH_KEY: &str = "registryAuth";

/// Registry host (lowercase, Docker Hub as `docker.io`) → user and password.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    by_host: BTreeMap<String, (String, String)>,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (host, (user, _)) in &self.by_host {
            map.entry(host, &format_args!("{user}:<redacted>"));
        }
        map.finish()
    }
}

impl RegistryAuth {
    /// The credentials in `state`; entries without a user and password are skipped.
    pub fn from_target(state: &TargetState) -> RegistryAuth {
        let mut auth = RegistryAuth::default();
        let Some(Value::Object(hosts)) = state.extra.get(REGISTRY_AUTH_KEY) else {
            return auth;
        };
        for (host, login) in hosts {
            let text = |name: &str| login.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
            match (text("username"), text("password")) {
                (Some(user), Some(password)) => {
                    auth.by_host.insert(normalize_host(host), (user.to_string(), password.to_string()));
                }
                _ => log::warn!("registry credentials for {host} without a username and password; ignored"),
            }
        }
        auth
    }

    /// The credentials in the stored target; none when there is no target (or it does
    /// not parse, which reconciling reports).
    pub fn from_store(store: &AgentStore) -> RegistryAuth {
        let target = store.target().ok().flatten();
        let state = target.and_then(|t| serde_json::from_str::<TargetState>(&t.state).ok());
        state.map(|s| RegistryAuth::from_target(&s)).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The `X-Registry-Auth` value for pulling `image`, if its registry has credentials.
    pub fn header_for(&self, image: &str) -> Option<String> {
        let host = normalize_host(Reference::parse(image).ok()?.domain());
        let (username, password) = self.by_host.get(&host)?;
        Some(base64url(auth_config(&host, username, password).to_string().as_bytes()))
    }
}

/// Docker's `AuthConfig` for a pull; Docker Hub's server address as `docker login` writes it.
fn auth_config(host: &str, username: &str, password: &str) -> Value {
    let server = if host == "docker.io" { "https://index.docker.io/v1/" } else { host };
    json!({"username": username, "password": password, "serveraddress": server})
}

/// Lowercase, Docker Hub's aliases folded into `docker.io` (as the server keys them).
fn normalize_host(host: &str) -> String {
    match host.trim().to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

/// RFC 4648 §5 base64url, with `=` padding (what Docker decodes `X-Registry-Auth` with).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(auth: Value) -> TargetState {
        serde_json::from_value(json!({"apps": {}, "config": {}, "registryAuth": auth})).unwrap()
    }

    /// The inverse of `base64url`, for checking what Docker will read.
    fn decode(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let values: Vec<u32> = text
            .bytes()
            .filter(|b| *b != b'=')
            .map(|b| ALPHABET.iter().position(|a| *a == b).expect("base64url alphabet") as u32)
            .collect();
        let mut out = Vec::new();
        for chunk in values.chunks(4) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, v)| n | v << (18 - 6 * i));
            out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
        }
        out
    }

    #[test]
    fn base64url_as_rfc_4648() {
        for (input, expected) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (b"\xfb\xff\xbf", "-_-_"),
        ] {
            assert_eq!(base64url(input), expected);
            assert_eq!(decode(expected), input);
        }
    }

    #[test]
    fn pulls_from_a_registry_with_credentials_carry_them() {
        let auth = state(json!({"127.0.0.1:5000": {"username": "fleet", "password": "s3cret+/="},
                                "docker.io": {"username": "hub", "password": "hub-pass"}}));
        let auth = RegistryAuth::from_target(&auth);
        let digest = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let header = auth.header_for(&format!("127.0.0.1:5000/private/app@{digest}")).unwrap();
        assert!(!header.contains(['+', '/']), "{header}");
        let config: Value = serde_json::from_slice(&decode(&header)).unwrap();
        assert_eq!(config, json!({"username": "fleet", "password": "s3cret+/=", "serveraddress": "127.0.0.1:5000"}));
        assert!(auth.header_for("127.0.0.1:5000/private/app:latest").is_some(), "a tag kept as fallback too");

        let hub: Value = serde_json::from_slice(&decode(&auth.header_for("nginx:latest").unwrap())).unwrap();
        assert_eq!(hub["serveraddress"], "https://index.docker.io/v1/");
        assert_eq!(auth.header_for("other.lan/app:v1"), None);
        assert_eq!(auth.header_for("not a reference"), None);
    }

    #[test]
    fn without_credentials_nothing_is_sent_and_debug_hides_passwords() {
        assert!(RegistryAuth::from_target(&TargetState::default()).is_empty());
        assert!(RegistryAuth::from_target(&state(json!("nonsense"))).is_empty());
        let partial = RegistryAuth::from_target(&state(
            json!({"a.lan": {"username": "u"}, "B.LAN": {"username": "u", "password": "topsecret"}}),
        ));
        assert_eq!(partial.header_for("a.lan/app"), None);
        assert!(partial.header_for("b.lan/app").is_some(), "hosts compare in lowercase");
        let shown = format!("{partial:?}");
        assert!(shown.contains("b.lan") && !shown.contains("topsecret"), "{shown}");
    }

    #[test]
    fn the_stored_target_gives_the_credentials() {
        let store = AgentStore::in_memory().unwrap();
        assert!(RegistryAuth::from_store(&store).is_empty());
        let target = json!({"apps": {}, "config": {}, "registryAuth": {"a.lan": {"username": "u", "password": "p"}}});
        store.save_target(Some("\"e\""), &target.to_string()).unwrap();
        assert!(RegistryAuth::from_store(&store).header_for("a.lan/app:v1").is_some());
    }

    #[test]
    fn the_database_that_keeps_them_is_for_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("pinion-agent-auth-{}.db", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = AgentStore::open(&path).unwrap();
        store.save_target(None, "{}").unwrap();
        for suffix in ["", "-wal"] {
            let file = format!("{}{suffix}", path.display());
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
