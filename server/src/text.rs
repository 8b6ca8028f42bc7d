//! Text from outside (device names, versions, registry messages) that reaches operators'
//! screens and the server's log: what counts as printable, in one place.

/// No control characters (newlines, escapes, NUL), and none of the bidirectional
/// controls that make a line read differently from what it holds (U+202A–U+202E,
/// U+2066–U+2069, U+200E, U+200F, U+061C).
pub fn is_printable(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() || is_bidi_control(c))
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

#[cfg(test)]
mod tests {
    use super::is_printable;

    #[test]
    fn controls_and_bidi_overrides_are_not_printable() {
        assert!(is_printable("gw-1 Küche 東京 🚀"));
        for bad in ["a\nb", "a\rb", "a\u{0}b", "\u{1b}[31mred", "admin\u{202E}txt.exe", "x\u{2066}y", "tab\there"] {
            assert!(!is_printable(bad), "{bad:?}");
        }
    }
}
