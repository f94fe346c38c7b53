//! The Gopher quality and repetition filters (Rae et al. 2021, appendix A), with the rule
//! order, parameters, reason names and arithmetic of datatrove's `GopherQualityFilter` and
//! `GopherRepetitionFilter`. Words come from [`super::words`]; lengths are in characters.
//!
//! A threshold that is `null` or 0 switches its rule off, as in datatrove.

use super::chars::{
    is_alpha, is_gopher_punctuation, py_count, py_len, py_lstrip, py_rstrip, py_splitlines,
    py_strip,
};
use super::words::split_words;
use super::Verdict;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

fn on<T: PartialOrd + Default + Copy>(v: Option<T>) -> Option<T> {
    v.filter(|&x| x > T::default())
}

// ---- quality --------------------------------------------------------------------------------

/// Parameters of the Gopher quality rules (defaults: the paper's and datatrove's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GopherQualityConfig {
    pub min_doc_words: Option<usize>,
    pub max_doc_words: Option<usize>,
    pub min_avg_word_length: Option<f64>,
    pub max_avg_word_length: Option<f64>,
    /// Most `#` (and, separately, `...`/`…`) per word.
    pub max_symbol_word_ratio: Option<f64>,
    pub max_bullet_lines_ratio: Option<f64>,
    pub max_ellipsis_lines_ratio: Option<f64>,
    /// Despite the name (datatrove's), the least fraction of words with a letter.
    pub max_non_alpha_words_ratio: Option<f64>,
    pub min_stop_words: Option<usize>,
    pub stop_words: Vec<String>,
}

