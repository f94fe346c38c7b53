//! Character classes and Python string semantics the filters are defined in.
//!
//! The published filters are Python: they split lines with `str.splitlines`, words with
//! `str.split`, strip with `str.strip` and test characters with `str.isalpha`. To make the same
//! decisions we reproduce those definitions exactly rather than using Rust's nearest
//! equivalents (`char::is_whitespace` lacks U+001C..U+001F, `str::lines` knows only `\n`).
//!
//! Unicode general categories come from `regex-syntax`'s tables (built once, then a binary
//! search; ASCII has a fast path).

use std::sync::OnceLock;

type Ranges = Vec<(char, char)>;

fn unicode_class(pattern: &str) -> Ranges {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("a valid Unicode class");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => {
            c.ranges().iter().map(|r| (r.start(), r.end())).collect()
        }
        _ => unreachable!("{pattern} is a Unicode class"),
    }
}

fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

macro_rules! class_fn {
    ($(#[$doc:meta])* $name:ident, $pattern:expr, $ascii:expr) => {
        $(#[$doc])*
        pub fn $name(c: char) -> bool {
            if c.is_ascii() {
                return $ascii(c);
            }
            static TABLE: OnceLock<Ranges> = OnceLock::new();
            in_ranges(TABLE.get_or_init(|| unicode_class($pattern)), c)
        }
    };
}

class_fn!(
    /// Python `str.isalpha` for one character: general category L (Lu, Ll, Lt, Lm, Lo).
    is_alpha, r"\p{L}", |c: char| c.is_ascii_alphabetic()
);
class_fn!(
    /// A letter or number (general category L or N): Python's `\w` without `_`.
    is_alnum, r"[\p{L}\p{N}]", |c: char| c.is_ascii_alphanumeric()
);
class_fn!(
    /// General category P (spaCy's `is_punct` requires every character to be one).
    is_punct_category, r"\p{P}", |c: char| c.is_ascii_punctuation() && !"$+<=>^`|~".contains(c)
);
class_fn!(
    /// General category So ("other symbol": dingbats, arrows, emoji), spaCy's icon class.
    is_symbol_other, r"\p{So}", |_c: char| false
);
class_fn!(
    /// A lowercase letter, or a letter of a script without case.
    is_lower_or_uncased, r"[\p{Ll}\p{Lo}\p{Lm}]", |c: char| c.is_ascii_lowercase()
);
class_fn!(
    /// An uppercase letter, or a letter of a script without case.
    is_upper_or_uncased, r"[\p{Lu}\p{Lt}\p{Lo}\p{Lm}]", |c: char| c.is_ascii_uppercase()
);

/// Python `str.isspace` for one character: Unicode White_Space plus U+001C..U+001F (Python
/// counts the ASCII information separators as whitespace; Rust does not).
#[inline]
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `str.strip()` (no argument).
#[inline]
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Python `str.lstrip()`.
#[inline]
pub fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(py_isspace)
}

/// Python `str.rstrip()`.
#[inline]
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_isspace)
}

/// Python `str.split()` (no argument): runs of whitespace separate words.
#[inline]
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_isspace).filter(|w| !w.is_empty())
}

/// Python `str.isspace` for an ASCII byte.
#[inline]
fn is_ascii_py_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f | b' ')
}

/// `len(s.split())` without building the words.
pub fn py_split_count(s: &str) -> usize {
    if !s.is_ascii() {
        return py_split(s).count();
    }
    let mut count = 0;
    let mut in_word = false;
    for &b in s.as_bytes() {
        let space = is_ascii_py_space(b);
        if !space && !in_word {
            count += 1;
        }
        in_word = !space;
    }
    count
}

/// The number of code points in `s` (Python `len`).
#[inline]
pub fn py_len(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\u{0b}'
            | '\u{0c}'
            | '\u{1c}'
            | '\u{1d}'
            | '\u{1e}'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Python `str.splitlines()`: splits at `\n`, `\r`, `\r\n`, `\v`, `\f`, U+001C..U+001E, U+0085,
/// U+2028 and U+2029; a final line break does not start an empty last line.
pub fn py_splitlines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if is_line_break(c) {
            out.push(&s[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(_, '\n')) = iter.peek() {
                    iter.next();
                    end += 1;
                }
            }
            start = end;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Python `str.lower()`; borrows when the text has no uppercase ASCII and is all ASCII.
pub fn py_lower(s: &str) -> std::borrow::Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(s.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(s)
        }
    } else {
        std::borrow::Cow::Owned(s.to_lowercase())
    }
}

