//! The encoder: text to token ids and back, with tiktoken's semantics.
//!
//! Ordinary text is split by the pre-tokenizer; each piece that is itself a token costs one
//! hash lookup, any other piece is merged by rank (`merge.rs`). Special tokens are found with
//! Aho-Corasick and only honoured where the caller allows them, as in tiktoken.

use super::hugepages::HugeSlice;
use super::merge::merge_boundaries;
use super::tokenmap::{self, pack, Key};
use super::{BpeError, Pattern, Rank, RankMap};
use crate::parallel;
use aho_corasick::{AhoCorasick, Input, MatchKind};
use rayon::prelude::*;
use rustc_hash::FxHashSet;

/// The tokens of recent pieces, per thread, in three levels.
///
/// First, for pieces of 2-7 bytes that are single tokens, the hot table (`HOT_BITS`), small
/// enough to stay in a core's L2 cache. Then the front, which holds every recent piece: a
/// two-way set-associative table of packed pieces (up to `MAX_PACKED` bytes) and their tokens,
/// larger, in the L3 cache or nearer. Text is Zipf-distributed, so most pieces are found in
/// one of them with one load, where the vocabulary's table (16 MB for o200k's 200k tokens)
/// costs a cache miss per lookup. A new piece takes the least recently used slot of its set
/// in the front (the hot table's own rule is at [`HotSet`]).
///
/// Behind it, pieces that are not themselves tokens keep their merged tokens in ordinary maps:
/// rare words recur (names, technical terms), and merging costs tens of lookups. The tokens of
/// all merged pieces sit in one array.
///
/// The cache belongs to one encoder at a time (`owner`). Emptying it (on a change of owner, or
/// when it holds `MERGE_CACHE_ENTRIES` merged pieces or `MERGE_CACHE_TOKENS` tokens) clears the
/// maps and moves to a new `generation`: hot and front slots of an older generation are empty.
struct PieceCache {
    owner: u64,
    generation: u32,
    hot: HugeSlice<HotSet>,
    front: HugeSlice<FrontSet>,
    short: rustc_hash::FxHashMap<Key, (u32, u32)>,
    long: rustc_hash::FxHashMap<Box<[u8]>, (u32, u32)>,
    tokens: Vec<Rank>,
}

/// The capacity a text's token vector starts with: a third of its bytes. With o200k, 38% of
/// the benchmark's documents have fewer than four bytes per token, and growing the vector from
/// a quarter cost 2-5% (measured).
fn token_capacity(text: &str) -> usize {
    text.len() / 3 + 1
}

/// A piece's key and its tokens: the single token `start` when `len` is 0, else
/// `tokens[start..start + len]` of the cache. Aligned so that a slot is in one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct FrontSlot {
    key: Key,
    generation: u32,
    start: u32,
    len: u32,
}

/// Two slots, one cache line: the most recently used first.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct FrontSet([FrontSlot; 2]);

/// Front sets: 32768 of 64 bytes (2 MiB, one huge page). On the benchmark corpus (450k pieces,
/// 32k distinct) 16384 sets (1 MiB) missed about 5% of pieces, against 11% for 16384 single
/// slots; twice that measured 4-7% faster with o200k's large vocabulary, though it no longer
/// fits in a core's L2 cache on most machines: a miss reads the vocabulary's table.
const FRONT_BITS: u32 = 15;

/// The rank of a piece of 2-7 bytes that is a single token: two pieces in three in English
/// text. Sixteen-byte slots, four to a cache line, so that the slots of the pieces that recur
/// take few lines.
#[derive(Clone, Copy)]
#[repr(C)]
struct HotSlot {
    key: u64,
    rank: Rank,
    generation: u32,
}

/// Four slots, one cache line; a hit moves its slot one place towards the first, a new piece
/// takes the first empty slot or the last, so pieces that keep recurring stay.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct HotSet([HotSlot; 4]);

/// Hot sets: 4096 of 64 bytes (256 KiB), which stays in a core's L2 cache beside the rest of
/// the encoder's working set. On the benchmark corpus (318k pieces of 2-7 bytes, 21k
/// distinct) it holds the piece 98% of the time; the front, eight times larger, spills
/// into the L3 cache, where a read costs several times more.
const HOT_BITS: u32 = 12;
const MERGE_CACHE_ENTRIES: usize = 1 << 17;
const MERGE_CACHE_TOKENS: usize = 1 << 21;

