//! A private Podman for the agent tests: `podman system service`, Podman's Docker Engine
//! API, on a socket of its own, with its own `containers.conf`, `registries.conf` and
//! storage (graph root, run root, volumes, networks, events) under a temp dir, handed over
//! through `CONTAINERS_CONF`, `CONTAINERS_REGISTRIES_CONF` and `CONTAINERS_STORAGE_CONF`:
//! nothing under /etc is read for them or written, and the machine's own podman keeps its
//! containers and images. The tests look at what runs with the `podman` CLI on the same
//! files (`Podman`), as a user of that host would.
//!
//! What the configuration must say on these machines: the sandbox's hard limit on open
//! files is 20,000, under Podman's default `nofile` ulimit, so without smaller defaults
//! every start fails with `error setting rlimit type 7: operation not permitted`; there
//! is no systemd, so cgroups are managed directly (`cgroupfs`) and events go to a file;
//! the test registries speak plain http on 127.0.0.1:PORT, declared insecure by the
//! prefix `127.0.0.1` (which matches `127.0.0.1:PORT/…`: a port follows a prefix as a
//! path does).
//!
//! One service per test binary (`take_turn`), started on first use and stopped when the
//! binary exits, killed or not: the service runs under a small shell that waits for its
//! stdin, the test binary's pipe, to close, then stops the service and removes its
//! containers (their processes outlive the service), networks, volumes and files. The
//! agent manages every labelled container on its engine, so tests take turns on it, as
//! on the shared dockerd (`docker::take_turn`). Needs root and `podman`; it panics saying
//! so, never skips.

use crate::util::{answers_ping, require_tool, tail_of_file, wait_for, TempDir};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long the service may take to answer `/_ping`.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// The label on every container an agent manages, and on its networks and volumes.
const MANAGED_CONTAINER: &str = "io.pinion.app-id";
const MANAGED_NETWORK_OR_VOLUME: &str = "io.pinion.managed";

/// Runs the service until stdin closes, then cleans up after it. `$1` podman, `$2` the
/// socket, `$3` the dir. Interrupts are ignored: a Ctrl-C that ends the test binary
/// closes stdin, and the cleanup must still run. (Not SIGTERM: the service would inherit
/// that being ignored, and SIGTERM is how it is stopped, SIGKILL after 30 s.)
const WATCHDOG: &str = r#"
trap '' INT HUP
podman=$1 socket=$2 dir=$3
"$podman" system service --time=0 "unix://$socket" >>"$dir/service.log" 2>&1 &
service=$!
cat >/dev/null
kill "$service" 2>/dev/null
for _ in $(seq 30); do kill -0 "$service" 2>/dev/null || break; sleep 1; done
kill -KILL "$service" 2>/dev/null
wait "$service"
{
    "$podman" rm --all --force --time 0
    "$podman" network ls --format '{{.Name}}' | while read -r name; do
        [ "$name" = podman ] || "$podman" network rm --force "$name"
    done
    "$podman" volume rm --all --force
} >>"$dir/cleanup.log" 2>&1
grep -F " $dir/" /proc/self/mounts | cut -d' ' -f2 | sort -r | while read -r mount; do umount -l "$mount"; done
rm -rf "$dir"
"#;

/// A running `podman system service` and the files it was started with.
pub struct PodmanService {
    socket: PathBuf,
    /// `CONTAINERS_*` variables pointing at this service's files, for the CLI too.
    env: Vec<(String, String)>,
    podman: PathBuf,
    dir: TempDir,
    /// The watchdog shell, and the pipe whose closing stops it.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

impl PodmanService {
    /// Writes the configuration, starts the service and waits until it answers `/_ping`.
    /// Panics with what to do when podman or root is missing, or the service fails.
    pub fn start() -> PodmanService {
        let podman = require_tool("podman", "podman");
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the Podman tests run a rootful `podman system service` with storage of its own: run them as \
             root (scripts/test does)"
        );
        let dir = TempDir::new("podman");
        let mut service =
            PodmanService { socket: dir.join("podman.sock"), env: Vec::new(), podman, dir, watchdog: Mutex::new(None) };
        let first = service.spawn("overlay");
        if let Err(why) = first {
            // Overlay on an overlay filesystem (a temp dir in a container) is refused.
            eprintln!("podman with the overlay driver did not start ({why}); trying vfs");
            service.stop();
            if let Err(why) = service.spawn("vfs") {
                panic!("`podman system service` did not start: {why}");
            }
        }
        service
    }

    /// The socket the agent is given (`PINION_DOCKER_SOCKET`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The `podman` CLI on this service's containers, images, networks and volumes.
    pub fn cli(&self) -> Podman {
        Podman { binary: self.podman.clone(), env: self.env.clone(), socket: self.socket.clone() }
    }

    /// The service's log, for failure messages.
    pub fn log(&self) -> String {
        tail_of_file(&self.dir.join("service.log"), 8000)
    }

