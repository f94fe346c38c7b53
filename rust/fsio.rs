//! Atomic files: the one way the core writes a file.
//!
//! A file is written under a hidden temporary name in its final directory, flushed and
//! fsynced, renamed over its final name, and the directory fsynced so the rename survives a
//! crash. A file with its final name is therefore always whole; on an error the temporary is
//! removed. The temporary name is fixed for a path (no process id), so a rerun after a kill
//! overwrites its leftovers instead of piling them up; two runs never share an output folder
//! (the Python layer claims it first).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The temporary name `path` is written under: hidden (readers skip it) and in the same
/// directory (so the rename is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Fsyncs the directory holding `path`, making a rename in it durable. Not every platform can
/// open a directory; the rename is atomic without it, so a failure here is not an error.
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Renames the finished, fsynced temporary `tmp` over `path` and makes the rename durable.
pub fn commit(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::rename(tmp, path)?;
    sync_parent(path);
    Ok(())
}

/// Writes `path` atomically with `write`, which fills a buffered writer of the temporary.
pub fn write_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        commit(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!temp_path(&path).exists());
        assert_eq!(temp_path(Path::new("d/a.bin")), Path::new("d/.a.bin.tmp"));
    }

    #[test]
    fn an_error_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"old").unwrap();
        let failed = write_with(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(!temp_path(&path).exists());
        // A directory that does not exist: an error, nothing left behind.
        assert!(write_atomic(&dir.path().join("no/such/file"), b"x").is_err());
    }
}
