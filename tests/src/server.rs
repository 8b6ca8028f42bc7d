//! The `pinion-server` binary as a process: `serve` on a free loopback port with its own
//! SQLite file and admin token (killed on drop), and one-shot CLI runs such as
//! `pinion-server image resolve`. The binary is not a dependency of this crate (cargo
//! does not promise to build a dependency's binaries), so the first use runs
//! `cargo build -p pinion-server --bin pinion-server` into this test's own target dir
//! and profile; `PINION_SERVER_BIN` overrides the path.

use crate::util::{free_port, random_hex, tail_of_file, wait_for, TempDir};
use serde_json::Value;
use std::fs::File;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
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
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(build_server)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_server() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(SERVER_BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{SERVER_BIN_ENV}={} is not a file", path.display()))
        };
    }
    // <target>/<profile>/deps/<test binary>
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or("test binary has no target dir")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace dir")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args([
        "build",
        "--quiet",
        "-p",
        "pinion-server",
        "--bin",
        "pinion-server",
    ]);
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
        .map_err(|e| format!("running cargo build for pinion-server: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "pinion-server does not build (`cargo build -p pinion-server`), so this test cannot run:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let binary = profile_dir.join("pinion-server");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!(
            "cargo built pinion-server but {} does not exist",
            binary.display()
        ))
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
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one JSON line on stdout; got:\n{self}"
        );
        serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?} after {:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.elapsed,
            if self.timed_out {
                " (killed at the deadline)"
            } else {
                ""
            },
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
    let binary = server_binary();
    let start = Instant::now();
    let mut child = Command::new(&binary)
        .args(args)
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
}

impl ApiReply {
    /// The body as JSON; panics with the body otherwise.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!("HTTP {} body is not JSON ({e}): {}", self.status, self.body)
        })
    }
}

/// A running `pinion-server serve`.
pub struct Server {
    child: Child,
    port: u16,
    admin_token: String,
    log_path: PathBuf,
    agent: ureq::Agent,
    dir: TempDir,
}

impl Server {
    /// `pinion-server serve --listen 127.0.0.1:<port> --db <tmp>/server.db <extra_args>`
    /// with a random `PINION_ADMIN_TOKEN`; returns once the port accepts connections.
    pub fn start(extra_args: &[&str]) -> Server {
        let binary = server_binary();
        let dir = TempDir::new("server");
        let admin_token = random_hex(24);
        let db = dir.join("server.db");
        let mut last_log = String::new();
        for attempt in 0..5 {
            let port = free_port();
            let log_path = dir.join(&format!("server-{attempt}.log"));
            let log = File::create(&log_path).expect("creating the server log");
            let listen = format!("127.0.0.1:{port}");
            let mut command = Command::new(&binary);
            command
                .args(["serve", "--listen", &listen, "--db"])
                .arg(&db)
                .args(extra_args)
                .env("PINION_ADMIN_TOKEN", &admin_token)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cloning the log handle"))
                .stderr(log);
            if std::env::var_os("RUST_LOG").is_none() {
                command.env("RUST_LOG", "info");
            }
            let mut child = command
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
            let outcome = wait_for(STARTUP_DEADLINE, || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(format!("exited with {status}")));
                }
                TcpStream::connect(("127.0.0.1", port)).ok().map(|_| Ok(()))
            });
            match outcome {
                Some(Ok(())) => {
                    let agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(120)))
                        .build()
                        .new_agent();
                    return Server {
                        child,
                        port,
                        admin_token,
                        log_path,
                        agent,
                        dir,
                    };
                }
                Some(Err(why)) => {
                    last_log = tail_of_file(&log_path, 4000);
                    if last_log
                        .to_ascii_lowercase()
                        .contains("address already in use")
                        || last_log.to_ascii_lowercase().contains("addrinuse")
                    {
                        continue;
                    }
                    panic!("pinion-server serve {why} during startup; its output:\n{last_log}");
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "pinion-server serve did not accept connections on {listen} within {STARTUP_DEADLINE:?}; output:\n{}",
                        tail_of_file(&log_path, 4000)
                    );
                }
            }
        }
        panic!("pinion-server could not bind a free port in 5 attempts; last output:\n{last_log}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The server's temp dir (holds `server.db` and its log).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        tail_of_file(&self.log_path, 16_000)
    }

    /// `method path` with an optional JSON body and optional bearer token.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> ApiReply {
        let url = format!("{}{path}", self.url());
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = bearer {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        let start = Instant::now();
        let result = match body {
            Some(json) => {
                builder = builder.header("Content-Type", "application/json");
                self.agent
                    .run(builder.body(json.to_string()).expect("valid request"))
            }
            None => self.agent.run(builder.body(()).expect("valid request")),
        };
        let mut response = result.unwrap_or_else(|e| {
            panic!("{method} {url} failed: {e}\nserver output:\n{}", self.log())
        });
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        ApiReply {
            status,
            body,
            elapsed: start.elapsed(),
        }
    }

    /// `POST /api/v1/devices/{uuid}/target-state` as the operator.
    pub fn set_target_state(&self, uuid: &str, state: &Value) -> ApiReply {
        self.request(
            "POST",
            &format!("/api/v1/devices/{uuid}/target-state"),
            Some(state),
            Some(&self.admin_token),
        )
    }

    /// `GET /api/v1/devices/{uuid}/target-state` as the operator.
    pub fn get_target_state(&self, uuid: &str) -> ApiReply {
        self.request(
            "GET",
            &format!("/api/v1/devices/{uuid}/target-state"),
            None,
            Some(&self.admin_token),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
