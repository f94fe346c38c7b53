//! Counting a corpus's pre-tokenizer chunks: the first half of BPE training.
//!
//! Training only needs each distinct chunk (pre-tokenizer piece) and how often it occurs, so
//! the corpus streams through and memory grows with the number of distinct chunks, never with
//! the corpus size. Special tokens are cut out of the text first: no chunk, and so no merge,
//! ever spans or contains one.
//!
//! Work is split into units of about `UNIT_BYTES`, grouped, and counted on the rayon pool,
//! each group into a small local map (short chunks packed into a `u64` key, longer ones keyed by
//! borrowed `&str`: no allocation per chunk). The local maps are then split by hash and folded,
//! shard by shard and in parallel, into the global counts, which own one copy of each distinct
//! chunk. Big texts (a whole `.txt` file) are cut into units at places where the known
//! pre-tokenizers always end a piece, so one text does not serialise the count; the cut never
//! changes the pieces (see `is_safe_cut`, and the tests that compare cut and uncut counts).

use super::{BpeError, Pattern};
use crate::parallel;
use aho_corasick::{AhoCorasick, MatchKind};
use rayon::prelude::*;
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::hash::BuildHasher;
use std::io::Read;
use std::path::Path;

/// Target size of one unit of parallel work.
const UNIT_BYTES: usize = 256 * 1024;
/// Bytes read from a file at a time by `add_file`.
const READ_BYTES: usize = 8 * 1024 * 1024;
/// The global counts are split into this many shards by hash, so folding in a wave of local
/// counts runs in parallel too.
const SHARDS: usize = 64;

/// The shard of a long chunk: bits of its hash that the maps themselves do not look at
/// (hashbrown takes the bucket from the low bits and a tag from the top seven).
#[inline]
fn shard_of(chunk: &[u8]) -> usize {
    (FxBuildHasher.hash_one(chunk) >> 40) as usize % SHARDS
}

/// The shard of a packed chunk: the top bits of another multiplicative hash.
#[inline]
fn shard_of_packed(key: u64) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
}

/// Most chunks are short (` the`, `ing`): up to 7 bytes are packed into a `u64`, bytes first
/// and the length in the top byte, so counting them hashes and compares one integer instead
/// of a string, and storing them allocates nothing.
#[inline]
fn pack(chunk: &[u8]) -> Option<u64> {
    if chunk.len() > 7 {
        return None;
    }
    let mut key = (chunk.len() as u64) << 56;
    for (i, &b) in chunk.iter().enumerate() {
        key |= (b as u64) << (8 * i);
    }
    Some(key)
}

fn unpack(key: u64) -> Box<[u8]> {
    let len = (key >> 56) as usize;
    key.to_le_bytes()[..len].into()
}

/// Counts, split by length: packed short chunks and the rest.
#[derive(Debug, Default)]
struct Counts<K> {
    short: FxHashMap<u64, u64>,
    long: FxHashMap<K, u64>,
}

fn add_to<K: std::borrow::Borrow<[u8]> + std::hash::Hash + Eq + for<'a> From<&'a [u8]>>(
    map: &mut FxHashMap<K, u64>,
    chunk: &[u8],
    count: u64,
) {
    match map.get_mut(chunk) {
        Some(total) => *total += count,
        None => {
            map.insert(K::from(chunk), count);
        }
    }
}

/// Distinct pre-tokenizer chunks of a corpus and their counts.
#[derive(Debug)]
pub struct ChunkCounter {
    pattern: Pattern,
    specials: Option<AhoCorasick>,
    /// Whether texts may be cut at `is_safe_cut` points: only for the hand-written patterns,
    /// and only when no special token holds a newline (which a cut could split).
    cuttable: bool,
    shards: Vec<Counts<Box<[u8]>>>,
    n_texts: u64,
    n_chunks: u64,
    n_bytes: u64,
}

