//! The agent's loop: poll (ETag) → store → plan → apply → report, once per poll
//! interval with jitter. The poll backs off while the server is away; reconciling goes
//! on from the stored target regardless, so containers keep running, and come back
//! when removed, without network. While a new deployment is in probation, the agent
//! reconciles every few seconds in between (without polling), so that one failing is
//! caught and rolled back (`probation.rs`). The last lines of a deployment that failed
//! go to the server after the cycle that saw it fail, while the server answers polls
//! (`failure_logs.rs`).

use crate::apply::{apply, retry_backoff, Activity};
use crate::client::{Poll, ServerClient};
use crate::clock::{self, WallClockWatch};
use crate::config::Config;
use crate::engine::{Container, DockerEngine, Engine, LABEL_CONFIG_HASH};
use crate::failure_logs::{failed_starts, FailureLogs};
use crate::host_limits::{self, LoggedOnce};
use crate::identity::ensure_identity;
use crate::image_gc;
use crate::ownership::{Owner, MACHINE_ID_PATH};
use crate::plan::{container_key, plan, PlanInput, Step};
use crate::probation::Probation;
use crate::registry_auth::RegistryAuth;
use crate::report::{build_report, local_ip, os_version, DeviceInfo, ReportInput};
use crate::spec::{DesiredService, ServiceKey};
use crate::store::{unix_now, AgentStore, Identity, ServiceRecord};
use crate::target_services::TargetServices;
use crate::tls::Trust;
use crate::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use ureq::tls::TlsConfig;

/// Timeout of each request to the server.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between polls while the server is away.
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Progress reports during a pull go out at most this often.
const PROGRESS_REPORT_EVERY: Duration = Duration::from_secs(5);
/// How often deployments in probation are looked at.
const PROBATION_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Runs until the process is stopped. Errors here are the ones the agent cannot go on
/// from (no server configured, no identity, its database unusable).
pub fn run(config: Config) -> Result<(), Error> {
    crate::memory::tune_allocator();
    // Both refuse before anything is opened or connected (exit 78).
    let server = config.server_url()?.to_string();
    let trust = match &config.ca_file {
        // Plain http (loopback, or allowed): no CA is ever asked, and the system bundle
        // (150 KB of certificates, kept for the process's life) is not read.
        None if !server.to_ascii_lowercase().starts_with("https:") => {
            Trust { config: TlsConfig::default(), description: "no CA: plain http".into() }
        }
        ca_file => crate::tls::server_trust(ca_file.as_deref(), &crate::tls::system_ca_bundle())?,
    };
    let store = AgentStore::open(&config.db)?;
    let client = ServerClient::new(&server, SERVER_TIMEOUT, trust.config);
    log::info!(
        "pinion-agent {} starting; server {server} (trusting {}), database {}",
        env!("CARGO_PKG_VERSION"),
        trust.description,
        config.db.display()
    );

    let identity = wait_for_identity(&config, &store, &client)?;
    let state_dir = config.db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let owner = Owner::for_gateway(state_dir, Path::new(MACHINE_ID_PATH), &identity.device_key);
    let engine = wait_for_engine(&config);
    pinion_systemd::ready();
    let mut agent = Agent {
        info: DeviceInfo { os_version: os_version(), local_ip: server_host(&server).and_then(|h| local_ip(&h)) },
        probation: Probation::new(config.probation),
        failure_logs: FailureLogs::new(),
        config,
        store,
        client,
        identity,
        engine,
        owner,
        foreign_seen: BTreeSet::new(),
        wall_clock: WallClockWatch::default(),
        images_to_collect: true,
        last_cycle_error: None,
        invalid_logged: LoggedOnce::default(),
        poll_failures: 0,
        next_poll: clock::since_boot(),
        last_report: None,
        worked: true,
        target_services: TargetServices::default(),
    };
    loop {
        agent.cycle();
        agent.wait();
    }
}

