//! Pre-tokenization: splitting text into the pieces that BPE merges within.
//!
//! tiktoken splits with a regex that uses look-ahead and possessive quantifiers, which the
//! linear-time `regex` crate cannot express; `fancy-regex` can, but backtracks and is the
//! slowest part of encoding. For the three patterns that matter (GPT-2/r50k, cl100k_base,
//! o200k_base) we match by hand: each alternative of the regex becomes a few lines that test
//! character classes, in the regex's own order, reproducing where its backtracking would end.
//! Any other pattern runs on `fancy-regex`. Tests compare both paths with each other and with
//! tiktoken itself.

use super::charclass::{flags, LETTER, LOWERISH, NUMBER, SPACE, UPPERISH};
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
        let next_end: fn(&str, usize) -> usize = match self {
            Pattern::R50k => r50k_piece_end,
            Pattern::Cl100k => cl100k_piece_end,
            Pattern::O200k => o200k_piece_end,
            Pattern::Custom(re) => {
                for m in re.find_iter(text) {
                    let m = m.map_err(|e| BpeError::Pattern {
                        pattern: re.as_str().to_string(),
                        message: e.to_string(),
                    })?;
                    f(m.as_str());
                }
                return Ok(());
            }
        };
        let mut pos = 0;
        while pos < text.len() {
            let end = next_end(text, pos);
            debug_assert!(end > pos && text.is_char_boundary(end));
            f(&text[pos..end]);
            pos = end;
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

// ---- character helpers -------------------------------------------------------------------

/// The char starting at byte `i` (which must be a char boundary) and its length in bytes.
#[inline(always)]
fn char_at(s: &str, i: usize) -> Option<(char, usize)> {
    let b = *s.as_bytes().get(i)?;
    if b < 0x80 {
        return Some((b as char, 1));
    }
    let c = s[i..].chars().next()?;
    Some((c, c.len_utf8()))
}

#[inline(always)]
fn flags_at(s: &str, i: usize) -> u8 {
    char_at(s, i).map_or(0, |(c, _)| flags(c))
}

/// End of the run starting at `i` of chars whose flags satisfy `keep`.
#[inline(always)]
fn run_end(s: &str, mut i: usize, keep: impl Fn(char, u8) -> bool) -> usize {
    let bytes = s.as_bytes();
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            if !keep(b as char, flags(b as char)) {
                break;
            }
            i += 1;
        } else {
            let (c, len) = char_at(s, i).unwrap();
            if !keep(c, flags(c)) {
                break;
            }
            i += len;
        }
    }
    i
}

#[inline(always)]
fn is_other(f: u8) -> bool {
    f & (LETTER | NUMBER | SPACE) == 0
}

