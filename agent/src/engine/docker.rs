//! The real `Engine`: the Docker Engine API over Docker's unix socket, spoken with ureq
//! and the connector in `unix.rs`. `connect` negotiates the API version once; every call
//! after it goes to `/v<version>/…`, and Docker's `{"message": …}` errors become
//! `Error::Docker` naming the operation and its object. Podman's Docker-compatible
//! service is spoken to the same way; where it answers differently, `podman.rs` makes
//! its answer read as Docker's, and the spot here says what differs.

use super::log_stream::LogTail;
use super::podman::{self, EngineKind};
use super::unix::{NoResolver, UnixConnector};
use super::{pull, Container, ContainerHealth, Engine, LogLine, PullProgress};
use crate::Error;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use ureq::http::{Request, Response};
use ureq::RequestExt as _;

/// The oldest Engine API the agent speaks (Docker 19.03).
const API_OLDEST: (u32, u32) = (1, 40);
/// The newest Engine API the agent asks for; newer engines answer it too. (Podman 4.3
/// offers 1.41, so it is spoken to in 1.41.)
const API_NEWEST: (u32, u32) = (1, 43);
/// Every call but a pull, including Docker's own work (a stop adds its grace period).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A pull may take as long as it needs, but not sit this long without a byte.
const PULL_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Replies other than a pull's are small; a bigger one is refused rather than held.
const MAX_REPLY_BYTES: u64 = 8 * 1024 * 1024;
/// A log tail is read for an operator after a failure: it must not hold up the agent.
const LOGS_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a log stream read at most (over the local socket). Docker splits entries at
/// 16 KiB, so this is enough for 50 of them; only `MAX_LOG_TAIL_BYTES` are kept.
const MAX_LOG_READ_BYTES: u64 = 1024 * 1024;
/// Bytes of log text kept from one tail, the newest.
const MAX_LOG_TAIL_BYTES: usize = 64 * 1024;

/// A Docker engine reached over its unix socket.
#[derive(Debug)]
pub struct DockerEngine {
    socket: PathBuf,
    http: ureq::Agent,
    /// `1.41`: what every path is prefixed with (`/v1.41/…`).
    api_version: String,
    /// Docker's own version (`20.10.24+dfsg1`), or Podman's (`4.3.1`), for logs.
    engine_version: String,
    /// dockerd or Podman's Docker-compatible service.
    kind: EngineKind,
    /// Podman only: the containers whose last healthchecks run by the agent hung, and
    /// how many in a row (`podman::healthcheck_wait`).
    hung_healthchecks: Mutex<HashMap<String, u32>>,
}

/// What became of a Podman healthcheck the agent ran.
enum HealthcheckRun {
    /// Podman recorded its result in the container's `State.Health`.
    Ran,
    /// No result within the check's timeout (`podman::healthcheck_wait`).
    Hung,
    /// Not due, or it could not be run (logged).
    NotRun,
}

/// How long a request may take.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// The whole exchange, body included.
    Within(Duration),
    /// No overall limit, but no read may wait longer than this.
    IdleFor(Duration),
}

/// A whole (small) reply.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Docker refused `op`: its `{"message"}`, else whatever text it sent. The status is
    /// the one Docker would have answered: Podman answers 500 where Docker says 400 (an
    /// invalid config), and says why in a `cause` (`podman::docker_status`).
    fn refused(&self, op: impl Into<String>) -> Error {
        let status = podman::docker_status(self.status, &self.body);
        Error::Docker { op: op.into(), status, message: docker_message(&self.body) }
    }
}

