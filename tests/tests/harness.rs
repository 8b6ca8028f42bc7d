//! Self-test of the harness, independent of pinion's code: each `Registry` auth mode
//! really starts and really enforces its auth, pushed images/lists/indexes read back
//! byte for byte with the digests the push helpers returned, the token server is the one
//! granting access, and each `FakeRegistry` misbehaves exactly as documented. If these
//! fail, the resolver tests' verdicts mean nothing.

use pinion_tests::client::parse_challenge;
use pinion_tests::util::{base64_std, base64_std_decode};
use pinion_tests::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const DOCKER_V2_ONLY: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn assert_fetches(client: &RegistryClient, repo: &str, reference: &str, pushed: &Pushed) {
    let got = client.get_manifest(repo, reference, ACCEPT_ALL_MANIFESTS);
    assert_eq!(got.status, 200, "GET {repo}:{reference}: {}", got.text());
    assert_eq!(got.header("Docker-Content-Digest"), Some(pushed.digest.as_str()), "GET {repo}:{reference}");
    assert_eq!(got.header("Content-Type"), Some(pushed.media_type.as_str()), "GET {repo}:{reference}");
    assert_eq!(got.body, pushed.bytes, "GET {repo}:{reference} body differs from the bytes pushed");
    assert_eq!(sha256_digest(&got.body), pushed.digest);

    let head = client.head_manifest(repo, reference, ACCEPT_ALL_MANIFESTS);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Docker-Content-Digest"), Some(pushed.digest.as_str()), "HEAD {repo}:{reference}");
    assert_eq!(head.header("Content-Length"), Some(pushed.size.to_string().as_str()));
}

