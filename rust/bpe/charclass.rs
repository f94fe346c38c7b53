//! Unicode character classes used by the hand-written pre-tokenizers.
//!
//! The tables are built from `regex-syntax`, the same Unicode data the `regex` and
//! `fancy-regex` crates (and so tiktoken) use, so `\p{L}`, `\p{N}`, `\s` and the o200k
//! letter classes agree with the regex engine character for character. One byte of flags per
//! code point (1.1 MB, built once) keeps the hot loop to a single load; ASCII is answered
//! from a 128-entry table before that. Two derived flags (`OTHER`, `NEWLINE`) let every class
//! the patterns use be tested with one mask.

use regex_syntax::hir::{Class, HirKind};
use std::sync::OnceLock;

pub const LETTER: u8 = 1; // \p{L}
pub const NUMBER: u8 = 2; // \p{N}
pub const SPACE: u8 = 4; // \s (Unicode White_Space)
pub const UPPERISH: u8 = 8; // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]  (o200k)
pub const LOWERISH: u8 = 16; // [\p{Ll}\p{Lm}\p{Lo}\p{M}]  (o200k)
pub const MARK: u8 = 32; // \p{M}
pub const OTHER: u8 = 64; // [^\s\p{L}\p{N}]
pub const NEWLINE: u8 = 128; // [\r\n]

const CLASSES: [(&str, u8); 6] = [
    (r"\p{L}", LETTER),
    (r"\p{N}", NUMBER),
    (r"\s", SPACE),
    (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", UPPERISH),
    (r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", LOWERISH),
    (r"\p{M}", MARK),
];

fn build_table() -> Vec<u8> {
    let mut table = vec![0u8; 0x11_0000];
    for (pattern, flag) in CLASSES {
        let hir = regex_syntax::Parser::new()
            .parse(pattern)
            .expect("built-in class pattern parses");
        let HirKind::Class(Class::Unicode(class)) = hir.kind() else {
            unreachable!("built-in pattern {pattern} is a Unicode class")
        };
        for range in class.iter() {
            let code_points = range.start() as usize..=range.end() as usize;
            table[code_points].iter_mut().for_each(|bits| *bits |= flag);
        }
    }
    for bits in table.iter_mut() {
        if *bits & (LETTER | NUMBER | SPACE) == 0 {
            *bits |= OTHER;
        }
    }
    table[b'\r' as usize] |= NEWLINE;
    table[b'\n' as usize] |= NEWLINE;
    table
}

fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(build_table)
}

static ASCII: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphabetic() {
            if b.is_ascii_uppercase() {
                LETTER | UPPERISH
            } else {
                LETTER | LOWERISH
            }
        } else if b.is_ascii_digit() {
            NUMBER
        } else if matches!(b, b'\n' | b'\r') {
            SPACE | NEWLINE
        } else if matches!(b, b' ' | b'\t' | 0x0b | 0x0c) {
            SPACE
        } else {
            OTHER
        };
        c += 1;
    }
    t
};

/// The class flags of `c`.
#[inline(always)]
pub fn flags(c: char) -> u8 {
    code_point_flags(c as u32)
}

/// The class flags of an ASCII byte (below 0x80).
#[inline(always)]
pub fn ascii_flags(b: u8) -> u8 {
    ASCII[(b & 0x7f) as usize]
}

/// The class flags of a code point (below 0x110000).
#[inline(always)]
pub fn code_point_flags(cp: u32) -> u8 {
    let cp = cp as usize;
    if cp < 128 {
        ASCII[cp]
    } else {
        table()[cp]
    }
}

/// Forces the table to be built now (so the first timed call does not pay for it).
pub fn warm_up() {
    let _ = table();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_table_agrees_with_unicode_table() {
        for cp in 0u32..128 {
            let c = char::from_u32(cp).unwrap();
            assert_eq!(ASCII[cp as usize], table()[cp as usize], "code point {cp}");
            assert_eq!(flags(c) & SPACE != 0, c.is_whitespace());
        }
    }

    #[test]
    fn classes_of_some_characters() {
        assert_eq!(flags('é') & LETTER, LETTER);
        assert_eq!(flags('٣') & NUMBER, NUMBER); // Arabic-Indic digit three
        assert_eq!(flags('\u{3000}') & SPACE, SPACE); // ideographic space
        assert_eq!(flags('\u{0301}') & (MARK | LETTER), MARK); // combining acute: mark, not letter
        assert_eq!(flags('中') & (UPPERISH | LOWERISH), UPPERISH | LOWERISH); // Lo is in both
        assert_eq!(flags('!'), OTHER);
        assert_eq!(flags('\u{301}') & OTHER, OTHER); // a mark is none of \s, \p{L}, \p{N}
        assert_eq!(flags('\u{85}') & (SPACE | NEWLINE | OTHER), SPACE); // NEL: space, no newline
        assert_eq!(flags('\r'), SPACE | NEWLINE);
    }
}
