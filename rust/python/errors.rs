//! Every core error type mapped to its Python exception, once: the bindings use `?`.
//!
//! A missing file is FileNotFoundError, other I/O errors OSError, and the rest the exception
//! class of their area (all ValueErrors), with the core's message, which names the file and
//! the place.

use crate::bpe::BpeError;
use crate::compress::CompressError;
use crate::dedup::DedupError as CoreDedupError;
use crate::shards::ShardError;
use crate::text::TextError;
use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyIndexError, PyOSError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    _core,
    TokenizerError,
    PyValueError,
    "A bad vocabulary, file or pattern."
);

create_exception!(
    _core,
    ShardFormatError,
    PyValueError,
    "A shard, index or manifest that is damaged, truncated or does not match; the message \
     names the file and byte offset."
);

create_exception!(
    _core,
    FilterConfigError,
    PyValueError,
    "A filter configuration that cannot be used."
);

create_exception!(
    _core,
    DedupError,
    PyValueError,
    "A bad dedup configuration, a corrupt or mismatched work directory, or changed input."
);

impl From<BpeError> for PyErr {
    fn from(e: BpeError) -> PyErr {
        match e {
            BpeError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(format!("{}: {source}", path.display()))
            }
            BpeError::Io { .. } => PyOSError::new_err(e.to_string()),
            other => TokenizerError::new_err(other.to_string()),
        }
    }
}

impl From<ShardError> for PyErr {
    fn from(e: ShardError) -> PyErr {
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
}

impl From<TextError> for PyErr {
    fn from(e: TextError) -> PyErr {
        FilterConfigError::new_err(e.to_string())
    }
}

impl From<CoreDedupError> for PyErr {
    fn from(e: CoreDedupError) -> PyErr {
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
}

impl From<CompressError> for PyErr {
    fn from(e: CompressError) -> PyErr {
        if e.is_not_found() {
            PyFileNotFoundError::new_err(e.to_string())
        } else {
            PyValueError::new_err(e.to_string())
        }
    }
}
