//! Pass 2: merge the runs of each method and decide what goes.
//!
//! Order matters, and is fixed: exact duplicates first, then MinHash clusters, then lines and
//! spans among the documents that survive both (a document on its way out must not be the one
//! that keeps a shared line or span for the corpus).
//!
//! Outputs, both sorted by document and written atomically:
//! - `decisions.run`: [`DecisionEntry`] for each removed document (method, original);
//! - `removals.run`: [`RemovalEntry`] for each line or span to cut from a kept document;
//!
//! then `resolve.json` with the counts, after which the scan's index runs are deleted. A
//! killed resolve starts over from the runs, which are still there.

use super::exact::{find_duplicates, ExactEntry};
use super::lines::LineEntry;
use super::lsh::{cluster, BandEntry};
use super::minhash::estimated_jaccard;
use super::scan::{runs_of, ScanManifest};
use super::spans::SpanEntry;
use super::spill::{for_each_in_group, Merger, Record, Spiller};
use super::store::{read_json, write_json, SigStore};
use super::unionfind::UnionFind;
use super::{DedupError, Key128, Method, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const RESOLVE_MANIFEST: &str = "resolve.json";
pub const DECISIONS: &str = "decisions.run";
pub const REMOVALS: &str = "removals.run";

/// A removed document: how it was found and the document it duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DecisionEntry {
    pub doc: u64,
    pub method: u8,
    pub dup_of: u64,
}

impl Record for DecisionEntry {
    const SIZE: usize = 17;
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.doc.to_le_bytes());
        out[8] = self.method;
        out[9..17].copy_from_slice(&self.dup_of.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        DecisionEntry {
            doc: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            method: b[8],
            dup_of: u64::from_le_bytes(b[9..17].try_into().unwrap()),
        }
    }
}

/// A line (`kind` = lines, `item` = the line's key) or span (`kind` = spans, `item.lo` = its
/// first sentence) to cut from document `doc`, kept instead in document `keeper`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemovalEntry {
    pub doc: u64,
    pub kind: u8,
    pub item: Key128,
    pub keeper: u64,
}

impl Record for RemovalEntry {
    const SIZE: usize = 33;
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.doc.to_le_bytes());
        out[8] = self.kind;
        out[9..17].copy_from_slice(&self.item.hi.to_le_bytes());
        out[17..25].copy_from_slice(&self.item.lo.to_le_bytes());
        out[25..33].copy_from_slice(&self.keeper.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        RemovalEntry {
            doc: w(0),
            kind: b[8],
            item: Key128 {
                hi: w(9),
                lo: w(17),
            },
            keeper: w(25),
        }
    }
}

/// What pass 2 found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResolveStats {
    pub documents: u64,
    pub exact_duplicates: u64,
    pub minhash_duplicates: u64,
    /// MinHash clusters of two or more documents.
    pub minhash_clusters: u64,
    /// Documents in those clusters.
    pub minhash_clustered_docs: u64,
    pub shared_buckets: u64,
    pub candidate_pairs: u64,
    pub rejected_pairs: u64,
    /// (document, line) pairs to cut.
    pub line_removals: u64,
    /// (document, span) pairs to cut.
    pub span_removals: u64,
    /// Run files merged, over all methods.
    pub runs_merged: u64,
    /// Chunks the scan wrote (1 when everything fit in memory).
    pub chunks: u64,
    pub memory_spills: u64,
    /// The MinHash union-find moved to a file to stay within the memory limit.
    #[serde(default)]
    pub union_find_spilled: bool,
}

/// One bit per document: removed by exact or MinHash dedup.
struct Removed(Vec<u64>);

impl Removed {
    fn new(n: u64) -> Self {
        Removed(vec![0; n.div_ceil(64) as usize])
    }
    fn mem_bytes(&self) -> usize {
        self.0.len() * 8
    }
    fn set(&mut self, d: u64) {
        self.0[(d / 64) as usize] |= 1 << (d % 64);
    }
    fn get(&self, d: u64) -> bool {
        self.0[(d / 64) as usize] & (1 << (d % 64)) != 0
    }
}

/// The smallest buffer of decisions or removals, whatever the limit.
const MIN_BUFFER: usize = 1 << 16;

