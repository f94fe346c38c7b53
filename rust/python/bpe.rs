//! The encoder: `CoreBPE` behind `gristmill.Tokenizer`, and `split_pieces`.

use crate::bpe::{self, BpeError, Encoder, Pattern, Rank};
use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use rustc_hash::FxHashSet;
use std::path::PathBuf;

/// The Rust BPE encoder behind `gristmill.Tokenizer`.
#[pyclass(frozen, module = "gristmill._core")]
pub(super) struct CoreBPE {
    pub(super) inner: Encoder,
    /// The Python ints of the ids below `HOT_INTS` (the most frequent tokens, as ids are
    /// merge ranks), made on first use: a result list takes references to them, where any
    /// other id gets a new int.
    hot_ints: std::sync::OnceLock<Vec<Py<PyAny>>>,
}

/// Sharing the int of every id would make building a list a cache miss per token on a large
/// vocabulary (200k ints are 6 MB); the first 4096 ids (128 KB) cover most tokens of a text
/// and stay in the cache, and for the others a new int is cheaper than a miss.
const HOT_INTS: Rank = 4096;

impl CoreBPE {
    fn to_list<'py>(&self, py: Python<'py>, ids: &[Rank]) -> PyResult<Bound<'py, PyList>> {
        let hot = self.hot_ints.get_or_init(|| {
            (0..HOT_INTS.min(self.inner.n_vocab() as Rank))
                .map(|i| i.into_pyobject(py).unwrap().into_any().unbind())
                .collect()
        });
        let list = PyList::new(
            py,
            ids.iter().map(|&i| match hot.get(i as usize) {
                Some(int) => int.bind(py).clone(),
                None => i.into_pyobject(py).unwrap().into_any(),
            }),
        )?;
        // A list of ints cannot be part of a reference cycle, so the cycle collector need not
        // visit it: a program keeping many results (a corpus of short documents) otherwise
        // spends a sixth of its time in collections walking them. As for a tuple, which
        // CPython itself untracks once it holds only such objects. (A caller who later puts
        // the list inside itself makes a cycle that is never freed: a leak, never a crash, as
        // a reference from an untracked object only keeps its target alive.)
        // SAFETY: `list` is a live list object whose reference we hold.
        unsafe { pyo3::ffi::PyObject_GC_UnTrack(list.as_ptr().cast()) };
        Ok(list)
    }
}

pub(super) fn build(
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
        hot_ints: Default::default(),
    })
    .map_err(PyErr::from)
}

