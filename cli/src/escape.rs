//! What nodes and the root send is shown on the operator's terminal, so control characters in it
//! are escaped: a node must not be able to move the cursor, rewrite earlier lines ("All 128 targets
//! succeeded") or retitle the window. Newlines and tabs stay; `--json` gives the raw text.

use std::borrow::Cow;

/// `text` with every control character but `\n` and `\t` written as an escape (`\u{1b}`).
pub fn printable(text: &str) -> Cow<'_, str> {
    escape_where(text, |c| c.is_control() && c != '\n' && c != '\t')
}

/// [`printable`] for one-line fields (names, reasons): newlines and tabs are escaped too.
pub fn one_line(text: &str) -> Cow<'_, str> {
    escape_where(text, char::is_control)
}

fn escape_where(text: &str, escape: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(&escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_shown_not_obeyed() {
        assert_eq!(printable("ok\n\tdone"), "ok\n\tdone");
        assert_eq!(printable("\x1b[2Jgone\r"), "\\u{1b}[2Jgone\\r");
        assert_eq!(one_line("a\nb"), "a\\nb");
    }
}
