//! Writing a dataset: documents in, fixed-size shards + indexes + manifest out.
//!
//! Every file is written under a temporary name in its final directory, fsynced and renamed,
//! so a file with a final name is always whole. A shard's index is renamed into place before
//! the shard itself, so a `.bin` that exists always has its index.
//!
//! Resuming: the output is a pure function of the input and the settings, so a killed run can
//! restart from its last complete shard. For each split, the complete shards tell how many
//! tokens were written and which input document was being written at the cut (the last
//! document that starts in them, with its position in the input); the rerun skips the input up
//! to that document, re-encodes it, drops the tokens already on disk and carries on. Nothing
//! else is kept on the side, so the result is byte-identical to an uninterrupted run.

use super::format::{self, Dtype, IndexHeader};
use super::manifest::{
    EotMode, Manifest, Settings, ShardEntry, SplitEntry, SplitRule, MANIFEST_NAME, SPLITS,
};
use super::reader::Shard;
use super::shard_file::ShardFile;
use super::ShardError;
use crate::bpe::{Encoder, Rank};
use crate::fsio;
use rustc_hash::FxHashSet;
use std::collections::BTreeMap;
use std::fs::{self};

use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

/// Settings of an unfinished run, kept until the manifest replaces them.
const PROGRESS_NAME: &str = ".gristmill-tokenize.json";

/// Writes `bytes` to `path` atomically (see `crate::fsio`).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ShardError> {
    fsio::write_atomic(path, bytes).map_err(|e| ShardError::io(path, e))
}

/// File names of shard `i` of a split.
pub fn shard_names(split: &str, i: usize) -> (String, String) {
    (format!("{split}_{i:06}.bin"), format!("{split}_{i:06}.idx"))
}

/// The shard being filled, with the index entries of the documents that start in it.
struct OpenShard {
    number: usize,
    file: ShardFile,
    first_doc: u64,
    starts: Vec<u64>,
    positions: Vec<u64>,
    id_offsets: Vec<u64>,
    ids: Vec<u8>,
}

/// What to do with an input document on a (possibly resumed) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Already on disk.
    Skip,
    /// Partly on disk: write its record from this token on; its start is already indexed.
    Tail(u64),
    /// Write it all.
    Full,
}

struct SplitWriter {
    name: &'static str,
    shards: Vec<ShardEntry>,
    tokens: u64,
    docs: u64,
    /// (position of the document cut by the last complete shard, tokens of it on disk).
    resume: Option<(u64, u64)>,
    open: Option<OpenShard>,
}

impl SplitWriter {
    fn action(&self, position: u64) -> Action {
        match self.resume {
            Some((p, _)) if position < p => Action::Skip,
            Some((p, done)) if position == p => Action::Tail(done),
            _ => Action::Full,
        }
    }
}

/// Writes a dataset directory, resuming a killed run found there.
///
/// Feed it documents in input order with [`DatasetWriter::add_texts`] (or, encoded elsewhere,
/// [`DatasetWriter::add_encoded`]), starting at input
/// position [`DatasetWriter::next_position`] (the caller skips that many input documents),
/// then call [`DatasetWriter::finish`].
pub struct DatasetWriter {
    dir: PathBuf,
    settings: Settings,
    splits: Vec<SplitWriter>,
    next_position: u64,
    complete: bool,
}

