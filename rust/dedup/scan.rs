//! Pass 1: hash every document and build the on-disk indexes, within a memory limit.
//!
//! Batches of documents are hashed in parallel (normalising, shingling and MinHash are the
//! expensive part); their entries are then appended in document order. The buffers are
//! written out as one chunk of sorted runs (see [`store`]) before taking the next document
//! would pass the memory limit, after `checkpoint_docs` documents, and at the end. The limit
//! counts the buffers' capacity, which grows only as far as the limit allows, so the index
//! never holds more than the limit (one document's entries alone excepted). Each checkpoint
//! rewrites `scan.json`, which is how a killed scan knows where to resume.

use super::exact::{doc_hash, ExactEntry};
use super::lines::{doc_rank, line_hashes, LineEntry};
use super::lsh::{band_keys, BandEntry};
use super::minhash::MinHasher;
use super::spans::{span_hashes, SpanEntry};
use super::spill::{growth_needed, reserve_within, write_run, Record};
use super::store::{chunk_file, read_json, write_ids, write_json, write_sigs, Chunk};
use super::{io_err, DedupConfig, DedupError, Key128, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const SCAN_MANIFEST: &str = "scan.json";
const VERSION: u32 = 1;

/// `scan.json`: the configuration and the chunks written so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanManifest {
    pub version: u32,
    pub config: DedupConfig,
    pub chunks: Vec<Chunk>,
    pub finished: bool,
    /// Checkpoints forced by the memory limit (the others came from `checkpoint_docs` or the end).
    pub memory_spills: u64,
}

impl ScanManifest {
    pub fn docs(&self) -> u64 {
        self.chunks.last().map_or(0, |c| c.end)
    }

    /// Loads `scan.json` from `dir`, checking it was made with `config` when one is given.
    pub fn load(dir: &Path, config: Option<&DedupConfig>) -> Result<Option<ScanManifest>> {
        let path = dir.join(SCAN_MANIFEST);
        let Some(m) = read_json::<ScanManifest>(&path)? else {
            return Ok(None);
        };
        if m.version != VERSION {
            return Err(DedupError::Corrupt {
                path,
                offset: 0,
                expected: format!("manifest version {VERSION}"),
                found: format!("version {}", m.version),
            });
        }
        if let Some(c) = config {
            if &m.config != c {
                let show = |c: &DedupConfig| serde_json::to_string(c).unwrap_or_default();
                return Err(DedupError::ConfigMismatch {
                    path,
                    stored: show(&m.config),
                    current: show(c),
                });
            }
        }
        Ok(Some(m))
    }
}

/// How many items one document adds to each buffer.
struct Adds {
    exact: usize,
    bands: usize,
    lines: usize,
    spans: usize,
    sigs: usize,
    id: usize,
}

/// Everything pass 1 keeps of one document.
struct DocHashes {
    exact: Key128,
    sig: Option<Vec<u64>>,
    bands: Vec<Key128>,
    lines: Vec<Key128>,
    spans: Vec<(Key128, u32)>,
}

/// Builds the indexes of a corpus, batch by batch; resumable (see the module docs).
pub struct Scanner {
    dir: PathBuf,
    config: DedupConfig,
    hasher: Option<MinHasher>,
    memory_limit: usize,
    checkpoint_docs: u64,
    manifest: ScanManifest,
    next_doc: u64,
    exact: Vec<ExactEntry>,
    bands: Vec<BandEntry>,
    lines: Vec<LineEntry>,
    spans: Vec<SpanEntry>,
    id_offsets: Vec<u64>,
    id_blob: Vec<u8>,
    sigs: Vec<u64>,
    peak_mem: usize,
}

