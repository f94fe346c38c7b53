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
//! With `packing`, rows are built from whole documents instead of windows: documents (each
//! with its end-of-text) are placed one after another while they fit, so a row starts at a
//! document's start and ends right after an end-of-text, and the rest of the row is padded
//! with end-of-text. A document longer than a row is cut into windows of `T + 1` every `s`
//! tokens, each starting a row of its own. Document order is the index order (`sequential`) or
//! a seeded permutation per epoch (`random`).
//!
//! ## Resuming
//! The state is four integers (epoch, shard, cursor, offset); saving it after batch `k` and
//! loading it into a fresh sampler with the same configuration gives batch `k + 1` next.

use super::reader::{Split, Token};
use super::ShardError;
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
    pub packing: bool,
    /// The padding token of packed rows (end-of-text).
    pub pad: u32,
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
    packing: bool,
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

/// Hints the CPU to start loading `data` (its first 4 KB: the hardware prefetcher streams the
/// rest of a longer row) into its L2 cache.
#[inline]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let p = data.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(data).min(4096)).step_by(64) {
            // SAFETY: a prefetch never faults, and the address lies inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

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
            split,
            cfg,
            window_base,
            state: SamplerState::default(),
        };
        if sampler.cfg.packing {
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
        if self.cfg.packing {
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

    fn permutation(&self, n: u64) -> Permutation {
        Permutation::new(n, self.cfg.seed ^ splitmix64(self.state.epoch ^ 0x5eed))
    }

    /// The split-wide start of window `w` (of the whole split's tiling).
    fn window_start(&self, w: u64) -> u64 {
        let s = self.window_base.partition_point(|&b| b <= w) - 1;
        self.split.shard_base(s) + (w - self.window_base[s]) * self.cfg.stride
    }

    /// Advances by one global batch and returns this rank's rows.
    fn plan(&mut self) -> Result<Vec<Vec<Piece>>, ShardError> {
        if self.cfg.packing {
            return self.plan_packed();
        }
        self.plan_windows()?;
        let len = self.row_len();
        Ok(self
            .starts
            .iter()
            .map(|&start| vec![Piece { start, len }])
            .collect())
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
        if self.cfg.packing {
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
        if !self.cfg.packing {
            return self.next_windows_into(out);
        }
        let saved = self.state.clone();
        let rows = self.plan()?;
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
                    .for_each(|s| prefetch(s));
                let rows = self.starts.iter().zip(out.chunks_exact_mut(row));
                for (i, (&start, dst)) in rows.enumerate() {
                    if let Some(Some(ahead)) = sources.get(i + PREFETCH_ROWS) {
                        prefetch(ahead);
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
        let checks: [(&str, String, String); 10] = [
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
                saved.packing.to_string(),
                mine.packing.to_string(),
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
        let in_range = if self.cfg.packing {
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

    fn cfg(b: u64, t: u64, mode: Mode, rank: u64, world: u64, packing: bool) -> SamplerConfig {
        SamplerConfig {
            batch_size: b,
            seq_len: t,
            stride: t,
            mode,
            seed: 7,
            rank,
            world_size: world,
            packing,
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
        let mut s0 = Sampler::new(split.clone(), cfg(b, t, Mode::Sequential, 0, 2, false)).unwrap();
        let mut s1 = Sampler::new(split.clone(), cfg(b, t, Mode::Sequential, 1, 2, false)).unwrap();
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
        let c = cfg(3, 5, Mode::Random, 0, 1, false);
        let mut s = Sampler::new(split.clone(), c.clone()).unwrap();
        let per_epoch = s.batches_per_epoch().unwrap();
        let mut seen = HashSet::new();
        for _ in 0..per_epoch {
            let rows = s.plan().unwrap();
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
        let mut s = Sampler::new(split.clone(), cfg(4, 15, Mode::Random, 0, 1, true)).unwrap();
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
        let e = Sampler::new(split, cfg(4, 15, Mode::Random, 0, 1_000_000, true))
            .unwrap()
            .skip()
            .unwrap_err();
        assert!(e.to_string().contains("pack into"), "{e}");
    }

    #[test]
    fn packing_with_a_stride_longer_than_a_row_moves_on() {
        let (_d, split) = dataset(40);
        let mut c = cfg(2, 3, Mode::Sequential, 0, 1, true);
        c.stride = 9;
        let mut s = Sampler::new(split, c).unwrap();
        for _ in 0..200 {
            batch(&mut s);
        }
        assert!(s.state().epoch > 0);
    }

    #[test]
    fn state_must_match_configuration() {
        let (_d, split) = dataset(64);
        let a = Sampler::new(split.clone(), cfg(3, 5, Mode::Random, 0, 1, false)).unwrap();
        let mut b = Sampler::new(split, cfg(3, 6, Mode::Random, 0, 1, false)).unwrap();
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

    fn sampler(split: &Arc<Split>, mode: Mode, packing: bool) -> Sampler {
        let cfg = SamplerConfig {
            batch_size: 2,
            seq_len: 8,
            stride: 8,
            mode,
            seed: 7,
            rank: 0,
            world_size: 1,
            packing,
            pad: 256,
        };
        Sampler::new(split.clone(), cfg).unwrap()
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
            packing in any::<bool>(),
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
        fn damaged_states_load_or_are_refused(sequential in any::<bool>(), packing in any::<bool>(), e in edits()) {
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
