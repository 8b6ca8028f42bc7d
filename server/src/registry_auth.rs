//! Stored registry credentials put to use. The resolver asks the entries for every
//! device (`StoredCredentials`). A device's poll carries, for the registries its target
//! pulls from (`registry_hosts`, stored with each version), the credentials it uses
//! there, as `"registryAuth": {"<host>": {"username", "password"}}` in its state
//! object (`with_registry_auth`).
//!
//! The stored poll answer never holds a password: the credentials are spliced into it
//! per poll, and its ETag is combined with their revisions, so a credentials change
//! reaches the device and an unchanged poll still gets its `304`. A device whose
//! registries have no credentials gets the stored answer and ETag as they are.

use crate::keys::hex;
use crate::registry::{normalize_host, CredentialSource};
use crate::store::{PollAnswer, RegistryCredential, Store};
use pinion_model::{Reference, TargetState};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

/// The key of the spliced object in a device's state; not accepted in a target an
/// operator sets.
pub const REGISTRY_AUTH_KEY: &str = "registryAuth";

/// The credentials the operator stored for every device, for the server's resolver.
pub struct StoredCredentials(pub Arc<dyn Store>);

impl fmt::Debug for StoredCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoredCredentials")
    }
}

impl CredentialSource for StoredCredentials {
    fn credentials_for(&self, host: &str) -> Option<(String, String)> {
        match self.0.registry_credentials_for(&normalize_host(host), None) {
            Ok(found) => found.map(|c| (c.entry.username, c.password)),
            Err(e) => {
                log::error!("{e}");
                None
            }
        }
    }
}

/// The registry hosts (normalized, each once, sorted) the services of `state` pull
/// from: their pinned images' and their tags' alike.
pub fn registry_hosts(state: &TargetState) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for (_, app) in state.apps.iter() {
        for (_, service) in app.services.iter() {
            let config_image = service.config.as_ref().and_then(|c| c.get("image")).and_then(Value::as_str);
            for image in service.image_name.as_deref().into_iter().chain(config_image) {
                if let Ok(reference) = Reference::parse(image) {
                    let host = normalize_host(reference.domain());
                    if !hosts.contains(&host) {
                        hosts.push(host);
                    }
                }
            }
        }
    }
    hosts.sort();
    hosts
}

/// `answer` with `"registryAuth"` added to the device's state object and an ETag over
/// the stored one and the credentials' revisions. `credentials` must be one per host;
/// none leaves `answer` as it is.
pub fn with_registry_auth(answer: PollAnswer, credentials: &[RegistryCredential]) -> PollAnswer {
    if credentials.is_empty() {
        return answer;
    }
    // The stored body is `{"<uuid>":{…}}` as serde_json writes it: the state object is
    // closed by the last two bytes.
    let Some(open) = answer.body.strip_suffix("}}") else {
        log::error!("a stored poll answer does not end its state object; registry credentials left out");
        return answer;
    };
    let mut auth = Map::new();
    let mut etag = Sha256::new();
    etag.update(answer.etag.as_bytes());
    for credential in credentials {
        let entry = &credential.entry;
        auth.insert(entry.host.clone(), json!({"username": entry.username, "password": credential.password}));
        let scope = entry.device.as_deref().unwrap_or("");
        etag.update(format!("\n{}\0{scope}\0{}", entry.host, credential.revision).as_bytes());
    }
    let separator = if open.ends_with('{') { "" } else { "," };
    let auth = Value::Object(auth);
    PollAnswer {
        body: format!("{open}{separator}\"{REGISTRY_AUTH_KEY}\":{auth}}}}}"),
        etag: format!("\"{}\"", &hex(&etag.finalize())[..32]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CredentialEntry;
    use crate::targets::poll_answer;

    fn credential(host: &str, device: Option<&str>, password: &str, revision: &str) -> RegistryCredential {
        RegistryCredential {
            entry: CredentialEntry {
                host: host.into(),
                device: device.map(str::to_string),
                username: "fleet".into(),
                updated_at: "T".into(),
            },
            password: password.into(),
            revision: revision.into(),
        }
    }

    fn state() -> TargetState {
        serde_json::from_value(json!({"apps": {"1": {"services": [
            {"serviceName": "a", "imageName": "Reg.LAN:5000/app@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
            {"serviceName": "b", "imageName": "nginx:latest", "config": {"image": "nginx:latest"}},
            {"serviceName": "c", "config": {"image": "index.docker.io/library/redis"}},
            {"serviceName": "d", "imageName": "[::1]:5000/x/y:v1"}
        ]}}}))
        .unwrap()
    }

    #[test]
    fn the_hosts_of_every_image_normalized() {
        assert_eq!(registry_hosts(&state()), ["[::1]:5000", "docker.io", "reg.lan:5000"]);
        assert!(registry_hosts(&TargetState::default()).is_empty());
    }

    #[test]
    fn credentials_are_spliced_into_the_state_and_change_the_etag() {
        let stored = poll_answer("dev", &state());
        assert_eq!(with_registry_auth(stored.clone(), &[]), stored, "nothing to add: the stored answer as is");

        let with = with_registry_auth(stored.clone(), &[credential("reg.lan:5000", None, "pw\"1", "r1")]);
        let body: Value = serde_json::from_str(&with.body).unwrap();
        assert_eq!(body["dev"]["registryAuth"], json!({"reg.lan:5000": {"username": "fleet", "password": "pw\"1"}}));
        let mut without = body.clone();
        without["dev"].as_object_mut().unwrap().remove("registryAuth");
        assert_eq!(without, serde_json::from_str::<Value>(&stored.body).unwrap(), "the rest as stored");
        assert_ne!(with.etag, stored.etag);
        assert_eq!(with.etag.len(), 34);
        assert!(!with.etag.contains("pw"), "the ETag is a hash");

        let same = with_registry_auth(stored.clone(), &[credential("reg.lan:5000", None, "pw\"1", "r1")]);
        assert_eq!(same.etag, with.etag, "unchanged credentials: the same ETag");
        let rewritten = with_registry_auth(stored.clone(), &[credential("reg.lan:5000", None, "pw\"1", "r2")]);
        assert_ne!(rewritten.etag, with.etag, "a new revision: a new ETag");
        let own = with_registry_auth(stored, &[credential("reg.lan:5000", Some("dev"), "pw\"1", "r1")]);
        assert_ne!(own.etag, with.etag, "another scope: a new ETag");
    }

    #[test]
    fn an_empty_state_object_still_splices_to_json() {
        let answer = PollAnswer { etag: "\"e\"".into(), body: r#"{"dev":{}}"#.into() };
        let with = with_registry_auth(answer, &[credential("h", None, "p", "r")]);
        let body: Value = serde_json::from_str(&with.body).unwrap();
        assert_eq!(body["dev"]["registryAuth"]["h"]["password"], "p");
    }
}
