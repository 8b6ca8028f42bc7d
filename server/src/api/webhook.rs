//! `POST /webhooks/registry`: a registry (or hub) says a tag was pushed. Authenticated by
//! the webhook token (`Authorization: Bearer`, or `?token=` for hubs that cannot send
//! headers); the named references are handed to the refresher, which asks the registry.

use super::http::{Request, Response};
use super::Api;
use crate::keys::{constant_time_eq, hash_secret};
use crate::registry_events::pushed_references;
use crate::Error;
use serde_json::json;

/// Queues the references an event names that some device follows and whose registry
/// the server may ask; `ignored` lists those it may not ask, `notFollowed` counts the
/// rest. Nothing here talks to a registry.
pub(super) fn receive(api: &Api, request: &Request) -> Result<Response, Error> {
    check_token(api, request)?;
    // At most `registry_events::MAX_REFERENCES_PER_EVENT` (else a 413, nothing queued).
    let named = pushed_references(&request.body)?;
    let (admitted, ignored): (Vec<String>, Vec<String>) = named.into_iter().partition(|r| admitted(api, r));
    let mut references = Vec::new();
    let mut not_followed = 0;
    for reference in admitted {
        if api.store.devices_using(&reference)?.is_empty() {
            not_followed += 1;
        } else {
            references.push(reference);
        }
    }
    if !references.is_empty() {
        log::info!("registry webhook: {} pushed", references.join(", "));
        api.refresh_now(references.clone());
    }
    Ok(Response::json(
        202,
        &json!({"status": "accepted", "references": references, "ignored": ignored, "notFollowed": not_followed}),
    ))
}

/// The webhook token, in the header or the query: 403 while webhooks are off, 401 when
/// missing or wrong.
pub(super) fn check_token(api: &Api, request: &Request) -> Result<(), Error> {
    let Some(expected) = &api.webhook_token_hash else {
        return Err(Error::Forbidden {
            reason: "registry webhooks are off; start the server with --webhook-token".into(),
        });
    };
    let presented = request
        .header("authorization")
        .and_then(|a| a.trim().strip_prefix("Bearer ").map(str::trim))
        .map(str::to_string)
        .or_else(|| request.query_value("token"));
    let Some(token) = presented else {
        return Err(Error::Unauthorized { reason: "the webhook needs its token (Bearer or ?token=)".into() });
    };
    if !constant_time_eq(hash_secret(&token).as_bytes(), expected.as_bytes()) {
        return Err(Error::Unauthorized { reason: "the webhook token is not valid".into() });
    }
    Ok(())
}

/// Whether the server may ask `reference`'s registry (`--allowed-registries`); a refused
/// one is logged and ignored.
fn admitted(api: &Api, reference: &str) -> bool {
    let Ok(parsed) = pinion_model::Reference::parse(reference) else { return true };
    match api.resolver.admit(&parsed) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("registry webhook: {reference} ignored: {e}");
            false
        }
    }
}
