//! Sending a manifest request with the authentication the registry asks for: on `401`
//! follow its `WWW-Authenticate` challenge (a Bearer token from the realm, or Basic
//! credentials), retry, and give up with a reason that says whether credentials were
//! missing or refused. What each repository wanted is remembered, so later requests send
//! a cached token up front instead of collecting a `401` first.

use std::collections::HashMap;
use std::sync::Mutex;

use ureq::http::Response;

use super::challenge::{self, Challenge};
use super::token::{self, Asker, TokenKey};
use super::transport::{self, header_all};
use super::{Inner, Target};
use crate::Error;

/// One unauthenticated try, then at most three authenticated ones (token refused once,
/// scope widened once).
const MAX_SENDS: usize = 4;

/// The HTTP methods used on manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Head,
    Get,
}

/// How a registry last asked us to authenticate for a repository.
#[derive(Debug, Clone)]
enum Plan {
    Bearer(TokenKey),
    Basic,
}

/// Plans by (registry domain, repository path).
#[derive(Debug, Default)]
pub(crate) struct Plans(Mutex<HashMap<(String, String), Plan>>);

impl Plans {
    fn get(&self, target: &Target) -> Option<Plan> {
        let plans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        plans.get(&(target.domain.clone(), target.path.clone())).cloned()
    }

    fn set(&self, target: &Target, plan: Plan) {
        let mut plans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        plans.insert((target.domain.clone(), target.path.clone()), plan);
    }
}

/// The authentication sent with one try.
enum Sent {
    Nothing,
    Bearer { key: TokenKey, token: String },
    Basic,
}

/// Sends `method url` with `Accept: accept`, authenticating as the registry demands.
/// Returns any answer other than `401`/`403`; those end in `RegistryUnauthorized`.
pub(crate) fn send(
    inner: &Inner,
    target: &Target,
    method: Method,
    url: &str,
    accept: &str,
) -> Result<Response<ureq::Body>, Error> {
    let found = inner.credentials_for(&target.domain);
    let credentials = found.as_ref().map(|(user, password)| (user.as_str(), password.as_str()));
    let user = credentials.map(|(user, _)| user.to_string());
    let mut sent = match inner.plans.get(target) {
        Some(Plan::Bearer(key)) if key.user == user => match inner.tokens.get(&key) {
            Some(token) => Sent::Bearer { key, token },
            None => Sent::Nothing,
        },
        Some(Plan::Basic) if credentials.is_some() => Sent::Basic,
        _ => Sent::Nothing,
    };
    // Tokens fetched during this call: a refused fresh token is final.
    let mut fetched: Vec<TokenKey> = Vec::new();

    for _ in 0..MAX_SENDS {
        let authorization = match &sent {
            Sent::Nothing => None,
            Sent::Bearer { token, .. } => Some(format!("Bearer {token}")),
            Sent::Basic => credentials.map(|(u, p)| token::basic_authorization(u, p)),
        };
        log::debug!(
            "{method:?} {url}{}",
            match &sent {
                Sent::Nothing => "",
                Sent::Bearer { .. } => " (bearer token)",
                Sent::Basic => " (basic credentials)",
            }
        );
        let mut request = match method {
            Method::Head => inner.agent.head(url),
            Method::Get => inner.agent.get(url),
        }
        .header("Accept", accept);
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let sent_at = std::time::Instant::now();
        let response = request.call();
        inner.metrics.registry_request(&target.domain, sent_at.elapsed());
        let response = response.map_err(|e| transport::failure(e, &target.domain, &target.display))?;
        match response.status().as_u16() {
            401 => {}
            403 => return Err(unauthorized(target, credentials.is_some(), "HTTP 403 forbidden")),
            _ => return Ok(response),
        }

        let challenges = challenge::parse_all(header_all(response.headers(), "www-authenticate"));
        if let Some(bearer) = challenges.iter().find(|c| c.is("bearer")) {
            let key = bearer_key(bearer, target, user.clone())?;
            if let Sent::Bearer { key: sent_key, token } = &sent {
                if *sent_key == key {
                    inner.tokens.forget(sent_key, token);
                }
            }
            if fetched.contains(&key) {
                return Err(unauthorized(target, credentials.is_some(), "token not accepted"));
            }
            let sent_token = match &sent {
                Sent::Bearer { token, .. } => Some(token.as_str()),
                _ => None,
            };
            // Another thread may have fetched a good token meanwhile.
            let token = match inner.tokens.get(&key) {
                Some(cached) if Some(cached.as_str()) != sent_token => cached,
                _ => {
                    fetched.push(key.clone());
                    let asker = Asker { domain: &target.domain, scheme: target.scheme, reference: &target.display };
                    token::fetch(&inner.agent, &inner.tokens, &key, credentials, &asker, &inner.access)?
                }
            };
            inner.plans.set(target, Plan::Bearer(key.clone()));
            sent = Sent::Bearer { key, token };
        } else if challenges.iter().any(|c| c.is("basic")) {
            if credentials.is_none() || matches!(sent, Sent::Basic) {
                return Err(unauthorized(target, credentials.is_some(), "Basic authentication"));
            }
            inner.plans.set(target, Plan::Basic);
            sent = Sent::Basic;
        } else {
            let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
            return Err(Error::RegistryUnauthorized {
                registry: target.domain.clone(),
                reference: target.display.clone(),
                reason: format!("HTTP 401 without a Bearer or Basic challenge (got {schemes:?})"),
            });
        }
    }
    Err(unauthorized(target, credentials.is_some(), "too many authentication rounds"))
}

/// The token a Bearer challenge asks for; without a `scope`, pull access to the repository.
fn bearer_key(bearer: &Challenge, target: &Target, user: Option<String>) -> Result<TokenKey, Error> {
    let realm = bearer.param("realm").filter(|r| !r.is_empty()).ok_or_else(|| Error::RegistryProtocol {
        registry: target.domain.clone(),
        reference: target.display.clone(),
        reason: "Bearer challenge without a realm".to_string(),
    })?;
    let mut scopes = bearer.scopes();
    if scopes.is_empty() {
        scopes.push(format!("repository:{}:pull", target.path));
    }
    Ok(TokenKey { realm: realm.to_string(), service: bearer.param("service").map(str::to_string), scopes, user })
}

/// Still refused after following the challenge: say whether credentials were missing or
/// refused.
fn unauthorized(target: &Target, have_credentials: bool, detail: &str) -> Error {
    let reason = if have_credentials {
        format!("credentials for {} were refused ({detail})", target.domain)
    } else {
        format!(
            "no credentials configured for {} ({detail}; some registries answer so for a repository that does not exist)",
            target.domain
        )
    };
    Error::RegistryUnauthorized { registry: target.domain.clone(), reference: target.display.clone(), reason }
}
