//! A small rule-based sentence splitter for span dedup.
//!
//! A sentence ends at a line break, or after a run of terminal punctuation (`. ! ? …` and the
//! CJK full-width marks) plus any closing quotes or brackets, when whitespace or the end of
//! the text follows (CJK marks need no space). A period does not end a sentence after a
//! single letter (initials), after a common abbreviation (`Mr.`, `e.g.`, `etc.`), or when the
//! next word starts with a lower-case letter. Web text puts headings and menu items on lines
//! of their own, so each line is its own sentence even without punctuation.
//!
//! It is deliberately simpler than NLTK's punkt (used by C4) or spaCy's sentencizer (used by
//! datatrove): span dedup only needs the same text to split the same way everywhere.

const TERMINALS: &[char] = &['.', '!', '?', '…', '。', '！', '？', '‼', '⁇', '⁈', '⁉'];
const CJK_TERMINALS: &[char] = &['。', '！', '？'];
const CLOSERS: &[char] = &['"', '\'', '”', '’', '»', ')', ']', '}', '」', '』'];
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "fig",
    "al", "approx", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
    "sep", "sept", "oct", "nov", "dec", "gen", "gov", "sen", "rep", "rev", "vol", "pp", "cf",
];

/// Byte ranges `(start, end)` of the sentences of `text`: trimmed, non-empty, in order.
///
/// ```
/// use gristmill::dedup::sentences::sentence_spans;
/// let t = "Dr. Smith came. He left! Did he?\nMenu";
/// let s: Vec<&str> = sentence_spans(t).iter().map(|&(a, b)| &t[a..b]).collect();
/// assert_eq!(s, ["Dr. Smith came.", "He left!", "Did he?", "Menu"]);
/// ```
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0usize; // end of the last non-whitespace character
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\n' {
            if let Some(s) = start.take() {
                out.push((s, end));
            }
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        if start.is_none() {
            start = Some(i);
        }
        end = i + c.len_utf8();
        if !TERMINALS.contains(&c) {
            continue;
        }
        let run_start = i;
        let mut single_period = c == '.';
        let mut cjk = CJK_TERMINALS.contains(&c);
        while let Some(&(j, d)) = chars.peek() {
            if TERMINALS.contains(&d) || CLOSERS.contains(&d) {
                single_period &= CLOSERS.contains(&d);
                cjk |= CJK_TERMINALS.contains(&d);
                end = j + d.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let next = chars.peek().map(|&(_, d)| d);
        let at_break = match next {
            None => true,
            Some(d) => d.is_whitespace() || cjk,
        };
        if !at_break {
            continue;
        }
        if single_period && !ends_sentence_after_period(text, start.unwrap_or(0), run_start, end) {
            continue;
        }
        if let Some(s) = start.take() {
            out.push((s, end));
        }
    }
    if let Some(s) = start {
        out.push((s, end));
    }
    out
}

/// Whether the period at `dot` (a run of one period) ends the sentence begun at `sent_start`.
fn ends_sentence_after_period(text: &str, sent_start: usize, dot: usize, after: usize) -> bool {
    let before = &text[sent_start..dot];
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .next()
        .unwrap_or("");
    let mut letters = word.chars();
    if let (Some(first), None) = (letters.next(), letters.next()) {
        if first.is_alphabetic() {
            return false; // an initial: "J. R. R. Tolkien"
        }
    }
    if ABBREVIATIONS.contains(&word.to_lowercase().as_str()) {
        return false;
    }
    // "approx. five", "fig. 3 shows": a lower-case word or digit on the same line continues.
    let rest = &text[after..];
    let mut ahead = rest.chars().skip_while(|&c| c == ' ' || c == '\t');
    !matches!(ahead.next(), Some(c) if c.is_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(t: &str) -> Vec<&str> {
        sentence_spans(t).iter().map(|&(a, b)| &t[a..b]).collect()
    }

    #[test]
    fn basic_and_lines() {
        assert_eq!(split("One. Two! Three?"), ["One.", "Two!", "Three?"]);
        assert_eq!(
            split("Home\nAbout us\n\n  Contact  \n"),
            ["Home", "About us", "Contact"]
        );
        assert_eq!(split("   "), Vec::<&str>::new());
        assert_eq!(split("no end mark"), ["no end mark"]);
    }

    #[test]
    fn quotes_and_runs() {
        assert_eq!(
            split("He said \"stop!\" Then left..."),
            ["He said \"stop!\"", "Then left..."]
        );
        assert_eq!(split("Really?! Yes."), ["Really?!", "Yes."]);
    }

    #[test]
    fn abbreviations_initials_decimals() {
        assert_eq!(
            split("J. R. R. Tolkien wrote it. Mr. Baggins agreed."),
            ["J. R. R. Tolkien wrote it.", "Mr. Baggins agreed."]
        );
        assert_eq!(
            split("It is approx. five. Pi is 3.14 here."),
            ["It is approx. five.", "Pi is 3.14 here."]
        );
        assert_eq!(split("See e.g. this. Done."), ["See e.g. this.", "Done."]);
    }

    #[test]
    fn cjk() {
        assert_eq!(split("你好。再见！"), ["你好。", "再见！"]);
    }

    #[test]
    fn spans_are_char_boundaries() {
        let t = "Ça va? Très bien… Merci.";
        for (a, b) in sentence_spans(t) {
            assert!(t.is_char_boundary(a) && t.is_char_boundary(b));
        }
    }
}
