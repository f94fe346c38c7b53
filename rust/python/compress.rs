//! zstd document files: `ZstdReader` and `zstd_compress`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;
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
        let inner = crate::compress::ZstdFile::open(&path)?;
        Ok(ZstdReader { inner: Some(inner) })
    }

    /// Up to `size` bytes; fewer only at the end of the file.
    fn read<'py>(&mut self, py: Python<'py>, size: usize) -> PyResult<Bound<'py, PyBytes>> {
        let file = self
            .inner
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("read of a closed file"))?;
        let mut buf = vec![0u8; size];
        let n = py.detach(|| file.read_full(&mut buf))?;
        Ok(PyBytes::new(py, &buf[..n]))
    }

    fn close(&mut self) {
        self.inner = None;
    }
}

/// `data` as one zstd frame with its content size and checksum.
#[pyfunction]
#[pyo3(signature = (data, level = 3))]
fn zstd_compress<'py>(py: Python<'py>, data: &[u8], level: i32) -> PyResult<Bound<'py, PyBytes>> {
    let out = py
        .detach(|| crate::compress::compress(data, level))
        .map_err(|e| PyValueError::new_err(format!("zstd: {e}")))?;
    Ok(PyBytes::new(py, &out))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ZstdReader>()?;
    m.add_function(wrap_pyfunction!(zstd_compress, m)?)?;
    Ok(())
}