fn wait_for_identity(config: &Config, store: &AgentStore, client: &ServerClient) -> Result<Identity, Error> {
    let mut attempt = 0;
    loop {
        if let Some(identity) = ensure_identity(config, store, client)? {
            return Ok(identity);
        }
        attempt += 1;
        std::thread::sleep(backoff(config.poll_interval, attempt));
    }
}

fn wait_for_engine(config: &Config) -> DockerEngine {
    let mut attempt = 0;
    loop {
        match DockerEngine::connect(&config.docker_socket) {
            Ok(engine) => return engine,
            Err(e) => {
                attempt += 1;
                log::warn!("{e}; retrying");
                std::thread::sleep(backoff(Duration::from_secs(2), attempt));
            }
        }
    }
}

struct Agent {
    config: Config,
    store: AgentStore,
    client: ServerClient,
    identity: Identity,
    engine: DockerEngine,
    info: DeviceInfo,
    probation: Probation,
    /// Last lines of failed deployments, waiting to be sent.
    failure_logs: FailureLogs,
    /// Whose containers are the agent's.
    owner: Owner,
    /// Containers with pinion's labels that are not the agent's, already logged.
    foreign_seen: BTreeSet<String>,
    /// Notices the wall clock stepping (`clock.rs`).
    wall_clock: WallClockWatch,
    /// Something was deployed (or the agent started): unused images are collected once
    /// no deployment is in probation (`image_gc.rs`).
    images_to_collect: bool,
    /// The error the last cycle ended with, already in the event log.
    last_cycle_error: Option<String>,
    /// Invalid and refused services, logged when they appear rather than every cycle.
    invalid_logged: LoggedOnce,
    poll_failures: u32,
    /// When the next poll is due, as time since boot (`clock::since_boot`, which counts
    /// suspend: a gateway waking from one polls at once).
    next_poll: Duration,
    /// The last report delivered, and when.
    last_report: Option<(String, Duration)>,
    /// The stored target's services, made once per target.
    target_services: TargetServices,
    /// Something was done since the heap was last trimmed (a new target, steps applied,
    /// the start): what that work freed goes back to the kernel (`memory.rs`).
    worked: bool,
}

impl Agent {
    fn cycle(&mut self) {
        // While the server is away, a deployment in probation is watched on time rather
        // than after a poll's timeout: the next poll waits until probation is over.
        if clock::since_boot() >= self.next_poll && !(self.server_away() && self.probation.busy()) {
            self.poll();
        }
        self.reconcile_logged();
    }

    /// The last poll failed: the server is away (down, unreachable, or refusing this
    /// device). Reports and log uploads wait for a poll to succeed.
    fn server_away(&self) -> bool {
        self.poll_failures > 0
    }

    fn reconcile_logged(&mut self) {
        match self.reconcile() {
            Err(e) => {
                log::error!("{e}");
                // The event log gets an error once, not every cycle it lasts (the flash).
                let message = e.to_string();
                if self.last_cycle_error.as_deref() != Some(message.as_str()) {
                    let _ = self.store.log_event("error", &message);
                    self.last_cycle_error = Some(message);
                }
            }
            Ok(()) => self.last_cycle_error = None,
        }
        // Not while the server is away: each try would wait for its timeout.
        if !self.server_away() {
            self.failure_logs.send(&self.client, &self.identity.uuid, &self.identity.device_key);
        }
        if std::mem::take(&mut self.worked) {
            crate::memory::release_free_memory();
        }
    }

    /// Sleeps until the next cycle, reconciling every few seconds meanwhile while a
    /// deployment is in probation or a rollback waits.
    fn wait(&mut self) {
        let next_cycle = Instant::now() + jittered(self.config.poll_interval);
        while self.probation.busy() && Instant::now() + PROBATION_CHECK_EVERY < next_cycle {
            std::thread::sleep(PROBATION_CHECK_EVERY);
            self.reconcile_logged();
        }
        std::thread::sleep(next_cycle.saturating_duration_since(Instant::now()));
    }

