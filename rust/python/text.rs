//! Document filters (`TextPipeline`) and the word and sentence splitters.

use crate::text::{Outcome, Pipeline};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::PyTuple;

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
            .map_err(PyErr::from)
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

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TextPipeline>()?;
    m.add_function(wrap_pyfunction!(split_words, m)?)?;
    m.add_function(wrap_pyfunction!(split_sentences, m)?)?;
    Ok(())
}
