//! The rollout step's table tests: every transition of `step` and `command`, with
//! deferred devices, timeouts, thresholds by count and by percent, and supersede.

use super::step::*;
use super::*;
use crate::rollout::{MaxFailures, WaveSpec};
use crate::Error;
use DeviceStatus::*;

const T0: i64 = 1_800_000_000;
const MINUTE: i64 = 60;

/// Waves of 1 device, 10%, 100%; 15m bake, 30m device timeout, no failure allowed.
fn plan() -> RolloutPlan {
    let percent = |p| WaveSpec { devices: None, percent: Some(p), labels: None };
    RolloutPlan {
        waves: vec![WaveSpec { devices: Some(1), percent: None, labels: None }, percent(10), percent(100)],
        ..RolloutPlan::default()
    }
}

fn progress(status: RolloutStatus, wave: Option<usize>) -> RolloutProgress {
    RolloutProgress {
        status,
        current_wave: wave,
        wave_started_at: wave.map(|_| T0),
        wave_count: 3,
        superseded_by: None,
        failures_accepted: 0,
    }
}

/// A device as stored: given the release at T0 unless pending or deferred, healthy
/// since T0 if healthy.
fn device(uuid: &str, wave: usize, status: DeviceStatus, observation: Observation) -> RolloutDevice {
    let given = matches!(status, Updating | Healthy | Failed);
    RolloutDevice {
        uuid: uuid.into(),
        wave,
        status,
        reason: None,
        updating_since: given.then_some(T0),
        healthy_at: (status == Healthy).then_some(T0),
        assigned: given,
        running_since: None,
        fingerprint: None,
        observation,
    }
}

fn deferred(uuid: &str, wave: usize, assigned: bool, observation: Observation) -> RolloutDevice {
    let reason = Some(if assigned { "offline" } else { "outside its update window" }.into());
    RolloutDevice { assigned, reason, ..device(uuid, wave, Deferred, observation) }
}

fn unproven(fingerprint: &str) -> Observation {
    Observation::RunningUnproven { fingerprint: fingerprint.into() }
}

fn kinds(step: &Step) -> Vec<&'static str> {
    step.events.iter().map(|e| e.kind).collect()
}

/// The rows after `step`, as the driver would store them.
fn apply(devices: &mut [RolloutDevice], step: &Step) {
    for changed in &step.changes {
        if let Some(row) = devices.iter_mut().find(|d| d.uuid == changed.uuid) {
            *row = changed.clone();
        }
    }
}

fn status_of<'s>(step: &'s Step, devices: &'s [RolloutDevice], uuid: &str) -> &'s RolloutDevice {
    step.changes.iter().chain(devices).find(|d| d.uuid == uuid).unwrap()
}

/// name, device before, now; then after: status, reason, assigned, given the release
/// in this step, events.
type Transition =
    (&'static str, RolloutDevice, i64, DeviceStatus, Option<&'static str>, bool, bool, &'static [&'static str]);

