//! Text from outside (device names, versions, registry messages) that reaches operators'
//! screens and the server's log: what counts as printable, in one place.

/// No control characters (newlines, escapes, NUL), and none of the bidirectional
/// controls that make a line read differently from what it holds (U+202A–U+202E,
/// U+2066–U+2069, U+200E, U+200F, U+061C).
pub fn is_printable(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() || is_bidi_control(c))
}

/// `text` with every character `is_printable` refuses written out (`\n`, `\r`, `\t`,
/// else `\u{…}`), so that it shows on one line as what it holds; printable text is
/// returned as it is. For outside text kept as information (a registry's error message),
/// where refusing it would hide why something failed.
pub fn escape_unprintable(text: &str) -> std::borrow::Cow<'_, str> {
    if is_printable(text) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => escaped.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => escaped.push(c),
        }
    }
    escaped.into()
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

#[cfg(test)]
mod tests {
    use super::{escape_unprintable, is_printable};

    #[test]
    fn controls_and_bidi_overrides_are_not_printable() {
        assert!(is_printable("gw-1 Küche 東京 🚀"));
        for bad in ["a\nb", "a\rb", "a\u{0}b", "\u{1b}[31mred", "admin\u{202E}txt.exe", "x\u{2066}y", "tab\there"] {
            assert!(!is_printable(bad), "{bad:?}");
        }
    }

    #[test]
    fn unprintable_characters_are_written_out() {
        assert_eq!(escape_unprintable("plain: é 東京"), "plain: é 東京");
        assert_eq!(
            escape_unprintable("no such tag\n<0>forged\r\u{1b}[2J\tx\u{202E}y\u{0}"),
            "no such tag\\n<0>forged\\r\\u{1b}[2J\\tx\\u{202e}y\\u{0}"
        );
        assert!(is_printable(&escape_unprintable("a\nb\u{2066}c")));
    }
}
