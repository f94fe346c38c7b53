//! Word splitting shared by every filter: the rules of spaCy's English tokenizer, which is
//! what datatrove's Gopher, FineWeb and C4 filters count words and sentences with.
//!
//! How a text is split:
//! 1. Runs of whitespace (Python `str.isspace`) separate chunks; whitespace is never a word.
//! 2. A chunk that is a known special case is split as listed (contractions such as `don't` →
//!    `do` `n't`, `I'm` → `I` `'m`, `cannot` → `can` `not`; abbreviations kept whole, such as
//!    `Mr.`, `e.g.`, `U.S.`-style initials are not special but keep their dots, see 4).
//! 3. Otherwise prefixes and suffixes are peeled off repeatedly, stopping early when what is
//!    left is a special case. Prefixes: opening punctuation and quotes, `§ % = — –`, `+` not
//!    before a digit, a run of dots, currency signs, symbols. Suffixes: closing punctuation and
//!    quotes, `'s`, symbols, a run of dots, `.` after a lowercase letter, digit, punctuation or
//!    two capitals, `+`, a currency sign or a unit (`km`, `kg`, `%`, ...) after a digit.
//! 4. What is left is one word if it is a URL, else it is split at infixes: a run of dots, `…`,
//!    a symbol, `+ - * ^` between digits, `.` between a lowercase and an uppercase letter, `,`
//!    between letters, a hyphen (`- – — -- --- —— ~`) after a letter or digit and before a
//!    letter, and `: < > = /` after a letter or digit and before a letter.
//!
//! Character classes are defined from Unicode general categories where spaCy lists scripts by
//! hand, so texts in unusual scripts may split slightly differently; English text splits the
//! same way (see `tests/test_prep.py` for the measured agreement).

use super::chars::{
    is_alpha, is_lower_or_uncased, is_symbol_other, is_upper_or_uncased, py_isspace,
};
use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::sync::OnceLock;

/// A token: a word, or a whitespace token (a whitespace run other than the single space after
/// a word), with its byte span in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    pub start: usize,
    pub end: usize,
    pub text: Cow<'a, str>,
    pub space: bool,
}

/// The tokens of `text`, whitespace tokens included, in order.
pub fn tokenize(text: &str) -> Vec<Token<'_>> {
    let base = text.as_ptr() as usize;
    let bytes = text.as_bytes();
    let mut out: Vec<Token<'_>> = Vec::with_capacity(text.len() / 4 + 1);
    let mut i = 0;
    while i < text.len() {
        let c = text[i..].chars().next().expect("in bounds");
        if py_isspace(c) {
            let end = i + text[i..]
                .find(|c: char| !py_isspace(c))
                .unwrap_or(text.len() - i);
            // One space after a word only separates; any other run is a token.
            let start = if i > 0 && bytes[i] == b' ' { i + 1 } else { i };
            if start < end {
                out.push(Token {
                    start,
                    end,
                    text: Cow::Borrowed(&text[start..end]),
                    space: true,
                });
            }
            i = end;
        } else {
            let end = i + text[i..].find(py_isspace).unwrap_or(text.len() - i);
            split_chunk(&text[i..end], true, &mut |w: &str| {
                let start = w.as_ptr() as usize - base;
                out.push(Token {
                    start,
                    end: start + w.len(),
                    text: Cow::Borrowed(&text[start..start + w.len()]),
                    space: false,
                });
            });
            i = end;
        }
    }
    merge_special_phrases(text, &mut out);
    out
}

/// The words of `text` (see the module documentation for how it splits).
pub fn split_words(text: &str) -> Vec<Cow<'_, str>> {
    tokenize(text)
        .into_iter()
        .filter(|t| !t.space)
        .map(|t| t.text)
        .collect()
}

/// Calls `f` with each word of `text`, in order.
pub fn for_each_word(text: &str, mut f: impl FnMut(&str)) {
    for t in tokenize(text) {
        if !t.space {
            f(&t.text);
        }
    }
}

