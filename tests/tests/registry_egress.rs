//! `--allowed-registries` holds for every hop, through the real server: a registry on the
//! list that answers with a redirect, or a Bearer challenge whose token realm, pointing
//! at another loopback service (the "victim", here an admin endpoint
//! `/internal/admin?action=delete`) does not make the server fetch from it. The
//! operator's target-state request (POST and PUT) is refused with `422
//! registry_not_allowed` naming the refused host and how to allow it, nothing is stored,
//! and the victim has received no request. A hop that is listed is followed, so these
//! tests can tell a refusal from a server that follows nothing. The registries are fakes
//! (`FakeRegistry::redirect_to`, `::bearer_realm`): a real registry does not send its
//! clients to an admin endpoint.

use pinion_tests::util::demo_target;
use pinion_tests::*;
use serde_json::json;

/// A loopback service that records every request it gets; it must get none.
fn victim() -> FakeRegistry {
    FakeRegistry::no_digest_header()
}

fn admin_url(victim: &FakeRegistry) -> String {
    format!("http://{}/internal/admin?action=delete", victim.host())
}

/// The operator's request, by POST and by PUT: each is refused with 422 naming `refused`
/// and saying how to allow it; nothing is stored.
fn assert_refused_naming(server: &Server, image: &str, refused: &str) {
    for method in ["POST", "PUT"] {
        let path = "/api/v1/devices/gateway-1/target-state";
        let reply = server.request(method, path, Some(&demo_target(&[image])), Some(server.admin_token()));
        assert_eq!(reply.status, 422, "{method}: {}", reply.body);
        let error = reply.json();
        assert_eq!(error["error"], "registry_not_allowed", "{method}: {error:#}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("registry {refused} is not allowed")), "{method}: {message}");
        assert!(message.contains(&format!("add {refused} to --allowed-registries")), "{method}: {message}");
        assert!(message.contains("service svc1"), "{method}: {message}");
    }
    let devices = server.request("GET", "/api/v1/devices", None, Some(server.admin_token())).json();
    assert_eq!(devices["devices"], json!([]), "a refused target was stored: {devices:#}");
}

#[test]
fn a_listed_registry_redirecting_to_another_service_gets_it_no_request() {
    let victim = victim();
    let registry = FakeRegistry::redirect_to(&admin_url(&victim));
    let server = Server::start(&["--allowed-registries", &registry.host()]);

    assert_refused_naming(&server, &format!("{}/demo/app:latest", registry.host()), &victim.host());
    assert!(!registry.requests().is_empty(), "the listed registry was asked");
    assert!(victim.requests().is_empty(), "the victim got requests: {:?}", victim.requests());
    let log = server.log();
    assert!(log.contains(&format!("refusing to connect to {}", victim.host())), "{log}");
}

#[test]
fn a_listed_registry_whose_token_realm_is_another_service_gets_it_no_request() {
    let victim = victim();
    let registry = FakeRegistry::bearer_realm(&admin_url(&victim));
    let server = Server::start(&["--allowed-registries", &registry.host()]);

    assert_refused_naming(&server, &format!("{}/demo/app:latest", registry.host()), &victim.host());
    assert!(!registry.requests().is_empty(), "the listed registry was asked");
    assert!(victim.requests().is_empty(), "the victim got requests: {:?}", victim.requests());
}

#[test]
fn a_redirect_to_a_listed_registry_is_followed() {
    let serving = FakeRegistry::no_digest_header();
    let registry = FakeRegistry::redirect_to(&format!("http://{}/v2/demo/app/manifests/latest", serving.host()));
    let listed = format!("{},{}", registry.host(), serving.host());
    let server = Server::start(&["--allowed-registries", &listed]);

    let reply = server.set_target_state("gateway-1", &demo_target(&[&format!("{}/demo/app:latest", registry.host())]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let resolution = &reply.json()["apps"]["1"]["services"][0]["imageResolution"];
    assert_eq!(resolution["status"], "resolved", "{resolution:#}");
    assert_eq!(resolution["digest"], serving.manifest_digest(), "{resolution:#}");
    assert!(serving.requests().iter().any(|r| r.contains("/v2/demo/app/manifests/latest")), "{:?}", serving.requests());
}

#[test]
fn without_a_list_a_redirect_to_another_loopback_service_is_followed_as_before() {
    // Only link-local and metadata hosts are refused without a list; this is the
    // behaviour `--allowed-registries` exists to narrow.
    let serving = FakeRegistry::no_digest_header();
    let registry = FakeRegistry::redirect_to(&format!("http://{}/v2/demo/app/manifests/latest", serving.host()));
    let server = Server::start(&[]);
    let reply = server.set_target_state("gateway-1", &demo_target(&[&format!("{}/demo/app:latest", registry.host())]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["apps"]["1"]["services"][0]["imageResolution"]["digest"], serving.manifest_digest());
}