    fn poll(&mut self) {
        let etag = self.store.target().ok().flatten().and_then(|t| t.etag.clone());
        match self.client.poll(&self.identity.uuid, &self.identity.device_key, etag.as_deref()) {
            Ok(Poll::NotModified) => self.poll_succeeded(),
            Ok(Poll::Changed { etag, state }) => {
                log::info!("new target state (ETag {})", etag.as_deref().unwrap_or("none"));
                self.worked = true;
                match self.store.save_target(etag.as_deref(), &state) {
                    Ok(()) => {
                        let _ = self.store.log_event("info", &format!("new target {}", etag.unwrap_or_default()));
                        self.poll_succeeded();
                    }
                    Err(e) => log::error!("{e}"),
                }
            }
            Err(e) => {
                self.poll_failures += 1;
                let wait = backoff(self.config.poll_interval, self.poll_failures).min(MAX_POLL_BACKOFF);
                log::warn!("poll failed ({} in a row), next in {} s: {e}", self.poll_failures, wait.as_secs());
                if matches!(e, Error::ServerStatus { status: 401, .. }) {
                    log::error!(
                        "the server does not know this device's key (deleted, or its key reset); containers \
                         stay as they are. To register again, the operator resets the key and this \
                         gateway's database ({}) is removed",
                        self.config.db.display()
                    );
                }
                self.next_poll = clock::since_boot() + wait;
            }
        }
    }

    fn poll_succeeded(&mut self) {
        if self.poll_failures > 0 {
            log::info!("server reachable again");
        }
        self.poll_failures = 0;
        self.next_poll = clock::since_boot();
    }

    fn reconcile(&mut self) -> Result<(), Error> {
        let (target_services, mut invalid) = self.target_services.of(self.store.target()?)?;
        // What this gateway refuses is never created: held and reported like an invalid service.
        let limits = self.config.host_limits();
        let target_services = host_limits::enforce(&limits, target_services, &mut invalid, &host_limits::real_path);
        let now = clock::now();
        if let Some(step) = self.wall_clock.step(unix_now(), now.uptime) {
            log::info!("the wall clock stepped {step:+} s; probation and retries go by the time since boot");
        }
        self.probation.watch(&self.engine, &self.store, &target_services, &mut self.failure_logs, &now)?;
        // The target's services, but the deployment put back where one failed probation
        // (judged again: the limits may have closed since it ran).
        let desired = self.probation.effective(&self.store, target_services)?;
        let desired = host_limits::enforce(&limits, desired, &mut invalid, &host_limits::real_path);
        for message in self.invalid_logged.fresh(&invalid) {
            log::error!("{message}");
            let _ = self.store.log_event("error", &message);
        }
        let records = self.store.services()?;
        let containers = self.owned_containers(&records)?;
        let mut holding: BTreeSet<ServiceKey> = invalid.iter().map(|(key, _)| key.clone()).collect();
        for record in records.iter() {
            let same_attempt = desired
                .iter()
                .any(|d| d.key == record.key && d.image == record.image && d.config_hash == record.config_hash);
            if same_attempt && record.retry_after.as_ref().is_some_and(|at| at.is_after(&now)) {
                holding.insert(record.key.clone());
            }
        }
        let networks = self.engine.managed_networks()?;
        let plan_with = |holding: &BTreeSet<ServiceKey>| {
            plan(&PlanInput { desired: &desired, containers: &containers, holding, managed_networks: &networks })
        };
        let mut steps = plan_with(&holding);
        // Low on disk: a service whose image must be pulled is held before anything is
        // done for it, so kill-then-download does not stop the old container first.
        let short_of_disk = self.short_of_disk(&steps, &desired);
        if !short_of_disk.is_empty() {
            holding.extend(short_of_disk.keys().cloned());
            steps = plan_with(&holding);
        }
        let mut activities = short_of_disk;
        if !steps.is_empty() {
            self.worked = true;
            log::info!("applying {} step(s)", steps.len());
            activities.extend(self.apply(&steps, &desired, &invalid, &containers));
        }
        if let Err(e) = self.probation.after_apply(&self.store, &desired, &activities, &clock::now()) {
            log::error!("{e}");
        }
        // Nothing applied: what was read before still holds (no second read each idle cycle).
        let (containers, records) = if steps.is_empty() {
            (containers, records)
        } else {
            let records = self.store.services()?;
            (self.owned_containers(&records)?, records)
        };
        for failed in failed_starts(&steps, &desired, &activities, &containers) {
            self.failure_logs.collect(&self.engine, failed.service, failed.container, &failed.why);
        }
        for (wanted, container) in unrecorded(&desired, &containers, &records) {
            let short = container.get(..12).unwrap_or(container);
            let message = format!("{}: {short} runs {} but was not recorded; recorded it", wanted.key, wanted.image);
            log::info!("{message}");
            // A store that takes no write (a full disk) must not keep the report back.
            match self.store.record_deployed(wanted, container) {
                Ok(()) => drop(self.store.log_event("info", &message)),
                Err(e) => log::error!("{e}"),
            }
        }
        self.images_to_collect |= !steps.is_empty();
        if self.images_to_collect && !self.probation.busy() {
            self.images_to_collect = false;
            let in_use = self.images_in_use(&desired, &containers, &records);
            image_gc::collect(&self.engine, &self.store, &in_use);
        }
        self.report(&desired, &invalid, &containers, &activities);
        Ok(())
    }

