//! How the agent keeps its server connection private: which server URLs it accepts
//! (https anywhere, plain http only to loopback unless `allow_insecure_server`), and
//! which certificate authorities it trusts for https (the system's CA bundle, or the
//! Mozilla roots built in when there is none, plus the fleet's own `ca_file`).
//! A device key sent over plain http to a remote server is a key anyone on the path
//! can read, so that mistake is refused at startup rather than discovered later.

use crate::Error;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use ureq::http::Uri;
use ureq::tls::{parse_pem, Certificate, PemItem, RootCerts, TlsConfig};

/// The system's CA bundle on Debian, OpenWrt (`ca-bundle`) and Yocto (`ca-certificates`).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Environment variable naming another system bundle (the name OpenSSL uses).
pub const SYSTEM_CA_BUNDLE_ENV: &str = "SSL_CERT_FILE";

/// The system bundle to read: `$SSL_CERT_FILE`, else `SYSTEM_CA_BUNDLE`.
pub fn system_ca_bundle() -> PathBuf {
    std::env::var_os(SYSTEM_CA_BUNDLE_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| SYSTEM_CA_BUNDLE.into(), PathBuf::from)
}

/// Whether the agent may talk to the server at `url`: `Ok` for https, and for http to a
/// loopback address or when `allow_insecure` is set; otherwise the reason, which names
/// the key that lifts the refusal. Pure: nothing is resolved or connected.
pub fn check_server_url(url: &str, allow_insecure: bool) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{url:?} has no host"))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => Ok(()),
        Some("http") if allow_insecure || is_loopback(host) => Ok(()),
        Some("http") => Err(format!(
            "{url} is plain http to {host}, which would send the device key unencrypted; \
             use https, or set allow_insecure_server = true (PINION_ALLOW_INSECURE_SERVER=true) \
             to allow it"
        )),
        Some(other) => Err(format!("{url}: scheme {other:?} is not supported; use https (or http to loopback)")),
        None => Err(format!("{url:?} has no scheme; write https://{url}")),
    }
}

/// `localhost`, 127.0.0.0/8 and ::1 (bracketed, as a URL writes it, or IPv4-mapped).
/// Other names are not resolved: a name is loopback only if it is `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    match bare {
        Some(v6) => v6
            .parse::<Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())),
        None => host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
    }
}

/// What the agent trusts for https, and where it came from (for the startup log).
pub struct Trust {
    pub config: TlsConfig,
    pub description: String,
}

/// The TLS settings for the server connection: the CAs of `system_bundle` when that file
/// holds any (else the built-in Mozilla roots), plus those of `ca_file`. A `ca_file` that
/// is missing, unreadable or holds no certificate is a configuration error naming it.
pub fn server_trust(ca_file: Option<&Path>, system_bundle: &Path) -> Result<Trust, Error> {
    let extra = match ca_file {
        Some(path) => {
            let certs = read_ca_file(path)?;
            Some((path, certs))
        }
        None => None,
    };
    let system = read_system_bundle(system_bundle);
    let (mut roots, mut description) = match system {
        Some(certs) => {
            let text = format!("{} CAs from {}", certs.len(), system_bundle.display());
            (certs, text)
        }
        None if extra.is_none() => {
            let text = format!("the built-in Mozilla roots ({} absent)", system_bundle.display());
            return Ok(Trust { config: TlsConfig::builder().root_certs(RootCerts::WebPki).build(), description: text });
        }
        None => {
            let certs: Vec<_> = webpki_roots::TLS_SERVER_ROOTS
                .iter()
                .map(|a| {
                    let constraints = a.name_constraints.as_ref().map(|n| n.as_ref());
                    anchor_as_certificate(a.subject.as_ref(), a.subject_public_key_info.as_ref(), constraints)
                })
                .collect();
            let text = format!("the built-in Mozilla roots ({} absent)", system_bundle.display());
            (certs, text)
        }
    };
    if let Some((path, certs)) = extra {
        description.push_str(&format!(" and {} from {}", certs.len(), path.display()));
        roots.extend(certs);
    }
    Ok(Trust { config: TlsConfig::builder().root_certs(RootCerts::from(roots)).build(), description })
}

