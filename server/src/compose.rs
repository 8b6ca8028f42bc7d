//! A docker-compose file turned into the `{"apps": …}` body of a target state, for a
//! release posted as `application/yaml`: every compose key the agent runs becomes its
//! service `config` key, and every other key is refused by name (422), never dropped, so
//! a device runs what the file says or the operator hears why not.
//!
//! The app: one per file. Its id (the `apps` key and `appId`) and `appName` are the
//! compose `name:` when the file has one, else the caller's `app_name`. A string id, not
//! a number: the agent names what it makes after it (`web_<appId>` containers,
//! `<appId>_data` volumes, `<appId>_default` network), as compose does after the project
//! name, and keeping the same `name:` from release to release keeps the same volumes.
//!
//! Compose semantics kept: a service without `networks` or `network_mode` joins the app's
//! `default` network (services reach each other by name, as under `docker compose up`);
//! `$$` is a literal `$`; `${VAR}`/`$VAR` are refused, the server has no environment to
//! substitute from. `environment`/`labels` become objects of strings; ports, volumes and
//! the like are passed as written, for the agent's own parsers to check.
//!
//! YAML: saphyr-parser's events, built into a small tree here, so the cost is bounded:
//! at most `MAX_BYTES` in, `MAX_DEPTH` levels, and aliases (and `<<` merge keys, which
//! compose files use with `x-` anchors) copying at most `ALIAS_BUDGET` nodes in all (a
//! long text weighing one node per 64 bytes), so an alias bomb stops after a few thousand
//! nodes instead of expanding to billions, and a megabyte aliased thousands of times too.
//! Core schema (YAML 1.2): `no`/`on` are strings; values keep their text (`1.10` stays
//! `1.10`); only `privileged` asks for a boolean.

use crate::Error;
use saphyr_parser::{Event, Parser, ScalarStyle, Tag};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// The largest compose file taken: the HTTP server's default body limit
/// (`http_server::Limits::max_body`), whatever a larger configured limit lets through.
pub const MAX_BYTES: usize = 1 << 20;
/// Nesting a compose file never needs (it uses about five levels).
const MAX_DEPTH: usize = 32;
/// Nodes that aliases may copy, in all: far above any real use of anchors in a compose
/// file, far below what a nine-level alias bomb asks for (9^9 nodes).
const ALIAS_BUDGET: usize = 10_000;
/// Text weighs one node per this many bytes against `ALIAS_BUDGET` (so aliases copy at
/// most about 640 KiB of text in all).
const TEXT_BYTES_PER_NODE: usize = 64;

/// Compose service keys the agent runs, with the agent's `config` key for each.
const SERVICE_KEYS: &[(&str, &str)] = &[
    ("image", "image"),
    ("command", "command"),
    ("entrypoint", "entrypoint"),
    ("environment", "environment"),
    ("ports", "ports"),
    ("expose", "expose"),
    ("volumes", "volumes"),
    ("networks", "networks"),
    ("network_mode", "networkMode"),
    ("restart", "restart"),
    ("labels", "labels"),
    ("privileged", "privileged"),
    ("devices", "devices"),
    ("cap_add", "capAdd"),
    ("cap_drop", "capDrop"),
    ("working_dir", "workingDir"),
    ("user", "user"),
    ("hostname", "hostname"),
];

