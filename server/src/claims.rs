//! Who may set the key of a device at registration: the rule behind `POST
//! /device/register`, pure, applied by the store inside the registration's transaction.
//!
//! - A uuid nobody has is anyone's with a provisioning key: the device is created.
//! - The key a device already has is answered again (the agent lost our answer).
//! - A device that exists without a key (prepared by the operator, or after a key reset),
//!   or whose registration never completed, takes a key only from someone entitled to
//!   it: the operator, or a provisioning key bound to that device (a registration token).
//! - Besides them, the provisioning key that registered it: while the registration is
//!   incomplete (an agent restarting between the two phases), and for the time the
//!   operator opened it after a key reset (a gateway whose storage was replaced comes
//!   back with the fleet's key). Never otherwise: a fleet key every gateway holds does
//!   not claim a reset device at any later time.
//! - A completed registration keeps its key until the operator resets it.
//!
//! A caller not entitled to an existing uuid gets one answer whatever its state, so it
//! cannot tell a prepared device from a registered one, nor claim either.

use crate::Error;

/// Who is registering.
#[derive(Debug, Clone, PartialEq)]
pub enum Claimant {
    /// The admin token: the operator registering by hand.
    Operator,
    /// A provisioning key; `device` when the operator bound it to one device.
    Key { id: String, device: Option<String>, single_use: bool },
}

impl Claimant {
    /// What the device row records as `provisioned_by`.
    pub fn provisioned_by(&self) -> &str {
        match self {
            Claimant::Operator => "admin",
            Claimant::Key { id, .. } => id,
        }
    }
}

/// The device as it is stored, when it exists.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingDevice<'a> {
    pub key_hash: Option<&'a str>,
    pub registration_complete: bool,
    /// The provisioning key id (or `admin`) that set its key last, or the one the
    /// operator named at a key reset.
    pub provisioned_by: Option<&'a str>,
    /// Its key was reset and the time the operator gave `provisioned_by` to register it
    /// again has not run out.
    pub open_after_reset: bool,
}

/// What a registration does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A new device with this key.
    Create,
    /// The device already has this key: nothing changes.
    Unchanged,
    /// The existing device takes this key.
    SetKey,
}

/// The decision for `claimant` registering `uuid` with a key hashing to `key_hash`.
pub fn decide_claim(
    uuid: &str,
    existing: Option<&ExistingDevice<'_>>,
    claimant: &Claimant,
    key_hash: &str,
) -> Result<Claim, Error> {
    if let Claimant::Key { device: Some(bound), .. } = claimant {
        if bound != uuid {
            return Err(Error::Forbidden {
                reason: format!("this provisioning key registers device {bound} only, not {uuid}"),
            });
        }
    }
    let Some(existing) = existing else { return Ok(Claim::Create) };
    if existing.key_hash == Some(key_hash) {
        return Ok(Claim::Unchanged);
    }
    let entitled = match claimant {
        Claimant::Operator => true,
        Claimant::Key { device: Some(_), .. } => true, // bound to this uuid, checked above
        Claimant::Key { id, device: None, .. } => {
            let incomplete = existing.key_hash.is_some() && !existing.registration_complete;
            let reopened = existing.key_hash.is_none() && existing.open_after_reset;
            existing.provisioned_by == Some(id.as_str()) && (incomplete || reopened)
        }
    };
    if !entitled {
        return Err(not_available(uuid));
    }
    if existing.key_hash.is_some() && existing.registration_complete {
        return Err(Error::Conflict {
            reason: format!(
                "device {uuid} is registered with another key; the operator resets it with \
                 POST /api/v1/devices/{uuid}/key/reset, then it may register again"
            ),
        });
    }
    Ok(Claim::SetKey)
}

