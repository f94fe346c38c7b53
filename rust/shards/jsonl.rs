//! JSON-lines documents read in the core, so `gristmill tokenize` decompresses and parses
//! beside the encoder instead of in Python.
//!
//! Reader threads, one per file and two files at once, decompress (`.zst`) and cut the
//! stream into blocks of whole lines; each block's lines are parsed on all threads and handed
//! on as `(texts, ids)` in input order, files one after another. Only the text and id fields
//! are kept; other fields are skipped without being built.
//!
//! Records mean what `gristmill.prep.read_documents` makes of them: blank lines are skipped,
//! a record without an id gets `"<file name>:<line>"`, a non-string id is written as Python's
//! `str()` of it (list and object ids excepted: they get a placeholder), lone surrogates in
//! `\u` escapes become U+FFFD, and a bad line stops the read with an error naming the file and
//! line.

use super::ShardError;
use rayon::prelude::*;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Lines are handed to the parser in blocks of about this many bytes.
const BLOCK_BYTES: usize = 1 << 20;

/// What to read from each record.
#[derive(Clone, Debug)]
pub struct JsonlFields {
    pub text: String,
    pub id: String,
}

/// The next documents of a file: their texts and source ids, in order.
#[derive(Debug, Default)]
pub struct DocBatch {
    pub texts: Vec<String>,
    pub ids: Vec<String>,
    /// Bytes of text in the batch.
    pub bytes: usize,
}

/// True for a file name `read_jsonl_batches` reads (`.jsonl`, `.json`, `.ndjson`, optionally
/// `.zst`); gzip and other formats stay with the Python readers.
pub fn is_core_jsonl(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".zst").unwrap_or(&name);
    [".jsonl", ".json", ".ndjson"]
        .iter()
        .any(|s| name.ends_with(s))
}

fn input_error(path: &Path, line: u64, message: impl fmt::Display) -> ShardError {
    ShardError::Input {
        path: path.to_path_buf(),
        line,
        message: message.to_string(),
    }
}

fn open(path: &Path) -> Result<Box<dyn Read + Send>, ShardError> {
    let file = File::open(path).map_err(|e| ShardError::io(path, e))?;
    let lower = path.to_string_lossy().to_lowercase();
    Ok(if lower.ends_with(".zst") {
        Box::new(zstd::Decoder::new(file).map_err(|e| ShardError::io(path, e))?)
    } else {
        Box::new(BufReader::with_capacity(BLOCK_BYTES, file))
    })
}

/// A block of whole lines and the number of the first.
struct Block {
    bytes: Vec<u8>,
    first_line: u64,
}

/// Reads `path` in blocks of whole lines and sends them on; stops early when the receiver is
/// gone. Returns the lines read.
fn read_blocks(
    path: &Path,
    tx: &mpsc::SyncSender<Result<Block, ShardError>>,
) -> Result<u64, ShardError> {
    let mut reader = open(path)?;
    let mut carry: Vec<u8> = Vec::new();
    let mut line = 1u64;
    let mut eof = false;
    while !eof {
        let mut buf = std::mem::take(&mut carry);
        let start = buf.len();
        buf.resize(start + BLOCK_BYTES, 0);
        let mut filled = start;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ShardError::io(path, e)),
            }
        }
        buf.truncate(filled);
        // Cut after the last newline; the rest starts the next block (a line longer than a
        // block just makes its block longer).
        let cut = if eof {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf) {
                Some(i) => i + 1,
                None => {
                    carry = buf;
                    continue;
                }
            }
        };
        carry = buf[cut..].to_vec();
        buf.truncate(cut);
        if buf.is_empty() {
            continue;
        }
        let lines =
            memchr::memchr_iter(b'\n', &buf).count() as u64 + u64::from(buf.last() != Some(&b'\n'));
        let block = Block {
            bytes: buf,
            first_line: line,
        };
        line += lines;
        if tx.send(Ok(block)).is_err() {
            break;
        }
    }
    Ok(line - 1)
}

