//! Optional text normalisation run before the filters: Unicode NFC, and a clean-up of
//! whitespace and control characters.
//!
//! The clean-up removes control characters other than tab and newline (a `\r\n` or lone `\r`
//! becomes `\n`), turns other Unicode spaces (no-break, em, ideographic, ...) into a plain
//! space, strips spaces and tabs at line ends, and collapses three or more consecutive
//! newlines into two, so paragraphs stay separated by one blank line.

use serde::{Deserialize, Serialize};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// Which normalisations to apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizeConfig {
    pub nfc: bool,
    pub clean_whitespace: bool,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            nfc: true,
            clean_whitespace: true,
        }
    }
}

fn nfc(text: &str) -> Option<String> {
    match is_nfc_quick(text.chars()) {
        IsNormalized::Yes => None,
        _ => {
            let out: String = text.nfc().collect();
            (out != text).then_some(out)
        }
    }
}

fn needs_cleaning(text: &str) -> bool {
    text.contains("\n\n\n")
        || text.contains(" \n")
        || text.contains("\t\n")
        || text.ends_with([' ', '\t'])
        || text.chars().any(|c| {
            (c.is_control() && c != '\n' && c != '\t')
                || (c.is_whitespace() && !matches!(c, ' ' | '\n' | '\t'))
        })
}

fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' | '\t' => out.push(c),
            c if c.is_whitespace() => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    // Trailing spaces on each line, then runs of blank lines.
    let mut lines: Vec<&str> = out
        .split('\n')
        .map(|l| l.trim_end_matches([' ', '\t']))
        .collect();
    let mut result = String::with_capacity(out.len());
    let mut blank_run = 0;
    for (i, line) in lines.drain(..).enumerate() {
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        if i > 0 {
            result.push('\n');
        }
        result.push_str(line);
    }
    result
}

/// The normalised text, or None when it is already normal.
pub fn apply(cfg: &NormalizeConfig, text: &str) -> Option<String> {
    let composed = if cfg.nfc { nfc(text) } else { None };
    let current = composed.as_deref().unwrap_or(text);
    if cfg.clean_whitespace && needs_cleaning(current) {
        let cleaned = clean(current);
        if cleaned != text {
            return Some(cleaned);
        }
        return None;
    }
    composed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfc_and_cleanup() {
        let cfg = NormalizeConfig::default();
        assert_eq!(apply(&cfg, "plain text\nok"), None);
        assert_eq!(
            apply(&cfg, "e\u{301}t\u{e9}").as_deref(),
            Some("\u{e9}t\u{e9}")
        );
        assert_eq!(
            apply(&cfg, "a\u{a0}b  \r\nc\n\n\n\nd\u{7}").as_deref(),
            Some("a b\nc\n\nd")
        );
        let off = NormalizeConfig {
            nfc: false,
            clean_whitespace: false,
        };
        assert_eq!(apply(&off, "e\u{301}\u{a0}"), None);
    }
}
