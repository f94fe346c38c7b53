//! Union-find over document numbers, holding only documents that were ever united.
//!
//! Near-duplicate candidates are a small part of a corpus, so a hash map from document to
//! parent costs memory in proportion to the documents in some candidate pair, not to the
//! corpus. The root of every set is its smallest document number, which makes "keep the first
//! document of each cluster in input order" a lookup; path halving keeps finds short.

use rustc_hash::FxHashMap;

#[derive(Debug, Default)]
pub struct UnionFind {
    parent: FxHashMap<u64, u64>,
}

impl UnionFind {
    pub fn new() -> Self {
        Self::default()
    }

    /// The smallest document of `x`'s set (`x` itself if it was never united).
    pub fn find(&mut self, mut x: u64) -> u64 {
        loop {
            let p = match self.parent.get(&x) {
                Some(&p) if p != x => p,
                _ => return x,
            };
            let gp = self.parent.get(&p).copied().unwrap_or(p);
            if gp != p {
                self.parent.insert(x, gp); // path halving
            }
            x = gp;
        }
    }

    /// Joins the sets of `a` and `b`; returns whether they were apart.
    pub fn union(&mut self, a: u64, b: u64) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (root, child) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent.entry(root).or_insert(root);
        self.parent.insert(child, root);
        true
    }

    /// Documents that were ever united, in no particular order.
    pub fn members(&self) -> impl Iterator<Item = u64> + '_ {
        self.parent.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    /// Approximate bytes held.
    pub fn mem_bytes(&self) -> usize {
        self.parent.capacity() * 17
    }
}

/// The clusters of the pairs `(a[i], b[i])`: every united document (ascending) and the root
/// of each, the smallest document of its cluster.
pub fn clusters(a: &[u64], b: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let mut uf = UnionFind::new();
    for (&x, &y) in a.iter().zip(b) {
        uf.union(x, y);
    }
    let mut members: Vec<u64> = uf.members().collect();
    members.sort_unstable();
    let roots = members.iter().map(|&m| uf.find(m)).collect();
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
        assert!(uf.union(5, 3));
        assert!(uf.union(9, 7));
        assert!(uf.union(7, 5));
        assert!(!uf.union(9, 3));
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
            let mut uf = UnionFind::new();
            let mut label: Vec<u64> = (0..40).collect();
            for &(a, b) in &pairs {
                uf.union(a, b);
                let (la, lb) = (label[a as usize], label[b as usize]);
                let m = la.min(lb);
                for l in label.iter_mut() {
                    if *l == la || *l == lb { *l = m; }
                }
            }
            for x in 0..40u64 {
                prop_assert_eq!(uf.find(x), label[x as usize]);
            }
        }
    }
}
