//! Text for a terminal. Job names, reasons, site names, signer names and file names come
//! from outside (a meta.json, a certificate, a site, the history), and a terminal obeys
//! the control characters in them: ESC sequences clear the screen or move the cursor, a
//! CR or newline forges a table row, bidi overrides show text in another order than it
//! is. Every renderer of the command line passes such text through [`clean`] before
//! printing it; `--json` output is left alone (JSON escapes control characters itself).

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is: the C0 and C1 control characters
/// (newline, tab, CR, BEL and ESC included), DEL, the bidi embedding, override and
/// isolate characters, and the line and paragraph separators.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' // arabic letter mark
            | '\u{200e}' | '\u{200f}' // left-to-right and right-to-left marks
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202a}'..='\u{202e}' // embeddings and overrides
            | '\u{2066}'..='\u{2069}' // isolates
        )
}

/// `text` with every character a terminal would act on written as a visible escape
/// (`\u{1b}`, `\n`, `\u{202e}`), so one value stays one harmless piece of one line.
/// Borrows when there is nothing to escape.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether colour may be written to a stream: only to a terminal, and never when the
/// `NO_COLOR` variable is set to anything but the empty text (<https://no-color.org>).
pub fn colour_allowed(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// An error and its causes as one line, `outer: cause: root cause`, each said once and
/// cleaned. A cause whose words its wrapper already ends with is not repeated: the types
/// of this crate give their cause either in their message or as their source, but an
/// error from elsewhere may do both.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    clean(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(clean("a\u{1b}[2Jb\u{7}"), "a\\u{1b}[2Jb\\u{7}");
        assert_eq!(clean("x\ry\nz\t"), "x\\ry\\nz\\t");
        assert_eq!(clean("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(clean("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(clean("\u{2066}i\u{2069}"), "\\u{2066}i\\u{2069}");
        assert_eq!(clean("\u{7f}"), "\\u{7f}");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in [
            "hello-complete",
            "site-1 (org a, lead)",
            "名前 ü \\u{1b}",
            "",
        ] {
            assert!(matches!(clean(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn a_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read x: {source}")]
        struct Both {
            source: std::io::Error,
        }
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = anyhow::Error::new(Both { source: io() }).context("opening \u{1b}");
        assert_eq!(
            error_chain(&err),
            format!("opening \\u{{1b}}: cannot read x: {}", io())
        );
    }
}
