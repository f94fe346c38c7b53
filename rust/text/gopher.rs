//! The Gopher quality and repetition filters (Rae et al. 2021, appendix A), with the rule
//! order, parameters, reason names and arithmetic of datatrove's `GopherQualityFilter` and
//! `GopherRepetitionFilter`. Words come from [`super::words`]; lengths are in characters.
//!
//! A threshold that is `null` or 0 switches its rule off, as in datatrove.

use super::chars::{
    is_alpha, is_gopher_punctuation, py_count, py_len, py_lstrip, py_rstrip, py_splitlines,
    py_strip,
};
use super::words::{split_words, tokenize};
use super::Verdict;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

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

/// Polynomial hashes modulo the Mersenne prime 2^61 - 1.
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

fn addmod(a: u64, b: u64) -> u64 {
    let r = a + b;
    if r >= MOD {
        r - MOD
    } else {
        r
    }
}

/// `BASE^0 ..= BASE^max`.
fn powers(max: usize) -> Vec<u64> {
    let mut p = Vec::with_capacity(max + 1);
    p.push(1);
    for _ in 0..max {
        p.push(mulmod(*p.last().expect("non-empty"), BASE));
    }
    p
}

/// The words of a text as what the n-gram rules need, computed once per document:
///
/// - `ids`: each distinct word gets a number. Words hold no whitespace, so two runs of words
///   joined by spaces (the top n-gram rule's strings) are equal exactly when their ids are.
/// - `concat`: polynomial hashes of the concatenated words' bytes, at word boundaries only;
///   each distinct word's bytes are hashed once. The duplicate n-gram rule joins words with
///   no separator, so `"a"+"bc"` equals `"ab"+"c"`: its keys are (hash, byte length) of the
///   concatenation, found in O(1) per n-gram from these prefix sums.
struct WordRuns {
    ids: Vec<u32>,
    /// Character length prefix sums.
    chars: Vec<usize>,
    /// Byte offsets of each word in the words concatenated (one past the end at the end).
    concat_at: Vec<usize>,
    /// Hash of the concatenated bytes before each word.
    concat: Vec<u64>,
}

impl WordRuns {
    fn new<'a>(words: impl IntoIterator<Item = &'a str>) -> Self {
        let words = words.into_iter();
        let cap = words.size_hint().0 + 1;
        // Distinct words, found through an open-addressing table of (id + 1), 0 when empty,
        // probed by an xxh3 hash and confirmed by comparing the words themselves.
        let slots_len = (cap * 2).next_power_of_two().max(16);
        let shift = 64 - slots_len.trailing_zeros();
        let mut slots = vec![0u32; slots_len];
        struct Distinct<'a> {
            word: &'a str,
            fast: u64,
            /// Polynomial hash of its bytes, BASE^bytes, characters.
            hash: u64,
            pow: u64,
            chars: usize,
        }
        let mut distinct: Vec<Distinct<'a>> = Vec::new();
        let mut ids = Vec::with_capacity(cap);
        let mut chars = Vec::with_capacity(cap);
        let mut concat_at = Vec::with_capacity(cap);
        let mut concat = Vec::with_capacity(cap);
        let (mut c, mut b, mut h) = (0usize, 0usize, 0u64);
        for w in words {
            let fast = xxh3_64(w.as_bytes());
            let mut slot = (fast >> shift) as usize;
            let id = loop {
                match slots[slot] {
                    0 => {
                        let (mut wh, mut wp) = (0u64, 1u64);
                        for &byte in w.as_bytes() {
                            wh = addmod(mulmod(wh, BASE), byte as u64 + 1);
                            wp = mulmod(wp, BASE);
                        }
                        distinct.push(Distinct {
                            word: w,
                            fast,
                            hash: wh,
                            pow: wp,
                            chars: py_len(w),
                        });
                        slots[slot] = distinct.len() as u32;
                        break distinct.len() - 1;
                    }
                    k if distinct[k as usize - 1].fast == fast
                        && distinct[k as usize - 1].word == w =>
                    {
                        break k as usize - 1
                    }
                    _ => slot = (slot + 1) & (slots_len - 1),
                }
            };
            let d = &distinct[id];
            ids.push(id as u32);
            chars.push(c);
            concat_at.push(b);
            concat.push(h);
            c += d.chars;
            b += w.len();
            h = addmod(mulmod(h, d.pow), d.hash);
        }
        chars.push(c);
        concat_at.push(b);
        concat.push(h);
        WordRuns {
            ids,
            chars,
            concat_at,
            concat,
        }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn chars(&self, i: usize, n: usize) -> usize {
        self.chars[i + n] - self.chars[i]
    }

    /// Most bytes in any `n` consecutive words concatenated.
    fn longest_concat(&self, n: usize) -> usize {
        self.concat_at
            .iter()
            .zip(self.concat_at.iter().skip(n))
            .map(|(a, b)| b - a)
            .max()
            .unwrap_or(0)
    }

    /// Key of `"".join(words[i..i + n])`: its hash mixed with its byte length, never
    /// `u64::MAX`; `pow` holds BASE^0 up to at least that length.
    fn concat_key(&self, pow: &[u64], i: usize, n: usize) -> u64 {
        let len = self.concat_at[i + n] - self.concat_at[i];
        let h = addmod(self.concat[i + n], MOD - mulmod(self.concat[i], pow[len]));
        let key = h ^ (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        key.min(EMPTY - 1)
    }
}