/// One device of the started wave 0, judged once at `now` in a running rollout.
#[test]
fn device_transitions() {
    use Observation as O;
    let late = "not healthy within 30m of getting the release";
    #[rustfmt::skip]
    let cases: Vec<Transition> = vec![
        ("pending, online: given the release", device("d", 0, Pending, O::Updating), T0, Updating, None, true, true, &[]),
        ("pending, already running it: given, judged next", device("d", 0, Pending, O::Healthy), T0, Updating, None, true, true, &[]),
        ("pending, offline", device("d", 0, Pending, O::Offline), T0, Deferred, Some("offline"), false, false, &["device-deferred"]),
        ("pending, outside its window", device("d", 0, Pending, O::OutsideWindow), T0, Deferred, Some("outside its update window"), false, false, &["device-deferred"]),
        ("pending, pinned", device("d", 0, Pending, O::Pinned), T0, Deferred, Some("pinned to its own target"), false, false, &["device-deferred"]),
        ("deferred, window opened: caught up", deferred("d", 0, false, O::Updating), T0, Updating, None, true, true, &[]),
        ("deferred, still outside: no new event", deferred("d", 0, false, O::OutsideWindow), T0, Deferred, Some("outside its update window"), false, false, &[]),
        ("deferred, window closed, now offline", deferred("d", 0, false, O::Offline), T0, Deferred, Some("offline"), false, false, &[]),
        ("deferred with the release, back online", deferred("d", 0, true, O::Updating), T0 + 40 * MINUTE, Updating, None, true, false, &[]),
        ("deferred with the release, back outside its window", deferred("d", 0, true, O::OutsideWindow), T0 + 40 * MINUTE, Updating, None, true, false, &[]),
        ("deferred with the release, back healthy", deferred("d", 0, true, O::Healthy), T0, Healthy, None, true, false, &["device-healthy"]),
        ("deferred with the release, still offline", deferred("d", 0, true, O::Offline), T0 + 40 * MINUTE, Deferred, Some("offline"), true, false, &[]),
        ("updating, goes offline: keeps the release", device("d", 0, Updating, O::Offline), T0, Deferred, Some("offline"), true, false, &["device-deferred"]),
        ("updating, pinned", device("d", 0, Updating, O::Pinned), T0, Deferred, Some("pinned to its own target"), true, false, &["device-deferred"]),
        ("updating, window closes: it has the release", device("d", 0, Updating, O::OutsideWindow), T0 + 10 * MINUTE, Updating, None, true, false, &[]),
        ("updating, healthy", device("d", 0, Updating, O::Healthy), T0 + MINUTE, Healthy, None, true, false, &["device-healthy"]),
        ("updating, failed", device("d", 0, Updating, O::Failed("web: rolled back: crashed".into())), T0, Failed, Some("web: rolled back: crashed"), true, false, &["device-failed", "rollout-paused"]),
        ("updating, at its timeout", device("d", 0, Updating, O::Updating), T0 + 30 * MINUTE, Updating, None, true, false, &[]),
        ("updating, past its timeout", device("d", 0, Updating, O::Updating), T0 + 30 * MINUTE + 1, Failed, Some(late), true, false, &["device-failed", "rollout-paused"]),
        ("updating outside its window, past its timeout", device("d", 0, Updating, O::OutsideWindow), T0 + 31 * MINUTE, Failed, Some(late), true, false, &["device-failed", "rollout-paused"]),
        ("healthy is final", device("d", 0, Healthy, O::Failed("web: exited".into())), T0 + MINUTE, Healthy, None, true, false, &[]),
        ("failed is final", device("d", 0, Failed, O::Healthy), T0, Failed, None, true, false, &["rollout-paused"]),
    ];
    let plan = RolloutPlan { waves: vec![WaveSpec { devices: None, percent: Some(100), labels: None }], ..plan() };
    let running = RolloutProgress { wave_count: 1, ..progress(RolloutStatus::Running, Some(0)) };
    for (name, before, now, status, reason, assigned, given, events) in cases {
        let step = step(&plan, &running, std::slice::from_ref(&before), now);
        let after = status_of(&step, std::slice::from_ref(&before), "d");
        assert_eq!(
            (after.status, after.reason.as_deref(), after.assigned, !step.assign.is_empty()),
            (status, reason, assigned, given),
            "{name}"
        );
        assert_eq!(kinds(&step), events, "{name}");
        if given {
            assert_eq!(after.updating_since, Some(now), "{name}: the timeout counts from now");
        }
    }
}

#[test]
fn the_first_step_starts_wave_one_and_gives_it_the_release() {
    let devices = [
        device("a", 0, Pending, Observation::Updating),
        device("b", 1, Pending, Observation::Updating),
        device("c", 2, Pending, Observation::Offline),
    ];
    let step = step(&plan(), &progress(RolloutStatus::Running, None), &devices, T0);
    assert_eq!((step.progress.current_wave, step.progress.wave_started_at), (Some(0), Some(T0)));
    assert_eq!(step.events[0].message, "wave 1 of 3 started: 1 device");
    assert_eq!(step.assign, ["a"]);
    assert_eq!(step.changes.len(), 1, "later waves are untouched, even offline devices");
}

