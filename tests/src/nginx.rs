//! The Debian `nginx` as a child process on a loopback port, in a temp dir of its own
//! (config, logs, temp paths): the one start routine behind `tls::TlsProxy` (https in
//! front of one server) and `replicas::Replicas` (round-robin in front of several). Its
//! access log names the upstream each request went to (`upstream=ADDR`). A machine
//! without nginx fails with the `apt-get install` line.

use crate::util::{free_port, require_tool, tail_of_file, wait_for, TempDir};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long nginx may take to accept TCP connections.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// A running nginx (one process: no master, no daemon); killed on drop.
pub struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `http(port)` inside its `http {}` block, after the logs and temp
    /// paths: the `server` (and `upstream`) blocks, listening on `127.0.0.1:port`.
    /// `worker_connections` bounds its connections, client and upstream ones together.
    /// Tries another port when the first is taken; returns once it accepts connections.
    pub fn start(worker_connections: u32, http: impl Fn(u16) -> String) -> Nginx {
        let binary = require_tool("nginx", "nginx");
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = TempDir::new("nginx");
            let port = free_port();
            let d = dir.path().display();
            let config = format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections {worker_connections}; }}\n\
                 http {{\n  log_format proxied '$remote_addr - $remote_user [$time_local] \"$request\" $status \
                 $body_bytes_sent \"$http_referer\" \"$http_user_agent\" upstream=$upstream_addr';\n  \
                 access_log {d}/access.log proxied;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
                 scgi_temp_path {d}/scgi;\n{}\n}}\n",
                http(port)
            );
            let config_path = dir.write("nginx.conf", config);
            let log = std::fs::File::create(dir.join("stderr.log")).expect("creating the nginx log");
            let mut child = Command::new(&binary)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&config_path)
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cloning the log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
            let up = wait_for(STARTUP_DEADLINE, || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(format!("nginx exited with {status}")));
                }
                TcpStream::connect(("127.0.0.1", port)).ok().map(|_| Ok(()))
            });
            let nginx = Nginx { child, port, dir };
            match up {
                Some(Ok(())) => return nginx,
                Some(Err(why)) => {
                    last_log = format!("{why}:\n{}", nginx.log());
                    assert!(last_log.contains("Address already in use"), "nginx did not start: {last_log}");
                }
                None => panic!(
                    "nginx did not accept connections on port {port} within {STARTUP_DEADLINE:?}:\n{}",
                    nginx.log()
                ),
            }
        }
        panic!("nginx could not bind a free port in 5 attempts; last output:\n{last_log}");
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// nginx's error log and stderr.
    pub fn log(&self) -> String {
        format!(
            "{}\n{}",
            tail_of_file(&self.dir.join("stderr.log"), 4000),
            tail_of_file(&self.dir.join("error.log"), 8000)
        )
    }

    /// The requests nginx proxied (its access log, the last 16,000 bytes).
    pub fn access_log(&self) -> String {
        tail_of_file(&self.dir.join("access.log"), 16_000)
    }

    /// The whole access log, however long.
    pub fn full_access_log(&self) -> String {
        tail_of_file(&self.dir.join("access.log"), usize::MAX)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
