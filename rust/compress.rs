//! zstd for document files (`.jsonl.zst`, `.txt.zst`): every stage reads and writes them
//! through here, so no Python compression package is needed.
//!
//! Frames are written with the content checksum and size, so damage is found on reading; a
//! file that ends inside a frame is an error naming the file, never a short read.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// A damaged, truncated or unreadable compressed file; the message names it.
#[derive(Debug)]
pub struct CompressError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for CompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let text = self.source.to_string();
        if text.contains("incomplete frame") {
            write!(
                f,
                "{path}: the zstd data ends inside a frame: the file is truncated"
            )
        } else if self.source.kind() == io::ErrorKind::NotFound {
            write!(f, "{path}: no such file or directory")
        } else if self.source.kind() == io::ErrorKind::Other
            || self.source.kind() == io::ErrorKind::InvalidData
        {
            write!(f, "{path}: damaged or not zstd data ({text})")
        } else {
            write!(f, "{path}: {text}")
        }
    }
}

impl std::error::Error for CompressError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl CompressError {
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

/// `data` as one zstd frame at `level`, with its content size and checksum.
pub fn compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut encoder = zstd::stream::Encoder::new(Vec::with_capacity(data.len() / 3 + 64), level)?;
    encoder.include_checksum(true)?;
    encoder.include_contentsize(true)?;
    encoder.set_pledged_src_size(Some(data.len() as u64))?;
    encoder.write_all(data)?;
    encoder.finish()
}

/// A decompressing reader of one `.zst` file (any number of concatenated frames).
pub struct ZstdFile {
    path: PathBuf,
    decoder: zstd::stream::read::Decoder<'static, BufReader<File>>,
}

impl ZstdFile {
    pub fn open(path: &Path) -> Result<Self, CompressError> {
        let err = |source| CompressError {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(err)?;
        // An empty file is no zstd data at all: most likely a write that never happened.
        if file.metadata().map_err(err)?.len() == 0 {
            return Err(err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "empty file, expected zstd data (the file is truncated)",
            )));
        }
        let decoder = zstd::stream::read::Decoder::new(file).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            decoder,
        })
    }

    /// Fills `buf` as far as the data goes; fewer bytes than asked only at the end of the file.
    pub fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, CompressError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.decoder.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CompressError {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    fn read_all(path: &Path) -> Result<Vec<u8>, CompressError> {
        let mut f = ZstdFile::open(path)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1000];
        loop {
            let n = f.read_full(&mut buf)?;
            out.extend_from_slice(&buf[..n]);
            if n < buf.len() {
                return Ok(out);
            }
        }
    }

    #[test]
    fn round_trip_with_checksum_and_frames() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let frame = compress(&data, 3).unwrap();
        // Checksum flag: bit 2 of the frame header descriptor (after the 4-byte magic).
        assert_ne!(frame[4] & 0b100, 0);
        let path = write(dir.path(), "a.zst", &[frame.clone(), frame].concat());
        assert_eq!(read_all(&path).unwrap(), [data.clone(), data].concat());
    }

    #[test]
    fn truncated_and_damaged_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"{\"text\": \"hello\"}\n".repeat(5000);
        let frame = compress(&data, 3).unwrap();
        for cut in [5, frame.len() / 2, frame.len() - 1] {
            let path = write(dir.path(), "cut.zst", &frame[..cut]);
            let e = read_all(&path).unwrap_err().to_string();
            assert!(
                e.contains("cut.zst") && e.contains("truncated"),
                "{cut}: {e}"
            );
        }
        let mut bad = frame.clone();
        let n = bad.len();
        bad[n - 2] ^= 0xff; // the checksum
        let path = write(dir.path(), "bad.zst", &bad);
        let e = read_all(&path).unwrap_err().to_string();
        assert!(e.contains("bad.zst") && e.contains("damaged"), "{e}");
        let path = write(dir.path(), "junk.zst", b"this is not zstd at all");
        assert!(read_all(&path)
            .unwrap_err()
            .to_string()
            .contains("junk.zst"));
        let missing = dir.path().join("missing.zst");
        assert!(ZstdFile::open(&missing).err().unwrap().is_not_found());
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "empty.zst", b"");
        let e = read_all(&path).unwrap_err().to_string();
        assert!(e.contains("empty.zst: empty file"), "{e}");
    }
}

/// Fuzzing the zstd reader (issue 18): any bytes are decompressed or refused, never a panic;
/// a cut frame is refused, never read short; a damaged frame is refused or reads the same
/// bytes (its content checksum). `PROPTEST_CASES` sets the cases (see `crate::fuzz`).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{apply, config, edits, within};
    use proptest::prelude::*;

    fn read_all(path: PathBuf) -> Result<Vec<u8>, CompressError> {
        let mut f = ZstdFile::open(&path)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 777];
        loop {
            let n = f.read_full(&mut buf)?;
            out.extend_from_slice(&buf[..n]);
            if n < buf.len() {
                return Ok(out);
            }
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    proptest! {
        #![proptest_config(config(128))]

        #[test]
        fn any_bytes_are_read_or_refused(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                // past the magic number, so the frame header is parsed
                prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| [&[0x28, 0xb5, 0x2f, 0xfd][..], &b].concat()),
            ],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = write(dir.path(), "x.zst", &bytes);
            if let Err(e) = within(60, "reading arbitrary zstd", move || read_all(p)) {
                prop_assert!(e.to_string().contains("x.zst"), "{e}");
            }
        }

        #[test]
        fn cut_or_damaged_frames_are_refused(
            data in prop::collection::vec(prop_oneof![Just(b'a'), any::<u8>()], 1..3000),
            frames in 1..3usize,
            cut in any::<prop::sample::Index>(),
            e in edits(),
        ) {
            let frame = compress(&data, 3).unwrap();
            let file = frame.repeat(frames);
            let dir = tempfile::tempdir().unwrap();
            let at = cut.index(file.len());
            // A cut between two frames leaves whole frames: a shorter file that is still valid.
            // Cut to nothing, it is an empty file, which is refused too.
            prop_assume!(at % frame.len() != 0 || at == 0);
            let cut_path = write(dir.path(), "cut.zst", &file[..at]);
            let err = read_all(cut_path).expect_err("a cut file was read");
            prop_assert!(err.to_string().contains("cut.zst"), "{err}");
            let damaged = apply(&file, &e);
            let p = write(dir.path(), "damaged.zst", &damaged);
            if let Ok(read) = within(60, "reading damaged zstd", move || read_all(p)) {
                // Whole frames dropped (a cut or a deletion at a frame boundary) leave fewer
                // copies; otherwise the bytes are the same.
                prop_assert!(
                    read.len() % data.len() == 0 && read.chunks(data.len()).all(|c| c == data),
                    "damaged frames read as other bytes"
                );
            }
        }
    }
}
