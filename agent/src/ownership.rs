//! Which containers are the agent's. Docker copies an image's labels onto its
//! containers, so `io.pinion.app-id` alone proves nothing: a registry image carrying it,
//! run by hand, would be "managed" and removed. A container is the agent's when it
//! carries `io.pinion.owner` with this gateway's owner token — a value derived from a
//! secret an image author cannot know (the machine id, as systemd's app-specific ids
//! are, or else the device key) — or when its id is recorded in the agent's store (made
//! by an agent from before this label). Everything else is left alone.

use crate::engine::Container;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;

/// The label whose value is the owner token.
pub const LABEL_OWNER: &str = "io.pinion.owner";

/// Where systemd (and most Yocto images) keep the machine id.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// This gateway's owner token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    token: String,
}

impl Owner {
    /// The token made from `secret`: 128 bits of a SHA-256 that names its purpose, so the
    /// secret itself cannot be read back from a label.
    pub fn from_secret(secret: &str) -> Owner {
        let digest = Sha256::digest(format!("io.pinion.owner\n{secret}").as_bytes());
        Owner { token: digest[..16].iter().map(|b| format!("{b:02x}")).collect() }
    }

    /// The machine id at `machine_id` when it holds one (the token then survives a lost
    /// agent database), else `device_key`.
    pub fn for_gateway(machine_id: &Path, device_key: &str) -> Owner {
        let id = std::fs::read_to_string(machine_id).unwrap_or_default();
        let id = id.trim();
        let usable = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0');
        Owner::from_secret(if usable { id } else { device_key })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// `containers` (every one labelled `io.pinion.app-id`) split into the agent's and
    /// the others; `recorded` are the container ids the store knows.
    pub fn split(&self, containers: Vec<Container>, recorded: &BTreeSet<&str>) -> (Vec<Container>, Vec<Container>) {
        containers.into_iter().partition(|c| {
            c.labels.get(LABEL_OWNER).is_some_and(|token| *token == self.token) || recorded.contains(c.id.as_str())
        })
    }

    /// A `ContainerCreate` body with the owner label added.
    pub fn stamp(&self, body: &Value) -> Value {
        let mut body = body.clone();
        if let Some(object) = body.as_object_mut() {
            let labels = object.entry("Labels").or_insert_with(|| Value::Object(Default::default()));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert(LABEL_OWNER.into(), self.token.clone().into());
            }
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn container(id: &str, owner: Option<&str>) -> Container {
        let mut labels = BTreeMap::from([("io.pinion.app-id".to_string(), "1".to_string())]);
        if let Some(owner) = owner {
            labels.insert(LABEL_OWNER.into(), owner.into());
        }
        Container {
            id: id.into(),
            name: format!("c-{id}"),
            image: "img".into(),
            state: "running".into(),
            status: "Up".into(),
            labels,
        }
    }

    #[test]
    fn only_its_own_label_or_a_recorded_id_makes_a_container_the_agents() {
        let owner = Owner::from_secret("machine");
        let other = Owner::from_secret("another gateway");
        let containers = vec![
            container("mine", Some(owner.token())),
            container("image-labelled", None),
            container("forged", Some("io.pinion.owner")),
            container("elsewhere", Some(other.token())),
            container("from-before", None),
        ];
        let (owned, foreign) = owner.split(containers, &BTreeSet::from(["from-before"]));
        let ids = |list: &[Container]| list.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&owned), ["mine", "from-before"]);
        assert_eq!(ids(&foreign), ["image-labelled", "forged", "elsewhere"]);
    }

    #[test]
    fn the_token_comes_from_the_machine_id_when_there_is_one() {
        let dir = std::env::temp_dir().join(format!("pinion-owner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("machine-id");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let from_machine = Owner::for_gateway(&path, "key-1");
        assert_eq!(from_machine, Owner::for_gateway(&path, "key-2"), "a new device key keeps the token");
        assert_eq!(from_machine, Owner::from_secret("0123456789abcdef0123456789abcdef"));
        assert_eq!(from_machine.token().len(), 32);
        assert!(!from_machine.token().contains("0123456789abcdef"), "the machine id is not in the label");
        for unusable in ["", "uninitialized\n", "00000000000000000000000000000000"] {
            std::fs::write(&path, unusable).unwrap();
            assert_eq!(Owner::for_gateway(&path, "key-1"), Owner::from_secret("key-1"), "{unusable:?}");
        }
        assert_eq!(Owner::for_gateway(&dir.join("missing"), "key-1"), Owner::from_secret("key-1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stamping_adds_the_label_and_keeps_the_rest() {
        let owner = Owner::from_secret("m");
        let stamped = owner.stamp(&json!({"Image": "a", "Labels": {"io.pinion.app-id": "1"}}));
        assert_eq!(stamped["Labels"]["io.pinion.app-id"], "1");
        assert_eq!(stamped["Labels"][LABEL_OWNER], owner.token());
        assert_eq!(owner.stamp(&json!({"Image": "a"}))["Labels"][LABEL_OWNER], owner.token());
    }
}
