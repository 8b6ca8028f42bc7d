//! From a target state's services to what Docker needs: for each service its key, its
//! container name, the `ContainerCreate` body (with pinion's labels and a hash of the
//! service config, so a change is seen as a string difference) and the networks and
//! volumes it uses. Keys the agent does not support are reported, never dropped silently.
//!
//! The mapping of each config key lives in `spec/config.rs`; the small grammars it needs
//! (ports, volumes and devices, shell-like words) have a file each.

mod config;
mod mounts;
mod ports;
mod words;

use crate::engine::{LABEL_APP_ID, LABEL_CONFIG_HASH, LABEL_MANAGED, LABEL_SERVICE_ID, LABEL_SERVICE_NAME};
use crate::plan::Strategy;
use crate::Error;
use pinion_model::state::{App, Service};
use pinion_model::TargetState;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A service's identity on this device: the app it belongs to and its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub app_id: String,
    pub service_name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app_id, self.service_name)
    }
}

/// One service of the target, ready to plan with. The store keeps it as JSON for each
/// deployment, so that a rollback can create the earlier container again as it was
/// (`default`: a field added later reads as its default from an older row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DesiredService {
    /// Not stored: the store's row says whose deployment it is.
    #[serde(skip)]
    pub key: ServiceKey,
    pub service_id: Option<String>,
    /// The pinned image (`app@sha256:…`), or the tag for a fallback.
    pub image: String,
    pub container_name: String,
    /// Docker `ContainerCreate` body, labels included.
    pub create_body: serde_json::Value,
    /// Hash of the service's image and config (also in the `io.pinion.config-hash` label).
    pub config_hash: String,
    pub strategy: Strategy,
    /// Whether an exited container should be started again (restart `always`/`unless-stopped`).
    pub keep_running: bool,
    /// App-scoped networks and named volumes to create first, with their labels.
    pub networks: BTreeMap<String, BTreeMap<String, String>>,
    pub volumes: BTreeMap<String, BTreeMap<String, String>>,
    /// What of the config the agent leaves out, one sentence each for the agent to report:
    /// `"<key>: not supported by pinion-agent, ignored"` (in key order), or why a setting
    /// has no effect (`"networkMode: bridge is ignored because networks are set"`).
    pub warnings: Vec<String>,
}

impl DesiredService {
    /// The networks the create body does not attach (Docker API 1.41 attaches one network
    /// at create time): each is connected after the create, with `network_aliases`.
    pub fn extra_networks(&self) -> impl Iterator<Item = &str> {
        let primary = self.create_body.pointer("/HostConfig/NetworkMode").and_then(Value::as_str);
        self.networks.keys().map(String::as_str).filter(move |n| Some(*n) != primary)
    }

    /// The names other containers on the service's networks reach it by.
    pub fn network_aliases(&self) -> Vec<String> {
        vec![self.key.service_name.clone()]
    }

    /// Whether `other` deploys the same thing: the same image and the same config.
    pub fn same_deployment(&self, other: &DesiredService) -> bool {
        self.image == other.image && self.config_hash == other.config_hash
    }
}

/// The services of `target`, in a stable order (app id, then service name). A service
/// that cannot be run (no image, a malformed port) is returned apart with an error that
/// names its app and service; the others go on.
///
/// The caller must leave the containers of failed services alone (put their keys in
/// `PlanInput::holding`): a typo in a new config must not take down the running version.
pub fn desired_services(target: &TargetState) -> (Vec<DesiredService>, Vec<(ServiceKey, Error)>) {
    let mut services = Vec::new();
    let mut failed = Vec::new();
    for (app_key, app) in target.apps.iter() {
        let app_id = app_id(&app_key, app);
        for (service_key, service) in app.services.iter() {
            let key = ServiceKey { app_id: app_id.clone(), service_name: service_name(&service_key, service) };
            match desired_service(key.clone(), service) {
                Ok(desired) => services.push(desired),
                Err(reason) => failed.push((key, reason)),
            }
        }
    }
    services.sort_by(|a, b| a.key.cmp(&b.key));
    failed.sort_by(|a, b| a.0.cmp(&b.0));

    // Sanitizing can give two services one container name; the first (in key order) keeps it.
    let mut names: BTreeMap<String, ServiceKey> = BTreeMap::new();
    services.retain(|s| match names.get(&s.container_name) {
        Some(owner) => {
            let reason = if *owner == s.key {
                format!("app {} has two services named {}", owner.app_id, owner.service_name)
            } else {
                format!("container name {} is already used by service {owner}", s.container_name)
            };
            failed.push((s.key.clone(), invalid(&s.key, &reason)));
            false
        }
        None => {
            names.insert(s.container_name.clone(), s.key.clone());
            true
        }
    });
    failed.sort_by(|a, b| a.0.cmp(&b.0));
    (services, failed)
}

