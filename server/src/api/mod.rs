//! The HTTP API of DESIGN.md's wire contract, under `/api/v1`: device routes (poll,
//! report, register) and operator routes (target state, devices, provisioning keys);
//! and `/metrics` for Prometheus (`scrape`).
//! `handle` is a plain function from `Request` to `Response`; `serve` puts it on a
//! socket, behind the per-address limits of `handle_limited`, with `refuse_before_body`
//! deciding whether a large body is worth reading.

mod auth;
pub mod client_address;
mod credentials;
mod dashboard;
mod device;
mod device_lifecycle;
mod fleets;
mod history;
pub mod http;
mod images;
mod operator;
mod origin;
mod policy;
pub mod poll_cache;
pub mod rate_limit;
mod registration;
mod releases;
mod response;
mod rollouts;
mod scrape;
mod serve;
mod session;
mod status;
mod telemetry;
mod webhook;

pub use http::{Request, Response};
pub use rate_limit::ClientLimits;
pub use response::status_of;
pub use scrape::ScrapeAccess;
pub use serve::serve;

use crate::pinning::ResolveDigests;
use crate::store::Store;
use crate::Error;
use auth::authenticate;
use response::error_response;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a request handler needs.
pub struct Api {
    pub store: Arc<dyn Store>,
    pub resolver: Arc<dyn ResolveDigests + Send + Sync>,
    /// SHA-256 (hex) of the admin token.
    pub admin_token_hash: String,
    /// SHA-256 (hex) of the registry webhook token; webhooks are off without one.
    pub webhook_token_hash: Option<String>,
    /// How long one target-state request may spend asking registries.
    pub resolve_deadline: Duration,
    /// Where webhook-named references wait to be resolved again (the refresher thread).
    pub refresh_requests: Option<Arc<crate::refresh_queue::RefreshQueue>>,
    /// The update policy of devices without their own (`--auto-update`, `--update-window`).
    pub default_policy: crate::policy::UpdatePolicy,
    /// Unchanged device polls, answered without the store.
    pub poll_cache: poll_cache::PollCache,
    /// How much of each device's log is kept.
    pub log_retention: crate::device_logs::LogRetention,
    /// Reverse proxies whose `Forwarded`/`X-Forwarded-For` name the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<client_address::TrustedProxy>,
    /// When each device last polled: rollouts defer devices that stopped.
    pub presence: Arc<crate::presence::Presence>,
    /// One rollout decision at a time, the operator's or the driver's (`rollout_driver`).
    pub rollout_lock: Arc<std::sync::Mutex<()>>,
    /// What `GET /metrics` shows of what happened; shared with the resolver and refresher.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Who may scrape `GET /metrics` (`--metrics-token`, `--metrics-allow`); off by default.
    pub metrics_access: ScrapeAccess,
    /// The dashboard's signed-in browsers (`POST /api/v1/session`).
    pub sessions: Arc<crate::sessions::Sessions>,
    /// Each device's last judgement, for the status views (`verdicts`).
    pub verdicts: crate::verdicts::Verdicts,
}

impl Api {
    /// Hands references to the refresher, to be asked of their registry now.
    pub fn refresh_now(&self, references: Vec<String>) {
        match &self.refresh_requests {
            Some(queue) => {
                let dropped = queue.push(references);
                if dropped > 0 {
                    log::warn!("{dropped} webhook references dropped: the refresh queue is full; the periodic refresh asks them");
                }
            }
            None => log::warn!("no refresher is running; the webhook's references wait for the next refresh"),
        }
    }
}

