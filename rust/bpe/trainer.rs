//! Learning byte-level BPE merges from chunk counts: the second half of training.
//!
//! The algorithm (Sennrich et al.; GPT-2's byte-level variant):
//!
//! 1. Every distinct chunk (from `ChunkCounter`) starts as its sequence of bytes, tokens 0..=255.
//! 2. Count every adjacent pair of tokens in every chunk, weighted by the chunk's count
//!    (overlapping pairs count: `aaa` holds `(a, a)` twice).
//! 3. Take the most frequent pair. **Ties go to the lexicographically greatest pair of byte
//!    strings**, comparing the left tokens' bytes first, then the right tokens' bytes (as in
//!    Stanford CS336's assignment; Python's `max((count, (left, right)))` over `bytes`).
//! 4. The pair's concatenated bytes become the next token id (ids 256, 257, ... in merge order);
//!    every occurrence in every chunk is replaced, scanning each chunk left to right and taking
//!    non-overlapping occurrences (`aaa` becomes `aa a`).
//! 5. Repeat from 2 until the vocabulary has the requested size, no pair is left, or the best
//!    pair occurs fewer than `min_frequency` times.
//!
//! A merge whose bytes are already a token (two different splits of the same string, which
//! is rare) reuses that token's id rather than adding a second id for the same bytes, so ids
//! stay a bijection with byte strings as tiktoken's rank files require; it still counts as a
//! merge but not towards the vocabulary size.
//!
//! Only step 2 is done from scratch. Afterwards, an index from each pair to the chunks that may
//! contain it means a merge only visits those chunks, and only the pairs next to each
//! occurrence change count (`merge_word`). The most frequent pair comes from a max-heap that is
//! updated lazily: an entry is pushed when a pair is created or its count grows, and a popped
//! entry whose count is stale is pushed back with the current count (counts only shrink
//! otherwise, so the real maximum is never passed over). Chunks are stored as one flat `u32`
//! array with per-chunk offsets: a merge rewrites a chunk in place, shrinking it.

use super::BpeError;
use super::Rank;
use crate::cache::prefetch;
use crate::parallel;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

/// The largest vocabulary the trainer accepts (ids must stay clear of `Rank::MAX`).
pub const MAX_VOCAB: usize = 1 << 30;

/// Two token ids packed as `left << 32 | right`.
type Pair = u64;

#[inline(always)]
fn pair(a: Rank, b: Rank) -> Pair {
    ((a as u64) << 32) | b as u64
}

#[inline(always)]
fn unpair(p: Pair) -> (Rank, Rank) {
    ((p >> 32) as Rank, p as Rank)
}

/// One learned merge: `left` and `right` joined into `id`, which occurred `count` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merge {
    pub left: Rank,
    pub right: Rank,
    pub id: Rank,
    pub count: u64,
}

/// BPE training state: feed it chunk counts, call `step` until `is_done`, read the result.
///
/// ```
/// use gristmill::bpe::Trainer;
/// let mut t = Trainer::new(vec![(b"aaabdaaabac".to_vec().into(), 1)], 256 + 3, 1).unwrap();
/// t.step(usize::MAX);
/// let merged: Vec<&[u8]> = t.merges().iter().map(|m| t.token_bytes(m.id)).collect();
/// assert_eq!(merged, [&b"aa"[..], b"aaa", b"aaab"]);
/// ```
pub struct Trainer {
    target_tokens: usize,
    min_frequency: u64,
    /// Bytes of each token id; `ids` maps the multi-byte ones back.
    tokens: Tokens,
    ids: FxHashMap<Box<[u8]>, Rank>,
    merges: Vec<Merge>,
    /// The symbols of every chunk, back to back (each chunk shrinks in place).
    symbols: Vec<Rank>,
    words: Vec<Word>,
    /// Current count of every pair present (absent means zero).
    counts: FxHashMap<Pair, u64>,
    /// Chunks that may hold each pair (a superset: entries go stale, never missing).
    index: FxHashMap<Pair, Vec<u32>>,
    heap: PairHeap,
    /// Pairs whose count grew during the current merge (they need fresh heap entries).
    grown: Vec<Pair>,
    done: bool,
}

