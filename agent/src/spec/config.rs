//! One service's `config` object (the original platform's compose-like keys, camelCase
//! with the compose snake_case spellings accepted) mapped to the fields of a Docker Engine
//! API 1.41 `ContainerCreate` body. Each supported key has one small function; any other
//! key is left out of the body and reported as a warning.

use super::{mounts, ports, words, ServiceKey};
use crate::plan::Strategy;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The label a service may carry instead of the `strategy` key; it is not passed to Docker.
pub(super) const LABEL_UPDATE_STRATEGY: &str = "io.pinion.update-strategy";

/// A service config, mapped. `body` lacks `Image` and `Labels`, which the caller adds.
#[derive(Debug, Default)]
pub(super) struct Mapped {
    pub image: Option<String>,
    pub body: Map<String, Value>,
    /// The user's labels (pinion's are added by the caller).
    pub labels: BTreeMap<String, String>,
    /// App-scoped network names, sorted; the first is the one the body attaches.
    pub networks: Vec<String>,
    /// App-scoped named volumes.
    pub volumes: Vec<String>,
    pub strategy: Strategy,
    pub keep_running: bool,
    pub warnings: Vec<String>,
}

/// The key every spelling of a supported key stands for.
fn canonical(key: &str) -> Option<&'static str> {
    Some(match key {
        "image" => "image",
        "ports" => "ports",
        "expose" => "expose",
        "environment" => "environment",
        "volumes" => "volumes",
        "networks" => "networks",
        "networkMode" | "network_mode" => "networkMode",
        "restart" => "restart",
        "labels" => "labels",
        "command" => "command",
        "entrypoint" => "entrypoint",
        "privileged" => "privileged",
        "devices" => "devices",
        "capAdd" | "cap_add" => "capAdd",
        "capDrop" | "cap_drop" => "capDrop",
        "workingDir" | "working_dir" => "workingDir",
        "user" => "user",
        "hostname" => "hostname",
        "strategy" | "updateStrategy" | "update_strategy" => "strategy",
        _ => return None,
    })
}

