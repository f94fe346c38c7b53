//! `manifest.json`: what a dataset holds and how it was made. The trainer opens this file.
//!
//! ```json
//! {
//!   "format": "gristmill-shards", "format_version": 1,
//!   "tokenizer": {"name": "gpt2", "fingerprint": "9b5a…", "n_vocab": 50257, "eot_token": 50256,
//!                 "path": "tokenizer"},
//!   "eot": "append", "dtype": "uint16", "shard_size": 100000000,
//!   "split": {"val_fraction": 0.0005}, "text_field": "text",
//!   "header": {"magic": 20240520, "version": 1, "bytes": 1024},
//!   "documents": 4173,
//!   "splits": {"train": {"tokens": …, "documents": …, "shards": [
//!       {"file": "train_000000.bin", "index": "train_000000.idx", "tokens": …, "documents": …,
//!        "checksum": "xxh3-64:…", "index_checksum": "xxh3-64:…", "max_token": 50256}]},
//!              "val": {…}}
//! }
//! ```
//!
//! `checksum` covers a shard's tokens (bytes 1024..end; the header is checked field by field),
//! `index_checksum` the whole index file. `max_token` is the shard's largest token id, so the
//! trainer can check the tokens against its model's vocabulary without reading them; manifests
//! written before it existed lack it (readers then scan the shard). File names are relative to
//! the manifest and may not leave its folder.

use super::format::{self, Dtype};
use super::ShardError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT: &str = "gristmill-shards";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_NAME: &str = "manifest.json";
pub const SPLITS: [&str; 2] = ["train", "val"];

/// The tokenizer that made the tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub name: String,
    /// `gristmill.Tokenizer.fingerprint`: equal fingerprints encode identically.
    pub fingerprint: String,
    pub n_vocab: u64,
    pub eot_token: u32,
    /// A copy of the tokenizer saved beside the shards (relative directory), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Where each document's end-of-text token goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EotMode {
    /// After the document (as GPT-2 saw `<|endoftext|>`).
    Append,
    /// Before the document, as llm.c's fineweb.py writes it.
    Prepend,
}

impl std::str::FromStr for EotMode {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, ShardError> {
        match s {
            "append" => Ok(EotMode::Append),
            "prepend" => Ok(EotMode::Prepend),
            other => Err(ShardError::Settings(format!(
                "eot must be 'append' or 'prepend', not {other:?}"
            ))),
        }
    }
}

/// Which input documents go to the validation split; decided by a document's position in the
/// input alone, so a rerun makes the same choice.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitRule {
    /// A fraction of documents spread evenly through the input: position `i` is a validation
    /// document when `floor((i + 1) f) > floor(i f)`, so every prefix holds its share.
    ValFraction(f64),
    /// The first `n` documents.
    ValDocs(u64),
}

impl SplitRule {
    pub fn is_val(&self, position: u64) -> bool {
        match *self {
            SplitRule::ValFraction(f) => {
                f > 0.0 && ((position + 1) as f64 * f).floor() > (position as f64 * f).floor()
            }
            SplitRule::ValDocs(n) => position < n,
        }
    }

    pub fn check(&self) -> Result<(), ShardError> {
        match *self {
            SplitRule::ValFraction(f) if !(0.0..1.0).contains(&f) => Err(ShardError::Settings(
                format!("val_fraction must be in [0, 1), not {f}"),
            )),
            _ => Ok(()),
        }
    }
}

/// Everything that decides the bytes of the output; a resumed run must use the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub tokenizer: TokenizerInfo,
    pub eot: EotMode,
    pub dtype: Dtype,
    pub shard_size: u64,
    pub split: SplitRule,
    pub text_field: String,
}

impl Settings {
    pub fn check(&self) -> Result<(), ShardError> {
        self.split.check()?;
        if self.shard_size == 0 || self.shard_size > format::MAX_SHARD_TOKENS {
            return Err(ShardError::Settings(format!(
                "shard_size must be between 1 and {} tokens (the header's count is an int32), not {}",
                format::MAX_SHARD_TOKENS,
                self.shard_size
            )));
        }
        if Dtype::for_vocab(self.tokenizer.n_vocab as usize) != self.dtype {
            return Err(ShardError::Settings(format!(
                "dtype {} does not fit a vocabulary of {} ids",
                self.dtype.name(),
                self.tokenizer.n_vocab
            )));
        }
        if self.tokenizer.eot_token as u64 >= self.tokenizer.n_vocab {
            return Err(ShardError::Settings(format!(
                "end-of-text id {} is outside the vocabulary of {} ids",
                self.tokenizer.eot_token, self.tokenizer.n_vocab
            )));
        }
        Ok(())
    }