impl Default for GopherQualityConfig {
    fn default() -> Self {
        GopherQualityConfig {
            min_doc_words: Some(50),
            max_doc_words: Some(100_000),
            min_avg_word_length: Some(3.0),
            max_avg_word_length: Some(10.0),
            max_symbol_word_ratio: Some(0.1),
            max_bullet_lines_ratio: Some(0.9),
            max_ellipsis_lines_ratio: Some(0.3),
            max_non_alpha_words_ratio: Some(0.8),
            min_stop_words: Some(2),
            stop_words: ["the", "be", "to", "of", "and", "that", "have", "with"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Applies the Gopher quality rules.
pub fn quality(cfg: &GopherQualityConfig, text: &str) -> Verdict {
    let words = split_words(text);
    let n_words = words.len();
    let mut non_symbol = 0usize;
    let mut non_symbol_chars = 0usize;
    let mut with_alpha = 0usize;
    let mut stop_seen: FxHashSet<&str> = FxHashSet::default();
    let stop_wanted = on(cfg.min_stop_words).is_some();
    for w in &words {
        let w: &str = w;
        if !w.chars().all(is_gopher_punctuation) {
            non_symbol += 1;
            non_symbol_chars += py_len(w);
        }
        if w.chars().any(is_alpha) {
            with_alpha += 1;
        }
        if stop_wanted && cfg.stop_words.iter().any(|s| s == w) {
            stop_seen.insert(w);
        }
    }
    if on(cfg.min_doc_words).is_some_and(|m| non_symbol < m) {
        return Verdict::remove("gopher_short_doc");
    }
    if on(cfg.max_doc_words).is_some_and(|m| non_symbol > m) {
        return Verdict::remove("gopher_long_doc");
    }
    if non_symbol > 0 {
        // With no such words the mean is NaN in datatrove, and NaN fails no comparison.
        let avg = non_symbol_chars as f64 / non_symbol as f64;
        if on(cfg.min_avg_word_length).is_some_and(|m| avg < m) {
            return Verdict::remove("gopher_below_avg_threshold");
        }
        if on(cfg.max_avg_word_length).is_some_and(|m| avg > m) {
            return Verdict::remove("gopher_above_avg_threshold");
        }
    }
    if n_words > 0 {
        let n = n_words as f64;
        if let Some(max) = on(cfg.max_symbol_word_ratio) {
            if py_count(text, "#") as f64 / n > max {
                return Verdict::remove("gopher_too_many_hashes");
            }
            if (py_count(text, "...") + py_count(text, "…")) as f64 / n > max {
                return Verdict::remove("gopher_too_many_ellipsis");
            }
        }
    }
    let lines = py_splitlines(text);
    if !lines.is_empty() {
        let n = lines.len() as f64;
        if let Some(max) = on(cfg.max_bullet_lines_ratio) {
            let bullets = lines
                .iter()
                .filter(|l| {
                    let l = py_lstrip(l);
                    l.starts_with('•') || l.starts_with('-')
                })
                .count();
            if bullets as f64 / n > max {
                return Verdict::remove("gopher_too_many_bullets");
            }
        }
        if let Some(max) = on(cfg.max_ellipsis_lines_ratio) {
            let ellipses = lines
                .iter()
                .filter(|l| {
                    let l = py_rstrip(l);
                    l.ends_with("...") || l.ends_with('…')
                })
                .count();
            if ellipses as f64 / n > max {
                return Verdict::remove("gopher_too_many_end_ellipsis");
            }
        }
    }
    if n_words > 0
        && on(cfg.max_non_alpha_words_ratio)
            .is_some_and(|m| (with_alpha as f64 / n_words as f64) < m)
    {
        return Verdict::remove("gopher_below_alpha_threshold");
    }
    if on(cfg.min_stop_words).is_some_and(|m| stop_seen.len() < m) {
        return Verdict::remove("gopher_enough_stop_words");
    }
    Verdict::Keep
}

// ---- repetition -----------------------------------------------------------------------------

/// Parameters of the Gopher repetition rules (defaults: the paper's table A1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GopherRepetitionConfig {
    pub dup_line_frac: Option<f64>,
    pub dup_para_frac: Option<f64>,
    pub dup_line_char_frac: Option<f64>,
    pub dup_para_char_frac: Option<f64>,
    /// (n, most characters in the most frequent n-gram, as a fraction of the text).
    pub top_n_grams: Vec<(usize, f64)>,
    /// (n, most characters in repeated n-grams, as a fraction of the text).
    pub dup_n_grams: Vec<(usize, f64)>,
}

impl Default for GopherRepetitionConfig {
    fn default() -> Self {
        GopherRepetitionConfig {
            dup_line_frac: Some(0.3),
            dup_para_frac: Some(0.3),
            dup_line_char_frac: Some(0.2),
            dup_para_char_frac: Some(0.2),
            top_n_grams: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            dup_n_grams: vec![
                (5, 0.15),
                (6, 0.14),
                (7, 0.13),
                (8, 0.12),
                (9, 0.11),
                (10, 0.10),
            ],
        }
    }
}

/// (number of elements seen before, characters in them).
pub(crate) fn find_duplicates<'a>(items: impl IntoIterator<Item = &'a str>) -> (usize, usize) {
    let mut seen: FxHashSet<&str> = FxHashSet::default();
    let (mut n, mut chars) = (0, 0);
    for item in items {
        if !seen.insert(item) {
            n += 1;
            chars += py_len(item);
        }
    }
    (n, chars)
}

/// Splits at runs of at least `min_run` newlines (Python `re.split(r"\n{k,}", s)`).
fn split_newline_runs(s: &str, min_run: usize) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            let run = bytes[i..].iter().take_while(|&&b| b == b'\n').count();
            if run >= min_run {
                out.push(&s[start..i]);
                start = i + run;
            }
            i += run;
        } else {
            i += 1;
        }
    }
    out.push(&s[start..]);
    out
}

/// Polynomial hashes of byte strings modulo the Mersenne prime 2^61 - 1, over prefixes, so
/// that the hash of any substring (here: a run of consecutive words) costs O(1).
struct PrefixHash {
    prefix: Vec<u64>,
    power: Vec<u64>,
}

const MOD: u64 = (1 << 61) - 1;
const BASE: u64 = 0x1234_5678_9abc_def1 % MOD;

fn mulmod(a: u64, b: u64) -> u64 {
    let p = a as u128 * b as u128;
    let r = ((p & MOD as u128) + (p >> 61)) as u64;
    if r >= MOD {
        r - MOD
    } else {
        r
    }
}

impl PrefixHash {
    fn new(bytes: impl Iterator<Item = u8>, len: usize) -> Self {
        let mut prefix = Vec::with_capacity(len + 1);
        let mut power = Vec::with_capacity(len + 1);
        prefix.push(0);
        power.push(1);
        for b in bytes {
            let h = (mulmod(*prefix.last().expect("non-empty"), BASE) + b as u64 + 1) % MOD;
            prefix.push(h);
            power.push(mulmod(*power.last().expect("non-empty"), BASE));
        }
        PrefixHash { prefix, power }
    }

    /// (hash, length) of bytes [start, end): equal strings give equal keys.
    fn key(&self, start: usize, end: usize) -> (u64, usize) {
        let h =
            (self.prefix[end] + MOD - mulmod(self.prefix[start], self.power[end - start])) % MOD;
        (h, end - start)
    }
}

