//! Where the server keeps devices, their target-state versions, their reports and the
//! provisioning keys. A small trait, so that the SQLite store of a one-machine server
//! and the PostgreSQL one of several replicas (`SqlStore` both) answer the API the same way.

mod credentials;
mod devices;
mod fleets;
mod images;
mod migrations;
mod policy;
#[cfg(feature = "postgres")]
mod postgres;
mod presence;
mod rate_events;
mod sessions;
mod settings;
pub(crate) mod sql;
mod sql_store;
mod sqlite_engine;
mod status;
mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
pub mod transfer;

pub use credentials::{CredentialEntry, CredentialStore, RegistryCredential};
pub use fleets::{
    Event, EventFilter, Fleet, FleetStore, FleetUpdate, Membership, Release, RolloutDeviceRow, StoredRollout,
    EVENTS_KEPT,
};
pub use images::{ImageStore, TrackedImage};
pub use policy::{PendingUpdate, PolicyStore};
#[cfg(feature = "postgres")]
pub use postgres::PostgresOptions;
pub use presence::PresenceStore;
pub use rate_events::{RateEventStore, RateEvents};
pub use sessions::SessionStore;
pub use settings::SettingsStore;
pub use sql_store::{is_conninfo, is_postgres_url, redacted_url, url_scheme};
pub use sql_store::{SqlStore, DEFAULT_HISTORY_LIMIT, MIN_HISTORY_LIMIT};
pub use status::{DeviceHead, DeviceStatusRow, StatusStore};
pub use telemetry::{CurrentReport, LogPage, MetricsSample, NewReport, TelemetryStore};

use crate::Error;

/// One device as the operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub uuid: String,
    pub device_name: Option<String>,
    pub device_type: Option<String>,
    /// Whether an agent has registered (a device key exists).
    pub registered: bool,
    pub created_at: String,
    pub registered_at: Option<String>,
    /// 0 until a target state is set.
    pub target_version: u64,
    pub last_report_at: Option<String>,
    /// A number of its own, never reused: the `id` the platform's original agent reads
    /// from its registration answer. 0 only for rows made by hand.
    pub id: u64,
    /// Whether its agent has used its key since registering (a poll or a key exchange):
    /// until then the same uuid may register again with another key.
    pub registration_complete: bool,
    pub fleet: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The device a key belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyOwner {
    pub uuid: String,
    pub registration_complete: bool,
}

/// One stored version of a device's target state.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTarget {
    pub version: u64,
    /// The pinned `TargetState` as JSON.
    pub state: String,
    pub created_at: String,
    /// Who wrote it: `operator`, `refresh`, `webhook`, `window`, `rollback`.
    pub source: String,
}

/// A target-state version about to be stored.
#[derive(Debug, Clone)]
pub struct NewTarget<'a> {
    /// The pinned `TargetState` as JSON.
    pub state: &'a str,
    pub poll: &'a PollAnswer,
    /// The floating references the state follows (canonical, `docker.io/library/nginx:latest`).
    pub references: &'a [String],
    /// The registry hosts its services pull from (normalized, pinned images too): whose
    /// stored credentials the device's poll carries (`device_auth`).
    pub registries: &'a [String],
    pub source: &'a str,
    /// Store only if the device is still at this version (`Error::Conflict` otherwise):
    /// background writers read, change and write without losing an operator's write.
    pub expected_version: Option<u64>,
    /// Drop the device's pending updates in the same transaction (`targets::supersedes_pending`).
    pub supersedes_pending: bool,
    /// The fleet release it was made from (`fleets`). `None` for the device's own target:
    /// an operator's write (`supersedes_pending`) then pins the device, overriding its fleet.
    pub release: Option<u64>,
}

/// What a device poll answers: the body serialized once, when the target was written,
/// and its strong ETag, so a poll never parses or serializes the state.
#[derive(Debug, Clone, PartialEq)]
pub struct PollAnswer {
    pub etag: String,
    pub body: String,
}

/// A registration accepted by the API, ready to store.
#[derive(Debug, Clone)]
pub struct NewRegistration {
    pub uuid: String,
    pub device_name: Option<String>,
    pub device_type: Option<String>,
    pub key_hash: String,
    /// Who registers: what may be claimed is `claims::decide_claim`'s decision.
    pub claimant: crate::claims::Claimant,
    /// System facts the registration carried (`os_version`, `agent_version`,
    /// `mac_address`, `application_id`) as a JSON object, merged into the last known ones.
    pub system_info: Option<String>,
}

/// For how long, and to which provisioning key, a key reset reopens a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reopen {
    /// RFC 3339, UTC.
    pub until: String,
    /// `None`: the key that registered the device.
    pub key_id: Option<String>,
}

