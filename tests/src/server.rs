//! The `pinion-server` binary as a process: `serve` on a free loopback port with its own
//! SQLite file and admin token (killed on drop), and one-shot CLI runs such as
//! `pinion-server image resolve`; `stop`/`restart` for outages. The binaries are not
//! dependencies of this crate (cargo does not promise to build a dependency's
//! binaries), so the first use runs `cargo build -p <bin> --bin <bin>` into this test's
//! own target dir and profile (`workspace_binary`); `PINION_SERVER_BIN` overrides it.
//! `start_with_open_files` starts it under a given open-files limit (soft and hard), as
//! systemd's default 1024 would, for the flood tests; `start_with_env` with environment
//! variables set or removed (`RUST_LOG=trace`, no `JOURNAL_STREAM`) for the log tests;
//! `start_replica` one of several replicas on a PostgreSQL database (`replicas`);
//! `start_https` with the server's own https (`--tls-cert`), asked as `https://localhost`.

use crate::util::{free_port, random_hex, tail_of_file, wait_for, TempDir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Environment variable naming a prebuilt `pinion-server` to use instead of building.
pub const SERVER_BIN_ENV: &str = "PINION_SERVER_BIN";
/// How long `serve` may take to accept TCP connections.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Default bound on a one-shot CLI run before it is killed and reported as hung.
pub const CLI_DEADLINE: Duration = Duration::from_secs(120);

/// The path of a built `pinion-server`, building it on first use. Panics with cargo's
/// output if it does not build.
pub fn server_binary() -> PathBuf {
    workspace_binary("pinion-server")
}

/// The path of the workspace binary `name` (package and bin of the same name, e.g.
/// `pinion-agent`), built on first use in this process with
/// `cargo build -p <name> --bin <name>` into this test binary's target dir and profile.
/// `<NAME>_BIN` (`PINION_AGENT_BIN`, `PINION_SERVER_BIN`) names a prebuilt one instead.
/// Panics with cargo's output if it does not build.
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    // Held while building: cargo would serialize concurrent builds on its lock anyway.
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    built.entry(name.to_string()).or_insert_with(|| build_binary(name)).clone().unwrap_or_else(|e| panic!("{e}"))
}

fn build_binary(name: &str) -> Result<PathBuf, String> {
    let env_name = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&env_name) {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(format!("{env_name}={} is not a file", path.display())) };
    }
    // <target>/<profile>/deps/<test binary>
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?;
    let target_dir = profile_dir.parent().ok_or("test binary has no target dir")?;
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace dir")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--quiet", "-p", name, "--bin", name]);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running cargo build for {name}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{name} does not build (`cargo build -p {name}`), so this test cannot run:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let binary = profile_dir.join(name);
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!("cargo built {name} but {} does not exist", binary.display()))
    }
}

/// What a one-shot CLI run did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit code; None if killed by a signal (or by us at the deadline).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// True if it was still running at the deadline and was killed.
    pub timed_out: bool,
}

impl CliOutput {
    /// The single JSON line on stdout, parsed; panics with the full output otherwise.
    pub fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected one JSON line on stdout; got:\n{self}");
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?} after {:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.elapsed,
            if self.timed_out { " (killed at the deadline)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `pinion-server <args>` to completion (killed after `CLI_DEADLINE`).
pub fn run_cli(args: &[&str]) -> CliOutput {
    run_cli_within(args, CLI_DEADLINE)
}

/// Runs `pinion-server <args>`; kills it if still running after `deadline`.
pub fn run_cli_within(args: &[&str], deadline: Duration) -> CliOutput {
    run_cli_with_env(args, &[], deadline)
}

/// `run_cli_within` with environment variables set (`PINION_ADMIN_TOKEN` for a `serve`
/// expected to refuse to start).
pub fn run_cli_with_env(args: &[&str], env: &[(&str, &str)], deadline: Duration) -> CliOutput {
    let binary = server_binary();
    let start = Instant::now();
    let mut child = Command::new(&binary)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
    let stdout = reader_thread(child.stdout.take().expect("stdout"));
    let stderr = reader_thread(child.stderr.take().expect("stderr"));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for pinion-server") {
            break status;
        }
        if start.elapsed() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("waiting for the killed pinion-server");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    CliOutput {
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed,
        timed_out,
    }
}

fn reader_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// An answer from the server's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiReply {
    pub status: u16,
    pub body: String,
    pub elapsed: Duration,
    /// Response headers, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
}

