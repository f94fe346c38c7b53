//! Token shards: the dataset writer, shard files, the dataset reader and its sampler.

use super::bpe::CoreBPE;
use crate::shards::reader::Token;
use crate::shards::sampler::{Mode, Packing};
use crate::shards::{
    manifest::TokenizerInfo, Dataset, DatasetWriter, Dtype, EotMode, Sampler, SamplerConfig,
    Settings, Shard, ShardError, SplitRule,
};
use numpy::ndarray::ArrayView1;
use numpy::{IntoPyArray, PyArray1};
use numpy::{PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::Arc;

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
        let eot: EotMode = eot.parse()?;
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
        let w = py.detach(|| DatasetWriter::open(&out_dir, settings))?;
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
            .map_err(PyErr::from)
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
            .map_err(PyErr::from)
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
            Err(e) => Err(e.into()),
        }
    }

    /// Closes the last shards and writes the manifest; returns its path.
    fn finish(&mut self, py: Python<'_>) -> PyResult<PathBuf> {
        let w = self
            .inner
            .take()
            .ok_or_else(|| PyValueError::new_err("the writer is finished"))?;
        py.detach(|| w.finish()).map_err(PyErr::from)
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
    let shard = py.detach(|| Shard::open(&path, false))?;
    let owner = Bound::new(py, ShardFile { inner: shard })?;
    let s = &owner.get().inner;
    Ok(match s.dtype() {
        Dtype::U16 => token_view(s.tokens::<u16>()?, owner.clone().into_any()),
        Dtype::U32 => token_view(s.tokens::<u32>()?, owner.clone().into_any()),
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
        let ds = py.detach(|| Dataset::open(&path))?;
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
        py.detach(|| self.inner.verify()).map_err(PyErr::from)
    }

    /// Checks every token id against a vocabulary of `vocab_size` ids.
    fn check_tokens(&self, py: Python<'_>, vocab_size: u64) -> PyResult<()> {
        py.detach(|| self.inner.check_tokens(vocab_size))
            .map_err(PyErr::from)
    }

    fn num_tokens(&self, split: &str) -> PyResult<u64> {
        Ok(self.inner.split(split)?.num_tokens())
    }

    fn num_documents(&self, split: &str) -> PyResult<u64> {
        Ok(self.inner.split(split)?.num_docs())
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
        let s = slf.get().inner.split(split)?.clone();
        fn get<'py, T: Token + numpy::Element>(
            py: Python<'py>,
            s: &crate::shards::Split,
            owner: Bound<'py, PyAny>,
            start: u64,
            stop: u64,
        ) -> PyResult<Bound<'py, PyAny>> {
            match s.slice::<T>(start, stop)? {
                Some(tokens) => Ok(token_view(tokens, owner)),
                None => {
                    let mut out = vec![T::zeroed(); (stop - start) as usize];
                    py.detach(|| s.copy_range(start, &mut out))?;
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
        let s = self.inner.split(split)?;
        s.doc_range(index).map_err(PyErr::from)
    }

    fn document_id(&self, split: &str, index: u64) -> PyResult<String> {
        let s = self.inner.split(split)?;
        s.doc_id(index).map(str::to_string).map_err(PyErr::from)
    }

    /// The document's position in the tokenizer's input.
    fn document_position(&self, split: &str, index: u64) -> PyResult<u64> {
        let s = self.inner.split(split)?;
        s.doc_position(index).map_err(PyErr::from)
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (split, *, batch_size, seq_len, stride, mode, seed, rank, world_size,
                        packing, pool, pad))]
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
        packing: &str,
        pool: u64,
        pad: u32,
    ) -> PyResult<ShardSampler> {
        let packing = Packing::from_name(packing).ok_or_else(|| {
            PyValueError::new_err(format!(
                "packing must be 'off', 'pad' or 'bestfit', not {packing:?}"
            ))
        })?;
        let mode = match mode {
            "random" => Mode::Random,
            "sequential" => Mode::Sequential,
            other => {
                return Err(PyValueError::new_err(format!(
                    "mode must be 'random' or 'sequential', not {other:?}"
                )))
            }
        };
        let s = self.inner.split(split)?.clone();
        let cfg = SamplerConfig {
            batch_size,
            seq_len,
            stride,
            mode,
            seed,
            rank,
            world_size,
            packing,
            pool,
            pad,
        };
        let dtype = s.dtype();
        let inner = Sampler::new(s, cfg)?;
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
            py.detach(|| inner.next_into(slice))?;
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
            .map_err(PyErr::from)
    }

    fn state_json(&self) -> String {
        self.inner.state_json()
    }

    fn load_state_json(&mut self, state: &str) -> PyResult<()> {
        self.inner.load_state_json(state).map_err(PyErr::from)
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

    /// Document tokens cut away from each row of the last batch (best-fit packing).
    fn last_cropped<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        let v: Vec<i64> = self
            .inner
            .last_cropped()
            .iter()
            .map(|&n| n as i64)
            .collect();
        v.into_pyarray(py)
    }

    /// The documents of each row of the last batch numbered along the row (0, 1, ...; padding
    /// one number after the last): a `(batch_size, seq_len + 1)` int32 array.
    fn last_segments<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i32>>> {
        let (b, row) = (
            self.inner.config().batch_size as usize,
            self.inner.config().seq_len as usize + 1,
        );
        let mut v = vec![0u32; b * row];
        self.inner.last_segments(&mut v)?;
        let v: Vec<i32> = v.into_iter().map(|x| x as i32).collect();
        Ok(numpy::ndarray::Array2::from_shape_vec((b, row), v)
            .expect("the shape holds every number")
            .into_pyarray(py))
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

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ShardWriter>()?;
    m.add_class::<ShardFile>()?;
    m.add_class::<ShardDatasetCore>()?;
    m.add_class::<ShardSampler>()?;
    m.add_function(wrap_pyfunction!(open_shard, m)?)?;
    m.add_function(wrap_pyfunction!(shard_format, m)?)?;
    Ok(())
}
