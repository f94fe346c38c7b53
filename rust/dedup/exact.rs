//! Exact document dedup: an xxh3 hash (64 or 128 bits) of the normalised text
//! ([`hash_forms::exact_form`]: whitespace folded, lower-cased).
//!
//! The index is one [`ExactEntry`] (hash, document number) per document. Sorted, the entries
//! of identical texts are adjacent and ordered by document number, so the first of each group
//! is the first occurrence in input order: it is kept, the others name it as their original.
//! With 128 bits an accidental collision needs about 2^64 documents; with 64 bits about 2^32
//! (four billion), which is why 128 is the default.

use super::hash_forms::exact_form;
use super::spill::Record;
use super::Key128;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// The exact-dedup hash of `text`; with `bits == 64` the high word is zero.
///
/// ```
/// use gristmill::dedup::exact::doc_hash;
/// assert_eq!(doc_hash("Hello  World\n", 128), doc_hash("hello world", 128));
/// assert_ne!(doc_hash("hello world", 128), doc_hash("hello, world", 128));
/// ```
pub fn doc_hash(text: &str, bits: u32) -> u128 {
    let form = exact_form(text);
    if bits == 64 {
        xxh3_64(form.as_bytes()) as u128
    } else {
        xxh3_128(form.as_bytes())
    }
}

/// One document in the exact index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExactEntry {
    pub hash: Key128,
    pub doc: u64,
}

impl Record for ExactEntry {
    const SIZE: usize = 24;
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.hash.hi.to_le_bytes());
        out[8..16].copy_from_slice(&self.hash.lo.to_le_bytes());
        out[16..24].copy_from_slice(&self.doc.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        ExactEntry {
            hash: Key128 { hi: w(0), lo: w(8) },
            doc: w(16),
        }
    }
}

/// Calls `dup(doc, original)` for every document of a sorted exact-index stream that repeats
/// an earlier one.
pub fn find_duplicates(
    entries: impl Iterator<Item = super::Result<ExactEntry>>,
    mut dup: impl FnMut(u64, u64) -> super::Result<()>,
) -> super::Result<()> {
    super::spill::for_each_in_group(
        entries,
        |e| e.hash,
        1,
        |earlier, e| match earlier {
            [first] => dup(e.doc, first.doc),
            _ => Ok(()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths() {
        assert_eq!(doc_hash("abc", 64) >> 64, 0);
        assert_ne!(doc_hash("abc", 128) >> 64, 0);
    }

    #[test]
    fn first_occurrence_is_kept() {
        let texts = ["a b", "c", "A  b", "c ", "d", "a b"];
        let mut entries: Vec<ExactEntry> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| ExactEntry {
                hash: doc_hash(t, 128).into(),
                doc: i as u64,
            })
            .collect();
        entries.sort();
        let mut dups = Vec::new();
        find_duplicates(entries.into_iter().map(Ok), |d, o| {
            dups.push((d, o));
            Ok(())
        })
        .unwrap();
        dups.sort();
        assert_eq!(dups, [(2, 0), (3, 1), (5, 0)]);
    }

    #[test]
    fn record_round_trip() {
        let e = ExactEntry {
            hash: Key128 { hi: 1 << 63, lo: 7 },
            doc: 99,
        };
        let mut b = [0u8; 24];
        e.encode(&mut b);
        assert_eq!(ExactEntry::decode(&b), e);
    }
}
