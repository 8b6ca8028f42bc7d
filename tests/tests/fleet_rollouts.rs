//! Fleets, frozen releases and staged rollouts end to end (the routes of
//! `server/src/api/{fleets,releases,rollouts}.rs`, stepped by `rollout_driver.rs`): the
//! real `pinion-server` on loopback with `--rollout-interval 1`, the real Debian
//! docker-registry holding the images (pushed over the registry API, and with a real
//! `docker push` where a tag moves), and *simulated devices* (`pinion_tests::simulated`):
//! gateways that register, poll with their ETag and report over the wire as the agent
//! does, without running containers, so that a rollout can have fifty of them. What each
//! simulated device reports (healthy, a rollback, nothing, offline) is the test's choice;
//! everything the server decides is read back through its API and the devices' polls.
//!
//! The tests share one server (and registry) while they run side by side, each with a
//! fleet of its own; the restart test has its own server. Bad input is in
//! `fleet_bad_input.rs`, the operator's calls in `pinion_tests::fleet_api`.

use pinion_tests::fleet_api::{
    call, count_events, device_states, events, expect, fleet_with_key, make_release, push_images, rollout, settle_on,
    waves_of,
};
use pinion_tests::simulated::{services_of, Round, SimulatedDevice, SimulatedFleet};
use pinion_tests::util::wait_for;
use pinion_tests::{push_image, Auth, Docker, ImageSpec, Registry, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long a condition may take to come true. Generous: nothing here asserts timing.
const PATIENCE: Duration = Duration::from_secs(60);

/// Rollouts step every second; tags of fleets are asked again every 2 s; 50+ simulated
/// devices register from one address.
const SERVER_ARGS: &[&str] = &["--rollout-interval", "1", "--refresh-interval", "2", "--registrations-per-minute", "0"];

/// The server and registry of the tests running now.
struct Shared {
    server: Server,
    registry: Registry,
}

/// The shared server and registry: started by the first test that asks, stopped when the
/// last test holding them ends (a `static` would never be dropped, and leak the processes).
fn shared() -> Arc<Shared> {
    static SHARED: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = slot.upgrade() {
        return shared;
    }
    let shared = Arc::new(Shared { registry: Registry::start(Auth::Anonymous), server: Server::start(SERVER_ARGS) });
    *slot = Arc::downgrade(&shared);
    shared
}

#[test]
fn fifty_simulated_devices_go_through_four_waves() {
    let shared = shared();
    let (server, registry) = (&shared.server, &shared.registry);
    let key = fleet_with_key(server, "waves", json!({"description": "fifty simulated gateways"}));
    let mut devices = SimulatedFleet::register(server, &key, "waves", 52);
    // Every 8th from waves-03 is in Berlin: waves-03 falls in the 10% wave, the six others
    // (11, 19, 27, 35, 43, 51) make the labels wave.
    let berlin: Vec<String> = (0..52).filter(|i| i % 8 == 3).map(|i| format!("waves-{i:02}")).collect();
    for uuid in devices.uuids() {
        let labels = if berlin.contains(&uuid) { json!({"site": "berlin"}) } else { json!({"site": "paris"}) };
        expect(server, "PUT", &format!("/api/v1/devices/{uuid}/labels"), Some(labels), 200);
    }
    let listed = expect(server, "GET", "/api/v1/devices?fleet=waves&label=site=berlin", None, 200);
    let listed: BTreeSet<&str> =
        listed["devices"].as_array().unwrap().iter().map(|d| d["uuid"].as_str().unwrap()).collect();
    assert_eq!(listed, berlin.iter().map(String::as_str).collect::<BTreeSet<_>>());

    let (r1, images1) = make_release(server, "waves", &push_images(registry, "waves", "1", &["app", "sidecar"]));
    let set = expect(server, "PUT", "/api/v1/fleets/waves/release", Some(json!({"release": r1})), 200);
    assert_eq!(set["devicesUpdated"], 52, "{set:#}");
    settle_on(&mut devices, &images1);
    let fleet = expect(server, "GET", "/api/v1/fleets/waves", None, 200);
    assert_eq!(fleet["release"], r1, "{fleet:#}");
    assert_eq!((fleet["devices"]["total"].as_u64(), fleet["devices"]["onRelease"].as_u64()), (Some(52), Some(52)));

    // Release 2 changes the app, keeps the sidecar.
    let app2 = push_images(registry, "waves", "2", &["app"]).remove(0);
    let sidecar1 = images1[1].clone();
    let (r2, images2) = make_release(server, "waves", &[app2, format!("{}/waves/sidecar:1", registry.host())]);
    assert_eq!(images2[1], sidecar1, "the same tag of the same registry pins the same digest");
    assert_ne!(images2[0], images1[0]);

    let plan = json!({"release": r2, "bakeTime": "1s",
        "waves": [{"devices": 1}, {"percent": 10}, {"labels": {"site": "berlin"}}, {"percent": 100}]});
    let mut dry = plan.clone();
    dry["dryRun"] = json!(true);
    let dry = expect(server, "POST", "/api/v1/fleets/waves/rollouts", Some(dry), 200);
    let dry_waves: Vec<Vec<String>> = dry["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["devices"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect())
        .collect();
    let stored = expect(server, "GET", "/api/v1/fleets/waves/rollouts", None, 200);
    assert_eq!(stored["rollouts"], json!([]), "a dry run stores nothing");

    let created = expect(server, "POST", "/api/v1/fleets/waves/rollouts", Some(plan), 201);
    let id = created["id"].as_u64().unwrap();
    let waves = waves_of(&created);
    assert_eq!(waves, dry_waves, "the dry run showed the waves the rollout got");
    assert_eq!(waves.iter().map(Vec::len).collect::<Vec<_>>(), [1, 5, 6, 40], "{created:#}");
    assert_eq!(waves[0], ["waves-00"]);
    assert_eq!(waves[1], ["waves-01", "waves-02", "waves-03", "waves-04", "waves-05"]);
    let berlin_rest: Vec<String> = berlin.iter().filter(|u| *u != "waves-03").cloned().collect();
    assert_eq!(waves[2], berlin_rest);
    let wave_of: HashMap<String, usize> =
        waves.iter().enumerate().flat_map(|(i, w)| w.iter().map(move |u| (u.clone(), i))).collect();

    // Each device polls and reports healthy for what it gets; the last device of each wave
    // stays in probation until the server has shown the rest of its wave healthy for
    // longer than bakeTime and a tick, so a wave that moved on while partly healthy would be
    // seen. Two devices join the fleet once wave 2 has started: they go into the last
    // wave. Every action is numbered, so that "before" means before on the wire.
    let slow: BTreeSet<String> = waves.iter().map(|w| w.last().unwrap().clone()).collect();
    let joiners = ["waves-52", "waves-53"];
    let mut wave_of = wave_of;
    for uuid in joiners {
        wave_of.insert(uuid.to_string(), 3);
    }
    let mut seq = 0u64;
    const HOLD: Duration = Duration::from_millis(2500);
    let mut slow_since: HashMap<String, Instant> = HashMap::new();
    let mut got_release: HashMap<String, u64> = HashMap::new();
    let mut passed: HashMap<String, u64> = HashMap::new();
    let done = wait_for(PATIENCE, || {
        let mut newly = Vec::new();
        for device in devices.devices.iter_mut() {
            seq += 1;
            let held = slow.contains(&device.uuid)
                && got_release.contains_key(&device.uuid)
                && slow_since.get(&device.uuid).is_none_or(|since| since.elapsed() < HOLD);
            if held {
                assert_eq!(device.poll(), None, "{}", device.uuid);
                continue;
            }
            match device.step_healthy() {
                Round::NewTarget(_) => {
                    assert_eq!(device.images(), images2, "{}: the only new target is release 2", device.uuid);
                    got_release.insert(device.uuid.clone(), seq);
                    newly.push(device.uuid.clone());
                    // No device of a later wave before every device of the waves before it
                    // reported the release passed.
                    let wave = wave_of[&device.uuid];
                    for earlier in waves[..wave].iter().flatten() {
                        assert!(
                            passed.get(earlier).is_some_and(|at| *at < seq),
                            "{} (wave {}) got release 2 before {earlier} (wave {}) reported it healthy",
                            device.uuid,
                            wave + 1,
                            wave_of[earlier] + 1
                        );
                    }
                }
                Round::Passed => {
                    passed.insert(device.uuid.clone(), seq);
                }
                Round::InProbation | Round::Idle => {}
            }
        }
        if devices.devices.len() == 52 && got_release.contains_key(&waves[1][0]) {
            for uuid in joiners {
                let mut joiner = SimulatedDevice::register(server, &key, uuid);
                joiner.poll();
                assert_eq!(joiner.images(), images1, "{uuid} joins on the fleet's release");
                let target = joiner.target().unwrap().clone();
                joiner.report_running(&target, "passed");
                devices.devices.push(joiner);
            }
        }
        let now = rollout(server, "waves", id);
        let states = device_states(&now);
        for uuid in &newly {
            // What the server says agrees: every earlier wave is healthy (healthy stays so).
            for earlier in waves[..wave_of[uuid]].iter().flatten() {
                assert_eq!(
                    states[earlier].1, "healthy",
                    "{uuid} got release 2 while {earlier} is not healthy: {now:#}"
                );
            }
        }
        for uuid in &slow {
            let wave = &waves[wave_of[uuid]];
            let rest_healthy = wave.iter().filter(|u| *u != uuid).all(|u| states[u].1 == "healthy");
            if got_release.contains_key(uuid) && rest_healthy && !slow_since.contains_key(uuid) {
                slow_since.insert(uuid.clone(), Instant::now());
            }
        }
        for (uuid, (wave, state, has)) in &states {
            // A device in probation, or that never got the release, is not healthy.
            if got_release.contains_key(uuid) && !passed.contains_key(uuid) {
                assert_eq!(state, "updating", "{uuid} reported probation running only: {now:#}");
                assert!(has, "{uuid} polled release 2: {now:#}");
            }
            if !got_release.contains_key(uuid) {
                assert!(state == "pending" || state == "updating", "{uuid} has not polled release 2: {now:#}");
            }
            if joiners.contains(&uuid.as_str()) {
                assert_eq!(*wave, 4, "{uuid} joined during the rollout: {now:#}");
            }
        }
        (now["state"] == "succeeded").then_some(now)
    });
    let done = done.unwrap_or_else(|| panic!("the rollout did not succeed: {:#}", rollout(server, "waves", id)));
    assert_eq!(done["currentWave"], 4, "{done:#}");
    assert_eq!(done["failed"], 0);
    for wave in done["waves"].as_array().unwrap() {
        assert_eq!(
            (wave["pending"].as_u64(), wave["failed"].as_u64(), wave["deferred"].as_u64()),
            (Some(0), Some(0), Some(0))
        );
    }
    let last_wave = done["waves"][3]["healthy"].as_u64();
    assert_eq!(last_wave, Some(42), "the 40 of the last wave and the 2 that joined: {done:#}");
    assert_eq!(got_release.len(), 54, "every device got release 2");
    for device in devices.devices.iter_mut() {
        // The fleet taking the release over writes no target again.
        let round = device.step_healthy();
        assert!(!matches!(round, Round::NewTarget(_)), "{}: {round:?}", device.uuid);
        assert_eq!(device.images(), images2, "{}", device.uuid);
    }

    let fleet = expect(server, "GET", "/api/v1/fleets/waves", None, 200);
    assert_eq!(fleet["release"], r2, "{fleet:#}");
    assert_eq!(fleet["devices"]["onRelease"], 54, "{fleet:#}");
    assert_eq!(fleet["devices"]["inRollout"], 0, "{fleet:#}");
    let source = expect(server, "GET", "/api/v1/devices/waves-51/target-state", None, 200)["source"].clone();
    assert_eq!(source["kind"], "fleet", "{source:#}");
    assert_eq!(source["release"], r2, "{source:#}");

    let log = events(server, "waves");
    assert_eq!(count_events(&log, "wave-started", id), 4, "{log:#?}");
    assert_eq!(count_events(&log, "rollout-succeeded", id), 1, "{log:#?}");
    assert_eq!(count_events(&log, "device-healthy", id), 54, "{log:#?}");
    assert_eq!(count_events(&log, "device-failed", id), 0, "{log:#?}");
    let kinds: Vec<&str> = log.iter().filter(|e| e["rollout"] == id).map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"rollout-created"));
    assert_eq!(kinds.last(), Some(&"rollout-succeeded"));
}

