//! `DockerEngine` against a real dockerd (Debian `docker.io`), as a gateway has it:
//! containers, networks and volumes through the Engine API, and pulls from a real
//! `docker-registry` child process. Images are made without internet from
//! `busybox-static` with `docker import` semantics. The socket is
//! `$PINION_TEST_DOCKER_SOCKET` (default `/var/run/docker.sock`); without a dockerd
//! answering there, these tests fail and say how to start one.

#[allow(dead_code)]
#[path = "../src/engine/unix.rs"]
mod unix;

use pinion_agent::engine::{
    DockerEngine, Engine, PullProgress, LABEL_APP_ID, LABEL_MANAGED, LABEL_SERVICE_ID, LABEL_SERVICE_NAME,
};
use pinion_agent::Error;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Where Debian's `busybox-static` puts its binary.
const BUSYBOX: &str = "/usr/bin/busybox";
/// Repository of the images these tests import.
const TEST_REPOSITORY: &str = "pinion-test/busybox";
/// Applets linked next to `/bin/busybox` in the test image.
const APPLETS: &[&str] = &["sh", "sleep", "echo", "true", "false", "cat", "ls", "httpd"];

fn socket() -> PathBuf {
    std::env::var_os("PINION_TEST_DOCKER_SOCKET").map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

/// The engine under test, or a failure that says how to get a dockerd.
fn engine() -> DockerEngine {
    let socket = socket();
    DockerEngine::connect(&socket).unwrap_or_else(|e| {
        panic!(
            "no Docker engine answers at {}: {e}\n\
             These tests need a real dockerd. Start one as root with `dockerd &` (socket \
             {DEFAULT_SOCKET}), or e.g. `dockerd --host unix:///run/pinion-dockerd.sock &` and \
             set PINION_TEST_DOCKER_SOCKET=/run/pinion-dockerd.sock; `scripts/test` starts one.",
            socket.display()
        )
    })
}

/// `pinion-test-<pid>-<n>-<label>`: unique across parallel tests and concurrent runs.
fn unique(label: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!("pinion-test-{}-{}-{label}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Raw Engine API calls for what the agent itself never does (import, tag, push, clean up).
struct RawDocker {
    http: ureq::Agent,
    api_version: String,
}

impl RawDocker {
    fn new(api_version: &str) -> RawDocker {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        let http = ureq::Agent::with_parts(config, unix::UnixConnector { path: socket() }, unix::NoResolver);
        RawDocker { http, api_version: api_version.to_string() }
    }

    /// `path` is unversioned, except that `/version` is sent as is.
    fn call(&self, method: &str, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
        let uri = match path {
            "/version" => format!("http://docker{path}"),
            _ => format!("http://docker/v{}{path}", self.api_version),
        };
        let mut request = ureq::http::Request::builder().method(method).uri(&uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).expect("a valid request");
        let mut response = self.http.run(request).unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(64 << 20).read_to_vec().expect("reading a reply");
        (status, body)
    }

    fn json(&self, method: &str, path: &str) -> (u16, Value) {
        let (status, body) = self.call(method, path, Vec::new(), &[]);
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// A streamed JSON-lines reply (import, push), failing the test on an error line.
    fn stream(&self, what: &str, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Vec<Value> {
        let (status, reply) = self.call("POST", path, body, headers);
        let text = String::from_utf8_lossy(&reply);
        assert_eq!(status, 200, "{what}: {text}");
        let events: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if let Some(error) = events.iter().find(|e| !e["error"].is_null() || !e["errorDetail"].is_null()) {
            panic!("{what} failed: {error}");
        }
        events
    }
}

/// An image in a registry and nowhere else.
struct Published {
    /// `127.0.0.1:PORT/pinion-test/busybox@sha256:…`
    by_digest: String,
    /// Digest of its one layer blob.
    layer: String,
}

/// One test's engine plus everything it made, removed on drop (also when it fails).
struct Fixture {
    engine: DockerEngine,
    raw: RawDocker,
    containers: Vec<String>,
    images: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let engine = engine();
        let raw = RawDocker::new(engine.api_version());
        Fixture { engine, raw, containers: vec![], images: vec![], networks: vec![], volumes: vec![] }
    }

    /// Imports a one-layer image holding busybox and its applets under a fresh tag. The
    /// layer carries a unique file, so no other image shares it and a pull must fetch it.
    fn import_busybox(&mut self) -> String {
        let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
            panic!("reading {BUSYBOX}: {e}; these tests need it: `apt-get install busybox-static`")
        });
        let tag = unique("image");
        let mut tar = Tar::default();
        tar.directory("bin/");
        tar.file("bin/busybox", 0o755, &busybox);
        for applet in APPLETS {
            tar.symlink(&format!("bin/{applet}"), "busybox");
        }
        tar.directory("etc/");
        tar.file("etc/pinion-test-id", 0o644, tag.as_bytes());
        let path = format!("/images/create?fromSrc=-&repo={TEST_REPOSITORY}&tag={tag}");
        self.raw.stream("import", &path, tar.finish(), &[("Content-Type", "application/x-tar")]);
        let image = format!("{TEST_REPOSITORY}:{tag}");
        self.images.push(image.clone());
        image
    }

    /// Imports an image, pushes it to `registry` and forgets it locally (every tag), so
    /// that pulling it back has to download its layer.
    fn publish(&mut self, registry: &Registry) -> Published {
        let image = self.import_busybox();
        let (_, tag) = image.split_once(':').expect("repo:tag");
        let remote = format!("{}/{TEST_REPOSITORY}", registry.host());
        let (status, reply) =
            self.raw.call("POST", &format!("/images/{image}/tag?repo={remote}&tag={tag}"), vec![], &[]);
        assert_eq!(status, 201, "tag: {}", String::from_utf8_lossy(&reply));
        self.images.push(format!("{remote}:{tag}"));

        // An empty X-Registry-Auth (`{}`): push refuses requests without the header.
        let pushed = self.raw.stream(
            "push",
            &format!("/images/{remote}/push?tag={tag}"),
            vec![],
            &[("X-Registry-Auth", "e30=")],
        );
        let digest = pushed.iter().find_map(|e| e["aux"]["Digest"].as_str()).map(String::from);
        let digest =
            digest.unwrap_or_else(|| panic!("push reported no digest: {pushed:?}\nregistry log:\n{}", registry.log()));
        let manifest = registry.manifest(&format!("{TEST_REPOSITORY}:{tag}"));
        let layer = manifest["layers"][0]["digest"].as_str().expect("a layer digest in the manifest").to_string();

        let (status, local) = self.raw.json("GET", &format!("/images/{image}/json"));
        assert_eq!(status, 200);
        let image_id = local["Id"].as_str().expect("image Id").to_string();
        let (status, reply) = self.raw.call("DELETE", &format!("/images/{image_id}?force=true"), vec![], &[]);
        assert_eq!(status, 200, "removing {image_id}: {}", String::from_utf8_lossy(&reply));

        let by_digest = format!("{remote}@{digest}");
        self.images.push(by_digest.clone());
        Published { by_digest, layer }
    }

    /// Creates a container from `image` running `cmd`, labelled as the agent labels its own.
    fn create_managed(&mut self, image: &str, cmd: &[&str]) -> (String, String) {
        let name = unique("web");
        let body = json!({
            "Image": image,
            "Cmd": cmd,
            "Labels": labels(&[(LABEL_APP_ID, "1001"), (LABEL_SERVICE_ID, "7"), (LABEL_SERVICE_NAME, "web")]),
        });
        let id = self.engine.create(&name, &body).expect("create");
        self.containers.push(id.clone());
        (name, id)
    }

    fn listed(&self, id: &str) -> Option<pinion_agent::engine::Container> {
        self.engine.managed_containers().expect("managed_containers").into_iter().find(|c| c.id == id)
    }

    fn state(&self, id: &str) -> String {
        self.listed(id).map_or_else(|| "(not listed)".into(), |c| c.state)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = self.raw.call("DELETE", &format!("/containers/{id}?force=true&v=true"), vec![], &[]);
        }
        for image in &self.images {
            let _ = self.raw.call("DELETE", &format!("/images/{image}?force=true"), vec![], &[]);
        }
        for network in &self.networks {
            let _ = self.raw.call("DELETE", &format!("/networks/{network}"), vec![], &[]);
        }
        for volume in &self.volumes {
            let _ = self.raw.call("DELETE", &format!("/volumes/{volume}"), vec![], &[]);
        }
    }
}

/// A POSIX ustar archive written by hand: 512-byte headers, content padded to 512.
#[derive(Default)]
struct Tar {
    bytes: Vec<u8>,
}

impl Tar {
    fn directory(&mut self, name: &str) {
        self.entry(name, b'5', 0o755, "", &[]);
    }

    fn file(&mut self, name: &str, mode: u32, content: &[u8]) {
        self.entry(name, b'0', mode, "", content);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, b'2', 0o777, target, &[]);
    }

    fn entry(&mut self, name: &str, kind: u8, mode: u32, link: &str, content: &[u8]) {
        assert!(name.len() < 100 && link.len() < 100, "tar names are limited to 99 bytes here");
        let mut header = [0u8; 512];
        let mut put = |offset: usize, field: &[u8]| header[offset..offset + field.len()].copy_from_slice(field);
        put(0, name.as_bytes());
        put(100, format!("{mode:07o}\0").as_bytes());
        put(108, b"0000000\0"); // uid
        put(116, b"0000000\0"); // gid
        put(124, format!("{:011o}\0", content.len()).as_bytes());
        put(136, b"00000000000\0"); // mtime
        put(148, b"        "); // checksum: spaces while summing
        put(156, &[kind]);
        put(157, link.as_bytes());
        put(257, b"ustar\0");
        put(263, b"00");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(content);
        self.bytes.resize(self.bytes.len().div_ceil(512) * 512, 0);
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self.bytes
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// The Debian `docker-registry` on a free loopback port, storing into a temp dir;
/// killed and its dir removed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Registry {
    fn start() -> Registry {
        let binary = Path::new("/usr/bin/docker-registry");
        assert!(binary.is_file(), "{} missing: `apt-get install docker-registry`", binary.display());
        let dir = std::env::temp_dir().join(unique("registry"));
        std::fs::create_dir_all(dir.join("data")).expect("creating the registry dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).expect("writing the registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("creating the registry log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning docker-registry");
        let mut registry = Registry { child, port, dir };
        let probe =
            ureq::Agent::config_builder().proxy(None).timeout_global(Some(Duration::from_secs(2))).build().new_agent();
        let url = format!("http://127.0.0.1:{port}/v2/");
        let up = eventually(Duration::from_secs(30), || {
            matches!(registry.child.try_wait(), Ok(None)) && probe.get(&url).call().is_ok()
        });
        assert!(up, "docker-registry did not answer {url}; its log:\n{}", registry.log());
        registry
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The image manifest of `repo:tag`, as the registry serves it.
    fn manifest(&self, reference: &str) -> Value {
        let (repo, tag) = reference.split_once(':').expect("repo:tag");
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.host());
        let mut reply = ureq::Agent::config_builder()
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent()
            .get(&url)
            .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = reply.body_mut().read_to_vec().expect("reading a manifest");
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("manifest from {url}: {e}"))
    }

    /// Deletes a blob from the registry's storage behind its back.
    fn delete_blob(&self, digest: &str) {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let blob = self.dir.join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2]));
        std::fs::remove_dir_all(&blob).unwrap_or_else(|e| panic!("removing {}: {e}", blob.display()));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn connect_negotiates_the_engines_api_version_capped_at_1_43() {
    let engine = engine();
    let (status, version) = RawDocker::new("").json("GET", "/version");
    assert_eq!(status, 200);
    let offered = version["ApiVersion"].as_str().expect("ApiVersion");
    let number = |v: &str| -> (u32, u32) {
        let (major, minor) = v.split_once('.').expect("major.minor");
        (major.parse().unwrap(), minor.parse().unwrap())
    };
    let expected = number(offered).min((1, 43));
    assert_eq!(number(engine.api_version()), expected, "engine offers {offered}");
    assert!(number(engine.api_version()) >= (1, 40));
    assert_eq!(engine.engine_version(), version["Version"].as_str().unwrap());
}

