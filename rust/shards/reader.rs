//! Reading a dataset: memory-mapped shards and indexes, validated on open.
//!
//! Nothing is read into memory up front: shards and indexes are mapped, and tokens are handed
//! out as slices of the map (numpy views, through `lib.rs`). Opening checks every header
//! against its file size and the manifest, as llm.c's C loader does; the checksums, which
//! need every byte, are checked by [`Dataset::verify`], and the token ids against a model's
//! vocabulary by [`Dataset::check_tokens`] (from the largest ids the manifest records).

use super::format::{self, Dtype, Header, IndexHeader, HEADER_BYTES};
use super::manifest::{Manifest, MANIFEST_NAME};
use super::ShardError;
use memmap2::Mmap;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// A token type a shard can hold.
pub trait Token: bytemuck::Pod + Send + Sync {
    const DTYPE: Dtype;
}
impl Token for u16 {
    const DTYPE: Dtype = Dtype::U16;
}
impl Token for u32 {
    const DTYPE: Dtype = Dtype::U32;
}

/// Tokens hashed and scanned per step: small enough to stay in cache between the two.
const SCAN_TOKENS: usize = 1 << 18;

/// The largest of `tokens`, or None when there are none.
fn max_of<T: Token + Ord + Into<u32>>(tokens: &[T]) -> Option<u32> {
    tokens.iter().copied().max().map(Into::into)
}

fn map_file(path: &Path) -> Result<(Mmap, u64), ShardError> {
    let file = File::open(path).map_err(|e| ShardError::io(path, e))?;
    let len = file.metadata().map_err(|e| ShardError::io(path, e))?.len();
    if len == 0 {
        // A zero-length file cannot be mapped; report it as the short file it is.
        return Err(ShardError::field(
            path,
            "file length",
            0,
            0,
            "a header (the file is empty)",
        ));
    }
    // SAFETY: the map is read-only. Files are only ever replaced by rename, never rewritten in
    // place, so a mapped file's bytes do not change under us.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ShardError::io(path, e))?;
    Ok((map, len))
}

/// One memory-mapped token shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    header: Header,
}

