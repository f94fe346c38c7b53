//! The work directory: manifests, and per-chunk stores of document ids and signatures.
//!
//! The scan writes its buffers at checkpoints; documents `start..end` between two checkpoints
//! form a *chunk* `c`, whose files are
//!
//! | file | content |
//! |---|---|
//! | `exact-c.run`, `bands-c.run`, `lines-c.run`, `spans-c.run` | sorted index entries ([`spill`]) |
//! | `ids-c.bin` | `n: u64`, `n + 1` offsets `u64`, then the UTF-8 ids back to back |
//! | `sigs-c.bin` | `n` signatures of `num_perm` `u64` (only with a Jaccard check) |
//!
//! all little-endian, each written atomically before `scan.json` lists the chunk. A killed
//! scan therefore resumes after the last chunk `scan.json` lists; files of a later, unlisted
//! chunk are simply overwritten.

use super::spill::write_atomic;
use super::{io_err, DedupError, Result};
use rustc_hash::FxHashMap;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Documents `start..end`, written at one checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub start: u64,
    pub end: u64,
}

pub fn chunk_file(dir: &Path, kind: &str, chunk: usize, ext: &str) -> PathBuf {
    dir.join(format!("{kind}-{chunk:06}.{ext}"))
}

/// Reads a JSON file written by [`write_json`]; `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DedupError::Corrupt {
            path: path.to_path_buf(),
            offset: byte_offset(&text, e.line(), e.column()),
            expected: "a dedup manifest".into(),
            found: e.to_string(),
        })
}

fn byte_offset(text: &str, line: usize, column: usize) -> u64 {
    let before: usize = text
        .split('\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (before + column.saturating_sub(1)) as u64
}

/// Writes `value` as JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| DedupError::State(e.to_string()))?;
    write_atomic(path, |w| w.write_all(&text))
}

/// Writes the ids of one chunk.
pub fn write_ids(path: &Path, offsets: &[u64], blob: &[u8]) -> Result<()> {
    write_atomic(path, |w| {
        let n = offsets.len().saturating_sub(1) as u64;
        w.write_all(&n.to_le_bytes())?;
        for o in offsets {
            w.write_all(&o.to_le_bytes())?;
        }
        w.write_all(blob)
    })
}

