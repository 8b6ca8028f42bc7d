//! Image references parsed and normalized exactly as Docker's distribution/reference
//! (`ParseNormalizedNamed`) does, so that `nginx`, `docker.io/library/nginx:latest` and
//! `index.docker.io/library/nginx` name the same repository and a pinned reference is
//! the string Docker itself would print; and what an image field may hold besides a
//! name, as `ParseAnyReference` reads it: a local image ID (`ImageRef`).

mod grammar;

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Docker Hub's canonical domain, the default when a reference names none.
const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's legacy ("Docker Index") domain, normalized to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// The namespace of official images on Docker Hub: `nginx` is `library/nginx`.
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag a registry is asked for when none was written.
const DEFAULT_TAG: &str = "latest";
/// Longest repository path (after normalization, without the domain) Docker accepts.
pub const REPOSITORY_PATH_MAX: usize = 255;
/// The digest algorithms Docker registers: a one-component name `sha256:…` is an image
/// ID, however mistyped, never the repository `library/sha256` with a tag.
const DIGEST_ALGORITHMS: [&str; 3] = ["sha256", "sha384", "sha512"];
/// The algorithm `ParseAnyReference` gives a bare 64-hex image ID.
const IMAGE_ID_ALGORITHM: &str = "sha256";

/// What an image field names, read as Docker's `ParseAnyReference` reads it (`docker
/// run`, `docker create` and the Engine API do): an image ID, or a repository reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// A repository in a registry, with its tag and digest.
    Named(Reference),
    /// An image already on the engine, named by its ID; no registry can be asked for it.
    Id(ImageId),
}

/// A local image ID as written: `sha256:<64 hex>` (or another algorithm Docker knows,
/// with its length), or 64 lowercase hex alone.
#[derive(Debug, Clone, Eq)]
pub struct ImageId(String);

impl ImageRef {
    /// `ParseAnyReference`: 64 lowercase hex is an image ID (`sha256:` implied); a valid
    /// digest is an image ID; anything else must be a repository reference.
    pub fn parse(input: &str) -> Result<ImageRef, Error> {
        if grammar::is_identifier(input) || is_valid_digest(input) {
            return Ok(ImageRef::Id(ImageId(input.to_string())));
        }
        Reference::parse(input).map(ImageRef::Named)
    }

    /// The repository reference, unless this is an image ID.
    pub fn named(&self) -> Option<&Reference> {
        match self {
            ImageRef::Named(reference) => Some(reference),
            ImageRef::Id(_) => None,
        }
    }
}

impl ImageId {
    /// The ID exactly as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The ID as a digest: `sha256:` added to bare hex, as `ParseAnyReference` does.
    pub fn digest(&self) -> String {
        if grammar::is_identifier(&self.0) {
            format!("{IMAGE_ID_ALGORITHM}:{}", self.0)
        } else {
            self.0.clone()
        }
    }
}

/// Two spellings of one ID (`<hex>`, `sha256:<hex>`) are the same image.
impl PartialEq for ImageId {
    fn eq(&self, other: &ImageId) -> bool {
        self.digest() == other.digest()
    }
}

impl std::hash::Hash for ImageId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest().hash(state)
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalized image reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses a reference the way `docker pull` does (familiar names allowed). Unlike
    /// Go's `ParseNormalizedNamed`, a one-component name `sha256:…` (any algorithm Docker
    /// knows) is refused rather than read as the Hub repository `library/sha256`: it is
    /// an image ID, valid (`ImageRef::parse` takes it) or mistyped.
    pub fn parse(input: &str) -> Result<Reference, Error> {
        parse_normalized(input).map_err(|reason| Error::InvalidReference { reference: input.to_string(), reason })
    }

    /// Registry host, normalized: `docker.io` for Docker Hub (also for `index.docker.io`).
    pub fn domain(&self) -> &str {
        &self.domain
    }
    /// Repository path inside the registry: `library/nginx`.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The tag exactly as written, `None` when none was written (no `latest` default).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    /// The digest exactly as written (`sha256:<64 hex>`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
    /// `domain/path`: `docker.io/library/nginx`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
    /// The short form Docker prints: `nginx`, `user/app`, `localhost:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return self.name();
        }
        // Like Go's familiarizeName: `library/` goes only when nothing nested follows.
        match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.path.clone(),
        }
    }
    /// `name[:tag][@digest]` with `:latest` added when neither is present and the tag
    /// dropped when a digest is present: `docker.io/library/nginx:latest`.
    pub fn canonical(&self) -> String {
        match &self.digest {
            Some(digest) => format!("{}@{}", self.name(), digest),
            None => format!("{}:{}", self.name(), self.tag_or_latest()),
        }
    }
    /// `familiar_name@digest`: the string stored in a pinned target state. When the
    /// familiar form would read back as another repository (a Hub namespace that looks
    /// like a host, `docker.io/localhost/x`), the full name is used instead.
    pub fn pinned(&self, digest: &str) -> String {
        let familiar = format!("{}@{}", self.familiar_name(), digest);
        match Reference::parse(&familiar) {
            Ok(back) if back.domain == self.domain && back.path == self.path => familiar,
            _ => format!("{}@{}", self.name(), digest),
        }
    }
    /// The tag to ask a registry for: the written tag, or `latest`.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }
}

