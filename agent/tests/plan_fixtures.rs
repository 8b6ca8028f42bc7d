//! The planner against readable fixtures: `fixtures/plan/<name>.json` holds a target
//! state, the containers Docker shows, and the steps expected, one line each as `Step`
//! displays them (`pull 1001/web reg.local/web@sha256:…`, `stop c-web`).
//!
//! Fixture fields: `about` (a sentence); `target`; optional `deployed` (the target the
//! containers were made from); `containers`, each `{"id", "state", "of": "<app>/<service>",
//! "hash": "target" | "deployed" | "<literal>", "name"?, "labels"?}` (labels, name and
//! image come from the service `of` names, as the agent would have made it; `labels` is
//! added on top, and without `of` they are all the container has); `holding` (keys as
//! `<app>/<service>`); `managed_networks`; `expected`.
//!
//! Every fixture is also run to convergence: the steps are applied to a small model of
//! Docker (which refuses a second container of one name, like Docker's 409), and
//! planning again must give nothing, with exactly one container per service.

use pinion_agent::engine::{Container, LABEL_APP_ID, LABEL_CONFIG_HASH, LABEL_SERVICE_NAME};
use pinion_agent::plan::{container_key, plan, PlanInput, Step};
use pinion_agent::spec::{desired_services, DesiredService, ServiceKey};
use pinion_model::TargetState;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    about: String,
    target: TargetState,
    #[serde(default)]
    deployed: Option<TargetState>,
    #[serde(default)]
    containers: Vec<FixtureContainer>,
    #[serde(default)]
    holding: Vec<String>,
    #[serde(default)]
    managed_networks: Vec<String>,
    expected: Vec<String>,
    /// Rounds of plan-and-apply until nothing is left to do (2 when Docker is still
    /// removing a container the first round has to wait for).
    #[serde(default = "one_round")]
    rounds: usize,
}

