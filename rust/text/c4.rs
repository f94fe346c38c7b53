//! The C4 cleaning rules (Raffel et al. 2020), as published in TFDS `c4_utils.clean_page`, and
//! the variant datatrove's `C4QualityFilter` implements.
//!
//! Per line of `str.splitlines()`, after `str.strip()`, in this order:
//! 1. drop the line if a whitespace-separated word is longer than `max_word_length` characters;
//! 2. remove citation markers `\[\d*\]`, `[edit]`, `[citation needed]`;
//! 3. drop the line unless it ends in one of `end_marks` and not in `...`;
//! 4. drop the line if it has fewer than `min_words_per_line` whitespace-separated words
//!    (TFDS counts after step 2, datatrove before);
//! 5. "lorem ipsum" anywhere in the lower-cased line drops the page;
//! 6. drop the line if it mentions "javascript";
//! 7. `{` drops the page;
//! 8. drop the line if it contains a policy phrase ("terms of use", "cookie policy", ...).
//!
//! The page is dropped when the kept lines hold fewer than `min_num_sentences` sentences
//! ([`super::sentences`]; TFDS used NLTK's Punkt model here, datatrove spaCy's sentencizer,
//! which is what we reproduce), else it becomes the kept lines joined by `\n`.

use super::chars::{py_len, py_lower, py_split, py_split_count, py_splitlines, py_strip};
use super::sentences::count_sentences;
use super::{FilterStats, Verdict};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

const POLICY: [&str; 6] = [
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
];

/// Parameters of the C4 rules; the defaults are TFDS's (`c4` preset).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct C4Config {
    /// Drop lines with a word longer than this many characters (None: off).
    pub max_word_length: Option<usize>,
    pub remove_citations: bool,
    /// Drop lines that do not end in one of these characters, or that end in "...".
    pub filter_no_terminal_punct: bool,
    pub end_marks: String,
    /// Drop lines with fewer words (None: off).
    pub min_words_per_line: Option<usize>,
    /// Count a line's words before removing citations (datatrove) rather than after (TFDS).
    pub count_words_before_citations: bool,
    pub filter_lorem_ipsum: bool,
    pub filter_javascript: bool,
    pub filter_curly_bracket: bool,
    pub filter_policy: bool,
    /// Drop pages whose kept lines hold fewer sentences (None: off).
    pub min_num_sentences: Option<usize>,
}

impl Default for C4Config {
    fn default() -> Self {
        C4Config {
            max_word_length: Some(1000),
            remove_citations: true,
            filter_no_terminal_punct: true,
            end_marks: ".?!\"".to_string(),
            min_words_per_line: Some(5),
            count_words_before_citations: false,
            filter_lorem_ipsum: true,
            filter_javascript: true,
            filter_curly_bracket: true,
            filter_policy: true,
            min_num_sentences: Some(3),
        }
    }
}

impl C4Config {
    /// datatrove's `C4QualityFilter()` defaults.
    pub fn datatrove() -> Self {
        C4Config {
            end_marks: ".?!\"'".to_string(),
            min_words_per_line: Some(3),
            count_words_before_citations: true,
            min_num_sentences: Some(5),
            ..C4Config::default()
        }
    }
}

fn citation_regex() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\[\d*\]|\[edit\]|\[citation needed\]").expect("valid"))
}

fn has_long_word(line: &str, max: usize) -> bool {
    // A word longer than `max` characters needs more than `max` bytes.
    line.len() > max && py_split(line).any(|w| w.len() > max && py_len(w) > max)
}

