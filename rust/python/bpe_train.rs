//! Tokenizer training: `BpeTrainer` and `train_bpe` over `crate::bpe::Training`.

use super::bpe::{build, specials_vec, CoreBPE};
use super::errors::TokenizerError;
use crate::bpe::Training;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3::types::{PyIterator, PyString};
use std::path::PathBuf;

/// Texts are pulled from the iterator until a batch holds this many bytes per thread (or
/// this many texts): enough to keep the threads busy, little enough to copy.
const TRAIN_BATCH_BYTES_PER_THREAD: usize = 2 << 20;
const TRAIN_BATCH_TEXTS: usize = 65536;

/// BPE training: `count` texts (or `count_file`), then `merge` in steps, then `build`.
/// The stages and checks are `crate::bpe::Training`; see `gristmill.Tokenizer.train` and
/// `rust/bpe/trainer.rs` for the algorithm.
#[pyclass(module = "gristmill._core")]
struct BpeTrainer {
    inner: Training,
}

/// Texts back to back in one buffer that is reused from batch to batch (one copy per
/// text, no allocation per text).
#[derive(Default)]
struct TextBatch {
    buf: String,
    ends: Vec<usize>,
}

impl TextBatch {
    fn texts(&self) -> Vec<&str> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let t = &self.buf[start..end];
                start = end;
                t
            })
            .collect()
    }
}

/// Fills `batch` with the next texts from `iter`, up to `max_bytes` of them (or
/// `TRAIN_BATCH_TEXTS` texts); it stays empty once `iter` is exhausted. Lone surrogates
/// become U+FFFD, as tiktoken does. `pulled` counts texts taken, for error messages.
fn pull_batch(
    iter: &mut Bound<'_, PyIterator>,
    max_bytes: usize,
    pulled: &mut usize,
    batch: &mut TextBatch,
) -> PyResult<()> {
    batch.buf.clear();
    batch.ends.clear();
    while batch.buf.len() < max_bytes && batch.ends.len() < TRAIN_BATCH_TEXTS {
        let Some(item) = iter.next() else { break };
        let item = item?;
        let text = item.cast::<PyString>().map_err(|_| {
            let kind = item.get_type().name().map(|n| n.to_string());
            PyTypeError::new_err(format!(
                "text {pulled} is {}, expected str",
                kind.unwrap_or_default()
            ))
        })?;
        match text.encode_utf8() {
            Ok(bytes) => batch.buf.push_str(
                std::str::from_utf8(bytes.as_bytes())
                    .map_err(|e| TokenizerError::new_err(format!("text {pulled}: {e}")))?,
            ),
            Err(_) => {
                // Lone surrogates: one U+FFFD each, through UTF-16 as tiktoken does.
                let fixed = text
                    .call_method1("encode", ("utf-16", "surrogatepass"))?
                    .call_method1("decode", ("utf-16", "replace"))?;
                batch.buf.push_str(&fixed.cast::<PyString>()?.to_cow()?);
            }
        }
        batch.ends.push(batch.buf.len());
        *pulled += 1;
    }
    Ok(())
}

#[pymethods]
impl BpeTrainer {
    /// A trainer for a vocabulary of `vocab_size` ids: 256 bytes, the merges, and the
    /// special tokens (which are cut out of the text, never learned).
    #[new]
    #[pyo3(signature = (vocab_size, pattern = "gpt2".to_string(), special_tokens = Vec::new(), min_frequency = 2))]
    fn new(
        vocab_size: usize,
        pattern: String,
        special_tokens: Vec<String>,
        min_frequency: u64,
    ) -> PyResult<Self> {
        let inner = Training::new(vocab_size, &pattern, special_tokens, min_frequency)?;
        Ok(BpeTrainer { inner })
    }

    /// Counts the chunks of every text from `texts` (any iterable of str). Texts are
    /// pulled in batches under the GIL and counted in parallel without it, the next batch
    /// being pulled while the last is counted; `callback`, if given, is called with
    /// (texts, bytes) counted so far after each batch.
    #[pyo3(signature = (texts, callback = None))]
    fn count(
        &mut self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        callback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.inner.counter()?;
        let mut iter = texts.try_iter()?;
        let mut pulled = 0usize;
        let batch_bytes = TRAIN_BATCH_BYTES_PER_THREAD * crate::parallel::num_threads();
        let (mut current, mut next) = (TextBatch::default(), TextBatch::default());
        pull_batch(&mut iter, batch_bytes, &mut pulled, &mut current)?;
        while !current.ends.is_empty() {
            py.check_signals()?;
            let counter = self.inner.counter()?;
            // Python work (the iterator, str to UTF-8) overlaps the count of the batch
            // before: a scoped thread hands that batch to the pool meanwhile.
            let (counted, pulled_next) = std::thread::scope(|scope| {
                let texts = current.texts();
                let job = scope.spawn(move || counter.add_texts(&texts));
                let pulled_next = pull_batch(&mut iter, batch_bytes, &mut pulled, &mut next);
                (py.detach(|| job.join()), pulled_next)
            });
            counted.map_err(|_| TokenizerError::new_err("chunk counting failed"))??;
            self.inner.note_counts();
            if let Some(cb) = callback {
                let counted = self.inner.counted();
                cb.call1((counted.texts, counted.bytes))?;
            }
            pulled_next?;
            std::mem::swap(&mut current, &mut next);
        }
        Ok(())
    }

