//! Durations as operators write them in flags and config files: plain seconds (`90`) or
//! one number with an `s`, `m` or `h` suffix (`30s`, `15m`, `2h`).

use std::time::Duration;

/// Parses `90`, `30s`, `15m`, `2h`. Refuses empty, negative, fractional and overflowing input.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 's'),
    };
    let multiplier = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => return Err(format!("invalid duration {input:?}: the unit must be s, m or h")),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid duration {input:?}: expected whole seconds or a number with s, m or h"));
    }
    let seconds = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn accepted_forms() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration(" 2H "), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn refused_forms() {
        for bad in ["", "s", "-5", "1.5m", "10d", "1m30s", "99999999999999999999", "18446744073709551615h", "é"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