/// A provisioning key without its secret (only the hash is ever stored).
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisioningKey {
    pub id: String,
    pub description: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    pub devices_registered: u64,
    /// The one device it may register (a registration token); `None`: any new device.
    pub device: Option<String>,
    /// Revoked by the registration it makes.
    pub single_use: bool,
    /// After this (RFC 3339, UTC) it registers nothing.
    pub expires_at: Option<String>,
    /// The fleet every device it registers joins.
    pub fleet: Option<String>,
}

pub trait Store:
    ImageStore
    + PolicyStore
    + CredentialStore
    + TelemetryStore
    + FleetStore
    + StatusStore
    + SettingsStore
    + PresenceStore
    + SessionStore
    + RateEventStore
    + Send
    + Sync
{
    fn device(&self, uuid: &str) -> Result<Option<DeviceRecord>, Error>;
    fn devices(&self) -> Result<Vec<DeviceRecord>, Error>;
    /// The stored hash of a device's key, `None` if it has none (or does not exist).
    fn device_key_hash(&self, uuid: &str) -> Result<Option<String>, Error>;
    /// The device whose key hashes to `key_hash`, if any.
    fn device_by_key_hash(&self, key_hash: &str) -> Result<Option<KeyOwner>, Error>;
    /// Registers a device as `claims::decide_claim` decides on the stored row, in one
    /// transaction: creating it, setting the key of one that has none or whose
    /// registration is incomplete, or changing nothing for the same key again. A
    /// single-use provisioning key is revoked by the registration it makes.
    fn register_device(&self, registration: &NewRegistration) -> Result<DeviceRecord, Error>;
    /// Deletes a device with everything kept of it (key, target versions, reports,
    /// logs, metrics, policy) and the registration tokens bound to it; `false` if there
    /// was no such device.
    fn delete_device(&self, uuid: &str) -> Result<bool, Error>;
    /// Forgets a device's key: it stops working at once, and its next registration sets a
    /// new one, with a registration token, or within `reopen` with the provisioning key
    /// it names (the one that registered the device when it names none). `false` if
    /// there is no such device or it never registered.
    fn reset_device_key(&self, uuid: &str, reopen: Option<&Reopen>) -> Result<bool, Error>;
    /// Marks a registration complete: its agent has used the key it registered, whose
    /// hash is `key_hash`. `false` when that is no longer the device's key (a
    /// registration replaced it meanwhile): nothing changes.
    fn complete_registration(&self, uuid: &str, key_hash: &str) -> Result<bool, Error>;

    /// Stores a new target-state version (creating the device if needed) with the poll
    /// answer derived from it; returns the new version number. Versions beyond the
    /// store's history limit (`SqlStore::with_history_limit`) are deleted, oldest first.
    fn set_target(&self, uuid: &str, target: &NewTarget<'_>) -> Result<u64, Error>;
    /// `set_target` for many devices in one transaction (a wave of a rollout); each
    /// device's new version, in order.
    fn set_targets(&self, targets: &[(&str, NewTarget<'_>)]) -> Result<Vec<u64>, Error>;
    /// The current version.
    fn target(&self, uuid: &str) -> Result<Option<StoredTarget>, Error>;
    fn target_version(&self, uuid: &str, version: u64) -> Result<Option<StoredTarget>, Error>;
    /// Kept versions older than `before` (all when `None`), newest first, `limit` at most.
    fn target_history(&self, uuid: &str, before: Option<u64>, limit: usize) -> Result<Vec<StoredTarget>, Error>;
    /// Devices whose current target follows `reference` (canonical).
    fn devices_using(&self, reference: &str) -> Result<Vec<String>, Error>;
    fn poll(&self, uuid: &str) -> Result<Option<PollAnswer>, Error>;

    fn create_provisioning_key(&self, key: &ProvisioningKey, key_hash: &str) -> Result<(), Error>;
    /// A key that is neither revoked nor expired, by the hash of its secret.
    fn provisioning_key_by_hash(&self, key_hash: &str) -> Result<Option<ProvisioningKey>, Error>;
    fn provisioning_keys(&self) -> Result<Vec<ProvisioningKey>, Error>;
    /// Revokes a key; `false` if there is no such key.
    fn revoke_provisioning_key(&self, id: &str) -> Result<bool, Error>;

    /// A number that moves whenever a device's key or poll answer (target, registry
    /// credentials) may have changed, through any writer: the API keeps unchanged polls
    /// in memory while it stands still (`api/poll_cache.rs`). `None`: this store cannot
    /// tell (several replicas writing one database), and every poll asks the store.
    fn poll_generation(&self) -> Option<u64>;

    /// Whether this process runs the periodic work (tag refresh, pending updates,
    /// rollout steps) now: always for a SQLite store; on PostgreSQL, the one replica
    /// holding the database's lease on it, which passes to another when it dies.
    fn lead(&self) -> Result<bool, Error>;

    /// Waits until no other replica makes a rollout decision and holds that until the
    /// guard drops (a decision reads and writes through several calls). `None` for a
    /// SQLite store, whose one process serializes its decisions in memory.
    fn lock_rollouts(&self) -> Result<Option<Box<dyn Send + '_>>, Error>;
}