/// Python's `str.isspace` for the characters of a line (what `line.strip()` removes).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// One line's record: `None` for a blank line.
fn parse_line(
    path: &Path,
    line_no: u64,
    raw: &[u8],
    fields: &JsonlFields,
) -> Result<Option<(String, String)>, ShardError> {
    let line = std::str::from_utf8(raw).map_err(|e| {
        let at = e.valid_up_to();
        let reason = match e.error_len() {
            None => "unexpected end of data",
            Some(_) if matches!(raw[at], 0x80..=0xBF | 0xC0 | 0xC1 | 0xF5..=0xFF) => {
                "invalid start byte"
            }
            Some(_) => "invalid continuation byte",
        };
        input_error(
            path,
            line_no,
            format!("invalid UTF-8 at byte {at} of the line ({reason})"),
        )
    })?;
    if line.chars().all(py_space) {
        return Ok(None);
    }
    let record = match parse_record(line, fields) {
        Ok(r) => r,
        // serde_json refuses lone surrogates, which Python's json reads (and the tokenizer
        // then replaces with U+FFFD): replace them first.
        Err(e) => match replace_lone_surrogates(line) {
            Some(fixed) => {
                parse_record(&fixed, fields).map_err(|_| json_error(path, line_no, &e))?
            }
            None => return Err(json_error(path, line_no, &e)),
        },
    };
    let Record::Object { text, id } = record else {
        return Err(input_error(
            path,
            line_no,
            format!(
                "expected an object with a string field {:?}, found no object",
                fields.text
            ),
        ));
    };
    let text = match text {
        Some(Value::Str(s)) => s,
        other => {
            let found = other.map_or("none", |v| v.type_name());
            return Err(input_error(
                path,
                line_no,
                format!(
                    "expected an object with a string field '{}', found {found}",
                    fields.text
                ),
            ));
        }
    };
    let id = match id {
        None | Some(Value::Null) => {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            format!("{name}:{line_no}")
        }
        Some(v) => v.py_str(),
    };
    Ok(Some((text, id)))
}

fn json_error(path: &Path, line: u64, e: &serde_json::Error) -> ShardError {
    let msg = e.to_string();
    // serde_json ends its messages with " at line L column C": keep the column only.
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m)
        .to_string();
    input_error(
        path,
        line,
        format!("invalid JSON ({msg} at column {})", e.column()),
    )
}

/// Parses the blocks' lines on all threads, keeping input order.
fn parse_block(
    path: &Path,
    block: &Block,
    fields: &JsonlFields,
) -> Result<Vec<(String, String)>, ShardError> {
    // memchr finds the newlines with vector instructions (a byte-by-byte split cost more
    // than parsing the lines' JSON envelope).
    let bytes = &block.bytes;
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        lines.push(&bytes[start..end]);
        start = end + 1;
    }
    if start < bytes.len() {
        lines.push(&bytes[start..]);
    }
    let parsed: Result<Vec<Option<(String, String)>>, ShardError> = lines
        .par_iter()
        .enumerate()
        .with_min_len(16)
        .map(|(i, raw)| parse_line(path, block.first_line + i as u64, raw, fields))
        .collect();
    Ok(parsed?.into_iter().flatten().collect())
}

/// Files decompressed at once: the one being parsed and the next, so a file's first blocks
/// are ready when the one before it ends. (Each file is decompressed by one thread; on many
/// cores that thread, not the encoder, can set the pace of a `.zst` input.)
const OPEN_READERS: usize = 2;

/// A file being read on its own thread, its blocks waiting in a bounded channel.
type FileReader<'scope> = (
    mpsc::Receiver<Result<Block, ShardError>>,
    std::thread::ScopedJoinHandle<'scope, Option<u64>>,
);

