//! The planner: a pure function from what should run (the target's services) and what
//! does run (the managed containers Docker lists) to the steps that close the gap.
//! No I/O here; `apply` runs the steps through an `Engine`.
//!
//! Each desired service is judged on its own containers first (`judge`: keep one, start
//! it, or replace it), then the verdicts are laid out in an order that keeps downtime
//! short and never asks Docker for something it would refuse: networks and volumes,
//! downloads (while the old containers still run), removals of what is no longer
//! wanted (freeing names, ports and devices), replacements and starts service by
//! service, and last the networks of apps that are gone. Named volumes are never
//! removed: an app's data outlives the app.

use crate::engine::{Container, LABEL_APP_ID, LABEL_CONFIG_HASH, LABEL_SERVICE_NAME};
use crate::spec::{app_prefix, DesiredService, ServiceKey};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How a service's image is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Strategy {
    /// Pull the new image while the old container runs, then replace it (default).
    #[default]
    DownloadThenKill,
    /// Stop and remove the old container first, then pull: for gateways short of disk.
    KillThenDownload,
}

/// One thing to do. Steps run in order; a failed step fails only its own service's
/// remaining steps.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    EnsureNetwork {
        name: String,
        labels: BTreeMap<String, String>,
    },
    EnsureVolume {
        name: String,
        labels: BTreeMap<String, String>,
    },
    /// Pull unless the image is present.
    Pull {
        service: ServiceKey,
        image: String,
    },
    Stop {
        service: Option<ServiceKey>,
        container: String,
    },
    Remove {
        service: Option<ServiceKey>,
        container: String,
    },
    /// Create the container `name` from `body` and start it.
    CreateAndStart {
        service: ServiceKey,
        name: String,
        body: serde_json::Value,
    },
    /// Connect the container `container` (a name: it was just created) to one more
    /// network, reachable there by `aliases`. Docker API 1.41 attaches only one network
    /// at create time (`POST /networks/{network}/connect`,
    /// `{"Container": container, "EndpointConfig": {"Aliases": aliases}}`).
    ConnectNetwork {
        service: ServiceKey,
        container: String,
        network: String,
        aliases: Vec<String>,
    },
    /// Start an existing container (created but never started, or died).
    Start {
        service: ServiceKey,
        container: String,
    },
    /// Remove a network the agent made for an app that is gone.
    RemoveNetwork {
        name: String,
    },
}

/// One line per step, for logs and tests: `pull 1001/web nginx@sha256:…`, `stop <id>`.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::EnsureNetwork { name, .. } => write!(f, "ensure-network {name}"),
            Step::EnsureVolume { name, .. } => write!(f, "ensure-volume {name}"),
            Step::Pull { service, image } => write!(f, "pull {service} {image}"),
            Step::Stop { container, .. } => write!(f, "stop {container}"),
            Step::Remove { container, .. } => write!(f, "remove {container}"),
            Step::CreateAndStart { service, name, .. } => write!(f, "create {service} {name}"),
            Step::ConnectNetwork { container, network, .. } => write!(f, "connect {container} {network}"),
            Step::Start { container, .. } => write!(f, "start {container}"),
            Step::RemoveNetwork { name } => write!(f, "remove-network {name}"),
        }
    }
}

/// What the planner is told besides target and containers.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub desired: &'a [DesiredService],
    pub containers: &'a [Container],
    /// Services left as they are this round: those waiting out a retry backoff, and
    /// those whose spec failed (`desired_services`' errors), whose old container must
    /// keep running rather than be removed as unwanted.
    pub holding: &'a BTreeSet<ServiceKey>,
    /// Networks carrying `io.pinion.managed` that exist now (for cleanup of removed apps).
    pub managed_networks: &'a [String],
}

static NO_KEYS: BTreeSet<ServiceKey> = BTreeSet::new();

impl Default for PlanInput<'_> {
    fn default() -> Self {
        PlanInput { desired: &[], containers: &[], holding: &NO_KEYS, managed_networks: &[] }
    }
}