#[test]
fn a_wave_starts_after_bake_time_since_its_last_healthy_device() {
    let mut devices = vec![
        device("a", 0, Healthy, Observation::Healthy),
        device("b", 0, Healthy, Observation::Healthy),
        device("c", 1, Pending, Observation::Updating),
    ];
    devices[1].healthy_at = Some(T0 + 10 * MINUTE);
    let running = progress(RolloutStatus::Running, Some(0));
    let early = step(&plan(), &running, &devices, T0 + 24 * MINUTE);
    assert_eq!((early.progress.current_wave, early.assign.len()), (Some(0), 0), "15m after b, not after a");
    let baked = step(&plan(), &running, &devices, T0 + 25 * MINUTE);
    assert_eq!((baked.progress.current_wave, baked.assign.clone()), (Some(1), vec!["c".to_string()]));
    assert_eq!(baked.events[0].message, "wave 2 of 3 started: 1 device");
}

#[test]
fn running_unproven_bakes_and_a_restart_starts_the_bake_again() {
    let plan = RolloutPlan { device_timeout: 3600, ..plan() };
    let running = progress(RolloutStatus::Running, Some(0));
    let mut d = device("a", 0, Updating, unproven("c1,c2"));
    let at = |now: i64, d: &RolloutDevice| step(&plan, &running, std::slice::from_ref(d), now);

    let first = at(T0 + MINUTE, &d);
    d = first.changes[0].clone();
    assert_eq!((d.status, d.running_since, d.fingerprint.as_deref()), (Updating, Some(T0 + MINUTE), Some("c1,c2")));
    assert!(at(T0 + 15 * MINUTE, &d).changes.is_empty(), "14 minutes running: nothing changes");

    d.observation = unproven("c1,c3"); // web restarted: another container
    let restarted = at(T0 + 15 * MINUTE, &d);
    d = restarted.changes[0].clone();
    assert_eq!((d.status, d.running_since), (Updating, Some(T0 + 15 * MINUTE)));
    assert_eq!(at(T0 + 29 * MINUTE, &d).changes, []);
    let healthy = at(T0 + 30 * MINUTE, &d);
    assert_eq!((healthy.changes[0].status, healthy.changes[0].healthy_at), (Healthy, Some(T0 + 30 * MINUTE)));
    assert_eq!(healthy.events[0].message, "a is healthy: ran every service of the release for 15m without a restart");

    // Restarting until past its timeout: no steady start within it.
    d.observation = unproven("c1,c4");
    let late = at(T0 + 61 * MINUTE, &d);
    assert_eq!(late.changes[0].status, Failed);
    // Not running at all for a while also ends the streak.
    let mut paused = device("b", 0, Updating, Observation::Updating);
    paused.running_since = Some(T0);
    paused.fingerprint = Some("c1".into());
    assert_eq!(at(T0 + MINUTE, &paused).changes[0].running_since, None);
}

#[test]
fn deferred_devices_neither_count_nor_block_and_catch_up_later() {
    let running = progress(RolloutStatus::Running, Some(0));
    let mut devices = vec![
        device("a", 0, Healthy, Observation::Healthy),
        deferred("b", 0, false, Observation::OutsideWindow),
        deferred("c", 0, true, Observation::Offline),
        device("d", 1, Pending, Observation::Updating),
    ];
    let next = step(&plan(), &running, &devices, T0 + 15 * MINUTE);
    assert_eq!((next.progress.current_wave, next.assign.clone()), (Some(1), vec!["d".to_string()]));

    // Both come back during wave 2: b is given the release now, c (which had it) updates.
    apply(&mut devices, &next);
    devices[1].observation = Observation::Updating;
    devices[2].observation = Observation::Updating;
    let back = step(&plan(), &next.progress, &devices, T0 + 20 * MINUTE);
    assert_eq!(back.assign, ["b"]);
    assert_eq!(status_of(&back, &devices, "c").status, Updating);
    assert_eq!(status_of(&back, &devices, "c").updating_since, Some(T0 + 20 * MINUTE));
}

#[test]
fn a_wave_of_deferred_devices_waits() {
    let devices = [deferred("a", 0, false, Observation::Offline), device("b", 1, Pending, Observation::Updating)];
    let step = step(&plan(), &progress(RolloutStatus::Running, Some(0)), &devices, T0 + 120 * MINUTE);
    assert_eq!((step.progress.current_wave, step.events.len()), (Some(0), 0));
}