/// `{"apps": {"<appId>": {"appId", "appName", "services": {"<name>": {"serviceName",
/// "imageName", "config"}}}}}` for the compose file `yaml`; see the module doc for the
/// app id. Invalid YAML is a `BadRequest` with its line and column; a file the agent
/// cannot run as written (unsupported keys, no image, no services) is `Unprocessable`.
pub fn target_from_compose(yaml: &str, app_name: &str) -> Result<Value, Error> {
    if yaml.len() > MAX_BYTES {
        return Err(Error::PayloadTooLarge { limit: MAX_BYTES });
    }
    let top = match parse(yaml)? {
        Some(Node { yaml: Yaml::Map(entries), .. }) => entries,
        None | Some(Node { yaml: Yaml::Null, .. }) => return Err(refuse("the compose file is empty: no services")),
        Some(other) => {
            return Err(refuse(&format!("a compose file is a mapping (services: …), found {}", kind(&other.yaml))));
        }
    };

    let mut unsupported = Vec::new();
    let (mut services, mut name) = (None, None);
    let mut top_level = Vec::new();
    for (key, node) in &top {
        match key.as_str() {
            "services" => services = Some(node),
            "name" => name = Some(node),
            "version" => {}
            "volumes" | "networks" => declarations(key, node, &mut unsupported)?,
            k if k.starts_with("x-") => {}
            k => top_level.push(k),
        }
    }
    if !top_level.is_empty() {
        unsupported.insert(0, format!("unsupported top-level compose keys: {}", top_level.join(", ")));
    }
    let services = match services.map(|n| &n.yaml) {
        Some(Yaml::Map(services)) if !services.is_empty() => services.as_slice(),
        None | Some(Yaml::Null) | Some(Yaml::Map(_)) => {
            unsupported.push("no services".into());
            return Err(refuse(&unsupported.join("; ")));
        }
        Some(other) => return Err(refuse(&format!("services: expected a mapping of services, found {}", kind(other)))),
    };
    let mut unsupported_service_keys = false;
    for (service, node) in services {
        if let Yaml::Map(entries) = &node.yaml {
            let keys = unsupported_keys(entries);
            if !keys.is_empty() {
                unsupported.push(format!("service {service}: unsupported compose keys: {}", keys.join(", ")));
                unsupported_service_keys = true;
            }
        }
    }
    if !unsupported.is_empty() {
        let mut reason = unsupported.join("; ");
        if unsupported_service_keys {
            let runs: Vec<&str> = SERVICE_KEYS.iter().map(|(k, _)| *k).collect();
            reason.push_str(&format!(" (the agent runs {})", runs.join(", ")));
        }
        return Err(refuse(&reason));
    }

    let app_id = match name {
        Some(node) => {
            let name = string(node, "name").map_err(|e| refuse(&e))?;
            if !project_name(&name) {
                return Err(refuse(&format!(
                    "name {name:?}: expected 1 to 64 lowercase letters, digits, '-' and '_', starting with a letter or digit"
                )));
            }
            name
        }
        None if app_name_ok(app_name) => app_name.to_owned(),
        None => {
            return Err(Error::BadRequest {
                reason: format!("app name {app_name:?}: expected 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"),
            })
        }
    };

    let mut out = Map::new();
    for (service, node) in services {
        let fail = |reason: String| refuse(&format!("service {service}: {reason}"));
        if !service_name_ok(service) {
            return Err(fail("a service name is made of A-Z a-z 0-9 . _ -".into()));
        }
        let entries = match &node.yaml {
            Yaml::Map(entries) => entries.as_slice(),
            Yaml::Null => &[],
            other => return Err(fail(format!("expected a mapping of compose keys, found {}", kind(other)))),
        };
        let config = service_config(entries).map_err(fail)?;
        let Some(image) = config.get("image").cloned() else {
            return Err(fail("no image (the agent runs images; it does not build)".into()));
        };
        out.insert(service.clone(), json!({"serviceName": service, "imageName": image, "config": config}));
    }
    Ok(json!({"apps": {app_id.as_str(): {"appId": app_id, "appName": app_id, "services": out}}}))
}

/// The agent's `config` for one service's compose `entries` (all keys supported).
fn service_config(entries: &[(String, Node)]) -> Result<Map<String, Value>, String> {
    let mut config = Map::new();
    for (key, node) in entries {
        let Some((_, agent_key)) = SERVICE_KEYS.iter().find(|(k, _)| k == key) else { continue };
        if matches!(node.yaml, Yaml::Null) {
            continue; // `key:` with nothing after it: unset, as in compose.
        }
        let value = match key.as_str() {
            "command" | "entrypoint" => match &node.yaml {
                Yaml::Seq(_) => strings(node, key)?.into(),
                _ => string(node, key)?.into(),
            },
            "environment" => Value::Object(pairs(node, key, false)?),
            "labels" => Value::Object(pairs(node, key, true)?),
            "ports" | "expose" => {
                long_syntax(node, key, "[<ip>:][<host port>:]<port>[/<protocol>]")?;
                strings(node, key)?.into()
            }
            "volumes" => {
                long_syntax(node, key, "<volume or /host/path>:<container path>[:ro]")?;
                let volumes = strings(node, key)?;
                if let Some(v) = volumes.iter().find(|v| v.starts_with('.') || v.starts_with('~')) {
                    return Err(format!(
                        "volumes {v:?}: a host path must be absolute (the agent has no project directory)"
                    ));
                }
                volumes.into()
            }
            "networks" => match &node.yaml {
                Yaml::Map(networks) => networks.iter().map(|(n, _)| Value::String(n.clone())).collect(),
                _ => strings(node, key)?.into(),
            },
            "privileged" => boolean(node, key)?.into(),
            "devices" | "cap_add" | "cap_drop" => strings(node, key)?.into(),
            _ => string(node, key)?.into(),
        };
        config.insert((*agent_key).to_owned(), value);
    }
    if !config.contains_key("networks") && !config.contains_key("networkMode") {
        config.insert("networks".into(), json!(["default"]));
    }
    Ok(config)
}

