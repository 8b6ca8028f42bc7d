//! End-to-end tag → digest resolution through the CLI, `pinion-server image resolve REF
//! [--registry-auth FILE] [--timeout SECS]`, against the real Debian docker-registry in
//! each auth mode and against fakes for the faults a real registry cannot produce.
//! Success is one JSON line `{"requested","digest","mediaType","pinned"}` and exit 0;
//! a registry failure is exit 1 with the reason on stderr; an invalid reference, exit 2.

use pinion_tests::*;
use std::time::Duration;

const REPO: &str = "demo/app";

/// `pinion-server image resolve <reference> <extra>`.
fn resolve(reference: &str, extra: &[&str]) -> CliOutput {
    let mut args = vec!["image", "resolve", reference];
    args.extend_from_slice(extra);
    run_cli(&args)
}

/// Asserts a successful resolution of `reference` to `digest` with `media_type`.
fn assert_resolved(out: &CliOutput, reference: &str, digest: &str, media_type: &str) {
    assert_eq!(out.code, Some(0), "{out}");
    let json = out.json();
    assert_eq!(json["requested"], reference, "{out}");
    assert_eq!(json["digest"], digest, "{out}");
    assert_eq!(json["mediaType"], media_type, "{out}");
    let familiar = reference.rsplit_once(':').map(|(name, _)| name).unwrap();
    assert_eq!(json["pinned"], format!("{familiar}@{digest}"), "{out}");
}

/// Asserts a registry failure: exit 1, no digest on stdout, and a reason on stderr.
fn assert_failed(out: &CliOutput) {
    assert_eq!(out.code, Some(1), "{out}");
    assert!(!out.stdout.contains("sha256:"), "a failed resolution must not print a digest: {out}");
    assert!(!out.stderr.trim().is_empty(), "the reason belongs on stderr: {out}");
}

fn mentions_refused_credentials(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    ["refused", "unauthorized", "credential", "denied", "authentication"].iter().any(|w| s.contains(w))
}

#[test]
fn anonymous_single_arch_tag_resolves_to_the_pushed_manifest_digest() {
    let registry = Registry::start(Auth::Anonymous);
    let digest = push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("v1"));
    let reference = format!("{}/{REPO}:latest", registry.host());
    assert_resolved(&resolve(&reference, &[]), &reference, &digest, DOCKER_MANIFEST);
}

#[test]
fn oci_single_image_resolves_to_its_manifest_digest() {
    let registry = Registry::start(Auth::Anonymous);
    let pushed = push_image_as(&registry, REPO, "oci", &ImageSpec::linux_arm64("oci"), ManifestFormat::Oci);
    let reference = format!("{}/{REPO}:oci", registry.host());
    assert_resolved(&resolve(&reference, &[]), &reference, &pushed.digest, OCI_MANIFEST);
}

#[test]
fn htpasswd_with_the_right_password_resolves() {
    let registry = Registry::start(Auth::htpasswd("alice", "correct horse"));
    let digest = push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("basic"));
    let dir = TempDir::new("resolve-htpasswd");
    let auth = dir.write("config.json", registry.docker_config());
    let reference = format!("{}/{REPO}:latest", registry.host());
    let out = resolve(&reference, &["--registry-auth", auth.to_str().unwrap()]);
    assert_resolved(&out, &reference, &digest, DOCKER_MANIFEST);
}

#[test]
fn htpasswd_with_a_wrong_password_fails_saying_the_credentials_were_refused() {
    let registry = Registry::start(Auth::htpasswd("alice", "correct horse"));
    push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("basic"));
    let dir = TempDir::new("resolve-htpasswd-wrong");
    let auth = dir.write("config.json", registry.docker_config_with_password("wrong"));
    let out = resolve(&format!("{}/{REPO}:latest", registry.host()), &["--registry-auth", auth.to_str().unwrap()]);
    assert_failed(&out);
    assert!(mentions_refused_credentials(&out.stderr), "stderr should say the credentials were refused: {out}");
}

#[test]
fn htpasswd_without_credentials_fails() {
    let registry = Registry::start(Auth::htpasswd("alice", "correct horse"));
    push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("basic"));
    let out = resolve(&format!("{}/{REPO}:latest", registry.host()), &[]);
    assert_failed(&out);
    assert!(mentions_refused_credentials(&out.stderr), "{out}");
}