#[test]
fn failures_in_the_second_wave_pause_the_rollout_and_abort_with_rollback_puts_devices_back() {
    let shared = shared();
    let (server, registry) = (&shared.server, &shared.registry);
    let key = fleet_with_key(server, "halt", json!({}));
    let mut devices = SimulatedFleet::register(server, &key, "halt", 10);
    let (r1, images1) = make_release(server, "halt", &push_images(registry, "halt", "1", &["app"]));
    expect(server, "PUT", "/api/v1/fleets/halt/release", Some(json!({"release": r1})), 200);
    settle_on(&mut devices, &images1);
    let (r2, images2) = make_release(server, "halt", &push_images(registry, "halt", "2", &["app"]));

    let plan = json!({"release": r2, "bakeTime": "0s", "maxFailures": {"count": 1},
        "waves": [{"devices": 1}, {"devices": 4}, {"percent": 100}]});
    let created = expect(server, "POST", "/api/v1/fleets/halt/rollouts", Some(plan), 201);
    let id = created["id"].as_u64().unwrap();
    let waves = waves_of(&created);
    assert_eq!(waves[1], ["halt-01", "halt-02", "halt-03", "halt-04"]);
    let failing = ["halt-01", "halt-02"];
    let reason = "svc1 exited with code 3 within probation";

    // One round of the fleet: the healthy devices step; a failing device that polls release
    // 2 reports, once `fail` lets it, what the agent reports after release 2 failed
    // probation and release 1 was put back.
    let mut ever_had_release: BTreeSet<String> = BTreeSet::new();
    let mut failed_back: BTreeSet<String> = BTreeSet::new();
    let mut round = |devices: &mut SimulatedFleet, fail: &[&str]| {
        for device in devices.devices.iter_mut() {
            if failing.contains(&device.uuid.as_str()) {
                device.poll();
                if device.images() == images2 {
                    ever_had_release.insert(device.uuid.clone());
                    if fail.contains(&device.uuid.as_str()) && failed_back.insert(device.uuid.clone()) {
                        device.report_rollback("svc1", &images2[0], &images1[0], reason);
                    }
                }
            } else if let Round::NewTarget(_) = device.step_healthy() {
                assert_eq!(device.images(), images2, "{}", device.uuid);
                ever_had_release.insert(device.uuid.clone());
            }
        }
    };
    // The first failure is within maxFailures.count: the rollout goes on (its wave cannot
    // end, with a failed device in it).
    let one_failed = wait_for(PATIENCE, || {
        round(&mut devices, &failing[..1]);
        let now = rollout(server, "halt", id);
        (device_states(&now)[failing[0]].1 == "failed").then_some(now)
    })
    .unwrap_or_else(|| panic!("{} did not fail: {:#}", failing[0], rollout(server, "halt", id)));
    assert_eq!(
        (one_failed["state"].as_str(), one_failed["failed"].as_u64()),
        (Some("running"), Some(1)),
        "{one_failed:#}"
    );
    assert_eq!(one_failed["currentWave"], 2, "{one_failed:#}");
    // The second is one too many.
    let paused = wait_for(PATIENCE, || {
        round(&mut devices, &failing);
        let now = rollout(server, "halt", id);
        (now["state"] != "running").then_some(now)
    })
    .unwrap_or_else(|| panic!("the rollout did not pause: {:#}", rollout(server, "halt", id)));
    assert_eq!(paused["state"], "paused", "{paused:#}");
    assert_eq!(paused["currentWave"], 2, "{paused:#}");
    assert_eq!(paused["failed"], 2, "{paused:#}");
    let states = device_states(&paused);
    for uuid in failing {
        assert_eq!(states[uuid].1, "failed", "{paused:#}");
        let row = paused["devices"].as_array().unwrap().iter().find(|d| d["uuid"] == uuid).unwrap();
        let why = row["reason"].as_str().unwrap_or_default();
        assert!(why.contains("rolled back") && why.contains(reason), "{uuid}: {row:#}");
    }
    let log = events(server, "halt");
    let pause =
        log.iter().find(|e| e["kind"] == "rollout-paused" && e["rollout"] == id).expect("a rollout-paused event");
    let message = pause["message"].as_str().unwrap();
    assert!(message.contains("2 failed devices") && message.contains("maxFailures.count is 1"), "{pause:#}");
    assert_eq!(count_events(&log, "device-failed", id), 2, "{log:#?}");
    assert_eq!(count_events(&log, "wave-started", id), 2, "{log:#?}");

    // Wave 3 never got release 2: the server says so, and so do their polls.
    for uuid in &waves[2] {
        assert_eq!(states[uuid].1, "pending", "{paused:#}");
        assert!(!states[uuid].2, "{paused:#}");
        assert!(!ever_had_release.contains(uuid), "{uuid} polled release 2");
        let device = devices.device(uuid);
        assert_eq!(device.poll(), None, "{uuid}'s target did not change");
        assert_eq!(device.images(), images1);
    }
    let given: BTreeSet<String> = waves[0].iter().chain(&waves[1]).cloned().collect();
    assert_eq!(ever_had_release, given, "the canary and wave 2 got release 2, nobody else");

    let aborted = expect(
        server,
        "POST",
        &format!("/api/v1/fleets/halt/rollouts/{id}/abort"),
        Some(json!({"rollback": true})),
        200,
    );
    assert_eq!(aborted["state"], "rolled-back", "{aborted:#}");
    assert!(device_states(&aborted).values().all(|(_, _, has)| !has), "{aborted:#}");
    let again = call(server, "POST", &format!("/api/v1/fleets/halt/rollouts/{id}/abort"), None);
    assert_eq!(again.status, 409, "{}", again.body);

    // Every device that got release 2 polls release 1 again, as the fleet's release.
    for uuid in &given {
        let device = devices.device(uuid);
        let back = device.poll().unwrap_or_else(|| panic!("{uuid} was not given a new target by the rollback"));
        assert_eq!(services_of(&back).into_iter().map(|s| s.3).collect::<Vec<_>>(), images1, "{uuid}");
        device.report_running(&back, "passed");
        let source =
            expect(server, "GET", &format!("/api/v1/devices/{uuid}/target-state"), None, 200)["source"].clone();
        assert_eq!(
            (source["kind"].as_str(), source["release"].as_u64()),
            (Some("fleet"), Some(r1)),
            "{uuid}: {source:#}"
        );
    }
    for uuid in &waves[2] {
        assert_eq!(devices.device(uuid).poll(), None, "{uuid} never left release 1");
    }
    let fleet = expect(server, "GET", "/api/v1/fleets/halt", None, 200);
    assert_eq!(fleet["release"], r1, "{fleet:#}");
    assert_eq!(fleet["devices"]["onRelease"], 10, "{fleet:#}");
    assert_eq!(count_events(&events(server, "halt"), "rollout-rolled-back", id), 1);
}

