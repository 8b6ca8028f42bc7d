//! The agent's settings: `/etc/pinion/agent.toml` (flat `key = value` TOML), each key
//! overridable by a `PINION_*` environment variable. Durations take plain seconds or an
//! `s`/`m`/`h` suffix; lists are one quoted string of comma-separated entries
//! (`allowed_devices = "/dev/ttyUSB0, /dev/i2c-1"`), and an empty string is an empty list.

use crate::host_limits::{self, HostLimits};
use crate::Error;
use pinion_model::duration::parse_duration;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pinion/agent.toml";
pub const DEFAULT_DB_PATH: &str = "/var/lib/pinion/agent.db";
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(60);
/// Pulls stop below this much free space where Docker keeps images.
pub const DEFAULT_MIN_FREE_DISK: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The server's base URL (`https://pinion.example.com`); plain http only to loopback
    /// unless `allow_insecure_server` (`server_url`).
    pub server: Option<String>,
    /// Allows a plain-http server URL to a host other than loopback. Default false.
    pub allow_insecure_server: bool,
    /// A PEM file of CAs trusted for the server connection besides the system's (a
    /// private fleet CA).
    pub ca_file: Option<PathBuf>,
    pub uuid: Option<String>,
    pub device_key: Option<String>,
    pub provisioning_key: Option<String>,
    pub device_name: Option<String>,
    pub device_type: Option<String>,
    pub poll_interval: Duration,
    /// Heartbeat: a report goes out at least this often, changed or not.
    pub report_interval: Duration,
    /// How long a new deployment is watched: failing within it puts the one before back.
    /// Zero turns probation (and rollback) off.
    pub probation: Duration,
    pub docker_socket: PathBuf,
    pub db: PathBuf,
    /// Below this many bytes free where Docker keeps images, no pull starts (`disk.rs`);
    /// 0: no threshold. `min_free_disk = "256M"`.
    pub min_free_disk: u64,
    /// What a target state may ask of this host (`allow_privileged`, `allowed_*`, …);
    /// everything is refused by default.
    pub limits: HostLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: None,
            allow_insecure_server: false,
            ca_file: None,
            uuid: None,
            device_key: None,
            provisioning_key: None,
            device_name: None,
            device_type: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            report_interval: DEFAULT_REPORT_INTERVAL,
            probation: DEFAULT_PROBATION,
            docker_socket: DEFAULT_DOCKER_SOCKET.into(),
            min_free_disk: DEFAULT_MIN_FREE_DISK,
            db: DEFAULT_DB_PATH.into(),
            limits: HostLimits::default(),
        }
    }
}

/// Every key, with the environment variable that overrides it.
const KEYS: &[(&str, &str)] = &[
    ("server", "PINION_SERVER"),
    ("allow_insecure_server", "PINION_ALLOW_INSECURE_SERVER"),
    ("ca_file", "PINION_CA_FILE"),
    ("uuid", "PINION_UUID"),
    ("device_key", "PINION_DEVICE_KEY"),
    ("provisioning_key", "PINION_PROVISIONING_KEY"),
    ("device_name", "PINION_DEVICE_NAME"),
    ("device_type", "PINION_DEVICE_TYPE"),
    ("poll_interval", "PINION_POLL_INTERVAL"),
    ("report_interval", "PINION_REPORT_INTERVAL"),
    ("probation", "PINION_PROBATION"),
    ("min_free_disk", "PINION_MIN_FREE_DISK"),
    ("docker_socket", "PINION_DOCKER_SOCKET"),
    ("db", "PINION_DB"),
    ("allow_privileged", "PINION_ALLOW_PRIVILEGED"),
    ("allowed_bind_sources", "PINION_ALLOWED_BIND_SOURCES"),
    ("allowed_devices", "PINION_ALLOWED_DEVICES"),
    ("allowed_capabilities", "PINION_ALLOWED_CAPABILITIES"),
    ("allow_host_network", "PINION_ALLOW_HOST_NETWORK"),
    ("allowed_registries", "PINION_ALLOWED_REGISTRIES"),
];

