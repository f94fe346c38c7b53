//! MinHash signatures of word n-gram shingles.
//!
//! **Shingles.** The text is normalised into words ([`hash_forms::words`]: lower-case,
//! punctuation and whitespace folded, numbers to `0`); each run of `ngram` consecutive words,
//! joined by single spaces, is hashed with xxh64 (seed 0) into a 64-bit shingle. A text with
//! fewer than `ngram` words has no shingles and no signature, so it is never a near-duplicate
//! (datatrove does the same; exact dedup still sees it).
//!
//! **Hash family.** Permutation `i` maps a shingle `x` to
//! `h_i(x) = ((a_i * x + b_i) mod 2^64) mod p` with `p = 2^61 - 1` (a Mersenne prime), the
//! multiply-add-mod-prime family of Carter and Wegman as datasketch and datatrove compute it
//! in 64-bit integer arithmetic (the product wraps before the reduction). The signature holds,
//! for each permutation, the minimum over the text's shingles; values lie in `[0, p)`.
//! Parameters come from SplitMix64 seeded with `seed`: for each `i` in order,
//! `a_i = 1 + next() mod (p - 1)` then `b_i = next() mod p`. They can also be given
//! explicitly, which is how tests reproduce datatrove's signatures bit for bit (datatrove
//! draws them from numpy's `RandomState(seed)`).
//!
//! **Cost.** Each shingle costs one xxh64 and `bands * rows` multiply-add-reduce steps; the
//! reduction mod 2^61 - 1 is a mask, a shift and an add, no division. See
//! [`signature_kernel`] for the loop order.

use super::hash_forms::{words, Words};
use super::{DedupError, Result};
use xxhash_rust::xxh64::xxh64;

/// The Mersenne prime 2^61 - 1: every signature value is below it.
pub const MERSENNE_61: u64 = (1 << 61) - 1;

/// `x mod (2^61 - 1)` for any 64-bit `x`, without a division.
#[inline(always)]
pub fn mod_mersenne61(x: u64) -> u64 {
    let y = (x & MERSENNE_61) + (x >> 61);
    if y >= MERSENNE_61 {
        y - MERSENNE_61
    } else {
        y
    }
}

/// SplitMix64: a small, well-mixed generator used to draw the permutation parameters.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Computes MinHash signatures with a fixed set of permutations.
#[derive(Debug, Clone)]
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
    ngram: usize,
    fold_numbers: bool,
}

impl MinHasher {
    /// `num_perm` permutations drawn from `seed` (see the module docs).
    ///
    /// ```
    /// use gristmill::dedup::minhash::MinHasher;
    /// let mh = MinHasher::new(112, 5, 1, true);
    /// let a = mh.signature("the quick brown fox jumps over the lazy dog").unwrap();
    /// assert_eq!(a.len(), 112);
    /// assert!(mh.signature("too short").is_none());
    /// ```
    pub fn new(num_perm: usize, ngram: usize, seed: u64, fold_numbers: bool) -> Self {
        let mut state = seed;
        let mut a = Vec::with_capacity(num_perm);
        let mut b = Vec::with_capacity(num_perm);
        for _ in 0..num_perm {
            a.push(1 + splitmix64(&mut state) % (MERSENNE_61 - 1));
            b.push(splitmix64(&mut state) % MERSENNE_61);
        }
        MinHasher {
            a,
            b,
            ngram,
            fold_numbers,
        }
    }

    /// Permutations with the given parameters.
    pub fn with_params(a: Vec<u64>, b: Vec<u64>, ngram: usize, fold_numbers: bool) -> Result<Self> {
        if a.len() != b.len() || a.is_empty() {
            return Err(DedupError::Config(format!(
                "permutation parameters a and b must be non-empty and equally long (found {} and {})",
                a.len(),
                b.len()
            )));
        }
        Ok(MinHasher {
            a,
            b,
            ngram,
            fold_numbers,
        })
    }

    /// From a dedup configuration.
    pub fn from_config(c: &super::DedupConfig) -> Result<Self> {
        match &c.permutations {
            Some((a, b)) => MinHasher::with_params(a.clone(), b.clone(), c.ngram, c.fold_numbers),
            None => Ok(MinHasher::new(
                c.num_perm(),
                c.ngram,
                c.seed,
                c.fold_numbers,
            )),
        }
    }

    pub fn num_perm(&self) -> usize {
        self.a.len()
    }

    pub fn params(&self) -> (&[u64], &[u64]) {
        (&self.a, &self.b)
    }

    /// The normalised words of `text`.
    pub fn words(&self, text: &str) -> Words {
        words(text, self.fold_numbers)
    }