#[test]
fn offline_devices_are_deferred_and_catch_up() {
    let shared = shared();
    let (server, registry) = (&shared.server, &shared.registry);
    let key = fleet_with_key(server, "naps", json!({}));
    let mut devices = SimulatedFleet::register(server, &key, "naps", 8);
    let (r1, images1) = make_release(server, "naps", &push_images(registry, "naps", "1", &["app"]));
    expect(server, "PUT", "/api/v1/fleets/naps/release", Some(json!({"release": r1})), 200);
    settle_on(&mut devices, &images1);
    // The server measures each device's poll interval from its polls: three polls a little
    // over a second apart make it ~1.2 s, so a device is offline ~5 s after it stops.
    // (Setup pacing, not an assertion.)
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1200));
        devices.poll_all();
    }
    let sleepers = ["naps-01", "naps-03"];
    let awake = |uuid: &str| !sleepers.contains(&uuid);
    let online = wait_for(PATIENCE, || {
        for device in devices.devices.iter_mut().filter(|d| awake(&d.uuid)) {
            device.poll();
        }
        let fleet = expect(server, "GET", "/api/v1/fleets/naps", None, 200);
        (fleet["devices"]["online"] == 6).then_some(())
    });
    assert!(online.is_some(), "two devices that stopped polling are still online: {}", server.log());

    let (r2, images2) = make_release(server, "naps", &push_images(registry, "naps", "2", &["app"]));
    let plan = json!({"release": r2, "bakeTime": "0s", "waves": [{"devices": 2}, {"devices": 3}, {"percent": 100}]});
    let created = expect(server, "POST", "/api/v1/fleets/naps/rollouts", Some(plan), 201);
    let id = created["id"].as_u64().unwrap();
    let waves = waves_of(&created);
    assert_eq!(
        waves,
        [vec!["naps-00", "naps-01"], vec!["naps-02", "naps-03", "naps-04"], vec!["naps-05", "naps-06", "naps-07"]]
    );
    let last_wave: Vec<String> = waves[2].clone();

    // The awake ones of waves 1 and 2 turn healthy; the last wave polls but reports
    // nothing yet, so the rollout cannot end before the sleepers are back.
    let mut last_wave_has_it = BTreeSet::new();
    let advanced = wait_for(PATIENCE, || {
        devices.step_healthy(|uuid| awake(uuid) && !last_wave.iter().any(|u| u == uuid));
        for device in devices.devices.iter_mut().filter(|d| last_wave.contains(&d.uuid)) {
            if device.poll().is_some() {
                assert_eq!(device.images(), images2);
                last_wave_has_it.insert(device.uuid.clone());
            }
        }
        let now = rollout(server, "naps", id);
        (now["currentWave"] == 3 && last_wave_has_it.len() == 3).then_some(now)
    })
    .unwrap_or_else(|| panic!("wave 3 did not start without the offline devices: {:#}", rollout(server, "naps", id)));
    let states = device_states(&advanced);
    for uuid in sleepers {
        assert_eq!(states[uuid].1, "deferred", "{advanced:#}");
        assert!(!states[uuid].2, "{uuid} was not given the release while offline: {advanced:#}");
        let row = advanced["devices"].as_array().unwrap().iter().find(|d| d["uuid"] == uuid).unwrap();
        assert_eq!(row["reason"], "offline", "{row:#}");
    }
    for uuid in ["naps-00", "naps-02", "naps-04"] {
        assert_eq!(states[uuid].1, "healthy", "{advanced:#}");
    }
    assert_eq!(advanced["state"], "running");
    let log = events(server, "naps");
    for uuid in sleepers {
        assert!(
            log.iter().any(|e| e["kind"] == "device-deferred" && e["device"] == uuid && e["rollout"] == id),
            "no device-deferred event for {uuid}: {log:#?}"
        );
    }

    // The sleepers poll again: they get release 2 and turn healthy, in a running rollout.
    let caught_up = wait_for(PATIENCE, || {
        devices.step_healthy(|uuid| !last_wave.iter().any(|u| u == uuid));
        for device in devices.devices.iter_mut().filter(|d| last_wave.contains(&d.uuid)) {
            device.poll();
        }
        let now = rollout(server, "naps", id);
        let states = device_states(&now);
        sleepers.iter().all(|u| states[*u].1 == "healthy").then_some(now)
    })
    .unwrap_or_else(|| panic!("the offline devices did not catch up: {:#}", rollout(server, "naps", id)));
    assert_eq!(caught_up["state"], "running", "the last wave has not reported: {caught_up:#}");
    for uuid in sleepers {
        assert_eq!(devices.device(uuid).images(), images2, "{uuid}");
    }

    let done = wait_for(PATIENCE, || {
        devices.step_healthy(|_| true);
        let now = rollout(server, "naps", id);
        (now["state"] == "succeeded").then_some(now)
    })
    .unwrap_or_else(|| panic!("the rollout did not succeed: {:#}", rollout(server, "naps", id)));
    assert_eq!(done["failed"], 0, "{done:#}");
    assert!(device_states(&done).values().all(|(_, state, _)| state == "healthy"), "{done:#}");
    assert_eq!(expect(server, "GET", "/api/v1/fleets/naps", None, 200)["release"], r2);
}