impl Config {
    /// Reads `path` (when `required` is false a missing file is fine), then applies the
    /// environment through `env` (a function so tests need not touch the process's).
    pub fn load(path: &Path, required: bool, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let mut config = Config::default();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (line, key, value) in parse_flat_toml(&text)
                    .map_err(|reason| Error::Config { source_name: path.display().to_string(), reason })?
                {
                    config.set(&key, &value).map_err(|reason| Error::Config {
                        source_name: format!("{}:{line}", path.display()),
                        reason,
                    })?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(source) => return Err(Error::Io { path: path.to_path_buf(), source }),
        }
        for (key, var) in KEYS {
            if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                config.set(key, &value).map_err(|reason| Error::Config { source_name: var.to_string(), reason })?;
            }
        }
        Ok(config)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let duration = |v: &str| parse_duration(v).and_then(|d| positive(key, d));
        match key {
            "server" => self.server = Some(value.trim_end_matches('/').to_string()),
            "allow_insecure_server" => self.allow_insecure_server = boolean(key, value)?,
            "ca_file" => self.ca_file = Some(value.into()),
            "uuid" => self.uuid = Some(value.to_string()),
            "device_key" => self.device_key = Some(value.to_string()),
            "provisioning_key" => self.provisioning_key = Some(value.to_string()),
            "device_name" => self.device_name = Some(value.to_string()),
            "device_type" => self.device_type = Some(value.to_string()),
            "poll_interval" => self.poll_interval = duration(value)?,
            "report_interval" => self.report_interval = duration(value)?,
            "probation" => self.probation = parse_duration(value)?,
            "min_free_disk" => {
                self.min_free_disk = crate::disk::parse_size(value)
                    .ok_or_else(|| format!("{key}: {value:?} is not a size (bytes, or with K, M or G: \"256M\")"))?
            }
            "docker_socket" => self.docker_socket = value.into(),
            "db" => self.db = value.into(),
            "allow_privileged" => self.limits.allow_privileged = boolean(key, value)?,
            "allowed_bind_sources" => {
                self.limits.allowed_bind_sources = host_limits::parse_list(key, value, host_limits::bind_entry)?
            }
            "allowed_devices" => {
                self.limits.allowed_devices = host_limits::parse_list(key, value, host_limits::path_entry)?
            }
            "allowed_capabilities" => {
                self.limits.allowed_capabilities = host_limits::parse_list(key, value, host_limits::capability_entry)?
            }
            "allow_host_network" => self.limits.allow_host_network = boolean(key, value)?,
            "allowed_registries" => {
                self.limits.allowed_registries = host_limits::parse_list(key, value, host_limits::registry_entry)?
            }
            _ => {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!("unknown key {key:?} (known: {})", known.join(", ")));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The gateway's limits, with the agent's own Docker socket and database directory
    /// among the protected paths.
    pub fn host_limits(&self) -> HostLimits {
        HostLimits {
            docker_socket: self.docker_socket.to_str().map(str::to_owned),
            agent_db_dir: self.db.parent().and_then(Path::to_str).filter(|d| !d.is_empty()).map(str::to_owned),
            ..self.limits.clone()
        }
    }

    /// The server URL, when it is set and allowed (`tls::check_server_url`): checked at
    /// startup, before anything connects, so a refused URL is never tried.
    pub fn server_url(&self) -> Result<&str, Error> {
        let server = self.server.as_deref().ok_or_else(|| Error::Config {
            source_name: "server".into(),
            reason: "the server URL is not set (server in the config file, or PINION_SERVER)".into(),
        })?;
        crate::tls::check_server_url(server, self.allow_insecure_server)
            .map_err(|reason| Error::Config { source_name: "server".into(), reason })?;
        Ok(server)
    }
}

fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{key} must be true or false, not {other:?}")),
    }
}

fn positive(key: &str, d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err(format!("{key} must be more than 0 seconds"))
    } else {
        Ok(d)
    }
}