#[test]
fn success_percent_below_100_leaves_stragglers_updating() {
    let plan = RolloutPlan { success_percent: 80, ..plan() };
    let mut devices: Vec<RolloutDevice> =
        (0..4).map(|i| device(&format!("h{i}"), 0, Healthy, Observation::Healthy)).collect();
    devices.push(device("slow", 0, Updating, Observation::Updating));
    devices.push(device("next", 1, Pending, Observation::Updating));
    let moved = step(&plan, &progress(RolloutStatus::Running, Some(0)), &devices, T0 + 15 * MINUTE);
    assert_eq!((moved.progress.current_wave, moved.assign.clone()), (Some(1), vec!["next".to_string()]));
    assert_eq!(status_of(&moved, &devices, "slow").status, Updating);

    // The straggler is still watched in wave 2, and still times out.
    let late = step(&plan, &moved.progress, &devices, T0 + 31 * MINUTE);
    assert_eq!(status_of(&late, &devices, "slow").status, Failed);
    assert_eq!(late.progress.status, RolloutStatus::Paused);
}

#[test]
fn empty_waves_are_passed_through() {
    let five = |p| WaveSpec { devices: None, percent: Some(p), labels: None };
    let plan = RolloutPlan { waves: vec![five(10), five(20), five(30), five(100)], ..plan() };
    let four = |status, wave| RolloutProgress { wave_count: 4, ..progress(status, wave) };
    let devices = [device("a", 0, Healthy, Observation::Healthy), device("d", 3, Pending, Observation::Updating)];
    let step_ = step(&plan, &four(RolloutStatus::Running, Some(0)), &devices, T0 + 15 * MINUTE);
    assert_eq!((step_.progress.current_wave, step_.assign.clone()), (Some(3), vec!["d".to_string()]));
    assert_eq!(step_.events[0].message, "wave 4 of 4 started: 1 device (waves 2 to 3 have none)");

    let only_first = [device("a", 0, Healthy, Observation::Healthy)];
    let done = step(&plan, &four(RolloutStatus::Running, Some(0)), &only_first, T0 + 15 * MINUTE);
    assert_eq!((done.progress.status, kinds(&done)), (RolloutStatus::Succeeded, vec!["rollout-succeeded"]));
}

#[test]
fn the_last_wave_done_is_success() {
    let devices = [device("a", 0, Healthy, Observation::Healthy), device("b", 2, Healthy, Observation::Healthy)];
    let step = step(&plan(), &progress(RolloutStatus::Running, Some(2)), &devices, T0 + 15 * MINUTE);
    assert_eq!(step.progress.status, RolloutStatus::Succeeded);
    assert_eq!(step.events[0].message, "every wave of 3 is done");
}

/// `failed` failed devices of `given` given the release (the rest healthy), in wave 2.
fn failures(failed: usize, given: usize) -> Vec<RolloutDevice> {
    (0..given)
        .map(|i| {
            let status = if i < failed { Failed } else { Healthy };
            device(&format!("d{i:02}"), 1, status, Observation::Healthy)
        })
        .chain([device("later", 2, Pending, Observation::Updating)])
        .collect()
}

#[test]
fn failure_thresholds() {
    let limit = |count, percent| MaxFailures { count: Some(count), percent };
    #[rustfmt::skip]
    let cases: &[(&str, MaxFailures, usize, usize, Option<&str>)] = &[
        ("default: the first failure stops it", MaxFailures::default(), 1, 10, Some("paused: 1 failed device (maxFailures.count is 0)")),
        ("count 2: two go on", limit(2, None), 2, 10, None),
        ("count 2: the third stops it", limit(2, None), 3, 10, Some("paused: 3 failed devices (maxFailures.count is 2)")),
        ("20% of 10: two go on", limit(5, Some(20)), 2, 10, None),
        ("20% of 10: the third stops it", limit(5, Some(20)), 3, 10, Some("paused: 3 of 10 devices failed (maxFailures.percent is 20)")),
        ("0%: any failure", limit(5, Some(0)), 1, 10, Some("paused: 1 of 10 devices failed (maxFailures.percent is 0)")),
        ("20% alone: two go on", MaxFailures { count: None, percent: Some(20) }, 2, 10, None),
        ("20% alone: the third stops it", MaxFailures { count: None, percent: Some(20) }, 3, 10, Some("paused: 3 of 10 devices failed (maxFailures.percent is 20)")),
    ];
    for (name, max_failures, failed, given, paused) in cases {
        let plan = RolloutPlan { max_failures: max_failures.clone(), ..plan() };
        let step =
            step(&plan, &progress(RolloutStatus::Running, Some(1)), &failures(*failed, *given), T0 + 15 * MINUTE);
        match paused {
            Some(message) => {
                assert_eq!(step.progress.status, RolloutStatus::Paused, "{name}");
                assert_eq!(step.events.last().map(|e| e.message.as_str()), Some(*message), "{name}");
                assert!(step.assign.is_empty(), "{name}: no next wave");
            }
            None => assert_eq!(step.progress.status, RolloutStatus::Running, "{name}"),
        }
    }
}

