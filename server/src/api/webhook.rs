//! `POST /webhooks/registry`: a registry (or hub) says a tag was pushed. Authenticated by
//! the webhook token (`Authorization: Bearer`, or `?token=` for hubs that cannot send
//! headers); the named references are handed to the refresher, which asks the registry.

use super::http::{percent_decode, Request, Response};
use super::Api;
use crate::keys::{constant_time_eq, hash_secret};
use crate::registry_events::pushed_references;
use crate::Error;
use serde_json::json;

pub(super) fn receive(api: &Api, request: &Request) -> Result<Response, Error> {
    check_token(api, request)?;
    let (references, ignored): (Vec<String>, Vec<String>) =
        pushed_references(&request.body)?.into_iter().partition(|r| admitted(api, r));
    if !references.is_empty() {
        log::info!("registry webhook: {} pushed", references.join(", "));
        api.refresh_now(references.clone());
    }
    Ok(Response::json(202, &json!({"status": "accepted", "references": references, "ignored": ignored})))
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
        .or_else(|| query_token(request.query.as_deref()));
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

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix("token=")).map(percent_decode)
}

#[cfg(test)]
mod tests {
    use super::query_token;
    use crate::api::http::percent_decode;

    #[test]
    fn tokens_from_the_query() {
        assert_eq!(query_token(Some("a=1&token=s3cr%2Bt")).as_deref(), Some("s3cr+t"));
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
