//! Vocabulary file formats: tiktoken rank files, GPT-2's `encoder.json` + `vocab.bpe`, and
//! Hugging Face `tokenizer.json` (byte-level BPE), read and written.
//!
//! In memory a vocabulary is `(bytes, rank)` pairs plus special tokens and a pattern, the
//! shape `Encoder::new` takes. HF and GPT-2 files spell bytes through GPT-2's byte-to-unicode
//! table (printable bytes stand for themselves, the rest are shifted above U+0100) and list
//! merges; tiktoken files list ranks, and a merge list is recovered from ranks by merging each
//! token's bytes with the tokens ranked below it until two parts remain.

use super::merge::merge_boundaries;
use super::{BpeError, Encoder, Pattern, Rank};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use rustc_hash::FxHashMap;
use serde_json::{json, Value};
use std::path::Path;

/// A vocabulary as files describe it.
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    pub mergeable: Vec<(Vec<u8>, Rank)>,
    pub specials: Vec<(String, Rank)>,
    /// The pre-tokenizer regex, when the file names one.
    pub pattern: Option<String>,
}

fn read_text(path: &Path) -> Result<String, BpeError> {
    let bytes = std::fs::read(path).map_err(|source| BpeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // Lines count from 1, as editors do.
        let line = 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count();
        parse_error(
            path,
            line,
            format!(
                "not UTF-8 (byte 0x{:02x} at offset {offset}); expected UTF-8 text",
                bytes[offset]
            ),
        )
    })
}

fn parse_error(path: &Path, line: usize, message: impl Into<String>) -> BpeError {
    BpeError::Parse {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// An error in a JSON file's content, placed by its key (JSON values carry no line numbers).
fn key_error(path: &Path, key: &str, message: impl std::fmt::Display) -> BpeError {
    BpeError::Vocab(format!("{}: {key}: {message}", path.display()))
}

/// Malformed JSON, at serde's line (from 1) and column.
fn json_syntax_error(path: &Path, e: serde_json::Error) -> BpeError {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let what = text.strip_suffix(&position).unwrap_or(&text);
    parse_error(
        path,
        e.line().max(1),
        format!("invalid JSON at column {}: {what}", e.column()),
    )
}

// ---- GPT-2 byte <-> unicode table --------------------------------------------------------

/// GPT-2's table: byte -> the char that spells it in `encoder.json`/`tokenizer.json`.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap()
        };
    }
    table
}

fn char_to_byte() -> FxHashMap<char, u8> {
    byte_to_char()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

pub fn bytes_to_spelling(bytes: &[u8]) -> String {
    let table = byte_to_char();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

fn spelling_to_bytes(s: &str, table: &FxHashMap<char, u8>) -> Option<Vec<u8>> {
    s.chars().map(|c| table.get(&c).copied()).collect()
}

// ---- tiktoken ----------------------------------------------------------------------------

/// Parses a tiktoken rank file (`base64(token) rank` per line). A lone `=` decodes to the
/// empty token, as Python's lenient base64 does (Whisper's multilingual file has one).
pub fn parse_tiktoken(text: &str, path: &Path) -> Result<Vec<(Vec<u8>, Rank)>, BpeError> {
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split(' ');
        let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(parse_error(
                path,
                i + 1,
                format!("expected 'base64 rank', found {line:?}"),
            ));
        };
        let bytes = engine
            .decode(token.trim_end_matches('='))
            .map_err(|e| parse_error(path, i + 1, format!("token {token:?} is not base64: {e}")))?;
        let rank: Rank = rank.parse().map_err(|_| {
            parse_error(
                path,
                i + 1,
                format!("rank {rank:?} is not a non-negative integer"),
            )
        })?;
        out.push((bytes, rank));
    }
    if out.is_empty() {
        return Err(parse_error(
            path,
            1,
            "no tokens (an empty file?); expected one 'base64 rank' line per token",
        ));
    }
    Ok(out)
}

