//! The on-disk formats: token shards (`.bin`) and their document indexes (`.idx`).
//!
//! ## Token shard (`train_000000.bin`): llm.c's format
//!
//! | bytes            | what                                                     |
//! |------------------|----------------------------------------------------------|
//! | 0..4             | int32 LE magic, 20240520                                 |
//! | 4..8             | int32 LE version: 1 = uint16 tokens, 2 = uint32 tokens   |
//! | 8..12            | int32 LE token count `n`                                 |
//! | 12..1024         | 253 int32, all zero (reserved)                           |
//! | 1024..1024+n*w   | `n` little-endian tokens, `w` = 2 (v1) or 4 (v2) bytes    |
//!
//! Version 1 is exactly what llm.c's `dev/data/data_common.py` writes for GPT-2 and what its
//! C loader and modded-nanogpt's loader read: they check magic and version, then that the file
//! is `1024 + 2n` bytes. Tokens are uint16 iff the vocabulary has at most 65,536 ids.
//!
//! Version 2 is ours: same magic and header, uint32 tokens. llm.c's own uint32 format uses
//! another magic (20240801) with version 7, so we do not reuse that pair: a file that says
//! 20240801/7 promises llm.c's llama-3 conventions, which ours do not follow. And llm.c has never
//! used version 2 with magic 20240520, so its loaders (which insist on version 1) refuse our
//! uint32 shards instead of misreading them as uint16.
//!
//! ## Document index (`train_000000.idx`): gristmill's own
//!
//! All integers little-endian u64 except the first two fields.
//!
//! | bytes              | what                                                           |
//! |--------------------|----------------------------------------------------------------|
//! | 0..4               | u32 magic, the ASCII bytes `gmix`                              |
//! | 4..8               | u32 version, 1                                                 |
//! | 8..16              | `d`: documents that start in this shard                        |
//! | 16..24             | tokens in the shard (equal to the `.bin` header's count)       |
//! | 24..32             | documents of the split that start in earlier shards            |
//! | 32..40             | xxh3-64 of the `.bin` tokens (bytes 1024..end)                 |
//! | 40..48             | `s`: bytes of source ids                                       |
//! | 48..64             | reserved, zero                                                 |
//! | 64..               | `d` token offsets (in this shard) where each document starts    |
//! | ..                 | `d` positions of those documents in the tokenizer's input       |
//! | ..                 | `d + 1` byte offsets into the source ids                        |
//! | ..                 | `s` bytes: the source ids, UTF-8, concatenated                 |
//!
//! A document's tokens are its record: the end-of-text token then its text's tokens when
//! end-of-text is prepended (llm.c's choice), or the text's tokens then end-of-text when it is
//! appended. A record runs to the next document's start, which may lie in a later shard: shards
//! are filled to exactly `shard_size` tokens, as llm.c's writers do.

use super::ShardError;
use std::path::Path;

/// The first int32 of every token shard.
pub const MAGIC: i32 = 20240520;
/// The version of a shard of uint16 tokens (llm.c's).
pub const VERSION_U16: i32 = 1;
/// The version of a shard of uint32 tokens (ours; see the module docs for why 2).
pub const VERSION_U32: i32 = 2;
/// Header size in bytes: 256 int32.
pub const HEADER_BYTES: usize = 1024;
const HEADER_INTS: usize = HEADER_BYTES / 4;
/// The most tokens one shard can hold: the header's count is an int32.
pub const MAX_SHARD_TOKENS: u64 = i32::MAX as u64;

/// The first four bytes of every index file.
pub const INDEX_MAGIC: [u8; 4] = *b"gmix";
pub const INDEX_VERSION: u32 = 1;
pub const INDEX_HEADER_BYTES: usize = 64;

/// How tokens are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dtype {
    #[serde(rename = "uint16")]
    U16,
    #[serde(rename = "uint32")]
    U32,
}

impl Dtype {
    /// uint16 iff every id of a vocabulary of `n_vocab` ids fits.
    pub fn for_vocab(n_vocab: usize) -> Dtype {
        if n_vocab <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }

    /// The header version that announces this dtype.
    pub fn version(self) -> i32 {
        match self {
            Dtype::U16 => VERSION_U16,
            Dtype::U32 => VERSION_U32,
        }
    }

    pub fn from_version(version: i32) -> Option<Dtype> {
        match version {
            VERSION_U16 => Some(Dtype::U16),
            VERSION_U32 => Some(Dtype::U32),
            _ => None,
        }
    }

