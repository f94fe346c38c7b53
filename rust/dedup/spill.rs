//! Sorted run files and their k-way merge: how dedup stays within its memory limit.
//!
//! Every index the methods build is a multiset of small fixed-size entries (a hash and a
//! document number). Instead of a hash table that grows with the corpus, entries are appended
//! to a buffer; when the buffer reaches the memory limit it is sorted and written as a *run*
//! (little-endian records, no header, length a multiple of the record size). Resolving then
//! merges all runs with a binary heap, which yields every entry in sorted order, so equal
//! hashes arrive side by side and one sequential pass finds each group. Entries order on all
//! their fields, so the merged stream, and every decision made from it, is the same whether
//! the corpus was spilled into one run or a thousand.
//!
//! Merging more runs than [`MAX_FAN_IN`] first merges them in groups into longer runs, so the
//! number of open files and read buffers stays bounded.

use super::{io_err, DedupError, Result};
use rayon::slice::ParallelSliceMut;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The most runs merged at once.
pub const MAX_FAN_IN: usize = 128;
const READ_BUFFER: usize = 1 << 16;
// Names intermediate runs uniquely when several merges share a directory.
static SCRATCH_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A fixed-size entry of a run file.
pub trait Record: Copy + Ord + Send + Sync + 'static {
    /// Bytes per record on disk.
    const SIZE: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(buf: &[u8]) -> Self;
}

/// Writes a file atomically (see `crate::fsio`): a crash leaves either the old file or the
/// new one, never half.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    crate::fsio::write_with(path, write).map_err(io_err(path))
}

/// Sorts `records` (in parallel) and writes them as a run file at `path`, atomically.
pub fn write_run<R: Record>(path: &Path, records: &mut [R]) -> Result<()> {
    crate::parallel::install(|| records.par_sort_unstable());
    write_atomic(path, |w| {
        let mut buf = vec![0u8; R::SIZE * 4096];
        for chunk in records.chunks(4096) {
            for (r, slot) in chunk.iter().zip(buf.chunks_mut(R::SIZE)) {
                r.encode(slot);
            }
            w.write_all(&buf[..chunk.len() * R::SIZE])?;
        }
        Ok(())
    })
}

/// Reads the records of one run file in order.
pub struct RunReader<R: Record> {
    path: PathBuf,
    reader: BufReader<File>,
    remaining: u64,
    buf: Vec<u8>,
    _marker: std::marker::PhantomData<R>,
}

impl<R: Record> RunReader<R> {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len % R::SIZE as u64 != 0 {
            return Err(DedupError::Corrupt {
                path: path.to_path_buf(),
                offset: len - len % R::SIZE as u64,
                expected: format!("a whole number of {}-byte records", R::SIZE),
                found: format!("{} trailing bytes", len % R::SIZE as u64),
            });
        }
        Ok(RunReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(READ_BUFFER, file),
            remaining: len / R::SIZE as u64,
            buf: vec![0u8; R::SIZE],
            _marker: std::marker::PhantomData,
        })
    }

    /// Records not yet read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn next_record(&mut self) -> Result<Option<R>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.reader
            .read_exact(&mut self.buf)
            .map_err(io_err(&self.path))?;
        self.remaining -= 1;
        Ok(Some(R::decode(&self.buf)))
    }
}

impl<R: Record> Iterator for RunReader<R> {
    type Item = Result<R>;
    fn next(&mut self) -> Option<Result<R>> {
        self.next_record().transpose()
    }
}

/// The k-way merge of sorted runs: yields every record of every run in sorted order.
pub struct Merger<R: Record> {
    readers: Vec<RunReader<R>>,
    heap: BinaryHeap<Reverse<(R, usize)>>,
    // Intermediate runs of a cascaded merge, deleted when the merger is dropped.
    scratch: Vec<PathBuf>,
}

impl<R: Record> Merger<R> {
    /// Opens a merge of `runs`. With more than [`MAX_FAN_IN`] runs, groups are first merged into
    /// intermediate runs under `scratch_dir`.
    pub fn open(runs: &[PathBuf], scratch_dir: &Path) -> Result<Self> {
        let mut scratch = Vec::new();
        let mut level: Vec<PathBuf> = runs.to_vec();
        let mut round = 0;
        while level.len() > MAX_FAN_IN {
            let mut next = Vec::new();
            for (g, group) in level.chunks(MAX_FAN_IN).enumerate() {
                let id = SCRATCH_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let out = scratch_dir.join(format!(
                    ".merge-{}-{id}-{round}-{g:06}.run",
                    std::process::id()
                ));
                let merged = Merger::<R>::open_flat(group, Vec::new())?;
                write_atomic(&out, |w| {
                    let mut buf = vec![0u8; R::SIZE];
                    for r in merged {
                        let r = r.map_err(std::io::Error::other)?;
                        r.encode(&mut buf);
                        w.write_all(&buf)?;
                    }
                    Ok(())
                })?;
                next.push(out.clone());
                scratch.push(out);
            }
            // Intermediate runs of the previous round are no longer needed.
            for p in level.iter().filter(|p| scratch.contains(p)) {
                let _ = std::fs::remove_file(p);
            }
            level = next;
            round += 1;
        }
        Merger::open_flat(&level, scratch)
    }