pub fn read_tiktoken(path: &Path) -> Result<Vec<(Vec<u8>, Rank)>, BpeError> {
    parse_tiktoken(&read_text(path)?, path)
}

/// A tiktoken rank file's text, in rank order.
pub fn format_tiktoken(encoder: &Encoder) -> String {
    let mut out = String::new();
    for (bytes, rank) in encoder.mergeable_ranks() {
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
        out.push(' ');
        out.push_str(&rank.to_string());
        out.push('\n');
    }
    out
}

// ---- merges from ranks -------------------------------------------------------------------

/// A merge: the two tokens' bytes that it joins.
pub type Merge = (Vec<u8>, Vec<u8>);

/// The merge that creates each multi-byte token, in rank order: the two parts its bytes fall
/// into when merged with every token ranked below it.
pub fn merges_from_ranks(encoder: &Encoder) -> Result<Vec<Merge>, BpeError> {
    let mut merges = Vec::new();
    for (bytes, rank) in encoder.mergeable_ranks() {
        if bytes.len() < 2 {
            continue;
        }
        let b = merge_boundaries(encoder.rank_map(), bytes, rank);
        if b.len() != 3 {
            return Err(BpeError::Vocab(format!(
                "token {:?} (id {rank}) cannot be built by merging two lower-ranked tokens",
                String::from_utf8_lossy(bytes)
            )));
        }
        merges.push((bytes[..b[1]].to_vec(), bytes[b[1]..].to_vec()));
    }
    Ok(merges)
}

// ---- GPT-2 encoder.json + vocab.bpe ------------------------------------------------------

/// Reads GPT-2's files. Mergeable tokens are the 256 bytes and the results of the merges;
/// the ids come from `encoder.json`; any other entry there (`<|endoftext|>`) is special.
pub fn read_gpt2(encoder_json: &Path, vocab_bpe: &Path) -> Result<Vocab, BpeError> {
    let json: Value = serde_json::from_str(&read_text(encoder_json)?)
        .map_err(|e| json_syntax_error(encoder_json, e))?;
    let Value::Object(map) = json else {
        return Err(key_error(
            encoder_json,
            "top level",
            "expected an object of token -> id",
        ));
    };
    let mut ids: FxHashMap<String, Rank> = FxHashMap::default();
    for (k, v) in map {
        let id = v
            .as_u64()
            .filter(|&i| i < Rank::MAX as u64)
            .ok_or_else(|| {
                key_error(
                    encoder_json,
                    &format!("{k:?}"),
                    format!("the id {v} is not a valid integer"),
                )
            })?;
        ids.insert(k, id as Rank);
    }
    let merges_text = read_text(vocab_bpe)?;
    let mut merges = Vec::new();
    for (i, line) in merges_text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let Some((a, b)) = line.split_once(' ') else {
            return Err(parse_error(
                vocab_bpe,
                i + 1,
                format!("expected 'a b', found {line:?}"),
            ));
        };
        merges.push((i + 1, a.to_string(), b.to_string()));
    }
    let v = vocab_from_merges(ids, merges, vocab_bpe)?;
    // GPT-2's files do not mark special tokens. Its only one is `<|endoftext|>` (RoBERTa-style
    // files add `<s>`, `<pad>`, `</s>`, ...); any other entry that is neither a byte nor made
    // by a merge means merges are missing (a truncated vocab.bpe), and reading it as special
    // would make BPE never produce it.
    if let Some((token, id)) = v.specials.iter().find(|(s, _)| !looks_special(s)) {
        return Err(BpeError::Vocab(format!(
            "{}: {} lines, but no merge makes {token:?} (id {id} in {}): the merge list is \
             incomplete (a truncated file?); expected a merge for every token that is not a \
             single byte or a <...> special token",
            vocab_bpe.display(),
            merges_text.lines().count(),
            encoder_json.display()
        )));
    }
    Ok(v)
}

