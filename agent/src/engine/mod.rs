//! What the agent needs from a container engine, as a small trait: the real one speaks
//! the Docker Engine API over the unix socket (`docker.rs`), to dockerd or to Podman's
//! Docker-compatible service (`podman.rs`: where that answers differently); tests
//! record calls instead.

mod docker;
mod log_stream;
mod podman;
mod pull;
mod unix;

pub use docker::DockerEngine;
pub use log_stream::LogLine;
pub use podman::EngineKind;

use crate::Error;
use serde_json::Value;
use std::collections::BTreeMap;

/// Labels on every container the agent manages; containers without them are never touched.
pub const LABEL_APP_ID: &str = "io.pinion.app-id";
pub const LABEL_SERVICE_ID: &str = "io.pinion.service-id";
pub const LABEL_SERVICE_NAME: &str = "io.pinion.service-name";
pub const LABEL_CONFIG_HASH: &str = "io.pinion.config-hash";
/// Networks and volumes the agent creates carry the app they belong to.
pub const LABEL_MANAGED: &str = "io.pinion.managed";

/// A container as listed by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// The image as the container was created with (`app@sha256:…`).
    pub image: String,
    /// Docker's state: `created`, `running`, `paused`, `restarting`, `removing`, `exited`, `dead`.
    pub state: String,
    /// Docker's human status (`Up 3 minutes`, `Exited (1) 2 seconds ago`).
    pub status: String,
    pub labels: BTreeMap<String, String>,
}

/// What `inspect` tells of a container's health, for probation (`probation.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerHealth {
    /// Docker's `State.Status`: `created`, `running`, `restarting`, `exited`, `dead`, …
    pub state: String,
    /// `State.ExitCode` of the last run (0 while it first runs).
    pub exit_code: i64,
    /// How often Docker's restart policy restarted it (`RestartCount`).
    pub restart_count: u32,
    /// `State.Health.Status` (`starting`, `healthy`, `unhealthy`) when it has a healthcheck.
    pub health: Option<String>,
}

/// Progress of one pull, summed over its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullProgress {
    pub downloaded: u64,
    pub total: u64,
}

impl PullProgress {
    /// 0–100, or `None` while no layer size is known.
    pub fn percent(&self) -> Option<u8> {
        (self.total > 0).then(|| (self.downloaded.min(self.total) * 100 / self.total) as u8)
    }
}

/// A container engine. All methods block; every failure names what failed.
pub trait Engine {
    /// Containers carrying `io.pinion.app-id`, in any state.
    fn managed_containers(&self) -> Result<Vec<Container>, Error>;
    /// Whether the image (by reference or id) is present locally.
    fn has_image(&self, image: &str) -> Result<bool, Error>;
    /// Pulls an image, reporting progress as it streams; `auth` is the base64url JSON of
    /// Docker's `X-Registry-Auth` header, if the registry needs credentials.
    fn pull(&self, image: &str, auth: Option<&str>, progress: &mut dyn FnMut(PullProgress)) -> Result<(), Error>;
    /// Removes an image (by the reference it was pulled as). One that is gone is not an
    /// error; one a container uses is (Docker's 409), and stays.
    fn remove_image(&self, image: &str) -> Result<(), Error>;
    /// Bytes free on the filesystem where the engine keeps images; `None` when that
    /// cannot be told (the engine on another host, its data root unreadable here).
    fn free_bytes(&self) -> Result<Option<u64>, Error>;
    /// Creates a container from a Docker `ContainerCreate` body; returns its id.
    fn create(&self, name: &str, body: &Value) -> Result<String, Error>;
    fn start(&self, id: &str) -> Result<(), Error>;
    /// State, exit code, restart count and health of a container; `None` if it is gone.
    fn inspect(&self, id: &str) -> Result<Option<ContainerHealth>, Error>;
    /// Stops with a grace period before SIGKILL. Stopping a stopped container is not an error.
    fn stop(&self, id: &str, timeout_secs: u32) -> Result<(), Error>;
    /// Removes (forcefully). Removing a container that is gone is not an error.
    fn remove(&self, id: &str) -> Result<(), Error>;
    /// Creates the network if no network of that name exists.
    fn ensure_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), Error>;
    /// Creates the named volume if it does not exist.
    fn ensure_volume(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), Error>;
    /// Removes a network; a missing network is not an error.
    fn remove_network(&self, name: &str) -> Result<(), Error>;
    /// Names of the networks carrying `io.pinion.managed` (`GET /networks` with a label filter).
    fn managed_networks(&self) -> Result<Vec<String>, Error>;
    /// Connects a container to one more network, reachable there by `aliases`
    /// (`POST /networks/{network}/connect`). Already connected is not an error.
    fn connect_network(&self, network: &str, container: &str, aliases: &[String]) -> Result<(), Error>;
    /// The last `lines` lines the container (id or name) wrote to stdout and stderr,
    /// oldest first, with Docker's timestamps; bounded in bytes (`log_stream.rs`). A
    /// container that is gone has none.
    fn log_tail(&self, container: &str, lines: u32) -> Result<Vec<LogLine>, Error>;
}