/// A command that stops at once on SIGTERM (never run here: the devices are simulated).
const SERVE: &str = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; cat /version; while true; do sleep 1; done"]"#;

#[test]
fn a_tag_moved_by_docker_push_during_a_rollout_supersedes_at_the_wave_boundary() {
    let shared = shared();
    let (server, registry) = (&shared.server, &shared.registry);
    let docker = Docker::connect();
    let plan = json!({"waves": [{"devices": 1}, {"percent": 100}], "bakeTime": "1s"});
    let key = fleet_with_key(server, "track", json!({"rolloutPlan": plan}));
    let mut devices = SimulatedFleet::register(server, &key, "track", 4);
    let canary = "track-03";
    expect(server, "PUT", &format!("/api/v1/devices/{canary}/labels"), Some(json!({"ring": "canary"})), 200);
    let (r1, images1) = make_release(server, "track", &push_images(registry, "track", "1", &["base"]));
    expect(server, "PUT", "/api/v1/fleets/track/release", Some(json!({"release": r1})), 200);
    settle_on(&mut devices, &images1);

    // Image A as :latest, with a real docker push; release 2 follows the tag.
    let latest = format!("{}/track/app:latest", registry.host());
    let image_a = docker.import_busybox(&latest, "A", SERVE);
    let digest_a = docker.push(&latest);
    let (r2, images2) = make_release(server, "track", std::slice::from_ref(&latest));
    assert!(images2[0].ends_with(&digest_a), "{images2:?} is not {digest_a}");
    let first = json!({"release": r2, "waves": [{"labels": {"ring": "canary"}}, {"percent": 100}]});
    let old = expect(server, "POST", "/api/v1/fleets/track/rollouts", Some(first), 201);
    let old_id = old["id"].as_u64().unwrap();
    assert_eq!(waves_of(&old)[0], [canary]);

    // The canary gets A and says nothing: it is in probation for as long as the test likes.
    // `seen`: every image each device was ever given.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let record = |seen: &mut BTreeMap<String, BTreeSet<String>>, devices: &SimulatedFleet| {
        for device in &devices.devices {
            seen.entry(device.uuid.clone()).or_default().extend(device.images());
        }
    };
    wait_for(PATIENCE, || {
        devices.poll_all();
        record(&mut seen, &devices);
        (devices.device(canary).images() == images2).then_some(())
    })
    .unwrap_or_else(|| panic!("the canary did not get release 2: {:#}", rollout(server, "track", old_id)));

    // Image B pushed to :latest: the refresher sees the tag move, a release is made of it,
    // and its rollout waits for the running one's wave boundary.
    docker.import_busybox(&latest, "B", SERVE);
    let digest_b = docker.push(&latest);
    docker.run(&["rmi", &latest]);
    docker.try_run(&["rmi", &image_a]);
    assert_ne!(digest_a, digest_b);
    let (r3, new_id) = wait_for(PATIENCE, || {
        devices.poll_all();
        record(&mut seen, &devices);
        let releases = expect(server, "GET", "/api/v1/fleets/track/releases", None, 200);
        let moved = releases["releases"].as_array().unwrap().iter().find(|r| r["source"] == "tag-moved")?.clone();
        let rollouts = expect(server, "GET", "/api/v1/fleets/track/rollouts", None, 200);
        let waiting = rollouts["rollouts"].as_array().unwrap().iter().find(|r| r["id"] != old_id)?.clone();
        Some((moved["id"].as_u64().unwrap(), waiting["id"].as_u64().unwrap()))
    })
    .unwrap_or_else(|| panic!("no release was made of the moved tag: {}", server.log()));
    let r3_json = expect(server, "GET", &format!("/api/v1/fleets/track/releases/{r3}"), None, 200);
    let images3: Vec<String> = services_of(&r3_json).into_iter().map(|s| s.3).collect();
    assert!(images3[0].ends_with(&digest_b), "release {r3} pins {images3:?}, not {digest_b}");
    assert!(r3_json["note"].as_str().unwrap_or_default().contains("tags moved"), "{r3_json:#}");
    let waiting = rollout(server, "track", new_id);
    assert_eq!((waiting["state"].as_str(), waiting["release"].as_u64()), (Some("waiting"), Some(r3)), "{waiting:#}");
    let running = rollout(server, "track", old_id);
    assert_eq!(running["state"], "running", "the canary is not healthy yet: {running:#}");
    assert_eq!(running["supersededBy"], new_id, "{running:#}");
    assert_eq!(running["currentWave"], 1, "{running:#}");
    for (uuid, images) in &seen {
        assert!(!images.contains(&images3[0]), "{uuid} got release {r3} while its rollout waits: {seen:#?}");
    }

    // The canary turns healthy: at the end of wave 1 the old rollout hands over.
    let superseded = wait_for(PATIENCE, || {
        let device = devices.device(canary);
        if device.images() == images2 {
            let target = device.target().unwrap().clone();
            device.report_running(&target, "passed");
        }
        devices.poll_all();
        record(&mut seen, &devices);
        let old = rollout(server, "track", old_id);
        (old["state"] == "superseded").then_some(old)
    })
    .unwrap_or_else(|| panic!("the old rollout was not superseded: {:#}", rollout(server, "track", old_id)));
    assert_eq!(superseded["currentWave"], 1, "superseded at the end of its first wave: {superseded:#}");
    let new = rollout(server, "track", new_id);
    assert_eq!(new["state"], "running", "{new:#}");
    let new_waves = waves_of(&new);
    assert_eq!(new_waves[0], ["track-00", canary], "the fleet plan's canary, and the device the old rollout updated");

    // The new rollout runs to the end with healthy devices.
    let done = wait_for(PATIENCE, || {
        devices.step_healthy(|_| true);
        record(&mut seen, &devices);
        let now = rollout(server, "track", new_id);
        (now["state"] == "succeeded").then_some(now)
    })
    .unwrap_or_else(|| panic!("the new rollout did not succeed: {:#}", rollout(server, "track", new_id)));
    assert_eq!(done["failed"], 0, "{done:#}");
    for device in devices.devices.iter_mut() {
        device.poll();
        assert_eq!(device.images(), images3, "{}", device.uuid);
    }
    record(&mut seen, &devices);
    assert!(seen[canary].contains(&images2[0]) && seen[canary].contains(&images3[0]), "{seen:#?}");
    for (uuid, images) in &seen {
        if uuid != canary {
            assert!(!images.contains(&images2[0]), "{uuid} got the superseded rollout's release: {seen:#?}");
        }
    }
    assert_eq!(expect(server, "GET", "/api/v1/fleets/track", None, 200)["release"], r3);
    let log = events(server, "track");
    assert_eq!(count_events(&log, "rollout-superseded", old_id), 1, "{log:#?}");
    assert_eq!(count_events(&log, "rollout-started", new_id), 1, "{log:#?}");
    assert_eq!(count_events(&log, "wave-started", old_id), 1, "the old rollout never started wave 2: {log:#?}");
    assert!(log.iter().any(|e| e["kind"] == "release-created" && e["release"] == r3), "{log:#?}");
}