/// Whether a GPT-2 `encoder.json` entry has the shape of a special token: `<|endoftext|>`,
/// or RoBERTa's `<s>`, `</s>`, `<pad>`, `<unk>`, `<mask>` (no space inside: a merged word
/// such as `<div` or ` <b>` is made by merges, not special).
fn looks_special(token: &str) -> bool {
    token.len() >= 3
        && token.starts_with('<')
        && token.ends_with('>')
        && !token.contains(char::is_whitespace)
}

/// Common to GPT-2 and HF files: ids by spelling, plus merges (line, left, right).
fn vocab_from_merges(
    mut ids: FxHashMap<String, Rank>,
    merges: Vec<(usize, String, String)>,
    merges_path: &Path,
) -> Result<Vocab, BpeError> {
    let table = char_to_byte();
    let spell = byte_to_char();
    let mut mergeable = Vec::with_capacity(ids.len());
    for b in 0..=255u8 {
        let s = spell[b as usize].to_string();
        let id = ids
            .remove(&s)
            .ok_or_else(|| BpeError::Vocab(format!("byte 0x{b:02x} (spelled {s:?}) has no id")))?;
        mergeable.push((vec![b], id));
    }
    let mut last_id: Option<Rank> = None;
    for (line, a, b) in merges {
        let joined = format!("{a}{b}");
        let id = match ids.remove(&joined) {
            Some(id) => id,
            // A merge whose result is already known (a repeated merge) changes nothing.
            None if mergeable
                .iter()
                .any(|(bytes, _)| bytes_to_spelling(bytes) == joined) =>
            {
                continue
            }
            None => {
                return Err(parse_error(
                    merges_path,
                    line,
                    format!("merge {a:?} + {b:?} gives {joined:?}, which has no id"),
                ))
            }
        };
        if last_id.is_some_and(|l| id < l) {
            return Err(parse_error(
                merges_path,
                line,
                format!(
                    "merge {a:?} + {b:?} gives id {id}, lower than an earlier merge's id {}; \
                     gristmill needs merge order and id order to agree",
                    last_id.unwrap()
                ),
            ));
        }
        last_id = Some(id);
        let bytes = spelling_to_bytes(&joined, &table).ok_or_else(|| {
            parse_error(
                merges_path,
                line,
                format!("{joined:?} is not byte-level spelling"),
            )
        })?;
        mergeable.push((bytes, id));
    }
    let mut specials: Vec<(String, Rank)> = ids.into_iter().collect();
    specials.sort_by_key(|(_, id)| *id);
    Ok(Vocab {
        mergeable,
        specials,
        pattern: None,
    })
}

// ---- Hugging Face tokenizer.json ---------------------------------------------------------

fn pattern_from_hf(pre: &Value, path: &Path) -> Result<String, BpeError> {
    let unsupported = |what: String| {
        key_error(
            path,
            "pre_tokenizer",
            format!("unsupported {what}; gristmill reads byte-level BPE with a \
                     ByteLevel pre-tokenizer or a Split(Regex) followed by ByteLevel(use_regex=false)"),
        )
    };
    let kind = pre.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "ByteLevel" => {
            if pre.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
                return Err(unsupported("ByteLevel(add_prefix_space=true)".into()));
            }
            if pre.get("use_regex").and_then(Value::as_bool) == Some(false) {
                return Err(unsupported("ByteLevel(use_regex=false) alone".into()));
            }
            Ok(super::pretokenize::R50K_PATTERN.to_string())
        }
        "Sequence" => {
            let parts = pre
                .get("pretokenizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match parts.as_slice() {
                [split, byte_level]
                    if split.get("type").and_then(Value::as_str) == Some("Split")
                        && byte_level.get("type").and_then(Value::as_str) == Some("ByteLevel") =>
                {
                    split
                        .pointer("/pattern/Regex")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| unsupported("Split without a Regex pattern".into()))
                }
                [only] => pattern_from_hf(only, path),
                _ => Err(unsupported(format!("Sequence {parts:?}"))),
            }
        }
        other => Err(unsupported(format!("{other:?}"))),
    }
}

