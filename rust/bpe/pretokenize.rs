//! Pre-tokenization: splitting text into the pieces that BPE merges within.
//!
//! tiktoken splits with a regex that uses look-ahead and possessive quantifiers, which the
//! linear-time `regex` crate cannot express; `fancy-regex` can, but backtracks and is the
//! slowest part of encoding. For the three patterns that matter (GPT-2/r50k, cl100k_base,
//! o200k_base) we match by hand: each alternative of the regex becomes a few lines that test
//! character classes, in the regex's own order, reproducing where its backtracking would end.
//! Any other pattern runs on `fancy-regex`. Tests compare both paths with each other and with
//! tiktoken itself.

use super::charclass::{
    ascii_flags, code_point_flags, LETTER, LOWERISH, NEWLINE, NUMBER, OTHER, SPACE, UPPERISH,
};
use super::BpeError;

/// tiktoken's r50k_base / gpt2 pattern (tiktoken >= 0.8 spelling, with possessives).
pub const R50K_PATTERN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";
/// The original GPT-2 spelling (also used by HF's ByteLevel pre-tokenizer); same pieces.
pub const GPT2_PATTERN_ORIGINAL: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// tiktoken's cl100k_base pattern.
pub const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";
/// tiktoken's o200k_base pattern.
pub const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// The pattern as HF tokenizers' regex engine (Oniguruma) must read it. Oniguruma takes
/// `{n,m}+` as the interval repeated one or more times, not as a possessive interval, so
/// cl100k's `\p{N}{1,3}+` would match any run of digits. Dropping the `+` keeps the meaning:
/// nothing after the interval in the same alternative could make it give characters back.
pub fn for_oniguruma(pattern: &str) -> String {
    pattern.replace("}+", "}")
}

/// A pre-tokenizer: one of the hand-written known patterns, or any regex.
#[derive(Clone, Debug)]
pub enum Pattern {
    R50k,
    Cl100k,
    O200k,
    Custom(Box<fancy_regex::Regex>),
}

impl Pattern {
    /// A pattern from a short name (`gpt2`, `r50k`, `cl100k`, `o200k`) or a regex. A regex equal to
    /// one of the known patterns gets the hand-written matcher.
    pub fn new(name_or_regex: &str) -> Result<Pattern, BpeError> {
        for known in [Pattern::R50k, Pattern::Cl100k, Pattern::O200k] {
            if name_or_regex == for_oniguruma(known.as_regex()) {
                return Ok(known);
            }
        }
        Ok(match name_or_regex {
            "gpt2" | "r50k" | "r50k_base" | "p50k_base" | R50K_PATTERN | GPT2_PATTERN_ORIGINAL => {
                Pattern::R50k
            }
            "cl100k" | "cl100k_base" | CL100K_PATTERN => Pattern::Cl100k,
            "o200k" | "o200k_base" | O200K_PATTERN => Pattern::O200k,
            regex => Pattern::Custom(Box::new(fancy_regex::Regex::new(regex).map_err(|e| {
                BpeError::Pattern {
                    pattern: regex.to_string(),
                    message: e.to_string(),
                }
            })?)),
        })
    }

    /// The regex this pattern matches like (what tiktoken and HF files store).
    pub fn as_regex(&self) -> &str {
        match self {
            Pattern::R50k => R50K_PATTERN,
            Pattern::Cl100k => CL100K_PATTERN,
            Pattern::O200k => O200K_PATTERN,
            Pattern::Custom(re) => re.as_str(),
        }
    }

    /// The same pattern run by `fancy-regex` (the reference the hand-written matchers are
    /// tested against).
    pub fn reference(&self) -> Pattern {
        Pattern::Custom(Box::new(
            fancy_regex::Regex::new(self.as_regex()).expect("known patterns compile"),
        ))
    }

    /// Calls `f` with each piece of `text`, in order.
    pub fn split<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) -> Result<(), BpeError> {
        match self {
            Pattern::R50k => split_with(text, r50k_piece_end, f),
            Pattern::Cl100k => split_with(text, cl100k_piece_end, f),
            Pattern::O200k => split_with(text, o200k_piece_end, f),
            Pattern::Custom(re) => {
                for m in re.find_iter(text) {
                    let m = m.map_err(|e| BpeError::Pattern {
                        pattern: re.as_str().to_string(),
                        message: e.to_string(),
                    })?;
                    f(m.as_str());
                }
            }
        }
        Ok(())
    }

    /// All pieces of `text` (convenience for tests and small inputs).
    pub fn pieces<'t>(&self, text: &'t str) -> Result<Vec<&'t str>, BpeError> {
        let mut out = Vec::new();
        self.split(text, |p| out.push(p))?;
        Ok(out)
    }
}