#[test]
fn on_failure_rollback_puts_back_every_device_given_the_release() {
    let plan = RolloutPlan { on_failure: OnFailure::Rollback, ..plan() };
    let devices = [
        device("ok", 0, Healthy, Observation::Healthy),
        device("bad", 1, Updating, Observation::Failed("web: exited".into())),
        deferred("away", 1, true, Observation::Offline),
        deferred("never", 1, false, Observation::Offline),
        device("later", 2, Pending, Observation::Updating),
    ];
    let step = step(&plan, &progress(RolloutStatus::Running, Some(1)), &devices, T0);
    assert_eq!(step.progress.status, RolloutStatus::RolledBack);
    assert_eq!(step.revert, ["ok", "bad", "away"]);
    assert!(step.changes.iter().all(|d| !d.assigned));
    assert_eq!(kinds(&step), ["device-failed", "rollout-rolled-back"]);
    assert_eq!(
        step.events[1].message,
        "rolled back (1 failed device (maxFailures.count is 0)): 3 devices put back on what they ran before"
    );
}

#[test]
fn resume_accepts_the_failures_so_far() {
    let devices = failures(1, 3);
    let paused = progress(RolloutStatus::Paused, Some(1));
    let resumed = command(&plan(), &paused, &devices, Command::Resume, T0).unwrap();
    assert_eq!((resumed.progress.status, resumed.progress.failures_accepted), (RolloutStatus::Running, 1));
    assert_eq!(resumed.events[0].message, "resumed by the operator, accepting 1 failed device");

    let on = step(&plan(), &resumed.progress, &devices, T0 + MINUTE);
    assert_eq!(on.progress.status, RolloutStatus::Running, "the accepted failure does not pause it again");
    let plan = RolloutPlan { success_percent: 50, ..plan() };
    let next = step(&plan, &resumed.progress, &devices, T0 + 15 * MINUTE);
    assert_eq!(next.assign, ["later"], "2 of 3 healthy is over 50%");

    let mut more = devices.clone();
    more[1] = device("d01", 1, Updating, Observation::Failed("web: exited".into()));
    let again = step(&plan, &resumed.progress, &more, T0 + MINUTE);
    assert_eq!(again.progress.status, RolloutStatus::Paused, "a new failure does");
}

#[test]
fn a_paused_rollout_watches_its_devices_but_gives_nobody_the_release() {
    let devices = [
        device("a", 0, Updating, Observation::Healthy),
        device("b", 0, Pending, Observation::Updating),
        deferred("c", 0, false, Observation::Updating),
        device("d", 1, Pending, Observation::Updating),
    ];
    let step = step(&plan(), &progress(RolloutStatus::Paused, Some(0)), &devices, T0);
    assert_eq!(step.progress, progress(RolloutStatus::Paused, Some(0)));
    assert!(step.assign.is_empty());
    assert_eq!(status_of(&step, &devices, "a").status, Healthy);
    assert_eq!(status_of(&step, &devices, "b").status, Pending);
    assert_eq!(status_of(&step, &devices, "c").reason.as_deref(), Some("waiting: the rollout is paused"));
}

#[test]
fn waiting_and_finished_rollouts_do_not_change() {
    use RolloutStatus::*;
    let devices =
        [device("a", 0, Updating, Observation::Failed("x".into())), device("b", 1, Pending, Observation::Updating)];
    for status in [Waiting, Succeeded, Aborted, RolledBack, Superseded] {
        let before = progress(status, Some(0));
        let step = step(&plan(), &before, &devices, T0 + 600 * MINUTE);
        assert_eq!(
            step,
            Step {
                progress: before,
                changes: vec![],
                assign: vec![],
                revert: vec![],
                events: vec![],
                hand_over: false
            },
            "{status:?}"
        );
    }
}

