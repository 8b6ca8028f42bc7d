//! Registry credentials (user and password per registry host), read from the Docker
//! `config.json` an operator already has from `docker login`, or added one by one.
//! Hosts are normalized the way Docker writes its keys, so `https://index.docker.io/v1/`,
//! `docker.io` and `registry-1.docker.io` all name Docker Hub.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::base64;
use crate::Error;

/// The largest `config.json` read; real ones are a few KiB.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Where the resolver finds the user and password for a registry host: the
/// `config.json` ones (`Credentials`), or those the operator stored through the API
/// (`registry_auth::StoredCredentials`).
pub trait CredentialSource: Send + Sync + fmt::Debug {
    /// The user and password for `host` (`docker.io`, `127.0.0.1:5000`, …), if any.
    fn credentials_for(&self, host: &str) -> Option<(String, String)>;
}

impl CredentialSource for Credentials {
    fn credentials_for(&self, host: &str) -> Option<(String, String)> {
        self.for_registry(host).map(|(user, password)| (user.to_string(), password.to_string()))
    }
}

/// Registry host (normalized as Docker writes its keys) → (user, password).
#[derive(Clone, Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

impl Credentials {
    /// Reads a Docker `config.json`: `{"auths": {"<host>": {"auth": base64("user:password")}}}`,
    /// or `username`/`password` fields instead of `auth`. Keys may be
    /// `https://index.docker.io/v1/` (Docker Hub), `http(s)://host[:port][/…]` or `host[:port]`.
    /// Entries without credentials (those kept by a `credsStore` helper) are skipped with a
    /// warning; a malformed entry is an error naming its key.
    pub fn from_docker_config(path: &Path) -> Result<Credentials, Error> {
        let fail = |reason: String| Error::RegistryCredentials { path: path.to_path_buf(), reason };
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(fail(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        Credentials::from_docker_config_json(&text).map_err(fail)
    }

    /// The parsing half of [`Credentials::from_docker_config`]; the error is the reason.
    fn from_docker_config_json(text: &[u8]) -> Result<Credentials, String> {
        let doc: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let Some(doc) = doc.as_object() else {
            return Err("expected a JSON object".to_string());
        };
        for helper in ["credsStore", "credHelpers"] {
            if doc.contains_key(helper) {
                log::warn!("docker config: `{helper}` is not supported; only `auths` entries are read");
            }
        }
        let mut credentials = Credentials::default();
        let Some(auths) = doc.get("auths") else {
            return Ok(credentials);
        };
        let Some(auths) = auths.as_object() else {
            return Err("`auths` is not an object".to_string());
        };
        for (key, entry) in auths {
            match parse_entry(entry) {
                Ok(Some((user, password))) => credentials.insert(key, &user, &password),
                Ok(None) => log::warn!(
                    "docker config: no user and password for {key:?} (kept by a credential helper?); skipped"
                ),
                Err(reason) => return Err(format!("auths[{key:?}]: {reason}")),
            }
        }
        Ok(credentials)
    }

    /// Adds (or replaces) the credentials for a registry host, written as in `config.json`.
    pub fn insert(&mut self, host: &str, user: &str, password: &str) {
        self.by_host.insert(normalize_host(host), (user.to_string(), password.to_string()));
    }

    /// The credentials for a registry host (`docker.io`, `127.0.0.1:5000`, …), if any.
    pub fn for_registry(&self, host: &str) -> Option<(&str, &str)> {
        self.by_host.get(&normalize_host(host)).map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// True when no registry has credentials.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// Passwords never reach a log line.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hosts: Vec<_> = self.by_host.iter().map(|(h, (u, _))| (h, u)).collect();
        hosts.sort();
        let mut map = f.debug_map();
        for (host, user) in hosts {
            map.entry(host, &format_args!("{user}:<redacted>"));
        }
        map.finish()
    }
}

/// One `auths` entry: `Ok(None)` when it holds no user/password at all.
fn parse_entry(entry: &serde_json::Value) -> Result<Option<(String, String)>, String> {
    let Some(entry) = entry.as_object() else {
        return Err("expected an object".to_string());
    };
    let text = |name: &str| entry.get(name).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    if let Some(auth) = text("auth") {
        let decoded = base64::decode(auth).ok_or("`auth` is not valid base64")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "`auth` is not UTF-8 text")?;
        let (user, password) = decoded.split_once(':').ok_or("`auth` does not decode to user:password")?;
        return Ok(Some((user.to_string(), password.to_string())));
    }
    match (text("username"), text("password")) {
        (Some(user), Some(password)) => Ok(Some((user.to_string(), password.to_string()))),
        (Some(_), None) | (None, Some(_)) => Err("`username` and `password` must both be set".into()),
        (None, None) => Ok(None),
    }
}

/// The registry host a `config.json` key or a reference domain names, lowercased:
/// scheme and path dropped, Docker Hub's aliases folded into `docker.io`.
pub(crate) fn normalize_host(key: &str) -> String {
    let key = key.trim();
    let lower = key.to_ascii_lowercase();
    let without_scheme = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")).unwrap_or(&lower);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_login_keys_and_auth_fields() {
        let json = br#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "aHViLXVzZXI6aHViLXBhc3M="},
                "127.0.0.1:5001": {"auth": "dGVzdHVzZXI6dGVzdDpwYXNzd29yZA=="},
                "http://Registry.Example.com:8443/v2/": {"username": "alice", "password": "s3cret"},
                "ghcr.io": {}
            },
            "credsStore": "desktop"
        }"#;
        let creds = Credentials::from_docker_config_json(json).unwrap();
        assert_eq!(creds.for_registry("docker.io"), Some(("hub-user", "hub-pass")));
        assert_eq!(creds.for_registry("registry-1.docker.io"), Some(("hub-user", "hub-pass")));
        // Only the first `:` separates the user; the password may contain more.
        assert_eq!(creds.for_registry("127.0.0.1:5001"), Some(("testuser", "test:password")));
        assert_eq!(creds.for_registry("registry.example.com:8443"), Some(("alice", "s3cret")));
        assert_eq!(creds.for_registry("registry.example.com"), None);
        assert_eq!(creds.for_registry("ghcr.io"), None);
    }

    #[test]
    fn empty_or_helper_only_config_has_no_credentials() {
        assert!(Credentials::from_docker_config_json(b"{}").unwrap().is_empty());
        assert!(Credentials::from_docker_config_json(br#"{"credsStore":"pass"}"#).unwrap().is_empty());
    }

    #[test]
    fn malformed_entries_name_their_key() {
        for (json, needle) in [
            (&br#"{"auths": {"h": {"auth": "!!!"}}}"#[..], "base64"),
            (br#"{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}"#, "user:password"),
            (br#"{"auths": {"h": {"username": "u"}}}"#, "both"),
            (br#"{"auths": []}"#, "not an object"),
            (br#"{"auths": {"h": 3}}"#, "object"),
            (b"not json", "JSON"),
        ] {
            let err = Credentials::from_docker_config_json(json).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn reads_a_config_file() {
        let path = std::env::temp_dir().join(format!("pinion-docker-config-{}.json", std::process::id()));
        std::fs::write(&path, br#"{"auths":{"localhost:5000":{"auth":"dTpw"}}}"#).unwrap();
        let creds = Credentials::from_docker_config(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(creds.unwrap().for_registry("localhost:5000"), Some(("u", "p")));
    }

    #[test]
    fn missing_file_is_a_credentials_error_with_the_path() {
        let path = Path::new("/nonexistent/pinion/config.json");
        match Credentials::from_docker_config(path) {
            Err(Error::RegistryCredentials { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn insert_normalizes_and_debug_redacts() {
        let mut creds = Credentials::default();
        creds.insert("https://LOCALHOST:5000", "u", "topsecret");
        assert_eq!(creds.for_registry("localhost:5000"), Some(("u", "topsecret")));
        let shown = format!("{creds:?}");
        assert!(shown.contains("localhost:5000") && !shown.contains("topsecret"), "{shown}");
    }
}