/// The certificates of the `ca_file`, every PEM item of which must be readable.
fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, Error> {
    let config_error = |reason: String| Error::Config { source_name: format!("ca_file {}", path.display()), reason };
    let pem = std::fs::read(path).map_err(|e| config_error(format!("cannot be read: {e}")))?;
    let certs = pem_certificates(&pem).map_err(|e| config_error(format!("is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(config_error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certs)
}

/// The certificates of the system bundle; None when it is absent or holds none. A bundle
/// with a damaged entry still gives the others (it is the system's, not the agent's, file).
fn read_system_bundle(path: &Path) -> Option<Vec<Certificate<'static>>> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("system CA bundle {}: {e}", path.display());
            }
            return None;
        }
    };
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) if looks_like_der_sequence(cert.der()) => certs.push(cert),
            Ok(_) => {}
            Err(e) => log::warn!("system CA bundle {}: skipping an entry: {e}", path.display()),
        }
    }
    if certs.is_empty() {
        log::warn!("system CA bundle {} holds no certificate", path.display());
        return None;
    }
    Some(certs)
}

/// The certificates in a PEM text; an error for a damaged entry. Keys are ignored.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in parse_pem(pem) {
        match item.map_err(|e| e.to_string())? {
            PemItem::Certificate(cert) if looks_like_der_sequence(cert.der()) => certs.push(cert),
            PemItem::Certificate(_) => return Err(format!("certificate {} is not DER", certs.len() + 1)),
            _ => {}
        }
    }
    Ok(certs)
}

/// Whether `der` is one DER SEQUENCE spanning all of it (a certificate's outer shape):
/// catches a PEM block whose base64 holds something else.
fn looks_like_der_sequence(der: &[u8]) -> bool {
    let (Some(&0x30), Some(&first)) = (der.first(), der.get(1)) else { return false };
    let (len, header) = match first {
        0..=0x7f => (usize::from(first), 2),
        0x81..=0x84 => {
            let n = usize::from(first - 0x80);
            let Some(bytes) = der.get(2..2 + n) else { return false };
            (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), 2 + n)
        }
        _ => return false,
    };
    header.checked_add(len) == Some(der.len())
}

/// A built-in trust anchor as a certificate that rustls reads back into the same anchor
/// (subject, key and name constraints; rustls checks no signature on an anchor). ureq
/// takes either its built-in roots or a list of certificates, so adding the fleet CA to
/// the built-in roots takes them as certificates.
fn anchor_as_certificate(subject: &[u8], spki: &[u8], name_constraints: Option<&[u8]>) -> Certificate<'static> {
    // ecdsa-with-SHA256; any algorithm does, as long as both places name the same one.
    const ALGORITHM: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    const VERSION_3: &[u8] = &[0xa0, 0x03, 0x02, 0x01, 0x02];
    const SERIAL: &[u8] = &[0x02, 0x01, 0x01];
    const NAME_CONSTRAINTS_OID: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x1e];
    let subject = der(0x30, &[subject]);
    let validity = der(0x30, &[&der(0x17, &[b"000101000000Z"]), &der(0x17, &[b"491231235959Z"])]);
    let spki = der(0x30, &[spki]);
    let extensions = match name_constraints {
        Some(nc) => {
            let extension = der(0x30, &[NAME_CONSTRAINTS_OID, &der(0x04, &[&der(0x30, &[nc])])]);
            der(0xa3, &[&der(0x30, &[&extension])])
        }
        None => Vec::new(),
    };
    let tbs = der(0x30, &[VERSION_3, SERIAL, ALGORITHM, &subject, &validity, &subject, &spki, &extensions]);
    Certificate::from_der(&der(0x30, &[&tbs, ALGORITHM, &[0x03, 0x01, 0x00]])).to_owned()
}