/// Maps `config` for the service `key`; `Err` is a sentence naming the key at fault.
pub(super) fn map(key: &ServiceKey, config: &Map<String, Value>) -> Result<Mapped, String> {
    let mut given: BTreeMap<&'static str, (&str, &Value)> = BTreeMap::new();
    let mut out = Mapped::default();
    for (name, value) in config {
        match canonical(name) {
            None => out.warnings.push(format!("{name}: not supported by pinion-agent, ignored")),
            Some(_) if value.is_null() => {}
            Some(c) => {
                if let Some((other, _)) = given.insert(c, (name, value)) {
                    return Err(format!("{other} and {name} are both set"));
                }
            }
        }
    }
    let get = |c: &str| given.get(c).copied();

    if let Some((_, v)) = get("image") {
        out.image = Some(string(v, "image")?);
    }
    let mut host = Map::new();

    let mut published = ports::Ports::default();
    if let Some((_, v)) = get("ports") {
        for item in list(v, "ports")? {
            published.publish(&scalar(item, "ports")?)?;
        }
    }
    if let Some((_, v)) = get("expose") {
        for item in list(v, "expose")? {
            published.expose(&scalar(item, "expose")?)?;
        }
    }
    if !published.is_empty() {
        let (exposed, bindings) = published.into_json();
        out.body.insert("ExposedPorts".into(), exposed);
        if !bindings.as_object().is_some_and(Map::is_empty) {
            host.insert("PortBindings".into(), bindings);
        }
    }

    if let Some((_, v)) = get("environment") {
        let env = environment(v)?;
        if !env.is_empty() {
            out.body.insert("Env".into(), strings(env));
        }
    }

    if let Some((_, v)) = get("volumes") {
        let mut mounts = mounts::Mounts::default();
        for item in list(v, "volumes")? {
            mounts.add(&string(item, "volumes")?, &key.app_id)?;
        }
        if !mounts.binds.is_empty() {
            host.insert("Binds".into(), strings(mounts.binds));
        }
        if !mounts.anonymous.is_empty() {
            let anon: Map<String, Value> = mounts.anonymous.into_iter().map(|p| (p, json!({}))).collect();
            out.body.insert("Volumes".into(), Value::Object(anon));
        }
        out.volumes = mounts.named.into_iter().collect();
    }

    let mode = get("networkMode").map(|(name, v)| string(v, name)).transpose()?;
    if let Some((name, v)) = get("networks") {
        out.networks = networks(v, &key.app_id, &mut out.warnings)?;
        match mode.as_deref() {
            Some("bridge") if !out.networks.is_empty() => {
                out.warnings.push(format!("networkMode: bridge is ignored because {name} are set"))
            }
            Some(m) if !out.networks.is_empty() => {
                return Err(format!("networkMode {m} cannot be combined with {name}"));
            }
            _ => {}
        }
    }
    if let Some(first) = out.networks.first() {
        host.insert("NetworkMode".into(), Value::String(first.clone()));
        let endpoint = json!({"EndpointsConfig": {first.as_str(): {"Aliases": [key.service_name]}}});
        out.body.insert("NetworkingConfig".into(), endpoint);
    } else if let Some(m) = mode {
        network_mode(&m)?;
        if m.starts_with("container:") && host.contains_key("PortBindings") {
            return Err(format!("ports cannot be published with networkMode {m}"));
        }
        host.insert("NetworkMode".into(), Value::String(m));
    }

    let restart = match get("restart") {
        Some((_, v)) => string(v, "restart")?,
        None => "always".to_owned(),
    };
    let (policy, keep_running) = restart_policy(&restart)?;
    host.insert("RestartPolicy".into(), policy);
    out.keep_running = keep_running;

    let mut label_strategy = None;
    if let Some((_, v)) = get("labels") {
        out.labels = labels(v)?;
        label_strategy = out.labels.remove(LABEL_UPDATE_STRATEGY);
    }
    let strategy = match get("strategy") {
        Some((name, v)) => Some(string(v, name)?),
        None => label_strategy,
    };
    if let Some(s) = strategy {
        out.strategy = update_strategy(&s)?;
    }

    for (name, field) in [("command", "Cmd"), ("entrypoint", "Entrypoint")] {
        if let Some((_, v)) = get(name) {
            out.body.insert(field.into(), strings(command(v, name)?));
        }
    }

    if let Some((_, v)) = get("privileged") {
        match v {
            Value::Bool(true) => {
                host.insert("Privileged".into(), Value::Bool(true));
            }
            Value::Bool(false) => {}
            _ => return Err("privileged: expected true or false".into()),
        }
    }
    if let Some((_, v)) = get("devices") {
        let devices = list(v, "devices")?
            .iter()
            .map(|d| mounts::device(&string(d, "devices")?))
            .collect::<Result<Vec<_>, _>>()?;
        if !devices.is_empty() {
            host.insert("Devices".into(), Value::Array(devices));
        }
    }
    for (name, field) in [("capAdd", "CapAdd"), ("capDrop", "CapDrop")] {
        if let Some((given_name, v)) = get(name) {
            let caps = list(v, given_name)?
                .iter()
                .map(|c| string(c, given_name).and_then(|c| non_empty(c, given_name)))
                .collect::<Result<Vec<_>, _>>()?;
            if !caps.is_empty() {
                host.insert(field.into(), strings(caps));
            }
        }
    }

    if let Some((name, v)) = get("workingDir") {
        let dir = string(v, name)?;
        if !dir.starts_with('/') {
            return Err(format!("{name} {dir}: must be an absolute path"));
        }
        out.body.insert("WorkingDir".into(), Value::String(dir));
    }
    if let Some((_, v)) = get("user") {
        out.body.insert("User".into(), Value::String(scalar(v, "user")?));
    }
    if let Some((_, v)) = get("hostname") {
        out.body.insert("Hostname".into(), Value::String(string(v, "hostname")?));
    }

    out.body.insert("HostConfig".into(), Value::Object(host));
    Ok(out)
}

fn string(v: &Value, key: &str) -> Result<String, String> {
    v.as_str().map(str::to_owned).ok_or_else(|| format!("{key}: expected a string, found {v}"))
}

/// A string, number or boolean, as a string.
fn scalar(v: &Value, key: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!("{key}: expected a string, number or boolean, found {v}")),
    }
}

fn list<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], String> {
    v.as_array().map(Vec::as_slice).ok_or_else(|| format!("{key}: expected a list, found {v}"))
}

fn non_empty(s: String, key: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err(format!("{key}: empty entry"))
    } else {
        Ok(s)
    }
}

fn strings(items: Vec<String>) -> Value {
    Value::Array(items.into_iter().map(Value::String).collect())
}

