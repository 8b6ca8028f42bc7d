//! The reference parser against Docker's own cases (ported from distribution/reference
//! `normalize_test.go` and `reference_test.go`, run through `ParseNormalizedNamed`) plus
//! pinion's boundaries, and a no-panic sweep over mangled inputs.

use pinion_model::reference::is_valid_digest;
use pinion_model::{Error, Reference};

/// A reference Docker accepts, with everything pinion derives from it.
struct Valid {
    input: String,
    domain: &'static str,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
    familiar: String,
    canonical: String,
}

fn ok(input: impl Into<String>, domain: &'static str, path: impl Into<String>) -> Valid {
    let path = path.into();
    let familiar = if domain == "docker.io" {
        match path.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => path.clone(),
        }
    } else {
        format!("{domain}/{path}")
    };
    Valid {
        input: input.into(),
        canonical: format!("{domain}/{path}:latest"),
        domain,
        path,
        tag: None,
        digest: None,
        familiar,
    }
}

impl Valid {
    fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        self.canonical = format!("{}/{}:{tag}", self.domain, self.path);
        self.tag = Some(tag);
        self
    }
    /// A digest drops any tag from the canonical form; call after `tag`.
    fn digest(mut self, digest: impl Into<String>) -> Self {
        let digest = digest.into();
        self.canonical = format!("{}/{}@{digest}", self.domain, self.path);
        self.digest = Some(digest);
        self
    }
    /// Pins the expected strings literally where the helper's derivation is the subject.
    fn expect(mut self, familiar: &str, canonical: &str) -> Self {
        self.familiar = familiar.to_string();
        self.canonical = canonical.to_string();
        self
    }
}

fn sha256(c: &str) -> String {
    format!("sha256:{}", c.repeat(64))
}

const REDIS: &str = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";
const BUSYBOX: &str = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";
const HEX64: &str = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a";