#[test]
fn token_auth_with_the_right_credentials_resolves_via_the_token_server() {
    let registry = Registry::start(Auth::token("bob", "s3cret"));
    let digest = push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("token"));
    let dir = TempDir::new("resolve-token");
    let auth = dir.write("config.json", registry.docker_config());
    let reference = format!("{}/{REPO}:latest", registry.host());
    let before = registry.token_requests();
    let out = resolve(&reference, &["--registry-auth", auth.to_str().unwrap()]);
    assert_resolved(&out, &reference, &digest, DOCKER_MANIFEST);
    let asked = registry.token_requests() - before;
    assert!(asked >= 1, "the resolver must have fetched a token");
    let log = registry.token_server().unwrap().request_log();
    let last = log.last().unwrap();
    assert_eq!(last.user.as_deref(), Some("bob"), "{log:?}");
    assert_eq!(last.service.as_deref(), Some("pinion-test-registry"), "{log:?}");
    assert!(last.scopes.iter().any(|s| s == "repository:demo/app:pull"), "{log:?}");
}

#[test]
fn token_auth_with_a_wrong_password_fails() {
    let registry = Registry::start(Auth::token("bob", "s3cret"));
    push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("token"));
    let dir = TempDir::new("resolve-token-wrong");
    let auth = dir.write("config.json", registry.docker_config_with_password("wrong"));
    let out = resolve(&format!("{}/{REPO}:latest", registry.host()), &["--registry-auth", auth.to_str().unwrap()]);
    assert_failed(&out);
    assert!(mentions_refused_credentials(&out.stderr), "{out}");
}

#[test]
fn token_auth_without_credentials_fails_on_insufficient_scope() {
    let registry = Registry::start(Auth::token("bob", "s3cret"));
    push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("token"));
    let out = resolve(&format!("{}/{REPO}:latest", registry.host()), &[]);
    assert_failed(&out);
}

#[test]
fn multi_arch_docker_manifest_list_resolves_to_the_list_digest_never_a_child() {
    let registry = Registry::start(Auth::Anonymous);
    let list = push_manifest_list(
        &registry,
        REPO,
        "multi",
        &[ImageSpec::linux_amd64("amd64"), ImageSpec::linux_arm_v7("armv7")],
    );
    let reference = format!("{}/{REPO}:multi", registry.host());
    let out = resolve(&reference, &[]);
    assert!(
        !list.child_digests().iter().any(|c| out.stdout.contains(c.as_str())),
        "resolved to a platform child (the linux/amd64 trap of registry-protocol §2.1): {out}"
    );
    assert_resolved(&out, &reference, list.digest(), DOCKER_MANIFEST_LIST);
}

#[test]
fn oci_index_resolves_to_the_index_digest() {
    let registry = Registry::start(Auth::Anonymous);
    let index =
        push_oci_index(&registry, REPO, "multi", &[ImageSpec::linux_amd64("amd64"), ImageSpec::linux_arm64("arm64")]);
    let reference = format!("{}/{REPO}:multi", registry.host());
    let out = resolve(&reference, &[]);
    assert!(!index.child_digests().iter().any(|c| out.stdout.contains(c.as_str())), "{out}");
    assert_resolved(&out, &reference, index.digest(), OCI_INDEX);
}

#[test]
fn a_moved_tag_resolves_to_its_new_digest() {
    let registry = Registry::start(Auth::Anonymous);
    let reference = format!("{}/{REPO}:latest", registry.host());
    let v1 = push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("v1"));
    assert_resolved(&resolve(&reference, &[]), &reference, &v1, DOCKER_MANIFEST);
    let v2 = push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("v2"));
    assert_ne!(v1, v2);
    assert_resolved(&resolve(&reference, &[]), &reference, &v2, DOCKER_MANIFEST);
}

#[test]
fn unknown_tag_fails_with_manifest_unknown() {
    let registry = Registry::start(Auth::Anonymous);
    push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("v1"));
    let out = resolve(&format!("{}/{REPO}:no-such-tag", registry.host()), &[]);
    assert_failed(&out);
    assert!(out.stderr.to_ascii_lowercase().contains("manifest unknown"), "{out}");
}

#[test]
fn unknown_repository_fails() {
    let registry = Registry::start(Auth::Anonymous);
    let out = resolve(&format!("{}/nobody/here:latest", registry.host()), &[]);
    assert_failed(&out);
}

