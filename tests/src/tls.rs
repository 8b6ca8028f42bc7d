//! https in front of a test server, as a fleet would run it: a private CA and a server
//! certificate for `localhost`/127.0.0.1 made with the `openssl` CLI, and the Debian
//! `nginx` terminating TLS on a loopback port and proxying to a `pinion-server`. Both
//! tools are required: a machine without them fails with the `apt-get install` line.

use crate::util::{free_port, random_hex, require_tool, tail_of_file, wait_for, TempDir};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long nginx may take to accept TCP connections.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// A CA and a server certificate it signed, as PEM files in a temp dir.
pub struct FleetPki {
    dir: TempDir,
}

impl FleetPki {
    /// A new CA named `CN=<label> fleet CA`, and a server certificate from it for
    /// `DNS:localhost, IP:127.0.0.1` (EC P-256, valid for two days).
    pub fn generate(label: &str) -> FleetPki {
        let dir = TempDir::new("pki");
        let key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let ca_subject = format!("/CN={label} fleet CA");
        openssl(
            &dir,
            &[&["req", "-x509"], &key_options[..], &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]].concat(),
            &[
                "-subj",
                &ca_subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            &dir,
            &[&["req", "-new"], &key_options[..], &["-keyout", "server.key", "-out", "server.csr"]].concat(),
            &["-subj", "/CN=localhost"],
        );
        dir.write(
            "server.ext",
            "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
        );
        let serial = format!("0x{}", random_hex(8));
        openssl(
            &dir,
            &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-out", "server.pem"],
            &["-days", "2", "-set_serial", &serial, "-extfile", "server.ext"],
        );
        FleetPki { dir }
    }

    /// The CA certificate (what an agent's `ca_file` names).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

/// Runs `openssl <args> <more>` in `dir`; panics with its output when it fails.
fn openssl(dir: &TempDir, args: &[&str], more: &[&str]) {
    let binary = require_tool("openssl", "openssl");
    let out = Command::new(&binary)
        .args(args)
        .args(more)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    assert!(
        out.status.success(),
        "openssl {} {} failed: {}",
        args.join(" "),
        more.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// nginx serving https on a loopback port with a certificate, proxying every request to
/// `http://127.0.0.1:<upstream>`; killed on drop.
pub struct TlsProxy {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl TlsProxy {
    /// Starts nginx with `cert`/`key` in front of the plain-http server at `upstream`
    /// (`http://127.0.0.1:PORT`, as `Server::url` gives it); returns once it accepts
    /// connections.
    pub fn start(upstream: &str, cert: &Path, key: &Path) -> TlsProxy {
        TlsProxy::start_with(upstream, cert, key, "")
    }

    /// `start` with more directives in its `location` (`proxy_bind 127.0.0.2;`).
    pub fn start_with(upstream: &str, cert: &Path, key: &Path, directives: &str) -> TlsProxy {
        let binary = require_tool("nginx", "nginx");
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = TempDir::new("nginx");
            let port = free_port();
            let d = dir.path().display();
            let config = format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
                 scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    \
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n    location / {{\n      \
                 proxy_pass {upstream};\n      proxy_http_version 1.1;\n      proxy_set_header Host $host;\n      \
                 {directives}\n    }}\n  }}\n}}\n",
                cert = cert.display(),
                key = key.display(),
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
            let proxy = TlsProxy { child, port, dir };
            match up {
                Some(Ok(())) => return proxy,
                Some(Err(why)) => {
                    last_log = format!("{why}:\n{}", proxy.log());
                    assert!(last_log.contains("Address already in use"), "nginx did not start: {last_log}");
                }
                None => panic!(
                    "nginx did not accept connections on port {port} within {STARTUP_DEADLINE:?}:\n{}",
                    proxy.log()
                ),
            }
        }
        panic!("nginx could not bind a free port in 5 attempts; last output:\n{last_log}");
    }

    /// `https://localhost:PORT`, which the certificate names.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// nginx's error log and stderr.
    pub fn log(&self) -> String {
        format!(
            "{}\n{}",
            tail_of_file(&self.dir.join("stderr.log"), 4000),
            tail_of_file(&self.dir.join("error.log"), 8000)
        )
    }

    /// The requests nginx proxied (its access log).
    pub fn access_log(&self) -> String {
        tail_of_file(&self.dir.join("access.log"), 16_000)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