/// Reads a HF `tokenizer.json` holding a byte-level BPE model. Added tokens become special.
pub fn parse_hf_json(text: &str, path: &Path) -> Result<Vocab, BpeError> {
    let json: Value = serde_json::from_str(text).map_err(|e| json_syntax_error(path, e))?;
    let model = json
        .get("model")
        .ok_or_else(|| key_error(path, "model", "missing; expected a BPE model"))?;
    let kind = model.get("type").unwrap_or(&Value::Null);
    if kind.as_str() != Some("BPE") {
        return Err(key_error(
            path,
            "model.type",
            format!("{kind}, expected \"BPE\" (gristmill reads byte-level BPE)"),
        ));
    }
    if !json.get("normalizer").is_none_or(Value::is_null) {
        return Err(key_error(
            path,
            "normalizer",
            "set, but gristmill reads byte-level BPE without one",
        ));
    }
    let Some(Value::Object(vocab)) = model.get("vocab") else {
        return Err(key_error(
            path,
            "model.vocab",
            "expected an object of token -> id",
        ));
    };
    let mut ids: FxHashMap<String, Rank> = FxHashMap::default();
    for (k, v) in vocab {
        let id = v
            .as_u64()
            .filter(|&i| i < Rank::MAX as u64)
            .ok_or_else(|| {
                key_error(
                    path,
                    &format!("model.vocab[{k:?}]"),
                    format!("the id {v} is not a valid integer"),
                )
            })?;
        ids.insert(k.clone(), id as Rank);
    }
    let mut added: Vec<(String, Rank)> = Vec::new();
    for (i, t) in json
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let (Some(content), Some(id)) = (
            t.get("content").and_then(Value::as_str),
            t.get("id").and_then(Value::as_u64),
        ) else {
            return Err(key_error(
                path,
                &format!("added_tokens[{i}]"),
                format!("expected \"content\" and \"id\", found {t}"),
            ));
        };
        ids.remove(content);
        added.push((content.to_string(), id as Rank));
    }
    let mut merges = Vec::new();
    for (i, m) in model
        .get("merges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let pair = match m {
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                _ => None,
            },
            _ => None,
        };
        let (a, b) = pair.ok_or_else(|| {
            key_error(
                path,
                &format!("model.merges[{i}]"),
                format!("expected a pair (\"a b\" or [\"a\", \"b\"]), found {m}"),
            )
        })?;
        // The index stands in for a line; vocab_from_merges's errors are re-placed below.
        merges.push((i, a, b));
    }
    let pattern = match json.get("pre_tokenizer") {
        Some(pre) if !pre.is_null() => pattern_from_hf(pre, path)?,
        _ => {
            return Err(key_error(
                path,
                "pre_tokenizer",
                "missing; byte-level BPE needs one",
            ))
        }
    };
    let mut v = vocab_from_merges(ids, merges, path).map_err(|e| match e {
        BpeError::Parse { line, message, .. } => {
            key_error(path, &format!("model.merges[{line}]"), message)
        }
        other => other,
    })?;
    // Entries neither bytes nor merge results are not reachable by BPE; refuse rather than guess.
    if let Some((s, _)) = v.specials.first() {
        return Err(key_error(
            path,
            &format!("model.vocab[{s:?}]"),
            "neither a byte nor made by a merge (not an added token either)",
        ));
    }
    v.specials = added;
    v.pattern = Some(pattern);
    Ok(v)
}

pub fn read_hf_json(path: &Path) -> Result<Vocab, BpeError> {
    parse_hf_json(&read_text(path)?, path)
}