/// One DER element: `tag`, the length of the concatenated `parts`, the parts. Lengths up
/// to 64 KiB (a trust anchor is a few hundred bytes).
fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = vec![tag];
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_accepted_anywhere_and_http_only_on_loopback() {
        for url in ["https://pinion.example.com", "HTTPS://10.0.0.5:8443/base", "https://[2001:db8::1]"] {
            assert_eq!(check_server_url(url, false), Ok(()), "{url}");
        }
        for url in [
            "http://127.0.0.1:3002",
            "http://127.8.9.10",
            "http://localhost:3002/",
            "http://LOCALHOST.",
            "http://[::1]:3002",
            "http://[::ffff:127.0.0.1]",
        ] {
            assert_eq!(check_server_url(url, false), Ok(()), "{url}");
        }
        for url in [
            "http://pinion.example.invalid",
            "http://10.0.0.5:3002",
            "http://[2001:db8::1]",
            "http://127.0.0.1.example.com",
            "http://localhost.example.com",
            "http://localhost@pinion.example.invalid",
            "http://0.0.0.0:3002",
        ] {
            let err = check_server_url(url, false).unwrap_err();
            assert!(err.contains("allow_insecure_server = true"), "{url}: {err}");
            assert_eq!(check_server_url(url, true), Ok(()), "{url} with allow_insecure_server");
        }
    }

    #[test]
    fn other_schemes_and_non_urls_are_refused_even_when_insecure_is_allowed() {
        for (url, expected) in [
            ("ftp://pinion.example.com", "scheme \"ftp\""),
            ("ws://127.0.0.1:3002", "scheme \"ws\""),
            ("pinion.example.com", "no scheme"),
            ("http://", "not a URL"),
            ("https://exa mple.com", "not a URL"),
        ] {
            let err = check_server_url(url, true).unwrap_err();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    const NOT_A_CERT: &str = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";

    #[test]
    fn pem_certificates_are_read_and_damage_is_named() {
        assert_eq!(pem_certificates(b"").unwrap().len(), 0);
        assert!(pem_certificates(NOT_A_CERT.as_bytes()).unwrap_err().contains("not DER"));
        assert!(pem_certificates(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        let der = built_in(&webpki_roots::TLS_SERVER_ROOTS[0]).der().to_vec();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64(&der).as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n")
        );
        let certs = pem_certificates(format!("# fleet CA\n{pem}{pem}").as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].der(), der.as_slice());
    }

    #[test]
    fn a_bad_ca_file_is_a_config_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("pinion-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let garbage = dir.join("garbage.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&garbage, NOT_A_CERT).unwrap();
        std::fs::write(&empty, "just text\n").unwrap();
        for path in [&missing, &garbage, &empty] {
            let err = server_trust(Some(path), Path::new(SYSTEM_CA_BUNDLE)).err().expect("refused");
            assert!(matches!(err, Error::Config { .. }), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_system_bundle_the_built_in_roots_are_used() {
        let trust = server_trust(None, Path::new("/nonexistent/ca.crt")).unwrap();
        assert!(matches!(trust.config.root_certs(), RootCerts::WebPki));
        assert!(trust.description.contains("built-in"), "{}", trust.description);
    }

    #[test]
    fn every_built_in_root_survives_the_trip_through_a_certificate() {
        for anchor in webpki_roots::TLS_SERVER_ROOTS {
            let cert = built_in(anchor);
            let der = rustls_pki_types::CertificateDer::from(cert.der());
            let back = webpki::anchor_from_trusted_cert(&der).expect("rustls reads the anchor back");
            assert_eq!(back.subject.as_ref(), anchor.subject.as_ref());
            assert_eq!(back.subject_public_key_info.as_ref(), anchor.subject_public_key_info.as_ref());
            assert_eq!(
                back.name_constraints.as_ref().map(|n| n.as_ref()),
                anchor.name_constraints.as_ref().map(|n| n.as_ref())
            );
        }
        assert!(webpki_roots::TLS_SERVER_ROOTS.iter().any(|a| a.name_constraints.is_some()), "constraints covered");
    }

    fn built_in(a: &rustls_pki_types::TrustAnchor<'_>) -> Certificate<'static> {
        anchor_as_certificate(
            a.subject.as_ref(),
            a.subject_public_key_info.as_ref(),
            a.name_constraints.as_ref().map(|n| n.as_ref()),
        )
    }

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
