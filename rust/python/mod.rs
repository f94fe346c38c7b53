//! The PyO3 boundary: the only Rust that knows Python.
//!
//! One file per area of the core. Each only extracts arguments under the GIL, runs the core
//! with the GIL released (`py.detach`), converts results back (token arrays go to numpy
//! without a copy), and lets `errors.rs` turn the core's error into its exception with `?`.

mod bpe;
mod bpe_train;
mod compress;
mod dedup;
mod errors;
mod id_lists;
mod shards;
mod text;

use pyo3::prelude::*;

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

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TokenizerError", py.get_type::<errors::TokenizerError>())?;
    m.add(
        "ShardFormatError",
        py.get_type::<errors::ShardFormatError>(),
    )?;
    m.add(
        "FilterConfigError",
        py.get_type::<errors::FilterConfigError>(),
    )?;
    m.add("DedupError", py.get_type::<errors::DedupError>())?;
    m.add_function(wrap_pyfunction!(_mark_forked, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    bpe::register(m)?;
    bpe_train::register(m)?;
    compress::register(m)?;
    dedup::register(m)?;
    shards::register(m)?;
    text::register(m)?;
    Ok(())
}