/// Special cases that the affix rules would split (`Mr.` → `Mr` `.`, `):` → `)` `:`) are also
/// found as runs of adjacent tokens inside a chunk and put back together (spaCy runs a phrase
/// matcher over the tokens for this): `to):` gives `to` `):`. Of overlapping matches the
/// longest wins, then the leftmost.
fn merge_special_phrases<'a>(text: &'a str, tokens: &mut Vec<Token<'a>>) {
    let phrases = phrases();
    let mut matches: Vec<(usize, usize, &'static str)> = Vec::new();
    for i in 0..tokens.len() {
        // A phrase is at least two tokens with nothing between them: most words are followed
        // by whitespace and need no look-up.
        if tokens[i].space
            || tokens
                .get(i + 1)
                .is_none_or(|next| next.start != tokens[i].end)
        {
            continue;
        }
        let Some(candidates) = phrases.get(tokens[i].text.as_ref()) else {
            continue;
        };
        for (phrase, key) in candidates {
            let end = i + phrase.len();
            if end <= tokens.len()
                && tokens[i..end]
                    .iter()
                    .zip(phrase)
                    .all(|(t, p)| !t.space && t.text == p.as_str())
                && tokens[i..end].windows(2).all(|w| w[0].end == w[1].start)
            {
                matches.push((i, end, key.as_str()));
            }
        }
    }
    if matches.is_empty() {
        return;
    }
    // Longest first, then leftmost; skip a match whose first or last token is taken.
    matches.sort_by(|a, b| (b.1 - b.0).cmp(&(a.1 - a.0)).then(a.0.cmp(&b.0)));
    let mut taken = vec![false; tokens.len()];
    let mut kept = Vec::new();
    for (s, e, key) in matches {
        if !taken[s] && !taken[e - 1] {
            kept.push((s, e, key));
        }
        taken[s..e].iter_mut().for_each(|t| *t = true);
    }
    kept.sort_by_key(|m| m.0);
    let old = std::mem::take(tokens);
    let mut kept = kept.into_iter().peekable();
    let mut i = 0;
    while i < old.len() {
        match kept.peek() {
            Some(&(s, e, key)) if s == i => {
                kept.next();
                let (start, end) = (old[s].start, old[e - 1].end);
                let contiguous = old[s..e].windows(2).all(|w| w[0].end == w[1].start);
                let pieces = specials()
                    .get(key)
                    .expect("phrases come from the special cases");
                let mut at = 0;
                for &len in pieces {
                    let piece: Cow<'a, str> = if contiguous {
                        Cow::Borrowed(&text[start + at..start + at + len])
                    } else {
                        Cow::Owned(key[at..at + len].to_string())
                    };
                    let (ps, pe) = if contiguous {
                        (start + at, start + at + len)
                    } else {
                        (start, end)
                    };
                    tokens.push(Token {
                        start: ps,
                        end: pe,
                        text: piece,
                        space: false,
                    });
                    at += len;
                }
                i = e;
            }
            _ => {
                tokens.push(old[i].clone());
                i += 1;
            }
        }
    }
}

/// Special cases as the token runs the affix rules make of them: first token → (tokens, key).
type Phrases = FxHashMap<String, Vec<(Vec<String>, String)>>;

fn phrases() -> &'static Phrases {
    static PHRASES: OnceLock<Phrases> = OnceLock::new();
    PHRASES.get_or_init(|| {
        let mut m = Phrases::default();
        let mut keys: Vec<&String> = specials().keys().collect();
        keys.sort();
        for key in keys {
            let mut pieces: Vec<String> = Vec::new();
            split_chunk(key, false, &mut |w: &str| pieces.push(w.to_string()));
            if pieces.len() > 1 {
                m.entry(pieces[0].clone())
                    .or_default()
                    .push((pieces, key.clone()));
            }
        }
        m
    })
}

/// A chunk spaCy would keep whole (or split by its special-case table) without running the
/// affix rules: plain ASCII letters or plain ASCII digits.
fn is_plain(chunk: &str) -> bool {
    let b = chunk.as_bytes();
    b.iter().all(u8::is_ascii_alphabetic) || b.iter().all(u8::is_ascii_digit)
}