impl ApiReply {
    /// The first header `name` (any case), e.g. a poll's `ETag`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body otherwise.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("HTTP {} body is not JSON ({e}): {}", self.status, self.body))
    }
}

/// A running `pinion-server serve`.
pub struct Server {
    /// None while stopped.
    child: Option<Child>,
    port: u16,
    admin_token: String,
    binary: PathBuf,
    extra_args: Vec<String>,
    /// RLIMIT_NOFILE (soft and hard) the process starts with; None: inherited.
    open_files: Option<u64>,
    /// Environment variables set (`Some`) or removed (`None`), after the defaults.
    env: Vec<(String, Option<String>)>,
    log_path: PathBuf,
    agent: ureq::Agent,
    /// `http://127.0.0.1`, or `https://localhost` (the name the test certificates carry).
    origin: &'static str,
    dir: TempDir,
}

impl Server {
    /// `pinion-server serve --listen 127.0.0.1:<port> --db <tmp>/server.db <extra_args>`
    /// with a random `PINION_ADMIN_TOKEN`; returns once the port accepts connections.
    pub fn start(extra_args: &[&str]) -> Server {
        Server::start_inner(extra_args, None, &[], None)
    }

    /// A replica on a shared database: `start` with `--db db_url --secret-key-file
    /// secret_key_file <extra_args>` (a later `--db` wins over the SQLite file) and
    /// `PINION_ADMIN_TOKEN=admin_token`; every replica of one database needs the same key
    /// file and token. Kept on `restart`.
    pub fn start_replica(db_url: &str, admin_token: &str, secret_key_file: &Path, extra_args: &[&str]) -> Server {
        let key_file = secret_key_file.display().to_string();
        let args = [&["--db", db_url, "--secret-key-file", key_file.as_str()][..], extra_args].concat();
        Server::start_inner(&args, None, &[], Some(admin_token))
    }

    /// `start` with the open-files limit set to `limit`, soft and hard (`setrlimit` in
    /// the child before `exec`), so the server cannot raise it: systemd's default for a
    /// service without `LimitNOFILE` is 1024. Kept on `restart`.
    pub fn start_with_open_files(limit: u64, extra_args: &[&str]) -> Server {
        Server::start_inner(extra_args, Some(limit), &[], None)
    }

