//! https for a test server, as a fleet would run it: a private CA and server
//! certificates for `localhost`/127.0.0.1 made with the `openssl` CLI (any serial, name
//! and validity: `FleetPki::issue`), the Debian `nginx` terminating TLS on a loopback
//! port and proxying to a `pinion-server`, or the server's own https
//! (`Server::start_https`). Both tools are required: a machine without them fails with
//! the `apt-get install` line. `TlsClient` is a rustls client for the tests that look at
//! the handshake itself: the certificate a server presents, a handshake left unfinished.

use crate::nginx::Nginx;
use crate::util::{random_hex, require_tool, TempDir};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

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

    /// Another server certificate from this CA, for `localhost`/127.0.0.1 with the subject
    /// `CN=<common_name>`, a random serial and its own new key: `<name>.pem` and
    /// `<name>.key`. `dates`: (notBefore, notAfter) as `YYYYMMDDHHMMSSZ`, for certificates
    /// expired or not valid yet; `None`: valid from now for two days.
    pub fn issue(&self, name: &str, common_name: &str, dates: Option<(&str, &str)>) -> Issued {
        if !self.dir.join("ca.cnf").exists() {
            // `openssl ca` (unlike `x509 -req`) takes any start and end date.
            std::fs::create_dir_all(self.dir.join("issued")).expect("creating the issued dir");
            self.dir.write("index.txt", "");
            // Needed by name even with -rand_serial, which leaves it unused.
            self.dir.write("serial.txt", "1000\n");
            self.dir.write(
                "ca.cnf",
                "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = issued\n\
                 default_md = sha256\nserial = serial.txt\npolicy = anything\nunique_subject = no\n\
                 [anything]\ncommonName = supplied\n",
            );
        }
        let key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let (key, csr, cert) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        let subject = format!("/CN={common_name}");
        openssl(
            &self.dir,
            &[&["req", "-new"], &key_options[..], &["-keyout", &key, "-out", &csr]].concat(),
            &["-subj", &subject],
        );
        let mut args = vec!["ca", "-batch", "-notext", "-rand_serial", "-config", "ca.cnf", "-cert", "ca.pem"];
        args.extend(["-keyfile", "ca.key", "-in", &csr, "-out", &cert, "-extfile", "server.ext"]);
        let dates: Vec<&str> = match dates {
            Some((start, end)) => vec!["-startdate", start, "-enddate", end],
            None => vec!["-days", "2"],
        };
        openssl(&self.dir, &args, &dates);
        Issued { cert: self.dir.join(&cert), key: self.dir.join(&key) }
    }
}

/// A certificate `FleetPki::issue` made, and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The DER of the first certificate in a PEM file: what a server serving it presents.
pub fn leaf_der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .unwrap_or_else(|e| panic!("no certificate in {}: {e}", pem.display()))
        .as_ref()
        .to_vec()
}

/// A rustls client trusting one CA, for `localhost`.
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

/// An https connection whose handshake is done.
pub struct TlsConnection {
    pub session: ClientConnection,
    pub tcp: TcpStream,
}

impl TlsClient {
    pub fn trusting(ca_pem: &Path) -> TlsClient {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(ca_pem).expect("the CA certificate")).expect("a usable CA");
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsClient { config: Arc::new(config) }
    }

    fn session(&self) -> ClientConnection {
        let name = ServerName::try_from("localhost").expect("a server name");
        ClientConnection::new(Arc::clone(&self.config), name).expect("a TLS client session")
    }

    /// Connects to `address` (from `tcp`, an unconnected or connected stream) and
    /// completes the handshake, within 10 s.
    pub fn handshake(&self, tcp: TcpStream) -> io::Result<TlsConnection> {
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut connection = TlsConnection { session: self.session(), tcp };
        while connection.session.is_handshaking() {
            connection.session.complete_io(&mut connection.tcp)?;
        }
        Ok(connection)
    }

    pub fn connect(&self, address: SocketAddr) -> io::Result<TlsConnection> {
        self.handshake(TcpStream::connect(address)?)
    }

    /// The first `len` bytes of this client's ClientHello (a handshake begun and never
    /// finished).
    pub fn client_hello_prefix(&self, len: usize) -> Vec<u8> {
        let mut hello = Vec::new();
        self.session().write_tls(&mut hello).expect("a ClientHello");
        hello.truncate(len);
        hello
    }
}

impl TlsConnection {
    /// The DER of the leaf certificate the server presented.
    pub fn peer_leaf(&self) -> Vec<u8> {
        let certs = self.session.peer_certificates().expect("a server certificate");
        certs.first().expect("a leaf certificate").as_ref().to_vec()
    }

    /// Sends `request` (one request or several, pipelined) and reads until the server
    /// has sent `answers` answers whose bodies are their `Content-Length` long, or closes.
    pub fn exchange(&mut self, request: &[u8], answers: usize) -> io::Result<String> {
        let mut written = 0;
        while written < request.len() {
            // The session takes up to its buffer limit (64 KiB) before it is flushed.
            written += self.session.writer().write(&request[written..])?;
            while self.session.wants_write() {
                self.session.write_tls(&mut self.tcp)?;
            }
        }
        let mut received = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while count_whole_answers(&received) < answers {
            match self.session.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    received.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            if self.session.read_tls(&mut self.tcp)? == 0 {
                let _ = self.session.process_new_packets();
                continue;
            }
            self.session.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Ok(String::from_utf8_lossy(&received).into_owned())
    }
}

/// Answers in `bytes` that have come whole (head and `Content-Length` body).
fn count_whole_answers(bytes: &[u8]) -> usize {
    let mut count = 0;
    let mut rest = bytes;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let whole = end + 4 + length;
        if rest.len() < whole {
            break;
        }
        count += 1;
        rest = &rest[whole..];
    }
    count
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
