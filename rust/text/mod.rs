//! Document cleaning and quality filters: C4, bad words, Gopher, FineWeb, language
//! identification, normalisation.
//!
//! A [`Pipeline`] is a list of filters built from a JSON configuration. Each document goes
//! through them in order: a filter keeps it, keeps a modified text (C4 drops lines,
//! normalisation rewrites characters), or removes it with a reason (filter name and rule).
//! [`Pipeline::apply_batch`] runs documents in parallel and adds up per-filter statistics.
//!
//! Words and sentences are split by [`words`] and [`sentences`], shared by every filter; they
//! follow the rules datatrove uses (spaCy's English tokenizer and sentencizer), so the filters
//! make datatrove's decisions. [`chars`] holds the Python string semantics the published
//! filters are written in.

pub mod badwords;
pub mod c4;
pub mod chars;
pub mod fineweb;
pub mod gopher;
pub mod language;
pub mod normalize;
pub mod sentences;
pub mod words;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Errors of the text module.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A filter configuration that cannot be used.
    #[error("filter configuration: {0}")]
    Config(String),
}

/// What one filter decided about one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Keep this text instead.
    Modified(String),
    /// Remove the document; the rule that fired.
    Remove(Cow<'static, str>),
}

impl Verdict {
    pub fn remove(rule: &'static str) -> Verdict {
        Verdict::Remove(Cow::Borrowed(rule))
    }
}

/// Counts for one rule of one filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStats {
    /// Documents this rule removed.
    pub docs: u64,
    /// Lines this rule removed (line rules).
    pub lines: u64,
    /// Bytes (UTF-8) removed: whole documents, or lines.
    pub bytes: u64,
}

/// Counts for one filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStats {
    pub docs_in: u64,
    pub bytes_in: u64,
    pub docs_removed: u64,
    pub bytes_removed: u64,
    /// Documents kept with a changed text, and the bytes by which they shrank.
    pub docs_modified: u64,
    pub bytes_modified: u64,
    pub lines_removed: u64,
    pub rules: BTreeMap<String, RuleStats>,
}

impl FilterStats {
    pub fn line_removed(&mut self, rule: &str, bytes: u64) {
        self.lines_removed += 1;
        let r = self.rules.entry(rule.to_string()).or_default();
        r.lines += 1;
        r.bytes += bytes;
    }

    fn doc_removed(&mut self, rule: &str, bytes: u64) {
        self.docs_removed += 1;
        self.bytes_removed += bytes;
        let r = self.rules.entry(rule.to_string()).or_default();
        r.docs += 1;
        r.bytes += bytes;
    }

    fn merge(&mut self, other: FilterStats) {
        self.docs_in += other.docs_in;
        self.bytes_in += other.bytes_in;
        self.docs_removed += other.docs_removed;
        self.bytes_removed += other.bytes_removed;
        self.docs_modified += other.docs_modified;
        self.bytes_modified += other.bytes_modified;
        self.lines_removed += other.lines_removed;
        for (rule, s) in other.rules {
            let r = self.rules.entry(rule).or_default();
            r.docs += s.docs;
            r.lines += s.lines;
            r.bytes += s.bytes;
        }
    }
}

/// One filter's configuration: `{"type": "c4", ...parameters}`. Parameters left out take
/// their defaults; unknown parameters are an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FilterConfig {
    /// Remove documents longer than `max_chars` characters (C4: 190,000).
    MaxLength(MaxLengthConfig),
    Normalize(normalize::NormalizeConfig),
    C4(c4::C4Config),
    Badwords(badwords::BadWordsConfig),
    GopherQuality(gopher::GopherQualityConfig),
    GopherRepetition(gopher::GopherRepetitionConfig),
    Fineweb(fineweb::FineWebConfig),
    /// Keep documents in the chosen languages (whatlang detection).
    Language(language::LanguageConfig),
}

