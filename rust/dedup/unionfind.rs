//! Union-find over document numbers, holding only documents that were ever united.
//!
//! Near-duplicate candidates are a small part of a corpus, so a hash map from document to
//! parent costs memory in proportion to the documents in some candidate pair, not to the
//! corpus. The root of every set is its smallest document number, which makes "keep the first
//! document of each cluster in input order" a lookup; path halving keeps finds short.
//!
//! A bounded union-find ([`UnionFind::bounded`]) moves to one parent slot per document in a
//! file-backed map once the hash map would pass its budget: the kernel pages that file in and
//! out, so a corpus whose candidates are many stays within the memory limit at the cost of
//! disk reads, instead of going over it.

use super::{io_err, Result};
use memmap2::MmapMut;
use rustc_hash::FxHashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;

/// Bytes a hash-map entry costs: key, value and a control byte.
const ENTRY_BYTES: usize = 17;

#[derive(Debug, Default)]
pub struct UnionFind {
    parent: FxHashMap<u64, u64>,
    /// One slot per document once spilled: 0 = never united, else parent + 1.
    dense: Option<MmapMut>,
    /// `Some((documents, budget, file))` for a bounded union-find.
    bound: Option<(u64, usize, PathBuf)>,
}

impl UnionFind {
    /// A union-find held in memory, however large it grows.
    pub fn new() -> Self {
        Self::default()
    }

    /// A union-find of documents `0..documents` whose hash map stays under `budget` bytes: past
    /// it, parents move to `file` (created, then unlinked while mapped, so nothing is left).
    pub fn bounded(documents: u64, budget: usize, file: PathBuf) -> Self {
        Self {
            bound: Some((documents, budget, file)),
            ..Self::default()
        }
    }

    fn slot(&self, x: u64) -> Option<u64> {
        match &self.dense {
            Some(m) => {
                let at = x as usize * 8;
                let v = u64::from_le_bytes(m[at..at + 8].try_into().unwrap());
                v.checked_sub(1)
            }
            None => self.parent.get(&x).copied(),
        }
    }

    fn set(&mut self, x: u64, p: u64) {
        match &mut self.dense {
            Some(m) => {
                let at = x as usize * 8;
                m[at..at + 8].copy_from_slice(&(p + 1).to_le_bytes());
            }
            None => {
                self.parent.insert(x, p);
            }
        }
    }

    /// The smallest document of `x`'s set (`x` itself if it was never united).
    pub fn find(&mut self, mut x: u64) -> u64 {
        loop {
            let p = match self.slot(x) {
                Some(p) if p != x => p,
                _ => return x,
            };
            let gp = self.slot(p).unwrap_or(p);
            if gp != p {
                self.set(x, gp); // path halving
            }
            x = gp;
        }
    }

    /// Joins the sets of `a` and `b`; returns whether they were apart.
    ///
    /// Errors: moving to the file failed (a bounded union-find only).
    pub fn union(&mut self, a: u64, b: u64) -> Result<bool> {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return Ok(false);
        }
        self.make_room()?;
        let (root, child) = if ra < rb { (ra, rb) } else { (rb, ra) };
        if self.slot(root).is_none() {
            self.set(root, root);
        }
        self.set(child, root);
        Ok(true)
    }

    /// Before up to two new entries: moves to the file when the map would grow past its budget.
    fn make_room(&mut self) -> Result<()> {
        let Some((documents, budget, file)) = &self.bound else {
            return Ok(());
        };
        let cap = self.parent.capacity();
        if self.dense.is_some() || self.parent.len() + 2 < cap {
            return Ok(()); // no growth (the map may grow a little before it is full)
        }
        // Growing allocates a table of twice the capacity beside the old one.
        if (cap.max(8) * 3) * ENTRY_BYTES <= *budget {
            return Ok(());
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(file)
            .map_err(io_err(file))?;
        f.set_len(documents * 8).map_err(io_err(file))?; // sparse: zeros, never united
        let map = unsafe { MmapMut::map_mut(&f) }.map_err(io_err(file))?;
        std::fs::remove_file(file).map_err(io_err(file))?;
        self.dense = Some(map);
        for (x, p) in std::mem::take(&mut self.parent) {
            self.set(x, p);
        }
        Ok(())
    }

    /// Calls `f(document, root)` for every document ever united, in ascending order.
    pub fn for_each_member<E>(
        &mut self,
        mut f: impl FnMut(u64, u64) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let members: Vec<u64> = match &self.dense {
            Some(m) => {
                for x in 0..(m.len() / 8) as u64 {
                    if self.slot(x).is_some() {
                        let root = self.find(x);
                        f(x, root)?;
                    }
                }
                return Ok(());
            }
            // the map is within its budget, and this list is half its size
            None => {
                let mut v: Vec<u64> = self.parent.keys().copied().collect();
                v.sort_unstable();
                v
            }
        };
        for x in members {
            let root = self.find(x);
            f(x, root)?;
        }
        Ok(())
    }

    /// Documents held in the hash map (0 once moved to the file).
    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty() && self.dense.is_none()
    }

    /// Whether the parents moved to the file.
    pub fn spilled(&self) -> bool {
        self.dense.is_some()
    }

    /// Approximate bytes of memory held (the file's pages are the kernel's to evict).
    pub fn mem_bytes(&self) -> usize {
        self.parent.capacity() * ENTRY_BYTES
    }
}