pub(super) fn specials_vec(specials: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, Rank)>> {
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

/// tiktoken's error for text that spells a special token the caller did not allow.
fn disallowed_special_error(py: Python<'_>, token: &str) -> PyErr {
    let repr = match pyo3::types::PyString::new(py, token).repr() {
        Ok(r) => r.to_string(),
        Err(e) => return e,
    };
    PyValueError::new_err(format!(
        "Encountered text corresponding to disallowed special token {repr}.\n\
         If you want this text to be encoded as a special token, pass it to `allowed_special`, \
         e.g. `allowed_special={{{repr}, ...}}`.\n\
         If you want this text to be encoded as normal text, disable the check for this token \
         by passing `disallowed_special=(enc.special_tokens_set - {{{repr}}})`.\n\
         To disable this check for all special tokens, pass `disallowed_special=()`.\n"
    ))
}

/// The first special token whose id is in `disallowed` spelled in any of `texts`.
fn first_disallowed<S: AsRef<str>>(
    inner: &Encoder,
    texts: &[S],
    disallowed: &FxHashSet<Rank>,
) -> Option<String> {
    if disallowed.is_empty() {
        return None;
    }
    texts.iter().find_map(|t| {
        let t = t.as_ref();
        inner
            .find_special(t, 0, |id| disallowed.contains(&id))
            .map(|(s, e, _)| t[s..e].to_string())
    })
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
        let mergeable =
            py.detach(|| bpe::vocab::parse_tiktoken(&text, std::path::Path::new(&path)))?;
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
        let mergeable = py.detach(|| bpe::vocab::read_tiktoken(&path))?;
        build(py, mergeable, specials_vec(special_tokens)?, pattern)
    }

    #[staticmethod]
    fn from_gpt2_files(
        py: Python<'_>,
        encoder_json: PathBuf,
        vocab_bpe: PathBuf,
        pattern: String,
    ) -> PyResult<Self> {
        let v = py.detach(|| bpe::vocab::read_gpt2(&encoder_json, &vocab_bpe))?;
        build(py, v.mergeable, v.specials, pattern)
    }

    #[staticmethod]
    fn from_hf_json(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let v = py.detach(|| bpe::vocab::read_hf_json(&path))?;
        let pattern = v.pattern.unwrap_or_default();
        build(py, v.mergeable, v.specials, pattern)
    }

    // ---- encoding ------------------------------------------------------------------------

    fn encode_ordinary<'py>(&self, py: Python<'py>, text: String) -> PyResult<Bound<'py, PyList>> {
        let ids = py.detach(|| self.inner.encode_ordinary(&text));
        self.to_list(py, &ids)
    }

    /// Encodes with the special tokens whose ids are in `allowed` honoured; text spelling one
    /// whose id is in `disallowed` raises tiktoken's ValueError.
    #[pyo3(signature = (text, allowed = None, disallowed = None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: String,
        allowed: Option<Vec<Rank>>,
        disallowed: Option<Vec<Rank>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (allowed, disallowed) = (id_set(allowed), id_set(disallowed));
        let ids = py
            .detach(
                || match first_disallowed(&self.inner, &[&text], &disallowed) {
                    Some(token) => Err(token),
                    None => Ok(self.inner.encode(&text, &allowed)),
                },
            )
            .map_err(|token| disallowed_special_error(py, &token))?;
        self.to_list(py, &ids)
    }

    /// tiktoken's `encode_with_unstable`: the stable tokens and the list of possible
    /// completions of the unstable tail (in no particular order).
    #[pyo3(signature = (text, allowed = None, disallowed = None))]
    fn encode_with_unstable<'py>(
        &self,
        py: Python<'py>,
        text: String,
        allowed: Option<Vec<Rank>>,
        disallowed: Option<Vec<Rank>>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let (allowed, disallowed) = (id_set(allowed), id_set(disallowed));
        let (tokens, completions) = py
            .detach(
                || match first_disallowed(&self.inner, &[&text], &disallowed) {
                    Some(token) => Err(token),
                    None => Ok(self.inner.encode_with_unstable(&text, &allowed)),
                },
            )
            .map_err(|token| disallowed_special_error(py, &token))?;
        let completions = completions
            .iter()
            .map(|seq| self.to_list(py, seq))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((self.to_list(py, &tokens)?, PyList::new(py, completions)?))
    }

    #[pyo3(signature = (text, allowed = None, disallowed = None))]
    fn count(
        &self,
        py: Python<'_>,
        text: String,
        allowed: Option<Vec<Rank>>,
        disallowed: Option<Vec<Rank>>,
    ) -> PyResult<usize> {
        let (allowed, disallowed) = (id_set(allowed), id_set(disallowed));
        py.detach(
            || match first_disallowed(&self.inner, &[&text], &disallowed) {
                Some(token) => Err(token),
                None => Ok(self.inner.count(&text, &allowed)),
            },
        )
        .map_err(|token| disallowed_special_error(py, &token))
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

    #[pyo3(signature = (texts, allowed = None, disallowed = None))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        allowed: Option<Vec<Rank>>,
        disallowed: Option<Vec<Rank>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (allowed, disallowed) = (id_set(allowed), id_set(disallowed));
        let all = py
            .detach(
                || match first_disallowed(&self.inner, &texts, &disallowed) {
                    Some(token) => Err(token),
                    None => Ok(self.inner.encode_batch(&texts, &allowed)),
                },
            )
            .map_err(|token| disallowed_special_error(py, &token))?;
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
    #[pyo3(signature = (texts, allowed = None, append = None, uint16 = None, disallowed = None))]
    fn encode_batch_numpy<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        allowed: Option<Vec<Rank>>,
        append: Option<Rank>,
        uint16: Option<bool>,
        disallowed: Option<Vec<Rank>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyArray1<i64>>)> {
        let (allowed, disallowed) = (id_set(allowed), id_set(disallowed));
        if let Some(token) = py.detach(|| first_disallowed(&self.inner, &texts, &disallowed)) {
            return Err(disallowed_special_error(py, &token));
        }
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

    fn decode_bytes<'py>(&self, py: Python<'py>, ids: Vec<Rank>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py.detach(|| self.inner.decode_bytes(&ids))?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn token_bytes<'py>(&self, py: Python<'py>, id: Rank) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.inner.token_bytes(id)?;
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
            .map_err(PyErr::from)
    }

    /// The merges (pairs of token bytes) in priority order, recovered from the ranks.
    fn merges<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        let merges = py.detach(|| bpe::vocab::merges_from_ranks(&self.inner))?;
        Ok(merges
            .into_iter()
            .map(|(a, b)| (PyBytes::new(py, &a), PyBytes::new(py, &b)))
            .collect())
    }
}

/// Splits `text` into pre-tokenizer pieces (for inspection and tests).
#[pyfunction]
fn split_pieces(py: Python<'_>, text: String, pattern: String) -> PyResult<Vec<String>> {
    let pieces = py.detach(|| -> Result<Vec<String>, BpeError> {
        let p = Pattern::new(&pattern)?;
        Ok(p.pieces(&text)?.into_iter().map(str::to_string).collect())
    })?;
    Ok(pieces)
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CoreBPE>()?;
    m.add_function(wrap_pyfunction!(split_pieces, m)?)?;
    Ok(())
}
