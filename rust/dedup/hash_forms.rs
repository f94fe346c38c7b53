//! Hash forms: the normalised text each dedup method hashes.
//!
//! - [`words`]: the word sequence MinHash shingles and span hashes are built from: lower-case,
//!   every character that is not a letter or digit (punctuation, symbols, whitespace) folded
//!   into one word break, diacritics stripped, and optionally every number folded to `0`.
//!   This follows datatrove's `simplify_text` (lower-case, numbers to `0`, punctuation to
//!   spaces, whitespace folded, diacritics stripped) except that it breaks words on every
//!   character that is not a letter or digit, not only on those in datatrove's punctuation
//!   list (so `£`, `°` or `│` are breaks here and words there).
//! - [`exact_form`]: what exact dedup hashes: whitespace runs folded to one space, trimmed,
//!   lower-cased. Case and spacing differences are usually re-encodings of the same page.

use unicode_normalization::char::{canonical_combining_class, decompose_canonical};

/// Normalised words, stored once as a single string with one space between words so that a
/// run of consecutive words (a shingle) is one contiguous slice to hash.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Words {
    pub text: String,
    /// Byte range of each word in `text`.
    pub spans: Vec<(u32, u32)>,
}

impl Words {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Words `i..i + n` joined by single spaces.
    pub fn run(&self, i: usize, n: usize) -> &str {
        let start = self.spans[i].0 as usize;
        let end = self.spans[i + n - 1].1 as usize;
        &self.text[start..end]
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.spans
            .iter()
            .map(|&(s, e)| &self.text[s as usize..e as usize])
    }
}

/// Splits `text` into normalised words (see the module docs).
///
/// ```
/// use gristmill::dedup::hash_forms::words;
/// let w = words("Hello, World! It's 3.14 -- or 1,000.", true);
/// assert_eq!(w.text, "hello world it s 0 or 0");
/// ```
pub fn words(text: &str, fold_numbers: bool) -> Words {
    let mut b = WordBuilder {
        out: Words {
            text: String::with_capacity(text.len()),
            spans: Vec::new(),
        },
        start: None,
    };
    // Bytes, not chars: web text is mostly ASCII, which takes the first branch without
    // decoding; other characters are decoded where they start.
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii() && !(fold_numbers && c.is_ascii_digit()) {
            if c.is_ascii_alphanumeric() {
                b.push(c.to_ascii_lowercase() as char);
            } else {
                b.end_word();
            }
            i += 1;
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or(' ');
        if fold_numbers && ch.is_numeric() {
            i = skip_number(text, i);
            b.push('0');
            continue;
        }
        i += ch.len_utf8();
        // Canonical decomposition, dropping combining marks: "é" -> "e", as datatrove strips
        // diacritics (NFD, then drop category Mn; combining class > 0 is that set, nearly).
        decompose_canonical(ch, |d| {
            if canonical_combining_class(d) != 0 {
                return;
            }
            if d.is_alphanumeric() {
                for l in d.to_lowercase() {
                    b.push(l);
                }
            } else {
                b.end_word();
            }
        });
    }
    b.end_word();
    b.out
}

/// The end of the number starting at byte `i`: a run of digits, optionally one decimal
/// separator and more digits (the regex datatrove folds to `0`: `\p{Nd}+([.,]\p{Nd}+)?`).
fn skip_number(text: &str, i: usize) -> usize {
    fn digits(text: &str, mut i: usize) -> usize {
        while let Some(c) = text[i..].chars().next() {
            if !c.is_numeric() {
                break;
            }
            i += c.len_utf8();
        }
        i
    }
    let end = digits(text, i);
    let bytes = text.as_bytes();
    if end < bytes.len() && (bytes[end] == b'.' || bytes[end] == b',') {
        let more = digits(text, end + 1);
        if more > end + 1 {
            return more;
        }
    }
    end
}

struct WordBuilder {
    out: Words,
    start: Option<usize>,
}

impl WordBuilder {
    #[inline]
    fn push(&mut self, c: char) {
        if self.start.is_none() {
            if !self.out.text.is_empty() {
                self.out.text.push(' ');
            }
            self.start = Some(self.out.text.len());
        }
        self.out.text.push(c);
    }

    #[inline]
    fn end_word(&mut self) {
        if let Some(s) = self.start.take() {
            self.out.spans.push((s as u32, self.out.text.len() as u32));
        }
    }
}

/// The text exact dedup hashes: whitespace folded, trimmed, lower-cased.
///
/// ```
/// use gristmill::dedup::hash_forms::exact_form;
/// assert_eq!(exact_form("  Hello\n\n  World "), "hello world");
/// ```
pub fn exact_form(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, w) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if w.is_ascii() {
            out.extend(w.bytes().map(|b| b.to_ascii_lowercase() as char));
        } else {
            out.push_str(&w.to_lowercase());
        }
    }
    out
}

/// The key of one line for C4 line dedup: trimmed and lower-cased, as TFDS C4 hashes it
/// (`line.strip().lower()`).
pub fn line_form(line: &str) -> String {
    line.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_fold_case_punctuation_and_space() {
        let w = words("  The  QUICK\tbrown—fox's\n\"jump\"  ", false);
        assert_eq!(w.text, "the quick brown fox s jump");
        assert_eq!(
            w.iter().collect::<Vec<_>>(),
            ["the", "quick", "brown", "fox", "s", "jump"]
        );
        assert_eq!(w.run(1, 3), "quick brown fox");
    }

    #[test]
    fn numbers_fold_like_datatrove() {
        assert_eq!(
            words("abc123def 3.14 1,000,000 7.", true).text,
            "abc0def 0 0 0 0"
        );
        assert_eq!(words("v2 2024", false).text, "v2 2024");
    }

    #[test]
    fn non_ascii_lowercase() {
        assert_eq!(words("ÉCOLE Straße ΣΟΦΙΑ", true).text, "ecole straße σοφια");
        // Precomposed and decomposed accents give the same word; marks do not break words.
        assert_eq!(
            words("café cafe\u{301}s naïve", true).text,
            "cafe cafes naive"
        );
    }

    #[test]
    fn empty_and_punctuation_only() {
        assert!(words("", true).is_empty());
        assert!(words("--- ... !!!", true).is_empty());
    }

    #[test]
    fn exact_and_line_forms() {
        assert_eq!(exact_form("A  b\tC\n"), "a b c");
        assert_eq!(exact_form(""), "");
        assert_eq!(line_form("  Menu | Home  "), "menu | home");
    }
}