/// A HF `tokenizer.json` for `encoder`, which HF tokenizers loads and encodes identically.
pub fn format_hf_json(encoder: &Encoder) -> Result<String, BpeError> {
    let mut vocab = serde_json::Map::new();
    for (bytes, rank) in encoder.mergeable_ranks() {
        vocab.insert(bytes_to_spelling(bytes), json!(rank));
    }
    let merges: Vec<Value> = merges_from_ranks(encoder)?
        .into_iter()
        .map(|(a, b)| json!([bytes_to_spelling(&a), bytes_to_spelling(&b)]))
        .collect();
    let added: Vec<Value> = encoder
        .special_tokens()
        .iter()
        .map(|(s, id)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre_tokenizer = match encoder.pattern() {
        Pattern::R50k => byte_level(true),
        other => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": super::pretokenize::for_oniguruma(other.as_regex())}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}),
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": byte_level(true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    Ok(serde_json::to_string(&doc).expect("JSON values serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = byte_to_char();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn tiktoken_lines_and_errors() {
        let p = Path::new("x.tiktoken");
        let v = parse_tiktoken("IQ== 0\n= 1\n", p).unwrap();
        assert_eq!(v, vec![(b"!".to_vec(), 0), (vec![], 1)]);
        let e = parse_tiktoken("IQ== 0\nnot-base64! 1\n", p).unwrap_err();
        assert!(e.to_string().starts_with("x.tiktoken: line 2:"), "{e}");
        let e = parse_tiktoken("IQ== zero\n", p).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse_tiktoken("\n\n", p).unwrap_err();
        assert!(
            e.to_string().starts_with("x.tiktoken: line 1: no tokens"),
            "{e}"
        );
    }

    #[test]
    fn not_utf8_is_placed_at_its_line_counted_from_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.tiktoken");
        for (bytes, line) in [(&b"\xff 0\n"[..], 1), (&b"IQ== 0\nIg== 1\n\xfe 2\n"[..], 3)] {
            std::fs::write(&path, bytes).unwrap();
            let e = read_tiktoken(&path).unwrap_err().to_string();
            assert!(
                e.contains(&format!("v.tiktoken: line {line}: not UTF-8")),
                "{e}"
            );
        }
    }

    #[test]
    fn json_errors_name_file_and_key_never_line_0() {
        let p = Path::new("tokenizer.json");
        let cases = [
            (
                "{\n  \"model\": 1,,\n}",
                "tokenizer.json: line 2: invalid JSON at column",
            ),
            ("{}", "tokenizer.json: model: missing"),
            (
                r#"{"model": {"type": "Unigram"}}"#,
                "tokenizer.json: model.type: \"Unigram\"",
            ),
            (
                r#"{"model": {"type": "BPE", "vocab": []}}"#,
                "tokenizer.json: model.vocab: expected",
            ),
            (
                r#"{"model": {"type": "BPE", "vocab": {}, "merges": ["a b", 3]}}"#,
                "tokenizer.json: model.merges[1]: expected a pair",
            ),
        ];
        for (text, want) in cases {
            let e = parse_hf_json(text, p).unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains("line 0"), "{e}");
        }
    }

    proptest::proptest! {
        // Parsers meet files from anywhere: arbitrary input gives Ok or an error, never a panic.
        #[test]
        fn parsers_never_panic(text in "\\PC{0,200}") {
            let p = Path::new("fuzz");
            let _ = parse_tiktoken(&text, p);
            let _ = parse_hf_json(&text, p);
        }

        #[test]
        fn tiktoken_like_lines_never_panic(lines in proptest::collection::vec("[A-Za-z0-9+/=]{0,8} ?[0-9x-]{0,6}", 0..20)) {
            let _ = parse_tiktoken(&lines.join("\n"), Path::new("fuzz"));
        }
    }
}

