//! Carries rollouts out: starts them, and every tick (and after each operator command)
//! feeds each active rollout's devices, as their reports, polls and update windows show
//! them, to the pure `rollout::step`, then applies its decision to the store — targets
//! first, then the rollout's rows, so a crash in between repeats a write rather than
//! losing one. Also turns a fleet's moved tags into new releases (`follow_tags`).

use crate::fleets::{bring_fleet_to_release, bring_to_release, followed_release, release_state};
use crate::policy::{window_contains, UpdatePolicy};
use crate::presence::Presence;
use crate::rollout::{
    assign_waves, observe, DeviceStatus, FleetMember, Observation, ReleaseImages, RolloutDevice, RolloutEvent,
    RolloutPlan, RolloutProgress, RolloutStatus, Standing, Step,
};
use crate::store::{Event, Fleet, FleetUpdate, Membership, RolloutDeviceRow, Store, StoredRollout};
use crate::timefmt::rfc3339_now;
use crate::Error;
use jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a rollout's decisions need besides the store.
pub struct RolloutContext<'a> {
    pub store: &'a dyn Store,
    pub presence: &'a Presence,
    /// The policy of devices and fleets without their own.
    pub default_policy: &'a UpdatePolicy,
}

/// How a rollout is asked for.
pub struct RolloutRequest {
    pub release: u64,
    pub plan: RolloutPlan,
    pub supersede: bool,
}

/// Devices per wave, as `assign_waves` puts the fleet's devices.
pub fn plan_waves(store: &dyn Store, fleet: &str, plan: &RolloutPlan) -> Result<Vec<Vec<String>>, Error> {
    let members: Vec<FleetMember> =
        store.fleet_members(fleet)?.into_iter().map(|m| FleetMember { uuid: m.uuid, labels: m.labels }).collect();
    assign_waves(&plan.waves, &members)
}

/// Stores a rollout and takes its first step (its first wave starts now, unless it waits
/// to supersede the running one). Its id.
pub fn start_rollout(ctx: &RolloutContext<'_>, fleet: &Fleet, request: RolloutRequest) -> Result<u64, Error> {
    let release = ctx
        .store
        .release(&fleet.name, request.release)?
        .ok_or_else(|| Error::NotFound { what: format!("release {} of fleet {}", request.release, fleet.name) })?;
    let waves = plan_waves(ctx.store, &fleet.name, &request.plan)?;
    let members: HashMap<String, Membership> =
        ctx.store.fleet_members(&fleet.name)?.into_iter().map(|m| (m.uuid.clone(), m)).collect();
    let mut rows = Vec::new();
    for (wave, uuids) in waves.iter().enumerate() {
        for uuid in uuids {
            rows.push(new_row(uuid, wave, members.get(uuid)));
        }
    }
    let status = if request.supersede && ctx.store.active_rollouts()?.iter().any(|r| r.fleet == fleet.name) {
        RolloutStatus::Waiting
    } else {
        RolloutStatus::Running
    };
    let rollout = StoredRollout {
        id: 0,
        fleet: fleet.name.clone(),
        release: release.id,
        previous_release: fleet.current_release,
        plan: request.plan,
        progress: RolloutProgress {
            status,
            current_wave: None,
            wave_started_at: None,
            wave_count: waves.len().max(1),
            superseded_by: None,
            failures_accepted: 0,
        },
        created_at: rfc3339_now(),
        updated_at: rfc3339_now(),
    };
    let id = ctx.store.create_rollout(&rollout, &rows)?;
    ctx.store.set_fleet_references(&fleet.name, &release.references)?;
    let sizes: Vec<String> = waves.iter().map(|w| w.len().to_string()).collect();
    let message = match status {
        RolloutStatus::Waiting => format!(
            "rollout {id} of release {} waits to supersede the running rollout at the end of its wave (waves of {})",
            release.id,
            sizes.join(", ")
        ),
        _ => format!("rollout {id} of release {} created: waves of {} devices", release.id, sizes.join(", ")),
    };
    log::info!("fleet {}: {message}", fleet.name);
    ctx.store.record_events(&[fleet_event(&rollout_with_id(&rollout, id), "rollout-created", None, message)])?;
    if status == RolloutStatus::Running {
        advance(ctx, id, unix_now())?;
    }
    Ok(id)
}

fn rollout_with_id(rollout: &StoredRollout, id: u64) -> StoredRollout {
    StoredRollout { id, ..rollout.clone() }
}