/// The words of a text with what the n-gram rules need to key and measure runs of them.
struct WordRuns<'a> {
    words: Vec<Cow<'a, str>>,
    /// Character length prefix sums.
    chars: Vec<usize>,
    /// Byte offsets of each word in the words joined by " " (one past the end at the end).
    joined_at: Vec<usize>,
    joined: PrefixHash,
    /// Byte offsets of each word in the words concatenated.
    concat_at: Vec<usize>,
    concat: PrefixHash,
}

impl<'a> WordRuns<'a> {
    fn new(words: Vec<Cow<'a, str>>) -> Self {
        let mut chars = vec![0];
        let mut joined_at = Vec::with_capacity(words.len() + 1);
        let mut concat_at = Vec::with_capacity(words.len() + 1);
        let (mut j, mut c) = (0, 0);
        for w in &words {
            chars.push(chars.last().expect("non-empty") + py_len(w));
            joined_at.push(j);
            concat_at.push(c);
            j += w.len() + 1;
            c += w.len();
        }
        joined_at.push(j);
        concat_at.push(c);
        let joined_bytes = words.iter().enumerate().flat_map(|(i, w)| {
            let sep: &[u8] = if i == 0 { b"" } else { b" " };
            sep.iter().chain(w.as_bytes()).copied()
        });
        let joined = PrefixHash::new(joined_bytes, j);
        let concat = PrefixHash::new(words.iter().flat_map(|w| w.bytes()), c);
        WordRuns {
            words,
            chars,
            joined_at,
            joined,
            concat_at,
            concat,
        }
    }

    /// Key of `" ".join(words[i..i + n])`.
    fn joined_key(&self, i: usize, n: usize) -> (u64, usize) {
        // joined_at[k + 1] is one past the space that follows word k.
        self.joined
            .key(self.joined_at[i], self.joined_at[i + n] - 1)
    }

    /// Key of `"".join(words[i..i + n])`.
    fn concat_key(&self, i: usize, n: usize) -> (u64, usize) {
        self.concat.key(self.concat_at[i], self.concat_at[i + n])
    }

    fn chars(&self, i: usize, n: usize) -> usize {
        self.chars[i + n] - self.chars[i]
    }
}

/// Characters in the most frequent n-gram times its count (ties: the one seen first).
fn top_n_gram_chars(runs: &WordRuns<'_>, n: usize) -> Option<usize> {
    let count = runs.words.len().checked_sub(n)? + 1;
    let mut counts: FxHashMap<(u64, usize), (usize, usize)> =
        FxHashMap::with_capacity_and_hasher(count, Default::default());
    for i in 0..count {
        counts.entry(runs.joined_key(i, n)).or_insert((0, i)).0 += 1;
    }
    let (&_, &(c, first)) = counts
        .iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))?;
    Some((runs.chars(first, n) + n - 1) * c)
}

/// Characters in n-grams (words concatenated) already seen, skipping past each repeat.
fn duplicate_n_gram_chars(runs: &WordRuns<'_>, n: usize) -> usize {
    let len = runs.words.len();
    let mut seen: FxHashSet<(u64, usize)> =
        FxHashSet::with_capacity_and_hasher(len.saturating_sub(n) + 1, Default::default());
    let (mut repeated, mut i) = (0, 0);
    while i + n <= len {
        let key = runs.concat_key(i, n);
        if seen.contains(&key) {
            repeated += runs.chars(i, n);
            i += n;
        } else {
            seen.insert(key);
            i += 1;
        }
    }
    repeated
}