    /// numpy's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
        }
    }
}

/// The header of a shard holding `count` tokens of `dtype`.
pub fn encode_header(dtype: Dtype, count: u64) -> [u8; HEADER_BYTES] {
    assert!(
        count <= MAX_SHARD_TOKENS,
        "shard count checked by the writer"
    );
    let mut ints = [0i32; HEADER_INTS];
    ints[0] = MAGIC;
    ints[1] = dtype.version();
    ints[2] = count as i32;
    let mut out = [0u8; HEADER_BYTES];
    for (chunk, v) in out.chunks_exact_mut(4).zip(ints) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}

fn int_at(bytes: &[u8], i: usize) -> i32 {
    i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
}

/// What a valid header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub dtype: Dtype,
    pub count: u64,
}

/// Checks a shard's header against the file's size, as llm.c's C loader does: magic, version,
/// and `file_len == 1024 + count * width`. With `strict`, the reserved ints must be zero too
/// (every writer we know leaves them zero; gristmill's own files are opened strictly).
pub fn decode_header(
    path: &Path,
    bytes: &[u8],
    file_len: u64,
    strict: bool,
) -> Result<Header, ShardError> {
    if bytes.len() < HEADER_BYTES {
        return Err(ShardError::field(
            path,
            "file length",
            0,
            file_len,
            format!("at least {HEADER_BYTES} bytes (the header)"),
        ));
    }
    let magic = int_at(bytes, 0);
    if magic != MAGIC {
        return Err(ShardError::field(path, "magic", 0, magic, MAGIC));
    }
    let version = int_at(bytes, 1);
    let dtype = Dtype::from_version(version).ok_or_else(|| {
        ShardError::field(
            path,
            "version",
            4,
            version,
            format!("{VERSION_U16} (uint16) or {VERSION_U32} (uint32)"),
        )
    })?;
    let count = int_at(bytes, 2);
    if count < 0 {
        return Err(ShardError::field(
            path,
            "token count",
            8,
            count,
            "a count >= 0",
        ));
    }
    let count = count as u64;
    let expected = HEADER_BYTES as u64 + count * dtype.width() as u64;
    if file_len != expected {
        return Err(ShardError::Size {
            path: path.to_path_buf(),
            count,
            expected,
            found: file_len,
        });
    }
    if strict {
        if let Some(i) = (3..HEADER_INTS).find(|&i| int_at(bytes, i) != 0) {
            return Err(ShardError::field(
                path,
                "reserved header int",
                4 * i as u64,
                int_at(bytes, i),
                0,
            ));
        }
    }
    Ok(Header { dtype, count })
}

/// The fixed part of an index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    pub n_docs: u64,
    pub n_tokens: u64,
    pub first_doc: u64,
    pub checksum: u64,
    pub ids_bytes: u64,
}

impl IndexHeader {
    /// The index file's length.
    pub fn file_len(&self) -> u64 {
        INDEX_HEADER_BYTES as u64 + 8 * (3 * self.n_docs + 1) + self.ids_bytes
    }

