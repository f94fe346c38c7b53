//! Pass 3: walk the corpus again, in the same order, and apply the decisions.
//!
//! `decisions.run` and `removals.run` are sorted by document, so they are read forward beside
//! the documents, a batch at a time: memory holds one batch. Every document's id is checked
//! against the id the scan stored, so a corpus that changed between the passes is an error,
//! not a silently wrong result. Documents with lines or spans to cut are cut in parallel.

use super::lines::{self, cut};
use super::resolve::{DecisionEntry, RemovalEntry, DECISIONS, REMOVALS, RESOLVE_MANIFEST};
use super::scan::ScanManifest;
use super::spans;
use super::spill::RunReader;
use super::store::IdStore;
use super::{DedupConfig, DedupError, Key128, Method, Result};
use crate::text::sentences::trimmed_sentences;
use rayon::prelude::*;
use rustc_hash::FxHashSet;
use std::iter::Peekable;
use std::path::Path;

/// What happens to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Kept; `text` is the new text when lines or spans were cut, `None` when unchanged.
    Keep {
        text: Option<String>,
        lines_cut: u32,
        sentences_cut: u32,
    },
    /// Removed as a duplicate of document `dup_of` (itself, for a document dropped for
    /// repeating its own lines).
    Remove {
        method: Method,
        dup_of: u64,
        lines_cut: u32,
        sentences_cut: u32,
    },
}

/// An outcome with the duplicated document's id looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    pub dup_of_id: Option<String>,
}

/// Reads the decisions beside the corpus; see the module docs.
pub struct Applier {
    config: DedupConfig,
    decisions: Peekable<RunReader<DecisionEntry>>,
    removals: Peekable<RunReader<RemovalEntry>>,
    ids: IdStore,
    next_doc: u64,
    total: u64,
}

impl Applier {
    /// Opens the results of a resolved scan in `dir`.
    pub fn open(dir: &Path) -> Result<Applier> {
        if !dir.join(RESOLVE_MANIFEST).exists() {
            return Err(DedupError::State(format!(
                "{}: nothing resolved to apply",
                dir.display()
            )));
        }
        let manifest = ScanManifest::load(dir, None)?
            .ok_or_else(|| DedupError::State(format!("{}: no scan manifest", dir.display())))?;
        Ok(Applier {
            config: manifest.config.clone(),
            decisions: RunReader::open(&dir.join(DECISIONS))?.peekable(),
            removals: RunReader::open(&dir.join(REMOVALS))?.peekable(),
            ids: IdStore::new(dir, &manifest.chunks),
            next_doc: 0,
            total: manifest.docs(),
        })
    }

    /// The documents the scan saw.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Decides documents `start..start + texts.len()`. Batches go forward: `start` may skip
    /// documents (a resumed run) but not go back.
    pub fn apply_batch(
        &mut self,
        start: u64,
        ids: &[String],
        texts: &[String],
    ) -> Result<Vec<Applied>> {
        if start < self.next_doc {
            return Err(DedupError::State(format!(
                "batch starts at document {start}, but document {} was already applied",
                self.next_doc
            )));
        }
        let end = start + texts.len() as u64;
        if end > self.total || ids.len() != texts.len() {
            return Err(DedupError::State(format!(
                "documents {start}..{end} (with {} ids) do not fit the {} scanned",
                ids.len(),
                self.total
            )));
        }
        for (i, id) in ids.iter().enumerate() {
            let stored = self.ids.get(start + i as u64)?;
            if &stored != id {
                return Err(DedupError::InputChanged {
                    index: start + i as u64,
                    expected: stored,
                    found: id.clone(),
                });
            }
        }
        let mut decided: Vec<Option<DecisionEntry>> = vec![None; texts.len()];
        while let Some(d) = next_below(&mut self.decisions, end, |d| d.doc)? {
            if d.doc >= start {
                decided[(d.doc - start) as usize] = Some(d);
            }
        }
        let mut cuts: Vec<Vec<RemovalEntry>> = vec![Vec::new(); texts.len()];
        while let Some(r) = next_below(&mut self.removals, end, |r| r.doc)? {
            if r.doc >= start {
                cuts[(r.doc - start) as usize].push(r);
            }
        }
        self.next_doc = end;
        let config = &self.config;
        let outcomes: Vec<Outcome> = crate::parallel::install(|| {
            texts
                .par_iter()
                .zip(decided.par_iter().zip(cuts.par_iter()))
                .enumerate()
                .map(|(i, (text, (d, r)))| decide(config, start + i as u64, text, *d, r))
                .collect()
        });
        let mut out = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let dup_of_id = match &outcome {
                Outcome::Remove { dup_of, .. } => Some(self.ids.get(*dup_of)?),
                Outcome::Keep { .. } => None,
            };
            out.push(Applied { outcome, dup_of_id });
        }
        Ok(out)
    }
}

