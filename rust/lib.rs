//! gristmill's Rust core.
//!
//! Pure Rust modules (`bpe`, `text`, `dedup`, `shards`) know nothing of Python. The `python`
//! module at the bottom of this file, behind the `python` feature that maturin turns on, is the
//! only Rust that does: it extracts arguments under the GIL, runs the core with the GIL released
//! (`py.detach`), converts results back, maps each core error type to its exception class, and
//! hands token arrays to numpy without a copy. It has one section per core module.

pub mod bpe;
pub mod compress;
pub mod dedup;
/// What the parsers' fuzz tests share (each parser's `mod fuzz` sits beside it).
#[cfg(test)]
pub(crate) mod fuzz;
pub mod parallel;
pub mod shards;
pub mod text;

#[cfg(feature = "python")]
mod python {
    use crate::bpe::{self, BpeError, Encoder, Pattern, Rank};
    use numpy::{IntoPyArray, PyArray1};
    use pyo3::create_exception;
    use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyDict, PyList};
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
        /// One Python int per id, made on first use: building a result list then only takes
        /// references instead of allocating an int per token (half the cost of `encode`).
        ints: std::sync::OnceLock<Vec<Py<PyAny>>>,
    }

    /// Vocabularies up to this size get the shared int objects (50k ids: about 1.4 MB).
    const SHARED_INTS_UP_TO: usize = 1 << 18;

    impl CoreBPE {
        fn to_list<'py>(&self, py: Python<'py>, ids: &[Rank]) -> PyResult<Bound<'py, PyList>> {
            if self.inner.n_vocab() > SHARED_INTS_UP_TO {
                return PyList::new(py, ids);
            }
            let ints = self.ints.get_or_init(|| {
                (0..self.inner.n_vocab() as Rank)
                    .map(|i| i.into_pyobject(py).unwrap().into_any().unbind())
                    .collect()
            });
            PyList::new(py, ids.iter().map(|&i| ints[i as usize].bind(py)))
        }
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
        .map(|inner| CoreBPE {
            inner,
            ints: Default::default(),
        })
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

        fn encode_ordinary<'py>(
            &self,
            py: Python<'py>,
            text: String,
        ) -> PyResult<Bound<'py, PyList>> {
            let ids = py.detach(|| self.inner.encode_ordinary(&text));
            self.to_list(py, &ids)
        }

        /// Encodes with the special tokens whose ids are in `allowed` honoured.
        #[pyo3(signature = (text, allowed = None))]
        fn encode<'py>(
            &self,
            py: Python<'py>,
            text: String,
            allowed: Option<Vec<Rank>>,
        ) -> PyResult<Bound<'py, PyList>> {
            let allowed = id_set(allowed);
            let ids = py.detach(|| self.inner.encode(&text, &allowed));
            self.to_list(py, &ids)
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
        fn encode_batch<'py>(
            &self,
            py: Python<'py>,
            texts: Vec<String>,
            allowed: Option<Vec<Rank>>,
        ) -> PyResult<Bound<'py, PyList>> {
            let allowed = id_set(allowed);
            let all = py.detach(|| self.inner.encode_batch(&texts, &allowed));
            let lists = all
                .iter()
                .map(|ids| self.to_list(py, ids))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, lists)
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

    // ==== shards ====

    use crate::shards::reader::Token;
    use crate::shards::sampler::Mode;
    use crate::shards::{
        manifest::TokenizerInfo, Dataset, DatasetWriter, Dtype, EotMode, Sampler, SamplerConfig,
        Settings, Shard, ShardError, SplitRule,
    };
    use numpy::ndarray::ArrayView1;
    use numpy::{PyArray2, PyArrayMethods, PyUntypedArrayMethods};
    use pyo3::exceptions::PyIndexError;
    use std::sync::Arc;

    create_exception!(
        _core,
        ShardFormatError,
        PyValueError,
        "A shard, index or manifest that is damaged, truncated or does not match; the message \
         names the file and byte offset."
    );

    fn shard_err(e: ShardError) -> PyErr {
        match e {
            ShardError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(e.to_string())
            }
            ShardError::Io { .. } => PyOSError::new_err(e.to_string()),
            ShardError::Settings(m) => PyValueError::new_err(m),
            ShardError::OutOfRange { .. } => PyIndexError::new_err(e.to_string()),
            other => ShardFormatError::new_err(other.to_string()),
        }
    }

    /// A read-only numpy view of `tokens`, which `owner` keeps alive.
    fn token_view<'py, T: Token + numpy::Element>(
        tokens: &[T],
        owner: Bound<'py, PyAny>,
    ) -> Bound<'py, PyAny> {
        // SAFETY: `tokens` lies in a memory map owned by `owner`, which the array holds as its
        // base; the array is made read-only because the map is.
        let view = unsafe { ArrayView1::from_shape_ptr(tokens.len(), tokens.as_ptr()) };
        let arr = unsafe { numpy::PyArray1::borrow_from_array(&view, owner) };
        drop(arr.readwrite().make_nonwriteable());
        arr.into_any()
    }

    /// Writes a dataset directory (resuming a killed run found there).
    #[pyclass(module = "gristmill._core")]
    struct ShardWriter {
        inner: Option<DatasetWriter>,
    }

    impl ShardWriter {
        fn writer(&mut self) -> PyResult<&mut DatasetWriter> {
            self.inner
                .as_mut()
                .ok_or_else(|| PyValueError::new_err("the writer is finished"))
        }
    }

    #[pymethods]
    impl ShardWriter {
        #[new]
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (out_dir, *, tokenizer_name, fingerprint, n_vocab, eot_token,
                            tokenizer_path, eot, shard_size, val_fraction, val_docs, text_field))]
        fn new(
            py: Python<'_>,
            out_dir: PathBuf,
            tokenizer_name: String,
            fingerprint: String,
            n_vocab: u64,
            eot_token: u32,
            tokenizer_path: Option<String>,
            eot: &str,
            shard_size: u64,
            val_fraction: f64,
            val_docs: Option<u64>,
            text_field: String,
        ) -> PyResult<Self> {
            let eot = match eot {
                "append" => EotMode::Append,
                "prepend" => EotMode::Prepend,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "eot must be 'append' or 'prepend', not {other:?}"
                    )))
                }
            };
            let split = match val_docs {
                Some(n) => SplitRule::ValDocs(n),
                None => SplitRule::ValFraction(val_fraction),
            };
            let settings = Settings {
                tokenizer: TokenizerInfo {
                    name: tokenizer_name,
                    fingerprint,
                    n_vocab,
                    eot_token,
                    path: tokenizer_path,
                },
                eot,
                dtype: Dtype::for_vocab(n_vocab as usize),
                shard_size,
                split,
                text_field,
            };
            let w = py
                .detach(|| DatasetWriter::open(&out_dir, settings))
                .map_err(shard_err)?;
            Ok(ShardWriter { inner: Some(w) })
        }

        /// True when the directory already holds this dataset, finished.
        #[getter]
        fn is_complete(&mut self) -> PyResult<bool> {
            Ok(self.writer()?.is_complete())
        }

        /// Input documents to skip: a resumed run continues from this position.
        #[getter]
        fn next_position(&mut self) -> PyResult<u64> {
            Ok(self.writer()?.next_position())
        }

        /// Encodes the next input documents in parallel and writes them; returns tokens
        /// written.
        fn add_texts(
            &mut self,
            py: Python<'_>,
            encoder: &CoreBPE,
            texts: Vec<String>,
            ids: Vec<String>,
        ) -> PyResult<u64> {
            let w = self.writer()?;
            py.detach(|| w.add_texts(&encoder.inner, &texts, &ids))
                .map_err(shard_err)
        }

        /// Writes the next input documents, encoded elsewhere: document `i` is
        /// `tokens[offsets[i]:offsets[i + 1]]` (uint16 or uint32 tokens, int64 offsets, as
        /// `Tokenizer.encode_batch_to_numpy` returns without `append_eot`); the writer adds
        /// end-of-text. Returns tokens written. Raises ValueError for offsets that do not cut
        /// the tokens into `len(ids)` documents, or a token outside the vocabulary.
        fn add_encoded(
            &mut self,
            py: Python<'_>,
            ids: Vec<String>,
            tokens: &Bound<'_, PyAny>,
            offsets: numpy::PyReadonlyArray1<'_, i64>,
        ) -> PyResult<u64> {
            let tokens: Vec<u32> = if let Ok(t) = tokens.cast::<PyArray1<u16>>() {
                t.readonly()
                    .as_array()
                    .iter()
                    .map(|&x| u32::from(x))
                    .collect()
            } else if let Ok(t) = tokens.cast::<PyArray1<u32>>() {
                t.to_vec()?
            } else {
                return Err(PyTypeError::new_err(
                    "tokens must be a 1-d uint16 or uint32 numpy array",
                ));
            };
            // A negative offset becomes one past any token count: the core rejects it.
            let offsets: Vec<u64> = offsets.as_array().iter().map(|&o| o as u64).collect();
            let w = self.writer()?;
            py.detach(|| w.add_encoded(&ids, &tokens, &offsets))
                .map_err(shard_err)
        }

        /// Reads JSON-lines files (`.jsonl`/`.json`/`.ndjson`, optionally `.zst`) in the core,
        /// in order, skipping their first `skip` records, and encodes and writes the rest as
        /// one stream; decompression and parsing overlap encoding, and each batch is encoded
        /// while the one before it is written. `progress(docs, text_bytes, tokens)` is called
        /// after each batch (`tokens`: those written meanwhile, of the batch before; a last
        /// call reports the last batch). Returns the records in the files. A bad line raises
        /// `gristmill.prep.InputFormatError` naming the file and line.
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (encoder, paths, *, text_field, id_field, skip, max_docs, max_bytes,
                            progress = None))]
        fn add_jsonl(
            &mut self,
            py: Python<'_>,
            encoder: &CoreBPE,
            paths: Vec<PathBuf>,
            text_field: String,
            id_field: String,
            skip: u64,
            max_docs: usize,
            max_bytes: usize,
            progress: Option<Py<PyAny>>,
        ) -> PyResult<u64> {
            use crate::shards::jsonl::JsonlFields;
            let w = self.writer()?;
            let fields = JsonlFields {
                text: text_field,
                id: id_field,
            };
            let mut py_error: Option<PyErr> = None;
            let result = py.detach(|| {
                // Between batches: let Ctrl-C through and report progress.
                let report = |docs: usize, bytes: usize, tokens: u64| {
                    Python::attach(|py| {
                        let r = py.check_signals().and_then(|()| match &progress {
                            Some(cb) => cb.call1(py, (docs, bytes, tokens)).map(drop),
                            None => Ok(()),
                        });
                        r.map_err(|e| {
                            py_error = Some(e);
                            ShardError::Settings("interrupted".into())
                        })
                    })
                };
                crate::shards::tokenize::tokenize_jsonl(
                    w,
                    &encoder.inner,
                    &paths,
                    &fields,
                    (skip, max_docs, max_bytes),
                    report,
                )
            });
            match result {
                Ok(n) => Ok(n),
                Err(_) if py_error.is_some() => Err(py_error.take().unwrap()),
                Err(e @ ShardError::Input { .. }) => {
                    let cls = py.import("gristmill.prep")?.getattr("InputFormatError")?;
                    Err(PyErr::from_value(cls.call1((e.to_string(),))?))
                }
                Err(e) => Err(shard_err(e)),
            }
        }

        /// Closes the last shards and writes the manifest; returns its path.
        fn finish(&mut self, py: Python<'_>) -> PyResult<PathBuf> {
            let w = self
                .inner
                .take()
                .ok_or_else(|| PyValueError::new_err("the writer is finished"))?;
            py.detach(|| w.finish()).map_err(shard_err)
        }
    }

    /// One memory-mapped shard file (keeps the map alive for the views of it).
    #[pyclass(frozen, module = "gristmill._core")]
    struct ShardFile {
        inner: Shard,
    }

    /// Opens one `.bin` shard (ours or llm.c's), checks its header against its size and
    /// returns its tokens as a read-only numpy view.
    #[pyfunction]
    fn open_shard<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
        let shard = py.detach(|| Shard::open(&path, false)).map_err(shard_err)?;
        let owner = Bound::new(py, ShardFile { inner: shard })?;
        let s = &owner.get().inner;
        Ok(match s.dtype() {
            Dtype::U16 => token_view(
                s.tokens::<u16>().map_err(shard_err)?,
                owner.clone().into_any(),
            ),
            Dtype::U32 => token_view(
                s.tokens::<u32>().map_err(shard_err)?,
                owner.clone().into_any(),
            ),
        })
    }

    /// A dataset opened from its manifest, every shard and index mapped and checked.
    #[pyclass(frozen, module = "gristmill._core")]
    struct ShardDatasetCore {
        inner: Arc<Dataset>,
    }

    #[pymethods]
    impl ShardDatasetCore {
        #[new]
        fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
            let ds = py.detach(|| Dataset::open(&path)).map_err(shard_err)?;
            Ok(ShardDatasetCore {
                inner: Arc::new(ds),
            })
        }

        #[getter]
        fn manifest_path(&self) -> PathBuf {
            self.inner.manifest_path().to_path_buf()
        }

        #[getter]
        fn manifest_json(&self) -> String {
            self.inner.manifest().to_json()
        }

        /// Checks every checksum (reads every byte).
        fn verify(&self, py: Python<'_>) -> PyResult<()> {
            py.detach(|| self.inner.verify()).map_err(shard_err)
        }

        /// Checks every token id against a vocabulary of `vocab_size` ids.
        fn check_tokens(&self, py: Python<'_>, vocab_size: u64) -> PyResult<()> {
            py.detach(|| self.inner.check_tokens(vocab_size))
                .map_err(shard_err)
        }

        fn num_tokens(&self, split: &str) -> PyResult<u64> {
            Ok(self.inner.split(split).map_err(shard_err)?.num_tokens())
        }

        fn num_documents(&self, split: &str) -> PyResult<u64> {
            Ok(self.inner.split(split).map_err(shard_err)?.num_docs())
        }

        /// Tokens `start..stop` of `split`: a view of the map when they lie in one shard,
        /// else a copy.
        fn tokens<'py>(
            slf: &Bound<'py, Self>,
            split: &str,
            start: u64,
            stop: u64,
        ) -> PyResult<Bound<'py, PyAny>> {
            let py = slf.py();
            let s = slf.get().inner.split(split).map_err(shard_err)?.clone();
            fn get<'py, T: Token + numpy::Element>(
                py: Python<'py>,
                s: &crate::shards::Split,
                owner: Bound<'py, PyAny>,
                start: u64,
                stop: u64,
            ) -> PyResult<Bound<'py, PyAny>> {
                match s.slice::<T>(start, stop).map_err(shard_err)? {
                    Some(tokens) => Ok(token_view(tokens, owner)),
                    None => {
                        let mut out = vec![T::zeroed(); (stop - start) as usize];
                        py.detach(|| s.copy_range(start, &mut out))
                            .map_err(shard_err)?;
                        Ok(out.into_pyarray(py).into_any())
                    }
                }
            }
            let owner = slf.clone().into_any();
            match s.dtype() {
                Dtype::U16 => get::<u16>(py, &s, owner, start, stop),
                Dtype::U32 => get::<u32>(py, &s, owner, start, stop),
            }
        }

        /// The token range `(start, stop)` of document `index`'s record.
        fn document_range(&self, split: &str, index: u64) -> PyResult<(u64, u64)> {
            let s = self.inner.split(split).map_err(shard_err)?;
            s.doc_range(index).map_err(shard_err)
        }

        fn document_id(&self, split: &str, index: u64) -> PyResult<String> {
            let s = self.inner.split(split).map_err(shard_err)?;
            s.doc_id(index).map(str::to_string).map_err(shard_err)
        }

        /// The document's position in the tokenizer's input.
        fn document_position(&self, split: &str, index: u64) -> PyResult<u64> {
            let s = self.inner.split(split).map_err(shard_err)?;
            s.doc_position(index).map_err(shard_err)
        }

        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (split, *, batch_size, seq_len, stride, mode, seed, rank, world_size,
                            packing, pad))]
        fn sampler(
            &self,
            split: &str,
            batch_size: u64,
            seq_len: u64,
            stride: u64,
            mode: &str,
            seed: u64,
            rank: u64,
            world_size: u64,
            packing: bool,
            pad: u32,
        ) -> PyResult<ShardSampler> {
            let mode = match mode {
                "random" => Mode::Random,
                "sequential" => Mode::Sequential,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "mode must be 'random' or 'sequential', not {other:?}"
                    )))
                }
            };
            let s = self.inner.split(split).map_err(shard_err)?.clone();
            let cfg = SamplerConfig {
                batch_size,
                seq_len,
                stride,
                mode,
                seed,
                rank,
                world_size,
                packing,
                pad,
            };
            let dtype = s.dtype();
            let inner = Sampler::new(s, cfg).map_err(shard_err)?;
            Ok(ShardSampler { inner, dtype })
        }
    }

    /// Draws `(batch_size, seq_len + 1)` token batches from one split.
    #[pyclass(module = "gristmill._core")]
    struct ShardSampler {
        inner: Sampler,
        dtype: Dtype,
    }

    impl ShardSampler {
        fn fill<'py, T: Token + numpy::Element>(
            &mut self,
            py: Python<'py>,
            out: Option<&Bound<'py, PyAny>>,
        ) -> PyResult<Bound<'py, PyAny>> {
            let shape = [
                self.inner.config().batch_size as usize,
                self.inner.config().seq_len as usize + 1,
            ];
            let arr = match out {
                Some(o) => {
                    let arr = o.cast::<PyArray2<T>>().map_err(|_| {
                        PyValueError::new_err(format!(
                            "out must be a 2-d {} numpy array",
                            self.dtype.name()
                        ))
                    })?;
                    if arr.shape() != shape {
                        return Err(PyValueError::new_err(format!(
                            "out has shape {:?}, expected {shape:?}",
                            arr.shape()
                        )));
                    }
                    arr.clone()
                }
                // SAFETY: every element is written by `next_into` before Python sees it.
                None => unsafe { PyArray2::<T>::new(py, shape, false) },
            };
            {
                let mut rw = arr
                    .try_readwrite()
                    .map_err(|e| PyValueError::new_err(format!("out is not writable: {e}")))?;
                let slice = rw
                    .as_slice_mut()
                    .map_err(|_| PyValueError::new_err("out must be C-contiguous"))?;
                let inner = &mut self.inner;
                py.detach(|| inner.next_into(slice)).map_err(shard_err)?;
            }
            Ok(arr.into_any())
        }
    }

    #[pymethods]
    impl ShardSampler {
        /// The next batch, a new array or `out` filled in place.
        #[pyo3(signature = (out = None))]
        fn next_batch<'py>(
            &mut self,
            py: Python<'py>,
            out: Option<&Bound<'py, PyAny>>,
        ) -> PyResult<Bound<'py, PyAny>> {
            match self.dtype {
                Dtype::U16 => self.fill::<u16>(py, out),
                Dtype::U32 => self.fill::<u32>(py, out),
            }
        }

        /// Advances `n` batches without copying tokens.
        fn skip(&mut self, py: Python<'_>, n: u64) -> PyResult<()> {
            let inner = &mut self.inner;
            py.detach(|| (0..n).try_for_each(|_| inner.skip()))
                .map_err(shard_err)
        }

        fn state_json(&self) -> String {
            self.inner.state_json()
        }

        fn load_state_json(&mut self, state: &str) -> PyResult<()> {
            self.inner.load_state_json(state).map_err(shard_err)
        }

        #[getter]
        fn epoch(&self) -> u64 {
            self.inner.state().epoch
        }

        #[getter]
        fn batches(&self) -> u64 {
            self.inner.state().batches
        }

        #[getter]
        fn batches_per_epoch(&self) -> Option<u64> {
            self.inner.batches_per_epoch()
        }

        #[getter]
        fn num_windows(&self) -> u64 {
            self.inner.num_windows()
        }

        /// Real tokens in each row of the last batch (the rest is padding).
        fn last_lengths<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
            let v: Vec<i64> = self
                .inner
                .last_lengths()
                .iter()
                .map(|&n| n as i64)
                .collect();
            v.into_pyarray(py)
        }

        /// Where each row of the last batch starts in the split (token offset).
        fn last_starts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
            let v: Vec<i64> = self.inner.last_starts().iter().map(|&n| n as i64).collect();
            v.into_pyarray(py)
        }
    }

    /// The format's constants, so Python never repeats them.
    #[pyfunction]
    fn shard_format<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use crate::shards::format;
        let d = PyDict::new(py);
        d.set_item("magic", format::MAGIC)?;
        d.set_item("version_uint16", format::VERSION_U16)?;
        d.set_item("version_uint32", format::VERSION_U32)?;
        d.set_item("header_bytes", format::HEADER_BYTES)?;
        d.set_item("max_shard_tokens", format::MAX_SHARD_TOKENS)?;
        d.set_item("uint16_max_vocab", 1u64 << 16)?;
        Ok(d)
    }

    // ==== text ====

    use crate::text::{Outcome, Pipeline, TextError};
    use pyo3::pybacked::PyBackedStr;
    use pyo3::types::PyTuple;

    create_exception!(
        _core,
        FilterConfigError,
        PyValueError,
        "A filter configuration that cannot be used."
    );

    fn text_err(e: TextError) -> PyErr {
        FilterConfigError::new_err(e.to_string())
    }

    /// Document filters applied in order (C4, bad words, Gopher, FineWeb, normalisation),
    /// configured from a JSON list of `{"type": ..., "name": ..., ...parameters}` objects.
    #[pyclass(frozen, module = "gristmill._core")]
    struct TextPipeline {
        inner: Pipeline,
    }

    #[pymethods]
    impl TextPipeline {
        #[new]
        fn new(py: Python<'_>, filters_json: String) -> PyResult<Self> {
            py.detach(|| Pipeline::from_json(&filters_json))
                .map(|inner| TextPipeline { inner })
                .map_err(text_err)
        }

        /// The filter names, in order.
        #[getter]
        fn names(&self) -> Vec<String> {
            self.inner.names().to_vec()
        }

        /// Filters `texts` in parallel. Returns (outcomes, stats_json): per text None (kept
        /// unchanged), a str (kept, changed to this) or a (filter name, rule) tuple (removed);
        /// and the batch's per-filter counts as a JSON list aligned with `names`.
        fn apply_batch<'py>(
            &self,
            py: Python<'py>,
            texts: Vec<PyBackedStr>,
        ) -> PyResult<(Vec<Bound<'py, PyAny>>, String)> {
            let (outcomes, stats) = py.detach(|| self.inner.apply_batch(&texts));
            let stats = serde_json::to_string(&stats)
                .map_err(|e| PyValueError::new_err(format!("statistics: {e}")))?;
            let names = self.inner.names();
            let mut out = Vec::with_capacity(outcomes.len());
            for o in outcomes {
                out.push(match o {
                    Outcome::Kept(None) => py.None().into_bound(py),
                    Outcome::Kept(Some(t)) => t.into_pyobject(py)?.into_any(),
                    Outcome::Removed { filter, rule } => {
                        PyTuple::new(py, [names[filter].as_str(), rule.as_ref()])?.into_any()
                    }
                });
            }
            Ok((out, stats))
        }
    }

    /// The words of `text` as the filters count them (spaCy-style English rules).
    #[pyfunction]
    fn split_words(py: Python<'_>, text: PyBackedStr) -> Vec<String> {
        py.detach(|| {
            crate::text::words::split_words(&text)
                .into_iter()
                .map(|w| w.into_owned())
                .collect()
        })
    }

    /// The sentences of `text` as the filters count them; they partition the text.
    #[pyfunction]
    fn split_sentences(py: Python<'_>, text: PyBackedStr) -> Vec<String> {
        py.detach(|| {
            crate::text::sentences::sentence_spans(&text)
                .into_iter()
                .map(|r| text[r].to_string())
                .collect()
        })
    }

    // ==== dedup ====

    use crate::dedup::{
        self, apply::Outcome as DedupOutcome, minhash::MinHasher, DedupConfig,
        DedupError as CoreDedupError,
    };

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
                    DedupOutcome::Keep {
                        text,
                        lines_cut,
                        sentences_cut,
                    } => ("keep", text, None, None, lines_cut, sentences_cut),
                    DedupOutcome::Remove {
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
        let w = py.detach(|| dedup::hash_forms::words(&text, fold_numbers));
        dedup::minhash::shingles_of(&w, ngram).into_pyarray(py)
    }

    /// The normalised words MinHash and span dedup see.
    #[pyfunction]
    #[pyo3(signature = (text, fold_numbers = true))]
    fn dedup_words(text: &str, fold_numbers: bool) -> Vec<String> {
        let w = dedup::hash_forms::words(text, fold_numbers);
        w.iter().map(str::to_string).collect()
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

    /// The dedup keys of each text, for engines that group by them (Ray): the exact hash as
    /// `(n, 2)` uint64 `[hi, lo]`, the LSH band keys as `(n, 2 * bands)` uint64 `[hi, lo]` per
    /// band, and whether the text has a MinHash signature (a text with fewer words than one
    /// shingle has none, and no band keys: it takes part in no bucket).
    #[pyfunction]
    fn dedup_hash_keys<'py>(
        py: Python<'py>,
        texts: Vec<String>,
        config_json: &str,
    ) -> PyResult<DedupKeys<'py>> {
        let config = dedup_config(config_json)?;
        let hasher = if config.minhash {
            Some(MinHasher::from_config(&config).map_err(dedup_err)?)
        } else {
            None
        };
        let (bands, rows) = (config.bands, config.rows);
        let (exact, band_keys, has_sig) = py.detach(|| {
            use rayon::prelude::*;
            let per_doc: Vec<(u128, Option<Vec<dedup::Key128>>)> = crate::parallel::install(|| {
                texts
                    .par_iter()
                    .map(|t| {
                        let exact = if config.exact {
                            dedup::exact::doc_hash(t, config.exact_hash_bits)
                        } else {
                            0
                        };
                        let keys = hasher
                            .as_ref()
                            .and_then(|h| h.signature(t))
                            .map(|s| dedup::lsh::band_keys(&s, bands, rows));
                        (exact, keys)
                    })
                    .collect()
            });
            let width = if config.minhash { 2 * bands } else { 0 };
            let mut exact = Vec::with_capacity(2 * per_doc.len());
            let mut band_keys = Vec::with_capacity(width * per_doc.len());
            let mut has_sig = Vec::with_capacity(per_doc.len());
            for (e, keys) in per_doc {
                exact.extend([(e >> 64) as u64, e as u64]);
                has_sig.push(keys.is_some());
                match keys {
                    Some(keys) => band_keys.extend(keys.iter().flat_map(|k| [k.hi, k.lo])),
                    None => band_keys.extend(std::iter::repeat_n(0, width)),
                }
            }
            (exact, band_keys, has_sig)
        });
        let n = has_sig.len();
        let width = band_keys.len().checked_div(n).unwrap_or(0);
        Ok((
            exact.into_pyarray(py).reshape([n, 2])?,
            band_keys.into_pyarray(py).reshape([n, width])?,
            has_sig.into_pyarray(py),
        ))
    }

    type DedupKeys<'py> = (
        Bound<'py, PyArray2<u64>>,
        Bound<'py, PyArray2<u64>>,
        Bound<'py, PyArray1<bool>>,
    );

    /// Clusters candidate pairs `(a[i], b[i])` with the core's union-find: returns the united
    /// documents (ascending) and the root of each, the smallest document of its cluster.
    #[pyfunction]
    fn dedup_union_find<'py>(py: Python<'py>, a: Vec<u64>, b: Vec<u64>) -> PyResult<U64Pair<'py>> {
        if a.len() != b.len() {
            return Err(DedupError::new_err(format!(
                "dedup_union_find: expected pairs, found {} left and {} right documents",
                a.len(),
                b.len()
            )));
        }
        let (members, roots) = py.detach(|| {
            let mut uf = dedup::unionfind::UnionFind::new();
            for (&x, &y) in a.iter().zip(&b) {
                uf.union(x, y);
            }
            let mut members: Vec<u64> = uf.members().collect();
            members.sort_unstable();
            let roots: Vec<u64> = members.iter().map(|&m| uf.find(m)).collect();
            (members, roots)
        });
        Ok((members.into_pyarray(py), roots.into_pyarray(py)))
    }

    // ==== bpe trainer ====

    use crate::bpe::Training;
    use pyo3::exceptions::PyTypeError;
    use pyo3::types::{PyIterator, PyString};

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
            let inner = Training::new(vocab_size, &pattern, special_tokens, min_frequency)
                .map_err(bpe_err)?;
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
            self.inner.counter().map_err(bpe_err)?;
            let mut iter = texts.try_iter()?;
            let mut pulled = 0usize;
            let batch_bytes = TRAIN_BATCH_BYTES_PER_THREAD * crate::parallel::num_threads();
            let (mut current, mut next) = (TextBatch::default(), TextBatch::default());
            pull_batch(&mut iter, batch_bytes, &mut pulled, &mut current)?;
            while !current.ends.is_empty() {
                py.check_signals()?;
                let counter = self.inner.counter().map_err(bpe_err)?;
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
            let counter = self.inner.counter().map_err(bpe_err)?;
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
            self.inner.note_counts();
            // A failed callback (or Ctrl-C) stopped the count; the file is partly counted.
            failure.map_or(Ok(()), Err)
        }

        /// Does up to `max_merges` merges (the first call ends counting); returns how many
        /// were done: 0 once training is complete.
        fn merge(&mut self, py: Python<'_>, max_merges: usize) -> PyResult<usize> {
            let inner = &mut self.inner;
            py.detach(|| inner.merge(max_merges)).map_err(bpe_err)
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
                py.detach(|| inner.merge(usize::MAX)).map_err(bpe_err)?;
            }
            let ranks = inner.trainer().map_err(bpe_err)?.ranks();
            let specials = inner.special_ids(given, ranks.len()).map_err(bpe_err)?;
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

    // ---- compress: zstd document files --------------------------------------------------

    fn compress_err(e: crate::compress::CompressError) -> PyErr {
        if e.is_not_found() {
            PyFileNotFoundError::new_err(e.to_string())
        } else {
            PyValueError::new_err(e.to_string())
        }
    }

    /// A `.zst` file decompressed by the core (`gristmill.documents` makes it a binary stream).
    /// A truncated or damaged file raises ValueError naming it.
    #[pyclass(module = "gristmill._core")]
    struct ZstdReader {
        inner: Option<crate::compress::ZstdFile>,
    }

    #[pymethods]
    impl ZstdReader {
        #[new]
        fn new(path: PathBuf) -> PyResult<Self> {
            let inner = crate::compress::ZstdFile::open(&path).map_err(compress_err)?;
            Ok(ZstdReader { inner: Some(inner) })
        }

        /// Up to `size` bytes; fewer only at the end of the file.
        fn read<'py>(&mut self, py: Python<'py>, size: usize) -> PyResult<Bound<'py, PyBytes>> {
            let file = self
                .inner
                .as_mut()
                .ok_or_else(|| PyValueError::new_err("read of a closed file"))?;
            let mut buf = vec![0u8; size];
            let n = py
                .detach(|| file.read_full(&mut buf))
                .map_err(compress_err)?;
            Ok(PyBytes::new(py, &buf[..n]))
        }

        fn close(&mut self) {
            self.inner = None;
        }
    }

    /// `data` as one zstd frame with its content size and checksum.
    #[pyfunction]
    #[pyo3(signature = (data, level = 3))]
    fn zstd_compress<'py>(
        py: Python<'py>,
        data: &[u8],
        level: i32,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let out = py
            .detach(|| crate::compress::compress(data, level))
            .map_err(|e| PyValueError::new_err(format!("zstd: {e}")))?;
        Ok(PyBytes::new(py, &out))
    }

    #[pymodule(gil_used = false)]
    fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("TokenizerError", m.py().get_type::<TokenizerError>())?;
        m.add_class::<ZstdReader>()?;
        m.add_function(wrap_pyfunction!(zstd_compress, m)?)?;
        m.add_class::<CoreBPE>()?;
        m.add_function(wrap_pyfunction!(split_pieces, m)?)?;
        m.add_function(wrap_pyfunction!(_mark_forked, m)?)?;
        m.add_function(wrap_pyfunction!(num_threads, m)?)?;
        // bpe trainer
        m.add_class::<BpeTrainer>()?;
        m.add_function(wrap_pyfunction!(train_bpe, m)?)?;
        // shards
        m.add("ShardFormatError", m.py().get_type::<ShardFormatError>())?;
        m.add_class::<ShardWriter>()?;
        m.add_class::<ShardFile>()?;
        m.add_class::<ShardDatasetCore>()?;
        m.add_class::<ShardSampler>()?;
        m.add_function(wrap_pyfunction!(open_shard, m)?)?;
        m.add_function(wrap_pyfunction!(shard_format, m)?)?;
        // text
        m.add("FilterConfigError", m.py().get_type::<FilterConfigError>())?;
        m.add_class::<TextPipeline>()?;
        m.add_function(wrap_pyfunction!(split_words, m)?)?;
        m.add_function(wrap_pyfunction!(split_sentences, m)?)?;
        // dedup
        m.add("DedupError", m.py().get_type::<DedupError>())?;
        m.add_class::<DedupScanner>()?;
        m.add_class::<DedupApplier>()?;
        m.add_function(wrap_pyfunction!(dedup_resolve, m)?)?;
        m.add_function(wrap_pyfunction!(minhash_signatures, m)?)?;
        m.add_function(wrap_pyfunction!(minhash_permutations, m)?)?;
        m.add_function(wrap_pyfunction!(shingle_hashes, m)?)?;
        m.add_function(wrap_pyfunction!(dedup_words, m)?)?;
        m.add_function(wrap_pyfunction!(lsh_collision_probability, m)?)?;
        m.add_function(wrap_pyfunction!(exact_hash, m)?)?;
        m.add_function(wrap_pyfunction!(dedup_hash_keys, m)?)?;
        m.add_function(wrap_pyfunction!(dedup_union_find, m)?)?;
        Ok(())
    }
}
