//! The C4 bad-words rule: a page is dropped when its lower-cased text contains a listed word
//! or phrase with a non-word character (or the start/end of the text) on each side, that is
//! when Python's `re.search(r"(?:\W|^)(w1|w2|...)(?:\W|$)", text.lower())` finds a match.
//!
//! Python's `\w` for text is "alphanumeric or underscore" (`str.isalnum`), which is the Unicode
//! classes L and N plus `_`; Rust's `\w` also takes marks and connector punctuation, so the
//! pattern spells the class out. Entries are matched literally (escaped). Python's `$` also
//! matches before a final newline, but a newline is itself a non-word character, so the two
//! patterns find a match on the same texts.

use super::chars::py_lower;
use super::{TextError, Verdict};
use serde::{Deserialize, Serialize};

/// The bad-words list (one entry per word or phrase; matched in lower-case text).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BadWordsConfig {
    pub words: Vec<String>,
}

/// A compiled bad-words matcher.
#[derive(Debug)]
pub struct BadWords {
    regex: Option<regex::Regex>,
}

const NON_WORD: &str = r"[^\p{L}\p{N}_]";

impl BadWords {
    pub fn new(cfg: &BadWordsConfig) -> Result<Self, TextError> {
        let words: Vec<String> = cfg
            .words
            .iter()
            .map(|w| w.trim())
            .filter(|w| !w.is_empty())
            .map(regex::escape)
            .collect();
        if words.is_empty() {
            return Ok(BadWords { regex: None });
        }
        let pattern = format!("(?:{NON_WORD}|^)(?:{})(?:{NON_WORD}|$)", words.join("|"));
        let regex = regex::RegexBuilder::new(&pattern)
            .size_limit(64 << 20)
            .dfa_size_limit(64 << 20)
            .build()
            .map_err(|e| {
                TextError::Config(format!("bad-words list ({} entries): {e}", words.len()))
            })?;
        Ok(BadWords { regex: Some(regex) })
    }

    pub fn apply(&self, text: &str) -> Verdict {
        match &self.regex {
            Some(re) if re.is_match(&py_lower(text)) => Verdict::remove("badwords"),
            _ => Verdict::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(words: &[&str]) -> BadWords {
        BadWords::new(&BadWordsConfig {
            words: words.iter().map(|w| w.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn whole_words_only() {
        let f = filter(&["ass", "two words", "🖕", "g-spot"]);
        assert_eq!(f.apply("An ASS here."), Verdict::remove("badwords"));
        assert_eq!(f.apply("ass"), Verdict::remove("badwords"));
        assert_eq!(f.apply("a classic assumption"), Verdict::Keep);
        assert_eq!(f.apply("say Two Words now"), Verdict::remove("badwords"));
        assert_eq!(f.apply("look 🖕 here"), Verdict::remove("badwords"));
        assert_eq!(f.apply("x🖕y"), Verdict::Keep);
        assert_eq!(f.apply("the g-spot."), Verdict::remove("badwords"));
        assert_eq!(f.apply("ass_"), Verdict::Keep);
        assert_eq!(f.apply("assé"), Verdict::Keep);
        assert_eq!(f.apply("ass²"), Verdict::Keep);
    }

    #[test]
    fn empty_list_keeps_everything() {
        assert_eq!(filter(&[]).apply("anything"), Verdict::Keep);
    }
}
