//! LSH banding over MinHash signatures, and clustering of the candidates.
//!
//! A signature of `bands * rows` values is cut into `bands` consecutive bands of `rows`
//! values. Two documents are candidates when any band is identical in both. For documents of
//! Jaccard similarity `s` each value agrees with probability `s`, so a band agrees with
//! probability `s^r` and at least one of `b` bands with `1 - (1 - s^r)^b`
//! ([`collision_probability`]). FineWeb's 14 × 8 puts the steep part of that curve near
//! s = 0.75: pairs at 0.9 collide 99.96 % of the time, pairs at 0.5 only 5.3 %.
//!
//! Each band becomes one 128-bit key, xxh3 of the band's number and values, so one index of
//! (key, document) entries serves all bands and a false key collision needs ~2^64 entries.
//! In the sorted index a bucket's documents are adjacent and ascending; each is united with the
//! bucket's first document (or, with a Jaccard check, with the first earlier member that
//! passes it).

use super::spill::Record;
use super::unionfind::UnionFind;
use super::{Key128, Result};
use xxhash_rust::xxh3::xxh3_128;

/// The probability that two documents of Jaccard similarity `s` share at least one band.
///
/// ```
/// use gristmill::dedup::lsh::collision_probability;
/// assert!((collision_probability(0.8, 14, 8) - 0.924).abs() < 1e-3);
/// ```
pub fn collision_probability(s: f64, bands: usize, rows: usize) -> f64 {
    1.0 - (1.0 - s.powi(rows as i32)).powi(bands as i32)
}

/// The similarity where the collision curve is steepest, roughly `(1/b)^(1/r)`.
pub fn threshold_estimate(bands: usize, rows: usize) -> f64 {
    (1.0 / bands as f64).powf(1.0 / rows as f64)
}

/// The bucket key of each band of `sig`.
pub fn band_keys(sig: &[u64], bands: usize, rows: usize) -> Vec<Key128> {
    let mut buf = vec![0u8; 4 + 8 * rows];
    (0..bands)
        .map(|band| {
            buf[..4].copy_from_slice(&(band as u32).to_le_bytes());
            for (k, v) in sig[band * rows..(band + 1) * rows].iter().enumerate() {
                buf[4 + 8 * k..12 + 8 * k].copy_from_slice(&v.to_le_bytes());
            }
            Key128::from(xxh3_128(&buf))
        })
        .collect()
}

/// One document in one LSH bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BandEntry {
    pub key: Key128,
    pub doc: u64,
}

impl Record for BandEntry {
    const SIZE: usize = 24;
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.key.hi.to_le_bytes());
        out[8..16].copy_from_slice(&self.key.lo.to_le_bytes());
        out[16..24].copy_from_slice(&self.doc.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        BandEntry {
            key: Key128 { hi: w(0), lo: w(8) },
            doc: w(16),
        }
    }
}

/// What clustering found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStats {
    /// Buckets holding more than one document.
    pub shared_buckets: u64,
    /// Candidate pairs looked at (bucket members against an earlier member).
    pub candidate_pairs: u64,
    /// Candidate pairs a Jaccard check turned down.
    pub rejected_pairs: u64,
}

/// How many earlier bucket members a document is checked against before giving up.
const MAX_CHECKS: usize = 8;

/// Unites the documents of each bucket of a sorted band index. With `check`, a pair is united
/// only when `check(earlier, later)` holds.
pub fn cluster(
    entries: impl Iterator<Item = Result<BandEntry>>,
    uf: &mut UnionFind,
    mut check: Option<&mut dyn FnMut(u64, u64) -> Result<bool>>,
) -> Result<ClusterStats> {
    let mut stats = ClusterStats::default();
    super::spill::for_each_in_group(
        entries,
        |e| e.key,
        MAX_CHECKS,
        |earlier, e| {
            let Some(first) = earlier.first() else {
                return Ok(());
            };
            if earlier.len() == 1 {
                stats.shared_buckets += 1;
            }
            match check.as_deref_mut() {
                None => {
                    stats.candidate_pairs += 1;
                    uf.union(first.doc, e.doc)?;
                }
                Some(check) => {
                    if uf.find(first.doc) == uf.find(e.doc) {
                        return Ok(()); // already together: no pair to check
                    }
                    for earlier in earlier {
                        stats.candidate_pairs += 1;
                        if check(earlier.doc, e.doc)? {
                            uf.union(earlier.doc, e.doc)?;
                            break;
                        }
                        stats.rejected_pairs += 1;
                    }
                }
            }
            Ok(())
        },
    )?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::minhash::MinHasher;

    #[test]
    fn theory_values() {
        assert!((collision_probability(0.9, 14, 8) - 0.99957).abs() < 1e-4);
        assert!((collision_probability(0.5, 14, 8) - 0.0533).abs() < 1e-3);
        assert!((threshold_estimate(14, 8) - 0.719).abs() < 1e-3);
        assert_eq!(collision_probability(1.0, 14, 8), 1.0);
        assert_eq!(collision_probability(0.0, 14, 8), 0.0);
    }

    #[test]
    fn band_keys_differ_by_band_and_value() {
        let sig: Vec<u64> = (0..16).map(|i| i % 8).collect(); // two identical bands
        let k = band_keys(&sig, 2, 8);
        assert_ne!(k[0], k[1], "the band number is part of the key");
        let mut other = sig.clone();
        other[3] += 1;
        let k2 = band_keys(&other, 2, 8);
        assert_ne!(k[0], k2[0]);
        assert_eq!(k[1], k2[1]);
    }

    fn index(sigs: &[Vec<u64>], bands: usize, rows: usize) -> Vec<BandEntry> {
        let mut v: Vec<BandEntry> = sigs
            .iter()
            .enumerate()
            .flat_map(|(d, s)| {
                band_keys(s, bands, rows)
                    .into_iter()
                    .map(move |key| BandEntry { key, doc: d as u64 })
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn near_duplicates_cluster_and_strangers_do_not() {
        let mh = MinHasher::new(112, 5, 1, false); // numbered words stay distinct
        let base: Vec<String> = (0..300).map(|i| format!("word{i}")).collect();
        let mut edited = base.clone();
        edited[150] = "changed".into(); // one edit: Jaccard ~ 0.97
        let other: Vec<String> = (1000..1300).map(|i| format!("w{i}")).collect();
        let sigs: Vec<Vec<u64>> = [&base, &other, &edited]
            .iter()
            .map(|w| mh.signature(&w.join(" ")).unwrap())
            .collect();
        let mut uf = UnionFind::new();
        let stats = cluster(index(&sigs, 14, 8).into_iter().map(Ok), &mut uf, None).unwrap();
        assert_eq!(uf.find(2), 0);
        assert_eq!(uf.find(1), 1);
        assert!(stats.candidate_pairs >= 1);
    }

    #[test]
    fn check_can_refuse() {
        let sig = vec![1u64; 16];
        let entries = index(&[sig.clone(), sig.clone(), sig], 2, 8);
        let mut uf = UnionFind::new();
        let mut refuse_0_2 = |a: u64, b: u64| Ok(!(a == 0 && b == 2));
        let stats = cluster(entries.into_iter().map(Ok), &mut uf, Some(&mut refuse_0_2)).unwrap();
        // 2 is refused against 0 but accepted against 1, which joined 0.
        assert_eq!(uf.find(2), 0);
        assert!(stats.rejected_pairs >= 1);
    }
}