    /// The services `steps` would pull an image for while less than `min_free_disk` is
    /// free where Docker keeps images, each with its `low_disk` failure (recorded with
    /// backoff, so the check is not made every cycle). Free space is looked at only when
    /// something is to be pulled.
    fn short_of_disk(&self, steps: &[Step], desired: &[DesiredService]) -> BTreeMap<ServiceKey, Activity> {
        let min_free = self.config.min_free_disk;
        let pulls: Vec<(&ServiceKey, &String)> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Pull { service, image } => Some((service, image)),
                _ => None,
            })
            .collect();
        if min_free == 0 || pulls.is_empty() {
            return BTreeMap::new();
        }
        let Some(free) = self.engine.free_bytes().ok().flatten().filter(|free| *free < min_free) else {
            return BTreeMap::new();
        };
        let mut short = BTreeMap::new();
        for (key, image) in pulls {
            if self.engine.has_image(image).unwrap_or(false) {
                continue;
            }
            let message = Error::LowDisk { image: image.clone(), free, min_free }.to_string();
            log::warn!("{key}: {message}");
            if let Some(wanted) = desired.iter().find(|d| &d.key == key) {
                let recorded =
                    self.store.record_failure(key, &wanted.image, &wanted.config_hash, &message, &retry_backoff);
                if let Err(e) = recorded {
                    log::error!("{e}");
                }
            }
            short.insert(key.clone(), Activity::Failed { kind: "low_disk", message });
        }
        short
    }

    /// Images a service runs, would be put back by a rollback, or a container uses.
    fn images_in_use(
        &self,
        desired: &[DesiredService],
        containers: &[Container],
        records: &[ServiceRecord],
    ) -> BTreeSet<String> {
        let mut in_use: BTreeSet<String> = desired.iter().map(|d| d.image.clone()).collect();
        in_use.extend(containers.iter().map(|c| c.image.clone()));
        for record in records {
            in_use.insert(record.image.clone());
            if let Ok(deployments) = self.store.deployments(&record.key) {
                in_use.extend(deployments.current.into_iter().chain(deployments.previous).map(|d| d.image));
            }
            if let Some(rollback) = &record.rollback {
                in_use.insert(rollback.from_image.clone());
                in_use.insert(rollback.to.image.clone());
            }
        }
        in_use
    }

    /// The containers that are this agent's (`ownership.rs`); others labelled as pinion's
    /// are left alone, and said so once each.
    fn owned_containers(&mut self, records: &[ServiceRecord]) -> Result<Vec<Container>, Error> {
        let recorded: BTreeSet<&str> = records.iter().filter_map(|r| r.container_id.as_deref()).collect();
        let (owned, foreign) = self.owner.split(self.engine.managed_containers()?, &recorded);
        for container in &foreign {
            if !self.foreign_seen.contains(&container.id) {
                log::warn!(
                    "container {} ({}) carries pinion's labels but was not made by this agent: left alone",
                    container.name,
                    container.id.get(..12).unwrap_or(&container.id)
                );
            }
        }
        // Only the ones there now: containers run by hand again and again do not grow it.
        self.foreign_seen = foreign.into_iter().map(|c| c.id).collect();
        Ok(owned)
    }

    fn apply(
        &mut self,
        steps: &[crate::plan::Step],
        desired: &[DesiredService],
        invalid: &[(ServiceKey, Error)],
        containers: &[Container],
    ) -> BTreeMap<ServiceKey, Activity> {
        let mut live: BTreeMap<ServiceKey, Activity> = BTreeMap::new();
        let mut last_progress = Instant::now() - PROGRESS_REPORT_EVERY;
        let (store, engine, client, identity, info) =
            (&self.store, &self.engine, &self.client, &self.identity, &self.info);
        let (probation_period, failed_probation) = (self.config.probation, self.probation.failed());
        // Progress goes out only while the server answers: a pull is not held up by a
        // report's timeout.
        let server_away = self.server_away();
        let records = store.services().unwrap_or_default();
        let mut on_activity = |key: &ServiceKey, activity: Option<&Activity>| {
            match activity {
                Some(a) => live.insert(key.clone(), a.clone()),
                None => live.remove(key),
            };
            if !server_away && last_progress.elapsed() >= PROGRESS_REPORT_EVERY {
                last_progress = Instant::now();
                let report = build_report(&ReportInput {
                    uuid: &identity.uuid,
                    desired,
                    invalid,
                    containers,
                    activities: &live,
                    records: &records,
                    probation_period,
                    failed_probation,
                    info,
                });
                if let Err(e) = client.report(&identity.device_key, &report.to_string()) {
                    log::debug!("progress report not delivered: {e}");
                }
            }
        };
        // Pulls from a private registry carry the credentials the server sent with the target.
        let registry_auth = RegistryAuth::from_store(store);
        // Every container made carries this gateway's owner label.
        let steps: Vec<Step> = steps
            .iter()
            .map(|step| match step {
                Step::CreateAndStart { service, name, body } => Step::CreateAndStart {
                    service: service.clone(),
                    name: name.clone(),
                    body: self.owner.stamp(name, body),
                },
                other => other.clone(),
            })
            .collect();
        let min_free = self.config.min_free_disk;
        apply(engine, store, &steps, desired, min_free, &|image| registry_auth.header_for(image), &mut on_activity)
    }

    /// Reports when the state changed since the last delivered report, or as a heartbeat;
    /// not while the server is away (the state is built anew each cycle, so the one that
    /// goes out when it is back is the current one, and nothing is kept on disk).
    fn report(
        &mut self,
        desired: &[DesiredService],
        invalid: &[(ServiceKey, Error)],
        containers: &[Container],
        activities: &BTreeMap<ServiceKey, Activity>,
    ) {
        if self.server_away() {
            return;
        }
        let records = self.store.services().unwrap_or_default();
        let body = build_report(&ReportInput {
            uuid: &self.identity.uuid,
            desired,
            invalid,
            containers,
            activities,
            records: &records,
            probation_period: self.config.probation,
            failed_probation: self.probation.failed(),
            info: &self.info,
        })
        .to_string();
        let due = match &self.last_report {
            Some((sent, at)) => *sent != body || clock::since_boot().saturating_sub(*at) >= self.config.report_interval,
            None => true,
        };
        if !due {
            return;
        }
        match self.client.report(&self.identity.device_key, &body) {
            Ok(()) => self.last_report = Some((body, clock::since_boot())),
            // The next poll says whether the server is away; until then, one try a cycle.
            Err(e) => log::debug!("report not delivered, the current state goes with a later one: {e}"),
        }
    }
}