/// Streams the records of JSON-lines files, in order, in batches of at most `max_docs`
/// documents or about `max_bytes` of text (the first ones smaller, doubling up to it), after
/// skipping the first `skip` records (a resumed run), calling `sink` with each. A batch runs
/// on from one file into the next, so many small files cost no more than one large one.
///
/// Each file is decompressed and cut into blocks on a reader thread of its own, the next
/// file's reader working while this one is parsed ([`OPEN_READERS`]); together they keep
/// about a batch of blocks (`max_bytes`) ready while `sink` (the encoder) works. Each block's
/// lines are parsed on the rayon pool. Memory is bounded by about two batches. Returns the
/// number of records in the files, skipped ones included (0 for no files).
///
/// Errors: a missing or unreadable file; a line that is not UTF-8, not JSON, or not an object
/// with a string text field (naming the file and line); an empty file.
pub fn read_jsonl_batches(
    paths: &[PathBuf],
    fields: &JsonlFields,
    skip: u64,
    max_docs: usize,
    max_bytes: usize,
    mut sink: impl FnMut(DocBatch) -> Result<(), ShardError>,
) -> Result<u64, ShardError> {
    // Room for a whole batch of blocks, so decompression runs a batch ahead of the encoder
    // instead of waiting behind it (memory: about one batch of input).
    let ahead = ((max_bytes / BLOCK_BYTES).clamp(2, 64) / OPEN_READERS).max(2);
    std::thread::scope(|scope| {
        let start_reader = |path: &PathBuf| -> FileReader<'_> {
            let (tx, rx) = mpsc::sync_channel::<Result<Block, ShardError>>(ahead);
            let path = path.clone();
            let thread = scope.spawn(move || match read_blocks(&path, &tx) {
                Ok(lines) => Some(lines),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    None
                }
            });
            (rx, thread)
        };
        let mut open: std::collections::VecDeque<FileReader<'_>> =
            paths.iter().take(OPEN_READERS).map(start_reader).collect();
        let mut seen = 0u64;
        let mut batch = DocBatch::default();
        // The first batches are smaller, so the encoder starts before a whole batch has been
        // decompressed and parsed (the cut between batches does not change the output).
        let mut limit = (max_bytes / 8).max(1);
        for (i, path) in paths.iter().enumerate() {
            let (rx, thread) = open.pop_front().expect("a reader per file");
            if let Some(next) = paths.get(i + OPEN_READERS) {
                open.push_back(start_reader(next));
            }
            let result = rx.iter().try_for_each(|block| {
                let block = block?;
                let records = crate::parallel::install(|| parse_block(path, &block, fields))?;
                for (text, id) in records {
                    seen += 1;
                    if seen <= skip {
                        continue;
                    }
                    batch.bytes += text.len();
                    batch.texts.push(text);
                    batch.ids.push(id);
                    if batch.texts.len() >= max_docs || batch.bytes >= limit {
                        sink(std::mem::take(&mut batch))?;
                        limit = limit.saturating_mul(2).min(max_bytes);
                    }
                }
                Ok(())
            });
            drop(rx); // stops the reader if the sink failed (the others stop as `open` drops)
            let lines = thread
                .join()
                .expect("the jsonl reader thread does not panic");
            result?;
            if lines == Some(0) {
                return Err(input_error(path, 1, "empty file, expected JSON lines"));
            }
        }
        if !batch.texts.is_empty() {
            sink(batch)?;
        }
        Ok(seen)
    })
}

// ---- the record parser: only the text and id fields are built ------------------------------

/// A field's value, as far as the reader needs it.
enum Value {
    Str(String),
    Int(String),
    Float(f64),
    Bool(bool),
    Null,
    List,
    Dict,
}

impl Value {
    /// Python's name for the type `json.loads` gives.
    fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "str",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Null => "none",
            Value::List => "list",
            Value::Dict => "dict",
        }
    }

    /// Python's `str()` of the value (lists and objects: a placeholder naming the type).
    fn py_str(self) -> String {
        match self {
            Value::Str(s) | Value::Int(s) => s,
            Value::Float(f) => py_float_repr(f),
            Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
            Value::Null => "None".to_string(),
            Value::List => "[list]".to_string(),
            Value::Dict => "{dict}".to_string(),
        }
    }
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional for exponents in
/// `-4..16`, else scientific with a signed two-digit exponent.
fn py_float_repr(f: f64) -> String {
    let sci = format!("{f:e}"); // e.g. "-1.25e-7", shortest round-trip digits
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!(
                "{sign}{digits}{}.0",
                "0".repeat(point as usize - digits.len())
            )
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{sign}{a}.{b}")
        }
    } else {
        let (a, b) = digits.split_at(1);
        let frac = if b.is_empty() {
            String::new()
        } else {
            format!(".{b}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{a}{frac}e{esign}{:02}", exp.abs())
    }
}

