//! pinion-server: pins floating image tags to registry digests and serves each device
//! its target state. The data path: operator → `api` → `registry` (resolver) →
//! `store` → device poll (ETag) → device report → `store`.

pub mod admin_token;
pub mod api;
pub mod claims;
pub mod cli;
pub mod compose;
pub mod device_logs;
pub mod device_status;
pub mod digest_cache;
mod error;
pub mod fleets;
pub mod http_server;
pub mod keys;
mod listener;
pub mod metrics;
pub mod pinning;
pub mod policy;
pub mod presence;
pub mod refresh;
pub mod refresh_queue;
pub mod registry;
pub mod registry_auth;
pub mod registry_events;
pub mod replica_sync;
pub mod replicas;
pub mod rollout;
pub mod rollout_driver;
pub mod secret_file;
pub mod secrets;
pub mod sessions;
pub mod store;
pub mod targets;
pub mod telemetry;
pub mod text;
pub mod timefmt;
pub mod tls;
pub mod verdicts;

pub use error::Error;
