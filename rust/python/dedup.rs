//! Dedup: the scan, resolve and apply passes, MinHash signatures and the key helpers.

use super::errors::DedupError;
use crate::dedup::{self, apply::Outcome as DedupOutcome, minhash::MinHasher, DedupConfig};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use std::path::PathBuf;

fn dedup_config(json: &str) -> PyResult<DedupConfig> {
    Ok(DedupConfig::from_json(json)?)
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
        py.detach(|| dedup::scan::Scanner::open(&work_dir, config, memory_limit, checkpoint_docs))
            .map(|inner| DedupScanner { inner })
            .map_err(PyErr::from)
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
            .map_err(PyErr::from)
    }

    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(|| inner.finish().map(|_| ()))
            .map_err(PyErr::from)
    }
}

/// Pass 2 of dedup: merges the indexes and decides; returns the counts as JSON.
#[pyfunction]
fn dedup_resolve(py: Python<'_>, work_dir: PathBuf, memory_limit: usize) -> PyResult<String> {
    let stats = py.detach(|| dedup::resolve::resolve(&work_dir, memory_limit))?;
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
            .map_err(PyErr::from)
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
        let applied = py.detach(|| inner.apply_batch(start, &ids, &texts))?;
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
    let hasher = MinHasher::from_config(&config)?;
    let k = hasher.num_perm();
    let flat: Vec<u64> = py.detach(|| {
        use rayon::prelude::*;
        let sigs: Vec<Option<Vec<u64>>> =
            crate::parallel::install(|| texts.par_iter().map(|t| hasher.signature(t)).collect());
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
    let hasher = MinHasher::from_config(&config)?;
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
    let keys = py.detach(|| dedup::keys::batch_keys(&texts, &config))?;
    let n = keys.has_signature.len();
    Ok((
        keys.exact.into_pyarray(py).reshape([n, 2])?,
        keys.band_keys.into_pyarray(py).reshape([n, keys.width])?,
        keys.has_signature.into_pyarray(py),
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
    let (members, roots) = py.detach(|| dedup::unionfind::clusters(&a, &b));
    Ok((members.into_pyarray(py), roots.into_pyarray(py)))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DedupScanner>()?;
    m.add_class::<DedupApplier>()?;
    m.add_function(wrap_pyfunction!(dedup_resolve, m)?)?;
    m.add_function(wrap_pyfunction!(minhash_signatures, m)?)?;
    m.add_function(wrap_pyfunction!(minhash_permutations, m)?)?;
    m.add_function(wrap_pyfunction!(shingle_hashes, m)?)?;
    m.add_function(wrap_pyfunction!(dedup_words, m)?)?;
    m.add_function(wrap_pyfunction!(lsh_collision_probability, m)?)?;
    m.add_function(wrap_pyfunction!(dedup_hash_keys, m)?)?;
    m.add_function(wrap_pyfunction!(dedup_union_find, m)?)?;
    Ok(())
}