/// Fuzzing the vocabulary readers (issue 18): arbitrary and damaged files give a vocabulary or
/// an error, never a panic or a hang, and a file damaged in a way that changes its meaning is
/// an error. `PROPTEST_CASES` sets the cases (see `crate::fuzz`).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{apply, config, edits, within};
    use proptest::prelude::*;
    use std::path::PathBuf;

    /// 256 bytes, five merges that build " world" and "hell", and `<|endoftext|>`.
    fn small_encoder() -> Encoder {
        let mut mergeable: Vec<(Vec<u8>, Rank)> =
            (0..=255u8).map(|b| (vec![b], b as Rank)).collect();
        for (i, t) in ["he", "ll", "hell", "lo", " w", "or", " wor", "ld", " world"]
            .iter()
            .enumerate()
        {
            mergeable.push((t.as_bytes().to_vec(), 256 + i as Rank));
        }
        let specials = vec![("<|endoftext|>".to_string(), 265)];
        Encoder::new(mergeable, specials, Pattern::new("gpt2").unwrap()).unwrap()
    }

    /// GPT-2's two files for `enc`: `encoder.json` and `vocab.bpe`.
    fn gpt2_files(enc: &Encoder) -> (String, String) {
        let mut ids = serde_json::Map::new();
        for (bytes, rank) in enc.mergeable_ranks() {
            ids.insert(bytes_to_spelling(bytes), json!(rank));
        }
        for (s, id) in enc.special_tokens() {
            ids.insert(s.clone(), json!(id));
        }
        let mut bpe = "#version: 0.2\n".to_string();
        for (a, b) in merges_from_ranks(enc).unwrap() {
            bpe += &format!("{} {}\n", bytes_to_spelling(&a), bytes_to_spelling(&b));
        }
        (serde_json::to_string(&Value::Object(ids)).unwrap(), bpe)
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// What a caller does with a vocabulary it read: build the encoder, encode and decode, write
    /// it back out. None of it may panic; with a known pattern, text comes back whole.
    fn exercise(mergeable: Vec<(Vec<u8>, Rank)>, specials: Vec<(String, Rank)>, pattern: &str) {
        let Ok(pattern) = Pattern::new(pattern) else {
            return;
        };
        let known = !matches!(pattern, Pattern::Custom(_));
        let Ok(enc) = Encoder::new(mergeable, specials, pattern) else {
            return;
        };
        for text in ["hello world", "", "  héllo\n\n<|endoftext|> 12 worlds!"] {
            let ids = enc.encode(
                text,
                &enc.special_tokens().iter().map(|(_, id)| *id).collect(),
            );
            if known {
                assert_eq!(enc.decode_bytes(&ids).unwrap(), text.as_bytes());
            }
            let _ = enc.count_ordinary(text);
        }
        let _ = enc.decode_bytes(&[0, 1, 265, Rank::MAX - 1]);
        let text = format_tiktoken(&enc);
        assert_eq!(
            parse_tiktoken(&text, Path::new("again")).unwrap().len(),
            enc.mergeable_ranks().len()
        );
        let _ = format_hf_json(&enc);
    }

    fn gpt2_pattern_with_eot() -> Vec<(String, Rank)> {
        vec![("<|endoftext|>".to_string(), 1 << 20)]
    }

    /// Reads the three formats from `dir`, as `CoreBPE`'s constructors do, and exercises what
    /// they give.
    fn read_all_formats(dir: PathBuf) {
        if let Ok(ranks) = read_tiktoken(&dir.join("x.tiktoken")) {
            let lines = std::fs::read_to_string(dir.join("x.tiktoken")).unwrap();
            // No line is lost or invented: one entry per line that is not blank.
            let non_blank = lines
                .lines()
                .filter(|l| !l.trim_end_matches('\r').is_empty())
                .count();
            assert_eq!(ranks.len(), non_blank);
            exercise(ranks, gpt2_pattern_with_eot(), "gpt2");
        }
        if let Ok(v) = read_hf_json(&dir.join("tokenizer.json")) {
            let pattern = v.pattern.clone().unwrap_or_default();
            exercise(v.mergeable, v.specials, &pattern);
        }
        if let Ok(v) = read_gpt2(&dir.join("encoder.json"), &dir.join("vocab.bpe")) {
            exercise(v.mergeable, v.specials, "gpt2");
        }
    }

    proptest! {
        #![proptest_config(config(48))]

        #[test]
        fn arbitrary_bytes_are_read_or_refused(
            tiktoken in prop::collection::vec(any::<u8>(), 0..400),
            hf in prop::collection::vec(any::<u8>(), 0..400),
            bpe in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "x.tiktoken", &tiktoken);
            write(dir.path(), "tokenizer.json", &hf);
            write(dir.path(), "encoder.json", &hf);
            write(dir.path(), "vocab.bpe", &bpe);
            let d = dir.path().to_path_buf();
            within(60, "reading arbitrary vocabulary files", move || read_all_formats(d));
        }

        #[test]
        fn damaged_files_are_read_or_refused(e_tik in edits(), e_hf in edits(), e_json in edits(), e_bpe in edits()) {
            let enc = small_encoder();
            let dir = tempfile::tempdir().unwrap();
            let (encoder_json, vocab_bpe) = gpt2_files(&enc);
            let hf = format_hf_json(&enc).unwrap();
            write(dir.path(), "x.tiktoken", &apply(format_tiktoken(&enc).as_bytes(), &e_tik));
            let hf_damaged = apply(hf.as_bytes(), &e_hf);
            write(dir.path(), "tokenizer.json", &hf_damaged);
            let json_damaged = apply(encoder_json.as_bytes(), &e_json);
            write(dir.path(), "encoder.json", &json_damaged);
            write(dir.path(), "vocab.bpe", &apply(vocab_bpe.as_bytes(), &e_bpe));
            // JSON that no longer parses must be refused, not half read.
            if serde_json::from_slice::<Value>(&hf_damaged).is_err() {
                prop_assert!(read_hf_json(&dir.path().join("tokenizer.json")).is_err());
            }
            if serde_json::from_slice::<Value>(&json_damaged).is_err() {
                prop_assert!(read_gpt2(&dir.path().join("encoder.json"), &dir.path().join("vocab.bpe")).is_err());
            }
            let d = dir.path().to_path_buf();
            within(60, "reading damaged vocabulary files", move || read_all_formats(d));
        }

        /// A tiktoken file with a token removed, a rank repeated or a rank out of range does not
        /// make an encoder.
        #[test]
        fn tiktoken_damage_that_changes_meaning_is_refused(line in 0usize..265, other in 0usize..265, kind in 0..3) {
            let enc = small_encoder();
            let mut lines: Vec<String> = format_tiktoken(&enc).lines().map(str::to_string).collect();
            let token = lines[line].split(' ').next().unwrap().to_string();
            match kind {
                // A single byte's line removed: that byte has no token.
                0 => { lines.remove(line.min(255)); }
                // Two tokens with one rank.
                1 => {
                    prop_assume!(line != other);
                    let rank = lines[other].split(' ').nth(1).unwrap().to_string();
                    lines[line] = format!("{token} {rank}");
                }
                _ => lines[line] = format!("{token} 4294967296"),
            }
            let text = lines.join("\n");
            let built = parse_tiktoken(&text, Path::new("x.tiktoken"))
                .and_then(|m| Encoder::new(m, vec![], Pattern::R50k));
            prop_assert!(built.is_err(), "kind {kind}: {text:?}");
        }

        /// A tokenizer.json with a merge removed is refused: the merged token would otherwise
        /// be in the vocabulary but never made by BPE.
        #[test]
        fn merge_lists_missing_a_merge_are_refused(m in 0usize..9) {
            let enc = small_encoder();
            let dir = tempfile::tempdir().unwrap();
            let mut hf: Value = serde_json::from_str(&format_hf_json(&enc).unwrap()).unwrap();
            hf["model"]["merges"].as_array_mut().unwrap().remove(m);
            let p = write(dir.path(), "tokenizer.json", hf.to_string().as_bytes());
            prop_assert!(read_hf_json(&p).is_err());
        }
    }

    /// The same for GPT-2's vocab.bpe (a truncated download): the merged token of a missing
    /// merge must not be read as a special token (only `<...>` entries are special).
    #[test]
    fn gpt2_merge_lists_missing_a_merge_are_refused() {
        let enc = small_encoder();
        for m in 0..9 {
            let dir = tempfile::tempdir().unwrap();
            let (encoder_json, vocab_bpe) = gpt2_files(&enc);
            let mut lines: Vec<&str> = vocab_bpe.lines().collect();
            lines.remove(m + 1); // after the #version line
            write(dir.path(), "encoder.json", encoder_json.as_bytes());
            write(dir.path(), "vocab.bpe", lines.join("\n").as_bytes());
            let got = read_gpt2(
                &dir.path().join("encoder.json"),
                &dir.path().join("vocab.bpe"),
            );
            let e = got
                .map(|v| v.specials)
                .expect_err(&format!("merge {m} missing"))
                .to_string();
            assert!(e.contains("vocab.bpe: 9 lines, but no merge makes"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        // A truncated file: the first token without its merge is named.
        let dir = tempfile::tempdir().unwrap();
        let (encoder_json, vocab_bpe) = gpt2_files(&enc);
        let cut: Vec<&str> = vocab_bpe.lines().take(6).collect();
        write(dir.path(), "encoder.json", encoder_json.as_bytes());
        write(dir.path(), "vocab.bpe", cut.join("\n").as_bytes());
        let e = read_gpt2(
            &dir.path().join("encoder.json"),
            &dir.path().join("vocab.bpe"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("6 lines, but no merge makes \"or\" (id 261"),
            "{e}"
        );
    }

    /// The encoder keeps a slot per id: a damaged rank such as 4000000000 once made it ask
    /// for 64 GB and abort the process (Python's included). Ids far beyond the tokens are
    /// refused; ids with a few gaps (cl100k's, or specials placed high) are not.
    #[test]
    fn ranks_far_beyond_the_tokens_are_refused() {
        for rank in ["4000000000", "2147483647", "300000000"] {
            let text = format_tiktoken(&small_encoder()) + &format!("IUE= {rank}\n");
            let m = parse_tiktoken(&text, Path::new("x.tiktoken")).unwrap();
            let e = Encoder::new(m, vec![], Pattern::R50k).expect_err("a huge rank was accepted");
            assert!(e.to_string().contains(rank), "{e}");
        }
        let m =
            parse_tiktoken(&format_tiktoken(&small_encoder()), Path::new("x.tiktoken")).unwrap();
        let high = vec![("<|endoftext|>".to_string(), 1 << 20)];
        assert_eq!(
            Encoder::new(m, high, Pattern::R50k).unwrap().n_vocab(),
            (1 << 20) + 1
        );
    }

    #[test]
    fn the_fixtures_are_valid() {
        let enc = small_encoder();
        let dir = tempfile::tempdir().unwrap();
        let (encoder_json, vocab_bpe) = gpt2_files(&enc);
        write(dir.path(), "encoder.json", encoder_json.as_bytes());
        write(dir.path(), "vocab.bpe", vocab_bpe.as_bytes());
        let v = read_gpt2(
            &dir.path().join("encoder.json"),
            &dir.path().join("vocab.bpe"),
        )
        .unwrap();
        assert_eq!(v.mergeable.len(), 265);
        assert_eq!(v.specials, vec![("<|endoftext|>".to_string(), 265)]);
        let v = parse_hf_json(&format_hf_json(&enc).unwrap(), Path::new("t.json")).unwrap();
        assert_eq!(v.mergeable.len(), 265);
    }
}