impl Trainer {
    /// Prepares training on `chunks` (distinct byte strings and their counts) towards
    /// `target_tokens` mergeable tokens (256 bytes + merges), merging only pairs that occur at
    /// least `min_frequency` times.
    ///
    /// Errors: `target_tokens` below 256 or above `MAX_VOCAB`.
    pub fn new(
        chunks: Vec<(Box<[u8]>, u64)>,
        target_tokens: usize,
        min_frequency: u64,
    ) -> Result<Trainer, BpeError> {
        if !(256..=MAX_VOCAB).contains(&target_tokens) {
            return Err(BpeError::Settings(format!(
                "the vocabulary needs room for the 256 byte tokens and at most {MAX_VOCAB} \
                 tokens in all; asked for {target_tokens} mergeable tokens"
            )));
        }
        let mut symbols = Vec::new();
        let mut words = Vec::new();
        // Chunks of one byte hold no pair: they can never change, so they are left out.
        for (bytes, count) in chunks.iter().filter(|(b, c)| b.len() >= 2 && *c > 0) {
            let len = u32::try_from(bytes.len()).map_err(|_| {
                BpeError::Settings(format!(
                    "a chunk of {} bytes is too long (max 4 GiB)",
                    bytes.len()
                ))
            })?;
            words.push(Word {
                start: symbols.len(),
                len,
                weight: *count,
            });
            symbols.extend(bytes.iter().map(|&b| b as Rank));
        }
        if words.len() > u32::MAX as usize {
            return Err(BpeError::Settings(format!(
                "{} distinct chunks are more than the trainer can index (2^32)",
                words.len()
            )));
        }
        drop(chunks);
        let (counts, index) = count_pairs(&symbols, &words);
        let mut tokens = Tokens::default();
        for b in 0..=255u8 {
            tokens.push(Box::from([b]));
        }
        let heap = PairHeap::from_vec(counts.iter().map(|(&p, &c)| (c, p)).collect(), &tokens);
        Ok(Trainer {
            target_tokens,
            min_frequency: min_frequency.max(1),
            tokens,
            ids: FxHashMap::default(),
            merges: Vec::new(),
            symbols,
            words,
            counts,
            index,
            heap,
            grown: Vec::new(),
            done: false,
        })
    }

    /// Does up to `max_merges` merges; returns how many were done (fewer only once done).
    pub fn step(&mut self, max_merges: usize) -> usize {
        let mut n = 0;
        while n < max_merges && !self.done {
            if self.tokens.len() >= self.target_tokens {
                self.done = true;
                break;
            }
            let Some((count, p)) = self.heap.pop(&self.tokens) else {
                self.done = true;
                break;
            };
            let current = self.counts.get(&p).copied().unwrap_or(0);
            if current != count {
                // A stale entry. Lower counts get a fresh entry; a higher count already has one.
                if current > 0 && current < count {
                    self.heap.push((current, p), &self.tokens);
                }
                continue;
            }
            if count < self.min_frequency {
                self.done = true;
                break;
            }
            self.merge(p, count);
            n += 1;
        }
        n
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The merges so far, in order.
    pub fn merges(&self) -> &[Merge] {
        &self.merges
    }

    /// Mergeable tokens so far (256 + merges that made new bytes).
    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn target_tokens(&self) -> usize {
        self.target_tokens
    }

    /// Distinct chunks of two or more bytes being merged.
    pub fn n_words(&self) -> usize {
        self.words.len()
    }

    pub fn token_bytes(&self, id: Rank) -> &[u8] {
        &self.tokens.bytes[id as usize]
    }

    /// `(bytes, id)` of every token, in id order: what `Encoder::new` takes as mergeable ranks.
    pub fn ranks(&self) -> Vec<(Vec<u8>, Rank)> {
        self.tokens
            .bytes
            .iter()
            .enumerate()
            .map(|(id, b)| (b.to_vec(), id as Rank))
            .collect()
    }

    fn merge(&mut self, p: Pair, count: u64) {
        let (a, b) = unpair(p);
        let mut bytes = self.token_bytes(a).to_vec();
        bytes.extend_from_slice(self.token_bytes(b));
        let x = match self.ids.get(bytes.as_slice()) {
            Some(&id) => id,
            None => {
                let id = self.tokens.len() as Rank;
                let bytes: Box<[u8]> = bytes.into();
                self.tokens.push(bytes.clone());
                self.ids.insert(bytes, id);
                id
            }
        };
        self.merges.push(Merge {
            left: a,
            right: b,
            id: x,
            count,
        });
        let mut words = self.index.remove(&p).unwrap_or_default();
        words.sort_unstable();
        words.dedup();
        let mut ctx = MergeCtx {
            counts: &mut self.counts,
            index: &mut self.index,
            grown: &mut self.grown,
        };
        for (k, &w) in words.iter().enumerate() {
            // The chunks are scattered in memory: fetch ahead (headers further than symbols,
            // whose address comes from the header).
            if let Some(&ahead) = words.get(k + 8) {
                prefetch(&self.words[ahead as usize]);
            }
            if let Some(&ahead) = words.get(k + 4) {
                prefetch(&self.symbols[self.words[ahead as usize].start]);
            }
            let word = &mut self.words[w as usize];
            let symbols = &mut self.symbols[word.start..word.start + word.len as usize];
            word.len = ctx.merge_word(symbols, w, word.weight, a, b, x) as u32;
        }
        debug_assert!(!self.counts.contains_key(&p), "a merged pair is gone");
        self.grown.sort_unstable();
        self.grown.dedup();
        for &q in &self.grown {
            if let Some(&c) = self.counts.get(&q) {
                self.heap.push((c, q), &self.tokens);
            }
        }
        self.grown.clear();
    }
}

/// Where a chunk's symbols are, and how often the chunk occurs.
#[derive(Clone, Copy, Debug)]
struct Word {
    start: usize,
    len: u32,
    weight: u64,
}

/// The maps a merge updates, borrowed apart from the chunk storage.
struct MergeCtx<'a> {
    counts: &'a mut FxHashMap<Pair, u64>,
    index: &'a mut FxHashMap<Pair, Vec<u32>>,
    grown: &'a mut Vec<Pair>,
}