/// Splits one whitespace-free chunk, calling `f` with slices of it. Without `use_specials`
/// the special cases are ignored (how spaCy finds which of them the affix rules would split).
fn split_chunk(chunk: &str, use_specials: bool, f: &mut dyn FnMut(&str)) {
    static NONE: OnceLock<FxHashMap<String, Vec<usize>>> = OnceLock::new();
    let specials = if use_specials {
        specials()
    } else {
        NONE.get_or_init(FxHashMap::default)
    };
    if let Some(pieces) = specials.get(chunk) {
        emit_pieces(chunk, pieces, f);
        return;
    }
    if is_plain(chunk) {
        f(chunk);
        return;
    }
    let mut prefixes: Vec<&str> = Vec::new();
    let mut suffixes: Vec<&str> = Vec::new();
    let mut rest = chunk;
    let mut last_len = usize::MAX;
    while !rest.is_empty() && rest.len() != last_len {
        if specials.contains_key(rest) {
            break;
        }
        last_len = rest.len();
        let pre = prefix_len(rest);
        if pre > 0 {
            let minus_pre = &rest[pre..];
            if !minus_pre.is_empty() && specials.contains_key(minus_pre) {
                prefixes.push(&rest[..pre]);
                rest = minus_pre;
                break;
            }
        }
        let suf = suffix_len(&rest[pre..]);
        if suf > 0 {
            let minus_suf = &rest[..rest.len() - suf];
            if !minus_suf.is_empty() && specials.contains_key(minus_suf) {
                suffixes.push(&rest[rest.len() - suf..]);
                rest = minus_suf;
                break;
            }
        }
        if pre > 0 && suf > 0 {
            prefixes.push(&rest[..pre]);
            suffixes.push(&rest[rest.len() - suf..]);
            rest = &rest[pre..rest.len() - suf];
        } else if pre > 0 {
            prefixes.push(&rest[..pre]);
            rest = &rest[pre..];
        } else if suf > 0 {
            suffixes.push(&rest[rest.len() - suf..]);
            rest = &rest[..rest.len() - suf];
        }
    }
    for p in prefixes {
        f(p);
    }
    if !rest.is_empty() {
        if let Some(pieces) = specials.get(rest) {
            emit_pieces(rest, pieces, f);
        } else if is_url(rest) {
            f(rest);
        } else {
            split_infixes(rest, f);
        }
    }
    for s in suffixes.into_iter().rev() {
        f(s);
    }
}

fn emit_pieces(s: &str, pieces: &[usize], f: &mut dyn FnMut(&str)) {
    let mut at = 0;
    for &len in pieces {
        f(&s[at..at + len]);
        at += len;
    }
}

// ---- character classes ----------------------------------------------------------------------

fn is_punct_char(c: char) -> bool {
    matches!(
        c,
        '…' | ','
            | ':'
            | ';'
            | '!'
            | '?'
            | '¿'
            | '؟'
            | '¡'
            | '('
            | ')'
            | '['
            | ']'
            | '{'
            | '}'
            | '<'
            | '>'
            | '_'
            | '#'
            | '*'
            | '&'
            | '。'
            | '？'
            | '！'
            | '，'
            | '、'
            | '；'
            | '：'
            | '～'
            | '·'
            | '।'
            | '،'
            | '۔'
            | '؛'
            | '٪'
    )
}

fn is_quote(c: char) -> bool {
    matches!(
        c,
        '\'' | '"'
            | '”'
            | '“'
            | '`'
            | '‘'
            | '´'
            | '’'
            | '‚'
            | ','
            | '„'
            | '»'
            | '«'
            | '「'
            | '」'
            | '『'
            | '』'
            | '（'
            | '）'
            | '〔'
            | '〕'
            | '【'
            | '】'
            | '《'
            | '》'
            | '〈'
            | '〉'
            | '\u{2329}'
            | '\u{232a}'
            | '⟦'
            | '⟧'
    )
}

