//! pinion-agent: runs on each gateway, polls its target state from the server and
//! reconciles Docker to it. The data path: `client` (poll, ETag) → `store` (SQLite) →
//! `spec` → `host_limits` (what this gateway refuses) → `probation` (rollbacks in
//! force) → `plan` (pure) → `apply` (through `engine`) → `report` → `client`.
//! A deployment that fails leaves its container's last lines for the operator
//! (`failure_logs` → `client`).

pub mod apply;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod disk;
pub mod engine;
mod error;
pub mod failure_logs;
pub mod host_limits;
pub mod identity;
pub mod image_gc;
pub mod memory;
pub mod ownership;
pub mod plan;
pub mod probation;
pub mod registry_auth;
pub mod report;
mod resolver;
pub mod run;
pub mod spec;
pub mod store;
pub mod target_services;
pub mod tls;

pub use error::Error;
