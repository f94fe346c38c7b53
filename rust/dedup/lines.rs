//! C4-style line dedup: a line that appears in several documents is kept in one of them only.
//!
//! As in TFDS's C4 (`c4_utils.remove_duplicate_text`): lines are the pieces between `\n`, keyed
//! by their trimmed, lower-cased text; within a document only the first copy of a line is kept;
//! across documents each line is kept in exactly one document; a document that changed is
//! dropped when it ends up empty or with fewer than `min_sentences` sentences.
//!
//! **Which document keeps the line.** C4 keeps it on the page whose URL has the smallest MD5
//! hash, "to avoid biasing by domain". Here the document whose id has the smallest xxh3-64
//! hash keeps it (ties, i.e. repeated ids, go to the earlier document). Hashing the id makes
//! the choice deterministic (the same corpus gives the same output however it is sharded or
//! ordered) and unbiased: choosing by input order or by id order would strip every shared
//! line from whichever source happens to come late or sort high, while a hash spreads the
//! kept copies evenly over sources. One consequence, shared with C4: a document that wins
//! some lines can itself be dropped for being too short after losing others, and then those
//! lines survive nowhere.
//!
//! Unlike C4, blank lines are never deduplicated (C4's input had none left after cleaning), so
//! paragraph breaks survive.

use super::hash_forms::line_form;
use super::spill::Record;
use super::Key128;
use rustc_hash::FxHashSet;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// The hash that ranks a document for keeping shared lines: lower keeps.
pub fn doc_rank(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

fn line_key(line: &str) -> Option<Key128> {
    let form = line_form(line);
    (!form.is_empty()).then(|| Key128::from(xxh3_128(form.as_bytes())))
}

/// The distinct keys of the non-blank lines of `text`, in order of first appearance.
pub fn line_hashes(text: &str) -> Vec<Key128> {
    let mut seen = FxHashSet::default();
    text.split('\n')
        .filter_map(line_key)
        .filter(|k| seen.insert(*k))
        .collect()
}

/// One (document, distinct line) pair of the line index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LineEntry {
    pub hash: Key128,
    /// [`doc_rank`] of the document's id: the smallest in a group keeps the line.
    pub rank: u64,
    pub doc: u64,
}

impl Record for LineEntry {
    const SIZE: usize = 32;
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.hash.hi.to_le_bytes());
        out[8..16].copy_from_slice(&self.hash.lo.to_le_bytes());
        out[16..24].copy_from_slice(&self.rank.to_le_bytes());
        out[24..32].copy_from_slice(&self.doc.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        LineEntry {
            hash: Key128 { hi: w(0), lo: w(8) },
            rank: w(16),
            doc: w(24),
        }
    }
}

/// Byte ranges of `text` to cut: every line whose key is in `remove`, and every later copy
/// of a line within the document. Each cut takes one adjoining `\n` with it, so the remaining
/// lines join as `"\n".join(kept)` would (up to whitespace at the ends, which apply trims from
/// any document it changed). Returns the ranges (ascending) and the number of
/// lines cut.
pub fn cut_ranges(text: &str, remove: &FxHashSet<Key128>) -> (Vec<(usize, usize)>, usize) {
    let mut ranges = Vec::new();
    let mut seen = FxHashSet::default();
    let mut start = 0usize;
    let mut cut = 0usize;
    let len = text.len();
    for line in text.split('\n') {
        let end = start + line.len();
        if let Some(k) = line_key(line) {
            if remove.contains(&k) || !seen.insert(k) {
                cut += 1;
                if end < len {
                    ranges.push((start, end + 1)); // the line and its newline
                } else {
                    ranges.push((start.saturating_sub(1), end)); // last line: the newline before
                }
            }
        }
        start = end + 1;
    }
    (ranges, cut)
}

/// `text` without the byte ranges in `ranges` (any order, may overlap).
pub fn cut(text: &str, ranges: &mut [(usize, usize)]) -> String {
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0usize;
    for &(s, e) in ranges.iter() {
        if s > pos {
            out.push_str(&text[pos..s]);
        }
        pos = pos.max(e);
    }
    if pos < text.len() {
        out.push_str(&text[pos..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(lines: &[&str]) -> FxHashSet<Key128> {
        lines.iter().filter_map(|l| line_key(l)).collect()
    }

    #[test]
    fn hashes_skip_blank_and_repeat_lines() {
        let h = line_hashes("A\n\nb\n  a \n");
        assert_eq!(h.len(), 2);
        assert_eq!(h[0], line_key("a").unwrap());
    }

    #[test]
    fn cuts_join_like_c4() {
        let t = "one\ntwo\nthree";
        for (remove, expect) in [
            (vec!["two"], "one\nthree"),
            (vec!["three"], "one\ntwo"),
            (vec!["one"], "two\nthree"),
            (vec!["two", "three"], "one"),
            (vec!["one", "two", "three"], ""),
        ] {
            let (mut r, n) = cut_ranges(t, &keys(&remove));
            assert_eq!(n, remove.len());
            // apply trims a changed document, as C4's join of the kept lines leaves no ends.
            assert_eq!(cut(t, &mut r).trim_end(), expect, "{remove:?}");
        }
    }

    #[test]
    fn local_repeats_are_cut_and_blank_lines_kept() {
        let t = "Menu\nbody text\n\nMENU\nend";
        let (mut r, n) = cut_ranges(t, &FxHashSet::default());
        assert_eq!(n, 1);
        assert_eq!(cut(t, &mut r), "Menu\nbody text\n\nend");
    }

    #[test]
    fn ranking_is_by_id_hash() {
        assert_ne!(doc_rank("a"), doc_rank("b"));
        assert_eq!(doc_rank("a"), xxh3_64(b"a"));
    }
}