fn desired_service(key: ServiceKey, service: &Service) -> Result<DesiredService, Error> {
    let empty = Map::new();
    let config = service.config.as_ref().unwrap_or(&empty);
    let mapped = config::map(&key, config).map_err(|reason| invalid(&key, &reason))?;
    let image_name = service.image_name.as_ref().filter(|i| !i.is_empty());
    let image = match (image_name, mapped.image.as_ref().filter(|i| !i.is_empty())) {
        (Some(name), Some(image)) if name != image => {
            return Err(invalid(&key, &format!("imageName {name} and config.image {image} differ")));
        }
        (Some(image), _) | (None, Some(image)) => image.clone(),
        (None, None) => return Err(invalid(&key, "no image")),
    };
    let service_id = service.service_id.as_ref().and_then(id_string);

    let mut labels = mapped.labels;
    labels.insert(LABEL_APP_ID.to_owned(), key.app_id.clone());
    labels.insert(LABEL_SERVICE_NAME.to_owned(), key.service_name.clone());
    if let Some(id) = &service_id {
        labels.insert(LABEL_SERVICE_ID.to_owned(), id.clone());
    }
    let mut body = mapped.body;
    body.insert("Image".to_owned(), Value::String(image.clone()));
    body.insert("Labels".to_owned(), string_map(&labels));
    let mut create_body = Value::Object(body);

    let scoped = |names: &[String]| -> BTreeMap<String, BTreeMap<String, String>> {
        names.iter().map(|n| (n.clone(), resource_labels(&key.app_id))).collect()
    };
    let networks = scoped(&mapped.networks);
    let volumes = scoped(&mapped.volumes);
    let extra: Vec<&String> = mapped.networks.iter().skip(1).collect();
    let config_hash = if extra.is_empty() {
        sha256_hex(&create_body)
    } else {
        // Networks connected after the create are part of the config too.
        sha256_hex(&serde_json::json!({"create": create_body, "connect": extra}))
    };
    create_body["Labels"][LABEL_CONFIG_HASH] = Value::String(config_hash.clone());

    Ok(DesiredService {
        container_name: docker_name(&format!("{}_{}", key.service_name, key.app_id)),
        key,
        service_id,
        image,
        create_body,
        config_hash,
        strategy: mapped.strategy,
        keep_running: mapped.keep_running,
        networks,
        volumes,
        warnings: mapped.warnings,
    })
}

fn invalid(key: &ServiceKey, reason: &str) -> Error {
    Error::InvalidTarget { reason: format!("app {}, service {}: {reason}", key.app_id, key.service_name) }
}

/// The app's `appId` (number or string), else its key in the apps object or list.
fn app_id(key: &str, app: &App) -> String {
    app.app_id.as_ref().and_then(id_string).unwrap_or_else(|| key.to_owned())
}

fn service_name(key: &str, service: &Service) -> String {
    match &service.service_name {
        Some(name) if !name.is_empty() => name.clone(),
        _ => key.to_owned(),
    }
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Labels of the networks and volumes the agent creates for an app.
fn resource_labels(app_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_APP_ID.to_owned(), app_id.to_owned()), (LABEL_MANAGED.to_owned(), "true".to_owned())])
}

/// `raw` made a valid Docker object name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`): other characters
/// become `_`, and a name not starting with a letter or digit gets a `pinion` prefix.
pub(crate) fn docker_name(raw: &str) -> String {
    let mut name: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' }).collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) || name.len() < 2 {
        name.insert_str(0, "pinion");
    }
    name
}

/// The prefix of every network and volume name of an app: `<appId>_`.
pub(crate) fn app_prefix(app_id: &str) -> String {
    format!("{}_", docker_name(app_id))
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

/// sha256 of the canonical JSON of `v` (object keys sorted at every level, no spaces), hex.
fn sha256_hex(v: &Value) -> String {
    let mut text = String::new();
    canonical_json(v, &mut text);
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Sorts keys itself rather than trusting `Map`'s order, which becomes insertion order
/// if any crate in the build enables serde_json's `preserve_order`.
fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
impl DesiredService {
    /// A plain service for other modules' tests: service `name` of app 1, running `image`
    /// with config hash `hash`, kept running.
    pub(crate) fn example(name: &str, image: &str, hash: &str) -> DesiredService {
        let key = ServiceKey { app_id: "1".into(), service_name: name.into() };
        DesiredService {
            container_name: format!("{name}_1"),
            create_body: serde_json::json!({"Image": image, "Labels": {LABEL_CONFIG_HASH: hash}}),
            key,
            service_id: Some("7".into()),
            image: image.into(),
            config_hash: hash.into(),
            strategy: Strategy::default(),
            keep_running: true,
            networks: BTreeMap::new(),
            volumes: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
