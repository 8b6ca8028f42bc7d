//! Which containers are the agent's. Docker copies an image's labels onto its
//! containers, so `io.pinion.app-id` alone proves nothing: a registry image carrying it,
//! run by hand, would be "managed" and removed. A container is the agent's when it
//! carries `io.pinion.owner` with the token for its own name — a keyed hash of the name
//! under this gateway's owner secret, which no image author knows, and which a
//! `docker commit` of one of the agent's containers carries to no container of another
//! name — or when its id is recorded in the agent's store (made by an agent from before
//! this label). Everything else is left alone.
//!
//! The owner secret lives beside the agent's database (`owner-secret`, mode 0600), made
//! once from the machine id (so a lost state directory gets it back where the machine id
//! is stable) or at random (where there is none, or it is made anew at each boot on a
//! read-only root): it survives reboots and a lost or replaced database file.

use crate::engine::Container;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;

/// The label whose value is the owner token for the container's name.
pub const LABEL_OWNER: &str = "io.pinion.owner";

/// Where systemd (and most Yocto images) keep the machine id.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// The file beside the agent's database that holds the owner secret.
pub const OWNER_SECRET_FILE: &str = "owner-secret";

/// This gateway's owner secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    secret: String,
}

impl Owner {
    pub fn from_secret(secret: &str) -> Owner {
        Owner { secret: secret.to_string() }
    }

    /// The secret kept in `state_dir`, made there first if missing: from the machine id
    /// at `machine_id` when it holds one, else at random. Unreadable and unwritable state
    /// falls back to the machine id (or, without one, to `fallback`, the device key).
    pub fn for_gateway(state_dir: &Path, machine_id: &Path, fallback: &str) -> Owner {
        let path = state_dir.join(OWNER_SECRET_FILE);
        if let Ok(kept) = std::fs::read_to_string(&path) {
            if kept.trim().len() >= 32 {
                return Owner::from_secret(kept.trim());
            }
        }
        let from_machine = usable_machine_id(machine_id).map(|id| hex_sha256(&format!("io.pinion.owner\n{id}")));
        let secret = from_machine.clone().unwrap_or_else(crate::identity::random_hex::<32>);
        if let Err(e) = write_private(&path, &secret) {
            log::warn!("owner secret not kept at {}: {e}", path.display());
            return Owner::from_secret(&from_machine.unwrap_or_else(|| fallback.to_string()));
        }
        Owner::from_secret(&secret)
    }

    /// The token the container named `name` carries (128 bits, hex).
    pub fn token_for(&self, name: &str) -> String {
        hex_sha256(&format!("{}\n{}", self.secret, name.trim_start_matches('/')))[..32].to_string()
    }

    /// `containers` (every one labelled `io.pinion.app-id`) split into the agent's and
    /// the others; `recorded` are the container ids the store knows.
    pub fn split(&self, containers: Vec<Container>, recorded: &BTreeSet<&str>) -> (Vec<Container>, Vec<Container>) {
        containers.into_iter().partition(|c| {
            c.labels.get(LABEL_OWNER).is_some_and(|token| *token == self.token_for(&c.name))
                || recorded.contains(c.id.as_str())
        })
    }

    /// A `ContainerCreate` body for the container `name` with its owner label added.
    pub fn stamp(&self, name: &str, body: &Value) -> Value {
        let mut body = body.clone();
        if let Some(object) = body.as_object_mut() {
            let labels = object.entry("Labels").or_insert_with(|| Value::Object(Default::default()));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert(LABEL_OWNER.into(), self.token_for(name).into());
            }
        }
        body
    }
}

/// The machine id, when the file holds a real one (not empty, `uninitialized`, zeros).
fn usable_machine_id(path: &Path) -> Option<String> {
    let id = std::fs::read_to_string(path).ok()?;
    let id = id.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_string())
}

