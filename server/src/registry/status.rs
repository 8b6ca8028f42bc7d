//! Reading a registry's refusals: the message inside a distribution error body
//! (`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"…"}]}`) and a `429`'s `Retry-After`
//! (seconds or an HTTP-date). Pure: no I/O.

use std::time::{SystemTime, UNIX_EPOCH};

/// `errors[0].message` (with its `code` when there is one) of a distribution error body,
/// at most 300 characters of it, with control and bidirectional characters written out
/// (`text::escape_unprintable`): it reaches the operator's answers and the log, where a
/// registry's `\n<0>…` must not start a line of its own.
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let first = doc.get("errors")?.get(0)?;
    let message = first.get("message").and_then(|m| m.as_str()).filter(|m| !m.is_empty())?;
    let message: String = message.chars().take(300).collect();
    let message = crate::text::escape_unprintable(&message).into_owned();
    let code = first.get("code").and_then(|c| c.as_str()).map(crate::text::escape_unprintable);
    match code.as_deref() {
        Some(code) if !code.is_empty() => Some(format!("{code}: {message}")),
        _ => Some(message),
    }
}

/// Seconds to wait from a `Retry-After` value: delay-seconds, or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) counted from `now`. `None` if neither.
pub(crate) fn retry_after_seconds(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds);
    }
    let at = imf_fixdate_unix(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(at.saturating_sub(now))
}

/// Unix seconds of an IMF-fixdate (RFC 9110 §5.6.7), the only HTTP-date form senders
/// may generate.
fn imf_fixdate_unix(value: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (_weekday, rest) = value.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| m == month)? as u64 + 1;
    let year: u64 = year.parse().ok().filter(|y| *y >= 1970 && *y < 10000)?;
    let hms: Vec<u64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm),
/// for years ≥ 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn distribution_error_message_with_code() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"OCI index found, but accept header does not support OCI indexes","detail":{}}]}"#;
        assert_eq!(
            error_message(body).as_deref(),
            Some("MANIFEST_UNKNOWN: OCI index found, but accept header does not support OCI indexes")
        );
        assert_eq!(error_message(br#"{"errors":[{"message":"m"}]}"#).as_deref(), Some("m"));
    }

    #[test]
    fn control_characters_in_a_message_are_written_out() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN\n","message":"gone\n<0>forged\r\u001b[2J"}]}"#;
        assert_eq!(error_message(body).as_deref(), Some(r"MANIFEST_UNKNOWN\n: gone\n<0>forged\r\u{1b}[2J"));
    }

    #[test]
    fn no_message_in_other_bodies() {
        for body in [&b""[..], b"Not Authorized", b"{}", br#"{"errors":[]}"#, br#"{"errors":[{"code":"X"}]}"#, b"[1]"] {
            assert_eq!(error_message(body), None);
        }
    }

    #[test]
    fn retry_after_in_seconds_or_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(retry_after_seconds("120", now), Some(120));
        assert_eq!(retry_after_seconds(" 0 ", now), Some(0));
        assert_eq!(retry_after_seconds("Sun, 06 Nov 1994 08:51:37 GMT", now), Some(120));
        assert_eq!(retry_after_seconds("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(0));
        assert_eq!(imf_fixdate_unix("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(imf_fixdate_unix("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951_825_600));
        assert_eq!(imf_fixdate_unix("Fri, 01 Jan 2038 00:00:00 GMT"), Some(2_145_916_800));
        for bad in [
            "",
            "-1",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(retry_after_seconds(bad, now), None, "{bad:?}");
        }
    }
}