/// Calls `f` with each piece of `text`, `piece_end` giving where the piece at a byte ends
/// (one copy of this loop per matcher, so that the matcher is inlined into it).
#[inline(always)]
fn split_with<'t>(
    text: &'t str,
    piece_end: impl Fn(&[u8], usize) -> usize,
    mut f: impl FnMut(&'t str),
) {
    let b = text.as_bytes();
    let mut pos = 0;
    while pos < b.len() {
        let end = piece_end(b, pos);
        debug_assert!(end > pos && text.is_char_boundary(end));
        // Each matcher ends a piece after a whole char, so `end` is a char boundary.
        f(&text[pos..end]);
        pos = end;
    }
}

// ---- character helpers -------------------------------------------------------------------
//
// The matchers work on the text's bytes: an ASCII byte is classified by one table load, any
// other char is decoded in place (the text is valid UTF-8) and classified by the code-point
// table. A run of one class is then a tight loop over bytes, the bulk of the work.

/// The code point starting at byte `i` of valid UTF-8 and its length in bytes.
#[inline(always)]
fn decode(b: &[u8], i: usize) -> (u32, usize) {
    let b0 = b[i] as u32;
    let cont = |k: usize| (b[i + k] & 0x3f) as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xe0 {
        (((b0 & 0x1f) << 6) | cont(1), 2)
    } else if b0 < 0xf0 {
        (((b0 & 0x0f) << 12) | (cont(1) << 6) | cont(2), 3)
    } else {
        (
            ((b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3),
            4,
        )
    }
}

/// The flags of the char at byte `i` and its length; `(0, 0)` at the end of the text.
#[inline(always)]
fn class_at(b: &[u8], i: usize) -> (u8, usize) {
    match b.get(i) {
        None => (0, 0),
        Some(&c) if c < 0x80 => (ascii_flags(c), 1),
        Some(_) => {
            let (cp, len) = decode(b, i);
            (code_point_flags(cp), len)
        }
    }
}

#[inline(always)]
fn flags_at(b: &[u8], i: usize) -> u8 {
    class_at(b, i).0
}

/// How many of the 8 bytes at `i` (there must be 8), counted from the first, are ASCII
/// letters: `[a-z]`, or `[A-Za-z]` when `any_case`. 8 when all are.
#[inline(always)]
fn ascii_letters8(b: &[u8], i: usize, any_case: bool) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    // Setting bit 5 maps A-Z onto a-z and no other byte into a-z.
    let x = if any_case { w | (0x20 * ONES) } else { w };
    // Per ASCII byte, the top bit of the sum says ">= b'a'", resp. "> b'z'"; a byte of 0x80 or
    // more (not ASCII, excluded by `!w`) may carry into the next byte, but only bytes after
    // the first that fails are miscounted, and they are not counted.
    let at_least_a = x.wrapping_add((0x80 - b'a' as u64) * ONES);
    let above_z = x.wrapping_add((0x80 - b'z' as u64 - 1) * ONES);
    let letters = at_least_a & !above_z & !w & HIGH;
    ((!letters & HIGH).trailing_zeros() / 8) as usize
}

/// End of the run starting at `i` of chars having any of the flags in `mask`.
#[inline(always)]
fn run(b: &[u8], mut i: usize, mask: u8) -> usize {
    // ASCII letters eight at a time (most runs are words; an ASCII byte has LOWERISH exactly
    // when it is in a-z, LETTER when in A-Za-z), then char by char.
    if mask == LOWERISH || mask == LETTER {
        while i + 8 <= b.len() {
            let n = ascii_letters8(b, i, mask == LETTER);
            i += n;
            if n < 8 {
                break;
            }
        }
    }
    while let Some(&c) = b.get(i) {
        if c < 0x80 {
            if ascii_flags(c) & mask == 0 {
                break;
            }
            i += 1;
        } else {
            let (cp, len) = decode(b, i);
            if code_point_flags(cp) & mask == 0 {
                break;
            }
            i += len;
        }
    }
    i
}