/// Lowercase hex, written digit by digit: every container's token is checked each
/// cycle, and a `format!` per byte was most of that.
fn hex_sha256(text: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for byte in Sha256::digest(text.as_bytes()) {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    hex
}

/// Writes `secret` to a new file only its owner can read.
fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn container(id: &str, name: &str, owner: Option<&str>) -> Container {
        let mut labels = BTreeMap::from([("io.pinion.app-id".to_string(), "1".to_string())]);
        if let Some(owner) = owner {
            labels.insert(LABEL_OWNER.into(), owner.into());
        }
        Container {
            id: id.into(),
            name: name.into(),
            image: "img".into(),
            state: "running".into(),
            status: "Up".into(),
            labels,
        }
    }

    #[test]
    fn only_the_token_for_its_own_name_or_a_recorded_id_makes_a_container_the_agents() {
        let owner = Owner::from_secret("machine");
        let other = Owner::from_secret("another gateway");
        let containers = vec![
            container("mine", "web_1", Some(&owner.token_for("web_1"))),
            container("image-labelled", "hand", None),
            container("forged", "x_1", Some("io.pinion.owner")),
            container("elsewhere", "web_1", Some(&other.token_for("web_1"))),
            // `docker commit` of web_1, run by hand under another name: the label came along.
            container("committed", "debug", Some(&owner.token_for("web_1"))),
            container("from-before", "db_1", None),
        ];
        let (owned, foreign) = owner.split(containers, &BTreeSet::from(["from-before"]));
        let ids = |list: &[Container]| list.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&owned), ["mine", "from-before"]);
        assert_eq!(ids(&foreign), ["image-labelled", "forged", "elsewhere", "committed"]);
        assert_eq!(owner.token_for("/web_1"), owner.token_for("web_1"), "Docker's leading slash");
        // As `sha256sum` writes them.
        assert_eq!(hex_sha256(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex_sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn the_secret_is_kept_beside_the_database_and_made_from_the_machine_id() {
        let dir = std::env::temp_dir().join(format!("pinion-owner-{}", std::process::id()));
        let (state, machine_id) = (dir.join("state"), dir.join("machine-id"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&machine_id, "0123456789abcdef0123456789abcdef\n").unwrap();
        let first = Owner::for_gateway(&state, &machine_id, "key-1");
        let kept = state.join(OWNER_SECRET_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!std::fs::read_to_string(&kept).unwrap().contains("0123456789abcdef"), "not the machine id itself");
        // A changed (transient) machine id does not change a kept secret.
        std::fs::write(&machine_id, "fedcba9876543210fedcba9876543210").unwrap();
        assert_eq!(Owner::for_gateway(&state, &machine_id, "key-2"), first);
        // A lost state directory gets the same secret back from a stable machine id.
        std::fs::write(&machine_id, "0123456789abcdef0123456789abcdef").unwrap();
        std::fs::remove_dir_all(&state).unwrap();
        assert_eq!(Owner::for_gateway(&state, &machine_id, "key-3"), first);
        // Without a machine id: random, then kept.
        std::fs::remove_dir_all(&state).unwrap();
        for unusable in ["", "uninitialized\n", "00000000000000000000000000000000"] {
            std::fs::write(&machine_id, unusable).unwrap();
            let random = Owner::for_gateway(&state, &machine_id, "key-1");
            assert_ne!(random, first, "{unusable:?}");
            assert_eq!(Owner::for_gateway(&state, &machine_id, "key-1"), random, "kept");
            std::fs::remove_dir_all(&state).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stamping_adds_the_label_for_the_name_and_keeps_the_rest() {
        let owner = Owner::from_secret("m");
        let stamped = owner.stamp("web_1", &json!({"Image": "a", "Labels": {"io.pinion.app-id": "1"}}));
        assert_eq!(stamped["Labels"]["io.pinion.app-id"], "1");
        assert_eq!(stamped["Labels"][LABEL_OWNER], owner.token_for("web_1"));
        assert_eq!(owner.stamp("db_1", &json!({"Image": "a"}))["Labels"][LABEL_OWNER], owner.token_for("db_1"));
        assert_ne!(owner.token_for("web_1"), owner.token_for("db_1"));
    }
}