fn is_icon(c: char) -> bool {
    !c.is_ascii() && is_symbol_other(c)
}

fn is_currency_char(c: char) -> bool {
    matches!(
        c,
        '$' | '£' | '€' | '¥' | '฿' | '﷼' | '\u{20a0}'..='\u{20bf}'
    )
}

const MULTI_CURRENCY: [&str; 3] = ["US$", "C$", "A$"];

const UNITS: &[&str] = &[
    "km", "km²", "km³", "m", "m²", "m³", "dm", "dm²", "dm³", "cm", "cm²", "cm³", "mm", "mm²",
    "mm³", "ha", "µm", "nm", "yd", "in", "ft", "kg", "g", "mg", "µg", "t", "lb", "oz", "m/s",
    "km/h", "kmh", "mph", "hPa", "Pa", "mbar", "mb", "MB", "kb", "KB", "gb", "GB", "tb", "TB", "T",
    "G", "M", "K", "%", "км", "км²", "км³", "м", "м²", "м³", "дм", "дм²", "дм³", "см", "см²",
    "см³", "мм", "мм²", "мм³", "нм", "кг", "г", "мг", "м/с", "км/ч", "кПа", "Па", "мбар", "Кб",
    "КБ", "кб", "Мб", "МБ", "мб", "Гб", "ГБ", "гб", "Тб", "ТБ",
];

/// Characters after which a final `.` is split off: digits, lowercase letters, `% ² - +`,
/// punctuation and quotes.
fn splits_following_dot(c: char) -> bool {
    c.is_ascii_digit()
        || is_lower_or_uncased(c)
        || matches!(c, '%' | '²' | '-' | '+' | '|' | '(' | '?' | ':' | ')')
        || is_punct_char(c)
        || is_quote(c)
}

fn is_hyphen_start(s: &str) -> Option<usize> {
    // Alternatives in spaCy's order: the first whose lookahead holds wins.
    for h in ["-", "–", "—", "--", "---", "——", "~"] {
        if let Some(after) = s.strip_prefix(h) {
            if after.chars().next().is_some_and(is_alpha) {
                return Some(h.len());
            }
        }
    }
    None
}

// ---- affixes --------------------------------------------------------------------------------

/// Byte length of the prefix to split off `s`, or 0.
fn prefix_len(s: &str) -> usize {
    let mut chars = s.chars();
    let Some(c) = chars.next() else { return 0 };
    match c {
        '§' | '%' | '=' | '—' | '–' => c.len_utf8(),
        '+' => match chars.next() {
            Some(d) if d.is_ascii_digit() => 0,
            _ => 1,
        },
        '.' => {
            let run = s.bytes().take_while(|&b| b == b'.').count();
            if run >= 2 {
                run
            } else {
                0
            }
        }
        c if is_punct_char(c) || is_quote(c) || is_currency_char(c) || is_icon(c) => c.len_utf8(),
        'U' | 'C' | 'A' => MULTI_CURRENCY
            .iter()
            .find(|m| s.starts_with(*m))
            .map_or(0, |m| m.len()),
        _ => 0,
    }
}

fn last_char_before(s: &str, end: usize) -> Option<char> {
    s[..end].chars().next_back()
}

