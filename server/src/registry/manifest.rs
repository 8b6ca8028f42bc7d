//! Finding a manifest's digest: `HEAD` with all four manifest media types accepted (with
//! fewer, a multi-arch tag answers with its linux/amd64 child, and an ARM gateway would
//! be sent an amd64 image), falling back to `GET` and hashing the body when the `HEAD`
//! does not say enough. Never returns a digest it has reason to doubt: schema1 bodies are
//! refused, a body must match the digest header and the digest asked for.

use sha2::{Digest, Sha256, Sha512};
use ureq::http::HeaderMap;

use super::auth::{self, Method};
use super::status;
use super::transport::{self, header};
use super::{Inner, Resolved, Target};
use crate::Error;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// All four go in `Accept`, so that the registry returns a multi-arch index itself,
/// never one of its children.
pub(crate) const MANIFEST_TYPES: [&str; 4] = [OCI_INDEX, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST, OCI_MANIFEST];

/// Larger manifests are refused (containerd's `MaxManifestSize` is about the same).
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Error bodies are read only for their message.
const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;

const SCHEMA1_REASON: &str = "schema1 manifest; registry ignored the Accept header";

/// The digest and media type of `target`'s manifest.
pub(crate) fn resolve(inner: &Inner, target: &Target) -> Result<Resolved, Error> {
    let url = transport::manifest_url(target.scheme, &target.domain, &target.path, &target.reference);
    let accept = MANIFEST_TYPES.join(", ");
    let head = auth::send(inner, target, Method::Head, &url, &accept)?;
    match judge_head(target, head.status().as_u16(), head.headers())? {
        HeadVerdict::Done(resolved) => Ok(resolved),
        HeadVerdict::NeedGet(why) => {
            log::debug!("{}: HEAD {why}; fetching the manifest", target.display);
            get(inner, target, &url, &accept)
        }
    }
}