fn one_round() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureContainer {
    id: String,
    state: String,
    #[serde(default)]
    of: Option<String>,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn key(s: &str) -> ServiceKey {
    let (app_id, service_name) = s.split_once('/').unwrap_or_else(|| panic!("{s}: expected <app>/<service>"));
    ServiceKey { app_id: app_id.into(), service_name: service_name.into() }
}

fn services(target: &TargetState) -> (Vec<DesiredService>, Vec<ServiceKey>) {
    let (ok, failed) = desired_services(target);
    (ok, failed.into_iter().map(|(key, _)| key).collect())
}

fn container(c: &FixtureContainer, target: &[DesiredService], deployed: &[DesiredService]) -> Container {
    let mut labels = BTreeMap::new();
    let mut name = c.name.clone();
    let mut image = "unknown".to_owned();
    if let Some(of) = &c.of {
        let key = key(of);
        let source = if c.hash.as_deref() == Some("deployed") { deployed } else { target };
        match source.iter().find(|s| s.key == key) {
            Some(s) => {
                labels = serde_json::from_value(s.create_body["Labels"].clone()).unwrap();
                name = name.or_else(|| Some(s.container_name.clone()));
                image = s.image.clone();
            }
            None => {
                assert!(!matches!(c.hash.as_deref(), None | Some("target" | "deployed")), "{of}: not in that target");
                labels.insert(LABEL_APP_ID.to_owned(), key.app_id.clone());
                labels.insert(LABEL_SERVICE_NAME.to_owned(), key.service_name.clone());
            }
        }
        if let Some(literal) = c.hash.as_deref().filter(|h| !matches!(*h, "target" | "deployed")) {
            labels.insert(LABEL_CONFIG_HASH.to_owned(), literal.to_owned());
        }
    }
    labels.extend(c.labels.clone());
    Container {
        name: name.unwrap_or_else(|| format!("{}-name", c.id)),
        id: c.id.clone(),
        image,
        status: String::new(),
        state: c.state.clone(),
        labels,
    }
}

/// A model of the parts of Docker the steps touch.
struct Docker {
    containers: Vec<Container>,
    networks: BTreeSet<String>,
    created: usize,
}

impl Docker {
    /// Applies `steps`, refusing what Docker would refuse or what the agent must not do.
    fn apply(&mut self, steps: &[Step], holding: &BTreeSet<ServiceKey>) -> Result<(), String> {
        for step in steps {
            let touch = |containers: &mut Vec<Container>, id: &str| -> Result<usize, String> {
                let at = containers.iter().position(|c| c.id == id).ok_or(format!("{step}: no such container"))?;
                match container_key(&containers[at]) {
                    None => Err(format!("{step}: touches an unlabelled container")),
                    Some(k) if holding.contains(&k) => Err(format!("{step}: touches held service {k}")),
                    Some(_) => Ok(at),
                }
            };
            match step {
                Step::EnsureNetwork { name, labels } => {
                    assert_eq!(labels["io.pinion.managed"], "true");
                    self.networks.insert(name.clone());
                }
                Step::EnsureVolume { labels, .. } => assert_eq!(labels["io.pinion.managed"], "true"),
                Step::Pull { .. } => {}
                Step::Stop { container, .. } => {
                    let at = touch(&mut self.containers, container)?;
                    self.containers[at].state = "exited".into();
                }
                Step::Remove { container, .. } => {
                    let at = touch(&mut self.containers, container)?;
                    self.containers.remove(at);
                }
                Step::Start { container, .. } => {
                    let at = touch(&mut self.containers, container)?;
                    self.containers[at].state = "running".into();
                }
                Step::CreateAndStart { name, body, .. } => {
                    if self.containers.iter().any(|c| &c.name == name) {
                        return Err(format!("{step}: 409, the name {name} is in use"));
                    }
                    if let Some(network) = body.pointer("/HostConfig/NetworkMode").and_then(|n| n.as_str()) {
                        let app_network =
                            !matches!(network, "bridge" | "host" | "none") && !network.starts_with("container:");
                        if app_network && !self.networks.contains(network) {
                            return Err(format!("{step}: network {network} not found"));
                        }
                    }
                    self.created += 1;
                    self.containers.push(Container {
                        id: format!("new-{}", self.created),
                        name: name.clone(),
                        image: body["Image"].as_str().unwrap().to_owned(),
                        state: "running".into(),
                        status: String::new(),
                        labels: serde_json::from_value(body["Labels"].clone()).unwrap(),
                    });
                }
                Step::ConnectNetwork { container, network, .. } => {
                    if !self.containers.iter().any(|c| &c.name == container) || !self.networks.contains(network) {
                        return Err(format!("{step}: no such container or network"));
                    }
                }
                Step::RemoveNetwork { name } => {
                    self.networks.remove(name);
                }
            }
        }
        // Docker finishes what it was removing.
        self.containers.retain(|c| c.state != "removing");
        Ok(())
    }
}

fn run(name: &str) {
    let path = fixture_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixture: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!fixture.about.is_empty());

    let (desired, failed) = services(&fixture.target);
    let (deployed, _) = fixture.deployed.as_ref().map(services).unwrap_or_default();
    let containers: Vec<Container> = fixture.containers.iter().map(|c| container(c, &desired, &deployed)).collect();
    // The agent holds back services in backoff and those whose spec failed.
    let holding: BTreeSet<ServiceKey> = fixture.holding.iter().map(|k| key(k)).chain(failed).collect();
    let input = PlanInput {
        desired: &desired,
        containers: &containers,
        holding: &holding,
        managed_networks: &fixture.managed_networks,
    };
    let steps = plan(&input);
    let got: Vec<String> = steps.iter().map(Step::to_string).collect();
    assert_eq!(got, fixture.expected, "{name}: {}\ngot:\n{}\n", fixture.about, got.join("\n"));
    assert_eq!(plan(&input), steps, "{name}: planning twice differs");

    let mut docker = Docker {
        containers: containers.clone(),
        networks: fixture.managed_networks.iter().cloned().collect(),
        created: 0,
    };
    let mut steps = steps;
    for round in 1..=fixture.rounds {
        docker.apply(&steps, &holding).unwrap_or_else(|e| panic!("{name}, round {round}: {e}"));
        let networks: Vec<String> = docker.networks.iter().cloned().collect();
        steps = plan(&PlanInput {
            desired: &desired,
            containers: &docker.containers,
            holding: &holding,
            managed_networks: &networks,
        });
        if round == fixture.rounds {
            let left: Vec<String> = steps.iter().map(Step::to_string).collect();
            assert!(left.is_empty(), "{name}: still to do after {round} round(s):\n{}", left.join("\n"));
            break;
        }
    }
    for service in desired.iter().filter(|d| !holding.contains(&d.key)) {
        let mine: Vec<&Container> =
            docker.containers.iter().filter(|c| container_key(c).as_ref() == Some(&service.key)).collect();
        assert_eq!(mine.len(), 1, "{name}: {} has {} containers", service.key, mine.len());
        assert_eq!(mine[0].labels[LABEL_CONFIG_HASH], service.config_hash, "{name}: {} is stale", service.key);
    }
    for c in &docker.containers {
        if let Some(k) = container_key(c) {
            let wanted = desired.iter().any(|d| d.key == k) || holding.contains(&k);
            assert!(wanted, "{name}: {} of {k} was left behind", c.id);
        }
    }
    for c in containers.iter().filter(|c| container_key(c).is_none()) {
        assert!(docker.containers.contains(c), "{name}: unlabelled {} was touched", c.id);
    }
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plan")
}

macro_rules! fixtures {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run(stringify!($name)); })*
        const ALL: &[&str] = &[$(stringify!($name)),*];
    };
}

fixtures!(
    fresh_install,
    nothing_to_do,
    image_change_download_then_kill,
    image_change_kill_then_download,
    mixed_strategies,
    config_change_recreates,
    service_removed,
    app_removed_keeps_volumes_and_removes_its_networks,
    container_removed_by_hand_comes_back,
    exited_container_restarted_only_when_kept_running,
    dead_container_replaced,
    created_but_not_started_is_started,
    duplicate_containers_cleaned_to_one,
    unlabelled_containers_untouched,
    holding_services_untouched,
    failed_spec_keeps_the_old_container,
    name_taken_is_freed_before_create,
    container_being_removed_is_waited_for,
);

#[test]
fn every_fixture_file_is_run() {
    let mut files: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".json").to_owned())
        .collect();
    files.sort();
    let mut listed: Vec<&str> = ALL.to_vec();
    listed.sort();
    assert_eq!(files, listed);
}
