//! What the parsers' fuzz tests share (issue 18): the case count, edits of a valid file's
//! bytes, and a watchdog that turns a hang into a failure. Each parser's tests live beside it,
//! in a `mod fuzz` at the end of its file; `cargo test --lib fuzz` runs them all.
//!
//! Cases per property: a few dozen by default (CI), `PROPTEST_CASES=10000` for a long run
//! (`benches/fuzz.sh` runs both languages' fuzz tests long).

use proptest::prelude::*;
use proptest::sample::Index;
use std::time::Duration;

/// The proptest configuration of a fuzz property: `default_cases` cases from a fixed seed (CI
/// sees the same inputs each run), unless PROPTEST_CASES asks for a long, random run.
pub fn config(default_cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default(); // reads PROPTEST_CASES when it is set
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default_cases;
        c.rng_seed = proptest::test_runner::RngSeed::Fixed(18);
    }
    c
}

/// One change to a file's bytes; positions are fractions of the length, so any edit applies
/// to any file.
#[derive(Clone, Debug)]
pub enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Keeps the first part of the file, as an interrupted copy would.
    Truncate(Index),
    /// Copies a span to another place (a repeated line, a repeated key).
    Duplicate(Index, usize, Index),
}

/// Bytes that change meaning in the formats under test: JSON and TOML punctuation, digits,
/// base64, line ends, escapes, bytes that are not UTF-8.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"{}[]\",:= \n\r\t\\0123456789-+eE.uU/#'ab".to_vec()),
        1 => any::<u8>(),
    ]
}

/// Short strings worth splicing in: extreme numbers, JSON literals, escapes.
fn interesting_insert() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            &b"4294967295"[..],
            b"4294967296",
            b"2147483647",
            b"99999999999999999999",
            b"-1",
            b"1e999",
            b"0.5",
            b"null",
            b"true",
            b"[]",
            b"{}",
            b"\"\"",
            b"\\ud800",
            b"\xff\xfe",
            b"\n",
            b"=",
            b"\x00",
        ])
        .prop_map(|b| b.to_vec()),
        prop::collection::vec(interesting_byte(), 1..8),
    ]
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
        3 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        3 => (any::<Index>(), interesting_insert()).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => (any::<Index>(), 1..16usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), 1..64usize, any::<Index>()).prop_map(|(a, n, b)| Edit::Duplicate(a, n, b)),
    ]
}

/// One to four edits.
pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..=4)
}

/// `bytes` with `edits` applied in order.
pub fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for e in edits {
        let at = |i: &Index, extra: usize| i.index(out.len() + extra);
        match e {
            Edit::Flip(i, m) if !out.is_empty() => {
                let k = at(i, 0);
                out[k] ^= m;
            }
            Edit::Set(i, b) if !out.is_empty() => {
                let k = at(i, 0);
                out[k] = *b;
            }
            Edit::Insert(i, b) => {
                let k = at(i, 1);
                out.splice(k..k, b.iter().copied());
            }
            Edit::Delete(i, n) if !out.is_empty() => {
                let k = at(i, 0);
                let end = (k + n).min(out.len());
                out.drain(k..end);
            }
            Edit::Truncate(i) if !out.is_empty() => {
                let k = at(i, 0);
                out.truncate(k);
            }
            Edit::Duplicate(a, n, b) if !out.is_empty() => {
                let k = at(a, 0);
                let span = out[k..(k + n).min(out.len())].to_vec();
                let to = at(b, 1);
                out.splice(to..to, span);
            }
            _ => {}
        }
    }
    out
}

/// Runs `f` on its own thread and fails the test when it takes longer than `secs`: a parser
/// that loops forever (or waits on a channel nobody feeds) is a defect, not a slow test.
pub fn within<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not return within {secs} s (a hang)")
        }
        // The sender was dropped without a value: `f` panicked; re-raise its panic here.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest! {
        #![proptest_config(config(32))]
        #[test]
        fn edits_apply_to_any_file(bytes in prop::collection::vec(any::<u8>(), 0..50), e in edits()) {
            let _ = apply(&bytes, &e);
        }
    }

    #[test]
    fn within_passes_values_and_panics_through() {
        assert_eq!(within(5, "x", || 7), 7);
        let r = std::panic::catch_unwind(|| within(5, "x", || panic!("boom")));
        assert!(r.is_err());
    }
}