/// The clusters of the pairs `(a[i], b[i])`: every united document (ascending) and the root
/// of each, the smallest document of its cluster.
pub fn clusters(a: &[u64], b: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let mut uf = UnionFind::new();
    for (&x, &y) in a.iter().zip(b) {
        uf.union(x, y).expect("an unbounded union-find does no I/O");
    }
    let (mut members, mut roots) = (Vec::new(), Vec::new());
    let _ = uf.for_each_member(|m, r| {
        members.push(m);
        roots.push(r);
        Ok::<(), ()>(())
    });
    (members, roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn clusters_are_rooted_at_their_smallest_document() {
        let (members, roots) = clusters(&[5, 9, 2, 7], &[9, 3, 8, 8]);
        assert_eq!(members, vec![2, 3, 5, 7, 8, 9]);
        assert_eq!(roots, vec![2, 3, 3, 2, 2, 3]);
        assert_eq!(clusters(&[], &[]), (vec![], vec![]));
    }

    #[test]
    fn roots_are_minimum() {
        let mut uf = UnionFind::new();
        assert!(uf.union(5, 3).unwrap());
        assert!(uf.union(9, 7).unwrap());
        assert!(uf.union(7, 5).unwrap());
        assert!(!uf.union(9, 3).unwrap());
        for x in [3, 5, 7, 9] {
            assert_eq!(uf.find(x), 3);
        }
        assert_eq!(uf.find(42), 42);
        assert_eq!(uf.len(), 4);
    }

    proptest! {
        // Against a naive labelling: same partition, root = minimum of each class.
        #[test]
        fn matches_naive_components(pairs in proptest::collection::vec((0u64..40, 0u64..40), 0..80)) {
            let dir = tempfile::tempdir().unwrap();
            // room for a map of 8 entries while it grows: past about a dozen, the file
            let mut uf = UnionFind::bounded(40, 8 * 3 * ENTRY_BYTES, dir.path().join("uf"));
            let mut label: Vec<u64> = (0..40).collect();
            for &(a, b) in &pairs {
                uf.union(a, b).unwrap();
                let (la, lb) = (label[a as usize], label[b as usize]);
                let m = la.min(lb);
                for l in label.iter_mut() {
                    if *l == la || *l == lb { *l = m; }
                }
            }
            let mut listed = Vec::new();
            uf.for_each_member(|m, r| { listed.push((m, r)); Ok::<(), ()>(()) }).unwrap();
            prop_assert!(listed.windows(2).all(|w| w[0].0 < w[1].0));
            for &(m, r) in &listed {
                prop_assert_eq!(r, label[m as usize]);
            }
            for x in 0..40u64 {
                prop_assert_eq!(uf.find(x), label[x as usize]);
            }
            let united = |x: u64| pairs.iter().any(|&(a, b)| (a == x || b == x) && a != b);
            prop_assert!((0..40u64).filter(|&x| united(x)).eq(listed.iter().map(|&(m, _)| m)));
            prop_assert!(listed.len() <= 14 || uf.spilled());
            prop_assert!(!dir.path().join("uf").exists());
        }
    }
}
