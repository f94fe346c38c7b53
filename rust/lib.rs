//! gristmill's Rust core. Pure Rust modules know nothing of Python; `python` (behind the
//! `python` feature that maturin turns on) is the only place that does.

pub mod bpe;
pub mod parallel;

#[cfg(feature = "python")]
mod python;