impl ChunkCounter {
    /// A counter splitting text with `pattern`; occurrences of `special_tokens` are removed
    /// from the text before splitting (they are reserved, not learned).
    pub fn new(pattern: Pattern, special_tokens: &[String]) -> Result<ChunkCounter, BpeError> {
        if let Some(s) = special_tokens.iter().find(|s| s.is_empty()) {
            return Err(BpeError::Settings(format!("special token {s:?} is empty")));
        }
        let specials = if special_tokens.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(special_tokens)
                    .map_err(|e| BpeError::Settings(format!("special tokens: {e}")))?,
            )
        };
        let cuttable = !matches!(pattern, Pattern::Custom(_))
            && !special_tokens.iter().any(|s| s.contains('\n'));
        Ok(ChunkCounter {
            pattern,
            specials,
            cuttable,
            shards: (0..SHARDS).map(|_| Counts::default()).collect(),
            n_texts: 0,
            n_chunks: 0,
            n_bytes: 0,
        })
    }

    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Texts counted so far.
    pub fn n_texts(&self) -> u64 {
        self.n_texts
    }

    /// Chunks counted so far (with repeats).
    pub fn n_chunks(&self) -> u64 {
        self.n_chunks
    }

    /// Distinct chunks so far.
    pub fn n_unique(&self) -> usize {
        self.shards
            .iter()
            .map(|c| c.short.len() + c.long.len())
            .sum()
    }

    /// Bytes of text counted so far.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Adds `count` occurrences of one chunk, as if it had been read that often.
    pub fn add_chunk(&mut self, chunk: &[u8], count: u64) {
        if count == 0 {
            return;
        }
        self.n_chunks += count;
        match pack(chunk) {
            Some(key) => {
                *self.shards[shard_of_packed(key)]
                    .short
                    .entry(key)
                    .or_insert(0) += count
            }
            None => add_to(&mut self.shards[shard_of(chunk)].long, chunk, count),
        }
    }

    /// Counts the chunks of `texts`, in parallel.
    pub fn add_texts<S: AsRef<str> + Sync>(&mut self, texts: &[S]) -> Result<(), BpeError> {
        let mut units: Vec<&str> = Vec::with_capacity(texts.len());
        for t in texts {
            let t = t.as_ref();
            self.n_texts += 1;
            self.n_bytes += t.len() as u64;
            self.push_units(t, &mut units);
        }
        self.count_units(&units)
    }

    /// Counts the chunks of one UTF-8 text file (one document), streaming it in blocks.
    /// After each block `progress` gets the file's bytes counted so far; when it returns
    /// false, counting stops there (the file is then only partly counted) and this returns
    /// `Ok(false)`.
    ///
    /// Errors name the file, and for bad UTF-8 the byte offset of the first bad byte.
    pub fn add_file(
        &mut self,
        path: &Path,
        mut progress: impl FnMut(u64) -> bool,
    ) -> Result<bool, BpeError> {
        let io_err = |source| BpeError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io_err)?;
        let mut buf: Vec<u8> = Vec::new();
        let mut offset: u64 = 0; // file offset of buf[0]
        let mut eof = false;
        self.n_texts += 1;
        while !eof {
            let filled = buf.len();
            buf.resize(filled + READ_BYTES, 0);
            let n = read_full(&mut file, &mut buf[filled..]).map_err(io_err)?;
            buf.truncate(filled + n);
            eof = n < READ_BYTES;
            // Count up to the last safe cut (all of it at the end of the file, or when the
            // pattern cannot be cut), keep the rest for the next block.
            let end = if eof {
                buf.len()
            } else if self.cuttable {
                match last_safe_cut(&buf) {
                    Some(cut) => cut,
                    None => continue,
                }
            } else {
                continue;
            };
            let text = std::str::from_utf8(&buf[..end]).map_err(|e| BpeError::Encoding {
                path: path.to_path_buf(),
                offset: offset + e.valid_up_to() as u64,
                message: match e.error_len() {
                    Some(_) => format!("invalid UTF-8 byte 0x{:02x}", buf[e.valid_up_to()]),
                    None => "truncated UTF-8 sequence at the end of the file".into(),
                },
            })?;
            self.n_bytes += text.len() as u64;
            let mut units = Vec::new();
            self.push_units(text, &mut units);
            self.count_units(&units)?;
            buf.drain(..end);
            offset += end as u64;
            if !progress(offset) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The counts, one entry per distinct chunk, in no particular order.
    pub fn into_counts(self) -> Vec<(Box<[u8]>, u64)> {
        let mut out = Vec::with_capacity(self.n_unique());
        for shard in self.shards {
            out.extend(shard.short.into_iter().map(|(k, c)| (unpack(k), c)));
            out.extend(shard.long);
        }
        out
    }

    /// Appends `text`'s units of work: the stretches between special tokens, cut into pieces
    /// of about `UNIT_BYTES` where that is safe.
    fn push_units<'t>(&self, text: &'t str, units: &mut Vec<&'t str>) {
        let mut push = |mut s: &'t str| {
            while self.cuttable && s.len() > 2 * UNIT_BYTES {
                match safe_cut_after(s, UNIT_BYTES) {
                    Some(cut) => {
                        units.push(&s[..cut]);
                        s = &s[cut..];
                    }
                    None => break,
                }
            }
            if !s.is_empty() {
                units.push(s);
            }
        };
        match &self.specials {
            None => push(text),
            Some(ac) => {
                let mut start = 0;
                for m in ac.find_iter(text) {
                    push(&text[start..m.start()]);
                    start = m.end();
                }
                push(&text[start..]);
            }
        }
    }

    fn count_units(&mut self, units: &[&str]) -> Result<(), BpeError> {
        if units.is_empty() {
            return Ok(());
        }
        // Group small units (short documents) so each task has enough work to be worth it.
        let mut groups: Vec<&[&str]> = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, u) in units.iter().enumerate() {
            bytes += u.len();
            if bytes >= UNIT_BYTES {
                groups.push(&units[start..=i]);
                start = i + 1;
                bytes = 0;
            }
        }
        if start < units.len() {
            groups.push(&units[start..]);
        }
        // Count a wave of groups in parallel into local maps, split those by shard, then fold
        // each shard of them into the global shard, in parallel. The wave keeps the local maps
        // in flight (and so memory) proportional to the threads.
        type Parts<'t> = Vec<(Vec<(u64, u64)>, Vec<(&'t str, u64)>)>;
        let wave = 2 * parallel::num_threads();
        for groups in groups.chunks(wave) {
            let pattern = &self.pattern;
            let locals: Result<Vec<(Parts, u64)>, BpeError> = parallel::install(|| {
                groups
                    .par_iter()
                    .map(|group| {
                        let mut local: Counts<&str> = Counts::default();
                        let mut n = 0u64;
                        for unit in group.iter() {
                            pattern.split(unit, |piece| {
                                n += 1;
                                match pack(piece.as_bytes()) {
                                    Some(key) => *local.short.entry(key).or_insert(0) += 1,
                                    None => *local.long.entry(piece).or_insert(0) += 1,
                                }
                            })?;
                        }
                        let mut parts: Parts = vec![(Vec::new(), Vec::new()); SHARDS];
                        for (key, c) in local.short {
                            parts[shard_of_packed(key)].0.push((key, c));
                        }
                        for (piece, c) in local.long {
                            parts[shard_of(piece.as_bytes())].1.push((piece, c));
                        }
                        Ok((parts, n))
                    })
                    .collect()
            });
            let locals = locals?;
            self.n_chunks += locals.iter().map(|(_, n)| n).sum::<u64>();
            parallel::install(|| {
                self.shards
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(s, shard)| {
                        for (parts, _) in &locals {
                            for &(key, c) in &parts[s].0 {
                                *shard.short.entry(key).or_insert(0) += c;
                            }
                            for &(piece, c) in &parts[s].1 {
                                add_to(&mut shard.long, piece.as_bytes(), c);
                            }
                        }
                    })
            });
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the reader is exhausted; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether byte offset `i` of `b` is a safe cut: `b[i-2]` is printable ASCII (not space),
/// `b[i-1]` is `\n` and `b[i]` an ASCII letter.
///
/// Why that is safe for the gpt2, cl100k and o200k patterns: no alternative of those
/// regexes lets a piece run from a newline into a letter (the optional prefix before letters
/// excludes `\r\n`, and the pieces that hold newlines hold only whitespace, punctuation or
/// `/`), so a piece always ends after that `\n`. The patterns look ahead but never behind, so
/// the text after the cut splits as before. The one alternative that reads the end of the text,
/// `\s++$`, matches the lone `\n` at the end of the first half, which is the piece the uncut
/// text has there too (the byte before it is not whitespace, so no longer run of whitespace
/// ends at the cut).
#[inline]
fn is_safe_cut(b: &[u8], i: usize) -> bool {
    i >= 2
        && i < b.len()
        && b[i - 1] == b'\n'
        && b[i].is_ascii_alphabetic()
        && b[i - 2].is_ascii_graphic()
}

