//! The few fields of an X.509 certificate the server checks before serving it: its
//! serial number (for the log) and its validity period. rustls checks the dates only on
//! the client's side, so a server started with an expired certificate would fail every
//! handshake, and nobody would notice until the fleet went quiet. Pure: DER bytes and a
//! time in, no crypto (rustls checks that the key matches the certificate).

use crate::timefmt::rfc3339;

/// How long before its end a certificate is worth a warning (certbot renews at 30 days
/// left: at 14, its renewal has failed twice a day for two weeks).
pub const WARN_DAYS_BEFORE_EXPIRY: i64 = 14;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The serial number, in hex as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// What a certificate's dates mean at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Valid,
    /// Valid, and ends within `WARN_DAYS_BEFORE_EXPIRY` days.
    EndsSoon {
        days_left: i64,
    },
    Expired,
    NotYetValid,
}

impl CertificateFacts {
    pub fn standing(&self, now: i64) -> Standing {
        if now < self.not_before {
            Standing::NotYetValid
        } else if now > self.not_after {
            Standing::Expired
        } else if self.not_after - now < WARN_DAYS_BEFORE_EXPIRY * 86_400 {
            Standing::EndsSoon { days_left: (self.not_after - now) / 86_400 }
        } else {
            Standing::Valid
        }
    }

    /// Why it cannot be served at `now`, if it cannot.
    pub fn refusal(&self, now: i64) -> Option<String> {
        match self.standing(now) {
            Standing::Expired => {
                Some(format!("the certificate (serial {}) expired at {}: renew it", self.serial, time(self.not_after)))
            }
            Standing::NotYetValid => Some(format!(
                "the certificate (serial {}) is not valid before {} (this machine's clock says {}): \
                 check the clock, or wait",
                self.serial,
                time(self.not_before),
                time(now)
            )),
            Standing::Valid | Standing::EndsSoon { .. } => None,
        }
    }

    /// What to log about it at `now`: a warning when it ends soon.
    pub fn warning(&self, now: i64) -> Option<String> {
        match self.standing(now) {
            Standing::EndsSoon { days_left } => Some(format!(
                "the certificate (serial {}) expires at {} ({days_left} days left): renew it; \
                 the server takes a renewed certificate file without a restart",
                self.serial,
                time(self.not_after)
            )),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        format!("serial {}, valid from {} until {}", self.serial, time(self.not_before), time(self.not_after))
    }
}

fn time(unix: i64) -> String {
    rfc3339(unix.max(0) as u64)
}

/// The serial and validity of a DER certificate:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber INTEGER, signature AlgorithmIdentifier, issuer Name, validity SEQUENCE {
/// notBefore Time, notAfter Time }, … }, … }` (RFC 5280 §4.1).
pub fn read_facts(der: &[u8]) -> Result<CertificateFacts, String> {
    let malformed = |what: &str| format!("not an X.509 certificate ({what})");
    let (certificate, _) = element(der, SEQUENCE).ok_or_else(|| malformed("no outer SEQUENCE"))?;
    let (tbs, _) = element(certificate, SEQUENCE).ok_or_else(|| malformed("no tbsCertificate"))?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = element(rest, VERSION).ok_or_else(|| malformed("bad version"))?.1;
    }
    let (serial, rest) = element(rest, INTEGER).ok_or_else(|| malformed("no serial number"))?;
    let (_, rest) = element(rest, SEQUENCE).ok_or_else(|| malformed("no signature algorithm"))?;
    let (_, rest) = element(rest, SEQUENCE).ok_or_else(|| malformed("no issuer"))?;
    let (validity, _) = element(rest, SEQUENCE).ok_or_else(|| malformed("no validity"))?;
    let (not_before, rest) = read_time(validity).ok_or_else(|| malformed("bad notBefore"))?;
    let (not_after, _) = read_time(rest).ok_or_else(|| malformed("bad notAfter"))?;
    Ok(CertificateFacts { serial: serial_hex(serial), not_before, not_after })
}

const INTEGER: u8 = 0x02;
const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The contents of the DER element at the start of `input` if its tag is `tag`, and
/// what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (first as usize, rest),
        0x81..=0x84 => {
            let count = (first & 0x7f) as usize;
            let bytes = rest.get(..count)?;
            (bytes.iter().fold(0usize, |len, &b| (len << 8) | b as usize), &rest[count..])
        }
        _ => return None,
    };
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as
/// Unix seconds, and what follows it.
fn read_time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (text, rest, century) = match *input.first()? {
        UTC_TIME => {
            let (text, rest) = element(input, UTC_TIME)?;
            let yy: i64 = digits(text.get(..2)?)?;
            (text.get(2..)?, rest, Some(if yy >= 50 { 1900 + yy } else { 2000 + yy }))
        }
        GENERALIZED_TIME => {
            let (text, rest) = element(input, GENERALIZED_TIME)?;
            (text.get(4..)?, rest, Some(digits(text.get(..4)?)?))
        }
        _ => return None,
    };
    let year = century?;
    if text.len() != 11 || text[10] != b'Z' {
        return None;
    }
    let field = |at: usize| -> Option<i8> { digits(&text[at..at + 2]).and_then(|v: i64| i8::try_from(v).ok()) };
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    let year = i16::try_from(year).ok()?;
    let datetime = jiff::civil::DateTime::new(year, month, day, hour, minute, second, 0).ok()?;
    let timestamp = jiff::tz::TimeZone::UTC.to_timestamp(datetime).ok()?;
    Some((timestamp.as_second(), rest))
}