/// The routes, by path shape; the method is checked by each route.
enum Route<'a> {
    Health,
    /// `GET /metrics`, outside `/api/v1`, where Prometheus looks by default.
    Scrape,
    /// The dashboard's files, under `/` (`dashboard`).
    Dashboard(&'static dashboard::Asset),
    /// The dashboard's sign-in.
    Session,
    StatusOverview,
    StatusDevices,
    StatusDevice(&'a str),
    DeviceState(&'a str),
    DeviceReport,
    DeviceRegister,
    KeyExchange(&'a str),
    DeviceLogs(&'a str),
    Devices,
    Device(&'a str),
    DeviceKeyReset(&'a str),
    RegistrationToken(&'a str),
    TargetState(&'a str),
    TargetHistory(&'a str),
    TargetRollback(&'a str),
    CurrentState(&'a str),
    Logs(&'a str),
    Metrics(&'a str),
    UpdatePolicy(&'a str),
    PendingUpdates(&'a str),
    Images,
    RegistryWebhook,
    ProvisioningKeys,
    ProvisioningKey(&'a str),
    Registries,
    RegistryCredentials(&'a str),
    Fleets,
    Fleet(&'a str),
    FleetRelease(&'a str),
    Releases(&'a str),
    Release(&'a str, &'a str),
    Rollouts(&'a str),
    Rollout(&'a str, &'a str),
    RolloutCommand(&'a str, &'a str, &'a str),
    DeviceFleet(&'a str),
    DeviceLabels(&'a str),
    DevicePin(&'a str),
    Events,
}

impl Route<'_> {
    fn methods(&self) -> &'static [&'static str] {
        match self {
            Route::Health | Route::Scrape | Route::DeviceState(_) | Route::Devices | Route::CurrentState(_) => &["GET"],
            Route::Dashboard(_) | Route::StatusOverview | Route::StatusDevices | Route::StatusDevice(_) => &["GET"],
            Route::Session => &["GET", "POST", "DELETE"],
            Route::Device(_) => &["GET", "DELETE"],
            Route::DeviceKeyReset(_) | Route::RegistrationToken(_) => &["POST"],
            Route::Logs(_) | Route::Metrics(_) => &["GET"],
            Route::DeviceReport => &["PATCH"],
            Route::DeviceRegister | Route::TargetRollback(_) | Route::RegistryWebhook => &["POST"],
            Route::KeyExchange(_) | Route::DeviceLogs(_) => &["POST"],
            Route::TargetHistory(_) | Route::Images | Route::PendingUpdates(_) => &["GET"],
            Route::UpdatePolicy(_) => &["GET", "PUT", "DELETE"],
            Route::TargetState(_) => &["GET", "POST", "PUT", "DELETE"],
            Route::ProvisioningKeys => &["GET", "POST"],
            Route::ProvisioningKey(_) => &["DELETE"],
            Route::Registries => &["GET"],
            Route::RegistryCredentials(_) => &["PUT", "DELETE"],
            Route::Fleets | Route::Releases(_) | Route::Rollouts(_) => &["GET", "POST"],
            Route::Fleet(_) => &["GET", "PUT", "DELETE"],
            Route::FleetRelease(_) | Route::DeviceLabels(_) => &["PUT"],
            Route::Release(..) | Route::Rollout(..) | Route::Events => &["GET"],
            Route::RolloutCommand(..) => &["POST"],
            Route::DeviceFleet(_) => &["PUT", "DELETE"],
            Route::DevicePin(_) => &["DELETE"],
        }
    }
}

fn route(path: &str) -> Option<Route<'_>> {
    if path == "/metrics" {
        return Some(Route::Scrape);
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return dashboard::asset(path).map(Route::Dashboard);
    };
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    Some(match parts.as_slice() {
        ["health"] => Route::Health,
        ["session"] => Route::Session,
        ["status", "overview"] => Route::StatusOverview,
        ["status", "devices"] => Route::StatusDevices,
        ["status", "devices", uuid] => Route::StatusDevice(uuid),
        ["device", uuid, "state"] => Route::DeviceState(uuid),
        ["device", "state"] => Route::DeviceReport,
        ["device", "register"] => Route::DeviceRegister,
        ["device", uuid, "key-exchange"] => Route::KeyExchange(uuid),
        ["device", uuid, "logs"] => Route::DeviceLogs(uuid),
        ["devices"] => Route::Devices,
        ["devices", uuid] => Route::Device(uuid),
        ["devices", uuid, "key", "reset"] => Route::DeviceKeyReset(uuid),
        ["devices", uuid, "registration-token"] => Route::RegistrationToken(uuid),
        ["devices", uuid, "target-state"] => Route::TargetState(uuid),
        ["devices", uuid, "target-state", "history"] => Route::TargetHistory(uuid),
        ["devices", uuid, "target-state", "rollback"] => Route::TargetRollback(uuid),
        ["devices", uuid, "current-state"] => Route::CurrentState(uuid),
        ["devices", uuid, "logs"] => Route::Logs(uuid),
        ["devices", uuid, "metrics"] => Route::Metrics(uuid),
        ["devices", uuid, "update-policy"] => Route::UpdatePolicy(uuid),
        ["devices", uuid, "pending-updates"] => Route::PendingUpdates(uuid),
        ["images"] => Route::Images,
        ["webhooks", "registry"] => Route::RegistryWebhook,
        ["provisioning-keys"] => Route::ProvisioningKeys,
        ["provisioning-keys", id] => Route::ProvisioningKey(id),
        ["registries"] => Route::Registries,
        ["registries", host, "credentials"] => Route::RegistryCredentials(host),
        ["fleets"] => Route::Fleets,
        ["fleets", fleet] => Route::Fleet(fleet),
        ["fleets", fleet, "release"] => Route::FleetRelease(fleet),
        ["fleets", fleet, "releases"] => Route::Releases(fleet),
        ["fleets", fleet, "releases", id] => Route::Release(fleet, id),
        ["fleets", fleet, "rollouts"] => Route::Rollouts(fleet),
        ["fleets", fleet, "rollouts", id] => Route::Rollout(fleet, id),
        ["fleets", fleet, "rollouts", id, action @ ("pause" | "resume" | "promote" | "abort")] => {
            Route::RolloutCommand(fleet, id, action)
        }
        ["devices", uuid, "fleet"] => Route::DeviceFleet(uuid),
        ["devices", uuid, "labels"] => Route::DeviceLabels(uuid),
        ["devices", uuid, "pin"] => Route::DevicePin(uuid),
        ["events"] => Route::Events,
        _ => return None,
    })
}

/// The route of a request whose method it takes; the 404 or 405 otherwise.
fn routed(request: &Request) -> Result<Route<'_>, Response> {
    let Some(route) = route(&request.path) else {
        return Err(error_response(&Error::NotFound { what: format!("route {}", request.path) }));
    };
    let methods = route.methods();
    if !methods.contains(&request.method.as_str()) {
        let error = Error::MethodNotAllowed { method: request.method.clone(), path: request.path.clone() };
        return Err(error_response(&error).with_header("Allow", methods.join(", ")));
    }
    Ok(route)
}

/// Answers one request. Every failure becomes a JSON error; nothing here panics on input.
pub fn handle(api: &Api, request: &Request) -> Response {
    let route = match routed(request) {
        Ok(route) => route,
        Err(refusal) => return refusal,
    };
    match dispatch(api, request, route) {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

/// `handle` behind `limits`: an address over its limit of failed authentications (or, on
/// `POST /device/register`, of registrations) is answered 429 before its credentials are
/// looked at, so a brute force learns nothing more; every 401 and 403 counts against it.
/// A key exchange naming an unknown device, and a registration refused a uuid (409),
/// count as failures too (it is how uuids would be enumerated). Successful calls never count, and `/health` is never limited.
/// Every answer to a device poll or report, refusals included, is counted for `/metrics`.
pub fn handle_limited(api: &Api, limits: &ClientLimits, request: &Request) -> Response {
    let response = limited(api, limits, request);
    count_answer(api, request, response.status);
    response
}

/// Counts a device poll's or report's answer, whatever it was (`pinion_polls_total`,
/// `pinion_reports_total`).
fn count_answer(api: &Api, request: &Request, status: u16) {
    // Every request passes here: only device routes are worth parsing the path again.
    if !request.path.starts_with("/api/v1/device/") {
        return;
    }
    match (route(&request.path), request.method.as_str()) {
        (Some(Route::DeviceState(_)), "GET") => api.metrics.poll_answered(status),
        (Some(Route::DeviceReport), "PATCH") => api.metrics.report_answered(status),
        _ => {}
    }
}

fn limited(api: &Api, limits: &ClientLimits, request: &Request) -> Response {
    // A session cookie is no guess worth counting (256 bits; unknown after a restart,
    // expired after a while), and another site's page can make the operator's browser
    // send it with a foreign Origin: counting those would let that page lock the
    // operator's address out. Of the session route, only a sign-in's wrong token counts.
    let guess = !presents_only_a_session(request);
    let (registering, key_exchange, guessable) = match route(&request.path) {
        None | Some(Route::Health | Route::Dashboard(_)) => return handle(api, request),
        Some(Route::DeviceRegister) => (request.method == "POST", false, guess),
        Some(Route::KeyExchange(_)) => (false, true, guess),
        Some(Route::Session) => (false, false, request.method == "POST"),
        Some(_) => (false, false, guess),
    };
    let client = client_of(api, request);
    let credential = credential_of(request);
    if let Err(error) = limits.admit(client, registering, credential, Instant::now()) {
        log::debug!("{} {}: {error}", request.method, request.path);
        return error_response(&error);
    }
    let response = handle(api, request);
    // A 409 to a registration is a uuid the caller has no right to: probing uuids, or
    // lying in wait for a key reset, counts like a wrong key.
    let refused = matches!(response.status, 401 | 403)
        || (key_exchange && response.status == 404)
        || (registering && response.status == 409);
    if refused && guessable {
        limits.record_failure(client, Instant::now());
    } else if response.status < 400 {
        limits.record_success(client, credential, Instant::now());
    }
    response
}

/// The client's address: the peer, or behind a trusted proxy the one it names.
fn client_of(api: &Api, request: &Request) -> Option<std::net::SocketAddr> {
    let peer = request.peer?;
    Some(client_address::client_address(peer, &request.headers, &api.trusted_proxies))
}

/// The secret a request presents (a key, a token, a webhook's `?token=`, the session
/// cookie), if any: one that worked from an address lately is admitted there while the
/// address is over its limit.
fn credential_of(request: &Request) -> Option<&str> {
    auth::presented_key(request)
        .or_else(|| {
            let query = request.query.as_deref()?;
            query.split('&').find_map(|pair| pair.strip_prefix("token="))
        })
        .or_else(|| auth::session_cookies(request).next())
}

/// A request whose only credential is a session cookie.
fn presents_only_a_session(request: &Request) -> bool {
    auth::presented_key(request).is_none()
        && request.query_value("token").is_none()
        && auth::session_cookies(request).next().is_some()
}

/// For a request whose large (or chunked, or `Expect: 100-continue`) body has not been
/// read: refuses it on its head alone — an unknown route or method, an address over its
/// limits, or no valid credential of any kind (counted as a failure) — answered as
/// `handle_limited` would have. `None` lets the body be read; the route still checks
/// that the credential is the right kind.
pub fn refuse_before_body(api: &Api, limits: &ClientLimits, request: &Request) -> Option<Response> {
    let refusal = refusal_before_body(api, limits, request)?;
    count_answer(api, request, refusal.status);
    Some(refusal)
}

fn refusal_before_body(api: &Api, limits: &ClientLimits, request: &Request) -> Option<Response> {
    let route = match routed(request) {
        Ok(route) => route,
        Err(refusal) => return Some(refusal),
    };
    // No route takes a body with these: one sent is not worth a worker's wait.
    if matches!(request.method.as_str(), "GET" | "HEAD" | "DELETE") {
        let reason = format!("{} {} takes no body", request.method, request.path);
        return Some(error_response(&Error::BadRequest { reason }));
    }
    // Checked, not counted: `handle_limited` counts the registration once its body is read.
    let client = client_of(api, request);
    if let Err(error) = limits.admit(client, false, credential_of(request), Instant::now()) {
        return Some(error_response(&error));
    }
    let credential = match route {
        Route::RegistryWebhook => webhook::check_token(api, request),
        // A sign-in is a token in a small body: a large (or chunked) one is nobody's.
        Route::Session => Err(Error::BadRequest {
            reason: format!(
                "a sign-in is a JSON body of at most {} bytes sent with Content-Length",
                crate::http_server::SMALL_BODY
            ),
        }),
        _ => match authenticate(api, request) {
            Ok(auth::Caller::Anonymous) => Err(Error::Unauthorized { reason: "this route needs credentials".into() }),
            Ok(auth::Caller::Unrecognized) => {
                Err(Error::Unauthorized { reason: "the credentials given are not valid".into() })
            }
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        },
    };
    let error = credential.err()?;
    let response = error_response(&error);
    if matches!(response.status, 401 | 403) {
        limits.record_failure(client, Instant::now());
    }
    Some(response)
}

fn dispatch(api: &Api, request: &Request, route: Route<'_>) -> Result<Response, Error> {
    match route {
        Route::Health => return Ok(Response::json(200, &serde_json::json!({"status": "ok"}))),
        Route::Dashboard(asset) => return Ok(dashboard::serve(asset, request)),
        // The admin token in the body, or the cookie itself.
        Route::Session => {
            return match request.method.as_str() {
                "POST" => session::sign_in(api, request),
                "DELETE" => session::sign_out(api, request),
                _ => session::status(api, request),
            }
        }
        // Its own token, or an allowed address without one.
        Route::Scrape => return scrape::scrape(api, request),
        // Registries authenticate with their own token, in a header or the query.
        Route::RegistryWebhook => return webhook::receive(api, request),
        // Most of a fleet's traffic: its unchanged polls may be answered before the store
        // is asked who is calling.
        Route::DeviceState(uuid) => return device::poll(api, request, uuid),
        // Its statuses are the original server's, for a key checked against the body.
        Route::KeyExchange(uuid) => return registration::key_exchange(api, request, uuid),
        Route::DeviceLogs(uuid) => return telemetry::receive_logs(api, request, uuid),
        _ => {}
    }
    let caller = match route {
        Route::DeviceRegister => auth::authenticate_registration(api, request)?,
        _ => authenticate(api, request)?,
    };
    let method = request.method.as_str();
    match route {
        Route::Health
        | Route::Scrape
        | Route::Dashboard(_)
        | Route::Session
        | Route::RegistryWebhook
        | Route::DeviceState(_)
        | Route::KeyExchange(_)
        | Route::DeviceLogs(_) => Err(Error::NotFound { what: format!("route {}", request.path) }),
        Route::DeviceReport => device::report(api, &caller, request),
        Route::DeviceRegister => registration::register(api, &caller, request),
        Route::Devices => operator::list_devices(api, &caller, request),
        Route::StatusOverview => status::overview(api, &caller),
        Route::StatusDevices => status::devices(api, &caller, request),
        Route::StatusDevice(uuid) => status::device(api, &caller, uuid),
        Route::Device(uuid) => match method {
            "DELETE" => device_lifecycle::delete(api, &caller, uuid),
            _ => operator::get_device(api, &caller, uuid),
        },
        Route::DeviceKeyReset(uuid) => device_lifecycle::reset_key(api, &caller, request, uuid),
        Route::RegistrationToken(uuid) => device_lifecycle::registration_token(api, &caller, request, uuid),
        Route::TargetState(uuid) => match method {
            "GET" => operator::get_target(api, &caller, uuid),
            "DELETE" => operator::delete_target(api, &caller, uuid),
            _ => operator::set_target(api, &caller, request, uuid),
        },
        Route::TargetHistory(uuid) => history::list(api, &caller, request, uuid),
        Route::TargetRollback(uuid) => history::rollback(api, &caller, request, uuid),
        Route::CurrentState(uuid) => operator::get_current(api, &caller, uuid),
        Route::Logs(uuid) => telemetry::list_logs(api, &caller, request, uuid),
        Route::Metrics(uuid) => telemetry::list_metrics(api, &caller, request, uuid),
        Route::UpdatePolicy(uuid) => match method {
            "GET" => policy::get(api, &caller, uuid),
            "DELETE" => policy::delete(api, &caller, uuid),
            _ => policy::set(api, &caller, request, uuid),
        },
        Route::PendingUpdates(uuid) => policy::pending(api, &caller, uuid),
        Route::Images => images::list(api, &caller),
        Route::ProvisioningKeys => match method {
            "GET" => operator::list_provisioning_keys(api, &caller),
            _ => operator::create_provisioning_key(api, &caller, request),
        },
        Route::ProvisioningKey(id) => operator::revoke_provisioning_key(api, &caller, id),
        Route::Registries => credentials::list(api, &caller),
        Route::RegistryCredentials(host) => match method {
            "DELETE" => credentials::delete(api, &caller, request, host),
            _ => credentials::put(api, &caller, request, host),
        },
        Route::Fleets => match method {
            "GET" => fleets::list(api, &caller),
            _ => fleets::create(api, &caller, request),
        },
        Route::Fleet(fleet) => match method {
            "GET" => fleets::get(api, &caller, fleet),
            "DELETE" => fleets::delete(api, &caller, fleet),
            _ => fleets::update(api, &caller, request, fleet),
        },
        Route::FleetRelease(fleet) => fleets::set_release(api, &caller, request, fleet),
        Route::Releases(fleet) => match method {
            "GET" => releases::list(api, &caller, request, fleet),
            _ => releases::create(api, &caller, request, fleet),
        },
        Route::Release(fleet, id) => releases::get(api, &caller, fleet, id),
        Route::Rollouts(fleet) => match method {
            "GET" => rollouts::list(api, &caller, request, fleet),
            _ => rollouts::create(api, &caller, request, fleet),
        },
        Route::Rollout(fleet, id) => rollouts::get(api, &caller, fleet, id),
        Route::RolloutCommand(fleet, id, action) => rollouts::command(api, &caller, request, fleet, id, action),
        Route::DeviceFleet(uuid) => match method {
            "DELETE" => fleets::leave_fleet(api, &caller, uuid),
            _ => fleets::set_device_fleet(api, &caller, request, uuid),
        },
        Route::DeviceLabels(uuid) => fleets::set_labels(api, &caller, request, uuid),
        Route::DevicePin(uuid) => fleets::unpin(api, &caller, uuid),
        Route::Events => rollouts::events(api, &caller, request),
    }
}

/// A device that exists, or a 404 naming it.
fn known_device(api: &Api, uuid: &str) -> Result<crate::store::DeviceRecord, Error> {
    api.store.device(uuid)?.ok_or_else(|| Error::NotFound { what: format!("device {uuid}") })
}

/// A device id from a path or body, checked against `[A-Za-z0-9._-]{1,64}`.
fn device_id(id: &str) -> Result<&str, Error> {
    if crate::keys::is_valid_device_id(id) {
        Ok(id)
    } else {
        Err(Error::InvalidDeviceId { id: id.chars().take(80).collect() })
    }
}