    /// The first setting in which `self` and `other` differ, if any (the tokenizer's display
    /// name does not count).
    pub fn difference(&self, other: &Settings) -> Option<String> {
        let (a, b) = (&self.tokenizer, &other.tokenizer);
        let diffs = [
            ("tokenizer fingerprint", a.fingerprint != b.fingerprint),
            ("eot", self.eot != other.eot),
            ("dtype", self.dtype != other.dtype),
            ("shard_size", self.shard_size != other.shard_size),
            ("split", self.split != other.split),
            ("text_field", self.text_field != other.text_field),
        ];
        diffs
            .iter()
            .find(|(_, d)| *d)
            .map(|(name, _)| name.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderInfo {
    pub magic: i32,
    pub version: i32,
    pub bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub index: String,
    pub tokens: u64,
    pub documents: u64,
    pub checksum: String,
    pub index_checksum: String,
    /// The largest token id in the shard (None: an empty shard, or an older manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitEntry {
    pub tokens: u64,
    pub documents: u64,
    pub shards: Vec<ShardEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    #[serde(flatten)]
    pub settings: Settings,
    pub header: HeaderInfo,
    /// Input documents read (both splits).
    pub documents: u64,
    pub splits: BTreeMap<String, SplitEntry>,
}

impl Manifest {
    pub fn new(settings: Settings, documents: u64, splits: BTreeMap<String, SplitEntry>) -> Self {
        Manifest {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            header: HeaderInfo {
                magic: format::MAGIC,
                version: settings.dtype.version(),
                bytes: format::HEADER_BYTES,
            },
            settings,
            documents,
            splits,
        }
    }

    pub fn read(path: &Path) -> Result<Manifest, ShardError> {
        let text = std::fs::read_to_string(path).map_err(|e| ShardError::io(path, e))?;
        Manifest::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ShardError> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| {
            ShardError::manifest(
                path,
                format!("line {}, column {}: {e}", e.line(), e.column()),
            )
        })?;
        if m.format != FORMAT || m.format_version != FORMAT_VERSION {
            return Err(ShardError::manifest(
                path,
                format!(
                    "format is {:?} version {}, expected {FORMAT:?} version {FORMAT_VERSION}",
                    m.format, m.format_version
                ),
            ));
        }
        for (name, split) in &m.splits {
            // Summed as u128: a damaged manifest's counts may overflow u64 (a panic).
            let tokens: u128 = split.shards.iter().map(|s| s.tokens as u128).sum();
            let docs: u128 = split.shards.iter().map(|s| s.documents as u128).sum();
            if tokens != split.tokens as u128 || docs != split.documents as u128 {
                return Err(ShardError::manifest(
                    path,
                    format!(
                        "split {name:?} lists {} tokens and {} documents, its shards add up to \
                         {tokens} and {docs}",
                        split.tokens, split.documents
                    ),
                ));
            }
        }
        m.check_settings(path)?;
        m.check_paths(path)?;
        Ok(m)
    }

    /// The settings and header must agree with each other as the writer makes them: a
    /// hand-edited or damaged manifest that contradicts itself would make a reader misread
    /// the shards (a dtype too narrow for the ids) or trust wrong totals.
    fn check_settings(&self, path: &Path) -> Result<(), ShardError> {
        let bad = |field: &str, found: String, expected: String| {
            Err(ShardError::manifest(
                path,
                format!("{field} is {found}, expected {expected}"),
            ))
        };
        let s = &self.settings;
        let n_vocab = s.tokenizer.n_vocab;
        // Ids are u32, so no vocabulary holds more than 2^32 of them.
        if n_vocab == 0 || n_vocab > 1 << 32 {
            return bad(
                "tokenizer.n_vocab",
                n_vocab.to_string(),
                "between 1 and 4294967296".into(),
            );
        }
        if s.tokenizer.eot_token as u64 >= n_vocab {
            return bad(
                "tokenizer.eot_token",
                s.tokenizer.eot_token.to_string(),
                format!("an id below tokenizer.n_vocab ({n_vocab})"),
            );
        }
        let dtype = Dtype::for_vocab(n_vocab as usize);
        if s.dtype != dtype {
            return bad(
                "dtype",
                format!("{:?}", s.dtype.name()),
                format!("{:?} for tokenizer.n_vocab {n_vocab}", dtype.name()),
            );
        }
        if s.shard_size == 0 || s.shard_size > format::MAX_SHARD_TOKENS {
            return bad(
                "shard_size",
                s.shard_size.to_string(),
                format!(
                    "between 1 and {} tokens (the header's count is an int32)",
                    format::MAX_SHARD_TOKENS
                ),
            );
        }
        match s.split {
            SplitRule::ValFraction(f) if !(0.0..1.0).contains(&f) => {
                return bad(
                    "split.val_fraction",
                    f.to_string(),
                    "a fraction in [0, 1)".into(),
                );
            }
            _ => {}
        }
        let h = &self.header;
        if h.magic != format::MAGIC {
            return bad(
                "header.magic",
                h.magic.to_string(),
                format::MAGIC.to_string(),
            );
        }
        if h.version != s.dtype.version() {
            return bad(
                "header.version",
                h.version.to_string(),
                format!("{} (dtype {:?})", s.dtype.version(), s.dtype.name()),
            );
        }
        if h.bytes != format::HEADER_BYTES {
            return bad(
                "header.bytes",
                h.bytes.to_string(),
                format::HEADER_BYTES.to_string(),
            );
        }
        // Every input document gets a record in one split, so the splits add up to the total.
        let split_docs = self
            .splits
            .values()
            .try_fold(0u64, |sum, s| sum.checked_add(s.documents));
        if split_docs != Some(self.documents) {
            let sum = split_docs.map_or("more than 2^64".to_string(), |d| d.to_string());
            return bad(
                "documents",
                self.documents.to_string(),
                format!("{sum}, the documents of the splits added up"),
            );
        }
        Ok(())
    }

    /// Every file the manifest names must lie in its folder: a hostile or careless manifest
    /// must not make a reader open `../secret` or `/etc/passwd`.
    fn check_paths(&self, path: &Path) -> Result<(), ShardError> {
        let outside = |what: String, name: &str| {
            ShardError::manifest(
                path,
                format!(
                    "{what} {name:?} is outside the dataset folder; entries must be paths \
                     relative to {MANIFEST_NAME}, without '..'"
                ),
            )
        };
        if let Some(dir) = &self.settings.tokenizer.path {
            if !is_inside(dir) {
                return Err(outside("tokenizer path".into(), dir));
            }
        }
        for (name, split) in &self.splits {
            for (i, s) in split.shards.iter().enumerate() {
                for (key, value) in [("file", &s.file), ("index", &s.index)] {
                    if !is_inside(value) {
                        return Err(outside(format!("split {name:?} shard {i}: {key}"), value));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serialises") + "\n"
    }
}

/// True when `name` is a relative path that stays below the folder it is relative to.
fn is_inside(name: &str) -> bool {
    use std::path::Component;
    let p = Path::new(name);
    // Drive letters and backslashes mean nothing on Unix but leave the folder on Windows.
    let windows_root = name.contains('\\') || name.as_bytes().get(1) == Some(&b':');
    !name.is_empty()
        && !windows_root
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eot_modes_parse_by_name() {
        assert_eq!("append".parse::<EotMode>().unwrap(), EotMode::Append);
        assert_eq!("prepend".parse::<EotMode>().unwrap(), EotMode::Prepend);
        let e = "after".parse::<EotMode>().unwrap_err().to_string();
        assert!(e.contains("'append' or 'prepend'"), "{e}");
    }

    pub(crate) fn settings() -> Settings {
        Settings {
            tokenizer: TokenizerInfo {
                name: "t".into(),
                fingerprint: "f".into(),
                n_vocab: 300,
                eot_token: 299,
                path: None,
            },
            eot: EotMode::Append,
            dtype: Dtype::U16,
            shard_size: 10,
            split: SplitRule::ValFraction(0.25),
            text_field: "text".into(),
        }
    }

    #[test]
    fn fraction_rule_spreads_evenly() {
        let r = SplitRule::ValFraction(0.25);
        let val: Vec<u64> = (0..12).filter(|&i| r.is_val(i)).collect();
        assert_eq!(val, vec![3, 7, 11]);
        assert!(!(0..100).any(|i| SplitRule::ValFraction(0.0).is_val(i)));
        let first = SplitRule::ValDocs(2);
        assert!(first.is_val(1) && !first.is_val(2));
        assert!(SplitRule::ValFraction(1.0).check().is_err());
    }

    #[test]
    fn manifest_json_round_trip() {
        let mut splits = BTreeMap::new();
        splits.insert(
            "train".to_string(),
            SplitEntry {
                tokens: 7,
                documents: 2,
                shards: vec![ShardEntry {
                    file: "train_000000.bin".into(),
                    index: "train_000000.idx".into(),
                    tokens: 7,
                    documents: 2,
                    checksum: "xxh3-64:00".into(),
                    index_checksum: "xxh3-64:01".into(),
                    max_token: Some(299),
                }],
            },
        );
        let m = Manifest::new(settings(), 2, splits);
        let text = m.to_json();
        assert!(text.contains("\"val_fraction\": 0.25"), "{text}");
        assert!(text.contains("\"dtype\": \"uint16\""), "{text}");
        assert_eq!(Manifest::parse(&text, Path::new("m.json")).unwrap(), m);
        let mut broken = m.clone();
        broken.splits.get_mut("train").unwrap().tokens = 8;
        let e = Manifest::parse(&broken.to_json(), Path::new("m.json")).unwrap_err();
        assert!(e.to_string().contains("add up to 7"), "{e}");
        let e = Manifest::parse("{", Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.json: line 1"), "{e}");
    }

    fn one_shard(file: &str) -> Manifest {
        let mut splits = BTreeMap::new();
        let shard = ShardEntry {
            file: file.into(),
            index: "train_000000.idx".into(),
            tokens: 7,
            documents: 2,
            checksum: "xxh3-64:00".into(),
            index_checksum: "xxh3-64:01".into(),
            max_token: None,
        };
        let split = SplitEntry {
            tokens: 7,
            documents: 2,
            shards: vec![shard],
        };
        splits.insert("train".to_string(), split);
        Manifest::new(settings(), 2, splits)
    }

    #[test]
    fn an_older_manifest_without_max_token_reads() {
        let m = one_shard("train_000000.bin");
        let text = m.to_json();
        assert!(!text.contains("max_token"), "{text}");
        let back = Manifest::parse(&text, Path::new("m.json")).unwrap();
        assert_eq!(back.splits["train"].shards[0].max_token, None);
    }

    #[test]
    fn entries_outside_the_folder_are_refused() {
        for ok in ["train_000000.bin", "sub/train_000000.bin", "./a.bin"] {
            Manifest::parse(&one_shard(ok).to_json(), Path::new("m.json")).unwrap();
        }
        for bad in [
            "../x.bin",
            "/etc/passwd",
            "a/../../x",
            "",
            "C:x",
            "\\\\host\\x",
            "..\\x",
        ] {
            let e = Manifest::parse(&one_shard(bad).to_json(), Path::new("d/m.json"))
                .unwrap_err()
                .to_string();
            let expect = format!("d/m.json: split \"train\" shard 0: file {bad:?} is outside");
            assert!(e.starts_with(&expect), "{e}");
        }
        let mut m = one_shard("a.bin");
        m.settings.tokenizer.path = Some("../tok".into());
        let e = Manifest::parse(&m.to_json(), Path::new("m.json")).unwrap_err();
        assert!(
            e.to_string()
                .contains("tokenizer path \"../tok\" is outside"),
            "{e}"
        );
    }
}

/// Fuzzing the manifest parser (issue 18): arbitrary and damaged text is parsed or refused,
/// never a panic; text that is no longer JSON is refused; what is accepted agrees with itself
/// (the split totals, the settings, the header). `PROPTEST_CASES` sets the cases (see
/// `crate::fuzz`).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{apply, config, edits};
    use proptest::prelude::*;

    fn shard(i: usize, tokens: u64, documents: u64) -> ShardEntry {
        ShardEntry {
            file: format!("train_{i:06}.bin"),
            index: format!("train_{i:06}.idx"),
            tokens,
            documents,
            checksum: "xxh3-64:0123456789abcdef".into(),
            index_checksum: "xxh3-64:fedcba9876543210".into(),
            max_token: Some(7),
        }
    }

    fn valid() -> Manifest {
        let mut splits = BTreeMap::new();
        let train = vec![shard(0, 10, 3), shard(1, 4, 1)];
        splits.insert(
            "train".to_string(),
            SplitEntry {
                tokens: 14,
                documents: 4,
                shards: train,
            },
        );
        splits.insert(
            "val".to_string(),
            SplitEntry {
                tokens: 10,
                documents: 2,
                shards: vec![shard(2, 10, 2)],
            },
        );
        Manifest::new(super::tests::settings(), 6, splits)
    }

    /// What a reader of an accepted manifest relies on.
    fn assert_holds_together(m: &Manifest) {
        assert_eq!(
            (m.format.as_str(), m.format_version),
            (FORMAT, FORMAT_VERSION)
        );
        for split in m.splits.values() {
            assert_eq!(
                split.tokens,
                split.shards.iter().map(|s| s.tokens).sum::<u64>()
            );
            assert_eq!(
                split.documents,
                split.shards.iter().map(|s| s.documents).sum::<u64>()
            );
        }
        let docs: u64 = m.splits.values().map(|s| s.documents).sum();
        assert_eq!(m.documents, docs);
        let s = &m.settings;
        assert_eq!(s.dtype, Dtype::for_vocab(s.tokenizer.n_vocab as usize));
        assert!((s.tokenizer.eot_token as u64) < s.tokenizer.n_vocab);
        assert!(s.shard_size > 0);
        assert_eq!(m.header.version, s.dtype.version());
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn any_text_is_parsed_or_refused(text in "\\PC{0,300}") {
            if let Ok(m) = Manifest::parse(&text, Path::new("manifest.json")) {
                assert_holds_together(&m);
            }
        }

        #[test]
        fn damaged_manifests_are_parsed_or_refused(e in edits()) {
            let damaged = apply(valid().to_json().as_bytes(), &e);
            let Ok(text) = std::str::from_utf8(&damaged) else {
                return Ok(()); // `Manifest::read` refuses a file that is not UTF-8
            };
            let parsed = Manifest::parse(text, Path::new("manifest.json"));
            if serde_json::from_str::<serde_json::Value>(text).is_err() {
                prop_assert!(parsed.is_err());
            }
            if let Ok(m) = parsed {
                assert_holds_together(&m);
            }
        }

        /// A manifest cut anywhere (an interrupted copy) is refused.
        #[test]
        fn cut_manifests_are_refused(cut in any::<prop::sample::Index>()) {
            let text = valid().to_json();
            let text = text.trim_end();
            let at = cut.index(text.len());
            prop_assume!(text.is_char_boundary(at));
            prop_assert!(Manifest::parse(&text[..at], Path::new("manifest.json")).is_err());
        }
    }

    /// Settings no writer makes (a dtype too narrow for the vocabulary, an end-of-text id
    /// outside it, a header for another dtype, a document total that disagrees with the
    /// splits, a zero shard size) are refused, naming the field, what it holds and what was
    /// expected.
    #[test]
    fn settings_that_disagree_are_refused() {
        let text = valid().to_json();
        assert!(Manifest::parse(&text, Path::new("m.json")).is_ok());
        for (from, to) in [
            ("\"n_vocab\": 300", "\"n_vocab\": 70000"),
            ("\"eot_token\": 299", "\"eot_token\": 300"),
            ("\"version\": 1", "\"version\": 2"),
            ("\"magic\": 20240520", "\"magic\": 20240521"),
            ("\"bytes\": 1024", "\"bytes\": 512"),
            ("\"documents\": 6", "\"documents\": 7"),
            ("\"shard_size\": 10", "\"shard_size\": 0"),
        ] {
            assert!(text.contains(from), "{from} not in {text}");
            let bad = text.replace(from, to);
            let got = Manifest::parse(&bad, Path::new("m.json"));
            let e = got.expect_err(&format!("{to} was accepted")).to_string();
            let field = from.split('"').nth(1).unwrap();
            let found = to.rsplit(' ').next().unwrap();
            assert!(e.starts_with("m.json: "), "{e}");
            assert!(
                e.contains(field) && e.contains(found) && e.contains("expected"),
                "{e}"
            );
        }
    }
}