#[test]
fn connect_to_a_socket_nobody_listens_on_is_docker_unreachable_naming_it() {
    let missing = std::env::temp_dir().join(unique("no-docker.sock"));
    match DockerEngine::connect(&missing) {
        Err(Error::DockerUnreachable { socket, .. }) => assert_eq!(socket, missing),
        other => panic!("expected DockerUnreachable, got {other:?}"),
    }
}

#[test]
fn container_lifecycle_create_start_stop_start_remove() {
    let mut fx = Fixture::new();
    let image = fx.import_busybox();
    let (name, id) = fx.create_managed(&image, &["/bin/sleep", "300"]);

    let created = fx.listed(&id).expect("a labelled container is listed");
    assert_eq!(
        (created.name.as_str(), created.state.as_str(), created.image.as_str()),
        (name.as_str(), "created", image.as_str())
    );
    assert_eq!(created.labels.get(LABEL_APP_ID).map(String::as_str), Some("1001"));
    assert_eq!(created.labels.get(LABEL_SERVICE_NAME).map(String::as_str), Some("web"));

    fx.engine.start(&id).expect("start");
    assert_eq!(fx.state(&id), "running");
    fx.engine.start(&id).expect("starting a running container is not an error");

    fx.engine.stop(&id, 1).expect("stop");
    assert_eq!(fx.state(&id), "exited");
    fx.engine.stop(&id, 1).expect("stopping a stopped container is not an error");

    fx.engine.start(&id).expect("start again");
    assert_eq!(fx.state(&id), "running");

    fx.engine.remove(&id).expect("remove a running container");
    assert!(fx.listed(&id).is_none(), "removed container still listed");
    assert!(fx.engine.inspect_container(&id).expect("inspect").is_none());
    fx.engine.remove(&id).expect("removing a removed container is not an error");
    fx.engine.stop(&id, 1).expect("stopping a removed container is not an error");

    match fx.engine.start(&id) {
        Err(Error::Docker { op, status: 404, .. }) => assert_eq!(op, format!("start {id}")),
        other => panic!("start of a removed container: expected a 404 naming it, got {other:?}"),
    }
}