/// Byte length of the suffix to split off `s`, or 0. Among the suffix rules that match up to
/// the end, the one starting furthest left wins (Python's `re.search` with `$`-anchored
/// alternatives).
fn suffix_len(s: &str) -> usize {
    let Some(last) = s.chars().next_back() else {
        return 0;
    };
    let n = s.len();
    let last_start = n - last.len_utf8();
    let mut start = n;
    let mut take = |i: usize| start = start.min(i);
    let before_last = last_char_before(s, last_start);
    if is_punct_char(last) || is_quote(last) || is_icon(last) || matches!(last, '—' | '–') {
        take(last_start);
    }
    if s.ends_with("……") {
        take(n - "……".len());
    }
    let dots = s.bytes().rev().take_while(|&b| b == b'.').count();
    if dots >= 2 {
        take(n - dots);
    }
    for q in ["'s", "'S", "’s", "’S"] {
        if s.ends_with(q) {
            take(n - q.len());
        }
    }
    if last == '+' && before_last.is_some_and(|c| c.is_ascii_digit()) {
        take(last_start);
    }
    if last == '.' {
        if let Some(p) = before_last {
            let p2 = last_char_before(s, last_start - p.len_utf8());
            let after_degree = p2 == Some('°') && matches!(p, 'F' | 'f' | 'C' | 'c' | 'K' | 'k');
            let two_capitals = is_upper_or_uncased(p) && p2.is_some_and(is_upper_or_uncased);
            if after_degree || splits_following_dot(p) || two_capitals {
                take(last_start);
            }
        }
    }
    let after_digit = |suffix: &str| {
        s.ends_with(suffix)
            && last_char_before(s, n - suffix.len()).is_some_and(|c| c.is_ascii_digit())
    };
    if is_currency_char(last) && after_digit(&s[last_start..]) {
        take(last_start);
    }
    // Units and multi-letter currencies only follow a digit.
    if s.bytes().any(|b| b.is_ascii_digit()) {
        for m in MULTI_CURRENCY {
            if after_digit(m) {
                take(n - m.len());
            }
        }
        for u in UNITS {
            if after_digit(u) {
                take(n - u.len());
            }
        }
    }
    n - start
}

// ---- infixes --------------------------------------------------------------------------------

fn split_infixes(s: &str, f: &mut dyn FnMut(&str)) {
    let mut start = 0;
    let mut i = 0;
    let mut prev: Option<char> = None;
    while i < s.len() {
        let c = s[i..].chars().next().expect("in bounds");
        let m = infix_at(s, i, c, prev);
        match m {
            Some(len) if i > 0 => {
                if i != start {
                    f(&s[start..i]);
                }
                f(&s[i..i + len]);
                start = i + len;
                prev = s[..i + len].chars().next_back();
                i += len;
            }
            Some(len) => {
                // A match at the very start is not a split point.
                prev = s[..i + len].chars().next_back();
                i += len;
            }
            None => {
                prev = Some(c);
                i += c.len_utf8();
            }
        }
    }
    if start < s.len() {
        f(&s[start..]);
    }
}

/// Byte length of an infix starting at `i` (whose first char is `c`, preceded by `prev`).
fn infix_at(s: &str, i: usize, c: char, prev: Option<char>) -> Option<usize> {
    let rest = &s[i..];
    let next = || rest[c.len_utf8()..].chars().next();
    if c == '.' {
        let run = rest.bytes().take_while(|&b| b == b'.').count();
        if run >= 2 {
            return Some(run);
        }
    }
    if c == '…' || is_icon(c) {
        return Some(c.len_utf8());
    }
    let prev_digit = prev.is_some_and(|p| p.is_ascii_digit());
    if prev_digit
        && matches!(c, '+' | '-' | '*' | '^')
        && next().is_some_and(|n| n.is_ascii_digit() || n == '-')
    {
        return Some(1);
    }
    if c == '.'
        && prev.is_some_and(|p| is_lower_or_uncased(p) || is_quote(p))
        && next().is_some_and(|n| is_upper_or_uncased(n) || is_quote(n))
    {
        return Some(1);
    }
    let prev_alpha = prev.is_some_and(is_alpha);
    if c == ',' && prev_alpha && next().is_some_and(is_alpha) {
        return Some(1);
    }
    if prev_alpha || prev_digit {
        if let Some(len) = is_hyphen_start(rest) {
            return Some(len);
        }
        if matches!(c, ':' | '<' | '>' | '=' | '/') && next().is_some_and(is_alpha) {
            return Some(1);
        }
    }
    None
}

// ---- URLs -----------------------------------------------------------------------------------

