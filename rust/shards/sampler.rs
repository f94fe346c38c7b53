//! The batch sampler: `(B, T + 1)` rows of tokens for next-token training.
//!
//! ## Windows
//! A shard of `n` tokens holds the windows `[k s, k s + T + 1)` for `k = 0, 1, ...` while they
//! fit (`s` is the stride, `T` by default, so each token is a target exactly once). Windows never
//! cross a shard's end, as in llm.c.
//!
//! ## Global batches and ranks
//! One step of a `W`-rank job takes a *global batch* of `B W` windows; rank `r` gets its
//! `r`-th block of `B`. All ranks run the same arithmetic on the same state, so they agree on
//! the global batch without talking, and their parts are disjoint by construction.
//!
//! - `sequential`: llm.c's `DataLoader` order. Global batch `g` of a shard is windows
//!   `g B W .. (g + 1) B W`; a shard with too few windows left for a whole global batch is left
//!   for the next, and after the last shard a new epoch starts at the first.
//! - `random`: every window of the split, in a fresh order each epoch: global batch `g` is
//!   entries `g B W .. (g + 1) B W` of a seeded permutation of all windows. The permutation is
//!   a keyed bijection computed on the fly (multiply and xor-shift rounds with cycle walking),
//!   so it costs no memory whatever the dataset size, and an epoch visits each window at most
//!   once. The last `< B W` windows of an epoch are dropped (as llm.c drops a shard's tail).
//!
//! ## Packing
//! With `Packing::Pad`, rows are built from whole documents instead of windows: documents (each
//! with its end-of-text) are placed one after another while they fit, so a row starts at a
//! document's start and ends right after an end-of-text, and the rest of the row is padded
//! with end-of-text. A document longer than a row is cut into windows of `T + 1` every `s`
//! tokens, each starting a row of its own. Document order is the index order (`sequential`) or
//! a seeded permutation per epoch (`random`).
//!
//! ## Best-fit packing (document-aligned rows)
//! With `Packing::BestFit`, every row starts at a document's start and is filled exactly,
//! with no padding: the documents of the epoch's order (index order, or the seeded
//! permutation) are taken in *pools* of `pool` consecutive documents, and each pool is packed
//! on its own by [`best_fit`]: a row takes the longest document of the pool that still fits,
//! again and again, and when none fits, the shortest one left is cropped to the room left (its
//! tail is not trained on this epoch). A document longer than a row is cropped to one row.
//! Documents left over when the pool runs dry mid-row are dropped with that row. In `random`
//! mode a pool's rows are served in a seeded order (else long documents would come first);
//! in `sequential` mode in the order they were packed. This is nanochat's BOS-aligned
//! best-fit loader, with a pool that is packed as a whole so that a position is two integers.
//!
//! *Utilisation* of a batch is `real / (B (T + 1) + cropped)`: the share of the row tokens
//! that are document tokens (not padding), counting the document tokens cut away by cropping
//! (and dropped with a pool's last partial row) as slots lost too. Windows have 1; padded
//! packing loses padding, best-fit loses cropped tails; [`Sampler::last_cropped`] gives the
//! cropped tokens of each row.
//!
//! ## Documents inside a row
//! [`Sampler::last_segments`] numbers the documents of each row of the last batch (0, 1, ...
//! along the row, padding a number of its own) from the pieces a packed row was built from, or
//! for windows from the document index: what an attention mask limited to the current
//! document needs.
//!
//! ## Resuming
//! The state is four integers (epoch, shard, cursor, offset); saving it after batch `k` and
//! loading it into a fresh sampler with the same configuration gives batch `k + 1` next. With
//! best-fit packing `cursor` is the first document (in the epoch's order) of the current pool
//! and `offset` the rows of that pool already served; the pool is packed again on resume.

use super::reader::{Split, Token};
use super::ShardError;
use crate::cache::prefetch_run;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Random,
    Sequential,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerConfig {
    pub batch_size: u64,
    pub seq_len: u64,
    /// Distance between window starts; `seq_len` gives llm.c's and nanoGPT's tiling.
    pub stride: u64,
    pub mode: Mode,
    pub seed: u64,
    pub rank: u64,
    pub world_size: u64,
    pub packing: Packing,
    /// Best-fit packing: documents packed together (see the module's notes).
    pub pool: u64,
    /// The padding token of packed rows (end-of-text).
    pub pad: u32,
}

/// How rows are made (see the module's notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// Windows of the token stream.
    Off,
    /// Whole documents one after another, the rest of the row padded.
    Pad,
    /// Document-aligned rows filled best-fit, the last document cropped.
    BestFit,
}

impl Packing {
    pub fn name(self) -> &'static str {
        match self {
            Packing::Off => "off",
            Packing::Pad => "pad",
            Packing::BestFit => "bestfit",
        }
    }

    pub fn from_name(name: &str) -> Option<Packing> {
        [Packing::Off, Packing::Pad, Packing::BestFit]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

// Saved states write `false` and `true` for windows and padded packing (as before best-fit
// existed) and `"bestfit"` for best-fit, which an older reader refuses rather than resumes.
impl Serialize for Packing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Packing::Off => s.serialize_bool(false),
            Packing::Pad => s.serialize_bool(true),
            Packing::BestFit => s.serialize_str("bestfit"),
        }
    }
}

impl<'de> Deserialize<'de> for Packing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Packing, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Saved {
            Flag(bool),
            Name(String),
        }
        match Saved::deserialize(d)? {
            Saved::Flag(false) => Ok(Packing::Off),
            Saved::Flag(true) => Ok(Packing::Pad),
            Saved::Name(n) => Packing::from_name(&n)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown packing {n:?}"))),
        }
    }
}

/// Where the sampler is; `rank` excepted, the same on every rank.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    /// Sequential windows: the shard being read.
    pub shard: u64,
    /// Windows (or, packing, documents) of the epoch (sequential: of the shard) consumed.
    pub cursor: u64,
    /// Packing: tokens of the current document already placed.
    pub offset: u64,
    /// Batches served so far.
    pub batches: u64,
}

/// What a saved state must match to be loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    format: String,
    split: String,
    split_tokens: u64,
    batch_size: u64,
    seq_len: u64,
    stride: u64,
    mode: Mode,
    seed: u64,
    world_size: u64,
    packing: Packing,
    /// Best-fit packing only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pool: Option<u64>,
    #[serde(flatten)]
    state: SamplerState,
}

// Version 2: a cheaper window permutation (so a version-1 state, from a different order,
// is refused rather than resumed on other batches).
const STATE_FORMAT: &str = "gristmill-sampler-2";

/// Batches at least this large are copied on all threads (smaller ones copy faster on the
/// calling thread than the pool wakes up).
const PARALLEL_COPY_BYTES: usize = 4 << 20;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Rows whose loads are started ahead of the row being copied.
const PREFETCH_ROWS: usize = 4;

/// A seeded bijection of `0..n`, evaluated one index at a time: four rounds of
/// xor-key, multiply-by-odd and xor-shift, each a bijection of `bits`-bit integers, over the
/// smallest power of two `>= n`, with cycle walking to stay below `n` (fewer than two steps
/// on average, since that power is below `2 n`). A batch of 64 windows costs about a
/// microsecond, a small share of copying its tokens.
#[derive(Clone, Debug)]
pub struct Permutation {
    n: u64,
    mask: u64,
    shift: u32,
    keys: [(u64, u64); 4],
}

