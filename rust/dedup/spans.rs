//! Sentence-span dedup: "we discarded all but one of any three-sentence span occurring more
//! than once in the data set" (the C4 paper), as datatrove's `SentenceDedup` implements it.
//!
//! Behaviour, following datatrove:
//! - A document is split into sentences ([`trimmed_sentences`], the splitter the filters use);
//!   a document with fewer than `n` sentences has no spans. Span `i` is sentences `i..i + n`, each normalised like
//!   MinHash words ([`hash_forms::words`]), and is skipped when all of them normalise to
//!   nothing (punctuation-only lines).
//! - Sorted by (hash, document, sentence), the first occurrence of a span in input order is
//!   kept; every other occurrence, in other documents or later in the same one, is removed,
//!   taking its `n` sentences with it (overlapping removals merge).
//! - A removed sentence takes the whitespace before it, the rest is joined as it stood and the
//!   result trimmed. A document that changed is dropped when it is empty, has fewer than
//!   `min_words` words (datatrove: 50) or fewer than `min_sentences` sentences (3).
//!
//! Differences: datatrove hashes 64 bits, here 128-bit xxh3. Sentences split as spaCy's
//! sentencizer does for English (datatrove's splitter for it): `crate::text::sentences`.

use super::hash_forms::words;
use super::spill::Record;
use super::Key128;
use crate::text::sentences::trimmed_sentences;
use xxhash_rust::xxh3::xxh3_128;

/// The hashes of the `n`-sentence spans of `text`, with the index of each span's first
/// sentence.
pub fn span_hashes(text: &str, n: usize, fold_numbers: bool) -> Vec<(Key128, u32)> {
    let sents = trimmed_sentences(text);
    if n == 0 || sents.len() < n {
        return Vec::new();
    }
    let forms: Vec<String> = sents
        .iter()
        .map(|&(a, b)| words(&text[a..b], fold_numbers).text)
        .collect();
    let mut buf = String::new();
    (0..=sents.len() - n)
        .filter_map(|i| {
            let group = &forms[i..i + n];
            if group.iter().all(|f| f.is_empty()) {
                return None;
            }
            buf.clear();
            for (k, f) in group.iter().enumerate() {
                if k > 0 {
                    buf.push('\n'); // keeps sentence boundaries part of the key
                }
                buf.push_str(f);
            }
            Some((Key128::from(xxh3_128(buf.as_bytes())), i as u32))
        })
        .collect()
}

/// One span occurrence of the span index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpanEntry {
    pub hash: Key128,
    pub doc: u64,
    pub sent: u32,
}

impl Record for SpanEntry {
    const SIZE: usize = 28;
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.hash.hi.to_le_bytes());
        out[8..16].copy_from_slice(&self.hash.lo.to_le_bytes());
        out[16..24].copy_from_slice(&self.doc.to_le_bytes());
        out[24..28].copy_from_slice(&self.sent.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        SpanEntry {
            hash: Key128 { hi: w(0), lo: w(8) },
            doc: w(16),
            sent: u32::from_le_bytes(b[24..28].try_into().unwrap()),
        }
    }
}

/// Byte ranges of `text` to cut for the removed spans starting at sentences `starts`, each
/// `n` sentences long; a cut sentence takes the whitespace before it. Returns the ranges and
/// the number of sentences cut.
pub fn cut_ranges(text: &str, starts: &[u32], n: usize) -> (Vec<(usize, usize)>, usize) {
    let sents = trimmed_sentences(text);
    let mut removed = vec![false; sents.len()];
    for &s in starts {
        let s = s as usize;
        for r in removed.iter_mut().skip(s).take(n) {
            *r = true;
        }
    }
    let mut ranges = Vec::new();
    let mut prev_end = 0usize;
    for (i, &(_, end)) in sents.iter().enumerate() {
        if removed[i] {
            ranges.push((prev_end, end));
        }
        prev_end = end;
    }
    let count = removed.iter().filter(|&&r| r).count();
    (ranges, count)
}

/// Words in `text` as span dedup counts them.
pub fn word_count(text: &str) -> usize {
    words(text, false).len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::lines::cut;

    #[test]
    fn spans_need_n_sentences() {
        assert!(span_hashes("One. Two.", 3, true).is_empty());
        let h = span_hashes("One. Two. Three. Four.", 3, true);
        assert_eq!(h.iter().map(|x| x.1).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn normalised_spans_match() {
        let a = span_hashes("Hello there. How are you? Fine, thanks.", 3, true);
        let b = span_hashes("hello   THERE!\nHow are you.  Fine thanks", 3, true);
        assert_eq!(a[0].0, b[0].0);
        let c = span_hashes("Hello there how. Are you? Fine, thanks.", 3, true);
        assert_ne!(a[0].0, c[0].0, "sentence boundaries are part of the key");
    }

    #[test]
    fn punctuation_only_spans_are_skipped() {
        assert!(span_hashes("---\n***\n...\n", 3, true).is_empty());
    }

    #[test]
    fn cutting_spans() {
        let t = "A one. B two. C three. D four. E five.";
        let (mut r, n) = cut_ranges(t, &[1], 3);
        assert_eq!(n, 3);
        assert_eq!(cut(t, &mut r).trim(), "A one. E five.");
        let (mut r, n) = cut_ranges(t, &[0, 2], 3);
        assert_eq!(n, 5);
        assert_eq!(cut(t, &mut r).trim(), "");
    }
}