impl Scanner {
    /// Opens (or resumes) a scan in `dir`. `memory_limit` bounds the bytes of buffered entries;
    /// `checkpoint_docs` forces a checkpoint after that many documents even below the limit.
    pub fn open(
        dir: &Path,
        config: DedupConfig,
        memory_limit: usize,
        checkpoint_docs: u64,
    ) -> Result<Scanner> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let manifest = match ScanManifest::load(dir, Some(&config))? {
            Some(m) => m,
            None => {
                let m = ScanManifest {
                    version: VERSION,
                    config: config.clone(),
                    chunks: Vec::new(),
                    finished: false,
                    memory_spills: 0,
                };
                write_json(&dir.join(SCAN_MANIFEST), &m)?;
                m
            }
        };
        let hasher = if config.minhash {
            Some(MinHasher::from_config(&config)?)
        } else {
            None
        };
        Ok(Scanner {
            dir: dir.to_path_buf(),
            next_doc: manifest.docs(),
            config,
            hasher,
            memory_limit: memory_limit.max(1),
            checkpoint_docs: checkpoint_docs.max(1),
            manifest,
            exact: Vec::new(),
            bands: Vec::new(),
            lines: Vec::new(),
            spans: Vec::new(),
            id_offsets: vec![0],
            id_blob: Vec::new(),
            sigs: Vec::new(),
            peak_mem: 0,
        })
    }

    /// Documents already written at a checkpoint: a resumed run starts after them.
    pub fn docs_done(&self) -> u64 {
        self.manifest.docs()
    }

    /// Documents added so far, checkpointed or not.
    pub fn docs_added(&self) -> u64 {
        self.next_doc
    }

    pub fn finished(&self) -> bool {
        self.manifest.finished
    }

    pub fn manifest(&self) -> &ScanManifest {
        &self.manifest
    }

    /// Bytes held by the buffers.
    pub fn mem_bytes(&self) -> usize {
        fn cap<T>(v: &Vec<T>) -> usize {
            v.capacity() * std::mem::size_of::<T>()
        }
        cap(&self.exact)
            + cap(&self.bands)
            + cap(&self.lines)
            + cap(&self.spans)
            + cap(&self.id_offsets)
            + cap(&self.id_blob)
            + cap(&self.sigs)
    }

    /// Bytes the buffers must grow by to take a document's entries.
    fn growth_needed(&self, a: &Adds) -> usize {
        growth_needed(&self.exact, a.exact)
            + growth_needed(&self.bands, a.bands)
            + growth_needed(&self.lines, a.lines)
            + growth_needed(&self.spans, a.spans)
            + growth_needed(&self.sigs, a.sigs)
            + growth_needed(&self.id_offsets, 1)
            + growth_needed(&self.id_blob, a.id)
    }

    /// Makes room for a document's entries, growing the buffers by doubling as far as the
    /// memory limit allows, so their capacity, not just their content, stays within it.
    fn reserve(&mut self, a: &Adds) {
        let mut spare = self
            .memory_limit
            .saturating_sub(self.mem_bytes() + self.growth_needed(a));
        reserve_within(&mut self.exact, a.exact, &mut spare);
        reserve_within(&mut self.bands, a.bands, &mut spare);
        reserve_within(&mut self.lines, a.lines, &mut spare);
        reserve_within(&mut self.spans, a.spans, &mut spare);
        reserve_within(&mut self.sigs, a.sigs, &mut spare);
        reserve_within(&mut self.id_offsets, 1, &mut spare);
        reserve_within(&mut self.id_blob, a.id, &mut spare);
    }

    /// The most bytes the buffers have held.
    pub fn peak_mem_bytes(&self) -> usize {
        self.peak_mem
    }

    fn hash_doc(&self, text: &str) -> DocHashes {
        let c = &self.config;
        let exact = if c.exact {
            doc_hash(text, c.exact_hash_bits).into()
        } else {
            Key128::default()
        };
        let sig = self.hasher.as_ref().and_then(|h| h.signature(text));
        let bands = sig
            .as_deref()
            .map(|s| band_keys(s, c.bands, c.rows))
            .unwrap_or_default();
        let lines = if c.lines {
            line_hashes(text)
        } else {
            Vec::new()
        };
        let spans = if c.spans {
            span_hashes(text, c.span_sentences, c.fold_numbers)
        } else {
            Vec::new()
        };
        DocHashes {
            exact,
            sig,
            bands,
            lines,
            spans,
        }
    }

    /// Adds documents `start..start + texts.len()`; `start` must be [`Scanner::docs_added`].
    pub fn add_batch(&mut self, start: u64, ids: &[String], texts: &[String]) -> Result<()> {
        if self.manifest.finished {
            return Err(DedupError::State("the scan is already finished".into()));
        }
        if start != self.next_doc {
            return Err(DedupError::State(format!(
                "batch starts at document {start}, expected {}",
                self.next_doc
            )));
        }
        if ids.len() != texts.len() {
            return Err(DedupError::State(format!(
                "{} ids for {} texts",
                ids.len(),
                texts.len()
            )));
        }
        let hashes: Vec<DocHashes> =
            crate::parallel::install(|| texts.par_iter().map(|t| self.hash_doc(t)).collect());
        let with_sigs = self.config.threshold.is_some() && self.config.minhash;
        let num_perm = self.config.num_perm();
        for (id, h) in ids.iter().zip(hashes) {
            let adds = Adds {
                exact: self.config.exact as usize,
                bands: h.bands.len(),
                lines: h.lines.len(),
                spans: h.spans.len(),
                sigs: if with_sigs { num_perm } else { 0 },
                id: id.len(),
            };
            // Write what is buffered first if taking this document would pass the limit.
            let need = self.growth_needed(&adds);
            if need > 0
                && self.next_doc > self.manifest.docs()
                && self.mem_bytes() + need > self.memory_limit
            {
                self.checkpoint(true)?;
            }
            self.reserve(&adds);
            let doc = self.next_doc;
            if self.config.exact {
                self.exact.push(ExactEntry { hash: h.exact, doc });
            }
            self.bands
                .extend(h.bands.iter().map(|&key| BandEntry { key, doc }));
            if !h.lines.is_empty() {
                let rank = doc_rank(id);
                self.lines
                    .extend(h.lines.iter().map(|&hash| LineEntry { hash, rank, doc }));
            }
            self.spans.extend(
                h.spans
                    .iter()
                    .map(|&(hash, sent)| SpanEntry { hash, doc, sent }),
            );
            if with_sigs {
                match &h.sig {
                    Some(s) => self.sigs.extend_from_slice(s),
                    None => self.sigs.extend(std::iter::repeat_n(u64::MAX, num_perm)),
                }
            }
            self.id_blob.extend_from_slice(id.as_bytes());
            self.id_offsets.push(self.id_blob.len() as u64);
            self.next_doc += 1;
            self.peak_mem = self.peak_mem.max(self.mem_bytes());
            if self.next_doc - self.manifest.docs() >= self.checkpoint_docs {
                self.checkpoint(false)?;
            }
        }
        Ok(())
    }

    /// Writes the buffered documents as one chunk and records it in `scan.json`.
    fn checkpoint(&mut self, by_memory: bool) -> Result<()> {
        let start = self.manifest.docs();
        if self.next_doc == start {
            return Ok(());
        }
        let c = self.manifest.chunks.len();
        let dir = self.dir.clone();
        let cfg = &self.config;
        fn run<R: Record>(dir: &Path, kind: &str, c: usize, v: &mut Vec<R>) -> Result<()> {
            write_run(&chunk_file(dir, kind, c, "run"), v)?;
            *v = Vec::new();
            Ok(())
        }
        if cfg.exact {
            run(&dir, "exact", c, &mut self.exact)?;
        }
        if cfg.minhash {
            run(&dir, "bands", c, &mut self.bands)?;
            if cfg.threshold.is_some() {
                write_sigs(&chunk_file(&dir, "sigs", c, "bin"), &self.sigs)?;
                self.sigs = Vec::new();
            }
        }
        if cfg.lines {
            run(&dir, "lines", c, &mut self.lines)?;
        }
        if cfg.spans {
            run(&dir, "spans", c, &mut self.spans)?;
        }
        write_ids(
            &chunk_file(&dir, "ids", c, "bin"),
            &self.id_offsets,
            &self.id_blob,
        )?;
        self.id_offsets = vec![0];
        self.id_blob = Vec::new();
        self.manifest.chunks.push(Chunk {
            start,
            end: self.next_doc,
        });
        if by_memory {
            self.manifest.memory_spills += 1;
        }
        write_json(&self.dir.join(SCAN_MANIFEST), &self.manifest)
    }

    /// Writes what is buffered and marks the scan finished.
    pub fn finish(&mut self) -> Result<&ScanManifest> {
        if !self.manifest.finished {
            self.checkpoint(false)?;
            self.manifest.finished = true;
            write_json(&self.dir.join(SCAN_MANIFEST), &self.manifest)?;
        }
        Ok(&self.manifest)
    }
}

