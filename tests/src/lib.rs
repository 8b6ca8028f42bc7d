//! pinion-tests: the end-to-end test harness. Real parts wherever a user has them — the
//! Debian `docker-registry` as a child process (anonymous, htpasswd or token auth),
//! images pushed over the registry HTTP API, `pinion-server` and `pinion-agent` run as
//! processes, a real dockerd driven with the docker CLI (and a private Podman service
//! with the podman CLI: `podman`, the agent's `story` on both), a headless Chromium through
//! chromedriver for the dashboard (`browser`) — and hand-written fakes (`FakeRegistry`)
//! only for faults a real registry cannot produce.
//! Everything listens on 127.0.0.1 with its own port and temp dir, so tests run in
//! parallel, and everything started is stopped on drop.

pub mod agent;
pub mod browser;
pub mod client;
pub mod docker;
pub mod dockerd;
pub mod engines;
pub mod fake;
pub mod fleet_api;
pub mod image;
pub mod nginx;
pub mod podman;
pub mod postgres;
pub mod raw_http;
pub mod registry;
pub mod replicas;
pub mod server;
pub mod simulated;
pub mod story;
pub mod tls;
pub mod token;
pub mod util;

pub use agent::Agent;
pub use client::{HttpReply, RegistryClient, ACCEPT_ALL_MANIFESTS};
pub use docker::Docker;
pub use fake::{FakeRegistry, GIANT_HEADER_BYTES, RETRY_AFTER_SECS};
pub use image::{
    push_image, push_image_as, push_manifest_list, push_oci_index, ImageSpec, ManifestFormat, Pushed, PushedList,
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};
pub use registry::{Auth, Options as RegistryOptions, Registry};
pub use server::{run_cli, run_cli_with_env, run_cli_within, server_binary, ApiReply, CliOutput, Server};
pub use token::TokenServer;
pub use util::{docker_config_json, sha256_digest, TempDir};