/// Parameters of the length rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaxLengthConfig {
    pub max_chars: usize,
}

impl Default for MaxLengthConfig {
    fn default() -> Self {
        MaxLengthConfig { max_chars: 190_000 }
    }
}

enum Filter {
    MaxLength(MaxLengthConfig),
    Normalize(normalize::NormalizeConfig),
    C4(c4::C4Config),
    Badwords(badwords::BadWords),
    GopherQuality(gopher::GopherQualityConfig),
    GopherRepetition(gopher::GopherRepetitionConfig),
    Fineweb(fineweb::FineWebConfig),
    Language(language::LanguageFilter),
}

impl Filter {
    fn apply(&self, text: &str, stats: &mut FilterStats) -> Verdict {
        match self {
            Filter::MaxLength(c) => {
                if text.len() > c.max_chars && chars::py_len(text) > c.max_chars {
                    Verdict::remove("too_long")
                } else {
                    Verdict::Keep
                }
            }
            Filter::Normalize(c) => match normalize::apply(c, text) {
                Some(t) if t.is_empty() => Verdict::remove("empty"),
                Some(t) => Verdict::Modified(t),
                None => Verdict::Keep,
            },
            Filter::C4(c) => c4::apply(c, text, stats),
            Filter::Badwords(b) => b.apply(text),
            Filter::GopherQuality(c) => gopher::quality(c, text),
            Filter::GopherRepetition(c) => gopher::repetition(c, text),
            Filter::Fineweb(c) => fineweb::apply(c, text),
            Filter::Language(l) => l.apply(text),
        }
    }
}

/// What the pipeline decided about one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Kept; `Some(text)` when a filter changed it.
    Kept(Option<String>),
    /// Removed by filter number `filter` (its name is `Pipeline::names()[filter]`), rule `rule`.
    Removed {
        filter: usize,
        rule: Cow<'static, str>,
    },
}

/// Filters applied in order.
pub struct Pipeline {
    names: Vec<String>,
    filters: Vec<Filter>,
}

impl Pipeline {
    /// Builds the filters; `names[i]` names filter `i` in outcomes and statistics.
    pub fn new(configs: Vec<(String, FilterConfig)>) -> Result<Self, TextError> {
        let mut names = Vec::with_capacity(configs.len());
        let mut filters = Vec::with_capacity(configs.len());
        for (name, cfg) in configs {
            if names.contains(&name) {
                return Err(TextError::Config(format!("two filters are named {name:?}")));
            }
            names.push(name);
            filters.push(match cfg {
                FilterConfig::MaxLength(c) => Filter::MaxLength(c),
                FilterConfig::Normalize(c) => Filter::Normalize(c),
                FilterConfig::C4(c) => Filter::C4(c),
                FilterConfig::Badwords(c) => Filter::Badwords(badwords::BadWords::new(&c)?),
                FilterConfig::GopherQuality(c) => Filter::GopherQuality(c),
                FilterConfig::GopherRepetition(c) => Filter::GopherRepetition(c),
                FilterConfig::Fineweb(c) => Filter::Fineweb(c),
                FilterConfig::Language(c) => Filter::Language(language::LanguageFilter::new(&c)?),
            });
        }
        Ok(Pipeline { names, filters })
    }

