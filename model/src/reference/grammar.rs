//! The distribution/reference grammar (`regexp.go`) as hand-written matchers, so that
//! `pinion-model` needs no regex engine: each function accepts exactly the strings the
//! anchored Go pattern named in its doc comment accepts.

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`: one component of a repository path.
pub(super) fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A run of separator bytes, necessarily followed by an alphanumeric (the
        // component ends with one).
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&c| c == b'-');
        if sep.is_empty() || !ok {
            return false;
        }
    }
    true
}

/// `path-component ("/" path-component)*`: a repository path (the "remote name").
pub(super) fn is_path(s: &str) -> bool {
    s.split('/').all(is_path_component)
}

/// `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])` joined by `.`.
fn is_domain_name(s: &str) -> bool {
    s.split('.').all(|part| {
        let b = part.as_bytes();
        match (b.first(), b.last()) {
            (Some(f), Some(l)) => {
                f.is_ascii_alphanumeric()
                    && l.is_ascii_alphanumeric()
                    && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            }
            _ => false,
        }
    })
}

/// `(?::[0-9]+)?` after the host: empty, or a colon and at least one digit.
fn is_optional_port(s: &str) -> bool {
    match s.strip_prefix(':') {
        None => s.is_empty(),
        Some(digits) => !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()),
    }
}

/// `(?:domain-name | \[[a-fA-F0-9:]+\]) (?::[0-9]+)?`: a registry host with optional port.
pub(super) fn is_domain_and_port(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return false;
        };
        let inside = &rest[..close];
        !inside.is_empty()
            && inside.bytes().all(|c| c.is_ascii_hexdigit() || c == b':')
            && is_optional_port(&rest[close + 1..])
    } else {
        let (host, port) = s.split_at(s.find(':').unwrap_or(s.len()));
        is_domain_name(host) && is_optional_port(port)
    }
}

/// `[\w][\w.-]{0,127}` (Go's `\w` is ASCII `[0-9A-Za-z_]`).
pub(super) fn is_tag(s: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = s.as_bytes();
    match b.first() {
        Some(&first) if word(first) && b.len() <= 128 => b.iter().all(|&c| word(c) || c == b'.' || c == b'-'),
        _ => false,
    }
}

/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}`: the
/// digest shape a reference accepts before go-digest validates it.
pub(super) fn is_digest_shape(s: &str) -> bool {
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return false;
    };
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphabetic) && b.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(component_ok)
        && encoded.len() >= 32
        && encoded.bytes().all(|c| c.is_ascii_hexdigit())
}

/// go-digest's `Digest.Validate` for a string that already has the digest shape:
/// sha256, sha384 and sha512 are the algorithms Docker registers, each with exactly
/// its size in lowercase hex.
pub(super) fn validate_digest(s: &str) -> Result<(), &'static str> {
    let (algorithm, encoded) = s.split_once(':').unwrap_or((s, ""));
    let hex_len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        // go-digest's own pattern only allows lowercase algorithm names.
        _ if algorithm.bytes().any(|c| c.is_ascii_uppercase()) => return Err("invalid digest format"),
        _ => return Err("unsupported digest algorithm"),
    };
    if encoded.len() != hex_len {
        return Err("invalid digest length");
    }
    if !is_lower_hex(encoded) {
        return Err("invalid digest format");
    }
    Ok(())
}

/// `[a-f0-9]{64}`: an image ID, which Docker refuses as a repository name.
pub(super) fn is_identifier(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// `[a-f0-9]*`: the only encoding go-digest accepts for the algorithms it knows.
fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The pieces of `referencePat` after a successful match; `domain` is `None` when the
/// first component is not a valid host and the whole name matched as a path instead.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parts<'a> {
    pub domain: Option<&'a str>,
    pub path: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// Matches `name [":" tag] ["@" digest]` the way Go's anchored `referencePat` does,
/// including its preference for reading the first component as a domain. The error
/// names the part that failed, where Go only says "invalid reference format".
pub(super) fn split_reference(s: &str) -> Result<Parts<'_>, &'static str> {
    // No part but the digest may hold '@'; no part after the last '/' but the tag ':'.
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    let last_component = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_component..].find(':') {
        Some(i) => {
            let colon = last_component + i;
            (&name_tag[..colon], Some(&name_tag[colon + 1..]))
        }
        None => (name_tag, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((d, p)) if is_domain_and_port(d) && is_path(p) => (Some(d), p),
        _ if is_path(name) => (None, name),
        _ => return Err("invalid reference format"),
    };
    if tag.is_some_and(|t| !is_tag(t)) {
        return Err("invalid tag format");
    }
    if digest.is_some_and(|d| !is_digest_shape(d)) {
        return Err("invalid digest format");
    }
    Ok(Parts { domain, path, tag, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components() {
        for ok in ["a", "a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2_c3__d4-e5", "0"] {
            assert!(is_path_component(ok), "{ok}");
        }
        for bad in ["", "A", "a..b", "a._b", "a___b", "a-.b", "-a", "a-", ".a", "a.", "a b", "é"] {
            assert!(!is_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn domains() {
        for ok in ["a", "a.b", "A-b.C", "a--b.c:5000", "127.0.0.1:80", "[::1]", "[fe80::1]:5000"] {
            assert!(is_domain_and_port(ok), "{ok}");
        }
        for bad in ["", "a.", ".a", "-a", "a-", "a:", "a:x", "a_b", "[]", "[::1", "[::g]", "[::1]:", "a:1:2"] {
            assert!(!is_domain_and_port(bad), "{bad}");
        }
    }

    #[test]
    fn tags_and_digests() {
        assert!(is_tag("_") && is_tag("A.b-C_1") && is_tag(&"t".repeat(128)));
        assert!(!is_tag("") && !is_tag(".a") && !is_tag("-a") && !is_tag(&"t".repeat(129)));
        let hex = "f".repeat(64);
        assert!(is_digest_shape(&format!("sha256:{hex}")));
        assert!(is_digest_shape(&format!("a+b.c-d_e:{}", "F".repeat(32))));
        assert!(!is_digest_shape(&format!("1a:{hex}")) && !is_digest_shape(&format!("a+:{hex}")));
        assert!(!is_digest_shape(&format!("sha256:{}", "f".repeat(31))));
        assert_eq!(validate_digest(&format!("sha256:{hex}")), Ok(()));
        assert_eq!(validate_digest(&format!("sha512:{}", "0".repeat(128))), Ok(()));
        assert_eq!(validate_digest(&format!("sha256:{}", "F".repeat(64))), Err("invalid digest format"));
        assert_eq!(validate_digest(&format!("sha384:{hex}")), Err("invalid digest length"));
        assert_eq!(validate_digest(&format!("md5:{hex}")), Err("unsupported digest algorithm"));
        assert_eq!(validate_digest(&format!("SHA256:{hex}")), Err("invalid digest format"));
    }

    #[test]
    fn split_prefers_a_domain() {
        let p = split_reference("a.b/c:t@sha256:0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!((p.domain, p.path, p.tag), (Some("a.b"), "c", Some("t")));
        let p = split_reference("a_b.c/d").unwrap();
        assert_eq!((p.domain, p.path), (None, "a_b.c/d"));
        assert_eq!(split_reference("a/b:").unwrap_err(), "invalid tag format");
        assert_eq!(split_reference("a/b@x").unwrap_err(), "invalid digest format");
        assert_eq!(split_reference("a//b").unwrap_err(), "invalid reference format");
    }
}
