//! A test's own dockerd, for faults the shared one must not suffer: restarting the
//! daemon, or filling the disk it pulls to. Its data root is a tmpfs of a given size
//! (mounted here, so a full disk is `size=` away and `resize` gives space back), with its
//! own socket, exec root and pidfile under a temp dir, a bridge of its own and no
//! iptables rules, so that it leaves the shared dockerd's network alone. (Not
//! `--bridge=none`: a dockerd started so deletes the host's `docker0`, and with it the
//! shared dockerd's default network.) Needs root, `dockerd` and `ip`; it panics saying
//! so, never skips. Stopped, unmounted and its bridge deleted on drop.

use crate::docker::Docker;
use crate::util::{answers_ping, random_hex, require_tool, tail_of_file, wait_for, TempDir};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long dockerd may take to answer `/_ping` after it was spawned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long dockerd may take to stop its containers and exit after SIGTERM.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// A running (or stopped) private `dockerd` on a tmpfs data root.
pub struct PrivateDockerd {
    child: Option<Child>,
    /// `overlay2`, or `vfs` where overlay on tmpfs is refused.
    driver: &'static str,
    data_root: PathBuf,
    /// The bridge its default network uses (`--bridge`), made here.
    bridge: String,
    starts: usize,
    dir: TempDir,
}

impl PrivateDockerd {
    /// Mounts a tmpfs of `size_mb` MiB as the data root and starts dockerd on it; returns
    /// once it answers. Panics with what to do when root, `mount` or `dockerd` is missing.
    pub fn start(size_mb: u32) -> PrivateDockerd {
        require_tool("dockerd", "docker.io");
        let dir = TempDir::new("dockerd");
        let data_root = dir.join("data");
        std::fs::create_dir_all(&data_root).expect("creating the data root");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "pinion-test-dockerd"])
            .arg(&data_root)
            .output()
            .unwrap_or_else(|e| panic!("running mount (apt-get install mount): {e}"));
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} failed: {}. A private dockerd on a tmpfs needs root: run the tests as \
             root (scripts/test in CI does), or in a container started with --privileged",
            data_root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let bridge = make_bridge().unwrap_or_else(|why| {
            let _ = Command::new("umount").arg(&data_root).status();
            panic!("{why}. A private dockerd needs root for its bridge (apt-get install iproute2)")
        });
        let mut dockerd = PrivateDockerd { child: None, driver: "overlay2", data_root, bridge, starts: 0, dir };
        if let Err(why) = dockerd.spawn() {
            eprintln!("private dockerd: overlay2 on tmpfs failed ({why}); trying vfs");
            dockerd.driver = "vfs";
            if let Err(why) = dockerd.spawn() {
                panic!("a private dockerd did not start: {why}");
            }
        }
        dockerd
    }

    /// The socket to give the agent (`PINION_DOCKER_SOCKET`) and the CLI.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// This dockerd through the `docker` CLI.
    pub fn docker(&self) -> Docker {
        Docker::at(&self.socket())
    }

    /// The storage driver in use.
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// Stops dockerd as its service manager would (SIGTERM: it stops its containers),
    /// SIGKILL after `SHUTDOWN_DEADLINE`.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        if wait_for(SHUTDOWN_DEADLINE, || child.try_wait().ok().flatten()).is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Starts dockerd again on the same data root (its containers with a restart policy
    /// come back); returns once it answers.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(why) = self.spawn() {
            panic!("the private dockerd did not start again: {why}");
        }
    }

    /// Gives the data root's tmpfs a new size (`mount -o remount,size=`).
    pub fn resize(&self, size_mb: u32) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size_mb}m")])
            .arg(&self.data_root)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "remounting {} with size={size_mb}m failed: {}",
            self.data_root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Bytes free on the data root (`df`), for failure messages.
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df").args(["-B1", "--output=avail"]).arg(&self.data_root).output();
        out.ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        tail_of_file(&self.log_path(), 8000)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(&format!("dockerd-{}.log", self.starts))
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("creating the dockerd log");
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg(format!("--bridge={}", self.bridge))
            .args(["--iptables=false", "--ip6tables=false", "--ip-masq=false"])
            .args(["--storage-driver", self.driver])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning dockerd: {e}"))?;
        let outcome = wait_for(STARTUP_DEADLINE, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(format!("dockerd exited with {status}")));
            }
            answers_ping(&socket).then_some(Ok(()))
        });
        match outcome {
            Some(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let why = match other {
                    Some(Err(why)) => why,
                    _ => format!("dockerd did not answer within {STARTUP_DEADLINE:?}"),
                };
                Err(format!("{why}; its log:\n{}", tail_of_file(&self.log_path(), 4000)))
            }
        }
    }
}

/// A bridge `pinion<6 hex>` with a gateway address in 10.213.<random>.0/24, up.
fn make_bridge() -> Result<String, String> {
    let ip = require_tool("ip", "iproute2");
    let suffix = random_hex(3);
    let name = format!("pinion{suffix}");
    let address = format!("10.213.{}.1/24", u8::from_str_radix(&suffix[..2], 16).unwrap_or(0));
    for args in [
        vec!["link", "add", name.as_str(), "type", "bridge"],
        vec!["addr", "add", address.as_str(), "dev", name.as_str()],
        vec!["link", "set", name.as_str(), "up"],
    ] {
        let out = Command::new(&ip).args(&args).output().map_err(|e| format!("running ip: {e}"))?;
        if !out.status.success() {
            let _ = Command::new(&ip).args(["link", "del", &name]).status();
            return Err(format!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    Ok(name)
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        self.stop();
        // Containers' overlay mounts go with dockerd; a lazy unmount covers stragglers.
        let unmounted = Command::new("umount").arg(&self.data_root).status().is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.data_root).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}