impl MergeCtx<'_> {
    #[inline]
    fn sub(&mut self, p: Pair, weight: u64) {
        let c = self
            .counts
            .get_mut(&p)
            .expect("a pair in a chunk is counted");
        *c -= weight;
        if *c == 0 {
            self.counts.remove(&p);
            self.index.remove(&p);
        }
    }

    #[inline]
    fn add(&mut self, p: Pair, weight: u64, w: u32) {
        *self.counts.entry(p).or_insert(0) += weight;
        let list = self.index.entry(p).or_default();
        if list.last() != Some(&w) {
            list.push(w);
        }
        self.grown.push(p);
    }

    /// Replaces each occurrence of `(a, b)` in `word` (chunk `w`, seen `weight` times) with
    /// `x`, left to right, and updates the counts of the pairs around each occurrence.
    /// Returns the new length (the word shrinks in place).
    ///
    /// For an occurrence at `i` the pairs `(word[i-1], a)`, `(a, b)` and `(b, word[i+2])` go and
    /// `(out[j-1], x)` and `(x, word[i+2])` come. Where two occurrences touch (`abab`, or `aaaa`
    /// when `a == b`) the pair between them is removed once, by the first, and the pair of the
    /// two new tokens is added once, by the second.
    fn merge_word(
        &mut self,
        word: &mut [Rank],
        w: u32,
        weight: u64,
        a: Rank,
        b: Rank,
        x: Rank,
    ) -> usize {
        let n = word.len();
        let (mut i, mut j) = (0, 0);
        let mut last_merged = false;
        while i < n {
            if i + 1 < n && word[i] == a && word[i + 1] == b {
                self.sub(pair(a, b), weight);
                if j > 0 {
                    // word[j - 1] is the previous output: the old symbol when it was copied.
                    let left = word[j - 1];
                    if !last_merged {
                        self.sub(pair(left, a), weight);
                    }
                    self.add(pair(left, x), weight, w);
                }
                if i + 2 < n {
                    let right = word[i + 2];
                    self.sub(pair(b, right), weight);
                    let next_merges = right == a && i + 3 < n && word[i + 3] == b;
                    if !next_merges {
                        self.add(pair(x, right), weight, w);
                    }
                }
                word[j] = x;
                i += 2;
                last_merged = true;
            } else {
                word[j] = word[i];
                i += 1;
                last_merged = false;
            }
            j += 1;
        }
        j
    }
}

/// Pair counts and the pair-to-chunks index of all chunks, counted in parallel.
fn count_pairs(
    symbols: &[Rank],
    words: &[Word],
) -> (FxHashMap<Pair, u64>, FxHashMap<Pair, Vec<u32>>) {
    type Maps = (FxHashMap<Pair, u64>, FxHashMap<Pair, Vec<u32>>);
    let n_words = words.len();
    let n_parts = (parallel::num_threads() * 4).max(1);
    let per_part = n_words.div_ceil(n_parts).max(1);
    let parts: Vec<Maps> = parallel::install(|| {
        (0..n_words)
            .step_by(per_part)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|lo| {
                let mut counts: FxHashMap<Pair, u64> = FxHashMap::default();
                let mut index: FxHashMap<Pair, Vec<u32>> = FxHashMap::default();
                for (w, word) in words
                    .iter()
                    .enumerate()
                    .take((lo + per_part).min(n_words))
                    .skip(lo)
                {
                    let chunk = &symbols[word.start..word.start + word.len as usize];
                    for win in chunk.windows(2) {
                        let p = pair(win[0], win[1]);
                        *counts.entry(p).or_insert(0) += word.weight;
                        let list = index.entry(p).or_default();
                        if list.last() != Some(&(w as u32)) {
                            list.push(w as u32);
                        }
                    }
                }
                (counts, index)
            })
            .collect()
    });
    let mut parts = parts.into_iter();
    let (mut counts, mut index) = parts.next().unwrap_or_default();
    for (c, ix) in parts {
        for (p, n) in c {
            *counts.entry(p).or_insert(0) += n;
        }
        for (p, list) in ix {
            index.entry(p).or_default().extend(list);
        }
    }
    (counts, index)
}

