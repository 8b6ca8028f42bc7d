//! Who this device is to the server: a uuid and a 256-bit device key, either from the
//! configuration or made here and registered with a provisioning key, and kept in
//! SQLite so that a restart never registers twice.

use crate::client::ServerClient;
use crate::config::Config;
use crate::store::{AgentStore, Identity};
use crate::Error;

/// The identity to poll with, registering first when needed. `Ok(None)` means "not yet":
/// registration could not reach the server, or was refused until the operator acts
/// (logged with what to do); try again later.
pub fn ensure_identity(config: &Config, store: &AgentStore, client: &ServerClient) -> Result<Option<Identity>, Error> {
    if let (Some(uuid), Some(key)) = (&config.uuid, &config.device_key) {
        let identity = Identity { uuid: uuid.clone(), device_key: key.clone(), registered: true };
        if store.identity()?.as_ref() != Some(&identity) {
            store.save_identity(&identity)?;
        }
        return Ok(Some(identity));
    }
    let stored = store.identity()?;
    if let Some(identity) = stored.as_ref().filter(|i| i.registered) {
        return Ok(Some(identity.clone()));
    }
    let Some(provisioning_key) = &config.provisioning_key else {
        return Err(Error::Config {
            source_name: "identity".into(),
            reason: "no device identity: set uuid and device_key, or provisioning_key to register".into(),
        });
    };
    // Made once and stored before asking, so a crash mid-registration retries the same identity.
    let identity = match stored {
        Some(identity) => identity,
        None => {
            let identity = Identity {
                uuid: config.uuid.clone().unwrap_or_else(new_uuid),
                device_key: random_hex::<32>(),
                registered: false,
            };
            store.save_identity(&identity)?;
            identity
        }
    };
    let outcome = client.register(
        provisioning_key,
        &identity.uuid,
        &identity.device_key,
        config.device_name.as_deref(),
        config.device_type.as_deref(),
    );
    match outcome {
        Ok(()) => {}
        // Registered before, but the answer was lost: the key works if a poll does (a
        // single-use registration token is spent by then, so that is a 401).
        Err(Error::ServerStatus { status: 401 | 403 | 409, .. })
            if client.poll(&identity.uuid, &identity.device_key, None).is_ok() => {}
        Err(Error::ServerUnreachable { url, reason }) => {
            log::warn!("registration deferred, server unreachable at {url}: {reason}");
            return Ok(None);
        }
        Err(Error::ServerStatus { status, .. }) if status >= 500 => return Ok(None),
        // Only the operator can change these: say what to do and try again later, never
        // exit (a restart loop would add a failed authentication every few seconds).
        Err(Error::ServerStatus { status: status @ (401 | 403 | 409), message, .. }) => {
            let what = operator_action(status, &identity.uuid);
            log::error!("registration of {} refused ({status}: {message}); {what}", identity.uuid);
            let _ = store.log_event("error", &format!("registration refused ({status}); {what}"));
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let registered = Identity { registered: true, ..identity };
    store.save_identity(&registered)?;
    let _ = store.log_event("info", &format!("registered as {}", registered.uuid));
    log::info!("registered with the server as {}", registered.uuid);
    Ok(Some(registered))
}

/// What the operator must do when registration is refused with `status`.
fn operator_action(status: u16, uuid: &str) -> String {
    match status {
        409 => format!(
            "the server knows device {uuid} with another key (this gateway lost its database?): the operator \
             resets it with POST /api/v1/devices/{uuid}/key/reset, or issues a registration token for it \
             (POST /api/v1/devices/{uuid}/registration-token) to set as provisioning_key"
        ),
        _ => "the provisioning key is not valid (revoked, expired, or used up): the operator issues a new one \
              and it goes into provisioning_key in agent.toml"
            .to_string(),
    }
}

/// `N` random bytes as lowercase hex.
pub fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random (version 4) UUID.
pub fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4() {
        let uuid = new_uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(uuid, new_uuid());
        assert_eq!(random_hex::<32>().len(), 64);
    }
}
