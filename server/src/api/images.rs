//! `GET /images`: every floating reference some device follows, with the digest the
//! registry last gave, when it was asked, the last error, and the devices and fleets
//! following it.

use super::auth::Caller;
use super::http::Response;
use super::Api;
use crate::timefmt::rfc3339;
use crate::Error;
use serde_json::{json, Value};

pub(super) fn list(api: &Api, caller: &Caller) -> Result<Response, Error> {
    caller.require_admin()?;
    let when = |t: Option<i64>| t.map(|t| rfc3339(t.max(0) as u64));
    let mut images: Vec<Value> = Vec::new();
    for image in api.store.tracked_images()? {
        let fleets = api.store.fleets_following(&image.reference)?;
        images.push(json!({
            "reference": image.reference,
            "digest": image.digest,
            "mediaType": image.media_type,
            "lastChecked": when(image.checked_at),
            "lastChanged": when(image.changed_at),
            "lastError": image.last_error,
            "lastErrorAt": when(image.last_error_at),
            "devices": image.devices,
            "fleets": fleets,
        }));
    }
    Ok(Response::json(200, &json!({"images": images})))
}