/// The bytes of each token, and their first 8 bytes as a big-endian number (zero-padded):
/// when two tokens' prefixes differ they order like their bytes, so most tie-breaks between
/// equally frequent pairs need no `memcmp`.
#[derive(Default)]
struct Tokens {
    bytes: Vec<Box<[u8]>>,
    prefix: Vec<u64>,
}

impl Tokens {
    fn push(&mut self, bytes: Box<[u8]>) {
        let mut head = [0u8; 8];
        let n = bytes.len().min(8);
        head[..n].copy_from_slice(&bytes[..n]);
        self.prefix.push(u64::from_be_bytes(head));
        self.bytes.push(bytes);
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    #[inline]
    fn cmp(&self, x: Rank, y: Rank) -> std::cmp::Ordering {
        if x == y {
            return std::cmp::Ordering::Equal;
        }
        let (x, y) = (x as usize, y as usize);
        self.prefix[x]
            .cmp(&self.prefix[y])
            .then_with(|| self.bytes[x].cmp(&self.bytes[y]))
    }
}

/// A max-heap of `(count, pair)` ordered by count, then by the pair's bytes (greater first).
/// It needs the token table to compare, so it is not a `std` `BinaryHeap`.
struct PairHeap {
    items: Vec<(u64, Pair)>,
}

#[inline]
fn above(x: (u64, Pair), y: (u64, Pair), tokens: &Tokens) -> bool {
    if x.0 != y.0 {
        return x.0 > y.0;
    }
    let ((xa, xb), (ya, yb)) = (unpair(x.1), unpair(y.1));
    tokens.cmp(xa, ya).then_with(|| tokens.cmp(xb, yb)).is_gt()
}

impl PairHeap {
    fn from_vec(items: Vec<(u64, Pair)>, tokens: &Tokens) -> PairHeap {
        let mut h = PairHeap { items };
        for i in (0..h.items.len() / 2).rev() {
            h.sift_down(i, tokens);
        }
        h
    }

    fn push(&mut self, item: (u64, Pair), tokens: &Tokens) {
        self.items.push(item);
        let mut i = self.items.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if !above(self.items[i], self.items[parent], tokens) {
                break;
            }
            self.items.swap(i, parent);
            i = parent;
        }
    }