/// A service's keys the agent does not run (`x-` extensions aside), in file order, with
/// any settings of a network it joins (`networks.backend.aliases`).
fn unsupported_keys(entries: &[(String, Node)]) -> Vec<String> {
    let mut keys = Vec::new();
    for (key, node) in entries {
        if key.starts_with("x-") {
            continue;
        }
        if !SERVICE_KEYS.iter().any(|(k, _)| k == key) {
            keys.push(key.clone());
        } else if let ("networks", Yaml::Map(networks)) = (key.as_str(), &node.yaml) {
            for (network, settings) in networks {
                if let Yaml::Map(settings) = &settings.yaml {
                    keys.extend(settings.iter().map(|(s, _)| format!("networks.{network}.{s}")));
                }
            }
        }
    }
    keys
}

/// Top-level `volumes:`/`networks:`: names the agent creates (app-scoped, default
/// driver), so declarations without settings; each setting is named in `unsupported`.
fn declarations(key: &str, node: &Node, unsupported: &mut Vec<String>) -> Result<(), Error> {
    let what = if key == "volumes" { "volume" } else { "network" };
    match &node.yaml {
        Yaml::Null => Ok(()),
        Yaml::Map(declared) => {
            for (name, settings) in declared {
                match &settings.yaml {
                    Yaml::Null => {}
                    Yaml::Map(s) if s.is_empty() => {}
                    Yaml::Map(s) => {
                        let names: Vec<&str> = s.iter().map(|(k, _)| k.as_str()).collect();
                        unsupported.push(format!(
                            "{what} {name}: unsupported settings: {} (the agent creates {key} with the default driver)",
                            names.join(", ")
                        ));
                    }
                    other => {
                        return Err(refuse(&format!(
                            "{key}.{name}: expected a mapping of settings, found {}",
                            kind(other)
                        )))
                    }
                }
            }
            Ok(())
        }
        other => Err(refuse(&format!("{key}: expected a mapping of names, found {}", kind(other)))),
    }
}

// --- compose values ---

fn string(node: &Node, key: &str) -> Result<String, String> {
    match &node.yaml {
        Yaml::Scalar { text, .. } => interpolate(text).map_err(|e| format!("{key} (line {}): {e}", node.line)),
        other => Err(format!("{key} (line {}): expected a string, found {}", node.line, kind(other))),
    }
}

fn strings(node: &Node, key: &str) -> Result<Vec<String>, String> {
    match &node.yaml {
        Yaml::Seq(items) => items.iter().map(|item| string(item, key)).collect(),
        other => Err(format!("{key} (line {}): expected a list, found {}", node.line, kind(other))),
    }
}

fn boolean(node: &Node, key: &str) -> Result<bool, String> {
    match &node.yaml {
        Yaml::Scalar { text, plain: true } if matches!(text.as_str(), "true" | "True" | "TRUE") => Ok(true),
        Yaml::Scalar { text, plain: true } if matches!(text.as_str(), "false" | "False" | "FALSE") => Ok(false),
        _ => Err(format!("{key} (line {}): expected true or false", node.line)),
    }
}

