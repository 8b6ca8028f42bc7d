//! Standard base64 (RFC 4648 §4), both ways, without a crate: decoding the `auth` field of
//! a Docker `config.json` and encoding `user:password` for HTTP Basic authentication are
//! the only uses, and both fit in a few lines.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes with the standard alphabet and `=` padding.
pub(crate) fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// Decodes the standard alphabet. Padding is optional (some tools drop it); surrounding
/// whitespace is ignored. `None` for any other character, misplaced padding, or a length
/// that cannot come from an encoder.
pub(crate) fn decode(input: &str) -> Option<Vec<u8>> {
    let trimmed = input.trim().as_bytes();
    let data = match trimmed.iter().position(|&c| c == b'=') {
        Some(pad) => {
            // Only `=` may follow the first `=`, and at most two of them.
            if trimmed[pad..].iter().any(|&c| c != b'=') || trimmed.len() - pad > 2 {
                return None;
            }
            if trimmed.len() % 4 != 0 {
                return None;
            }
            &trimmed[..pad]
        }
        None => trimmed,
    };
    if data.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in data {
        let v = sextet_value(c)?;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn sextet_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4648 §10 test vectors.
    const VECTORS: &[(&str, &str)] = &[
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn encodes_rfc4648_vectors() {
        for (plain, encoded) in VECTORS {
            assert_eq!(encode(plain.as_bytes()), *encoded, "{plain}");
        }
    }

    #[test]
    fn decodes_rfc4648_vectors() {
        for (plain, encoded) in VECTORS {
            assert_eq!(decode(encoded).as_deref(), Some(plain.as_bytes()), "{encoded}");
        }
    }

    #[test]
    fn decodes_without_padding_and_with_whitespace() {
        assert_eq!(decode("Zm9vYg").as_deref(), Some(&b"foob"[..]));
        assert_eq!(decode(" Zm9vYmE=\n").as_deref(), Some(&b"fooba"[..]));
    }

    #[test]
    fn docker_config_auth_round_trips() {
        // `echo -n 'testuser:testpassword' | base64`
        assert_eq!(encode(b"testuser:testpassword"), "dGVzdHVzZXI6dGVzdHBhc3N3b3Jk");
        assert_eq!(decode("dGVzdHVzZXI6dGVzdHBhc3N3b3Jk").as_deref(), Some(&b"testuser:testpassword"[..]));
        let binary: Vec<u8> = (0..=255u8).collect();
        assert_eq!(decode(&encode(&binary)), Some(binary));
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in ["Zm9v!", "Z", "Zm9vY", "Zg=a", "Zg===", "Z===", "Zm=9v", "Zg=", "é"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