/// Counts non-overlapping occurrences of `needle` (Python `str.count`).
pub fn py_count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// datatrove's `TERMINAL_PUNCTUATION`: Unicode Sentence_Terminal (as of Unicode 15) plus the
/// Khmer signs U+17D5, U+17D6, U+17D9, U+17DA.
const TERMINAL_PUNCTUATION: &[(u32, u32)] = &[
    (0x21, 0x21),
    (0x2E, 0x2E),
    (0x3F, 0x3F),
    (0x589, 0x589),
    (0x61D, 0x61F),
    (0x6D4, 0x6D4),
    (0x700, 0x702),
    (0x7F9, 0x7F9),
    (0x837, 0x837),
    (0x839, 0x839),
    (0x83D, 0x83E),
    (0x964, 0x965),
    (0x104A, 0x104B),
    (0x1362, 0x1362),
    (0x1367, 0x1368),
    (0x166E, 0x166E),
    (0x1735, 0x1736),
    (0x17D4, 0x17D6),
    (0x17D9, 0x17DA),
    (0x1803, 0x1803),
    (0x1809, 0x1809),
    (0x1944, 0x1945),
    (0x1AA8, 0x1AAB),
    (0x1B5A, 0x1B5B),
    (0x1B5E, 0x1B5F),
    (0x1B7D, 0x1B7E),
    (0x1C3B, 0x1C3C),
    (0x1C7E, 0x1C7F),
    (0x203C, 0x203D),
    (0x2047, 0x2049),
    (0x2E2E, 0x2E2E),
    (0x2E3C, 0x2E3C),
    (0x2E53, 0x2E54),
    (0x3002, 0x3002),
    (0xA4FF, 0xA4FF),
    (0xA60E, 0xA60F),
    (0xA6F3, 0xA6F3),
    (0xA6F7, 0xA6F7),
    (0xA876, 0xA877),
    (0xA8CE, 0xA8CF),
    (0xA92F, 0xA92F),
    (0xA9C8, 0xA9C9),
    (0xAA5D, 0xAA5F),
    (0xAAF0, 0xAAF1),
    (0xABEB, 0xABEB),
    (0xFE52, 0xFE52),
    (0xFE56, 0xFE57),
    (0xFF01, 0xFF01),
    (0xFF0E, 0xFF0E),
    (0xFF1F, 0xFF1F),
    (0xFF61, 0xFF61),
    (0x10A56, 0x10A57),
    (0x10F55, 0x10F59),
    (0x10F86, 0x10F89),
    (0x11047, 0x11048),
    (0x110BE, 0x110C1),
    (0x11141, 0x11143),
    (0x111C5, 0x111C6),
    (0x111CD, 0x111CD),
    (0x111DE, 0x111DF),
    (0x11238, 0x11239),
    (0x1123B, 0x1123C),
    (0x112A9, 0x112A9),
    (0x1144B, 0x1144C),
    (0x115C2, 0x115C3),
    (0x115C9, 0x115D7),
    (0x11641, 0x11642),
    (0x1173C, 0x1173E),
    (0x11944, 0x11944),
    (0x11946, 0x11946),
    (0x11A42, 0x11A43),
    (0x11A9B, 0x11A9C),
    (0x11C41, 0x11C42),
    (0x11EF7, 0x11EF8),
    (0x11F43, 0x11F44),
    (0x16A6E, 0x16A6F),
    (0x16AF5, 0x16AF5),
    (0x16B37, 0x16B38),
    (0x16B44, 0x16B44),
    (0x16E98, 0x16E98),
    (0x1BC9F, 0x1BC9F),
    (0x1DA88, 0x1DA88),
];

/// The rest of datatrove's `PUNCTUATION_SET`: ASCII punctuation and symbols, the C0/C1 control
/// characters other than tab and newline, and a few typographic and full-width marks.
const OTHER_PUNCTUATION: &[(u32, u32)] = &[
    (0x0, 0x8),
    (0xB, 0x1F),
    (0x22, 0x2D),
    (0x2F, 0x2F),
    (0x3A, 0x3E),
    (0x40, 0x40),
    (0x5B, 0x60),
    (0x7B, 0x9F),
    (0xAB, 0xAB),
    (0xB4, 0xB4),
    (0xBB, 0xBB),
    (0x2013, 0x2014),
    (0x2019, 0x2019),
    (0x201C, 0x201E),
    (0x2026, 0x2026),
    (0x2236, 0x2236),
    (0x2501, 0x2501),
    (0x25BA, 0x25BA),
    (0x3001, 0x3001),
    (0x3008, 0x300D),
    (0x3010, 0x3011),
    (0xFF05, 0xFF05),
    (0xFF08, 0xFF09),
    (0xFF0C, 0xFF0C),
    (0xFF11, 0xFF11),
    (0xFF1A, 0xFF1B),
    (0xFF5E, 0xFF5E),
];

