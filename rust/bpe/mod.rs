//! Byte-level BPE: pre-tokenizer, encoder, trainer and vocabulary file formats.

pub mod charclass;
pub mod count;
pub mod encoder;
pub mod hugepages;
pub mod merge;
pub mod pretokenize;
pub mod tokenmap;
pub mod trainer;
pub mod training;
pub mod vocab;

pub use count::ChunkCounter;
pub use encoder::{Encoder, Runs};
pub use pretokenize::Pattern;
pub use trainer::Trainer;
pub use training::Training;

use std::path::PathBuf;

/// A token id. For mergeable tokens, the id is also the merge priority (lower merges first).
/// It lives here, not in the encoder, so that the encoder and the merge loop both use it
/// without depending on each other.
pub type Rank = u32;
/// Token bytes to rank: the vocabulary's lookup table.
pub type RankMap = tokenmap::TokenMap;

/// Everything that can go wrong in `bpe`, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum BpeError {
    #[error("invalid pre-tokenizer pattern {pattern:?}: {message}")]
    Pattern { pattern: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: byte {offset}: {message} (expected UTF-8 text)")]
    Encoding {
        path: PathBuf,
        offset: u64,
        message: String,
    },
    #[error("invalid vocabulary: {0}")]
    Vocab(String),
    #[error("token id {0} is not in the vocabulary")]
    UnknownId(Rank),
    #[error("invalid training settings: {0}")]
    Settings(String),
}
