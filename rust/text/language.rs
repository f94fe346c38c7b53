//! Language identification: keeps documents written in one of the chosen languages.
//!
//! Detection uses the `whatlang` crate: pure Rust, its trigram model is compiled into the
//! crate, so nothing is downloaded at run time and no native library is needed; it is
//! deterministic (same text, same answer, on any thread). Rules, in order:
//! 1. `wrong_language`: the detected language is not in `languages`;
//! 2. `low_confidence`: whatlang's confidence is below `min_score`. Text with no letters
//!    (nothing to detect) counts as confidence 0.
//!
//! whatlang's confidence is not fastText's probability, but it plays the same part: 1.0 when
//! the best language clearly beats the runner-up, less when they are close (short texts,
//! mixed languages). The default 0.65 is FineWeb's threshold for English (fastText score ≥ 0.65);
//! on real English web text whatlang gives 1.0 to nearly every page, so the threshold mostly
//! removes short or mixed pages.
//!
//! The whole text is passed to whatlang, with no cap on its length: detection is linear in the
//! text (a 190,000-character page, C4's longest, takes about 4 ms on one core, against about
//! 0.4 ms for a typical 5 kB page), so long pages cost no more per byte than short ones.

use super::{TextError, Verdict};
use serde::{Deserialize, Serialize};
use whatlang::{Detector, Lang};

/// Parameters of the language filter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanguageConfig {
    /// ISO 639-3 codes of the languages to keep (`"eng"`, `"deu"`, `"fra"`, ...).
    pub languages: Vec<String>,
    /// Lowest whatlang confidence (0 to 1) at which a document is kept.
    pub min_score: f64,
}

impl Default for LanguageConfig {
    fn default() -> Self {
        LanguageConfig {
            languages: vec!["eng".to_string()],
            min_score: 0.65,
        }
    }
}

/// A configured language filter.
pub struct LanguageFilter {
    keep: Vec<Lang>,
    min_score: f64,
    detector: Detector,
}

impl LanguageFilter {
    /// Checks the configuration: known language codes, a non-empty list, a score in [0, 1].
    pub fn new(cfg: &LanguageConfig) -> Result<Self, TextError> {
        if cfg.languages.is_empty() {
            return Err(TextError::Config(
                "language: `languages` is empty; expected ISO 639-3 codes such as \"eng\"".into(),
            ));
        }
        let keep = cfg
            .languages
            .iter()
            .map(|code| {
                Lang::from_code(code.to_ascii_lowercase()).ok_or_else(|| {
                    TextError::Config(format!(
                        "language: unknown language code {code:?} (expected an ISO 639-3 code \
                         whatlang knows, e.g. \"eng\", \"deu\", \"fra\", \"spa\", \"rus\")"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(0.0..=1.0).contains(&cfg.min_score) {
            return Err(TextError::Config(format!(
                "language: min_score must be between 0 and 1, found {}",
                cfg.min_score
            )));
        }
        Ok(LanguageFilter {
            keep,
            min_score: cfg.min_score,
            detector: Detector::new(),
        })
    }

    /// Detects the language of `text` and applies the rules.
    pub fn apply(&self, text: &str) -> Verdict {
        match self.detector.detect(text) {
            Some(info) if !self.keep.contains(&info.lang()) => Verdict::remove("wrong_language"),
            Some(info) if info.confidence() >= self.min_score => Verdict::Keep,
            _ if self.min_score <= 0.0 => Verdict::Keep,
            _ => Verdict::remove("low_confidence"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENGLISH: &str = "The committee met on Tuesday to discuss the new budget. Most members \
        agreed that the library should stay open longer in the evenings, and the proposal passed.";
    const GERMAN: &str = "Der Ausschuss traf sich am Dienstag, um den neuen Haushalt zu besprechen. \
        Die meisten Mitglieder waren sich einig, dass die Bibliothek abends länger geöffnet bleiben soll.";

    fn filter(languages: &[&str], min_score: f64) -> LanguageFilter {
        LanguageFilter::new(&LanguageConfig {
            languages: languages.iter().map(|s| s.to_string()).collect(),
            min_score,
        })
        .unwrap()
    }

    #[test]
    fn keeps_chosen_languages() {
        let eng = filter(&["eng"], 0.65);
        assert_eq!(eng.apply(ENGLISH), Verdict::Keep);
        assert_eq!(eng.apply(GERMAN), Verdict::remove("wrong_language"));
        let both = filter(&["eng", "DEU"], 0.65);
        assert_eq!(both.apply(GERMAN), Verdict::Keep);
    }

    #[test]
    fn threshold_and_undetectable_text() {
        assert_eq!(
            filter(&["eng"], 0.65).apply("1234 %%% ..."),
            Verdict::remove("low_confidence")
        );
        assert_eq!(filter(&["eng"], 0.0).apply("1234 %%% ..."), Verdict::Keep);
        // A mixed sentence is English, but not with full confidence; detection is deterministic.
        let mixed = "The cat sat on the mat with el perro.";
        assert_eq!(filter(&["eng"], 0.65).apply(mixed), Verdict::Keep);
        assert_eq!(
            filter(&["eng"], 1.0).apply(mixed),
            Verdict::remove("low_confidence")
        );
    }

    #[test]
    fn config_errors() {
        for (langs, score) in [(vec!["english"], 0.5), (vec![], 0.5), (vec!["eng"], 1.5)] {
            let cfg = LanguageConfig {
                languages: langs.into_iter().map(String::from).collect(),
                min_score: score,
            };
            assert!(LanguageFilter::new(&cfg).is_err());
        }
    }
}