fn new_row(uuid: &str, wave: usize, member: Option<&Membership>) -> RolloutDeviceRow {
    RolloutDeviceRow {
        device: RolloutDevice {
            uuid: uuid.to_string(),
            wave,
            status: DeviceStatus::Pending,
            reason: None,
            updating_since: None,
            healthy_at: None,
            assigned: false,
            running_since: None,
            fingerprint: None,
            observation: Observation::Updating,
        },
        previous_rollout: member.and_then(|m| m.rollout_id),
        previous_release: member.and_then(|m| m.rollout_release),
    }
}

/// One step of rollout `id` at `now` (unix seconds).
pub fn advance(ctx: &RolloutContext<'_>, id: u64, now: i64) -> Result<(), Error> {
    decide(ctx, id, |plan, progress, devices| Ok(crate::rollout::step(plan, progress, devices, now)))
}

/// An operator's command to rollout `id` of `fleet`; the rollout as it is after it.
pub fn run_command(
    ctx: &RolloutContext<'_>,
    fleet: &str,
    id: u64,
    command: crate::rollout::Command,
) -> Result<StoredRollout, Error> {
    let rollout = ctx.store.rollout(id)?.filter(|r| r.fleet == fleet);
    if rollout.is_none() {
        return Err(Error::NotFound { what: format!("rollout {id} of fleet {fleet}") });
    }
    let now = unix_now();
    decide(ctx, id, |plan, progress, devices| crate::rollout::command(plan, progress, devices, command, now))?;
    ctx.store.rollout(id)?.ok_or_else(|| Error::NotFound { what: format!("rollout {id}") })
}

/// Reads rollout `id` and what its devices do, lets `decision` decide, applies it.
fn decide(
    ctx: &RolloutContext<'_>,
    id: u64,
    decision: impl FnOnce(&RolloutPlan, &RolloutProgress, &[RolloutDevice]) -> Result<Step, Error>,
) -> Result<(), Error> {
    let rollout = ctx.store.rollout(id)?.ok_or_else(|| Error::NotFound { what: format!("rollout {id}") })?;
    let fleet =
        ctx.store.fleet(&rollout.fleet)?.ok_or_else(|| Error::NotFound { what: format!("fleet {}", rollout.fleet) })?;
    let release = ctx
        .store
        .release(&fleet.name, rollout.release)?
        .ok_or_else(|| Error::NotFound { what: format!("release {} of fleet {}", rollout.release, fleet.name) })?;
    let images = ReleaseImages::of(&release_state(&release)?);
    let members: HashMap<String, Membership> =
        ctx.store.fleet_members(&fleet.name)?.into_iter().map(|m| (m.uuid.clone(), m)).collect();
    let mut rows: Vec<RolloutDeviceRow> = ctx.store.rollout_devices(id)?;
    // Devices that left the fleet (or were deleted) are out of the rollout; those that
    // joined since go into the last wave.
    rows.retain(|row| members.contains_key(&row.device.uuid));
    let mut joined = Vec::new();
    if rollout.progress.status.is_active() {
        let known: std::collections::HashSet<&str> = rows.iter().map(|r| r.device.uuid.as_str()).collect();
        let last = rollout.progress.wave_count.saturating_sub(1);
        for member in members.values().filter(|m| !known.contains(m.uuid.as_str())) {
            joined.push(new_row(&member.uuid, last, Some(member)));
        }
        rows.extend(joined.iter().cloned());
        // A device given the release whose target no longer comes from this rollout (it
        // left the fleet and came back, or was pinned) starts its wave again.
        for row in rows.iter_mut().filter(|r| r.device.assigned) {
            let member = &members[&row.device.uuid];
            if followed_release(member, Some(&fleet)).release() != Some(rollout.release) {
                row.device = new_row(&row.device.uuid, row.device.wave, None).device;
                joined.push(row.clone());
            }
        }
    }
    let fleet_policy = fleet.policy();
    let own_policies = ctx.store.fleet_device_policies(&fleet.name)?;
    let instant = Instant::now();
    // Update windows are local wall-clock time: the wall clock, whatever it says.
    let timestamp = Timestamp::now();
    let started = rollout.progress.current_wave;
    // Only devices of started waves whose state can still change are looked at, and a
    // wave about to start (its devices may be deferred at once): their reports only.
    let looked_at = |device: &RolloutDevice| {
        let watched = started.is_some_and(|w| device.wave <= w)
            && matches!(device.status, DeviceStatus::Pending | DeviceStatus::Updating | DeviceStatus::Deferred);
        let next = started.map_or(device.wave == 0, |w| device.wave == w + 1);
        watched || next && device.status == DeviceStatus::Pending
    };
    let standings: Vec<(usize, Standing)> = rows
        .iter()
        .enumerate()
        .filter(|(_, row)| looked_at(&row.device))
        .map(|(i, row)| {
            let uuid = &row.device.uuid;
            let presence = Standing {
                online: ctx.presence.online(uuid, instant),
                in_window: in_window(own_policies.get(uuid).or(fleet_policy.as_ref()), ctx.default_policy, timestamp),
                pinned: members[uuid].pinned,
            };
            (i, presence)
        })
        .collect();
    // A device not given the release yet is given it unless it is deferred, and its report
    // only tells that when its window is closed (it is not deferred if it runs the release
    // already): the reports of the others are neither read nor parsed. With 10,000 devices
    // that was every device of the next wave, every tick.
    let wanted: Vec<&str> = standings
        .iter()
        .filter(|(i, presence)| rows[*i].device.assigned || !presence.in_window)
        .map(|(i, _)| rows[*i].device.uuid.as_str())
        .collect();
    let reports = ctx.store.last_reports(&wanted)?;
    for (i, presence) in standings {
        let device = &mut rows[i].device;
        let report: Option<serde_json::Value> = reports.get(&device.uuid).and_then(|r| serde_json::from_str(r).ok());
        device.observation = observe(&images, report.as_ref(), &presence);
    }
    let devices: Vec<RolloutDevice> = rows.iter().map(|r| r.device.clone()).collect();
    let step = decision(&rollout.plan, &rollout.progress, &devices)?;
    apply(ctx, &rollout, &fleet, &release.references, &members, &rows, &joined, step)
}