#[test]
fn a_rollout_survives_a_server_restart_and_goes_on() {
    let shared = shared();
    let registry = &shared.registry;
    let mut server = Server::start(SERVER_ARGS);
    let key = fleet_with_key(&server, "reboot", json!({}));
    let mut devices = SimulatedFleet::register(&server, &key, "reboot", 5);
    let (r1, images1) = make_release(&server, "reboot", &push_images(registry, "reboot", "1", &["app"]));
    expect(&server, "PUT", "/api/v1/fleets/reboot/release", Some(json!({"release": r1})), 200);
    settle_on(&mut devices, &images1);
    let (r2, images2) = make_release(&server, "reboot", &push_images(registry, "reboot", "2", &["app"]));
    let plan = json!({"release": r2, "bakeTime": "1s", "waves": [{"devices": 1}, {"devices": 2}, {"percent": 100}]});
    let id = expect(&server, "POST", "/api/v1/fleets/reboot/rollouts", Some(plan), 201)["id"].as_u64().unwrap();

    // Wave 1 turns healthy; wave 2 is given the release, and polls it, but has not reported
    // when the server restarts.
    let canary = "reboot-00";
    let wave2 = ["reboot-01", "reboot-02"];
    let mut wave2_has_it = BTreeSet::new();
    let before = wait_for(PATIENCE, || {
        devices.step_healthy(|uuid| uuid == canary);
        for uuid in wave2 {
            if devices.device(uuid).poll().is_some() {
                wave2_has_it.insert(uuid);
            }
        }
        let now = rollout(&server, "reboot", id);
        (now["currentWave"] == 2 && wave2_has_it.len() == 2).then_some(now)
    })
    .unwrap_or_else(|| panic!("wave 2 did not start: {:#}", rollout(&server, "reboot", id)));
    assert_eq!(before["state"], "running");
    for uuid in wave2 {
        assert_eq!(devices.device(uuid).images(), images2);
    }

    server.restart();
    let after = rollout(&server, "reboot", id);
    assert_eq!((after["state"].as_str(), after["currentWave"].as_u64()), (Some("running"), Some(2)), "{after:#}");
    assert_eq!(device_states(&after)[canary].1, "healthy", "{after:#}");
    for uuid in wave2 {
        assert_eq!(device_states(&after)[uuid].1, "updating", "{after:#}");
        // Its ETag still names its target: nothing was written again.
        assert_eq!(devices.device(uuid).poll(), None, "{uuid}");
    }
    assert_eq!(devices.device(canary).poll(), None, "{canary}");

    let done = wait_for(PATIENCE, || {
        devices.step_healthy(|_| true);
        let now = rollout(&server, "reboot", id);
        (now["state"] == "succeeded").then_some(now)
    })
    .unwrap_or_else(|| panic!("the rollout did not go on after the restart: {:#}", rollout(&server, "reboot", id)));
    assert_eq!(done["failed"], 0, "{done:#}");
    for device in devices.devices.iter_mut() {
        device.poll();
        assert_eq!(device.images(), images2, "{}", device.uuid);
    }
    let log = events(&server, "reboot");
    assert_eq!(count_events(&log, "wave-started", id), 3, "no wave started twice: {log:#?}");
    assert_eq!(count_events(&log, "device-healthy", id), 5, "{log:#?}");
    assert_eq!(expect(&server, "GET", "/api/v1/fleets/reboot", None, 200)["release"], r2);
}