impl DatasetWriter {
    /// Opens `dir` for writing with `settings`. If `dir` holds a finished dataset made with
    /// the same settings, the writer is [`complete`](Self::is_complete); if it holds an
    /// unfinished one, the writer resumes it; if either was made with other settings, this
    /// fails rather than mix outputs.
    pub fn open(dir: &Path, settings: Settings) -> Result<DatasetWriter, ShardError> {
        settings.check()?;
        fs::create_dir_all(dir).map_err(|e| ShardError::io(dir, e))?;
        let mut w = DatasetWriter {
            dir: dir.to_path_buf(),
            splits: SPLITS
                .iter()
                .map(|&name| SplitWriter {
                    name,
                    shards: Vec::new(),
                    tokens: 0,
                    docs: 0,
                    resume: None,
                    open: None,
                })
                .collect(),
            settings,
            next_position: 0,
            complete: false,
        };
        let manifest = dir.join(MANIFEST_NAME);
        if manifest.exists() {
            let m = Manifest::read(&manifest)?;
            w.check_same(&m.settings, &manifest)?;
            w.complete = true;
            return Ok(w);
        }
        let progress = dir.join(PROGRESS_NAME);
        if progress.exists() {
            let text = fs::read_to_string(&progress).map_err(|e| ShardError::io(&progress, e))?;
            let old: Settings = serde_json::from_str(&text)
                .map_err(|e| ShardError::manifest(&progress, e.to_string()))?;
            w.check_same(&old, &progress)?;
        } else {
            if let Some(stray) = w.any_shard_file()? {
                return Err(ShardError::Settings(format!(
                    "{}: the output directory holds shards but no {MANIFEST_NAME} or {PROGRESS_NAME}; \
                     remove them or choose another directory",
                    stray.display()
                )));
            }
            let json = serde_json::to_string_pretty(&w.settings).expect("settings serialise");
            write_atomic(&progress, json.as_bytes())?;
        }
        for i in 0..w.splits.len() {
            w.scan_split(i)?;
        }
        // A split with no complete shard needs its documents from its first one on; a split
        // that never gets documents (no val split) does not hold the rerun back.
        let rule = w.settings.split;
        w.next_position = w
            .splits
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.resume.map(|(p, _)| p).or(first_position(rule, i)))
            .min()
            .unwrap_or(0);
        Ok(w)
    }

    fn check_same(&self, old: &Settings, path: &Path) -> Result<(), ShardError> {
        match self.settings.difference(old) {
            None => Ok(()),
            Some(what) => Err(ShardError::Settings(format!(
                "{}: this dataset was written with another {what}; remove the directory or \
                 choose another one",
                path.display()
            ))),
        }
    }

    fn any_shard_file(&self) -> Result<Option<PathBuf>, ShardError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| ShardError::io(&self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if SPLITS.iter().any(|s| parse_shard_name(&name, s).is_some()) {
                return Ok(Some(entry.path()));
            }
        }
        Ok(None)
    }

    /// Takes the complete shards of split `i` as done and removes anything after them.
    fn scan_split(&mut self, i: usize) -> Result<(), ShardError> {
        let shard_size = self.settings.shard_size;
        let dtype = self.settings.dtype;
        let split = &mut self.splits[i];
        let mut last_start: Option<(u64, u64)> = None; // (position, global token offset)
        loop {
            let (bin_name, idx_name) = shard_names(split.name, split.shards.len());
            let (bin, idx) = (self.dir.join(&bin_name), self.dir.join(&idx_name));
            let Some((header, idx_bytes, max_token)) =
                complete_shard(&bin, &idx, dtype, shard_size)
            else {
                break;
            };
            if header.first_doc != split.docs {
                break;
            }
            if header.n_docs > 0 {
                let [starts, positions, _, _] = header.array_offsets();
                let last = header.n_docs as usize - 1;
                let start = read_u64(&idx_bytes, starts + 8 * last);
                let position = read_u64(&idx_bytes, positions + 8 * last);
                last_start = Some((position, split.tokens + start));
            }
            split.shards.push(ShardEntry {
                file: bin_name,
                index: idx_name,
                tokens: header.n_tokens,
                documents: header.n_docs,
                checksum: format::checksum_text(header.checksum),
                index_checksum: format::checksum_text(xxh3_64(&idx_bytes)),
                max_token,
            });
            split.tokens += header.n_tokens;
            split.docs += header.n_docs;
        }
        split.resume = last_start.map(|(p, start)| (p, split.tokens - start));
        // Whatever follows the complete shards is from the killed run: remove it.
        let keep = split.shards.len();
        let entries = fs::read_dir(&self.dir).map_err(|e| ShardError::io(&self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let temp = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".tmp"))
                .and_then(|n| parse_shard_name(n, split.name));
            let stale =
                temp.is_some() || parse_shard_name(&name, split.name).is_some_and(|n| n >= keep);
            if stale {
                fs::remove_file(entry.path()).map_err(|e| ShardError::io(&entry.path(), e))?;
            }
        }
        Ok(())
    }

    /// True when the directory already holds the finished dataset.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The input position to continue from: the caller skips this many input documents.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn split_of(&self, position: u64) -> usize {
        self.settings.split.is_val(position) as usize
    }

    /// Encodes `texts` (the next input documents, with their source ids) in parallel and
    /// writes them. Documents already on disk from a killed run are not encoded again.
    /// Returns the number of tokens written.
    pub fn add_texts<S: AsRef<str> + Sync, I: AsRef<str>>(
        &mut self,
        encoder: &Encoder,
        texts: &[S],
        ids: &[I],
    ) -> Result<u64, ShardError> {
        self.check_batch(texts.len(), ids.len())?;
        let actions = self.plan(self.next_position, texts.len());
        let batch = encode_planned(encoder, self.next_position, texts, actions);
        self.write_encoded(&batch, ids)
    }

    /// Writes the next input documents, already encoded elsewhere (e.g. by the tasks of a
    /// distributed run): document `i` is `tokens[offsets[i]..offsets[i + 1]]`, without its
    /// end-of-text token (the writer adds it). The same layout as [`Self::add_texts`]: the
    /// result does not depend on where the documents were encoded. Returns tokens written.
    pub fn add_encoded<I: AsRef<str>>(
        &mut self,
        ids: &[I],
        tokens: &[Rank],
        offsets: &[u64],
    ) -> Result<u64, ShardError> {
        check_offsets(offsets, ids.len(), tokens.len())?;
        self.check_batch(ids.len(), ids.len())?;
        let first = self.next_position;
        let actions = self.plan(first, ids.len());
        let docs = offsets
            .windows(2)
            .zip(&actions)
            .filter(|(_, a)| **a != Action::Skip)
            .map(|(w, _)| &tokens[w[0] as usize..w[1] as usize]);
        self.write_documents(first, &actions, ids, docs)
    }

    pub(super) fn check_batch(&self, n_texts: usize, n_ids: usize) -> Result<(), ShardError> {
        if self.complete {
            return Err(ShardError::Settings(format!(
                "{}: the dataset is already complete",
                self.dir.display()
            )));
        }
        if n_texts != n_ids {
            return Err(ShardError::Settings(format!(
                "{n_texts} documents but {n_ids} source ids"
            )));
        }
        Ok(())
    }

    /// What to do with the `n` input documents from position `first` on. It depends only on
    /// the state found when the writer was opened (a `Tail` clears the resume point only for
    /// positions after it, which are `Full` either way), so a batch can be planned before the
    /// batches ahead of it are written.
    pub(super) fn plan(&self, first: u64, n: usize) -> Vec<Action> {
        (0..n as u64)
            .map(|i| self.splits[self.split_of(first + i)].action(first + i))
            .collect()
    }

    /// Appends an encoded batch: the post-encode half of [`add_texts`](Self::add_texts).
    /// The batch must start at [`next_position`](Self::next_position). Returns the number of
    /// tokens written.
    pub(super) fn write_encoded<I: AsRef<str>>(
        &mut self,
        batch: &EncodedBatch,
        ids: &[I],
    ) -> Result<u64, ShardError> {
        if batch.first != self.next_position || batch.actions.len() != ids.len() {
            return Err(ShardError::Settings(format!(
                "{}: batch of {} documents at input position {} does not follow position {}",
                self.dir.display(),
                ids.len(),
                batch.first,
                self.next_position
            )));
        }
        let docs = batch
            .offsets
            .windows(2)
            .map(|w| &batch.tokens[w[0] as usize..w[1] as usize]);
        self.write_documents(batch.first, &batch.actions, ids, docs)
    }

    /// Writes the documents at positions `first..first + actions.len()`: `todo` yields the
    /// tokens of those whose action is not `Skip`, in order.
    fn write_documents<'t, I: AsRef<str>>(
        &mut self,
        first: u64,
        actions: &[Action],
        ids: &[I],
        mut todo: impl Iterator<Item = &'t [Rank]>,
    ) -> Result<u64, ShardError> {
        let mut written = 0;
        for (i, &action) in actions.iter().enumerate() {
            if action == Action::Skip {
                continue;
            }
            let tokens = todo.next().expect("tokens for every document to write");
            written += self.add_document(first + i as u64, ids[i].as_ref(), tokens, action)?;
        }
        self.next_position = first + actions.len() as u64;
        Ok(written)
    }

    /// Writes one document's record (its tokens plus end-of-text) at `position`.
    fn add_document(
        &mut self,
        position: u64,
        id: &str,
        tokens: &[Rank],
        action: Action,
    ) -> Result<u64, ShardError> {
        let n_vocab = self.settings.tokenizer.n_vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as u64 >= n_vocab) {
            return Err(ShardError::Settings(format!(
                "document {position} ({id:?}) has token {bad}, outside the vocabulary of {n_vocab}"
            )));
        }
        let eot = [self.settings.tokenizer.eot_token];
        let pieces: [&[Rank]; 2] = match self.settings.eot {
            EotMode::Append => [tokens, &eot],
            EotMode::Prepend => [&eot, tokens],
        };
        let s = self.split_of(position);
        let mut skip = match action {
            Action::Tail(done) => {
                self.splits[s].resume = None;
                done
            }
            _ => {
                self.start_document(s, position, id)?;
                0
            }
        };
        let mut written = 0;
        for piece in pieces {
            let drop = skip.min(piece.len() as u64);
            skip -= drop;
            written += self.append(s, &piece[drop as usize..])?;
        }
        Ok(written)
    }

    fn start_document(&mut self, s: usize, position: u64, id: &str) -> Result<(), ShardError> {
        self.ensure_open(s)?;
        let split = &mut self.splits[s];
        let open = split.open.as_mut().expect("opened above");
        open.starts.push(open.file.count());
        open.positions.push(position);
        open.ids.extend_from_slice(id.as_bytes());
        open.id_offsets.push(open.ids.len() as u64);
        split.docs += 1;
        Ok(())
    }

    fn ensure_open(&mut self, s: usize) -> Result<(), ShardError> {
        let dtype = self.settings.dtype;
        let split = &mut self.splits[s];
        if split.open.is_none() {
            let number = split.shards.len();
            let (bin, _) = shard_names(split.name, number);
            split.open = Some(OpenShard {
                number,
                file: ShardFile::create(&self.dir.join(bin), dtype)?,
                first_doc: split.docs,
                starts: Vec::new(),
                positions: Vec::new(),
                id_offsets: vec![0],
                ids: Vec::new(),
            });
        }
        Ok(())
    }

    /// Appends tokens to split `s`, closing each shard as it fills.
    fn append(&mut self, s: usize, mut tokens: &[Rank]) -> Result<u64, ShardError> {
        let shard_size = self.settings.shard_size;
        let n = tokens.len() as u64;
        while !tokens.is_empty() {
            self.ensure_open(s)?;
            let open = self.splits[s].open.as_mut().expect("opened above");
            let room = (shard_size - open.file.count()) as usize;
            let (now, rest) = tokens.split_at(room.min(tokens.len()));
            open.file.write(now)?;
            tokens = rest;
            if open.file.count() == shard_size {
                self.close_shard(s)?;
            }
        }
        Ok(n)
    }

    fn close_shard(&mut self, s: usize) -> Result<(), ShardError> {
        let split = &mut self.splits[s];
        let Some(open) = split.open.take() else {
            return Ok(());
        };
        let (bin_name, idx_name) = shard_names(split.name, open.number);
        let count = open.file.count();
        let checksum = open.file.checksum();
        let max_token = open.file.max_token();
        let header = IndexHeader {
            n_docs: open.starts.len() as u64,
            n_tokens: count,
            first_doc: open.first_doc,
            checksum,
            ids_bytes: open.ids.len() as u64,
        };
        let idx_bytes = format::encode_index(
            &header,
            &open.starts,
            &open.positions,
            &open.id_offsets,
            &open.ids,
        );
        // The index first: a shard with a final name always has its index.
        write_atomic(&self.dir.join(&idx_name), &idx_bytes)?;
        let written = open.file.finish()?;
        debug_assert_eq!(written, checksum);
        split.tokens += count;
        split.shards.push(ShardEntry {
            file: bin_name,
            index: idx_name,
            tokens: count,
            documents: header.n_docs,
            checksum: format::checksum_text(checksum),
            index_checksum: format::checksum_text(xxh3_64(&idx_bytes)),
            max_token,
        });
        Ok(())
    }

    /// Closes the last (partial) shards and writes `manifest.json`; returns its path.
    pub fn finish(mut self) -> Result<PathBuf, ShardError> {
        let manifest = self.dir.join(MANIFEST_NAME);
        if self.complete {
            return Ok(manifest);
        }
        if let Some(split) = self.splits.iter().find(|s| s.resume.is_some()) {
            return Err(ShardError::Settings(format!(
                "{}: the input ended before document {} of the {} split, which the earlier run \
                 had written: the input is not the one this dataset was made from",
                self.dir.display(),
                split.resume.unwrap().0,
                split.name
            )));
        }
        for s in 0..self.splits.len() {
            self.close_shard(s)?;
        }
        let splits: BTreeMap<String, SplitEntry> = self
            .splits
            .iter()
            .map(|s| {
                let entry = SplitEntry {
                    tokens: s.tokens,
                    documents: s.docs,
                    shards: s.shards.clone(),
                };
                (s.name.to_string(), entry)
            })
            .collect();
        let m = Manifest::new(self.settings.clone(), self.next_position, splits);
        write_atomic(&manifest, m.to_json().as_bytes())?;
        let progress = self.dir.join(PROGRESS_NAME);
        fs::remove_file(&progress).map_err(|e| ShardError::io(&progress, e))?;
        Ok(manifest)
    }
}