/// Applies the Gopher repetition rules.
pub fn repetition(cfg: &GopherRepetitionConfig, text: &str) -> Verdict {
    if text.is_empty() {
        return Verdict::remove("empty");
    }
    let text_chars = py_len(text) as f64;
    let paragraphs = split_newline_runs(py_strip(text), 2);
    let (dup, dup_chars) = find_duplicates(paragraphs.iter().copied());
    if on(cfg.dup_para_frac).is_some_and(|m| dup as f64 / paragraphs.len() as f64 > m) {
        return Verdict::remove("dup_para_frac");
    }
    if on(cfg.dup_para_char_frac).is_some_and(|m| dup_chars as f64 / text_chars > m) {
        return Verdict::remove("dup_para_char_frac");
    }
    let lines = split_newline_runs(text, 1);
    let (dup, dup_chars) = find_duplicates(lines.iter().copied());
    if on(cfg.dup_line_frac).is_some_and(|m| dup as f64 / lines.len() as f64 > m) {
        return Verdict::remove("dup_line_frac");
    }
    if on(cfg.dup_line_char_frac).is_some_and(|m| dup_chars as f64 / text_chars > m) {
        return Verdict::remove("dup_line_char_frac");
    }
    if cfg.top_n_grams.is_empty() && cfg.dup_n_grams.is_empty() {
        return Verdict::Keep;
    }
    let runs = WordRuns::new(split_words(text));
    for &(n, frac) in &cfg.top_n_grams {
        if n == 0 {
            continue;
        }
        if let Some(top) = top_n_gram_chars(&runs, n) {
            if top as f64 / text_chars > frac {
                return Verdict::Remove(format!("top_{n}_gram").into());
            }
        }
    }
    for &(n, frac) in &cfg.dup_n_grams {
        if n == 0 {
            continue;
        }
        if duplicate_n_gram_chars(&runs, n) as f64 / text_chars > frac {
            return Verdict::Remove(format!("duplicated_{n}_n_grams").into());
        }
    }
    Verdict::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prose(n: usize) -> String {
        let base =
            "the quick brown fox jumps over a lazy dog and then it runs to the forest with friends";
        let words: Vec<&str> = base.split(' ').collect();
        (0..n)
            .map(|i| format!("{}{}", words[i % words.len()], i))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn quality_word_count_thresholds() {
        let cfg = GopherQualityConfig {
            min_stop_words: None,
            ..Default::default()
        };
        assert_eq!(
            quality(&cfg, &prose(49)),
            Verdict::remove("gopher_short_doc")
        );
        assert_eq!(quality(&cfg, &prose(50)), Verdict::Keep);
        // Punctuation-only words do not count.
        assert_eq!(
            quality(&cfg, &format!("{} , , , ,", prose(49))),
            Verdict::remove("gopher_short_doc")
        );
    }

    #[test]
    fn quality_ratios() {
        let cfg = GopherQualityConfig {
            min_stop_words: None,
            ..Default::default()
        };
        let mut text = prose(60);
        text.push_str(&" #".repeat(7));
        // 7 hashes over 67 words is 0.104 > 0.1
        assert_eq!(
            quality(&cfg, &text),
            Verdict::remove("gopher_too_many_hashes")
        );
        let bullets: String = (0..10).map(|i| format!("- {}\n", prose(6 + i))).collect();
        assert_eq!(
            quality(&cfg, &bullets),
            Verdict::remove("gopher_too_many_bullets")
        );
        let stop = GopherQualityConfig::default();
        assert_eq!(
            quality(&stop, &prose(80)),
            Verdict::remove("gopher_enough_stop_words")
        );
        let with_stop = format!("{} the cat and the dog", prose(80));
        assert_eq!(quality(&stop, &with_stop), Verdict::Keep);
    }

    #[test]
    fn repetition_rules() {
        let cfg = GopherRepetitionConfig::default();
        assert_eq!(repetition(&cfg, ""), Verdict::remove("empty"));
        assert_eq!(repetition(&cfg, &prose(200)), Verdict::Keep);
        let para = prose(30);
        let text = format!("{para}\n\n{para}\n\n{}", prose(40));
        assert_eq!(repetition(&cfg, &text), Verdict::remove("dup_para_frac"));
        let text = format!("{}{}", prose(20), " a b".repeat(30));
        assert!(matches!(repetition(&cfg, &text), Verdict::Remove(r) if r.starts_with("top_2")));
    }

    #[test]
    fn n_gram_keys_follow_the_joined_strings() {
        // "a b" and "ab" differ when joined by spaces, but are equal when concatenated.
        let runs = WordRuns::new(["a", "bc", "ab", "c"].map(Cow::from).to_vec());
        assert_ne!(runs.joined_key(0, 2), runs.joined_key(2, 2));
        assert_eq!(runs.concat_key(0, 2), runs.concat_key(2, 2));
        assert_eq!(duplicate_n_gram_chars(&runs, 2), 3);
        let runs = WordRuns::new(["x", "y", "x", "y", "z"].map(Cow::from).to_vec());
        assert_eq!(top_n_gram_chars(&runs, 2), Some(6));
    }

    #[test]
    fn newline_runs() {
        assert_eq!(
            split_newline_runs("a\n\nb\n\n\nc\nd", 2),
            ["a", "b", "c\nd"]
        );
        assert_eq!(split_newline_runs("\na\n", 1), ["", "a", ""]);
    }
}
