//! The real Debian `docker-registry` (distribution 2.8.2) as a child process on a free
//! loopback port, one temp dir per instance, anonymous or behind htpasswd (bcrypt file
//! from `htpasswd -nbB`) or token auth (the harness's `TokenServer`). It is what users
//! run on their own networks, so resolver tests see real headers, real challenges and
//! real content negotiation. Killed and cleaned up on drop.

use crate::token::{TokenServer, TOKEN_ISSUER, TOKEN_SERVICE};
use crate::util::{docker_config_json, free_port, random_hex, require_tool, tail_of_file, wait_for, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a registry may take to answer `GET /v2/` after it was spawned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when the chosen one was taken in the meantime.
const PORT_ATTEMPTS: usize = 5;

/// How a `Registry` guards its API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No `auth` section: everyone may pull and push.
    Anonymous,
    /// `auth.htpasswd` with a bcrypt file holding one user.
    Htpasswd { user: String, password: String },
    /// `auth.token` with the harness's token server, which knows one user.
    Token { user: String, password: String },
}

impl Auth {
    pub fn htpasswd(user: &str, password: &str) -> Auth {
        Auth::Htpasswd { user: user.into(), password: password.into() }
    }

    pub fn token(user: &str, password: &str) -> Auth {
        Auth::Token { user: user.into(), password: password.into() }
    }

    /// The user and password the registry accepts, if it asks for any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            Auth::Anonymous => None,
            Auth::Htpasswd { user, password } | Auth::Token { user, password } => {
                Some((user.as_str(), password.as_str()))
            }
        }
    }
}

/// A running `docker-registry serve <config.yml>`.
pub struct Registry {
    /// None while stopped.
    child: Option<Child>,
    port: u16,
    auth: Auth,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    // Dropped after the child is killed (see `Drop`), in this order.
    token: Option<TokenServer>,
    dir: TempDir,
}

/// What a test registry does besides serving.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// POST push/pull notifications to this URL with `Authorization: Bearer <token>`.
    pub notify: Option<(String, String)>,
    /// Log every request (one line each) to the registry log.
    pub access_log: bool,
}

impl Options {
    fn notifications_yaml(&self) -> String {
        match &self.notify {
            Some((url, token)) => format!(
                "notifications:\n  endpoints:\n    - name: pinion\n      url: {}\n      headers:\n        \
                 Authorization: [{}]\n      timeout: 5s\n      threshold: 10\n      backoff: 1s\n",
                yaml_str(url),
                yaml_str(&format!("Bearer {token}"))
            ),
            None => String::new(),
        }
    }
}

impl Registry {
    /// Spawns a registry and returns once `GET /v2/` answers. Panics (with the registry's
    /// log) if it cannot be started; panics with an install hint if `docker-registry`
    /// (or, for the auth modes, `htpasswd`/`openssl`) is missing.
    pub fn start(auth: Auth) -> Registry {
        Registry::start_with(auth, &Options::default())
    }