/// `{"A": "1"}` or `["A=1"]` → `["A=1"]`, one entry per variable (the last wins), sorted.
fn environment(v: &Value) -> Result<Vec<String>, String> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    match v {
        Value::Object(m) => {
            for (name, value) in m {
                let value = scalar(value, &format!("environment.{name}"))?;
                vars.insert(name.clone(), format!("{name}={value}"));
            }
        }
        Value::Array(items) => {
            for item in items {
                let entry = string(item, "environment")?;
                let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
                vars.insert(name.to_owned(), entry.clone());
            }
        }
        _ => return Err(format!("environment: expected an object or a list, found {v}")),
    }
    if let Some(bad) = vars.keys().find(|n| n.is_empty() || n.contains(char::is_whitespace)) {
        return Err(format!("environment: invalid variable name {bad:?}"));
    }
    Ok(vars.into_values().collect())
}

/// User labels: `{"a": "b"}` or `["a=b"]`. The `io.pinion.` namespace is the agent's.
fn labels(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    match v {
        Value::Object(m) => {
            for (name, value) in m {
                labels.insert(name.clone(), scalar(value, &format!("labels.{name}"))?);
            }
        }
        Value::Array(items) => {
            for item in items {
                let entry = string(item, "labels")?;
                let (name, value) = entry.split_once('=').unwrap_or((&entry, ""));
                labels.insert(name.to_owned(), value.to_owned());
            }
        }
        _ => return Err(format!("labels: expected an object or a list, found {v}")),
    }
    for name in labels.keys() {
        if name.is_empty() {
            return Err("labels: empty label name".into());
        }
        if name.starts_with("io.pinion.") && name != LABEL_UPDATE_STRATEGY {
            return Err(format!("labels: {name} is reserved for pinion"));
        }
    }
    Ok(labels)
}

/// A list of names (or a compose object keyed by name) → app-scoped names, sorted.
fn networks(v: &Value, app_id: &str, warnings: &mut Vec<String>) -> Result<Vec<String>, String> {
    let names: Vec<String> = match v {
        Value::Array(items) => items.iter().map(|n| string(n, "networks")).collect::<Result<_, _>>()?,
        Value::Object(m) => {
            for (name, settings) in m {
                if let Some(settings) = settings.as_object() {
                    for setting in settings.keys() {
                        warnings.push(format!("networks.{name}.{setting}: not supported by pinion-agent, ignored"));
                    }
                }
            }
            m.keys().cloned().collect()
        }
        _ => return Err(format!("networks: expected a list of names, found {v}")),
    };
    let mut scoped = BTreeSet::new();
    for name in names {
        if !mounts::valid_name(&name) {
            return Err(format!("networks: invalid network name {name:?}"));
        }
        scoped.insert(format!("{}{name}", super::app_prefix(app_id)));
    }
    Ok(scoped.into_iter().collect())
}

fn network_mode(mode: &str) -> Result<(), String> {
    match mode {
        "bridge" | "host" | "none" => Ok(()),
        m if m.strip_prefix("container:").is_some_and(|c| !c.is_empty()) => Ok(()),
        m => Err(format!("networkMode {m}: expected bridge, host, none or container:<name>")),
    }
}

/// `restart` → Docker's `RestartPolicy`, and whether an exited container is started again.
fn restart_policy(restart: &str) -> Result<(Value, bool), String> {
    Ok(match restart {
        "no" => (json!({"Name": "no"}), false),
        "always" => (json!({"Name": "always"}), true),
        "unless-stopped" => (json!({"Name": "unless-stopped"}), true),
        "on-failure" => (json!({"Name": "on-failure"}), false),
        other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => (json!({"Name": "on-failure", "MaximumRetryCount": n}), false),
            _ => return Err(format!("restart {other}: expected no, always, unless-stopped or on-failure[:<count>]")),
        },
    })
}

fn update_strategy(s: &str) -> Result<Strategy, String> {
    match s {
        "download-then-kill" => Ok(Strategy::DownloadThenKill),
        // The original platform's delete-then-download also frees the disk first.
        "kill-then-download" | "delete-then-download" => Ok(Strategy::KillThenDownload),
        other => Err(format!("strategy {other}: expected download-then-kill or kill-then-download")),
    }
}

/// `command`/`entrypoint`: a list of strings, or one string split like a shell would.
fn command(v: &Value, key: &str) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => words::split(s).map_err(|e| format!("{key}: {e}")),
        Value::Array(items) => items.iter().map(|w| scalar(w, key)).collect(),
        _ => Err(format!("{key}: expected a string or a list, found {v}")),
    }
}