impl Shard {
    /// Maps and validates a shard. `strict` also requires the reserved header ints to be zero.
    pub fn open(path: &Path, strict: bool) -> Result<Shard, ShardError> {
        if cfg!(target_endian = "big") {
            return Err(ShardError::Settings(
                "shards are little-endian; this machine is big-endian".into(),
            ));
        }
        let (map, len) = map_file(path)?;
        let header = format::decode_header(path, &map, len, strict)?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dtype(&self) -> Dtype {
        self.header.dtype
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        self.header.count
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// The token bytes (after the header).
    pub fn payload(&self) -> &[u8] {
        &self.map[HEADER_BYTES..]
    }

    /// The tokens, if they are of type `T`.
    pub fn tokens<T: Token>(&self) -> Result<&[T], ShardError> {
        if T::DTYPE != self.dtype() {
            return Err(ShardError::Settings(format!(
                "{}: holds {} tokens, not {}",
                self.path.display(),
                self.dtype().name(),
                T::DTYPE.name()
            )));
        }
        // The map starts on a page boundary and the header is 1024 bytes, so this is aligned.
        bytemuck::try_cast_slice(self.payload()).map_err(|e| {
            ShardError::Settings(format!("{}: cannot view tokens: {e}", self.path.display()))
        })
    }

    /// xxh3-64 of the tokens.
    pub fn checksum(&self) -> u64 {
        xxh3_64(self.payload())
    }

    /// The largest token id (None for an empty shard). Reads every token.
    pub fn max_token(&self) -> Option<u32> {
        match self.dtype() {
            Dtype::U16 => max_of(self.tokens::<u16>().ok()?),
            Dtype::U32 => max_of(self.tokens::<u32>().ok()?),
        }
    }

    /// [`checksum`](Self::checksum) and [`max_token`](Self::max_token) in one pass.
    pub fn checksum_and_max(&self) -> (u64, Option<u32>) {
        fn scan<T: Token + Ord + Into<u32>>(tokens: &[T]) -> (u64, Option<u32>) {
            let mut hasher = Xxh3::new();
            let mut max = None;
            for chunk in tokens.chunks(SCAN_TOKENS) {
                hasher.update(bytemuck::cast_slice(chunk));
                max = max.max(max_of(chunk));
            }
            (hasher.digest(), max)
        }
        let scanned = match self.dtype() {
            Dtype::U16 => self.tokens::<u16>().map(scan),
            Dtype::U32 => self.tokens::<u32>().map(scan),
        };
        // The dtype matches by construction, so the views cannot fail.
        scanned.unwrap_or_else(|_| (self.checksum(), None))
    }

    /// The first token `>= limit`: (its index in the shard, its id).
    pub fn first_at_least(&self, limit: u64) -> Option<(u64, u32)> {
        fn find<T: Token + Into<u32>>(tokens: &[T], limit: u64) -> Option<(u64, u32)> {
            let i = tokens.iter().position(|&t| u64::from(t.into()) >= limit)?;
            Some((i as u64, tokens[i].into()))
        }
        match self.dtype() {
            Dtype::U16 => find(self.tokens::<u16>().ok()?, limit),
            Dtype::U32 => find(self.tokens::<u32>().ok()?, limit),
        }
    }
}

/// One memory-mapped document index.
pub struct ShardIndex {
    path: PathBuf,
    map: Mmap,
    header: IndexHeader,
}

impl ShardIndex {
    pub fn open(path: &Path) -> Result<ShardIndex, ShardError> {
        let (map, _) = map_file(path)?;
        let header = format::decode_index(path, &map)?;
        Ok(ShardIndex {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    pub fn header(&self) -> &IndexHeader {
        &self.header
    }

    fn array(&self, which: usize, len: usize) -> &[u64] {
        let start = self.header.array_offsets()[which];
        bytemuck::cast_slice(&self.map[start..start + 8 * len])
    }

    /// Token offsets (in the shard) where its documents start.
    pub fn starts(&self) -> &[u64] {
        self.array(0, self.header.n_docs as usize)
    }

    /// Positions of its documents in the tokenizer's input.
    pub fn positions(&self) -> &[u64] {
        self.array(1, self.header.n_docs as usize)
    }

    /// The source id of its `j`-th document.
    pub fn id(&self, j: usize) -> Result<&str, ShardError> {
        let offsets = self.array(2, self.header.n_docs as usize + 1);
        let base = self.header.array_offsets()[3];
        let (a, b) = (offsets[j] as usize, offsets[j + 1] as usize);
        std::str::from_utf8(&self.map[base + a..base + b]).map_err(|_| {
            ShardError::field(
                &self.path,
                "source id",
                (base + a) as u64,
                "invalid UTF-8",
                "UTF-8 text",
            )
        })
    }
}

/// The manifest and a shard's index record different checksums for the shard's tokens: hashes
/// the tokens (this only happens on the way to an error) to blame whichever of the three files
/// is wrong.
fn checksum_disagreement(
    manifest_path: &Path,
    listed: &str,
    idx: &ShardIndex,
    shard: &Shard,
) -> ShardError {
    let indexed = format::checksum_text(idx.header().checksum);
    let actual = format::checksum_text(shard.checksum());
    if actual == indexed {
        ShardError::manifest(
            manifest_path,
            format!(
                "lists checksum {listed} for {}, but its tokens hash to {actual}, as its index \
                 {} records: the manifest is damaged or belongs to other shards",
                shard.path().display(),
                idx.path.display()
            ),
        )
    } else if actual == listed {
        ShardError::field(
            &idx.path,
            "checksum",
            32,
            indexed,
            format!(
                "{actual} (the tokens of {} hash to it, as {MANIFEST_NAME} lists)",
                shard.path().display()
            ),
        )
    } else {
        ShardError::Checksum {
            path: shard.path().to_path_buf(),
            start: HEADER_BYTES as u64,
            end: HEADER_BYTES as u64 + shard.payload().len() as u64,
            found: actual,
            expected: listed.to_string(),
            source_of_expected: format!("{MANIFEST_NAME}; its index says {indexed}"),
        }
    }
}

/// The shards of one split, read as one stream of tokens and one list of documents.
pub struct Split {
    name: String,
    dtype: Dtype,
    shards: Vec<Shard>,
    /// One per shard, or none for bare llm.c shards.
    indexes: Vec<ShardIndex>,
    /// `token_base[i]`: tokens in shards before `i` (one more entry than shards).
    token_base: Vec<u64>,
    doc_base: Vec<u64>,
}

impl Split {
    /// The split `name` of the dataset described by `manifest` (at `manifest_path`).
    fn open(manifest_path: &Path, manifest: &Manifest, name: &str) -> Result<Split, ShardError> {
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        let entry = &manifest.splits[name];
        let dtype = manifest.settings.dtype;
        let mut shards = Vec::with_capacity(entry.shards.len());
        let mut indexes = Vec::with_capacity(entry.shards.len());
        let mut docs = 0u64;
        for s in &entry.shards {
            let shard = Shard::open(&dir.join(&s.file), true)?;
            let idx = ShardIndex::open(&dir.join(&s.index))?;
            let mismatch = |what: &str, listed: u64, found: u64, file: &Path| {
                ShardError::manifest(
                    manifest_path,
                    format!(
                        "{} lists {listed} {what} for {}, the file holds {found}",
                        MANIFEST_NAME,
                        file.display()
                    ),
                )
            };
            if shard.dtype() != dtype {
                return Err(ShardError::field(
                    shard.path(),
                    "version",
                    4,
                    shard.dtype().version(),
                    format!("{} ({} per the manifest)", dtype.version(), dtype.name()),
                ));
            }
            if shard.len() != s.tokens {
                return Err(mismatch("tokens", s.tokens, shard.len(), shard.path()));
            }
            let h = *idx.header();
            if h.n_tokens != shard.len() {
                return Err(ShardError::field(
                    &idx.path,
                    "token count",
                    16,
                    h.n_tokens,
                    format!("{} (the count of {})", shard.len(), shard.path().display()),
                ));
            }
            if h.n_docs != s.documents {
                return Err(mismatch("documents", s.documents, h.n_docs, &idx.path));
            }
            if h.first_doc != docs {
                return Err(ShardError::field(
                    &idx.path,
                    "documents before this shard",
                    24,
                    h.first_doc,
                    docs,
                ));
            }
            if format::checksum_text(h.checksum) != s.checksum {
                return Err(checksum_disagreement(
                    manifest_path,
                    &s.checksum,
                    &idx,
                    &shard,
                ));
            }
            if docs == 0 && !shard.is_empty() && idx.starts().first() != Some(&0) {
                return Err(ShardError::field(
                    &idx.path,
                    "first document start",
                    64,
                    idx.starts()
                        .first()
                        .map_or("none".into(), |v| v.to_string()),
                    "0: the first shard of a split starts with a document",
                ));
            }
            docs += h.n_docs;
            shards.push(shard);
            indexes.push(idx);
        }
        Ok(Split::new(name, dtype, shards, indexes))
    }

    /// A split of bare shards (llm.c's, or any without an index): tokens and windows work,
    /// documents do not.
    pub fn from_files(name: &str, paths: &[PathBuf]) -> Result<Split, ShardError> {
        let shards = paths
            .iter()
            .map(|p| Shard::open(p, false))
            .collect::<Result<Vec<_>, _>>()?;
        let dtype = shards.first().map_or(Dtype::U16, |s| s.dtype());
        if let Some(other) = shards.iter().find(|s| s.dtype() != dtype) {
            return Err(ShardError::field(
                other.path(),
                "version",
                4,
                other.dtype().version(),
                format!("{} like {}", dtype.version(), paths[0].display()),
            ));
        }
        Ok(Split::new(name, dtype, shards, Vec::new()))
    }

    fn new(name: &str, dtype: Dtype, shards: Vec<Shard>, indexes: Vec<ShardIndex>) -> Split {
        let mut token_base = vec![0];
        for s in &shards {
            token_base.push(token_base.last().unwrap() + s.len());
        }
        let mut doc_base = vec![0];
        for i in &indexes {
            doc_base.push(doc_base.last().unwrap() + i.header().n_docs);
        }
        Split {
            name: name.to_string(),
            dtype,
            shards,
            indexes,
            token_base,
            doc_base,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn num_tokens(&self) -> u64 {
        *self.token_base.last().unwrap()
    }

    pub fn has_documents(&self) -> bool {
        self.indexes.len() == self.shards.len()
    }

    pub fn num_docs(&self) -> u64 {
        *self.doc_base.last().unwrap()
    }

    /// Tokens before shard `i`.
    pub fn shard_base(&self, i: usize) -> u64 {
        self.token_base[i]
    }

    /// The shard holding token `t < num_tokens()` of the split, and `t`'s offset in it.
    pub fn locate(&self, t: u64) -> (usize, u64) {
        debug_assert!(t < self.num_tokens());
        // The last shard starting at or before `t` (empty shards are passed over).
        let s = self.token_base.partition_point(|&b| b <= t) - 1;
        (s, t - self.token_base[s])
    }

    fn check_range(&self, start: u64, stop: u64) -> Result<(), ShardError> {
        if start > stop || stop > self.num_tokens() {
            return Err(ShardError::OutOfRange {
                what: "token range end",
                index: if start > stop { start } else { stop },
                len: self.num_tokens(),
            });
        }
        Ok(())
    }

    /// Tokens `start..stop` as one slice of a map, when they lie in one shard.
    pub fn slice<T: Token>(&self, start: u64, stop: u64) -> Result<Option<&[T]>, ShardError> {
        self.check_range(start, stop)?;
        if start == stop {
            return Ok(Some(&[]));
        }
        let (s, local) = self.locate(start);
        if stop > self.token_base[s + 1] {
            return Ok(None);
        }
        let tokens = self.shards[s].tokens::<T>()?;
        Ok(Some(
            &tokens[local as usize..(local + stop - start) as usize],
        ))
    }

    /// Copies tokens `start..start + out.len()`, across shards if need be.
    pub fn copy_range<T: Token>(&self, start: u64, out: &mut [T]) -> Result<(), ShardError> {
        self.check_range(start, start + out.len() as u64)?;
        let mut done = 0usize;
        while done < out.len() {
            let (s, local) = self.locate(start + done as u64);
            let tokens = self.shards[s].tokens::<T>()?;
            let n = (tokens.len() - local as usize).min(out.len() - done);
            out[done..done + n].copy_from_slice(&tokens[local as usize..local as usize + n]);
            done += n;
        }
        Ok(())
    }

    fn need_documents(&self) -> Result<(), ShardError> {
        if self.has_documents() {
            Ok(())
        } else {
            Err(ShardError::Settings(format!(
                "split {:?} has no document index (bare shards)",
                self.name
            )))
        }
    }

    fn locate_doc(&self, i: u64) -> Result<(usize, usize), ShardError> {
        self.need_documents()?;
        if i >= self.num_docs() {
            return Err(ShardError::OutOfRange {
                what: "document",
                index: i,
                len: self.num_docs(),
            });
        }
        let s = self.doc_base.partition_point(|&b| b <= i) - 1;
        Ok((s, (i - self.doc_base[s]) as usize))
    }

    /// Where document `i`'s record (its tokens and end-of-text) starts in the split.
    pub fn doc_start(&self, i: u64) -> Result<u64, ShardError> {
        if i == self.num_docs() {
            self.need_documents()?;
            return Ok(self.num_tokens());
        }
        let (s, j) = self.locate_doc(i)?;
        Ok(self.token_base[s] + self.indexes[s].starts()[j])
    }

    /// The token range `[start, end)` of document `i`'s record.
    pub fn doc_range(&self, i: u64) -> Result<(u64, u64), ShardError> {
        Ok((self.doc_start(i)?, self.doc_start(i + 1)?))
    }

    /// Document `i`'s source id.
    pub fn doc_id(&self, i: u64) -> Result<&str, ShardError> {
        let (s, j) = self.locate_doc(i)?;
        self.indexes[s].id(j)
    }

    /// Document `i`'s position in the tokenizer's input.
    pub fn doc_position(&self, i: u64) -> Result<u64, ShardError> {
        let (s, j) = self.locate_doc(i)?;
        Ok(self.indexes[s].positions()[j])
    }
}

/// A dataset opened from its manifest.
pub struct Dataset {
    manifest_path: PathBuf,
    manifest: Manifest,
    splits: BTreeMap<String, Arc<Split>>,
}

impl Dataset {
    /// Opens `path`, a dataset directory or its `manifest.json`, mapping and validating every
    /// shard and index it lists.
    pub fn open(path: &Path) -> Result<Dataset, ShardError> {
        let manifest_path = if path.is_dir() {
            path.join(MANIFEST_NAME)
        } else {
            path.to_path_buf()
        };
        let manifest = Manifest::read(&manifest_path)?;
        let splits = manifest
            .splits
            .keys()
            .map(|name| {
                Split::open(&manifest_path, &manifest, name).map(|s| (name.clone(), Arc::new(s)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Dataset {
            manifest_path,
            manifest,
            splits,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The split called `name` (`train` or `val`).
    pub fn split(&self, name: &str) -> Result<&Arc<Split>, ShardError> {
        self.splits.get(name).ok_or_else(|| {
            ShardError::Settings(format!(
                "{}: no split {name:?}; it has {:?}",
                self.manifest_path.display(),
                self.splits.keys().collect::<Vec<_>>()
            ))
        })
    }

    /// Checks every shard's and index's checksum, and each shard's largest token id, against
    /// the manifest (reads every byte, on all threads).
    pub fn verify(&self) -> Result<(), ShardError> {
        let dir = self.manifest_path.parent().unwrap_or(Path::new("."));
        let mut jobs = Vec::new();
        for (name, entry) in &self.manifest.splits {
            let split = &self.splits[name];
            for (i, s) in entry.shards.iter().enumerate() {
                jobs.push((&split.shards[i], dir.join(&s.index), s));
            }
        }
        crate::parallel::install(|| {
            jobs.par_iter().try_for_each(|(shard, idx_path, entry)| {
                let (checksum, max) = shard.checksum_and_max();
                let found = format::checksum_text(checksum);
                if found != entry.checksum {
                    return Err(ShardError::Checksum {
                        path: shard.path().to_path_buf(),
                        start: HEADER_BYTES as u64,
                        end: HEADER_BYTES as u64 + shard.payload().len() as u64,
                        found,
                        expected: entry.checksum.clone(),
                        source_of_expected: MANIFEST_NAME.into(),
                    });
                }
                if let Some(listed) = entry.max_token.filter(|&m| Some(m) != max) {
                    return Err(ShardError::manifest(
                        &self.manifest_path,
                        format!(
                            "lists {listed} as the largest token of {}, the file's largest is {}",
                            shard.path().display(),
                            max.map_or("none (it is empty)".into(), |m| m.to_string())
                        ),
                    ));
                }
                let bytes = std::fs::read(idx_path).map_err(|e| ShardError::io(idx_path, e))?;
                let found = format::checksum_text(xxh3_64(&bytes));
                if found != entry.index_checksum {
                    return Err(ShardError::Checksum {
                        path: idx_path.clone(),
                        start: 0,
                        end: bytes.len() as u64,
                        found,
                        expected: entry.index_checksum.clone(),
                        source_of_expected: MANIFEST_NAME.into(),
                    });
                }
                Ok(())
            })
        })
    }

    /// Checks that every token id is below `vocab`, the model's vocabulary size, from the
    /// largest ids the manifest records; shards it records none for (older manifests) are
    /// read. Names the first token outside, by shard and position.
    pub fn check_tokens(&self, vocab: u64) -> Result<(), ShardError> {
        let mut jobs = Vec::new();
        for (name, entry) in &self.manifest.splits {
            for (shard, s) in self.splits[name].shards.iter().zip(&entry.shards) {
                jobs.push((shard, s.max_token));
            }
        }
        let largest: Vec<(Option<u32>, bool)> = crate::parallel::install(|| {
            jobs.par_iter()
                .map(|&(shard, recorded)| match recorded {
                    Some(m) => (Some(m), true),
                    None => (shard.max_token(), false),
                })
                .collect()
        });
        for (&(shard, _), &(max, recorded)) in jobs.iter().zip(&largest) {
            let Some(max) = max.filter(|&m| u64::from(m) >= vocab) else {
                continue;
            };
            // A recorded maximum that the tokens do not reach is the manifest's error, which
            // `verify` reports; training itself is safe.
            if let Some((offset, token)) = shard.first_at_least(vocab) {
                return Err(ShardError::TokenRange {
                    path: shard.path().to_path_buf(),
                    token,
                    offset,
                    largest: max,
                    recorded,
                    vocab,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::shards::manifest::{EotMode, SplitRule};
    use crate::shards::writer::tests::{byte_encoder, settings, texts};
    use crate::shards::writer::DatasetWriter;

    pub(crate) fn build(dir: &Path, n_docs: usize, shard_size: u64, eot: EotMode) -> Vec<String> {
        let docs = texts(n_docs);
        let enc = byte_encoder();
        let mut w =
            DatasetWriter::open(dir, settings(shard_size, eot, SplitRule::ValDocs(3))).unwrap();
        let ids: Vec<String> = (0..docs.len()).map(|i| format!("doc{i}")).collect();
        w.add_texts(&enc, &docs, &ids).unwrap();
        w.finish().unwrap();
        docs
    }

    #[test]
    fn documents_come_back_across_shards() {
        let dir = tempfile::tempdir().unwrap();
        let docs = build(dir.path(), 50, 9, EotMode::Prepend);
        let ds = Dataset::open(dir.path()).unwrap();
        ds.verify().unwrap();
        let train = ds.split("train").unwrap();
        assert_eq!(train.num_docs(), 47);
        assert!(train.shards().len() > 5);
        for i in 0..train.num_docs() {
            let (a, b) = train.doc_range(i).unwrap();
            let mut out = vec![0u16; (b - a) as usize];
            train.copy_range(a, &mut out).unwrap();
            assert_eq!(out[0], 256);
            let text: Vec<u8> = out[1..].iter().map(|&t| t as u8).collect();
            assert_eq!(text, docs[i as usize + 3].as_bytes());
            assert_eq!(train.doc_id(i).unwrap(), format!("doc{}", i + 3));
            assert_eq!(train.doc_position(i).unwrap(), i + 3);
        }
        let val = ds.split("val").unwrap();
        assert_eq!(val.num_docs(), 3);
        assert!(ds.split("test").is_err());
        assert!(train.doc_range(47).is_err());
        assert!(train.slice::<u16>(0, 10).unwrap().is_none());
        assert_eq!(train.slice::<u16>(0, 9).unwrap().unwrap().len(), 9);
        assert!(train.slice::<u32>(0, 9).is_err());
    }

    #[test]
    fn damage_is_reported_with_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 20, 16, EotMode::Append);
        let bin = dir.path().join("train_000001.bin");
        let mut bytes = std::fs::read(&bin).unwrap();
        bytes[1030] ^= 1;
        std::fs::write(&bin, &bytes).unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        let e = ds.verify().unwrap_err().to_string();
        assert!(
            e.contains("train_000001.bin: checksum of bytes 1024..1056"),
            "{e}"
        );

        std::fs::write(&bin, &bytes[..bytes.len() - 2]).unwrap();
        let e = Dataset::open(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("train_000001.bin: the header says 16 tokens"),
            "{e}"
        );
        assert!(e.contains("should be 1056 bytes, but it is 1054"), "{e}");
    }

    fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Manifest)) {
        let path = dir.join(MANIFEST_NAME);
        let mut m = Manifest::read(&path).unwrap();
        edit(&mut m);
        std::fs::write(&path, m.to_json()).unwrap();
    }

    #[test]
    fn token_ids_are_checked_against_a_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 30, 16, EotMode::Append);
        let ds = Dataset::open(dir.path()).unwrap();
        ds.check_tokens(257).unwrap();
        // Every document ends with end-of-text (256): the first one is the first id >= 200.
        let first_eot = ds.split("train").unwrap().shards()[0]
            .tokens::<u16>()
            .unwrap()
            .iter()
            .position(|&t| t == 256)
            .unwrap();
        let e = ds.check_tokens(200).unwrap_err().to_string();
        let bin = dir.path().join("train_000000.bin");
        assert_eq!(
            e,
            format!(
                "{}: token id 256 at token {first_eot} (largest recorded 256) is outside the \
                 model's vocabulary of 200; retokenize with the model's tokenizer or use a model \
                 with a larger vocab",
                bin.display()
            )
        );
        // An older manifest records no maximum: the shards are read instead.
        edit_manifest(dir.path(), |m| {
            for split in m.splits.values_mut() {
                split.shards.iter_mut().for_each(|s| s.max_token = None);
            }
        });
        let ds = Dataset::open(dir.path()).unwrap();
        ds.check_tokens(257).unwrap();
        let e = ds.check_tokens(200).unwrap_err().to_string();
        assert!(e.contains("(largest in the shard 256)"), "{e}");
        ds.verify().unwrap();
    }

    #[test]
    fn verify_checks_the_recorded_largest_token() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 30, 16, EotMode::Prepend);
        let ds = Dataset::open(dir.path()).unwrap();
        let split = ds.split("train").unwrap();
        for (shard, entry) in split
            .shards()
            .iter()
            .zip(&ds.manifest().splits["train"].shards)
        {
            let max = shard
                .tokens::<u16>()
                .unwrap()
                .iter()
                .max()
                .map(|&t| t as u32);
            assert_eq!(entry.max_token, max);
            assert_eq!(shard.checksum_and_max(), (shard.checksum(), max));
        }
        edit_manifest(dir.path(), |m| {
            m.splits.get_mut("train").unwrap().shards[1].max_token = Some(7)
        });
        let e = Dataset::open(dir.path()).unwrap().verify().unwrap_err();
        let bin = dir.path().join("train_000001.bin");
        let expect = format!(
            "lists 7 as the largest token of {}, the file's",
            bin.display()
        );
        assert!(e.to_string().contains(&expect), "{e}");
    }

    #[test]
    fn a_checksum_disagreement_blames_the_file_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 20, 16, EotMode::Append);
        let (bin, idx) = (
            dir.path().join("train_000001.bin"),
            dir.path().join("train_000001.idx"),
        );
        let good = std::fs::read(dir.path().join(MANIFEST_NAME)).unwrap();
        let open_err = || Dataset::open(dir.path()).err().unwrap().to_string();

        edit_manifest(dir.path(), |m| {
            m.splits.get_mut("train").unwrap().shards[1].checksum = "xxh3-64:00".into()
        });
        let e = open_err();
        assert!(
            e.contains("manifest.json: lists checksum xxh3-64:00 for"),
            "{e}"
        );
        std::fs::write(dir.path().join(MANIFEST_NAME), &good).unwrap();

        let mut idx_bytes = std::fs::read(&idx).unwrap();
        idx_bytes[32] ^= 1;
        std::fs::write(&idx, &idx_bytes).unwrap();
        let e = open_err();
        assert!(
            e.starts_with(&format!("{}: checksum at byte 32 is", idx.display())),
            "{e}"
        );

        // Index and manifest disagree and the tokens match neither: the shard is damaged.
        let mut bin_bytes = std::fs::read(&bin).unwrap();
        bin_bytes[1030] ^= 1;
        std::fs::write(&bin, &bin_bytes).unwrap();
        let e = open_err();
        assert!(
            e.starts_with(&format!("{}: checksum of bytes 1024..", bin.display())),
            "{e}"
        );
    }
}

/// Fuzzing dataset opening (issue 18): a dataset with one damaged file (a shard, an index or
/// the manifest) opens or is refused, never a panic or a hang; what opens can be read end to
/// end; and damage to a shard or an index is found by `open` or by `verify`. Bare shards of
/// any bytes open or are refused. `PROPTEST_CASES` sets the cases (see `crate::fuzz`).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{apply, config, edits, within};
    use crate::shards::manifest::EotMode;
    use proptest::prelude::*;

    /// Reads every document, id, position and token of every split, as the trainer and the
    /// Python API can.
    fn read_everything(ds: &Dataset) {
        for name in ds.manifest().splits.keys() {
            let split = ds.split(name).unwrap();
            let n = split.num_tokens();
            let mut all = vec![0u16; n as usize];
            if split.dtype() == Dtype::U16 {
                split.copy_range(0, &mut all).unwrap();
            }
            let _ = split.slice::<u16>(0, n);
            let _ = split.slice::<u32>(0, n);
            for i in 0..split.num_docs() {
                let (a, b) = split.doc_range(i).unwrap();
                assert!(a < b && b <= n, "document {i}: {a}..{b} of {n}");
                let _ = split.doc_id(i);
                split.doc_position(i).unwrap();
            }
            assert!(split.doc_range(split.num_docs()).is_err());
        }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    proptest! {
        #![proptest_config(config(48))]

        #[test]
        fn datasets_with_a_damaged_file_open_or_are_refused(
            which in any::<prop::sample::Index>(),
            e in edits(),
            prepend in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let eot = if prepend { EotMode::Prepend } else { EotMode::Append };
            super::tests::build(dir.path(), 12, 16, eot);
            let all = files(dir.path());
            let target = all[which.index(all.len())].clone();
            let before = std::fs::read(&target).unwrap();
            let after = apply(&before, &e);
            std::fs::write(&target, &after).unwrap();
            let path = dir.path().to_path_buf();
            let found = within(60, "opening and reading a damaged dataset", move || {
                let ds = Dataset::open(&path)?;
                read_everything(&ds);
                ds.verify()
            });
            let is_data = target.extension().is_some_and(|x| x == "bin" || x == "idx");
            if is_data && after != before {
                prop_assert!(found.is_err(), "{} damaged, yet opened and verified", target.display());
            }
        }

        #[test]
        fn bare_shards_of_any_bytes_open_or_are_refused(
            shards in prop::collection::vec(
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..64),
                    (0..3u64, any::<bool>(), prop::collection::vec(any::<u8>(), 0..12)).prop_map(|(n, wide, tail)| {
                        let dtype = if wide { Dtype::U32 } else { Dtype::U16 };
                        let mut b = format::encode_header(dtype, n).to_vec();
                        b.extend(tail);
                        b
                    }),
                ],
                1..4,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let paths: Vec<PathBuf> = shards.iter().enumerate().map(|(i, b)| {
                let p = dir.path().join(format!("s{i}.bin"));
                std::fs::write(&p, b).unwrap();
                p
            }).collect();
            if let Ok(split) = Split::from_files("train", &paths) {
                let n = split.num_tokens();
                if split.dtype() == Dtype::U16 {
                    let mut out = vec![0u16; n as usize];
                    split.copy_range(0, &mut out).unwrap();
                } else {
                    let mut out = vec![0u32; n as usize];
                    split.copy_range(0, &mut out).unwrap();
                }
                prop_assert!(split.doc_range(0).is_err());
                prop_assert!(split.copy_range(n, &mut [0u16; 1]).is_err());
            }
        }
    }
}