/// A list whose items are mappings: compose's long syntax, which the agent does not read.
fn long_syntax(node: &Node, key: &str, short: &str) -> Result<(), String> {
    match &node.yaml {
        Yaml::Seq(items) => match items.iter().find(|i| matches!(i.yaml, Yaml::Map(_))) {
            Some(item) => Err(format!("{key} (line {}): the long syntax is not supported; write {short}", item.line)),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// `environment`/`labels`: `{K: v}` or `["K=v"]` → `{"K": "v"}` (the last of a name wins).
/// A variable without a value takes compose's from the shell, which the server has not;
/// a label without one is empty, as in compose.
fn pairs(node: &Node, key: &str, empty_ok: bool) -> Result<Map<String, Value>, String> {
    let no_value = |name: &str, line: usize| {
        format!("{key}.{name} (line {line}): no value (compose would read it from the shell; the server has none)")
    };
    let mut out = Map::new();
    match &node.yaml {
        Yaml::Map(entries) => {
            for (name, value) in entries {
                let value = match &value.yaml {
                    Yaml::Null if empty_ok => String::new(),
                    Yaml::Null => return Err(no_value(name, value.line)),
                    _ => string(value, &format!("{key}.{name}"))?,
                };
                out.insert(name.clone(), value.into());
            }
        }
        Yaml::Seq(items) => {
            for item in items {
                let entry = string(item, key)?;
                let (name, value) = match entry.split_once('=') {
                    Some((name, value)) => (name, value),
                    None if empty_ok => (entry.as_str(), ""),
                    None => return Err(no_value(&entry, item.line)),
                };
                if name.is_empty() {
                    return Err(format!("{key} (line {}): {entry:?} has no name", item.line));
                }
                out.insert(name.to_owned(), value.into());
            }
        }
        other => Err(format!("{key} (line {}): expected a mapping or a list, found {}", node.line, kind(other)))?,
    }
    Ok(out)
}

/// Compose's escaping without its substitution: `$$` is `$`; `${VAR}` or `$VAR` is an error.
fn interpolate(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push('$');
            rest = more;
        } else if after.starts_with('{') || after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let end = after.find('}').map(|i| i + 1).unwrap_or_else(|| {
                after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len())
            });
            return Err(format!(
                "${} is not substituted (the server has no environment); write the value, or $$ for a literal $",
                &after[..end]
            ));
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Compose's project name rule, with a length limit for the names made from it.
fn project_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn app_name_ok(name: &str) -> bool {
    name.len() <= 64 && name.starts_with(|c: char| c.is_ascii_alphanumeric()) && service_name_ok(name)
}

/// Compose's service name rule: `[a-zA-Z0-9._-]+`.
fn service_name_ok(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn refuse(reason: &str) -> Error {
    Error::Unprocessable { reason: reason.to_owned() }
}

fn kind(yaml: &Yaml) -> &'static str {
    match yaml {
        Yaml::Null => "nothing",
        Yaml::Scalar { .. } => "a scalar",
        Yaml::Seq(_) => "a list",
        Yaml::Map(_) => "a mapping",
    }
}

// --- YAML, bounded ---

/// A YAML node, with the line it starts on and how many nodes it holds (itself included).
#[derive(Debug, Clone)]
struct Node {
    yaml: Yaml,
    line: usize,
    size: usize,
}

#[derive(Debug, Clone)]
enum Yaml {
    Null,
    /// A scalar's text as written; `plain` when unquoted and untagged.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order, keys unique, `<<` merge keys applied.
    Map(Vec<(String, Node)>),
}

/// A collection being built: its items so far, where it started, its anchor (0: none).
enum Open {
    Seq { items: Vec<Node>, line: usize, anchor: usize },
    Map { entries: Vec<(String, Node)>, keys: HashSet<String>, key: Option<String>, line: usize, anchor: usize },
}

/// The one document of `text` (`None` if it has none).
fn parse(text: &str) -> Result<Option<Node>, Error> {
    let mut open: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut copied = 0usize;
    let mut documents = 0;
    let mut root = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| Error::BadRequest {
            reason: format!(
                "invalid YAML at line {}, column {}: {}",
                e.marker().line(),
                e.marker().col() + 1,
                e.info()
            ),
        })?;
        let line = span.start.line();
        let (node, anchor) = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(bad(line, "a second YAML document; a compose file is one document"));
                }
                continue;
            }
            Event::Scalar(text, style, anchor, tag) => {
                // A long text weighs as much as the nodes it could have been: an alias of
                // a megabyte repeated thousands of times is a bomb too.
                let size = 1 + text.len() / TEXT_BYTES_PER_NODE;
                (Node { yaml: scalar(text, style, tag.as_deref(), line)?, line, size }, anchor)
            }
            Event::SequenceStart(anchor, tag) => {
                start(&mut open, tag.as_deref(), Open::Seq { items: Vec::new(), line, anchor }, line)?;
                continue;
            }
            Event::MappingStart(anchor, tag) => {
                let map = Open::Map { entries: Vec::new(), keys: HashSet::new(), key: None, line, anchor };
                start(&mut open, tag.as_deref(), map, line)?;
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match open.pop() {
                Some(Open::Seq { items, line, anchor }) => {
                    let size = 1 + items.iter().map(|n| n.size).sum::<usize>();
                    (Node { yaml: Yaml::Seq(items), line, size }, anchor)
                }
                Some(Open::Map { entries, line, anchor, .. }) => (merge(entries, line)?, anchor),
                None => return Err(bad(line, "unbalanced collection")),
            },
            Event::Alias(id) => {
                let Some(node) = anchors.get(&id) else { return Err(bad(line, "alias to an unknown anchor")) };
                copied += node.size;
                if copied > ALIAS_BUDGET {
                    return Err(refuse(&format!(
                        "line {line}: YAML aliases copy more than {ALIAS_BUDGET} nodes (an alias bomb?); write the values out"
                    )));
                }
                (node.clone(), 0)
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match open.last_mut() {
            None => root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, keys, key, .. }) => match key.take() {
                None => match node.yaml {
                    Yaml::Scalar { text, .. } => *key = Some(text),
                    Yaml::Null => *key = Some(String::new()),
                    _ => return Err(bad(node.line, "a mapping key must be a scalar")),
                },
                Some(k) => {
                    if !keys.insert(k.clone()) {
                        return Err(bad(node.line, &format!("duplicate key {k:?}")));
                    }
                    entries.push((k, node));
                }
            },
        }
    }
    Ok(root)
}