/// Whether the device's update window (its own, else its fleet's, else the default) is open.
fn in_window(policy: Option<&UpdatePolicy>, default: &UpdatePolicy, now: Timestamp) -> bool {
    policy.unwrap_or(default).update_window.as_ref().is_none_or(|window| window_contains(window, now))
}

#[allow(clippy::too_many_arguments)]
fn apply(
    ctx: &RolloutContext<'_>,
    rollout: &StoredRollout,
    fleet: &Fleet,
    references: &[String],
    members: &HashMap<String, Membership>,
    rows: &[RolloutDeviceRow],
    joined: &[RolloutDeviceRow],
    step: Step,
) -> Result<(), Error> {
    let store = ctx.store;
    let by_uuid: HashMap<&str, &RolloutDeviceRow> = rows.iter().map(|r| (r.device.uuid.as_str(), r)).collect();
    // Targets first: the devices given the release, and those put back.
    if !step.assign.is_empty() {
        store.set_rollout_release(&step.assign, Some(rollout.id), Some(rollout.release))?;
        let given: Vec<Membership> = step
            .assign
            .iter()
            .filter_map(|uuid| members.get(uuid))
            .map(|m| Membership { rollout_id: Some(rollout.id), rollout_release: Some(rollout.release), ..m.clone() })
            .collect();
        bring_to_release(store, fleet, &given)?;
    }
    if !step.revert.is_empty() {
        let mut back: BTreeMap<(Option<u64>, Option<u64>), Vec<String>> = BTreeMap::new();
        for uuid in &step.revert {
            let (rollout_id, release) =
                by_uuid.get(uuid.as_str()).map_or((None, None), |r| (r.previous_rollout, r.previous_release));
            back.entry((rollout_id, release)).or_default().push(uuid.clone());
        }
        for ((rollout_id, release), uuids) in &back {
            store.set_rollout_release(uuids, *rollout_id, *release)?;
        }
        let put_back: Vec<Membership> = step
            .revert
            .iter()
            .filter_map(|uuid| {
                let row = by_uuid.get(uuid.as_str())?;
                let member = members.get(uuid)?;
                Some(Membership {
                    rollout_id: row.previous_rollout,
                    rollout_release: row.previous_release,
                    ..member.clone()
                })
            })
            .collect();
        bring_to_release(store, fleet, &put_back)?;
    }
    // The devices that have the release once the step is applied (a rollback took it back).
    let mut given: std::collections::HashSet<String> =
        rows.iter().filter(|r| r.device.assigned).map(|r| r.device.uuid.clone()).collect();
    for device in &step.changes {
        if device.assigned {
            given.insert(device.uuid.clone());
        } else {
            given.remove(&device.uuid);
        }
    }
    let was_active = rollout.progress.status.is_active();
    match step.progress.status {
        // Its release is the fleet's now (before the rollout is saved as done: a crash in
        // between repeats this step): the devices it could not reach (deferred) get it as
        // they come back, and those that join later too.
        RolloutStatus::Succeeded if was_active => {
            store.set_fleet_release(&fleet.name, rollout.release)?;
            store.set_fleet_references(&fleet.name, references)?;
            bring_fleet_to_release(store, &fleet.name)?;
        }
        RolloutStatus::Aborted | RolloutStatus::RolledBack if was_active => {
            // The fleet follows the tags of its own release again.
            if let Some(current) = fleet.current_release.and_then(|r| store.release(&fleet.name, r).ok().flatten()) {
                store.set_fleet_references(&fleet.name, &current.references)?;
            }
            // A waiting rollout aborted: the one it was to supersede runs on.
            if rollout.progress.status == RolloutStatus::Waiting {
                for mut running in
                    store.active_rollouts()?.into_iter().filter(|r| r.progress.superseded_by == Some(rollout.id))
                {
                    running.progress.superseded_by = None;
                    store.save_rollout(running.id, &running.progress, &[])?;
                }
            }
        }
        _ => {}
    }
    // Then the rollout's own rows: the changed ones and those that joined.
    let mut changed: Vec<RolloutDeviceRow> = joined.to_vec();
    for device in step.changes {
        let Some(row) = by_uuid.get(device.uuid.as_str()) else { continue };
        match changed.iter_mut().find(|r| r.device.uuid == device.uuid) {
            Some(existing) => existing.device = device,
            None => changed.push(RolloutDeviceRow { device, ..(*row).clone() }),
        }
    }
    let progress_changed = step.progress != rollout.progress;
    if progress_changed || !changed.is_empty() {
        store.save_rollout(rollout.id, &step.progress, &changed)?;
    }
    let events: Vec<Event> = step.events.iter().map(|e| rollout_event(rollout, e)).collect();
    for event in &events {
        log::info!("fleet {}: rollout {}: {}", fleet.name, rollout.id, event.message);
    }
    store.record_events(&events)?;
    if step.hand_over {
        if let Some(next) = step.progress.superseded_by {
            hand_over(ctx, rollout, next, &given)?;
        }
    }
    Ok(())
}