    /// Byte offsets of the starts, positions and id-offset arrays.
    pub fn array_offsets(&self) -> [usize; 4] {
        let d = self.n_docs as usize;
        let starts = INDEX_HEADER_BYTES;
        let positions = starts + 8 * d;
        let id_offsets = positions + 8 * d;
        let ids = id_offsets + 8 * (d + 1);
        [starts, positions, id_offsets, ids]
    }
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

/// Serialises a whole index file.
pub fn encode_index(
    header: &IndexHeader,
    starts: &[u64],
    positions: &[u64],
    id_offsets: &[u64],
    ids: &[u8],
) -> Vec<u8> {
    debug_assert_eq!(starts.len() as u64, header.n_docs);
    debug_assert_eq!(positions.len(), starts.len());
    debug_assert_eq!(id_offsets.len(), starts.len() + 1);
    debug_assert_eq!(ids.len() as u64, header.ids_bytes);
    let mut out = Vec::with_capacity(header.file_len() as usize);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    for v in [
        header.n_docs,
        header.n_tokens,
        header.first_doc,
        header.checksum,
        header.ids_bytes,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.resize(INDEX_HEADER_BYTES, 0);
    for v in starts.iter().chain(positions).chain(id_offsets) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(ids);
    out
}

/// Checks an index file's structure: magic, version, length, and that starts increase within
/// the shard and id offsets increase within the id bytes.
pub fn decode_index(path: &Path, bytes: &[u8]) -> Result<IndexHeader, ShardError> {
    let len = bytes.len() as u64;
    if bytes.len() < INDEX_HEADER_BYTES {
        return Err(ShardError::field(
            path,
            "file length",
            0,
            len,
            format!("at least {INDEX_HEADER_BYTES} bytes (the index header)"),
        ));
    }
    if bytes[..4] != INDEX_MAGIC {
        return Err(ShardError::field(
            path,
            "magic",
            0,
            format!("{:?}", String::from_utf8_lossy(&bytes[..4])),
            "\"gmix\"",
        ));
    }
    let version = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    if version != INDEX_VERSION {
        return Err(ShardError::field(
            path,
            "version",
            4,
            version,
            INDEX_VERSION,
        ));
    }
    let header = IndexHeader {
        n_docs: u64_at(bytes, 8),
        n_tokens: u64_at(bytes, 16),
        first_doc: u64_at(bytes, 24),
        checksum: u64_at(bytes, 32),
        ids_bytes: u64_at(bytes, 40),
    };
    if let Some(off) = (48..64).step_by(8).find(|&o| u64_at(bytes, o) != 0) {
        return Err(ShardError::field(
            path,
            "reserved field",
            off as u64,
            u64_at(bytes, off),
            0,
        ));
    }
    // Checked arithmetic: a corrupt count must not overflow into a plausible length.
    let expected = header
        .n_docs
        .checked_mul(24)
        .and_then(|v| v.checked_add(8 + INDEX_HEADER_BYTES as u64))
        .and_then(|v| v.checked_add(header.ids_bytes));
    if expected != Some(len) {
        return Err(ShardError::field(
            path,
            "file length",
            0,
            len,
            format!(
                "{} bytes for {} documents and {} bytes of ids (counts at bytes 8 and 40)",
                expected.map_or("more than 2^64".to_string(), |e| e.to_string()),
                header.n_docs,
                header.ids_bytes
            ),
        ));
    }
    let [starts, _, id_offsets, _] = header.array_offsets();
    let mut prev = 0u64;
    for i in 0..header.n_docs as usize {
        let off = starts + 8 * i;
        let s = u64_at(bytes, off);
        if s < prev || s >= header.n_tokens || (i > 0 && s == prev) {
            return Err(ShardError::field(
                path,
                "document start",
                off as u64,
                s,
                format!(
                    "an offset above the previous start ({prev}) and below the shard's {} tokens",
                    header.n_tokens
                ),
            ));
        }
        prev = s;
    }
    let mut prev = 0u64;
    for i in 0..=header.n_docs as usize {
        let off = id_offsets + 8 * i;
        let o = u64_at(bytes, off);
        let bad_first = i == 0 && o != 0;
        let bad_last = i == header.n_docs as usize && o != header.ids_bytes;
        if o < prev || o > header.ids_bytes || bad_first || bad_last {
            return Err(ShardError::field(
                path,
                "source id offset",
                off as u64,
                o,
                format!(
                    "non-decreasing offsets from 0 to {} (the id bytes)",
                    header.ids_bytes
                ),
            ));
        }
        prev = o;
    }
    Ok(header)
}

/// The xxh3-64 checksum the manifest and index record, as text: `xxh3-64:<16 hex digits>`.
pub fn checksum_text(checksum: u64) -> String {
    format!("xxh3-64:{checksum:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.bin")
    }

    #[test]
    fn dtype_rule_is_65536_inclusive() {
        assert_eq!(Dtype::for_vocab(50257), Dtype::U16);
        assert_eq!(Dtype::for_vocab(65536), Dtype::U16);
        assert_eq!(Dtype::for_vocab(65537), Dtype::U32);
        assert_eq!(Dtype::from_version(1), Some(Dtype::U16));
        assert_eq!(Dtype::from_version(2), Some(Dtype::U32));
        assert_eq!(Dtype::from_version(7), None);
    }

    #[test]
    fn header_matches_llm_c_layout() {
        let h = encode_header(Dtype::U16, 5);
        assert_eq!(&h[0..4], &20240520i32.to_le_bytes());
        assert_eq!(&h[4..8], &1i32.to_le_bytes());
        assert_eq!(&h[8..12], &5i32.to_le_bytes());
        assert!(h[12..].iter().all(|&b| b == 0));
        let got = decode_header(p(), &h, 1024 + 10, true).unwrap();
        assert_eq!(
            got,
            Header {
                dtype: Dtype::U16,
                count: 5
            }
        );
    }

    #[test]
    fn header_errors_name_file_offset_expected_found() {
        let mut h = encode_header(Dtype::U32, 3);
        let e = decode_header(p(), &h, 1024 + 11, true).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("t.bin") && msg.contains("1036") && msg.contains("1035"),
            "{msg}"
        );

        h[0] = 0x19; // 20240520 -> 20240409
        let msg = decode_header(p(), &h, 1036, true).unwrap_err().to_string();
        assert!(msg.starts_with("t.bin: magic at byte 0 is "), "{msg}");
        assert!(msg.contains("expected 20240520"), "{msg}");

        let mut h = encode_header(Dtype::U16, 0);
        h[4] = 7;
        let msg = decode_header(p(), &h, 1024, true).unwrap_err().to_string();
        assert!(msg.contains("version at byte 4 is 7"), "{msg}");

        let mut h = encode_header(Dtype::U16, 0);
        h[100] = 1;
        assert!(decode_header(p(), &h, 1024, false).is_ok());
        let msg = decode_header(p(), &h, 1024, true).unwrap_err().to_string();
        assert!(msg.contains("byte 100"), "{msg}");

        let msg = decode_header(p(), &h[..10], 10, true)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("at least 1024 bytes"), "{msg}");
    }

    #[test]
    fn index_round_trip_and_validation() {
        let header = IndexHeader {
            n_docs: 2,
            n_tokens: 10,
            first_doc: 3,
            checksum: 42,
            ids_bytes: 3,
        };
        let bytes = encode_index(&header, &[0, 4], &[7, 9], &[0, 1, 3], b"abc");
        assert_eq!(bytes.len() as u64, header.file_len());
        assert_eq!(decode_index(Path::new("t.idx"), &bytes).unwrap(), header);

        let mut bad = bytes.clone();
        bad[64 + 8] = 11; // second start beyond the shard
        let msg = decode_index(Path::new("t.idx"), &bad)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("document start at byte 72 is 11"), "{msg}");

        let msg = decode_index(Path::new("t.idx"), &bytes[..bytes.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("file length"), "{msg}");
    }
}