/// spaCy's sentencizer punctuation: the sentence terminals that end a sentence.
const SENTENCE_END: &[(u32, u32)] = &[
    (0x21, 0x21),
    (0x2E, 0x2E),
    (0x3F, 0x3F),
    (0x589, 0x589),
    (0x61F, 0x61F),
    (0x6D4, 0x6D4),
    (0x700, 0x702),
    (0x7F9, 0x7F9),
    (0x964, 0x965),
    (0x104A, 0x104B),
    (0x1362, 0x1362),
    (0x1367, 0x1368),
    (0x166E, 0x166E),
    (0x1735, 0x1736),
    (0x1803, 0x1803),
    (0x1809, 0x1809),
    (0x1944, 0x1945),
    (0x1AA8, 0x1AAB),
    (0x1B5A, 0x1B5B),
    (0x1B5E, 0x1B5F),
    (0x1C3B, 0x1C3C),
    (0x1C7E, 0x1C7F),
    (0x203C, 0x203D),
    (0x2047, 0x2049),
    (0x2E2E, 0x2E2E),
    (0x2E3C, 0x2E3C),
    (0x3002, 0x3002),
    (0xA4FF, 0xA4FF),
    (0xA60E, 0xA60F),
    (0xA6F3, 0xA6F3),
    (0xA6F7, 0xA6F7),
    (0xA876, 0xA877),
    (0xA8CE, 0xA8CF),
    (0xA92F, 0xA92F),
    (0xA9C8, 0xA9C9),
    (0xAA5D, 0xAA5F),
    (0xAAF0, 0xAAF1),
    (0xABEB, 0xABEB),
    (0xFE52, 0xFE52),
    (0xFE56, 0xFE57),
    (0xFF01, 0xFF01),
    (0xFF0E, 0xFF0E),
    (0xFF1F, 0xFF1F),
    (0xFF61, 0xFF61),
    (0x10A56, 0x10A57),
    (0x11047, 0x11048),
    (0x110BE, 0x110C1),
    (0x11141, 0x11143),
    (0x111C5, 0x111C6),
    (0x111CD, 0x111CD),
    (0x111DE, 0x111DF),
    (0x11238, 0x11239),
    (0x1123B, 0x1123C),
    (0x112A9, 0x112A9),
    (0x1144B, 0x1144C),
    (0x115C2, 0x115C3),
    (0x115C9, 0x115D7),
    (0x11641, 0x11642),
    (0x1173C, 0x1173E),
    (0x11A42, 0x11A43),
    (0x11A9B, 0x11A9C),
    (0x11C41, 0x11C42),
    (0x16A6E, 0x16A6F),
    (0x16AF5, 0x16AF5),
    (0x16B37, 0x16B38),
    (0x16B44, 0x16B44),
    (0x1BC9F, 0x1BC9F),
    (0x1DA88, 0x1DA88),
];

/// A character that ends a line in FineWeb's terminal-punctuation rule.
#[inline]
pub fn is_terminal_punctuation(c: char) -> bool {
    match c {
        '.' | '!' | '?' => true,
        c if c.is_ascii() => false,
        c => in_table(TERMINAL_PUNCTUATION, c),
    }
}

/// A character of Gopher's punctuation set: a word made only of these is a "symbol word".
#[inline]
pub fn is_gopher_punctuation(c: char) -> bool {
    in_table(OTHER_PUNCTUATION, c) || is_terminal_punctuation(c)
}

/// A character that ends a sentence for the sentence splitter.
#[inline]
pub fn is_sentence_end(c: char) -> bool {
    match c {
        '.' | '!' | '?' => true,
        c if c.is_ascii() => false,
        c => in_table(SENTENCE_END, c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitlines_matches_python() {
        assert_eq!(
            py_splitlines("a\nb\r\nc\rd\u{2028}e\n"),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(py_splitlines("a\n\nb"), ["a", "", "b"]);
        assert!(py_splitlines("").is_empty());
        assert_eq!(py_splitlines("\n"), [""]);
        assert_eq!(py_splitlines("x\u{1c}y\u{85}z"), ["x", "y", "z"]);
    }

    #[test]
    fn whitespace_is_pythons() {
        assert!(py_isspace('\u{1f}') && py_isspace('\u{a0}') && py_isspace('\u{3000}'));
        assert!(!py_isspace('\u{200b}'));
        assert_eq!(py_strip("\u{1c} a b \u{a0}"), "a b");
        assert_eq!(
            py_split(" a\u{1d}b  c ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn classes() {
        assert!(is_alpha('é') && is_alpha('ß') && !is_alpha('1') && !is_alpha('Ⅻ'));
        assert!(is_punct_category('"') && is_punct_category('«') && !is_punct_category('$'));
        assert!(is_symbol_other('©') && is_symbol_other('😀') && !is_symbol_other('a'));
        assert!(
            is_gopher_punctuation('#')
                && is_gopher_punctuation('\r')
                && !is_gopher_punctuation('\t')
        );
        assert!(is_terminal_punctuation('។') && !is_terminal_punctuation(','));
        assert!(is_sentence_end('。') && !is_sentence_end(';'));
        assert_eq!(py_lower("ABC"), "abc");
        assert_eq!(py_lower("Coo\u{212a}ie"), "cookie");
    }
}
