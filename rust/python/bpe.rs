//! The encoder: `CoreBPE` behind `gristmill.Tokenizer`, and `split_pieces`.

use super::id_lists::{Ints, Word};
use crate::bpe::{self, BpeError, Encoder, Pattern, Rank, Runs};
use crate::parallel;
use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use rustc_hash::FxHashSet;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The Rust BPE encoder behind `gristmill.Tokenizer`.
#[pyclass(frozen, module = "gristmill._core")]
pub(super) struct CoreBPE {
    pub(super) inner: Encoder,
    /// The Python int of each id, made the first time a result list holds the id; lists
    /// take references to these.
    ints: OnceLock<Ints>,
}

impl CoreBPE {
    /// The table of this vocabulary's shared ints.
    fn ints(&self) -> &Ints {
        self.ints.get_or_init(|| Ints::new(self.inner.n_vocab()))
    }
}

/// A run's documents as the thread that encoded them hands them over to be made lists:
/// ids from the thread holding the GIL, the words of their ints from the pool.
enum Encoded {
    Ids(Vec<Vec<Rank>>),
    Words(Vec<Vec<Word>>),
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
        ints: OnceLock::new(),
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

#[cfg(not(windows))]
extern "C" {
    // In the limited API from Python 3.10 on (so pyo3 declares it only there), and exported by
    // every CPython 3 since 3.3 (not by Windows' python3.dll of 3.9): the str's own UTF-8.
    fn PyUnicode_AsUTF8AndSize(
        unicode: *mut ffi::PyObject,
        size: *mut ffi::Py_ssize_t,
    ) -> *const std::ffi::c_char;
}

/// The text of a Python str as UTF-8 for the length of a call: an ASCII str's own characters
/// (no copy, where extracting a `String` encodes into a bytes object and copies that), any
/// other str encoded into a bytes object held here (asking CPython for its own UTF-8 would
/// keep that copy inside the str for as long as the str lives). A str with lone surrogates
/// raises UnicodeEncodeError, as encoding it would.
enum Utf8<'a, 'py> {
    Ascii(&'a str),
    Encoded(Bound<'py, PyBytes>),
}

impl Utf8<'_, '_> {
    fn as_str(&self) -> &str {
        match self {
            Utf8::Ascii(s) => s,
            // SAFETY: the bytes are what `str.encode("utf-8")` made: valid UTF-8.
            Utf8::Encoded(b) => unsafe { std::str::from_utf8_unchecked(b.as_bytes()) },
        }
    }
}

fn utf8<'a, 'py>(text: &'a Bound<'py, PyString>) -> PyResult<Utf8<'a, 'py>> {
    #[cfg(not(windows))]
    if text
        .call_method0(pyo3::intern!(text.py(), "isascii"))?
        .is_truthy()?
    {
        let mut len: ffi::Py_ssize_t = 0;
        // SAFETY: `text` is an ASCII str, whose UTF-8 is its own characters (nothing is
        // allocated); they live as long as the str, which `text` keeps alive for 'a, and
        // CPython never changes a str's characters.
        unsafe {
            let data = PyUnicode_AsUTF8AndSize(text.as_ptr(), &mut len);
            if data.is_null() {
                return Err(PyErr::fetch(text.py()));
            }
            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
            return Ok(Utf8::Ascii(std::str::from_utf8_unchecked(bytes)));
        }
    }
    Ok(Utf8::Encoded(text.encode_utf8()?))
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

    fn encode_ordinary<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyString>,
    ) -> PyResult<Bound<'py, PyList>> {
        let text = utf8(text)?;
        let text = text.as_str();
        let ids = py.detach(|| self.inner.encode_ordinary(text));
        self.ints().list_of_ids(py, &ids)
    }

    /// Encodes with the special tokens whose ids are in `allowed` honoured; text spelling one
    /// whose id is in `disallowed` raises tiktoken's ValueError.
    #[pyo3(signature = (text, allowed = None, disallowed = None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyString>,
        allowed: Option<Vec<Rank>>,
        disallowed: Option<Vec<Rank>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let text = utf8(text)?;
        let text = text.as_str();
        let (allowed, disallowed) = (id_set(allowed), id_set(disallowed));
        let ids = py
            .detach(
                || match first_disallowed(&self.inner, &[text], &disallowed) {
                    Some(token) => Err(token),
                    None => Ok(self.inner.encode(text, &allowed)),
                },
            )
            .map_err(|token| disallowed_special_error(py, &token))?;
        self.ints().list_of_ids(py, &ids)
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
        let ints = self.ints();
        let completions = completions
            .iter()
            .map(|seq| ints.list_of_ids(py, seq))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((
            ints.list_of_ids(py, &tokens)?,
            PyList::new(py, completions)?,
        ))
    }