/// Fuzzing the header and index decoders (issue 18): arbitrary and damaged bytes are decoded
/// or refused, never a panic; what they accept holds together; a changed header or a file of
/// another length is refused. `PROPTEST_CASES` sets the cases (see `crate::fuzz`).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{apply, config, edits};
    use proptest::prelude::*;

    fn p() -> &'static Path {
        Path::new("fuzz.bin")
    }

    /// An index of `n` documents spread over `4n + 1` tokens, with ids "d0", "d1", ...
    fn valid_index(n: u64) -> Vec<u8> {
        let starts: Vec<u64> = (0..n).map(|i| 4 * i).collect();
        let positions: Vec<u64> = (0..n).map(|i| 10 + i).collect();
        let ids: String = (0..n).map(|i| format!("d{i}")).collect();
        let mut offsets = vec![0u64];
        for i in 0..n {
            offsets.push(offsets.last().unwrap() + format!("d{i}").len() as u64);
        }
        let header = IndexHeader {
            n_docs: n,
            n_tokens: 4 * n + 1,
            first_doc: 3,
            checksum: 0xfeed,
            ids_bytes: ids.len() as u64,
        };
        encode_index(&header, &starts, &positions, &offsets, ids.as_bytes())
    }

    /// What an accepted index promises its readers, checked without `decode_index`: every
    /// array lies inside the file, starts increase below the token count, id offsets run from
    /// 0 to the id bytes without going back.
    fn assert_holds_together(bytes: &[u8], h: &IndexHeader) {
        assert_eq!(h.file_len(), bytes.len() as u64);
        let [starts, _, id_offsets, ids] = h.array_offsets();
        assert_eq!(ids as u64 + h.ids_bytes, bytes.len() as u64);
        let at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let starts: Vec<u64> = (0..h.n_docs as usize).map(|i| at(starts + 8 * i)).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        assert!(starts.iter().all(|&s| s < h.n_tokens));
        let offsets: Vec<u64> = (0..=h.n_docs as usize)
            .map(|i| at(id_offsets + 8 * i))
            .collect();
        assert_eq!((offsets[0], *offsets.last().unwrap()), (0, h.ids_bytes));
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    }

    fn assert_header_holds_together(bytes: &[u8], file_len: u64, strict: bool, h: &Header) {
        let int = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(int(0), MAGIC);
        assert_eq!(Dtype::from_version(int(1)), Some(h.dtype));
        assert_eq!(int(2) as u64, h.count);
        assert_eq!(
            file_len,
            HEADER_BYTES as u64 + h.count * h.dtype.width() as u64
        );
        if strict {
            assert!((3..HEADER_INTS).all(|i| int(i) == 0));
        }
    }

    /// A header whose first three ints are drawn from values near the valid ones.
    fn near_valid_header() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just(MAGIC), any::<i32>()],
            prop_oneof![Just(1), Just(2), any::<i32>()],
            prop_oneof![0..100i32, any::<i32>()],
            prop::collection::vec(
                prop_oneof![9 => Just(0u8), 1 => any::<u8>()],
                HEADER_BYTES - 12,
            ),
        )
            .prop_map(|(m, v, c, rest)| {
                let mut out = Vec::with_capacity(HEADER_BYTES);
                for x in [m, v, c] {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                out.extend(rest);
                out
            })
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn headers_of_any_bytes_are_decoded_or_refused(
            bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..1100), near_valid_header()],
            len in prop_oneof![Just(None), Just(Some(1024u64)), (0..400u64).prop_map(|n| Some(1024 + n)), any::<u64>().prop_map(Some)],
            strict in any::<bool>(),
        ) {
            let file_len = len.unwrap_or(bytes.len() as u64);
            if let Ok(h) = decode_header(p(), &bytes, file_len, strict) {
                assert_header_holds_together(&bytes, file_len, strict, &h);
            }
        }

        /// Any byte of a non-empty shard's header changed, or a file of another length, is
        /// refused when opened strictly (as gristmill opens its own shards).
        #[test]
        fn a_changed_header_or_length_is_refused(
            count in 1u64..5000,
            wide in any::<bool>(),
            at in 0..HEADER_BYTES,
            mask in 0..=255u8,
            delta in -8i64..8,
        ) {
            prop_assume!(mask != 0 || delta != 0);
            let dtype = if wide { Dtype::U32 } else { Dtype::U16 };
            let mut h = encode_header(dtype, count);
            h[at] ^= mask;
            let len = (HEADER_BYTES as u64 + count * dtype.width() as u64).saturating_add_signed(delta);
            prop_assert!(decode_header(p(), &h, len, true).is_err());
        }

        #[test]
        fn indexes_of_any_bytes_are_decoded_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(h) = decode_index(p(), &bytes) {
                assert_holds_together(&bytes, &h);
            }
        }

        /// Indexes past the magic and version, with counts and arrays drawn near valid ones.
        #[test]
        fn indexes_with_valid_magic_are_decoded_or_refused(
            n_docs in prop_oneof![0..6u64, any::<u64>()],
            n_tokens in prop_oneof![0..30u64, any::<u64>()],
            ids_bytes in prop_oneof![0..12u64, any::<u64>()],
            body in prop::collection::vec(prop_oneof![0..16u64, any::<u64>()], 0..20),
            tail in prop::collection::vec(any::<u8>(), 0..12),
        ) {
            let mut bytes = INDEX_MAGIC.to_vec();
            bytes.extend_from_slice(&INDEX_VERSION.to_le_bytes());
            for v in [n_docs, n_tokens, 0, 0, ids_bytes, 0, 0] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            for v in body {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes.extend(tail);
            if let Ok(h) = decode_index(p(), &bytes) {
                assert_holds_together(&bytes, &h);
            }
        }

        #[test]
        fn damaged_indexes_are_decoded_or_refused(n in 0u64..8, e in edits()) {
            let damaged = apply(&valid_index(n), &e);
            if let Ok(h) = decode_index(p(), &damaged) {
                assert_holds_together(&damaged, &h);
            }
        }

        /// A cut or extended index (an interrupted copy, an append) is refused.
        #[test]
        fn cut_or_extended_indexes_are_refused(n in 0u64..8, cut in any::<prop::sample::Index>(), extra in prop::collection::vec(any::<u8>(), 1..16)) {
            let valid = valid_index(n);
            prop_assert!(decode_index(p(), &valid[..cut.index(valid.len())]).is_err());
            prop_assert!(decode_index(p(), &[valid.clone(), extra].concat()).is_err());
        }
    }
}
