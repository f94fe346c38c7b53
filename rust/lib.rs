//! gristmill's Rust core.
//!
//! Pure Rust modules (`bpe`, `text`, `dedup`, `shards`) know nothing of Python. The `python`
//! module at the bottom of this file, behind the `python` feature that maturin turns on, is the
//! only Rust that does: it extracts arguments under the GIL, runs the core with the GIL released
//! (`py.detach`), converts results back, maps each core error type to its exception class, and
//! hands token arrays to numpy without a copy. It has one section per core module.

pub mod bpe;
pub mod dedup;
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

    // ==== dedup ====

    use crate::dedup::{
        self, apply::Outcome, minhash::MinHasher, DedupConfig, DedupError as CoreDedupError,
    };
    use numpy::{PyArray2, PyArrayMethods};

    create_exception!(
        _core,
        DedupError,
        PyValueError,
        "A bad dedup configuration, a corrupt or mismatched work directory, or changed input."
    );

    fn dedup_err(e: CoreDedupError) -> PyErr {
        match e {
            CoreDedupError::Io { path, source }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                PyFileNotFoundError::new_err(format!("{}: {source}", path.display()))
            }
            CoreDedupError::Io { .. } => PyOSError::new_err(e.to_string()),
            other => DedupError::new_err(other.to_string()),
        }
    }

    fn dedup_config(json: &str) -> PyResult<DedupConfig> {
        let c: DedupConfig = serde_json::from_str(json)
            .map_err(|e| DedupError::new_err(format!("invalid dedup configuration: {e}")))?;
        c.validate().map_err(dedup_err)?;
        Ok(c)
    }

    /// Pass 1 of dedup: hashes batches of documents into on-disk indexes (resumable).
    #[pyclass(module = "gristmill._core")]
    struct DedupScanner {
        inner: dedup::scan::Scanner,
    }

    #[pymethods]
    impl DedupScanner {
        #[new]
        #[pyo3(signature = (work_dir, config_json, memory_limit, checkpoint_docs))]
        fn new(
            py: Python<'_>,
            work_dir: PathBuf,
            config_json: &str,
            memory_limit: usize,
            checkpoint_docs: u64,
        ) -> PyResult<Self> {
            let config = dedup_config(config_json)?;
            py.detach(|| {
                dedup::scan::Scanner::open(&work_dir, config, memory_limit, checkpoint_docs)
            })
            .map(|inner| DedupScanner { inner })
            .map_err(dedup_err)
        }

        /// Documents written at a checkpoint: a resumed run continues after them.
        #[getter]
        fn docs_done(&self) -> u64 {
            self.inner.docs_done()
        }

        #[getter]
        fn docs_added(&self) -> u64 {
            self.inner.docs_added()
        }

        #[getter]
        fn finished(&self) -> bool {
            self.inner.finished()
        }

        #[getter]
        fn mem_bytes(&self) -> usize {
            self.inner.mem_bytes()
        }

        fn add_batch(
            &mut self,
            py: Python<'_>,
            start: u64,
            ids: Vec<String>,
            texts: Vec<String>,
        ) -> PyResult<()> {
            let inner = &mut self.inner;
            py.detach(|| inner.add_batch(start, &ids, &texts))
                .map_err(dedup_err)
        }

        fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
            let inner = &mut self.inner;
            py.detach(|| inner.finish().map(|_| ())).map_err(dedup_err)
        }
    }

    /// Pass 2 of dedup: merges the indexes and decides; returns the counts as JSON.
    #[pyfunction]
    fn dedup_resolve(py: Python<'_>, work_dir: PathBuf, memory_limit: usize) -> PyResult<String> {
        let stats = py
            .detach(|| dedup::resolve::resolve(&work_dir, memory_limit))
            .map_err(dedup_err)?;
        serde_json::to_string(&stats).map_err(|e| DedupError::new_err(e.to_string()))
    }

    type AppliedTuple = (
        &'static str,
        Option<String>,
        Option<&'static str>,
        Option<String>,
        u32,
        u32,
    );

    /// Pass 3 of dedup: the decision for each document, batch by batch.
    #[pyclass(module = "gristmill._core")]
    struct DedupApplier {
        inner: dedup::apply::Applier,
    }

    #[pymethods]
    impl DedupApplier {
        #[new]
        fn new(py: Python<'_>, work_dir: PathBuf) -> PyResult<Self> {
            py.detach(|| dedup::apply::Applier::open(&work_dir))
                .map(|inner| DedupApplier { inner })
                .map_err(dedup_err)
        }

        #[getter]
        fn total(&self) -> u64 {
            self.inner.total()
        }

        /// For each document: `(action, new_text, method, duplicate_of, lines_cut,
        /// sentences_cut)` with action "keep" or "remove"; new_text is None when unchanged.
        fn apply_batch(
            &mut self,
            py: Python<'_>,
            start: u64,
            ids: Vec<String>,
            texts: Vec<String>,
        ) -> PyResult<Vec<AppliedTuple>> {
            let inner = &mut self.inner;
            let applied = py
                .detach(|| inner.apply_batch(start, &ids, &texts))
                .map_err(dedup_err)?;
            Ok(applied
                .into_iter()
                .map(|a| match a.outcome {
                    Outcome::Keep {
                        text,
                        lines_cut,
                        sentences_cut,
                    } => ("keep", text, None, None, lines_cut, sentences_cut),
                    Outcome::Remove {
                        method,
                        lines_cut,
                        sentences_cut,
                        ..
                    } => (
                        "remove",
                        None,
                        Some(method.name()),
                        a.dup_of_id,
                        lines_cut,
                        sentences_cut,
                    ),
                })
                .collect())
        }
    }

    /// MinHash signatures of `texts` as a (len(texts), bands*rows) uint64 array; a row of
    /// 2**64 - 1 marks a text with too few words for one shingle.
    #[pyfunction]
    fn minhash_signatures<'py>(
        py: Python<'py>,
        texts: Vec<String>,
        config_json: &str,
    ) -> PyResult<Bound<'py, PyArray2<u64>>> {
        let config = dedup_config(config_json)?;
        let hasher = MinHasher::from_config(&config).map_err(dedup_err)?;
        let k = hasher.num_perm();
        let flat: Vec<u64> = py.detach(|| {
            use rayon::prelude::*;
            let sigs: Vec<Option<Vec<u64>>> = crate::parallel::install(|| {
                texts.par_iter().map(|t| hasher.signature(t)).collect()
            });
            let mut flat = Vec::with_capacity(sigs.len() * k);
            for s in sigs {
                match s {
                    Some(s) => flat.extend(s),
                    None => flat.extend(std::iter::repeat_n(u64::MAX, k)),
                }
            }
            flat
        });
        let n = texts.len();
        flat.into_pyarray(py).reshape([n, k])
    }

    type U64Pair<'py> = (Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<u64>>);

    /// The permutation parameters `(a, b)` a configuration uses.
    #[pyfunction]
    fn minhash_permutations<'py>(py: Python<'py>, config_json: &str) -> PyResult<U64Pair<'py>> {
        let config = dedup_config(config_json)?;
        let hasher = MinHasher::from_config(&config).map_err(dedup_err)?;
        let (a, b) = hasher.params();
        Ok((a.to_vec().into_pyarray(py), b.to_vec().into_pyarray(py)))
    }

    /// The shingle hashes of `text` (xxh64 of each run of `ngram` normalised words).
    #[pyfunction]
    #[pyo3(signature = (text, ngram = 5, fold_numbers = true))]
    fn shingle_hashes<'py>(
        py: Python<'py>,
        text: String,
        ngram: usize,
        fold_numbers: bool,
    ) -> Bound<'py, PyArray1<u64>> {
        let w = py.detach(|| dedup::normalize::words(&text, fold_numbers));
        dedup::minhash::shingles_of(&w, ngram).into_pyarray(py)
    }

    /// The normalised words MinHash and span dedup see.
    #[pyfunction]
    #[pyo3(signature = (text, fold_numbers = true))]
    fn dedup_words(text: &str, fold_numbers: bool) -> Vec<String> {
        let w = dedup::normalize::words(text, fold_numbers);
        w.iter().map(str::to_string).collect()
    }

    /// The sentences span dedup splits `text` into.
    #[pyfunction]
    fn split_sentences(text: &str) -> Vec<String> {
        dedup::sentences::sentence_spans(text)
            .into_iter()
            .map(|(a, b)| text[a..b].to_string())
            .collect()
    }

    /// 1 - (1 - s^rows)^bands: the chance that documents of Jaccard similarity `s` share a band.
    #[pyfunction]
    fn lsh_collision_probability(s: f64, bands: usize, rows: usize) -> f64 {
        dedup::lsh::collision_probability(s, bands, rows)
    }

    /// The exact-dedup hash of `text`.
    #[pyfunction]
    #[pyo3(signature = (text, bits = 128))]
    fn exact_hash(text: &str, bits: u32) -> u128 {
        dedup::exact::doc_hash(text, bits)
    }

    #[pymodule(gil_used = false)]
    fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("TokenizerError", m.py().get_type::<TokenizerError>())?;
        m.add_class::<CoreBPE>()?;
        m.add_function(wrap_pyfunction!(split_pieces, m)?)?;
        m.add_function(wrap_pyfunction!(_mark_forked, m)?)?;
        m.add_function(wrap_pyfunction!(num_threads, m)?)?;
        // dedup
        m.add("DedupError", m.py().get_type::<DedupError>())?;
        m.add_class::<DedupScanner>()?;
        m.add_class::<DedupApplier>()?;
        m.add_function(wrap_pyfunction!(dedup_resolve, m)?)?;
        m.add_function(wrap_pyfunction!(minhash_signatures, m)?)?;
        m.add_function(wrap_pyfunction!(minhash_permutations, m)?)?;
        m.add_function(wrap_pyfunction!(shingle_hashes, m)?)?;
        m.add_function(wrap_pyfunction!(dedup_words, m)?)?;
        m.add_function(wrap_pyfunction!(split_sentences, m)?)?;
        m.add_function(wrap_pyfunction!(lsh_collision_probability, m)?)?;
        m.add_function(wrap_pyfunction!(exact_hash, m)?)?;
        Ok(())
    }
}
