//! Puts the API on a socket: `handle_limited` as the service of pinion's HTTP server
//! (`http_server`), with the per-address limits and, for a large body, the caller's
//! credentials checked before the body is read (`refuse_before_body`).

use super::http::{Request, Response};
use super::{handle_limited, refuse_before_body, Api, ClientLimits};
use crate::http_server::{self, Limits, Service};
use std::net::TcpListener;
use std::sync::Arc;

struct ApiService {
    api: Api,
    limits: Arc<ClientLimits>,
}

impl Service for ApiService {
    fn refuse_before_body(&self, request: &Request) -> Option<Response> {
        refuse_before_body(&self.api, &self.limits, request)
    }

    fn handle(&self, request: &Request) -> Response {
        handle_limited(&self.api, &self.limits, request)
    }
}

/// Serves until the process ends: https with `tls`, else plain http.
pub fn serve(
    listener: TcpListener,
    api: Api,
    limits: Arc<ClientLimits>,
    server_limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    http_server::serve(listener, server_limits, ApiService { api, limits }, tls)
}