/// A mapping's node, with the entries of its `<<` merge keys (a mapping or a list of
/// them) added where the mapping does not set the key itself; the first merged wins.
fn merge(entries: Vec<(String, Node)>, line: usize) -> Result<Node, Error> {
    let mut own = Vec::with_capacity(entries.len());
    let mut merged = Vec::new();
    for (key, node) in entries {
        if key != "<<" {
            own.push((key, node));
            continue;
        }
        match node.yaml {
            Yaml::Map(m) => merged.push(m),
            Yaml::Seq(items) => {
                for item in items {
                    match item.yaml {
                        Yaml::Map(m) => merged.push(m),
                        _ => return Err(bad(item.line, "a << merge key takes a mapping or a list of mappings")),
                    }
                }
            }
            _ => return Err(bad(node.line, "a << merge key takes a mapping or a list of mappings")),
        }
    }
    let mut keys: HashSet<String> = own.iter().map(|(k, _)| k.clone()).collect();
    for (key, node) in merged.into_iter().flatten() {
        if keys.insert(key.clone()) {
            own.push((key, node));
        }
    }
    let size = 1 + own.iter().map(|(_, n)| n.size).sum::<usize>();
    Ok(Node { yaml: Yaml::Map(own), line, size })
}

/// A scalar under the core schema: `null`, `~` or nothing (plain) is null; anything else
/// keeps its text, for the compose key to read as it needs.
fn scalar(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&Tag>, line: usize) -> Result<Yaml, Error> {
    let mut plain = style == ScalarStyle::Plain;
    if let Some(tag) = tag {
        match (tag.is_yaml_core_schema(), tag.suffix.as_str()) {
            (true, "str") => plain = false,
            (true, "null") => return Ok(Yaml::Null),
            (true, "bool" | "int" | "float") => {}
            _ => return Err(refuse(&format!("line {line}: YAML tag {tag} is not supported"))),
        }
    }
    Ok(match &*text {
        "" | "~" | "null" | "Null" | "NULL" if plain => Yaml::Null,
        _ => Yaml::Scalar { text: text.into_owned(), plain },
    })
}

/// Opens a sequence or mapping, `MAX_DEPTH` deep at most.
fn start(open: &mut Vec<Open>, tag: Option<&Tag>, collection: Open, line: usize) -> Result<(), Error> {
    match tag {
        None => {}
        Some(t) if t.is_yaml_core_schema() && matches!(t.suffix.as_str(), "map" | "seq") => {}
        Some(t) => return Err(refuse(&format!("line {line}: YAML tag {t} is not supported"))),
    }
    if open.len() >= MAX_DEPTH {
        return Err(bad(line, &format!("nested deeper than {MAX_DEPTH} levels")));
    }
    open.push(collection);
    Ok(())
}