/// A position at or before the first document of split `s` (0 train, 1 val) under `rule`;
/// None when the split never gets one.
fn first_position(rule: SplitRule, s: usize) -> Option<u64> {
    match (rule, s) {
        (SplitRule::ValFraction(f), 1) if f <= 0.0 => None,
        (SplitRule::ValDocs(0), 1) => None,
        (SplitRule::ValDocs(n), 0) => Some(n),
        _ => Some(0),
    }
}

/// Checks that `offsets` cut `n_tokens` tokens into `n_docs` documents: `n_docs + 1` offsets
/// from 0 to `n_tokens`, never decreasing.
fn check_offsets(offsets: &[u64], n_docs: usize, n_tokens: usize) -> Result<(), ShardError> {
    let bad = |what: String| {
        Err(ShardError::Settings(format!(
            "encoded documents: {what} (document i must be tokens[offsets[i]:offsets[i + 1]], \
             with offsets from 0 to the number of tokens)"
        )))
    };
    if offsets.len() != n_docs + 1 {
        return bad(format!(
            "{} offsets for {n_docs} documents, expected {}",
            offsets.len(),
            n_docs + 1
        ));
    }
    if offsets[0] != 0 || offsets[n_docs] != n_tokens as u64 {
        return bad(format!(
            "offsets run from {} to {}, but there are {n_tokens} tokens",
            offsets[0], offsets[n_docs]
        ));
    }
    if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return bad(format!(
            "offset {} is {}, less than offset {i} ({})",
            i + 1,
            offsets[i + 1],
            offsets[i]
        ));
    }
    Ok(())
}