/// Pushes a single Docker image, a single OCI image, a Docker list and an OCI index, and
/// reads each back by tag and by digest.
fn push_all_kinds_and_read_back(registry: &Registry) {
    let client = RegistryClient::for_registry(registry);

    let single =
        push_image_as(registry, "demo/app", "single", &ImageSpec::linux_amd64("single"), ManifestFormat::Docker);
    assert_eq!(single.media_type, DOCKER_MANIFEST);
    assert_fetches(&client, "demo/app", "single", &single);
    assert_fetches(&client, "demo/app", &single.digest, &single);
    assert_eq!(
        push_image(registry, "demo/app", "again", &ImageSpec::linux_amd64("single")),
        single.digest,
        "the same spec must give the same digest"
    );

    let oci = push_image_as(registry, "demo/app", "oci", &ImageSpec::linux_arm64("oci"), ManifestFormat::Oci);
    assert_eq!(oci.media_type, OCI_MANIFEST);
    assert_fetches(&client, "demo/app", "oci", &oci);

    let list = push_manifest_list(
        registry,
        "demo/multi",
        "latest",
        &[ImageSpec::linux_amd64("multi amd64"), ImageSpec::linux_arm_v7("multi armv7")],
    );
    assert_eq!(list.list.media_type, DOCKER_MANIFEST_LIST);
    assert_fetches(&client, "demo/multi", "latest", &list.list);
    let children = list.child_digests();
    assert_eq!(children.len(), 2);
    assert!(!children.contains(&list.list.digest));
    for (spec, child) in &list.children {
        assert_fetches(&client, "demo/multi", &child.digest, child);
        assert_eq!(child.media_type, DOCKER_MANIFEST, "{spec:?}");
    }
    let body: serde_json::Value = serde_json::from_slice(&list.list.bytes).unwrap();
    assert_eq!(
        body["manifests"][1]["platform"],
        serde_json::json!({"architecture": "arm", "os": "linux", "variant": "v7"})
    );

    // The trap the resolver must avoid (registry-protocol §2.1): asking for a list by
    // tag with only the Docker v2 type yields the linux/amd64 child's digest.
    let narrow = client.head_manifest("demo/multi", "latest", DOCKER_V2_ONLY);
    assert_eq!(narrow.status, 200);
    assert_eq!(narrow.header("Docker-Content-Digest"), Some(list.children[0].1.digest.as_str()));

    let index = push_oci_index(
        registry,
        "demo/index",
        "v1",
        &[ImageSpec::linux_amd64("index amd64"), ImageSpec::linux_arm64("index arm64")],
    );
    assert_eq!(index.list.media_type, OCI_INDEX);
    assert_fetches(&client, "demo/index", "v1", &index.list);
    for (_, child) in &index.children {
        assert_eq!(child.media_type, OCI_MANIFEST);
        assert_fetches(&client, "demo/index", &child.digest, child);
    }
    // And the other trap: an OCI index without its type in Accept is a 404.
    let hidden = client.head_manifest("demo/index", "v1", DOCKER_V2_ONLY);
    assert_eq!(hidden.status, 404);

    // The layer is a real gzipped tar holding the spec's content.
    let manifest: serde_json::Value = serde_json::from_slice(&single.bytes).unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let layer = client.request("GET", &format!("/v2/demo/app/blobs/{layer_digest}"), &[], None);
    assert_eq!(layer.status, 200);
    assert_eq!(sha256_digest(&layer.body), layer_digest);
    let mut tar = Command::new("tar")
        .args(["-xzO", "content.txt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tar");
    tar.stdin.take().unwrap().write_all(&layer.body).unwrap();
    let out = tar.wait_with_output().unwrap();
    assert!(out.status.success(), "tar rejects the layer: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"single");
}

#[test]
fn anonymous_registry_serves_pushed_images_lists_and_indexes() {
    let registry = Registry::start(Auth::Anonymous);
    assert!(registry.host().starts_with("127.0.0.1:"));
    push_all_kinds_and_read_back(&registry);
    assert_eq!(registry.token_requests(), 0);
}

#[test]
fn htpasswd_registry_enforces_the_password() {
    let registry = Registry::start(Auth::htpasswd("alice", "correct horse"));
    let anonymous = RegistryClient::new(&registry.host(), None);
    let denied = anonymous.request("GET", "/v2/", &[], None);
    assert_eq!(denied.status, 401);
    assert_eq!(parse_challenge(denied.header("WWW-Authenticate").unwrap()).0, "Basic");

    let wrong = RegistryClient::new(&registry.host(), Some(("alice", "wrong")));
    assert_eq!(wrong.request("GET", "/v2/", &[], None).status, 401, "log:\n{}", registry.log());
    let right = RegistryClient::new(&registry.host(), Some(("alice", "correct horse")));
    assert_eq!(right.request("GET", "/v2/", &[], None).status, 200, "log:\n{}", registry.log());

    push_all_kinds_and_read_back(&registry);
    assert_eq!(anonymous.get_manifest("demo/app", "single", ACCEPT_ALL_MANIFESTS).status, 401);
}

#[test]
fn token_registry_grants_access_through_the_token_server() {
    let registry = Registry::start(Auth::token("bob", "s3cret"));
    let token_server = registry.token_server().expect("token mode has a token server");

    let anonymous = RegistryClient::new(&registry.host(), None);
    let first = anonymous.request("HEAD", "/v2/demo/app/manifests/single", &[], None);
    assert_eq!(first.status, 401);
    let (scheme, params) = parse_challenge(first.header("WWW-Authenticate").unwrap());
    assert_eq!(scheme, "Bearer");
    assert!(params.contains(&("realm".into(), token_server.realm())), "{params:?}");
    assert!(params.contains(&("scope".into(), "repository:demo/app:pull".into())), "{params:?}");

    push_all_kinds_and_read_back(&registry);
    let after_push = registry.token_requests();
    assert!(after_push > 0, "pushing must have asked the token server");
    let log = token_server.request_log();
    assert!(log.iter().any(|r| r.user.as_deref() == Some("bob") && r.status == 200), "{log:?}");
    assert!(log.iter().any(|r| r.scopes.iter().any(|s| s == "repository:demo/app:pull,push")), "{log:?}");
    assert!(log.iter().all(|r| r.service.as_deref() == Some("pinion-test-registry")), "{log:?}");

    // Anonymous tokens carry no access: the registry refuses them with insufficient_scope.
    let refused = anonymous.get_manifest("demo/app", "single", ACCEPT_ALL_MANIFESTS);
    assert_eq!(refused.status, 401);
    assert!(
        refused.header("WWW-Authenticate").unwrap().contains("insufficient_scope"),
        "{:?}",
        refused.header("WWW-Authenticate")
    );

    // A wrong password is refused by the token server itself.
    let before = registry.token_requests();
    let wrong = RegistryClient::new(&registry.host(), Some(("bob", "wrong")));
    assert_eq!(wrong.get_manifest("demo/app", "single", ACCEPT_ALL_MANIFESTS).status, 401);
    assert_eq!(registry.token_requests(), before + 1);
    assert_eq!(token_server.request_log().last().unwrap().status, 401);
}

#[test]
fn registries_started_together_get_their_own_ports_and_dirs() {
    let regs: Vec<Registry> = (0..3).map(|_| Registry::start(Auth::Anonymous)).collect();
    let mut hosts: Vec<String> = regs.iter().map(Registry::host).collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3);
    let digests: Vec<String> =
        regs.iter().map(|r| push_image(r, "demo/app", "latest", &ImageSpec::linux_amd64(r.host()))).collect();
    for (r, d) in regs.iter().zip(&digests) {
        let got = RegistryClient::for_registry(r).head_manifest("demo/app", "latest", ACCEPT_ALL_MANIFESTS);
        assert_eq!(got.header("Docker-Content-Digest"), Some(d.as_str()));
    }
    let dir = regs[0].dir().path().to_path_buf();
    drop(regs);
    assert!(!dir.exists(), "the registry temp dir is removed on drop");
}

#[test]
fn docker_config_json_has_docker_login_shape() {
    let text = docker_config_json(&[("127.0.0.1:5000", "alice", "pa:ss")]);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let auth = json["auths"]["127.0.0.1:5000"]["auth"].as_str().unwrap();
    assert_eq!(auth, base64_std(b"alice:pa:ss"));
    assert_eq!(base64_std_decode(auth).unwrap(), b"alice:pa:ss");
}

fn raw_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().new_agent()
}

