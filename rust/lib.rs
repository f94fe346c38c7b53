//! gristmill's Rust core.
//!
//! This file only declares the modules. The core (`bpe`, `text`, `dedup`, `shards`, `compress`,
//! `fsio`, `parallel`) knows nothing of Python; `python/`, behind the `python` feature that
//! maturin turns on, is the only Rust that does (one file per area, errors mapped once).

pub mod bpe;
pub mod cache;
pub mod compress;
pub mod dedup;
pub mod fsio;
/// What the parsers' fuzz tests share (each parser's `mod fuzz` sits beside it).
#[cfg(test)]
pub(crate) mod fuzz;
pub mod parallel;
pub mod shards;
pub mod text;

#[cfg(feature = "python")]
mod python;