/// End of the run starting at `i` of the ASCII bytes `keep` accepts.
#[inline(always)]
fn byte_run(b: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while b.get(i).is_some_and(|&c| keep(c)) {
        i += 1;
    }
    i
}

/// `[^\r\n\p{L}\p{N}]`: what may stand before a letter run in cl100k and o200k.
#[inline(always)]
fn is_letter_prefix(f: u8) -> bool {
    f & (LETTER | NUMBER | NEWLINE) == 0 && f != 0
}

/// Length of a contraction (`'s 't 'm 'd 'll 've 're`) starting at the apostrophe at `i`, or 0.
/// Case-insensitive matching follows Unicode simple case folding, where `s` also matches the
/// long s `ſ` (U+017F), as the regex engines do.
#[inline(always)]
fn contraction_len(b: &[u8], i: usize, case_insensitive: bool) -> usize {
    if b.get(i) != Some(&b'\'') {
        return 0;
    }
    contraction_tail(b, i, case_insensitive)
}

fn contraction_tail(b: &[u8], i: usize, case_insensitive: bool) -> usize {
    // The letter after the apostrophe, folded; ſ is two bytes.
    let letter = |at: usize| -> Option<(u8, usize)> {
        match *b.get(at)? {
            c if c < 0x80 && case_insensitive => Some((c.to_ascii_lowercase(), 1)),
            c if c < 0x80 => Some((c, 1)),
            0xc5 if case_insensitive && b.get(at + 1) == Some(&0xbf) => Some((b's', 2)),
            _ => None,
        }
    };
    let Some((c1, l1)) = letter(i + 1) else {
        return 0;
    };
    match c1 {
        b's' | b'd' | b'm' | b't' => 1 + l1,
        b'l' | b'v' | b'r' => {
            let second = if c1 == b'l' { b'l' } else { b'e' };
            match letter(i + 1 + l1) {
                Some((c2, l2)) if c2 == second => 1 + l1 + l2,
                _ => 0,
            }
        }
        _ => 0,
    }
}

/// Which whitespace alternatives a pattern has, in its order.
#[derive(Clone, Copy, PartialEq)]
enum Newlines {
    /// r50k: `\s++$ | \s+(?!\S) | \s`
    Ignored,
    /// cl100k: `\s++$ | \s*[\r\n] | \s+(?!\S) | \s`
    AfterEnd,
    /// o200k: `\s*[\r\n]+ | \s+(?!\S) | \s+`
    BeforeEnd,
}

/// The whitespace alternatives for a whitespace run at `i`. A run that reaches the end of the
/// text is one piece (`\s++$`, or `\s+(?!\S)` at the end); `\s*[\r\n]` ends the piece after
/// the run's last line break; otherwise `\s+(?!\S)` gives back the run's last char, so that
/// the following word keeps its leading space, and a single whitespace char is a piece alone.
fn whitespace_piece_end(b: &[u8], i: usize, newlines: Newlines) -> usize {
    let mut last_char_start = i;
    let mut after_last_newline = None;
    let mut j = i;
    loop {
        let (f, len) = class_at(b, j);
        if f & SPACE == 0 {
            break;
        }
        if f & NEWLINE != 0 {
            after_last_newline = Some(j + len);
        }
        last_char_start = j;
        j += len;
    }
    let at_end = j == b.len();
    match (newlines, after_last_newline) {
        (Newlines::AfterEnd, _) if at_end => return j,
        (Newlines::AfterEnd | Newlines::BeforeEnd, Some(end)) => return end,
        _ => {}
    }
    if at_end {
        j
    } else if last_char_start > i {
        last_char_start
    } else {
        j
    }
}

/// `\p{N}{1,3}`
#[inline(always)]
fn digits_end(b: &[u8], i: usize) -> usize {
    let mut end = i;
    for _ in 0..3 {
        let (f, len) = class_at(b, end);
        if f & NUMBER == 0 {
            break;
        }
        end += len;
    }
    end
}