#[test]
fn container_that_exits_at_once_is_listed_exited_with_its_exit_code() {
    let mut fx = Fixture::new();
    let image = fx.import_busybox();
    let (_, id) = fx.create_managed(&image, &["/bin/sh", "-c", "exit 3"]);
    fx.engine.start(&id).expect("start");
    assert!(eventually(Duration::from_secs(30), || fx.state(&id) == "exited"), "state: {}", fx.state(&id));
    let inspected = fx.engine.inspect_container(&id).expect("inspect").expect("container exists");
    assert_eq!(inspected["State"]["ExitCode"], 3);
}

#[test]
fn containers_without_the_app_label_are_not_listed() {
    let mut fx = Fixture::new();
    let image = fx.import_busybox();
    let name = unique("foreign");
    let id = fx.engine.create(&name, &json!({"Image": image, "Cmd": ["/bin/true"]})).expect("create");
    fx.containers.push(id.clone());
    assert!(fx.listed(&id).is_none(), "a container without {LABEL_APP_ID} was listed");
}

#[test]
fn create_with_a_name_in_use_is_a_409_naming_the_container() {
    let mut fx = Fixture::new();
    let image = fx.import_busybox();
    let (name, _) = fx.create_managed(&image, &["/bin/true"]);
    // With a Cmd: Docker checks the body (400 "No command specified") before the name.
    match fx.engine.create(&name, &json!({"Image": image, "Cmd": ["/bin/true"]})) {
        Err(Error::Docker { op, status: 409, message }) => {
            assert_eq!(op, format!("create {name}"));
            assert!(message.contains("already in use"), "{message}");
        }
        other => panic!("expected a 409, got {other:?}"),
    }
}

