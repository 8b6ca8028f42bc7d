//! Small pieces every harness part needs and no dependency should be added for: temp
//! dirs that clean up after themselves, free loopback ports, randomness, sha256 digests,
//! base64, percent-decoding, and finding a required system tool (or failing with the
//! `apt-get install` line that brings it).

use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/pinion-tests-<pid>-<n>-<random>-<label>`.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("pinion-tests-{}-{n}-{}-{label}", std::process::id(), random_hex(4)));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` inside the dir and returns the file's path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A loopback port nobody in this process has been handed before and that was free a
/// moment ago. Callers that bind it in a child process retry with another port if the
/// child reports the address in use (another process may have taken it meanwhile).
/// `label-<pid>-<n>`: a name no other test of this run uses (device ids, container names).
/// An HTTP client that hands every status back as an answer (4xx and 5xx are what the
/// tests look at), each request bounded by `timeout`.
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().new_agent()
}

pub fn unique(label: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("{label}-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("could not find a free loopback port in 100 tries");
}

/// `n` random bytes from the kernel, hex-encoded (2n characters).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("reading /dev/urandom");
    hex(&buf)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `bytes`: the OCI digest of exactly these bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

const STD_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64_with(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding (HTTP Basic, Docker `config.json` `auth`).
pub fn base64_std(bytes: &[u8]) -> String {
    base64_with(bytes, STD_ALPHABET, true)
}

/// base64url without padding (JWS).
pub fn base64_url(bytes: &[u8]) -> String {
    base64_with(bytes, URL_ALPHABET, false)
}

/// Standard base64 decoding (padding optional); `None` on a character outside the alphabet.
pub fn base64_std_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = STD_ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes and `+` (form encoding) in a query component.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hexpair = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hexpair.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query parameters of a request target (`/token?a=1&b=2`), decoded, in order.
pub fn query_params(target: &str) -> Vec<(String, String)> {
    let Some((_, query)) = target.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Path of a required executable, or a panic that says how to install it. Tests that
/// need one of these fail (never skip) on a machine without it.
pub fn require_tool(name: &str, apt_package: &str) -> PathBuf {
    let candidates =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    for dir in candidates.iter().map(PathBuf::as_path).chain([Path::new("/usr/bin"), Path::new("/usr/sbin")]) {
        let path = dir.join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "`{name}` not found on PATH: these end-to-end tests need it. \
         Install it with `apt-get install {apt_package}` (Debian/Ubuntu)."
    );
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether an engine's Docker API on `socket` (dockerd, Podman's service) answers
/// `GET /_ping` with 200: it is up.
pub fn answers_ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

/// The last `max` bytes of a log file, for failure messages.
pub fn tail_of_file(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A Docker `config.json` with one `auths` entry per `(host, user, password)`, as
/// `docker login` writes it.
pub fn docker_config_json(entries: &[(&str, &str, &str)]) -> String {
    let mut auths = serde_json::Map::new();
    for (host, user, password) in entries {
        auths.insert(
            host.to_string(),
            serde_json::json!({ "auth": base64_std(format!("{user}:{password}").as_bytes()) }),
        );
    }
    serde_json::json!({ "auths": auths }).to_string()
}

/// A target state of one app (`"1"`, `demo`) whose services `svc1`, `svc2`, … run
/// `images`, with no config: what a test that only cares about resolution sets.
pub fn demo_target(images: &[&str]) -> serde_json::Value {
    let services: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({"serviceId": i + 1, "serviceName": format!("svc{}", i + 1), "imageName": image}))
        .collect();
    serde_json::json!({"apps": {"1": {"appId": 1, "appName": "demo", "services": services}}, "config": {}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_std(plain.as_bytes()), encoded);
            assert_eq!(base64_url(plain.as_bytes()), encoded.trim_end_matches('='));
            assert_eq!(base64_std_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn query_params_decode_scopes() {
        let q =
            query_params("/token?service=reg&scope=repository%3Ademo%2Fapp%3Apull&scope=repository:x/y:pull,push&flag");
        assert_eq!(q[0], ("service".into(), "reg".into()));
        assert_eq!(q[1], ("scope".into(), "repository:demo/app:pull".into()));
        assert_eq!(q[2], ("scope".into(), "repository:x/y:pull,push".into()));
        assert_eq!(q[3], ("flag".into(), String::new()));
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn sha256_digest_of_empty_input() {
        assert_eq!(sha256_digest(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