fn digits(text: &[u8]) -> Option<i64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Hex, without the leading zero byte DER puts before a serial whose top bit is set.
fn serial_hex(bytes: &[u8]) -> String {
    let bytes = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match contents.len() {
            len @ 0..=0x7f => out.push(len as u8),
            len @ 0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
            len => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(contents);
        out
    }

    /// A certificate's skeleton: the fields read, and filler where the others go.
    fn certificate(serial: &[u8], not_before: (u8, &str), not_after: (u8, &str)) -> Vec<u8> {
        let validity = [tlv(not_before.0, not_before.1.as_bytes()), tlv(not_after.0, not_after.1.as_bytes())].concat();
        let tbs = [
            tlv(VERSION, &tlv(INTEGER, &[2])),
            tlv(INTEGER, serial),
            tlv(SEQUENCE, &[0x06, 0x01, 0x2a]),
            tlv(SEQUENCE, &[0x31; 200]),
            tlv(SEQUENCE, &validity),
            tlv(SEQUENCE, &[]),
        ]
        .concat();
        tlv(SEQUENCE, &[tlv(SEQUENCE, &tbs), tlv(SEQUENCE, &[]), tlv(0x03, &[0])].concat())
    }

    #[test]
    fn serial_and_dates_in_both_time_forms() {
        let der = certificate(&[0x00, 0x9f, 0x01], (UTC_TIME, "250102030405Z"), (GENERALIZED_TIME, "20510102030405Z"));
        let facts = read_facts(&der).unwrap();
        assert_eq!(facts.serial, "9F01");
        assert_eq!(time(facts.not_before), "2025-01-02T03:04:05Z");
        assert_eq!(time(facts.not_after), "2051-01-02T03:04:05Z");
        let old = read_facts(&certificate(&[1], (UTC_TIME, "991231235959Z"), (UTC_TIME, "490101000000Z"))).unwrap();
        assert_eq!(
            (time(old.not_before).as_str(), time(old.not_after).as_str()),
            ("1999-12-31T23:59:59Z", "2049-01-01T00:00:00Z")
        );
    }

    #[test]
    fn what_is_not_a_certificate_is_an_error_not_a_panic() {
        let good = certificate(&[1], (UTC_TIME, "250102030405Z"), (UTC_TIME, "260102030405Z"));
        for cut in 0..good.len() {
            assert!(read_facts(&good[..cut]).is_err(), "cut at {cut}");
        }
        for bad_time in ["25010203040Z", "250102030405", "251302030405Z", "2501020304x5Z", "250102030405+0100"] {
            let der = certificate(&[1], (UTC_TIME, bad_time), (UTC_TIME, "260102030405Z"));
            assert!(read_facts(&der).is_err(), "{bad_time}");
        }
        assert!(read_facts(b"-----BEGIN CERTIFICATE-----").is_err());
        assert!(read_facts(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err(), "a length of five bytes");
        assert!(read_facts(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30]).is_err(), "a length past the end");
        assert!(read_facts(&[0x30, 0x80, 0x30, 0x00, 0x00, 0x00]).is_err(), "an indefinite length (BER, not DER)");
    }

    #[test]
    fn standing_at_a_time() {
        let day = 86_400;
        let facts = CertificateFacts { serial: "01".into(), not_before: 100 * day, not_after: 200 * day };
        assert_eq!(facts.standing(99 * day), Standing::NotYetValid);
        assert_eq!(facts.standing(100 * day), Standing::Valid);
        assert_eq!(facts.standing(186 * day), Standing::Valid);
        assert_eq!(facts.standing(187 * day), Standing::EndsSoon { days_left: 13 });
        assert_eq!(facts.standing(200 * day), Standing::EndsSoon { days_left: 0 });
        assert_eq!(facts.standing(200 * day + 1), Standing::Expired);
        let expired = facts.refusal(201 * day).unwrap();
        assert!(expired.contains("expired at 1970-07-20T00:00:00Z"), "{expired}");
        let early = facts.refusal(day).unwrap();
        assert!(early.contains("not valid before 1970-04-11T00:00:00Z") && early.contains("clock"), "{early}");
        assert_eq!(facts.refusal(150 * day), None);
        assert!(facts.warning(190 * day).unwrap().contains("10 days left"));
        assert_eq!(facts.warning(150 * day), None);
    }
}
