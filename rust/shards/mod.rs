//! Token shards: the on-disk format (llm.c-compatible), the writer, the memory-mapped reader
//! and the batch sampler the trainer draws from.
//!
//! A dataset is a directory: `manifest.json` (what the trainer opens), then per split numbered
//! shards `train_000000.bin` with a document index `train_000000.idx` beside each.

pub mod format;
pub mod jsonl;
pub mod manifest;
pub mod overlapped;
pub mod reader;
pub mod sampler;
pub mod shard_file;
pub mod tokenize;
pub mod writer;

pub use format::Dtype;
pub use manifest::{EotMode, Manifest, Settings, SplitRule};
pub use overlapped::OverlappedWriter;
pub use reader::{Dataset, Shard, Split};
pub use sampler::{Sampler, SamplerConfig, SamplerState};
pub use writer::DatasetWriter;

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Everything that can go wrong with shards, naming the file, the byte offset, what was
/// expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A field of a header or index that does not hold what it must.
    #[error("{}: {field} at byte {offset} is {found}, expected {expected}", path.display())]
    Field {
        path: PathBuf,
        field: &'static str,
        offset: u64,
        found: String,
        expected: String,
    },
    #[error(
        "{}: the header says {count} tokens (int32 at byte 8), so the file should be {expected} \
         bytes, but it is {found} bytes (truncated or overwritten?)",
        path.display()
    )]
    Size {
        path: PathBuf,
        count: u64,
        expected: u64,
        found: u64,
    },
    #[error(
        "{}: checksum of bytes {start}..{end} is {found}, expected {expected} (from {source_of_expected}): \
         the file is corrupt",
        path.display()
    )]
    Checksum {
        path: PathBuf,
        start: u64,
        end: u64,
        found: String,
        expected: String,
        source_of_expected: String,
    },
    /// A token id the model has no embedding for (checked before training).
    #[error(
        "{}: token id {token} at token {offset} ({} {largest}) is outside the model's vocabulary \
         of {vocab}; retokenize with the model's tokenizer or use a model with a larger vocab",
        path.display(),
        if *recorded { "largest recorded" } else { "largest in the shard" }
    )]
    TokenRange {
        path: PathBuf,
        token: u32,
        /// Index of the token in the shard.
        offset: u64,
        largest: u32,
        /// Whether `largest` comes from the manifest (else from reading the shard).
        recorded: bool,
        vocab: u64,
    },
    /// A manifest that is unreadable or disagrees with the files it lists.
    #[error("{}: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    /// A bad input record (JSON lines read by the core).
    #[error("{}: line {line}: {message}", path.display())]
    Input {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// Bad arguments (sampler settings, writer settings, a state from another configuration).
    #[error("{0}")]
    Settings(String),
    #[error("{what} {index} is out of range for {len}")]
    OutOfRange {
        what: &'static str,
        index: u64,
        len: u64,
    },
}

impl ShardError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> ShardError {
        ShardError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn field(
        path: &Path,
        field: &'static str,
        offset: u64,
        found: impl Display,
        expected: impl Display,
    ) -> ShardError {
        ShardError::Field {
            path: path.to_path_buf(),
            field,
            offset,
            found: found.to_string(),
            expected: expected.to_string(),
        }
    }

    pub(crate) fn manifest(path: &Path, message: impl Into<String>) -> ShardError {
        ShardError::Manifest {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
