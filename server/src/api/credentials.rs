//! The operator's routes for registry credentials: set them for a registry host, for
//! every device or for named ones; list them; remove them. A password goes in with
//! `PUT` and never comes out of any route but the poll of a device whose target pulls
//! from that registry (`registry_auth`).

use super::auth::Caller;
use super::http::{percent_decode, Request, Response};
use super::{device_id, Api};
use crate::registry::normalize_host;
use crate::store::CredentialEntry;
use crate::Error;
use pinion_model::Reference;
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest user name accepted.
const MAX_USERNAME: usize = 256;
/// Longest password accepted: registry tokens used as passwords (ECR, GCR) run to a few KiB.
const MAX_PASSWORD: usize = 8192;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCredentials {
    username: String,
    password: String,
    /// Absent: every device.
    #[serde(default)]
    devices: Option<Vec<String>>,
}

/// `PUT /registries/{host}/credentials`: `{"username", "password", "devices"?}`.
pub(super) fn put(api: &Api, caller: &Caller, request: &Request, host: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let host = registry_host(host)?;
    let body: Value = request.json()?;
    let wanted: NewCredentials = serde_json::from_value(body)
        .map_err(|e| Error::BadRequest { reason: format!("invalid registry credentials: {e}") })?;
    check_text("username", &wanted.username, MAX_USERNAME)?;
    if wanted.username.contains(':') {
        return Err(Error::BadRequest { reason: "username must not contain ':' (HTTP Basic authentication)".into() });
    }
    check_text("password", &wanted.password, MAX_PASSWORD)?;
    let devices = match &wanted.devices {
        None => Vec::new(),
        Some(devices) if devices.is_empty() => {
            return Err(Error::BadRequest {
                reason: "devices must name at least one device; leave it out for every device".into(),
            })
        }
        Some(devices) => {
            let mut unique: Vec<String> = Vec::new();
            for device in devices {
                let device = device_id(device)?.to_string();
                if !unique.contains(&device) {
                    unique.push(device);
                }
            }
            unique
        }
    };
    let updated_at = api.store.put_registry_credentials(&host, &devices, &wanted.username, &wanted.password)?;
    let scope = if devices.is_empty() { "every device".to_string() } else { format!("devices {}", devices.join(", ")) };
    log::info!("registry credentials for {host} set (user {}, {scope})", wanted.username);
    let devices = (!devices.is_empty()).then_some(devices);
    Ok(Response::json(
        200,
        &json!({"status": "ok", "host": host, "username": wanted.username, "devices": devices, "updatedAt": updated_at}),
    ))
}

/// `GET /registries`: every stored entry, without passwords.
pub(super) fn list(api: &Api, caller: &Caller) -> Result<Response, Error> {
    caller.require_admin()?;
    let entries: Vec<Value> = api.store.registry_credential_entries()?.iter().map(entry_json).collect();
    Ok(Response::json(200, &json!({"registries": entries})))
}

/// `DELETE /registries/{host}/credentials[?device=UUID]`: the entry for every device, or
/// the device's own.
pub(super) fn delete(api: &Api, caller: &Caller, request: &Request, host: &str) -> Result<Response, Error> {
    caller.require_admin()?;
    let host = registry_host(host)?;
    let device = request.query_value("device");
    let device = match &device {
        Some(device) => Some(device_id(device)?),
        None => None,
    };
    if !api.store.delete_registry_credentials(&host, device)? {
        let what = match device {
            Some(device) => format!("registry credentials for {host} and device {device}"),
            None => format!("registry credentials for {host} (every device)"),
        };
        return Err(Error::NotFound { what });
    }
    log::info!("registry credentials for {host} removed ({})", device.unwrap_or("every device"));
    Ok(Response::json(200, &json!({"status": "ok", "host": host, "device": device})))
}

fn entry_json(entry: &CredentialEntry) -> Value {
    json!({
        "host": entry.host,
        "username": entry.username,
        "scope": if entry.device.is_some() { "device" } else { "global" },
        "device": entry.device,
        "updatedAt": entry.updated_at,
    })
}

/// The registry host of a path segment (`docker.io`, `registry.lan:5000`,
/// `[fd00::1]:5000`, percent-encoded or not), normalized as stored: the first
/// component of an image reference, as Docker reads it.
fn registry_host(segment: &str) -> Result<String, Error> {
    let host = percent_decode(segment);
    let invalid = || Error::BadRequest {
        reason: format!(
            "{:?} is not a registry host: expected host[:port] as in an image reference \
             (docker.io, registry.lan:5000, [fd00::1]:5000)",
            host.chars().take(80).collect::<String>()
        ),
    };
    if host.is_empty() || host.len() > 255 || host.contains(['/', '@']) {
        return Err(invalid());
    }
    let reference = Reference::parse(&format!("{host}/x")).map_err(|_| invalid())?;
    let normalized = normalize_host(&host);
    if normalize_host(reference.domain()) != normalized {
        return Err(invalid());
    }
    Ok(normalized)
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::BadRequest { reason: format!("{field} must not be empty") });
    }
    if value.len() > max {
        return Err(Error::BadRequest { reason: format!("{field} is longer than {max} bytes") });
    }
    if value.chars().any(char::is_control) {
        return Err(Error::BadRequest { reason: format!("{field} must not contain control characters") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_as_in_image_references() {
        for (segment, host) in [
            ("docker.io", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("registry.lan:5000", "registry.lan:5000"),
            ("Registry.LAN", "registry.lan"),
            ("127.0.0.1%3A5000", "127.0.0.1:5000"),
            ("localhost", "localhost"),
            ("%5Bfd00%3A%3A1%5D:5000", "[fd00::1]:5000"),
        ] {
            assert_eq!(registry_host(segment).unwrap(), host, "{segment}");
        }
        for bad in ["", "myregistry", "https:", "reg.lan:port", "a b", "reg.lan%2Fx", "user@reg.lan", "-bad.lan"] {
            assert!(matches!(registry_host(bad), Err(Error::BadRequest { .. })), "{bad}");
        }
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