impl PieceCache {
    fn new() -> PieceCache {
        PieceCache {
            owner: u64::MAX,
            generation: 1,
            hot: HugeSlice::default(),
            front: HugeSlice::default(),
            short: Default::default(),
            long: Default::default(),
            tokens: Vec::new(),
        }
    }

    fn belong_to(&mut self, owner: u64) {
        if self.front.is_empty() {
            let empty = FrontSlot {
                key: 0,
                generation: 0,
                start: 0,
                len: 0,
            };
            self.front = HugeSlice::filled(1 << FRONT_BITS, FrontSet([empty; 2]));
            let empty = HotSlot {
                key: 0,
                rank: 0,
                generation: 0,
            };
            self.hot = HugeSlice::filled(1 << HOT_BITS, HotSet([empty; 4]));
        }
        if self.owner != owner {
            self.clear();
            self.owner = owner;
        }
    }

    fn clear(&mut self) {
        self.short.clear();
        self.long.clear();
        self.tokens.clear();
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // After 2^32 clears: empty every slot for real, once.
            for set in self.front.iter_mut() {
                set.0.iter_mut().for_each(|s| s.generation = 0);
            }
            for set in self.hot.iter_mut() {
                set.0.iter_mut().for_each(|s| s.generation = 0);
            }
            self.generation = 1;
        }
    }

    /// The front set of a key of hash `hash` ([`tokenmap::hash`]).
    #[inline(always)]
    fn slot(hash: u64) -> usize {
        (hash >> (64 - FRONT_BITS)) as usize
    }

    /// The hot set of a key of hash `hash`.
    #[inline(always)]
    fn hot_set(hash: u64) -> usize {
        (hash >> (64 - HOT_BITS)) as usize
    }

    /// The rank of the short piece `key` if set `set` of the hot table holds it.
    #[inline(always)]
    fn hot_get(&mut self, set: usize, key: u64) -> Option<Rank> {
        let g = self.generation;
        let ways = &mut self.hot[set].0;
        if ways[0].key == key && ways[0].generation == g {
            return Some(ways[0].rank);
        }
        for i in 1..4 {
            if ways[i].key == key && ways[i].generation == g {
                let rank = ways[i].rank;
                ways.swap(i - 1, i);
                return Some(rank);
            }
        }
        None
    }

    fn set_hot(&mut self, set: usize, key: u64, rank: Rank) {
        let generation = self.generation;
        let ways = &mut self.hot[set].0;
        let free = ways.iter().position(|s| s.generation != generation);
        ways[free.unwrap_or(3)] = HotSlot {
            key,
            rank,
            generation,
        };
    }

    /// The tokens of `key` in set `set` of the front, as `(start, len)`; a hit in the second
    /// slot moves it first.
    #[inline(always)]
    fn front_get(&mut self, set: usize, key: Key) -> Option<(u32, u32)> {
        let g = self.generation;
        let ways = &mut self.front[set].0;
        if ways[0].key == key && ways[0].generation == g {
            return Some((ways[0].start, ways[0].len));
        }
        if ways[1].key == key && ways[1].generation == g {
            ways.swap(0, 1);
            return Some((ways[0].start, ways[0].len));
        }
        None
    }

    /// Puts `key` first in its front set, the other slot keeping the one that was first.
    #[inline(always)]
    fn set_front(&mut self, set: usize, key: Key, (start, len): (u32, u32)) {
        let ways = &mut self.front[set].0;
        ways[1] = ways[0];
        ways[0] = FrontSlot {
            key,
            generation: self.generation,
            start,
            len,
        };
    }

    #[inline(always)]
    fn tokens(&self, (start, len): (u32, u32)) -> &[Rank] {
        &self.tokens[start as usize..(start + len) as usize]
    }

    /// Stores `tokens` and returns where they are (which may empty the cache first).
    fn push(&mut self, tokens: &[Rank]) -> (u32, u32) {
        if self.short.len() + self.long.len() >= MERGE_CACHE_ENTRIES
            || self.tokens.len() + tokens.len() > MERGE_CACHE_TOKENS
        {
            self.clear();
        }
        let start = self.tokens.len() as u32;
        self.tokens.extend_from_slice(tokens);
        (start, tokens.len() as u32)
    }
}

