//! The stored target's services (`spec::desired_services`), made once per target rather
//! than every cycle: parsing the target's JSON and mapping and hashing every service's
//! config was a sixth of an idle cycle. They are kept with the stored target they were
//! made from, the store's own copy (`AgentStore::target`, the same until the store
//! writes) or else its text compared, so a new target is used in the cycle that finds it
//! stored.

use crate::spec::{desired_services, DesiredService, ServiceKey};
use crate::store::StoredTarget;
use crate::Error;
use pinion_model::TargetState;
use std::rc::Rc;

/// What `desired_services` gives: the services to run, and those that cannot be run.
pub type Services = (Vec<DesiredService>, Vec<(ServiceKey, Error)>);

/// The services of the last stored target seen.
#[derive(Debug, Default)]
pub struct TargetServices {
    /// The stored target they were made from (`Some(None)`: none was stored).
    made_from: Option<Option<Rc<StoredTarget>>>,
    services: Vec<DesiredService>,
    /// The services that cannot be run, and why (`desired_services` says so only with
    /// `Error::InvalidTarget`, made again from this for each caller).
    invalid: Vec<(ServiceKey, String)>,
}

impl TargetServices {
    /// `desired_services` of `stored`, the stored target (`None`: none stored yet, so
    /// nothing to run). A stored text that is no target state is an error each time.
    pub fn of(&mut self, stored: Option<Rc<StoredTarget>>) -> Result<Services, Error> {
        let same = |made: &Option<Rc<StoredTarget>>| match (made, &stored) {
            (Some(made), Some(stored)) => Rc::ptr_eq(made, stored) || made.state == stored.state,
            (None, None) => true,
            _ => false,
        };
        if !self.made_from.as_ref().is_some_and(same) {
            let target = match &stored {
                Some(stored) => serde_json::from_str::<TargetState>(&stored.state).map_err(|e| {
                    Error::InvalidTarget { reason: format!("stored target is not a target state: {e}") }
                })?,
                None => TargetState::default(),
            };
            let (services, invalid) = desired_services(&target);
            self.services = services;
            self.invalid = invalid.into_iter().map(|(key, error)| (key, reason(error))).collect();
            self.made_from = Some(stored);
        }
        let invalid =
            self.invalid.iter().map(|(key, reason)| (key.clone(), Error::InvalidTarget { reason: reason.clone() }));
        Ok((self.services.clone(), invalid.collect()))
    }
}

/// What an `Error::InvalidTarget` says after its prefix; any other error in words.
fn reason(error: Error) -> String {
    match error {
        Error::InvalidTarget { reason } => reason,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(services: serde_json::Value) -> String {
        json!({"apps": {"1": {"appId": 1, "services": services}}, "config": {}}).to_string()
    }

    fn stored(state: &str) -> Rc<StoredTarget> {
        Rc::new(StoredTarget { etag: None, state: state.to_string(), fetched_at: 0 })
    }

    fn described(made: &Services) -> (Vec<String>, Vec<String>) {
        let services = made.0.iter().map(|s| format!("{} {} {}", s.key, s.image, s.config_hash)).collect();
        (services, made.1.iter().map(|(key, e)| format!("{key}: {e}")).collect())
    }

    #[test]
    fn the_same_as_desired_services_and_made_again_when_the_target_changes() {
        let mut kept = TargetServices::default();
        let first = target(json!([
            {"serviceName": "web", "imageName": "a@sha256:1"},
            {"serviceName": "broken"},
        ]));
        let second = target(json!([{"serviceName": "web", "imageName": "a@sha256:2"}]));
        let same_row = stored(&first);
        let states = [Some(Rc::clone(&same_row)), Some(same_row), Some(stored(&first)), Some(stored(&second)), None];
        for state in states.into_iter().chain([Some(stored(&first))]) {
            let text = state.as_ref().map(|s| s.state.clone());
            let parsed = text.map(|s| serde_json::from_str::<TargetState>(&s).unwrap()).unwrap_or_default();
            let (services, invalid) = desired_services(&parsed);
            assert_eq!(described(&kept.of(state.clone()).unwrap()), described(&(services, invalid)), "{state:?}");
        }
        assert_eq!(described(&kept.of(Some(stored(&first))).unwrap()).1.len(), 1, "the service without an image");
    }

    #[test]
    fn a_stored_text_that_is_no_target_is_an_error_every_time() {
        let mut kept = TargetServices::default();
        assert!(kept.of(Some(stored("[]"))).is_err());
        assert!(kept.of(Some(stored("[]"))).is_err());
        assert!(kept.of(None).unwrap().0.is_empty());
    }
}