#[test]
fn a_superseding_rollout_takes_over_at_the_wave_boundary() {
    let superseded = RolloutProgress { superseded_by: Some(7), ..progress(RolloutStatus::Running, Some(0)) };
    let devices = [device("a", 0, Healthy, Observation::Healthy), device("b", 1, Pending, Observation::Updating)];
    let mid_wave = step(&plan(), &superseded, &devices, T0 + 14 * MINUTE);
    assert_eq!((mid_wave.progress.status, mid_wave.hand_over), (RolloutStatus::Running, false));
    let boundary = step(&plan(), &superseded, &devices, T0 + 15 * MINUTE);
    assert_eq!((boundary.progress.status, boundary.hand_over), (RolloutStatus::Superseded, true));
    assert!(boundary.assign.is_empty(), "its next wave never starts");
    assert_eq!(boundary.events[0].message, "superseded by rollout 7 at the end of wave 1");

    let paused = RolloutProgress { status: RolloutStatus::Paused, ..superseded };
    let at_once = step(&plan(), &paused, &devices, T0);
    assert_eq!((at_once.progress.status, at_once.hand_over), (RolloutStatus::Superseded, true));
    assert_eq!(at_once.events[0].message, "superseded by rollout 7 while paused");
}

#[test]
fn promote_starts_the_next_wave_now() {
    let devices = [
        device("a", 0, Updating, Observation::Updating),
        device("b", 1, Pending, Observation::Updating),
        device("c", 1, Pending, Observation::Offline),
        device("d", 2, Pending, Observation::Updating),
    ];
    let promoted =
        command(&plan(), &progress(RolloutStatus::Running, Some(0)), &devices, Command::Promote, T0).unwrap();
    assert_eq!((promoted.progress.current_wave, promoted.assign.clone()), (Some(1), vec!["b".to_string()]));
    assert_eq!(promoted.events[0].message, "wave 2 of 3 started by the operator: 2 devices");
    assert_eq!(status_of(&promoted, &devices, "c").status, Deferred);

    let paused = RolloutProgress { status: RolloutStatus::Paused, ..progress(RolloutStatus::Paused, Some(0)) };
    let failed = [device("a", 0, Failed, Observation::Healthy), device("b", 1, Pending, Observation::Updating)];
    let from_pause = command(&plan(), &paused, &failed, Command::Promote, T0).unwrap();
    assert_eq!(
        (from_pause.progress.status, from_pause.progress.failures_accepted, from_pause.assign.clone()),
        (RolloutStatus::Running, 1, vec!["b".to_string()])
    );

    let last = command(&plan(), &progress(RolloutStatus::Running, Some(2)), &devices, Command::Promote, T0).unwrap();
    assert_eq!(last.progress.status, RolloutStatus::Succeeded);
    assert_eq!(last.events[0].message, "promoted past its last wave by the operator");

    let superseded = RolloutProgress { superseded_by: Some(9), ..progress(RolloutStatus::Running, Some(0)) };
    let handed = command(&plan(), &superseded, &devices, Command::Promote, T0).unwrap();
    assert_eq!((handed.progress.status, handed.hand_over, handed.assign.len()), (RolloutStatus::Superseded, true, 0));
}

#[test]
fn abort_with_and_without_rollback() {
    let devices = [device("a", 0, Healthy, Observation::Healthy), device("b", 1, Pending, Observation::Updating)];
    let running = progress(RolloutStatus::Running, Some(0));
    let aborted = command(&plan(), &running, &devices, Command::Abort { rollback: false }, T0).unwrap();
    assert_eq!(
        (aborted.progress.status, aborted.revert.len(), kinds(&aborted)),
        (RolloutStatus::Aborted, 0, vec!["rollout-aborted"])
    );
    assert_eq!(aborted.events[0].message, "aborted by the operator");

    let back = command(&plan(), &running, &devices, Command::Abort { rollback: true }, T0).unwrap();
    assert_eq!((back.progress.status, back.revert.clone()), (RolloutStatus::RolledBack, vec!["a".to_string()]));
    assert_eq!(
        back.events[0].message,
        "rolled back (aborted by the operator): 1 device put back on what they ran before"
    );
    assert!(!back.changes[0].assigned);

    let waiting =
        command(&plan(), &progress(RolloutStatus::Waiting, None), &[], Command::Abort { rollback: false }, T0);
    assert_eq!(waiting.unwrap().progress.status, RolloutStatus::Aborted);

    let superseded = RolloutProgress { superseded_by: Some(4), ..running };
    let handed = command(&plan(), &superseded, &devices, Command::Abort { rollback: false }, T0).unwrap();
    assert!(handed.hand_over, "the waiting rollout need not wait for a boundary that never comes");
    assert_eq!(handed.events[0].message, "aborted by the operator; rollout 4 starts now");
}