thread_local! {
    static PIECE_CACHE: std::cell::RefCell<PieceCache> =
        std::cell::RefCell::new(PieceCache::new());
}

static NEXT_ENCODER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Ids a vocabulary may leave unused below its largest (cl100k leaves a few; specials may sit
/// high); the decoder's slots for them cost 16 bytes each.
pub const MAX_UNUSED_IDS: usize = 1 << 20;

/// Consecutive texts of a batch cut into runs, handed out one at a time to the threads that
/// encode them. Each run is about a quarter of a thread's share of the bytes not yet in a run,
/// and at least 1/64 of its share of all: few hand-overs at first (each may wake the thread
/// that collects the results), and short last ones, so that no thread is left waiting long
/// for another's last run (7% faster on a batch of documents than runs all of 1/16).
pub struct Runs {
    bounds: Vec<std::ops::Range<usize>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Runs {
    pub fn new<S: AsRef<str>>(texts: &[S], threads: usize) -> Runs {
        let total: usize = texts.iter().map(|t| t.as_ref().len()).sum();
        let threads = threads.max(1);
        let smallest = (total / (64 * threads)).max(1);
        let mut left = total;
        let mut bounds = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, t) in texts.iter().enumerate() {
            bytes += t.as_ref().len();
            if bytes >= (left / (4 * threads)).max(smallest) || i + 1 == texts.len() {
                bounds.push(start..i + 1);
                left -= bytes;
                (start, bytes) = (i + 1, 0);
            }
        }
        Runs {
            bounds,
            next: Default::default(),
        }
    }

    /// The number of runs.
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// The next run not yet taken, if any.
    pub fn take(&self) -> Option<std::ops::Range<usize>> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.bounds.get(i).cloned()
    }
}

#[derive(Clone, Debug)]
pub struct Encoder {
    /// Identifies this vocabulary to the per-thread merge cache (clones share it: same vocabulary).
    id: u64,
    ranks: RankMap,
    /// The rank of each single byte: one-byte pieces (punctuation, a lone space or line break:
    /// one piece in seven in English text) are looked up here, in one L1-resident load.
    byte_ranks: Box<[Rank; 256]>,
    /// Bytes of each id (mergeable and special); `None` for ids not in the vocabulary.
    decoder: Vec<Option<Box<[u8]>>>,
    specials: Vec<(String, Rank)>,
    special_matcher: Option<AhoCorasick>,
    pattern: Pattern,
    /// Mergeable ids sorted by their bytes, made on first use (by `encode_with_unstable`).
    sorted_by_bytes: std::sync::OnceLock<Vec<Rank>>,
}

