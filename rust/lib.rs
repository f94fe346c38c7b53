//! gristmill's Rust core.
//!
//! Pure Rust modules (`bpe`, `text`, `dedup`, `shards`) know nothing of Python. The `python`
//! module at the bottom of this file, behind the `python` feature that maturin turns on, is the
//! only Rust that does: it extracts arguments under the GIL, runs the core with the GIL released
//! (`py.detach`), converts results back, maps each core error type to its exception class, and
//! hands token arrays to numpy without a copy. It has one section per core module.

pub mod bpe;
pub mod parallel;

#[cfg(feature = "python")]
mod python {
    use crate::bpe::{self, BpeError, Encoder, Pattern, Rank};
    use numpy::{IntoPyArray, PyArray1};
    use pyo3::create_exception;
    use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyDict};
    use rustc_hash::FxHashSet;
    use std::path::PathBuf;

    create_exception!(
        _core,
        TokenizerError,
        PyValueError,
        "A bad vocabulary, file or pattern."
    );

    fn bpe_err(e: BpeError) -> PyErr {
        match e {
            BpeError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(format!("{}: {source}", path.display()))
            }
            BpeError::Io { .. } => PyOSError::new_err(e.to_string()),
            other => TokenizerError::new_err(other.to_string()),
        }
    }

    /// The Rust BPE encoder behind `gristmill.Tokenizer`.
    #[pyclass(frozen, module = "gristmill._core")]
    struct CoreBPE {
        inner: Encoder,
    }

    fn build(
        py: Python<'_>,
        mergeable: Vec<(Vec<u8>, Rank)>,
        specials: Vec<(String, Rank)>,
        pattern: String,
    ) -> PyResult<CoreBPE> {
        py.detach(|| {
            let pattern = Pattern::new(&pattern)?;
            Encoder::new(mergeable, specials, pattern)
        })
        .map(|inner| CoreBPE { inner })
        .map_err(bpe_err)
    }

    fn specials_vec(specials: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, Rank)>> {
        let mut out = Vec::new();
        if let Some(d) = specials {
            for (k, v) in d.iter() {
                out.push((k.extract::<String>()?, v.extract::<Rank>()?));
            }
        }
        out.sort_by_key(|(_, id)| *id);
        Ok(out)
    }

    fn id_set(ids: Option<Vec<Rank>>) -> FxHashSet<Rank> {
        ids.unwrap_or_default().into_iter().collect()
    }

    #[pymethods]
    impl CoreBPE {
        /// From mergeable ranks (`{bytes: rank}`), special tokens (`{str: id}`) and a pattern (a
        /// regex, or one of the names `gpt2`, `cl100k`, `o200k`).
        #[new]
        #[pyo3(signature = (mergeable_ranks, special_tokens, pattern))]
        fn new(
            py: Python<'_>,
            mergeable_ranks: &Bound<'_, PyDict>,
            special_tokens: Option<&Bound<'_, PyDict>>,
            pattern: String,
        ) -> PyResult<Self> {
            let mut mergeable = Vec::with_capacity(mergeable_ranks.len());
            for (k, v) in mergeable_ranks.iter() {
                mergeable.push((k.extract::<Vec<u8>>()?, v.extract::<Rank>()?));
            }
            build(py, mergeable, specials_vec(special_tokens)?, pattern)
        }

        /// From the text of a tiktoken rank file (`path` is only used in error messages).
        #[staticmethod]
        #[pyo3(signature = (text, special_tokens, pattern, path = "<memory>".to_string()))]
        fn from_tiktoken_text(
            py: Python<'_>,
            text: String,
            special_tokens: Option<&Bound<'_, PyDict>>,
            pattern: String,
            path: String,
        ) -> PyResult<Self> {
            let mergeable = py
                .detach(|| bpe::vocab::parse_tiktoken(&text, std::path::Path::new(&path)))
                .map_err(bpe_err)?;
            build(py, mergeable, specials_vec(special_tokens)?, pattern)
        }

        #[staticmethod]
        #[pyo3(signature = (path, special_tokens, pattern))]
        fn from_tiktoken_file(
            py: Python<'_>,
            path: PathBuf,
            special_tokens: Option<&Bound<'_, PyDict>>,
            pattern: String,
        ) -> PyResult<Self> {
            let mergeable = py
                .detach(|| bpe::vocab::read_tiktoken(&path))
                .map_err(bpe_err)?;
            build(py, mergeable, specials_vec(special_tokens)?, pattern)
        }

        #[staticmethod]
        fn from_gpt2_files(
            py: Python<'_>,
            encoder_json: PathBuf,
            vocab_bpe: PathBuf,
            pattern: String,
        ) -> PyResult<Self> {
            let v = py
                .detach(|| bpe::vocab::read_gpt2(&encoder_json, &vocab_bpe))
                .map_err(bpe_err)?;
            build(py, v.mergeable, v.specials, pattern)
        }

        #[staticmethod]
        fn from_hf_json(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
            let v = py
                .detach(|| bpe::vocab::read_hf_json(&path))
                .map_err(bpe_err)?;
            let pattern = v.pattern.unwrap_or_default();
            build(py, v.mergeable, v.specials, pattern)
        }

        // ---- encoding ------------------------------------------------------------------------

        fn encode_ordinary(&self, py: Python<'_>, text: String) -> Vec<Rank> {
            py.detach(|| self.inner.encode_ordinary(&text))
        }

        /// Encodes with the special tokens whose ids are in `allowed` honoured.
        #[pyo3(signature = (text, allowed = None))]
        fn encode(&self, py: Python<'_>, text: String, allowed: Option<Vec<Rank>>) -> Vec<Rank> {
            let allowed = id_set(allowed);
            py.detach(|| self.inner.encode(&text, &allowed))
        }

        #[pyo3(signature = (text, allowed = None))]
        fn count(&self, py: Python<'_>, text: String, allowed: Option<Vec<Rank>>) -> usize {
            let allowed = id_set(allowed);
            py.detach(|| self.inner.count(&text, &allowed))
        }

        /// The first special token in `text` among `ids`, or None.
        fn find_special(&self, py: Python<'_>, text: String, ids: Vec<Rank>) -> Option<String> {
            let ids = id_set(Some(ids));
            py.detach(|| {
                self.inner
                    .find_special(&text, 0, |id| ids.contains(&id))
                    .map(|(s, e, _)| text[s..e].to_string())
            })
        }

        #[pyo3(signature = (texts, allowed = None))]
        fn encode_batch(
            &self,
            py: Python<'_>,
            texts: Vec<String>,
            allowed: Option<Vec<Rank>>,
        ) -> Vec<Vec<Rank>> {
            let allowed = id_set(allowed);
            py.detach(|| self.inner.encode_batch(&texts, &allowed))
        }

        #[pyo3(signature = (texts, allowed = None))]
        fn count_batch(
            &self,
            py: Python<'_>,
            texts: Vec<String>,
            allowed: Option<Vec<Rank>>,
        ) -> Vec<usize> {
            let allowed = id_set(allowed);
            py.detach(|| self.inner.count_batch(&texts, &allowed))
        }

        /// Encodes `texts` in parallel into one flat numpy array (uint16 when every id fits,
        /// else uint32) and an int64 offsets array of len(texts) + 1. `append` is added after
        /// each document when given.
        #[pyo3(signature = (texts, allowed = None, append = None, uint16 = None))]
        fn encode_batch_numpy<'py>(
            &self,
            py: Python<'py>,
            texts: Vec<String>,
            allowed: Option<Vec<Rank>>,
            append: Option<Rank>,
            uint16: Option<bool>,
        ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyArray1<i64>>)> {
            let allowed = id_set(allowed);
            let small = uint16.unwrap_or(self.inner.n_vocab() <= 1 << 16);
            if small && self.inner.n_vocab() > 1 << 16 {
                return Err(PyValueError::new_err(format!(
                    "uint16 cannot hold ids of a {}-token vocabulary",
                    self.inner.n_vocab()
                )));
            }
            let (tokens, offsets) =
                py.detach(|| self.inner.encode_batch_flat(&texts, &allowed, append));
            let offsets: Vec<i64> = offsets.into_iter().map(|o| o as i64).collect();
            let tokens = if small {
                let narrow: Vec<u16> = py.detach(|| tokens.into_iter().map(|t| t as u16).collect());
                narrow.into_pyarray(py).into_any()
            } else {
                tokens.into_pyarray(py).into_any()
            };
            Ok((tokens, offsets.into_pyarray(py)))
        }

        // ---- decoding ------------------------------------------------------------------------

        fn decode_bytes<'py>(
            &self,
            py: Python<'py>,
            ids: Vec<Rank>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let bytes = py
                .detach(|| self.inner.decode_bytes(&ids))
                .map_err(bpe_err)?;
            Ok(PyBytes::new(py, &bytes))
        }

        fn token_bytes<'py>(&self, py: Python<'py>, id: Rank) -> PyResult<Bound<'py, PyBytes>> {
            let bytes = self.inner.token_bytes(id).map_err(bpe_err)?;
            Ok(PyBytes::new(py, bytes))
        }

        /// The id of `bytes` if they are a mergeable token, else None.
        fn token_id(&self, bytes: &[u8]) -> Option<Rank> {
            self.inner.token_id(bytes)
        }

        // ---- the vocabulary --------------------------------------------------------------------

        #[getter]
        fn n_vocab(&self) -> usize {
            self.inner.n_vocab()
        }

        #[getter]
        fn pattern(&self) -> String {
            self.inner.pattern().as_regex().to_string()
        }

        #[getter]
        fn n_mergeable(&self) -> usize {
            self.inner.rank_map().len()
        }

        fn special_tokens(&self) -> Vec<(String, Rank)> {
            self.inner.special_tokens().to_vec()
        }

        /// `{bytes: rank}` of every mergeable token.
        fn mergeable_ranks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            let d = PyDict::new(py);
            for (bytes, rank) in self.inner.mergeable_ranks() {
                d.set_item(PyBytes::new(py, bytes), rank)?;
            }
            Ok(d)
        }

        /// The text of a tiktoken rank file.
        fn to_tiktoken(&self, py: Python<'_>) -> String {
            py.detach(|| bpe::vocab::format_tiktoken(&self.inner))
        }

        /// A HF `tokenizer.json` document.
        fn to_hf_json(&self, py: Python<'_>) -> PyResult<String> {
            py.detach(|| bpe::vocab::format_hf_json(&self.inner))
                .map_err(bpe_err)
        }

        /// The merges (pairs of token bytes) in priority order, recovered from the ranks.
        fn merges<'py>(
            &self,
            py: Python<'py>,
        ) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
            let merges = py
                .detach(|| bpe::vocab::merges_from_ranks(&self.inner))
                .map_err(bpe_err)?;
            Ok(merges
                .into_iter()
                .map(|(a, b)| (PyBytes::new(py, &a), PyBytes::new(py, &b)))
                .collect())
        }
    }

    /// Splits `text` into pre-tokenizer pieces (for inspection and tests).
    #[pyfunction]
    fn split_pieces(py: Python<'_>, text: String, pattern: String) -> PyResult<Vec<String>> {
        py.detach(|| {
            let p = Pattern::new(&pattern)?;
            Ok(p.pieces(&text)?.into_iter().map(str::to_string).collect())
        })
        .map_err(bpe_err)
    }

    /// Called in a forked child (os.register_at_fork): batch work then runs on the calling thread.
    #[pyfunction]
    fn _mark_forked() {
        crate::parallel::mark_forked();
    }

    /// The number of threads batch work uses (GRISTMILL_NUM_THREADS, default all cores).
    #[pyfunction]
    fn num_threads() -> usize {
        crate::parallel::num_threads()
    }

    // ==== bpe trainer ====

    use crate::bpe::trainer::MAX_VOCAB;
    use crate::bpe::{ChunkCounter, Trainer};
    use pyo3::exceptions::PyTypeError;
    use pyo3::types::{PyIterator, PyString};

    /// Texts are pulled from the iterator until a batch holds this many bytes per thread (or
    /// this many texts): enough to keep the threads busy, little enough to copy.
    const TRAIN_BATCH_BYTES_PER_THREAD: usize = 2 << 20;
    const TRAIN_BATCH_TEXTS: usize = 65536;

    enum TrainState {
        Counting(ChunkCounter),
        Merging(Trainer),
        /// Setting up the merges failed; the counts are gone.
        Failed,
    }

    /// BPE training: `count` texts (or `count_file`), then `merge` in steps, then `build`.
    /// See `gristmill.Tokenizer.train` and `rust/bpe/trainer.rs` for the algorithm.
    #[pyclass(module = "gristmill._core")]
    struct BpeTrainer {
        state: TrainState,
        vocab_size: usize,
        specials: Vec<String>,
        pattern: String,
        min_frequency: u64,
        counted: (u64, u64, u64, usize), // texts, chunks, bytes, unique chunks
    }

    impl BpeTrainer {
        fn counter(&mut self) -> PyResult<&mut ChunkCounter> {
            match &mut self.state {
                TrainState::Counting(c) => Ok(c),
                _ => Err(TokenizerError::new_err(
                    "cannot count more text: merging has started",
                )),
            }
        }

        fn note_counts(&mut self) {
            if let TrainState::Counting(c) = &self.state {
                self.counted = (c.n_texts(), c.n_chunks(), c.n_bytes(), c.n_unique());
            }
        }

        fn trainer(&mut self, py: Python<'_>) -> PyResult<&mut Trainer> {
            if matches!(self.state, TrainState::Counting(_)) {
                let TrainState::Counting(counter) =
                    std::mem::replace(&mut self.state, TrainState::Failed)
                else {
                    unreachable!("matched just above")
                };
                let target = self.vocab_size - self.specials.len();
                let min_frequency = self.min_frequency;
                let t = py
                    .detach(|| Trainer::new(counter.into_counts(), target, min_frequency))
                    .map_err(bpe_err)?;
                self.state = TrainState::Merging(t);
            }
            match &mut self.state {
                TrainState::Merging(t) => Ok(t),
                _ => Err(TokenizerError::new_err("training failed earlier")),
            }
        }
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
            let mut seen = FxHashSet::default();
            if let Some(s) = special_tokens.iter().find(|s| !seen.insert(s.as_str())) {
                return Err(TokenizerError::new_err(format!(
                    "special token {s:?} is listed twice"
                )));
            }
            let least = 256 + special_tokens.len();
            if vocab_size < least || vocab_size > MAX_VOCAB {
                return Err(TokenizerError::new_err(format!(
                    "vocab_size must be between {least} (256 byte tokens + {} special tokens) \
                     and {MAX_VOCAB}, not {vocab_size}",
                    special_tokens.len()
                )));
            }
            let compiled = Pattern::new(&pattern).map_err(bpe_err)?;
            let counter = ChunkCounter::new(compiled, &special_tokens).map_err(bpe_err)?;
            Ok(BpeTrainer {
                state: TrainState::Counting(counter),
                vocab_size,
                specials: special_tokens,
                pattern,
                min_frequency,
                counted: (0, 0, 0, 0),
            })
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
            self.counter()?;
            let mut iter = texts.try_iter()?;
            let mut pulled = 0usize;
            let batch_bytes = TRAIN_BATCH_BYTES_PER_THREAD * crate::parallel::num_threads();
            let (mut current, mut next) = (TextBatch::default(), TextBatch::default());
            pull_batch(&mut iter, batch_bytes, &mut pulled, &mut current)?;
            while !current.ends.is_empty() {
                py.check_signals()?;
                let counter = self.counter()?;
                // Python work (the iterator, str to UTF-8) overlaps the count of the batch
                // before: a scoped thread hands that batch to the pool meanwhile.
                let (counted, pulled_next) = std::thread::scope(|scope| {
                    let texts = current.texts();
                    let job = scope.spawn(move || counter.add_texts(&texts));
                    let pulled_next = pull_batch(&mut iter, batch_bytes, &mut pulled, &mut next);
                    (py.detach(|| job.join()), pulled_next)
                });
                counted
                    .map_err(|_| TokenizerError::new_err("chunk counting failed"))?
                    .map_err(bpe_err)?;
                self.note_counts();
                if let Some(cb) = callback {
                    cb.call1((self.counted.0, self.counted.2))?;
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
            let (texts, before) = (self.counted.0 + 1, self.counted.2);
            let counter = self.counter()?;
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
            })
            .map_err(bpe_err)?;
            self.note_counts();
            // A failed callback (or Ctrl-C) stopped the count; the file is partly counted.
            failure.map_or(Ok(()), Err)
        }

        /// Does up to `max_merges` merges (the first call ends counting); returns how many
        /// were done: 0 once training is complete.
        fn merge(&mut self, py: Python<'_>, max_merges: usize) -> PyResult<usize> {
            self.note_counts();
            let t = self.trainer(py)?;
            Ok(py.detach(|| t.step(max_merges)))
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
            if matches!(self.state, TrainState::Counting(_)) {
                self.merge(py, usize::MAX)?;
            }
            let pattern = self.pattern.clone();
            let names = self.specials.clone();
            let ranks = self.trainer(py)?.ranks();
            let specials = match special_ids {
                Some(d) => {
                    let given = specials_vec(Some(d))?;
                    let mut got: Vec<&str> = given.iter().map(|(s, _)| s.as_str()).collect();
                    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
                    got.sort_unstable();
                    want.sort_unstable();
                    if got != want {
                        return Err(TokenizerError::new_err(format!(
                            "special_ids must give one id to each special token {want:?}, \
                             got {got:?}"
                        )));
                    }
                    given
                }
                None => {
                    let first = ranks.len() as Rank;
                    (names.into_iter().zip(first..)).collect()
                }
            };
            build(py, ranks, specials, pattern)
        }

        /// The merges so far as pairs of token bytes, in order (none before `merge`).
        fn merges<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
            let TrainState::Merging(t) = &self.state else {
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
            matches!(&self.state, TrainState::Merging(t) if t.is_done())
        }

        #[getter]
        fn n_texts(&self) -> u64 {
            self.counted.0
        }

        #[getter]
        fn n_chunks(&self) -> u64 {
            self.counted.1
        }

        #[getter]
        fn n_bytes(&self) -> u64 {
            self.counted.2
        }

        #[getter]
        fn n_unique(&self) -> usize {
            self.counted.3
        }

        #[getter]
        fn n_merges(&self) -> usize {
            match &self.state {
                TrainState::Merging(t) => t.merges().len(),
                _ => 0,
            }
        }

        /// The number of merges asked for: vocab_size - 256 - special tokens.
        #[getter]
        fn target_merges(&self) -> usize {
            self.vocab_size - 256 - self.specials.len()
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

    #[pymodule(gil_used = false)]
    fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("TokenizerError", m.py().get_type::<TokenizerError>())?;
        m.add_class::<CoreBPE>()?;
        m.add_function(wrap_pyfunction!(split_pieces, m)?)?;
        m.add_function(wrap_pyfunction!(_mark_forked, m)?)?;
        m.add_function(wrap_pyfunction!(num_threads, m)?)?;
        // bpe trainer
        m.add_class::<BpeTrainer>()?;
        m.add_function(wrap_pyfunction!(train_bpe, m)?)?;
        Ok(())
    }
}