    /// Counts the chunks of one UTF-8 text file (one document), streamed in blocks;
    /// `callback`, if given, is called with (texts, bytes) counted so far after each block.
    #[pyo3(signature = (path, callback = None))]
    fn count_file(
        &mut self,
        py: Python<'_>,
        path: PathBuf,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let counted = self.inner.counted();
        let (texts, before) = (counted.texts + 1, counted.bytes);
        let counter = self.inner.counter()?;
        let mut failure: Option<PyErr> = None;
        py.detach(|| {
            counter.add_file(&path, |done| {
                // Back under the GIL for a moment: report, and stop on Ctrl-C.
                Python::attach(|py| {
                    let r = py.check_signals().and_then(|_| match &callback {
                        Some(cb) => cb.call1(py, (texts, before + done)).map(drop),
                        None => Ok(()),
                    });
                    r.map_err(|e| failure = Some(e)).is_ok()
                })
            })
        })?;
        self.inner.note_counts();
        // A failed callback (or Ctrl-C) stopped the count; the file is partly counted.
        failure.map_or(Ok(()), Err)
    }

    /// Does up to `max_merges` merges (the first call ends counting); returns how many
    /// were done: 0 once training is complete.
    fn merge(&mut self, py: Python<'_>, max_merges: usize) -> PyResult<usize> {
        let inner = &mut self.inner;
        py.detach(|| inner.merge(max_merges)).map_err(PyErr::from)
    }

    /// The tokenizer: the merges done so far (all of them if `merge` was never called),
    /// and the special tokens at the ids in `special_ids` (default: right after the
    /// mergeable tokens, in the order given).
    #[pyo3(signature = (special_ids = None))]
    fn build(
        &mut self,
        py: Python<'_>,
        special_ids: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<CoreBPE> {
        let given = special_ids.map(|d| specials_vec(Some(d))).transpose()?;
        let inner = &mut self.inner;
        if inner.merging().is_none() {
            py.detach(|| inner.merge(usize::MAX))?;
        }
        let ranks = inner.trainer()?.ranks();
        let specials = inner.special_ids(given, ranks.len())?;
        build(py, ranks, specials, inner.pattern().to_string())
    }

    /// The merges so far as pairs of token bytes, in order (none before `merge`).
    fn merges<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let Some(t) = self.inner.merging() else {
            return Vec::new();
        };
        t.merges()
            .iter()
            .map(|m| {
                (
                    PyBytes::new(py, t.token_bytes(m.left)),
                    PyBytes::new(py, t.token_bytes(m.right)),
                )
            })
            .collect()
    }

    /// Whether merging has finished (target size reached, no pair left, or min_frequency).
    #[getter]
    fn done(&self) -> bool {
        self.inner.is_done()
    }

    #[getter]
    fn n_texts(&self) -> u64 {
        self.inner.counted().texts
    }

    #[getter]
    fn n_chunks(&self) -> u64 {
        self.inner.counted().chunks
    }

    #[getter]
    fn n_bytes(&self) -> u64 {
        self.inner.counted().bytes
    }

    #[getter]
    fn n_unique(&self) -> usize {
        self.inner.counted().unique_chunks
    }

    #[getter]
    fn n_merges(&self) -> usize {
        self.inner.n_merges()
    }

    /// The number of merges asked for: vocab_size - 256 - special tokens.
    #[getter]
    fn target_merges(&self) -> usize {
        self.inner.target_merges()
    }
}

/// Trains a byte-level BPE tokenizer on `texts` (an iterable of str); see
/// `gristmill.Tokenizer.train`.
#[pyfunction]
#[pyo3(signature = (texts, vocab_size, pattern = "gpt2".to_string(),
                    special_tokens = vec!["<|endoftext|>".to_string()], min_frequency = 2))]
fn train_bpe(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    vocab_size: usize,
    pattern: String,
    special_tokens: Vec<String>,
    min_frequency: u64,
) -> PyResult<CoreBPE> {
    let mut trainer = BpeTrainer::new(vocab_size, pattern, special_tokens, min_frequency)?;
    trainer.count(py, texts, None)?;
    trainer.build(py, None)
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BpeTrainer>()?;
    m.add_function(wrap_pyfunction!(train_bpe, m)?)?;
    Ok(())
}
