//! Secrets: admin tokens, provisioning keys and device keys. Keys are 256 random bits,
//! shown once, stored only as SHA-256 hashes, and compared in constant time.

use sha2::{Digest, Sha256};

/// A new random 256-bit secret as 64 lowercase hex characters.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    // The kernel's CSPRNG failing is not something a server can go on from.
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    hex(&bytes)
}

/// A short random id for listing things that have a secret (provisioning keys).
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    hex(&bytes)
}

/// The form a secret is stored in: hex SHA-256.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Device ids: the uuids agents make and short names like `test-device-123`. Not `.` or
/// `..`: HTTP clients resolve those path segments away, so such a device could never be
/// reached again at `/devices/{uuid}`.
pub fn is_valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !matches!(id, "." | "..")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes `hex` wrote; `None` for anything else.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_256_bit_and_distinct() {
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), a);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn device_ids() {
        for ok in ["test-device-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "a", "A.b_c", "...", ".a"] {
            assert!(is_valid_device_id(ok), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in ["", "a/b", "a b", "ä", "a\0", "..%2f", ".", "..", long.as_str()] {
            assert!(!is_valid_device_id(bad), "{bad}");
        }
    }
}
