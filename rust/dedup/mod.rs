//! Corpus-scale deduplication: exact document hashes, C4-style line dedup, 3-sentence-span
//! dedup and MinHash LSH near-duplicates, with memory bounded by configuration.
//!
//! A run has three passes over the corpus, each resumable:
//!
//! 1. **scan** ([`scan::Scanner`]): hashes every document in parallel and appends fixed-size
//!    entries (exact hash, LSH band keys, line hashes, span hashes) to in-memory buffers. When
//!    the buffers reach the memory limit (or every `checkpoint_docs` documents) they are sorted
//!    and written as run files, and a manifest records how many documents are done.
//! 2. **resolve** ([`resolve::resolve`]): k-way merges the runs of each method. Equal hashes
//!    come out side by side, so duplicates are found with one sequential read: exact groups,
//!    LSH buckets (clustered with union-find), and the keeper of each repeated line or span.
//!    The result is two sorted files: document decisions and line/span removals.
//! 3. **apply** ([`apply::Applier`]): walks the corpus again beside those two files and says, per
//!    document, keep (possibly with lines/spans cut) or remove (with the method and the
//!    document it duplicated).
//!
//! Which occurrence is kept: exact and span duplicates keep the first in input order (as
//! datatrove does); a MinHash cluster keeps its first document in input order; a repeated line
//! is kept in the document whose id hashes lowest (as TFDS C4 does with URLs; see [`lines`]).
//! Documents removed by exact or MinHash dedup never keep a line or span for the corpus.

pub mod apply;
pub mod exact;
pub mod hash_forms;
pub mod keys;
pub mod lines;
pub mod lsh;
pub mod minhash;
pub mod resolve;
pub mod scan;
pub mod spans;
pub mod spill;
pub mod store;
pub mod unionfind;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything that can go wrong in `dedup`, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: at byte {offset}: expected {expected}, found {found}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        expected: String,
        found: String,
    },
    #[error("invalid dedup configuration: {0}")]
    Config(String),
    #[error(
        "{path}: this work directory was made with a different configuration \
         (stored {stored}, now {current}); remove it or use another work directory"
    )]
    ConfigMismatch {
        path: PathBuf,
        stored: String,
        current: String,
    },
    #[error(
        "document {index}: the input changed since the scan (expected id {expected:?}, found {found:?})"
    )]
    InputChanged {
        index: u64,
        expected: String,
        found: String,
    },
    #[error("{0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, DedupError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DedupError {
    let path = path.into();
    move |source| DedupError::Io { path, source }
}

/// What to deduplicate and how. Everything here changes the result, so a work directory
/// remembers it and refuses to resume under another configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Exact document dedup on a hash of the whitespace-folded, lower-cased text.
    pub exact: bool,
    /// 64 or 128: the width of the exact-dedup hash (xxh3).
    pub exact_hash_bits: u32,
    /// MinHash LSH near-duplicate dedup.
    pub minhash: bool,
    /// Words per shingle.
    pub ngram: usize,
    /// LSH bands and rows per band; the signature has `bands * rows` permutations.
    pub bands: usize,
    pub rows: usize,
    /// Seed of the permutation parameters (see [`minhash::MinHasher`]).
    pub seed: u64,
    /// Explicit permutation parameters `(a, b)`, each `bands * rows` long (for example
    /// datatrove's), instead of drawing them from `seed`.
    pub permutations: Option<(Vec<u64>, Vec<u64>)>,
    /// When set, a candidate pair is merged only if the Jaccard similarity estimated from the
    /// full signatures reaches this value.
    pub threshold: Option<f64>,
    /// Replace every number by `0` before shingling (as datatrove and FineWeb do).
    pub fold_numbers: bool,
    /// C4-style line dedup.
    pub lines: bool,
    /// 3-sentence-span dedup.
    pub spans: bool,
    /// Sentences per span.
    pub span_sentences: usize,
    /// A document changed by line or span removal is dropped when fewer sentences remain.
    pub min_sentences: usize,
    /// A document changed by span removal is dropped when fewer words remain (datatrove: 50).
    pub min_words: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            exact: true,
            exact_hash_bits: 128,
            minhash: true,
            ngram: 5,
            bands: 14,
            rows: 8,
            seed: 1,
            permutations: None,
            threshold: None,
            fold_numbers: true,
            lines: false,
            spans: false,
            span_sentences: 3,
            min_sentences: 3,
            min_words: 50,
        }
    }
}

impl DedupConfig {
    /// The settings from their JSON form (the Python layer's `DedupConfig`), checked.
    pub fn from_json(json: &str) -> Result<Self> {
        let c: DedupConfig = serde_json::from_str(json)
            .map_err(|e| DedupError::Config(format!("invalid dedup configuration: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the values that would otherwise fail deep inside a run.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DedupError::Config(m));
        if self.exact_hash_bits != 64 && self.exact_hash_bits != 128 {
            return bad(format!(
                "exact_hash_bits must be 64 or 128, not {}",
                self.exact_hash_bits
            ));
        }
        if self.minhash {
            if self.ngram == 0 || self.bands == 0 || self.rows == 0 {
                return bad(format!(
                    "ngram, bands and rows must be positive (found {}, {}, {})",
                    self.ngram, self.bands, self.rows
                ));
            }
            if let Some((a, b)) = &self.permutations {
                let k = self.bands * self.rows;
                if a.len() != k || b.len() != k {
                    return bad(format!(
                        "permutations must hold bands*rows = {k} values each, found {} and {}",
                        a.len(),
                        b.len()
                    ));
                }
            }
            if let Some(t) = self.threshold {
                if !(0.0..=1.0).contains(&t) {
                    return bad(format!("threshold must be in [0, 1], not {t}"));
                }
            }
        }
        if self.spans && self.span_sentences == 0 {
            return bad("span_sentences must be positive".into());
        }
        Ok(())
    }

    /// The permutation count of a signature.
    pub fn num_perm(&self) -> usize {
        self.bands * self.rows
    }
}

/// How a removed document was found to be a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Method {
    Exact = 1,
    MinHash = 2,
    Lines = 3,
    Spans = 4,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Exact => "exact",
            Method::MinHash => "minhash",
            Method::Lines => "lines",
            Method::Spans => "spans",
        }
    }

    pub fn from_u8(v: u8) -> Option<Method> {
        match v {
            1 => Some(Method::Exact),
            2 => Some(Method::MinHash),
            3 => Some(Method::Lines),
            4 => Some(Method::Spans),
            _ => None,
        }
    }
}

/// A 128-bit hash stored as two words, so entries holding one stay 8-byte aligned (a `u128`
/// field would pad every entry to 16-byte alignment). Orders like the `u128` it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key128 {
    pub hi: u64,
    pub lo: u64,
}

impl From<u128> for Key128 {
    fn from(v: u128) -> Self {
        Key128 {
            hi: (v >> 64) as u64,
            lo: v as u64,
        }
    }
}

impl From<Key128> for u128 {
    fn from(k: Key128) -> u128 {
        ((k.hi as u128) << 64) | k.lo as u128
    }
}