/// The run files of `kind` for every chunk of a manifest.
pub fn runs_of(dir: &Path, manifest: &ScanManifest, kind: &str) -> Vec<PathBuf> {
    (0..manifest.chunks.len())
        .map(|c| chunk_file(dir, kind, c, "run"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_stay_within_the_memory_limit() {
        let texts: Vec<String> = (0..400)
            .map(|d| {
                let words: Vec<String> = (0..60)
                    .map(|w| format!("w{}", (d * 31 + w * 7) % 500))
                    .collect();
                words.join(" ")
            })
            .collect();
        let ids: Vec<String> = (0..texts.len()).map(|d| format!("doc-{d}")).collect();
        let config = DedupConfig {
            lines: true,
            spans: true,
            threshold: Some(0.8),
            ..Default::default()
        };
        for limit in [20_000, 100_000, 1_000_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Scanner::open(dir.path(), config.clone(), limit, u64::MAX).unwrap();
            for start in (0..texts.len()).step_by(50) {
                s.add_batch(
                    start as u64,
                    &ids[start..start + 50],
                    &texts[start..start + 50],
                )
                .unwrap();
            }
            let peak = s.peak_mem_bytes();
            let spills = s.finish().unwrap().memory_spills;
            assert!(peak <= limit, "limit {limit}: peak {peak}");
            assert!(
                spills as usize >= 400 * 1000 / limit,
                "limit {limit}: {spills} spills"
            );
        }
    }
}