/// The first safe cut at or after byte `from`.
fn safe_cut_after(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = from.max(2);
    while let Some(k) = memchr_newline(&b[i - 1..]) {
        let cut = i - 1 + k + 1;
        if cut >= b.len() {
            return None;
        }
        if is_safe_cut(b, cut) {
            return Some(cut);
        }
        i = cut + 1;
    }
    None
}

/// The last safe cut in `b` (which may end inside a UTF-8 sequence: cuts are at ASCII bytes).
fn last_safe_cut(b: &[u8]) -> Option<usize> {
    (2..b.len()).rev().find(|&i| is_safe_cut(b, i))
}

#[inline]
fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted(c: ChunkCounter) -> Vec<(Vec<u8>, u64)> {
        let mut v: Vec<_> = c
            .into_counts()
            .into_iter()
            .map(|(k, n)| (k.into_vec(), n))
            .collect();
        v.sort();
        v
    }

    fn reference_counts(pattern: &Pattern, text: &str) -> Vec<(Vec<u8>, u64)> {
        let mut m: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
        for p in pattern.reference().pieces(text).unwrap() {
            *m.entry(p.as_bytes().to_vec()).or_default() += 1;
        }
        m.into_iter().collect()
    }

    #[test]
    fn counts_pieces_and_skips_special_tokens() {
        let mut c =
            ChunkCounter::new(Pattern::new("gpt2").unwrap(), &["<|endoftext|>".into()]).unwrap();
        c.add_texts(&["hello world<|endoftext|>hello", " world"])
            .unwrap();
        assert_eq!(c.n_chunks(), 4);
        assert_eq!(c.n_texts(), 2);
        assert_eq!(
            sorted(c),
            vec![(b" world".to_vec(), 2), (b"hello".to_vec(), 2)]
        );
    }

    proptest! {
        #[test]
        fn packing_is_one_to_one(a in proptest::collection::vec(0u8..4, 0..9), b in proptest::collection::vec(0u8..4, 0..9)) {
            match (pack(&a), pack(&b)) {
                (Some(x), Some(y)) => {
                    prop_assert_eq!(x == y, a == b);
                    prop_assert_eq!(&*unpack(x), &a[..]);
                }
                (x, y) => prop_assert_eq!((x.is_none(), y.is_none()), (a.len() > 7, b.len() > 7)),
            }
        }
    }

    #[test]
    fn safe_cuts_are_where_expected() {
        let b = b"ab\ncd  \nef.\n\ng!\nh";
        let cuts: Vec<usize> = (0..b.len()).filter(|&i| is_safe_cut(b, i)).collect();
        assert_eq!(cuts, vec![3, b.len() - 1]);
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        // Short words, spaces, newlines, punctuation and some non-ASCII, so cuts and the
        // awkward whitespace alternatives are both common.
        proptest::collection::vec(
            prop_oneof![
                Just("a".to_string()),
                Just("Zed".to_string()),
                Just(" ".to_string()),
                Just("\n".to_string()),
                Just("\r\n".to_string()),
                Just("  ".to_string()),
                Just("'s".to_string()),
                Just("12345".to_string()),
                Just("!?".to_string()),
                Just("/".to_string()),
                Just("é".to_string()),
                Just("\u{a0}".to_string()),
                Just("\t".to_string()),
            ],
            0..400,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn cutting_never_changes_counts(text in text_strategy()) {
            for name in ["gpt2", "cl100k", "o200k"] {
                let pattern = Pattern::new(name).unwrap();
                let expected = reference_counts(&pattern, &text);
                // Cut at every safe point by hand, count the parts.
                let b = text.as_bytes();
                let mut parts = Vec::new();
                let mut start = 0;
                for i in 0..b.len() {
                    if is_safe_cut(b, i) {
                        parts.push(&text[start..i]);
                        start = i;
                    }
                }
                parts.push(&text[start..]);
                let mut c = ChunkCounter::new(pattern.clone(), &[]).unwrap();
                c.add_texts(&parts).unwrap();
                prop_assert_eq!(sorted(c), expected, "pattern {}", name);
            }
        }
    }

    #[test]
    fn big_texts_and_files_count_like_small_ones() {
        let mut text = String::new();
        for i in 0..60_000 {
            text.push_str(&format!(
                "Line {i} has words, numbers 12{i} and\u{a0}spaces  \n"
            ));
            if i % 7 == 0 {
                text.push_str("x\n\n  \r\n");
            }
        }
        assert!(text.len() > 4 * UNIT_BYTES);
        let pattern = Pattern::new("cl100k").unwrap();
        let expected = reference_counts(&pattern, &text);
        let mut c = ChunkCounter::new(pattern.clone(), &[]).unwrap();
        c.add_texts(&[&text]).unwrap();
        assert_eq!(sorted(c), expected);

        let dir = std::env::temp_dir().join(format!("gristmill-count-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.txt");
        // Bigger than one read block, so blocks are carried over.
        let big = text.repeat(READ_BYTES / text.len() + 2);
        std::fs::write(&path, &big).unwrap();
        let mut c = ChunkCounter::new(pattern.clone(), &[]).unwrap();
        assert!(c.add_file(&path, |_| true).unwrap());
        assert_eq!(c.n_bytes(), big.len() as u64);
        let mut expected_big = ChunkCounter::new(pattern, &[]).unwrap();
        expected_big.add_texts(&[&big]).unwrap();
        assert_eq!(sorted(c), sorted(expected_big));

        let mut bad = b"fine text\n".repeat(10);
        bad.extend_from_slice(b"caf\xe9 latin-1\n");
        std::fs::write(&path, &bad).unwrap();
        let mut c = ChunkCounter::new(Pattern::new("gpt2").unwrap(), &[]).unwrap();
        let e = c.add_file(&path, |_| true).unwrap_err().to_string();
        assert!(
            e.contains("big.txt") && e.contains("byte 103") && e.contains("0xe9"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
