//! What a fleet's devices run, carried into their targets: a device runs its own target
//! (a pin), else the release a rollout gave it, else its fleet's current release
//! (`followed_release`, pure). `bring_to_release` writes that release as the target of
//! each device not already on it, in one transaction, so a device's poll, ETag and
//! registry credentials work exactly as for a target the operator set.

use crate::store::{Fleet, Membership, NewTarget, Release, Store};
use crate::targets::poll_answer;
use crate::timefmt::rfc3339_now;
use crate::Error;
use pinion_model::TargetState;
use std::collections::{BTreeMap, HashMap};

/// Why a device runs what it runs (`GET /devices/{uuid}/target-state`'s `source`).
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSource {
    /// Its own target: in no fleet, or pinned.
    Device,
    /// Its fleet's current release.
    Fleet { fleet: String, release: u64 },
    /// The release a rollout gave it.
    Rollout { fleet: String, release: u64, rollout: u64 },
}

impl TargetSource {
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            TargetSource::Device => json!({"kind": "device"}),
            TargetSource::Fleet { fleet, release } => json!({"kind": "fleet", "fleet": fleet, "release": release}),
            TargetSource::Rollout { fleet, release, rollout } => {
                json!({"kind": "rollout", "fleet": fleet, "release": release, "rollout": rollout})
            }
        }
    }

    pub fn release(&self) -> Option<u64> {
        match self {
            TargetSource::Device => None,
            TargetSource::Fleet { release, .. } | TargetSource::Rollout { release, .. } => Some(*release),
        }
    }

    /// The `source` of a target version written for it.
    fn version_source(&self) -> &'static str {
        match self {
            TargetSource::Device => "operator",
            TargetSource::Fleet { .. } => "fleet",
            TargetSource::Rollout { .. } => "rollout",
        }
    }
}

/// What `member` should run, by the rule above. `Device` when it is in no fleet, pinned,
/// or its fleet has no release yet (its target stays as it is).
pub fn followed_release(member: &Membership, fleet: Option<&Fleet>) -> TargetSource {
    let Some(fleet) = fleet.filter(|f| Some(&f.name) == member.fleet.as_ref()) else { return TargetSource::Device };
    if member.pinned {
        return TargetSource::Device;
    }
    match (member.rollout_release, member.rollout_id, fleet.current_release) {
        (Some(release), Some(rollout), _) => TargetSource::Rollout { fleet: fleet.name.clone(), release, rollout },
        (_, _, Some(release)) => TargetSource::Fleet { fleet: fleet.name.clone(), release },
        _ => TargetSource::Device,
    }
}

/// A release's state, parsed.
pub fn release_state(release: &Release) -> Result<TargetState, Error> {
    serde_json::from_str(&release.state).map_err(|e| Error::Store {
        op: "reading a release",
        reason: format!("release {} of fleet {} is not a valid state: {e}", release.id, release.fleet),
    })
}

