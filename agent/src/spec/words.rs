//! A `command` or `entrypoint` string split into words the way a POSIX shell splits
//! them, minus expansion: whitespace separates words; `'…'` is literal; `"…"` keeps
//! whitespace and honours `\"`, `\\`, `\$` and `` \` ``; a `\` outside quotes escapes the
//! next character. No shell runs: the words become Docker's `Cmd`/`Entrypoint` array.

pub(super) fn split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_on_whitespace() {
        assert_eq!(split("  nginx -g   daemon\toff ").unwrap(), ["nginx", "-g", "daemon", "off"]);
        assert_eq!(split("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn quotes_keep_whitespace() {
        assert_eq!(split(r#"sh -c 'echo "hi there"; sleep 1'"#).unwrap(), ["sh", "-c", r#"echo "hi there"; sleep 1"#]);
        assert_eq!(split(r#"echo "a \"b\" \n" c"#).unwrap(), ["echo", r#"a "b" \n"#, "c"]);
        assert_eq!(split(r#"a"b"'c' '' """#).unwrap(), ["abc", "", ""]);
        assert_eq!(split(r"a\ b \'").unwrap(), ["a b", "'"]);
    }

    #[test]
    fn unterminated_quotes_are_refused() {
        assert_eq!(split("echo 'hi").unwrap_err(), "unterminated single quote");
        assert_eq!(split("echo \"hi").unwrap_err(), "unterminated double quote");
        assert_eq!(split("echo \\").unwrap_err(), "trailing backslash");
    }
}
