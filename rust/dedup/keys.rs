//! The keys one document contributes to dedup, computed in parallel for a batch: its exact
//! hash and its MinHash LSH band keys. The Ray engine shuffles these keys between workers;
//! the local engine's scan pass makes the same ones (`scan.rs`).

use super::{exact, lsh, minhash::MinHasher, DedupConfig, Key128, Result};
use rayon::prelude::*;

/// The keys of a batch of documents, flat so they can go to numpy without a copy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchKeys {
    /// Two words (high, low) of each document's exact hash; zeros when exact dedup is off.
    pub exact: Vec<u64>,
    /// `width` words per document: (high, low) of each band key; zeros for a document too
    /// short to have a MinHash signature.
    pub band_keys: Vec<u64>,
    pub width: usize,
    /// Whether each document has a signature (and so band keys).
    pub has_signature: Vec<bool>,
}

/// The keys of `texts` under `config`, in order.
pub fn batch_keys<S: AsRef<str> + Sync>(texts: &[S], config: &DedupConfig) -> Result<BatchKeys> {
    let hasher = if config.minhash {
        Some(MinHasher::from_config(config)?)
    } else {
        None
    };
    let per_doc: Vec<(u128, Option<Vec<Key128>>)> = crate::parallel::install(|| {
        texts
            .par_iter()
            .map(|t| {
                let t = t.as_ref();
                let exact = if config.exact {
                    exact::doc_hash(t, config.exact_hash_bits)
                } else {
                    0
                };
                let keys = hasher
                    .as_ref()
                    .and_then(|h| h.signature(t))
                    .map(|s| lsh::band_keys(&s, config.bands, config.rows));
                (exact, keys)
            })
            .collect()
    });
    let width = if config.minhash { 2 * config.bands } else { 0 };
    let mut out = BatchKeys {
        exact: Vec::with_capacity(2 * per_doc.len()),
        band_keys: Vec::with_capacity(width * per_doc.len()),
        width,
        has_signature: Vec::with_capacity(per_doc.len()),
    };
    for (e, keys) in per_doc {
        out.exact.extend([(e >> 64) as u64, e as u64]);
        out.has_signature.push(keys.is_some());
        match keys {
            Some(keys) => out.band_keys.extend(keys.iter().flat_map(|k| [k.hi, k.lo])),
            None => out.band_keys.extend(std::iter::repeat_n(0, width)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_hashes_and_the_layout() {
        let long: String = (0..80).map(|i| format!("word{i} ")).collect();
        let texts = [long.as_str(), "too short", long.as_str()];
        let config = DedupConfig::default();
        let keys = batch_keys(&texts, &config).unwrap();
        assert_eq!(keys.exact.len(), 6);
        assert_eq!(keys.width, 2 * config.bands);
        assert_eq!(keys.band_keys.len(), 3 * keys.width);
        assert_eq!(keys.has_signature, vec![true, false, true]);
        // The same text has the same keys; the exact hash is the scan pass's.
        assert_eq!(keys.exact[0..2], keys.exact[4..6]);
        let h = exact::doc_hash(&long, config.exact_hash_bits);
        assert_eq!(keys.exact[0..2], [(h >> 64) as u64, h as u64]);
        let w = keys.width;
        assert_eq!(keys.band_keys[0..w], keys.band_keys[2 * w..3 * w]);
        assert!(keys.band_keys[w..2 * w].iter().all(|&k| k == 0));
    }

    #[test]
    fn nothing_asked_nothing_computed() {
        let config = DedupConfig {
            exact: false,
            minhash: false,
            ..DedupConfig::default()
        };
        let keys = batch_keys(&["a b c"], &config).unwrap();
        assert_eq!((keys.exact, keys.width), (vec![0, 0], 0));
    }
}