/// The tracked image whose reference ends with `suffix` (`/revert/app:latest`).
fn tracked(server: &Server, suffix: &str) -> Option<Value> {
    let images = expect(server, "GET", "/api/v1/images", None, 200);
    images["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["reference"].as_str().unwrap_or("").ends_with(suffix))
        .cloned()
}

/// `minimumAge` is there so that a bad push can be taken back: a tag that moves and moves
/// back to the release's digest within it leaves no release of the digest it passed
/// through, even when another tag of the fleet moves meanwhile and a release is made.
#[test]
fn a_tag_moved_and_moved_back_within_minimum_age_makes_no_release_of_the_digest_in_between() {
    let shared = shared();
    let (server, registry) = (&shared.server, &shared.registry);
    let plan = json!({"waves": [{"percent": 100}], "bakeTime": "0s", "minimumAge": "5s"});
    let key = fleet_with_key(server, "revert", json!({"rolloutPlan": plan}));
    let mut devices = SimulatedFleet::register(server, &key, "revert", 2);
    let push = |name: &str, content: &str| {
        push_image(registry, &format!("revert/{name}"), "latest", &ImageSpec::linux_amd64(content))
    };
    let app_a = push("app", "app A");
    let side_1 = push("side", "side 1");
    let latest: Vec<String> =
        ["app", "side"].iter().map(|n| format!("{}/revert/{n}:latest", registry.host())).collect();
    let (r1, images1) = make_release(server, "revert", &latest);
    assert!(images1[0].ends_with(&app_a) && images1[1].ends_with(&side_1), "{images1:?}");
    expect(server, "PUT", "/api/v1/fleets/revert/release", Some(json!({"release": r1})), 200);
    settle_on(&mut devices, &images1);

    // A bad push of the app, seen by the refresher…
    let app_b = push("app", "app B");
    wait_for(PATIENCE, || {
        let log = events(server, "revert");
        log.iter()
            .any(|e| e["kind"] == "tag-moved" && e["message"].as_str().unwrap_or("").contains(&app_b))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the move of app:latest to {app_b} was not seen: {:#?}", events(server, "revert")));
    // …taken back (the same image pushed again), and the refresher has looked at it since.
    assert_eq!(push("app", "app A"), app_a);
    let checked =
        wait_for(PATIENCE, || tracked(server, "/revert/app:latest").filter(|i| i["digest"] == app_a.as_str()))
            .unwrap_or_else(|| panic!("the refresher did not see app:latest back on {app_a}"));
    wait_for(PATIENCE, || {
        tracked(server, "/revert/app:latest").filter(|i| i["lastChecked"] != checked["lastChecked"]).map(|_| ())
    })
    .expect("app:latest asked again");
    // Another tag moves: after minimumAge, a release is made of what the tags point at now.
    let side_2 = push("side", "side 2");
    let moved = wait_for(PATIENCE, || {
        let releases = expect(server, "GET", "/api/v1/fleets/revert/releases", None, 200);
        releases["releases"].as_array().unwrap().iter().find(|r| r["source"] == "tag-moved").cloned()
    })
    .unwrap_or_else(|| panic!("no release was made of side:latest moving: {:#?}", events(server, "revert")));
    let id = moved["id"].as_u64().unwrap();
    let moved = expect(server, "GET", &format!("/api/v1/fleets/revert/releases/{id}"), None, 200);
    let images2: Vec<String> = services_of(&moved).into_iter().map(|s| s.3).collect();
    assert!(
        images2[0].ends_with(&app_a),
        "release {id} pins app {}, not {app_a} where app:latest is: {moved:#}",
        images2[0]
    );
    assert!(images2[1].ends_with(&side_2), "{moved:#}");

    // Its rollout brings the devices there; none ever ran the digest taken back.
    let done = wait_for(PATIENCE, || {
        devices.step_healthy(|_| true);
        let rollouts = expect(server, "GET", "/api/v1/fleets/revert/rollouts", None, 200);
        rollouts["rollouts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["release"] == id && r["state"] == "succeeded")
            .cloned()
    })
    .unwrap_or_else(|| panic!("the release of the moved tag was not rolled out: {:#?}", events(server, "revert")));
    assert_eq!(done["failed"], 0, "{done:#}");
    for device in &devices.devices {
        assert_eq!(device.images(), images2, "{}", device.uuid);
    }
    let releases = expect(server, "GET", "/api/v1/fleets/revert/releases", None, 200);
    assert_eq!(releases["releases"].as_array().unwrap().len(), 2, "{releases:#}");
}
