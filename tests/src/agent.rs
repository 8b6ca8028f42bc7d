//! The `pinion-agent` binary as a process: `run` against a test server and the test
//! dockerd (or another engine's socket: a private Podman service, `podman.rs`), with its
//! own SQLite file, restartable on the same database, killable with SIGKILL, and killed
//! on drop.

use crate::docker::Docker;
use crate::server::workspace_binary;
use crate::util::{tail_of_file, TempDir};
use serde_json::Value;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running (or stopped) `pinion-agent run`.
pub struct Agent {
    child: Option<Child>,
    env: Vec<(String, String)>,
    dir: TempDir,
    starts: usize,
}

impl Agent {
    /// Starts an agent for `server_url` that registers with `provisioning_key` as `uuid`
    /// and polls every second.
    pub fn start(server_url: &str, provisioning_key: &str, uuid: &str, docker: &Docker) -> Agent {
        Agent::start_with_env(server_url, provisioning_key, uuid, docker, &[])
    }

    /// `start` with more settings (`("PINION_PROBATION", "30")`), which win over the defaults.
    pub fn start_with_env(
        server_url: &str,
        provisioning_key: &str,
        uuid: &str,
        docker: &Docker,
        extra: &[(&str, &str)],
    ) -> Agent {
        Agent::start_on(docker.socket(), server_url, provisioning_key, uuid, extra)
    }

    /// `start_with_env` for the engine whose Docker API socket is `engine_socket`.
    pub fn start_on(
        engine_socket: &std::path::Path,
        server_url: &str,
        provisioning_key: &str,
        uuid: &str,
        extra: &[(&str, &str)],
    ) -> Agent {
        let dir = TempDir::new("agent");
        let mut env = vec![
            ("PINION_SERVER".to_string(), server_url.to_string()),
            ("PINION_PROVISIONING_KEY".to_string(), provisioning_key.to_string()),
            ("PINION_UUID".to_string(), uuid.to_string()),
            ("PINION_POLL_INTERVAL".to_string(), "1".to_string()),
            ("PINION_REPORT_INTERVAL".to_string(), "30".to_string()),
            ("PINION_DOCKER_SOCKET".to_string(), engine_socket.display().to_string()),
            ("PINION_DB".to_string(), dir.join("agent.db").display().to_string()),
            ("RUST_LOG".to_string(), std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())),
        ];
        for (name, value) in extra {
            env.retain(|(k, _)| k != name);
            env.push((name.to_string(), value.to_string()));
        }
        let mut agent = Agent { child: None, env, dir, starts: 0 };
        agent.restart();
        agent
    }

    /// Starts the process again on the same database (after `kill` or `stop`).
    pub fn restart(&mut self) {
        self.stop();
        self.starts += 1;
        let log = File::create(self.log_path()).expect("creating the agent log");
        let binary = workspace_binary("pinion-agent");
        let child = Command::new(&binary)
            .arg("run")
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        self.child = Some(child);
    }

    /// Starts the process again on the same database with `extra` settings replacing or
    /// added to the ones it had (`("PINION_ALLOW_PRIVILEGED", "true")`).
    pub fn restart_with_env(&mut self, extra: &[(&str, &str)]) {
        for (name, value) in extra {
            self.env.retain(|(k, _)| k != name);
            self.env.push((name.to_string(), value.to_string()));
        }
        self.restart();
    }

    /// SIGKILL, as a power cut would.
    pub fn kill(&mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id while it runs (benchmarks read `/proc/PID/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The current run's log file (each `restart` starts a new one).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(&format!("agent-{}.log", self.starts))
    }

    /// The current run's log (stderr).
    pub fn log(&self) -> String {
        tail_of_file(&self.log_path(), 20_000)
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("agent.db")
    }

    /// `pinion-agent status` on this agent's database.
    pub fn status(&self) -> Value {
        let out = Command::new(workspace_binary("pinion-agent"))
            .arg("status")
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running pinion-agent status");
        assert!(out.status.success(), "pinion-agent status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("pinion-agent status prints JSON")
    }
}

/// How long an agent test waits for Docker to reach what it expects.
pub const CONVERGE: std::time::Duration = std::time::Duration::from_secs(90);

impl Agent {
    /// Waits until `check` holds and returns how long that took; panics with this
    /// agent's log when it does not within `CONVERGE`.
    pub fn converge(&self, what: &str, mut check: impl FnMut() -> bool) -> std::time::Duration {
        let started = std::time::Instant::now();
        while started.elapsed() < CONVERGE {
            if check() {
                return started.elapsed();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{what}: not reached within {CONVERGE:?}; agent log:\n{}", self.log());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}