/// Resolves a finished scan in `dir` (a no-op returning the stored counts when already done).
///
/// `memory_limit` bounds what the pass holds: one bit per document (which were removed), a
/// buffer of decisions or removals that spills to runs before it would pass the limit, and,
/// while MinHash clusters are found, a union-find of the documents in some candidate pair
/// (a hash map of about 20-40 bytes each, moved to a file-backed array of 8 bytes per
/// document when it would pass half of what the limit leaves). Merging reads every run through a
/// 64 KiB buffer, at most [`super::spill::MAX_FAN_IN`] at once (8 MiB).
pub fn resolve(dir: &Path, memory_limit: usize) -> Result<ResolveStats> {
    if let Some(stats) = read_json::<ResolveStats>(&dir.join(RESOLVE_MANIFEST))? {
        return Ok(stats);
    }
    let manifest = ScanManifest::load(dir, None)?
        .ok_or_else(|| DedupError::State(format!("{}: no scan to resolve", dir.display())))?;
    if !manifest.finished {
        return Err(DedupError::State(format!(
            "{}: the scan is not finished",
            dir.display()
        )));
    }
    let cfg = &manifest.config;
    let n = manifest.docs();
    let mut stats = ResolveStats {
        documents: n,
        chunks: manifest.chunks.len() as u64,
        memory_spills: manifest.memory_spills,
        ..Default::default()
    };
    // What this pass holds at once: the bitset of removed documents, one buffer of decisions
    // or removals, and during MinHash clustering the union-find (see `budget`).
    let mut removed = Removed::new(n);
    let budget = |held: usize| memory_limit.saturating_sub(held).max(MIN_BUFFER);
    let mut decisions = Spiller::<DecisionEntry>::new(dir, ".decisions-tmp");
    decisions.set_budget(budget(removed.mem_bytes()));

    if cfg.exact {
        let runs = runs_of(dir, &manifest, "exact");
        stats.runs_merged += runs.len() as u64;
        find_duplicates(Merger::<ExactEntry>::open(&runs, dir)?, |doc, original| {
            removed.set(doc);
            stats.exact_duplicates += 1;
            decisions.push(DecisionEntry {
                doc,
                method: Method::Exact as u8,
                dup_of: original,
            })
        })?;
    }

    if cfg.minhash {
        let runs = runs_of(dir, &manifest, "bands");
        stats.runs_merged += runs.len() as u64;
        // The union-find grows with the clustered documents: the exact decisions make room.
        decisions.spill()?;
        // Half of what is left goes to the union-find's map (the sorted member list after it
        // needs up to half as much again); past that its parents move to a file.
        let room = memory_limit.saturating_sub(removed.mem_bytes()) / 2;
        let mut uf = UnionFind::bounded(n, room, dir.join(".unionfind-tmp"));
        let merged = Merger::<BandEntry>::open(&runs, dir)?;
        let cs = match cfg.threshold {
            None => cluster(merged, &mut uf, None)?,
            Some(t) => {
                let mut sigs = SigStore::new(dir, &manifest.chunks, cfg.num_perm());
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let mut check = |x: u64, y: u64| -> Result<bool> {
                    sigs.get(x, &mut a)?;
                    sigs.get(y, &mut b)?;
                    Ok(estimated_jaccard(&a, &b) >= t)
                };
                cluster(merged, &mut uf, Some(&mut check))?
            }
        };
        stats.shared_buckets = cs.shared_buckets;
        stats.candidate_pairs = cs.candidate_pairs;
        stats.rejected_pairs = cs.rejected_pairs;
        stats.union_find_spilled = uf.spilled();
        decisions.set_budget(budget(removed.mem_bytes() + uf.mem_bytes() * 3 / 2));
        uf.for_each_member(|m, root| {
            if root == m {
                stats.minhash_clusters += 1;
            }
            stats.minhash_clustered_docs += 1;
            if root != m && !removed.get(m) {
                removed.set(m);
                stats.minhash_duplicates += 1;
                decisions.push(DecisionEntry {
                    doc: m,
                    method: Method::MinHash as u8,
                    dup_of: root,
                })?;
            }
            Ok(())
        })?;
    }
    decisions.finish_into(&dir.join(DECISIONS))?;

    let mut removals = Spiller::<RemovalEntry>::new(dir, ".removals-tmp");
    removals.set_budget(budget(removed.mem_bytes()));
    if cfg.lines {
        let runs = runs_of(dir, &manifest, "lines");
        stats.runs_merged += runs.len() as u64;
        let merged = Merger::<LineEntry>::open(&runs, dir)?;
        // Sorted by (hash, rank, doc): the first survivor has the lowest id hash.
        let mut keeper = None;
        for_each_in_group(
            merged,
            |e| e.hash,
            1,
            |earlier, e| {
                if earlier.is_empty() {
                    keeper = None;
                }
                if removed.get(e.doc) {
                    return Ok(());
                }
                let Some(k) = keeper else {
                    keeper = Some(e.doc);
                    return Ok(());
                };
                stats.line_removals += 1;
                removals.push(RemovalEntry {
                    doc: e.doc,
                    kind: Method::Lines as u8,
                    item: e.hash,
                    keeper: k,
                })
            },
        )?;
    }
    if cfg.spans {
        let runs = runs_of(dir, &manifest, "spans");
        stats.runs_merged += runs.len() as u64;
        let merged = Merger::<SpanEntry>::open(&runs, dir)?;
        // Sorted by (hash, doc, sentence): the first survivor is the first in input order.
        let mut keeper = None;
        for_each_in_group(
            merged,
            |e| e.hash,
            1,
            |earlier, e| {
                if earlier.is_empty() {
                    keeper = None;
                }
                if removed.get(e.doc) {
                    return Ok(());
                }
                let Some(k) = keeper else {
                    keeper = Some(e.doc);
                    return Ok(());
                };
                stats.span_removals += 1;
                removals.push(RemovalEntry {
                    doc: e.doc,
                    kind: Method::Spans as u8,
                    item: Key128 {
                        hi: 0,
                        lo: e.sent as u64,
                    },
                    keeper: k,
                })
            },
        )?;
    }
    removals.finish_into(&dir.join(REMOVALS))?;
    write_json(&dir.join(RESOLVE_MANIFEST), &stats)?;
    for kind in ["exact", "bands", "lines", "spans"] {
        for p in runs_of(dir, &manifest, kind) {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(stats)
}