/// The flat subset of TOML the agent's file uses: `key = "string"`, `key = 'literal'`,
/// `key = 60`, `key = true`, comments and blank lines. Tables and arrays are refused
/// with a message rather than misread. Returns (line number, key, value as text).
pub fn parse_flat_toml(text: &str) -> Result<Vec<(usize, String, String)>, String> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            return Err(format!("line {line_no}: tables are not used in this file; write flat `key = value` lines"));
        }
        let (key, rest) = line.split_once('=').ok_or_else(|| format!("line {line_no}: expected `key = value`"))?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(format!("line {line_no}: invalid key {key:?}"));
        }
        let value = parse_value(rest.trim()).map_err(|e| format!("line {line_no}: {e}"))?;
        if entries.iter().any(|(_, k, _): &(usize, String, String)| k == key) {
            return Err(format!("line {line_no}: {key} is set twice"));
        }
        entries.push((line_no, key.to_string(), value));
    }
    Ok(entries)
}

fn parse_value(text: &str) -> Result<String, String> {
    let (value, rest) = if let Some(body) = text.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        loop {
            match chars.next() {
                None => return Err("unterminated string".into()),
                Some((i, '"')) => break (out, &body[i + 1..]),
                Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
                },
                Some((_, c)) => out.push(c),
            }
        }
    } else if let Some(body) = text.strip_prefix('\'') {
        let end = body.find('\'').ok_or("unterminated string")?;
        (body[..end].to_string(), &body[end + 1..])
    } else {
        let end = text.find('#').unwrap_or(text.len());
        let bare = text[..end].trim();
        let is_number = !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit());
        if !is_number && bare != "true" && bare != "false" {
            return Err(format!("value {bare:?} must be a quoted string, a whole number, true or false"));
        }
        (bare.to_string(), "")
    };
    let rest = rest.trim();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(format!("unexpected text after the value: {rest:?}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, Error> {
        // A directory per call: the tests run side by side in one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pinion-config-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let result = Config::load(&path, true, &|var| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn file_then_environment() {
        let config = load(
            "# pinion agent\nserver = \"http://127.0.0.1:3002/\"\npoll_interval = 30 # seconds\nreport_interval = '5m'\n",
            &[("PINION_POLL_INTERVAL", "2m"), ("PINION_UUID", "gw-1"), ("PINION_PROBATION", "30s")],
        )
        .unwrap();
        assert_eq!(config.server.as_deref(), Some("http://127.0.0.1:3002"));
        assert_eq!(config.poll_interval, Duration::from_secs(120));
        assert_eq!(config.report_interval, Duration::from_secs(300));
        assert_eq!(config.uuid.as_deref(), Some("gw-1"));
        assert_eq!(config.probation, Duration::from_secs(30));
        assert_eq!(load("probation = 0", &[]).unwrap().probation, Duration::ZERO, "0 turns probation off");
        assert_eq!(config.db, PathBuf::from(DEFAULT_DB_PATH));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| load(text, &[]).unwrap_err().to_string();
        assert!(err("pol_interval = 5").contains("unknown key \"pol_interval\""), "{}", err("pol_interval = 5"));
        assert!(err("[agent]\nserver = \"x\"").contains("tables are not used"));
        assert!(err("server = http://x").contains("must be a quoted string"));
        assert!(err("server = \"x").contains("unterminated"));
        assert!(err("poll_interval = \"soon\"").contains("invalid duration"));
        assert!(err("poll_interval = 0").contains("more than 0"));
        assert!(err("min_free_disk = \"lots\"").contains("is not a size"));
        assert_eq!(load("min_free_disk = \"64M\"", &[]).unwrap().min_free_disk, 64 << 20);
        assert_eq!(load("", &[]).unwrap().min_free_disk, DEFAULT_MIN_FREE_DISK);
        assert!(err("uuid = \"a\"\nuuid = \"b\"").contains("set twice"));
        assert!(err("uuid = \"a\" b").contains("unexpected text"));
        assert!(err("allow_insecure_server = 1").contains("must be true or false"));
        assert!(err("allow_insecure_server = \"yes\"").contains("must be true or false"));
    }

    #[test]
    fn transport_security_keys() {
        let config =
            load("server = \"http://pinion.example.invalid\"\nca_file = \"/etc/pinion/fleet-ca.pem\"\n", &[]).unwrap();
        assert!(!config.allow_insecure_server, "off by default");
        assert_eq!(config.ca_file, Some(PathBuf::from("/etc/pinion/fleet-ca.pem")));
        let refused = config.server_url().unwrap_err();
        assert!(matches!(refused, Error::Config { .. }));
        assert!(refused.to_string().contains("allow_insecure_server = true"), "{refused}");

        let allowed = load("server = \"http://pinion.example.invalid\"\nallow_insecure_server = true\n", &[]).unwrap();
        assert_eq!(allowed.server_url().unwrap(), "http://pinion.example.invalid");
        let by_env = load(
            "server = \"http://10.0.0.5:3002\"\nallow_insecure_server = true\n",
            &[("PINION_ALLOW_INSECURE_SERVER", "false"), ("PINION_CA_FILE", "/tmp/ca.pem")],
        )
        .unwrap();
        assert!(by_env.server_url().is_err(), "the environment wins over the file");
        assert_eq!(by_env.ca_file, Some(PathBuf::from("/tmp/ca.pem")));
        assert!(load("server = \"ftp://pinion.example.com\"\nallow_insecure_server = true", &[])
            .unwrap()
            .server_url()
            .is_err());
        assert!(load("", &[]).unwrap().server_url().unwrap_err().to_string().contains("not set"));
    }

    #[test]
    fn host_limits_are_closed_by_default_and_lists_are_comma_separated() {
        let closed = load("", &[]).unwrap();
        assert_eq!(closed.limits, HostLimits::default());
        assert!(!closed.limits.allow_privileged && closed.limits.allowed_bind_sources.is_empty());
        assert_eq!(closed.host_limits().docker_socket.as_deref(), Some(DEFAULT_DOCKER_SOCKET));
        assert_eq!(closed.host_limits().agent_db_dir.as_deref(), Some("/var/lib/pinion"));
        let moved =
            load("db = \"/opt/pinion/state/agent.db\"\nallowed_bind_sources = \"/srv/apps/*/, /srv/x\"", &[]).unwrap();
        assert_eq!(moved.host_limits().agent_db_dir.as_deref(), Some("/opt/pinion/state"), "protected wherever it is");
        assert_eq!(moved.limits.allowed_bind_sources, ["/srv/apps/*", "/srv/x"]);

        let open = load(
            "allow_privileged = true\nallowed_bind_sources = \"/srv/app/, /var/lib/data\"\n\
             allowed_devices = '/dev/ttyUSB0'\nallowed_capabilities = \"cap_net_admin,SYS_TIME\"\n\
             allow_host_network = true\nallowed_registries = \"registry.example.com:5000\"\n",
            &[("PINION_ALLOWED_DEVICES", "/dev/i2c-1,/dev/gpiomem")],
        )
        .unwrap();
        let limits = open.limits;
        assert!(limits.allow_privileged && limits.allow_host_network);
        assert_eq!(limits.allowed_bind_sources, ["/srv/app", "/var/lib/data"]);
        assert_eq!(limits.allowed_devices, ["/dev/i2c-1", "/dev/gpiomem"], "the environment wins");
        assert_eq!(limits.allowed_capabilities, ["NET_ADMIN", "SYS_TIME"]);
        assert_eq!(limits.allowed_registries, ["registry.example.com:5000"]);

        let err = |text: &str| load(text, &[]).unwrap_err().to_string();
        assert!(
            err("allowed_bind_sources = \"srv\"").contains("absolute"),
            "{}",
            err("allowed_bind_sources = \"srv\"")
        );
        assert!(err("allowed_devices = \"/dev/../etc/shadow\"").contains("without `..`"));
        assert!(err("allowed_bind_sources = \"/srv/*/data\"").contains("last part"));
        assert!(err("allow_privileged = yes").contains("must be a quoted string"));
        assert!(err("allow_host_network = \"on\"").contains("must be true or false"));
    }

    #[test]
    fn a_missing_optional_file_gives_defaults() {
        let config = Config::load(Path::new("/nonexistent/agent.toml"), false, &|_| None).unwrap();
        assert_eq!(config, Config::default());
        assert!(Config::load(Path::new("/nonexistent/agent.toml"), true, &|_| None).is_err());
    }
}
