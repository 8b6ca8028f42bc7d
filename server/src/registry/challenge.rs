//! Parsing `WWW-Authenticate` headers (RFC 7235 §4.1) into challenges: a registry's `401`
//! says how to authenticate (`Bearer realm=…,service=…,scope=…` or `Basic realm=…`).
//! Quoted values contain commas (`scope="repository:a:pull,push"`), one header may hold
//! several challenges, and a response may carry several headers; nothing here panics on
//! any input. Pure: no I/O.

/// One challenge: the scheme (lowercased) and its parameters (names lowercased, values as
/// sent, empty values kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of a parameter (name case-insensitive), the first if repeated.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `scope` entries: one value holds several, separated by spaces.
    pub fn scopes(&self) -> Vec<String> {
        self.param("scope").map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
    }

    pub fn is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }
}

/// All challenges of all `WWW-Authenticate` header values, in order.
pub fn parse_all<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    headers.into_iter().flat_map(parse).collect()
}

/// The challenges in one `WWW-Authenticate` header value.
pub fn parse(header: &str) -> Vec<Challenge> {
    let mut cur = Cursor { s: header.as_bytes(), i: 0 };
    let mut out = Vec::new();
    let mut next_scheme: Option<String> = None;
    loop {
        let scheme = match next_scheme.take() {
            Some(s) => s,
            None => {
                cur.skip_while(|c| c == b',' || is_ws(c));
                if cur.at_end() {
                    break;
                }
                let t = cur.token();
                if t.is_empty() {
                    // Not a token where a scheme must be: skip this list element.
                    cur.skip_while(|c| c != b',');
                    continue;
                }
                t
            }
        };
        let mut challenge = Challenge { scheme: scheme.to_ascii_lowercase(), params: Vec::new() };
        let mut seen_comma = false;
        loop {
            cur.skip_while(is_ws);
            match cur.peek() {
                None => break,
                Some(b',') => {
                    cur.i += 1;
                    seen_comma = true;
                    continue;
                }
                Some(_) => {}
            }
            let name = cur.token();
            if name.is_empty() {
                // token68 characters or garbage: ignore up to the next comma.
                cur.skip_while(|c| c != b',');
                continue;
            }
            cur.skip_while(is_ws);
            if cur.peek() == Some(b'=') {
                cur.i += 1;
                cur.skip_while(is_ws);
                let value = if cur.peek() == Some(b'"') { cur.quoted() } else { cur.bare_value() };
                challenge.params.push((name.to_ascii_lowercase(), value));
                cur.skip_while(is_ws);
                if !cur.at_end() && cur.peek() != Some(b',') {
                    cur.skip_while(|c| c != b',');
                }
            } else if seen_comma || !challenge.params.is_empty() {
                // A token not followed by `=` after a comma starts the next challenge.
                next_scheme = Some(name);
                break;
            } else {
                // `Scheme token68`: not used by registries; skip it.
                cur.skip_while(|c| c != b',');
            }
        }
        out.push(challenge);
    }
    out
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&keep) {
            self.i += 1;
        }
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> String {
        let start = self.i;
        self.skip_while(keep);
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// An RFC 7230 `token` (possibly empty).
    fn token(&mut self) -> String {
        self.take_while(is_tchar)
    }

    /// An unquoted parameter value; lenient (up to a comma or whitespace) because some
    /// servers send unquoted URLs.
    fn bare_value(&mut self) -> String {
        self.take_while(|c| c != b',' && !is_ws(c))
    }

    /// A quoted-string starting at `"`, with `\` escapes; an unterminated one runs to the end.
    fn quoted(&mut self) -> String {
        self.i += 1; // opening quote
        let mut bytes = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        bytes.push(escaped);
                        self.i += 1;
                    }
                }
                _ => bytes.push(c),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(header: &str) -> Challenge {
        let mut all = parse(header);
        assert_eq!(all.len(), 1, "{header}: {all:?}");
        all.remove(0)
    }

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    // The exact strings of registry-protocol.md §4.4.
    #[test]
    fn docker_hub_with_two_actions_in_scope() {
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(
            params(&c),
            [
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:samalba/my-app:pull,push"),
            ]
        );
        assert_eq!(c.scopes(), ["repository:samalba/my-app:pull,push"]);
    }

    #[test]
    fn docker_hub_version_check_has_no_scope() {
        let c = one(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#);
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert!(c.scopes().is_empty());
    }

    #[test]
    fn public_registries_bearer_challenges() {
        let cases = [
            (
                r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull""#,
                "https://ghcr.io/token",
                "ghcr.io",
                Some("repository:user/image:pull"),
            ),
            (r#"Bearer realm="https://quay.io/v2/auth",service="quay.io""#, "https://quay.io/v2/auth", "quay.io", None),
            (r#"Bearer realm="https://gcr.io/v2/token",service="gcr.io""#, "https://gcr.io/v2/token", "gcr.io", None),
            (
                r#"Bearer realm="https://us-central1-docker.pkg.dev/v2/token",service="us-central1-docker.pkg.dev",scope="repository:my-project/my-repo/my-image:pull""#,
                "https://us-central1-docker.pkg.dev/v2/token",
                "us-central1-docker.pkg.dev",
                Some("repository:my-project/my-repo/my-image:pull"),
            ),
            (
                r#"Bearer realm="https://public.ecr.aws/token/",service="public.ecr.aws""#,
                "https://public.ecr.aws/token/",
                "public.ecr.aws",
                None,
            ),
            (
                r#"Bearer realm="https://myreg.azurecr.io/oauth2/token",service="myreg.azurecr.io",scope="repository:library/hello-world:metadata_read""#,
                "https://myreg.azurecr.io/oauth2/token",
                "myreg.azurecr.io",
                Some("repository:library/hello-world:metadata_read"),
            ),
            (
                r#"Bearer realm="https://gitlab.com/jwt/auth",service="container_registry",scope="repository:gitlab-org/cli:pull""#,
                "https://gitlab.com/jwt/auth",
                "container_registry",
                Some("repository:gitlab-org/cli:pull"),
            ),
            (
                r#"Bearer realm="https://harbor.example.com/service/token",service="harbor-registry""#,
                "https://harbor.example.com/service/token",
                "harbor-registry",
                None,
            ),
        ];
        for (header, realm, service, scope) in cases {
            let c = one(header);
            assert!(c.is("Bearer"), "{header}");
            assert_eq!(c.param("realm"), Some(realm), "{header}");
            assert_eq!(c.param("service"), Some(service), "{header}");
            assert_eq!(c.param("scope"), scope, "{header}");
        }
    }

    #[test]
    fn azure_invalid_token_error_param() {
        let c = one(
            r#"Bearer realm="https://myreg.azurecr.io/oauth2/token",service="myreg.azurecr.io",scope="repository:library/hello-world:metadata_read",error="invalid_token""#,
        );
        assert_eq!(c.param("error"), Some("invalid_token"));
    }

    #[test]
    fn basic_challenges_of_ecr_and_htpasswd() {
        let c =
            one(r#"Basic realm="https://123456789.dkr.ecr.eu-central-1.amazonaws.com/",service="ecr.amazonaws.com""#);
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some("https://123456789.dkr.ecr.eu-central-1.amazonaws.com/"));
        assert_eq!(c.param("service"), Some("ecr.amazonaws.com"));
        let c = one(r#"Basic realm="basic-realm""#);
        assert_eq!(params(&c), [("realm", "basic-realm")]);
    }

    #[test]
    fn local_token_registry_insufficient_scope() {
        let c = one(
            r#"Bearer realm="http://127.0.0.1:5060/token",service="local-registry",scope="repository:demo/app:pull,push",error="insufficient_scope""#,
        );
        assert_eq!(c.param("realm"), Some("http://127.0.0.1:5060/token"));
        assert_eq!(c.scopes(), ["repository:demo/app:pull,push"]);
        assert_eq!(c.param("error"), Some("insufficient_scope"));
    }

    #[test]
    fn space_separated_scopes_and_empty_params() {
        // containerd core/remotes/docker/auth/parse_test.go
        let c = one(
            r#"Bearer realm="https://auth.example.io/token",empty="",service="registry.example.io",scope="repository:foo/bar:pull,push repository:foo/baz:pull""#,
        );
        assert_eq!(c.param("empty"), Some(""));
        assert_eq!(c.scopes(), ["repository:foo/bar:pull,push", "repository:foo/baz:pull"]);
    }

    #[test]
    fn several_challenges_in_one_header_and_in_several_headers() {
        // RFC 7235 §4.1 example.
        let all = parse(r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#);
        assert_eq!(all.len(), 2);
        assert_eq!(params(&all[0]), [("realm", "apps"), ("type", "1"), ("title", r#"Login to "apps""#)]);
        assert_eq!(all[1].scheme, "basic");
        assert_eq!(all[1].param("realm"), Some("simple"));

        let all = parse(r#"Basic, Bearer realm="r""#);
        assert_eq!(all.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(), ["basic", "bearer"]);
        assert_eq!(all[1].param("realm"), Some("r"));

        let all = parse_all([r#"Basic realm="a""#, r#"BEARER Realm="b", Service="s""#]);
        assert_eq!(all.len(), 2);
        assert!(all[1].is("bearer"));
        assert_eq!(all[1].param("realm"), Some("b"));
        assert_eq!(all[1].param("SERVICE"), Some("s"));
    }

    #[test]
    fn lenient_spacing_and_unquoted_values() {
        let c = one(" Bearer  realm = https://r.example/token ,service=svc ,, scope=\"a b\" ");
        assert_eq!(c.param("realm"), Some("https://r.example/token"));
        assert_eq!(c.param("service"), Some("svc"));
        assert_eq!(c.scopes(), ["a", "b"]);
    }

    #[test]
    fn token68_is_skipped() {
        let all = parse("Negotiate abc/def+==, Basic realm=\"x\"");
        assert_eq!(all.len(), 2);
        assert!(all[0].params.is_empty());
        assert_eq!(all[1].param("realm"), Some("x"));
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "",
            ",",
            "=",
            "\"",
            "Bearer realm=\"unterminated",
            "Bearer realm=\"a\\",
            "Bearer ==,,==",
            "é",
            "Bearer réalm=\"ü\"",
            "\u{0}\u{1}",
            "Bearer realm=",
            ",,Basic",
            "Bearer realm=\"x\" junk, scope=\"y\"",
        ] {
            let _ = parse(s);
        }
        assert!(parse("").is_empty());
        assert_eq!(one("Bearer realm=\"unterminated").param("realm"), Some("unterminated"));
        assert_eq!(one("Bearer realm=\"x\" junk, scope=\"y\"").param("scope"), Some("y"));
    }
}