/// The service a container belongs to, from its labels; `None` for a container without
/// `io.pinion.app-id`, which the agent never touches.
pub fn container_key(container: &Container) -> Option<ServiceKey> {
    let app_id = container.labels.get(LABEL_APP_ID)?;
    let service_name = container.labels.get(LABEL_SERVICE_NAME).cloned().unwrap_or_default();
    Some(ServiceKey { app_id: app_id.clone(), service_name })
}

/// What one desired service needs, judged from its own containers.
#[derive(Debug, Default)]
struct Verdict<'a> {
    /// Stale versions and duplicates.
    remove: Vec<&'a Container>,
    /// The kept container, when it is not running and should be.
    start: Option<&'a Container>,
    /// No container is kept: pull and create one.
    create: bool,
}

/// Keeps at most one container whose config hash is the wanted one (the most alive;
/// then the one with the expected name; then the lowest id) and removes the others.
fn judge<'a>(service: &DesiredService, containers: &[&'a Container]) -> Verdict<'a> {
    let mut current: Vec<&Container> =
        containers.iter().copied().filter(|c| c.labels.get(LABEL_CONFIG_HASH) == Some(&service.config_hash)).collect();
    current.sort_by_key(|c| (liveliness(&c.state), c.name != service.container_name, c.id.as_str()));
    let keep = current.first().copied();
    let mut verdict = Verdict {
        remove: containers.iter().copied().filter(|c| keep.is_none_or(|k| k.id != c.id)).collect(),
        ..Verdict::default()
    };
    match keep {
        None => verdict.create = true,
        Some(kept) => match kept.state.as_str() {
            "created" => verdict.start = Some(kept),
            "exited" if service.keep_running => verdict.start = Some(kept),
            // A dead container cannot be started again, only replaced.
            "dead" if service.keep_running => {
                verdict.remove.push(kept);
                verdict.create = true;
            }
            // running, restarting, paused (someone paused it on purpose), or let exit.
            _ => {}
        },
    }
    verdict
}

/// Lower is more alive: the container to keep among equals.
fn liveliness(state: &str) -> u8 {
    match state {
        "running" => 0,
        "restarting" => 1,
        "paused" => 2,
        "created" => 3,
        "exited" => 4,
        _ => 5,
    }
}

/// Whether a container has a process that deserves a graceful stop before removal.
fn is_up(container: &Container) -> bool {
    matches!(container.state.as_str(), "running" | "restarting" | "paused")
}