fn docker_message(body: &[u8]) -> String {
    if let Some(message) =
        serde_json::from_slice::<Value>(body).ok().and_then(|v| v["message"].as_str().map(String::from))
    {
        return message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(500) {
        _ if text.is_empty() => "(no message)".to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Percent-encodes all but RFC 3986 unreserved characters and those in `keep`.
fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A path segment (container id or name, network, volume).
fn segment(text: &str) -> String {
    encode(text, b"")
}

/// An image reference in a path: Docker routes `/images/{name:.*}/…`, so `/:@` stay.
fn image_path(image: &str) -> String {
    encode(image, b"/:@")
}

fn api_version_number(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

impl DockerEngine {
    /// Connects to the engine at `socket` and settles on an API version:
    /// min(engine's, 1.43), refusing engines older than 1.40.
    pub fn connect(socket: &Path) -> Result<DockerEngine, Error> {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            // One request at a time: one idle connection (and its buffers) is enough.
            .max_idle_connections(1)
            .max_idle_connections_per_host(1)
            .input_buffer_size(crate::client::CONNECTION_BUFFER_BYTES)
            .output_buffer_size(crate::client::CONNECTION_BUFFER_BYTES)
            .user_agent(concat!("pinion-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        let http = ureq::Agent::with_parts(config, UnixConnector { path: socket.to_path_buf() }, NoResolver);
        let mut engine = DockerEngine {
            socket: socket.to_path_buf(),
            http,
            api_version: String::new(),
            engine_version: String::new(),
            kind: EngineKind::Docker,
            hung_healthchecks: Mutex::new(HashMap::new()),
        };
        let reply = engine.call("version", "GET", "/version", None)?;
        if reply.status != 200 {
            return Err(reply.refused("version"));
        }
        let version = reply.json();
        let offered = version["ApiVersion"].as_str().unwrap_or_default();
        let Some(number) = api_version_number(offered) else {
            let message = format!("the engine's ApiVersion {offered:?} is not a version number");
            return Err(Error::Docker { op: "version".into(), status: 200, message });
        };
        if number < API_OLDEST {
            let message = format!("Docker engine API {offered} is older than {}.{}", API_OLDEST.0, API_OLDEST.1);
            return Err(Error::Docker { op: "version".into(), status: 200, message });
        }
        let (major, minor) = number.min(API_NEWEST);
        engine.api_version = format!("{major}.{minor}");
        engine.engine_version = version["Version"].as_str().unwrap_or("unknown").to_string();
        engine.kind = EngineKind::of(&version);
        let name = engine.kind.name();
        log::info!("{name} {} at {}, API {}", engine.engine_version, socket.display(), engine.api_version);
        Ok(engine)
    }

    /// Docker's own version, e.g. `20.10.24+dfsg1` (Podman's: `4.3.1`).
    pub fn engine_version(&self) -> &str {
        &self.engine_version
    }

    /// Whether dockerd or Podman answers.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The negotiated Engine API version, e.g. `1.41`.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Docker's full `GET /containers/{id}/json` (exit code, health, …); `None` if gone.
    pub fn inspect_container(&self, id: &str) -> Result<Option<Value>, Error> {
        let op = format!("inspect {id}");
        let reply = self.call(&op, "GET", &format!("/containers/{}/json", segment(id)), None)?;
        match reply.status {
            200 => Ok(Some(reply.json())),
            404 => Ok(None),
            _ => Err(reply.refused(op)),
        }
    }

    fn unreachable(&self, op: &str, reason: impl std::fmt::Display) -> Error {
        Error::DockerUnreachable { socket: self.socket.clone(), reason: format!("{op}: {reason}") }
    }

    /// Sends one request; `path` is unversioned (`/containers/json`) once a version is set.
    fn send(
        &self,
        op: &str,
        method: &str,
        path: &str,
        json: Option<&Value>,
        headers: &[(&str, &str)],
        deadline: Deadline,
    ) -> Result<Response<ureq::Body>, Error> {
        let uri = match self.api_version.as_str() {
            "" => format!("http://docker{path}"),
            version => format!("http://docker/v{version}{path}"),
        };
        let mut request = Request::builder().method(method).uri(&uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match json {
            Some(value) => {
                request = request.header("Content-Type", "application/json");
                serde_json::to_vec(value).map_err(|e| self.unreachable(op, e))?
            }
            None => Vec::new(),
        };
        let request = request.body(body).map_err(|e| self.unreachable(op, format!("cannot build {uri}: {e}")))?;
        let configured = request.with_agent(&self.http).configure();
        let configured = match deadline {
            Deadline::Within(limit) => configured.timeout_global(Some(limit)),
            Deadline::IdleFor(limit) => configured.timeout_global(None).timeout_per_read(Some(limit)),
        };
        configured.run().map_err(|e| self.unreachable(op, e))
    }

    /// A request whose whole reply is read.
    fn call_within(
        &self,
        op: &str,
        method: &str,
        path: &str,
        json: Option<&Value>,
        limit: Duration,
    ) -> Result<Reply, Error> {
        let mut response = self.send(op, method, path, json, &[], Deadline::Within(limit))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_vec()
            .map_err(|e| self.unreachable(op, e))?;
        Ok(Reply { status, body })
    }

    fn call(&self, op: &str, method: &str, path: &str, json: Option<&Value>) -> Result<Reply, Error> {
        self.call_within(op, method, path, json, CALL_TIMEOUT)
    }

    /// Runs a Podman container's healthcheck once (libpod's endpoint, under the same
    /// version prefix, which Podman accepts), waiting at most `wait`. Podman records the
    /// result in the container's `State.Health`, as its own timer would. A failure to
    /// run it is logged, not an error: probation then judges by what Podman said before.
    fn run_podman_healthcheck(&self, id: &str, wait: Duration) -> HealthcheckRun {
        let op = format!("healthcheck {id}");
        let path = format!("/libpod/containers/{}/healthcheck", segment(id));
        let started = Instant::now();
        match self.call_within(&op, "GET", &path, None, wait) {
            Ok(reply) if reply.status == 200 => {
                log::debug!("{op}: {}", reply.json()["Status"].as_str().unwrap_or("?"));
                HealthcheckRun::Ran
            }
            Ok(reply) => {
                log::warn!("{}", reply.refused(op));
                HealthcheckRun::NotRun
            }
            Err(_) if started.elapsed() >= wait => {
                log::warn!("{op}: no result within {wait:?}: counted as a failed check");
                HealthcheckRun::Hung
            }
            Err(e) => {
                log::warn!("{e}");
                HealthcheckRun::NotRun
            }
        }
    }

    /// Podman's health of a container in probation, with a due healthcheck run by the
    /// agent (`podman::healthcheck_due`): Podman runs them from systemd timers only, so
    /// without systemd none runs and the health stays `starting`. A check that hangs is
    /// counted here, as Podman 4.3 records nothing for it (`podman::healthcheck_wait`).
    fn podman_health(&self, id: &str, inspected: Value) -> Result<Option<ContainerHealth>, Error> {
        let run = if podman::healthcheck_due(&inspected, wall_clock_ms()) {
            self.run_podman_healthcheck(id, podman::healthcheck_wait(&inspected))
        } else {
            HealthcheckRun::NotRun
        };
        let inspected = match run {
            HealthcheckRun::Ran => self.inspect_container(id)?,
            HealthcheckRun::Hung | HealthcheckRun::NotRun => Some(inspected),
        };
        let mut hung = self.hung_healthchecks.lock().unwrap_or_else(|p| p.into_inner());
        match (&run, &inspected) {
            (_, None) | (HealthcheckRun::Ran, _) => drop(hung.remove(id)),
            (HealthcheckRun::Hung, Some(container)) if podman::hung_check_counts(container, wall_clock_ms()) => {
                *hung.entry(id.to_string()).or_default() += 1
            }
            (HealthcheckRun::Hung | HealthcheckRun::NotRun, _) => {}
        }
        let Some(container) = inspected else { return Ok(None) };
        let mut health = health_from_inspect(&container);
        if podman::unhealthy_after_hung_checks(&container, hung.get(id).copied().unwrap_or(0)) {
            health.health = Some("unhealthy".into());
        }
        Ok(Some(health))
    }

    /// The id of the network named exactly `name` (Docker also matches id prefixes).
    fn find_network(&self, op: &str, name: &str) -> Result<Option<String>, Error> {
        let reply = self.call(op, "GET", &format!("/networks/{}", segment(name)), None)?;
        match reply.status {
            200 => {
                let found = reply.json();
                let exact = found["Name"].as_str() == Some(name);
                Ok(exact.then(|| found["Id"].as_str().unwrap_or(name).to_string()))
            }
            404 => Ok(None),
            _ => Err(reply.refused(op)),
        }
    }
}

/// Now on the wall clock, in ms since the epoch: compared with Podman's own timestamps
/// of the same host (a step of the clock only moves when the next healthcheck runs).
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One entry of `GET /containers/json`, read straight into the fields the agent uses:
/// the rest of each entry (ports, mounts, networks, host config) is skipped unread. This
/// listing is most of an idle cycle's work, and a `Value` tree of it was most of that
/// work's allocations. `null` reads as absent in each field.
#[derive(serde::Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: Option<String>,
    #[serde(rename = "Names")]
    names: Option<Vec<String>>,
    #[serde(rename = "Image")]
    image: Option<String>,
    #[serde(rename = "State")]
    state: Option<String>,
    #[serde(rename = "Status")]
    status: Option<String>,
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

/// A listed container, or `None` for an entry without an id.
fn container_from_listing(item: Listed) -> Option<Container> {
    let id = item.id?;
    let names = item.names.unwrap_or_default();
    // Legacy links add `/other/alias` names; the container's own has one slash.
    let name = names.iter().find(|n| n.rfind('/').is_none_or(|i| i == 0)).or(names.first()).map_or("", |n| n.as_str());
    Some(Container {
        id,
        name: name.trim_start_matches('/').to_string(),
        image: item.image.unwrap_or_default(),
        state: podman::docker_state(item.state.as_deref().unwrap_or_default()).to_string(),
        status: item.status.unwrap_or_default(),
        labels: item.labels.unwrap_or_default(),
    })
}

/// The probation-relevant part of `GET /containers/{id}/json`.
fn health_from_inspect(c: &Value) -> ContainerHealth {
    let state = &c["State"];
    ContainerHealth {
        state: podman::docker_state(state["Status"].as_str().unwrap_or_default()).to_string(),
        exit_code: state["ExitCode"].as_i64().unwrap_or(0),
        restart_count: c["RestartCount"].as_u64().map_or(0, |n| n.min(u32::MAX.into()) as u32),
        health: state["Health"]["Status"].as_str().filter(|s| !s.is_empty()).map(String::from),
    }
}

impl Engine for DockerEngine {
    fn managed_containers(&self) -> Result<Vec<Container>, Error> {
        let op = "list containers";
        let filters = json!({ "label": [super::LABEL_APP_ID] }).to_string();
        let reply =
            self.call(op, "GET", &format!("/containers/json?all=true&filters={}", encode(&filters, b"")), None)?;
        if reply.status != 200 {
            return Err(reply.refused(op));
        }
        match serde_json::from_slice::<Vec<Listed>>(&reply.body) {
            Ok(items) => Ok(items.into_iter().filter_map(container_from_listing).collect()),
            Err(e) => Err(Error::Docker {
                op: op.into(),
                status: 200,
                message: format!("expected a JSON array of containers: {e}"),
            }),
        }
    }

    fn has_image(&self, image: &str) -> Result<bool, Error> {
        let op = format!("inspect image {image}");
        let reply = self.call(&op, "GET", &format!("/images/{}/json", image_path(image)), None)?;
        match reply.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(reply.refused(op)),
        }
    }

    fn remove_image(&self, image: &str) -> Result<(), Error> {
        let op = format!("remove image {image}");
        let reply = self.call(&op, "DELETE", &format!("/images/{}", image_path(image)), None)?;
        match reply.status {
            200 | 404 => Ok(()),
            _ => Err(reply.refused(op)),
        }
    }

    fn free_bytes(&self) -> Result<Option<u64>, Error> {
        let op = "info";
        let reply = self.call(op, "GET", "/info", None)?;
        if reply.status != 200 {
            return Err(reply.refused(op));
        }
        let info = reply.json();
        // Podman's compat `/info` names its GraphRoot (`podman info`'s `store.graphRoot`)
        // `DockerRootDir` too: where its images are, as dockerd's data root is.
        let Some(root) = info["DockerRootDir"].as_str() else { return Ok(None) };
        Ok(crate::disk::free_bytes(Path::new(root)).ok())
    }

    fn pull(&self, image: &str, auth: Option<&str>, progress: &mut dyn FnMut(PullProgress)) -> Result<(), Error> {
        let op = format!("pull {image}");
        let (repository, reference) = pull::split_reference(image);
        let path = format!("/images/create?fromImage={}&tag={}", encode(repository, b""), encode(reference, b""));
        let headers: &[(&str, &str)] = match auth {
            Some(auth) => &[("X-Registry-Auth", auth)],
            None => &[],
        };
        let response = self.send(&op, "POST", &path, None, headers, Deadline::IdleFor(PULL_IDLE_TIMEOUT))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if status != 200 {
            let body = body.with_config().limit(MAX_REPLY_BYTES).read_to_vec().map_err(|e| self.unreachable(&op, e))?;
            return Err(Reply { status, body }.refused(op));
        }
        match pull::follow(BufReader::new(body.as_reader()), progress) {
            Ok(()) => Ok(()),
            Err(pull::StreamError::Read(e)) => Err(self.unreachable(&op, format!("reading the progress stream: {e}"))),
            Err(pull::StreamError::Docker(message)) => Err(Error::Docker { op, status, message }),
        }
    }

    fn create(&self, name: &str, body: &Value) -> Result<String, Error> {
        let op = format!("create {name}");
        let reply = self.call(&op, "POST", &format!("/containers/create?name={}", segment(name)), Some(body))?;
        if reply.status != 201 {
            return Err(reply.refused(op));
        }
        match reply.json()["Id"].as_str() {
            Some(id) if !id.is_empty() => Ok(id.to_string()),
            _ => Err(Error::Docker { op, status: 201, message: "the reply carries no container Id".into() }),
        }
    }

    fn start(&self, id: &str) -> Result<(), Error> {
        let op = format!("start {id}");
        let reply = self.call(&op, "POST", &format!("/containers/{}/start", segment(id)), None)?;
        match reply.status {
            204 | 304 => Ok(()),
            _ => Err(reply.refused(op)),
        }
    }

    fn inspect(&self, id: &str) -> Result<Option<ContainerHealth>, Error> {
        let inspected = self.inspect_container(id)?;
        // Podman runs healthchecks from systemd timers only: without systemd, none runs
        // and the health stays `starting`. The agent runs a due one itself (only while
        // it watches a deployment in probation, which is when it inspects).
        match inspected {
            Some(container) if self.kind == EngineKind::Podman => self.podman_health(id, container),
            _ => Ok(inspected.as_ref().map(health_from_inspect)),
        }
    }

    fn stop(&self, id: &str, timeout_secs: u32) -> Result<(), Error> {
        let op = format!("stop {id}");
        let path = format!("/containers/{}/stop?t={timeout_secs}", segment(id));
        let limit = CALL_TIMEOUT + Duration::from_secs(timeout_secs.into());
        let reply = self.call_within(&op, "POST", &path, None, limit)?;
        match reply.status {
            204 | 304 | 404 => Ok(()),
            _ => Err(reply.refused(op)),
        }
    }

    fn remove(&self, id: &str) -> Result<(), Error> {
        let op = format!("remove {id}");
        // v=false: a container's volumes hold the device's data; they are never removed here.
        let reply = self.call(&op, "DELETE", &format!("/containers/{}?force=true&v=false", segment(id)), None)?;
        match reply.status {
            204 | 404 => Ok(()),
            _ => Err(reply.refused(op)),
        }
    }

    fn ensure_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), Error> {
        let op = format!("create network {name}");
        if self.find_network(&op, name)?.is_some() {
            return Ok(());
        }
        let body = json!({ "Name": name, "CheckDuplicate": true, "Labels": labels });
        let reply = self.call(&op, "POST", "/networks/create", Some(&body))?;
        match reply.status {
            // 409: created by someone else since we looked.
            200 | 201 | 409 => Ok(()),
            // Podman answers that with a 500 ("network already exists"): look again.
            _ if self.find_network(&op, name)?.is_some() => Ok(()),
            _ => Err(reply.refused(op)),
        }
    }

    fn ensure_volume(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), Error> {
        let op = format!("create volume {name}");
        let reply = self.call(&op, "GET", &format!("/volumes/{}", segment(name)), None)?;
        match reply.status {
            200 => return Ok(()),
            404 => {}
            _ => return Err(reply.refused(op)),
        }
        let body = json!({ "Name": name, "Labels": labels });
        let reply = self.call(&op, "POST", "/volumes/create", Some(&body))?;
        match reply.status {
            200 | 201 => Ok(()),
            _ => Err(reply.refused(op)),
        }
    }

    fn remove_network(&self, name: &str) -> Result<(), Error> {
        let op = format!("remove network {name}");
        let Some(id) = self.find_network(&op, name)? else {
            return Ok(());
        };
        let reply = self.call(&op, "DELETE", &format!("/networks/{}", segment(&id)), None)?;
        match reply.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(reply.refused(op)),
        }
    }

    fn managed_networks(&self) -> Result<Vec<String>, Error> {
        let op = "list networks";
        let filters = json!({ "label": [super::LABEL_MANAGED] }).to_string();
        let reply = self.call(op, "GET", &format!("/networks?filters={}", encode(&filters, b"")), None)?;
        if reply.status != 200 {
            return Err(reply.refused(op));
        }
        match reply.json() {
            Value::Array(items) => Ok(items.iter().filter_map(|n| Some(n["Name"].as_str()?.to_string())).collect()),
            other => Err(Error::Docker {
                op: op.into(),
                status: 200,
                message: format!("expected a JSON array, got {other:.100}"),
            }),
        }
    }

    fn connect_network(&self, network: &str, container: &str, aliases: &[String]) -> Result<(), Error> {
        let op = format!("connect {container} to network {network}");
        let body = json!({ "Container": container, "EndpointConfig": { "Aliases": aliases } });
        let reply = self.call(&op, "POST", &format!("/networks/{}/connect", segment(network)), Some(&body))?;
        if reply.status == 200 {
            return Ok(());
        }
        // A running container already there is a 403 ("endpoint with name … already
        // exists"; Podman: a 500, "network is already connected"); what counts is
        // whether it is connected, not how the engine words it.
        let connected =
            self.inspect_container(container)?.is_some_and(|c| !c["NetworkSettings"]["Networks"][network].is_null());
        if connected {
            Ok(())
        } else {
            Err(reply.refused(op))
        }
    }

    fn log_tail(&self, container: &str, lines: u32) -> Result<Vec<LogLine>, Error> {
        let op = format!("logs {container}");
        let path = format!("/containers/{}/logs?stdout=1&stderr=1&timestamps=1&tail={lines}", segment(container));
        let response = self.send(&op, "GET", &path, None, &[], Deadline::Within(LOGS_TIMEOUT))?;
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(String::from);
        let mut body = response.into_body();
        match status {
            200 => {}
            404 => return Ok(Vec::new()),
            // e.g. 501: a logging driver that cannot be read back (`none`, `syslog`).
            _ => {
                let body = body.with_config().limit(MAX_REPLY_BYTES).read_to_vec().unwrap_or_default();
                return Err(Reply { status, body }.refused(op));
            }
        }
        let mut tail = LogTail::new(content_type.as_deref(), lines as usize, MAX_LOG_TAIL_BYTES);
        let mut reader = body.as_reader().take(MAX_LOG_READ_BYTES);
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => tail.push(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.unreachable(&op, format!("reading the log stream: {e}"))),
            }
        }
        Ok(tail.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_message_prefers_json_message_and_bounds_text() {
        assert_eq!(docker_message(br#"{"message":"No such container: x"}"#), "No such container: x");
        assert_eq!(docker_message(b"  page not found\n"), "page not found");
        assert_eq!(docker_message(b""), "(no message)");
        assert_eq!(docker_message("é".repeat(600).as_bytes()).chars().count(), 501);
    }

    #[test]
    fn api_version_numbers_compare_numerically() {
        assert_eq!(api_version_number("1.41"), Some((1, 41)));
        assert!(api_version_number("1.9").unwrap() < API_OLDEST);
        assert!(api_version_number("1.100").unwrap() > API_NEWEST);
        assert_eq!(api_version_number("v1"), None);
    }

    #[test]
    fn listing_without_names_or_labels_does_not_fail() {
        let listed = |text: &str| serde_json::from_str::<Listed>(text).map(container_from_listing);
        let c =
            listed(r#"{"Id": "abc", "Names": ["/x/link", "/web_1"], "Labels": null, "State": null}"#).unwrap().unwrap();
        assert_eq!((c.name.as_str(), c.labels.len(), c.state.as_str()), ("web_1", 0, ""));
        assert!(listed(r#"{"Names": ["/web"]}"#).unwrap().is_none());
        assert!(listed(r#""garbage""#).is_err(), "not an entry: the listing is refused, not read as empty");
        let c = listed(
            r#"{"Id": "d", "Names": ["/web"], "Image": "app@sha256:00", "State": "stopped", "Status": "Exited (0)",
                "Labels": {"io.pinion.app-id": "1"}, "Ports": [{"PrivatePort": 80}], "Mounts": [],
                "NetworkSettings": {"Networks": {"bridge": {}}}, "HostConfig": {"NetworkMode": "default"}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!((c.image.as_str(), c.state.as_str(), c.status.as_str()), ("app@sha256:00", "exited", "Exited (0)"));
        assert_eq!(c.labels.get("io.pinion.app-id").map(String::as_str), Some("1"));
    }

    #[test]
    fn health_comes_from_state_and_restart_count() {
        let inspected = json!({"RestartCount": 3, "State": {"Status": "restarting", "ExitCode": 1,
                               "Health": {"Status": "unhealthy", "FailingStreak": 3}}});
        let health = health_from_inspect(&inspected);
        assert_eq!((health.state.as_str(), health.exit_code, health.restart_count), ("restarting", 1, 3));
        assert_eq!(health.health.as_deref(), Some("unhealthy"));
        assert_eq!(health_from_inspect(&json!({"State": {"Status": "running"}})).health, None);
    }

    #[test]
    fn encode_keeps_image_reference_separators_only_where_asked() {
        assert_eq!(image_path("127.0.0.1:5000/a/b@sha256:00"), "127.0.0.1:5000/a/b@sha256:00");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