impl Permutation {
    pub fn new(n: u64, seed: u64) -> Permutation {
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(1);
        let mut keys = [(0u64, 0u64); 4];
        let mut k = seed;
        for key in &mut keys {
            let xor = splitmix64(k);
            k = splitmix64(xor);
            *key = (xor, k | 1); // the multiplier must be odd to be invertible mod 2^bits
        }
        Permutation {
            n,
            mask: u64::MAX >> (64 - bits),
            shift: bits.div_ceil(2),
            keys,
        }
    }

    fn encrypt(&self, mut x: u64) -> u64 {
        for &(xor, mul) in &self.keys {
            x = ((x ^ xor).wrapping_mul(mul)) & self.mask;
            x ^= x >> self.shift;
        }
        x
    }

    /// The image of `i < n`.
    pub fn apply(&self, i: u64) -> u64 {
        debug_assert!(i < self.n);
        let mut x = self.encrypt(i);
        while x >= self.n {
            x = self.encrypt(x);
        }
        x
    }
}

/// A run of tokens of the split copied into a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    start: u64,
    len: u64,
}

/// One pool packed by [`best_fit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BestFit {
    /// Each row: `(document, tokens taken from its start)`, documents as positions in the
    /// lengths given; the tokens of a row add up to the row length.
    pub rows: Vec<Vec<(usize, u64)>>,
    /// Tokens cut away from each row's documents (only its last one is ever cropped).
    pub cropped: Vec<u64>,
    /// Tokens of the documents left for a last row the pool could not fill (dropped).
    pub dropped: u64,
}

/// Packs documents of lengths `lens` into rows of exactly `row` tokens, each row starting at
/// a document's start: a row takes the longest document left that fits in its room (of equal
/// lengths, the later one), until none fits; then the shortest one left (of equal lengths, the
/// earlier one) is cropped to the room, and the row is full. Empty documents are passed over.
/// A last row the documents cannot fill is dropped (see [`BestFit::dropped`]).
pub fn best_fit(lens: &[u64], row: u64) -> BestFit {
    use std::collections::BTreeSet;
    let mut left: BTreeSet<(u64, usize)> = lens
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(i, &n)| (n, i))
        .collect();
    let mut out = BestFit::default();
    while !left.is_empty() {
        let (mut pieces, mut room, mut cropped) = (Vec::new(), row, 0u64);
        while room > 0 {
            let fits = left.range(..(room + 1, 0)).next_back().copied();
            match fits.or_else(|| left.first().copied()) {
                Some(key @ (n, i)) => {
                    left.remove(&key);
                    let take = n.min(room);
                    pieces.push((i, take));
                    cropped += n - take;
                    room -= take;
                }
                None => break,
            }
        }
        if room > 0 {
            // The pool ran dry: the documents of this last row wait for the next epoch.
            out.dropped += row - room + cropped;
            break;
        }
        out.rows.push(pieces);
        out.cropped.push(cropped);
    }
    out
}

/// A pool of the epoch's documents packed into rows (`Piece`s of the split).
#[derive(Debug)]
struct PoolRows {
    epoch: u64,
    /// The pool's first document in the epoch's order.
    first: u64,
    rows: Vec<Vec<Piece>>,
    cropped: Vec<u64>,
}

/// Draws `(B, T + 1)` batches from one split.
pub struct Sampler {
    split: Arc<Split>,
    cfg: SamplerConfig,
    /// Windows in shards before shard `i` (one more entry than shards).
    window_base: Vec<u64>,
    state: SamplerState,
    /// Tokens of real content in each row of the last batch (the rest is padding).
    lengths: Vec<u64>,
    /// Where in the split each row of the last batch starts.
    starts: Vec<u64>,
    /// Document tokens cut away from each row of the last batch (best-fit packing).
    cropped: Vec<u64>,
    /// Packing: the pieces of each row of the last batch.
    pieces: Vec<Vec<Piece>>,
    /// Best-fit packing: the last pool packed.
    pool: Option<Arc<PoolRows>>,
}