/// The steps that make Docker match `input.desired`. Pure and deterministic.
pub fn plan(input: &PlanInput<'_>) -> Vec<Step> {
    // Managed containers by service; those Docker is already removing are only in the way.
    let mut by_key: BTreeMap<ServiceKey, Vec<&Container>> = BTreeMap::new();
    let mut being_removed: Vec<(ServiceKey, &Container)> = Vec::new();
    for container in input.containers {
        let Some(key) = container_key(container) else { continue };
        if container.state == "removing" {
            being_removed.push((key, container));
        } else {
            by_key.entry(key).or_default().push(container);
        }
    }
    for containers in by_key.values_mut() {
        containers.sort_by(|a, b| a.id.cmp(&b.id));
    }

    let mut desired: Vec<&DesiredService> = input.desired.iter().collect();
    desired.sort_by(|a, b| a.key.cmp(&b.key));
    let desired_keys: BTreeSet<&ServiceKey> = desired.iter().map(|d| &d.key).collect();
    let verdicts: Vec<(&DesiredService, Verdict)> = desired
        .iter()
        .filter(|d| !input.holding.contains(&d.key))
        .map(|d| {
            let mut verdict = judge(d, by_key.get(&d.key).map_or(&[], Vec::as_slice));
            // Its name is still taken by a container on its way out: create next round.
            verdict.create &= !being_removed.iter().any(|(_, c)| c.name == d.container_name);
            (*d, verdict)
        })
        .collect();
    let unwanted: Vec<(&ServiceKey, &Container)> = by_key
        .iter()
        .filter(|(key, _)| !desired_keys.contains(key) && !input.holding.contains(*key))
        .flat_map(|(key, containers)| containers.iter().map(move |c| (key, *c)))
        .collect();

    let mut steps = Vec::new();
    let creating = || verdicts.iter().filter(|(_, v)| v.create).map(|(d, _)| *d);

    let mut networks = BTreeMap::new();
    let mut volumes = BTreeMap::new();
    for service in creating() {
        for (name, labels) in &service.networks {
            networks.entry(name).or_insert(labels);
        }
        for (name, labels) in &service.volumes {
            volumes.entry(name).or_insert(labels);
        }
    }
    steps.extend(networks.into_iter().map(|(n, l)| Step::EnsureNetwork { name: n.clone(), labels: l.clone() }));
    steps.extend(volumes.into_iter().map(|(n, l)| Step::EnsureVolume { name: n.clone(), labels: l.clone() }));

    for service in creating().filter(|s| s.strategy == Strategy::DownloadThenKill) {
        steps.push(Step::Pull { service: service.key.clone(), image: service.image.clone() });
    }

    let mut removed: BTreeSet<&str> = BTreeSet::new();
    for (key, container) in &unwanted {
        push_removal(&mut steps, &mut removed, key, container);
    }

    // Every removal a service's verdict asks for, so a create can clear its name first.
    let doomed: Vec<(&ServiceKey, &Container)> =
        verdicts.iter().flat_map(|(d, v)| v.remove.iter().map(move |c| (&d.key, *c))).collect();
    for (service, verdict) in &verdicts {
        for container in &verdict.remove {
            push_removal(&mut steps, &mut removed, &service.key, container);
        }
        if verdict.create {
            for (key, container) in doomed.iter().filter(|(_, c)| c.name == service.container_name) {
                push_removal(&mut steps, &mut removed, key, container);
            }
            if service.strategy == Strategy::KillThenDownload {
                steps.push(Step::Pull { service: service.key.clone(), image: service.image.clone() });
            }
            steps.push(Step::CreateAndStart {
                service: service.key.clone(),
                name: service.container_name.clone(),
                body: service.create_body.clone(),
            });
            for network in service.extra_networks() {
                steps.push(Step::ConnectNetwork {
                    service: service.key.clone(),
                    container: service.container_name.clone(),
                    network: network.to_owned(),
                    aliases: service.network_aliases(),
                });
            }
        }
        if let Some(container) = verdict.start {
            steps.push(Step::Start { service: service.key.clone(), container: container.id.clone() });
        }
    }

    // Networks of apps with nothing left: nothing desired or held, no container staying.
    let wanted: BTreeSet<&str> = desired.iter().flat_map(|d| d.networks.keys()).map(String::as_str).collect();
    let staying = by_key
        .iter()
        .flat_map(|(key, containers)| containers.iter().map(move |c| (key, *c)))
        .filter(|(_, c)| !removed.contains(c.id.as_str()))
        .chain(being_removed.iter().map(|(key, c)| (key, *c)))
        .map(|(key, _)| key);
    let live_apps: BTreeSet<String> =
        desired_keys.iter().copied().chain(input.holding).chain(staying).map(|k| app_prefix(&k.app_id)).collect();
    let managed: BTreeSet<&String> = input.managed_networks.iter().collect();
    for name in managed {
        if !wanted.contains(name.as_str()) && !live_apps.iter().any(|prefix| name.starts_with(prefix.as_str())) {
            steps.push(Step::RemoveNetwork { name: name.clone() });
        }
    }
    steps
}

/// Stop (if it runs) and remove `container`, once.
fn push_removal<'a>(
    steps: &mut Vec<Step>,
    removed: &mut BTreeSet<&'a str>,
    key: &ServiceKey,
    container: &'a Container,
) {
    if !removed.insert(&container.id) {
        return;
    }
    if is_up(container) {
        steps.push(Step::Stop { service: Some(key.clone()), container: container.id.clone() });
    }
    steps.push(Step::Remove { service: Some(key.clone()), container: container.id.clone() });
}