/// Desired services running in a container of theirs that the store does not record as
/// their deployment, with the container's id: the agent died between starting it and
/// recording it (Docker finishes a start its client gave up on), or lost its database.
fn unrecorded<'a>(
    desired: &'a [DesiredService],
    containers: &'a [Container],
    records: &[ServiceRecord],
) -> Vec<(&'a DesiredService, &'a str)> {
    desired
        .iter()
        .filter_map(|wanted| {
            let running = containers.iter().find(|c| {
                c.state == "running"
                    && container_key(c).as_ref() == Some(&wanted.key)
                    && c.labels.get(LABEL_CONFIG_HASH) == Some(&wanted.config_hash)
            })?;
            let recorded = records.iter().any(|r| {
                r.key == wanted.key
                    && r.image == wanted.image
                    && r.config_hash == wanted.config_hash
                    && r.container_id.as_deref() == Some(running.id.as_str())
                    && r.last_error.is_none()
            });
            (!recorded).then_some((wanted, running.id.as_str()))
        })
        .collect()
}

/// `base` doubled per failure after the first, capped at 15 minutes, with jitter.
fn backoff(base: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(10);
    jittered(base.saturating_mul(factor).min(MAX_POLL_BACKOFF))
}

/// `d` ± 10 %, so a fleet that lost its server does not come back in step.
fn jittered(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::getrandom(&mut byte);
    let tenth = d / 10;
    d - tenth + tenth * 2 * u32::from(byte[0]) / 255
}

