//! Sentence splitting shared by the filters: spaCy's rule-based sentencizer (what datatrove's
//! C4 filter counts sentences with) applied to the words of [`super::words`].
//!
//! How it splits: the text is a sequence of words and whitespace tokens (a whitespace run is a
//! token unless it is a single space after a word; a leading run always is). A sentence ends at
//! a token that is a single sentence-terminal character (`.` `!` `?` `。` ...), extended over
//! any following tokens made only of punctuation (closing quotes, brackets, more dots); the next
//! token that is neither starts a new sentence. So `Mr. Smith` stays one sentence (`Mr.` is one
//! word), `"Stop." He left.` is two, and `Wait... what` is one (`...` is one word, not `.`).

use super::chars::{is_punct_category, is_sentence_end};
use super::words::tokenize;
use std::ops::Range;

/// A token's role in sentence splitting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A single sentence-terminal character.
    End,
    /// Made only of punctuation (general category P).
    Punct,
    /// Anything else, whitespace tokens included.
    Other,
}

fn kind(token: &str) -> Kind {
    let mut chars = token.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if is_sentence_end(c) => Kind::End,
        _ if !token.is_empty() && token.chars().all(is_punct_category) => Kind::Punct,
        _ => Kind::Other,
    }
}

/// Calls `f(start, end, kind)` for each token of `text` in order (byte offsets).
fn for_each_token(text: &str, mut f: impl FnMut(usize, usize, Kind)) {
    for t in tokenize(text) {
        f(
            t.start,
            t.end,
            if t.space { Kind::Other } else { kind(&t.text) },
        );
    }
}

/// The number of sentences in `text` (0 for an empty text).
pub fn count_sentences(text: &str) -> usize {
    let mut count = 0;
    let mut seen_end = false;
    for_each_token(text, |_, _, k| {
        if count == 0 {
            count = 1;
        }
        if seen_end && k == Kind::Other {
            count += 1;
            seen_end = false;
        } else if k == Kind::End {
            seen_end = true;
        }
    });
    count
}

/// The sentences of `text` as byte ranges that partition it: each sentence runs to the end of
/// its last token, and the next one starts right there (so whitespace between sentences opens
/// the following sentence). The last range ends at the end of the text.
pub fn sentence_spans(text: &str) -> Vec<Range<usize>> {
    let mut ends = Vec::new();
    let mut seen_end = false;
    let mut last_end = 0;
    let mut any = false;
    for_each_token(text, |_, e, k| {
        if any && seen_end && k == Kind::Other {
            ends.push(last_end);
            seen_end = false;
        } else if k == Kind::End {
            seen_end = true;
        }
        any = true;
        last_end = e;
    });
    let mut spans = Vec::with_capacity(ends.len() + 1);
    let mut start = 0;
    for e in ends {
        spans.push(start..e);
        start = e;
    }
    spans.push(start..text.len());
    spans
}

/// The sentences of `text` as trimmed, non-empty byte ranges `(start, end)`, in order: the
/// ranges of [`sentence_spans`] without their surrounding whitespace. Span dedup keys and cuts
/// sentences with these, so it splits exactly as the filters count.
///
/// ```
/// use gristmill::text::sentences::trimmed_sentences;
/// let t = "Mr. Smith came. He left!  Did he?";
/// let s: Vec<&str> = trimmed_sentences(t).iter().map(|&(a, b)| &t[a..b]).collect();
/// assert_eq!(s, ["Mr. Smith came.", "He left!", "Did he?"]);
/// ```
pub fn trimmed_sentences(text: &str) -> Vec<(usize, usize)> {
    sentence_spans(text)
        .into_iter()
        .filter_map(|r| {
            let piece = &text[r.clone()];
            let body = piece.trim();
            if body.is_empty() {
                return None;
            }
            let start = r.start + (piece.len() - piece.trim_start().len());
            Some((start, start + body.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentences(text: &str) -> Vec<&str> {
        sentence_spans(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn splits_like_the_spacy_sentencizer() {
        let text = "Hello world. This is Mr. Smith! Is it?? Yes... ok. \"Quoted.\" Next.";
        assert_eq!(
            sentences(text),
            [
                "Hello world.",
                " This is Mr. Smith!",
                " Is it??",
                " Yes... ok. \"",
                "Quoted.\"",
                " Next."
            ]
        );
        assert_eq!(count_sentences(text), 6);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(count_sentences(""), 0);
        assert_eq!(count_sentences("no end mark"), 1);
        assert_eq!(count_sentences("One.  Two."), 2);
        assert_eq!(count_sentences("one two. three four. five six."), 3);
        // A capital initial keeps its dot, as in spaCy.
        assert_eq!(count_sentences("A. B. C."), 1);
        assert_eq!(sentences(""), [""]);
        assert!(trimmed_sentences(" \n ").is_empty());
        let t = "One.\n\nTwo?  ";
        assert_eq!(trimmed_sentences(t), [(0, 4), (6, 10)]);
    }
}