/// Length of a contraction (`'s 't 'm 'd 'll 've 're`) starting at the apostrophe at `i`, or 0.
/// Case-insensitive matching follows Unicode simple case folding, where `s` also matches the
/// long s `ſ` (U+017F), as the regex engines do.
fn contraction_len(s: &str, i: usize, case_insensitive: bool) -> usize {
    let b = s.as_bytes();
    if b.get(i) != Some(&b'\'') {
        return 0;
    }
    let Some((c1, l1)) = char_at(s, i + 1) else {
        return 0;
    };
    let fold = |c: char| -> char {
        if !case_insensitive {
            c
        } else if c == '\u{17F}' {
            's'
        } else {
            c.to_ascii_lowercase()
        }
    };
    match fold(c1) {
        's' | 'd' | 'm' | 't' => 1 + l1,
        first @ ('l' | 'v' | 'r') => {
            let second = match first {
                'l' => 'l',
                _ => 'e',
            };
            match char_at(s, i + 1 + l1) {
                Some((c2, l2)) if fold(c2) == second => 1 + l1 + l2,
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
fn whitespace_piece_end(s: &str, i: usize, newlines: Newlines) -> usize {
    let mut last_char_start = i;
    let mut after_last_newline = None;
    let mut j = i;
    while let Some((c, len)) = char_at(s, j) {
        if flags(c) & SPACE == 0 {
            break;
        }
        if c == '\r' || c == '\n' {
            after_last_newline = Some(j + len);
        }
        last_char_start = j;
        j += len;
    }
    let at_end = j == s.len();
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

// ---- r50k / gpt2 -------------------------------------------------------------------------
//   '(?:[sdmt]|ll|ve|re) | ?\p{L}++ | ?\p{N}++ | ?[^\s\p{L}\p{N}]++ | \s++$ | \s+(?!\S) | \s

fn r50k_piece_end(s: &str, i: usize) -> usize {
    let (c, len) = char_at(s, i).unwrap();
    let n = contraction_len(s, i, false);
    if n > 0 {
        return i + n;
    }
    // The optional leading space of the next three alternatives.
    let (start, f) = if c == ' ' {
        match char_at(s, i + 1) {
            Some((c2, _)) if flags(c2) & SPACE == 0 => (i + 1, flags(c2)),
            _ => (i, flags(c)),
        }
    } else {
        (i, flags(c))
    };
    if f & LETTER != 0 {
        run_end(s, start, |_, f| f & LETTER != 0)
    } else if f & NUMBER != 0 {
        run_end(s, start, |_, f| f & NUMBER != 0)
    } else if is_other(f) {
        run_end(s, start, |_, f| is_other(f))
    } else {
        debug_assert!(flags(c) & SPACE != 0 && start == i && len > 0);
        whitespace_piece_end(s, i, Newlines::Ignored)
    }
}

// ---- cl100k ------------------------------------------------------------------------------
//   '(?i:[sdmt]|ll|ve|re) | [^\r\n\p{L}\p{N}]?+\p{L}++ | \p{N}{1,3}+ | ?[^\s\p{L}\p{N}]++[\r\n]*+
//   | \s++$ | \s*[\r\n] | \s+(?!\S) | \s

#[inline(always)]
fn is_letter_prefix(c: char, f: u8) -> bool {
    // [^\r\n\p{L}\p{N}]
    f & (LETTER | NUMBER) == 0 && c != '\r' && c != '\n'
}

fn cl100k_piece_end(s: &str, i: usize) -> usize {
    let (c, len) = char_at(s, i).unwrap();
    let f = flags(c);
    let n = contraction_len(s, i, true);
    if n > 0 {
        return i + n;
    }
    if f & LETTER != 0 {
        return run_end(s, i, |_, f| f & LETTER != 0);
    }
    if is_letter_prefix(c, f) && flags_at(s, i + len) & LETTER != 0 {
        return run_end(s, i + len, |_, f| f & LETTER != 0);
    }
    if f & NUMBER != 0 {
        return digits_end(s, i);
    }
    if let Some(start) = punctuation_start(s, c, f, i) {
        let end = run_end(s, start, |_, f| is_other(f));
        return run_end(s, end, |c, _| c == '\r' || c == '\n');
    }
    whitespace_piece_end(s, i, Newlines::AfterEnd)
}

/// `\p{N}{1,3}`
fn digits_end(s: &str, i: usize) -> usize {
    let mut end = i;
    for _ in 0..3 {
        match char_at(s, end) {
            Some((c, l)) if flags(c) & NUMBER != 0 => end += l,
            _ => break,
        }
    }
    end
}

/// Where ` ?[^\s\p{L}\p{N}]+` starts its run, if it matches at `i`.
fn punctuation_start(s: &str, c: char, f: u8, i: usize) -> Option<usize> {
    if is_other(f) {
        Some(i)
    } else if c == ' ' && is_other(flags_at(s, i + 1)) && i + 1 < s.len() {
        Some(i + 1)
    } else {
        None
    }
}

// ---- o200k -------------------------------------------------------------------------------
//   [^\r\n\p{L}\p{N}]?[Lu Lt Lm Lo M]*[Ll Lm Lo M]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   | [^\r\n\p{L}\p{N}]?[Lu Lt Lm Lo M]+[Ll Lm Lo M]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   | \p{N}{1,3} | ?[^\s\p{L}\p{N}]+[\r\n/]* | \s*[\r\n]+ | \s+(?!\S) | \s+

/// `[Lu Lt Lm Lo M]*[Ll Lm Lo M]+` at `p`: the greedy upper run gives back chars until a
/// lower-class char can follow it. Since Lm, Lo and M are in both classes, giving back stops at
/// the last such char of the run.
fn o200k_lower_word_end(s: &str, p: usize) -> Option<usize> {
    let mut last_lowerish_end = None;
    let mut u = p;
    while let Some((c, l)) = char_at(s, u) {
        let f = flags(c);
        if f & UPPERISH == 0 {
            break;
        }
        if f & LOWERISH != 0 {
            last_lowerish_end = Some(u + l);
        }
        u += l;
    }
    if flags_at(s, u) & LOWERISH != 0 {
        Some(run_end(s, u, |_, f| f & LOWERISH != 0))
    } else {
        last_lowerish_end
    }
}

/// `[Lu Lt Lm Lo M]+[Ll Lm Lo M]*` at `p`.
fn o200k_upper_word_end(s: &str, p: usize) -> Option<usize> {
    if flags_at(s, p) & UPPERISH == 0 {
        return None;
    }
    let u = run_end(s, p, |_, f| f & UPPERISH != 0);
    Some(run_end(s, u, |_, f| f & LOWERISH != 0))
}

fn o200k_piece_end(s: &str, i: usize) -> usize {
    let (c, len) = char_at(s, i).unwrap();
    let f = flags(c);
    let has_prefix = is_letter_prefix(c, f);
    for word_end in [o200k_lower_word_end, o200k_upper_word_end] {
        let end = (if has_prefix {
            word_end(s, i + len)
        } else {
            None
        })
        .or_else(|| word_end(s, i));
        if let Some(end) = end {
            return end + contraction_len(s, end, true);
        }
    }
    if f & NUMBER != 0 {
        return digits_end(s, i);
    }
    if let Some(start) = punctuation_start(s, c, f, i) {
        let end = run_end(s, start, |_, f| is_other(f));
        return run_end(s, end, |c, _| matches!(c, '\r' | '\n' | '/'));
    }
    whitespace_piece_end(s, i, Newlines::BeforeEnd)
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
