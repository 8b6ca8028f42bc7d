//! Who is calling: the operator (admin token), a device (its own key), an agent about to
//! register (a provisioning key), or nobody. Secrets are compared as SHA-256 hashes, the
//! admin token in constant time; each route then says which callers it takes. A signed-in
//! dashboard's session cookie stands for the admin token (`session_caller`).

use super::http::Request;
use super::Api;
use crate::keys::{constant_time_eq, hash_secret};
use crate::sessions::{cookie_values, SessionCheck};
use crate::store::{KeyOwner, ProvisioningKey};
use crate::Error;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// No credentials at all.
    Anonymous,
    /// Credentials that match nothing we know.
    Unrecognized,
    Admin,
    Device(KeyOwner),
    Provisioning(ProvisioningKey),
}

/// Identifies the caller from `X-Device-API-Key` or `Authorization: Bearer`.
pub fn authenticate(api: &Api, request: &Request) -> Result<Caller, Error> {
    identify(api, request, false)
}

/// For `POST /device/register`, which takes a provisioning key or the admin token: those
/// are looked for before device keys, so a device key equal to a provisioning key
/// (registered before keys were kept apart) cannot turn that provisioning key into a
/// device's and break it. A device's key here is still a credential of the wrong kind
/// (403), not an unknown one.
pub fn authenticate_registration(api: &Api, request: &Request) -> Result<Caller, Error> {
    identify(api, request, true)
}

fn identify(api: &Api, request: &Request, provisioning_first: bool) -> Result<Caller, Error> {
    if let Some(key) = request.header("x-device-api-key") {
        return Ok(match api.store.device_by_key_hash(&hash_secret(key.trim()))? {
            Some(owner) => Caller::Device(owner),
            None => Caller::Unrecognized,
        });
    }
    let Some(authorization) = request.header("authorization") else {
        return session_caller(api, request);
    };
    let Some(token) = bearer_token(authorization) else {
        return Ok(Caller::Unrecognized);
    };
    let hash = hash_secret(token);
    if constant_time_eq(hash.as_bytes(), api.admin_token_hash.as_bytes()) {
        return Ok(Caller::Admin);
    }
    // Each lookup only when the one before found nothing: a device poll costs one.
    let provisioning = |hash: &str| Ok::<_, Error>(api.store.provisioning_key_by_hash(hash)?.map(Caller::Provisioning));
    let device = |hash: &str| Ok::<_, Error>(api.store.device_by_key_hash(hash)?.map(Caller::Device));
    let found = if provisioning_first {
        match provisioning(&hash)? {
            Some(caller) => Some(caller),
            None => device(&hash)?,
        }
    } else {
        match device(&hash)? {
            Some(caller) => Some(caller),
            None => provisioning(&hash)?,
        }
    };
    Ok(found.unwrap_or(Caller::Unrecognized))
}

/// The operator signed in to the dashboard (its session cookie), else nobody. A cookie
/// that is no longer signed in is refused with why; one on a state-changing request
/// from another site's page is refused outright (`origin`), whatever its session.
pub fn session_caller(api: &Api, request: &Request) -> Result<Caller, Error> {
    if session_cookies(request).next().is_none() {
        return Ok(Caller::Anonymous);
    }
    match api.sessions.check_any(session_cookies(request), Instant::now()) {
        SessionCheck::Valid { .. } => {}
        SessionCheck::Expired => return Err(super::session::expired()),
        SessionCheck::Unknown => return Err(Error::Unauthorized { reason: super::session::UNKNOWN_SESSION.into() }),
    }
    let changes_state = !matches!(request.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    if changes_state && !super::origin::same_origin(request, &api.trusted_proxies) {
        return Err(super::session::foreign_origin(request));
    }
    Ok(Caller::Admin)
}

/// The dashboard session cookies a request carries (one, unless a stale one is sent too).
pub fn session_cookies(request: &Request) -> impl Iterator<Item = &str> {
    let cookies = request.headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("cookie"));
    cookie_values(cookies.map(|(_, value)| value.as_str()))
}

/// The key a request presents, as `authenticate` reads it: `X-Device-API-Key` when
/// there is one, the Bearer token otherwise.
pub fn presented_key(request: &Request) -> Option<&str> {
    match request.header("x-device-api-key") {
        Some(key) => Some(key.trim()),
        None => bearer_token(request.header("authorization")?),
    }
}

fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Caller {
    fn refused(&self, needed: &str) -> Error {
        match self {
            Caller::Anonymous => Error::Unauthorized { reason: format!("this route needs {needed}") },
            Caller::Unrecognized => Error::Unauthorized { reason: "the credentials given are not valid".into() },
            _ => Error::Forbidden { reason: format!("this route needs {needed}") },
        }
    }

    /// Operator routes.
    pub fn require_admin(&self) -> Result<(), Error> {
        match self {
            Caller::Admin => Ok(()),
            other => Err(other.refused("the admin token")),
        }
    }

    /// Routes of one device: only that device's key.
    pub fn require_device(&self, uuid: &str) -> Result<(), Error> {
        match self {
            Caller::Device(own) if own.uuid == uuid => Ok(()),
            Caller::Device(own) => {
                Err(Error::Forbidden { reason: format!("the key of device {} does not reach device {uuid}", own.uuid) })
            }
            other => Err(other.refused("the device's own key")),
        }
    }

    /// The device routes that take the device from the body: any device key.
    pub fn device(&self) -> Result<&str, Error> {
        match self {
            Caller::Device(own) => Ok(&own.uuid),
            other => Err(other.refused("a device key")),
        }
    }

    /// Registration: a provisioning key (or the operator, who may register by hand).
    pub fn require_provisioning(&self) -> Result<Option<&ProvisioningKey>, Error> {
        match self {
            Caller::Provisioning(key) => Ok(Some(key)),
            Caller::Admin => Ok(None),
            other => Err(other.refused("a provisioning key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