/// The next entry of a sorted stream if its document is below `end`.
fn next_below<R: super::spill::Record>(
    it: &mut Peekable<RunReader<R>>,
    end: u64,
    doc: impl Fn(&R) -> u64,
) -> Result<Option<R>> {
    match it.peek() {
        Some(Ok(r)) if doc(r) < end => {}
        Some(Err(_)) => return it.next().transpose(),
        _ => return Ok(None),
    }
    it.next().transpose()
}

/// The outcome for one document.
fn decide(
    config: &DedupConfig,
    doc: u64,
    text: &str,
    decision: Option<DecisionEntry>,
    removals: &[RemovalEntry],
) -> Outcome {
    if let Some(d) = decision {
        return Outcome::Remove {
            method: Method::from_u8(d.method).unwrap_or(Method::Exact),
            dup_of: d.dup_of,
            lines_cut: 0,
            sentences_cut: 0,
        };
    }
    let mut ranges = Vec::new();
    let (mut lines_cut, mut sentences_cut) = (0usize, 0usize);
    if config.lines {
        // Every document loses its own repeated lines, as in C4, even with no shared ones.
        let remove: FxHashSet<Key128> = removals
            .iter()
            .filter(|r| r.kind == Method::Lines as u8)
            .map(|r| r.item)
            .collect();
        let (r, n) = lines::cut_ranges(text, &remove);
        ranges.extend(r);
        lines_cut = n;
    }
    let starts: Vec<u32> = removals
        .iter()
        .filter(|r| r.kind == Method::Spans as u8)
        .map(|r| r.item.lo as u32)
        .collect();
    if !starts.is_empty() {
        let (r, n) = spans::cut_ranges(text, &starts, config.span_sentences);
        ranges.extend(r);
        sentences_cut = n;
    }
    if ranges.is_empty() {
        return Outcome::Keep {
            text: None,
            lines_cut: 0,
            sentences_cut: 0,
        };
    }
    let new_text = cut(text, &mut ranges).trim().to_string();
    let too_short = new_text.is_empty()
        || trimmed_sentences(&new_text).len() < config.min_sentences
        || (sentences_cut > 0 && spans::word_count(&new_text) < config.min_words);
    let (lines_cut, sentences_cut) = (lines_cut as u32, sentences_cut as u32);
    if !too_short {
        return Outcome::Keep {
            text: Some(new_text),
            lines_cut,
            sentences_cut,
        };
    }
    // Named after the first thing cut: a shared line, else a span, else the document's own
    // repeated lines.
    let first = removals
        .iter()
        .find(|r| r.kind == Method::Lines as u8)
        .or_else(|| removals.first());
    let (method, dup_of) = match first {
        Some(r) => (Method::from_u8(r.kind).unwrap_or(Method::Lines), r.keeper),
        None => (Method::Lines, doc),
    };
    Outcome::Remove {
        method,
        dup_of,
        lines_cut,
        sentences_cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::resolve::resolve;
    use crate::dedup::scan::Scanner;

    fn corpus() -> (Vec<String>, Vec<String>) {
        let para = |k: usize| -> String {
            (0..60)
                .map(|i| format!("tok{}x{} ", (k * 7919 + i * 104_729) % 1_000_003, i))
                .collect::<String>()
        };
        let boiler = "Subscribe to our newsletter today.";
        let texts = vec![
            para(1),
            para(2),
            para(1).to_uppercase(),      // 2: exact duplicate of 0
            format!("{} tail", para(3)), // 3: near duplicate of 5, earlier, so 3 is kept
            format!("{boiler}\nFirst story here. It is long. It goes on."),
            para(3),
            format!("Second story here. Quite different. Really.\n{boiler}"),
        ];
        let ids = (0..texts.len()).map(|i| format!("d{i}")).collect();
        (ids, texts)
    }

    fn config() -> DedupConfig {
        DedupConfig {
            lines: true,
            fold_numbers: false,
            min_sentences: 1,
            ..Default::default()
        }
    }

    fn run(dir: &Path, memory: usize, batch: usize) -> Vec<Applied> {
        let (ids, texts) = corpus();
        let mut s = Scanner::open(dir, config(), memory, 1_000_000).unwrap();
        let mut start = s.docs_done() as usize;
        while start < texts.len() {
            let end = (start + batch).min(texts.len());
            s.add_batch(start as u64, &ids[start..end], &texts[start..end])
                .unwrap();
            start = end;
        }
        s.finish().unwrap();
        resolve(dir, memory).unwrap();
        let mut a = Applier::open(dir).unwrap();
        a.apply_batch(0, &ids, &texts).unwrap()
    }

    #[test]
    fn end_to_end_and_spill_invariance() {
        let d1 = tempfile::tempdir().unwrap();
        let out = run(d1.path(), 1 << 30, 100);
        let removed: Vec<(usize, Method, String)> = out
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a.outcome {
                Outcome::Remove { method, .. } => Some((i, method, a.dup_of_id.clone().unwrap())),
                _ => None,
            })
            .collect();
        assert_eq!(
            removed,
            [
                (2, Method::Exact, "d0".into()),
                (5, Method::MinHash, "d3".into())
            ]
        );
        // The shared line stays in exactly one of documents 4 and 6.
        let texts: Vec<String> = out
            .iter()
            .zip(corpus().1)
            .map(|(a, t)| match &a.outcome {
                Outcome::Keep { text, .. } => text.clone().unwrap_or(t),
                _ => String::new(),
            })
            .collect();
        let with_line = [4, 6]
            .iter()
            .filter(|&&i| texts[i].contains("Subscribe"))
            .count();
        assert_eq!(with_line, 1);

        // A memory limit of one byte: a checkpoint after every document, same decisions.
        let d2 = tempfile::tempdir().unwrap();
        assert_eq!(run(d2.path(), 1, 3), out);
        let m = ScanManifest::load(d2.path(), None).unwrap().unwrap();
        assert_eq!(m.chunks.len(), 7);
    }

    #[test]
    fn resume_after_a_partial_scan() {
        let (ids, texts) = corpus();
        let full = tempfile::tempdir().unwrap();
        let expected = run(full.path(), 1 << 30, 100);
        let dir = tempfile::tempdir().unwrap();
        {
            // Checkpoint every 2 documents, then "crash" after 5 added (4 checkpointed).
            let mut s = Scanner::open(dir.path(), config(), 1 << 30, 2).unwrap();
            s.add_batch(0, &ids[..5], &texts[..5]).unwrap();
        }
        let s = Scanner::open(dir.path(), config(), 1 << 30, 2).unwrap();
        assert_eq!(s.docs_done(), 4);
        drop(s);
        assert_eq!(run(dir.path(), 1 << 30, 2), expected);
        // Another configuration is refused.
        let other = DedupConfig {
            bands: 7,
            ..config()
        };
        assert!(matches!(
            Scanner::open(dir.path(), other, 1 << 30, 2),
            Err(DedupError::ConfigMismatch { .. })
        ));
    }

    #[test]
    fn changed_input_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), 1 << 30, 100);
        let (mut ids, texts) = corpus();
        ids[1] = "other".into();
        let mut a = Applier::open(dir.path()).unwrap();
        let err = a.apply_batch(0, &ids, &texts).unwrap_err().to_string();
        assert!(err.contains("document 1") && err.contains("other"), "{err}");
    }
}