    #[pyo3(signature = (text, allowed = None, disallowed = None))]
    fn count(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyString>,
        allowed: Option<Vec<Rank>>,
        disallowed: Option<Vec<Rank>>,
    ) -> PyResult<usize> {
        let text = utf8(text)?;
        let text = text.as_str();
        let (allowed, disallowed) = (id_set(allowed), id_set(disallowed));
        py.detach(
            || match first_disallowed(&self.inner, &[text], &disallowed) {
                Some(token) => Err(token),
                None => Ok(self.inner.count(text, &allowed)),
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
        texts: Vec<Bound<'py, PyString>>,
        allowed: Option<Vec<Rank>>,
        disallowed: Option<Vec<Rank>>,
    ) -> PyResult<Bound<'py, PyList>> {
        if texts.len() > 1 {
            parallel::wake(); // while the texts are read
        }
        let texts = texts.iter().map(utf8).collect::<PyResult<Vec<_>>>()?;
        let texts: Vec<&str> = texts.iter().map(Utf8::as_str).collect();
        let (allowed, disallowed) = (id_set(allowed), id_set(disallowed));
        if let Some(token) = py.detach(|| first_disallowed(&self.inner, &texts, &disallowed)) {
            return Err(disallowed_special_error(py, &token));
        }
        // This thread encodes beside the pool (one thread fewer there, so no core is shared)
        // and, between runs, turns the texts done so far into lists, with the GIL held only
        // then. Only one thread can build lists, so the pool looks up each token's int
        // itself (`words`), leaving this thread little more than counting and copying.
        let threads = parallel::num_threads();
        let runs = Runs::new(&texts, threads);
        let helpers = (threads - 1).min(runs.len().saturating_sub(1));
        let mut lists: Vec<Option<Bound<'py, PyList>>> = vec![None; texts.len()];
        let (sender, receiver) = std::sync::mpsc::channel::<(usize, Encoded)>();
        // Only this thread receives; the lock makes the receiver shareable with `detach`.
        let receiver = std::sync::Mutex::new(receiver);
        let mut failed = None;
        std::thread::scope(|scope| {
            let (inner, texts, allowed, runs) = (&self.inner, &texts, &allowed, &runs);
            let ints = self.ints();
            // The sender lives in the spawned thread: if the pool panics, the receiver is told.
            let pool = (helpers > 0).then(|| {
                scope.spawn(move || {
                    let sender = &sender;
                    parallel::install(|| {
                        rayon::scope(|s| {
                            for _ in 0..helpers {
                                s.spawn(move |_| {
                                    inner.encode_runs(texts, runs, allowed, |first, tokens| {
                                        let words = tokens.iter().map(|ids| ints.words(ids));
                                        let words = Encoded::Words(words.collect());
                                        // The receiver outlives the pool's work.
                                        let _ = sender.send((first, words));
                                    })
                                });
                            }
                        })
                    })
                })
            });
            let mut left = texts.len();
            while left > 0 {
                let mut ready: Vec<_> = receiver.lock().expect("not poisoned").try_iter().collect();
                if ready.is_empty() {
                    ready = py.detach(|| match runs.take() {
                        Some(run) => {
                            let first = run.start;
                            let ids = inner.encode_run(texts, run, allowed);
                            vec![(first, Encoded::Ids(ids))]
                        }
                        None => receiver
                            .lock()
                            .expect("not poisoned")
                            .recv()
                            .into_iter()
                            .collect(),
                    });
                }
                if ready.is_empty() {
                    break; // every sender gone: the pool stopped (it panicked)
                }
                for (first, encoded) in ready {
                    let built: Vec<_> = match encoded {
                        Encoded::Ids(docs) => {
                            docs.iter().map(|ids| ints.list_of_ids(py, ids)).collect()
                        }
                        Encoded::Words(docs) => {
                            docs.iter().map(|w| ints.list_of_words(py, w)).collect()
                        }
                    };
                    left -= built.len();
                    for (i, list) in (first..).zip(built) {
                        match list {
                            Ok(list) => lists[i] = Some(list),
                            Err(e) if failed.is_none() => failed = Some(e),
                            Err(_) => {}
                        }
                    }
                }
            }
            // This thread may have encoded every run before the pool (busy with another
            // caller's work) began: wait for it without the GIL.
            if let Some(pool) = pool {
                if let Err(panic) = py.detach(|| pool.join()) {
                    std::panic::resume_unwind(panic)
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        PyList::new(
            py,
            lists.into_iter().map(|l| l.expect("every text encoded")),
        )
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
        texts: Vec<Bound<'py, PyString>>,
        allowed: Option<Vec<Rank>>,
        append: Option<Rank>,
        uint16: Option<bool>,
        disallowed: Option<Vec<Rank>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyArray1<i64>>)> {
        if texts.len() > 1 {
            parallel::wake(); // while the texts are read
        }
        let texts = texts.iter().map(utf8).collect::<PyResult<Vec<_>>>()?;
        let texts: Vec<&str> = texts.iter().map(Utf8::as_str).collect();
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