#[test]
fn ensure_network_twice_makes_one_managed_network_and_remove_network_is_idempotent() {
    let mut fx = Fixture::new();
    let name = unique("net");
    fx.networks.push(name.clone());
    let wanted = labels(&[(LABEL_APP_ID, "1001"), (LABEL_MANAGED, "true")]);
    fx.engine.ensure_network(&name, &wanted).expect("ensure_network");
    fx.engine.ensure_network(&name, &wanted).expect("ensure_network again");

    let filters = format!("%7B%22name%22%3A%5B%22{name}%22%5D%7D");
    let (status, networks) = fx.raw.json("GET", &format!("/networks?filters={filters}"));
    assert_eq!(status, 200);
    let same_name: Vec<&Value> =
        networks.as_array().expect("array").iter().filter(|n| n["Name"] == name.as_str()).collect();
    assert_eq!(same_name.len(), 1, "{networks}");
    assert_eq!(same_name[0]["Labels"][LABEL_MANAGED], "true");
    let managed = fx.engine.managed_networks().expect("managed_networks");
    assert!(managed.contains(&name), "{name} not in {managed:?}");
    assert!(!managed.iter().any(|n| n == "bridge"), "Docker's own bridge listed as managed: {managed:?}");

    fx.engine.remove_network(&name).expect("remove_network");
    assert_eq!(fx.raw.json("GET", &format!("/networks/{name}")).0, 404);
    assert!(!fx.engine.managed_networks().expect("managed_networks").contains(&name));
    fx.engine.remove_network(&name).expect("removing a missing network is not an error");
}