    /// `start` serving https with `cert` and `key` (`--tls-cert`, `--tls-key`) before
    /// `extra_args`: `url` is `https://localhost:PORT`, and `request` trusts `ca_pem`.
    pub fn start_https(cert: &Path, key: &Path, ca_pem: &Path, extra_args: &[&str]) -> Server {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let args = [&["--tls-cert", cert.as_str(), "--tls-key", key.as_str()][..], extra_args].concat();
        let mut server = Server::start_inner(&args, None, &[], None);
        let ca = std::fs::read(ca_pem).unwrap_or_else(|e| panic!("{}: {e}", ca_pem.display()));
        let ca = ureq::tls::Certificate::from_pem(&ca).expect("a PEM CA certificate").to_owned();
        let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&[ca])).build();
        server.agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .tls_config(tls)
            .build()
            .new_agent();
        server.origin = "https://localhost";
        server
    }

    /// `start` with environment variables set (`Some`) or removed (`None`), e.g.
    /// `("RUST_LOG", Some("trace"))` or `("JOURNAL_STREAM", None)`; these win over the
    /// defaults (`RUST_LOG=info` unless the test's environment has one). Kept on
    /// `restart`.
    pub fn start_with_env(env: &[(&str, Option<&str>)], extra_args: &[&str]) -> Server {
        Server::start_inner(extra_args, None, env, None)
    }

    fn start_inner(
        extra_args: &[&str],
        open_files: Option<u64>,
        env: &[(&str, Option<&str>)],
        admin_token: Option<&str>,
    ) -> Server {
        let binary = server_binary();
        let dir = TempDir::new("server");
        let admin_token = admin_token.map_or_else(|| random_hex(24), str::to_string);
        let log_path = dir.join("server.log");
        let mut server = Server {
            child: None,
            port: 0,
            admin_token,
            binary,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            open_files,
            env: env.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect(),
            log_path,
            agent: crate::util::http_agent(Duration::from_secs(120)),
            origin: "http://127.0.0.1",
            dir,
        };
        let mut last_log = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(child) => {
                    server.child = Some(child);
                    return server;
                }
                Err(Spawn::AddressInUse(log)) => last_log = log,
                Err(Spawn::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("pinion-server could not bind a free port in 5 attempts; last output:\n{last_log}");
    }

    /// Stops the server process (an outage); database, port and token stay for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server process with SIGKILL (std's `Child::kill` on Unix), as a power
    /// cut or the OOM killer would, mid-write; returns how it ended. Database, port and
    /// token stay for `restart`. Panics if it is not running.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("kill: pinion-server is not running");
        child.kill().expect("sending SIGKILL to pinion-server");
        child.wait().expect("waiting for the killed pinion-server")
    }

    /// Starts the server again on the same port, database, token and arguments.
    pub fn restart(&mut self) {
        self.stop();
        match self.spawn_and_wait() {
            Ok(child) => self.child = Some(child),
            Err(Spawn::AddressInUse(log)) => {
                panic!("pinion-server could not get its port {} back:\n{log}", self.port)
            }
            Err(Spawn::Failed(why)) => panic!("{why}"),
        }
    }

    /// Spawns `serve` on `self.port` (output appended to the log) and waits until the
    /// port accepts connections.
    fn spawn_and_wait(&self) -> Result<Child, Spawn> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("opening the server log");
        let listen = format!("127.0.0.1:{}", self.port);
        let mut command = Command::new(&self.binary);
        command
            .args(["serve", "--listen", &listen, "--db"])
            .arg(self.dir.join("server.db"))
            .args(&self.extra_args)
            .env("PINION_ADMIN_TOKEN", &self.admin_token)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        for (name, value) in &self.env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        if let Some(limit) = self.open_files {
            let rlimit = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: limit as libc::rlim_t };
            // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe
            // and reads only the rlimit copied into the closure.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", self.binary.display()));
        let port = self.port;
        let outcome = wait_for(STARTUP_DEADLINE, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(format!("exited with {status}")));
            }
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| Ok(()))
        });
        match outcome {
            Some(Ok(())) => Ok(child),
            Some(Err(why)) => {
                let log = tail_of_file(&self.log_path, 4000);
                let lower = log.to_ascii_lowercase();
                if lower.contains("address already in use") || lower.contains("addrinuse") {
                    Err(Spawn::AddressInUse(log))
                } else {
                    Err(Spawn::Failed(format!("pinion-server serve {why} during startup; its output:\n{log}")))
                }
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(Spawn::Failed(format!(
                    "pinion-server serve did not accept connections on {listen} within {STARTUP_DEADLINE:?}; output:\n{}",
                    tail_of_file(&self.log_path, 4000)
                )))
            }
        }
    }

    /// The process id of the running server (for `/proc/PID/...`); panics if stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("pid: pinion-server is not running").id()
    }

    /// How the server process ended, if it has (`None` while it runs or once stopped).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|child| child.try_wait().ok().flatten())
    }

    /// `127.0.0.1:PORT`, for raw sockets.
    pub fn address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` from `start_https`).
    pub fn url(&self) -> String {
        format!("{}:{}", self.origin, self.port)
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The server's temp dir (holds `server.db` and its log).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// What the server printed lately (the last 16,000 bytes).
    pub fn log(&self) -> String {
        tail_of_file(&self.log_path, 16_000)
    }

    /// Everything the server printed so far, however long.
    pub fn full_log(&self) -> String {
        tail_of_file(&self.log_path, usize::MAX)
    }

    /// `method path` with an optional JSON body and optional bearer token.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>, bearer: Option<&str>) -> ApiReply {
        self.request_with(method, path, body, bearer, &[])
    }

    /// `request` with extra headers.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> ApiReply {
        let url = format!("{}{path}", self.url());
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(token) = bearer {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        let start = Instant::now();
        let result = match body {
            Some(json) => {
                builder = builder.header("Content-Type", "application/json");
                self.agent.run(builder.body(json.to_string()).expect("valid request"))
            }
            None => self.agent.run(builder.body(()).expect("valid request")),
        };
        let mut response =
            result.unwrap_or_else(|e| panic!("{method} {url} failed: {e}\nserver output:\n{}", self.log()));
        let status = response.status().as_u16();
        let headers = header_list(response.headers());
        let body = response.body_mut().read_to_string().unwrap_or_default();
        ApiReply { status, body, elapsed: start.elapsed(), headers }
    }

    /// Any body with exactly the headers given (gzip, NDJSON, a device's own headers).
    pub fn send_bytes(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> ApiReply {
        let url = format!("{}{path}", self.url());
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let start = Instant::now();
        let mut response = self
            .agent
            .run(builder.body(body).expect("valid request"))
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}\nserver output:\n{}", self.log()));
        let status = response.status().as_u16();
        let headers = header_list(response.headers());
        let body = response.body_mut().read_to_string().unwrap_or_default();
        ApiReply { status, body, elapsed: start.elapsed(), headers }
    }

    /// `POST /api/v1/devices/{uuid}/target-state` as the operator.
    pub fn set_target_state(&self, uuid: &str, state: &Value) -> ApiReply {
        self.request("POST", &format!("/api/v1/devices/{uuid}/target-state"), Some(state), Some(&self.admin_token))
    }

    /// A new provisioning key's secret, made with the admin token.
    pub fn provisioning_key(&self) -> String {
        let reply =
            self.request("POST", "/api/v1/provisioning-keys", Some(&serde_json::json!({})), Some(&self.admin_token));
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.json()["key"].as_str().unwrap_or_else(|| panic!("no key in {}", reply.body)).to_string()
    }

    /// A one-time registration token for `uuid` (`POST /devices/{uuid}/registration-token`):
    /// how an agent claims a device the operator prepared.
    pub fn registration_token(&self, uuid: &str) -> String {
        let path = format!("/api/v1/devices/{uuid}/registration-token");
        let reply = self.request("POST", &path, None, Some(&self.admin_token));
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.json()["key"].as_str().unwrap_or_else(|| panic!("no key in {}", reply.body)).to_string()
    }

    /// What an agent for `uuid` registers with: a registration token when the operator
    /// prepared the device (set its target first), a new provisioning key otherwise.
    pub fn provisioning_key_for(&self, uuid: &str) -> String {
        let prepared = self.request("GET", &format!("/api/v1/devices/{uuid}"), None, Some(&self.admin_token));
        match prepared.status {
            200 => self.registration_token(uuid),
            _ => self.provisioning_key(),
        }
    }

    /// `set_target_state` with `Cache-Control: no-cache`: every tag asked of its registry
    /// now, as after a push the server was not notified of.
    pub fn set_target_state_uncached(&self, uuid: &str, state: &Value) -> ApiReply {
        let path = format!("/api/v1/devices/{uuid}/target-state");
        self.request_with("POST", &path, Some(state), Some(&self.admin_token), &[("Cache-Control", "no-cache")])
    }

    /// `GET /api/v1/devices/{uuid}/target-state` as the operator.
    pub fn get_target_state(&self, uuid: &str) -> ApiReply {
        self.request("GET", &format!("/api/v1/devices/{uuid}/target-state"), None, Some(&self.admin_token))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Response headers as (lower-case name, value) pairs; values that are not text as "".
fn header_list(headers: &ureq::http::HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or_default().to_string())).collect()
}

enum Spawn {
    /// The port was taken by someone else; the server's output.
    AddressInUse(String),
    /// Anything else, as a message with the server's output.
    Failed(String),
}