fn is_url(s: &str) -> bool {
    static URL: OnceLock<regex::Regex> = OnceLock::new();
    if !s.contains('.') {
        return false;
    }
    let re = URL.get_or_init(|| {
        let label = r"[A-Za-z0-9\x{a1}-\x{ffff}]";
        let label_rest = r"[A-Za-z0-9\x{a1}-\x{ffff}_-]";
        regex::Regex::new(&format!(
            r"^(?:[\w+\-.]{{2,}}://)?(?:\S+(?::\S*)?@)?(?:(?:{label}{label_rest}{{0,62}})?{label}\.)+[\p{{Ll}}\p{{Lo}}\p{{Lm}}]{{2,63}}(?::\d{{2,5}})?(?:[/?#]\S*)?$"
        ))
        .expect("valid URL pattern")
    });
    re.is_match(s)
}

// ---- special cases --------------------------------------------------------------------------

/// Chunks split by a fixed rule: special case → byte lengths of its pieces.
fn specials() -> &'static FxHashMap<String, Vec<usize>> {
    static SPECIALS: OnceLock<FxHashMap<String, Vec<usize>>> = OnceLock::new();
    SPECIALS.get_or_init(build_specials)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Words kept whole although the affix rules would split them.
const WHOLE: &[&str] = &[
    // titles, companies, months
    "Mr.",
    "Mrs.",
    "Ms.",
    "Dr.",
    "Prof.",
    "Rev.",
    "Gen.",
    "Gov.",
    "Sen.",
    "Rep.",
    "Adm.",
    "Jr.",
    "St.",
    "Mt.",
    "Messrs.",
    "Co.",
    "co.",
    "Corp.",
    "Inc.",
    "Ltd.",
    "Bros.",
    "Jan.",
    "Feb.",
    "Mar.",
    "Apr.",
    "Jun.",
    "Jul.",
    "Aug.",
    "Sep.",
    "Sept.",
    "Oct.",
    "Nov.",
    "Dec.",
    // US states
    "Ak.",
    "Ala.",
    "Ariz.",
    "Ark.",
    "Calif.",
    "Colo.",
    "Conn.",
    "Del.",
    "Fla.",
    "Ga.",
    "Ia.",
    "Id.",
    "Ill.",
    "Ind.",
    "Kan.",
    "Kans.",
    "Ky.",
    "La.",
    "Mass.",
    "Md.",
    "Mich.",
    "Minn.",
    "Miss.",
    "Mo.",
    "Mont.",
    "Neb.",
    "Nebr.",
    "Nev.",
    "Okla.",
    "Ore.",
    "Pa.",
    "Tenn.",
    "Va.",
    "Wash.",
    "Wis.",
    "D.C.",
    "N.C.",
    "N.D.",
    "N.H.",
    "N.J.",
    "N.M.",
    "N.Y.",
    "S.C.",
    // Latin and other dotted abbreviations
    "Ph.D.",
    "e.g.",
    "E.g.",
    "E.G.",
    "i.e.",
    "I.e.",
    "I.E.",
    "a.m.",
    "p.m.",
    "vs.",
    "v.s.",
    "ä.",
    "ö.",
    "ü.",
    // words with inner punctuation
    "C++",
    "and/or",
    "w/o",
    "''",
    "'",
    "’",
    "’’",
    "o'clock",
    "O'clock",
    "o’clock",
    "O’clock",
    "ma'am",
    "Ma'am",
    "ma’am",
    "Ma’am",
    // clitics on their own
    "'s",
    "'S",
    "’s",
    "’S",
    "‘s",
    "‘S",
    "'d",
    "’d",
    "'ll",
    "’ll",
    "'re",
    "’re",
    "'em",
    "’em",
    // placeholders some corpora use
    "<space>",
];