/// `line` with every `\\u` escape of a lone surrogate replaced by `\\ufffd`, or `None` when
/// it has none.
fn replace_lone_surrogates(line: &str) -> Option<String> {
    let b = line.as_bytes();
    let hex = |i: usize| -> Option<u32> {
        let h = line.get(i..i + 4)?;
        u32::from_str_radix(h, 16).ok()
    };
    let (mut out, mut copied, mut i, mut changed) = (String::new(), 0, 0, false);
    while i + 1 < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b[i + 1] != b'u' {
            i += 2; // another escape, perhaps an escaped backslash
            continue;
        }
        let Some(u) = hex(i + 2) else {
            i += 2;
            continue;
        };
        let paired = (0xD800..0xDC00).contains(&u)
            && b.get(i + 6) == Some(&b'\\')
            && b.get(i + 7) == Some(&b'u')
            && hex(i + 8).is_some_and(|l| (0xDC00..0xE000).contains(&l));
        if paired {
            i += 12;
        } else if (0xD800..0xE000).contains(&u) {
            out.push_str(&line[copied..i]);
            out.push_str("\\ufffd");
            i += 6;
            copied = i;
            changed = true;
        } else {
            i += 6;
        }
    }
    changed.then(|| out + &line[copied..])
}

enum Record {
    Object {
        text: Option<Value>,
        id: Option<Value>,
    },
    NotObject,
}

fn parse_record(line: &str, fields: &JsonlFields) -> Result<Record, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(line);
    let record = RecordSeed { fields }.deserialize(&mut de)?;
    de.end()?;
    Ok(record)
}

