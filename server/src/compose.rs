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
#[path = "compose_tests.rs"]
mod tests;