#[test]
fn connect_network_gives_aliases_and_connecting_again_is_ok() {
    let mut fx = Fixture::new();
    let image = fx.import_busybox();
    let network = unique("net");
    fx.networks.push(network.clone());
    fx.engine.ensure_network(&network, &labels(&[(LABEL_MANAGED, "true")])).expect("ensure_network");
    let (_, id) = fx.create_managed(&image, &["/bin/sleep", "300"]);
    fx.engine.start(&id).expect("start");

    let aliases = vec!["web".to_string(), "www".to_string()];
    fx.engine.connect_network(&network, &id, &aliases).expect("connect_network");
    // Docker refuses a second connect of a running container (403); the engine sees it is there.
    fx.engine.connect_network(&network, &id, &aliases).expect("connecting again is not an error");
    let inspected = fx.engine.inspect_container(&id).expect("inspect").expect("container exists");
    let got = &inspected["NetworkSettings"]["Networks"][network.as_str()]["Aliases"];
    for alias in &aliases {
        assert!(got.as_array().is_some_and(|a| a.iter().any(|v| v == alias.as_str())), "{alias} not in {got}");
    }

    let missing = unique("no-such-net");
    match fx.engine.connect_network(&missing, &id, &[]) {
        Err(Error::Docker { op, status: 404, .. }) => assert_eq!(op, format!("connect {id} to network {missing}")),
        other => panic!("connect to a missing network: expected a 404 naming it, got {other:?}"),
    }
}

#[test]
fn ensure_volume_twice_is_ok_and_keeps_its_labels() {
    let mut fx = Fixture::new();
    let name = unique("data");
    fx.volumes.push(name.clone());
    let wanted = labels(&[(LABEL_APP_ID, "1001"), (LABEL_MANAGED, "true")]);
    fx.engine.ensure_volume(&name, &wanted).expect("ensure_volume");
    fx.engine.ensure_volume(&name, &wanted).expect("ensure_volume again");
    let (status, volume) = fx.raw.json("GET", &format!("/volumes/{name}"));
    assert_eq!(status, 200);
    assert_eq!(volume["Labels"][LABEL_MANAGED], "true");
}

#[test]
fn has_image_is_true_for_an_imported_image_and_false_for_an_unknown_one() {
    let mut fx = Fixture::new();
    let image = fx.import_busybox();
    assert!(fx.engine.has_image(&image).expect("has_image"));
    assert!(!fx.engine.has_image(&format!("{image}-never-made")).expect("has_image"));
    assert!(!fx
        .engine
        .has_image("127.0.0.1:1/none@sha256:0000000000000000000000000000000000000000000000000000000000000000")
        .expect("has_image"));
}

#[test]
fn pull_from_a_registry_that_does_not_answer_fails_naming_the_image() {
    let fx = Fixture::new();
    let image = "127.0.0.1:1/none:latest";
    let mut calls = 0;
    match fx.engine.pull(image, None, &mut |_| calls += 1) {
        Err(Error::Docker { op, message, .. }) => {
            assert_eq!(op, format!("pull {image}"));
            assert!(!message.is_empty());
        }
        other => panic!("expected Error::Docker, got {other:?}"),
    }
    assert_eq!(calls, 0);
}

#[test]
fn pull_by_digest_from_a_local_registry_reports_progress_to_100_percent() {
    let mut fx = Fixture::new();
    let registry = Registry::start();
    let published = fx.publish(&registry);
    assert!(!fx.engine.has_image(&published.by_digest).expect("has_image"));

    let mut seen: Vec<PullProgress> = Vec::new();
    fx.engine
        .pull(&published.by_digest, None, &mut |p| seen.push(p))
        .unwrap_or_else(|e| panic!("pull {}: {e}\nregistry log:\n{}", published.by_digest, registry.log()));

    assert!(seen.iter().any(|p| p.total > 0), "no progress with a known size: {seen:?}");
    assert_eq!(seen.last().and_then(PullProgress::percent), Some(100), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].percent() != w[1].percent()), "repeated percentages: {seen:?}");
    assert!(fx.engine.has_image(&published.by_digest).expect("has_image"));
}

/// Docker answers `200` as soon as the manifest is fetched; a layer failing after that
/// arrives as an error line in the stream, and must still fail the pull.
#[test]
fn pull_whose_layer_is_gone_from_the_registry_fails_after_200_naming_the_image() {
    let mut fx = Fixture::new();
    let registry = Registry::start();
    let published = fx.publish(&registry);
    registry.delete_blob(&published.layer);

    match fx.engine.pull(&published.by_digest, None, &mut |_| {}) {
        Err(Error::Docker { op, status, message }) => {
            assert_eq!(op, format!("pull {}", published.by_digest));
            assert_eq!(status, 200, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected Error::Docker, got {other:?}\nregistry log:\n{}", registry.log()),
    }
    assert!(!fx.engine.has_image(&published.by_digest).expect("has_image"));
}
