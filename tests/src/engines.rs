//! The container engines an agent test can run the agent on, as one small trait: the
//! shared dockerd (`docker.rs`) and a private Podman service (`podman.rs`), each seen
//! through its own CLI, as a user of the gateway would look. Their `inspect` JSON agrees
//! on the keys the tests read (`Id`, `Config.Image`, `Config.Labels`, `State`,
//! `RestartCount`, `HostConfig.RestartPolicy`, `NetworkSettings.Networks`, `Mounts`),
//! and so do the commands run here (`exec`, `network inspect`, `volume inspect`,
//! `image inspect`).

use crate::docker::Docker;
use crate::podman::Podman;
use serde_json::Value;
use std::path::Path;

pub trait Engine {
    /// `docker` or `podman`, for messages.
    fn name(&self) -> &'static str;
    /// The Docker API socket the agent is given.
    fn socket(&self) -> &Path;
    /// Runs the engine's CLI with `args`; panics with its output when it fails.
    fn run(&self, args: &[&str]) -> String;
    /// Runs the engine's CLI with `args`, returning whether it succeeded.
    fn try_run(&self, args: &[&str]) -> bool;
    /// Containers carrying `label` (`key` or `key=value`), as `inspect` JSON.
    fn containers_with_label(&self, label: &str) -> Vec<Value>;
}

impl Engine for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn socket(&self) -> &Path {
        Docker::socket(self)
    }

    fn run(&self, args: &[&str]) -> String {
        Docker::run(self, args)
    }

    fn try_run(&self, args: &[&str]) -> bool {
        Docker::try_run(self, args)
    }

    fn containers_with_label(&self, label: &str) -> Vec<Value> {
        Docker::containers_with_label(self, label)
    }
}

impl Engine for Podman {
    fn name(&self) -> &'static str {
        "podman"
    }

    fn socket(&self) -> &Path {
        Podman::socket(self)
    }

    fn run(&self, args: &[&str]) -> String {
        Podman::run(self, args)
    }

    fn try_run(&self, args: &[&str]) -> bool {
        Podman::try_run(self, args)
    }

    fn containers_with_label(&self, label: &str) -> Vec<Value> {
        Podman::containers_with_label(self, label)
    }
}