struct RecordSeed<'a> {
    fields: &'a JsonlFields,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Record;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Record, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Record;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let (mut text, mut id) = (None, None);
        while let Some(key) = map.next_key_seed(KeySeed(self.fields))? {
            match key {
                Key::Text => text = Some(map.next_value_seed(ValueSeed)?),
                Key::Id => id = Some(id_value(map.next_value()?).map_err(de::Error::custom)?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Record::Object { text, id })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Record, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Record::NotObject)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Record, E> {
        Ok(Record::NotObject)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Record, E> {
        Ok(Record::NotObject)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Record, E> {
        Ok(Record::NotObject)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Record, E> {
        Ok(Record::NotObject)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Record, E> {
        Ok(Record::NotObject)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Record, E> {
        Ok(Record::NotObject)
    }
}

enum Key {
    Text,
    Id,
    Other,
}

struct KeySeed<'a>(&'a JsonlFields);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, k: &str) -> Result<Key, E> {
        Ok(if k == self.0.text {
            Key::Text
        } else if k == self.0.id {
            Key::Id
        } else {
            Key::Other
        })
    }
}

/// An id as Python's `json` reads it: an integer keeps every digit (serde would read one beyond
/// 64 bits as a float, and ids would differ from prep's and from the Python readers').
fn id_value(raw: &RawValue) -> Result<Value, serde_json::Error> {
    let text = raw.get();
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        // a JSON integer (serde checked the grammar); Python prints -0 as 0
        return Ok(Value::Int(if text == "-0" {
            "0".into()
        } else {
            text.into()
        }));
    }
    ValueSeed.deserialize(&mut serde_json::Deserializer::from_str(text))
}

struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::List)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Dict)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn fields() -> JsonlFields {
        JsonlFields {
            text: "text".into(),
            id: "id".into(),
        }
    }

    fn read_all(path: &Path, skip: u64) -> Result<(Vec<String>, Vec<String>, u64), ShardError> {
        let (mut texts, mut ids) = (Vec::new(), Vec::new());
        let n = read_jsonl_batches(&[path.to_path_buf()], &fields(), skip, 2, 1 << 20, |b| {
            assert!(b.texts.len() <= 2);
            texts.extend(b.texts);
            ids.extend(b.ids);
            Ok(())
        })?;
        Ok((texts, ids, n))
    }

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let p = dir.join(name);
        let mut f = File::create(&p).unwrap();
        if name.ends_with(".zst") {
            f.write_all(&zstd::encode_all(content, 3).unwrap()).unwrap();
        } else {
            f.write_all(content).unwrap();
        }
        p
    }

    #[test]
    fn reads_records_ids_and_skips_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"{\"id\": \"a\", \"text\": \"hi\", \"x\": [1, {\"y\": 2}]}\n\n  \n{\"text\": \"caf\\u00e9\", \"id\": 7}\n{\"text\": \"no id\"}\n{\"text\": \"f\", \"id\": 1e20}\n{\"text\": \"lone \\ud800!\", \"id\": true}";
        for name in ["a.jsonl", "a.jsonl.zst"] {
            let p = write(dir.path(), name, body);
            let (texts, ids, n) = read_all(&p, 0).unwrap();
            assert_eq!(n, 5);
            assert_eq!(texts, ["hi", "café", "no id", "f", "lone \u{FFFD}!"]);
            assert_eq!(ids[..2], ["a", "7"]);
            assert_eq!(ids[2], format!("{name}:5"));
            assert_eq!(ids[3..], ["1e+20", "True"]);
            let (texts, _, n) = read_all(&p, 3).unwrap();
            assert_eq!((texts.len(), n), (2, 5));
        }
    }

    #[test]
    fn integer_ids_keep_every_digit_as_python_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"{\"id\": 7777777777777777777777777777, \"text\": \"a\"}\n{\"text\": \"b\", \"id\": -0}\n{\"text\": \"c\", \"id\" : -18446744073709551617 }\n{\"text\": \"d\", \"id\": -2.50}\n{\"text\": \"e\", \"id\": \"x\\u00e9\"}\n";
        let p = write(dir.path(), "big.jsonl", body);
        let (_, ids, _) = read_all(&p, 0).unwrap();
        let want = [
            "7777777777777777777777777777",
            "0",
            "-18446744073709551617",
            "-2.5",
        ];
        assert_eq!(ids[..4], want);
        assert_eq!(ids[4], "x\u{e9}");
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 5] = [
            (
                b"{\"text\": \"a\"}\n{\"text\": 5}\n",
                "line 2: expected an object with a string field 'text', found int",
            ),
            (
                b"{\"text\": \"a\"}\n\n{\"text\": \"a\"\n",
                "line 3: invalid JSON (EOF while parsing an object at column 12)",
            ),
            (
                b"[1]\n",
                "line 1: expected an object with a string field \"text\", found no object",
            ),
            (
                b"{\"text\": \"\xff\"}\n",
                "line 1: invalid UTF-8 at byte 10 of the line (invalid start byte)",
            ),
            (b"", "line 1: empty file"),
        ];
        for (i, (body, want)) in cases.iter().enumerate() {
            let p = write(dir.path(), &format!("bad{i}.jsonl"), body);
            let err = read_all(&p, 0).unwrap_err().to_string();
            assert!(err.contains(&format!("bad{i}.jsonl")), "{err}");
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }

    #[test]
    fn files_are_one_stream_in_order_and_errors_name_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..5)
            .map(|i| {
                let body = format!("{{\"text\": \"{i}a\"}}\n{{\"text\": \"{i}b\"}}\n");
                write(dir.path(), &format!("f{i}.jsonl.zst"), body.as_bytes())
            })
            .collect();
        let read = |paths: &[PathBuf], skip| {
            let mut texts = Vec::new();
            let mut ids = Vec::new();
            let n = read_jsonl_batches(paths, &fields(), skip, 3, 1 << 20, |b| {
                texts.extend(b.texts);
                ids.extend(b.ids);
                Ok(())
            })?;
            Ok::<_, ShardError>((texts, ids, n))
        };
        let (texts, ids, n) = read(&paths, 0).unwrap();
        assert_eq!(n, 10);
        assert_eq!(
            texts,
            ["0a", "0b", "1a", "1b", "2a", "2b", "3a", "3b", "4a", "4b"]
        );
        assert_eq!(
            (ids[2].as_str(), ids[9].as_str()),
            ("f1.jsonl.zst:1", "f4.jsonl.zst:2")
        );
        // A resumed run skips across file ends.
        let (texts, _, n) = read(&paths, 5).unwrap();
        assert_eq!((texts[0].as_str(), texts.len(), n), ("2b", 5, 10));

        let mut bad = paths.clone();
        bad[3] = write(
            dir.path(),
            "bad.jsonl",
            b"{\"text\": \"ok\"}\n{\"text\": 1}\n",
        );
        let err = read(&bad, 0).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl") && err.contains("line 2"), "{err}");
        bad[3] = write(dir.path(), "empty.jsonl", b"");
        let err = read(&bad, 0).unwrap_err().to_string();
        assert!(
            err.contains("empty.jsonl") && err.contains("empty file"),
            "{err}"
        );
        bad[3] = dir.path().join("missing.jsonl");
        let err = read(&bad, 0).unwrap_err().to_string();
        assert!(err.contains("missing.jsonl"), "{err}");
    }

    #[test]
    fn lone_surrogates_are_replaced_pairs_kept() {
        let r = |s: &str| replace_lone_surrogates(s);
        assert_eq!(r(r#""a\ud800b""#).as_deref(), Some(r#""a\ufffdb""#));
        assert_eq!(
            r(r#""\ud83d\ude00 \udfff""#).as_deref(),
            Some(r#""\ud83d\ude00 \ufffd""#)
        );
        assert_eq!(r(r#""\\ud800 é""#), None); // an escaped backslash, then "ud800"
        assert_eq!(r(r#""\u00e9""#), None);
    }

    #[test]
    fn python_float_repr() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (-123.25, "-123.25"),
            (1234567890123456.0, "1234567890123456.0"),
        ] {
            assert_eq!(py_float_repr(f), want);
        }
    }

    #[test]
    fn long_files_cross_blocks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut body = String::new();
        for i in 0..30_000 {
            body.push_str(&format!("{{\"text\": \"{}\"}}\n", "x".repeat(i % 97)));
        }
        let p = write(dir.path(), "long.jsonl.zst", body.as_bytes());
        let (texts, ids, n) = read_all(&p, 0).unwrap();
        assert_eq!(n, 30_000);
        assert!(texts.iter().enumerate().all(|(i, t)| t.len() == i % 97));
        assert_eq!(ids[29_999], "long.jsonl.zst:30000");
    }
}

/// Fuzzing the JSON-lines reader (issue 18): any line, any file (plain or `.zst`) is read or
/// refused, never a panic or a hang, and agrees with `serde_json` on what a record is; a cut
/// or damaged `.zst` is an error, never a short read or changed text. `PROPTEST_CASES` sets
/// the cases (see `crate::fuzz`).
#[cfg(test)]
mod fuzz {
    use super::tests::fields;
    use super::*;
    use crate::fuzz::{apply, config, edits, within};
    use proptest::prelude::*;

    /// Lines near JSON records: objects with text and id fields of any type, escapes,
    /// surrogates, nesting, and junk.
    fn record_line() -> impl Strategy<Value = Vec<u8>> {
        let value = prop_oneof![
            "\"[a-z \\\\\"é]{0,6}\"",
            "\"\\\\u[dD][89a-fA-F][0-9a-f]{2}\"",
            "-?[0-9]{1,25}(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            Just("null".to_string()),
            Just("true".to_string()),
            Just("[1, {\"a\": []}]".to_string()),
            Just("{\"text\": \"inner\"}".to_string()),
            Just("NaN".to_string()),
        ];
        let key = prop_oneof![Just("text"), Just("id"), Just("other"), Just("te\\u0078t")];
        let object = prop::collection::vec((key, value), 0..4).prop_map(|kv| {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            format!("{{{}}}", body.join(", ")).into_bytes()
        });
        prop_oneof![
            4 => object,
            1 => prop::collection::vec(any::<u8>(), 0..40),
            1 => (1..200usize).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
            1 => prop::sample::select(vec![&b""[..], b"  \t", b"\x1c", b"[]", b"\"s\"", b"{", b"{}"]).prop_map(|b| b.to_vec()),
        ]
    }

    /// What `serde_json` makes of a line: `Some(text)` for an object with a string text field.
    fn reference(line: &str) -> Result<Option<String>, ()> {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(m)) => match m.get("text") {
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                _ => Ok(None),
            },
            Ok(_) => Ok(None),
            Err(_) => Err(()),
        }
    }

    fn read(
        paths: Vec<PathBuf>,
        fail_after: Option<usize>,
    ) -> Result<(Vec<String>, Vec<String>, u64), ShardError> {
        let (mut texts, mut ids, mut batches) = (Vec::new(), Vec::new(), 0);
        let n = read_jsonl_batches(&paths, &fields(), 0, 3, 64, |b| {
            batches += 1;
            if fail_after.is_some_and(|k| batches > k) {
                return Err(ShardError::Settings("the sink stops".into()));
            }
            texts.extend(b.texts);
            ids.extend(b.ids);
            Ok(())
        })?;
        Ok((texts, ids, n))
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    proptest! {
        #![proptest_config(config(256))]

        /// One line: refused exactly when it is not UTF-8 or not an object with a string text
        /// field by `serde_json` (lone surrogate escapes excepted: those are read, as Python's
        /// `json` reads them); else the same text.
        #[test]
        fn lines_agree_with_serde_json(raw in record_line()) {
            let got = parse_line(Path::new("f.jsonl"), 1, &raw, &fields());
            let Ok(line) = std::str::from_utf8(&raw) else {
                prop_assert!(got.is_err());
                return Ok(());
            };
            if line.chars().all(py_space) {
                prop_assert!(matches!(got, Ok(None)));
                return Ok(());
            }
            match reference(line) {
                Ok(Some(text)) => prop_assert_eq!(got.unwrap().unwrap().0, text),
                Ok(None) => prop_assert!(got.is_err()),
                // serde_json refuses lone surrogates, which the reader replaces, and numbers
                // beyond f64, which it skips in fields it does not keep (as Python's json
                // reads them: as infinity).
                Err(()) if replace_lone_surrogates(line).is_some() => {}
                Err(()) if serde_json::from_str::<serde_json::Value>(line)
                    .is_err_and(|e| e.to_string().starts_with("number out of range")) => {}
                Err(()) => prop_assert!(got.is_err(), "{line:?} read as {:?}", got.map(|r| r.map(|r| r.0))),
            }
        }
    }

    /// Nesting costs the parser no stack: a million levels in a field, in the id, or as the
    /// whole line (Python's json gives up near 1000; prep says so, naming the line).
    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let n = 1_000_000;
        for (line, ok) in [
            (format!("{{\"text\": \"a\", \"x\": {}}}", deep(n)), true),
            (format!("{{\"id\": {}, \"text\": \"a\"}}", deep(n)), true),
            (format!("{{\"text\": {}}}", deep(n)), false),
            (deep(n), false),
            ("[".repeat(n), false),
        ] {
            let got = within(60, "parsing a deeply nested line", move || {
                parse_line(Path::new("f.jsonl"), 1, line.as_bytes(), &fields())
                    .map(|r| r.map(|r| r.1))
            });
            assert_eq!(got.is_ok(), ok, "{:?}", got.map_err(|e| e.to_string()));
        }
    }

    proptest! {
        #![proptest_config(config(48))]

        /// Whole files, plain and zstd, with a sink that may stop early: the read ends (no
        /// hang), and when it succeeds there is one record per line that is not blank.
        #[test]
        fn files_are_read_or_refused(
            lines in prop::collection::vec(record_line(), 0..12),
            junk in prop::collection::vec(any::<u8>(), 0..64),
            zst in any::<bool>(),
            fail_after in prop::option::of(0..3usize),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let body = lines.join(&b"\n"[..]);
            let (name, bytes) = if zst {
                ("a.jsonl.zst", crate::compress::compress(&body, 3).unwrap())
            } else {
                ("a.jsonl", body.clone())
            };
            let a = write(dir.path(), name, &bytes);
            let b = write(dir.path(), "b.jsonl", &junk);
            let (p1, p2) = (vec![a.clone(), b], vec![a]);
            let got = within(60, "reading JSON lines", move || (read(p1, fail_after), read(p2, None)));
            if let Ok((texts, ids, n)) = got.1 {
                let records = body
                    .split(|&b| b == b'\n')
                    .filter(|l| std::str::from_utf8(l).is_ok_and(|s| !s.chars().all(py_space)))
                    .count();
                prop_assert_eq!((texts.len(), ids.len(), n), (records, records, records as u64));
            }
        }

        /// A `.jsonl.zst` cut anywhere is refused, never read short; one damaged anywhere is
        /// refused or reads the same records (its frame carries a checksum).
        #[test]
        fn cut_or_damaged_zstd_is_refused(n in 1..40usize, cut in any::<prop::sample::Index>(), e in edits()) {
            let body: String = (0..n).map(|i| format!("{{\"text\": \"document {i} {}\"}}\n", "x".repeat(i))).collect();
            let frame = crate::compress::compress(body.as_bytes(), 3).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let whole = read(vec![write(dir.path(), "whole.jsonl.zst", &frame)], None).unwrap();
            let cut_path = write(dir.path(), "cut.jsonl.zst", &frame[..cut.index(frame.len())]);
            prop_assert!(read(vec![cut_path], None).is_err());
            let damaged = apply(&frame, &e);
            let path = write(dir.path(), "damaged.jsonl.zst", &damaged);
            let got = within(60, "reading damaged zstd", move || read(vec![path], None));
            if let Ok((texts, _, n)) = got {
                prop_assert_eq!((texts, n), (whole.0, whole.2));
            }
        }
    }
}