#[test]
fn fake_without_digest_header_serves_a_manifest_to_hash() {
    let fake = FakeRegistry::no_digest_header();
    let agent = raw_agent(Duration::from_secs(10));
    let url = format!("http://{}/v2/demo/app/manifests/latest", fake.host());
    let head = agent.head(&url).header("Accept", ACCEPT_ALL_MANIFESTS).call().unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.headers().get("docker-content-digest").is_none());
    assert_eq!(head.headers().get("content-length").unwrap(), &fake.manifest().len().to_string());
    let mut get = agent.get(&url).header("Accept", ACCEPT_ALL_MANIFESTS).call().unwrap();
    assert!(get.headers().get("docker-content-digest").is_none());
    let body = get.body_mut().read_to_vec().unwrap();
    assert_eq!(sha256_digest(&body), fake.manifest_digest());
    assert_eq!(fake.requests(), vec!["HEAD /v2/demo/app/manifests/latest", "GET /v2/demo/app/manifests/latest"]);
}

#[test]
fn fake_rate_limited_answers_429_with_retry_after() {
    let fake = FakeRegistry::rate_limited();
    let agent = raw_agent(Duration::from_secs(10));
    assert_eq!(agent.get(format!("http://{}/v2/", fake.host())).call().unwrap().status(), 200);
    let url = format!("http://{}/v2/demo/app/manifests/latest", fake.host());
    for resp in [agent.head(&url).call().unwrap(), agent.get(&url).call().unwrap()] {
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers().get("retry-after").unwrap(), "42");
    }
}

#[test]
fn fake_lying_digest_claims_a_digest_the_body_does_not_have() {
    let fake = FakeRegistry::lying_digest();
    let agent = raw_agent(Duration::from_secs(10));
    let url = format!("http://{}/v2/demo/app/manifests/latest", fake.host());
    let head = agent.head(&url).call().unwrap();
    assert_eq!(head.headers().get("docker-content-digest").unwrap(), fake.claimed_digest());
    assert!(head.headers().get("content-length").is_none());
    let mut get = agent.get(&url).call().unwrap();
    assert_eq!(get.headers().get("docker-content-digest").unwrap(), fake.claimed_digest());
    let body = get.body_mut().read_to_vec().unwrap();
    assert_ne!(sha256_digest(&body), fake.claimed_digest());
}

#[test]
fn fake_that_hangs_never_answers_and_still_shuts_down() {
    let fake = FakeRegistry::hangs();
    let agent = raw_agent(Duration::from_secs(1));
    let result = agent.get(format!("http://{}/v2/", fake.host())).call();
    assert!(result.is_err(), "the hanging fake answered: {:?}", result.map(|r| r.status()));
    assert_eq!(fake.requests(), vec!["GET /v2/"]);
    drop(fake); // must return (the test would hang otherwise)
}

#[test]
fn fake_schema1_only_serves_prettyjws_without_a_digest() {
    let fake = FakeRegistry::schema1_only();
    let agent = raw_agent(Duration::from_secs(10));
    let url = format!("http://{}/v2/demo/app/manifests/latest", fake.host());
    let mut get = agent.get(&url).header("Accept", ACCEPT_ALL_MANIFESTS).call().unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.headers().get("content-type").unwrap(), "application/vnd.docker.distribution.manifest.v1+prettyjws");
    assert!(get.headers().get("docker-content-digest").is_none());
    let body: serde_json::Value = serde_json::from_slice(&get.body_mut().read_to_vec().unwrap()).unwrap();
    assert_eq!(body["schemaVersion"], 1);
}

#[test]
fn registry_stop_and_restart_keeps_port_and_data() {
    let mut registry = Registry::start(Auth::htpasswd("alice", "pw"));
    let digest = push_image(&registry, "demo/app", "latest", &ImageSpec::linux_amd64("kept"));
    let host = registry.host();
    registry.stop();
    let down = raw_agent(Duration::from_secs(2)).get(format!("http://{host}/v2/")).call();
    assert!(down.is_err(), "a stopped registry still answers");
    registry.restart();
    assert_eq!(registry.host(), host);
    let client = RegistryClient::for_registry(&registry);
    let got = client.head_manifest("demo/app", "latest", ACCEPT_ALL_MANIFESTS);
    assert_eq!(got.header("Docker-Content-Digest"), Some(digest.as_str()), "log:\n{}", registry.log());
}