/// Writes, for each member not already on it, the release it should run as its target;
/// returns the devices written. Members that follow no release are left alone.
pub fn bring_to_release(store: &dyn Store, fleet: &Fleet, members: &[Membership]) -> Result<Vec<String>, Error> {
    let mut releases: HashMap<u64, (TargetState, Vec<String>, String)> = HashMap::new();
    let mut wanted: Vec<(&str, u64, TargetSource)> = Vec::new();
    for member in members {
        let source = followed_release(member, Some(fleet));
        let Some(release) = source.release() else { continue };
        if member.release_id == Some(release) {
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(entry) = releases.entry(release) {
            let stored = store
                .release(&fleet.name, release)?
                .ok_or_else(|| Error::NotFound { what: format!("release {release} of fleet {}", fleet.name) })?;
            let state = release_state(&stored)?;
            let registries = crate::registry_auth::registry_hosts(&state);
            // The stored state is the same for every device given the release: made once.
            let json = serde_json::to_string(&state)
                .map_err(|e| Error::Store { op: "writing a release", reason: e.to_string() })?;
            entry.insert((state, registries, json));
        }
        wanted.push((&member.uuid, release, source));
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    // Each device's own poll body (it names the device), serialized once per device and
    // held for all of them until the one transaction: kept at its size, not the doubled
    // buffer it was written into (16 KiB for an 8.2 KB body).
    let mut prepared = Vec::with_capacity(wanted.len());
    for (uuid, release, source) in &wanted {
        let mut poll = poll_answer(uuid, &releases[release].0);
        poll.body.shrink_to_fit();
        prepared.push((*uuid, *release, source.version_source(), poll));
    }
    let targets: Vec<(&str, NewTarget<'_>)> = prepared
        .iter()
        .map(|(uuid, release, source, poll)| {
            let (_, registries, json) = &releases[release];
            (
                *uuid,
                NewTarget {
                    state: json,
                    poll,
                    // A release is frozen: its devices follow no tag themselves (the fleet does).
                    references: &[],
                    registries,
                    source,
                    expected_version: None,
                    supersedes_pending: true,
                    release: Some(*release),
                },
            )
        })
        .collect();
    store.set_targets(&targets)?;
    Ok(wanted.iter().map(|(uuid, _, _)| uuid.to_string()).collect())
}

/// Brings every device of `fleet` to what it should run.
pub fn bring_fleet_to_release(store: &dyn Store, fleet_name: &str) -> Result<Vec<String>, Error> {
    let fleet = store.fleet(fleet_name)?.ok_or_else(|| Error::NotFound { what: format!("fleet {fleet_name}") })?;
    let members = store.fleet_members(fleet_name)?;
    bring_to_release(store, &fleet, &members)
}

/// Brings one device to what it should run (after it joined a fleet, or was unpinned).
pub fn bring_device_to_release(store: &dyn Store, uuid: &str) -> Result<TargetSource, Error> {
    let member = store.membership(uuid)?.ok_or_else(|| Error::NotFound { what: format!("device {uuid}") })?;
    let Some(fleet_name) = member.fleet.as_deref() else { return Ok(TargetSource::Device) };
    let fleet = store.fleet(fleet_name)?.ok_or_else(|| Error::NotFound { what: format!("fleet {fleet_name}") })?;
    bring_to_release(store, &fleet, std::slice::from_ref(&member))?;
    Ok(followed_release(&member, Some(&fleet)))
}

/// The update policy a device follows, and whose it is: its own (`device`), else its
/// fleet's (`fleet`), else `default`.
pub fn effective_policy(
    store: &dyn Store,
    uuid: &str,
    default: &crate::policy::UpdatePolicy,
) -> Result<(crate::policy::UpdatePolicy, &'static str), Error> {
    if let Some(own) = store.update_policy(uuid)? {
        return Ok((own, "device"));
    }
    let fleet = match store.membership(uuid)?.and_then(|m| m.fleet) {
        Some(name) => store.fleet(&name)?,
        None => None,
    };
    Ok(match fleet.and_then(|f| f.policy()) {
        Some(policy) => (policy, "fleet"),
        None => (default.clone(), "default"),
    })
}

/// An event of a fleet, stamped now.
pub fn event(fleet: &str, kind: &str, message: String) -> crate::store::Event {
    crate::store::Event {
        id: 0,
        at: rfc3339_now(),
        fleet: Some(fleet.to_string()),
        device: None,
        rollout: None,
        release: None,
        kind: kind.to_string(),
        message,
    }
}

/// The most labels one device may carry.
pub const MAX_LABELS: usize = 16;

/// Keys `[a-z0-9][a-z0-9._-]{0,62}`, values `[A-Za-z0-9._-]{0,63}`, `MAX_LABELS` at most.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), Error> {
    if labels.len() > MAX_LABELS {
        return Err(Error::BadRequest {
            reason: format!("a device has at most {MAX_LABELS} labels, not {}", labels.len()),
        });
    }
    for (key, value) in labels {
        let key_ok = (1..=63).contains(&key.len())
            && key.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !key_ok {
            let shown: String = key.chars().take(80).collect();
            return Err(Error::BadRequest {
                reason: format!("label key {shown:?} must match [a-z0-9][a-z0-9._-]{{0,62}}"),
            });
        }
        let value_ok = value.len() <= 63 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !value_ok {
            let shown: String = value.chars().take(80).collect();
            return Err(Error::BadRequest {
                reason: format!("label {key}: value {shown:?} must match [A-Za-z0-9._-]{{0,63}}"),
            });
        }
    }
    Ok(())
}

/// A fleet name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_valid_fleet_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(current: Option<u64>) -> Fleet {
        Fleet {
            name: "prod".into(),
            description: None,
            update_policy: None,
            rollout_plan: None,
            current_release: current,
            created_at: "t".into(),
        }
    }

    fn member(pinned: bool, rollout: Option<(u64, u64)>) -> Membership {
        Membership {
            uuid: "d1".into(),
            fleet: Some("prod".into()),
            pinned,
            rollout_id: rollout.map(|r| r.0),
            rollout_release: rollout.map(|r| r.1),
            ..Membership::default()
        }
    }

    #[test]
    fn a_pin_wins_then_a_rollouts_release_then_the_fleets() {
        let prod = fleet(Some(3));
        assert_eq!(followed_release(&member(true, Some((9, 4))), Some(&prod)), TargetSource::Device);
        assert_eq!(
            followed_release(&member(false, Some((9, 4))), Some(&prod)),
            TargetSource::Rollout { fleet: "prod".into(), release: 4, rollout: 9 }
        );
        assert_eq!(
            followed_release(&member(false, None), Some(&prod)),
            TargetSource::Fleet { fleet: "prod".into(), release: 3 }
        );
        assert_eq!(followed_release(&member(false, None), Some(&fleet(None))), TargetSource::Device);
        let outside = Membership { fleet: None, ..member(false, None) };
        assert_eq!(followed_release(&outside, Some(&prod)), TargetSource::Device);
    }

    #[test]
    fn fleet_names() {
        for good in ["a", "prod", "site-1", "0", &"a".repeat(63)] {
            assert!(is_valid_fleet_name(good), "{good}");
        }
        for bad in ["", "-a", "Prod", "a_b", "a b", "ü", &"a".repeat(64)] {
            assert!(!is_valid_fleet_name(bad), "{bad}");
        }
    }
}