fn bad(line: usize, reason: &str) -> Error {
    Error::BadRequest { reason: format!("invalid YAML at line {line}: {reason}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(yaml: &str) -> Value {
        target_from_compose(yaml, "shop").unwrap()
    }

    fn unprocessable(yaml: &str) -> String {
        match target_from_compose(yaml, "shop") {
            Err(Error::Unprocessable { reason }) => reason,
            other => panic!("expected Unprocessable, got {other:?}"),
        }
    }

    fn bad_request(yaml: &str) -> String {
        match target_from_compose(yaml, "shop") {
            Err(Error::BadRequest { reason }) => reason,
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    const TWO_SERVICES: &str = r#"
# A gateway's web front and its worker.
services:
  web:
    image: nginx:1.27-alpine
    ports:
      - "80:80"
      - 127.0.0.1:8443:443/tcp
    environment:
      NGINX_HOST: gateway.local
      WORKERS: 4
      VERSION: 1.10
    volumes:
      - html:/usr/share/nginx/html:ro
      - /var/log/gw:/var/log/nginx
    restart: unless-stopped
    labels:
      - com.example.role=front
  worker:
    image: registry.example.com/acme/worker@sha256:4c0fdb3f4ae3e4e2a9b41f9f3a1e4a47d58d1d3c06f4f64e4b3e6e4f2b0c1d2e
    command: ["python", "-m", "worker", "--queue", "$$HOME/q"]
    restart: "no"
    privileged: true
    devices: [/dev/ttyUSB0]
    cap_add: [NET_ADMIN]
volumes:
  html:
"#;

    #[test]
    fn a_two_service_file_becomes_one_app() {
        let target = ok(TWO_SERVICES);
        let expected = json!({"apps": {"shop": {"appId": "shop", "appName": "shop", "services": {
            "web": {"serviceName": "web", "imageName": "nginx:1.27-alpine", "config": {
                "image": "nginx:1.27-alpine",
                "ports": ["80:80", "127.0.0.1:8443:443/tcp"],
                "environment": {"NGINX_HOST": "gateway.local", "WORKERS": "4", "VERSION": "1.10"},
                "volumes": ["html:/usr/share/nginx/html:ro", "/var/log/gw:/var/log/nginx"],
                "restart": "unless-stopped",
                "labels": {"com.example.role": "front"},
                "networks": ["default"]}},
            "worker": {"serviceName": "worker",
                "imageName": "registry.example.com/acme/worker@sha256:4c0fdb3f4ae3e4e2a9b41f9f3a1e4a47d58d1d3c06f4f64e4b3e6e4f2b0c1d2e",
                "config": {
                "image": "registry.example.com/acme/worker@sha256:4c0fdb3f4ae3e4e2a9b41f9f3a1e4a47d58d1d3c06f4f64e4b3e6e4f2b0c1d2e",
                "command": ["python", "-m", "worker", "--queue", "$HOME/q"],
                "restart": "no",
                "privileged": true,
                "devices": ["/dev/ttyUSB0"],
                "capAdd": ["NET_ADMIN"],
                "networks": ["default"]}}}}}});
        assert_eq!(target, expected);
        // The body a release stores is a target state's: it reads as one.
        let state: pinion_model::TargetState = serde_json::from_value(target).unwrap();
        assert_eq!(state.apps.len(), 1);
    }

    #[test]
    fn the_compose_name_is_the_app_id() {
        let target = ok("name: edge-gw\nservices:\n  web:\n    image: nginx\n");
        assert_eq!(target["apps"]["edge-gw"]["appId"], "edge-gw");
        assert_eq!(target["apps"]["edge-gw"]["appName"], "edge-gw");
        let reason = unprocessable("name: Edge GW\nservices:\n  web:\n    image: nginx\n");
        assert!(reason.starts_with("name \"Edge GW\""), "{reason}");
        let err = target_from_compose("services:\n  web:\n    image: nginx\n", "no spaces").unwrap_err();
        assert!(matches!(err, Error::BadRequest { .. }), "{err:?}");
    }

    #[test]
    fn environment_and_labels_as_list_or_map() {
        let list = ok("services:\n  s:\n    image: a\n    environment:\n      - A=1\n      - B=x=y\n      - A=2\n    labels: [a=b, flag]\n");
        let map = ok("services:\n  s:\n    image: a\n    environment:\n      A: 2\n      B: x=y\n    labels:\n      a: b\n      flag:\n");
        let config = |t: &Value| t["apps"]["shop"]["services"]["s"]["config"].clone();
        assert_eq!(config(&list), config(&map));
        assert_eq!(config(&list)["environment"], json!({"A": "2", "B": "x=y"}));
        assert_eq!(config(&list)["labels"], json!({"a": "b", "flag": ""}));
        // A variable without a value would come from compose's shell.
        for yaml in [
            "services:\n  s:\n    image: a\n    environment: [HOME]\n",
            "services:\n  s:\n    image: a\n    environment:\n      HOME:\n",
        ] {
            let reason = unprocessable(yaml);
            assert!(
                reason.starts_with("service s: environment.HOME (line ") && reason.contains("no value"),
                "{reason}"
            );
        }
    }

    #[test]
    fn command_as_string_or_list() {
        let target = ok("services:\n  s:\n    image: a\n    command: sh -c 'sleep 1'\n    entrypoint: [/init]\n");
        let config = &target["apps"]["shop"]["services"]["s"]["config"];
        assert_eq!(config["command"], "sh -c 'sleep 1'"); // the agent splits it as a shell would
        assert_eq!(config["entrypoint"], json!(["/init"]));
    }

    #[test]
    fn every_unsupported_key_is_named_with_its_service() {
        let reason = unprocessable(
            "services:\n  web:\n    build: .\n    image: a\n    healthcheck:\n      test: [CMD, true]\n    networks:\n      back:\n        aliases: [w]\n    x-note: kept out\n  db:\n    image: postgres\n    depends_on: [web]\n    container_name: db\nsecrets:\n  s:\n    file: ./s\nconfigs: {}\nnetworks:\n  back:\n    driver: overlay\n",
        );
        assert_eq!(
            reason,
            "unsupported top-level compose keys: secrets, configs; \
             network back: unsupported settings: driver (the agent creates networks with the default driver); \
             service web: unsupported compose keys: build, healthcheck, networks.back.aliases; \
             service db: unsupported compose keys: depends_on, container_name \
             (the agent runs image, command, entrypoint, environment, ports, expose, volumes, networks, \
             network_mode, restart, labels, privileged, devices, cap_add, cap_drop, working_dir, user, hostname)"
        );
    }

    #[test]
    fn a_service_without_an_image_is_named() {
        let reason = unprocessable("services:\n  web:\n    image: nginx\n  worker:\n    command: run\n");
        assert_eq!(reason, "service worker: no image (the agent runs images; it does not build)");
    }

    #[test]
    fn no_services() {
        for yaml in ["", "# nothing\n", "services: {}\n", "services:\n", "version: '3'\n"] {
            let reason = unprocessable(yaml);
            assert!(reason.contains("no services"), "{yaml:?}: {reason}");
        }
        assert!(unprocessable("services: [web]\n").contains("expected a mapping of services"));
        assert!(unprocessable("- a\n").contains("a compose file is a mapping"));
    }

    #[test]
    fn invalid_yaml_is_a_bad_request_with_its_place() {
        let reason = bad_request("services:\n  web:\n    image: nginx\n   ports: [80\n");
        assert!(reason.starts_with("invalid YAML at line 4, column "), "{reason}");
        let reason = bad_request("services:\n  web:\n    image: a\n    image: b\n");
        assert_eq!(reason, "invalid YAML at line 4: duplicate key \"image\"");
        let reason = bad_request("services: {}\n---\nservices: {}\n");
        assert!(reason.contains("second YAML document"), "{reason}");
    }

    #[test]
    fn an_alias_bomb_stops_at_the_budget() {
        let bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n\
                    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n\
                    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n\
                    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n\
                    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
                    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n\
                    services: {}\n";
        let reason = unprocessable(bomb);
        assert!(reason.starts_with("line 5: YAML aliases copy more than 10000 nodes"), "{reason}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        // Block style: the parser would go on; the tree stops at MAX_DEPTH.
        let deep = format!("services:\n  s:\n    image: a\n    x-deep:\n      {}x\n", "- ".repeat(100_000));
        let reason = bad_request(&deep);
        assert_eq!(reason, "invalid YAML at line 5: nested deeper than 32 levels");
        // Flow style: the parser's own limit (255 levels) comes first.
        let deep = format!("services: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(bad_request(&deep).contains("recursion limit exceeded"));
    }

    #[test]
    fn oversized_input_is_refused() {
        let big = format!("services: {{}}\n#{}\n", "x".repeat(MAX_BYTES));
        assert!(matches!(target_from_compose(&big, "shop"), Err(Error::PayloadTooLarge { limit: MAX_BYTES })));
    }

    #[test]
    fn x_extensions_are_ignored_and_their_anchors_merge() {
        let target = ok(r#"
version: "3.8"
x-defaults: &defaults
  restart: always
  environment: {TZ: UTC}
services:
  web:
    <<: *defaults
    image: nginx
    environment: {TZ: Europe/Berlin}
  worker:
    <<: *defaults
    image: worker
    x-owner: ops
"#);
        let services = &target["apps"]["shop"]["services"];
        assert_eq!(services["web"]["config"]["restart"], "always");
        assert_eq!(services["web"]["config"]["environment"], json!({"TZ": "Europe/Berlin"}));
        assert_eq!(
            services["worker"]["config"],
            json!({"image": "worker", "restart": "always", "environment": {"TZ": "UTC"}, "networks": ["default"]})
        );
    }

    #[test]
    fn networks_and_network_mode() {
        let target = ok("services:\n  a:\n    image: a\n    networks: [front, back]\n  b:\n    image: b\n    networks:\n      back:\n  c:\n    image: c\n    network_mode: host\nnetworks:\n  front: {}\n  back:\n");
        let services = &target["apps"]["shop"]["services"];
        assert_eq!(services["a"]["config"]["networks"], json!(["front", "back"]));
        assert_eq!(services["b"]["config"]["networks"], json!(["back"]));
        assert_eq!(services["c"]["config"]["networkMode"], "host");
        assert!(services["c"]["config"].get("networks").is_none());
    }

    #[test]
    fn yaml_1_2_keeps_text_and_only_privileged_is_a_boolean() {
        let target = ok("services:\n  s:\n    image: a\n    restart: no\n    user: 1000\n    ports: [22:22, 8080]\n    privileged: false\n");
        let config = &target["apps"]["shop"]["services"]["s"]["config"];
        assert_eq!(config["restart"], "no");
        assert_eq!(config["user"], "1000");
        assert_eq!(config["ports"], json!(["22:22", "8080"]));
        assert_eq!(config["privileged"], false);
        let target = ok("services:\n  s:\n    image: a\n    hostname: !!str null\n    privileged: !!bool true\n");
        assert_eq!(target["apps"]["shop"]["services"]["s"]["config"]["hostname"], "null");
        assert_eq!(target["apps"]["shop"]["services"]["s"]["config"]["privileged"], true);
        let reason = unprocessable("services:\n  s:\n    image: a\n    privileged: \"yes\"\n");
        assert_eq!(reason, "service s: privileged (line 4): expected true or false");
    }

    #[test]
    fn variables_are_refused_and_double_dollars_unescaped() {
        let reason = unprocessable("services:\n  s:\n    image: nginx:${TAG:-latest}\n");
        assert!(reason.starts_with("service s: image (line 3): ${TAG:-latest} is not substituted"), "{reason}");
        let reason = unprocessable("services:\n  s:\n    image: a\n    command: echo $HOME\n");
        assert!(reason.contains("$HOME is not substituted"), "{reason}");
        let target = ok("services:\n  s:\n    image: a\n    environment: [PRICE=5$, X=$$Y]\n");
        assert_eq!(target["apps"]["shop"]["services"]["s"]["config"]["environment"], json!({"PRICE": "5$", "X": "$Y"}));
    }

    #[test]
    fn what_the_agent_cannot_read_is_refused() {
        let long =
            "services:\n  s:\n    image: a\n    volumes:\n      - type: bind\n        source: /a\n        target: /b\n";
        assert!(unprocessable(long).starts_with("service s: volumes (line 5): the long syntax is not supported"));
        let relative = "services:\n  s:\n    image: a\n    volumes: [./data:/data]\n";
        assert!(unprocessable(relative).contains("a host path must be absolute"));
        let tagged = "services:\n  s:\n    image: a\n    ports: !reset []\n";
        assert!(unprocessable(tagged).contains("YAML tag !reset is not supported"));
        assert!(unprocessable("services:\n  s:\n    image: [a]\n").contains("image (line 3): expected a string"));
        assert!(unprocessable("services:\n  s p:\n    image: a\n").starts_with("service s p: a service name"));
    }

    #[test]
    fn a_long_text_aliased_many_times_is_a_bomb_too() {
        let big = "A".repeat(200_000);
        let aliases = vec!["*a"; 100].join(", ");
        let yaml = format!("x-a: &a \"{big}\"\nx-b: [{aliases}]\nservices:\n  web:\n    image: nginx\n");
        let err = target_from_compose(&yaml, "app").unwrap_err().to_string();
        assert!(err.contains("alias bomb"), "{err}");
        // Once is fine.
        let yaml = format!("x-a: &a \"{big}\"\nx-b: [*a]\nservices:\n  web:\n    image: nginx\n");
        target_from_compose(&yaml, "app").unwrap();
    }
}