/// Go's `String()`: the full name with tag and digest as written
/// (`docker.io/library/nginx:1.25@sha256:…`).
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Reference, Error> {
        Reference::parse(s)
    }
}

/// True for a well-formed OCI digest (`algorithm:encoded`; sha256 needs 64 lowercase hex).
pub fn is_valid_digest(digest: &str) -> bool {
    grammar::is_digest_shape(digest) && grammar::validate_digest(digest).is_ok()
}

/// Go's `strings.ToLower(s) != s`.
fn has_uppercase(s: &str) -> bool {
    s.to_lowercase() != s
}

/// `ParseNormalizedNamed` followed by `Parse`, step for step, returning the reason of
/// the first rule broken.
fn parse_normalized(input: &str) -> Result<Reference, &'static str> {
    if input.is_empty() {
        return Err("repository name must have at least one component");
    }
    if grammar::is_identifier(input) {
        return Err("cannot specify 64-byte hexadecimal strings");
    }
    // A one-component name with a digest algorithm for a repository: an image ID.
    let algorithm = input.split_once(':').map(|(name, _)| name).filter(|name| DIGEST_ALGORITHMS.contains(name));
    if let Some(algorithm) = algorithm.filter(|_| !input.contains('/')) {
        return Err(if is_valid_digest(input) {
            "an image ID names a local image, not a repository"
        } else if algorithm == IMAGE_ID_ALGORITHM {
            "an image ID is sha256: and 64 lowercase hex digits"
        } else {
            "an image ID is an algorithm, ':' and its digest in lowercase hex (sha384: 96, sha512: 128 digits)"
        });
    }
    let (domain, remainder) = split_docker_domain(input);
    // Go checks the remainder up to its first ':', whatever that colon separates.
    let remote = remainder.split(':').next().unwrap_or_default();
    if has_uppercase(remote) {
        return Err("repository name must be lowercase");
    }
    let full = format!("{domain}/{remainder}");
    let parts = match grammar::split_reference(&full) {
        Ok(parts) => parts,
        Err(reason) => {
            let lower = full.to_lowercase();
            if lower != full && grammar::split_reference(&lower).is_ok() {
                return Err("repository name must be lowercase");
            }
            return Err(reason);
        }
    };
    if parts.path.len() > REPOSITORY_PATH_MAX {
        return Err("repository name must not be more than 255 characters");
    }
    if let Some(digest) = parts.digest {
        grammar::validate_digest(digest)?;
    }
    // Go would accept a first component that looks like a host (`a_b.com/x`) but is not
    // one by reading the whole name as a domain-less path; no registry could be asked.
    let Some(domain) = parts.domain else {
        return Err("invalid reference format");
    };
    Ok(Reference {
        domain: domain.to_string(),
        path: parts.path.to_string(),
        tag: parts.tag.map(str::to_string),
        digest: parts.digest.map(str::to_string),
    })
}

/// Go's `splitDockerDomain`: the first component is a registry host when it is
/// `localhost`, contains `.` or `:`, or has uppercase; otherwise the reference is on
/// Docker Hub, where a one-component path lives under `library/`.
fn split_docker_domain(name: &str) -> (&str, String) {
    let (domain, remote) = match name.split_once('/') {
        None => return (DEFAULT_DOMAIN, format!("{OFFICIAL_REPO_PREFIX}{name}")),
        Some((LEGACY_DEFAULT_DOMAIN, rest)) => (DEFAULT_DOMAIN, rest),
        Some((first, rest)) if first == "localhost" || first.contains(['.', ':']) || has_uppercase(first) => {
            (first, rest)
        }
        Some(_) => (DEFAULT_DOMAIN, name),
    };
    if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        return (domain, format!("{OFFICIAL_REPO_PREFIX}{remote}"));
    }
    (domain, remote.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_docker_domain_like_go() {
        let cases = [
            ("foo", "docker.io", "library/foo"),
            ("foo:tag", "docker.io", "library/foo:tag"),
            ("user/foo", "docker.io", "user/foo"),
            ("docker.io/foo", "docker.io", "library/foo"),
            ("index.docker.io/foo", "docker.io", "library/foo"),
            ("index.docker.io/a/b", "docker.io", "a/b"),
            ("localhost/foo", "localhost", "foo"),
            ("host:5000/foo", "host:5000", "foo"),
            ("Foo/bar", "Foo", "bar"),
            ("a.b/c/d", "a.b", "c/d"),
        ];
        for (input, domain, remote) in cases {
            assert_eq!(split_docker_domain(input), (domain, remote.to_string()), "{input}");
        }
    }
}