    fn open_flat(runs: &[PathBuf], scratch: Vec<PathBuf>) -> Result<Self> {
        let mut readers = Vec::with_capacity(runs.len());
        let mut heap = BinaryHeap::with_capacity(runs.len());
        for (i, p) in runs.iter().enumerate() {
            let mut r = RunReader::<R>::open(p)?;
            if let Some(first) = r.next_record()? {
                heap.push(Reverse((first, i)));
            }
            readers.push(r);
        }
        Ok(Merger {
            readers,
            heap,
            scratch,
        })
    }

    /// Records left to yield.
    pub fn remaining(&self) -> u64 {
        self.heap.len() as u64 + self.readers.iter().map(|r| r.remaining()).sum::<u64>()
    }
}

impl<R: Record> Iterator for Merger<R> {
    type Item = Result<R>;
    fn next(&mut self) -> Option<Result<R>> {
        let Reverse((rec, i)) = self.heap.pop()?;
        match self.readers[i].next_record() {
            Ok(Some(next)) => self.heap.push(Reverse((next, i))),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        Some(Ok(rec))
    }
}

impl<R: Record> Drop for Merger<R> {
    fn drop(&mut self) {
        for p in &self.scratch {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Bytes `v` must grow by to take `add` more items.
pub fn growth_needed<T>(v: &Vec<T>, add: usize) -> usize {
    (v.len() + add).saturating_sub(v.capacity()) * std::mem::size_of::<T>()
}

/// Makes room in `v` for `add` more items. Capacity doubles as `Vec`'s own growth would,
/// but by at most `spare` bytes beyond the room needed, which are taken from `spare`. A
/// buffer grown only this way keeps its *capacity*, not just its length, within a budget:
/// `Vec`'s doubling alone can overshoot a budget by the size of the buffer.
pub fn reserve_within<T>(v: &mut Vec<T>, add: usize, spare: &mut usize) {
    let need = v.len() + add;
    if need <= v.capacity() {
        return;
    }
    let size = std::mem::size_of::<T>().max(1);
    let want = (2 * v.capacity()).max(need).max(16);
    let extra = ((want - need) * size).min(*spare) / size;
    *spare -= extra * size;
    v.reserve_exact(need + extra - v.len());
}

/// An append buffer of records that spills to numbered run files: when asked, and by itself
/// before its capacity would pass its budget.
pub struct Spiller<R: Record> {
    dir: PathBuf,
    prefix: String,
    budget: usize,
    peak: usize,
    pub buf: Vec<R>,
    pub runs: Vec<PathBuf>,
}

impl<R: Record> Spiller<R> {
    /// A spiller with no budget: it spills only when asked.
    pub fn new(dir: &Path, prefix: &str) -> Self {
        Spiller {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            budget: usize::MAX,
            peak: 0,
            buf: Vec::new(),
            runs: Vec::new(),
        }
    }

    /// Sets the bytes the buffer may hold; takes effect at the next push.
    pub fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes.max(1);
    }

    /// Appends a record, first spilling the buffer if growing it would pass the budget.
    pub fn push(&mut self, r: R) -> Result<()> {
        let need = growth_needed(&self.buf, 1);
        if need > 0 && !self.buf.is_empty() && self.mem_bytes() + need > self.budget {
            self.spill()?;
        }
        let mut spare = self
            .budget
            .saturating_sub(self.mem_bytes() + growth_needed(&self.buf, 1));
        reserve_within(&mut self.buf, 1, &mut spare);
        self.buf.push(r);
        self.peak = self.peak.max(self.mem_bytes());
        Ok(())
    }

    /// Bytes the buffer holds.
    pub fn mem_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<R>()
    }

    /// The most bytes the buffer has held.
    pub fn peak_bytes(&self) -> usize {
        self.peak
    }

    /// Writes the buffer as the next run (nothing when it is empty) and frees it.
    pub fn spill(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self
            .dir
            .join(format!("{}-{:06}.run", self.prefix, self.runs.len()));
        write_run(&path, &mut self.buf)?;
        self.runs.push(path);
        self.buf = Vec::new();
        Ok(())
    }

    /// Spills what is left and merges all runs into one sorted file at `out`; removes the runs.
    pub fn finish_into(mut self, out: &Path) -> Result<u64> {
        if self.runs.is_empty() {
            write_run(out, &mut self.buf)?;
            return Ok(self.buf.len() as u64);
        }
        self.spill()?;
        let merged = Merger::<R>::open(&self.runs, &self.dir)?;
        let mut n = 0u64;
        write_atomic(out, |w| {
            let mut buf = vec![0u8; R::SIZE];
            for r in merged {
                let r = r.map_err(std::io::Error::other)?;
                r.encode(&mut buf);
                w.write_all(&buf)?;
                n += 1;
            }
            Ok(())
        })?;
        for p in &self.runs {
            let _ = std::fs::remove_file(p);
        }
        Ok(n)
    }
}

/// Visits a sorted stream group by group (maximal runs of records with the same
/// `key(record)`) without holding a group: `f(earlier, record)` for each record, where
/// `earlier` holds the group's records before it, but only the first `head` (at least one)
/// of them, and is empty exactly when `record` opens a group. Groups can be huge (a
/// boilerplate line in millions of documents); what decides them needs only their start.
pub fn for_each_in_group<R, K, I>(
    records: I,
    key: impl Fn(&R) -> K,
    head: usize,
    mut f: impl FnMut(&[R], &R) -> Result<()>,
) -> Result<()>
where
    R: Record,
    K: PartialEq,
    I: Iterator<Item = Result<R>>,
{
    let head = head.max(1);
    let mut earlier: Vec<R> = Vec::with_capacity(head);
    for r in records {
        let r = r?;
        if earlier.first().is_some_and(|first| key(first) != key(&r)) {
            earlier.clear();
        }
        f(&earlier, &r)?;
        if earlier.len() < head {
            earlier.push(r);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Pair(u64, u32);

    impl Record for Pair {
        const SIZE: usize = 12;
        fn encode(&self, out: &mut [u8]) {
            out[..8].copy_from_slice(&self.0.to_le_bytes());
            out[8..12].copy_from_slice(&self.1.to_le_bytes());
        }
        fn decode(b: &[u8]) -> Self {
            Pair(
                u64::from_le_bytes(b[..8].try_into().unwrap()),
                u32::from_le_bytes(b[8..12].try_into().unwrap()),
            )
        }
    }

    fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn merge_of_many_runs_equals_a_sort() {
        let dir = tempfile::tempdir().unwrap();
        let mut next = xorshift(42);
        let all: Vec<Pair> = (0..5000).map(|i| Pair(next() % 97, i)).collect();
        let mut sp = Spiller::new(dir.path(), "t");
        for (i, r) in all.iter().enumerate() {
            sp.push(*r).unwrap();
            if i % 17 == 0 {
                sp.spill().unwrap(); // ~300 runs: exercises the cascade
            }
        }
        assert!(sp.runs.len() > MAX_FAN_IN);
        let out = dir.path().join("all.run");
        assert_eq!(sp.finish_into(&out).unwrap(), 5000);
        let merged: Vec<Pair> = RunReader::open(&out).unwrap().map(|r| r.unwrap()).collect();
        let mut expected = all.clone();
        expected.sort();
        assert_eq!(merged, expected);
        // Only the merged file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn budget_bounds_capacity_not_just_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut next = xorshift(7);
        let all: Vec<Pair> = (0..20_000).map(|i| Pair(next() % 1000, i)).collect();
        let budget = 10_000; // bytes: ~600 records of 16 bytes in memory
        let mut sp = Spiller::new(dir.path(), "b");
        sp.set_budget(budget);
        for r in &all {
            sp.push(*r).unwrap();
            assert!(sp.mem_bytes() <= budget, "{}", sp.mem_bytes());
        }
        assert!(sp.peak_bytes() <= budget && sp.peak_bytes() > budget / 2);
        assert!(sp.runs.len() + 1 >= 20_000 * 16 / budget); // the last buffer is not spilled yet
        let out = dir.path().join("all.run");
        assert_eq!(sp.finish_into(&out).unwrap(), 20_000);
        let merged: Vec<Pair> = RunReader::open(&out).unwrap().map(|r| r.unwrap()).collect();
        let mut expected = all;
        expected.sort();
        assert_eq!(merged, expected);
    }

    #[test]
    fn groups_are_visited_holding_only_their_head() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.run");
        let mut v: Vec<Pair> = (0..5).map(|i| Pair(1, i)).collect();
        v.extend([Pair(2, 9), Pair(3, 7), Pair(3, 8)]);
        write_run(&p, &mut v).unwrap();
        let mut seen = Vec::new();
        for_each_in_group(
            RunReader::<Pair>::open(&p).unwrap(),
            |r| r.0,
            2,
            |earlier, r| {
                seen.push((r.1, earlier.iter().map(|e| e.1).collect::<Vec<_>>()));
                Ok(())
            },
        )
        .unwrap();
        let e = |x: &[u32]| x.to_vec();
        assert_eq!(
            seen,
            [
                (0, e(&[])),
                (1, e(&[0])),
                (2, e(&[0, 1])),
                (3, e(&[0, 1])),
                (4, e(&[0, 1])),
                (9, e(&[])),
                (7, e(&[])),
                (8, e(&[7])),
            ]
        );
    }

    #[test]
    fn truncated_run_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.run");
        std::fs::write(&p, [0u8; 30]).unwrap();
        let err = RunReader::<Pair>::open(&p).err().unwrap().to_string();
        assert!(
            err.contains("bad.run") && err.contains("at byte 24"),
            "{err}"
        );
    }
}