impl Sampler {
    pub fn new(split: Arc<Split>, cfg: SamplerConfig) -> Result<Sampler, ShardError> {
        let bad = |m: String| Err(ShardError::Settings(m));
        if cfg.batch_size == 0 || cfg.seq_len == 0 || cfg.stride == 0 {
            return bad(format!(
                "batch_size, seq_len and stride must be positive (got {}, {}, {})",
                cfg.batch_size, cfg.seq_len, cfg.stride
            ));
        }
        if cfg.packing == Packing::BestFit && cfg.pool == 0 {
            return bad("pool (documents packed together) must be positive, got 0".into());
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return bad(format!(
                "rank must be in 0..world_size (got rank {} of {})",
                cfg.rank, cfg.world_size
            ));
        }
        let row = cfg.seq_len + 1;
        let mut window_base = vec![0u64];
        for s in split.shards() {
            let n = if s.len() >= row {
                (s.len() - row) / cfg.stride + 1
            } else {
                0
            };
            window_base.push(window_base.last().unwrap() + n);
        }
        let global = cfg.batch_size * cfg.world_size;
        let name = split.name().to_string();
        let sampler = Sampler {
            lengths: vec![row; cfg.batch_size as usize],
            starts: vec![0; cfg.batch_size as usize],
            cropped: vec![0; cfg.batch_size as usize],
            pieces: Vec::new(),
            pool: None,
            split,
            cfg,
            window_base,
            state: SamplerState::default(),
        };
        if sampler.cfg.packing != Packing::Off {
            sampler.split.doc_start(0).map_err(|e| match e {
                ShardError::OutOfRange { .. } => {
                    ShardError::Settings(format!("split {name:?} has no documents"))
                }
                e => e,
            })?;
        } else {
            let enough = match sampler.cfg.mode {
                Mode::Random => sampler.num_windows() >= global,
                Mode::Sequential => {
                    (0..sampler.split.shards().len()).any(|s| sampler.shard_windows(s) >= global)
                }
            };
            if !enough {
                let where_ = match sampler.cfg.mode {
                    Mode::Random => "the split has",
                    Mode::Sequential => "no shard has",
                };
                return bad(format!(
                    "split {name:?}: a global batch needs {global} windows of {row} tokens \
                     (batch_size {} x world_size {}), but {where_} {} (stride {})",
                    sampler.cfg.batch_size,
                    sampler.cfg.world_size,
                    match sampler.cfg.mode {
                        Mode::Random => sampler.num_windows(),
                        Mode::Sequential => (0..sampler.split.shards().len())
                            .map(|s| sampler.shard_windows(s))
                            .max()
                            .unwrap_or(0),
                    },
                    sampler.cfg.stride
                ));
            }
        }
        Ok(sampler)
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    pub fn state(&self) -> &SamplerState {
        &self.state
    }

    /// Windows in the split (every shard's tiling).
    pub fn num_windows(&self) -> u64 {
        *self.window_base.last().unwrap()
    }

    fn shard_windows(&self, s: usize) -> u64 {
        self.window_base[s + 1] - self.window_base[s]
    }

    fn global(&self) -> u64 {
        self.cfg.batch_size * self.cfg.world_size
    }

    fn row_len(&self) -> u64 {
        self.cfg.seq_len + 1
    }

    /// Global batches per epoch, when it is known without reading the documents.
    pub fn batches_per_epoch(&self) -> Option<u64> {
        if self.cfg.packing != Packing::Off {
            return None;
        }
        Some(match self.cfg.mode {
            Mode::Random => self.num_windows() / self.global(),
            Mode::Sequential => (0..self.split.shards().len())
                .map(|s| self.shard_windows(s) / self.global())
                .sum(),
        })
    }

    /// Real tokens in each row of the last batch (`T + 1` unless packing padded it).
    pub fn last_lengths(&self) -> &[u64] {
        &self.lengths
    }

    /// The split-wide token offset where each row of the last batch starts.
    pub fn last_starts(&self) -> &[u64] {
        &self.starts
    }

    /// Document tokens cut away from each row of the last batch (best-fit packing; a pool's
    /// dropped last row counts with its last row served).
    pub fn last_cropped(&self) -> &[u64] {
        &self.cropped
    }

    /// The documents of each row of the last batch numbered along the row (0, 1, ...), padding
    /// one number after the last document: `B (T + 1)` numbers, row-major, into `out`. Windows
    /// read the document index (an error for bare shards).
    pub fn last_segments(&self, out: &mut [u32]) -> Result<(), ShardError> {
        let row = self.row_len() as usize;
        if out.len() != row * self.cfg.batch_size as usize {
            return Err(ShardError::Settings(format!(
                "the segment buffer holds {} numbers, expected {} x {row}",
                out.len(),
                self.cfg.batch_size
            )));
        }
        if self.cfg.packing == Packing::Off {
            for (&start, dst) in self.starts.iter().zip(out.chunks_exact_mut(row)) {
                self.window_segments(start, dst)?;
            }
            return Ok(());
        }
        if self.pieces.is_empty() {
            out.fill(0); // no batch yet
            return Ok(());
        }
        for (pieces, dst) in self.pieces.iter().zip(out.chunks_exact_mut(row)) {
            let mut at = 0usize;
            for (k, p) in pieces.iter().enumerate() {
                dst[at..at + p.len as usize].fill(k as u32);
                at += p.len as usize;
            }
            dst[at..].fill(pieces.len() as u32);
        }
        Ok(())
    }

    /// Document numbers along the window of `dst.len()` tokens at `start`, from the index.
    fn window_segments(&self, start: u64, dst: &mut [u32]) -> Result<(), ShardError> {
        let n_docs = self.split.num_docs();
        self.split.doc_start(0)?; // bare shards: named here
                                  // The first document starting after `start` (doc_start is increasing).
        let (mut lo, mut hi) = (0u64, n_docs);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.split.doc_start(mid)? <= start {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let start_of = |d: u64| -> Result<u64, ShardError> {
            if d < n_docs {
                self.split.doc_start(d)
            } else {
                Ok(u64::MAX)
            }
        };
        let (mut next, mut seg) = (lo, 0u32);
        let mut boundary = start_of(next)?;
        for (i, d) in dst.iter_mut().enumerate() {
            let t = start + i as u64;
            if boundary == t {
                seg += 1;
                // Past every document starting here (an index may hold empty ones).
                while boundary <= t {
                    next += 1;
                    boundary = start_of(next)?;
                }
            }
            *d = seg;
        }
        Ok(())
    }

    fn permutation(&self, n: u64) -> Permutation {
        self.permutation_of(self.state.epoch, n)
    }

    fn permutation_of(&self, epoch: u64, n: u64) -> Permutation {
        Permutation::new(n, self.cfg.seed ^ splitmix64(epoch ^ 0x5eed))
    }

    /// The split-wide start of window `w` (of the whole split's tiling).
    fn window_start(&self, w: u64) -> u64 {
        let s = self.window_base.partition_point(|&b| b <= w) - 1;
        self.split.shard_base(s) + (w - self.window_base[s]) * self.cfg.stride
    }

    /// Advances by one global batch and returns this rank's rows.
    /// Also returns the tokens cropped from each row.
    fn plan(&mut self) -> Result<(Vec<Vec<Piece>>, Vec<u64>), ShardError> {
        let b = self.cfg.batch_size as usize;
        match self.cfg.packing {
            Packing::Pad => return Ok((self.plan_packed()?, vec![0; b])),
            Packing::BestFit => return self.plan_best_fit(),
            Packing::Off => {}
        }
        self.plan_windows()?;
        let len = self.row_len();
        let rows = self
            .starts
            .iter()
            .map(|&start| vec![Piece { start, len }])
            .collect();
        Ok((rows, vec![0; b]))
    }

    /// Packs the pool of the epoch's documents that starts at `first` (in the epoch's order).
    fn pack_pool(&self, epoch: u64, first: u64) -> Result<PoolRows, ShardError> {
        let n_docs = self.split.num_docs();
        let last = first.saturating_add(self.cfg.pool).min(n_docs);
        let perm = (self.cfg.mode == Mode::Random).then(|| self.permutation_of(epoch, n_docs));
        let ranges = (first..last)
            .map(|i| {
                self.split
                    .doc_range(perm.as_ref().map_or(i, |p| p.apply(i)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lens: Vec<u64> = ranges.iter().map(|&(s, e)| e - s).collect();
        let packed = best_fit(&lens, self.row_len());
        let mut rows: Vec<Vec<Piece>> = packed
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&(d, len)| Piece {
                        start: ranges[d].0,
                        len,
                    })
                    .collect()
            })
            .collect();
        let mut cropped = packed.cropped;
        if let Some(c) = cropped.last_mut() {
            *c += packed.dropped;
        }
        if self.cfg.mode == Mode::Random && rows.len() > 1 {
            // Packing puts long documents first: serve the pool's rows in a seeded order.
            let key = self.cfg.seed ^ splitmix64(epoch ^ 0x5eed) ^ splitmix64(first ^ 0xb0f1);
            let order = Permutation::new(rows.len() as u64, key);
            let n = rows.len() as u64;
            let (r, c): (Vec<_>, Vec<_>) = (0..n)
                .map(|i| {
                    let j = order.apply(i) as usize;
                    (std::mem::take(&mut rows[j]), cropped[j])
                })
                .unzip();
            (rows, cropped) = (r, c);
        }
        Ok(PoolRows {
            epoch,
            first,
            rows,
            cropped,
        })
    }

    /// The packed pool at `first` of `epoch`, packed again only when it is not the last one.
    fn pool_rows(&mut self, epoch: u64, first: u64) -> Result<Arc<PoolRows>, ShardError> {
        match &self.pool {
            Some(p) if p.epoch == epoch && p.first == first => Ok(p.clone()),
            _ => {
                let p = Arc::new(self.pack_pool(epoch, first)?);
                self.pool = Some(p.clone());
                Ok(p)
            }
        }
    }

    /// Takes the next global batch of best-fit rows; returns this rank's, and their cropping.
    fn plan_best_fit(&mut self) -> Result<(Vec<Vec<Piece>>, Vec<u64>), ShardError> {
        let n_docs = self.split.num_docs();
        let global = self.global() as usize;
        loop {
            let fresh = self.state.cursor == 0 && self.state.offset == 0;
            let mut st = self.state.clone();
            let (mut rows, mut cropped) = (Vec::with_capacity(global), Vec::with_capacity(global));
            while rows.len() < global && st.cursor < n_docs {
                let pool = self.pool_rows(st.epoch, st.cursor)?;
                let from = st.offset as usize;
                let take = (global - rows.len()).min(pool.rows.len().saturating_sub(from));
                rows.extend_from_slice(&pool.rows[from..from + take]);
                cropped.extend_from_slice(&pool.cropped[from..from + take]);
                st.offset += take as u64;
                if st.offset as usize >= pool.rows.len() {
                    st.cursor = st.cursor.saturating_add(self.cfg.pool).min(n_docs);
                    st.offset = 0;
                }
            }
            if rows.len() == global {
                self.state = st;
                let (b, r) = (self.cfg.batch_size as usize, self.cfg.rank as usize);
                let mine = r * b..(r + 1) * b;
                return Ok((rows.drain(mine.clone()).collect(), cropped[mine].to_vec()));
            }
            if fresh {
                return Err(ShardError::Settings(format!(
                    "split {:?}: its {n_docs} documents pack best-fit into {} rows of {} \
                     tokens (pools of {}), but a global batch needs {global}",
                    self.split.name(),
                    rows.len(),
                    self.row_len(),
                    self.cfg.pool
                )));
            }
            // The epoch ran out mid-batch: drop the partial batch, start the next.
            self.state.epoch += 1;
            self.state.cursor = 0;
            self.state.offset = 0;
        }
    }

    /// Advances by one global batch of windows and puts this rank's row starts in
    /// `self.starts` (no allocation).
    fn plan_windows(&mut self) -> Result<(), ShardError> {
        let global = self.global();
        // Index (in the epoch's window order) of this rank's first row.
        let first = self.state.cursor + self.cfg.rank * self.cfg.batch_size;
        let rows = first..first + self.cfg.batch_size;
        let mut starts = std::mem::take(&mut self.starts);
        starts.clear();
        match self.cfg.mode {
            Mode::Random => {
                if self.state.cursor + global > self.num_windows() {
                    self.state.epoch += 1;
                    self.state.cursor = 0;
                    self.starts = starts;
                    return self.plan_windows();
                }
                let perm = self.permutation(self.num_windows());
                starts.extend(rows.map(|i| self.window_start(perm.apply(i))));
            }
            Mode::Sequential => {
                let shard = self.state.shard as usize;
                if self.state.cursor + global > self.shard_windows(shard) {
                    // Not enough left in this shard: on to the next (the constructor made
                    // sure some shard has enough).
                    self.state.cursor = 0;
                    self.state.shard += 1;
                    if self.state.shard as usize == self.split.shards().len() {
                        self.state.shard = 0;
                        self.state.epoch += 1;
                    }
                    self.starts = starts;
                    return self.plan_windows();
                }
                let base = self.window_base[shard];
                starts.extend(rows.map(|w| self.window_start(base + w)));
            }
        }
        self.starts = starts;
        self.state.cursor += global;
        Ok(())
    }

    /// Packs whole documents into the next global batch's rows; returns this rank's.
    fn plan_packed(&mut self) -> Result<Vec<Vec<Piece>>, ShardError> {
        let n_docs = self.split.num_docs();
        let (row, stride) = (self.row_len(), self.cfg.stride);
        let global = self.global() as usize;
        loop {
            let fresh = self.state.cursor == 0 && self.state.offset == 0;
            let perm = (self.cfg.mode == Mode::Random).then(|| self.permutation(n_docs));
            let mut st = self.state.clone();
            let mut rows: Vec<Vec<Piece>> = Vec::with_capacity(global);
            while rows.len() < global && st.cursor < n_docs {
                let mut pieces = Vec::new();
                let mut filled = 0u64;
                while st.cursor < n_docs {
                    let d = perm.as_ref().map_or(st.cursor, |p| p.apply(st.cursor));
                    let (start, end) = self.split.doc_range(d)?;
                    let start = start + st.offset;
                    let left = end - start;
                    if left <= row - filled {
                        pieces.push(Piece { start, len: left });
                        filled += left;
                        st.cursor += 1;
                        st.offset = 0;
                        if filled == row {
                            break;
                        }
                    } else if filled == 0 {
                        // Longer than a row: a window of it, then the rest from `stride` on.
                        pieces.push(Piece { start, len: row });
                        st.offset += stride;
                        if start + stride >= end {
                            // A stride longer than a row can step past the document's end.
                            st.cursor += 1;
                            st.offset = 0;
                        }
                        break;
                    } else {
                        break;
                    }
                }
                if !pieces.is_empty() {
                    rows.push(pieces);
                }
            }
            if rows.len() == global {
                st.batches = self.state.batches;
                self.state = st;
                let (b, r) = (self.cfg.batch_size as usize, self.cfg.rank as usize);
                return Ok(rows.drain(r * b..(r + 1) * b).collect());
            }
            if fresh {
                return Err(ShardError::Settings(format!(
                    "split {:?}: its {n_docs} documents pack into {} rows of {row} tokens, but a \
                     global batch needs {global}",
                    self.split.name(),
                    rows.len()
                )));
            }
            // The epoch's documents ran out mid-batch: drop the partial batch, start the next.
            self.state.epoch += 1;
            self.state.cursor = 0;
            self.state.offset = 0;
        }
    }

    /// Advances by one batch without copying tokens.
    pub fn skip(&mut self) -> Result<(), ShardError> {
        if self.cfg.packing != Packing::Off {
            self.plan()?;
        } else {
            let starts = self.starts.clone(); // `last_starts` stays the last batch served
            self.plan_windows()?;
            self.starts = starts;
        }
        self.state.batches += 1;
        Ok(())
    }

    /// Fills `out` (`batch_size * (seq_len + 1)` tokens, row-major) with the next batch.
    pub fn next_into<T: Token>(&mut self, out: &mut [T]) -> Result<(), ShardError> {
        let row = self.row_len() as usize;
        if out.len() != row * self.cfg.batch_size as usize {
            return Err(ShardError::Settings(format!(
                "the batch buffer holds {} tokens, expected {} x {row}",
                out.len(),
                self.cfg.batch_size
            )));
        }
        if T::DTYPE != self.split.dtype() {
            return Err(ShardError::Settings(format!(
                "the batch buffer is {}, the shards hold {}",
                T::DTYPE.name(),
                self.split.dtype().name()
            )));
        }
        if self.cfg.packing == Packing::Off {
            return self.next_windows_into(out);
        }
        let saved = self.state.clone();
        let (rows, cropped) = self.plan()?;
        let pad = T::from_pad(self.cfg.pad);
        let split = &*self.split;
        let fill = |(pieces, dst): (&Vec<Piece>, &mut [T])| -> Result<u64, ShardError> {
            let mut at = 0usize;
            for p in pieces {
                let len = p.len as usize;
                split.copy_range(p.start, &mut dst[at..at + len])?;
                at += len;
            }
            dst[at..].fill(pad);
            Ok(at as u64)
        };
        // A batch is many independent row copies from memory that is mostly not in cache: on
        // an idle machine two or more threads move it faster than one. Small batches, and a
        // forked child (no pool), copy on the calling thread.
        let parallel =
            std::mem::size_of_val(out) >= PARALLEL_COPY_BYTES && crate::parallel::num_threads() > 1;
        let lengths: Result<Vec<u64>, ShardError> = if parallel {
            crate::parallel::install(|| {
                rows.par_iter()
                    .zip(out.par_chunks_exact_mut(row))
                    .with_min_len(8)
                    .map(fill)
                    .collect()
            })
        } else {
            rows.iter()
                .zip(out.chunks_exact_mut(row))
                .map(fill)
                .collect()
        };
        match lengths {
            Ok(l) => self.lengths = l,
            Err(e) => {
                self.state = saved;
                return Err(e);
            }
        }
        for (start, pieces) in self.starts.iter_mut().zip(&rows) {
            *start = pieces[0].start;
        }
        (self.cropped, self.pieces) = (cropped, rows);
        self.state.batches += 1;
        Ok(())
    }

    /// `next_into` for whole windows: one copy per row from the map. A batch of
    /// training size (B=64, T=1024: 131 KB) is copied on the calling thread: waking the pool
    /// costs more than the copy, and on a busy machine much more.
    fn next_windows_into<T: Token>(&mut self, out: &mut [T]) -> Result<(), ShardError> {
        let row = self.row_len() as usize;
        let (saved, saved_starts) = (self.state.clone(), self.starts.clone());
        self.plan_windows()?;
        let split = &*self.split;
        let copy = |(&start, dst): (&u64, &mut [T])| split.copy_range(start, dst);
        let result = if std::mem::size_of_val(out) >= PARALLEL_COPY_BYTES
            && crate::parallel::num_threads() > 1
        {
            crate::parallel::install(|| {
                self.starts
                    .par_iter()
                    .zip(out.par_chunks_exact_mut(row))
                    .with_min_len(4)
                    .try_for_each(copy)
            })
        } else {
            // Rows start at random places in maps far larger than the cache, and a row (2 KB
            // at T=1024) is too short for the hardware prefetcher to reach full speed: start
            // loading a few rows ahead of the one being copied, so their misses overlap.
            let sources: Result<Vec<Option<&[T]>>, ShardError> = self
                .starts
                .iter()
                .map(|&start| split.slice::<T>(start, start + row as u64))
                .collect();
            sources.and_then(|sources| {
                sources
                    .iter()
                    .take(PREFETCH_ROWS)
                    .flatten()
                    .for_each(|s| prefetch_run(s));
                let rows = self.starts.iter().zip(out.chunks_exact_mut(row));
                for (i, (&start, dst)) in rows.enumerate() {
                    if let Some(Some(ahead)) = sources.get(i + PREFETCH_ROWS) {
                        prefetch_run(ahead);
                    }
                    match sources[i] {
                        Some(src) => dst.copy_from_slice(src),
                        None => split.copy_range(start, dst)?, // crosses shards
                    }
                }
                Ok(())
            })
        };
        if let Err(e) = result {
            (self.state, self.starts) = (saved, saved_starts);
            return Err(e);
        }
        // Whole windows: every row is real.
        if self.lengths.iter().any(|&l| l != row as u64) {
            self.lengths.fill(row as u64);
        }
        self.state.batches += 1;
        Ok(())
    }

    /// The state as JSON, with the configuration it belongs to.
    pub fn state_json(&self) -> String {
        let saved = Saved {
            format: STATE_FORMAT.into(),
            split: self.split.name().into(),
            split_tokens: self.split.num_tokens(),
            batch_size: self.cfg.batch_size,
            seq_len: self.cfg.seq_len,
            stride: self.cfg.stride,
            mode: self.cfg.mode,
            seed: self.cfg.seed,
            world_size: self.cfg.world_size,
            packing: self.cfg.packing,
            pool: (self.cfg.packing == Packing::BestFit).then_some(self.cfg.pool),
            state: self.state.clone(),
        };
        serde_json::to_string(&saved).expect("state serialises")
    }

    /// Restores a state saved by [`Sampler::state_json`] (by any rank) of a sampler with the
    /// same configuration on the same split.
    pub fn load_state_json(&mut self, json: &str) -> Result<(), ShardError> {
        let saved: Saved = serde_json::from_str(json)
            .map_err(|e| ShardError::Settings(format!("not a sampler state: {e}")))?;
        let mine: Saved = serde_json::from_str(&self.state_json()).expect("own state parses");
        let checks: [(&str, String, String); 11] = [
            ("format", saved.format.clone(), mine.format.clone()),
            ("split", saved.split.clone(), mine.split.clone()),
            (
                "split_tokens",
                saved.split_tokens.to_string(),
                mine.split_tokens.to_string(),
            ),
            (
                "batch_size",
                saved.batch_size.to_string(),
                mine.batch_size.to_string(),
            ),
            (
                "seq_len",
                saved.seq_len.to_string(),
                mine.seq_len.to_string(),
            ),
            ("stride", saved.stride.to_string(), mine.stride.to_string()),
            (
                "mode",
                format!("{:?}", saved.mode),
                format!("{:?}", mine.mode),
            ),
            ("seed", saved.seed.to_string(), mine.seed.to_string()),
            (
                "world_size",
                saved.world_size.to_string(),
                mine.world_size.to_string(),
            ),
            (
                "packing",
                saved.packing.name().to_string(),
                mine.packing.name().to_string(),
            ),
            (
                "pool",
                format!("{:?}", saved.pool),
                format!("{:?}", mine.pool),
            ),
        ];
        if let Some((name, theirs, ours)) = checks.iter().find(|(_, a, b)| a != b) {
            let why = if *name == "format" {
                " (a state saved by another gristmill version, whose batch order differs: \
                 resuming it would not give the batches that run would have drawn next)"
            } else {
                ""
            };
            return Err(ShardError::Settings(format!(
                "the saved sampler state has {name} {theirs}, this sampler has {ours}{why}"
            )));
        }
        // Checked in place (the epoch picks the order), put back if outside the split.
        let previous = std::mem::replace(&mut self.state, saved.state);
        let in_range = self.position_in_range();
        if !matches!(in_range, Ok(true)) {
            let st = std::mem::replace(&mut self.state, previous);
            in_range?;
            return Err(ShardError::Settings(format!(
                "the saved sampler state {st:?} is outside this split"
            )));
        }
        Ok(())
    }

    /// Whether `state` is a position a run could reach: a window or document of this split (and,
    /// packing, an offset inside that document), counters that cannot overflow as they advance.
    fn position_in_range(&self) -> Result<bool, ShardError> {
        let st = &self.state;
        let n_docs = self.split.num_docs();
        let in_range = if self.cfg.packing == Packing::BestFit {
            // The start of a pool and a row of it (or the epoch's end).
            if st.cursor < n_docs && st.cursor.is_multiple_of(self.cfg.pool) {
                st.offset == 0 || st.offset < self.pack_pool(st.epoch, st.cursor)?.rows.len() as u64
            } else {
                st.cursor == n_docs && st.offset == 0
            }
        } else if self.cfg.packing == Packing::Pad {
            if st.cursor < n_docs {
                let perm = (self.cfg.mode == Mode::Random).then(|| self.permutation(n_docs));
                let d = perm.map_or(st.cursor, |p| p.apply(st.cursor));
                let (start, end) = self.split.doc_range(d)?;
                st.offset < end - start
            } else {
                st.cursor == n_docs && st.offset == 0
            }
        } else if self.cfg.mode == Mode::Sequential {
            let shard = st.shard as usize;
            shard < self.split.shards().len() && st.cursor <= self.shard_windows(shard)
        } else {
            st.cursor <= self.num_windows()
        };
        Ok(in_range && st.epoch < 1 << 48 && st.batches < 1 << 48)
    }
}

/// Padding for packed rows, in the buffer's token type.
trait FromPad {
    fn from_pad(pad: u32) -> Self;
}
impl<T: Token> FromPad for T {
    fn from_pad(pad: u32) -> T {
        let bytes = pad.to_le_bytes();
        // u16 takes the low two bytes; ids were checked against the vocabulary on writing.
        bytemuck::pod_read_unaligned(&bytes[..std::mem::size_of::<T>()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::manifest::EotMode;
    use crate::shards::reader::tests::build;
    use crate::shards::reader::Dataset;
    use std::collections::HashSet;

    fn cfg(b: u64, t: u64, mode: Mode, rank: u64, world: u64, packing: Packing) -> SamplerConfig {
        SamplerConfig {
            batch_size: b,
            seq_len: t,
            stride: t,
            mode,
            seed: 7,
            rank,
            world_size: world,
            packing,
            pool: 16,
            pad: 256,
        }
    }

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 5, 17, 64, 100, 1000] {
            let p = Permutation::new(n, 42);
            let image: HashSet<u64> = (0..n).map(|i| p.apply(i)).collect();
            assert_eq!(image.len() as u64, n);
            assert!(image.iter().all(|&x| x < n));
        }
        let (a, b) = (Permutation::new(1000, 1), Permutation::new(1000, 2));
        assert!((0..1000).any(|i| a.apply(i) != b.apply(i)));
    }

    #[test]
    fn permutation_looks_shuffled() {
        // Not a test of randomness, a guard against orders a training run would notice:
        // runs of neighbours, or images that follow their index.
        for (n, seed) in [(10_000u64, 0u64), (65_536, 7), (100_003, 123)] {
            let p = Permutation::new(n, seed);
            let image: Vec<u64> = (0..n).map(|i| p.apply(i)).collect();
            assert_eq!(image.iter().collect::<HashSet<_>>().len() as u64, n);
            let ascents = image.windows(2).filter(|w| w[1] > w[0]).count() as f64;
            assert!(
                (ascents / n as f64 - 0.5).abs() < 0.02,
                "n={n}: {ascents} ascents"
            );
            let neighbours = image
                .windows(2)
                .filter(|w| w[0].abs_diff(w[1]) == 1)
                .count();
            assert!(
                neighbours < 10,
                "n={n}: {neighbours} neighbours kept together"
            );
            let mean = (n - 1) as f64 / 2.0;
            let cov: f64 = image
                .iter()
                .enumerate()
                .map(|(i, &x)| (i as f64 - mean) * (x as f64 - mean))
                .sum();
            let var: f64 = (0..n).map(|i| (i as f64 - mean).powi(2)).sum();
            assert!((cov / var).abs() < 0.03, "n={n}: correlation {}", cov / var);
        }
    }

    fn dataset(shard_size: u64) -> (tempfile::TempDir, Arc<Split>) {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 300, shard_size, EotMode::Append);
        let ds = Dataset::open(dir.path()).unwrap();
        let split = ds.split("train").unwrap().clone();
        (dir, split)
    }

    fn batch(s: &mut Sampler) -> Vec<u16> {
        let mut out = vec![0u16; (s.cfg.batch_size * (s.cfg.seq_len + 1)) as usize];
        s.next_into(&mut out).unwrap();
        out
    }

    #[test]
    fn sequential_matches_llm_c_positions() {
        let (_d, split) = dataset(100);
        let (b, t) = (2u64, 8u64);
        let mut s0 = Sampler::new(
            split.clone(),
            cfg(b, t, Mode::Sequential, 0, 2, Packing::Off),
        )
        .unwrap();
        let mut s1 = Sampler::new(
            split.clone(),
            cfg(b, t, Mode::Sequential, 1, 2, Packing::Off),
        )
        .unwrap();
        let tokens = split.shards()[0].tokens::<u16>().unwrap();
        // llm.c: rank r reads B*T+1 tokens at g*B*T*W + r*B*T.
        for g in 0..3usize {
            for (r, s) in [&mut s0, &mut s1].into_iter().enumerate() {
                let got = batch(s);
                let at = g * 32 + r * 16;
                for row in 0..2 {
                    let want = &tokens[at + row * 8..at + row * 8 + 9];
                    assert_eq!(&got[row * 9..row * 9 + 9], want, "g{g} r{r} row{row}");
                }
            }
        }
    }

    #[test]
    fn random_epoch_covers_each_window_once_and_resumes() {
        let (_d, split) = dataset(64);
        let c = cfg(3, 5, Mode::Random, 0, 1, Packing::Off);
        let mut s = Sampler::new(split.clone(), c.clone()).unwrap();
        let per_epoch = s.batches_per_epoch().unwrap();
        let mut seen = HashSet::new();
        for _ in 0..per_epoch {
            let (rows, _) = s.plan().unwrap();
            for r in rows {
                assert!(seen.insert(r[0].start), "window repeated");
                let (sh, local) = split.locate(r[0].start);
                assert!(
                    local + 6 <= split.shards()[sh].len(),
                    "window crosses a shard end"
                );
            }
        }
        assert_eq!(seen.len() as u64, per_epoch * 3);
        assert!(s.num_windows() - seen.len() as u64 <= 2);
        // Resume mid-way equals the uninterrupted stream.
        let mut a = Sampler::new(split.clone(), c.clone()).unwrap();
        let mut b = Sampler::new(split.clone(), c).unwrap();
        for _ in 0..5 {
            batch(&mut a);
        }
        b.load_state_json(&a.state_json()).unwrap();
        for _ in 0..50 {
            assert_eq!(batch(&mut a), batch(&mut b));
        }
    }

    #[test]
    fn packed_rows_hold_whole_documents() {
        let (_d, split) = dataset(40);
        let mut s =
            Sampler::new(split.clone(), cfg(4, 15, Mode::Random, 0, 1, Packing::Pad)).unwrap();
        for _ in 0..30 {
            let out = batch(&mut s);
            for (row, &len) in out.chunks(16).zip(s.last_lengths()) {
                let len = len as usize;
                // Real content ends with end-of-text unless a long document was cut.
                assert!(row[len..].iter().all(|&t| t == 256));
                if len < 16 {
                    assert_eq!(row[len - 1], 256);
                }
            }
        }
        let e = Sampler::new(split, cfg(4, 15, Mode::Random, 0, 1_000_000, Packing::Pad))
            .unwrap()
            .skip()
            .unwrap_err();
        assert!(e.to_string().contains("pack into"), "{e}");
    }

    #[test]
    fn packing_with_a_stride_longer_than_a_row_moves_on() {
        let (_d, split) = dataset(40);
        let mut c = cfg(2, 3, Mode::Sequential, 0, 1, Packing::Pad);
        c.stride = 9;
        let mut s = Sampler::new(split, c).unwrap();
        for _ in 0..200 {
            batch(&mut s);
        }
        assert!(s.state().epoch > 0);
    }

    #[test]
    fn best_fit_examples() {
        // The longest that fits first; what is left of the pool is dropped with its row.
        let p = best_fit(&[5, 3, 8, 2], 8);
        assert_eq!(p.rows, vec![vec![(2, 8)], vec![(0, 5), (1, 3)]]);
        assert_eq!((p.cropped, p.dropped), (vec![0, 0], 2));
        // Nothing fits the room left: the shortest left is cropped to it.
        let p = best_fit(&[10, 4, 0], 6);
        assert_eq!(p.rows, vec![vec![(1, 4), (0, 2)]]);
        assert_eq!((p.cropped, p.dropped), (vec![8], 0));
        // A document longer than a row is cropped to one row.
        let p = best_fit(&[20, 20], 7);
        assert_eq!(p.rows, vec![vec![(0, 7)], vec![(1, 7)]]);
        assert_eq!(p.cropped, vec![13, 13]);
    }

    fn best_fit_cfg(b: u64, t: u64, mode: Mode, rank: u64, world: u64, pool: u64) -> SamplerConfig {
        SamplerConfig {
            pool,
            ..cfg(b, t, mode, rank, world, Packing::BestFit)
        }
    }

    /// Every row starts at a document's start, is full, and is made of heads of documents;
    /// no document is used twice in an epoch (over all ranks).
    #[test]
    fn best_fit_rows_are_document_aligned_and_full() {
        let (_d, split) = dataset(40);
        let starts: HashSet<u64> = (0..split.num_docs())
            .map(|i| split.doc_start(i).unwrap())
            .collect();
        for mode in [Mode::Random, Mode::Sequential] {
            for pool in [7u64, 1000] {
                let mut ranks: Vec<Sampler> = (0..2)
                    .map(|r| Sampler::new(split.clone(), best_fit_cfg(3, 20, mode, r, 2, pool)))
                    .collect::<Result<_, _>>()
                    .unwrap();
                let mut used = HashSet::new();
                while ranks[0].state().epoch == 0 {
                    for s in &mut ranks {
                        let out = batch(s);
                        assert!(s.last_lengths().iter().all(|&l| l == 21));
                        let mut segs = vec![0u32; out.len()];
                        s.last_segments(&mut segs).unwrap();
                        for (pieces, row_segs) in s.pieces.iter().zip(segs.chunks(21)) {
                            assert_eq!(pieces.iter().map(|p| p.len).sum::<u64>(), 21);
                            let mut at = 0;
                            for (k, p) in pieces.iter().enumerate() {
                                assert!(starts.contains(&p.start), "a piece starts mid-document");
                                let (a, b) = split
                                    .doc_range(
                                        (0..split.num_docs())
                                            .find(|&i| split.doc_start(i).unwrap() == p.start)
                                            .unwrap(),
                                    )
                                    .unwrap();
                                assert!(p.len <= b - a);
                                assert!(p.len == b - a || k == pieces.len() - 1, "cropped early");
                                assert!(row_segs[at..at + p.len as usize]
                                    .iter()
                                    .all(|&x| x == k as u32));
                                at += p.len as usize;
                                if s.state().epoch == 0 {
                                    assert!(used.insert(p.start), "a document used twice");
                                }
                            }
                        }
                    }
                }
                assert!(!used.is_empty());
            }
        }
    }

    #[test]
    fn best_fit_resumes_mid_pool() {
        let (_d, split) = dataset(40);
        for mode in [Mode::Random, Mode::Sequential] {
            let c = best_fit_cfg(2, 12, mode, 1, 2, 9);
            let mut a = Sampler::new(split.clone(), c.clone()).unwrap();
            for k in 0..40 {
                let mut b = Sampler::new(split.clone(), c.clone()).unwrap();
                b.load_state_json(&a.state_json()).unwrap();
                for _ in 0..3 {
                    let mut probe = Sampler::new(split.clone(), c.clone()).unwrap();
                    probe.load_state_json(&b.state_json()).unwrap();
                    assert_eq!(batch(&mut b), batch(&mut probe), "k={k}");
                }
                let mut c2 = Sampler::new(split.clone(), c.clone()).unwrap();
                c2.load_state_json(&a.state_json()).unwrap();
                let want = batch(&mut c2);
                assert_eq!(batch(&mut a), want, "{mode:?} k={k}");
                assert_eq!(a.last_cropped(), c2.last_cropped());
            }
            assert!(a.state().epoch > 0, "the test should cross an epoch");
        }
    }

    #[test]
    fn best_fit_settings_and_states_are_checked() {
        let (_d, split) = dataset(40);
        let e = Sampler::new(split.clone(), best_fit_cfg(2, 8, Mode::Random, 0, 1, 0))
            .err()
            .unwrap();
        assert!(e.to_string().contains("pool"), "{e}");
        let e = Sampler::new(
            split.clone(),
            best_fit_cfg(100_000, 8, Mode::Random, 0, 1, 4),
        )
        .unwrap()
        .skip()
        .unwrap_err();
        assert!(e.to_string().contains("pack best-fit into"), "{e}");
        // A state of another pool size, or of padded packing, is refused.
        let a = Sampler::new(split.clone(), best_fit_cfg(2, 8, Mode::Random, 0, 1, 4)).unwrap();
        let mut b = Sampler::new(split.clone(), best_fit_cfg(2, 8, Mode::Random, 0, 1, 5)).unwrap();
        let e = b.load_state_json(&a.state_json()).unwrap_err().to_string();
        assert!(e.contains("pool Some(4)"), "{e}");
        let mut pad =
            Sampler::new(split.clone(), cfg(2, 8, Mode::Random, 0, 1, Packing::Pad)).unwrap();
        let e = pad
            .load_state_json(&a.state_json())
            .unwrap_err()
            .to_string();
        assert!(e.contains("packing bestfit"), "{e}");
        // Old states (packing written as true/false) still load.
        let json = pad.state_json();
        assert!(
            json.contains("\"packing\":true") && !json.contains("pool"),
            "{json}"
        );
        pad.load_state_json(&json).unwrap();
        // A cursor inside a pool, or an offset past its rows, is refused.
        let mut st: serde_json::Value = serde_json::from_str(&a.state_json()).unwrap();
        st["cursor"] = 3.into();
        let mut fresh =
            Sampler::new(split.clone(), best_fit_cfg(2, 8, Mode::Random, 0, 1, 4)).unwrap();
        assert!(fresh.load_state_json(&st.to_string()).is_err());
        st["cursor"] = 4.into();
        st["offset"] = 1000.into();
        assert!(fresh.load_state_json(&st.to_string()).is_err());
    }

    #[test]
    fn window_segments_follow_the_index() {
        let (_d, split) = dataset(40);
        let mut s =
            Sampler::new(split.clone(), cfg(4, 30, Mode::Random, 0, 1, Packing::Off)).unwrap();
        let starts: HashSet<u64> = (0..split.num_docs())
            .map(|i| split.doc_start(i).unwrap())
            .collect();
        for _ in 0..10 {
            batch(&mut s);
            let mut segs = vec![0u32; 4 * 31];
            s.last_segments(&mut segs).unwrap();
            for (&start, row) in s.last_starts().iter().zip(segs.chunks(31)) {
                assert_eq!(row[0], 0);
                for i in 1..31 {
                    let new_doc = starts.contains(&(start + i as u64));
                    assert_eq!(row[i], row[i - 1] + u32::from(new_doc));
                }
            }
        }
    }

    #[test]
    fn state_must_match_configuration() {
        let (_d, split) = dataset(64);
        let a = Sampler::new(split.clone(), cfg(3, 5, Mode::Random, 0, 1, Packing::Off)).unwrap();
        let mut b = Sampler::new(split, cfg(3, 6, Mode::Random, 0, 1, Packing::Off)).unwrap();
        let e = b.load_state_json(&a.state_json()).unwrap_err().to_string();
        assert!(e.contains("seq_len 5"), "{e}");
    }
}

/// Fuzzing the saved sampler state (issue 18): it comes from a checkpoint's `state.json` on
/// resume, so a damaged or hand-edited one must load or be refused, and a loaded one must
/// draw batches without a panic. `PROPTEST_CASES` sets the cases (see `crate::fuzz`).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{apply, config, edits};
    use crate::shards::manifest::EotMode;
    use crate::shards::reader::{tests::build, Dataset};
    use proptest::prelude::*;

    fn dataset(shard_size: u64) -> (tempfile::TempDir, Arc<Split>) {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 60, shard_size, EotMode::Append);
        let ds = Dataset::open(dir.path()).unwrap();
        let split = ds.split("train").unwrap().clone();
        (dir, split)
    }

    fn sampler(split: &Arc<Split>, mode: Mode, packing: Packing) -> Sampler {
        let cfg = SamplerConfig {
            batch_size: 2,
            seq_len: 8,
            stride: 8,
            mode,
            seed: 7,
            rank: 0,
            world_size: 1,
            packing,
            pool: 16,
            pad: 256,
        };
        Sampler::new(split.clone(), cfg).unwrap()
    }

    fn packings() -> impl Strategy<Value = Packing> {
        prop_oneof![
            Just(Packing::Off),
            Just(Packing::Pad),
            Just(Packing::BestFit)
        ]
    }

    fn draw(s: &mut Sampler) {
        let mut out = vec![0u16; (s.cfg.batch_size * s.row_len()) as usize];
        for _ in 0..3 {
            let _ = s.next_into(&mut out);
            let _ = s.skip();
        }
    }

    proptest! {
        #![proptest_config(config(64))]

        /// The position fields set to any value, near the valid ones or not.
        #[test]
        fn any_position_loads_or_is_refused(
            sequential in any::<bool>(),
            packing in packings(),
            fields in prop::collection::vec(prop_oneof![0..400u64, any::<u64>()], 5),
        ) {
            let (_dir, split) = dataset(100);
            let mode = if sequential { Mode::Sequential } else { Mode::Random };
            let mut s = sampler(&split, mode, packing);
            let mut state: serde_json::Value = serde_json::from_str(&s.state_json()).unwrap();
            for (name, v) in ["epoch", "shard", "cursor", "offset", "batches"].iter().zip(&fields) {
                state[name] = (*v).into();
            }
            if s.load_state_json(&state.to_string()).is_ok() {
                draw(&mut s);
            }
        }

        #[test]
        fn damaged_states_load_or_are_refused(sequential in any::<bool>(), packing in packings(), e in edits()) {
            let (_dir, split) = dataset(100);
            let mode = if sequential { Mode::Sequential } else { Mode::Random };
            let mut s = sampler(&split, mode, packing);
            draw(&mut s);
            let damaged = apply(s.state_json().as_bytes(), &e);
            let mut fresh = sampler(&split, mode, packing);
            if let Ok(text) = std::str::from_utf8(&damaged) {
                if fresh.load_state_json(text).is_ok() {
                    draw(&mut fresh);
                }
            }
        }
    }
}

/// The best-fit packer against a written-out reference, and what every packing must keep.
#[cfg(test)]
mod best_fit_props {
    use super::{best_fit, BestFit};
    use proptest::prelude::*;