/// Where ` ?[^\s\p{L}\p{N}]+` starts its run, if it matches at `i` (whose flags are `f`).
#[inline(always)]
fn punctuation_start(b: &[u8], f: u8, i: usize) -> Option<usize> {
    if f & OTHER != 0 {
        Some(i)
    } else if b[i] == b' ' && flags_at(b, i + 1) & OTHER != 0 {
        Some(i + 1)
    } else {
        None
    }
}

// ---- r50k / gpt2 -------------------------------------------------------------------------
//   '(?:[sdmt]|ll|ve|re) | ?\p{L}++ | ?\p{N}++ | ?[^\s\p{L}\p{N}]++ | \s++$ | \s+(?!\S) | \s

fn r50k_piece_end(b: &[u8], i: usize) -> usize {
    let (f, _) = class_at(b, i);
    let n = contraction_len(b, i, false);
    if n > 0 {
        return i + n;
    }
    // The optional leading space of the next three alternatives.
    let (start, f) = if b[i] == b' ' {
        match flags_at(b, i + 1) {
            f2 if f2 & (LETTER | NUMBER | OTHER) != 0 => (i + 1, f2),
            _ => (i, f),
        }
    } else {
        (i, f)
    };
    if f & LETTER != 0 {
        run(b, start, LETTER)
    } else if f & NUMBER != 0 {
        run(b, start, NUMBER)
    } else if f & OTHER != 0 {
        run(b, start, OTHER)
    } else {
        whitespace_piece_end(b, i, Newlines::Ignored)
    }
}

// ---- cl100k ------------------------------------------------------------------------------
//   '(?i:[sdmt]|ll|ve|re) | [^\r\n\p{L}\p{N}]?+\p{L}++ | \p{N}{1,3}+ | ?[^\s\p{L}\p{N}]++[\r\n]*+
//   | \s++$ | \s*[\r\n] | \s+(?!\S) | \s

fn cl100k_piece_end(b: &[u8], i: usize) -> usize {
    let (f, len) = class_at(b, i);
    if f & LETTER != 0 {
        return run(b, i + len, LETTER);
    }
    let n = contraction_len(b, i, true);
    if n > 0 {
        return i + n;
    }
    if is_letter_prefix(f) && flags_at(b, i + len) & LETTER != 0 {
        return run(b, i + len, LETTER);
    }
    if f & NUMBER != 0 {
        return digits_end(b, i);
    }
    if let Some(start) = punctuation_start(b, f, i) {
        let end = run(b, start, OTHER);
        return byte_run(b, end, |c| c == b'\r' || c == b'\n');
    }
    whitespace_piece_end(b, i, Newlines::AfterEnd)
}

// ---- o200k -------------------------------------------------------------------------------
//   [^\r\n\p{L}\p{N}]?[Lu Lt Lm Lo M]*[Ll Lm Lo M]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   | [^\r\n\p{L}\p{N}]?[Lu Lt Lm Lo M]+[Ll Lm Lo M]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   | \p{N}{1,3} | ?[^\s\p{L}\p{N}]+[\r\n/]* | \s*[\r\n]+ | \s+(?!\S) | \s+

/// `[Lu Lt Lm Lo M]*[Ll Lm Lo M]+` at `p`: the greedy upper run gives back chars until a
/// lower-class char can follow it. Since Lm, Lo and M are in both classes, giving back stops at
/// the last such char of the run.
#[inline(always)]
fn o200k_lower_word_end(b: &[u8], p: usize) -> Option<usize> {
    let u = run(b, p, UPPERISH);
    if flags_at(b, u) & LOWERISH != 0 {
        return Some(run(b, u, LOWERISH));
    }
    // Rare: back over the upper run to its last char that is also lower-class.
    let mut end = u;
    while end > p {
        let mut start = end - 1;
        while b[start] & 0xc0 == 0x80 {
            start -= 1;
        }
        if flags_at(b, start) & LOWERISH != 0 {
            return Some(end);
        }
        end = start;
    }
    None
}

/// `[Lu Lt Lm Lo M]+[Ll Lm Lo M]*` at `p`.
#[inline(always)]
fn o200k_upper_word_end(b: &[u8], p: usize) -> Option<usize> {
    let u = run(b, p, UPPERISH);
    (u > p).then(|| run(b, u, LOWERISH))
}