/// Input documents encoded and ready to append: positions `first..first + actions.len()`;
/// the documents not skipped are encoded into `tokens`, the k-th of them being
/// `tokens[offsets[k]..offsets[k + 1]]`.
pub(super) struct EncodedBatch {
    first: u64,
    actions: Vec<Action>,
    tokens: Vec<Rank>,
    offsets: Vec<u64>,
}

pub(super) fn encode_planned<S: AsRef<str> + Sync>(
    encoder: &Encoder,
    first: u64,
    texts: &[S],
    actions: Vec<Action>,
) -> EncodedBatch {
    let todo: Vec<&str> = texts
        .iter()
        .zip(&actions)
        .filter(|(_, a)| **a != Action::Skip)
        .map(|(t, _)| t.as_ref())
        .collect();
    let (tokens, offsets) = encoder.encode_batch_flat(&todo, &FxHashSet::default(), None);
    EncodedBatch {
        first,
        actions,
        tokens,
        offsets,
    }
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

/// `n` if `name` is `{split}_{n:06}.bin` or `.idx`.
fn parse_shard_name(name: &str, split: &str) -> Option<usize> {
    let rest = name.strip_prefix(split)?.strip_prefix('_')?;
    let digits = rest
        .strip_suffix(".bin")
        .or_else(|| rest.strip_suffix(".idx"))?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The index header and bytes of a complete, full shard from an earlier run, with the
/// shard's largest token, or None when the pair is missing, partial or damaged (it is then
/// written again).
fn complete_shard(
    bin: &Path,
    idx: &Path,
    dtype: Dtype,
    shard_size: u64,
) -> Option<(IndexHeader, Vec<u8>, Option<Rank>)> {
    let idx_bytes = fs::read(idx).ok()?;
    let header = format::decode_index(idx, &idx_bytes).ok()?;
    let shard = Shard::open(bin, true).ok()?;
    let full = shard.dtype() == dtype && shard.len() == shard_size && header.n_tokens == shard_size;
    // Read back for the manifest: the index has no room for it, and a resumed run must write
    // the manifest an uninterrupted one writes.
    full.then(|| (header, idx_bytes, shard.max_token()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bpe::Pattern;
    use crate::shards::format::HEADER_BYTES;
    use crate::shards::manifest::{SplitRule, TokenizerInfo};
    use crate::shards::overlapped::OverlappedWriter;

    /// A byte-level encoder: every byte is its own token, 256 is end-of-text.
    pub(crate) fn byte_encoder() -> Encoder {
        let mergeable = (0..=255u8).map(|b| (vec![b], b as Rank)).collect();
        let specials = vec![("<|endoftext|>".to_string(), 256)];
        Encoder::new(mergeable, specials, Pattern::new("gpt2").unwrap()).unwrap()
    }

    pub(crate) fn settings(shard_size: u64, eot: EotMode, split: SplitRule) -> Settings {
        Settings {
            tokenizer: TokenizerInfo {
                name: "bytes".into(),
                fingerprint: "bytes-v1".into(),
                n_vocab: 257,
                eot_token: 256,
                path: None,
            },
            eot,
            dtype: Dtype::U16,
            shard_size,
            split,
            text_field: "text".into(),
        }
    }

    pub(crate) fn texts(n: usize) -> Vec<String> {
        (0..n).map(|i| "x".repeat(i % 7) + &i.to_string()).collect()
    }

    fn write_all(dir: &Path, s: Settings, texts: &[String], batch: usize) -> PathBuf {
        let enc = byte_encoder();
        let mut w = DatasetWriter::open(dir, s).unwrap();
        let start = w.next_position() as usize;
        for chunk in texts[start..].chunks(batch) {
            let ids: Vec<String> = chunk.iter().map(|t| format!("id-{t}")).collect();
            w.add_texts(&enc, chunk, &ids).unwrap();
        }
        w.finish().unwrap()
    }

    /// As `write_all`, through the overlapped writer.
    fn write_all_overlapped(dir: &Path, s: Settings, texts: &[String], batch: usize) -> PathBuf {
        let enc = byte_encoder();
        let mut w = DatasetWriter::open(dir, s).unwrap();
        let start = w.next_position() as usize;
        let mut o = OverlappedWriter::new(&mut w, &enc);
        for chunk in texts[start..].chunks(batch) {
            let ids: Vec<String> = chunk.iter().map(|t| format!("id-{t}")).collect();
            o.push(chunk.to_vec(), ids).unwrap();
        }
        o.finish().unwrap();
        w.finish().unwrap()
    }

    pub(crate) fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn shards_are_full_and_records_delimited() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(16, EotMode::Append, SplitRule::ValFraction(0.0));
        let docs = texts(20);
        write_all(dir.path(), s, &docs, 3);
        let files = snapshot(dir.path());
        let mut all = Vec::new();
        let bins: Vec<_> = files
            .keys()
            .filter(|k| k.ends_with(".bin"))
            .cloned()
            .collect();
        for (i, name) in bins.iter().enumerate() {
            let bytes = &files[name];
            let h =
                format::decode_header(Path::new(name), bytes, bytes.len() as u64, true).unwrap();
            if i + 1 < bins.len() {
                assert_eq!(h.count, 16);
            }
            for c in bytes[HEADER_BYTES..].chunks(2) {
                all.push(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        let mut expected = Vec::new();
        for t in &docs {
            expected.extend(t.bytes().map(|b| b as u16));
            expected.push(256);
        }
        assert_eq!(all, expected);
        let m = Manifest::parse(
            std::str::from_utf8(&files[MANIFEST_NAME]).unwrap(),
            Path::new(MANIFEST_NAME),
        )
        .unwrap();
        for entry in &m.splits["train"].shards {
            let bytes = &files[&entry.file][HEADER_BYTES..];
            let max = bytes
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                .max();
            assert_eq!(entry.max_token, max, "{}", entry.file);
        }
        assert!(!files.contains_key(PROGRESS_NAME));
        assert!(!files.keys().any(|k| k.ends_with(".tmp")));
    }

    /// A run that dies after `cut` documents, its open shards left as temp files.
    fn killed_run(dir: &Path, s: Settings, docs: &[String], cut: usize) {
        let enc = byte_encoder();
        let mut w = DatasetWriter::open(dir, s).unwrap();
        for chunk in docs[..cut].chunks(5) {
            let ids: Vec<String> = chunk.iter().map(|t| format!("id-{t}")).collect();
            w.add_texts(&enc, chunk, &ids).unwrap();
        }
        for split in &mut w.splits {
            if let Some(open) = split.open.take() {
                open.file.abandon();
            }
        }
    }

    /// For both end-of-text modes and split rules: `rerun` on the directory a run killed after
    /// each of `cuts` documents left gives the bytes of `write_all` in one go; `also` checks
    /// more against those bytes.
    fn check_rerun_after_cuts(
        cuts: &[usize],
        rerun: impl Fn(&Path, Settings, &[String]),
        also: impl Fn(Settings, &[String], &BTreeMap<String, Vec<u8>>),
    ) {
        let docs = texts(200);
        for (eot, rule) in [
            (EotMode::Append, SplitRule::ValFraction(0.1)),
            (EotMode::Prepend, SplitRule::ValDocs(7)),
        ] {
            let s = settings(37, eot, rule);
            let whole = tempfile::tempdir().unwrap();
            write_all(whole.path(), s.clone(), &docs, 11);
            let expected = snapshot(whole.path());
            also(s.clone(), &docs, &expected);
            for &cut in cuts {
                let dir = tempfile::tempdir().unwrap();
                killed_run(dir.path(), s.clone(), &docs, cut);
                rerun(dir.path(), s.clone(), &docs);
                assert_eq!(snapshot(dir.path()), expected, "cut at {cut}");
            }
        }
    }

    #[test]
    fn rerun_after_a_cut_is_byte_identical() {
        check_rerun_after_cuts(
            &[1, 13, 60, 133, 199],
            |dir, s, docs| drop(write_all(dir, s, docs, 11)),
            |_, _, _| {},
        );
    }

    #[test]
    fn overlapped_writer_writes_the_same_bytes_and_resumes() {
        check_rerun_after_cuts(
            &[1, 60, 199],
            |dir, s, docs| drop(write_all_overlapped(dir, s, docs, 13)),
            |s, docs, expected| {
                let direct = tempfile::tempdir().unwrap();
                write_all_overlapped(direct.path(), s, docs, 9);
                assert_eq!(&snapshot(direct.path()), expected);
            },
        );
    }

    #[test]
    fn finished_dataset_is_not_rewritten_and_settings_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(50, EotMode::Append, SplitRule::ValFraction(0.0));
        write_all(dir.path(), s.clone(), &texts(30), 4);
        let w = DatasetWriter::open(dir.path(), s.clone()).unwrap();
        assert!(w.is_complete());
        let mut other = s;
        other.shard_size = 51;
        let e = DatasetWriter::open(dir.path(), other)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("another shard_size"), "{e}");
    }

    /// Writes `texts` pre-encoded (bytes as tokens) through `add_encoded`, in batches.
    fn write_encoded(dir: &Path, s: Settings, texts: &[String], batch: usize) {
        let mut w = DatasetWriter::open(dir, s).unwrap();
        let start = w.next_position() as usize;
        for chunk in texts[start..].chunks(batch) {
            let ids: Vec<String> = chunk.iter().map(|t| format!("id-{t}")).collect();
            let mut tokens = Vec::new();
            let mut offsets = vec![0u64];
            for t in chunk {
                tokens.extend(t.bytes().map(Rank::from));
                offsets.push(tokens.len() as u64);
            }
            w.add_encoded(&ids, &tokens, &offsets).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn pre_encoded_documents_give_the_same_dataset() {
        let docs = texts(150);
        let s = settings(29, EotMode::Prepend, SplitRule::ValFraction(0.1));
        let by_texts = tempfile::tempdir().unwrap();
        write_all(by_texts.path(), s.clone(), &docs, 11);
        let encoded = tempfile::tempdir().unwrap();
        write_encoded(encoded.path(), s.clone(), &docs, 7);
        assert_eq!(snapshot(encoded.path()), snapshot(by_texts.path()));
        // Resumed after a cut, from a run that encoded in the writer.
        let dir = tempfile::tempdir().unwrap();
        {
            let mut w = DatasetWriter::open(dir.path(), s.clone()).unwrap();
            let ids: Vec<String> = docs[..90].iter().map(|t| format!("id-{t}")).collect();
            w.add_texts(&byte_encoder(), &docs[..90], &ids).unwrap();
        }
        write_encoded(dir.path(), s, &docs, 13);
        assert_eq!(snapshot(dir.path()), snapshot(by_texts.path()));
    }

    #[test]
    fn a_rerun_without_a_val_split_starts_at_the_cut() {
        let docs = texts(100);
        for rule in [SplitRule::ValFraction(0.0), SplitRule::ValDocs(0)] {
            let dir = tempfile::tempdir().unwrap();
            let s = settings(16, EotMode::Append, rule);
            {
                let mut w = DatasetWriter::open(dir.path(), s.clone()).unwrap();
                let ids: Vec<String> = docs[..60].iter().map(|t| format!("id-{t}")).collect();
                w.add_texts(&byte_encoder(), &docs[..60], &ids).unwrap();
            }
            let w = DatasetWriter::open(dir.path(), s).unwrap();
            assert!(
                (50..60).contains(&w.next_position()),
                "{}",
                w.next_position()
            );
        }
        assert_eq!(first_position(SplitRule::ValDocs(5), 0), Some(5));
        assert_eq!(first_position(SplitRule::ValFraction(0.1), 1), Some(0));
    }

    #[test]
    fn pre_encoded_documents_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(16, EotMode::Append, SplitRule::ValFraction(0.0));
        let mut w = DatasetWriter::open(dir.path(), s).unwrap();
        let ids = ["a", "b"];
        for (tokens, offsets, expect) in [
            (
                vec![1, 2, 3],
                vec![0u64, 1],
                "2 offsets for 2 documents, expected 3",
            ),
            (
                vec![1, 2, 3],
                vec![0, 1, 4],
                "from 0 to 4, but there are 3 tokens",
            ),
            (vec![1, 2, 3], vec![1, 1, 3], "from 1 to 3"),
            (vec![1, 2, 3], vec![0, 2, 1], "from 0 to 1"),
            (
                vec![1, 2, 3, 4],
                vec![0, 3, 2, 4][..3].to_vec(),
                "from 0 to 2",
            ),
            (
                vec![1, 900, 3],
                vec![0, 1, 3],
                "token 900, outside the vocabulary of 257",
            ),
        ] {
            let e = w
                .add_encoded(&ids, &tokens, &offsets)
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{e}");
        }
        let e = w
            .add_encoded(&["a", "b", "c"], &[1, 2, 3], &[0, 2, 1, 3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("offset 2 is 1, less than offset 1 (2)"), "{e}");
    }

    #[test]
    fn shard_names_parse() {
        assert_eq!(parse_shard_name("train_000012.bin", "train"), Some(12));
        assert_eq!(parse_shard_name("val_000000.idx", "val"), Some(0));
        assert_eq!(parse_shard_name("val_000000.idx", "train"), None);
        assert_eq!(parse_shard_name("train_12.bin", "train"), None);
    }
}