/// `host:port` of the server URL, for finding the local address that reaches it.
fn server_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next()?;
    let default_port = if url.starts_with("https") { 443 } else { 80 };
    Some(if authority.contains(':') { authority.to_string() } else { format!("{authority}:{default_port}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(10);
        assert!(backoff(base, 1) >= Duration::from_secs(9) && backoff(base, 1) <= Duration::from_secs(11));
        assert!(backoff(base, 3) >= Duration::from_secs(36) && backoff(base, 3) <= Duration::from_secs(44));
        assert!(backoff(base, 40) <= MAX_POLL_BACKOFF + MAX_POLL_BACKOFF / 10);
    }

    #[test]
    fn a_running_container_not_recorded_as_the_deployment_is_found() {
        use crate::engine::{LABEL_APP_ID, LABEL_SERVICE_NAME};
        let (v1, v2) = (DesiredService::example("web", "a@1", "h1"), DesiredService::example("web", "a@2", "h2"));
        let container = |id: &str, hash: &str, state: &str| Container {
            id: id.into(),
            name: "web_1".into(),
            image: String::new(),
            state: state.into(),
            status: String::new(),
            labels: [(LABEL_APP_ID, "1"), (LABEL_SERVICE_NAME, "web"), (LABEL_CONFIG_HASH, hash)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let record = |wanted: &DesiredService, id: &str| ServiceRecord {
            key: wanted.key.clone(),
            image: wanted.image.clone(),
            config_hash: wanted.config_hash.clone(),
            container_id: Some(id.into()),
            failures: 0,
            retry_at: 0,
            last_error: None,
            deployed_at: 1,
            probation_since: None,
            retry_after: None,
            rollback: None,
        };
        let desired = [v2.clone()];
        // Killed after starting v2's container, before recording it: v1 is on record.
        let running_v2 = [container("c2", "h2", "running")];
        let found = unrecorded(&desired, &running_v2, &[record(&v1, "c1")]);
        assert_eq!(found.iter().map(|(d, id)| (d.image.as_str(), *id)).collect::<Vec<_>>(), [("a@2", "c2")]);
        assert!(unrecorded(&desired, &running_v2, &[]).len() == 1, "nothing on record at all");
        assert!(unrecorded(&desired, &running_v2, &[record(&v2, "c2")]).is_empty(), "recorded");
        // Not yet started, or still the old one: nothing to record.
        assert!(unrecorded(&desired, &[container("c2", "h2", "created")], &[record(&v1, "c1")]).is_empty());
        assert!(unrecorded(&desired, &[container("c1", "h1", "running")], &[record(&v1, "c1")]).is_empty());
    }

    #[test]
    fn server_hosts() {
        assert_eq!(server_host("http://127.0.0.1:3002").as_deref(), Some("127.0.0.1:3002"));
        assert_eq!(server_host("https://pinion.example.com/base").as_deref(), Some("pinion.example.com:443"));
    }
}