/// A table from u64 keys to dense ids (0, 1, 2, ... in first-insertion order): open
/// addressing with linear probing, reused across the n-gram passes of a document (resetting
/// keeps its memory). `u64::MAX` marks an empty slot and is never a key.
#[derive(Default)]
struct DenseIds {
    keys: Vec<u64>,
    ids: Vec<u32>,
    shift: u32,
    len: u32,
}

const EMPTY: u64 = u64::MAX;

impl DenseIds {
    /// Empties the table, sized for up to `max_keys` keys; `with_ids`: ready for [`Self::id`],
    /// else only for [`Self::insert`] (less memory to touch).
    fn reset(&mut self, max_keys: usize, with_ids: bool) {
        let cap = (max_keys * 2).next_power_of_two().max(16);
        self.keys.clear();
        self.keys.resize(cap, EMPTY);
        if with_ids {
            self.ids.resize(cap, 0);
        }
        self.shift = 64 - cap.trailing_zeros();
        self.len = 0;
    }

    /// Finds `key` (not `u64::MAX`) or claims an empty slot for it; returns the slot and
    /// whether the key is new.
    #[inline]
    fn probe(&mut self, key: u64) -> (usize, bool) {
        debug_assert_ne!(key, EMPTY);
        let mask = self.keys.len() - 1;
        let mut slot = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        loop {
            match self.keys[slot] {
                EMPTY => {
                    self.keys[slot] = key;
                    return (slot, true);
                }
                k if k == key => return (slot, false),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// The id of `key` (not `u64::MAX`), and whether it is new.
    fn id(&mut self, key: u64) -> (u32, bool) {
        let (slot, new) = self.probe(key);
        if new {
            self.ids[slot] = self.len;
            self.len += 1;
        }
        (self.ids[slot], new)
    }

    /// Adds `key` (not `u64::MAX`); whether it is new.
    fn insert(&mut self, key: u64) -> bool {
        self.probe(key).1
    }
}

/// Buffers for the n-gram rules of one document (the levels belong to its words).
#[derive(Default)]
struct NGramTables {
    table: DenseIds,
    /// Ids of the n-grams (words joined by spaces) at each position, for n = `level`:
    /// equal ids, equal strings. Level n + 1 numbers the pairs (n-gram at i, word i + n).
    gram_ids: Vec<u32>,
    level: usize,
    distinct: usize,
    counts: Vec<u32>,
}

/// Characters in the most frequent n-gram (words joined by spaces) times its count; of
/// n-grams seen equally often, the one seen first (Python's `Counter.most_common(1)`).
fn top_n_gram_chars(runs: &WordRuns, n: usize, t: &mut NGramTables) -> Option<usize> {
    let count = runs.len().checked_sub(n)? + 1;
    if t.level == 0 || t.level > n {
        t.gram_ids.clear();
        t.gram_ids.extend_from_slice(&runs.ids);
        t.distinct = runs
            .ids
            .iter()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        t.level = 1;
    }
    while t.level < n {
        let next = runs.len() - t.level;
        t.table.reset(next, true);
        for i in 0..next {
            let key = (t.gram_ids[i] as u64) << 32 | runs.ids[i + t.level] as u64;
            t.gram_ids[i] = t.table.id(key).0;
        }
        t.gram_ids.truncate(next);
        t.distinct = t.table.len as usize;
        t.level += 1;
    }
    t.counts.clear();
    t.counts.resize(t.distinct, 0);
    for &id in &t.gram_ids[..count] {
        t.counts[id as usize] += 1;
    }
    // Ids follow first appearance, so the first maximum is the n-gram seen first.
    let (best_id, &best) = t
        .counts
        .iter()
        .enumerate()
        .rev()
        .max_by_key(|&(_, c)| c)
        .expect("at least one n-gram");
    let first = t.gram_ids.iter().position(|&id| id as usize == best_id)?;
    Some((runs.chars(first, n) + n - 1) * best as usize)
}

/// Characters in n-grams (words concatenated) already seen, skipping past each repeat;
/// counting stops once `repeated / text_chars > frac` (more repeats cannot change the rule's
/// decision then).
fn duplicate_n_gram_chars(
    runs: &WordRuns,
    n: usize,
    pow: &[u64],
    (text_chars, frac): (f64, f64),
    t: &mut NGramTables,
) -> usize {
    let len = runs.len();
    t.table.reset((len + 1).saturating_sub(n), false);
    let (mut repeated, mut i) = (0, 0);
    while i + n <= len {
        if t.table.insert(runs.concat_key(pow, i, n)) {
            i += 1;
        } else {
            repeated += runs.chars(i, n);
            if repeated as f64 / text_chars > frac {
                break;
            }
            i += n;
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
    let tokens = tokenize(text);
    let words: Vec<&str> = tokens
        .iter()
        .filter(|t| !t.space)
        .map(|t| t.text.as_ref())
        .collect();
    let runs = WordRuns::new(words.iter().copied());
    let mut tables = NGramTables::default();
    for &(n, frac) in &cfg.top_n_grams {
        if n == 0 {
            continue;
        }
        if let Some(top) = top_n_gram_chars(&runs, n, &mut tables) {
            if top as f64 / text_chars > frac {
                return Verdict::Remove(format!("top_{n}_gram").into());
            }
        }
    }
    // BASE powers up to the longest run of words any duplicate n-gram key spans.
    let pow = powers(
        cfg.dup_n_grams
            .iter()
            .filter(|&&(n, _)| n > 0 && n <= runs.len())
            .map(|&(n, _)| runs.longest_concat(n))
            .max()
            .unwrap_or(0),
    );
    for &(n, frac) in &cfg.dup_n_grams {
        if n == 0 {
            continue;
        }
        let repeated = duplicate_n_gram_chars(&runs, n, &pow, (text_chars, frac), &mut tables);
        if repeated as f64 / text_chars > frac {
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
        let mut tables = NGramTables::default();
        let never = (1.0, f64::INFINITY);
        // "a b" and "ab" differ when joined by spaces, but are equal when concatenated.
        let runs = WordRuns::new(["a", "bc", "ab", "c"]);
        let pow = powers(runs.longest_concat(2));
        assert_ne!(runs.ids[0..2], runs.ids[2..4]);
        assert_eq!(runs.concat_key(&pow, 0, 2), runs.concat_key(&pow, 2, 2));
        assert_ne!(runs.concat_key(&pow, 0, 2), runs.concat_key(&pow, 1, 2));
        assert_eq!(
            duplicate_n_gram_chars(&runs, 2, &pow, never, &mut tables),
            3
        );
        let runs = WordRuns::new(["x", "y", "x", "y", "z"]);
        let mut tables = NGramTables::default();
        assert_eq!(top_n_gram_chars(&runs, 2, &mut tables), Some(6));
        // Ties go to the n-gram seen first: "aa b" (4 chars) before "c dd".
        let runs = WordRuns::new(["aa", "b", "c", "dd", "aa", "b", "c", "dd"]);
        let mut tables = NGramTables::default();
        assert_eq!(top_n_gram_chars(&runs, 2, &mut tables), Some(8));
        assert_eq!(top_n_gram_chars(&runs, 9, &mut tables), None);
    }

    #[test]
    fn top_n_grams_agree_with_recounting() {
        // Levels are built up from the last n asked for, or from scratch for a smaller n.
        let words: Vec<String> = (0..300).map(|i| format!("w{}", (i * 7) % 23)).collect();
        let runs = WordRuns::new(words.iter().map(String::as_str));
        let mut tables = NGramTables::default();
        for n in [2, 5, 6, 9, 3, 1] {
            let grams: Vec<String> = words.windows(n).map(|w| w.join(" ")).collect();
            let mut counts: rustc_hash::FxHashMap<&str, usize> = Default::default();
            for g in &grams {
                *counts.entry(g).or_default() += 1;
            }
            let best = counts.values().max().unwrap();
            let first = grams.iter().find(|g| counts[g.as_str()] == *best).unwrap();
            assert_eq!(
                top_n_gram_chars(&runs, n, &mut tables),
                Some(py_len(first) * best)
            );
        }
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