/// Applies the C4 rules to one page.
pub fn apply(cfg: &C4Config, text: &str, stats: &mut FilterStats) -> Verdict {
    let mut kept: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    let mut sentences = 0usize;
    for raw in py_splitlines(text) {
        let line = py_strip(raw);
        let line_bytes = raw.len() as u64;
        if let Some(max) = cfg.max_word_length {
            if has_long_word(line, max) {
                stats.line_removed("too_long_word", line_bytes);
                continue;
            }
        }
        let words_before = if cfg.count_words_before_citations {
            Some(py_split_count(line))
        } else {
            None
        };
        let line = if cfg.remove_citations && line.contains('[') {
            citation_regex().replace_all(line, "")
        } else {
            std::borrow::Cow::Borrowed(line)
        };
        if cfg.filter_no_terminal_punct
            && (!line.ends_with(|c: char| cfg.end_marks.contains(c)) || line.ends_with("..."))
        {
            stats.line_removed("no_terminal_punct", line_bytes);
            continue;
        }
        if let Some(min) = cfg.min_words_per_line {
            let n = words_before.unwrap_or_else(|| py_split_count(&line));
            if n < min {
                stats.line_removed("too_few_words", line_bytes);
                continue;
            }
        }
        let lower = py_lower(&line);
        if cfg.filter_lorem_ipsum && lower.contains("lorem ipsum") {
            return Verdict::remove("lorem_ipsum");
        }
        if cfg.filter_javascript && lower.contains("javascript") {
            stats.line_removed("javascript", line_bytes);
            continue;
        }
        if cfg.filter_curly_bracket && line.contains('{') {
            return Verdict::remove("curly_bracket");
        }
        if cfg.filter_policy && POLICY.iter().any(|p| lower.contains(p)) {
            stats.line_removed("policy", line_bytes);
            continue;
        }
        if cfg.min_num_sentences.is_some() {
            sentences += count_sentences(&line);
        }
        kept.push(line);
    }
    if let Some(min) = cfg.min_num_sentences {
        if sentences < min {
            return Verdict::remove("too_few_sentences");
        }
    }
    let joined = kept.join("\n");
    let out = py_strip(&joined);
    if out == text {
        Verdict::Keep
    } else {
        Verdict::Modified(out.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: &C4Config, text: &str) -> (Verdict, FilterStats) {
        let mut stats = FilterStats::default();
        (apply(cfg, text, &mut stats), stats)
    }

    const GOOD: &str = "This is a perfectly fine sentence here.\nAnd here is another one of them.\nA third line that ends well too!";

    #[test]
    fn keeps_good_pages_unchanged() {
        assert_eq!(run(&C4Config::default(), GOOD).0, Verdict::Keep);
    }

    #[test]
    fn line_rules() {
        let cfg = C4Config::default();
        let text = format!("{GOOD}\nno end mark on this line here\ntoo short line.\nPlease enable javascript in your browser.\nRead our privacy policy for more info.\nThis line trails off into nothing...\nA line with a citation at the end.[1]");
        let (v, s) = run(&cfg, &text);
        assert_eq!(
            v,
            Verdict::Modified(format!("{GOOD}\nA line with a citation at the end."))
        );
        for rule in ["no_terminal_punct", "too_few_words", "javascript", "policy"] {
            assert_eq!(
                s.rules[rule].lines,
                if rule == "no_terminal_punct" { 2 } else { 1 },
                "{rule}"
            );
        }
    }

    #[test]
    fn page_rules() {
        let cfg = C4Config::default();
        assert_eq!(
            run(
                &cfg,
                &format!("{GOOD}\nLorem Ipsum dolor sit amet consectetur.")
            )
            .0,
            Verdict::remove("lorem_ipsum")
        );
        assert_eq!(
            run(
                &cfg,
                &format!("{GOOD}\nfunction f() {{ return the value; }}.")
            )
            .0,
            Verdict::remove("curly_bracket")
        );
        assert_eq!(
            run(&cfg, "Only one sentence is on this page.").0,
            Verdict::remove("too_few_sentences")
        );
        let long = format!("{} is long.\n{GOOD}", "x".repeat(1001));
        assert_eq!(run(&cfg, &long).0, Verdict::Modified(GOOD.to_string()));
    }

    #[test]
    fn datatrove_variant_counts_words_before_citations() {
        // Five words before the citations are removed, three after.
        let line = "Two words [1] [2] [3].";
        let mut tfds = C4Config {
            min_words_per_line: Some(4),
            min_num_sentences: None,
            ..C4Config::default()
        };
        assert_eq!(run(&tfds, line).0, Verdict::Modified(String::new()));
        tfds.count_words_before_citations = true;
        assert_eq!(
            run(&tfds, line).0,
            Verdict::Modified("Two words   .".to_string())
        );
        let dt = C4Config {
            min_num_sentences: None,
            ..C4Config::datatrove()
        };
        assert_eq!(run(&dt, "It's fine, isn't it'").0, Verdict::Keep);
    }
}