    /// The shingle hashes of `text`, in text order (repeats included).
    pub fn shingles(&self, text: &str) -> Vec<u64> {
        shingles_of(&self.words(text), self.ngram)
    }

    /// The signature of `text`, or `None` when it has fewer than `ngram` words.
    pub fn signature(&self, text: &str) -> Option<Vec<u64>> {
        self.signature_of(&self.shingles(text))
    }

    /// The signature of a set of shingle hashes, or `None` when it is empty.
    pub fn signature_of(&self, shingles: &[u64]) -> Option<Vec<u64>> {
        if shingles.is_empty() {
            return None;
        }
        let mut sig = vec![0u64; self.a.len()];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU was just checked to have AVX2.
            unsafe { signature_avx2(shingles, &self.a, &self.b, &mut sig) };
            return Some(sig);
        }
        signature_kernel(shingles, &self.a, &self.b, &mut sig);
        Some(sig)
    }
}

/// `out[i] = min over x of h_i(x)`. Permutations outside, shingles inside: the inner loop is a
/// min-reduction with `a_i`, `b_i` held in registers, which the compiler vectorises (four
/// shingles at a time with AVX2); the other order keeps reloading and storing the signature.
#[inline(always)]
fn signature_kernel(shingles: &[u64], a: &[u64], b: &[u64], out: &mut [u64]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = shingles
            .iter()
            .map(|&x| mod_mersenne61(a.wrapping_mul(x).wrapping_add(b)))
            .fold(u64::MAX, u64::min);
    }
}

/// [`signature_kernel`] compiled for AVX2, chosen at run time: the wheel targets baseline
/// x86-64, where 64-bit lanes are only two wide. About twice as fast where available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn signature_avx2(shingles: &[u64], a: &[u64], b: &[u64], out: &mut [u64]) {
    signature_kernel(shingles, a, b, out)
}

/// The xxh64 hashes of each run of `n` consecutive words.
pub fn shingles_of(w: &Words, n: usize) -> Vec<u64> {
    if n == 0 || w.len() < n {
        return Vec::new();
    }
    (0..=w.len() - n)
        .map(|i| xxh64(w.run(i, n).as_bytes(), 0))
        .collect()
}

/// The Jaccard similarity estimated from two signatures: the fraction of equal positions.
pub fn estimated_jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mersenne_reduction_matches_remainder() {
        for x in [
            0,
            1,
            MERSENNE_61 - 1,
            MERSENNE_61,
            MERSENNE_61 + 1,
            u64::MAX,
            1 << 63,
        ] {
            assert_eq!(mod_mersenne61(x), x % MERSENNE_61, "{x}");
        }
    }

    proptest! {
        #[test]
        fn reduction_is_remainder(x in any::<u64>()) {
            prop_assert_eq!(mod_mersenne61(x), x % MERSENNE_61);
        }
    }

    #[test]
    fn shingles_follow_normalised_words() {
        let mh = MinHasher::new(4, 2, 1, true);
        assert_eq!(mh.shingles("A b, C"), mh.shingles("a  B c!"));
        assert_eq!(
            mh.shingles("a b c"),
            vec![xxh64(b"a b", 0), xxh64(b"b c", 0)]
        );
        assert!(mh.shingles("one").is_empty());
    }

    #[test]
    fn parameters_are_seeded_and_in_range() {
        let m1 = MinHasher::new(112, 5, 7, true);
        let m2 = MinHasher::new(112, 5, 7, true);
        let m3 = MinHasher::new(112, 5, 8, true);
        assert_eq!(m1.params(), m2.params());
        assert_ne!(m1.params().0, m3.params().0);
        assert!(m1.params().0.iter().all(|&a| (1..MERSENNE_61).contains(&a)));
        assert!(m1.params().1.iter().all(|&b| b < MERSENNE_61));
    }

    #[test]
    fn signature_is_elementwise_min_and_estimates_jaccard() {
        let mh = MinHasher::new(256, 1, 3, false);
        // Word sets of 100 with 50 in common: Jaccard 50 / 150 = 1/3.
        let a: String = (0..100).map(|i| format!("w{i} ")).collect();
        let b: String = (50..150).map(|i| format!("w{i} ")).collect();
        let (sa, sb) = (mh.signature(&a).unwrap(), mh.signature(&b).unwrap());
        let j = estimated_jaccard(&sa, &sb);
        assert!((j - 1.0 / 3.0).abs() < 0.1, "{j}");
        assert_eq!(estimated_jaccard(&sa, &sa), 1.0);
        assert!(sa.iter().all(|&v| v < MERSENNE_61));
    }

    #[test]
    fn explicit_params_are_checked() {
        assert!(MinHasher::with_params(vec![1, 2], vec![3], 5, true).is_err());
    }
}