/// Emoticons kept whole: faces read left to right (eyes, optional nose or tear, mouth), the
/// same mirrored, and a few others.
fn emoticons() -> Vec<String> {
    let mut out = Vec::new();
    let mouths = [
        ")", "))", ")))", "(", "((", "(((", "()", "*", "/", "0", "3", ">", "D", "O", "P", "X", "]",
        "o", "p", "x", "|", "}",
    ];
    for nose in ["", "-"] {
        for m in mouths {
            out.push(format!(":{nose}{m}"));
        }
    }
    for tear in ["'", "’"] {
        for nose in ["", "-"] {
            out.push(format!(":{tear}{nose}("));
            out.push(format!(":{tear}{nose})"));
        }
    }
    for face in [
        ":1", ":o)", ";)", ";-)", ";D", ";-D", ";_;", "=)", "=(", "=/", "=3", "=D", "=[", "=]",
        "=|", "8)", "8-)", "8D", "8-D", "(:", "(-:", "(;", "(-;", "(=", "(-8", "):", ")-:", "[:",
        "[-:", "[=", "]=", ">:(", ">:o", "<3", "<33", "<333", "</3", "XD", "XDD", "xD", "xDD",
        "^_^", "^__^", "^___^", "-_-", "-__-", "._.", "0.0", "0.o", "o.0", "0_0", "0_o", "o_0",
        "o.o", "o.O", "O.o", "O.O", "o_o", "o_O", "O_o", "O_O", "v.v", "V.V", "v_v", "V_V", "<.<",
        ">.<", ">.>", "@_@", "(^_^)", "(>_<)", "(*_*)", "(-_-)", "(._.)",
    ] {
        out.push(face.to_string());
    }
    out
}

/// Dropped-letter forms kept whole, with an apostrophe or without (`doin'`, `doin`).
const DROPPED_G: &[&str] = &[
    "doin", "goin", "havin", "lovin", "nothin", "nuthin", "somethin", "ol",
];

/// Clitics that open a word (`'cause`, `'bout`).
const OPENING_CLITICS: &[&str] = &["cause", "cos", "coz", "cuz", "bout", "nuff"];

/// Verbs taking `n't`, as written before it (`ca` of `can't`, `wo` of `won't`).
const NEGATED: &[&str] = &[
    "do", "does", "did", "is", "are", "was", "were", "has", "have", "had", "could", "would",
    "should", "might", "must", "need", "dare", "ca", "wo", "sha", "ai", "ought",
];

/// Words taking clitic verbs (`you'll`, `they're`), with the clitics each takes.
const CLITIC_HOSTS: &[(&str, &[&str])] = &[
    ("i", &["m", "ll", "d", "ve"]),
    ("you", &["ll", "d", "ve", "re"]),
    ("we", &["ll", "d", "ve", "re"]),
    ("they", &["ll", "d", "ve", "re"]),
    ("he", &["ll", "d"]),
    ("she", &["ll", "d"]),
    ("it", &["ll", "d"]),
    ("who", &["ll", "d", "ve", "re"]),
    ("what", &["ll", "d", "ve", "re"]),
    ("where", &["ll", "d", "ve", "re"]),
    ("when", &["ll", "d", "ve", "re"]),
    ("why", &["ll", "d", "ve", "re"]),
    ("how", &["ll", "d", "ve", "re"]),
    ("there", &["ll", "d", "ve", "re"]),
    ("that", &["ll", "d", "ve", "re"]),
    ("this", &["ll", "d", "ve", "re"]),
    ("these", &["ll", "d", "ve", "re"]),
    ("those", &["ll", "d", "ve", "re"]),
    ("could", &["ve"]),
    ("would", &["ve"]),
    ("should", &["ve"]),
    ("might", &["ve"]),
    ("must", &["ve"]),
];

/// Spellings without the apostrophe that are ordinary words, so never split.
const NOT_CONTRACTIONS: &[&str] = &[
    "were", "well", "hell", "shell", "shed", "its", "ill", "whore",
];

/// Hosts whose `'s` is also written without the apostrophe (`whats`, `theres`).
const S_WITHOUT_APOSTROPHE: &[&str] = &["he", "she", "what", "that", "there", "who"];

