//! The FineWeb quality filter (Penedo et al. 2024), with the rules, parameters and reason names
//! of datatrove's `FineWebQualityFilter`:
//! 1. `line_punct_ratio`: fewer than `line_punct_thr` of the non-blank lines (split at `\n`)
//!    end in terminal punctuation;
//! 2. `short_line_ratio`: more than `short_line_thr` of them are at most `short_line_length`
//!    characters long;
//! 3. `char_dup_ratio`: characters in repeated lines over characters that are not `\n` exceed
//!    `char_duplicates_ratio`;
//! 4. `list_ratio`: newlines per word ([`super::words`]) exceed `new_line_ratio`.

use super::chars::{is_terminal_punctuation, py_count, py_len, py_strip};
use super::gopher::find_duplicates;
use super::words::split_words;
use super::Verdict;
use serde::{Deserialize, Serialize};

/// Parameters of the FineWeb rules (defaults: datatrove's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FineWebConfig {
    pub line_punct_thr: f64,
    /// Do not apply rule 1 to documents with no line ending in punctuation at all.
    pub line_punct_exclude_zero: bool,
    /// Characters that end a line for rule 1 (None: Unicode sentence terminals).
    pub stop_chars: Option<String>,
    pub short_line_thr: f64,
    pub short_line_length: usize,
    pub char_duplicates_ratio: f64,
    pub new_line_ratio: f64,
}

impl Default for FineWebConfig {
    fn default() -> Self {
        FineWebConfig {
            line_punct_thr: 0.12,
            line_punct_exclude_zero: false,
            stop_chars: None,
            short_line_thr: 0.67,
            short_line_length: 30,
            char_duplicates_ratio: 0.01,
            new_line_ratio: 0.3,
        }
    }
}

/// Applies the FineWeb rules.
pub fn apply(cfg: &FineWebConfig, text: &str) -> Verdict {
    let lines: Vec<&str> = text
        .split('\n')
        .filter(|l| !py_strip(l).is_empty())
        .collect();
    if lines.is_empty() {
        return Verdict::remove("empty");
    }
    let n = lines.len() as f64;
    let ends_in_stop = |l: &&&str| {
        l.chars()
            .next_back()
            .is_some_and(|c| match &cfg.stop_chars {
                Some(stops) => stops.contains(c),
                None => is_terminal_punctuation(c),
            })
    };
    let ratio = lines.iter().filter(ends_in_stop).count() as f64 / n;
    if ratio < cfg.line_punct_thr && !(ratio == 0.0 && cfg.line_punct_exclude_zero) {
        return Verdict::remove("line_punct_ratio");
    }
    let short = lines
        .iter()
        .filter(|l| py_len(l) <= cfg.short_line_length)
        .count() as f64
        / n;
    if short > cfg.short_line_thr {
        return Verdict::remove("short_line_ratio");
    }
    let (_, dup_chars) = find_duplicates(lines.iter().copied());
    let newlines = py_count(text, "\n");
    let non_newline_chars = py_len(text) - newlines;
    if dup_chars as f64 / non_newline_chars as f64 > cfg.char_duplicates_ratio {
        return Verdict::remove("char_dup_ratio");
    }
    let words = split_words(text).len();
    if words > 0 && newlines as f64 / words as f64 > cfg.new_line_ratio {
        return Verdict::remove("list_ratio");
    }
    Verdict::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_at_their_thresholds() {
        let cfg = FineWebConfig::default();
        let good = "This is a long enough line that ends with a full stop.\nAnd so is this one, which is also long enough.";
        assert_eq!(apply(&cfg, good), Verdict::Keep);
        assert_eq!(apply(&cfg, " \n\t\n"), Verdict::remove("empty"));
        let no_punct =
            "a line without any end mark at all here\nanother line without any end mark here";
        assert_eq!(apply(&cfg, no_punct), Verdict::remove("line_punct_ratio"));
        let excl = FineWebConfig {
            line_punct_exclude_zero: true,
            ..FineWebConfig::default()
        };
        assert_ne!(apply(&excl, no_punct), Verdict::remove("line_punct_ratio"));
        let short = "Short.\nAlso short.\nTiny.\nThis one is a much longer line than thirty chars.";
        assert_eq!(apply(&cfg, short), Verdict::remove("short_line_ratio"));
        let dup = format!("{good}\n{good}");
        assert_eq!(apply(&cfg, &dup), Verdict::remove("char_dup_ratio"));
    }

    #[test]
    fn list_ratio() {
        let cfg = FineWebConfig {
            short_line_thr: 1.0,
            ..FineWebConfig::default()
        };
        let list: String = (0..10).map(|i| format!("Item number {i}.\n")).collect();
        // 10 newlines over 40 words is 0.25: kept; with two words per line it is 0.33.
        assert_eq!(apply(&cfg, &list), Verdict::Keep);
        let list: String = (0..10).map(|i| format!("Item{i}.\n")).collect();
        assert_eq!(apply(&cfg, &list), Verdict::remove("list_ratio"));
    }
}
