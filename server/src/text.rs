//! Text from outside (device names, versions, registry messages) that reaches operators'
//! screens and the server's log: what counts as printable, in one place, shared with the
//! log lines of both binaries (`pinion_systemd`).

pub use pinion_systemd::{escape_unprintable, is_printable};

#[cfg(test)]
mod tests {
    use super::{escape_unprintable, is_printable};

    #[test]
    fn controls_bidi_overrides_and_line_separators_are_not_printable() {
        assert!(is_printable("gw-1 Küche 東京 🚀"));
        for bad in [
            "a\nb",
            "a\rb",
            "a\u{0}b",
            "\u{1b}[31mred",
            "admin\u{202E}txt.exe",
            "x\u{2066}y",
            "tab\there",
            "a\u{2028}b",
        ] {
            assert!(!is_printable(bad), "{bad:?}");
        }
    }

    #[test]
    fn unprintable_characters_are_written_out() {
        assert_eq!(escape_unprintable("plain: é 東京"), "plain: é 東京");
        assert_eq!(
            escape_unprintable("no such tag\n<0>forged\r\u{1b}[2J\tx\u{202E}y\u{0}\u{2029}"),
            "no such tag\\n<0>forged\\r\\u{1b}[2J\\tx\\u{202e}y\\u{0}\\u{2029}"
        );
        assert!(is_printable(&escape_unprintable("a\nb\u{2066}c")));
    }
}
