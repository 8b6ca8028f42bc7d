//! https in front of a test server, as a fleet would run it: a private CA and a server
//! certificate for `localhost`/127.0.0.1 made with the `openssl` CLI, and the Debian
//! `nginx` terminating TLS on a loopback port and proxying to a `pinion-server`. Both
//! tools are required: a machine without them fails with the `apt-get install` line.

use crate::nginx::Nginx;
use crate::util::{random_hex, require_tool, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    nginx: Nginx,
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
        let nginx = Nginx::start(64, |port| {
            format!(
                "  server {{\n    listen 127.0.0.1:{port} ssl;\n    \
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n    location / {{\n      \
                 proxy_pass {upstream};\n      proxy_http_version 1.1;\n      proxy_set_header Host $host;\n      \
                 {directives}\n    }}\n  }}",
                cert = cert.display(),
                key = key.display(),
            )
        });
        TlsProxy { nginx }
    }

    /// `https://localhost:PORT`, which the certificate names.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.nginx.port())
    }

    /// nginx's error log and stderr.
    pub fn log(&self) -> String {
        self.nginx.log()
    }

    /// The requests nginx proxied (its access log).
    pub fn access_log(&self) -> String {
        self.nginx.access_log()
    }
}
