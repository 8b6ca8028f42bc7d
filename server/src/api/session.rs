//! The dashboard's sign-in: `POST /api/v1/session` takes the admin token once and answers
//! an HttpOnly, SameSite=Strict session cookie (`Secure` over https) that stands for it
//! until it expires (`--session-lifetime`) or `DELETE /api/v1/session` signs it out;
//! `GET /api/v1/session` says whether the browser is signed in. The cookie is read in
//! `auth`, which refuses it on a state-changing request from another origin.

use super::auth::session_cookies;
use super::http::{Request, Response};
use super::origin::{over_https, same_origin};
use super::Api;
use crate::keys::{constant_time_eq, hash_secret};
use crate::sessions::{set_cookie, SessionCheck};
use crate::timefmt::{rfc3339, unix_now};
use crate::Error;
use serde::Deserialize;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /session`: the admin token for a session cookie.
pub(super) fn sign_in(api: &Api, request: &Request) -> Result<Response, Error> {
    if request.header("origin").is_some() && !same_origin(request, &api.trusted_proxies) {
        let origin = shown_origin(request);
        return Err(Error::Forbidden {
            reason: format!("a sign-in must come from this server's own page, not Origin {origin:?}"),
        });
    }
    let SignIn { token } = request.json()?;
    let hash = hash_secret(token.trim());
    if token.trim().is_empty() || !constant_time_eq(hash.as_bytes(), api.admin_token_hash.as_bytes()) {
        return Err(Error::Unauthorized { reason: "that is not the admin token".into() });
    }
    let cookie = api.sessions.open(Instant::now())?;
    let lifetime = api.sessions.lifetime();
    log::info!("dashboard: signed in from {}", client(request));
    Ok(Response::json(200, &json!({"expiresAt": expires_at(lifetime)}))
        .with_header("Set-Cookie", set_cookie(&cookie, lifetime, over_https(request, &api.trusted_proxies)))
        .with_header("Cache-Control", "no-store"))
}

/// `GET /session`: 200 with when it ends, or 401.
pub(super) fn status(api: &Api, request: &Request) -> Result<Response, Error> {
    if session_cookies(request).next().is_none() {
        return Err(Error::Unauthorized { reason: "not signed in: POST /api/v1/session with the admin token".into() });
    }
    let remaining = match api.sessions.check_any(session_cookies(request), Instant::now()) {
        SessionCheck::Valid { remaining } => remaining,
        SessionCheck::Expired => return Err(expired()),
        SessionCheck::Unknown => return Err(Error::Unauthorized { reason: UNKNOWN_SESSION.into() }),
    };
    Ok(Response::json(200, &json!({"expiresAt": expires_at(remaining)})).with_header("Cache-Control", "no-store"))
}

/// `DELETE /session`: signs the cookie's session out and clears it. A cookie that is no
/// longer signed in is cleared too; a request from another origin signs nothing out.
pub(super) fn sign_out(api: &Api, request: &Request) -> Result<Response, Error> {
    if request.header("origin").is_some() && !same_origin(request, &api.trusted_proxies) {
        return Err(foreign_origin(request));
    }
    let now = Instant::now();
    // Every session cookie it sends is signed out, not only the first.
    let closed: Vec<bool> =
        session_cookies(request).map(|cookie| api.sessions.close(cookie, now)).collect::<Result<_, _>>()?;
    let signed_out = closed.contains(&true);
    if signed_out {
        log::info!("dashboard: signed out from {}", client(request));
    }
    let clear = set_cookie("", Duration::ZERO, over_https(request, &api.trusted_proxies));
    Ok(Response::json(200, &json!({"status": "ok", "signedOut": signed_out})).with_header("Set-Cookie", clear))
}

/// The refusal of a browser request that another site's page made.
pub(super) fn foreign_origin(request: &Request) -> Error {
    let origin = shown_origin(request);
    Error::Forbidden {
        reason: format!(
            "{} {} with a session cookie must come from this server's own pages, not Origin {origin:?}",
            request.method, request.path
        ),
    }
}

/// The answer to a cookie whose session has ended.
pub(super) fn expired() -> Error {
    Error::Unauthorized { reason: "the dashboard session has expired: sign in again".into() }
}

/// The answer to a cookie of no session this server knows.
pub(super) const UNKNOWN_SESSION: &str =
    "the session cookie is not valid (signed out, or the server restarted): sign in again";

/// The request's `Origin` as an error message may quote it.
fn shown_origin(request: &Request) -> String {
    request.header("origin").unwrap_or("(none)").chars().take(100).collect()
}

fn expires_at(remaining: Duration) -> String {
    rfc3339(unix_now().saturating_add(remaining.as_secs()))
}

fn client(request: &Request) -> String {
    request.peer.map(|p| p.ip().to_string()).unwrap_or_else(|| "an unknown address".into())
}