/// The waiting rollout `next` takes over from `previous` at its wave boundary: the devices
/// `previous` gave its release go into `next`'s first wave, so the fleet never runs three
/// releases, and `next` takes its first step now.
fn hand_over(
    ctx: &RolloutContext<'_>,
    previous: &StoredRollout,
    next: u64,
    given: &std::collections::HashSet<String>,
) -> Result<(), Error> {
    let Some(mut waiting) = ctx.store.rollout(next)? else { return Ok(()) };
    if waiting.progress.status != RolloutStatus::Waiting {
        return Ok(());
    }
    let mut moved: Vec<RolloutDeviceRow> = ctx.store.rollout_devices(next)?;
    moved.retain(|r| given.contains(&r.device.uuid));
    for row in moved.iter_mut() {
        row.device.wave = 0;
        row.previous_rollout = Some(previous.id);
        row.previous_release = Some(previous.release);
    }
    waiting.progress.status = RolloutStatus::Running;
    ctx.store.save_rollout(next, &waiting.progress, &moved)?;
    let message =
        format!("rollout {next} takes over from rollout {}: {} devices in its first wave", previous.id, moved.len());
    ctx.store.record_events(&[fleet_event(&waiting, "rollout-started", None, message)])?;
    advance(ctx, next, unix_now())
}

fn fleet_event(rollout: &StoredRollout, kind: &str, device: Option<String>, message: String) -> Event {
    Event {
        id: 0,
        at: rfc3339_now(),
        fleet: Some(rollout.fleet.clone()),
        device,
        rollout: Some(rollout.id),
        release: Some(rollout.release),
        kind: kind.to_string(),
        message,
    }
}

fn rollout_event(rollout: &StoredRollout, event: &RolloutEvent) -> Event {
    fleet_event(rollout, event.kind, event.device.clone(), event.message.clone())
}