fn valid_cases() -> Vec<Valid> {
    let f = || sha256("f");
    vec![
        // normalize_test.go TestValidateReferenceName.
        ok("docker/docker", "docker.io", "docker/docker"),
        ok("library/debian", "docker.io", "library/debian"),
        ok("debian", "docker.io", "library/debian"),
        ok("docker.io/docker/docker", "docker.io", "docker/docker"),
        ok("docker.io/library/debian", "docker.io", "library/debian"),
        ok("docker.io/debian", "docker.io", "library/debian"),
        ok("index.docker.io/docker/docker", "docker.io", "docker/docker"),
        ok("index.docker.io/library/debian", "docker.io", "library/debian"),
        ok("index.docker.io/debian", "docker.io", "library/debian"),
        ok("127.0.0.1:5000/docker/docker", "127.0.0.1:5000", "docker/docker"),
        ok("127.0.0.1:5000/library/debian", "127.0.0.1:5000", "library/debian"),
        ok("127.0.0.1:5000/debian", "127.0.0.1:5000", "debian"),
        ok("192.168.0.1", "docker.io", "library/192.168.0.1"),
        ok("192.168.0.1:80", "docker.io", "library/192.168.0.1").tag("80"),
        ok("192.168.0.1:8/debian", "192.168.0.1:8", "debian"),
        ok("192.168.0.2:25000/debian", "192.168.0.2:25000", "debian"),
        ok(
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "docker.io",
            "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        ),
        ok("[fc00::1]:5000/docker", "[fc00::1]:5000", "docker"),
        ok("[fc00::1]:5000/docker/docker", "[fc00::1]:5000", "docker/docker"),
        ok("[fc00:1:2:3:4:5:6:7]:5000/library/debian", "[fc00:1:2:3:4:5:6:7]:5000", "library/debian"),
        // With a host the 64-hex string is a name, not an image ID (Go's familiar form
        // of it is the bare hex, which does not parse back).
        ok(format!("docker.io/{HEX64}"), "docker.io", format!("library/{HEX64}")),
        ok("Docker/docker", "Docker", "docker").expect("Docker/docker", "Docker/docker:latest"),
        ok("DOCKER/docker", "DOCKER", "docker"),
        // normalize_test.go TestValidateRemoteName.
        ok("docker-rules/docker", "docker.io", "docker-rules/docker"),
        ok("docker---rules/docker", "docker.io", "docker---rules/docker"),
        ok("doc/docker", "docker.io", "doc/docker"),
        ok("d/docker", "docker.io", "d/docker"),
        ok("jess/t", "docker.io", "jess/t"),
        ok("dock__er/docker", "docker.io", "dock__er/docker"),
        // normalize_test.go TestParseRepositoryInfo.
        ok("fooo/bar", "docker.io", "fooo/bar").expect("fooo/bar", "docker.io/fooo/bar:latest"),
        ok("index.docker.io/fooo/bar", "docker.io", "fooo/bar"),
        ok("ubuntu", "docker.io", "library/ubuntu").expect("ubuntu", "docker.io/library/ubuntu:latest"),
        ok("nonlibrary/ubuntu", "docker.io", "nonlibrary/ubuntu"),
        ok("other/library", "docker.io", "other/library"),
        ok("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000", "private/moonbase"),
        ok("127.0.0.1:8000/privatebase", "127.0.0.1:8000", "privatebase"),
        ok("example.com/private/moonbase", "example.com", "private/moonbase"),
        ok("example.com/privatebase", "example.com", "privatebase"),
        ok("example.com:8000/private/moonbase", "example.com:8000", "private/moonbase"),
        ok("example.com:8000/privatebasee", "example.com:8000", "privatebasee"),
        ok("ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base"),
        ok("index.docker.io/library/ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base"),
        ok("docker.io/foo", "docker.io", "library/foo").expect("foo", "docker.io/library/foo:latest"),
        ok("library/foo/bar", "docker.io", "library/foo/bar")
            .expect("library/foo/bar", "docker.io/library/foo/bar:latest"),
        ok("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
        ok("store/foo/bar", "docker.io", "store/foo/bar"),
        ok("Foo/bar", "Foo", "bar").expect("Foo/bar", "Foo/bar:latest"),
        ok("FOO/bar", "FOO", "bar"),
        // normalize_test.go TestParseReferenceWithTagAndDigest / TestParseAnyReference.
        ok(format!("busybox:latest@{BUSYBOX}"), "docker.io", "library/busybox")
            .tag("latest")
            .digest(BUSYBOX)
            .expect("busybox", &format!("docker.io/library/busybox@{BUSYBOX}")),
        ok("redis", "docker.io", "library/redis"),
        ok("redis:latest", "docker.io", "library/redis").tag("latest"),
        ok("docker.io/library/redis:latest", "docker.io", "library/redis").tag("latest"),
        ok(format!("redis@{REDIS}"), "docker.io", "library/redis").digest(REDIS),
        ok(format!("docker.io/library/redis@{REDIS}"), "docker.io", "library/redis").digest(REDIS),
        ok("dmcgowan/myapp", "docker.io", "dmcgowan/myapp"),
        ok("dmcgowan/myapp:latest", "docker.io", "dmcgowan/myapp").tag("latest"),
        ok("docker.io/mcgowan/myapp:latest", "docker.io", "mcgowan/myapp").tag("latest"),
        ok(format!("dmcgowan/myapp@{REDIS}"), "docker.io", "dmcgowan/myapp").digest(REDIS),
        ok(format!("docker.io/dmcgowan/myapp@{REDIS}"), "docker.io", "dmcgowan/myapp").digest(REDIS),
        ok(&REDIS[7..70], "docker.io", format!("library/{}", &REDIS[7..70])),
        ok("dbcc1", "docker.io", "library/dbcc1"),
        // normalize_test.go TestNormalizedSplitHostname.
        ok("test.com/foo", "test.com", "foo"),
        ok("test_com/foo", "docker.io", "test_com/foo"),
        ok("docker/migrator", "docker.io", "docker/migrator"),
        ok("test.com:8080/foo", "test.com:8080", "foo"),
        ok("test-com:8080/foo", "test-com:8080", "foo"),
        ok("foo", "docker.io", "library/foo"),
        ok("xn--n3h.com/foo", "xn--n3h.com", "foo"),
        ok("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
        ok("docker.io/library/foo", "docker.io", "library/foo"),
        // reference_test.go TestReferenceParse, normalized.
        ok("test_com", "docker.io", "library/test_com"),
        ok("test.com:tag", "docker.io", "library/test.com").tag("tag"),
        ok("test.com:5000", "docker.io", "library/test.com").tag("5000"),
        ok("test.com/repo:tag", "test.com", "repo").tag("tag"),
        ok("test:5000/repo", "test:5000", "repo"),
        ok("test:5000/repo:tag", "test:5000", "repo").tag("tag"),
        ok(format!("test:5000/repo@{}", f()), "test:5000", "repo").digest(f()),
        ok(format!("test:5000/repo:tag@{}", f()), "test:5000", "repo").tag("tag").digest(f()),
        ok("lowercase:Uppercase", "docker.io", "library/lowercase").tag("Uppercase"),
        // 255-character path: the domain does not count (distribution/reference#9).
        ok(format!("{}a:tag-puts-this-over-max", "a/".repeat(127)), "docker.io", format!("{}a", "a/".repeat(127)))
            .tag("tag-puts-this-over-max"),
        ok("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux"),
        ok("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux").tag("some-long-tag"),
        ok("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io", "test.example.com/my-app")
            .tag("test.example.com"),
        ok("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage").tag("xn--n3h.com"),
        ok(format!("xn--7o8h.com/myimage:xn--7o8h.com@sha512:{}", "f".repeat(128)), "xn--7o8h.com", "myimage")
            .tag("xn--7o8h.com")
            .digest(format!("sha512:{}", "f".repeat(128))),
        ok("foo_bar.com:8080", "docker.io", "library/foo_bar.com").tag("8080"),
        ok("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com").tag("8080"),
        ok("192.168.1.1", "docker.io", "library/192.168.1.1"),
        ok("192.168.1.1:tag", "docker.io", "library/192.168.1.1").tag("tag"),
        ok("192.168.1.1:5000", "docker.io", "library/192.168.1.1").tag("5000"),
        ok("192.168.1.1/repo", "192.168.1.1", "repo"),
        ok("192.168.1.1:5000/repo", "192.168.1.1:5000", "repo"),
        ok("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo").tag("5050"),
        ok("[2001:db8::1]/repo", "[2001:db8::1]", "repo"),
        ok("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo").tag("tag"),
        ok("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000", "repo"),
        ok("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000", "repo").tag("tag"),
        ok(format!("[2001:db8::1]:5000/repo@{}", f()), "[2001:db8::1]:5000", "repo").digest(f()),
        ok(format!("[2001:db8::1]:5000/repo:tag@{}", f()), "[2001:db8::1]:5000", "repo").tag("tag").digest(f()),
        ok("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo"),
        ok("[::1]:5000/repo", "[::1]:5000", "repo"),
        // pinion's own cases.
        ok("nginx", "docker.io", "library/nginx").expect("nginx", "docker.io/library/nginx:latest"),
        ok("nginx:1.25", "docker.io", "library/nginx").tag("1.25"),
        ok(format!("nginx:latest@{REDIS}"), "docker.io", "library/nginx").tag("latest").digest(REDIS),
        ok(format!("nginx:1.25@{REDIS}"), "docker.io", "library/nginx")
            .tag("1.25")
            .digest(REDIS)
            .expect("nginx", &format!("docker.io/library/nginx@{REDIS}")),
        ok(format!("nginx@sha384:{}", "0".repeat(96)), "docker.io", "library/nginx")
            .digest(format!("sha384:{}", "0".repeat(96))),
        ok("[fe80::1]:5000/app", "[fe80::1]:5000", "app").expect("[fe80::1]:5000/app", "[fe80::1]:5000/app:latest"),
        ok("[FE80::A]:5000/app", "[FE80::A]:5000", "app"),
        ok("localhost/app", "localhost", "app").expect("localhost/app", "localhost/app:latest"),
        ok("localhost:5000/app:v1", "localhost:5000", "app").tag("v1"),
        ok("localhost", "docker.io", "library/localhost"),
        ok("localhost:5000", "docker.io", "library/localhost").tag("5000"),
        ok("LOCALHOST:5000/a", "LOCALHOST:5000", "a"),
        ok("Foo.com/bar", "Foo.com", "bar"),
        ok("index.docker.io/library/ubuntu", "docker.io", "library/ubuntu")
            .expect("ubuntu", "docker.io/library/ubuntu:latest"),
        ok("index.docker.io:443/ubuntu", "index.docker.io:443", "ubuntu"),
        ok("registry-1.docker.io/library/nginx", "registry-1.docker.io", "library/nginx"),
        ok("docker.io", "docker.io", "library/docker.io"),
        ok("docker.io/localhost/x", "docker.io", "localhost/x"),
        ok("ghcr.io/owner/app:v1.2.3-rc.1__x", "ghcr.io", "owner/app").tag("v1.2.3-rc.1__x"),
        ok("quay.io/coreos/etcd:v3.5.0", "quay.io", "coreos/etcd").tag("v3.5.0"),
        ok("gcr.io/a/b/c/d/e:_", "gcr.io", "a/b/c/d/e").tag("_"),
        ok("a.b-c.d:1/x-y--z.w_v__u:X", "a.b-c.d:1", "x-y--z.w_v__u").tag("X"),
        ok(format!("nginx:{}", "t".repeat(128)), "docker.io", "library/nginx").tag("t".repeat(128)),
        ok("a".repeat(247), "docker.io", format!("library/{}", "a".repeat(247))),
        ok(format!("registry.example.com:5000/{}", "b".repeat(255)), "registry.example.com:5000", "b".repeat(255)),
    ]
}

/// References Docker refuses, with the reason pinion gives.
fn invalid_cases() -> Vec<(String, &'static str)> {
    const FORMAT: &str = "invalid reference format";
    const LOWER: &str = "repository name must be lowercase";
    const LONG: &str = "repository name must not be more than 255 characters";
    const TAG: &str = "invalid tag format";
    const DIGEST: &str = "invalid digest format";
    const LENGTH: &str = "invalid digest length";
    const UNSUPPORTED: &str = "unsupported digest algorithm";
    const HEX: &str = "cannot specify 64-byte hexadecimal strings";
    let f = sha256("f");
    let long_namespace = ["this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255"; 4].join("_");
    let mut cases: Vec<(String, &'static str)> = vec![
        // reference_test.go TestReferenceParse.
        (String::new(), "repository name must have at least one component"),
        (":justtag".into(), FORMAT),
        (format!("@{f}"), FORMAT),
        (format!("repo@sha256:{}", "f".repeat(34)), LENGTH),
        (format!("validname@invaliddigest:{}", "f".repeat(64)), UNSUPPORTED),
        ("Uppercase:tag".into(), LOWER),
        ("test:5000/Uppercase/lowercase:tag".into(), LOWER),
        (format!("{}a:tag", "a/".repeat(128)), LONG),
        ("aa/asdf$$^/aa".into(), FORMAT),
        ("[2001:db8::1]".into(), FORMAT),
        ("[2001:db8::1]:5000".into(), FORMAT),
        ("[2001:db8::1]:tag".into(), FORMAT),
        ("[fe80::1%eth0]:5000/repo".into(), FORMAT),
        ("[fe80::1%@invalidzone]:5000/repo".into(), FORMAT),
        // normalize_test.go TestValidateReferenceName.
        ("https://github.com/docker/docker".into(), FORMAT),
        ("docker/Docker".into(), LOWER),
        ("-docker".into(), FORMAT),
        ("-docker/docker".into(), FORMAT),
        ("-docker.io/docker/docker".into(), FORMAT),
        ("docker///docker".into(), FORMAT),
        ("docker.io/docker/Docker".into(), LOWER),
        ("docker.io/docker///docker".into(), FORMAT),
        ("[fc00::1]".into(), FORMAT),
        ("[fc00::1]:5000".into(), FORMAT),
        ("fc00::1:5000/debian".into(), FORMAT),
        ("[fe80::1%eth0]:5000/debian".into(), FORMAT),
        ("[2001:db8:3:4::192.0.2.33]:5000/debian".into(), FORMAT),
        (HEX64.into(), HEX),
        // normalize_test.go TestValidateRemoteName.
        ("docker-/docker".into(), FORMAT),
        ("-docker-/docker".into(), FORMAT),
        ("____/____".into(), FORMAT),
        ("_docker/_docker".into(), FORMAT),
        ("dock..er/docker".into(), FORMAT),
        ("dock_.er/docker".into(), FORMAT),
        ("dock-.er/docker".into(), FORMAT),
        ("docker/".into(), FORMAT),
        (format!("{long_namespace}/docker"), LONG),
        ("-foo".into(), FORMAT),
        // Names and hosts.
        ("NGINX".into(), LOWER),
        ("ghcr.io/Owner/app".into(), LOWER),
        ("Foo_bar/baz".into(), LOWER), // the whole name parses only once lowercased
        ("\u{212A}/x".into(), LOWER),  // KELVIN SIGN lowercases to an ASCII 'k', as in Go
        ("a_b.com/x".into(), FORMAT),  // Go: domain-less path; pinion: refused (no registry)
        ("/".into(), FORMAT),
        ("//".into(), FORMAT),
        ("/nginx".into(), FORMAT),
        ("nginx/".into(), FORMAT),
        ("nginx//x".into(), FORMAT),
        (":".into(), FORMAT),
        ("@".into(), FORMAT),
        ("docker.io/".into(), FORMAT),
        ("example.com:/x".into(), FORMAT),
        ("localhost:abc/x".into(), FORMAT),
        ("[]/x".into(), FORMAT),
        ("[::1]:/x".into(), FORMAT),
        ("[::1/x".into(), FORMAT),
        ("ex ample.com/x".into(), FORMAT),
        (" nginx".into(), FORMAT),
        ("nginx ".into(), FORMAT),
        ("\tnginx".into(), FORMAT),
        ("nginx\n".into(), FORMAT),
        ("ngi\0nx".into(), FORMAT),
        ("ñginx".into(), FORMAT),
        ("ÉCOLE/x".into(), FORMAT),
        ("a".repeat(248), LONG),
        (format!("registry.example.com:5000/{}", "b".repeat(256)), LONG),
        (format!("x/{}", "y".repeat(254)), LONG),
        // Tags.
        ("nginx:".into(), TAG),
        ("nginx:-x".into(), TAG),
        ("nginx:.x".into(), TAG),
        ("nginx:a:b".into(), TAG),
        ("nginx:a/b".into(), FORMAT), // "nginx:a" is read as a host
        ("nginx:latest\r\n".into(), TAG),
        ("nginx:l atest".into(), TAG),
        (format!("nginx:{}", "t".repeat(129)), TAG),
        // Digests.
        ("nginx@".into(), DIGEST),
        ("nginx:1@".into(), DIGEST),
        (format!("nginx@sha256:{}", "f".repeat(31)), DIGEST),
        (format!("nginx@sha256:{}", "F".repeat(64)), DIGEST),
        (format!("nginx@sha256:{}", "f".repeat(63)), LENGTH),
        (format!("nginx@sha256:{}", "f".repeat(65)), LENGTH),
        (format!("nginx@sha512:{}", "f".repeat(64)), LENGTH),
        (format!("nginx@md5:{}", "f".repeat(32)), UNSUPPORTED),
        (format!("nginx@sha256+b64:{}", "f".repeat(64)), UNSUPPORTED),
        (format!("nginx:1@SHA256:{}", "f".repeat(64)), DIGEST),
        // Go checks everything up to the first ':' for case, so an uppercase algorithm
        // without a tag is a "lowercase" error.
        (format!("nginx@SHA256:{}", "f".repeat(64)), LOWER),
        (format!("nginx@{f}@{f}"), DIGEST),
        (format!("nginx@{f}:tag"), DIGEST),
        (format!("nginx@sha256:{}g", "f".repeat(64)), DIGEST),
    ];
    cases.push((format!("nginx@{f}\n"), DIGEST));
    cases
}

#[test]
fn valid_references_parse_and_normalize_like_docker() {
    let cases = valid_cases();
    assert!(cases.len() >= 120, "{} valid cases", cases.len());
    for c in &cases {
        let r = Reference::parse(&c.input).unwrap_or_else(|e| panic!("{:?}: {e}", c.input));
        assert_eq!(r.domain(), c.domain, "domain of {:?}", c.input);
        assert_eq!(r.path(), c.path, "path of {:?}", c.input);
        assert_eq!(r.tag(), c.tag.as_deref(), "tag of {:?}", c.input);
        assert_eq!(r.digest(), c.digest.as_deref(), "digest of {:?}", c.input);
        assert_eq!(r.familiar_name(), c.familiar, "familiar name of {:?}", c.input);
        assert_eq!(r.canonical(), c.canonical, "canonical form of {:?}", c.input);
        assert_eq!(r.name(), format!("{}/{}", c.domain, c.path));
        assert_eq!(r.tag_or_latest(), c.tag.as_deref().unwrap_or("latest"));
        assert_eq!(c.input.parse::<Reference>().as_ref(), Ok(&r));
    }
}

#[test]
fn invalid_references_are_refused_with_a_reason() {
    let cases = invalid_cases();
    assert!(cases.len() >= 90, "{} invalid cases", cases.len());
    for (input, reason) in &cases {
        match Reference::parse(input) {
            Err(Error::InvalidReference { reference, reason: got }) => {
                assert_eq!(&reference, input);
                assert_eq!(got, *reason, "reason for {input:?}");
            }
            other => panic!("{input:?} should be refused ({reason}), got {other:?}"),
        }
    }
}

#[test]
fn canonical_form_parses_back_to_the_normalized_reference() {
    for c in valid_cases() {
        let r = Reference::parse(&c.input).unwrap();
        let back = Reference::parse(&r.canonical()).unwrap();
        assert_eq!((back.domain(), back.path(), back.digest()), (r.domain(), r.path(), r.digest()));
        let normalized_tag = if r.digest().is_some() { None } else { Some(r.tag_or_latest()) };
        assert_eq!(back.tag(), normalized_tag, "{}", c.input);
        // Display is Go's String(): the full name with tag and digest as written.
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r, "{}", c.input);
        assert_eq!(Reference::parse(&back.canonical()).unwrap(), back);
    }
}

#[test]
fn familiar_name_is_lossy_like_docker() {
    // FamiliarName drops `docker.io/`, so a Hub path whose first component looks like a
    // host reads back as that host; Go behaves the same.
    let r = Reference::parse("docker.io/localhost/x").unwrap();
    assert_eq!(r.familiar_name(), "localhost/x");
    assert_eq!(Reference::parse(&r.familiar_name()).unwrap().domain(), "localhost");
    let r = Reference::parse("busybox:1.36").unwrap();
    assert_eq!(r.pinned(REDIS), format!("busybox@{REDIS}"));
    let pinned = Reference::parse(&r.pinned(REDIS)).unwrap();
    assert_eq!((pinned.name(), pinned.digest()), (r.name(), Some(REDIS)));
}

#[test]
fn digests_are_validated_like_go_digest() {
    assert!(is_valid_digest(REDIS));
    assert!(is_valid_digest(&format!("sha384:{}", "a".repeat(96))));
    assert!(is_valid_digest(&format!("sha512:{}", "0".repeat(128))));
    for bad in [
        String::new(),
        "sha256".into(),
        "sha256:".into(),
        format!(":{}", "a".repeat(64)),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha256:{}", "a".repeat(63)),
        format!("sha256:{}", "a".repeat(65)),
        format!("sha256:{}", "g".repeat(64)),
        format!("SHA256:{}", "a".repeat(64)),
        format!("md5:{}", "a".repeat(32)),
        format!("sha256:{} ", "a".repeat(64)),
        format!(" sha256:{}", "a".repeat(64)),
    ] {
        assert!(!is_valid_digest(&bad), "{bad:?}");
    }
}

/// Every prefix, every single-byte deletion, and junk inserted at every position of
/// every table input: parsing may refuse, never panic, and whatever it accepts must
/// be internally consistent.
#[test]
fn mangled_inputs_never_panic() {
    let mut seeds: Vec<String> = valid_cases().into_iter().map(|c| c.input).collect();
    seeds.extend(invalid_cases().into_iter().map(|(input, _)| input));
    let junk = ["", "/", ":", "@", ".", "-", "_", "[", "]", " ", "\n", "\r", "\0", "A", "é", "\u{212A}", "🐳"];
    let mut checked = 0usize;
    for seed in &seeds {
        for i in 0..=seed.len() {
            let Some((head, tail)) = seed.get(..i).zip(seed.get(i..)) else {
                continue; // not a char boundary
            };
            let deleted = seed.get(i + 1..).map(|rest| format!("{head}{rest}"));
            let variants = junk
                .iter()
                .map(|j| format!("{head}{j}{tail}"))
                .chain([head.to_string(), tail.to_string()])
                .chain(deleted);
            for input in variants {
                checked += 1;
                if let Ok(r) = Reference::parse(&input) {
                    assert!(!r.domain().is_empty() && r.path().len() <= 255, "{input:?}");
                    let back = Reference::parse(&r.canonical()).unwrap_or_else(|e| panic!("{input:?}: {e}"));
                    assert_eq!(back.name(), r.name(), "{input:?}");
                }
            }
        }
    }
    assert!(checked > 100_000, "{checked} inputs");
}

#[test]
fn pinned_references_read_back_as_the_same_repository() {
    let digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    for (input, pinned) in [
        ("nginx:latest", format!("nginx@{digest}")),
        ("user/app", format!("user/app@{digest}")),
        ("localhost:5000/app:v1", format!("localhost:5000/app@{digest}")),
        ("docker.io/localhost/x", format!("docker.io/localhost/x@{digest}")),
    ] {
        let reference = Reference::parse(input).unwrap();
        assert_eq!(reference.pinned(digest), pinned, "{input}");
        let back = Reference::parse(&pinned).unwrap();
        assert_eq!((back.domain(), back.path()), (reference.domain(), reference.path()), "{input}");
    }
}
