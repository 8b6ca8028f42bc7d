//! The background re-resolution: every floating reference a device follows is asked of
//! its registry again, one at a time spread over the refresh interval (HEAD only, so a
//! thousand references do not burst), and at once when a registry webhook names it.
//! A moved tag gives each device that follows it a new target version, now or when its
//! update window opens, as its update policy says. Every decision takes `now` as an
//! argument, so tests inject time instead of sleeping.

use crate::pinning::{Pin, ResolveDigests};
use crate::policy::{decide, Decision, UpdatePolicy};
use crate::refresh_queue::RefreshQueue;
use crate::store::{PendingUpdate, Store};
use crate::targets::{repin, store_target};
use crate::timefmt::rfc3339;
use crate::Error;
use jiff::Timestamp;
use pinion_model::{Reference, TargetState};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often pending updates are checked for an opened window.
const PENDING_CHECK_EVERY: Duration = Duration::from_secs(30);
/// Webhook-named references asked in one go at most (then the schedules get their turn).
const WEBHOOK_BATCH: usize = 64;
/// How often digests of references nobody follows are expired.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);
/// How long the digest of a reference no device follows is kept: long enough for an
/// operator's next POST naming it again to find it when its registry is down.
pub const UNFOLLOWED_DIGEST_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a moved tag did to one device.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A new target version was stored.
    Applied { version: u64 },
    /// Held until the update window opens (`None`: autoUpdate is off, recorded only).
    Pending { apply_after: Option<Timestamp> },
}

pub struct Refresher {
    pub store: Arc<dyn Store>,
    pub resolver: Arc<dyn ResolveDigests + Send + Sync>,
    pub default_policy: UpdatePolicy,
    pub deadline: Duration,
    /// Where each run is counted (`pinion_refresh_last_run_timestamp_seconds`, …).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Refresher {
    /// Asks the registry for each reference now and moves the devices that follow it.
    /// Returns (device, reference, outcome) for every device that a moved tag touched.
    pub fn refresh(&self, references: &[String], now: Timestamp, source: &str) -> Vec<(String, String, Outcome)> {
        let started = Instant::now();
        let outcomes = self.refresh_untimed(references, now, source);
        let ended_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let source = if source == "webhook" { "webhook" } else { "refresh" };
        self.metrics.refresh_ran(source, ended_at.as_secs_f64(), started.elapsed());
        outcomes
    }