/// A new digest of `reference` seen for `fleet`: kept until `minimumAge` lets a release
/// be made of it, unless the fleet's newest release has it already.
pub fn tag_seen(store: &dyn Store, fleet: &str, reference: &str, digest: &str, now: i64) -> Result<bool, Error> {
    let Some(head) = head_release(store, fleet)? else { return Ok(false) };
    let mut state = release_state(&head)?;
    if crate::targets::repin(&mut state, reference, digest, &rfc3339_now()) == 0 {
        // The tag is back where the release has it: a move seen before, still waiting for
        // `minimumAge` (a push taken back), is void. Recorded over it, this digest leaves
        // `follow_tags` nothing moved, instead of a release of the digest passed through.
        let taken_back =
            store.fleet_updates()?.iter().any(|u| u.fleet == fleet && u.reference == reference && u.digest != digest);
        if taken_back {
            store.put_fleet_update(&FleetUpdate {
                fleet: fleet.to_string(),
                reference: reference.to_string(),
                digest: digest.to_string(),
                detected_at: now,
            })?;
            let message = format!(
                "{reference} moved back to {digest}, which release {} has: the move before is dropped",
                head.id
            );
            store.record_events(&[crate::fleets::event(fleet, "tag-moved", message)])?;
        }
        return Ok(taken_back);
    }
    let new = store.put_fleet_update(&FleetUpdate {
        fleet: fleet.to_string(),
        reference: reference.to_string(),
        digest: digest.to_string(),
        detected_at: now,
    })?;
    if new {
        let message = format!("{reference} moved to {digest} (release {} follows it)", head.id);
        store.record_events(&[crate::fleets::event(fleet, "tag-moved", message)])?;
    }
    Ok(new)
}

/// The fleet's newest release: its active rollout's, else its current one.
fn head_release(store: &dyn Store, fleet: &str) -> Result<Option<crate::store::Release>, Error> {
    let active = store.active_rollouts()?.into_iter().filter(|r| r.fleet == fleet).map(|r| r.release).max();
    let current = store.fleet(fleet)?.and_then(|f| f.current_release);
    match active.or(current) {
        Some(id) => store.release(fleet, id),
        None => Ok(None),
    }
}

/// Makes releases of the moved tags old enough (`rolloutPlan.minimumAge`), and rolls each
/// out with the fleet's plan when its policy has `autoUpdate` (superseding a running
/// rollout at its wave boundary); otherwise the release waits for an operator.
pub fn follow_tags(ctx: &RolloutContext<'_>, now: i64) -> Result<(), Error> {
    let mut by_fleet: BTreeMap<String, Vec<FleetUpdate>> = BTreeMap::new();
    for update in ctx.store.fleet_updates()? {
        by_fleet.entry(update.fleet.clone()).or_default().push(update);
    }
    let waiting: Vec<String> = ctx
        .store
        .active_rollouts()?
        .into_iter()
        .filter(|r| r.progress.status == RolloutStatus::Waiting)
        .map(|r| r.fleet)
        .collect();
    for (name, updates) in by_fleet {
        // A release already waits to supersede the running rollout: the moved tags wait
        // for it to start (and are made into a release on top of it), so that a fleet
        // never has three releases in flight.
        if waiting.contains(&name) {
            continue;
        }
        let Some(fleet) = ctx.store.fleet(&name)? else { continue };
        let plan = fleet.plan();
        let newest = updates.iter().map(|u| u.detected_at).max().unwrap_or(now);
        if now - newest < plan.minimum_age as i64 {
            continue;
        }
        let Some(head) = head_release(ctx.store, &name)? else {
            ctx.store.delete_fleet_updates(&name)?;
            continue;
        };
        let mut state = release_state(&head)?;
        let stamp = rfc3339_now();
        let mut moved = Vec::new();
        for update in &updates {
            if crate::targets::repin(&mut state, &update.reference, &update.digest, &stamp) > 0 {
                moved.push(format!("{} → {}", update.reference, update.digest));
            }
        }
        let json = serde_json::to_string(&state)
            .map_err(|e| Error::Store { op: "making a release", reason: e.to_string() })?;
        // Made already, by a pass that stopped before it could drop the moved tags.
        let made = ctx.store.releases(&name, None, 1)?.first().is_some_and(|newest| newest.state == json);
        if moved.is_empty() || made {
            ctx.store.delete_fleet_updates(&name)?;
            continue;
        }
        let note = format!("tags moved: {}", moved.join(", "));
        let id = ctx.store.create_release(&name, &json, &head.references, "tag-moved", Some(&note))?;
        // Dropped once the release holds them: a failure before this makes it again, not never.
        ctx.store.delete_fleet_updates(&name)?;
        let mut event = crate::fleets::event(
            &name,
            "release-created",
            format!("release {id} made from release {}: {note}", head.id),
        );
        event.release = Some(id);
        ctx.store.record_events(&[event])?;
        let policy = fleet.policy().unwrap_or_else(|| ctx.default_policy.clone());
        if policy.auto_update {
            let request = RolloutRequest { release: id, plan, supersede: true };
            match start_rollout(ctx, &fleet, request) {
                Ok(rollout) => log::info!("fleet {name}: rollout {rollout} of release {id} started for moved tags"),
                Err(e) => log::warn!("fleet {name}: release {id} not rolled out: {e}"),
            }
        } else {
            let message = format!("release {id} waits for an operator: the fleet's autoUpdate is off");
            ctx.store.record_events(&[crate::fleets::event(&name, "release-waiting", message)])?;
        }
    }
    Ok(())
}