    fn write_config(&mut self, driver: &str) {
        // A watchdog that stopped (a first start that failed) removed the dir.
        std::fs::create_dir_all(self.dir.path()).expect("creating the podman dir");
        let dir = self.dir.path().display().to_string();
        let containers_conf = format!(
            r#"[containers]
# The hard limit on open files here is 20,000: Podman's default nofile cannot be set.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
# No systemd: cgroups directly, events to a file of this service's.
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{dir}/events.log"
tmp_dir = "{dir}/tmp"
static_dir = "{dir}/storage/libpod"
volume_path = "{dir}/storage/volumes"

[network]
network_config_dir = "{dir}/networks"
"#
        );
        let registries_conf = r#"unqualified-search-registries = []

# The test registries: plain http on 127.0.0.1:PORT.
[[registry]]
location = "127.0.0.1"
insecure = true
"#;
        let storage_conf = format!(
            r#"[storage]
driver = "{driver}"
graphroot = "{dir}/storage"
runroot = "{dir}/run"
"#
        );
        let files = [
            ("CONTAINERS_CONF", self.dir.write("containers.conf", containers_conf)),
            ("CONTAINERS_REGISTRIES_CONF", self.dir.write("registries.conf", registries_conf)),
            ("CONTAINERS_STORAGE_CONF", self.dir.write("storage.conf", storage_conf)),
        ];
        self.env = files.iter().map(|(name, path)| (name.to_string(), path.display().to_string())).collect();
    }

    fn spawn(&mut self, driver: &str) -> Result<(), String> {
        self.write_config(driver);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("podman-watchdog")
            .arg(&self.podman)
            .arg(&self.socket)
            .arg(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C for the tests does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawning sh for podman: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let outcome = wait_for(STARTUP_DEADLINE, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(format!("it exited with {status}")));
            }
            answers_ping(&self.socket).then_some(Ok(()))
        });
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some((child, stdin));
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(format!("{why}; its log:\n{}", self.log())),
            None => Err(format!(
                "no answer at {} within {STARTUP_DEADLINE:?}; its log:\n{}",
                self.socket.display(),
                self.log()
            )),
        }
    }

    /// Closes the watchdog's stdin and waits for its cleanup.
    fn stop(&self) {
        let taken = self.watchdog.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This test binary's service, started on first use; it lives until the binary exits.
pub fn shared() -> &'static PodmanService {
    static SERVICE: OnceLock<PodmanService> = OnceLock::new();
    SERVICE.get_or_init(PodmanService::start)
}

/// A test's turn on the shared Podman service: the tests of one binary through a mutex
/// (the service is the binary's own). Starts and ends with no labelled container,
/// network or volume.
pub struct Turn {
    pub podman: Podman,
    _lock: MutexGuard<'static, ()>,
}

/// Waits for the turn (starting the service on first use), then removes what earlier
/// tests left.
pub fn take_turn() -> Turn {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let podman = shared().cli();
    podman.remove_labelled();
    Turn { podman, _lock: lock }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.podman.remove_labelled();
    }
}

/// The `podman` CLI with a service's configuration: it works on the same storage as
/// the service, directly.
#[derive(Debug, Clone)]
pub struct Podman {
    binary: PathBuf,
    env: Vec<(String, String)>,
    socket: PathBuf,
}

impl Podman {
    /// The service's Docker API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.args(args).envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        command
    }

    /// Runs `podman ARGS`; panics with its output when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap_or_else(|e| panic!("podman {args:?}: {e}"));
        if !out.status.success() {
            panic!(
                "podman {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `podman ARGS`, returning whether it succeeded.
    pub fn try_run(&self, args: &[&str]) -> bool {
        self.command(args).output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// Containers carrying `label` (`key` or `key=value`), as `podman container inspect`
    /// JSON (the keys the tests read are Docker's: `Id`, `Config.Image`, `Config.Labels`,
    /// `State.Running`, `HostConfig.RestartPolicy`, `NetworkSettings.Networks`, `Mounts`).
    /// A container removed between the listing and the inspection is left out.
    pub fn containers_with_label(&self, label: &str) -> Vec<Value> {
        let ids = self.run(&["ps", "-aq", "--no-trunc", "--filter", &format!("label={label}")]);
        ids.lines()
            .filter(|id| !id.is_empty())
            .filter_map(|id| {
                let out = self.command(&["container", "inspect", id]).output().ok()?;
                let mut list: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
                out.status.success().then(|| list.pop()).flatten()
            })
            .collect()
    }

    /// Force-removes every container an agent manages, and their networks and volumes.
    pub fn remove_labelled(&self) {
        for container in self.containers_with_label(MANAGED_CONTAINER) {
            if let Some(id) = container["Id"].as_str() {
                self.try_run(&["rm", "--force", "--time", "0", id]);
            }
        }
        let filter = format!("label={MANAGED_NETWORK_OR_VOLUME}");
        for name in self.run(&["network", "ls", "--format", "{{.Name}}", "--filter", &filter]).lines() {
            self.try_run(&["network", "rm", "--force", name.trim()]);
        }
        for name in self.run(&["volume", "ls", "--quiet", "--filter", &filter]).lines() {
            self.try_run(&["volume", "rm", "--force", name.trim()]);
        }
    }
}
