//! The one sanitiser for text that comes from the network (a server, a peer) before it reaches a
//! terminal or a log line.
//!
//! Whatever a server or peer writes — message text, sender ids, question text and options, error
//! `details`, close reasons, unknown frame types and the decoder's messages that quote them — must
//! not be able to drive the terminal that shows it: move the cursor, erase or fake a line, retitle
//! the window, write the clipboard (OSC 52), plant a link (OSC 8), or reorder text with bidi
//! controls. [`for_terminal`] writes every such character as a visible escape, so the text stays
//! readable and inert; [`Sanitized`] does the same for any `Display` value in a log field
//! (`error = %Sanitized(&e)`: tracing-subscriber escapes only the `message` field itself).
//!
//! Escaped: every control character — C0 (including ESC, CR, LF, TAB, BEL), DEL and C1 (including
//! the 8-bit introducers CSI U+009B, OSC U+009D, DCS U+0090 and the terminator ST U+009C) — so that
//! no escape sequence (CSI `ESC [`, OSC `ESC ]`, DCS, APC, PM, SOS) can start or end; the bidi
//! controls U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069; and the line and paragraph separators
//! U+2028/U+2029. Written as `\n`, `\r`, `\t`, `\x1b` (C0, DEL, C1) or `\u{202e}`; everything else
//! is kept as is.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// How `c` is written, if it must not reach a terminal as is.
fn escaped(c: char, out: &mut impl fmt::Write) -> Option<fmt::Result> {
    Some(match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        // C0, DEL and C1 are all below U+0100.
        c if c.is_control() => write!(out, "\\x{:02x}", u32::from(c)),
        '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{2028}'
        | '\u{2029}' => write!(out, "\\u{{{:04x}}}", u32::from(c)),
        _ => return None,
    })
}

/// Whether `c` is written as an escape.
fn needs_escape(c: char) -> bool {
    escaped(c, &mut Discard).is_some()
}

/// `text`, safe to print on one terminal line or in one log field: borrowed if nothing in it needs
/// escaping, otherwise a copy with every dangerous character written as a visible escape.
///
/// ```
/// use lattice_peer::sanitize::for_terminal;
/// assert_eq!(for_terminal("hi ✓"), "hi ✓");
/// assert_eq!(for_terminal("\x1b]0;owned\x07x\ny"), "\\x1b]0;owned\\x07x\\ny");
/// ```
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    // Writing to a String never fails.
    let _ = Escaper(&mut out).write_str(text);
    Cow::Owned(out)
}

/// A `Display` value shown through [`for_terminal`]'s rules, without an intermediate string: for
/// log fields that may carry network text (`tracing::warn!(error = %Sanitized(&e), ...)`).
#[derive(Debug, Clone, Copy)]
pub struct Sanitized<T>(pub T);

impl<T: fmt::Display> fmt::Display for Sanitized<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaper(f), "{}", self.0)
    }
}

/// A writer that escapes what passes through it.
struct Escaper<W>(W);

impl<W: fmt::Write> fmt::Write for Escaper<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some((i, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
            self.0.write_str(&rest[..i])?;
            escaped(c, &mut self.0).unwrap_or(Ok(()))?;
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// A `fmt::Write` that discards everything (to ask [`escaped`] whether it would write).
struct Discard;

impl fmt::Write for Discard {
    fn write_str(&mut self, _: &str) -> fmt::Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inert(line: &str) -> bool {
        !line.chars().any(|c| {
            c.is_control()
                || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
        })
    }

    #[test]
    fn controls_sequences_and_bidi_become_visible_escapes() {
        assert!(matches!(for_terminal("plain ✓ text"), Cow::Borrowed(_)));
        assert_eq!(for_terminal("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(for_terminal("\0\x07\x7f"), "\\x00\\x07\\x7f");
        // CSI: erase line, clear screen, cursor up; the 8-bit CSI too.
        assert_eq!(
            for_terminal("\x1b[2K\x1b[2J\x1b[1A"),
            "\\x1b[2K\\x1b[2J\\x1b[1A"
        );
        assert_eq!(for_terminal("\u{9b}31m"), "\\x9b31m");
        // OSC: window title, OSC 8 link, OSC 52 clipboard write; 8-bit OSC and ST.
        assert_eq!(for_terminal("\x1b]0;pwned\x07"), "\\x1b]0;pwned\\x07");
        assert_eq!(
            for_terminal("\x1b]8;;http://evil\x1b\\bob\x1b]8;;\x1b\\"),
            "\\x1b]8;;http://evil\\x1b\\bob\\x1b]8;;\\x1b\\"
        );
        assert_eq!(for_terminal("\x1b]52;c;aGk=\x07"), "\\x1b]52;c;aGk=\\x07");
        assert_eq!(for_terminal("\u{9d}0;t\u{9c}"), "\\x9d0;t\\x9c");
        // Bidi overrides and isolates, separators.
        assert_eq!(
            for_terminal("\u{202e}evil\u{202c}"),
            "\\u{202e}evil\\u{202c}"
        );
        assert_eq!(
            for_terminal("\u{2066}\u{2069}\u{061c}"),
            "\\u{2066}\\u{2069}\\u{061c}"
        );
        assert_eq!(for_terminal("x\u{2028}y"), "x\\u{2028}y");
        for c in (0u32..0x250)
            .chain(0x2000..0x2070)
            .filter_map(char::from_u32)
        {
            assert!(inert(&for_terminal(&c.to_string())), "{c:?}");
        }
    }

    #[test]
    fn sanitized_display_matches_for_terminal() {
        struct Raw(&'static str);
        impl fmt::Display for Raw {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // In pieces, as a derived Display writes.
                f.write_str("details: ")?;
                f.write_str(self.0)
            }
        }
        let text = "oops\n[alice ✓] fake\x1b]0;t\x07\u{202e}x";
        assert_eq!(
            Sanitized(Raw(text)).to_string(),
            format!("details: {}", for_terminal(text))
        );
        assert_eq!(Sanitized("clean").to_string(), "clean");
    }
}