/// One pass: moved tags old enough become releases, then every active rollout steps.
pub fn tick(ctx: &RolloutContext<'_>) {
    let now = unix_now();
    if let Err(e) = follow_tags(ctx, now) {
        log::error!("following fleets' tags: {e}");
    }
    if let Err(e) = start_orphaned(ctx) {
        log::error!("starting waiting rollouts: {e}");
    }
    let rollouts = match ctx.store.active_rollouts() {
        Ok(rollouts) => rollouts,
        Err(e) => {
            log::error!("listing rollouts: {e}");
            return;
        }
    };
    for rollout in rollouts.iter().filter(|r| r.progress.status != RolloutStatus::Waiting) {
        if let Err(e) = advance(ctx, rollout.id, now) {
            log::error!("fleet {}: rollout {}: {e}", rollout.fleet, rollout.id);
        }
    }
}

/// A waiting rollout whose fleet has no running or paused one (the one it waited for
/// ended without handing over: the server stopped in between) starts now.
fn start_orphaned(ctx: &RolloutContext<'_>) -> Result<(), Error> {
    let active = ctx.store.active_rollouts()?;
    let running = |fleet: &str| {
        active
            .iter()
            .any(|r| r.fleet == fleet && matches!(r.progress.status, RolloutStatus::Running | RolloutStatus::Paused))
    };
    for waiting in active.iter().filter(|r| r.progress.status == RolloutStatus::Waiting && !running(&r.fleet)) {
        let progress = RolloutProgress { status: RolloutStatus::Running, ..waiting.progress.clone() };
        ctx.store.save_rollout(waiting.id, &progress, &[])?;
        let message = format!("rollout {} starts: no rollout of the fleet runs any more", waiting.id);
        ctx.store.record_events(&[fleet_event(waiting, "rollout-started", None, message)])?;
    }
    Ok(())
}

/// Runs `tick` every `interval` on a thread of its own, for as long as the server runs.
/// `lock` is the API's: one rollout decision at a time.
pub fn spawn(
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
    lock: Arc<Mutex<()>>,
    default_policy: UpdatePolicy,
    interval: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("rollouts".into()).spawn(move || loop {
        // Replicas on one database: only the one holding the lease steps rollouts.
        let leads = store.lead().unwrap_or_else(|e| {
            log::error!("{e}");
            false
        });
        if leads {
            let _one_at_a_time = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // And no decision on another replica (an operator's command) meanwhile.
            match store.lock_rollouts() {
                Ok(_across_replicas) => {
                    let ctx =
                        RolloutContext { store: store.as_ref(), presence: &presence, default_policy: &default_policy };
                    tick(&ctx);
                }
                Err(e) => log::error!("{e}"),
            }
        }
        std::thread::sleep(interval);
    })
}

/// Rollout time, in unix seconds: the wall clock as it was when the server started, moved
/// on by the monotonic clock. A wall-clock step (NTP catching up on a machine without an
/// RTC, an operator's `date`) neither starts a wave early nor times devices out; a
/// restart reads the wall clock again.
fn unix_now() -> i64 {
    static ANCHOR: std::sync::OnceLock<(i64, Instant)> = std::sync::OnceLock::new();
    let (wall, at) = ANCHOR.get_or_init(|| (crate::timefmt::unix_now() as i64, Instant::now()));
    wall.saturating_add(at.elapsed().as_secs() as i64)
}