    fn pop(&mut self, tokens: &Tokens) -> Option<(u64, Pair)> {
        let last = self.items.pop()?;
        if self.items.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut self.items[0], last);
        self.sift_down(0, tokens);
        Some(top)
    }

    fn sift_down(&mut self, mut i: usize, tokens: &Tokens) {
        let n = self.items.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut best = i;
            if l < n && above(self.items[l], self.items[best], tokens) {
                best = l;
            }
            if r < n && above(self.items[r], self.items[best], tokens) {
                best = r;
            }
            if best == i {
                return;
            }
            self.items.swap(i, best);
            i = best;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The algorithm exactly as the module docs state it, recounting every pair each step.
    fn naive(
        chunks: &[(Vec<u8>, u64)],
        target: usize,
        min_frequency: u64,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut words: Vec<(Vec<Vec<u8>>, u64)> = chunks
            .iter()
            .map(|(b, c)| (b.iter().map(|&x| vec![x]).collect(), *c))
            .collect();
        let mut vocab: std::collections::HashSet<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut merges = Vec::new();
        while vocab.len() < target {
            let mut pairs: BTreeMap<(Vec<u8>, Vec<u8>), u64> = BTreeMap::new();
            for (w, c) in &words {
                for win in w.windows(2) {
                    *pairs.entry((win[0].clone(), win[1].clone())).or_default() += c;
                }
            }
            // Max by count; BTreeMap iterates pairs in increasing order, so `>=` keeps the
            // greatest pair among equal counts.
            let mut best: Option<(&crate::bpe::vocab::Merge, u64)> = None;
            for (p, &c) in &pairs {
                if best.is_none_or(|(_, bc)| c >= bc) {
                    best = Some((p, c));
                }
            }
            let Some((p, c)) = best else { break };
            if c < min_frequency.max(1) {
                break;
            }
            let (l, r) = p.clone();
            let joined = [l.as_slice(), r.as_slice()].concat();
            for (w, _) in words.iter_mut() {
                let mut out = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == l && w[i + 1] == r {
                        out.push(joined.clone());
                        i += 2;
                    } else {
                        out.push(w[i].clone());
                        i += 1;
                    }
                }
                *w = out;
            }
            vocab.insert(joined);
            merges.push((l, r));
        }
        merges
    }

    fn fast(
        chunks: &[(Vec<u8>, u64)],
        target: usize,
        min_frequency: u64,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let input = chunks
            .iter()
            .map(|(b, c)| (b.clone().into_boxed_slice(), *c))
            .collect();
        let mut t = Trainer::new(input, target, min_frequency).unwrap();
        // Small steps, so stopping and resuming is exercised too.
        while t.step(3) > 0 {}
        assert!(t.is_done());
        let merges: Vec<_> = t
            .merges()
            .iter()
            .map(|m| {
                (
                    t.token_bytes(m.left).to_vec(),
                    t.token_bytes(m.right).to_vec(),
                )
            })
            .collect();
        // Pair counts match a recount from scratch at the end.
        let mut recount: FxHashMap<Pair, u64> = FxHashMap::default();
        for word in &t.words {
            for win in t.symbols[word.start..word.start + word.len as usize].windows(2) {
                *recount.entry(pair(win[0], win[1])).or_default() += word.weight;
            }
        }
        assert_eq!(recount, t.counts);
        merges
    }

    #[test]
    fn classic_example() {
        let chunks = vec![(b"aaabdaaabac".to_vec(), 1)];
        let merges = fast(&chunks, 259, 1);
        let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), b"a".to_vec()),
            (b"aa".to_vec(), b"a".to_vec()),
            (b"aaa".to_vec(), b"b".to_vec()),
        ];
        assert_eq!(merges, expected);
        assert_eq!(naive(&chunks, 259, 1), expected);
    }

    #[test]
    fn ties_go_to_the_greatest_byte_pair() {
        // (a,b), (c,d) and (x,y) all occur twice: (x, y) is greatest, then (c, d).
        let chunks = vec![
            (b"ab".to_vec(), 2),
            (b"cd".to_vec(), 2),
            (b"xy".to_vec(), 2),
        ];
        let merges = fast(&chunks, 258, 1);
        assert_eq!(
            merges,
            vec![
                (b"x".to_vec(), b"y".to_vec()),
                (b"c".to_vec(), b"d".to_vec())
            ]
        );
    }

    #[test]
    fn stops_at_min_frequency_and_when_pairs_run_out() {
        let chunks = vec![(b"abab".to_vec(), 1), (b"cd".to_vec(), 1)];
        // (a,b) occurs twice; after it nothing reaches 2.
        assert_eq!(fast(&chunks, 1000, 2).len(), 1);
        assert_eq!(fast(&chunks, 1000, 1).len(), naive(&chunks, 1000, 1).len());
        let e = Trainer::new(Vec::new(), 255, 1).err().unwrap();
        assert!(e.to_string().contains("256"), "{e}");
    }

    #[test]
    fn runs_of_one_byte() {
        for n in 1..12 {
            let chunks = vec![
                (vec![b'a'; n], 3),
                (b"aab".to_vec(), 1),
                (b"baaa".to_vec(), 2),
            ];
            assert_eq!(fast(&chunks, 270, 1), naive(&chunks, 270, 1), "n={n}");
        }
    }

    proptest! {
        #[test]
        fn token_order_is_byte_order(
            x in proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(b'a'), Just(255)], 1..12),
            y in proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(b'a'), Just(255)], 1..12),
        ) {
            let mut t = Tokens::default();
            t.push(x.clone().into());
            t.push(y.clone().into());
            prop_assert_eq!(t.cmp(0, 1), x.cmp(&y));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn matches_the_naive_definition(
            chunks in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), Just(0xe2u8)], 1..12), 1u64..5),
                1..25,
            ),
            extra in 0usize..40,
            min_frequency in 1u64..3,
        ) {
            let mut merged: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            for (b, c) in chunks {
                *merged.entry(b).or_default() += c;
            }
            let chunks: Vec<_> = merged.into_iter().collect();
            prop_assert_eq!(fast(&chunks, 256 + extra, min_frequency), naive(&chunks, 256 + extra, min_frequency));
        }
    }
}
