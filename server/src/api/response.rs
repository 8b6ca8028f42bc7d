//! The one place where errors become HTTP answers: `{"error": "<code>", "message": "…"}`
//! with the status that fits.

use super::http::Response;
use crate::Error;
use serde_json::json;

/// The HTTP status and stable error code for every error.
pub fn status_of(error: &Error) -> (u16, &'static str) {
    use Error::*;
    match error {
        BadRequest { .. } | Usage { .. } => (400, "bad_request"),
        InvalidImage { .. } => (400, "invalid_image"),
        InvalidDeviceId { .. } => (400, "invalid_device_id"),
        Unauthorized { .. } => (401, "unauthorized"),
        Forbidden { .. } => (403, "forbidden"),
        NotFound { .. } => (404, "not_found"),
        MethodNotAllowed { .. } => (405, "method_not_allowed"),
        Conflict { .. } => (409, "conflict"),
        Unprocessable { .. } => (422, "unprocessable"),
        PayloadTooLarge { .. } | TooManyLogLines { .. } | TooManyReferences { .. } => (413, "payload_too_large"),
        TooManyAttempts { .. } => (429, "too_many_attempts"),
        RegistryNotAllowed { .. } => (422, "registry_not_allowed"),
        RateLimited { .. } => (503, "registry_rate_limited"),
        ResolutionDeadline { .. } | RegistryTimeout { .. } => (504, "registry_timeout"),
        RegistryUnreachable { .. }
        | ManifestUnknown { .. }
        | RegistryUnauthorized { .. }
        | RegistryStatus { .. }
        | RegistryProtocol { .. }
        | RegistryCredentials { .. } => (502, "registry_error"),
        Store { .. } => (500, "store_error"),
        StoreUnavailable { .. } => (503, "store_unavailable"),
        Io { .. } | Tls { .. } => (500, "internal_error"),
        Secrets { .. } => (500, "secrets_error"),
    }
}

pub fn error_response(error: &Error) -> Response {
    let (status, code) = status_of(error);
    if status >= 500 {
        log::error!("{error}");
    }
    let response = Response::json(status, &json!({"error": code, "message": error.to_string()}));
    match error {
        Error::Unauthorized { .. } => response.with_header("WWW-Authenticate", "Bearer realm=\"pinion\""),
        Error::TooManyAttempts { retry_after_secs, .. } => {
            response.with_header("Retry-After", retry_after_secs.to_string())
        }
        // An agent backs off and polls again; a load balancer may try another replica.
        Error::StoreUnavailable { .. } => response.with_header("Retry-After", "5"),
        _ => response,
    }
}
