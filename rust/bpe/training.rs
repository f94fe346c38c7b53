//! A training run from start to end: count text, then merge in steps, then build the
//! vocabulary. It holds the settings' checks and the order of the stages, so that the Python
//! binding only converts values (`gristmill.Tokenizer.train` drives it).

use super::count::ChunkCounter;
use super::trainer::{Trainer, MAX_VOCAB};
use super::{BpeError, Pattern, Rank};
use rustc_hash::FxHashSet;

enum Stage {
    Counting(ChunkCounter),
    Merging(Trainer),
    /// Setting up the merges failed; the counts are gone.
    Failed,
}

/// What counting has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub texts: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub unique_chunks: usize,
}

/// One training run: `counter` while counting, `trainer` from the first merge on.
pub struct Training {
    stage: Stage,
    vocab_size: usize,
    specials: Vec<String>,
    pattern: String,
    min_frequency: u64,
    counted: Counted,
}

impl Training {
    /// A run for a vocabulary of `vocab_size` ids: 256 bytes, the merges, and the special
    /// tokens (cut out of the text, never learned).
    pub fn new(
        vocab_size: usize,
        pattern: &str,
        special_tokens: Vec<String>,
        min_frequency: u64,
    ) -> Result<Self, BpeError> {
        let mut seen = FxHashSet::default();
        if let Some(s) = special_tokens.iter().find(|s| !seen.insert(s.as_str())) {
            return Err(BpeError::Settings(format!(
                "special token {s:?} is listed twice"
            )));
        }
        let least = 256 + special_tokens.len();
        if vocab_size < least || vocab_size > MAX_VOCAB {
            return Err(BpeError::Settings(format!(
                "vocab_size must be between {least} (256 byte tokens + {} special tokens) \
                 and {MAX_VOCAB}, not {vocab_size}",
                special_tokens.len()
            )));
        }
        let counter = ChunkCounter::new(Pattern::new(pattern)?, &special_tokens)?;
        Ok(Training {
            stage: Stage::Counting(counter),
            vocab_size,
            specials: special_tokens,
            pattern: pattern.to_string(),
            min_frequency,
            counted: Counted::default(),
        })
    }

    /// The counter, while counting is still open.
    pub fn counter(&mut self) -> Result<&mut ChunkCounter, BpeError> {
        match &mut self.stage {
            Stage::Counting(c) => Ok(c),
            _ => Err(BpeError::Settings(
                "cannot count more text: merging has started".into(),
            )),
        }
    }

    /// Records what the counter has seen (call after each batch).
    pub fn note_counts(&mut self) {
        if let Stage::Counting(c) = &self.stage {
            self.counted = Counted {
                texts: c.n_texts(),
                chunks: c.n_chunks(),
                bytes: c.n_bytes(),
                unique_chunks: c.n_unique(),
            };
        }
    }

    /// The trainer; the first call ends counting and sets up the merges.
    pub fn trainer(&mut self) -> Result<&mut Trainer, BpeError> {
        if matches!(self.stage, Stage::Counting(_)) {
            self.note_counts();
            let Stage::Counting(counter) = std::mem::replace(&mut self.stage, Stage::Failed) else {
                unreachable!("matched just above")
            };
            let target = self.vocab_size - self.specials.len();
            self.stage = Stage::Merging(Trainer::new(
                counter.into_counts(),
                target,
                self.min_frequency,
            )?);
        }
        match &mut self.stage {
            Stage::Merging(t) => Ok(t),
            _ => Err(BpeError::Settings("training failed earlier".into())),
        }
    }

    /// Does up to `max_merges` merges; returns how many: 0 once training is complete.
    pub fn merge(&mut self, max_merges: usize) -> Result<usize, BpeError> {
        Ok(self.trainer()?.step(max_merges))
    }

    /// The trainer once merging has started.
    pub fn merging(&self) -> Option<&Trainer> {
        match &self.stage {
            Stage::Merging(t) => Some(t),
            _ => None,
        }
    }

    /// The special tokens with their ids: those in `given` (which must name each special
    /// token once), or else right after the `n_mergeable` tokens, in the order given.
    pub fn special_ids(
        &self,
        given: Option<Vec<(String, Rank)>>,
        n_mergeable: usize,
    ) -> Result<Vec<(String, Rank)>, BpeError> {
        let Some(given) = given else {
            let first = n_mergeable as Rank;
            return Ok(self.specials.iter().cloned().zip(first..).collect());
        };
        let mut got: Vec<&str> = given.iter().map(|(s, _)| s.as_str()).collect();
        let mut want: Vec<&str> = self.specials.iter().map(String::as_str).collect();
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            return Err(BpeError::Settings(format!(
                "special_ids must give one id to each special token {want:?}, got {got:?}"
            )));
        }
        Ok(given)
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn counted(&self) -> Counted {
        self.counted
    }

    /// Merges done so far.
    pub fn n_merges(&self) -> usize {
        self.merging().map_or(0, |t| t.merges().len())
    }

    /// Whether merging has finished (target size reached, no pair left, or min_frequency).
    pub fn is_done(&self) -> bool {
        self.merging().is_some_and(Trainer::is_done)
    }

    /// The number of merges asked for: vocab_size - 256 - special tokens.
    pub fn target_merges(&self) -> usize {
        self.vocab_size - 256 - self.specials.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specials(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn settings_are_checked() {
        let twice = Training::new(300, "gpt2", specials(&["<a>", "<a>"]), 2);
        assert!(matches!(twice, Err(BpeError::Settings(m)) if m.contains("listed twice")));
        let small = Training::new(256, "gpt2", specials(&["<a>"]), 2);
        assert!(matches!(small, Err(BpeError::Settings(m)) if m.contains("between 257")));
        assert!(matches!(
            Training::new(300, "(", vec![], 2),
            Err(BpeError::Pattern { .. })
        ));
    }

    #[test]
    fn stages_run_in_order() {
        let mut t = Training::new(262, "gpt2", specials(&["<|endoftext|>"]), 1).unwrap();
        assert_eq!(t.target_merges(), 5);
        t.counter()
            .unwrap()
            .add_texts(&["hello hello hello world world"])
            .unwrap();
        t.note_counts();
        assert_eq!(t.counted().texts, 1);
        assert_eq!(t.n_merges(), 0);
        assert!(!t.is_done());
        let mut done = 0;
        loop {
            let n = t.merge(2).unwrap();
            if n == 0 {
                break;
            }
            done += n;
        }
        assert_eq!(done, t.n_merges());
        assert!(t.is_done() && done <= 5);
        // Counting is closed once merging has started.
        assert!(t.counter().is_err());
    }

    #[test]
    fn special_ids_default_after_the_merges_or_as_given() {
        let t = Training::new(300, "gpt2", specials(&["<a>", "<b>"]), 2).unwrap();
        assert_eq!(
            t.special_ids(None, 290).unwrap(),
            vec![("<a>".to_string(), 290), ("<b>".to_string(), 291)]
        );
        let given = vec![("<b>".to_string(), 7), ("<a>".to_string(), 9)];
        assert_eq!(t.special_ids(Some(given.clone()), 290).unwrap(), given);
        let wrong = vec![("<a>".to_string(), 7)];
        assert!(t.special_ids(Some(wrong), 290).is_err());
    }
}