#[test]
fn commands_that_do_not_apply_name_the_status() {
    use RolloutStatus::*;
    #[rustfmt::skip]
    let cases = [
        (Succeeded, Command::Pause, "rollout is succeeded: only a running rollout can be paused"),
        (Paused, Command::Pause, "rollout is paused: only a running rollout can be paused"),
        (Running, Command::Resume, "rollout is running: only a paused rollout can be resumed"),
        (Waiting, Command::Promote, "rollout is waiting: only a running or paused rollout can be promoted"),
        (RolledBack, Command::Abort { rollback: true }, "rollout is rolled-back: only a running, paused or waiting rollout can be aborted"),
    ];
    for (status, cmd, want) in cases {
        let err = command(&plan(), &progress(status, Some(0)), &[], cmd, T0).unwrap_err();
        assert!(matches!(&err, Error::Conflict { reason } if reason == want), "{status:?} {cmd:?}: {err}");
    }
}

#[test]
fn stored_nonsense_never_panics() {
    let odd =
        RolloutProgress { wave_count: 0, current_wave: Some(usize::MAX), ..progress(RolloutStatus::Running, None) };
    let mut d = device("a", usize::MAX, Updating, Observation::Updating);
    d.updating_since = Some(i64::MIN);
    let plan = RolloutPlan { bake_time: u64::MAX, device_timeout: u64::MAX, ..plan() };
    let _ = step(&plan, &odd, &[d.clone()], i64::MAX);
    let _ = step(&plan, &progress(RolloutStatus::Running, None), &[d], i64::MIN);
}

#[test]
fn an_accepted_failure_does_not_hold_its_wave_at_success_percent_100() {
    let devices = [
        device("a", 0, Healthy, Observation::Healthy),
        device("b", 1, Failed, Observation::Failed("web: exited".into())),
        device("c", 1, Healthy, Observation::Healthy),
        device("d", 2, Pending, Observation::Updating),
    ];
    let paused = progress(RolloutStatus::Paused, Some(1));
    let resumed = command(&plan(), &paused, &devices, Command::Resume, T0).unwrap();
    let on = step(&plan(), &resumed.progress, &devices, T0 + 15 * MINUTE);
    assert_eq!(on.assign, ["d"], "wave 2's accepted failure leaves its healthy device to decide");
}

#[test]
fn a_wave_whose_devices_all_left_the_fleet_is_done() {
    // Wave 2's devices are gone (the driver drops rows of devices no longer in the fleet).
    let devices = [device("a", 0, Healthy, Observation::Healthy), device("z", 2, Pending, Observation::Updating)];
    let on = step(&plan(), &progress(RolloutStatus::Running, Some(1)), &devices, T0 + MINUTE);
    assert_eq!(on.assign, ["z"]);
    assert_eq!(on.progress.current_wave, Some(2));
}

#[test]
fn a_rollback_hands_over_to_the_rollout_waiting_to_supersede_it() {
    let plan = RolloutPlan { on_failure: OnFailure::Rollback, ..plan() };
    let devices = [device("a", 0, Updating, Observation::Failed("web: rolled back: exited".into()))];
    let waiting = RolloutProgress { superseded_by: Some(9), ..progress(RolloutStatus::Running, Some(0)) };
    let on = step(&plan, &waiting, &devices, T0 + MINUTE);
    assert_eq!(on.progress.status, RolloutStatus::RolledBack);
    assert!(on.hand_over, "its successor would wait for a wave boundary that never comes");
    assert_eq!(on.revert, ["a"]);
}
