//! PostgreSQL for the replica tests: a new, empty database per test on the cluster that
//! `PINION_TEST_POSTGRES` names (`scripts/postgres-cluster start` prints the export;
//! `scripts/test` starts one itself), and a `PrivateCluster` of a test's own, on its own
//! port and directory, for the tests that stop and start PostgreSQL under the servers.
//! Without the variable, or without PostgreSQL installed, a test fails saying how to get
//! them, never skips.

use crate::util::{free_port, random_hex, tail_of_file, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The variable naming a maintenance database of the shared test cluster.
pub const POSTGRES_ENV: &str = "PINION_TEST_POSTGRES";

/// The shared test cluster's maintenance database URL; panics saying how to start one.
pub fn cluster_url() -> String {
    std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_ENV} is not set: these tests need a PostgreSQL cluster. Start a private one with \
             `eval \"$(scripts/postgres-cluster start)\"` (it prints the export; `apt-get install postgresql` \
             first if it says so), or run scripts/test, which starts it"
        )
    })
}

/// The URL of a new, empty database on the shared test cluster (`PINION_TEST_POSTGRES`).
pub fn new_database() -> String {
    new_database_on(&cluster_url())
}

/// The URL of a new, empty database on the cluster whose maintenance database is `admin`.
pub fn new_database_on(admin: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("pinion_e2e_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), random_hex(3));
    let mut client = postgres::Client::connect(admin, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to {admin}: {e}; is the cluster running (scripts/postgres-cluster)?"));
    client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("creating {name}: {e}"));
    with_database(admin, &name)
}

/// `url` naming database `name` instead of its own (the query, if any, kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(base, query)| (base, query));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = base[authority..].find('/').map_or(base, |i| &base[..authority + i]);
    match query {
        "" => format!("{base}/{name}"),
        query => format!("{base}/{name}?{query}"),
    }
}

/// A PostgreSQL cluster of a test's own, made and first started by
/// `scripts/postgres-cluster` on a free port in a temp dir (socket there too), stopped
/// and started again with `pg_ctl` on the options it first started with
/// (`postmaster.opts`); stopped and removed on drop.
pub struct PrivateCluster {
    port: u16,
    /// The script's directory (`PINION_TEST_POSTGRES_DIR`): `data/`, the socket, the log.
    cluster_dir: PathBuf,
    url: String,
    _dir: TempDir,
}

impl PrivateCluster {
    /// initdb and start; returns once it accepts connections. Panics with the script's
    /// output if it cannot.
    pub fn init() -> PrivateCluster {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = TempDir::new("postgres");
            let cluster_dir = dir.join("cluster");
            let port = free_port();
            let mut cluster = PrivateCluster { port, cluster_dir, url: String::new(), _dir: dir };
            let out = cluster.script("start");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                cluster.url = stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("export {POSTGRES_ENV}='"))?.strip_suffix('\''))
                    .unwrap_or_else(|| panic!("scripts/postgres-cluster start printed no export: {stdout}"))
                    .to_string();
                return cluster;
            }
            last = format!("{stdout}{stderr}");
            if !last.contains("Address already in use") && !last.contains("could not bind") {
                panic!("scripts/postgres-cluster start (port {port}) failed:\n{last}");
            }
        }
        panic!("no private PostgreSQL cluster could bind a free port in 5 attempts; last output:\n{last}");
    }

    /// The maintenance database (`postgres`) URL, through the cluster's socket directory.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The URL of a new, empty database on this cluster.
    pub fn new_database(&self) -> String {
        new_database_on(&self.url)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `pg_ctl stop -m fast`: sessions are told and closed, then a clean shutdown (an
    /// operator's restart). Waits until it is down.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// `pg_ctl stop -m immediate`: every process quits at once, without a checkpoint, and
    /// the next start recovers from the WAL (a crash of PostgreSQL, not of the machine).
    pub fn crash(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    /// Starts it again on the same data, port and options; returns once it accepts
    /// connections.
    pub fn start(&mut self) {
        // What the script started it with, as `pg_ctl restart` would reuse it: the command
        // line after the program, each argument double-quoted.
        let opts_path = self.data_dir().join("postmaster.opts");
        let opts =
            std::fs::read_to_string(&opts_path).unwrap_or_else(|e| panic!("reading {}: {e}", opts_path.display()));
        let options = opts.trim().split_once(' ').map_or("", |(_, options)| options).to_string();
        let log = self.cluster_dir.join("postgres.log");
        let out = self.pg_ctl(&[
            "start".as_ref(),
            "-l".as_ref(),
            log.as_os_str(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "-o".as_ref(),
            options.as_ref(),
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start of the private cluster on port {} failed: {}{}\n{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// `stop` then `start`.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// The last lines PostgreSQL logged.
    pub fn log(&self) -> String {
        tail_of_file(&self.cluster_dir.join("postgres.log"), 4000)
    }

    fn data_dir(&self) -> PathBuf {
        self.cluster_dir.join("data")
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let out = self.pg_ctl(&["stop".as_ref(), "-m".as_ref(), mode.as_ref(), "-w".as_ref()]);
        assert!(
            out.status.success(),
            "pg_ctl stop -m {mode} of the private cluster on port {} failed: {}{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl -D <data> ARGS`, as the postgres user when we are root (as the script does).
    fn pg_ctl(&self, args: &[&std::ffi::OsStr]) -> Output {
        let pg_ctl = postgres_bin().join("pg_ctl");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let mut command = if unsafe { libc::geteuid() } == 0 {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            runuser
        } else {
            Command::new(&pg_ctl)
        };
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", pg_ctl.display()))
    }

    /// `scripts/postgres-cluster COMMAND` for this cluster's port and directory.
    fn script(&self, command: &str) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres-cluster");
        Command::new(&script)
            .arg(command)
            .env("PINION_TEST_POSTGRES_PORT", self.port.to_string())
            .env("PINION_TEST_POSTGRES_DIR", &self.cluster_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()))
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Stops it (if it runs) and removes its directory.
        let _ = self.script("stop");
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`, as the script picks it; panics with
/// the `apt-get install` line when there is none.
fn postgres_bin() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten();
    let newest = versions
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse::<u32>().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("pg_ctl").is_file())
        .max();
    newest.map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): apt-get install postgresql")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn with_database_replaces_only_the_path() {
        let socket = "postgres://postgres@%2Ftmp%2Fpinion-postgres-54329:54329/postgres";
        assert_eq!(super::with_database(socket, "t1"), "postgres://postgres@%2Ftmp%2Fpinion-postgres-54329:54329/t1");
        assert_eq!(
            super::with_database("postgres://u@h:1/p?sslmode=disable", "t2"),
            "postgres://u@h:1/t2?sslmode=disable"
        );
        assert_eq!(super::with_database("postgres://u@h", "t3"), "postgres://u@h/t3");
    }
}
