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
    String::from_utf8(bytes).map_err(|e| BpeError::Parse {
        path: path.to_path_buf(),
        line: 0,
        message: format!(
            "not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

fn parse_error(path: &Path, line: usize, message: impl Into<String>) -> BpeError {
    BpeError::Parse {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
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
        .map_err(|e| parse_error(encoder_json, e.line(), format!("invalid JSON: {e}")))?;
    let Value::Object(map) = json else {
        return Err(parse_error(
            encoder_json,
            1,
            "expected an object of token -> id",
        ));
    };
    let mut ids: FxHashMap<String, Rank> = FxHashMap::default();
    for (k, v) in map {
        let id = v
            .as_u64()
            .filter(|&i| i < Rank::MAX as u64)
            .ok_or_else(|| {
                parse_error(
                    encoder_json,
                    0,
                    format!("id of {k:?} is not a valid integer: {v}"),
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
    vocab_from_merges(ids, merges, vocab_bpe)
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
        parse_error(
            path,
            0,
            format!("unsupported pre_tokenizer {what}; gristmill reads byte-level BPE with a \
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
    let json: Value = serde_json::from_str(text)
        .map_err(|e| parse_error(path, e.line(), format!("invalid JSON: {e}")))?;
    let model = json
        .get("model")
        .ok_or_else(|| parse_error(path, 0, "no \"model\""))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(parse_error(path, 0, "model.type is not \"BPE\""));
    }
    if !json.get("normalizer").is_none_or(Value::is_null) {
        return Err(parse_error(
            path,
            0,
            "a normalizer is set; gristmill reads byte-level BPE without one",
        ));
    }
    let Some(Value::Object(vocab)) = model.get("vocab") else {
        return Err(parse_error(path, 0, "model.vocab is not an object"));
    };
    let mut ids: FxHashMap<String, Rank> = FxHashMap::default();
    for (k, v) in vocab {
        let id = v
            .as_u64()
            .filter(|&i| i < Rank::MAX as u64)
            .ok_or_else(|| parse_error(path, 0, format!("id of {k:?} is not a valid integer")))?;
        ids.insert(k.clone(), id as Rank);
    }
    let mut added: Vec<(String, Rank)> = Vec::new();
    for t in json
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(content), Some(id)) = (
            t.get("content").and_then(Value::as_str),
            t.get("id").and_then(Value::as_u64),
        ) else {
            return Err(parse_error(
                path,
                0,
                format!("added token without content and id: {t}"),
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
        let (a, b) =
            pair.ok_or_else(|| parse_error(path, 0, format!("merge {i} is not a pair: {m}")))?;
        merges.push((i + 1, a, b));
    }
    let pattern = match json.get("pre_tokenizer") {
        Some(pre) if !pre.is_null() => pattern_from_hf(pre, path)?,
        _ => {
            return Err(parse_error(
                path,
                0,
                "no pre_tokenizer; byte-level BPE needs one",
            ))
        }
    };
    let mut v = vocab_from_merges(ids, merges, path).map_err(|e| match e {
        BpeError::Parse { line, message, .. } => {
            parse_error(path, 0, format!("model.merges entry {line}: {message}"))
        }
        other => other,
    })?;
    // Entries neither bytes nor merge results are not reachable by BPE; refuse rather than guess.
    if let Some((s, _)) = v.specials.first() {
        return Err(parse_error(
            path,
            0,
            format!("vocab entry {s:?} is neither a byte nor made by a merge"),
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