    /// `start` with notifications or an access log.
    pub fn start_with(auth: Auth, options: &Options) -> Registry {
        let binary = require_tool("docker-registry", "docker-registry");
        let dir = TempDir::new("registry");
        let auth_yaml = match &auth {
            Auth::Anonymous => (String::new(), None),
            Auth::Htpasswd { user, password } => {
                let file = write_htpasswd(&dir, user, password);
                (
                    format!(
                        "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                        yaml_str(&file.display().to_string())
                    ),
                    None,
                )
            }
            Auth::Token { user, password } => {
                let token = TokenServer::start(&dir, user, password);
                (
                    format!(
                        "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                        yaml_str(&token.realm()),
                        yaml_str(TOKEN_SERVICE),
                        yaml_str(TOKEN_ISSUER),
                        yaml_str(&token.cert_path().display().to_string())
                    ),
                    Some(token),
                )
            }
        };
        let (auth_section, token) = auth_yaml;
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("creating the registry data dir");

        let mut last_log = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: {}\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: {}\n\
                 {auth_section}{}",
                !options.access_log,
                yaml_str(&data.display().to_string()),
                random_hex(16),
                options.notifications_yaml(),
            );
            let config_path = dir.write(&format!("config-{attempt}.yml"), &config);
            let log_path = dir.join(&format!("registry-{attempt}.log"));
            match spawn_and_wait(&binary, &config_path, &log_path, port) {
                Ok(child) => {
                    return Registry { child: Some(child), port, auth, binary, config_path, log_path, token, dir };
                }
                Err(Spawn::AddressInUse(log)) => last_log = log,
                Err(Spawn::Failed(why)) => panic!("{why}\nconfig:\n{config}"),
            }
        }
        panic!("docker-registry could not bind a free port in {PORT_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    /// Stops the registry process (an outage); its data, port and auth stay for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port with the same data, after `stop`.
    /// Panics if it cannot (for example, if something else took the port meanwhile).
    pub fn restart(&mut self) {
        self.stop();
        match spawn_and_wait(&self.binary, &self.config_path, &self.log_path, self.port) {
            Ok(child) => self.child = Some(child),
            Err(Spawn::AddressInUse(log)) => {
                panic!("docker-registry could not get its port {} back:\n{log}", self.port)
            }
            Err(Spawn::Failed(why)) => panic!("{why}"),
        }
    }

    /// `127.0.0.1:PORT`: the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The token server of an `Auth::Token` registry.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// Requests the token server has seen so far (0 for the other auth modes). Take a
    /// reading before and after the operation under test: pushing asks for tokens too.
    pub fn token_requests(&self) -> usize {
        self.token.as_ref().map_or(0, TokenServer::requests)
    }

    /// The registry's own log so far (warnings and errors), for failure messages.
    pub fn log(&self) -> String {
        tail_of_file(&self.log_path, 8000)
    }

    /// Requests to `/v2/…` so far, counted from the access log (`Options::access_log`).
    pub fn requests_served(&self) -> usize {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        log.lines().filter(|l| l.contains("\"HEAD /v2/") || l.contains("\"GET /v2/")).count()
    }

    /// A Docker `config.json` entry for this registry with its own credentials.
    pub fn docker_config(&self) -> String {
        match self.auth.credentials() {
            Some((u, p)) => docker_config_json(&[(&self.host(), u, p)]),
            None => docker_config_json(&[]),
        }
    }

    /// Like `docker_config`, but with another password (to test refused credentials).
    pub fn docker_config_with_password(&self, password: &str) -> String {
        let user = self.auth.credentials().map_or("nobody", |(u, _)| u);
        docker_config_json(&[(&self.host(), user, password)])
    }

    /// The registry's temp dir (data, config, logs).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Spawn {
    /// The port was taken by someone else; the registry's log.
    AddressInUse(String),
    /// Anything else, as a message with the registry's log.
    Failed(String),
}

/// Spawns `docker-registry serve <config>` (output appended to `log_path`) and waits
/// until `GET /v2/` on `port` answers 200 or 401.
fn spawn_and_wait(binary: &Path, config: &Path, log_path: &Path, port: u16) -> Result<Child, Spawn> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).expect("opening the registry log");
    let mut child = Command::new(binary)
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("cloning the log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
    let agent = probe_agent();
    let url = format!("http://127.0.0.1:{port}/v2/");
    let outcome = wait_for(STARTUP_DEADLINE, || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(format!("exited with {status}")));
        }
        match agent.get(&url).call() {
            Ok(resp) if [200, 401].contains(&resp.status().as_u16()) => Some(Ok(())),
            _ => None,
        }
    });
    match outcome {
        Some(Ok(())) => Ok(child),
        Some(Err(why)) => {
            let log = tail_of_file(log_path, 4000);
            if log.contains("address already in use") {
                Err(Spawn::AddressInUse(log))
            } else {
                Err(Spawn::Failed(format!("docker-registry {why} during startup; its log:\n{log}")))
            }
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Spawn::Failed(format!(
                "docker-registry did not answer GET {url} within {STARTUP_DEADLINE:?}; its log:\n{}",
                tail_of_file(log_path, 4000)
            )))
        }
    }
}

/// A bcrypt htpasswd file for one user, made by apache2-utils' `htpasswd`.
fn write_htpasswd(dir: &TempDir, user: &str, password: &str) -> PathBuf {
    let htpasswd = require_tool("htpasswd", "apache2-utils");
    let out = Command::new(htpasswd).args(["-nbB", user, password]).output().expect("running htpasswd");
    assert!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    let entry = String::from_utf8(out.stdout).expect("htpasswd prints ASCII");
    let line = entry.lines().next().unwrap_or_default().trim().to_string();
    assert!(line.starts_with(&format!("{user}:$2")), "htpasswd did not print a bcrypt entry: {entry:?}");
    // A FILE, never a directory: the Debian default config points `path` at a directory,
    // which makes every request with credentials fail with 400 (registry-protocol §10).
    dir.write("htpasswd", format!("{line}\n"))
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn probe_agent() -> ureq::Agent {
    crate::util::http_agent(Duration::from_secs(2))
}