#[test]
fn invalid_references_exit_2_without_asking_anyone() {
    let fake = FakeRegistry::no_digest_header();
    let host = fake.host();
    let long_tag = "t".repeat(129);
    let invalid = [
        format!("{host}/Demo/App:latest"),      // uppercase repository
        format!("{host}/demo/app:"),            // empty tag
        format!("{host}/demo//app:latest"),     // empty path component
        format!("{host}/demo/app@sha256:1234"), // digest too short
        format!("{host}/demo/app:{long_tag}"),  // tag over 128 characters
        ":latest".to_string(),
        String::new(),
    ];
    for reference in &invalid {
        let out = resolve(reference, &[]);
        assert_eq!(out.code, Some(2), "{reference:?} is invalid: {out}");
        assert!(!out.stdout.contains("sha256:"), "{out}");
    }
    assert!(fake.requests().is_empty(), "invalid references reached the registry: {:?}", fake.requests());
}

#[test]
fn registry_without_digest_header_resolves_to_the_sha256_of_the_body() {
    let fake = FakeRegistry::no_digest_header();
    let reference = format!("{}/{REPO}:latest", fake.host());
    let out = resolve(&reference, &[]);
    assert_resolved(&out, &reference, &fake.manifest_digest(), DOCKER_MANIFEST);
    assert!(
        fake.requests().iter().any(|r| r.starts_with("GET ") && r.contains("/manifests/")),
        "the digest must come from a GET of the body: {:?}",
        fake.requests()
    );
}

#[test]
fn rate_limited_registry_fails_naming_the_rate_limit_and_retry_after() {
    let fake = FakeRegistry::rate_limited();
    let out = run_cli_within(
        &["image", "resolve", &format!("{}/{REPO}:latest", fake.host()), "--timeout", "5"],
        Duration::from_secs(40),
    );
    assert!(!out.timed_out, "a 429 must not make the CLI sleep out Retry-After: {out}");
    assert_failed(&out);
    let stderr = out.stderr.to_ascii_lowercase();
    assert!(stderr.contains("rate"), "stderr should name the rate limit: {out}");
    assert!(stderr.contains(&RETRY_AFTER_SECS.to_string()), "stderr should carry Retry-After 42: {out}");
}

#[test]
fn lying_digest_header_is_caught_and_no_digest_is_printed() {
    let fake = FakeRegistry::lying_digest();
    let out = resolve(&format!("{}/{REPO}:latest", fake.host()), &[]);
    assert_failed(&out);
    assert!(!out.stdout.contains(fake.claimed_digest()), "{out}");
    assert!(out.stderr.to_ascii_lowercase().contains("digest"), "stderr should say the digest did not match: {out}");
}

#[test]
fn hanging_registry_fails_after_the_timeout_instead_of_hanging() {
    let fake = FakeRegistry::hangs();
    let out = run_cli_within(
        &["image", "resolve", &format!("{}/{REPO}:latest", fake.host()), "--timeout", "2"],
        Duration::from_secs(60),
    );
    assert!(!out.timed_out, "still running after 60 s with --timeout 2: {out}");
    assert!(out.elapsed < Duration::from_secs(15), "--timeout 2 should end it well within 15 s: {out}");
    assert_failed(&out);
}

#[test]
fn unreachable_registry_fails() {
    // A port that was free a moment ago: nothing listens there.
    let host = format!("127.0.0.1:{}", pinion_tests::util::free_port());
    let out = run_cli_within(
        &["image", "resolve", &format!("{host}/{REPO}:latest"), "--timeout", "5"],
        Duration::from_secs(60),
    );
    assert!(!out.timed_out, "{out}");
    assert_failed(&out);
}

#[test]
fn localhost_registry_is_spoken_to_over_plain_http() {
    let registry = Registry::start(Auth::Anonymous);
    let digest = push_image(&registry, REPO, "latest", &ImageSpec::linux_amd64("localhost"));
    let reference = format!("localhost:{}/{REPO}:latest", registry.port());
    assert_resolved(&resolve(&reference, &[]), &reference, &digest, DOCKER_MANIFEST);
}

#[test]
fn schema1_answer_is_refused_rather_than_hashed() {
    let fake = FakeRegistry::schema1_only();
    let out = resolve(&format!("{}/{REPO}:latest", fake.host()), &[]);
    assert_failed(&out);
    assert!(out.stderr.to_ascii_lowercase().contains("schema1"), "stderr should say why: {out}");
}
