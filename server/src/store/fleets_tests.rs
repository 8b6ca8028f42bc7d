//! The fleet store's tests: fleets made once and deleted only when empty, pins, one
//! active rollout per fleet, moved tags and the event log.

use super::*;
use crate::store::testing::{add_devices, both_engines};
use crate::store::Store;

fn fleet(name: &str) -> Fleet {
    Fleet {
        name: name.into(),
        description: None,
        update_policy: None,
        rollout_plan: None,
        current_release: None,
        created_at: "t".into(),
    }
}

fn rollout(fleet: &str, release: u64, status: RolloutStatus) -> StoredRollout {
    StoredRollout {
        id: 0,
        fleet: fleet.into(),
        release,
        previous_release: None,
        plan: RolloutPlan::default(),
        progress: RolloutProgress {
            status,
            current_wave: None,
            wave_started_at: None,
            wave_count: 2,
            superseded_by: None,
            failures_accepted: 0,
        },
        created_at: "t".into(),
        updated_at: "t".into(),
    }
}

both_engines! {
    fn a_fleet_is_made_once_and_deleted_only_when_empty(store) {
        add_devices(&store, &["d1"]);
        store.create_fleet(&fleet("prod")).unwrap();
        assert!(matches!(store.create_fleet(&fleet("prod")), Err(Error::Conflict { .. })));
        assert!(matches!(store.set_device_fleet("d1", Some("nope")), Err(Error::NotFound { .. })));
        assert!(store.set_device_fleet("d1", Some("prod")).unwrap());
        assert!(!store.set_device_fleet("ghost", Some("prod")).unwrap());
        let err = store.delete_fleet("prod").unwrap_err().to_string();
        assert!(err.contains("still has 1 devices"), "{err}");
        store.set_device_fleet("d1", None).unwrap();
        assert!(store.delete_fleet("prod").unwrap());
        assert!(!store.delete_fleet("prod").unwrap());
    }

    fn an_operators_target_pins_a_device_and_joining_a_fleet_unpins_it(store) {
        add_devices(&store, &["d1"]);
        store.create_fleet(&fleet("prod")).unwrap();
        // The operator's target above pinned it; joining the fleet makes it follow.
        assert!(store.membership("d1").unwrap().unwrap().pinned);
        store.set_device_fleet("d1", Some("prod")).unwrap();
        let member = store.membership("d1").unwrap().unwrap();
        assert_eq!((member.fleet.as_deref(), member.pinned), (Some("prod"), false));
        store.set_rollout_release(&["d1".to_string()], Some(7), Some(3)).unwrap();
        let member = store.membership("d1").unwrap().unwrap();
        assert_eq!((member.rollout_id, member.rollout_release), (Some(7), Some(3)));
        // A fleet's new release drops what rollouts gave its devices.
        let id = store.create_release("prod", "{}", &[], "operator", None).unwrap();
        store.set_fleet_release("prod", id).unwrap();
        let member = store.membership("d1").unwrap().unwrap();
        assert_eq!((member.rollout_id, member.rollout_release), (None, None));
        assert_eq!(store.fleet("prod").unwrap().unwrap().current_release, Some(id));
    }

    fn a_release_never_replaces_the_target_of_a_pinned_device(store) {
        add_devices(&store, &["d1"]);
        assert!(store.membership("d1").unwrap().unwrap().pinned);
        let poll = crate::store::PollAnswer { etag: "\"r\"".into(), body: "{\"release\":1}".into() };
        let target = crate::store::NewTarget {
            source: "rollout",
            release: Some(1),
            ..crate::store::testing::operator_target("{}", &poll)
        };
        assert_eq!(store.set_targets(&[("d1", target)]).unwrap(), [1], "still version 1");
        assert_eq!(store.poll("d1").unwrap().unwrap().etag, "\"e\"");
        assert_eq!(store.membership("d1").unwrap().unwrap().release_id, None);
    }

    fn one_active_rollout_per_fleet_and_one_waiting_to_supersede_it(store) {
        store.create_fleet(&fleet("prod")).unwrap();
        assert!(matches!(
            store.create_rollout(&rollout("prod", 1, RolloutStatus::Waiting), &[]),
            Err(Error::Conflict { .. })
        ));
        let first = store.create_rollout(&rollout("prod", 1, RolloutStatus::Running), &[]).unwrap();
        let err = store.create_rollout(&rollout("prod", 2, RolloutStatus::Running), &[]).unwrap_err().to_string();
        assert!(err.contains("supersede"), "{err}");
        let second = store.create_rollout(&rollout("prod", 2, RolloutStatus::Waiting), &[]).unwrap();
        assert_eq!(store.rollout(first).unwrap().unwrap().progress.superseded_by, Some(second));
        let err = store.create_rollout(&rollout("prod", 3, RolloutStatus::Waiting), &[]).unwrap_err().to_string();
        assert!(err.contains(&format!("rollout {second} waiting")), "{err}");
        assert_eq!(store.active_rollouts().unwrap().len(), 2);
        assert_eq!(store.rollout_counts().unwrap(), vec![("running".to_string(), 1), ("waiting".to_string(), 1)]);
    }

    fn a_moved_tag_keeps_the_time_its_digest_was_first_seen(store) {
        store.create_fleet(&fleet("prod")).unwrap();
        let update = |digest: &str, at| FleetUpdate {
            fleet: "prod".into(),
            reference: "docker.io/library/nginx:latest".into(),
            digest: digest.into(),
            detected_at: at,
        };
        assert!(store.put_fleet_update(&update("sha256:a", 100)).unwrap());
        assert!(!store.put_fleet_update(&update("sha256:a", 200)).unwrap());
        assert_eq!(store.fleet_updates().unwrap()[0].detected_at, 100);
        assert!(store.put_fleet_update(&update("sha256:b", 300)).unwrap());
        assert_eq!(store.fleet_updates().unwrap()[0].detected_at, 300);
        store.delete_fleet_updates("prod").unwrap();
        assert!(store.fleet_updates().unwrap().is_empty());
    }

    fn events_are_newest_first_filtered_and_paged(store) {
        let event = |fleet: &str, device: Option<&str>, at: &str| Event {
            id: 0,
            at: at.into(),
            fleet: Some(fleet.into()),
            device: device.map(Into::into),
            rollout: None,
            release: None,
            kind: "k".into(),
            message: "m".into(),
        };
        store
            .record_events(&[
                event("a", None, "2026-01-01T00:00:00Z"),
                event("b", Some("d1"), "2026-01-02T00:00:00Z"),
                event("a", Some("d1"), "2026-01-03T00:00:00Z"),
            ])
            .unwrap();
        let all = store.events(&EventFilter { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 2, 1]);
        let of_a = store.events(&EventFilter { fleet: Some("a"), limit: 10, ..Default::default() }).unwrap();
        assert_eq!(of_a.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 1]);
        let of_d1 = store
            .events(&EventFilter {
                device: Some("d1"),
                since: Some("2026-01-03T00:00:00Z"),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(of_d1.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
        let page = store.events(&EventFilter { before: Some(3), limit: 1, ..Default::default() }).unwrap();
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [2]);
    }
}