enum HeadVerdict {
    Done(Resolved),
    /// The `HEAD` left a question the body answers; why, for the log.
    NeedGet(&'static str),
}

/// What a `HEAD` answer settles.
fn judge_head(target: &Target, status: u16, headers: &HeaderMap) -> Result<HeadVerdict, Error> {
    match status {
        200 => {}
        // 404: the GET body says why; 405/501: a registry without HEAD support.
        404 | 405 | 501 => return Ok(HeadVerdict::NeedGet("found nothing")),
        _ => return Err(status_error(target, status, headers, None)),
    }
    let media_type = header(headers, "content-type").map(bare_media_type).unwrap_or_default();
    if is_schema1(&media_type) {
        return Err(protocol(target, SCHEMA1_REASON.to_string()));
    }
    let digest_header = header(headers, "docker-content-digest");
    let digest = digest_header.filter(|d| parse_digest(d).is_some());
    if let (Some(wanted), Some(digest)) = (target.wanted_digest.as_deref(), digest) {
        if digest != wanted {
            return Err(protocol(target, format!("asked for {wanted}, the registry answered with digest {digest}")));
        }
    }
    if is_ambiguous(&media_type) {
        return Ok(HeadVerdict::NeedGet("gave no manifest media type"));
    }
    let Some(digest) = digest else {
        return Ok(HeadVerdict::NeedGet(if digest_header.is_some() {
            "carried an unusable Docker-Content-Digest"
        } else {
            "carried no Docker-Content-Digest"
        }));
    };
    let has_length = header(headers, "content-length").is_some_and(|l| l.parse::<u64>().is_ok());
    if !has_length && target.wanted_digest.is_none() {
        return Ok(HeadVerdict::NeedGet("carried no Content-Length"));
    }
    Ok(HeadVerdict::Done(Resolved { digest: digest.to_string(), media_type }))
}

/// `GET` the manifest, hash it, check it against every digest claimed for it.
fn get(inner: &Inner, target: &Target, url: &str, accept: &str) -> Result<Resolved, Error> {
    let mut response = auth::send(inner, target, Method::Get, url, accept)?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = transport::read_body(&mut response, MAX_ERROR_BODY_BYTES).ok().flatten();
        return Err(status_error(target, status, response.headers(), body.as_deref()));
    }
    let headers = response.headers().clone();
    let media_type = header(&headers, "content-type").map(bare_media_type).unwrap_or_default();
    if is_schema1(&media_type) {
        return Err(protocol(target, SCHEMA1_REASON.to_string()));
    }
    if header(&headers, "content-length").and_then(|l| l.parse::<u64>().ok()).is_some_and(|l| l > MAX_MANIFEST_BYTES) {
        return Err(protocol(target, format!("manifest larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    let body = transport::read_body(&mut response, MAX_MANIFEST_BYTES)
        .map_err(|e| transport::failure(e, &target.domain, &target.display))?
        .ok_or_else(|| protocol(target, format!("manifest larger than {MAX_MANIFEST_BYTES} bytes")))?;
    let digest = check_body(target, header(&headers, "docker-content-digest"), &body)?;
    let media_type = if is_ambiguous(&media_type) {
        media_type_from_body(&body).map_err(|reason| protocol(target, reason))?
    } else {
        media_type
    };
    Ok(Resolved { digest, media_type })
}

/// The body's digest after checking it against the digest header (if it has one we can
/// compute) and the digest asked for (if any).
fn check_body(target: &Target, digest_header: Option<&str>, body: &[u8]) -> Result<String, Error> {
    let sha256 = hex_digest(Algorithm::Sha256, body);
    if let Some(claimed) = digest_header.filter(|h| !h.is_empty()) {
        match parse_digest(claimed) {
            Some(algorithm) if hex_digest(algorithm, body) != claimed => {
                return Err(protocol(
                    target,
                    format!("digest header does not match content: header {claimed}, content {sha256}"),
                ));
            }
            Some(_) => {}
            None => log::warn!(
                "{}: ignoring Docker-Content-Digest {claimed:?} (not a sha256/sha512 digest)",
                target.display
            ),
        }
    }
    let Some(wanted) = target.wanted_digest.as_deref() else {
        return Ok(sha256);
    };
    let Some(algorithm) = parse_digest(wanted) else {
        return Err(protocol(target, format!("cannot verify digest {wanted}: unsupported algorithm")));
    };
    let actual = hex_digest(algorithm, body);
    if actual != wanted {
        return Err(protocol(
            target,
            format!("content does not match the requested digest {wanted} (content {actual})"),
        ));
    }
    Ok(wanted.to_string())
}

/// The error for a non-success answer.
fn status_error(target: &Target, status: u16, headers: &HeaderMap, body: Option<&[u8]>) -> Error {
    match status {
        404 => Error::ManifestUnknown {
            reference: target.display.clone(),
            reason: body.and_then(status::error_message).unwrap_or_else(|| {
                format!("{} has no manifest {} in {}", target.domain, target.reference, target.path)
            }),
        },
        429 => Error::RateLimited {
            registry: target.domain.clone(),
            reference: target.display.clone(),
            retry_after: header(headers, "retry-after")
                .and_then(|v| status::retry_after_seconds(v, std::time::SystemTime::now())),
        },
        _ => Error::RegistryStatus { registry: target.domain.clone(), reference: target.display.clone(), status },
    }
}

fn protocol(target: &Target, reason: String) -> Error {
    Error::RegistryProtocol { registry: target.domain.clone(), reference: target.display.clone(), reason }
}

/// `type/subtype` without parameters, lowercased.
fn bare_media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn is_schema1(media_type: &str) -> bool {
    media_type == SCHEMA1_SIGNED || media_type == SCHEMA1
}

/// Types that do not say which manifest this is; the body must tell (containerd treats
/// `text/plain` as schema1 from some registries, so it is checked too).
fn is_ambiguous(media_type: &str) -> bool {
    matches!(media_type, "" | "application/json" | "text/plain" | "application/octet-stream")
}

/// The manifest type a body declares (or, for OCI documents without `mediaType`, shows).
fn media_type_from_body(body: &[u8]) -> Result<String, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "manifest without a media type is not JSON".to_string())?;
    if doc.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(SCHEMA1_REASON.to_string());
    }
    if let Some(media_type) = doc.get("mediaType").and_then(|v| v.as_str()).filter(|m| !m.is_empty()) {
        return Ok(bare_media_type(media_type));
    }
    if doc.get("manifests").is_some_and(|m| m.is_array()) {
        Ok(OCI_INDEX.to_string())
    } else if doc.get("config").is_some_and(|c| c.is_object()) {
        Ok(OCI_MANIFEST.to_string())
    } else {
        Err("cannot tell which kind of manifest the registry sent".to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Sha256,
    Sha512,
}

/// The algorithm of a digest we can compute and compare: `sha256:` + 64 or `sha512:` +
/// 128 lowercase hex characters.
fn parse_digest(digest: &str) -> Option<Algorithm> {
    let (algorithm, hex) = digest.split_once(':')?;
    let (algorithm, len) = match algorithm {
        "sha256" => (Algorithm::Sha256, 64),
        "sha512" => (Algorithm::Sha512, 128),
        _ => return None,
    };
    (hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(algorithm)
}

/// `algorithm:hex` of `bytes`.
fn hex_digest(algorithm: Algorithm, bytes: &[u8]) -> String {
    let (prefix, sum): (&str, Vec<u8>) = match algorithm {
        Algorithm::Sha256 => ("sha256:", Sha256::digest(bytes).to_vec()),
        Algorithm::Sha512 => ("sha512:", Sha512::digest(bytes).to_vec()),
    };
    let mut out = String::with_capacity(prefix.len() + sum.len() * 2);
    out.push_str(prefix);
    for b in sum {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    hex_digest(Algorithm::Sha256, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_inputs() {
        assert_eq!(
            hex_digest(Algorithm::Sha256, b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex_digest(Algorithm::Sha256, b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hex_digest(Algorithm::Sha512, b"abc").starts_with("sha512:ddaf35a193617aba"));
    }

    #[test]
    fn digests_we_can_verify() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(parse_digest(d), Some(Algorithm::Sha256));
        assert_eq!(parse_digest(&hex_digest(Algorithm::Sha512, b"x")), Some(Algorithm::Sha512));
        for bad in [
            "",
            "sha256:",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            &d[1..],
            &format!("{d}0"),
        ] {
            assert_eq!(parse_digest(bad), None, "{bad}");
        }
    }

    #[test]
    fn media_types_lose_parameters_and_case() {
        assert_eq!(bare_media_type("application/vnd.oci.image.index.v1+json; charset=utf-8"), OCI_INDEX);
        assert_eq!(bare_media_type(" Application/JSON "), "application/json");
        assert!(is_schema1(&bare_media_type("application/vnd.docker.distribution.manifest.v1+prettyjws")));
        assert!(is_schema1(SCHEMA1));
        assert!(!is_schema1(DOCKER_MANIFEST));
    }

    #[test]
    fn media_type_from_body_when_the_header_does_not_say() {
        assert_eq!(media_type_from_body(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#).as_deref(), Ok(DOCKER_MANIFEST_LIST));
        assert_eq!(media_type_from_body(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(), Ok(OCI_INDEX));
        assert_eq!(
            media_type_from_body(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(),
            Ok(OCI_MANIFEST)
        );
        assert_eq!(
            media_type_from_body(br#"{"schemaVersion":1,"name":"a","fsLayers":[]}"#),
            Err(SCHEMA1_REASON.to_string())
        );
        assert!(media_type_from_body(b"hello").is_err());
        assert!(media_type_from_body(b"{}").is_err());
    }
}