/// The one answer to a caller not entitled to an existing uuid, whatever its state.
fn not_available(uuid: &str) -> Error {
    Error::Conflict {
        reason: format!(
            "device {uuid} cannot be registered with this provisioning key; the operator can \
             issue a registration token for it (POST /api/v1/devices/{uuid}/registration-token)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn general(id: &str) -> Claimant {
        Claimant::Key { id: id.into(), device: None, single_use: false }
    }

    fn token(device: &str) -> Claimant {
        Claimant::Key { id: "tok".into(), device: Some(device.into()), single_use: true }
    }

    fn device<'a>(key_hash: Option<&'a str>, complete: bool, by: Option<&'a str>) -> ExistingDevice<'a> {
        ExistingDevice { key_hash, registration_complete: complete, provisioned_by: by, open_after_reset: false }
    }

    fn message(result: Result<Claim, Error>) -> String {
        match result {
            Err(Error::Conflict { reason }) | Err(Error::Forbidden { reason }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_new_uuid_is_created_by_any_provisioning_key() {
        assert!(matches!(decide_claim("d", None, &general("k1"), "h"), Ok(Claim::Create)));
        assert!(matches!(decide_claim("d", None, &Claimant::Operator, "h"), Ok(Claim::Create)));
        assert!(matches!(decide_claim("d", None, &token("d"), "h"), Ok(Claim::Create)));
    }

    #[test]
    fn the_same_key_again_changes_nothing() {
        let registered = device(Some("h"), true, Some("k1"));
        assert!(matches!(decide_claim("d", Some(&registered), &general("k2"), "h"), Ok(Claim::Unchanged)));
    }

    #[test]
    fn a_prepared_device_is_claimed_only_by_its_token_or_the_operator() {
        let prepared = device(None, false, None);
        assert!(matches!(decide_claim("d", Some(&prepared), &token("d"), "h"), Ok(Claim::SetKey)));
        assert!(matches!(decide_claim("d", Some(&prepared), &Claimant::Operator, "h"), Ok(Claim::SetKey)));
        assert!(message(decide_claim("d", Some(&prepared), &general("k1"), "h")).contains("registration token"));
        assert!(message(decide_claim("d", Some(&prepared), &token("e"), "h")).contains("device e only"));
    }

    #[test]
    fn a_caller_without_a_right_cannot_tell_prepared_from_registered() {
        let states = [
            device(None, false, None),
            device(None, false, Some("k1")),
            device(Some("x"), false, Some("k1")),
            device(Some("x"), true, Some("k1")),
        ];
        let answers: Vec<String> =
            states.iter().map(|s| message(decide_claim("d", Some(s), &general("k2"), "h"))).collect();
        assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    }

    #[test]
    fn an_incomplete_registration_is_replaced_only_by_the_key_that_made_it() {
        let incomplete = device(Some("x"), false, Some("k1"));
        assert!(matches!(decide_claim("d", Some(&incomplete), &general("k1"), "h"), Ok(Claim::SetKey)));
        assert!(message(decide_claim("d", Some(&incomplete), &general("k2"), "h")).contains("cannot be registered"));
    }

    #[test]
    fn a_key_reset_reopens_the_device_to_the_key_that_registered_it_for_a_while() {
        let open = ExistingDevice { open_after_reset: true, ..device(None, false, Some("k1")) };
        assert!(matches!(decide_claim("d", Some(&open), &general("k1"), "h"), Ok(Claim::SetKey)));
        assert!(matches!(decide_claim("d", Some(&open), &token("d"), "h"), Ok(Claim::SetKey)));
        assert!(message(decide_claim("d", Some(&open), &general("k2"), "h")).contains("cannot be registered"));
        assert!(message(decide_claim("d", Some(&open), &token("e"), "h")).contains("device e only"));
        // The time ran out (or was 0): the fleet key no longer claims it, ever.
        let closed = device(None, false, Some("k1"));
        assert!(message(decide_claim("d", Some(&closed), &general("k1"), "h")).contains("registration token"));
        assert!(matches!(decide_claim("d", Some(&closed), &token("d"), "h"), Ok(Claim::SetKey)));
        // Once a key is set again, it is no longer open, even within the time.
        let claimed = ExistingDevice { open_after_reset: true, ..device(Some("x"), true, Some("k1")) };
        assert!(message(decide_claim("d", Some(&claimed), &general("k1"), "h")).contains("cannot be registered"));
    }

    #[test]
    fn a_completed_registration_keeps_its_key_until_reset() {
        let registered = device(Some("x"), true, Some("k1"));
        for claimant in [token("d"), Claimant::Operator] {
            assert!(message(decide_claim("d", Some(&registered), &claimant, "h")).contains("key/reset"));
        }
        // Even the key that registered it gets the answer everyone gets.
        assert!(message(decide_claim("d", Some(&registered), &general("k1"), "h")).contains("cannot be registered"));
    }
}