    /// From JSON: a list of `{"type": ..., "name": optional, ...parameters}` objects.
    pub fn from_json(json: &str) -> Result<Self, TextError> {
        let items: Vec<serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| TextError::Config(format!("not a JSON list of filters: {e}")))?;
        let mut configs = Vec::with_capacity(items.len());
        for (i, mut item) in items.into_iter().enumerate() {
            if !item.is_object() {
                return Err(TextError::Config(format!(
                    "filter {i}: expected an object, found {item}"
                )));
            }
            let obj = item.as_object_mut().expect("checked above");
            let name = match obj.remove("name") {
                Some(serde_json::Value::String(s)) => Some(s),
                None => None,
                Some(other) => {
                    return Err(TextError::Config(format!(
                        "filter {i}: name must be a string, found {other}"
                    )))
                }
            };
            let kind = obj.get("type").and_then(|t| t.as_str()).map(str::to_string);
            let cfg: FilterConfig = serde_json::from_value(item).map_err(|e| {
                TextError::Config(format!(
                    "filter {i} ({}): {e}",
                    kind.as_deref().unwrap_or("no type")
                ))
            })?;
            configs.push((name.or(kind).unwrap_or_default(), cfg));
        }
        Pipeline::new(configs)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Runs one document through the filters, counting into `stats` (one entry per filter).
    pub fn apply(&self, text: &str, stats: &mut [FilterStats]) -> Outcome {
        let mut current: Option<String> = None;
        for (i, (filter, st)) in self.filters.iter().zip(stats.iter_mut()).enumerate() {
            let t = current.as_deref().unwrap_or(text);
            st.docs_in += 1;
            st.bytes_in += t.len() as u64;
            match filter.apply(t, st) {
                Verdict::Keep => {}
                Verdict::Modified(new) => {
                    st.docs_modified += 1;
                    st.bytes_modified += t.len().saturating_sub(new.len()) as u64;
                    current = Some(new);
                }
                Verdict::Remove(rule) => {
                    st.doc_removed(&rule, t.len() as u64);
                    return Outcome::Removed { filter: i, rule };
                }
            }
        }
        Outcome::Kept(current)
    }

    /// Runs documents in parallel (on the gristmill pool); outcomes in input order, and the
    /// statistics of the batch.
    pub fn apply_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> (Vec<Outcome>, Vec<FilterStats>) {
        let empty = || vec![FilterStats::default(); self.filters.len()];
        crate::parallel::install(|| {
            let chunk = (texts.len() / (rayon::current_num_threads() * 4)).max(1);
            let parts: Vec<(Vec<Outcome>, Vec<FilterStats>)> = texts
                .par_chunks(chunk)
                .map(|docs| {
                    let mut stats = empty();
                    let outcomes = docs
                        .iter()
                        .map(|t| self.apply(t.as_ref(), &mut stats))
                        .collect();
                    (outcomes, stats)
                })
                .collect();
            let mut outcomes = Vec::with_capacity(texts.len());
            let mut stats = empty();
            for (o, s) in parts {
                outcomes.extend(o);
                for (acc, part) in stats.iter_mut().zip(s) {
                    acc.merge(part);
                }
            }
            (outcomes, stats)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_from_json() {
        let p = Pipeline::from_json(
            r#"[{"type": "max_length", "max_chars": 12}, {"type": "c4", "name": "clean", "min_num_sentences": 1, "min_words_per_line": 2}]"#,
        )
        .unwrap();
        assert_eq!(p.names(), ["max_length", "clean"]);
        let (out, stats) = p.apply_batch(&[
            "x".repeat(13),
            "Hi there.".to_string(),
            "Hi there.\nno".to_string(),
        ]);
        assert_eq!(
            out[0],
            Outcome::Removed {
                filter: 0,
                rule: "too_long".into()
            }
        );
        assert_eq!(out[1], Outcome::Kept(None));
        assert_eq!(out[2], Outcome::Kept(Some("Hi there.".to_string())));
        assert_eq!(stats[0].docs_in, 3);
        assert_eq!(stats[1].docs_in, 2);
        assert_eq!(stats[1].rules["no_terminal_punct"].lines, 1);
    }

    #[test]
    fn config_errors_name_the_filter() {
        let e = Pipeline::from_json(r#"[{"type": "c4", "min_words_per_lin": 3}]"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("filter 0 (c4)"), "{e}");
        assert!(e.to_string().contains("min_words_per_lin"), "{e}");
        let e = Pipeline::from_json(r#"[{"type": "nope"}]"#).err().unwrap();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(Pipeline::from_json("{}").is_err());
    }
}