/// Writes the signatures of one chunk.
pub fn write_sigs(path: &Path, sigs: &[u64]) -> Result<()> {
    write_atomic(path, |w| {
        for v in sigs {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Random access to per-document records spread over chunk files.
struct ChunkFiles {
    dir: PathBuf,
    kind: &'static str,
    ext: &'static str,
    chunks: Vec<Chunk>,
    open: FxHashMap<usize, File>,
}

/// The most chunk files kept open at once.
const MAX_OPEN: usize = 32;

impl ChunkFiles {
    fn locate(&self, doc: u64) -> Result<(usize, u64)> {
        let c = self.chunks.partition_point(|c| c.end <= doc);
        match self.chunks.get(c) {
            Some(ch) if ch.start <= doc => Ok((c, doc - ch.start)),
            _ => Err(DedupError::State(format!(
                "document {doc} is beyond the {} scanned documents",
                self.chunks.last().map_or(0, |c| c.end)
            ))),
        }
    }

    fn file(&mut self, c: usize) -> Result<(&File, PathBuf)> {
        let path = chunk_file(&self.dir, self.kind, c, self.ext);
        if !self.open.contains_key(&c) {
            if self.open.len() >= MAX_OPEN {
                self.open.clear();
            }
            let f = File::open(&path).map_err(io_err(&path))?;
            self.open.insert(c, f);
        }
        Ok((&self.open[&c], path))
    }

    fn read_at(&mut self, c: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (f, path) = self.file(c)?;
        f.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DedupError::Corrupt {
                    path: path.clone(),
                    offset,
                    expected: format!("{} more bytes", buf.len()),
                    found: "the end of the file".into(),
                }
            } else {
                io_err(&path)(e)
            }
        })
    }
}

/// The id of any scanned document, by number.
pub struct IdStore(ChunkFiles);

impl IdStore {
    pub fn new(dir: &Path, chunks: &[Chunk]) -> Self {
        IdStore(ChunkFiles {
            dir: dir.to_path_buf(),
            kind: "ids",
            ext: "bin",
            chunks: chunks.to_vec(),
            open: FxHashMap::default(),
        })
    }

    pub fn get(&mut self, doc: u64) -> Result<String> {
        let (c, local) = self.0.locate(doc)?;
        let n = self.0.chunks[c].end - self.0.chunks[c].start;
        let mut pair = [0u8; 16];
        self.0.read_at(c, 8 + 8 * local, &mut pair)?;
        let start = u64::from_le_bytes(pair[..8].try_into().unwrap());
        let end = u64::from_le_bytes(pair[8..].try_into().unwrap());
        let blob_at = 8 + 8 * (n + 1);
        let mut bytes = vec![0u8; end.saturating_sub(start) as usize];
        self.0.read_at(c, blob_at + start, &mut bytes)?;
        String::from_utf8(bytes).map_err(|_| DedupError::Corrupt {
            path: chunk_file(&self.0.dir, "ids", c, "bin"),
            offset: blob_at + start,
            expected: "a UTF-8 document id".into(),
            found: "invalid UTF-8".into(),
        })
    }
}

/// The MinHash signature of any scanned document, by number.
pub struct SigStore {
    files: ChunkFiles,
    num_perm: usize,
    buf: Vec<u8>,
}

impl SigStore {
    pub fn new(dir: &Path, chunks: &[Chunk], num_perm: usize) -> Self {
        SigStore {
            files: ChunkFiles {
                dir: dir.to_path_buf(),
                kind: "sigs",
                ext: "bin",
                chunks: chunks.to_vec(),
                open: FxHashMap::default(),
            },
            num_perm,
            buf: vec![0u8; 8 * num_perm],
        }
    }

    pub fn get(&mut self, doc: u64, out: &mut Vec<u64>) -> Result<()> {
        let (c, local) = self.files.locate(doc)?;
        let size = 8 * self.num_perm as u64;
        self.files.read_at(c, local * size, &mut self.buf)?;
        out.clear();
        out.extend(
            self.buf
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap())),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        write_ids(&chunk_file(dir.path(), "ids", 0, "bin"), &[0, 1, 3], b"abc").unwrap();
        write_ids(
            &chunk_file(dir.path(), "ids", 1, "bin"),
            &[0, 3],
            "héllo".as_bytes(),
        )
        .unwrap();
        let chunks = [Chunk { start: 0, end: 2 }, Chunk { start: 2, end: 3 }];
        let mut s = IdStore::new(dir.path(), &chunks);
        assert_eq!(s.get(1).unwrap(), "bc");
        assert_eq!(s.get(0).unwrap(), "a");
        assert_eq!(s.get(2).unwrap(), "hé");
        assert!(s.get(3).is_err());
    }

    #[test]
    fn sigs_by_doc() {
        let dir = tempfile::tempdir().unwrap();
        write_sigs(&chunk_file(dir.path(), "sigs", 0, "bin"), &[1, 2, 3, 4]).unwrap();
        let mut s = SigStore::new(dir.path(), &[Chunk { start: 10, end: 12 }], 2);
        let mut v = Vec::new();
        s.get(11, &mut v).unwrap();
        assert_eq!(v, [3, 4]);
    }

    #[test]
    fn bad_manifest_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("scan.json");
        std::fs::write(&p, "{\n  \"a\": [1,\n}").unwrap();
        let err = read_json::<serde_json::Value>(&p)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("scan.json") && err.contains("at byte"),
            "{err}"
        );
        assert!(
            read_json::<serde_json::Value>(&dir.path().join("none.json"))
                .unwrap()
                .is_none()
        );
    }
}