    fn refresh_untimed(&self, references: &[String], now: Timestamp, source: &str) -> Vec<(String, String, Outcome)> {
        let mut parsed: Vec<Reference> = references.iter().filter_map(|r| Reference::parse(r).ok()).collect();
        // Only what some device or fleet follows is worth a registry request.
        parsed.retain(|reference| {
            let canonical = reference.canonical();
            let followed = self
                .store
                .devices_using(&canonical)
                .map(|d| !d.is_empty())
                .and_then(|devices| Ok(devices || !self.store.fleets_following(&canonical)?.is_empty()));
            followed.unwrap_or_else(|e| {
                log::error!("{e}");
                false
            })
        });
        parsed.retain(|reference| match self.resolver.admit(reference) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("{source} of {}: ignored: {e}", reference.canonical());
                false
            }
        });
        let answers = self.resolver.resolve_fresh(&parsed, self.deadline);
        let mut outcomes = Vec::new();
        for reference in &parsed {
            let canonical = reference.canonical();
            let digest = match answers.get(reference) {
                Some(Ok(Pin { digest, stale: None, .. })) => digest.clone(),
                Some(Ok(Pin { stale: Some(stale), .. })) => {
                    log::warn!("refresh of {canonical}: {}; devices stay where they are", stale.why);
                    continue;
                }
                Some(Err(e)) => {
                    log::warn!("refresh of {canonical}: {e}");
                    continue;
                }
                None => continue,
            };
            // A fleet's release is frozen: its new digest becomes a new release, in time.
            for fleet in self.store.fleets_following(&canonical).unwrap_or_default() {
                match crate::rollout_driver::tag_seen(self.store.as_ref(), &fleet, &canonical, &digest, now.as_second())
                {
                    Ok(true) => log::info!("fleet {fleet}: {canonical} moved to {digest}"),
                    Ok(false) => {}
                    Err(e) => log::error!("fleet {fleet}, {canonical}: {e}"),
                }
            }
            let devices = match self.store.devices_using(&canonical) {
                Ok(devices) => devices,
                Err(e) => {
                    log::error!("{e}");
                    continue;
                }
            };
            for uuid in devices {
                match self.tag_moved(&uuid, &canonical, &digest, now, source) {
                    Ok(Some(outcome)) => outcomes.push((uuid, canonical.clone(), outcome)),
                    Ok(None) => {}
                    Err(e) => log::error!("device {uuid}, {canonical}: {e}"),
                }
            }
        }
        outcomes
    }

    /// `reference` now points at `digest`; moves `uuid` there if its policy allows.
    fn tag_moved(
        &self,
        uuid: &str,
        reference: &str,
        digest: &str,
        now: Timestamp,
        source: &str,
    ) -> Result<Option<Outcome>, Error> {
        let Some((version, mut state)) = self.current(uuid)? else { return Ok(None) };
        if repin(&mut state, reference, digest, &rfc3339(now.as_second().max(0) as u64)) == 0 {
            return Ok(None);
        }
        let (policy, _) = crate::fleets::effective_policy(self.store.as_ref(), uuid, &self.default_policy)?;
        let outcome = match decide(&policy, now) {
            Decision::ApplyNow => {
                let version =
                    self.store_moved(uuid, version, state, &[(reference.to_string(), digest.to_string())], source)?;
                Outcome::Applied { version }
            }
            Decision::HoldUntil(opening) => {
                self.hold(uuid, version, reference, digest, now, Some(opening))?;
                Outcome::Pending { apply_after: Some(opening) }
            }
            Decision::RecordOnly => {
                self.hold(uuid, version, reference, digest, now, None)?;
                Outcome::Pending { apply_after: None }
            }
        };
        Ok(Some(outcome))
    }

    /// Keeps a moved tag back for `uuid`, whose target was at `from_version` when the
    /// move was seen.
    fn hold(
        &self,
        uuid: &str,
        from_version: u64,
        reference: &str,
        digest: &str,
        now: Timestamp,
        apply_after: Option<Timestamp>,
    ) -> Result<(), Error> {
        log::info!(
            "device {uuid}: {reference} moved to {digest}; held {}",
            match apply_after {
                Some(t) => format!("until the update window opens at {t}"),
                None => "(autoUpdate is off)".to_string(),
            }
        );
        self.store.add_pending_update(&PendingUpdate {
            device_uuid: uuid.to_string(),
            reference: reference.to_string(),
            digest: digest.to_string(),
            detected_at: rfc3339(now.as_second().max(0) as u64),
            apply_after: apply_after.map(|t| t.as_second()),
            from_version,
        })
    }

    /// Applies the pending updates whose window has opened by `now`. Returns how many
    /// devices got a new version.
    pub fn apply_due(&self, now: Timestamp) -> usize {
        let due = match self.store.due_pending_updates(now.as_second()) {
            Ok(due) => due,
            Err(e) => {
                log::error!("{e}");
                return 0;
            }
        };
        let mut by_device: BTreeMap<String, Vec<PendingUpdate>> = BTreeMap::new();
        for update in due {
            by_device.entry(update.device_uuid.clone()).or_default().push(update);
        }
        let mut applied = 0;
        for (uuid, updates) in by_device {
            match self.apply_pending(&uuid, &updates, now) {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(e) => log::error!("device {uuid}: pending updates not applied: {e}"),
            }
        }
        applied
    }

    fn apply_pending(&self, uuid: &str, updates: &[PendingUpdate], now: Timestamp) -> Result<bool, Error> {
        let references: Vec<String> = updates.iter().map(|u| u.reference.clone()).collect();
        let Some((version, mut state)) = self.current(uuid)? else {
            self.store.clear_pending_updates(uuid, Some(&references))?;
            return Ok(false);
        };
        // Made from a version the target has since left (the operator wrote another):
        // the operator's version stands, the held digest is dropped.
        let (current, stale): (Vec<&PendingUpdate>, Vec<&PendingUpdate>) =
            updates.iter().partition(|u| u.from_version == 0 || u.from_version == version);
        if !stale.is_empty() {
            let stale: Vec<String> = stale.iter().map(|u| u.reference.clone()).collect();
            log::info!("device {uuid}: target moved on to version {version}; held {} dropped", stale.join(", "));
            self.store.clear_pending_updates(uuid, Some(&stale))?;
        }
        if current.is_empty() {
            return Ok(false);
        }
        let (policy, _) = crate::fleets::effective_policy(self.store.as_ref(), uuid, &self.default_policy)?;
        match decide(&policy, now) {
            Decision::ApplyNow => {}
            Decision::HoldUntil(opening) => {
                for update in current {
                    self.hold(uuid, version, &update.reference, &update.digest, now, Some(opening))?;
                }
                return Ok(false);
            }
            Decision::RecordOnly => return Ok(false),
        }
        let stamp = rfc3339(now.as_second().max(0) as u64);
        let moves: Vec<(String, String)> = current.iter().map(|u| (u.reference.clone(), u.digest.clone())).collect();
        let changed: usize = moves.iter().map(|(reference, digest)| repin(&mut state, reference, digest, &stamp)).sum();
        if changed > 0 {
            self.store_moved(uuid, version, state, &moves, "window")?;
        }
        let applied: Vec<String> = moves.into_iter().map(|(reference, _)| reference).collect();
        self.store.clear_pending_updates(uuid, Some(&applied))?;
        Ok(changed > 0)
    }

    fn current(&self, uuid: &str) -> Result<Option<(u64, TargetState)>, Error> {
        let Some(target) = self.store.target(uuid)? else { return Ok(None) };
        let state = serde_json::from_str(&target.state).map_err(|e| Error::Store {
            op: "reading a target state",
            reason: format!("stored state of {uuid} v{} is not valid: {e}", target.version),
        })?;
        Ok(Some((target.version, state)))
    }

    /// Stores the re-pinned state, unless the operator wrote a version meanwhile (then
    /// the next refresh looks again at the operator's version).
    fn store_moved(
        &self,
        uuid: &str,
        expected: u64,
        state: TargetState,
        updates: &[(String, String)],
        source: &str,
    ) -> Result<u64, Error> {
        let version = store_target(self.store.as_ref(), uuid, &state, source, Some(expected))?;
        for (reference, digest) in updates {
            log::info!("device {uuid}: {reference} moved to {digest} ({source}); target version {version}");
        }
        Ok(version)
    }

    /// Runs for as long as the process: one tracked reference every `interval / n`
    /// (`interval` zero: only webhook requests), webhook-named references a batch at a
    /// time as they come, and, each on its own schedule that webhooks cannot hold up,
    /// the pending updates whose window opened (every 30 s) and the expiry of digests no
    /// device follows (hourly).
    pub fn run(&self, interval: Duration, requests: &RefreshQueue) {
        let mut queue: VecDeque<String> = VecDeque::new();
        let start = Instant::now();
        let mut next_step = start + interval.min(Duration::from_secs(60));
        let mut next_pending_check = start;
        let mut next_expiry = start + EXPIRE_EVERY;
        loop {
            let mut wake = next_pending_check.min(next_expiry);
            if !interval.is_zero() {
                wake = wake.min(next_step);
            }
            let named = requests.take(WEBHOOK_BATCH, wake.saturating_duration_since(Instant::now()));
            if !named.is_empty() {
                self.refresh(&named, Timestamp::now(), "webhook");
            }
            let now = Instant::now();
            // Replicas on one database: the periodic work runs on the one holding the
            // lease; the others keep their schedule and try again when it comes round.
            // Webhook-named references (above) are refreshed wherever the webhook lands.
            let due = now >= next_pending_check || now >= next_expiry || (!interval.is_zero() && now >= next_step);
            if due && !self.leads() {
                next_pending_check = next_pending_check.max(now + PENDING_CHECK_EVERY);
                next_expiry = next_expiry.max(now + PENDING_CHECK_EVERY);
                if !interval.is_zero() {
                    next_step = next_step.max(now + interval.min(PENDING_CHECK_EVERY));
                }
                continue;
            }
            if now >= next_pending_check {
                self.apply_due(Timestamp::now());
                next_pending_check = now + PENDING_CHECK_EVERY;
            }
            if now >= next_expiry {
                self.expire_unfollowed_digests(Timestamp::now());
                next_expiry = now + EXPIRE_EVERY;
            }
            if !interval.is_zero() && now >= next_step {
                if queue.is_empty() {
                    queue = match self.store.tracked_images() {
                        Ok(images) => images.into_iter().map(|i| i.reference).collect(),
                        Err(e) => {
                            log::error!("{e}");
                            VecDeque::new()
                        }
                    };
                }
                let step = interval / (queue.len().max(1) as u32);
                if let Some(reference) = queue.pop_front() {
                    self.refresh(&[reference], Timestamp::now(), "refresh");
                }
                next_step = now + step.max(Duration::from_millis(100));
            }
        }
    }

    /// Whether this replica runs the periodic work now (`Store::lead`); a database that
    /// cannot tell is logged and counts as not.
    fn leads(&self) -> bool {
        self.store.lead().unwrap_or_else(|e| {
            log::error!("{e}");
            false
        })
    }

    /// Drops what the digest cache knows of references no device has followed for
    /// `UNFOLLOWED_DIGEST_TTL` (a webhook may have named them, or a device stopped
    /// following them). Returns how many went.
    pub fn expire_unfollowed_digests(&self, now: Timestamp) -> usize {
        let before = now.as_second() - UNFOLLOWED_DIGEST_TTL.as_secs() as i64;
        match self.store.expire_unfollowed_digests(before) {
            Ok(expired) => {
                if expired > 0 {
                    log::info!("{expired} digests of references no device follows expired");
                }
                expired
            }
            Err(e) => {
                log::error!("{e}");
                0
            }
        }
    }
}