fn o200k_piece_end(b: &[u8], i: usize) -> usize {
    let (f, len) = class_at(b, i);
    if f & (UPPERISH | LOWERISH) != 0 || is_letter_prefix(f) {
        // The two word alternatives, each first with the optional prefix char, then without.
        // A letter cannot be a prefix; a mark can be both a prefix and part of a word.
        let prefix = is_letter_prefix(f);
        let end = prefix
            .then(|| o200k_lower_word_end(b, i + len))
            .flatten()
            .or_else(|| o200k_lower_word_end(b, i))
            .or_else(|| prefix.then(|| o200k_upper_word_end(b, i + len)).flatten())
            .or_else(|| o200k_upper_word_end(b, i));
        if let Some(end) = end {
            return end + contraction_len(b, end, true);
        }
    }
    if f & NUMBER != 0 {
        return digits_end(b, i);
    }
    if let Some(start) = punctuation_start(b, f, i) {
        let end = run(b, start, OTHER);
        return byte_run(b, end, |c| matches!(c, b'\r' | b'\n' | b'/'));
    }
    whitespace_piece_end(b, i, Newlines::BeforeEnd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(pattern: &Pattern, text: &str) {
        let fast = pattern.pieces(text).unwrap();
        let slow = pattern.reference().pieces(text).unwrap();
        assert_eq!(fast, slow, "pattern {:?} on {:?}", pattern.as_regex(), text);
    }

    const SAMPLES: &[&str] = &[
        "Hello world",
        "  leading spaces and trailing   ",
        "I'm here, they're there; we've it'll he'd O'Neil 'S 'LL 'ſ",
        "numbers 1234567 and ٣٤٥ and ½",
        "line\nbreaks\r\n\r\n  \n\tmixed \n  x",
        "punct!!! ...\"quoted\" (parens) a/b/c //\n/x",
        "emoji 🎉🎉 and 中文字符 and Ωμέγα",
        "combining e\u{301}cole \u{301}x \u{301}\u{301}",
        "CamelCaseWord HTTPServer ǅungla ʰello",
        "tab\tsep\u{3000}ideo\u{a0}nbsp",
        " ",
        "\n",
        "a",
        "'",
        "' s",
        "x  \n",
        "  \r\n  ",
        "x\u{2028}y",
    ];

    #[test]
    fn hand_written_matches_fancy_regex_on_samples() {
        for name in ["gpt2", "cl100k", "o200k"] {
            let p = Pattern::new(name).unwrap();
            for text in SAMPLES {
                both(&p, text);
            }
        }
    }

    #[test]
    fn ascii_letters8_counts_leading_letters() {
        let mut x: u64 = 99;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Bytes drawn mostly from around the letters, some not ASCII.
            let alphabet = b"azAZ`{@[09 '\x80\xc3\xe1\xff";
            let bytes: Vec<u8> = (0..8)
                .map(|k| alphabet[((x >> (8 * k)) % alphabet.len() as u64) as usize])
                .collect();
            for any_case in [false, true] {
                let expected = bytes
                    .iter()
                    .take_while(|c| c.is_ascii_lowercase() || (any_case && c.is_ascii_uppercase()))
                    .count();
                assert_eq!(ascii_letters8(&bytes, 0, any_case), expected, "{bytes:?}");
            }
        }
    }

    #[test]
    fn case_folding_assumption_holds() {
        // contraction_len folds only ſ -> s beyond ASCII; check the regex engine agrees.
        let re = fancy_regex::Regex::new(r"^(?i:[sdmtlver])$").unwrap();
        for cp in 0x80u32..0x3_0000 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let s = c.to_string();
            if re.is_match(&s).unwrap() {
                assert_eq!(c, '\u{17F}', "unexpected case-fold match {c:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn hand_written_matches_fancy_regex(text in "[ a-zA-Z0-9'\\n\\r\\t.,!/\u{301}\u{3000}é中ǅʰ٣🎉]{0,40}") {
            for name in ["gpt2", "cl100k", "o200k"] {
                both(&Pattern::new(name).unwrap(), &text);
            }
        }

        #[test]
        fn hand_written_matches_fancy_regex_any_unicode(text in "\\PC{0,30}") {
            for name in ["gpt2", "cl100k", "o200k"] {
                both(&Pattern::new(name).unwrap(), &text);
            }
        }
    }
}