impl Encoder {
    /// Builds an encoder. Every single byte must be a token (so any text can be encoded), ids
    /// must be distinct, and special tokens must not reuse a mergeable id.
    pub fn new(
        mergeable: Vec<(Vec<u8>, Rank)>,
        specials: Vec<(String, Rank)>,
        pattern: Pattern,
    ) -> Result<Encoder, BpeError> {
        let max_id = mergeable
            .iter()
            .map(|(_, r)| *r)
            .chain(specials.iter().map(|(_, r)| *r))
            .max()
            .unwrap_or(0);
        if max_id == Rank::MAX {
            return Err(BpeError::Vocab(format!("id {max_id} is reserved")));
        }
        // The decoder has a slot per id up to the largest: a damaged rank (4000000000) would
        // ask for gigabytes and abort the process, so ids may leave only so many gaps.
        let n_ids = mergeable.len() + specials.len();
        if max_id as usize >= n_ids + MAX_UNUSED_IDS {
            return Err(BpeError::Vocab(format!(
                "id {max_id} is far beyond the {n_ids} tokens (ids may leave at most \
                 {MAX_UNUSED_IDS} unused); is a rank damaged?"
            )));
        }
        let mut decoder: Vec<Option<Box<[u8]>>> = vec![None; max_id as usize + 1];
        let mut ranks = RankMap::default();
        ranks.reserve(mergeable.len());
        for (bytes, rank) in mergeable {
            if let Some(other) = &decoder[rank as usize] {
                return Err(BpeError::Vocab(format!(
                    "id {rank} is given to both {:?} and {:?}",
                    String::from_utf8_lossy(other),
                    String::from_utf8_lossy(&bytes)
                )));
            }
            if let Some(prev) = ranks.insert(&bytes, rank) {
                return Err(BpeError::Vocab(format!(
                    "token {:?} has two ids, {prev} and {rank}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            decoder[rank as usize] = Some(bytes.into_boxed_slice());
        }
        if let Some(b) = (0..=255u8).find(|b| !ranks.contains(&[*b][..])) {
            return Err(BpeError::Vocab(format!(
                "byte 0x{b:02x} is not a token; a byte-level vocabulary needs all 256 bytes"
            )));
        }
        let mut byte_ranks = Box::new([0; 256]);
        for (b, rank) in byte_ranks.iter_mut().enumerate() {
            *rank = ranks.get(&[b as u8]).expect("every byte is a token");
        }
        let mut seen = FxHashSet::default();
        for (name, id) in &specials {
            if name.is_empty() || !seen.insert(name.as_str()) {
                return Err(BpeError::Vocab(format!(
                    "special token {name:?} is empty or listed twice"
                )));
            }
            if decoder[*id as usize].is_some() {
                return Err(BpeError::Vocab(format!(
                    "special token {name:?} has id {id}, which is already a token"
                )));
            }
            decoder[*id as usize] = Some(name.as_bytes().into());
        }
        let special_matcher = if specials.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(specials.iter().map(|(s, _)| s.as_str()))
                    .map_err(|e| BpeError::Vocab(format!("special tokens: {e}")))?,
            )
        };
        super::charclass::warm_up();
        Ok(Encoder {
            id: NEXT_ENCODER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ranks,
            byte_ranks,
            decoder,
            specials,
            special_matcher,
            pattern,
            sorted_by_bytes: Default::default(),
        })
    }

    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// One more than the largest id.
    pub fn n_vocab(&self) -> usize {
        self.decoder.len()
    }

    /// Mergeable tokens and their ranks, sorted by rank.
    pub fn mergeable_ranks(&self) -> Vec<(&[u8], Rank)> {
        // Every mergeable token is in the decoder under its rank; specials are not in `ranks`.
        self.decoder
            .iter()
            .enumerate()
            .filter_map(|(id, b)| {
                let b = b.as_deref()?;
                (self.ranks.get(b) == Some(id as Rank)).then_some((b, id as Rank))
            })
            .collect()
    }

    pub(crate) fn rank_map(&self) -> &RankMap {
        &self.ranks
    }

    pub fn special_tokens(&self) -> &[(String, Rank)] {
        &self.specials
    }

    pub fn special_id(&self, name: &str) -> Option<Rank> {
        self.specials
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, r)| *r)
    }

    /// The rank of `bytes` if they are a mergeable token.
    pub fn token_id(&self, bytes: &[u8]) -> Option<Rank> {
        self.ranks.get(bytes)
    }

    // ---- encoding ------------------------------------------------------------------------

    fn for_each_piece<'t>(&self, text: &'t str, f: impl FnMut(&'t str)) {
        // Known patterns never fail; a custom regex can only fail on backtrack limits, and
        // tiktoken stops there too, so what was split before the failure is kept.
        let _ = self.pattern.split(text, f);
    }

    /// The tokens of a piece that is not itself a token.
    fn merge_piece(&self, piece: &[u8]) -> Vec<Rank> {
        merge_boundaries(&self.ranks, piece, Rank::MAX)
            .windows(2)
            .map(|w| {
                self.ranks
                    .get(&piece[w[0]..w[1]])
                    .expect("merged parts are tokens")
            })
            .collect()
    }