    /// The rule of [`best_fit`], by scanning a list.
    fn reference(lens: &[u64], row: u64) -> BestFit {
        let mut left: Vec<usize> = (0..lens.len()).filter(|&i| lens[i] > 0).collect();
        let (mut rows, mut cropped, mut dropped) = (Vec::new(), Vec::new(), 0);
        while !left.is_empty() {
            let (mut pieces, mut room, mut cut) = (Vec::new(), row, 0);
            while room > 0 && !left.is_empty() {
                let fit = left
                    .iter()
                    .copied()
                    .filter(|&i| lens[i] <= room)
                    .max_by_key(|&i| (lens[i], i));
                let pick = fit
                    .unwrap_or_else(|| left.iter().copied().min_by_key(|&i| (lens[i], i)).unwrap());
                left.retain(|&i| i != pick);
                let take = lens[pick].min(room);
                pieces.push((pick, take));
                cut += lens[pick] - take;
                room -= take;
            }
            if room > 0 {
                dropped = row - room;
                break;
            }
            rows.push(pieces);
            cropped.push(cut);
        }
        BestFit {
            rows,
            cropped,
            dropped,
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(256))]

        #[test]
        fn best_fit_is_the_reference(
            lens in prop::collection::vec(prop_oneof![0..12u64, 0..80u64], 0..60),
            row in 1..40u64,
        ) {
            prop_assert_eq!(best_fit(&lens, row), reference(&lens, row));
        }

