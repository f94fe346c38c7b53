//! One token shard being written: streamed to a hidden temporary file beside its final name,
//! its header's token count filled in at the end, then fsynced and renamed into place (see
//! `crate::fsio`), so a `.bin` with its final name is always whole.

use super::format::{self, Dtype, HEADER_BYTES};
use super::ShardError;
use crate::bpe::Rank;
use crate::fsio::{self, temp_path};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

fn commit(tmp: &Path, path: &Path) -> Result<(), ShardError> {
    fsio::commit(tmp, path).map_err(|e| ShardError::io(path, e))
}

/// Bytes of a shard handed to the kernel before their writeback to disk is started, so the
/// fsync that closes the shard waits for at most its last 9 MB (this and the write buffer),
/// not the whole shard, and dirty pages do not pile up in memory.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Starts writing `len` bytes of `file` from `offset` to disk, without waiting for them.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a syscall on an open descriptor, touching no memory of ours. A failure only
        // loses the head start: the fsync at the end writes everything anyway.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as _,
                len as _,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// One token shard being written: streamed to its temporary file, so memory does not grow
/// with the shard size; the header's count is filled in when it is finished.
pub struct ShardFile {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    dtype: Dtype,
    count: u64,
    hasher: Xxh3,
    /// The largest token written (the manifest records it).
    max: Option<Rank>,
    scratch: Vec<u8>,
    /// The file offset up to which writeback has been started.
    written_back: u64,
}

impl ShardFile {
    /// Stops writing without finishing, leaving the temporary file as a killed run would
    /// (its buffered bytes written, no rename): for tests of resuming.
    #[cfg(test)]
    pub(crate) fn abandon(self) {
        self.out.into_inner().unwrap();
    }

    pub fn create(path: &Path, dtype: Dtype) -> Result<ShardFile, ShardError> {
        let tmp = temp_path(path);
        let file = File::create(&tmp).map_err(|e| ShardError::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&format::encode_header(dtype, 0))
            .map_err(|e| ShardError::io(&tmp, e))?;
        Ok(ShardFile {
            path: path.to_path_buf(),
            tmp,
            out,
            dtype,
            count: 0,
            hasher: Xxh3::new(),
            max: None,
            scratch: Vec::new(),
            written_back: 0,
        })
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The checksum of the tokens written so far (the index records it before the shard is
    /// renamed into place).
    pub fn checksum(&self) -> u64 {
        self.hasher.digest()
    }

    /// The largest token written so far.
    pub fn max_token(&self) -> Option<Rank> {
        self.max
    }

    /// Appends tokens (each must fit the dtype; the writer checks ids against the vocabulary).
    pub fn write(&mut self, tokens: &[Rank]) -> Result<(), ShardError> {
        if self.count + tokens.len() as u64 > format::MAX_SHARD_TOKENS {
            return Err(ShardError::Settings(format!(
                "{}: a shard holds at most {} tokens",
                self.path.display(),
                format::MAX_SHARD_TOKENS
            )));
        }
        // Sized first, then filled in fixed-width steps, so the loop compiles to vector code.
        self.scratch.clear();
        self.scratch.resize(tokens.len() * self.dtype.width(), 0);
        match self.dtype {
            Dtype::U16 => {
                for (dst, &t) in self.scratch.chunks_exact_mut(2).zip(tokens) {
                    dst.copy_from_slice(&(t as u16).to_le_bytes());
                }
            }
            Dtype::U32 => {
                for (dst, &t) in self.scratch.chunks_exact_mut(4).zip(tokens) {
                    dst.copy_from_slice(&t.to_le_bytes());
                }
            }
        }
        self.hasher.update(&self.scratch);
        self.max = self.max.max(tokens.iter().copied().max());
        self.out
            .write_all(&self.scratch)
            .map_err(|e| ShardError::io(&self.tmp, e))?;
        self.count += tokens.len() as u64;
        let in_file = HEADER_BYTES as u64 + self.count * self.dtype.width() as u64
            - self.out.buffer().len() as u64;
        if in_file - self.written_back >= WRITEBACK_BYTES {
            start_writeback(
                self.out.get_ref(),
                self.written_back,
                in_file - self.written_back,
            );
            self.written_back = in_file;
        }
        Ok(())
    }

    /// Writes the final header, fsyncs and renames into place. Returns the checksum of the
    /// tokens.
    pub fn finish(self) -> Result<u64, ShardError> {
        let ShardFile {
            path,
            tmp,
            out,
            dtype,
            count,
            hasher,
            ..
        } = self;
        let io = |e| ShardError::io(&tmp, e);
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&format::encode_header(dtype, count))
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        commit(&tmp, &path)?;
        Ok(hasher.digest())
    }
}