    /// Calls `f` with the tokens of each piece of `text`.
    fn for_each_piece_tokens(&self, text: &str, mut f: impl FnMut(&[Rank])) {
        PIECE_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            cache.belong_to(self.id);
            self.for_each_piece(text, |piece| {
                self.piece_tokens(&mut cache, piece.as_bytes(), &mut f)
            });
        })
    }

    /// Calls `f` with the tokens of `piece`.
    #[inline(always)]
    fn piece_tokens(&self, cache: &mut PieceCache, piece: &[u8], f: &mut impl FnMut(&[Rank])) {
        if piece.len() == 1 {
            return f(&[self.byte_ranks[piece[0] as usize]]);
        }
        if let Some(key) = pack(piece) {
            let hash = tokenmap::hash(key);
            let hot = (piece.len() < 8).then(|| PieceCache::hot_set(hash));
            if let Some(set) = hot {
                if let Some(r) = cache.hot_get(set, key as u64) {
                    return f(&[r]);
                }
            }
            let slot = PieceCache::slot(hash);
            if let Some((start, len)) = cache.front_get(slot, key) {
                if len == 0 {
                    if let Some(set) = hot {
                        cache.set_hot(set, key as u64, start);
                    }
                    return f(&[start]);
                }
                return f(cache.tokens((start, len)));
            }
            if let Some(r) = self.ranks.get_packed(key, hash) {
                cache.set_front(slot, key, (r, 0));
                if let Some(set) = hot {
                    cache.set_hot(set, key as u64, r);
                }
                return f(&[r]);
            }
            if let Some(&at) = cache.short.get(&key) {
                cache.set_front(slot, key, at);
                return f(cache.tokens(at));
            }
            let tokens = self.merge_piece(piece);
            f(&tokens);
            let at = cache.push(&tokens);
            cache.short.insert(key, at);
            cache.set_front(slot, key, at);
        } else {
            if let Some(r) = self.ranks.get(piece) {
                return f(&[r]);
            }
            if let Some(&at) = cache.long.get(piece) {
                return f(cache.tokens(at));
            }
            let tokens = self.merge_piece(piece);
            f(&tokens);
            let at = cache.push(&tokens);
            cache.long.insert(piece.into(), at);
        }
    }

    /// Appends the tokens of `text`, with special tokens treated as ordinary text.
    pub fn encode_ordinary_into(&self, text: &str, out: &mut Vec<Rank>) {
        self.for_each_piece_tokens(text, |tokens| out.extend_from_slice(tokens));
    }

    pub fn encode_ordinary(&self, text: &str) -> Vec<Rank> {
        let mut out = Vec::with_capacity(token_capacity(text));
        self.encode_ordinary_into(text, &mut out);
        out
    }

    /// The number of tokens `encode_ordinary` would give, without building them.
    pub fn count_ordinary(&self, text: &str) -> usize {
        let mut n = 0;
        self.for_each_piece_tokens(text, |tokens| n += tokens.len());
        n
    }

    /// The first special token in `text[from..]` whose id `allowed` accepts: (start, end, id).
    pub fn find_special(
        &self,
        text: &str,
        from: usize,
        allowed: impl Fn(Rank) -> bool,
    ) -> Option<(usize, usize, Rank)> {
        let matcher = self.special_matcher.as_ref()?;
        let mut at = from;
        while at <= text.len() {
            let m = matcher.find(Input::new(text).span(at..text.len()))?;
            let id = self.specials[m.pattern().as_usize()].1;
            if allowed(id) {
                return Some((m.start(), m.end(), id));
            }
            at = m.start() + 1;
        }
        None
    }

    /// Calls `ordinary` for each stretch of plain text and `special` for each allowed special
    /// token, in order.
    fn split_specials(
        &self,
        text: &str,
        allowed: &FxHashSet<Rank>,
        mut ordinary: impl FnMut(&str),
        mut special: impl FnMut(Rank),
    ) {
        let mut start = 0;
        if !allowed.is_empty() {
            while let Some((s, e, id)) = self.find_special(text, start, |id| allowed.contains(&id))
            {
                ordinary(&text[start..s]);
                special(id);
                start = e;
            }
        }
        ordinary(&text[start..]);
    }

    /// Encodes `text`, turning the special tokens whose ids are in `allowed` into their ids and
    /// treating any other special-token text as ordinary text. (Refusing disallowed specials is
    /// the caller's choice, made with `find_special` first, as tiktoken does.)
    pub fn encode(&self, text: &str, allowed: &FxHashSet<Rank>) -> Vec<Rank> {
        let mut out = Vec::with_capacity(token_capacity(text));
        self.encode_into(text, allowed, &mut out);
        out
    }

    pub fn encode_into(&self, text: &str, allowed: &FxHashSet<Rank>, out: &mut Vec<Rank>) {
        let out = std::cell::RefCell::new(out);
        self.split_specials(
            text,
            allowed,
            |t| self.encode_ordinary_into(t, &mut out.borrow_mut()),
            |id| out.borrow_mut().push(id),
        );
    }

    pub fn count(&self, text: &str, allowed: &FxHashSet<Rank>) -> usize {
        let n = std::cell::Cell::new(0);
        self.split_specials(
            text,
            allowed,
            |t| n.set(n.get() + self.count_ordinary(t)),
            |_| n.set(n.get() + 1),
        );
        n.get()
    }

    /// Encodes many texts in parallel.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        allowed: &FxHashSet<Rank>,
    ) -> Vec<Vec<Rank>> {
        parallel::install(|| {
            texts
                .par_iter()
                .map(|t| self.encode(t.as_ref(), allowed))
                .collect()
        })
    }

    /// Encodes runs of `texts` taken from `runs` until none is left, handing the tokens of
    /// each to `done(first index, tokens of each text)`. Any number of threads may call this
    /// with the same `runs` (each run is taken once), so a caller can encode beside the pool
    /// and use the first results while the rest are encoded.
    pub fn encode_runs<S: AsRef<str>>(
        &self,
        texts: &[S],
        runs: &Runs,
        allowed: &FxHashSet<Rank>,
        mut done: impl FnMut(usize, Vec<Vec<Rank>>),
    ) {
        while let Some(run) = runs.take() {
            done(run.start, self.encode_run(texts, run, allowed))
        }
    }

    /// The tokens of each of `texts[run]`.
    pub fn encode_run<S: AsRef<str>>(
        &self,
        texts: &[S],
        run: std::ops::Range<usize>,
        allowed: &FxHashSet<Rank>,
    ) -> Vec<Vec<Rank>> {
        texts[run]
            .iter()
            .map(|t| self.encode(t.as_ref(), allowed))
            .collect()
    }

    /// Encodes many texts in parallel into one flat array; document `i` is
    /// `tokens[offsets[i]..offsets[i + 1]]`. `append` (e.g. an end-of-text id) is added after
    /// each document when given.
    pub fn encode_batch_flat<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        allowed: &FxHashSet<Rank>,
        append: Option<Rank>,
    ) -> (Vec<Rank>, Vec<u64>) {
        let parts = self.encode_batch(texts, allowed);
        let total: usize = parts
            .iter()
            .map(|p| p.len() + append.is_some() as usize)
            .sum();
        let mut tokens = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(parts.len() + 1);
        offsets.push(0);
        for p in parts {
            tokens.extend_from_slice(&p);
            tokens.extend(append);
            offsets.push(tokens.len() as u64);
        }
        (tokens, offsets)
    }

    pub fn count_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        allowed: &FxHashSet<Rank>,
    ) -> Vec<usize> {
        parallel::install(|| {
            texts
                .par_iter()
                .map(|t| self.count(t.as_ref(), allowed))
                .collect()
        })
    }

    // ---- unstable tails (tiktoken's `encode_with_unstable`) --------------------------------

    /// The bytes of `id` if it is a mergeable token (not a special token).
    fn mergeable_bytes(&self, id: Rank) -> Option<&[u8]> {
        let bytes = self.decoder.get(id as usize)?.as_deref()?;
        (self.ranks.get(bytes) == Some(id)).then_some(bytes)
    }

    /// `encode`, and how many tokens the last piece of the text gave (0 when the text ends
    /// with a special token).
    fn encode_with_last_piece(&self, text: &str, allowed: &FxHashSet<Rank>) -> (Vec<Rank>, usize) {
        let state = std::cell::RefCell::new((Vec::new(), 0));
        self.split_specials(
            text,
            allowed,
            |t| {
                self.for_each_piece_tokens(t, |piece| {
                    let mut s = state.borrow_mut();
                    s.0.extend_from_slice(piece);
                    s.1 = piece.len();
                })
            },
            |id| {
                let mut s = state.borrow_mut();
                s.0.push(id);
                s.1 = 0;
            },
        );
        state.into_inner()
    }

    /// Encodes `text` into the tokens that more text cannot change, and the set of token
    /// sequences that may follow them: every way the unstable tail (the last piece, widened
    /// over whitespace tokens before it) can be completed, as tiktoken computes it (its
    /// `_encode_unstable_native`, heuristics included, so that the sets are equal).
    pub fn encode_with_unstable(
        &self,
        text: &str,
        allowed: &FxHashSet<Rank>,
    ) -> (Vec<Rank>, FxHashSet<Vec<Rank>>) {
        let mut completions = FxHashSet::default();
        let (mut tokens, mut last) = self.encode_with_last_piece(text, allowed);
        if last == 0 {
            return (tokens, completions);
        }
        // A split the pattern made may vanish when text is added (cl100k's `\s*[\r\n]+`
        // turns "\n" + " " into "\n \n"): whitespace tokens before the last piece are unstable.
        let all_space = |id: Rank| {
            self.mergeable_bytes(id)
                .is_some_and(|b| b.iter().all(|c| matches!(c, b' ' | b'\n' | b'\t')))
        };
        let n = tokens.len();
        if all_space(tokens[n - last]) {
            while last < n && all_space(tokens[n - last - 1]) {
                last += 1;
            }
        }
        let unstable: Vec<u8> = tokens[n - last..]
            .iter()
            .flat_map(|&id| {
                self.mergeable_bytes(id)
                    .expect("pieces give mergeable tokens")
            })
            .copied()
            .collect();
        tokens.truncate(n - last);
        if unstable.is_empty() {
            return (tokens, completions);
        }
        let sorted = self.sorted_by_bytes.get_or_init(|| {
            let mut ids: Vec<Rank> = self.mergeable_ranks().into_iter().map(|(_, r)| r).collect();
            ids.sort_by(|&a, &b| self.decoder[a as usize].cmp(&self.decoder[b as usize]));
            ids
        });
        let bytes_of = |id: Rank| self.decoder[id as usize].as_deref().unwrap_or_default();
        // The ids of the tokens starting with `prefix`, in byte order.
        let starting_with = |prefix: &[u8]| -> Vec<Rank> {
            let from = sorted.partition_point(|&id| bytes_of(id) < prefix);
            sorted[from..]
                .iter()
                .copied()
                .take_while(|&id| bytes_of(id).starts_with(prefix))
                .collect()
        };
        // One token holding the whole tail (and maybe more).
        for id in starting_with(&unstable) {
            completions.insert(vec![id]);
        }
        // A token straddling the tail's end at each other place: re-encode the tail's start
        // with that token, keeping tokens until they cover the tail.
        for i in 1..unstable.len() {
            let (prefix, suffix) = unstable.split_at(i);
            for id in starting_with(suffix) {
                let possibility = [prefix, bytes_of(id)].concat();
                let encoded = match std::str::from_utf8(&possibility) {
                    Ok(s) => self.encode_ordinary(s),
                    Err(_) => self.merge_piece(&possibility),
                };
                let mut seq = Vec::new();
                let mut covered = 0;
                for t in encoded {
                    seq.push(t);
                    covered += bytes_of(t).len();
                    if covered >= unstable.len() {
                        break;
                    }
                }
                completions.insert(seq);
            }
        }
        // A split may also appear: with `\s+(?!\S)` a tail ending in whitespace can lose its
        // last char to the next piece.
        if unstable.len() > 1 {
            let start = (1..=unstable.len().min(4))
                .map(|k| unstable.len() - k)
                .find(|&at| unstable[at] & 0xc0 != 0x80)
                .unwrap_or(0);
            let last_char = std::str::from_utf8(&unstable[start..])
                .ok()
                .and_then(|s| s.chars().next());
            if start > 0 && last_char.is_some_and(char::is_whitespace) {
                let mut split = self.merge_piece(&unstable[..start]);
                split.extend(self.merge_piece(&unstable[start..]));
                completions.insert(split);
            }
        }
        (tokens, completions)
    }

    // ---- decoding ------------------------------------------------------------------------

    /// The bytes of one token.
    pub fn token_bytes(&self, id: Rank) -> Result<&[u8], BpeError> {
        self.decoder
            .get(id as usize)
            .and_then(|b| b.as_deref())
            .ok_or(BpeError::UnknownId(id))
    }

    /// The bytes of a sequence of tokens.
    pub fn decode_bytes(&self, ids: &[Rank]) -> Result<Vec<u8>, BpeError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Encoder {
        let mut m: Vec<(Vec<u8>, Rank)> = (0..=255u8).map(|b| (vec![b], b as Rank)).collect();
        m.push((b"he".to_vec(), 256));
        m.push((b"ll".to_vec(), 257));
        m.push((b"hell".to_vec(), 258));
        m.push((b"hello".to_vec(), 259));
        let specials = vec![("<|endoftext|>".to_string(), 260)];
        Encoder::new(m, specials, Pattern::new("gpt2").unwrap()).unwrap()
    }

    #[test]
    fn encodes_and_decodes() {
        let e = toy();
        let ids = e.encode_ordinary("hello hell");
        assert_eq!(ids[0], 259);
        assert_eq!(e.decode_bytes(&ids).unwrap(), b"hello hell");
        assert_eq!(e.count_ordinary("hello hell"), ids.len());
    }

    #[test]
    fn special_tokens_only_where_allowed() {
        let e = toy();
        let text = "hello<|endoftext|>hello";
        let none = e.encode(text, &FxHashSet::default());
        assert!(!none.contains(&260));
        let all: FxHashSet<Rank> = [260].into_iter().collect();
        assert_eq!(e.encode(text, &all), vec![259, 260, 259]);
        assert_eq!(e.count(text, &all), 3);
    }

    #[test]
    fn runs_hand_over_every_text_once_across_threads() {
        let e = toy();
        let allowed = FxHashSet::default();
        for n in [0usize, 1, 2, 17, 300] {
            let texts: Vec<String> = (0..n).map(|i| "hello ".repeat(i % 7) + "hell").collect();
            let got = std::sync::Mutex::new(vec![None; n]);
            let runs = Runs::new(&texts, 3);
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        e.encode_runs(&texts, &runs, &allowed, |first, tokens| {
                            let mut got = got.lock().unwrap();
                            for (i, ids) in (first..).zip(tokens) {
                                assert!(
                                    got[i].replace(ids).is_none(),
                                    "text {i} handed over twice"
                                );
                            }
                        })
                    });
                }
            });
            let got: Vec<_> = got
                .into_inner()
                .unwrap()
                .into_iter()
                .map(Option::unwrap)
                .collect();
            assert_eq!(got, e.encode_batch(&texts, &allowed));
            assert!(runs.take().is_none());
        }
    }

    #[test]
    fn runs_cover_the_texts_in_order_and_shrink() {
        let texts: Vec<String> = (0..2000).map(|i| "x".repeat(1 + i % 13)).collect();
        let runs = Runs::new(&texts, 2);
        let bytes = |r: &std::ops::Range<usize>| texts[r.clone()].iter().map(String::len).sum();
        let sizes: Vec<usize> = runs.bounds.iter().map(bytes).collect();
        assert_eq!(runs.bounds.first().map(|r| r.start), Some(0));
        assert_eq!(runs.bounds.last().map(|r| r.end), Some(texts.len()));
        assert!(runs.bounds.windows(2).all(|w| w[0].end == w[1].start));
        let total: usize = sizes.iter().sum();
        // A quarter of a thread's share first, then smaller, down to 1/64 of a share.
        assert!(sizes[0] >= total / 8 && sizes[0] < total / 8 + 13);
        assert!(sizes[sizes.len() - 2] < total / 100, "{sizes:?}");
    }

    #[test]
    fn rejects_incomplete_byte_alphabet() {
        let m = vec![(b"a".to_vec(), 0)];
        let err = Encoder::new(m, vec![], Pattern::new("gpt2").unwrap()).unwrap_err();
        assert!(err.to_string().contains("byte 0x00"));
    }

    #[test]
    fn batch_flat_offsets() {
        let e = toy();
        let (tokens, offsets) =
            e.encode_batch_flat(&["hello", "", "hell"], &FxHashSet::default(), Some(260));
        assert_eq!(tokens, vec![259, 260, 260, 258, 260]);
        assert_eq!(offsets, vec![0, 2, 3, 5]);
    }
}
