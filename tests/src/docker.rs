//! The real dockerd the agent tests run against, driven with the Debian `docker` CLI as
//! a user would: `docker import` of a busybox root filesystem, `docker push` to a test
//! registry, `docker ps` to see what the agent runs. The socket comes from
//! `PINION_TEST_DOCKER_SOCKET` (default `/var/run/docker.sock`); `scripts/test` starts
//! a dockerd when none answers.

use crate::util::{require_tool, TempDir};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

pub const DOCKER_SOCKET_ENV: &str = "PINION_TEST_DOCKER_SOCKET";
/// The label on every container an agent manages.
pub const MANAGED: &str = "io.pinion.app-id";

/// A test's turn on the shared dockerd: an agent manages every labelled container there,
/// so the agent tests take turns, each starting and ending clean: the tests of one binary
/// through a mutex, test binaries run side by side through a lock file beside the socket.
pub struct Turn {
    pub docker: Docker,
    _file_lock: std::fs::File,
    _lock: MutexGuard<'static, ()>,
}

/// Waits for the turn, then removes what earlier tests left.
pub fn take_turn() -> Turn {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let path = std::env::temp_dir().join("pinion-test-docker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.lock().unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    let docker = Docker::connect();
    docker.remove_labelled(MANAGED);
    Turn { docker, _file_lock: file, _lock: lock }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.docker.remove_labelled(MANAGED);
    }
}

/// A dockerd reached through the `docker` CLI.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: PathBuf,
    cli: PathBuf,
    /// `docker --config DIR`: the CLI's own `config.json` (registry logins) for pushes
    /// to a registry that wants credentials; the default is the user's.
    config: Option<PathBuf>,
}

impl Docker {
    /// The test dockerd; panics with how to start one if it does not answer.
    pub fn connect() -> Docker {
        let socket: PathBuf =
            std::env::var_os(DOCKER_SOCKET_ENV).map(PathBuf::from).unwrap_or_else(|| "/var/run/docker.sock".into());
        Docker::at(&socket)
    }

    /// The dockerd at `socket` (a test's own, `dockerd::PrivateDockerd`); panics with how
    /// to start one if it does not answer.
    pub fn at(socket: &std::path::Path) -> Docker {
        let socket = socket.to_path_buf();
        // Debian's CLI matches Debian's engine; a newer one elsewhere on PATH may not.
        let cli = if std::path::Path::new("/usr/bin/docker").is_file() {
            PathBuf::from("/usr/bin/docker")
        } else {
            require_tool("docker", "docker.io")
        };
        let docker = Docker { socket, cli, config: None };
        let ping = docker.command(&["version", "--format", "{{.Server.APIVersion}}"]).output();
        match ping {
            Ok(out) if out.status.success() => docker,
            Ok(out) => panic!(
                "no dockerd answers at {} ({}). Start one as root (`dockerd &`), or run scripts/test, \
                 which starts it; set {DOCKER_SOCKET_ENV} for another socket",
                docker.socket.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("running {}: {e}", docker.cli.display()),
        }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The same dockerd through a CLI whose `config.json` logs in to `registry_host`
    /// as `user` (written into `dir`, as `docker --config DIR login` would; dockerd keeps
    /// no credentials of its own).
    pub fn logged_in(&self, dir: &TempDir, registry_host: &str, user: &str, password: &str) -> Docker {
        dir.write("config.json", crate::util::docker_config_json(&[(registry_host, user, password)]));
        Docker { socket: self.socket.clone(), cli: self.cli.clone(), config: Some(dir.path().to_path_buf()) }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.cli);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command.arg("-H").arg(format!("unix://{}", self.socket.display())).args(args);
        command.stdin(Stdio::null());
        command
    }

    /// Runs `docker ARGS`; panics with its output when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
        if !out.status.success() {
            panic!(
                "docker {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `docker ARGS`, returning whether it succeeded.
    pub fn try_run(&self, args: &[&str]) -> bool {
        self.command(args).output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// `docker import` of a busybox root filesystem with `/version` holding `version`
    /// and `cmd` as its command, tagged `reference`.
    pub fn import_busybox(&self, reference: &str, version: &str, cmd: &str) -> String {
        self.import_busybox_with(reference, version, cmd, &[])
    }

    /// `import_busybox`, pushed to its registry and removed here again (the agent under
    /// test must pull it): its manifest digest.
    pub fn push_busybox(&self, reference: &str, version: &str, cmd: &str) -> String {
        self.import_busybox(reference, version, cmd);
        let digest = self.push(reference);
        self.run(&["rmi", reference]);
        digest
    }

    /// `import_busybox` with more files at the root: `(name in the image, file to copy)`.
    pub fn import_busybox_with(
        &self,
        reference: &str,
        version: &str,
        cmd: &str,
        files: &[(&str, &std::path::Path)],
    ) -> String {
        let busybox = std::path::Path::new("/usr/bin/busybox");
        assert!(busybox.is_file(), "/usr/bin/busybox is missing: apt-get install busybox-static");
        let dir = TempDir::new("rootfs");
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "echo", "cat", "httpd", "false", "true", "ls"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("version"), version).unwrap();
        for (name, source) in files {
            std::fs::copy(source, root.join(name)).unwrap_or_else(|e| panic!("copying {}: {e}", source.display()));
        }
        let tar = dir.join("rootfs.tar");
        let status =
            Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().expect("running tar");
        assert!(status.success(), "tar of the busybox rootfs failed");
        let change = format!("CMD {cmd}");
        self.run(&["import", "--change", &change, tar.to_str().unwrap(), reference])
    }

    /// `docker push`; returns the digest the registry stored (`sha256:…`).
    pub fn push(&self, reference: &str) -> String {
        let out = self.run(&["push", reference]);
        out.split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| panic!("docker push {reference} printed no digest: {out}"))
    }

    /// Containers carrying `label` (`key` or `key=value`), as `docker inspect` JSON. A
    /// container removed between the listing and the inspection is left out.
    pub fn containers_with_label(&self, label: &str) -> Vec<Value> {
        let ids = self.run(&["ps", "-aq", "--no-trunc", "--filter", &format!("label={label}")]);
        ids.lines()
            .filter(|id| !id.is_empty())
            .filter_map(|id| {
                let out = self.command(&["inspect", id]).output().ok()?;
                let mut list: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
                out.status.success().then(|| list.pop()).flatten()
            })
            .collect()
    }

    /// Force-removes every container carrying `label`, and networks carrying it.
    pub fn remove_labelled(&self, label: &str) {
        for container in self.containers_with_label(label) {
            if let Some(id) = container["Id"].as_str() {
                self.try_run(&["rm", "-f", id]);
            }
        }
        let networks = self.run(&["network", "ls", "-q", "--filter", &format!("label={label}")]);
        for id in networks.lines().filter(|l| !l.is_empty()) {
            self.try_run(&["network", "rm", id]);
        }
    }
}