fn build_specials() -> FxHashMap<String, Vec<usize>> {
    let mut m: FxHashMap<String, Vec<usize>> = FxHashMap::default();
    let mut add = |pieces: &[&str]| {
        let key: String = pieces.concat();
        m.entry(key)
            .or_insert_with(|| pieces.iter().map(|p| p.len()).collect());
    };
    for c in 'a'..='z' {
        add(&[&format!("{c}.")]);
    }
    for w in WHOLE {
        add(&[w]);
    }
    for e in emoticons() {
        add(&[&e]);
    }
    for w in DROPPED_G {
        for form in [w.to_string(), capitalize(w)] {
            for tail in ["", "'", "’"] {
                add(&[&format!("{form}{tail}")]);
            }
        }
    }
    for w in OPENING_CLITICS {
        for form in [w.to_string(), capitalize(w)] {
            for apos in ["'", "’"] {
                add(&[&format!("{apos}{form}")]);
            }
        }
    }
    for host in NEGATED {
        for host in [host.to_string(), capitalize(host)] {
            for neg in ["n't", "n’t", "nt"] {
                add(&[&host, neg]);
            }
        }
    }
    for (host, clitics) in CLITIC_HOSTS {
        let forms = if *host == "i" {
            vec!["i".to_string(), "I".to_string()]
        } else {
            vec![host.to_string(), capitalize(host)]
        };
        for form in &forms {
            for clitic in clitics.iter() {
                for apos in ["'", "’"] {
                    add(&[form, &format!("{apos}{clitic}")]);
                }
                let bare = format!("{form}{clitic}");
                if !NOT_CONTRACTIONS.contains(&bare.to_lowercase().as_str()) {
                    add(&[form, clitic]);
                }
            }
            if S_WITHOUT_APOSTROPHE.contains(host) {
                add(&[form, "s"]);
            }
        }
    }
    for (whole, a, b) in [
        ("cannot", "can", "not"),
        ("gonna", "gon", "na"),
        ("gotta", "got", "ta"),
    ] {
        add(&[a, b]);
        debug_assert_eq!(format!("{a}{b}"), whole);
        add(&[&capitalize(a), b]);
    }
    for apos in ["'", "’"] {
        add(&[&format!("y{apos}"), "all"]);
        add(&[&format!("Y{apos}"), "all"]);
    }
    for h in 1..=12 {
        let h = h.to_string();
        for tail in ["a.m.", "p.m.", "am", "pm"] {
            add(&[&h, tail]);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_spacy_english() {
        let text = "Hello, world! Don't do it... U.S. e-mail 3.5kg $100 (test) 'quote' #tag a.m. \
                    Mr. Smith etc. well-known http://x.com/a?b=1 :) <3 ...";
        let expected = [
            "Hello",
            ",",
            "world",
            "!",
            "Do",
            "n't",
            "do",
            "it",
            "...",
            "U.S.",
            "e",
            "-",
            "mail",
            "3.5",
            "kg",
            "$",
            "100",
            "(",
            "test",
            ")",
            "'",
            "quote",
            "'",
            "#",
            "tag",
            "a.m.",
            "Mr.",
            "Smith",
            "etc",
            ".",
            "well",
            "-",
            "known",
            "http://x.com/a?b=1",
            ":)",
            "<3",
            "...",
        ];
        assert_eq!(split_words(text), expected);
    }

    #[test]
    fn contractions_and_clitics() {
        assert_eq!(
            split_words("I'm sure they're right, can't you see"),
            ["I", "'m", "sure", "they", "'re", "right", ",", "ca", "n't", "you", "see"]
        );
        assert_eq!(
            split_words("John's dogs' cannot"),
            ["John", "'s", "dogs", "'", "can", "not"]
        );
        assert_eq!(split_words("We were well"), ["We", "were", "well"]);
    }

    #[test]
    fn infixes() {
        assert_eq!(split_words("word...word"), ["word", "...", "word"]);
        assert_eq!(split_words("Hello.World"), ["Hello", ".", "World"]);
        assert_eq!(
            split_words("a,b 1-2 x/y"),
            ["a", ",", "b", "1", "-", "2", "x", "/", "y"]
        );
        assert_eq!(split_words("-abc"), ["-abc"]);
    }

    #[test]
    fn whitespace_never_a_word() {
        assert_eq!(split_words(" \u{a0}a\n\u{1c}b "), ["a", "b"]);
        assert!(split_words("").is_empty());
    }
}