        #[test]
        fn best_fit_rows_are_full_and_every_token_is_counted(
            lens in prop::collection::vec(1..100u64, 0..80),
            row in 1..64u64,
        ) {
            let p = best_fit(&lens, row);
            let mut used = vec![false; lens.len()];
            for (pieces, &cut) in p.rows.iter().zip(&p.cropped) {
                prop_assert_eq!(pieces.iter().map(|&(_, n)| n).sum::<u64>(), row);
                for (k, &(d, n)) in pieces.iter().enumerate() {
                    prop_assert!(!used[d], "document {} used twice", d);
                    used[d] = true;
                    prop_assert!(n <= lens[d] && n > 0);
                    // Only a row's last document is cropped.
                    prop_assert!(n == lens[d] || k + 1 == pieces.len());
                }
                let last = pieces.last().unwrap();
                prop_assert_eq!(cut, lens[last.0] - last.1);
            }
            let placed: u64 = p.rows.len() as u64 * row + p.cropped.iter().sum::<u64>();
            let unused: u64 = (0..lens.len()).filter(|&i| !used[i]).map(|i| lens[i]).sum();
            // What no row holds is what the last, dropped row held: less than a row.
            prop_assert_eq!(unused, p.dropped);
            prop_assert!(p.dropped < row);
            prop_assert_eq!(placed + unused, lens.iter().sum::<u64>());
        }
    }
}
